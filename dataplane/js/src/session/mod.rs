//! [`JsSession`]: one connection of a JavaScript function, as the session drives it. It
//! speaks WebSocket on both of the connection's sides (the client's, after the upgrade, and
//! the peer's, for `new WebSocket`), turns their messages into socket events for the script,
//! and turns what the script asked for (its runtime's outbox for this connection: the
//! upgrade or an answer, frames, closes, a peer to open, channel operations) into
//! [`FnAction`](wsedge_proto::function::FnAction)s. Channel deliveries go to the client
//! without entering JavaScript; a `gap` notice becomes the socket's `gap` event.
//!
//! Here: the connection's state and the seam's entry points. `reads`: the sockets' messages
//! into socket events (one loop for both sockets, capped per turn); `outbox`: the script's
//! requests into actions, and the ends the session makes itself.

mod outbox;
mod reads;

use std::cell::RefCell;
use std::rc::Rc;

use wsedge_proto::chunk::Chunk;
use wsedge_proto::frame::Role;
use wsedge_proto::function::{Delivery, FnCx, FunctionSession, PeerEvent};
use wsedge_proto::session::{CloseReason, Side};

use crate::endpoint::Endpoint;
use crate::engine::{Engine, SocketEvent};
use crate::state::{ConnId, Peer};
use reads::Waiting;

/// Messages of one socket handed to the script per event of a connection. The rest of a read
/// waits, with that socket's reads stopped ([`FunctionSession::wants_client`],
/// [`FunctionSession::wants_peer`]), for the next turn of the worker's loop: a client or a
/// peer that floods cannot hold the worker (its other connections, its accepts) for longer
/// than this many handlers take.
///
/// [`FunctionSession::wants_client`]: wsedge_proto::function::FunctionSession::wants_client
/// [`FunctionSession::wants_peer`]: wsedge_proto::function::FunctionSession::wants_peer
pub(crate) const MESSAGES_PER_TURN: usize = 128;

/// The request a connection started with, until its `fetch` is called.
#[derive(Debug)]
pub(crate) struct StartInfo {
    pub(crate) method: String,
    pub(crate) url: String,
    /// Header names and values, flat.
    pub(crate) headers: Vec<String>,
}

/// One connection of a JavaScript function; see the module docs.
#[derive(Debug)]
pub struct JsSession {
    engine: Rc<RefCell<Engine>>,
    id: ConnId,
    start: Option<Box<StartInfo>>,
    clientless: bool,
    max_message: u64,
    /// The client's side, once upgraded.
    server: Option<Endpoint>,
    /// The peer's side, once it opened.
    peer: Option<Endpoint>,
    /// The script was told its server socket closed.
    server_told: bool,
    /// The script was told its peer socket closed.
    peer_told: bool,
    /// The request was a WebSocket upgrade (an answer without one is `not_upgraded`).
    websocket: bool,
    finished: bool,
    /// Frames to the client (0) and the peer (1) not yet handed to the session.
    out: [Vec<u8>; 2],
    /// Handling a read: `out` is emitted at its end, not after each message.
    batch: bool,
    /// Bytes read from the client (0) and the peer (1) and not handed to the script yet
    /// (beyond [`MESSAGES_PER_TURN`]).
    waiting: [Waiting; 2],
}

impl JsSession {
    pub(crate) fn inbound(
        engine: Rc<RefCell<Engine>>,
        id: ConnId,
        start: StartInfo,
        websocket: bool,
        max_message: u64,
    ) -> JsSession {
        JsSession {
            engine,
            id,
            start: Some(Box::new(start)),
            clientless: false,
            max_message,
            server: None,
            peer: None,
            server_told: false,
            peer_told: false,
            websocket,
            finished: false,
            out: Default::default(),
            batch: false,
            waiting: Default::default(),
        }
    }

