//! Functions: WebSockets the edge answers itself instead of relaying them to an origin.
//!
//! This is the seam beside the origin relay. A route names a [`FunctionSpec`]; when a request
//! for it is accepted, the worker's [`FunctionHost`] opens a [`FunctionSession`] for the
//! connection, and the session (`crate::session`) drives it: client bytes in, frames and bus
//! operations out, through a [`FnCx`]. The built-in functions are implementations of it
//! ([`echo`], [`broadcast`], [`bridge`]); a scripted runtime is one more, in the dataplane
//! (it needs an engine, which this pure crate does not have).
//!
//! A function may own a *peer*: an outbound WebSocket the edge opens itself (`bridge` to its
//! target, a script's `new WebSocket(url)`). The session connects it, sends the edge's
//! handshake and checks the 101; the peer's bytes then reach [`FunctionSession::on_peer`]. A
//! session may have no client at all (a function running a client of its own): the host asks
//! the worker for one with [`FunctionHost::poll_outbound`] and the worker creates it with
//! `Session::outbound`.
//!
//! A host whose functions run code outside their connections' events (a scripted runtime:
//! timers, promises, one connection's handler sending on another's socket) drives that code
//! through three more hooks, all optional (the built-ins use none):
//! - [`FunctionHost::poll_timeout`] / [`FunctionHost::on_timeout`]: timers that belong to no
//!   connection, on the worker's clock;
//! - [`FunctionHost::poll_wake`]: connections whose function has work to hand its session
//!   now; the worker feeds each `Input::Wake`, which calls [`FunctionSession::on_wake`];
//! - [`FunctionHost::poll_outbound`]: client-less sessions to create.
//!
//! After every event it dispatched (a completion, a delivery, a host timer) the worker drains
//! `poll_outbound` and `poll_wake` until both say `None`, then re-arms its timer for
//! `poll_timeout` (a tick at or before now means: call `on_timeout` before waiting again).
//!
//! Channels go through a [`Bus`] (local subscribers, the other workers, and an egress port a
//! broker bridge can attach to): subscribing is immediate, delivery is deferred to the worker
//! loop so no session is re-entered while it runs.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use crate::channels::{HubError, HubLimits, Published};
use crate::chunk::Chunk;
use crate::handshake::Request;
use crate::recovery::{Answer, Position, Since, positioned_frame};
use crate::session::CloseReason;
use crate::wheel::Tick;

pub mod bridge;
pub mod broadcast;
pub mod echo;

/// Which function answers a route, with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FunctionSpec {
    /// Every message back to its sender.
    Echo,
    /// Channels: clients subscribe and publish; messages fan out to every subscriber.
    Broadcast(BroadcastSpec),
    /// The edge terminates the client's WebSocket and opens its own to a target.
    Bridge(BridgeSpec),
    /// A JavaScript module answers (the dataplane's script host; `open_builtin` refuses it).
    Script(ScriptSpec),
}

impl FunctionSpec {
    /// The configuration spelling of its kind.
    pub fn kind(&self) -> &'static str {
        match self {
            FunctionSpec::Echo => "echo",
            FunctionSpec::Broadcast(_) => "broadcast",
            FunctionSpec::Bridge(_) => "bridge",
            FunctionSpec::Script(_) => "js",
        }
    }
}

/// Options of a `broadcast` route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BroadcastSpec {
    /// Whether clients may publish (else only the publish API does).
    pub publish: bool,
    /// Whether a publisher receives its own messages.
    pub echo_to_sender: bool,
    pub limits: HubLimits,
    /// Bytes queued to one client before it counts as a slow consumer and is closed (1013).
    pub max_send_queue: usize,
}

/// Options of a `js` route: the module and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptSpec {
    /// The module's entry file (its sibling imports are read from its directory).
    pub path: std::path::PathBuf,
    /// CPU time one event may take before the script is interrupted, in milliseconds.
    pub cpu_budget_ms: u64,
    /// Bytes the function's runtime may allocate on one worker.
    pub memory_limit: usize,
    /// Bytes queued to one client before it counts as a slow consumer and is closed (1013).
    pub max_send_queue: usize,
}

