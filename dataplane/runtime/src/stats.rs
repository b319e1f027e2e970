//! Per-worker counters: plain integers owned by one worker (no atomics on the hot path).
//! Summed across workers when reported.

use std::collections::BTreeMap;

#[derive(Debug, Default, Clone)]
pub(crate) struct Stats {
    pub(crate) accepted: u64,
    pub(crate) upgraded: u64,
    pub(crate) plain_http: u64,
    pub(crate) accept_errors: u64,
    pub(crate) bytes_from_clients: u64,
    pub(crate) bytes_to_clients: u64,
    /// Connections ended, by close reason label.
    pub(crate) closed: BTreeMap<&'static str, u64>,
}

impl Stats {
    pub(crate) fn add(&mut self, other: &Stats) {
        self.accepted += other.accepted;
        self.upgraded += other.upgraded;
        self.plain_http += other.plain_http;
        self.accept_errors += other.accept_errors;
        self.bytes_from_clients += other.bytes_from_clients;
        self.bytes_to_clients += other.bytes_to_clients;
        for (reason, n) in &other.closed {
            *self.closed.entry(reason).or_default() += n;
        }
    }
}
