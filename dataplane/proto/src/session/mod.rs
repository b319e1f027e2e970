//! The life of one connection, as a sans-IO session that owns every decision (quinn-proto's
//! shape: inputs in, outputs out, time as a parameter).
//!
//! The worker feeds a [`Session`] every event of its connection ([`Input`]: head bytes, a
//! connect result, received bytes, bytes written, an EOF, a timeout...) with
//! [`Session::handle`], and applies what comes out ([`Output`]: read a head, connect, queue
//! bytes, start or stop reading, splice, shut a side down, close with a reason) in order. It
//! asks [`Session::poll_timeout`] for the one timer it keeps per connection. Nothing here
//! touches a socket, a clock or memory the kernel owns: the whole policy is testable without
//! sockets (`tests.rs`), and the fuzz targets drive this same API.
//!
//! Its stage is one enum, upgraded from one state to the next as sozu's protocol machines do:
//! `Head` (reading the client's request) -> `Origin` (connecting, waiting for the answer;
//! the client's early bytes held) -> `Stream` (the byte relay: buffered, splice, auto) or
//! `Frames` (the relay that follows WebSocket frames) or `Function` (the edge answers, with
//! an optional peer of its own). How it ends is one sub-machine, [`Ending`]: `Open` ->
//! `Flushing` (the proxy's last bytes to the client) -> `Lingering` (the client's input
//! drained so it reads the answer) -> `Closed(reason)`, and one output, [`Output::Close`].
//!
//! Outputs go into a sink the worker owns ([`Env::out`]) rather than a queue in each
//! session: an idle connection then keeps no output buffer.

mod addr;
mod ending;
mod flow;
pub mod frames;
mod frames_relay;
mod function_stage;
mod handshake;
mod head;
mod io;
mod policy;
#[cfg(test)]
mod pool_tests;
mod reason;
mod relay;
pub mod sim;
#[cfg(test)]
mod tests;
mod timers;

use std::net::SocketAddr;
use std::rc::Rc;

pub use head::{FirewallGate, HeadContext};
pub use io::{AfterFlush, ConnectFailure, Ending, Env, Input, Metric, Output, Phase};
pub use policy::{FrameLimits, LINGER_MS, RelayMode, Route, RouteTimers, SessionConfig};
pub use reason::{CloseReason, Fault, Refusal, Side};

use self::addr::PackedAddr;
use self::flow::Flow;
use self::frames::{ChunkOutcome, FramesState, Piece};
use self::head::{HeadDecision, HeadFacts};
use crate::body::{BodyEnd, Fed};
pub use crate::chunk::{BufId, Chunk};
use crate::function::{Bus, ConnKey, Delivery, FnAction, FnCx, FunctionSession, PeerEvent};
use crate::handshake::{error_response, unavailable_response};
use crate::health::{Failure, Outcome};
use crate::response::{self, ResponseError};
use crate::upgrade::switching_protocols;
use crate::wheel::{Deadline, Tick};

/// The first capacity of a head buffer (a browser's upgrade head is ~600 bytes, a 101 ~150);
/// the ring grows it as needed up to the head limit.
pub const HEAD_BUF_START: usize = 1024;
const ORIGIN_HEAD_BUF_START: usize = 512;

/// A stream read's state on one side, as the session asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Reading {
    #[default]
    Off,
    /// A head read holds the side's head buffer.
    Head,
    /// A multishot stream read is armed.
    Stream,
    /// Stopping the stream read ([`Output::StopRead`] given, [`Input::ReadEnded`] awaited).
    Stopping,
    /// The stream read ended with the socket's EOF: nothing is armed on this side again.
    Ended,
}

/// The connection's stage; see the module docs.
#[derive(Debug)]
enum Stage {
    /// Reading the client's head (`None` while a head read holds the buffer).
    Head(Option<Vec<u8>>),
    /// Connecting to the origin and waiting for its answer.
    Origin(Box<OriginStage>),
    /// Relaying a byte stream (after a 101, or a plain exchange).
    Stream(StreamRelay),
    /// Relaying WebSocket frames.
    Frames(Box<FramesState>),
    /// The edge answers the client itself.
    Function(Box<FunctionStage>),
}