/// Where a `bridge` route connects: `ws://IP:port/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSpec {
    pub addr: SocketAddr,
    /// The Host header sent (`IP:port` as written).
    pub host: String,
    /// Path and query sent in the request line.
    pub path: String,
}

/// The public id of a connection, as the bus keys subscribers (it names the worker too).
pub type ConnKey = u64;

/// A channel message as it travels between workers and hosts; each worker frames it once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Text(String),
    Binary(Vec<u8>),
    /// The JSON text of a v1 publish's `data`.
    Json(String),
}

impl Payload {
    /// The message as the channel protocol sees it.
    pub fn published(&self) -> Published<'_> {
        match self {
            Payload::Text(t) => Published::Text(t),
            Payload::Binary(b) => Published::Binary(b),
            Payload::Json(j) => Published::Json(j),
        }
    }

    /// An HTTP or CLI publish body: text if it is UTF-8.
    pub fn from_body(body: Vec<u8>) -> Payload {
        match String::from_utf8(body) {
            Ok(text) => Payload::Text(text),
            Err(e) => Payload::Binary(e.into_bytes()),
        }
    }

    /// An owned copy of a published message.
    pub fn from_published(msg: Published<'_>) -> Payload {
        match msg {
            Published::Text(t) => Payload::Text(t.to_owned()),
            Published::Binary(b) => Payload::Binary(b.to_vec()),
            Published::Json(j) => Payload::Json(j.to_owned()),
        }
    }
}

/// A channel message being delivered to this worker's subscribers: framed at most once per
/// format, the frames shared by every subscriber's send queue.
#[derive(Debug)]
pub struct Delivery {
    pub channel: Arc<str>,
    pub payload: Arc<Payload>,
    raw: Option<Rc<[u8]>>,
    v1: Option<Rc<[u8]>>,
    /// A `gap` notice, not a message: messages of the channel may have been lost (the
    /// broker was unreachable, or this worker's queue overflowed); `payload` is empty.
    gap: bool,
    /// The message's place in its channel's history (recoverable channels only).
    position: Option<Position>,
    /// Not a message: the answer to this one subscriber's recovery ([`Bus::recover`]).
    answer: Option<Arc<Answer>>,
}

impl Delivery {
    pub fn new(channel: Arc<str>, payload: Arc<Payload>) -> Self {
        Delivery {
            channel,
            payload,
            raw: None,
            v1: None,
            gap: false,
            position: None,
            answer: None,
        }
    }

    /// A message with its place in its channel's history (carried in the v1 envelope).
    pub fn positioned(
        channel: Arc<str>,
        payload: Arc<Payload>,
        position: Option<Position>,
    ) -> Self {
        Delivery {
            position,
            ..Delivery::new(channel, payload)
        }
    }

    /// The answer to one subscriber's recovery of `channel` (see [`crate::recovery`]).
    pub fn answer(channel: Arc<str>, answer: Arc<Answer>) -> Self {
        Delivery {
            answer: Some(answer),
            ..Delivery::new(channel, Arc::new(Payload::Text(String::new())))
        }
    }

    /// The message's position, if its channel keeps a history.
    pub fn position(&self) -> Option<&Position> {
        self.position.as_ref()
    }

    /// The recovery answer this delivery carries, if it is one (not a message).
    pub fn recovery(&self) -> Option<&Arc<Answer>> {
        self.answer.as_ref()
    }

    /// A `gap` notice on `channel` (see [`Delivery::is_gap`]).
    pub fn gap(channel: Arc<str>) -> Self {
        Delivery {
            gap: true,
            ..Delivery::new(channel, Arc::new(Payload::Text(String::new())))
        }
    }

    /// Whether this is a `gap` notice: `wsedge.v1` subscribers get
    /// `{"type":"gap","channel":"c"}` ([`Delivery::v1_frame`]) so they know to resync; raw
    /// subscribers get nothing (their protocol has no notices).
    pub fn is_gap(&self) -> bool {
        self.gap
    }