    pub(crate) fn outbound(engine: Rc<RefCell<Engine>>, id: ConnId) -> JsSession {
        JsSession {
            engine,
            id,
            start: None,
            clientless: true,
            max_message: 16 << 20,
            server: None,
            peer: None,
            server_told: true,
            peer_told: false,
            websocket: false,
            finished: false,
            out: Default::default(),
            batch: false,
            waiting: Default::default(),
        }
    }

    fn mask(&self) -> u32 {
        self.engine.borrow().state.borrow_mut().random() as u32
    }

    /// The socket on `side`: the client's (the script's server socket) or the peer's.
    fn endpoint(&mut self, side: Side) -> Option<&mut Endpoint> {
        match side {
            Side::Client => self.server.as_mut(),
            Side::Origin => self.peer.as_mut(),
        }
    }

    /// Tells the script about its socket on `side` (the runtime may be gone: then nothing).
    fn tell(&mut self, side: Side, now: u64, event: SocketEvent) {
        let mut engine = self.engine.borrow_mut();
        if !engine.dead {
            engine.event(self.id, side == Side::Origin, now, event);
        }
    }

    /// Tells the script its socket on `side` closed, once: the server socket if there is a
    /// client, the peer's if the script asked for one.
    fn tell_closed(&mut self, side: Side, code: u16, reason: String, clean: bool, now: u64) {
        let exists = match side {
            Side::Client => !self.clientless,
            Side::Origin => self.peer_asked(),
        };
        let told = match side {
            Side::Client => &mut self.server_told,
            Side::Origin => &mut self.peer_told,
        };
        if *told || !exists {
            return;
        }
        *told = true;
        let event = SocketEvent::Close {
            code,
            reason,
            clean,
        };
        self.tell(side, now, event);
    }

    fn peer_asked(&self) -> bool {
        let engine = self.engine.borrow();
        let st = engine.state.borrow();
        st.conns.get(&self.id).is_some_and(|c| c.peer != Peer::None)
    }

    /// Asks for a wake at the next turn of the worker's loop.
    pub(super) fn defer(&self) {
        let engine = self.engine.borrow();
        engine.state.borrow_mut().deferred.push(self.id);
    }

    fn touch(&self, now: u64) {
        let engine = self.engine.borrow();
        let mut st = engine.state.borrow_mut();
        if let Some(conn) = st.conns.get_mut(&self.id) {
            conn.last_active = now;
        }
    }
}

impl FunctionSession for JsSession {
    fn on_start(&mut self, cx: &mut FnCx<'_>) {
        {
            let engine = self.engine.borrow();
            let mut st = engine.state.borrow_mut();
            st.mix(cx.random);
            if let Some(conn) = st.conns.get_mut(&self.id) {
                conn.key = Some(cx.conn);
            }
        }
        if let Some(start) = self.start.take() {
            let mut engine = self.engine.borrow_mut();
            if !engine.dead {
                engine.start(self.id, cx.now, &start.method, &start.url, &start.headers);
            }
        }
        self.drain(cx);
    }

    fn on_client(&mut self, data: &mut [u8], cx: &mut FnCx<'_>) {
        if self.server.is_some() && !self.finished {
            self.on_bytes(Side::Client, data, cx);
        }
    }

    fn wants_client(&self) -> bool {
        // Reads stop while bytes wait for the next turn (the client is pushed back by TCP).
        self.waiting[Side::Client.index()].is_empty()
    }

    fn wants_peer(&self) -> bool {
        self.waiting[Side::Origin.index()].is_empty()
    }

    fn on_client_gone(&mut self, cx: &mut FnCx<'_>) {
        // What was read before the end reaches the script first (all of it: no more comes);
        // the peer's waiting messages too, before its socket closes with the connection.
        self.read_all_waiting(Side::Client, cx);
        self.tell_closed(Side::Client, 1006, String::new(), false, cx.now);
        self.read_all_waiting(Side::Origin, cx);
        self.drain(cx);
        self.finish(CloseReason::ClientClosed, cx);
    }