/// Connecting and waiting for the origin's (or a function's peer's) answer.
#[derive(Debug)]
struct OriginStage {
    /// The head to send once connected (given away then).
    head: Vec<u8>,
    /// The client's early bytes, forwarded only after a checked 101.
    held: Vec<u8>,
    /// The `Sec-WebSocket-Accept` a 101 must carry; `None` for a plain request.
    accept: Option<[u8; 28]>,
    websocket: bool,
    head_request: bool,
    /// The pool's origins tried so far (bit i = origin i), and attempts made.
    tried: u64,
    attempts: u8,
    connected: bool,
    /// The request's consistent-hash key (a route with `balance = "consistent_hash"`).
    key: Option<u64>,
    /// A function waits for this peer (`bridge`, a script's outbound socket).
    for_function: Option<Box<FunctionStage>>,
    /// A function's `wss://` peer: the name its certificate is verified against.
    peer_tls: Option<String>,
}

/// How the worker opens a session's origin side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerTransport<'a> {
    /// As the route's origins are configured (`origin_tls`, `wss://` origins, or plain).
    Route,
    /// A function's plain `ws://` peer.
    Plain,
    /// A function's `wss://` peer, verified against this name.
    Tls { name: &'a str },
}

/// The stream relay's per-direction splice state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct StreamRelay {
    /// `auto`: a recv from either side filled a whole buffer: both directions go to splice.
    bulk: bool,
    /// No pipe could be had for this direction: it stays buffered.
    no_splice: [bool; 2],
    /// This direction is spliced.
    splicing: [bool; 2],
}

/// The edge answering the client: a function, before and after the upgrade.
#[derive(Debug)]
struct FunctionStage {
    function: Box<dyn FunctionSession>,
    /// The edge's 101 was queued.
    upgraded: bool,
    /// The function finished (nothing more goes through it).
    finished: bool,
    /// The client's early bytes, given to the function after the upgrade.
    held: Vec<u8>,
    /// The peer's bytes after its 101, until the function joins or reads them.
    peer_early: Vec<u8>,
    /// The peer is open.
    peer_open: bool,
    /// The client's `Sec-WebSocket-Accept` (its 101 is the edge's own).
    accept: Option<[u8; 28]>,
    /// No client at all ([`Session::outbound`]): the function runs its peer only.
    clientless: bool,
    actions: Vec<FnAction>,
}

/// Per-session facts kept for the log and debug headers, boxed: most connections never
/// need more than the head's length.
#[derive(Debug, Default)]
struct Extra {
    traceback: Option<Vec<String>>,
    debug_pragma: bool,
}

/// The pure state of one connection; see the module docs.
#[derive(Debug)]
pub struct Session {
    stage: Stage,
    ending: Ending,
    route: Option<Rc<Route>>,
    origin: Option<PackedAddr>,
    /// The origin's index in its route's pool while this connection counts on it (least
    /// connections); `None` for a function's peer.
    origin_index: Option<u8>,
    peer: PackedAddr,
    accepted_at: Tick,
    last_activity: Tick,
    /// Deadline of the current handshake step (head, connect, origin answer).
    step_deadline: Deadline,
    max_deadline: Deadline,
    /// A graceful close scheduled (a drain), for `close_reason`. Two fields rather than an
    /// `Option<(Tick, CloseReason)>`: the reason packs with the small fields (issue 18's
    /// memory budget).
    close_at: Deadline,
    close_reason: CloseReason,
    status: Option<u16>,
    websocket: bool,
    flows: [Flow; 2],
    /// Bytes queued to each side and not yet written (relayed and own).
    queued: [usize; 2],
    reading: [Reading; 2],
    watching: bool,
    first_eof: Option<Side>,
    first_close: Option<Side>,
    /// Bytes of the client's head (its early bytes count when relayed).
    head_bytes: u64,
    /// Bytes the proxy sent the client on its own.
    own_to_client: u64,
    firewall_admitted: bool,
    /// Bytes of the client's head buffer seen (a 408 needs at least one).
    head_seen: bool,
    rng: u64,
    extra: Option<Box<Extra>>,
}

