//! The broker bridge's metrics (`wsedge_broker_*`, docs/broker.md and docs/monitoring):
//! each shard link's state, publishes in and out, deliveries, drops, gaps, refused
//! channels, reconnections, the publication-to-arrival lag, recovery answers by outcome,
//! from the bridge's [`Status`].

use wsedge_broker::Status;
use wsedge_broker::core::LAG_BOUNDS_US;

use super::metrics::{family, sample};

/// Appends the bridge's families to an exposition.
pub(super) fn render(out: &mut String, status: &Status) {
    family(
        out,
        "wsedge_broker_up",
        "gauge",
        "1 if the shard's broker link is up (channels shared with the other hosts), 0 if not (local-only).",
    );
    for (i, shard) in status.shards.iter().enumerate() {
        let index = i.to_string();
        sample(
            out,
            "wsedge_broker_up",
            &[
                ("backend", status.backend),
                ("shard", &index),
                ("address", &shard.address),
            ],
            u8::from(shard.state == "up"),
        );
    }
    let s = &status.stats;
    let counters: [(&str, &str, u64); 11] = [
        (
            "wsedge_broker_publishes_out_total",
            "Local publications handed to the broker.",
            s.publishes_out,
        ),
        (
            "wsedge_broker_publishes_in_total",
            "Records received from the broker (this host's own echoes included).",
            s.publishes_in,
        ),
        (
            "wsedge_broker_publishes_local_total",
            "Local publications delivered on this host directly (broker link down, or subscription not yet confirmed).",
            s.publishes_local,
        ),
        (
            "wsedge_broker_deliveries_total",
            "Messages handed to workers (one per interested worker).",
            s.deliveries,
        ),
        (
            "wsedge_broker_drops_total",
            "Messages dropped because a worker's queue was full.",
            s.drops,
        ),
        (
            "wsedge_broker_gaps_total",
            "Gap notices owed to subscribers (per channel and event: a reconnection, a drop).",
            s.gaps,
        ),
        (
            "wsedge_broker_channels_refused_total",
            "New channels served on this host only because max_channels was reached.",
            s.channels_refused,
        ),
        (
            "wsedge_broker_decode_errors_total",
            "Records on our subjects that were not wsedge's, or broken.",
            s.decode_errors,
        ),
        (
            "wsedge_broker_duplicates_total",
            "Own echoes dropped because they were already delivered directly.",
            s.duplicates,
        ),
        (
            "wsedge_broker_reconnects_total",
            "Times a shard link came back up after having been down.",
            s.reconnects,
        ),
        (
            "wsedge_broker_link_failures_total",
            "Failed connection attempts and lost connections to the broker.",
            s.link_failures,
        ),
    ];
    for (name, help, value) in counters {
        family(out, name, "counter", help);
        sample(out, name, &[], value);
    }
    let r = &s.recovery;
    family(
        out,
        "wsedge_broker_recoveries_total",
        "counter",
        "Recovery answers given to subscribers of recoverable channels, by outcome: recovered (missed messages given back), position (no since), epoch/trimmed/unavailable (cannot recover).",
    );
    for (outcome, value) in [
        ("recovered", r.recovered),
        ("position", r.positioned),
        ("epoch", r.epoch),
        ("trimmed", r.trimmed),
        ("unavailable", r.unavailable),
    ] {
        sample(
            out,
            "wsedge_broker_recoveries_total",
            &[("outcome", outcome)],
            value,
        );
    }
    family(
        out,
        "wsedge_broker_channels",
        "gauge",
        "Channels with subscribers on this host, held by the bridge.",
    );
    sample(out, "wsedge_broker_channels", &[], status.channels);
    family(
        out,
        "wsedge_broker_subscriptions",
        "gauge",
        "Channels whose broker subscription is confirmed.",
    );
    sample(
        out,
        "wsedge_broker_subscriptions",
        &[],
        status.subscriptions,
    );
    family(
        out,
        "wsedge_broker_lag_seconds",
        "histogram",
        "Publication (on its host's clock) to arrival from the broker (on this host's clock) of channel records.",
    );
    let lag = &s.lag;
    let mut cumulative = 0;
    for (i, bound) in LAG_BOUNDS_US.iter().enumerate() {
        cumulative += lag.buckets[i];
        let le = format!("{}", *bound as f64 / 1e6);
        sample(
            out,
            "wsedge_broker_lag_seconds_bucket",
            &[("le", &le)],
            cumulative,
        );
    }
    sample(
        out,
        "wsedge_broker_lag_seconds_bucket",
        &[("le", "+Inf")],
        lag.count,
    );
    sample(
        out,
        "wsedge_broker_lag_seconds_sum",
        &[],
        lag.sum_us as f64 / 1e6,
    );
    sample(out, "wsedge_broker_lag_seconds_count", &[], lag.count);
}
