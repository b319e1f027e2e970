//! Origin health on the control endpoints: the answer to `origins_health`
//! (`wsedgectl origins`) and the origin families of `/metrics`
//! (`wsedge_origin_up`, `wsedge_origin_ejections_total`, `wsedge_origin_check_failures_total`,
//! `wsedge_origin_checks_total`), both read from the process's health registry, not from the
//! workers.

use wsedge_command::wire::{PoolHealth, Response};

use super::Shared;
use super::metrics::{family, sample};

impl Shared {
    /// Every route's origins with their health.
    pub(super) fn origins(&self) -> Response {
        Response::Origins {
            pools: self.health.views(),
        }
    }

    /// The origin pools, for the metrics endpoint.
    pub(super) fn origin_views(&self) -> Vec<PoolHealth> {
        self.health.views()
    }
}

/// Appends the origin metric families for `pools` (routes without `[route.health]` are
/// left out: nothing watches them).
pub(super) fn render(out: &mut String, pools: &[PoolHealth]) {
    let watched: Vec<&PoolHealth> = pools.iter().filter(|p| p.watched).collect();
    type Field = fn(&wsedge_command::wire::OriginHealth) -> u64;
    let families: [(&str, &str, &str, Field); 4] = [
        (
            "wsedge_origin_up",
            "gauge",
            "1 if the origin may be chosen for new connections, 0 while it is down or ejected.",
            |o| u64::from(o.state != "down"),
        ),
        (
            "wsedge_origin_ejections_total",
            "counter",
            "Passive ejections: connections to the origin failed max_fails times in a row.",
            |o| o.ejections,
        ),
        (
            "wsedge_origin_check_failures_total",
            "counter",
            "Active health checks of the origin that failed.",
            |o| o.checks_failed,
        ),
        (
            "wsedge_origin_checks_total",
            "counter",
            "Active health checks of the origin run.",
            |o| o.checks,
        ),
    ];
    for (name, kind, help, field) in families {
        family(out, name, kind, help);
        for pool in &watched {
            for origin in &pool.origins {
                sample(
                    out,
                    name,
                    &[("route", &pool.route), ("origin", &origin.addr)],
                    field(origin),
                );
            }
        }
    }
}