impl Session {
    /// A connection accepted at `now` from `peer`: its head read starts at once. `seed`
    /// seeds its random values (jitter, keys): the worker gives each session its own.
    pub fn accepted(
        now: Tick,
        cfg: &SessionConfig,
        peer: SocketAddr,
        seed: u64,
        out: &mut Vec<Output>,
    ) -> Session {
        out.push(Output::ReadHead {
            side: Side::Client,
            buf: Vec::with_capacity(HEAD_BUF_START),
        });
        Session {
            stage: Stage::Head(None),
            ending: Ending::Open,
            route: None,
            origin: None,
            origin_index: None,
            peer: peer.into(),
            accepted_at: now,
            last_activity: now,
            step_deadline: Deadline::at(now.saturating_add(cfg.handshake_ms)),
            max_deadline: Deadline::NEVER,
            close_at: Deadline::NEVER,
            close_reason: CloseReason::Drained,
            status: None,
            websocket: false,
            flows: [Flow::default(), Flow::default()],
            queued: [0; 2],
            reading: [Reading::Head, Reading::Off],
            watching: false,
            first_eof: None,
            first_close: None,
            head_bytes: 0,
            own_to_client: 0,
            firewall_admitted: false,
            head_seen: false,
            rng: seed | 1,
            extra: None,
        }
    }

    /// A client-less session: `function` (from [`crate::function::FunctionHost::poll_outbound`])
    /// runs a peer of its own on `route` with no client socket at all. Its
    /// [`FunctionSession::on_start`] runs at once (it opens its peer). It never outputs
    /// anything for [`Side::Client`]; it ends when its function finishes (once its last bytes
    /// to the peer are written, bounded by the linger time), on a drain (the function is asked
    /// to shut down) or on an abort. The route's idle time does not apply to it.
    pub fn outbound(
        cfg: &SessionConfig,
        route: Rc<Route>,
        function: Box<dyn FunctionSession>,
        seed: u64,
        env: &mut Env<'_>,
    ) -> Session {
        let now = env.now;
        let mut session = Session {
            stage: Stage::Function(Box::new(FunctionStage {
                function,
                upgraded: false,
                finished: false,
                held: Vec::new(),
                peer_early: Vec::new(),
                peer_open: false,
                accept: None,
                clientless: true,
                actions: Vec::new(),
            })),
            ending: Ending::Open,
            route: Some(route),
            origin: None,
            origin_index: None,
            peer: SocketAddr::from(([0, 0, 0, 0], 0)).into(),
            accepted_at: now,
            last_activity: now,
            step_deadline: Deadline::NEVER,
            max_deadline: Deadline::NEVER,
            close_at: Deadline::NEVER,
            close_reason: CloseReason::Drained,
            status: None,
            websocket: true,
            flows: [Flow::default(), Flow::default()],
            queued: [0; 2],
            reading: [Reading::Off, Reading::Off],
            watching: false,
            first_eof: None,
            first_close: None,
            head_bytes: 0,
            own_to_client: 0,
            firewall_admitted: false,
            head_seen: false,
            rng: seed | 1,
            extra: None,
        };
        let _ = cfg;
        session.with_function(env, |f, cx| f.on_start(cx));
        session
    }

    /// Whether this is a client-less session ([`Session::outbound`]).
    pub fn is_clientless(&self) -> bool {
        match &self.stage {
            Stage::Function(f) => f.clientless,
            Stage::Origin(o) => o.for_function.as_ref().is_some_and(|f| f.clientless),
            _ => false,
        }
    }