    /// The message as a raw WebSocket frame (text or binary), framed on first use.
    pub fn raw_frame(&mut self) -> Rc<[u8]> {
        let payload = &self.payload;
        Rc::clone(
            self.raw
                .get_or_insert_with(|| Rc::from(crate::channels::raw_frame(payload.published()))),
        )
    }

    /// The message in a `wsedge.v1` envelope, framed on first use.
    pub fn v1_frame(&mut self) -> Rc<[u8]> {
        let (channel, payload, gap) = (&self.channel, &self.payload, self.gap);
        let position = self.position.as_ref();
        Rc::clone(self.v1.get_or_insert_with(|| {
            if gap {
                Rc::from(crate::channels::gap_frame(channel))
            } else {
                Rc::from(positioned_frame(channel, payload.published(), position))
            }
        }))
    }
}

/// Channel operations a function may use: the worker's bus.
pub trait Bus {
    /// Subscribes `conn` to `channel` of broadcast route `route`: the channel's subscriber
    /// count on this worker, or why not.
    fn subscribe(
        &mut self,
        route: &str,
        channel: &str,
        conn: ConnKey,
        limits: HubLimits,
    ) -> Result<usize, HubError>;
    /// Whether `conn` was subscribed.
    fn unsubscribe(&mut self, route: &str, channel: &str, conn: ConnKey) -> bool;
    /// Leaves every channel of `route` (the connection is ending).
    fn leave_all(&mut self, route: &str, conn: ConnKey);
    /// Publishes on `channel` of `route`: delivered to every subscriber (but `skip`) on every
    /// worker, after the current event (never re-entering the publisher).
    fn publish(&mut self, route: &str, channel: &str, payload: Payload, skip: Option<ConnKey>);
    /// Whether `channel` keeps a history its subscribers can recover from (a recoverable
    /// namespace, with a broker that keeps history).
    fn recoverable(&self, _channel: &str) -> bool {
        false
    }
    /// Reads `channel`'s history for `conn` (subscribed to it): the messages after `since`,
    /// or only the current position. The answer reaches that one connection later, as a
    /// [`Delivery::answer`], always (a [`crate::recovery::Failure::Unavailable`] when it cannot be read).
    fn recover(&mut self, _route: &str, _channel: &str, _conn: ConnKey, _since: Option<Since>) {}
}

/// A bus with no channels (tests, and functions that use none).
#[derive(Debug, Default)]
pub struct NoBus;

impl Bus for NoBus {
    fn subscribe(&mut self, _: &str, _: &str, _: ConnKey, _: HubLimits) -> Result<usize, HubError> {
        Err(HubError::TooManyChannels)
    }
    fn unsubscribe(&mut self, _: &str, _: &str, _: ConnKey) -> bool {
        false
    }
    fn leave_all(&mut self, _: &str, _: ConnKey) {}
    fn publish(&mut self, _: &str, _: &str, _: Payload, _: Option<ConnKey>) {}
}

/// What a function asks of its session.
#[derive(Debug)]
pub enum FnAction {
    /// Answer the client's upgrade with the edge's 101 (with this subprotocol): its WebSocket
    /// is open from now on. Every function does this, or [`FnAction::Respond`], once.
    Upgrade { protocol: Option<String> },
    /// Answer the request without upgrading (a complete HTTP response), then close; logged
    /// with `reason`.
    Respond {
        status: u16,
        response: Vec<u8>,
        reason: CloseReason,
    },
    /// Bytes (whole frames) to the client.
    SendClient(Chunk),
    /// Bytes (whole frames) to the peer.
    SendPeer(Chunk),
    /// Open the peer: connect to `addr` (over TLS when `tls` names the server to verify),
    /// send `head` (a WebSocket client handshake) and expect a 101 carrying `accept`.
    OpenPeer {
        addr: SocketAddr,
        head: Vec<u8>,
        accept: [u8; 28],
        /// `Some(name)`: a `wss://` peer, verified against `name` (a DNS name or an IP
        /// address); `None`: plain TCP.
        tls: Option<String>,
    },
    /// The function is done (its close handshake ended, or it gives up): what was queued to
    /// the client is written (bounded wait), then the connection closes.
    Finish(CloseReason),
    /// Join the client and the (open) peer with the route's relay and leave the data path:
    /// a function that only decides (authenticates, picks a target, answers the handshake)
    /// then gets the relay's speed and its graceful closes.
    JoinPeer,
}

