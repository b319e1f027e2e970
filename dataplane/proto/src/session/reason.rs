//! Why a connection ended and who was at fault: drives the status code, the counters and the
//! access log. Shared by the session, the functions and the driver.

use crate::firewall::Verdict;
use crate::handshake::Reject;
use crate::response::ResponseError;

/// One of the two peers of a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Client = 0,
    Origin = 1,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Origin,
            Side::Origin => Side::Client,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Who a close reason blames (pingora's downstream / upstream / internal split).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client, or nobody: its close is normal.
    Client,
    Origin,
    /// The proxy's own limits, timers or state.
    Proxy,
}

/// Why a connection ended. Drives the status code, the counters and the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The client closed first (FIN), both directions then finished.
    ClientClosed,
    /// The origin closed first (FIN), both directions then finished.
    OriginClosed,
    ClientReset,
    OriginReset,
    /// The client went away before the handshake completed: before its head was complete,
    /// or while the origin's answer was awaited.
    ClientGone,
    HandshakeTimeout,
    Rejected(Reject),
    NoRoute,
    OriginUnreachable,
    /// Every origin of the route's pool was down (503 with `Retry-After`).
    NoLiveOrigin,
    OriginConnectTimeout,
    OriginHandshakeTimeout,
    OriginBadHandshake(ResponseError),
    /// The origin closed before its response head was complete.
    OriginHeadIncomplete,
    /// The origin answered an upgrade with something other than 101; relayed as is.
    NotUpgraded,
    /// A plain HTTP exchange ended (the origin closed after its response).
    HttpDone,
    IdleTimeout,
    MaxConnectionTime,
    /// The worker was shutting down and its drain time ran out.
    Shutdown,
    /// The worker was at `max_connections_per_worker`.
    Overloaded,
    /// A local resource (descriptors, memory) ran out for this connection.
    ResourceExhausted,
    /// An operator ended it (`wsedgectl kill`).
    Killed,
    /// The host was drained (`wsedgectl drain`).
    Drained,
    /// The client did not answer a keepalive ping in time.
    KeepaliveTimeout,
    /// A message exceeded the route's limit (Close 1009 to its sender).
    MessageTooBig(Side),
    /// Messages came faster than the route's rate limit (Close 1008).
    MessageRate,
    /// A protocol violation by that side (Close 1002, or 1007 for invalid UTF-8).
    ProtocolError(Side),
    /// A function route got a request that is not a WebSocket upgrade (426).
    NotWebSocket,
    /// A client's send queue passed its bound (Close 1013).
    SlowConsumer,
    /// A client published where clients may not (Close 1008).
    PublishForbidden,
    /// A `broadcast` request's `since` is malformed, or asks what cannot be recovered (a
    /// raw client, a channel that keeps no history): 400 at the handshake.
    BadSince,
    /// A firewall rule refused the handshake.
    Firewall(Refusal),
    /// A function failed: an exception in its handler, its CPU budget or its memory cap
    /// (Close 1011 after the upgrade, 500 before it).
    FunctionError,
    /// A function did not answer the request in time (504).
    FunctionTimeout,
    /// The client's TLS failed (a refused or broken handshake, a bad record): the alert, if
    /// any, was sent and the connection closed. The driver counts the TLS error's kind.
    Tls,
    /// On a TLS connection, the request's Host is not the server name (SNI) the handshake
    /// was made for: 421 Misdirected Request.
    Misdirected,
    /// TLS to the origin failed (its certificate did not verify, or its handshake broke)
    /// before its answer: 502. The driver logs why.
    OriginTls,
}

/// How the firewall refused a handshake: a small copy of the verdict for logs and counters
/// (keeps [`CloseReason`] small, and every connection holds a few of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    Deny,
    Drop,
    Respond,
    RateLimited,
    AddressCap,
    GlobalCap,
}

impl Refusal {
    /// The refusal a verdict stands for; `None` for `Allow`.
    pub fn of(verdict: &Verdict) -> Option<Refusal> {
        Some(match verdict {
            Verdict::Allow => return None,
            Verdict::Deny => Refusal::Deny,
            Verdict::Drop => Refusal::Drop,
            Verdict::Respond { .. } => Refusal::Respond,
            Verdict::RateLimited { .. } => Refusal::RateLimited,
            Verdict::PerAddressCap => Refusal::AddressCap,
            Verdict::GlobalCap => Refusal::GlobalCap,
        })
    }

