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
use crate::body::{BodyEnd, Fed};
use crate::firewall::{Firewall, FirewallState, TraceEntry, Verdict};
use crate::forwarding::{DEFAULT_FORWARDING, Forwarding};
use crate::handshake::{self, BodyLength, HeadLimits, RequestKind};
use crate::response;
use crate::route::RouteTable;
use crate::wheel::Tick;

pub use crate::session::{CloseReason, Fault, Refusal, Side};

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

/// Frame-aware behaviour of a `frames` route, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameTimers {
    /// Ping the client after this long without a byte either way; `None` = no keepalive.
    pub keepalive_ms: Option<u64>,
    /// Close when the pong to a keepalive ping does not come within this.
    pub keepalive_timeout_ms: u64,
    /// After sending Close, how long to wait for the close handshake.
    pub close_grace_ms: u64,
}

/// What a timer asks of the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerAction {
    /// Close now; answer `status` first when given.
    Close {
        reason: CloseReason,
        status: Option<u16>,
    },
    /// Send a keepalive Ping to the client (frames relay).
    Ping,
    /// Send Close frames to both sides at a frame boundary, then wait for the close
    /// handshake up to the grace period (frames relay).
    GracefulClose(CloseReason),
}

/// The firewall as the head decision sees it: evaluated after routing, before any origin
/// connection.
#[derive(Debug)]
pub struct FirewallGate<'a> {
    pub firewall: &'a Firewall,
    /// The worker's per-address and global counters.
    pub state: &'a mut FirewallState,
    /// Wall clock, unix seconds (network-list entries expire by it).
    pub unix_now: u64,
    /// Route names by route index (rules may be scoped to routes).
    pub route_names: &'a [String],
    /// Per route index: debug rules on (a traceback is collected).
    pub route_debug: &'a [bool],
    /// Filled with the evaluated rules when the route has debug rules on.
    pub trace: &'a mut Vec<TraceEntry>,
}

/// Everything the head decision needs besides the bytes.
#[derive(Debug)]
pub struct HeadContext<'a> {
    pub limits: &'a HeadLimits,
    pub routes: &'a RouteTable,
    pub peer: IpAddr,
    /// `X-Forwarded-Proto` value: `http` until TLS termination exists.
    pub proto: &'a str,
    /// Forwarding-header policy by route index (a route without one gets
    /// [`DEFAULT_FORWARDING`]).
    pub forwarding: &'a [Forwarding],
}

/// The decision after new client head bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadAction {
    /// Head incomplete: read more (the buffer may grow up to the head limit).
    NeedMore,
    /// Answer with `handshake::error_response(status)` and close.
    Reject { status: u16, reason: CloseReason },
    /// The firewall refused the handshake: answer `verdict`'s response (none for a drop)
    /// and close.
    Firewall { route: usize, verdict: Verdict },
    /// Connect to an origin of `route` and send `origin_head` (the rewritten head, followed
    /// for a plain request by the part of its body that came with the head). `held`: what a
    /// WebSocket client sent after its head (early frames), held back until the origin's 101
    /// is checked and forwarded only then (never behind a declined upgrade).
    Forward {
        route: usize,
        origin_head: Vec<u8>,
        held: Vec<u8>,
    },
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginAction {
    NeedMore,
    /// Answer `status` (502) to the client and close: never a tunnel.
    Fail {
        status: u16,
        reason: CloseReason,
    },
    /// Relay the response to the client: its head (the first `head_len` bytes of the origin
    /// buffer, or `head` in their place when the proxy rewrote it), then the `body_len` bytes
    /// that followed it (a 101's early frames, or the part of the response body that came with
    /// the head; anything after the body's end is not part of the response and is dropped).
    Relay {
        status: u16,
        head_len: usize,
        head: Option<Vec<u8>>,
        body_len: usize,
    },
}

/// One direction of the relay, named by the side its bytes come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Flow {
    /// Received from the source, not yet written to the destination.
    in_flight: u64,
    /// Total bytes forwarded.
    bytes: u64,
    /// Where the message the source is sending ends (a plain request's body, a response that
    /// is not a 101); `None` = a stream with no end but EOF (the relay).
    body: Option<BodyEnd>,
    /// No more bytes will be read from the source (EOF, body complete, or never started).
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
    /// The request was a HEAD (its response has no body).
    head_request: bool,
    /// The side that sent the first WebSocket Close frame, when the relay follows frames.
    first_close: Option<Side>,
    /// Deadline of the current handshake phase (head, connect, origin head).
    phase_deadline: Option<Tick>,
    last_activity: Tick,
    idle_ms: Option<u64>,
    max_deadline: Option<Tick>,
    timers: Option<RouteTimers>,
    upgrade: Option<Upgrade>,
    body: BodyLength,
    expected_accept: Option<[u8; 28]>,
    client_accept: Option<[u8; 28]>,
    route: Option<usize>,
    connect_attempts: u8,
    status: Option<u16>,
    flows: [Flow; 2],
    first_eof: Option<Side>,
    max_in_flight: u64,
    head_bytes_seen: bool,
    /// The firewall counted this connection open (`on_connection_open`).
    firewall_admitted: bool,
    /// The request carried `Pragma: wsedge-debug`.
    debug_pragma: bool,
    /// Frame-aware timers, for `frames` routes.
    frames: Option<FrameTimers>,
    /// A keepalive ping is out; its pong must arrive by then.
    ping_deadline: Option<Tick>,
    /// A graceful close is under way: why, and when the grace period ends.
    graceful: Option<(CloseReason, Tick)>,
    /// A graceful close is scheduled (drain spread over a window).
    close_at: Option<(Tick, CloseReason)>,
}