    /// How the origin side being connected is to be opened: a function's peer says itself
    /// whether it is `wss://`; an origin pool's transport is the route's.
    pub fn peer_transport(&self) -> PeerTransport<'_> {
        match &self.stage {
            Stage::Origin(o) if o.for_function.is_some() => match &o.peer_tls {
                Some(name) => PeerTransport::Tls { name },
                None => PeerTransport::Plain,
            },
            _ => PeerTransport::Route,
        }
    }

    // ----- what the worker reads (log, listings) ------------------------------------------

    /// The status sent or relayed to the client, if any.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    pub fn accepted_at(&self) -> Tick {
        self.accepted_at
    }

    pub fn route(&self) -> Option<&Rc<Route>> {
        self.route.as_ref()
    }

    /// The origin (or peer) connected to, if any.
    pub fn origin(&self) -> Option<SocketAddr> {
        self.origin.map(PackedAddr::get)
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer.get()
    }

    /// Bytes received from the client (its head, then what was relayed).
    pub fn bytes_from_client(&self) -> u64 {
        self.head_bytes + self.flows[Side::Client.index()].bytes
    }

    /// Bytes sent to the client (relayed from the origin, and the proxy's own).
    pub fn bytes_to_client(&self) -> u64 {
        self.flows[Side::Origin.index()].bytes + self.own_to_client
    }

    /// The route and firewall rules that matched, when the route has debug rules on.
    pub fn traceback(&self) -> Option<&[String]> {
        self.extra.as_ref()?.traceback.as_deref()
    }

    /// Whether the firewall counted this connection open: the worker reports its close to the
    /// firewall state exactly once.
    pub fn firewall_admitted(&self) -> bool {
        self.firewall_admitted
    }

    /// How it ends, if it does.
    pub fn ending(&self) -> Ending {
        self.ending
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.ending, Ending::Closed(_))
    }

    pub fn phase(&self) -> Phase {
        if self.ending != Ending::Open {
            return Phase::Ending;
        }
        match &self.stage {
            Stage::Head(_) => Phase::ClientHead,
            Stage::Origin(o) if o.connected => Phase::OriginHead,
            Stage::Origin(_) => Phase::Connecting,
            Stage::Stream(_) | Stage::Frames(_) => Phase::Relay,
            Stage::Function(_) => Phase::Function,
        }
    }

    /// Whether a drain could end it with a Close frame (a `frames` relay after its 101, a
    /// function after its upgrade).
    pub fn can_close_gracefully(&self) -> bool {
        match &self.stage {
            Stage::Frames(_) => true,
            Stage::Function(f) => f.upgraded || f.clientless,
            _ => false,
        }
    }

    // ----- time -------------------------------------------------------------------------

    /// The earliest tick at which [`Input::Timeout`] may have something to do. May change
    /// after any call to [`Session::handle`].
    pub fn poll_timeout(&self) -> Option<Tick> {
        match self.ending {
            Ending::Open => {}
            Ending::Flushing { until, .. } | Ending::Lingering { until, .. } => return Some(until),
            Ending::Closed(_) => return None,
        }
        if let Some((_, grace_end)) = self.grace() {
            return Some(grace_end);
        }
        let relaying = matches!(
            self.stage,
            Stage::Stream(_) | Stage::Frames(_) | Stage::Function(_)
        );
        let idle = self
            .route
            .as_ref()
            .filter(|_| relaying && !self.is_clientless())
            .map(|r| self.last_activity.saturating_add(r.timers.idle_ms));
        let ping_deadline = self.ping_deadline();
        let ping_due = match (&self.stage, &self.route, ping_deadline.get()) {
            (Stage::Frames(_), Some(r), None) => r
                .frames
                .keepalive_ms
                .map(|ms| self.last_activity.saturating_add(ms)),
            _ => None,
        };
        [
            self.step_deadline.get(),
            idle,
            self.max_deadline.get(),
            ping_due,
            ping_deadline.get(),
            self.close_at.get(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn random(&mut self) -> u64 {
        // xorshift64: jitter and keys need spread, not cryptographic quality.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    // ----- events -----------------------------------------------------------------------

    /// Handles one event; outputs go to `env.out`, in the order to apply them.
    pub fn handle(&mut self, input: Input<'_>, env: &mut Env<'_>) {
        if let Ending::Closed(_) = self.ending {
            // Late completions of a closed connection: only buffers need handing back.
            if let Input::Recv { buf, .. } = input {
                env.out.push(Output::Release(buf));
            }
            return;
        }
        match input {
            Input::HeadRead {
                side,
                buf,
                result,
                cx,
            } => self.on_head_read(side, buf, result, cx, env),
            Input::Connected(result) => self.on_connected(result, env),
            Input::Recv { from, buf, data } => self.on_recv(from, Some(buf), data, env),
            Input::RecvOwned { from, data } => self.on_recv(from, None, data, env),
            Input::Eof(side) => self.on_eof(side, env),
            Input::Failed(side) => self.on_failed(side, env),
            Input::ReadEnded(side) => {
                if self.reading[side.index()] == Reading::Stopping {
                    self.reading[side.index()] = Reading::Off;
                }
                self.progress(env);
            }
            Input::Sent { to, relayed, own } => self.on_sent(to, relayed, own, env),
            Input::Spliced { from, n } => {
                self.last_activity = env.now;
                self.flows[from.index()].count(n);
            }
            Input::SpliceWritten { from, n } => {
                self.last_activity = env.now;
                self.flows[from.index()].done(n);
                self.progress(env);
            }
            Input::SpliceUnavailable(from) => {
                if let Stage::Stream(relay) = &mut self.stage {
                    relay.no_splice[from.index()] = true;
                    relay.splicing[from.index()] = false;
                }
                env.out.push(Output::Metric(Metric::SpliceFallback));
                self.progress(env);
            }
            Input::ClientLeft { reset } => self.on_client_left(reset, env),
            Input::Timeout => self.on_timeout(env),
            Input::DrainBy { deadline, reason } => {
                if self.ending == Ending::Open && self.can_close_gracefully() {
                    let grace = self.route.as_ref().map_or(0, |r| r.frames.close_grace_ms);
                    let at = deadline.saturating_sub(grace).max(env.now);
                    self.schedule_close(at, reason);
                }
            }
            Input::CloseAt { at, reason } => {
                if self.ending == Ending::Open {
                    self.schedule_close(at, reason);
                }
            }
            // The origin's TLS failed before its answer: a 502 like any origin failure.
            Input::Abort(CloseReason::OriginTls)
                if matches!(self.stage, Stage::Origin(_)) && self.ending == Ending::Open =>
            {
                self.origin_failed(CloseReason::OriginTls, 502, env)
            }
            Input::Abort(reason) => self.close(reason, env),
            Input::Deliver(delivery) => self.on_deliver(delivery, env),
            Input::Wake => {
                if self.ending == Ending::Open {
                    self.with_function(env, |f, cx| f.on_wake(cx));
                }
            }
        }
        #[cfg(debug_assertions)]
        self.check_invariants();
    }

    fn schedule_close(&mut self, at: Tick, reason: CloseReason) {
        if self.close_at.get().is_none_or(|t| at < t) {
            self.close_at = Deadline::at(at);
            self.close_reason = reason;
        }
    }

    /// A graceful close under way (frames): why, and when its grace ends.
    fn grace(&self) -> Option<(CloseReason, Tick)> {
        match &self.stage {
            Stage::Frames(state) => state.grace,
            _ => None,
        }
    }

    /// When the keepalive ping that is out (frames) must have its pong.
    fn ping_deadline(&self) -> Deadline {
        match &self.stage {
            Stage::Frames(state) => state.ping_deadline,
            _ => Deadline::NEVER,
        }
    }
}
