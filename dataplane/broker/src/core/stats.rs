//! The bridge's counters since start (`wsedge_broker_*` metrics) and its lag histogram.

use super::RecoveryStats;

/// Upper bounds of the lag histogram's buckets, in microseconds (the last bucket is +Inf).
pub const LAG_BOUNDS_US: [u64; 11] = [
    500, 1_000, 2_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 5_000_000,
];

/// Publication-to-arrival time of the records received from the broker: the receiving
/// host's clock minus the publishing host's (so across hosts it includes their clock
/// offset; NTP keeps that well under a millisecond).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lag {
    /// Records per bucket of [`LAG_BOUNDS_US`] (not cumulative), then past the last bound.
    pub buckets: [u64; 12],
    pub sum_us: u64,
    pub count: u64,
}

impl Lag {
    pub(super) fn record(&mut self, us: u64) {
        let i = LAG_BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LAG_BOUNDS_US.len());
        self.buckets[i] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.count += 1;
    }
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Publication-to-arrival time of timed records.
    pub lag: Lag,
    /// Local publications handed to the broker.
    pub publishes_out: u64,
    /// Records received from the broker (own echoes included).
    pub publishes_in: u64,
    /// Local publications delivered here directly (shard down, or subscription pending).
    pub publishes_local: u64,
    /// Messages handed to workers.
    pub deliveries: u64,
    /// Messages a worker's full queue refused.
    pub drops: u64,
    /// Gap notices (per channel and event: a reconnection, a drop).
    pub gaps: u64,
    /// New channels refused past `max_channels`.
    pub channels_refused: u64,
    /// Records that were not ours, or broken.
    pub decode_errors: u64,
    /// Own echoes already delivered directly.
    pub duplicates: u64,
    /// Records for a channel no worker wants any more.
    pub unrouted: u64,
    /// Times a shard came up after having been down (the first connection excluded).
    pub reconnects: u64,
    /// Failed connection attempts and lost connections.
    pub link_failures: u64,
    /// Recovery answers, by outcome.
    pub recovery: RecoveryStats,
}
