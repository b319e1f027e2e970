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

mod flow;
pub mod frames;
mod head;
mod policy;
#[cfg(test)]
mod pool_tests;
mod reason;
pub mod sim;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::rc::Rc;

pub use head::{FirewallGate, HeadContext};
pub use policy::{FrameLimits, LINGER_MS, RelayMode, Route, RouteTimers, SessionConfig};
pub use reason::{CloseReason, Fault, Refusal, Side};

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

/// An action for the worker, applied in the order given.
#[derive(Debug)]
pub enum Output {
    /// Read into this head buffer (single-shot, up to the head limit); the buffer comes back
    /// with [`Input::HeadRead`].
    ReadHead { side: Side, buf: Vec<u8> },
    /// Open the origin side: a socket connected to `addr` (a failed earlier attempt's socket
    /// is closed first).
    Connect(SocketAddr),
    /// Watch the client for a close (FIN, reset) without reading it: [`Input::ClientLeft`].
    WatchClient,
    /// Stop watching (the relay reads the client from now on).
    UnwatchClient,
    /// Queue bytes to a side.
    Send { to: Side, chunk: Chunk },
    /// Keep a stream read armed on a side (multishot, into provided buffers).
    Read(Side),
    /// Stop reading a side (backpressure, going bulk, discarding): [`Input::ReadEnded`]
    /// follows once no read is armed.
    StopRead(Side),
    /// Relay the bytes coming from this side with splice (socket -> pipe -> socket) for the
    /// rest of the connection: [`Input::Spliced`], [`Input::SpliceWritten`] report progress.
    Splice(Side),
    /// Shut a side's write half (a half-close travels on; a lingering close starts).
    ShutdownWrite(Side),
    /// Tear a side down at once: cancel a pending connect, shut the socket both ways.
    Abort(Side),
    /// Hand a provided buffer back to the ring (its bytes were consumed or dropped).
    Release(BufId),
    /// Something to count.
    Metric(Metric),
    /// What this connection saw of origin `origin` (an index into its route's pool): the
    /// worker hands it to the pool's shared health (`Route::balance`'s view). Given only for
    /// pools that have one.
    OriginOutcome { origin: usize, outcome: Outcome },
    /// The connection is over: log it with this reason, tear it down, free it once no
    /// operation of it is in flight. Always the last output of a session.
    Close(CloseReason),
}

/// What a session reports for the worker's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// The handshake completed (101 queued): handshake latency can be taken now.
    Upgraded,
    /// A response that is not a 101 was relayed.
    PlainHttp,
    /// The firewall refused the handshake.
    Firewall,
    /// Complete data messages seen from a side (frames relay).
    Messages { from: Side, count: u64 },
    /// A Close frame with this code was seen from a side (frames relay).
    CloseSeen(u16),
    /// The proxy sent a Close frame with this code (frames relay).
    CloseSent(u16),
    /// A splice direction could not get a pipe and stays buffered.
    SpliceFallback,
}

/// An event of the connection, for [`Session::handle`].
pub enum Input<'a> {
    /// A head read completed: `result` bytes (0 = EOF, negative = error) landed in `buf`,
    /// which comes back. The client's head is decided with `cx`.
    HeadRead {
        side: Side,
        buf: Vec<u8>,
        result: i32,
        cx: Option<&'a mut HeadContext<'a>>,
    },
    /// The origin side's connect ended.
    Connected(Result<(), ConnectFailure>),
    /// Bytes from a side, in provided buffer `buf` (writable: functions unmask in place).
    Recv {
        from: Side,
        buf: BufId,
        data: &'a mut [u8],
    },
    /// Bytes from a side that are in no provided buffer: a transport made them (TLS
    /// plaintext that did not fit the buffer its ciphertext came in). Relayed by copy.
    RecvOwned { from: Side, data: &'a mut [u8] },
    /// A side sent EOF.
    Eof(Side),
    /// Reading or writing a side failed (reset, broken pipe).
    Failed(Side),
    /// No read is armed on this side any more (after [`Output::StopRead`]).
    ReadEnded(Side),
    /// Bytes were written to a side: `relayed` of them relayed from the other side, `own`
    /// the proxy's own.
    Sent {
        to: Side,
        relayed: usize,
        own: usize,
    },
    /// The splice relay moved `n` bytes from `from` into its pipe.
    Spliced { from: Side, n: usize },
    /// The splice relay wrote `n` bytes of `from`'s pipe to the other side.
    SpliceWritten { from: Side, n: usize },
    /// No pipe could be had for `from` (descriptors exhausted): nothing was read; it stays
    /// buffered.
    SpliceUnavailable(Side),
    /// The client closed (or reset) while it was watched.
    ClientLeft { reset: bool },
    /// A timer may be due.
    Timeout,
    /// A drain with a deadline: a connection that can end with a Close frame sends it in time
    /// for its close handshake to finish by `deadline`; the others are aborted then.
    DrainBy { deadline: Tick, reason: CloseReason },
    /// A graceful close (a Close frame where the relay can send one, else a close) at `at`.
    CloseAt { at: Tick, reason: CloseReason },
    /// End now (an operator's kill, a forced shutdown).
    Abort(CloseReason),
    /// A channel message for a function's client.
    Deliver(&'a mut Delivery),
    /// The function host has work for this connection's function
    /// (`FunctionHost::poll_wake` named it): [`FunctionSession::on_wake`].
    Wake,
}

impl std::fmt::Debug for Input<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Input::HeadRead { side, result, .. } => {
                write!(f, "HeadRead({side:?}, {result})")
            }
            Input::Connected(r) => write!(f, "Connected({r:?})"),
            Input::Recv { from, buf, data } => {
                write!(f, "Recv({from:?}, {buf:?}, {} bytes)", data.len())
            }
            Input::RecvOwned { from, data } => {
                write!(f, "RecvOwned({from:?}, {} bytes)", data.len())
            }
            Input::Eof(s) => write!(f, "Eof({s:?})"),
            Input::Failed(s) => write!(f, "Failed({s:?})"),
            Input::ReadEnded(s) => write!(f, "ReadEnded({s:?})"),
            Input::Sent { to, relayed, own } => write!(f, "Sent({to:?}, {relayed}+{own})"),
            Input::Spliced { from, n } => write!(f, "Spliced({from:?}, {n})"),
            Input::SpliceWritten { from, n } => write!(f, "SpliceWritten({from:?}, {n})"),
            Input::SpliceUnavailable(s) => write!(f, "SpliceUnavailable({s:?})"),
            Input::ClientLeft { reset } => write!(f, "ClientLeft(reset: {reset})"),
            Input::Timeout => f.write_str("Timeout"),
            Input::DrainBy { deadline, reason } => write!(f, "DrainBy({deadline}, {reason:?})"),
            Input::CloseAt { at, reason } => write!(f, "CloseAt({at}, {reason:?})"),
            Input::Abort(r) => write!(f, "Abort({r:?})"),
            Input::Deliver(d) => write!(f, "Deliver({})", d.channel),
            Input::Wake => f.write_str("Wake"),
        }
    }
}

/// Why a connect attempt failed, as far as retrying cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// Refused or unreachable: another origin may do better.
    Refused,
    /// A local failure (no descriptors, no memory): retrying elsewhere won't help.
    Local,
}