impl Conn {
    /// A connection accepted at `now`; its head must be complete within `handshake_ms`.
    pub fn new(now: Tick, handshake_ms: u64, max_in_flight: u64) -> Conn {
        Conn {
            phase: Phase::ClientHead,
            accepted_at: now,
            head_request: false,
            first_close: None,
            phase_deadline: Some(now.saturating_add(handshake_ms)),
            last_activity: now,
            idle_ms: None,
            max_deadline: None,
            timers: None,
            upgrade: None,
            body: BodyLength::None,
            expected_accept: None,
            client_accept: None,
            route: None,
            connect_attempts: 0,
            status: None,
            flows: [Flow::default(); 2],
            first_eof: None,
            max_in_flight: max_in_flight.max(1),
            head_bytes_seen: false,
            firewall_admitted: false,
            debug_pragma: false,
            frames: None,
            ping_deadline: None,
            graceful: None,
            close_at: None,
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

    /// The `Sec-WebSocket-Accept` value for the client's key (after a WebSocket head).
    pub fn client_accept(&self) -> Option<[u8; 28]> {
        self.client_accept
    }

    /// The accept value the origin's 101 must carry, when the edge sent its own key
    /// (`bridge`) instead of forwarding the client's.
    pub fn expect_origin_accept(&mut self, accept: [u8; 28]) {
        self.expected_accept = Some(accept);
    }

    /// A built-in function answered the upgrade itself: the connection relays from now,
    /// with only the client side, under the route's idle and max-time timers.
    pub fn on_function_upgrade(&mut self, now: Tick, timers: RouteTimers, random: u32) {
        self.timers = Some(timers);
        self.status = Some(101);
        self.phase = Phase::Relay;
        self.phase_deadline = None;
        self.last_activity = now;
        self.idle_ms = Some(timers.idle_ms);
        self.flows = [Flow::default(); 2];
        self.start_relay_timers(random);
    }

    /// Whether `from` sent EOF.
    pub fn saw_eof(&self, from: Side) -> bool {
        self.flows[from.index()].eof
    }

    /// Records the status of a response the driver sent on its own (errors).
    pub fn set_status(&mut self, status: u16) {
        self.status = Some(status);
    }

    /// Feeds the whole client head buffer received so far (not only the new bytes).
    /// Whether the firewall counted this connection open: the driver then reports its close
    /// with `FirewallState::on_connection_close`, exactly once.
    pub fn firewall_admitted(&self) -> bool {
        self.firewall_admitted
    }

    /// Whether the client asked for debug headers (`Pragma: wsedge-debug`).
    pub fn debug_pragma(&self) -> bool {
        self.debug_pragma
    }

    pub fn on_client_head(
        &mut self,
        buf: &[u8],
        now: Tick,
        cx: &HeadContext<'_>,
        gate: Option<&mut FirewallGate<'_>>,
    ) -> HeadAction {
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
        self.debug_pragma = request.header("pragma").is_some_and(|v| {
            v.split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"wsedge-debug"))
        });
        if let Some(gate) = gate
            && !gate.firewall.is_empty()
        {
            let name = gate.route_names.get(route).map(String::as_str);
            let debug = gate.route_debug.get(route).copied().unwrap_or(false);
            gate.trace.clear();
            let trace = if debug { Some(&mut *gate.trace) } else { None };
            let verdict = gate.firewall.evaluate(
                gate.state,
                &request,
                cx.peer,
                name,
                now,
                gate.unix_now,
                trace,
            );
            if verdict != Verdict::Allow {
                self.route = Some(route);
                self.status = verdict.status();
                self.phase_deadline = None;
                return HeadAction::Firewall { route, verdict };
            }
            gate.state.on_connection_open(cx.peer);
            self.firewall_admitted = true;
        }
        let mut origin_head = Vec::with_capacity(buf.len() + 128);
        let forwarding = cx.forwarding.get(route).unwrap_or(&DEFAULT_FORWARDING);
        handshake::rewrite_for_origin(&request, cx.peer, cx.proto, forwarding, &mut origin_head);
        self.head_request = request.method == "HEAD";
        let tail = &buf[request.head_len..];
        let mut held = Vec::new();
        match request.kind {
            RequestKind::WebSocket { key } => {
                self.upgrade = Some(Upgrade::WebSocket);
                self.expected_accept = Some(accept_key(key));
                self.client_accept = self.expected_accept;
                held.extend_from_slice(tail);
            }
            RequestKind::Plain { body } => {
                self.upgrade = Some(Upgrade::PlainHttp);
                self.body = body;
                // Forward at most the declared body: bytes past it would be a pipelined
                // request, which never reaches the origin unvalidated.
                let mut framing = BodyEnd::of_request(body);
                let forwarded = match framing.as_mut().map(|f| f.feed(tail)) {
                    None => 0,
                    Some(Ok(Fed::More)) => tail.len(),
                    Some(Ok(Fed::Done(n))) => {
                        framing = None;
                        n
                    }
                    Some(Err(_)) => {
                        let reject = handshake::Reject::from(
                            handshake::BadRequestReason::MalformedChunkedBody,
                        );
                        return self.reject(reject.status(), CloseReason::Rejected(reject));
                    }
                };
                origin_head.extend_from_slice(&tail[..forwarded]);
                self.flows[Side::Client.index()].body = framing;
            }
        }
        self.route = Some(route);
        self.phase = Phase::Connecting;
        self.phase_deadline = None;
        HeadAction::Forward {
            route,
            origin_head,
            held,
        }
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
        if self.upgrade == Some(Upgrade::PlainHttp) && client.body.is_some() {
            client.started = true;
            true
        } else {
            false
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
        let after_head = &buf[response.head_len..];
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
            self.origin_bytes_pending(buf.len() as u64);
            return OriginAction::Relay {
                status: response.status,
                head_len: response.head_len,
                head: None,
                body_len: after_head.len(),
            };
        }
        // Nothing more goes to the origin unless a plain request's body is still flowing.
        let client = &mut self.flows[Side::Client.index()];
        if !client.started || self.upgrade == Some(Upgrade::WebSocket) {
            client.eof = true;
            client.shut = true;
        }
        let (head, framing) = if response.status < 200 {
            // An interim answer (100, 103): the final one follows on the stream, which is
            // relayed as it is until the origin closes.
            (None, Some(BodyEnd::UntilClose))
        } else {
            // The proxy ends the exchange once the response is written (RFC 9112 §9.6),
            // whether the origin keeps its connection alive or not, and says so.
            let framing = if self.head_request {
                None
            } else {
                response.body
            };
            (
                Some(response::closing_head(&buf[..response.head_len])),
                framing,
            )
        };
        let origin = &mut self.flows[Side::Origin.index()];
        origin.body = framing;
        let body_len = match origin.body.as_mut().map(|f| f.feed(after_head)) {
            Some(Ok(Fed::More)) => after_head.len(),
            Some(Ok(Fed::Done(n))) => {
                origin.eof = true;
                n
            }
            None | Some(Err(_)) => {
                origin.eof = true;
                0
            }
        };
        let head_out = head.as_ref().map_or(response.head_len, Vec::len);
        self.origin_bytes_pending((head_out + body_len) as u64);
        OriginAction::Relay {
            status: response.status,
            head_len: response.head_len,
            head,
            body_len,
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
            && flow.in_flight < self.max_in_flight
            && (self.phase == Phase::Relay || flow.started)
    }

    /// `n` bytes arrived from `from` on a stream with no message framing (the relay after a
    /// 101; the splice relay, which never sees the bytes). Returns `n`.
    pub fn on_recv(&mut self, from: Side, n: usize, now: Tick) -> usize {
        debug_assert!(self.flows[from.index()].body.is_none());
        self.last_activity = now;
        let flow = &mut self.flows[from.index()];
        flow.in_flight += n as u64;
        flow.bytes += n as u64;
        n
    }

    /// `data` arrived from `from`. Returns how many of its bytes to forward: fewer only when
    /// the message being relayed (a plain request's body, a response that is not a 101) ends
    /// inside them; what follows is dropped, and that source is done. A chunked body that
    /// breaks the grammar ends the source there too (nothing more of it is relayed).
    pub fn on_recv_data(&mut self, from: Side, data: &[u8], now: Tick) -> usize {
        let flow = &mut self.flows[from.index()];
        let forward = match flow.body.as_mut().map(|f| f.feed(data)) {
            None | Some(Ok(Fed::More)) => data.len(),
            Some(Ok(Fed::Done(n))) => {
                flow.body = None;
                flow.eof = true;
                n
            }
            Some(Err(_)) => {
                flow.body = None;
                flow.eof = true;
                0
            }
        };
        self.last_activity = now;
        let flow = &mut self.flows[from.index()];
        flow.in_flight += forward as u64;
        flow.bytes += forward as u64;
        forward
    }

    /// A WebSocket Close frame from `from` (known only to a relay that follows frames): the
    /// side that sent the first one started the close, whoever's FIN comes first.
    pub fn on_close_frame(&mut self, from: Side) {
        self.first_close.get_or_insert(from);
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
            let closer = match self.first_close.or(self.first_eof) {
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

    /// Makes this a frame-aware (`frames` relay) connection with these timers.
    pub fn set_frame_timers(&mut self, timers: FrameTimers) {
        self.frames = Some(timers);
    }

    pub fn is_frame_aware(&self) -> bool {
        self.frames.is_some()
    }

    /// The client answered the keepalive ping.
    pub fn on_pong(&mut self) {
        self.ping_deadline = None;
    }

    /// Whether a keepalive ping is out.
    pub fn ping_outstanding(&self) -> bool {
        self.ping_deadline.is_some()
    }

    /// Schedules a graceful close at `at` (a drain spread over a window). An earlier
    /// schedule wins.
    pub fn schedule_close(&mut self, at: Tick, reason: CloseReason) {
        if self.close_at.is_none_or(|(t, _)| at < t) {
            self.close_at = Some((at, reason));
        }
    }

    /// A graceful close started at `now` (Close frames queued to both sides); the sockets
    /// close when both close handshakes are done or after the grace period.
    pub fn begin_graceful_close(&mut self, now: Tick, reason: CloseReason) {
        if self.graceful.is_none() {
            let grace = self.frames.map_or(5_000, |f| f.close_grace_ms);
            self.graceful = Some((reason, now.saturating_add(grace)));
            self.ping_deadline = None;
            self.close_at = None;
        }
    }

    /// The graceful close under way, if any.
    pub fn graceful_close(&self) -> Option<CloseReason> {
        self.graceful.map(|(r, _)| r)
    }

    /// The earliest tick at which [`Conn::on_timeout`] may have something to do.
    pub fn poll_timeout(&self) -> Option<Tick> {
        if self.phase == Phase::Done {
            return None;
        }
        if let Some((_, grace_end)) = self.graceful {
            return Some(grace_end);
        }
        let idle = self.idle_ms.map(|ms| self.last_activity.saturating_add(ms));
        let ping_due = match (self.frames, self.ping_deadline, self.phase) {
            (
                Some(FrameTimers {
                    keepalive_ms: Some(ms),
                    ..
                }),
                None,
                Phase::Relay,
            ) => Some(self.last_activity.saturating_add(ms)),
            _ => None,
        };
        [
            self.phase_deadline,
            idle,
            self.max_deadline,
            ping_due,
            self.ping_deadline,
            self.graceful.map(|(_, t)| t),
            self.close_at.map(|(t, _)| t),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Checks the timers at `now`; `None` when nothing is due (activity moved the idle
    /// deadline, or a graceful close is waiting for its handshake).
    pub fn on_timeout(&mut self, now: Tick) -> Option<TimerAction> {
        if self.phase == Phase::Done {
            return None;
        }
        let close = |reason, status| Some(TimerAction::Close { reason, status });
        if self.phase_deadline.is_some_and(|d| now >= d) {
            let (reason, status) = match self.phase {
                Phase::ClientHead => (
                    CloseReason::HandshakeTimeout,
                    self.head_bytes_seen.then_some(408),
                ),
                Phase::Connecting => (CloseReason::OriginConnectTimeout, Some(502)),
                _ => (CloseReason::OriginHandshakeTimeout, Some(504)),
            };
            if let Some(status) = status {
                self.status = Some(status);
            }
            return close(reason, status);
        }
        if let Some((reason, grace_end)) = self.graceful {
            // Only the grace period counts now: the close handshake is in progress.
            return (now >= grace_end).then_some(TimerAction::Close {
                reason,
                status: None,
            });
        }
        let graceful = |this: &mut Conn, reason| {
            if this.frames.is_some() && this.phase == Phase::Relay && this.status == Some(101) {
                Some(TimerAction::GracefulClose(reason))
            } else {
                Some(TimerAction::Close {
                    reason,
                    status: None,
                })
            }
        };
        if self.max_deadline.is_some_and(|d| now >= d) {
            return graceful(self, CloseReason::MaxConnectionTime);
        }
        if let Some((at, reason)) = self.close_at
            && now >= at
        {
            return graceful(self, reason);
        }
        if self.ping_deadline.is_some_and(|d| now >= d) {
            return close(CloseReason::KeepaliveTimeout, None);
        }
        if let Some(ms) = self.idle_ms
            && now >= self.last_activity.saturating_add(ms)
        {
            return close(CloseReason::IdleTimeout, None);
        }
        if let Some(FrameTimers {
            keepalive_ms: Some(ms),
            keepalive_timeout_ms,
            ..
        }) = self.frames
            && self.phase == Phase::Relay
            && self.ping_deadline.is_none()
            && now >= self.last_activity.saturating_add(ms)
        {
            self.ping_deadline = Some(now.saturating_add(keepalive_timeout_ms));
            return Some(TimerAction::Ping);
        }
        None
    }

    /// Bytes counted in flight by [`Conn::on_recv`] that the driver dropped instead of
    /// forwarding (an absorbed pong, data after a Close).
    pub fn on_dropped(&mut self, from: Side, n: usize) {
        let flow = &mut self.flows[from.index()];
        flow.in_flight = flow.in_flight.saturating_sub(n as u64);
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

#[cfg(test)]
mod tests {
    //! Whole connection lives with no sockets: a simulated client, origin and clock drive
    //! the state machine the way the ring driver does.

    use super::*;
    use crate::firewall::Cidr;
    use crate::handshake::Reject;
    use crate::route::HostPattern;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
    const MAX_IN_FLIGHT: u64 = 1000;

    fn close(reason: CloseReason, status: Option<u16>) -> Option<TimerAction> {
        Some(TimerAction::Close { reason, status })
    }

    fn upgrade_head() -> Vec<u8> {
        format!(
            "GET /ws HTTP/1.1\r\nHost: edge.test:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .into_bytes()
    }

    fn timers() -> RouteTimers {
        RouteTimers {
            connect_ms: 5_000,
            origin_handshake_ms: 10_000,
            idle_ms: 60_000,
            max_connection_ms: 900_000,
            jitter_pct: 0,
        }
    }

    /// A connection plus the context a worker would hold.
    struct Sim {
        conn: Conn,
        now: Tick,
        limits: HeadLimits,
        routes: RouteTable,
    }

    impl Sim {
        fn new() -> Sim {
            Sim {
                conn: Conn::new(0, 10_000, MAX_IN_FLIGHT),
                now: 0,
                limits: HeadLimits::default(),
                routes: RouteTable::new([(HostPattern::Any, "/ws".to_owned())]),
            }
        }

        fn client_head(&mut self, buf: &[u8]) -> HeadAction {
            let cx = HeadContext {
                limits: &self.limits,
                routes: &self.routes,
                peer: "192.0.2.7".parse().expect("ip"),
                proto: "http",
                forwarding: &[],
            };
            self.conn.on_client_head(buf, self.now, &cx, None)
        }

        /// Head accepted, connected, origin head sent.
        fn head_to_origin(&mut self, head: &[u8], pool: usize) -> Vec<u8> {
            let HeadAction::Forward {
                route, origin_head, ..
            } = self.client_head(head)
            else {
                panic!("head not forwarded");
            };
            assert_eq!(route, 0);
            self.conn.on_connect_start(self.now, timers());
            assert_eq!(
                self.conn.on_connect_result(self.now, Ok(()), pool),
                ConnectAction::SendHead
            );
            origin_head
        }

        fn upgraded() -> Sim {
            let mut sim = Sim::new();
            sim.head_to_origin(&upgrade_head(), 1);
            assert!(!sim.conn.on_origin_head_sent());
            let response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
            );
            let action =
                sim.conn
                    .on_origin_head(response.as_bytes(), sim.now, &HeadLimits::default());
            assert!(matches!(action, OriginAction::Relay { status: 101, .. }));
            // The driver queues the response to the client and reports it written.
            sim.conn.on_sent(Side::Client, response.len(), sim.now);
            sim.conn.start_relay_timers(0);
            sim
        }
    }

    #[test]
    fn upgrade_forwards_the_rewritten_head_and_holds_the_early_bytes() {
        let mut sim = Sim::new();
        let mut head = upgrade_head();
        head.extend_from_slice(b"\x81\x85early");
        let HeadAction::Forward {
            origin_head, held, ..
        } = sim.client_head(&head)
        else {
            panic!("head not forwarded");
        };
        let text = String::from_utf8_lossy(&origin_head);
        assert!(text.contains("X-Forwarded-For: 192.0.2.7\r\n"), "{text}");
        assert!(text.contains("Host: edge.test:8080\r\n"));
        assert!(
            origin_head.ends_with(b"\r\n\r\n"),
            "early bytes never travel with the head: {text}"
        );
        assert_eq!(held, b"\x81\x85early", "held until the 101 is checked");
        assert_eq!(sim.conn.upgrade(), Some(Upgrade::WebSocket));
    }

    #[test]
    fn incomplete_head_needs_more_and_bad_heads_are_rejected() {
        let mut sim = Sim::new();
        let head = upgrade_head();
        assert_eq!(sim.client_head(&head[..20]), HeadAction::NeedMore);
        let mut bad = Sim::new();
        let v8 = String::from_utf8(upgrade_head())
            .expect("utf8")
            .replace("Version: 13", "Version: 8");
        match bad.client_head(v8.as_bytes()) {
            HeadAction::Reject { status: 426, .. } => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(bad.conn.status(), Some(426));
        let mut unrouted = Sim::new();
        let other_path = String::from_utf8(upgrade_head())
            .expect("utf8")
            .replace("GET /ws", "GET /elsewhere");
        assert_eq!(
            unrouted.client_head(other_path.as_bytes()),
            HeadAction::Reject {
                status: 404,
                reason: CloseReason::NoRoute
            }
        );
    }

    #[test]
    fn relay_applies_backpressure_and_propagates_half_close() {
        let mut sim = Sim::upgraded();
        assert!(sim.conn.wants_read(Side::Client) && sim.conn.wants_read(Side::Origin));
        // The client floods; reading stops at the in-flight bound and resumes once written.
        assert_eq!(sim.conn.on_recv(Side::Client, 600, 1), 600);
        assert!(sim.conn.wants_read(Side::Client));
        sim.conn.on_recv(Side::Client, 600, 1);
        assert!(!sim.conn.wants_read(Side::Client));
        sim.conn.on_sent(Side::Origin, 1000, 2);
        assert!(sim.conn.wants_read(Side::Client));
        // Client FIN: the origin's write side is shut only after the last bytes went out.
        sim.conn.on_eof(Side::Client);
        assert!(!sim.conn.wants_read(Side::Client));
        assert!(!sim.conn.wants_shutdown(Side::Origin));
        sim.conn.on_sent(Side::Origin, 200, 3);
        assert!(sim.conn.wants_shutdown(Side::Origin));
        sim.conn.mark_shutdown(Side::Origin);
        assert_eq!(sim.conn.finished(), None);
        // The origin answers and closes too.
        sim.conn.on_recv(Side::Origin, 10, 4);
        sim.conn.on_eof(Side::Origin);
        assert!(!sim.conn.wants_shutdown(Side::Client));
        sim.conn.on_sent(Side::Client, 10, 5);
        assert!(sim.conn.wants_shutdown(Side::Client));
        sim.conn.mark_shutdown(Side::Client);
        assert_eq!(sim.conn.finished(), Some(CloseReason::ClientClosed));
        assert_eq!(sim.conn.bytes_from(Side::Client), 1200);
    }

    #[test]
    fn origin_closing_first_is_blamed_on_the_origin() {
        let mut sim = Sim::upgraded();
        sim.conn.on_eof(Side::Origin);
        sim.conn.mark_shutdown(Side::Client);
        sim.conn.on_eof(Side::Client);
        sim.conn.mark_shutdown(Side::Origin);
        assert_eq!(sim.conn.finished(), Some(CloseReason::OriginClosed));
    }

    #[test]
    fn routes_on_the_normalized_path_and_forwards_it_with_the_route_policy() {
        let routes = RouteTable::new([
            (HostPattern::Any, "/".to_owned()),
            (HostPattern::Any, "/internal".to_owned()),
        ]);
        let trusted = Forwarding {
            trusted_proxies: vec![Cidr::V4 {
                addr: 0xc000_0200,
                len: 24,
            }],
            x_real_ip: crate::forwarding::XRealIp::Set,
        };
        // Route 0 trusts the peer's network, route 1 has no policy of its own.
        let forwarding = [trusted];
        let cx = HeadContext {
            limits: &HeadLimits::default(),
            routes: &routes,
            peer: "192.0.2.7".parse().expect("ip"),
            proto: "http",
            forwarding: &forwarding,
        };
        let head = |target: &str| {
            format!(
                "GET {target} HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\r\n"
            )
            .into_bytes()
        };
        for (target, want_route, want_line) in [
            ("/x/../internal", 1, "GET /internal HTTP/1.1"),
            ("/%69nternal/a?q=1", 1, "GET /internal/a?q=1 HTTP/1.1"),
            ("//internal", 1, "GET /internal HTTP/1.1"),
            ("/ws/./chat", 0, "GET /ws/chat HTTP/1.1"),
        ] {
            let mut conn = Conn::new(0, 10_000, MAX_IN_FLIGHT);
            let HeadAction::Forward {
                route, origin_head, ..
            } = conn.on_client_head(&head(target), 0, &cx, None)
            else {
                panic!("{target}: not forwarded");
            };
            let text = String::from_utf8_lossy(&origin_head);
            assert_eq!(route, want_route, "{target}");
            assert!(text.starts_with(&format!("{want_line}\r\n")), "{text}");
            let (xff, real) = if route == 0 {
                ("6.6.6.6, 192.0.2.7", "6.6.6.6")
            } else {
                ("192.0.2.7", "192.0.2.7")
            };
            assert!(
                text.contains(&format!("\r\nX-Forwarded-For: {xff}\r\n")),
                "{text}"
            );
            assert!(
                text.contains(&format!("\r\nX-Real-IP: {real}\r\n")),
                "{text}"
            );
        }
        let mut conn = Conn::new(0, 10_000, MAX_IN_FLIGHT);
        assert!(matches!(
            conn.on_client_head(&head("/%2e%2e/internal"), 0, &cx, None),
            HeadAction::Reject { status: 400, .. }
        ));
    }

    #[test]
    fn refused_connect_tries_the_next_origin_once() {
        let mut sim = Sim::new();
        let HeadAction::Forward { .. } = sim.client_head(&upgrade_head()) else {
            panic!("not forwarded");
        };
        sim.conn.on_connect_start(0, timers());
        assert_eq!(
            sim.conn
                .on_connect_result(0, Err(ConnectFailure::Refused), 2),
            ConnectAction::TryNext
        );
        sim.conn.on_connect_start(0, timers());
        assert_eq!(
            sim.conn
                .on_connect_result(0, Err(ConnectFailure::Refused), 2),
            ConnectAction::Fail {
                status: 502,
                reason: CloseReason::OriginUnreachable
            }
        );
        let mut single = Sim::new();
        single.client_head(&upgrade_head());
        single.conn.on_connect_start(0, timers());
        assert!(matches!(
            single
                .conn
                .on_connect_result(0, Err(ConnectFailure::Refused), 1),
            ConnectAction::Fail { status: 502, .. }
        ));
    }

    #[test]
    fn each_phase_has_its_own_timeout_and_status() {
        // Head: 408 when bytes came, silent close when none did.
        let mut partial = Sim::new();
        partial.client_head(b"GET /ws HT");
        assert_eq!(partial.conn.poll_timeout(), Some(10_000));
        assert_eq!(partial.conn.on_timeout(9_999), None);
        assert_eq!(
            partial.conn.on_timeout(10_000),
            close(CloseReason::HandshakeTimeout, Some(408))
        );
        let mut silent = Sim::new();
        assert_eq!(
            silent.conn.on_timeout(10_000),
            close(CloseReason::HandshakeTimeout, None)
        );
        // Connect: 502 after the connect timeout.
        let mut connecting = Sim::new();
        connecting.client_head(&upgrade_head());
        connecting.conn.on_connect_start(100, timers());
        assert_eq!(connecting.conn.poll_timeout(), Some(5_100));
        assert_eq!(
            connecting.conn.on_timeout(5_100),
            close(CloseReason::OriginConnectTimeout, Some(502))
        );
        // Origin head: 504 after the origin handshake timeout.
        let mut waiting = Sim::new();
        waiting.head_to_origin(&upgrade_head(), 1);
        assert_eq!(
            waiting.conn.on_timeout(10_000),
            close(CloseReason::OriginHandshakeTimeout, Some(504))
        );
    }

    #[test]
    fn activity_pushes_the_idle_deadline_and_max_time_ends_it() {
        let mut sim = Sim::upgraded();
        assert_eq!(sim.conn.poll_timeout(), Some(60_000));
        sim.conn.on_recv(Side::Origin, 5, 50_000);
        assert_eq!(sim.conn.on_timeout(60_000), None);
        assert_eq!(sim.conn.poll_timeout(), Some(110_000));
        assert_eq!(
            sim.conn.on_timeout(110_000),
            close(CloseReason::IdleTimeout, None)
        );
        let mut long = Sim::upgraded();
        for t in (0..900_000).step_by(30_000) {
            long.conn.on_recv(Side::Client, 1, t);
            long.conn.on_sent(Side::Origin, 1, t);
        }
        assert_eq!(
            long.conn.on_timeout(900_000),
            close(CloseReason::MaxConnectionTime, None)
        );
        long.conn.close();
        assert_eq!(long.conn.poll_timeout(), None);
    }

    #[test]
    fn jitter_stays_within_the_configured_share_below_the_maximum() {
        for random in [0u32, 1, 12345, u32::MAX] {
            let mut sim = Sim::new();
            sim.head_to_origin(&upgrade_head(), 1);
            let mut t = timers();
            t.jitter_pct = 5;
            sim.conn.on_connect_start(0, t);
            sim.conn.on_connect_result(0, Ok(()), 1);
            let response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
            );
            sim.conn
                .on_origin_head(response.as_bytes(), 0, &HeadLimits::default());
            sim.conn.start_relay_timers(random);
            let deadline = sim.conn.max_deadline.expect("armed");
            assert!((855_000..=900_000).contains(&deadline), "{deadline}");
        }
    }

    #[test]
    fn a_wrong_accept_is_a_502_never_a_tunnel() {
        let mut sim = Sim::new();
        sim.head_to_origin(&upgrade_head(), 1);
        let response = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n";
        match sim
            .conn
            .on_origin_head(response.as_bytes(), 0, &HeadLimits::default())
        {
            OriginAction::Fail {
                status: 502,
                reason: CloseReason::OriginBadHandshake(_),
            } => {}
            other => panic!("{other:?}"),
        }
        assert_ne!(sim.conn.phase(), Phase::Relay);
    }

    #[test]
    fn a_declined_upgrade_is_relayed_with_connection_close_and_ends_with_its_body() {
        let mut sim = Sim::new();
        sim.head_to_origin(&upgrade_head(), 1);
        let response =
            b"HTTP/1.1 403 Forbidden\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nno";
        let closing = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\nConnection: close\r\n\r\n";
        assert_eq!(
            sim.conn.on_origin_head(response, 0, &HeadLimits::default()),
            OriginAction::Relay {
                status: 403,
                head_len: response.len() - 2,
                head: Some(closing.to_vec()),
                body_len: 2,
            }
        );
        assert!(
            !sim.conn.wants_read(Side::Client),
            "nothing more goes to the origin"
        );
        assert!(
            !sim.conn.wants_read(Side::Origin),
            "the whole response is in: a keep-alive origin is not waited for"
        );
        assert_eq!(sim.conn.finished(), None, "not written yet");
        sim.conn.on_sent(Side::Client, closing.len() + 2, 1);
        assert_eq!(sim.conn.finished(), Some(CloseReason::NotUpgraded));
        assert!(!sim.conn.wants_shutdown(Side::Client));
    }

    #[test]
    fn a_declined_upgrade_with_a_chunked_body_ends_at_its_last_chunk() {
        let mut sim = Sim::new();
        sim.head_to_origin(&upgrade_head(), 1);
        let response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n";
        let OriginAction::Relay { head, body_len, .. } =
            sim.conn.on_origin_head(response, 0, &HeadLimits::default())
        else {
            panic!("not relayed");
        };
        let head = head.expect("rewritten");
        assert_eq!(body_len, 8);
        assert!(sim.conn.wants_read(Side::Origin));
        // The rest of the body, then what a keep-alive origin would never send: more bytes.
        assert_eq!(
            sim.conn
                .on_recv_data(Side::Origin, b"0\r\n\r\nHTTP/1.1 200 OK\r\n", 1),
            5
        );
        assert!(!sim.conn.wants_read(Side::Origin));
        sim.conn.on_sent(Side::Client, head.len() + 8 + 5, 2);
        assert_eq!(sim.conn.finished(), Some(CloseReason::NotUpgraded));
    }

    #[test]
    fn the_answer_to_head_has_no_body_and_interim_answers_relay_until_close() {
        let mut sim = Sim::new();
        sim.head_to_origin(b"HEAD /ws/x HTTP/1.1\r\nHost: edge.test\r\n\r\n", 1);
        let response = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
        let OriginAction::Relay { body_len: 0, .. } =
            sim.conn.on_origin_head(response, 0, &HeadLimits::default())
        else {
            panic!("not relayed");
        };
        assert!(!sim.conn.wants_read(Side::Origin), "no body follows");
        let mut interim = Sim::new();
        interim.head_to_origin(&upgrade_head(), 1);
        let early_hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n";
        assert_eq!(
            interim
                .conn
                .on_origin_head(early_hints, 0, &HeadLimits::default()),
            OriginAction::Relay {
                status: 103,
                head_len: early_hints.len(),
                head: None,
                body_len: 0,
            }
        );
        assert!(
            interim.conn.wants_read(Side::Origin),
            "the final answer follows"
        );
    }

    #[test]
    fn a_chunked_request_body_is_forwarded_up_to_its_end_only() {
        let mut sim = Sim::new();
        let head = b"POST /ws/api HTTP/1.1\r\nHost: edge.test\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab";
        let origin_head = sim.head_to_origin(head, 1);
        assert!(origin_head.ends_with(b"\r\n\r\n2\r\nab"));
        assert!(sim.conn.on_origin_head_sent());
        let smuggled = b"\r\n0\r\n\r\nGET /internal HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(sim.conn.on_recv_data(Side::Client, smuggled, 1), 7);
        assert!(!sim.conn.wants_read(Side::Client));
        let mut whole = Sim::new();
        let head = b"POST /ws/api HTTP/1.1\r\nHost: edge.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /internal HTTP/1.1\r\n\r\n";
        let origin_head = whole.head_to_origin(head, 1);
        assert!(origin_head.ends_with(b"\r\n\r\n0\r\n\r\n"));
        assert!(!whole.conn.on_origin_head_sent(), "the body is complete");
        let mut bad = Sim::new();
        let head =
            b"POST /ws/api HTTP/1.1\r\nHost: edge.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert!(matches!(
            bad.client_head(head),
            HeadAction::Reject { status: 400, .. }
        ));
    }

    #[test]
    fn a_plain_request_forwards_exactly_its_body() {
        let mut sim = Sim::new();
        let head = b"POST /ws/api HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 10\r\n\r\n0123";
        let origin_head = sim.head_to_origin(head, 1);
        assert!(origin_head.ends_with(b"\r\n\r\n0123"));
        assert!(String::from_utf8_lossy(&origin_head).contains("Connection: close\r\n"));
        // The rest of the body follows once the head is written; bytes past it are dropped.
        assert!(sim.conn.on_origin_head_sent());
        assert!(sim.conn.wants_read(Side::Client));
        assert_eq!(sim.conn.on_recv_data(Side::Client, b"4567", 1), 4);
        assert_eq!(sim.conn.on_recv_data(Side::Client, b"89GET /ws/y", 1), 2);
        assert!(!sim.conn.wants_read(Side::Client));
        let mut pipelined = Sim::new();
        let head = b"GET /ws/x HTTP/1.1\r\nHost: edge.test\r\n\r\nGET /ws/y HTTP/1.1\r\n\r\n";
        let origin_head = pipelined.head_to_origin(head, 1);
        let text = String::from_utf8_lossy(&origin_head);
        assert!(
            text.ends_with("\r\n\r\n") && !text.contains("/ws/y"),
            "pipelined request must not be forwarded: {text}"
        );
        assert!(!pipelined.conn.on_origin_head_sent());
        let response = b"HTTP/1.1 200 OK\r\n\r\n";
        let OriginAction::Relay {
            head: Some(closing),
            ..
        } = pipelined
            .conn
            .on_origin_head(response, 2, &HeadLimits::default())
        else {
            panic!("not relayed with Connection: close");
        };
        assert_eq!(closing, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
        pipelined.conn.on_sent(Side::Client, closing.len(), 3);
        pipelined.conn.on_eof(Side::Origin);
        assert_eq!(pipelined.conn.finished(), Some(CloseReason::HttpDone));
    }

    #[test]
    fn frames_keepalive_pings_then_closes_without_a_pong() {
        let mut sim = Sim::upgraded();
        sim.conn.set_frame_timers(FrameTimers {
            keepalive_ms: Some(20_000),
            keepalive_timeout_ms: 5_000,
            close_grace_ms: 3_000,
        });
        assert_eq!(sim.conn.poll_timeout(), Some(20_000));
        assert_eq!(sim.conn.on_timeout(20_000), Some(TimerAction::Ping));
        assert!(sim.conn.ping_outstanding());
        assert_eq!(sim.conn.poll_timeout(), Some(25_000));
        // Answered: no close, and the next ping is due after the next idle period.
        sim.conn.on_recv(Side::Client, 6, 21_000);
        sim.conn.on_pong();
        assert_eq!(sim.conn.on_timeout(25_000), None);
        assert_eq!(sim.conn.poll_timeout(), Some(41_000));
        assert_eq!(sim.conn.on_timeout(41_000), Some(TimerAction::Ping));
        assert_eq!(
            sim.conn.on_timeout(46_000),
            close(CloseReason::KeepaliveTimeout, None)
        );
    }

    #[test]
    fn frames_max_time_is_a_graceful_close_with_a_grace_period() {
        let mut sim = Sim::upgraded();
        sim.conn.set_frame_timers(FrameTimers {
            keepalive_ms: None,
            keepalive_timeout_ms: 0,
            close_grace_ms: 3_000,
        });
        for t in (0..900_000).step_by(30_000) {
            sim.conn.on_recv(Side::Client, 1, t);
            sim.conn.on_sent(Side::Origin, 1, t);
        }
        assert_eq!(
            sim.conn.on_timeout(900_000),
            Some(TimerAction::GracefulClose(CloseReason::MaxConnectionTime))
        );
        sim.conn
            .begin_graceful_close(900_000, CloseReason::MaxConnectionTime);
        assert_eq!(sim.conn.poll_timeout(), Some(903_000));
        assert_eq!(sim.conn.on_timeout(902_999), None);
        assert_eq!(
            sim.conn.on_timeout(903_000),
            close(CloseReason::MaxConnectionTime, None)
        );
    }

    #[test]
    fn a_scheduled_drain_close_is_graceful_in_frames_mode_only() {
        let mut framed = Sim::upgraded();
        framed.conn.set_frame_timers(FrameTimers::default());
        framed.conn.schedule_close(7_000, CloseReason::Drained);
        framed.conn.schedule_close(9_000, CloseReason::Drained);
        assert_eq!(framed.conn.poll_timeout(), Some(7_000));
        assert_eq!(
            framed.conn.on_timeout(7_000),
            Some(TimerAction::GracefulClose(CloseReason::Drained))
        );
        let mut opaque = Sim::upgraded();
        opaque.conn.schedule_close(7_000, CloseReason::Drained);
        assert_eq!(
            opaque.conn.on_timeout(7_000),
            close(CloseReason::Drained, None)
        );
    }

    #[test]
    fn refusal_labels_match_the_verdicts() {
        use std::sync::Arc;
        for verdict in [
            Verdict::Deny,
            Verdict::Drop,
            Verdict::Respond {
                status: 401,
                body: Arc::from("no"),
            },
            Verdict::RateLimited {
                retry_after_secs: 1,
            },
            Verdict::PerAddressCap,
            Verdict::GlobalCap,
        ] {
            let refusal = Refusal::of(&verdict).expect("a refusal");
            assert_eq!(refusal.as_str(), verdict.reason());
        }
        assert_eq!(Refusal::of(&Verdict::Allow), None);
        assert!(std::mem::size_of::<CloseReason>() <= 8);
    }

    #[test]
    fn close_reasons_have_labels_and_blame() {
        assert_eq!(
            CloseReason::MaxConnectionTime.as_str(),
            "max_connection_time"
        );
        assert_eq!(CloseReason::OriginUnreachable.fault(), Fault::Origin);
        assert_eq!(CloseReason::ClientClosed.fault(), Fault::Client);
        assert_eq!(CloseReason::IdleTimeout.fault(), Fault::Proxy);
        assert_eq!(
            CloseReason::Rejected(Reject::HeadTooLarge).as_str(),
            "head_too_large"
        );
    }
}
