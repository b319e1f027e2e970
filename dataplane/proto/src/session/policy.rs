//! What a session is configured with: the worker-wide settings every connection shares
//! ([`SessionConfig`]) and the per-route record a connection keeps for its life ([`Route`]:
//! the origin pool with its balancer, relay, timers, frame limits, function).
//!
//! These are the shapes the session works in (milliseconds, resolved defaults); the worker
//! builds them once from the validated configuration. A live connection holds its `Rc<Route>`
//! across configuration changes.

use std::net::SocketAddr;

use crate::balance::{Balancer, Policy};

use crate::forwarding::Forwarding;
use crate::function::FunctionSpec;
use crate::handshake::HeadLimits;

/// How the bytes of an upgraded connection travel between the two sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelayMode {
    /// Recv into the worker's provided-buffer ring, then send.
    Buffered,
    /// socket -> pipe -> socket.
    Splice,
    /// Buffered, following WebSocket frame boundaries both ways.
    Frames,
    /// Buffered until a direction fills a whole relay buffer in one recv (bulk traffic);
    /// then both directions splice for the rest of the connection.
    Auto,
}

impl RelayMode {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RelayMode::Buffered => "buffered",
            RelayMode::Splice => "splice",
            RelayMode::Frames => "frames",
            RelayMode::Auto => "auto",
        }
    }
}

/// Per-route timers, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTimers {
    pub connect_ms: u64,
    pub origin_handshake_ms: u64,
    pub idle_ms: u64,
    pub max_connection_ms: u64,
    /// Per cent (0..=50): the limit is drawn from `[(100 - jitter)%, 100%]` of the maximum.
    pub jitter_pct: u8,
}

/// What the `frames` relay enforces and how it ends connections (milliseconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest message from the client (Close 1009 to it); `u64::MAX` = no limit.
    pub client_max_message: u64,
    /// Largest message from the origin (Close 1009 to it).
    pub origin_max_message: u64,
    /// Messages per second a client may send (burst: the same number); Close 1008 over it.
    pub client_message_rate: Option<u32>,
    /// Ping the client after this long without a byte either way; `None` = no keepalive.
    pub keepalive_ms: Option<u64>,
    /// Close when the pong to a keepalive ping does not come within this.
    pub keepalive_timeout_ms: u64,
    /// Close code and reason the proxy sends on expiry and drain.
    pub close_code: u16,
    pub close_reason: String,
    /// After sending Close, how long to wait for the close handshake.
    pub close_grace_ms: u64,
}

/// One route as a worker holds it: matched by index from the route table.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub path_prefix: String,
    /// The origin pool (a bridge's target for a `bridge` function).
    pub origins: Vec<SocketAddr>,
    pub relay: RelayMode,
    pub timers: RouteTimers,
    pub frames: FrameLimits,
    /// A function answering the route instead of origins.
    pub function: Option<FunctionSpec>,
    /// Debug rules on: a traceback is collected, and debug headers answer `Pragma:
    /// wsedge-debug`.
    pub debug: bool,
    /// Which forwarding headers the origin gets, and whom to trust for them.
    pub forwarding: Forwarding,
    /// The pool's policy, this worker's rotation and counts, and the pool's shared health
    /// (the route is never shared between threads; the health view is).
    pub balance: Balancer,
}

impl Route {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        path_prefix: String,
        origins: Vec<SocketAddr>,
        relay: RelayMode,
        timers: RouteTimers,
        frames: FrameLimits,
        function: Option<FunctionSpec>,
        debug: bool,
        forwarding: Forwarding,
    ) -> Route {
        Route {
            name,
            path_prefix,
            relay,
            timers,
            frames,
            function,
            debug,
            balance: Balancer::new(Policy::RoundRobin, origins.len(), None),
            origins,
            forwarding,
        }
    }

    /// The same route with this balancer (policy and shared health) for its pool.
    pub fn with_balance(mut self, balance: Balancer) -> Route {
        self.balance = balance;
        self
    }
}

/// What every session of a worker shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    pub head_limits: HeadLimits,
    /// The client's head must be complete within this.
    pub handshake_ms: u64,
    /// Bytes read from one side and not yet written to the other, per direction, before that
    /// side is no longer read (backpressure).
    pub max_in_flight: u64,
    /// Bytes of one provided buffer: a recv that fills one is bulk traffic (`auto` relay).
    pub buffer_size: u32,
    /// How long an answer the proxy sends on its own (an error, a last Close) may take to be
    /// written, and how long a lingering close reads before closing.
    pub linger_ms: u64,
}

/// How long an error answer may take to reach the client, then how long the client's
/// input is drained before its socket closes (a lingering close).
pub const LINGER_MS: u64 = 2_000;