/// What every call of [`Session::handle`] gets besides the input.
pub struct Env<'a> {
    pub now: Tick,
    pub cfg: &'a SessionConfig,
    /// Where outputs go (the worker applies and clears them).
    pub out: &'a mut Vec<Output>,
    /// Channels, for functions.
    pub bus: &'a mut dyn Bus,
    /// This connection's public id.
    pub conn: ConnKey,
    /// The worker's index (debug headers).
    pub worker: usize,
}

impl std::fmt::Debug for Env<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("now", &self.now)
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

/// How a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Not ending.
    Open,
    /// The proxy's last bytes to the client are being written (an error answer, a function's
    /// last frames); then `then`, or a close at `until` if the client does not read.
    Flushing {
        reason: CloseReason,
        until: Tick,
        then: AfterFlush,
    },
    /// The client's write side is shut; its input is read and dropped until its EOF or
    /// `until`, so closing never resets an answer it has not read yet.
    Lingering { reason: CloseReason, until: Tick },
    /// Over ([`Output::Close`] was given).
    Closed(CloseReason),
}

/// What follows a flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFlush {
    Linger,
    Close,
}

/// Where a connection is, for `wsedgectl connections`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    ClientHead,
    Connecting,
    OriginHead,
    Relay,
    Function,
    Ending,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::ClientHead => "client_head",
            Phase::Connecting => "connecting",
            Phase::OriginHead => "origin_head",
            Phase::Relay => "relay",
            Phase::Function => "function",
            Phase::Ending => "ending",
        }
    }
}

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
    /// A function waits for this peer (`bridge`, a script's outbound socket).
    for_function: Option<Box<FunctionStage>>,
}

