//! The control wire protocol, shared by the dataplane's control socket, the control process
//! (`wsedgectl daemon`) and the CLI: typed requests and responses, their framing, and
//! blocking read/write helpers with timeouts.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of JSON. The length is
//! checked against [`MAX_FRAME`] before anything is allocated. The JSON is an [`Envelope`]:
//! the protocol version, a request id chosen by the client (echoed in the response) and the
//! body, a [`Request`] or a [`Response`] tagged by its `type` field. Configurations travel as
//! TOML text and are validated by [`crate::Config::from_toml`] on both sides.
//! docs/control-protocol.md is the reference.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Config, HostMatch, Limits, Route};
pub use crate::connection_id::ConnectionId;
use crate::duration::format_duration;

/// The protocol version this build speaks. A receiver answers any other version with
/// [`ErrorKind::UnsupportedVersion`]. Adding a request type or an optional field does not
/// change it; changing the meaning of an existing one does.
///
/// 2: connection ids are text (`1-42-7`, [`ConnectionId`]); configuration versions are the
/// dataplane's own (`apply_config` no longer carries one) and every configuration is also
/// named by its content hash.
pub const PROTOCOL_VERSION: u16 = 2;

/// The largest frame body accepted, in bytes (a configuration is a few KiB).
pub const MAX_FRAME: usize = 4 * 1024 * 1024;

/// The largest message [`Request::Publish`] (and the HTTP publish API) accepts, in bytes.
pub const MAX_PUBLISH: usize = 1024 * 1024;

/// The JSON object every frame carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<B> {
    pub version: u16,
    /// Chosen by the client; the response carries the same id (0 when the request's id could
    /// not be read).
    pub id: u64,
    pub body: B,
}

impl<B> Envelope<B> {
    /// An envelope of the current protocol version.
    pub fn new(id: u64, body: B) -> Self {
        Envelope {
            version: PROTOCOL_VERSION,
            id,
            body,
        }
    }
}

/// What a client asks. The first group is served by the dataplane and, forwarded, by the
/// control process; the second only by the control process, which owns the desired state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Process, uptime, workers and the configuration version each runs.
    Status,
    /// Counters per worker and in total.
    Stats,
    /// Live connections, optionally of one route, at most `limit` (default 100).
    Connections {
        #[serde(default)]
        route: Option<String>,
        #[serde(default)]
        limit: Option<u32>,
    },
    /// Close one connection (its id from `Connections`).
    Kill { id: ConnectionId },
    /// Validate and apply a whole configuration. `source` names it in error messages. The
    /// dataplane numbers what it runs itself (its current version + 1, see
    /// [`DataplaneStatus::config_version`]); nobody else assigns versions.
    ApplyConfig {
        toml: String,
        #[serde(default)]
        source: Option<String>,
    },
    /// The configuration in force (TOML text and version).
    ConfigShow,
    /// The routes in force.
    RoutesList,
    /// The limits in force: `[limits]`, or one route's resolved limits.
    LimitsGet {
        #[serde(default)]
        route: Option<String>,
    },
    /// Stop accepting; close what is left after `timeout_ms` (none: never forced). With
    /// `over_ms`, also close every live connection gracefully at a random moment within that
    /// window (Close 1001 on `frames` routes), so clients do not all reconnect at once.
    Drain {
        #[serde(default)]
        timeout_ms: Option<u64>,
        #[serde(default)]
        over_ms: Option<u64>,
    },
    /// Publish `message` on `channel` of every `broadcast` route, on every worker. The
    /// message is text if it is UTF-8, else binary.
    Publish {
        channel: String,
        #[serde(with = "base64_bytes", rename = "message_base64")]
        message: Vec<u8>,
    },
    /// How many clients are subscribed to `channel` (all broadcast routes, all workers).
    Presence { channel: String },
    /// The `[[list]]` network lists (or one), without expired entries.
    ListsShow {
        #[serde(default)]
        name: Option<String>,
    },
    /// Control process: re-read its configuration file (as SIGHUP does).
    Reload,
    /// Control process: add an origin (`IP:port`) to a route.
    OriginAdd { route: String, addr: String },
    /// Control process: remove an origin from a route (a route keeps at least one).
    OriginRemove { route: String, addr: String },
    /// Control process: add `cidr` to network list `name` (created if absent), expiring at
    /// `expires` (unix seconds) when given. An entry for the same network is replaced.
    ListAdd {
        name: String,
        cidr: String,
        #[serde(default)]
        expires: Option<u64>,
    },
    /// Control process: remove `cidr` from network list `name`.
    ListRemove { name: String, cidr: String },
    /// Control process: set one limit in `[limits]` or in a route, e.g. `idle_timeout`,
    /// `"5m"`.
    LimitsSet {
        key: String,
        value: String,
        #[serde(default)]
        route: Option<String>,
    },
}

