//! The control answers' rows made from what the workers report: per-worker stats (with
//! close codes by route and handshake-latency percentiles) and live connections.

use std::collections::BTreeMap;

use wsedge_command::wire::{self, WorkerStats};

use crate::worker::mailbox::{ConnectionInfo, WorkerReport};

pub(super) fn worker_stats(r: &WorkerReport) -> WorkerStats {
    let s = &r.stats;
    WorkerStats {
        worker: Some(r.index),
        config_version: r.config_version,
        live: r.live as u64,
        accepted: s.accepted,
        upgraded: s.upgraded,
        plain_http: s.plain_http,
        accept_errors: s.accept_errors,
        bytes_from_clients: s.bytes_from_clients,
        bytes_to_clients: s.bytes_to_clients,
        closed: s
            .closed
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect::<BTreeMap<_, _>>(),
        handshake_latency: percentiles(&r.handshake_us),
        messages_from_clients: s.messages_from_clients,
        messages_from_origins: s.messages_from_origins,
        splice_fallbacks: s.splice_fallbacks,
        ring_buffers: r.ring_buffers as u64,
        ring_buffers_held: r.ring_held as u64,
        handshakes_in_progress: r.handshaking as u64,
        reads_spilled: s.reads_spilled,
        reads_starved: s.reads_starved,
        reads_rationed: s.reads_rationed,
        close_codes_seen: by_route_and_code(&s.close_codes_seen),
        close_codes_sent: by_route_and_code(&s.close_codes_sent),
        tls_handshakes: s.tls_handshakes,
        tls_resumed: s.tls_resumed,
        tls_errors: s
            .tls_errors
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect(),
        ktls_handoffs: s.ktls_handoffs,
        ktls_failures: s.ktls_failures,
        ktls_control_records: s.ktls_control_records,
    }
}

/// `(route, code) -> n` as `"route/code" -> n` (a JSON object key).
fn by_route_and_code(map: &BTreeMap<(String, u16), u64>) -> BTreeMap<String, u64> {
    map.iter()
        .map(|((route, code), n)| (format!("{route}/{code}"), *n))
        .collect()
}

/// Percentiles of a handshake-latency histogram (µs); `None` before any handshake.
pub(super) fn percentiles(h: &hdrhistogram::Histogram<u64>) -> Option<wire::Percentiles> {
    (!h.is_empty()).then(|| wire::Percentiles {
        count: h.len(),
        p50_us: h.value_at_quantile(0.5),
        p90_us: h.value_at_quantile(0.9),
        p99_us: h.value_at_quantile(0.99),
        max_us: h.max(),
    })
}

pub(super) fn connection_row(c: ConnectionInfo) -> wire::Connection {
    wire::Connection {
        id: c.id,
        worker: c.worker,
        client: c.client.to_string(),
        route: c.route,
        origin: c.origin.map(|o| o.to_string()),
        age_ms: c.age_ms,
        bytes_from_client: c.bytes_from_client,
        bytes_to_client: c.bytes_to_client,
        state: c.state.to_owned(),
    }
}