/// The stream relay's per-direction splice state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct StreamRelay {
    /// `auto`: a recv from this side filled a whole buffer: its direction goes to splice.
    bulk: [bool; 2],
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
    origin: Option<SocketAddr>,
    /// The origin's index in its route's pool while this connection counts on it (least
    /// connections); `None` for a function's peer.
    origin_index: Option<u8>,
    peer: SocketAddr,
    accepted_at: Tick,
    last_activity: Tick,
    /// Deadline of the current handshake step (head, connect, origin answer).
    step_deadline: Deadline,
    max_deadline: Deadline,
    /// A graceful close scheduled (a drain).
    close_at: Option<(Tick, CloseReason)>,
    /// A graceful close under way (frames): why, and when its grace ends.
    graceful: Option<(CloseReason, Tick)>,
    /// A keepalive ping is out (frames); its pong is due by then.
    ping_deadline: Deadline,
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
            peer,
            accepted_at: now,
            last_activity: now,
            step_deadline: Deadline::at(now.saturating_add(cfg.handshake_ms)),
            max_deadline: Deadline::NEVER,
            close_at: None,
            graceful: None,
            ping_deadline: Deadline::NEVER,
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
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            accepted_at: now,
            last_activity: now,
            step_deadline: Deadline::NEVER,
            max_deadline: Deadline::NEVER,
            close_at: None,
            graceful: None,
            ping_deadline: Deadline::NEVER,
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
        self.origin
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
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
        if let Some((_, grace_end)) = self.graceful {
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
        let ping_due = match (&self.stage, &self.route, self.ping_deadline.get()) {
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
            self.ping_deadline.get(),
            self.close_at.map(|(t, _)| t),
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
        if self.close_at.is_none_or(|(t, _)| at < t) {
            self.close_at = Some((at, reason));
        }
    }

    // ----- the client's head --------------------------------------------------------------

    fn on_head_read(
        &mut self,
        side: Side,
        buf: Vec<u8>,
        result: i32,
        cx: Option<&mut HeadContext<'_>>,
        env: &mut Env<'_>,
    ) {
        if self.reading[side.index()] == Reading::Head {
            self.reading[side.index()] = Reading::Off;
        }
        if self.ending != Ending::Open {
            // An answer is under way (a head read was pending): a lingering client is read to
            // discard from now on; an error there ends the linger.
            if let Ending::Lingering { reason, .. } = self.ending
                && side == Side::Client
            {
                if result <= 0 {
                    self.close(reason, env);
                } else {
                    self.read(Side::Client, env);
                }
            }
            return;
        }
        match side {
            Side::Client => self.on_client_head(buf, result, cx, env),
            Side::Origin => self.on_answer(buf, result, env),
        }
    }

    fn on_client_head(
        &mut self,
        buf: Vec<u8>,
        result: i32,
        cx: Option<&mut HeadContext<'_>>,
        env: &mut Env<'_>,
    ) {
        if result <= 0 {
            let reason = if result == 0 {
                CloseReason::ClientGone
            } else {
                CloseReason::ClientReset
            };
            return self.close(reason, env);
        }
        self.head_seen = true;
        self.last_activity = env.now;
        let Some(cx) = cx else {
            // The worker always gives the client's head its context; without one, no route.
            return self.respond_error(404, CloseReason::NoRoute, env);
        };
        let mut facts = HeadFacts::default();
        let decision = head::decide(
            &buf,
            &env.cfg.head_limits,
            self.peer.ip(),
            env.now,
            cx,
            &mut *env.bus,
            &mut facts,
        );
        self.head_bytes = buf.len() as u64;
        self.firewall_admitted = facts.firewall_admitted;
        let facts_accept = facts.client_accept;
        if facts.traceback.is_some() || facts.debug_pragma {
            self.extra = Some(Box::new(Extra {
                traceback: facts.traceback,
                debug_pragma: facts.debug_pragma,
            }));
        }
        match decision {
            HeadDecision::NeedMore => {
                self.stage = Stage::Head(None);
                self.reading[Side::Client.index()] = Reading::Head;
                env.out.push(Output::ReadHead {
                    side: Side::Client,
                    buf,
                });
            }
            HeadDecision::Reject { status, reason } => self.respond_error(status, reason, env),
            HeadDecision::Firewall { route, verdict } => {
                self.route = Some(route);
                env.out.push(Output::Metric(Metric::Firewall));
                let reason = head::refusal(&verdict);
                match verdict.status() {
                    None => self.close(reason, env),
                    Some(status) => {
                        let mut answer = Vec::new();
                        verdict.write_response(&mut answer);
                        let answer = self.debug_headers(answer, env);
                        self.respond(status, Chunk::own(answer), reason, env);
                    }
                }
            }
            HeadDecision::Refused { route, refused } => {
                self.route = Some(route);
                self.respond_error(refused.status, refused.reason, env);
            }
            HeadDecision::Forward(forward) => {
                // The client's early bytes wait for the origin's 101 (or are never forwarded):
                // they count as received from the client only once relayed.
                self.head_bytes -= forward.held.len() as u64;
                self.websocket = forward.websocket;
                self.flows[Side::Client.index()].body = forward.body.map(Box::new);
                let route = Rc::clone(&forward.route);
                self.route = Some(forward.route);
                self.stage = Stage::Origin(Box::new(OriginStage {
                    head: forward.origin_head,
                    held: forward.held,
                    accept: forward.accept,
                    websocket: forward.websocket,
                    head_request: forward.head_request,
                    tried: 0,
                    attempts: 0,
                    connected: false,
                    for_function: None,
                }));
                self.connect(&route, env);
                if self.ending == Ending::Open {
                    self.watching = true;
                    env.out.push(Output::WatchClient);
                }
            }
            HeadDecision::Function {
                route,
                function,
                held,
            } => {
                self.head_bytes -= held.len() as u64;
                self.websocket = true;
                self.route = Some(route);
                self.step_deadline = Deadline::NEVER;
                self.stage = Stage::Function(Box::new(FunctionStage {
                    function,
                    upgraded: false,
                    finished: false,
                    held,
                    peer_early: Vec::new(),
                    peer_open: false,
                    accept: facts_accept,
                    clientless: false,
                    actions: Vec::new(),
                }));
                self.with_function(env, |f, cx| f.on_start(cx));
            }
        }
    }

    // ----- the origin -----------------------------------------------------------------

    /// Starts (or retries) the connect to an origin of the route's pool: the balancer's
    /// choice among the live origins not tried yet. None live at the first attempt: 503 with
    /// `Retry-After`; none left for a retry: 502.
    fn connect(&mut self, route: &Route, env: &mut Env<'_>) {
        let Stage::Origin(stage) = &mut self.stage else {
            return;
        };
        let chosen = route.balance.choose(route.origins.len(), stage.tried);
        let first = stage.attempts == 0;
        let Some((index, &addr)) = chosen.and_then(|i| Some((i, route.origins.get(i)?))) else {
            if first && !route.origins.is_empty() {
                let answer = unavailable_response(route.balance.retry_after_secs());
                return self.respond(503, Chunk::own(answer), CloseReason::NoLiveOrigin, env);
            }
            return self.respond_error(502, CloseReason::OriginUnreachable, env);
        };
        stage.tried |= 1 << index;
        stage.attempts += 1;
        self.hold_origin(route, Some(index));
        self.origin = Some(addr);
        self.step_deadline = Deadline::at(env.now.saturating_add(route.timers.connect_ms));
        env.out.push(Output::Connect(addr));
    }

    fn on_connected(&mut self, result: Result<(), ConnectFailure>, env: &mut Env<'_>) {
        if self.ending != Ending::Open {
            return;
        }
        let Some(route) = self.route.clone() else {
            return;
        };
        let Stage::Origin(stage) = &mut self.stage else {
            return;
        };
        match result {
            Ok(()) => {
                stage.connected = true;
                let head = std::mem::take(&mut stage.head);
                self.queued[Side::Origin.index()] += head.len();
                env.out.push(Output::Send {
                    to: Side::Origin,
                    chunk: Chunk::own(head),
                });
                self.reading[Side::Origin.index()] = Reading::Head;
                env.out.push(Output::ReadHead {
                    side: Side::Origin,
                    buf: Vec::with_capacity(ORIGIN_HEAD_BUF_START),
                });
                self.step_deadline =
                    Deadline::at(env.now.saturating_add(route.timers.origin_handshake_ms));
            }
            Err(ConnectFailure::Refused) if stage.attempts < 2 && route.origins.len() > 1 => {
                self.report_origin(&route, Outcome::Failed(Failure::ConnectFailed), env);
                self.connect(&route, env);
            }
            Err(failure) => {
                if failure == ConnectFailure::Refused {
                    self.report_origin(&route, Outcome::Failed(Failure::ConnectFailed), env);
                }
                let reason = match failure {
                    ConnectFailure::Refused => CloseReason::OriginUnreachable,
                    ConnectFailure::Local => CloseReason::ResourceExhausted,
                };
                self.origin_failed(reason, 502, env);
            }
        }
    }

    /// Counts this connection on origin `index` of `route`'s pool (none: on no origin),
    /// releasing the one it counted on before.
    fn hold_origin(&mut self, route: &Route, index: Option<usize>) {
        if let Some(old) = self.origin_index.take() {
            route.balance.release(usize::from(old));
        }
        if let Some(index) = index.and_then(|i| u8::try_from(i).ok()) {
            route.balance.acquire(usize::from(index));
            self.origin_index = Some(index);
        }
    }

    /// Tells the pool's shared health what this connection saw of its origin.
    fn report_origin(&self, route: &Route, outcome: Outcome, env: &mut Env<'_>) {
        if let Some(origin) = self.origin_index
            && route.balance.view().is_some()
        {
            env.out.push(Output::OriginOutcome {
                origin: usize::from(origin),
                outcome,
            });
        }
    }

    /// The origin (or a function's peer) failed before its answer: 502/504, or the function
    /// decides.
    fn origin_failed(&mut self, reason: CloseReason, status: u16, env: &mut Env<'_>) {
        if let Stage::Origin(stage) = &mut self.stage
            && let Some(function) = stage.for_function.take()
        {
            env.out.push(Output::Abort(Side::Origin));
            self.stage = Stage::Function(function);
            self.with_function(env, |f, cx| {
                f.on_peer_event(PeerEvent::Failed { reason }, cx)
            });
            return;
        }
        self.respond_error(status, reason, env);
    }

    /// The origin's answer so far.
    fn on_answer(&mut self, mut buf: Vec<u8>, result: i32, env: &mut Env<'_>) {
        let Stage::Origin(stage) = &mut self.stage else {
            return;
        };
        if result <= 0 {
            let reason = if result == 0 {
                CloseReason::OriginHeadIncomplete
            } else {
                CloseReason::OriginReset
            };
            return self.origin_failed(reason, 502, env);
        }
        let parsed = response::parse_response(&buf, &env.cfg.head_limits, stage.accept.as_ref());
        let response = match parsed {
            Ok(None) => {
                self.reading[Side::Origin.index()] = Reading::Head;
                env.out.push(Output::ReadHead {
                    side: Side::Origin,
                    buf,
                });
                return;
            }
            Err(error) => {
                return self.origin_failed(CloseReason::OriginBadHandshake(error), 502, env);
            }
            Ok(Some(response)) => response,
        };
        let Stage::Origin(mut stage) = std::mem::replace(&mut self.stage, Stage::Head(None)) else {
            return;
        };
        self.step_deadline = Deadline::NEVER;
        self.last_activity = env.now;
        if self.watching {
            self.watching = false;
            env.out.push(Output::UnwatchClient);
        }
        if let Some(mut function) = stage.for_function.take() {
            // A function's peer: its 101 (checked against the edge's own key) is not relayed.
            if !response.upgraded {
                self.stage = Stage::Function(function);
                let reason = CloseReason::OriginBadHandshake(ResponseError::BadUpgrade(
                    response::BadUpgradeReason::MissingUpgrade,
                ));
                env.out.push(Output::Abort(Side::Origin));
                return self.with_function(env, |f, cx| {
                    f.on_peer_event(PeerEvent::Failed { reason }, cx);
                });
            }
            function.peer_open = true;
            function.peer_early = buf.split_off(response.head_len);
            self.stage = Stage::Function(function);
            return self.with_function(env, |f, cx| f.on_peer_event(PeerEvent::Open, cx));
        }
        let route = self.route.clone();
        if let Some(route) = &route {
            let outcome = if response.status >= 500 {
                Outcome::Failed(Failure::Status(response.status))
            } else {
                Outcome::Ok
            };
            self.report_origin(route, outcome, env);
        }
        self.status = Some(response.status);
        let after_head = buf.len() - response.head_len;
        if response.upgraded {
            self.flows = [Flow::default(), Flow::default()];
            let mut data = self.debug_headers_at(buf, response.head_len, env);
            let head_len = data.len() - after_head;
            env.out.push(Output::Metric(Metric::Upgraded));
            let frames = route.as_ref().is_some_and(|r| r.relay == RelayMode::Frames);
            let early_origin = if frames {
                data.split_off(head_len)
            } else {
                Vec::new()
            };
            self.queue_relayed(Side::Client, data, env);
            self.start_relay_timers(env);
            if frames && let Some(route) = route {
                self.stage = Stage::Frames(Box::new(FramesState::new(&route.frames, env.now)));
                self.frames_replay(Side::Client, &stage.held, env);
                self.frames_replay(Side::Origin, &early_origin, env);
            } else {
                self.stage = Stage::Stream(StreamRelay::default());
                if !stage.held.is_empty() {
                    let held = std::mem::take(&mut stage.held);
                    self.queue_relayed(Side::Origin, held, env);
                }
            }
            self.progress(env);
            return;
        }
        // Not upgraded: relayed with Connection: close up to the end of its body, then over.
        env.out.push(Output::Metric(Metric::PlainHttp));
        let client = &mut self.flows[Side::Client.index()];
        if !client.started || stage.websocket {
            client.eof = true;
            client.shut = true;
        }
        let (head, framing) = if response.status < 200 {
            // An interim answer (100, 103): the final one follows on the stream, which is
            // relayed as it is until the origin closes.
            (None, Some(BodyEnd::UntilClose))
        } else {
            let framing = if stage.head_request {
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
        origin.body = framing.map(Box::new);
        let body = &buf[response.head_len..];
        let body_len = match origin.body.as_mut().map(|f| f.feed(body)) {
            Some(Ok(Fed::More)) => body.len(),
            Some(Ok(Fed::Done(n))) => {
                origin.body = None;
                origin.eof = true;
                n
            }
            None | Some(Err(_)) => {
                origin.body = None;
                origin.eof = true;
                0
            }
        };
        let mut data = match head {
            Some(mut head) => {
                head.extend_from_slice(&body[..body_len]);
                head
            }
            None => {
                buf.truncate(response.head_len + body_len);
                buf
            }
        };
        data = self.debug_headers(data, env);
        self.queue_relayed(Side::Client, data, env);
        self.stage = Stage::Stream(StreamRelay::default());
        self.progress(env);
    }

    /// Queues bytes of the origin's stream that the session holds (a response head, early
    /// frames, held client bytes) to `to`, counted as relayed from the other side.
    fn queue_relayed(&mut self, to: Side, data: Vec<u8>, env: &mut Env<'_>) {
        if data.is_empty() {
            return;
        }
        self.flows[to.other().index()].count(data.len());
        self.queued[to.index()] += data.len();
        env.out.push(Output::Send {
            to,
            chunk: Chunk::relayed(data),
        });
    }

    /// Queues the proxy's own bytes to `to`.
    fn queue_own(&mut self, to: Side, chunk: Chunk, env: &mut Env<'_>) {
        let n = chunk.remaining();
        if n == 0 {
            return;
        }
        self.queued[to.index()] += n;
        if to == Side::Client {
            self.own_to_client += n as u64;
        }
        env.out.push(Output::Send { to, chunk });
    }

    /// Arms the maximum connection time (with the route's jitter).
    fn start_relay_timers(&mut self, env: &mut Env<'_>) {
        let Some(route) = self.route.clone() else {
            return;
        };
        let t = route.timers;
        let spread = t.max_connection_ms * u64::from(t.jitter_pct.min(50)) / 100;
        let cut = if spread == 0 {
            0
        } else {
            self.random() % (spread + 1)
        };
        self.max_deadline =
            Deadline::at(self.accepted_at.saturating_add(t.max_connection_ms - cut));
        let _ = env;
    }

    /// The debug headers, added to a complete response in `response` when asked for.
    fn debug_headers(&self, response: Vec<u8>, env: &Env<'_>) -> Vec<u8> {
        match (&self.extra, &self.route) {
            (Some(extra), Some(route)) if extra.debug_pragma => match &extra.traceback {
                Some(traceback) => head::with_debug_headers(
                    response,
                    traceback,
                    &route.name,
                    self.origin,
                    env.worker,
                ),
                None => response,
            },
            _ => response,
        }
    }

    /// As [`Session::debug_headers`], for a buffer whose head ends at `head_len` (the bytes
    /// after it are the stream's).
    fn debug_headers_at(&self, mut buf: Vec<u8>, head_len: usize, env: &Env<'_>) -> Vec<u8> {
        if !self.extra.as_ref().is_some_and(|e| e.debug_pragma) {
            return buf;
        }
        let rest = buf.split_off(head_len);
        let mut head = self.debug_headers(buf, env);
        head.extend_from_slice(&rest);
        head
    }

    fn on_client_left(&mut self, reset: bool, env: &mut Env<'_>) {
        self.watching = false;
        // Waiting for the origin's answer, or for a function's (an async `fetch`).
        let waiting = match &self.stage {
            Stage::Origin(_) => true,
            Stage::Function(f) => !f.upgraded && !f.clientless,
            _ => false,
        };
        if waiting && self.ending == Ending::Open {
            let reason = if reset {
                CloseReason::ClientReset
            } else {
                CloseReason::ClientGone
            };
            self.close(reason, env);
        }
    }

    // ----- the relay --------------------------------------------------------------------

    /// Bytes from `from`, in provided buffer `buf` (relayed in place) or, with `None`, in
    /// memory of the driver's (relayed by copy).
    fn on_recv(&mut self, from: Side, buf: Option<BufId>, data: &mut [u8], env: &mut Env<'_>) {
        let release = |env: &mut Env<'_>| {
            if let Some(buf) = buf {
                env.out.push(Output::Release(buf));
            }
        };
        // The first `n` bytes, to send on: in place, or copied.
        let forward_chunk = |n: usize, data: &[u8]| match buf {
            Some(buf) => Chunk::Buf {
                buf,
                off: 0,
                len: n as u32,
                release: true,
            },
            None => Chunk::relayed(data[..n].to_vec()),
        };
        if self.ending != Ending::Open {
            // Discarding (a lingering close, or a final answer being written).
            release(env);
            return;
        }
        self.last_activity = env.now;
        match &mut self.stage {
            Stage::Stream(relay) => {
                let n = data.len();
                let auto = self
                    .route
                    .as_ref()
                    .is_some_and(|r| r.relay == RelayMode::Auto);
                if auto && n as u32 == env.cfg.buffer_size && self.status == Some(101) {
                    relay.bulk[from.index()] = true;
                }
                let forward = self.flows[from.index()].on_data(data);
                if forward > 0 {
                    let to = from.other();
                    self.queued[to.index()] += forward;
                    env.out.push(Output::Send {
                        to,
                        chunk: forward_chunk(forward, data),
                    });
                } else {
                    release(env);
                }
            }
            Stage::Frames(_) => {
                self.flows[from.index()].count(data.len());
                self.frames_chunk(from, buf, data, env);
            }
            Stage::Function(_) if from == Side::Client => {
                release(env);
                self.with_function(env, |f, cx| f.on_client(data, cx));
            }
            Stage::Function(_) => {
                release(env);
                self.with_function(env, |f, cx| f.on_peer(data, cx));
            }
            Stage::Head(_) | Stage::Origin(_) => {
                // A plain request's body, read while the origin answers.
                if from == Side::Client {
                    let forward = self.flows[from.index()].on_data(data);
                    if forward > 0 {
                        self.queued[Side::Origin.index()] += forward;
                        env.out.push(Output::Send {
                            to: Side::Origin,
                            chunk: forward_chunk(forward, data),
                        });
                    } else {
                        release(env);
                    }
                } else {
                    release(env);
                }
            }
        }
        self.progress(env);
    }

    fn on_eof(&mut self, side: Side, env: &mut Env<'_>) {
        match self.ending {
            Ending::Lingering { reason, .. } if side == Side::Client => {
                return self.close(reason, env);
            }
            Ending::Open => {}
            _ => return,
        }
        if let Stage::Function(_) = self.stage {
            return match side {
                Side::Client => self.with_function(env, |f, cx| f.on_client_gone(cx)),
                Side::Origin => self.with_function(env, |f, cx| {
                    f.on_peer_event(PeerEvent::Closed { reset: false }, cx);
                }),
            };
        }
        if let Stage::Stream(relay) = &mut self.stage {
            relay.splicing[side.index()] = false;
        }
        let flow = &mut self.flows[side.index()];
        if !flow.eof {
            flow.eof = true;
            self.first_eof.get_or_insert(side);
        }
        if self.reading[side.index()] == Reading::Stream {
            // The multishot read ended with the EOF.
            self.reading[side.index()] = Reading::Off;
        }
        self.progress(env);
    }

    fn on_failed(&mut self, side: Side, env: &mut Env<'_>) {
        let reason = match self.ending {
            Ending::Lingering { reason, .. } | Ending::Flushing { reason, .. } => reason,
            _ => match side {
                Side::Client => CloseReason::ClientReset,
                Side::Origin => CloseReason::OriginReset,
            },
        };
        if let Stage::Function(_) = self.stage
            && side == Side::Origin
            && self.ending == Ending::Open
        {
            return self.with_function(env, |f, cx| {
                f.on_peer_event(PeerEvent::Closed { reset: true }, cx);
            });
        }
        self.close(reason, env);
    }

    fn on_sent(&mut self, to: Side, relayed: usize, own: usize, env: &mut Env<'_>) {
        self.last_activity = env.now;
        let i = to.index();
        self.queued[i] = self.queued[i].saturating_sub(relayed + own);
        self.flows[to.other().index()].done(relayed);
        if let Ending::Flushing { reason, then, .. } = self.ending {
            let flushed = if self.is_clientless() {
                Side::Origin
            } else {
                Side::Client
            };
            if to == flushed && self.queued[i] == 0 {
                match then {
                    AfterFlush::Linger => self.linger(reason, env),
                    AfterFlush::Close => self.close(reason, env),
                }
            }
            return;
        }
        if self.ending != Ending::Open {
            return;
        }
        // A plain request's head is written: the rest of its body may follow.
        if let Stage::Origin(stage) = &self.stage
            && to == Side::Origin
            && self.queued[i] == 0
            && stage.connected
            && !stage.websocket
        {
            let client = &mut self.flows[Side::Client.index()];
            if client.body.is_some() && !client.started {
                client.started = true;
            }
        }
        self.progress(env);
    }

    /// Whether `from` should be read now.
    fn wants_read(&self, from: Side, env: &Env<'_>) -> bool {
        let flow = &self.flows[from.index()];
        let relaying = matches!(self.stage, Stage::Stream(_) | Stage::Frames(_));
        !flow.eof && flow.in_flight < env.cfg.max_in_flight && (relaying || flow.started)
    }

    /// Re-evaluates the relay after any event: start or stop reading each side (or splice
    /// it), pass half-closes on, and end the connection when both directions are done.
    fn progress(&mut self, env: &mut Env<'_>) {
        if self.ending != Ending::Open {
            return;
        }
        if let Stage::Function(_) = self.stage {
            return self.function_progress(env);
        }
        if matches!(self.stage, Stage::Head(_)) {
            return;
        }
        let upgraded = self.status == Some(101);
        if let Stage::Frames(_) = self.stage {
            self.frames_progress(env);
            if self.ending != Ending::Open {
                return;
            }
        }
        for from in [Side::Client, Side::Origin] {
            let to = from.other();
            if self.wants_shutdown(to) {
                self.flows[from.index()].shut = true;
                env.out.push(Output::ShutdownWrite(to));
            }
            let wants = self.wants_read(from, env);
            let i = from.index();
            let splice = match (&self.stage, &self.route) {
                (Stage::Stream(relay), Some(route)) if upgraded => {
                    !relay.no_splice[i]
                        && (route.relay == RelayMode::Splice
                            || (route.relay == RelayMode::Auto && relay.bulk[i]))
                }
                _ => false,
            };
            if splice {
                let Stage::Stream(relay) = &mut self.stage else {
                    continue;
                };
                match self.reading[i] {
                    // `auto` going bulk: the stream read ends first (what it still delivers
                    // is forwarded as usual), then the buffered bytes drain.
                    Reading::Stream => {
                        self.reading[i] = Reading::Stopping;
                        env.out.push(Output::StopRead(from));
                    }
                    Reading::Off if wants && !relay.splicing[i] && self.queued[to.index()] == 0 => {
                        relay.splicing[i] = true;
                        env.out.push(Output::Splice(from));
                    }
                    _ => {}
                }
            } else if wants && self.reading[i] == Reading::Off {
                self.read(from, env);
            } else if !wants && self.reading[i] == Reading::Stream {
                self.reading[i] = Reading::Stopping;
                env.out.push(Output::StopRead(from));
            }
        }
        if let Some(reason) = self.finished() {
            if upgraded {
                let reason = self.graceful.map_or(reason, |(r, _)| r);
                self.close(reason, env);
            } else {
                self.linger(reason, env);
            }
        }
    }

    fn read(&mut self, side: Side, env: &mut Env<'_>) {
        if self.reading[side.index()] == Reading::Off {
            self.reading[side.index()] = Reading::Stream;
            env.out.push(Output::Read(side));
        }
    }

    /// Whether `to`'s write side should be shut now: its source ended and everything was
    /// written (the half-close travels on).
    fn wants_shutdown(&self, to: Side) -> bool {
        let flow = &self.flows[to.other().index()];
        let relaying = match &self.stage {
            Stage::Stream(_) => true,
            // The proxy's own frames to `to` (a deferred Close) go before its FIN.
            Stage::Frames(state) => !state.owes(to),
            _ => false,
        };
        self.websocket
            && self.status == Some(101)
            && relaying
            && flow.eof
            && !flow.shut
            && flow.in_flight == 0
    }

    /// Whether the exchange is over, and why.
    fn finished(&self) -> Option<CloseReason> {
        if !matches!(self.stage, Stage::Stream(_) | Stage::Frames(_)) {
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
            // A response relayed as is: over when the origin is done and all of it was sent.
            (origin.eof && origin.in_flight == 0).then_some(if self.websocket {
                CloseReason::NotUpgraded
            } else {
                CloseReason::HttpDone
            })
        }
    }

    // ----- the frames relay -------------------------------------------------------------

    /// Bytes the session holds (the client's held early frames, the origin's after its 101)
    /// through the frame tracker, as if received.
    fn frames_replay(&mut self, from: Side, early: &[u8], env: &mut Env<'_>) {
        if early.is_empty() || self.ending != Ending::Open {
            return;
        }
        if from == Side::Client {
            // Held bytes count once relayed; the origin's came with its (counted) answer.
            self.flows[from.index()].count(early.len());
        }
        self.frames_chunk(from, None, early, env);
    }

    /// A chunk from `from` on a `frames` route: its frames are forwarded as ranges of the
    /// buffer (copies for bytes the session holds), with the proxy's frames at boundaries.
    fn frames_chunk(&mut self, from: Side, buf: Option<BufId>, data: &[u8], env: &mut Env<'_>) {
        let Stage::Frames(state) = &mut self.stage else {
            return;
        };
        let mut pieces = Vec::new();
        let outcome = state.on_chunk(from, data, env.now, &mut pieces);
        let last_forward = pieces.iter().rposition(|p| matches!(p, Piece::Forward(_)));
        let to = from.other();
        for (i, piece) in pieces.into_iter().enumerate() {
            let chunk = match (piece, buf) {
                (Piece::Forward(range), Some(buf)) => Chunk::Buf {
                    buf,
                    off: range.start as u32,
                    len: range.end as u32,
                    release: Some(i) == last_forward,
                },
                (Piece::Forward(range), None) => Chunk::relayed(data[range].to_vec()),
                (Piece::Inject(frame), _) => Chunk::own(frame),
            };
            let n = chunk.remaining();
            self.queued[to.index()] += n;
            if to == Side::Client && !chunk.is_relayed() {
                self.own_to_client += n as u64;
            }
            env.out.push(Output::Send { to, chunk });
        }
        if last_forward.is_none()
            && let Some(buf) = buf
        {
            env.out.push(Output::Release(buf));
        }
        self.frames_outcome(from, outcome, env);
    }

    fn frames_outcome(&mut self, from: Side, outcome: ChunkOutcome, env: &mut Env<'_>) {
        self.flows[from.index()].done(outcome.dropped);
        if outcome.messages > 0 {
            env.out.push(Output::Metric(Metric::Messages {
                from,
                count: outcome.messages,
            }));
        }
        for code in outcome.close_codes {
            env.out.push(Output::Metric(Metric::CloseSeen(code)));
        }
        if outcome.close_received {
            self.first_close.get_or_insert(from);
        }
        if outcome.pong {
            self.ping_deadline = Deadline::NEVER;
        }
        if let Some((code, reason)) = outcome.violation {
            self.frames_violation(from, code, reason, env);
        }
    }

    /// Queues a frame the proxy originates toward `to`, at the next frame boundary.
    fn frames_inject(&mut self, to: Side, frame: Vec<u8>, stop: bool, env: &mut Env<'_>) {
        if self.flows[to.other().index()].shut {
            // Its write half is already shut (its peer's FIN was passed on): nothing more
            // can reach it.
            return;
        }
        let Stage::Frames(state) = &mut self.stage else {
            return;
        };
        if let Some(data) = state.inject(to, frame, stop) {
            self.queue_own(to, Chunk::own(data), env);
        }
    }

    fn frames_send_close(&mut self, to: Side, code: u16, reason: &str, env: &mut Env<'_>) {
        let mask = (self.random() as u32).to_ne_bytes();
        let frame = frames::close_frame(to, code, reason, mask);
        env.out.push(Output::Metric(Metric::CloseSent(code)));
        self.frames_inject(to, frame, true, env);
    }

    /// Ends a `frames` connection politely: Close (the route's code, 1001 by default) to both
    /// sides at a frame boundary, then waits for the close handshake up to the grace period.
    fn frames_graceful_close(&mut self, reason: CloseReason, env: &mut Env<'_>) {
        let Stage::Frames(state) = &mut self.stage else {
            return self.close(reason, env);
        };
        if state.graceful {
            return;
        }
        state.graceful = true;
        let Some(route) = self.route.clone() else {
            return self.close(reason, env);
        };
        self.graceful = Some((reason, env.now.saturating_add(route.frames.close_grace_ms)));
        self.ping_deadline = Deadline::NEVER;
        self.close_at = None;
        let (code, text) = (route.frames.close_code, route.frames.close_reason.as_str());
        self.frames_send_close(Side::Client, code, text, env);
        self.frames_send_close(Side::Origin, code, text, env);
    }

    /// A side broke the protocol or a limit: Close `code` to it, 1001 to the other side first.
    fn frames_violation(
        &mut self,
        violator: Side,
        code: u16,
        reason: CloseReason,
        env: &mut Env<'_>,
    ) {
        let Stage::Frames(state) = &mut self.stage else {
            return;
        };
        // Its stream is broken: no close reply is expected from it.
        state.close_received[violator.index()] = true;
        if state.graceful {
            return;
        }
        state.graceful = true;
        // The other side first: what it still sends (answers to the violator's valid frames
        // before the violation) reaches the violator before its Close, as it would directly.
        state.deferred_close = Some((violator, code));
        let grace = self
            .route
            .as_ref()
            .map_or(LINGER_MS, |r| r.frames.close_grace_ms);
        self.graceful = Some((reason, env.now.saturating_add(grace)));
        self.ping_deadline = Deadline::NEVER;
        self.close_at = None;
        self.frames_send_close(violator.other(), 1001, "going away", env);
    }

    /// The graceful close's progress: the Close owed to a violator once the other side is
    /// done; the end once both close handshakes are.
    fn frames_progress(&mut self, env: &mut Env<'_>) {
        let Some((reason, _)) = self.graceful else {
            return;
        };
        let eof = [self.flows[0].eof, self.flows[1].eof];
        let Stage::Frames(state) = &mut self.stage else {
            return;
        };
        if let Some((violator, code)) = state.deferred_close {
            let other = violator.other().index();
            if state.close_received[other] || eof[other] {
                state.deferred_close = None;
                self.frames_send_close(violator, code, "", env);
            }
        }
        let Stage::Frames(state) = &self.stage else {
            return;
        };
        if state.deferred_close.is_none() && state.handshake_done(eof) {
            self.finish_after_flush(reason, env);
        }
    }

    /// Closes once the client's queue (a Close frame, most likely) is written, with a bounded
    /// wait; at once if nothing is queued.
    fn finish_after_flush(&mut self, reason: CloseReason, env: &mut Env<'_>) {
        if self.queued[Side::Client.index()] == 0 {
            self.close(reason, env);
        } else {
            self.ending = Ending::Flushing {
                reason,
                until: env.now.saturating_add(env.cfg.linger_ms),
                then: AfterFlush::Close,
            };
        }
    }

    // ----- functions --------------------------------------------------------------------

    /// Runs `call` on the function with a context, then applies what it asked for.
    fn with_function(
        &mut self,
        env: &mut Env<'_>,
        call: impl FnOnce(&mut dyn FunctionSession, &mut FnCx<'_>),
    ) {
        let random = self.random();
        let Stage::Function(stage) = &mut self.stage else {
            return;
        };
        if stage.finished {
            return;
        }
        let mut actions = std::mem::take(&mut stage.actions);
        let route = self.route.clone();
        let mut cx = FnCx {
            now: env.now,
            conn: env.conn,
            queued_to_client: self.queued[Side::Client.index()],
            route: route.as_ref().map_or("", |r| r.name.as_str()),
            random,
            actions: &mut actions,
            bus: &mut *env.bus,
        };
        call(stage.function.as_mut(), &mut cx);
        for action in actions.drain(..) {
            self.apply_function(action, env);
        }
        if let Stage::Function(stage) = &mut self.stage {
            stage.actions = actions;
        }
        self.progress(env);
        self.function_waiting(env);
    }

    /// After a function ran: while it has not answered its client (an async answer), the
    /// client is watched (a client that leaves ends it) and the answer is due within the
    /// route's origin handshake time (504); once upgraded, early client bytes held while its
    /// peer opened go to it (unless it joined the peer, which takes them).
    fn function_waiting(&mut self, env: &mut Env<'_>) {
        if self.ending != Ending::Open {
            return;
        }
        let Stage::Function(stage) = &mut self.stage else {
            return;
        };
        if stage.clientless || stage.finished {
            return;
        }
        if !stage.upgraded {
            if !self.watching {
                self.watching = true;
                env.out.push(Output::WatchClient);
            }
            if !self.step_deadline.is_set() {
                let ms = self
                    .route
                    .as_ref()
                    .map_or(10_000, |r| r.timers.origin_handshake_ms);
                self.step_deadline = Deadline::at(env.now.saturating_add(ms));
            }
            return;
        }
        if stage.peer_open && !stage.held.is_empty() {
            let mut held = std::mem::take(&mut stage.held);
            self.with_function(env, |f, cx| f.on_client(&mut held, cx));
        }
    }

    fn apply_function(&mut self, action: FnAction, env: &mut Env<'_>) {
        if self.ending != Ending::Open {
            return;
        }
        match action {
            FnAction::Upgrade { .. } if self.is_clientless() => {}
            FnAction::Upgrade { protocol } => {
                let Some(accept) = self.client_accept() else {
                    return self.respond_error(426, CloseReason::NotWebSocket, env);
                };
                let Stage::Function(stage) = &mut self.stage else {
                    return;
                };
                if stage.upgraded {
                    return;
                }
                stage.upgraded = true;
                self.status = Some(101);
                self.step_deadline = Deadline::NEVER;
                if self.watching {
                    // The client is read from now on.
                    self.watching = false;
                    env.out.push(Output::UnwatchClient);
                }
                self.flows = [Flow::default(), Flow::default()];
                let answer = switching_protocols(&accept, protocol.as_deref());
                self.queue_own(Side::Client, Chunk::own(answer), env);
                env.out.push(Output::Metric(Metric::Upgraded));
                self.start_relay_timers(env);
                let Stage::Function(stage) = &mut self.stage else {
                    return;
                };
                let mut held = std::mem::take(&mut stage.held);
                if !held.is_empty() && !stage.peer_open {
                    self.with_function(env, |f, cx| f.on_client(&mut held, cx));
                } else if let Stage::Function(stage) = &mut self.stage {
                    stage.held = held;
                }
            }
            FnAction::Respond {
                status,
                response,
                reason,
            } => {
                if let Stage::Function(stage) = &mut self.stage {
                    stage.finished = true;
                }
                if self.is_clientless() {
                    return self.close(reason, env);
                }
                self.respond(status, Chunk::own(response), reason, env);
            }
            FnAction::SendClient(_) if self.is_clientless() => {}
            FnAction::SendClient(chunk) => self.queue_own(Side::Client, chunk, env),
            FnAction::SendPeer(chunk) => self.queue_own(Side::Origin, chunk, env),
            FnAction::OpenPeer { addr, head, accept } => {
                let Stage::Function(_) = self.stage else {
                    return;
                };
                let Stage::Function(function) =
                    std::mem::replace(&mut self.stage, Stage::Head(None))
                else {
                    return;
                };
                let route = self.route.clone();
                self.stage = Stage::Origin(Box::new(OriginStage {
                    head,
                    held: Vec::new(),
                    accept: Some(accept),
                    websocket: true,
                    head_request: false,
                    tried: 0,
                    attempts: 1,
                    connected: false,
                    for_function: Some(function),
                }));
                self.origin = Some(addr);
                let connect_ms = route.map_or(5_000, |r| r.timers.connect_ms);
                self.step_deadline = Deadline::at(env.now.saturating_add(connect_ms));
                env.out.push(Output::Connect(addr));
            }
            FnAction::Finish(reason) => {
                if let Stage::Function(stage) = &mut self.stage {
                    stage.finished = true;
                    stage.function.on_closed(&mut FnCx {
                        now: env.now,
                        conn: env.conn,
                        queued_to_client: self.queued[Side::Client.index()],
                        route: self.route.as_ref().map_or("", |r| r.name.as_str()),
                        random: 0,
                        actions: &mut Vec::new(),
                        bus: &mut *env.bus,
                    });
                }
                if self.is_clientless() {
                    // No client: its last bytes to the peer are written, then it closes.
                    if self.queued[Side::Origin.index()] == 0 {
                        self.close(reason, env);
                    } else {
                        self.ending = Ending::Flushing {
                            reason,
                            until: env.now.saturating_add(env.cfg.linger_ms),
                            then: AfterFlush::Close,
                        };
                    }
                } else if self.queued[Side::Client.index()] == 0 {
                    self.linger(reason, env);
                } else {
                    self.ending = Ending::Flushing {
                        reason,
                        until: env.now.saturating_add(env.cfg.linger_ms),
                        then: AfterFlush::Linger,
                    };
                }
            }
            FnAction::JoinPeer => self.join_peer(env),
        }
    }

    /// A function hands its client and its open peer to the route's relay.
    fn join_peer(&mut self, env: &mut Env<'_>) {
        let Stage::Function(stage) = &mut self.stage else {
            return;
        };
        if !stage.peer_open || !stage.upgraded {
            return;
        }
        stage.finished = true;
        let held = std::mem::take(&mut stage.held);
        let early = std::mem::take(&mut stage.peer_early);
        self.flows = [Flow::default(), Flow::default()];
        let Some(route) = self.route.clone() else {
            return;
        };
        if route.relay == RelayMode::Frames || route.function.is_some() {
            self.stage = Stage::Frames(Box::new(FramesState::new(&route.frames, env.now)));
            self.frames_replay(Side::Client, &held, env);
            // The peer's early bytes were not counted with an answer (its head was not
            // relayed): count them now.
            self.flows[Side::Origin.index()].count(early.len());
            self.frames_chunk(Side::Origin, None, &early, env);
        } else {
            self.stage = Stage::Stream(StreamRelay::default());
            self.queue_relayed(Side::Origin, held, env);
            self.queue_relayed(Side::Client, early, env);
        }
        self.progress(env);
    }

    fn function_progress(&mut self, env: &mut Env<'_>) {
        let Stage::Function(stage) = &self.stage else {
            return;
        };
        let queued = self.queued[Side::Client.index()];
        let wants = stage.upgraded
            && !stage.finished
            && stage.function.wants_client()
            && (queued as u64) < env.cfg.max_in_flight;
        let peer = stage.peer_open && !stage.finished;
        match (wants, self.reading[0]) {
            (true, Reading::Off) => self.read(Side::Client, env),
            (false, Reading::Stream) => {
                self.reading[0] = Reading::Stopping;
                env.out.push(Output::StopRead(Side::Client));
            }
            _ => {}
        }
        if peer && self.reading[1] == Reading::Off {
            self.read(Side::Origin, env);
        }
    }

    fn on_deliver(&mut self, delivery: &mut Delivery, env: &mut Env<'_>) {
        if self.ending != Ending::Open {
            return;
        }
        if let Stage::Function(stage) = &self.stage
            && stage.upgraded
        {
            self.with_function(env, |f, cx| f.on_delivery(delivery, cx));
        }
    }

    /// The client's accept value, if a function serves a WebSocket upgrade.
    fn client_accept(&self) -> Option<[u8; 28]> {
        match &self.stage {
            Stage::Function(stage) => stage.accept,
            _ => None,
        }
    }

    // ----- timers -----------------------------------------------------------------------

    fn on_timeout(&mut self, env: &mut Env<'_>) {
        let now = env.now;
        match self.ending {
            Ending::Flushing { reason, until, .. } | Ending::Lingering { reason, until } => {
                if now >= until {
                    self.close(reason, env);
                }
                return;
            }
            Ending::Closed(_) => return,
            Ending::Open => {}
        }
        if self.step_deadline.get().is_some_and(|d| now >= d) {
            self.step_deadline = Deadline::NEVER;
            return match &self.stage {
                Stage::Head(_) => {
                    if self.head_seen {
                        self.respond_error(408, CloseReason::HandshakeTimeout, env);
                    } else {
                        self.close(CloseReason::HandshakeTimeout, env);
                    }
                }
                Stage::Origin(o) if o.connected => {
                    self.origin_failed(CloseReason::OriginHandshakeTimeout, 504, env);
                }
                Stage::Function(_) => {
                    // The function has not answered the request in time.
                    if let Stage::Function(stage) = &mut self.stage {
                        stage.finished = true;
                    }
                    self.respond_error(504, CloseReason::FunctionTimeout, env);
                }
                _ => {
                    if let Some(route) = self.route.clone()
                        && matches!(&self.stage, Stage::Origin(o) if o.for_function.is_none())
                    {
                        let timeout = Outcome::Failed(Failure::ConnectTimeout);
                        self.report_origin(&route, timeout, env);
                    }
                    self.origin_failed(CloseReason::OriginConnectTimeout, 502, env)
                }
            };
        }
        if let Some((reason, grace_end)) = self.graceful {
            // Only the grace period counts now: the close handshake is in progress.
            if now >= grace_end {
                self.close(reason, env);
            }
            return;
        }
        if self.max_deadline.get().is_some_and(|d| now >= d) {
            return self.shutdown_gracefully(CloseReason::MaxConnectionTime, env);
        }
        if let Some((at, reason)) = self.close_at
            && now >= at
        {
            self.close_at = None;
            return self.shutdown_gracefully(reason, env);
        }
        if self.ping_deadline.get().is_some_and(|d| now >= d) {
            return self.close(CloseReason::KeepaliveTimeout, env);
        }
        let Some(route) = self.route.clone() else {
            return;
        };
        let relaying = matches!(
            self.stage,
            Stage::Stream(_) | Stage::Frames(_) | Stage::Function(_)
        );
        if relaying
            && !self.is_clientless()
            && now >= self.last_activity.saturating_add(route.timers.idle_ms)
        {
            if let Stage::Function(_) = self.stage {
                return self.with_function(env, |f, cx| {
                    f.on_shutdown(1001, CloseReason::IdleTimeout, cx);
                });
            }
            return self.close(CloseReason::IdleTimeout, env);
        }
        if let (Stage::Frames(state), Some(ms)) = (&mut self.stage, route.frames.keepalive_ms)
            && !self.ping_deadline.is_set()
            && now >= self.last_activity.saturating_add(ms)
        {
            self.ping_deadline =
                Deadline::at(now.saturating_add(route.frames.keepalive_timeout_ms));
            let frame = state.ping_frame();
            self.frames_inject(Side::Client, frame, false, env);
        }
    }

    /// Ends it the politest way the stage allows: Close frames (frames relay, functions), or
    /// a close.
    fn shutdown_gracefully(&mut self, reason: CloseReason, env: &mut Env<'_>) {
        match &self.stage {
            Stage::Frames(_) if self.status == Some(101) => self.frames_graceful_close(reason, env),
            Stage::Function(f) if f.upgraded || f.clientless => {
                self.with_function(env, |f, cx| f.on_shutdown(1001, reason, cx));
            }
            _ => self.close(reason, env),
        }
    }

    // ----- endings ----------------------------------------------------------------------

    /// Answers `status` with a canned response, then closes with a lingering close.
    fn respond_error(&mut self, status: u16, reason: CloseReason, env: &mut Env<'_>) {
        let data = error_response(status);
        self.respond(status, Chunk::Static { data, off: 0 }, reason, env);
    }

    /// Sends `answer` (a complete response), tears the origin down, then closes with a
    /// lingering close so the client can read it.
    fn respond(&mut self, status: u16, answer: Chunk, reason: CloseReason, env: &mut Env<'_>) {
        if self.ending != Ending::Open {
            return;
        }
        self.status = Some(status);
        self.step_deadline = Deadline::NEVER;
        if self.origin.is_some() {
            env.out.push(Output::Abort(Side::Origin));
        }
        if self.reading[Side::Client.index()] == Reading::Stream {
            self.reading[Side::Client.index()] = Reading::Stopping;
            env.out.push(Output::StopRead(Side::Client));
        }
        self.queue_own(Side::Client, answer, env);
        self.ending = Ending::Flushing {
            reason,
            until: env.now.saturating_add(env.cfg.linger_ms),
            then: AfterFlush::Linger,
        };
    }

    /// Shuts the client's write side and drains what it still sends until its EOF or the
    /// linger deadline, so closing never resets an answer it has not read yet. The origin
    /// side is torn down.
    fn linger(&mut self, reason: CloseReason, env: &mut Env<'_>) {
        if self.is_clientless() {
            return self.close(reason, env);
        }
        if self.origin.is_some() {
            env.out.push(Output::Abort(Side::Origin));
        }
        self.ending = Ending::Lingering {
            reason,
            until: env.now.saturating_add(env.cfg.linger_ms),
        };
        env.out.push(Output::ShutdownWrite(Side::Client));
        match self.reading[Side::Client.index()] {
            // A head read still pending re-arms this when it completes.
            Reading::Head => {}
            Reading::Stopping => {}
            Reading::Stream => {}
            Reading::Off => self.read(Side::Client, env),
        }
    }

    /// Ends the connection: the last output.
    fn close(&mut self, reason: CloseReason, env: &mut Env<'_>) {
        if let Ending::Closed(_) = self.ending {
            return;
        }
        if let Stage::Function(stage) = &mut self.stage {
            let mut actions = Vec::new();
            stage.function.on_closed(&mut FnCx {
                now: env.now,
                conn: env.conn,
                queued_to_client: self.queued[Side::Client.index()],
                route: self.route.as_ref().map_or("", |r| r.name.as_str()),
                random: 0,
                actions: &mut actions,
                bus: &mut *env.bus,
            });
        }
        if let Some(route) = self.route.clone() {
            self.hold_origin(&route, None);
        }
        self.ending = Ending::Closed(reason);
        self.step_deadline = Deadline::NEVER;
        env.out.push(Output::Close(reason));
    }

    /// Checks the session's own invariants; panics when one is broken (debug builds run it
    /// after every event, the fuzz target after every event in any build).
    pub fn check_invariants(&self) {
        for side in [Side::Client, Side::Origin] {
            let flow = &self.flows[side.index()];
            assert!(
                flow.in_flight <= flow.bytes,
                "{side:?}: more in flight ({}) than ever relayed ({})",
                flow.in_flight,
                flow.bytes
            );
        }
        if let Stage::Head(Some(_)) = self.stage {
            panic!("a head buffer is kept only while no head read holds it");
        }
        if let Ending::Closed(_) = self.ending {
            assert!(
                self.poll_timeout().is_none(),
                "a closed session has no timer"
            );
        }
    }
}