impl Request {
    /// The `type` tag, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Stats => "stats",
            Request::Connections { .. } => "connections",
            Request::Kill { .. } => "kill",
            Request::ApplyConfig { .. } => "apply_config",
            Request::ConfigShow => "config_show",
            Request::RoutesList => "routes_list",
            Request::LimitsGet { .. } => "limits_get",
            Request::Drain { .. } => "drain",
            Request::Reload => "reload",
            Request::OriginAdd { .. } => "origin_add",
            Request::OriginRemove { .. } => "origin_remove",
            Request::LimitsSet { .. } => "limits_set",
            Request::Publish { .. } => "publish",
            Request::Presence { .. } => "presence",
            Request::ListsShow { .. } => "lists_show",
            Request::ListAdd { .. } => "list_add",
            Request::ListRemove { .. } => "list_remove",
        }
    }
}

/// What a server answers: typed data, or an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Status(Status),
    Stats(StatsReport),
    Connections {
        connections: Vec<Connection>,
    },
    Killed {
        id: ConnectionId,
    },
    Applied(Applied),
    Config(ConfigText),
    Routes {
        routes: Vec<RouteRow>,
    },
    Limits(LimitsView),
    Draining {
        workers: usize,
        live: u64,
    },
    /// Answer to [`Request::Publish`]: how many subscribers it was queued to.
    Published {
        channel: String,
        delivered: u64,
    },
    /// Answer to [`Request::Presence`].
    Presence {
        channel: String,
        subscribers: u64,
    },
    /// Answer to [`Request::ListsShow`].
    Lists {
        lists: Vec<ListView>,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
}

impl Response {
    /// An error response.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
        Response::Error {
            kind,
            message: message.into(),
        }
    }
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The frame was not a JSON envelope, or its body not a known request.
    BadRequest,
    /// The frame's length exceeded [`MAX_FRAME`]; the connection is closed after this reply.
    FrameTooLarge,
    UnsupportedVersion,
    /// The peer's uid is not allowed; the connection is closed after this reply.
    PermissionDenied,
    /// A configuration (or an edit of it) failed validation; the running one stays in force.
    InvalidConfig,
    /// No such connection, route or origin.
    NotFound,
    /// The dataplane (or one of its workers) did not answer in time, or cannot be reached.
    Unavailable,
    /// This endpoint does not serve the request (e.g. an edit sent to the dataplane).
    NotSupported,
    /// Too many control connections at once.
    Busy,
    Internal,
    /// An error kind this build does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::FrameTooLarge => "frame_too_large",
            ErrorKind::UnsupportedVersion => "unsupported_version",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::InvalidConfig => "invalid_config",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::NotSupported => "not_supported",
            ErrorKind::Busy => "busy",
            ErrorKind::Internal => "internal",
            ErrorKind::Unknown => "unknown",
        }
    }
}

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
}

/// Answer to [`Request::Stats`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsReport {
    pub workers: Vec<WorkerStats>,
    pub total: WorkerStats,
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
    /// Splice directions relayed buffered because no pipe could be created (fd exhaustion).
    #[serde(default)]
    pub splice_fallbacks: u64,
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
                    cidr: format!("{}/{}", e.addr, e.len),
                    expires: e.expires,
                })
                .collect(),
        })
        .collect();
    (name.is_none() || !lists.is_empty()).then_some(lists)
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

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Bytes as a standard base64 string in JSON (no dependency: the alphabet is 64 bytes).
mod base64_bytes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub(super) fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    pub(super) fn decode(text: &str) -> Option<Vec<u8>> {
        let text = text.as_bytes();
        if !text.len().is_multiple_of(4) {
            return None;
        }
        let quads = text.len() / 4;
        let mut out = Vec::with_capacity(quads * 3);
        for (q, quad) in text.chunks(4).enumerate() {
            let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
            if pad > 2 || (pad > 0 && q + 1 != quads) {
                return None;
            }
            let mut n = 0u32;
            for &c in &quad[..4 - pad] {
                let v = ALPHABET.iter().position(|&a| a == c)? as u32;
                n = (n << 6) | v;
            }
            n <<= 6 * pad as u32;
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.extend_from_slice(&bytes[..3 - pad]);
        }
        Some(out)
    }

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        decode(&text).ok_or_else(|| D::Error::custom("not standard base64"))
    }
}

