//! The bodies of the control protocol's answers: status, stats, connections, configuration
//! changes, routes, limits and network lists, and how the configuration-backed ones are read
//! off a [`Config`] ([`route_rows`], [`limits_view`], [`list_views`]), by the dataplane and
//! the control process alike.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[cfg(doc)]
use super::Request;
use crate::config::{Config, HostMatch, Limits, Route, SniPattern};
use crate::connection_id::ConnectionId;
use crate::duration::format_duration;

/// Answer to [`Request::Status`]. The dataplane fills `dataplane`; the control process adds
/// `daemon` (and leaves `dataplane` empty when it cannot reach it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub dataplane: Option<DataplaneStatus>,
    #[serde(default)]
    pub daemon: Option<DaemonStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataplaneStatus {
    pub pid: u32,
    /// The wsedge build version.
    pub build: String,
    pub uptime_ms: u64,
    /// The version of the configuration in force, numbered by this dataplane process: 0 is
    /// the file it started with, each applied configuration is the previous version + 1, so
    /// it never goes backwards while the process runs (a restarted dataplane starts at 0
    /// again: `config_hash` names a configuration across restarts).
    pub config_version: u64,
    /// [`config_hash`] of the configuration in force.
    pub config_hash: String,
    pub config_source: String,
    pub workers: Vec<WorkerStatus>,
    /// This process's generation: 1 for a dataplane started from scratch, the previous
    /// one's + 1 after each binary upgrade (`wsedgectl upgrade`). 0 from an older build.
    #[serde(default)]
    pub generation: u64,
    /// The older generations still draining after an upgrade (newest first), with their
    /// live connections.
    #[serde(default)]
    pub old_generations: Vec<GenerationStatus>,
}

/// An old generation of the dataplane, still draining after a binary upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationStatus {
    pub generation: u64,
    pub pid: u32,
    pub build: String,
    /// Connections it still serves.
    pub live: u64,
}

/// Answer to [`Request::Upgrade`]: the new generation is serving; the old one drains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upgraded {
    /// The new generation's process and number.
    pub pid: u32,
    pub generation: u64,
    pub build: String,
    /// The generation it replaced (now draining).
    pub old_pid: u32,
    pub old_generation: u64,
    /// Connections the old generation had when it stopped accepting.
    pub old_live: u64,
    /// The window over which they are closed (Close 1001 on `frames` routes).
    pub drain_window_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub index: usize,
    /// The configuration version this worker runs.
    pub config_version: u64,
    pub live: u64,
    /// False once drained.
    pub accepting: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub uptime_ms: u64,
    pub config_file: String,
    /// [`config_hash`] of the desired configuration (the daemon does not number
    /// configurations: the dataplane does).
    pub desired_hash: String,
    pub dataplane_socket: String,
    pub dataplane_reachable: bool,
    /// The dataplane, and each of its workers, runs the desired configuration.
    pub in_sync: bool,
    #[serde(default)]
    pub last_error: Option<String>,
    /// The fleet document from etcd, when `[fleet]` is configured.
    #[serde(default)]
    pub fleet: Option<Box<super::FleetView>>,
}

/// Answer to [`Request::Stats`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsReport {
    pub workers: Vec<WorkerStats>,
    pub total: WorkerStats,
    /// Each JavaScript function, summed over the workers.
    #[serde(default)]
    pub functions: Vec<FunctionRow>,
}

/// One JavaScript function (a `js` route), summed over the workers: the rows of
/// [`Request::FunctionsList`] and the per-function metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionRow {
    /// The route's name.
    pub name: String,
    /// The version serving new connections (1 at start, + 1 for each new code deployed).
    pub version: u64,
    /// Live sockets (server sockets and client-less outbound ones).
    pub sockets: u64,
    /// Calls into JavaScript: requests, socket events, timers.
    pub invocations: u64,
    /// Exceptions, interrupts and memory faults.
    pub errors: u64,
    /// Events interrupted at the CPU budget (also counted in `errors`).
    pub interrupts: u64,
    /// Time spent in JavaScript, in microseconds.
    pub cpu_us: u64,
    /// Bytes the function's runtimes hold now.
    pub memory_bytes: u64,
    /// Runtimes torn down at their memory cap and recreated.
    pub restarts: u64,
}