    /// The label, the same as the verdict's (`Verdict::reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Deny => "firewall_deny",
            Refusal::Drop => "firewall_drop",
            Refusal::Respond => "firewall_respond",
            Refusal::RateLimited => "firewall_rate_limited",
            Refusal::AddressCap => "firewall_address_cap",
            Refusal::GlobalCap => "firewall_global_cap",
        }
    }
}

impl CloseReason {
    /// A stable snake_case label for logs, counters and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::OriginClosed => "origin_closed",
            CloseReason::ClientReset => "client_reset",
            CloseReason::OriginReset => "origin_reset",
            CloseReason::ClientGone => "client_gone",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::Rejected(reject) => reject.reason(),
            CloseReason::NoRoute => "no_route",
            CloseReason::OriginUnreachable => "origin_unreachable",
            CloseReason::NoLiveOrigin => "no_live_origin",
            CloseReason::OriginConnectTimeout => "origin_connect_timeout",
            CloseReason::OriginHandshakeTimeout => "origin_handshake_timeout",
            CloseReason::OriginBadHandshake(_) => "origin_bad_handshake",
            CloseReason::OriginHeadIncomplete => "origin_head_incomplete",
            CloseReason::NotUpgraded => "not_upgraded",
            CloseReason::HttpDone => "http_done",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::MaxConnectionTime => "max_connection_time",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Overloaded => "overloaded",
            CloseReason::ResourceExhausted => "resource_exhausted",
            CloseReason::Killed => "killed",
            CloseReason::Drained => "drained",
            CloseReason::KeepaliveTimeout => "keepalive_timeout",
            CloseReason::MessageTooBig(Side::Client) => "client_message_too_big",
            CloseReason::MessageTooBig(Side::Origin) => "origin_message_too_big",
            CloseReason::MessageRate => "message_rate",
            CloseReason::ProtocolError(Side::Client) => "client_protocol_error",
            CloseReason::ProtocolError(Side::Origin) => "origin_protocol_error",
            CloseReason::NotWebSocket => "not_websocket",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::PublishForbidden => "publish_forbidden",
            CloseReason::BadSince => "bad_since",
            CloseReason::Firewall(refusal) => refusal.as_str(),
            CloseReason::FunctionError => "function_error",
            CloseReason::FunctionTimeout => "function_timeout",
            CloseReason::Tls => "tls_error",
            CloseReason::OriginTls => "origin_tls_error",
            CloseReason::Misdirected => "misdirected",
        }
    }

    pub fn fault(self) -> Fault {
        match self {
            CloseReason::ClientClosed
            | CloseReason::ClientReset
            | CloseReason::ClientGone
            | CloseReason::HandshakeTimeout
            | CloseReason::Rejected(_)
            | CloseReason::NoRoute
            | CloseReason::HttpDone
            | CloseReason::NotUpgraded
            | CloseReason::Misdirected
            | CloseReason::Tls => Fault::Client,
            CloseReason::OriginClosed
            | CloseReason::OriginReset
            | CloseReason::OriginUnreachable
            | CloseReason::NoLiveOrigin
            | CloseReason::OriginConnectTimeout
            | CloseReason::OriginHandshakeTimeout
            | CloseReason::OriginBadHandshake(_)
            | CloseReason::OriginHeadIncomplete
            | CloseReason::OriginTls
            | CloseReason::FunctionError
            | CloseReason::FunctionTimeout => Fault::Origin,
            CloseReason::IdleTimeout
            | CloseReason::MaxConnectionTime
            | CloseReason::Shutdown
            | CloseReason::Overloaded
            | CloseReason::ResourceExhausted
            | CloseReason::Killed
            | CloseReason::Drained => Fault::Proxy,
            CloseReason::KeepaliveTimeout
            | CloseReason::NotWebSocket
            | CloseReason::Firewall(_)
            | CloseReason::SlowConsumer
            | CloseReason::PublishForbidden
            | CloseReason::BadSince
            | CloseReason::MessageRate
            | CloseReason::MessageTooBig(Side::Client)
            | CloseReason::ProtocolError(Side::Client) => Fault::Client,
            CloseReason::MessageTooBig(Side::Origin) | CloseReason::ProtocolError(Side::Origin) => {
                Fault::Origin
            }
        }
    }
}
