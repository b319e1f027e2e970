//! Per-worker counters: plain integers owned by one worker (no atomics on the hot path).
//! Summed across workers when reported.

use std::collections::BTreeMap;

#[derive(Debug, Default, Clone)]
pub(crate) struct Stats {
    pub(crate) accepted: u64,
    pub(crate) upgraded: u64,
    pub(crate) plain_http: u64,
    pub(crate) accept_errors: u64,
    /// Handshakes a firewall rule refused.
    pub(crate) firewall: u64,
    pub(crate) bytes_from_clients: u64,
    pub(crate) bytes_to_clients: u64,
    /// Connections ended, by close reason label.
    pub(crate) closed: BTreeMap<&'static str, u64>,
    /// WebSocket messages seen by `frames` relays, from clients and from origins.
    pub(crate) messages_from_clients: u64,
    /// Broadcast subscribers closed because their send queue passed its bound.
    pub(crate) slow_consumers: u64,
    /// Splice directions relayed buffered instead: no pipe could be created, or TLS stayed
    /// in user space.
    pub(crate) splice_fallbacks: u64,
    /// Stream reads copied out of the buffer ring because it ran low (worker/reads.rs
    /// `ring_is_low`), reads that found it empty, and the one-buffer reads that served the
    /// ones waiting in turn (`rearm_starved`).
    pub(crate) reads_spilled: u64,
    pub(crate) reads_starved: u64,
    pub(crate) reads_rationed: u64,
    pub(crate) messages_from_origins: u64,
    /// Close codes seen in Close frames (from either side) and sent by the proxy, by route.
    pub(crate) close_codes_seen: BTreeMap<(String, u16), u64>,
    pub(crate) close_codes_sent: BTreeMap<(String, u16), u64>,
    /// TLS handshakes finished, and how many of them resumed a session.
    pub(crate) tls_handshakes: u64,
    pub(crate) tls_resumed: u64,
    /// TLS failures by kind (`wsedge_tls::TlsErrorKind` labels).
    pub(crate) tls_errors: BTreeMap<&'static str, u64>,
    /// Client connections whose TLS went to the kernel (kTLS) for a splice, hand-offs the
    /// kernel refused, and kTLS reads ended by a record that was not application data.
    pub(crate) ktls_handoffs: u64,
    pub(crate) ktls_failures: u64,
    pub(crate) ktls_control_records: u64,
}

impl Stats {
    pub(crate) fn add(&mut self, other: &Stats) {
        self.accepted += other.accepted;
        self.upgraded += other.upgraded;
        self.plain_http += other.plain_http;
        self.accept_errors += other.accept_errors;
        self.firewall += other.firewall;
        self.bytes_from_clients += other.bytes_from_clients;
        self.bytes_to_clients += other.bytes_to_clients;
        for (reason, n) in &other.closed {
            *self.closed.entry(reason).or_default() += n;
        }
        self.messages_from_clients += other.messages_from_clients;
        self.slow_consumers += other.slow_consumers;
        self.splice_fallbacks += other.splice_fallbacks;
        self.reads_spilled += other.reads_spilled;
        self.reads_starved += other.reads_starved;
        self.reads_rationed += other.reads_rationed;
        self.messages_from_origins += other.messages_from_origins;
        for (key, n) in &other.close_codes_seen {
            *self.close_codes_seen.entry(key.clone()).or_default() += n;
        }
        for (key, n) in &other.close_codes_sent {
            *self.close_codes_sent.entry(key.clone()).or_default() += n;
        }
        self.tls_handshakes += other.tls_handshakes;
        self.tls_resumed += other.tls_resumed;
        for (kind, n) in &other.tls_errors {
            *self.tls_errors.entry(kind).or_default() += n;
        }
        self.ktls_handoffs += other.ktls_handoffs;
        self.ktls_failures += other.ktls_failures;
        self.ktls_control_records += other.ktls_control_records;
    }
}
