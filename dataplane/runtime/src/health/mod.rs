//! Origin health for the whole process: one shared [`Pool`] per route that has a
//! `[route.health]` table, read by every worker through `wsedge_proto::balance::PoolView`,
//! fed by the workers' connections (passive) and by the `wsedge-health` thread's checks
//! (active), and listed by `wsedgectl origins` and the metrics endpoint.
//!
//! The [`Registry`] is built once in `main` and handed to every place that turns a
//! configuration into worker settings (`Settings::from_config`): for each route it reuses
//! the pool of the previous configuration when the route keeps its name and origins (its
//! health state survives the push, with the new thresholds), or makes a new one whose
//! origins all start up. The pure state machine is `wsedge_proto::health`; this module only
//! shares it between threads, runs the checks and keeps time.
//!
//! By job: `pool` (the shared state and the `PoolView`), `checker` (the `wsedge-health`
//! scheduling thread), `probe` (one blocking TCP or WebSocket check).

mod checker;
mod pool;
mod probe;

use std::net::SocketAddr;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use wsedge_command::Config;
use wsedge_command::wire::{OriginHealth, PoolHealth};

pub(crate) use checker::start;
pub(crate) use pool::{Pool, PoolSettings};

/// Milliseconds on the process's monotonic clock (the scale every pool's machine runs on).
pub(crate) fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// `round_robin`, `consistent_hash(header:X-Room)`...
fn balance_text(r: &wsedge_command::Route) -> String {
    match &r.hash_key {
        Some(key) => format!("{}({key})", r.balance.as_str()),
        None => r.balance.as_str().to_owned(),
    }
}

/// A route with origins in the configuration in force.
#[derive(Debug, Clone)]
struct Entry {
    route: String,
    /// The policy as `wsedgectl origins` shows it.
    balance: String,
    origins: Vec<SocketAddr>,
    /// `None`: the route has no `[route.health]` (its origins are always live).
    pool: Option<Arc<Pool>>,
}

/// The pools of the configuration in force, shared by the workers, the control threads and
/// the `wsedge-health` thread.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    entries: Mutex<Vec<Entry>>,
    /// Wakes the `wsedge-health` thread when the pools change.
    wake: Mutex<Option<Sender<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    pub(crate) fn new() -> Arc<Registry> {
        now_ms();
        Arc::new(Registry::default())
    }

    /// The pool of each route of `config` (by route index; `None` for a route without
    /// `[route.health]` or without origins), keeping the state of every pool whose route
    /// kept its name and origins. These become the pools in force.
    pub(crate) fn pools_for(&self, config: &Config) -> Vec<Option<Arc<Pool>>> {
        let mut entries = lock(&self.entries);
        let mut next = Vec::new();
        let mut out = Vec::with_capacity(config.routes.len());
        for r in &config.routes {
            if r.function.is_some() || r.origins.is_empty() {
                out.push(None);
                continue;
            }
            let pool = r.health.as_ref().map(|h| {
                let settings = PoolSettings {
                    balance: balance_text(r),
                    thresholds: h.thresholds,
                    check: h.check.clone(),
                    retry_after_secs: h.retry_after_secs(),
                    slow_start_ms: u64::try_from(h.slow_start.as_millis()).unwrap_or(u64::MAX),
                };
                let kept = entries
                    .iter()
                    .filter_map(|e| e.pool.as_ref())
                    .find(|p| p.route == r.name && p.same_origins(&r.origins));
                match kept {
                    Some(p) => {
                        p.update(settings);
                        Arc::clone(p)
                    }
                    None => Arc::new(Pool::new(&r.name, &r.origins, settings)),
                }
            });
            next.push(Entry {
                route: r.name.clone(),
                balance: balance_text(r),
                origins: r.origins.clone(),
                pool: pool.clone(),
            });
            out.push(pool);
        }
        *entries = next;
        drop(entries);
        if let Some(wake) = lock(&self.wake).as_ref() {
            let _ = wake.send(());
        }
        out
    }

    /// Gives each pool in force its route's origin TLS (`None` for a plain route), so
    /// active `websocket` checks speak TLS where the route does.
    pub(crate) fn set_origin_tls(&self, origins: &[(String, wsedge_tls::OriginTls)]) {
        for entry in lock(&self.entries).iter() {
            if let Some(pool) = &entry.pool {
                let tls = origins
                    .iter()
                    .find(|(route, _)| *route == entry.route)
                    .map(|(_, tls)| tls.clone());
                pool.set_tls(tls);
            }
        }
    }

    /// The pools in force that have health.
    pub(crate) fn pools(&self) -> Vec<Arc<Pool>> {
        lock(&self.entries)
            .iter()
            .filter_map(|e| e.pool.clone())
            .collect()
    }

    /// Every route's origins as `wsedgectl origins` shows them.
    pub(crate) fn views(&self) -> Vec<PoolHealth> {
        let entries = lock(&self.entries).clone();
        entries
            .iter()
            .map(|e| match &e.pool {
                Some(pool) => pool.view(),
                None => PoolHealth {
                    route: e.route.clone(),
                    balance: e.balance.clone(),
                    check: None,
                    watched: false,
                    origins: e
                        .origins
                        .iter()
                        .map(|a| OriginHealth {
                            addr: a.to_string(),
                            state: "up".to_owned(),
                            why: "unwatched".to_owned(),
                            since_ms: 0,
                            last_check: None,
                            last_check_ago_ms: None,
                            checks: 0,
                            checks_failed: 0,
                            ejections: 0,
                            transitions: 0,
                            slow_start_pct: None,
                        })
                        .collect(),
                },
            })
            .collect()
    }

    fn set_wake(&self, wake: Sender<()>) {
        *lock(&self.wake) = Some(wake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsedge_proto::balance::PoolView;
    use wsedge_proto::health::{Failure, Outcome};

    fn config(origins: &str, extra: &str) -> Config {
        let text = format!(
            "[[route]]\nname = \"a\"\norigins = [{origins}]\n[route.health]\nmax_fails = 1\n{extra}\n[[route]]\nname = \"b\"\npath_prefix = \"/b\"\norigins = [\"127.0.0.1:9\"]\n"
        );
        Config::from_toml(&text, "t.toml").expect("valid")
    }

    #[test]
    fn a_pool_keeps_its_state_while_its_origins_stay() {
        let registry = Registry::new();
        let two = "\"127.0.0.1:1\", \"127.0.0.1:2\"";
        let first = registry.pools_for(&config(two, ""));
        assert!(first[1].is_none(), "route b has no health");
        let pool = first[0].clone().expect("pool");
        pool.report(0, Outcome::Failed(Failure::ConnectFailed));
        assert!(!pool.is_live(0));
        // Same origins, other settings: the same pool, the new settings.
        let second = registry.pools_for(&config(two, "eject_time = \"7s\""));
        let kept = second[0].clone().expect("pool");
        assert!(Arc::ptr_eq(&pool, &kept));
        assert!(!kept.is_live(0));
        assert_eq!(kept.retry_after_secs(), 7);
        // Other origins: a new pool, every origin up.
        let third = registry.pools_for(&config("\"127.0.0.1:1\"", ""));
        let fresh = third[0].clone().expect("pool");
        assert!(!Arc::ptr_eq(&pool, &fresh));
        assert!(fresh.is_live(0));
        let views = registry.views();
        assert_eq!(views.len(), 2);
        assert!(views[0].watched && !views[1].watched);
        assert_eq!(views[1].origins[0].why, "unwatched");
        assert_eq!(registry.pools().len(), 1);
    }
}