    fn on_peer(&mut self, data: &mut [u8], cx: &mut FnCx<'_>) {
        if self.peer.is_some() && !self.finished {
            self.on_bytes(Side::Origin, data, cx);
        }
    }

    fn on_peer_event(&mut self, event: PeerEvent, cx: &mut FnCx<'_>) {
        match event {
            PeerEvent::Open => {
                self.peer = Some(Endpoint::new(Role::Client, self.max_message));
                self.tell(Side::Origin, cx.now, SocketEvent::Open);
            }
            PeerEvent::Failed { reason } => {
                self.tell(
                    Side::Origin,
                    cx.now,
                    SocketEvent::Error(format!("the connection failed: {}", reason.as_str())),
                );
                self.tell_closed(Side::Origin, 1006, String::new(), false, cx.now);
                if self.clientless {
                    self.drain(cx);
                    return self.finish(reason, cx);
                }
            }
            PeerEvent::Closed { reset } => {
                // What the peer sent before its end reaches the script first.
                self.read_all_waiting(Side::Origin, cx);
                let done = self.peer.as_ref().is_some_and(Endpoint::is_closed);
                if let Some(peer) = self.peer.as_mut() {
                    peer.abandon();
                }
                if !done {
                    self.tell_closed(Side::Origin, 1006, String::new(), false, cx.now);
                }
                if self.clientless {
                    self.drain(cx);
                    let reason = if reset {
                        CloseReason::OriginReset
                    } else {
                        CloseReason::OriginClosed
                    };
                    return self.finish(reason, cx);
                }
            }
        }
        self.drain(cx);
        if !self.waiting[Side::Client.index()].is_empty() && !self.finished {
            // A wake while the peer connected did not reach this session (its stage was the
            // peer's): the client's waiting messages go on at the next turn.
            self.defer();
        }
    }

    fn on_delivery(&mut self, delivery: &mut Delivery, cx: &mut FnCx<'_>) {
        if self.finished || !self.server.as_ref().is_some_and(Endpoint::is_open) {
            return;
        }
        if delivery.is_gap() {
            return self.on_gap(&delivery.channel, cx);
        }
        self.flush(Side::Client);
        let frame = delivery.raw_frame();
        let limit = self.engine.borrow().limits().max_send_queue;
        if cx.queued_to_client + frame.len() > limit {
            return self.end(1013, false, CloseReason::SlowConsumer, cx);
        }
        self.send(
            Side::Client,
            Chunk::Shared {
                data: frame,
                off: 0,
            },
            cx,
        );
    }

    fn on_shutdown(&mut self, code: u16, reason: CloseReason, cx: &mut FnCx<'_>) {
        self.end(code, true, reason, cx);
    }

    fn on_closed(&mut self, cx: &mut FnCx<'_>) {
        if !self.finished {
            // The edge closes it (a reset, an abort): what was read reaches the script before
            // the close, as in browsers (what the script sends now goes nowhere).
            self.read_all_waiting(Side::Client, cx);
            self.read_all_waiting(Side::Origin, cx);
        }
        self.tell_closed(Side::Client, 1006, String::new(), false, cx.now);
        if self.peer.as_ref().is_some_and(|p| !p.is_closed()) || self.peer.is_none() {
            self.tell_closed(Side::Origin, 1006, String::new(), false, cx.now);
        }
        self.finished = true;
        let engine = self.engine.borrow();
        let mut st = engine.state.borrow_mut();
        st.remove_conn(self.id);
        st.apply_bus(cx.route, cx.bus);
    }

    fn on_wake(&mut self, cx: &mut FnCx<'_>) {
        self.drain(cx);
        self.read_waiting(Side::Client, cx);
        self.read_waiting(Side::Origin, cx);
    }
}

impl Drop for JsSession {
    fn drop(&mut self) {
        // A session dropped without `on_closed` (its worker went away) leaves nothing behind.
        if let Ok(engine) = self.engine.try_borrow()
            && let Ok(mut st) = engine.state.try_borrow_mut()
        {
            st.remove_conn(self.id);
        }
    }
}