impl FunctionRow {
    /// Adds `other`'s counters into `self` (the highest version wins).
    pub fn add(&mut self, other: &FunctionRow) {
        self.version = self.version.max(other.version);
        self.sockets += other.sockets;
        self.invocations += other.invocations;
        self.errors += other.errors;
        self.interrupts += other.interrupts;
        self.cpu_us += other.cpu_us;
        self.memory_bytes += other.memory_bytes;
        self.restarts += other.restarts;
    }
}

/// One worker's counters (or their sum, with `worker` empty).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStats {
    pub worker: Option<usize>,
    pub config_version: u64,
    pub live: u64,
    pub accepted: u64,
    pub upgraded: u64,
    pub plain_http: u64,
    pub accept_errors: u64,
    pub bytes_from_clients: u64,
    pub bytes_to_clients: u64,
    /// Connections ended, by close reason (see [`is_rejection`]).
    pub closed: BTreeMap<String, u64>,
    /// Handshake latency; absent until the dataplane measures it.
    #[serde(default)]
    pub handshake_latency: Option<Percentiles>,
    /// WebSocket messages seen by `frames` relays, from clients and from origins.
    #[serde(default)]
    pub messages_from_clients: u64,
    #[serde(default)]
    pub messages_from_origins: u64,
    /// Close codes in Close frames seen (from either side) and sent by the proxy, by route:
    /// `"route/code"` -> count.
    #[serde(default)]
    pub close_codes_seen: BTreeMap<String, u64>,
    #[serde(default)]
    pub close_codes_sent: BTreeMap<String, u64>,
    /// Splice directions relayed buffered: no pipe could be created (fd exhaustion), or TLS
    /// stayed in user space (no kTLS).
    #[serde(default)]
    pub splice_fallbacks: u64,
    /// The worker's provided-buffer ring (where reads land): its buffers and those held now
    /// (relayed bytes waiting for a send). A ring that stays nearly all held means reads are
    /// being copied out (`reads_spilled`) or stalled for buffers (`reads_starved`).
    #[serde(default)]
    pub ring_buffers: u64,
    #[serde(default)]
    pub ring_buffers_held: u64,
    /// Clients accepted and not yet answered (their handshake in progress: TLS, head,
    /// origin). Their completions are served while a turn of relay work runs.
    #[serde(default)]
    pub handshakes_in_progress: u64,
    /// Stream reads copied out of the ring because it ran low, reads that found it empty,
    /// and the one-buffer reads that then served the waiting ones in turn.
    #[serde(default)]
    pub reads_spilled: u64,
    #[serde(default)]
    pub reads_starved: u64,
    #[serde(default)]
    pub reads_rationed: u64,
    /// TLS handshakes finished on TLS listeners, and how many resumed a session.
    #[serde(default)]
    pub tls_handshakes: u64,
    #[serde(default)]
    pub tls_resumed: u64,
    /// TLS failures by kind (`plaintext_http`, `bad_record`, `unknown_server_name`, ...).
    #[serde(default)]
    pub tls_errors: BTreeMap<String, u64>,
    /// kTLS: client connections whose TLS went to the kernel for a splice, hand-offs the
    /// kernel refused, and reads ended by a record that was not application data.
    #[serde(default)]
    pub ktls_handoffs: u64,
    #[serde(default)]
    pub ktls_failures: u64,
    #[serde(default)]
    pub ktls_control_records: u64,
}

impl WorkerStats {
    /// Adds `other`'s counters into `self` (`worker` and `config_version` are untouched).
    pub fn add(&mut self, other: &WorkerStats) {
        self.live += other.live;
        self.accepted += other.accepted;
        self.upgraded += other.upgraded;
        self.plain_http += other.plain_http;
        self.accept_errors += other.accept_errors;
        self.bytes_from_clients += other.bytes_from_clients;
        self.bytes_to_clients += other.bytes_to_clients;
        for (reason, n) in &other.closed {
            *self.closed.entry(reason.clone()).or_default() += n;
        }
        self.messages_from_clients += other.messages_from_clients;
        self.messages_from_origins += other.messages_from_origins;
        self.splice_fallbacks += other.splice_fallbacks;
        self.ring_buffers += other.ring_buffers;
        self.ring_buffers_held += other.ring_buffers_held;
        self.handshakes_in_progress += other.handshakes_in_progress;
        self.reads_spilled += other.reads_spilled;
        self.reads_starved += other.reads_starved;
        self.reads_rationed += other.reads_rationed;
        self.tls_handshakes += other.tls_handshakes;
        self.tls_resumed += other.tls_resumed;
        self.ktls_handoffs += other.ktls_handoffs;
        self.ktls_failures += other.ktls_failures;
        self.ktls_control_records += other.ktls_control_records;
        for (kind, n) in &other.tls_errors {
            *self.tls_errors.entry(kind.clone()).or_default() += n;
        }
        for (key, n) in &other.close_codes_seen {
            *self.close_codes_seen.entry(key.clone()).or_default() += n;
        }
        for (key, n) in &other.close_codes_sent {
            *self.close_codes_sent.entry(key.clone()).or_default() += n;
        }
    }