/// A function's view of its connection while one of its methods runs.
#[derive(Debug)]
pub struct FnCx<'a> {
    pub now: Tick,
    /// This connection's public id (bus subscriptions are keyed by it).
    pub conn: ConnKey,
    /// Bytes queued to the client and not yet written (slow consumers, backpressure).
    pub queued_to_client: usize,
    /// The route's name (channels are per route).
    pub route: &'a str,
    /// A fresh random value (keys, jitter); not for cryptography.
    pub random: u64,
    pub actions: &'a mut Vec<FnAction>,
    pub bus: &'a mut dyn Bus,
}

impl FnCx<'_> {
    pub fn send_client(&mut self, chunk: Chunk) {
        self.actions.push(FnAction::SendClient(chunk));
    }

    pub fn send_peer(&mut self, chunk: Chunk) {
        self.actions.push(FnAction::SendPeer(chunk));
    }

    pub fn finish(&mut self, reason: CloseReason) {
        self.actions.push(FnAction::Finish(reason));
    }
}

impl Debug for dyn Bus + '_ {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bus")
    }
}

/// What happened to a function's peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEvent {
    /// The peer answered 101: its WebSocket is open.
    Open,
    /// The peer could not be reached, did not answer in time, or refused the upgrade: why.
    Failed { reason: CloseReason },
    /// The peer closed its side (EOF) or reset.
    Closed { reset: bool },
}

