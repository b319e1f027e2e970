//! The control protocol's messages: the [`Envelope`] every frame carries, the [`Request`]s a
//! client sends, the [`Response`]s a server answers (their bodies are in [`super::views`]),
//! and the [`ErrorKind`]s of a failed request. Serialised as JSON by [`super::framing`].

use serde::{Deserialize, Serialize};

#[cfg(doc)]
use super::MAX_FRAME;
use super::health::PoolHealth;
use super::views::{
    Applied, CertInfo, ConfigText, Connection, FunctionRow, LimitsView, ListView, RouteRow,
    StatsReport, Status, Upgraded,
};

/// Whether a name is a channel name: the rule the dataplane's broadcast hubs apply, defined
/// once in `wsedge_proto::channels` and used from here by every control client.
pub use wsedge_proto::channels::{MAX_CHANNEL_LEN, is_valid_channel};

use crate::connection_id::ConnectionId;

/// The protocol version this build speaks. A receiver answers any other version with
/// [`ErrorKind::UnsupportedVersion`]. Adding a request type or an optional field does not
/// change it; changing the meaning of an existing one does.
///
/// 2: connection ids are text (`1-42-7`, [`ConnectionId`]); configuration versions are the
/// dataplane's own (`apply_config` no longer carries one) and every configuration is also
/// named by its content hash.
pub const PROTOCOL_VERSION: u16 = 2;

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
    /// [`DataplaneStatus::config_version`](super::views::DataplaneStatus::config_version)); nobody else assigns versions.
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
    /// Every route's origins with their health: state, why, last check, ejections.
    OriginsHealth,
    /// The `[[list]]` network lists (or one), without expired entries.
    ListsShow {
        #[serde(default)]
        name: Option<String>,
    },
    /// The certificates in force: names, issuer, expiry (forwarded to the dataplane).
    Certs,
    /// Read the certificate, key and CA files of the configuration in force again and serve
    /// them to new handshakes on every worker (as SIGHUP of the dataplane does); live
    /// connections keep theirs. A broken file is refused and the old certificates keep
    /// serving (forwarded to the dataplane).
    CertsReload,
    /// The JavaScript functions: version, live sockets, invocations, errors, CPU time,
    /// memory (summed over the workers).
    FunctionsList,
    /// Serve route `route`'s JavaScript function from the module at `script` (an absolute
    /// path the dataplane can read; its sibling imports are read from its directory): the
    /// route's `script` is set to it and the configuration applied, so new connections get
    /// the new code while live ones finish on theirs. A module that does not compile is
    /// refused with its `file:line:column` and the old one keeps serving. The control
    /// process persists it like any edit.
    FunctionDeploy { route: String, script: String },
    /// Binary upgrade: start `binary` (default: the path this dataplane was started from)
    /// as the next generation, hand it the listening sockets, and once it is ready stop
    /// accepting and drain over `dataplane.upgrade_drain_window`. Answered once the new
    /// generation serves ([`Response::Upgraded`]) or with `upgrade_failed` (the old one
    /// keeps serving) or `upgrade_refused`.
    Upgrade {
        #[serde(default)]
        binary: Option<String>,
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
            Request::Certs => "certs",
            Request::CertsReload => "certs_reload",
            Request::Upgrade { .. } => "upgrade",
            Request::Reload => "reload",
            Request::OriginAdd { .. } => "origin_add",
            Request::OriginRemove { .. } => "origin_remove",
            Request::LimitsSet { .. } => "limits_set",
            Request::Publish { .. } => "publish",
            Request::Presence { .. } => "presence",
            Request::OriginsHealth => "origins_health",
            Request::ListsShow { .. } => "lists_show",
            Request::ListAdd { .. } => "list_add",
            Request::ListRemove { .. } => "list_remove",
            Request::FunctionsList => "functions_list",
            Request::FunctionDeploy { .. } => "function_deploy",
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
    /// Answer to [`Request::Presence`]: `subscribers` is the total; with a `[broker]`, the
    /// fleet's (every host's count as kept in the broker) and `hosts` lists them.
    Presence {
        channel: String,
        subscribers: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        hosts: Vec<HostPresence>,
    },
    /// Answer to [`Request::OriginsHealth`].
    Origins {
        pools: Vec<PoolHealth>,
    },
    /// Answer to [`Request::ListsShow`].
    Lists {
        lists: Vec<ListView>,
    },
    /// Answer to [`Request::Certs`].
    Certs {
        certificates: Vec<CertInfo>,
    },
    /// Answer to [`Request::CertsReload`]: what now serves, and how many workers confirmed
    /// serving it.
    CertsReloaded {
        certificates: Vec<CertInfo>,
        workers_confirmed: usize,
    },
    /// Answer to [`Request::FunctionsList`].
    Functions {
        functions: Vec<FunctionRow>,
    },
    /// Answer to [`Request::Upgrade`].
    Upgraded(Upgraded),
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
    /// A binary upgrade failed (the new binary did not start, crashed, refused what it was
    /// handed, or was not ready in time); the running generation keeps serving.
    UpgradeFailed,
    /// A binary upgrade was not attempted: one is under way, or `max_old_generations` old
    /// generations are still draining, or this generation no longer accepts.
    UpgradeRefused,
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
            ErrorKind::UpgradeFailed => "upgrade_failed",
            ErrorKind::UpgradeRefused => "upgrade_refused",
            ErrorKind::Internal => "internal",
            ErrorKind::Unknown => "unknown",
        }
    }
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

/// One host's subscribers of a channel, in a fleet-wide [`Response::Presence`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPresence {
    /// The host's `[broker] host` name.
    pub host: String,
    pub subscribers: u64,
}

/// Checks the channel of a [`Request::Publish`] or [`Request::Presence`] by
/// [`is_valid_channel`]; the error says what a channel name is.
pub fn check_channel(channel: &str) -> Result<(), String> {
    if is_valid_channel(channel) {
        Ok(())
    } else {
        Err(format!(
            "{channel:?} is not a channel name (1 to {MAX_CHANNEL_LEN} characters of A-Z a-z 0-9 . _ : -)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{
        MAX_FRAME, StatsReport, WorkerStats, decode_request, decode_response, read_frame, send,
    };
    use std::io::Cursor;

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
            Request::FunctionsList,
            Request::FunctionDeploy {
                route: "chat".into(),
                script: "/srv/functions/chat.js".into(),
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
            functions: vec![FunctionRow {
                name: "chat".into(),
                version: 2,
                sockets: 5,
                ..FunctionRow::default()
            }],
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
    fn channel_names_checked_by_the_dataplane_rule() {
        assert_eq!(check_channel("news.eu:1_a-b"), Ok(()));
        let e = check_channel("a b").expect_err("space");
        assert_eq!(
            e,
            "\"a b\" is not a channel name (1 to 128 characters of A-Z a-z 0-9 . _ : -)"
        );
        assert!(check_channel("").is_err());
        assert!(check_channel(&"x".repeat(MAX_CHANNEL_LEN + 1)).is_err());
    }
}