    /// Connections refused or failed before relaying, by reason.
    pub fn rejected(&self) -> impl Iterator<Item = (&str, u64)> {
        self.closed
            .iter()
            .filter(|(reason, _)| is_rejection(reason))
            .map(|(r, n)| (r.as_str(), *n))
    }
}

/// Whether a close reason means the connection was refused or failed (an error answer, no
/// route, an unreachable origin...) rather than ended after it was served.
pub fn is_rejection(reason: &str) -> bool {
    !matches!(
        reason,
        "client_closed"
            | "origin_closed"
            | "client_reset"
            | "origin_reset"
            | "client_gone"
            | "http_done"
            | "not_upgraded"
            | "idle_timeout"
            | "max_connection_time"
            | "shutdown"
            | "killed"
            | "drained"
    )
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// One live connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    /// Names the worker, slot and incarnation; use it with [`Request::Kill`].
    pub id: ConnectionId,
    pub worker: usize,
    pub client: String,
    pub route: Option<String>,
    pub origin: Option<String>,
    pub age_ms: u64,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    /// client_head, connecting, origin_head or relay.
    pub state: String,
}

/// Answer to a configuration change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The version the dataplane runs it as (see [`DataplaneStatus::config_version`]);
    /// absent when the control process could not push it (`pushed: false`).
    pub version: Option<u64>,
    /// [`config_hash`] of the configuration.
    pub hash: String,
    pub source: String,
    /// Whether the dataplane has it (the control process answers `false` when the dataplane
    /// is unreachable: it pushes the configuration when the dataplane comes back).
    pub pushed: bool,
    /// Workers that confirmed running `version`.
    pub workers_confirmed: usize,
    /// Changed fields that take effect only when the dataplane restarts (listen addresses,
    /// worker count, relay buffers, access log, the `[control]` table).
    #[serde(default)]
    pub restart_required: Vec<String>,
}

/// A certificate as `certs` lists it: the TLS crate's own record.
pub use wsedge_tls::CertInfo;

/// Answer to [`Request::ConfigShow`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigText {
    /// The dataplane: the version in force. The control process: the version the dataplane
    /// runs the desired configuration as, absent while it does not run it.
    pub version: Option<u64>,
    /// [`config_hash`] of `toml`.
    pub hash: String,
    pub source: String,
    pub toml: String,
}

/// One route, for `routes list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRow {
    pub name: String,
    /// The route's `sni` (`api.example.com`, `*.example.com`); absent when it has none
    /// (and from a dataplane older than the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// `*` for any host.
    pub host: String,
    pub path_prefix: String,
    pub origins: Vec<String>,
    pub relay: String,
}

/// Answer to [`Request::LimitsGet`]: each limit as it is written in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsView {
    pub route: Option<String>,
    pub limits: BTreeMap<String, String>,
}

/// One network list, for `lists show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListView {
    pub name: String,
    pub entries: Vec<ListEntryView>,
}

/// One entry of a network list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListEntryView {
    /// `addr/len`.
    pub cidr: String,
    /// Unix seconds; absent = never.
    #[serde(default)]
    pub expires: Option<u64>,
}

/// The network lists of `config` (only the one named `name`, when given), without the
/// entries expired at `unix_now`; `None` if no list has that name.
pub fn list_views(config: &Config, name: Option<&str>, unix_now: u64) -> Option<Vec<ListView>> {
    let lists: Vec<ListView> = config
        .firewall
        .lists
        .iter()
        .filter(|l| name.is_none_or(|n| n == l.name))
        .map(|l| ListView {
            name: l.name.clone(),
            entries: l
                .entries
                .iter()
                .filter(|e| e.expires.is_none_or(|x| unix_now < x))
                .map(|e| ListEntryView {
                    cidr: e.cidr.to_string(),
                    expires: e.expires,
                })
                .collect(),
        })
        .collect();
    (name.is_none() || !lists.is_empty()).then_some(lists)
}

/// The routes of a configuration as [`RouteRow`]s.
pub fn route_rows(config: &Config) -> Vec<RouteRow> {
    config.routes.iter().map(route_row).collect()
}