/// One connection's function: the per-connection half of a route's function.
///
/// Every method gets a [`FnCx`] to act through. The session calls [`FunctionSession::on_start`]
/// once; the function answers with [`FnAction::Upgrade`] or [`FnAction::Respond`] (at once, or
/// after its peer answered). After the upgrade, client bytes arrive in order.
pub trait FunctionSession: Debug {
    /// The request was given to this function; `tail` = what the client sent after its head.
    fn on_start(&mut self, cx: &mut FnCx<'_>);
    /// The client's next bytes (masked frames), after the upgrade; unmask in place if needed.
    fn on_client(&mut self, data: &mut [u8], cx: &mut FnCx<'_>);
    /// The client closed its side (EOF) or reset: the function lets go of what it holds.
    fn on_client_gone(&mut self, cx: &mut FnCx<'_>);
    /// Its peer's next bytes (server frames), after the peer's 101.
    fn on_peer(&mut self, _data: &mut [u8], _cx: &mut FnCx<'_>) {}
    /// Its peer opened, failed or closed.
    fn on_peer_event(&mut self, _event: PeerEvent, _cx: &mut FnCx<'_>) {}
    /// A channel message for this client.
    fn on_delivery(&mut self, _delivery: &mut Delivery, _cx: &mut FnCx<'_>) {}
    /// The edge ends the connection (drain, maximum connection time, idle time, an
    /// operator): send the client Close `code` and finish.
    fn on_shutdown(&mut self, code: u16, reason: CloseReason, cx: &mut FnCx<'_>);
    /// The connection is closing, whatever the reason: release what it holds (channels).
    fn on_closed(&mut self, _cx: &mut FnCx<'_>) {}
    /// Whether more client bytes are wanted now (backpressure is also applied by the session
    /// on the bytes queued to the client).
    fn wants_client(&self) -> bool {
        true
    }
    /// Whether more of its peer's bytes are wanted now: a function that has the peer's bytes
    /// still waiting (it hands a socket's messages over a turn at a time) says no, and asks
    /// for a wake ([`FunctionHost::poll_wake`]) to go on; reads resume once it says yes.
    fn wants_peer(&self) -> bool {
        true
    }
    /// The host said this connection has work outside its own events (`Input::Wake`, after
    /// [`FunctionHost::poll_wake`] named it): act on it now. Called only while the function
    /// is the session's stage (not while its peer connects: the peer's event comes next).
    fn on_wake(&mut self, _cx: &mut FnCx<'_>) {}
}

/// A request for a function route, as the host sees it when opening a session.
#[derive(Debug)]
pub struct FunctionRequest<'a> {
    pub route: &'a str,
    pub path_prefix: &'a str,
    pub spec: &'a FunctionSpec,
    pub request: &'a Request<'a>,
    /// The client's `Sec-WebSocket-Accept` value (its key was valid), `None` if the request
    /// is not a WebSocket upgrade.
    pub client_accept: Option<[u8; 28]>,
    pub peer: std::net::IpAddr,
    pub conn: ConnKey,
    /// Largest message the client may send (the route's `client_max_message`; 1009 over it).
    pub max_message: u64,
}

/// Why a function refused a request before any upgrade: answered with `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub reason: CloseReason,
}

/// A client-less session a host wants the worker to create (a script's `new WebSocket(url)`
/// outside any connection): `Session::outbound` with the route named `route` and this
/// function, which opens its peer from [`FunctionSession::on_start`].
#[derive(Debug)]
pub struct Outbound {
    /// The name of the function's route (its timers, and its channels).
    pub route: String,
    pub function: Box<dyn FunctionSession>,
}

/// Opens function sessions for a worker's function routes (the built-in ones, and whatever
/// the dataplane adds: scripts). One hook in the session's head decision, and the optional
/// hooks for code that runs outside connection events (see the module docs).
pub trait FunctionHost {
    fn open(
        &mut self,
        request: &FunctionRequest<'_>,
        bus: &mut dyn Bus,
    ) -> Result<Box<dyn FunctionSession>, Refused>;

    /// The earliest tick at which [`FunctionHost::on_timeout`] has work (timers that belong to
    /// no connection, jobs left over from a capped drain), if any. A tick at or before now
    /// means: call `on_timeout` before the loop waits again. May change after any call into
    /// the host or one of its sessions.
    fn poll_timeout(&self) -> Option<Tick> {
        None
    }

    /// Runs what is due at `now` (host timers); `bus` for what it publishes. Afterwards drain
    /// [`FunctionHost::poll_wake`] and [`FunctionHost::poll_outbound`].
    fn on_timeout(&mut self, _now: Tick, _bus: &mut dyn Bus) {}

    /// The next connection whose function has work outside its own events: feed its session
    /// `Input::Wake`. A key whose connection is gone is ignored. Drain it until `None` after
    /// every event dispatched to a session or the host.
    fn poll_wake(&mut self) -> Option<ConnKey> {
        None
    }

    /// The next client-less session the host wants: create it with `Session::outbound` (it
    /// gets its own connection key, counts as a connection, and is drained, killed and logged
    /// like one; it has no client socket).
    fn poll_outbound(&mut self) -> Option<Outbound> {
        None
    }
}

/// The built-in functions, opened from their spec.
#[derive(Debug, Default)]
pub struct Builtins;

impl FunctionHost for Builtins {
    fn open(
        &mut self,
        request: &FunctionRequest<'_>,
        bus: &mut dyn Bus,
    ) -> Result<Box<dyn FunctionSession>, Refused> {
        open_builtin(request, bus)
    }
}

/// Opens the built-in function of `request.spec`.
pub fn open_builtin(
    request: &FunctionRequest<'_>,
    bus: &mut dyn Bus,
) -> Result<Box<dyn FunctionSession>, Refused> {
    let not_websocket = Refused {
        status: 426,
        reason: CloseReason::NotWebSocket,
    };
    let accept = request.client_accept.ok_or(not_websocket)?;
    Ok(match request.spec {
        FunctionSpec::Echo => Box::new(echo::Echo::new(request.max_message)),
        FunctionSpec::Broadcast(spec) => Box::new(broadcast::Broadcast::open(spec, request, bus)?),
        FunctionSpec::Bridge(spec) => Box::new(bridge::Bridge::new(spec, accept, request)),
        // Scripts need the dataplane's engine: a host without one cannot serve them.
        FunctionSpec::Script(_) => {
            return Err(Refused {
                status: 503,
                reason: CloseReason::FunctionError,
            });
        }
    })
}