/// The routes of a configuration as [`RouteRow`]s.
pub fn route_rows(config: &Config) -> Vec<RouteRow> {
    config.routes.iter().map(route_row).collect()
}

fn route_row(r: &Route) -> RouteRow {
    RouteRow {
        name: r.name.clone(),
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

// ---------------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------------

/// Why a frame could not be read, written or decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection between frames.
    #[error("connection closed")]
    Closed,
    #[error("truncated frame: the connection closed after {got} of {want} bytes")]
    Truncated { got: usize, want: usize },
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("protocol version {0} is not supported (this build speaks {PROTOCOL_VERSION})")]
    Version(u16),
    #[error("response id {got} does not match request id {want}")]
    IdMismatch { got: u64, want: u64 },
}

impl WireError {
    /// Whether the error came from a read or write timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, WireError::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }
}

/// Reads exactly `buf.len()` bytes; `Ok(n < len)` only at end of stream.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads one frame body. The announced length is checked against `max` before the body is
/// allocated; a stream that ends inside a frame is [`WireError::Truncated`].
pub fn read_frame(r: &mut impl Read, max: usize) -> Result<Vec<u8>, WireError> {
    let mut len_bytes = [0u8; 4];
    match read_full(r, &mut len_bytes)? {
        0 => return Err(WireError::Closed),
        4 => {}
        got => return Err(WireError::Truncated { got, want: 4 }),
    }
    let len = u32::from_be_bytes(len_bytes) as usize;
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    let got = read_full(r, &mut body)?;
    if got < len {
        return Err(WireError::Truncated {
            got: got + 4,
            want: len + 4,
        });
    }
    Ok(body)
}

/// Writes one frame (length prefix and body in one write).
pub fn write_frame(w: &mut impl Write, body: &[u8]) -> Result<(), WireError> {
    if body.len() > MAX_FRAME {
        return Err(WireError::TooLarge {
            len: body.len(),
            max: MAX_FRAME,
        });
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// Encodes and writes one envelope.
pub fn send<B: Serialize>(w: &mut impl Write, envelope: &Envelope<B>) -> Result<(), WireError> {
    let body = serde_json::to_vec(envelope).map_err(|e| WireError::Malformed(e.to_string()))?;
    write_frame(w, &body)
}

/// A request that could not be decoded, with what could be read of its envelope (so the
/// error reply can carry the request's id).
#[derive(Debug)]
pub struct DecodeError {
    pub id: Option<u64>,
    pub kind: ErrorKind,
    pub message: String,
}

/// Decodes a request frame body. Garbage, a missing field, an unknown `type` and another
/// protocol version are all errors the server answers (with the request's id when it could
/// be read).
pub fn decode_request(body: &[u8]) -> Result<Envelope<Request>, DecodeError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| DecodeError {
        id: None,
        kind: ErrorKind::BadRequest,
        message: format!("not a JSON message: {e}"),
    })?;
    let id = value.get("id").and_then(serde_json::Value::as_u64);
    let version = value.get("version").and_then(serde_json::Value::as_u64);
    match version {
        Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(DecodeError {
                id,
                kind: ErrorKind::UnsupportedVersion,
                message: format!(
                    "protocol version {v} is not supported (this build speaks {PROTOCOL_VERSION})"
                ),
            });
        }
        None => {
            return Err(DecodeError {
                id,
                kind: ErrorKind::BadRequest,
                message: "the envelope has no numeric \"version\"".to_owned(),
            });
        }
    }
    serde_json::from_value(value).map_err(|e| DecodeError {
        id,
        kind: ErrorKind::BadRequest,
        message: format!("not a valid request: {e}"),
    })
}

/// Decodes a response frame body.
pub fn decode_response(body: &[u8]) -> Result<Envelope<Response>, WireError> {
    let envelope: Envelope<Response> =
        serde_json::from_slice(body).map_err(|e| WireError::Malformed(e.to_string()))?;
    if envelope.version != PROTOCOL_VERSION {
        return Err(WireError::Version(envelope.version));
    }
    Ok(envelope)
}

/// A blocking client connection to a control socket (the dataplane's or the control
/// process's), with read and write timeouts.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    next_id: u64,
}

