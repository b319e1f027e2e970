//! The life of one proxied connection, as a pure state machine.
//!
//! The ring driver owns the sockets, buffers and in-flight operations of a connection; this
//! [`Conn`] owns every decision: when the client head is complete and where it goes, whether
//! a connect failure is retried, whether the origin's answer opens a tunnel, how many bytes
//! may be in flight each way, when to propagate a half-close, and which timer ends it and
//! why. Time is a [`Tick`] (milliseconds) passed in; nothing here reads a clock.
//!
//! Phases: `ClientHead` -> `Connecting` -> `OriginHead` -> `Relay` -> `Done`. Every early end
//! carries a [`CloseReason`] that says who was at fault; the driver logs it and counts it.

use std::net::IpAddr;

use crate::accept::accept_key;
use crate::handshake::{self, BodyLength, HeadLimits, Reject, RequestKind};
use crate::response::{self, ResponseError};
use crate::route::RouteTable;
use crate::wheel::Tick;

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
    /// The client went away before its head was complete.
    ClientGone,
    HandshakeTimeout,
    Rejected(Reject),
    NoRoute,
    OriginUnreachable,
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
            | CloseReason::NotUpgraded => Fault::Client,
            CloseReason::OriginClosed
            | CloseReason::OriginReset
            | CloseReason::OriginUnreachable
            | CloseReason::OriginConnectTimeout
            | CloseReason::OriginHandshakeTimeout
            | CloseReason::OriginBadHandshake(_)
            | CloseReason::OriginHeadIncomplete => Fault::Origin,
            CloseReason::IdleTimeout
            | CloseReason::MaxConnectionTime
            | CloseReason::Shutdown
            | CloseReason::Overloaded
            | CloseReason::ResourceExhausted
            | CloseReason::Killed => Fault::Proxy,
        }
    }
}

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    ClientHead,
    Connecting,
    OriginHead,
    Relay,
    Done,
}

impl Phase {
    /// A stable snake_case label.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::ClientHead => "client_head",
            Phase::Connecting => "connecting",
            Phase::OriginHead => "origin_head",
            Phase::Relay => "relay",
            Phase::Done => "done",
        }
    }
}

/// What the client asked for, once its head was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade {
    WebSocket,
    PlainHttp,
}

/// Per-route timers, in milliseconds, resolved by the driver from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTimers {
    pub connect_ms: u64,
    pub origin_handshake_ms: u64,
    pub idle_ms: u64,
    pub max_connection_ms: u64,
    /// Per cent (0..=50): the limit is drawn from `[(100 - jitter)%, 100%]` of the maximum.
    pub jitter_pct: u8,
}

/// Everything the head decision needs besides the bytes.
#[derive(Debug)]
pub struct HeadContext<'a> {
    pub limits: &'a HeadLimits,
    pub routes: &'a RouteTable,
    pub peer: IpAddr,
    /// `X-Forwarded-Proto` value: `http` until TLS termination exists.
    pub proto: &'a str,
}

/// The decision after new client head bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadAction {
    /// Head incomplete: read more (the buffer may grow up to the head limit).
    NeedMore,
    /// Answer with `handshake::error_response(status)` and close.
    Reject { status: u16, reason: CloseReason },
    /// Connect to an origin of `route` and send `origin_head` (the rewritten head followed by
    /// the bytes the client sent after its head).
    Forward { route: usize, origin_head: Vec<u8> },
}

/// Why a connect attempt failed, as far as retrying cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// Refused or unreachable: another origin may do better.
    Refused,
    /// A local failure (no descriptors, no memory): retrying elsewhere won't help.
    Local,
}

/// The decision after a connect attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectAction {
    /// Send the origin head now.
    SendHead,
    /// Try the next origin of the pool (once).
    TryNext,
    /// Answer `status` to the client and close.
    Fail { status: u16, reason: CloseReason },
}

/// The decision after new origin response bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginAction {
    NeedMore,
    /// Answer `status` (502) to the client and close: never a tunnel.
    Fail {
        status: u16,
        reason: CloseReason,
    },
    /// Send the whole origin buffer (head and what followed) to the client and relay.
    Relay {
        status: u16,
    },
}

/// One direction of the relay, named by the side its bytes come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Flow {
    /// Received from the source, not yet written to the destination.
    in_flight: u64,
    /// Total bytes forwarded.
    bytes: u64,
    /// Bytes the source may still send (plain HTTP bodies); `None` = unlimited.
    budget: Option<u64>,
    /// No more bytes will be read from the source (EOF, budget spent, or never started).
    eof: bool,
    /// The destination's write side was shut down after the source's EOF.
    shut: bool,
    /// Reading started (the driver armed it).
    started: bool,
}