fn route_row(r: &Route) -> RouteRow {
    RouteRow {
        name: r.name.clone(),
        sni: match &r.sni {
            SniPattern::Any => None,
            SniPattern::Exact(name) => Some(name.clone()),
            SniPattern::Wildcard(parent) => Some(format!("*.{parent}")),
        },
        host: match &r.host {
            HostMatch::Any => "*".to_owned(),
            HostMatch::Exact(h) => h.clone(),
            HostMatch::Suffix(s) => format!("*{s}"),
        },
        path_prefix: r.path_prefix.clone(),
        origins: r.origins.iter().map(|o| o.to_string()).collect(),
        relay: r.relay.as_str().to_owned(),
    }
}

/// The `[limits]` table, or one route's resolved limits; `None` if no route has that name.
pub fn limits_view(config: &Config, route: Option<&str>) -> Option<LimitsView> {
    let limits: &Limits = match route {
        None => &config.limits,
        Some(name) => &config.routes.iter().find(|r| r.name == name)?.limits,
    };
    let mut map = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        map.insert(k.to_owned(), v);
    };
    if route.is_none() {
        put("max_head_bytes", limits.max_head_bytes.to_string());
        put("max_headers", limits.max_headers.to_string());
        put(
            "handshake_timeout",
            format_duration(limits.handshake_timeout),
        );
    }
    put(
        "origin_connect_timeout",
        format_duration(limits.origin_connect_timeout),
    );
    put(
        "origin_handshake_timeout",
        format_duration(limits.origin_handshake_timeout),
    );
    put("idle_timeout", format_duration(limits.idle_timeout));
    put(
        "max_connection_time",
        format_duration(limits.max_connection_time),
    );
    put(
        "max_connection_time_jitter",
        limits.max_connection_time_jitter.to_string(),
    );
    Some(LimitsView {
        route: route.map(str::to_owned),
        limits: map,
    })
}

/// The identity of a configuration: the first 12 hex digits (48 bits) of the SHA-1 of its
/// TOML text, exactly as applied (comments and layout included). Equal texts have equal
/// hashes whoever applied them and whatever version a dataplane gave them; it is an
/// identity, not a security check.
pub fn config_hash(toml: &str) -> String {
    use sha1::{Digest, Sha1};
    let digest = Sha1::digest(toml.as_bytes());
    let mut out = String::with_capacity(12);
    for b in &digest[..6] {
        use std::fmt::Write as _;
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_views_hide_expired_entries() {
        let config = Config::from_toml(
            "[[list]]\nname = \"a\"\nentries = [\"10.0.0.0/8\", { cidr = \"192.0.2.1\", expires = 100 }, { cidr = \"2001:db8::/32\", expires = 300 }]\n[[list]]\nname = \"b\"\n",
            "t",
        )
        .expect("valid");
        let all = list_views(&config, None, 200).expect("all");
        assert_eq!(all.len(), 2);
        let cidrs: Vec<&str> = all[0].entries.iter().map(|e| e.cidr.as_str()).collect();
        assert_eq!(cidrs, ["10.0.0.0/8", "2001:db8::/32"]);
        assert_eq!(all[0].entries[1].expires, Some(300));
        assert_eq!(
            list_views(&config, Some("a"), 50).expect("a")[0]
                .entries
                .len(),
            3
        );
        assert!(
            list_views(&config, Some("b"), 0).expect("b")[0]
                .entries
                .is_empty()
        );
        assert!(list_views(&config, Some("zz"), 0).is_none());
    }

    #[test]
    fn route_rows_and_limits() {
        let config = Config::from_toml(
            "[limits]\nidle_timeout = \"1m\"\n[[route]]\nname = \"a\"\nhost = \"*.x.org\"\norigins = [\"127.0.0.1:1\"]\nidle_timeout = \"90s\"\n",
            "t",
        )
        .expect("valid");
        let rows = route_rows(&config);
        assert_eq!(rows[0].sni, None);
        assert_eq!(rows[0].host, "*.x.org");
        assert_eq!(rows[0].origins, vec!["127.0.0.1:1"]);
        let global = limits_view(&config, None).expect("global");
        assert_eq!(global.limits["idle_timeout"], "1m");
        assert_eq!(global.limits["max_headers"], "64");
        let route = limits_view(&config, Some("a")).expect("route");
        assert_eq!(route.limits["idle_timeout"], "90s");
        assert!(!route.limits.contains_key("max_headers"));
        assert!(limits_view(&config, Some("zz")).is_none());
    }
}