impl Client {
    /// Connects to the socket at `path`; every later read and write waits at most `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Client, WireError> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Client { stream, next_id: 1 })
    }

    /// Changes the read timeout (e.g. for a request that waits on workers).
    pub fn set_read_timeout(&self, timeout: Duration) -> Result<(), WireError> {
        self.stream.set_read_timeout(Some(timeout))?;
        Ok(())
    }

    /// Sends `request` and waits for its response.
    pub fn call(&mut self, request: &Request) -> Result<Response, WireError> {
        let id = self.next_id;
        self.next_id += 1;
        if let Err(e) = send(&mut self.stream, &Envelope::new(id, request)) {
            // A server that refuses a peer answers at once and closes, so writing the request
            // can fail while its answer already waits to be read: prefer the answer.
            let peer_gone = matches!(&e, WireError::Io(io) if matches!(
                io.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ));
            if !peer_gone {
                return Err(e);
            }
            return match read_frame(&mut self.stream, MAX_FRAME) {
                Ok(body) => Ok(decode_response(&body)?.body),
                Err(_) => Err(e),
            };
        }
        let body = read_frame(&mut self.stream, MAX_FRAME)?;
        let envelope = decode_response(&body)?;
        // id 0: the server could not read our id (it answers an undecodable request).
        if envelope.id != id && envelope.id != 0 {
            return Err(WireError::IdMismatch {
                got: envelope.id,
                want: id,
            });
        }
        Ok(envelope.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn frame_of(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, body).expect("write");
        out
    }

    #[test]
    fn request_round_trip() {
        let requests = [
            Request::Status,
            Request::Connections {
                route: Some("chat".into()),
                limit: Some(5),
            },
            Request::Kill {
                id: ConnectionId::new(3, 17, 5),
            },
            Request::ApplyConfig {
                toml: "[[route]]\n".into(),
                source: Some("f.toml".into()),
            },
            Request::Drain {
                timeout_ms: Some(1500),
                over_ms: None,
            },
            Request::Drain {
                timeout_ms: None,
                over_ms: Some(2000),
            },
            Request::Publish {
                channel: "news".into(),
                message: vec![0, 1, 2, 255, b'a'],
            },
            Request::Presence {
                channel: "news".into(),
            },
            Request::ListAdd {
                name: "blocked".into(),
                cidr: "10.0.0.0/8".into(),
                expires: Some(1_800_000_000),
            },
            Request::LimitsSet {
                key: "idle_timeout".into(),
                value: "5m".into(),
                route: None,
            },
        ];
        for (i, request) in requests.into_iter().enumerate() {
            let mut buf = Vec::new();
            send(&mut buf, &Envelope::new(i as u64, &request)).expect("send");
            let body = read_frame(&mut Cursor::new(buf), MAX_FRAME).expect("read");
            let decoded = decode_request(&body).expect("decode");
            assert_eq!(decoded.id, i as u64);
            assert_eq!(decoded.body, request);
        }
    }

    #[test]
    fn response_round_trip() {
        let response = Response::Stats(StatsReport {
            workers: vec![WorkerStats {
                worker: Some(0),
                accepted: 3,
                closed: [("no_route".to_owned(), 2)].into_iter().collect(),
                ..WorkerStats::default()
            }],
            total: WorkerStats::default(),
        });
        let mut buf = Vec::new();
        send(&mut buf, &Envelope::new(9, &response)).expect("send");
        let body = read_frame(&mut Cursor::new(buf), MAX_FRAME).expect("read");
        let decoded = decode_response(&body).expect("decode");
        assert_eq!(decoded.body, response);
        let err = Response::error(ErrorKind::NotFound, "no such connection");
        let json = serde_json::to_string(&Envelope::new(1, &err)).expect("json");
        assert_eq!(
            json,
            r#"{"version":2,"id":1,"body":{"type":"error","kind":"not_found","message":"no such connection"}}"#
        );
    }

    /// A reader that fails the test if more than the length prefix is read.
    struct OnlyPrefix {
        data: [u8; 4],
        pos: usize,
    }

    impl Read for OnlyPrefix {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            assert!(self.pos < 4, "read past the length prefix");
            let n = buf.len().min(4 - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn oversize_length_rejected_before_reading_the_body() {
        let mut r = OnlyPrefix {
            data: u32::MAX.to_be_bytes(),
            pos: 0,
        };
        match read_frame(&mut r, MAX_FRAME) {
            Err(WireError::TooLarge { len, max }) => {
                assert_eq!(len, u32::MAX as usize);
                assert_eq!(max, MAX_FRAME);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn truncated_frames() {
        assert!(matches!(
            read_frame(&mut Cursor::new(Vec::new()), MAX_FRAME),
            Err(WireError::Closed)
        ));
        assert!(matches!(
            read_frame(&mut Cursor::new(vec![0, 0]), MAX_FRAME),
            Err(WireError::Truncated { got: 2, want: 4 })
        ));
        let mut frame = frame_of(br#"{"version":1}"#);
        frame.truncate(8);
        assert!(matches!(
            read_frame(&mut Cursor::new(frame), MAX_FRAME),
            Err(WireError::Truncated { got: 8, want: 17 })
        ));
    }

    #[test]
    fn bad_requests_are_errors_with_the_id_when_known() {
        let e = decode_request(b"\x00\xffgarbage").expect_err("garbage");
        assert_eq!((e.id, e.kind), (None, ErrorKind::BadRequest));
        let e = decode_request(br#"{"version":2,"id":4,"body":{"type":"self_destruct"}}"#)
            .expect_err("unknown type");
        assert_eq!((e.id, e.kind), (Some(4), ErrorKind::BadRequest));
        assert!(e.message.contains("self_destruct"), "{}", e.message);
        let e = decode_request(br#"{"version":9,"id":5,"body":{"type":"status"}}"#)
            .expect_err("version");
        assert_eq!((e.id, e.kind), (Some(5), ErrorKind::UnsupportedVersion));
        let e = decode_request(br#"{"version":2,"id":6,"body":{"type":"kill"}}"#)
            .expect_err("missing field");
        assert_eq!((e.id, e.kind), (Some(6), ErrorKind::BadRequest));
        let ok = decode_request(br#"{"version":2,"id":7,"body":{"type":"status","extra":1}}"#)
            .expect("unknown fields are ignored");
        assert_eq!(ok.body, Request::Status);
    }

    #[test]
    fn protocol_1_peers_are_told_the_version_changed() {
        let e = decode_request(br#"{"version":1,"id":5,"body":{"type":"status"}}"#)
            .expect_err("version 1");
        assert_eq!((e.id, e.kind), (Some(5), ErrorKind::UnsupportedVersion));
        assert!(e.message.contains("this build speaks 2"), "{}", e.message);
    }

    #[test]
    fn kill_takes_the_text_id_or_the_old_integer() {
        let id = ConnectionId::new(1, 42, 7);
        for body in [
            r#"{"version":2,"id":1,"body":{"type":"kill","id":"1-42-7"}}"#.to_owned(),
            format!(
                r#"{{"version":2,"id":1,"body":{{"type":"kill","id":{}}}}}"#,
                id.to_raw()
            ),
        ] {
            let decoded = decode_request(body.as_bytes()).expect(&body);
            assert_eq!(decoded.body, Request::Kill { id });
        }
        let e = decode_request(br#"{"version":2,"id":2,"body":{"type":"kill","id":"1-42"}}"#)
            .expect_err("bad id");
        assert_eq!((e.id, e.kind), (Some(2), ErrorKind::BadRequest));
        assert!(e.message.contains("not a connection id"), "{}", e.message);
        let json = serde_json::to_string(&Response::Killed { id }).expect("json");
        assert_eq!(json, r#"{"type":"killed","id":"1-42-7"}"#);
    }

    #[test]
    fn config_hash_is_short_stable_and_content_only() {
        let a = config_hash("[[route]]\nname = \"a\"\n");
        assert_eq!(a.len(), 12);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(a, config_hash("[[route]]\nname = \"a\"\n"));
        assert_ne!(a, config_hash("[[route]]\nname = \"b\"\n"));
        // SHA-1 of the empty string starts da39a3ee5e6b.
        assert_eq!(config_hash(""), "da39a3ee5e6b");
    }

    #[test]
    fn unknown_error_kind_from_a_newer_peer() {
        let body = br#"{"version":2,"id":1,"body":{"type":"error","kind":"quota","message":"m"}}"#;
        let decoded = decode_response(body).expect("decode");
        assert_eq!(
            decoded.body,
            Response::error(ErrorKind::Unknown, "m"),
            "unknown kinds decode as Unknown"
        );
    }

    #[test]
    fn base64_round_trip() {
        for n in 0..40usize {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + n) as u8).collect();
            let text = base64_bytes::encode(&bytes);
            assert_eq!(base64_bytes::decode(&text), Some(bytes), "{text}");
        }
        assert_eq!(base64_bytes::encode(b"hi!"), "aGkh");
        assert_eq!(base64_bytes::encode(&[0, 1, 2, 255]), "AAEC/w==");
        assert_eq!(base64_bytes::decode("AAEC/w=="), Some(vec![0, 1, 2, 255]));
        for bad in ["A", "AA=A", "====", "AA==AAAA", "A\u{e9}A"] {
            assert_eq!(base64_bytes::decode(bad), None, "{bad}");
        }
        let e = decode_request(
            br#"{"version":2,"id":3,"body":{"type":"publish","channel":"c","message_base64":"**"}}"#,
        )
        .expect_err("bad base64");
        assert_eq!((e.id, e.kind), (Some(3), ErrorKind::BadRequest));
    }

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