/// The pure state of one connection; see the module docs.
#[derive(Debug)]
pub struct Conn {
    phase: Phase,
    accepted_at: Tick,
    /// Deadline of the current handshake phase (head, connect, origin head).
    phase_deadline: Option<Tick>,
    last_activity: Tick,
    idle_ms: Option<u64>,
    max_deadline: Option<Tick>,
    timers: Option<RouteTimers>,
    upgrade: Option<Upgrade>,
    body: BodyLength,
    expected_accept: Option<[u8; 28]>,
    route: Option<usize>,
    connect_attempts: u8,
    status: Option<u16>,
    flows: [Flow; 2],
    first_eof: Option<Side>,
    max_in_flight: u64,
    head_bytes_seen: bool,
}

impl Conn {
    /// A connection accepted at `now`; its head must be complete within `handshake_ms`.
    pub fn new(now: Tick, handshake_ms: u64, max_in_flight: u64) -> Conn {
        Conn {
            phase: Phase::ClientHead,
            accepted_at: now,
            phase_deadline: Some(now.saturating_add(handshake_ms)),
            last_activity: now,
            idle_ms: None,
            max_deadline: None,
            timers: None,
            upgrade: None,
            body: BodyLength::None,
            expected_accept: None,
            route: None,
            connect_attempts: 0,
            status: None,
            flows: [Flow::default(); 2],
            first_eof: None,
            max_in_flight: max_in_flight.max(1),
            head_bytes_seen: false,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn route(&self) -> Option<usize> {
        self.route
    }

    pub fn upgrade(&self) -> Option<Upgrade> {
        self.upgrade
    }

    /// The status sent or relayed to the client, if any.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    pub fn accepted_at(&self) -> Tick {
        self.accepted_at
    }

    /// Bytes relayed from `from` to the other side.
    pub fn bytes_from(&self, from: Side) -> u64 {
        self.flows[from.index()].bytes
    }

    /// Records the status of a response the driver sent on its own (errors).
    pub fn set_status(&mut self, status: u16) {
        self.status = Some(status);
    }

    /// Feeds the whole client head buffer received so far (not only the new bytes).
    pub fn on_client_head(&mut self, buf: &[u8], now: Tick, cx: &HeadContext<'_>) -> HeadAction {
        debug_assert_eq!(self.phase, Phase::ClientHead);
        self.head_bytes_seen |= !buf.is_empty();
        self.last_activity = now;
        let request = match handshake::parse_request(buf, cx.limits) {
            Ok(None) => return HeadAction::NeedMore,
            Ok(Some(request)) => request,
            Err(reject) => return self.reject(reject.status(), CloseReason::Rejected(reject)),
        };
        let Some(route) = cx.routes.find(request.host, request.path()) else {
            return self.reject(404, CloseReason::NoRoute);
        };
        let mut origin_head = Vec::with_capacity(buf.len() + 128);
        handshake::rewrite_for_origin(&request, cx.peer, cx.proto, &mut origin_head);
        let tail = &buf[request.head_len..];
        match request.kind {
            RequestKind::WebSocket { key } => {
                self.upgrade = Some(Upgrade::WebSocket);
                self.expected_accept = Some(accept_key(key));
                origin_head.extend_from_slice(tail);
            }
            RequestKind::Plain { body } => {
                self.upgrade = Some(Upgrade::PlainHttp);
                // Forward at most the declared body: bytes past it would be a pipelined
                // request, which never reaches the origin unvalidated.
                let forwarded = match body {
                    BodyLength::None => 0,
                    BodyLength::Length(n) => {
                        tail.len().min(usize::try_from(n).unwrap_or(usize::MAX))
                    }
                    BodyLength::Chunked => tail.len(),
                };
                origin_head.extend_from_slice(&tail[..forwarded]);
                self.body = match body {
                    BodyLength::Length(n) => BodyLength::Length(n - forwarded as u64),
                    other => other,
                };
            }
        }
        self.route = Some(route);
        self.phase = Phase::Connecting;
        self.phase_deadline = None;
        HeadAction::Forward { route, origin_head }
    }

    /// The driver starts connecting for the chosen route, whose timers it passes.
    pub fn on_connect_start(&mut self, now: Tick, timers: RouteTimers) {
        self.timers = Some(timers);
        self.connect_attempts += 1;
        self.phase = Phase::Connecting;
        self.phase_deadline = Some(now.saturating_add(timers.connect_ms));
    }

    /// A connect attempt ended; `pool_size` is the number of origins of the route.
    pub fn on_connect_result(
        &mut self,
        now: Tick,
        result: Result<(), ConnectFailure>,
        pool_size: usize,
    ) -> ConnectAction {
        match result {
            Ok(()) => {
                self.phase = Phase::OriginHead;
                let ms = self.timers.map_or(10_000, |t| t.origin_handshake_ms);
                self.phase_deadline = Some(now.saturating_add(ms));
                ConnectAction::SendHead
            }
            Err(ConnectFailure::Refused) if self.connect_attempts < 2 && pool_size > 1 => {
                ConnectAction::TryNext
            }
            Err(ConnectFailure::Refused) => self.fail(502, CloseReason::OriginUnreachable),
            Err(ConnectFailure::Local) => self.fail(502, CloseReason::ResourceExhausted),
        }
    }

    /// The origin head has been written in full. Returns whether to start reading the
    /// client now (a plain request with a body still to come).
    pub fn on_origin_head_sent(&mut self) -> bool {
        let client = &mut self.flows[Side::Client.index()];
        match (self.upgrade, self.body) {
            (Some(Upgrade::PlainHttp), BodyLength::Length(n)) if n > 0 => {
                client.budget = Some(n);
                client.started = true;
                true
            }
            (Some(Upgrade::PlainHttp), BodyLength::Chunked) => {
                client.started = true;
                true
            }
            _ => false,
        }
    }

    /// Feeds the whole origin response buffer received so far.
    pub fn on_origin_head(&mut self, buf: &[u8], now: Tick, limits: &HeadLimits) -> OriginAction {
        debug_assert_eq!(self.phase, Phase::OriginHead);
        let expected = self.expected_accept.as_ref();
        let response = match response::parse_response(buf, limits, expected) {
            Ok(None) => return OriginAction::NeedMore,
            Ok(Some(response)) => response,
            Err(error) => {
                let reason = CloseReason::OriginBadHandshake(error);
                self.end_with(502);
                return OriginAction::Fail {
                    status: 502,
                    reason,
                };
            }
        };
        self.status = Some(response.status);
        self.phase = Phase::Relay;
        self.phase_deadline = None;
        self.last_activity = now;
        let timers = self.timers.unwrap_or(RouteTimers {
            connect_ms: 5_000,
            origin_handshake_ms: 10_000,
            idle_ms: 15 * 60_000,
            max_connection_ms: 15 * 60_000,
            jitter_pct: 0,
        });
        self.idle_ms = Some(timers.idle_ms);
        if response.upgraded {
            self.flows = [Flow::default(); 2];
        } else {
            // Relay the response until the origin closes; nothing more goes to the origin
            // unless a plain request's body is still flowing.
            let client = &mut self.flows[Side::Client.index()];
            if !client.started || self.upgrade == Some(Upgrade::WebSocket) {
                client.eof = true;
                client.shut = true;
            }
        }
        self.origin_bytes_pending(buf.len() as u64);
        OriginAction::Relay {
            status: response.status,
        }
    }

    /// Arms max connection time, given a random value from the driver (jitter).
    pub fn start_relay_timers(&mut self, random: u32) {
        if let Some(t) = self.timers {
            let spread = t.max_connection_ms * u64::from(t.jitter_pct.min(50)) / 100;
            let cut = if spread == 0 {
                0
            } else {
                u64::from(random) % (spread + 1)
            };
            self.max_deadline = Some(self.accepted_at.saturating_add(t.max_connection_ms - cut));
        }
    }

    /// The origin's response bytes are queued to the client: they count as in flight.
    fn origin_bytes_pending(&mut self, n: u64) {
        let flow = &mut self.flows[Side::Origin.index()];
        flow.in_flight += n;
        flow.bytes += n;
    }

    /// Whether the driver should keep (or start) reading `from`.
    pub fn wants_read(&self, from: Side) -> bool {
        let flow = &self.flows[from.index()];
        self.phase != Phase::Done
            && !flow.eof
            && flow.budget != Some(0)
            && flow.in_flight < self.max_in_flight
            && (self.phase == Phase::Relay || flow.started)
    }

    /// `n` bytes arrived from `from`. Returns how many to forward (less than `n` only when a
    /// plain request's body ends inside them; the rest is dropped).
    pub fn on_recv(&mut self, from: Side, n: usize, now: Tick) -> usize {
        self.last_activity = now;
        let flow = &mut self.flows[from.index()];
        let mut forward = n as u64;
        if let Some(budget) = flow.budget.as_mut() {
            forward = forward.min(*budget);
            *budget -= forward;
            if *budget == 0 {
                flow.eof = true;
            }
        }
        flow.in_flight += forward;
        flow.bytes += forward;
        forward as usize
    }

    /// `n` bytes were written to `to`.
    pub fn on_sent(&mut self, to: Side, n: usize, now: Tick) {
        self.last_activity = now;
        let flow = &mut self.flows[to.other().index()];
        flow.in_flight = flow.in_flight.saturating_sub(n as u64);
    }

    /// `from` sent EOF (FIN).
    pub fn on_eof(&mut self, from: Side) {
        let flow = &mut self.flows[from.index()];
        if !flow.eof {
            flow.eof = true;
            self.first_eof.get_or_insert(from);
        }
    }

    /// Whether `to`'s write side should be shut down now (its source ended and everything
    /// was written): the half-close travels on.
    pub fn wants_shutdown(&self, to: Side) -> bool {
        let flow = &self.flows[to.other().index()];
        self.phase == Phase::Relay
            && self.upgrade == Some(Upgrade::WebSocket)
            && self.status == Some(101)
            && flow.eof
            && !flow.shut
            && flow.in_flight == 0
    }

    pub fn mark_shutdown(&mut self, to: Side) {
        self.flows[to.other().index()].shut = true;
    }

    /// Whether the connection is over, and why; `None` while it must go on.
    pub fn finished(&self) -> Option<CloseReason> {
        if self.phase != Phase::Relay {
            return None;
        }
        let [client, origin] = &self.flows;
        let drained = client.in_flight == 0 && origin.in_flight == 0;
        if self.status == Some(101) {
            let closer = match self.first_eof {
                Some(Side::Origin) => CloseReason::OriginClosed,
                _ => CloseReason::ClientClosed,
            };
            (client.eof && origin.eof && client.shut && origin.shut && drained).then_some(closer)
        } else {
            // A response relayed as is: over when the origin closed and all of it was sent.
            (origin.eof && origin.in_flight == 0).then_some(match self.upgrade {
                Some(Upgrade::WebSocket) => CloseReason::NotUpgraded,
                _ => CloseReason::HttpDone,
            })
        }
    }

    /// Marks the connection done; later events are ignored by the driver.
    pub fn close(&mut self) {
        self.phase = Phase::Done;
    }

    /// The earliest tick at which [`Conn::on_timeout`] may have something to do.
    pub fn poll_timeout(&self) -> Option<Tick> {
        if self.phase == Phase::Done {
            return None;
        }
        let idle = self.idle_ms.map(|ms| self.last_activity.saturating_add(ms));
        [self.phase_deadline, idle, self.max_deadline]
            .into_iter()
            .flatten()
            .min()
    }

    /// Checks the timers at `now`. Returns the reason to close and the status to answer
    /// first, if any; `None` when nothing expired (activity moved the idle deadline).
    pub fn on_timeout(&mut self, now: Tick) -> Option<(CloseReason, Option<u16>)> {
        if self.phase == Phase::Done {
            return None;
        }
        if self.phase_deadline.is_some_and(|d| now >= d) {
            let outcome = match self.phase {
                Phase::ClientHead => (
                    CloseReason::HandshakeTimeout,
                    self.head_bytes_seen.then_some(408),
                ),
                Phase::Connecting => (CloseReason::OriginConnectTimeout, Some(502)),
                _ => (CloseReason::OriginHandshakeTimeout, Some(504)),
            };
            if let Some(status) = outcome.1 {
                self.status = Some(status);
            }
            return Some(outcome);
        }
        if self.max_deadline.is_some_and(|d| now >= d) {
            return Some((CloseReason::MaxConnectionTime, None));
        }
        if let Some(ms) = self.idle_ms
            && now >= self.last_activity.saturating_add(ms)
        {
            return Some((CloseReason::IdleTimeout, None));
        }
        None
    }

    fn end_with(&mut self, status: u16) {
        self.status = Some(status);
        self.phase_deadline = None;
    }

    fn reject(&mut self, status: u16, reason: CloseReason) -> HeadAction {
        self.end_with(status);
        HeadAction::Reject { status, reason }
    }

    fn fail(&mut self, status: u16, reason: CloseReason) -> ConnectAction {
        self.end_with(status);
        ConnectAction::Fail { status, reason }
    }
}
