//! [`JsSession`]: one connection of a JavaScript function, as the session drives it. It
//! speaks WebSocket on both of the connection's sides (the client's, after the upgrade, and
//! the peer's, for `new WebSocket`), turns their messages into socket events for the script,
//! and turns what the script asked for (its runtime's outbox for this connection: the
//! upgrade or an answer, frames, closes, a peer to open, channel operations) into
//! [`FnAction`]s. Channel deliveries go to the client without entering JavaScript; a `gap`
//! notice becomes the socket's `gap` event.

use std::cell::RefCell;
use std::rc::Rc;

use wsedge_proto::chunk::Chunk;
use wsedge_proto::frame::Role;
use wsedge_proto::function::{Delivery, FnAction, FnCx, FunctionSession, PeerEvent};
use wsedge_proto::session::CloseReason;

use crate::endpoint::{Endpoint, Event};
use crate::engine::{Engine, SocketEvent};
use crate::state::{ConnId, Decision, Fault, Peer};

/// Client messages handed to the script per event of a connection. The rest of a read waits,
/// with the client's reads stopped, for the next turn of the worker's loop: a client that
/// floods cannot hold the worker (its other connections, its accepts) for longer than this
/// many handlers take.
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
    /// Client bytes not handed to the script yet (beyond [`MESSAGES_PER_TURN`]), from
    /// `backlog_at` on.
    backlog: Vec<u8>,
    backlog_at: usize,
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
            backlog: Vec::new(),
            backlog_at: 0,
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
            backlog: Vec::new(),
            backlog_at: 0,
        }
    }

    fn mask(&self) -> u32 {
        self.engine.borrow().state.borrow_mut().random() as u32
    }

    /// Tells the script about one of its sockets (the runtime may be gone: then nothing).
    fn tell(&mut self, peer: bool, now: u64, event: SocketEvent) {
        let mut engine = self.engine.borrow_mut();
        if !engine.dead {
            engine.event(self.id, peer, now, event);
        }
    }

    fn tell_server_closed(&mut self, code: u16, reason: String, clean: bool, now: u64) {
        if !self.server_told && !self.clientless {
            self.server_told = true;
            self.tell(
                false,
                now,
                SocketEvent::Close {
                    code,
                    reason,
                    clean,
                },
            );
        }
    }

    fn tell_peer_closed(&mut self, code: u16, reason: String, clean: bool, now: u64) {
        if !self.peer_told && self.peer_asked() {
            self.peer_told = true;
            self.tell(
                true,
                now,
                SocketEvent::Close {
                    code,
                    reason,
                    clean,
                },
            );
        }
    }

    fn peer_asked(&self) -> bool {
        let engine = self.engine.borrow();
        let st = engine.state.borrow();
        st.conns.get(&self.id).is_some_and(|c| c.peer != Peer::None)
    }

    /// Moves the frames the script queued to the client into the session's outgoing bytes
    /// (they go out with [`JsSession::emit`]).
    fn flush_client(&mut self) {
        if self.server.is_none() {
            return;
        }
        let engine = self.engine.borrow();
        let mut st = engine.state.borrow_mut();
        if let Some(conn) = st.conns.get_mut(&self.id) {
            append(&mut self.out[0], &mut conn.to_client);
        }
    }

    fn flush_peer(&mut self) {
        if self.peer.is_none() {
            return;
        }
        let engine = self.engine.borrow();
        let mut st = engine.state.borrow_mut();
        if let Some(conn) = st.conns.get_mut(&self.id) {
            append(&mut self.out[1], &mut conn.to_peer);
        }
    }

    /// Hands the outgoing bytes of both sides to the session, one chunk per side: the frames
    /// of every message of a read go out together (a chunk per message made a send per 16
    /// messages, and the socket's sends took a loop turn each).
    fn emit(&mut self, cx: &mut FnCx<'_>) {
        if !self.out[0].is_empty() {
            cx.send_client(Chunk::own(std::mem::take(&mut self.out[0])));
        }
        if !self.out[1].is_empty() {
            cx.send_peer(Chunk::own(std::mem::take(&mut self.out[1])));
        }
    }

    /// Sends `frame` to the client after everything the script queued before it.
    fn send_client(&mut self, frame: Chunk, cx: &mut FnCx<'_>) {
        self.flush_client();
        self.emit(cx);
        cx.send_client(frame);
    }

    /// Sends `frame` to the peer after everything the script queued before it.
    fn send_peer(&mut self, frame: Chunk, cx: &mut FnCx<'_>) {
        self.flush_peer();
        self.emit(cx);
        cx.send_peer(frame);
    }

    fn finish(&mut self, reason: CloseReason, cx: &mut FnCx<'_>) {
        if !self.finished {
            self.finished = true;
            // What was queued goes out before the end (sends after it are dropped).
            self.emit(cx);
            cx.finish(reason);
        }
    }

    /// Hands the session what the script asked for; see the module docs. Inside a read
    /// (`batch`), frames wait in `out` for the end of the read.
    fn drain(&mut self, cx: &mut FnCx<'_>) {
        self.take_outbox(cx);
        if !self.batch {
            self.emit(cx);
        }
    }

    fn take_outbox(&mut self, cx: &mut FnCx<'_>) {
        // Opening the socket runs the script's `open` handlers, which may queue more.
        for _ in 0..4 {
            if self.finished {
                return;
            }
            let mut opened = false;
            let mut fault = None;
            let mut shutdown = None;
            {
                let engine = self.engine.borrow();
                let mut st = engine.state.borrow_mut();
                st.apply_bus(cx.route, cx.bus);
                let Some(conn) = st.conns.get_mut(&self.id) else {
                    return;
                };
                conn.woken = false;
                conn.buffered = cx.queued_to_client + self.out[0].len();
                if let Some(f) = conn.fault {
                    fault = Some(f);
                } else {
                    match std::mem::take(&mut conn.decision) {
                        Decision::Pending => {}
                        Decision::Done => conn.decision = Decision::Done,
                        Decision::Upgrade { protocol } => {
                            conn.decision = Decision::Done;
                            cx.actions.push(FnAction::Upgrade { protocol });
                            self.server = Some(Endpoint::new(Role::Server, self.max_message));
                            opened = true;
                        }
                        Decision::Respond { status, response } => {
                            conn.decision = Decision::Done;
                            self.finished = true;
                            self.server_told = true;
                            let reason = if self.websocket {
                                CloseReason::NotUpgraded
                            } else {
                                CloseReason::HttpDone
                            };
                            cx.actions.push(FnAction::Respond {
                                status,
                                response,
                                reason,
                            });
                            return;
                        }
                    }
                    if let Peer::Requested { .. } = conn.peer
                        && let Peer::Requested {
                            addr,
                            head,
                            accept,
                            tls,
                        } = std::mem::replace(&mut conn.peer, Peer::Asked)
                    {
                        cx.actions.push(FnAction::OpenPeer {
                            addr,
                            head,
                            accept,
                            tls,
                        });
                    }
                    shutdown = conn.shutdown.take();
                }
            }
            if let Some(fault) = fault {
                return self.fail(fault, cx);
            }
            if opened {
                let now = cx.now;
                {
                    let engine = self.engine.borrow();
                    let mut st = engine.state.borrow_mut();
                    st.arm_deadline(self.id);
                }
                self.tell(false, now, SocketEvent::Open);
                continue;
            }
            self.flush_client();
            let close_client = self.take_close(false);
            if let (Some((code, reason)), Some(server)) = (close_client, self.server.as_mut())
                && let Some(frame) = server.close(code, &reason, 0)
            {
                self.send_client(Chunk::own(frame), cx);
            }
            self.flush_peer();
            let close_peer = self.take_close(true);
            if let Some((code, reason)) = close_peer {
                let mask = self.mask();
                if let Some(peer) = self.peer.as_mut()
                    && let Some(frame) = peer.close(code, &reason, mask)
                {
                    self.send_peer(Chunk::own(frame), cx);
                }
            }
            if let Some((code, reason)) = shutdown {
                self.shutdown(code, reason, cx);
            }
            return;
        }
    }

    /// Hands the client's messages in `data` to the script, at most [`MESSAGES_PER_TURN`]:
    /// returns the bytes used (the rest is untouched).
    fn client_bytes(&mut self, data: &mut [u8], cx: &mut FnCx<'_>) -> usize {
        let Some(server) = self.server.as_mut() else {
            return data.len();
        };
        let mut events = Vec::new();
        let used = server.on_bytes_upto(data, 0, &mut events, MESSAGES_PER_TURN);
        self.touch(cx.now);
        self.batch = true;
        for event in events {
            if self.finished {
                break;
            }
            match event {
                Event::Send(frame) => self.send_client(Chunk::own(frame), cx),
                Event::Message { text, payload } => {
                    self.tell(false, cx.now, SocketEvent::Message { text, payload });
                    self.drain(cx);
                }
                Event::Closed {
                    code,
                    reason,
                    clean,
                    error,
                } => {
                    let cause = match error {
                        Some(e) if e.close_code() == 1009 => {
                            CloseReason::MessageTooBig(wsedge_proto::session::Side::Client)
                        }
                        Some(_) => CloseReason::ProtocolError(wsedge_proto::session::Side::Client),
                        None if self.server_told => CloseReason::OriginClosed,
                        None => CloseReason::ClientClosed,
                    };
                    if let Some(e) = error {
                        self.tell(false, cx.now, SocketEvent::Error(e.to_string()));
                    }
                    self.tell_server_closed(code, reason, clean, cx.now);
                    self.drain(cx);
                    self.finish(cause, cx);
                }
            }
        }
        self.batch = false;
        self.drain(cx);
        used
    }

    /// Hands the script the next messages waiting since an earlier turn.
    fn client_backlog(&mut self, cx: &mut FnCx<'_>) {
        if self.backlog_at >= self.backlog.len() || self.finished {
            return;
        }
        let mut backlog = std::mem::take(&mut self.backlog);
        let at = self.backlog_at;
        let used = self.client_bytes(&mut backlog[at..], cx);
        self.backlog_at = at + used;
        if self.backlog_at < backlog.len() && !self.finished {
            self.backlog = backlog;
            self.defer();
        } else {
            // All handed over: its storage goes (a quiet connection keeps none).
            self.backlog_at = 0;
        }
    }

    /// Asks for a wake at the next turn of the worker's loop.
    fn defer(&self) {
        let engine = self.engine.borrow();
        engine.state.borrow_mut().deferred.push(self.id);
    }

    fn take_close(&mut self, peer: bool) -> Option<(u16, String)> {
        let engine = self.engine.borrow();
        let mut st = engine.state.borrow_mut();
        let conn = st.conns.get_mut(&self.id)?;
        if peer {
            // Kept until the peer is open (a close before it is a close at open).
            self.peer.as_ref()?;
            conn.close_peer.take()
        } else {
            self.server.as_ref()?;
            conn.close_client.take()
        }
    }

    /// The script failed: 1011 (or 500 before the upgrade), and finish.
    /// What the failing call queued is not sent; what earlier events queued is.
    fn fail(&mut self, fault: Fault, cx: &mut FnCx<'_>) {
        let now = cx.now;
        self.emit(cx);
        if self.clientless {
            let mask = self.mask();
            if let Some(frame) = self.peer.as_mut().and_then(|p| p.close(1011, "", mask)) {
                cx.send_peer(Chunk::own(frame));
            }
            if fault == Fault::Error {
                self.tell_peer_closed(1006, String::new(), false, now);
            }
            return self.finish(CloseReason::FunctionError, cx);
        }
        match self.server.as_mut() {
            Some(server) => {
                if let Some(frame) = server.close(1011, "", 0) {
                    cx.send_client(Chunk::own(frame));
                }
                if fault == Fault::Error {
                    self.tell_server_closed(1011, String::new(), false, now);
                }
                self.finish(CloseReason::FunctionError, cx);
            }
            None => {
                self.finished = true;
                self.server_told = true;
                cx.actions.push(FnAction::Respond {
                    status: 500,
                    response: wsedge_proto::handshake::error_response(500).to_vec(),
                    reason: CloseReason::FunctionError,
                });
            }
        }
    }

    /// The edge ends it (drain, idle time, lifetime): Close `code`, the script told, finish.
    fn shutdown(&mut self, code: u16, reason: CloseReason, cx: &mut FnCx<'_>) {
        let now = cx.now;
        if self.clientless {
            self.flush_peer();
            let mask = self.mask();
            if let Some(frame) = self.peer.as_mut().and_then(|p| p.close(code, "", mask)) {
                self.send_peer(Chunk::own(frame), cx);
            }
            self.tell_peer_closed(code, String::new(), true, now);
            return self.finish(reason, cx);
        }
        self.flush_client();
        if let Some(frame) = self.server.as_mut().and_then(|s| s.close(code, "", 0)) {
            self.send_client(Chunk::own(frame), cx);
        }
        self.tell_server_closed(code, String::new(), true, now);
        self.finish(reason, cx);
    }

    /// A `gap` notice on `topic`: one `gap` event on the server socket, only if its script
    /// listens for one (a socket with no listener costs no call into JavaScript). What the
    /// handler sends goes out before the channel's next message.
    fn on_gap(&mut self, topic: &str, cx: &mut FnCx<'_>) {
        let listens = {
            let engine = self.engine.borrow();
            let st = engine.state.borrow();
            st.conns
                .get(&self.id)
                .is_some_and(|c| c.gap_listener && c.topics.iter().any(|t| **t == *topic))
        };
        if !listens {
            return;
        }
        self.flush_client();
        let topic = topic.to_owned();
        self.tell(false, cx.now, SocketEvent::Gap { topic });
        self.drain(cx);
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
        if self.server.is_none() || self.finished {
            return;
        }
        if self.backlog_at < self.backlog.len() {
            // Behind the bytes waiting for the next turn.
            self.backlog.extend_from_slice(data);
            return;
        }
        let used = self.client_bytes(data, cx);
        if used < data.len() && !self.finished {
            self.backlog.clear();
            self.backlog.extend_from_slice(&data[used..]);
            self.backlog_at = 0;
            self.defer();
        }
    }

    fn wants_client(&self) -> bool {
        // Reads stop while bytes wait for the next turn (the client is pushed back by TCP).
        self.backlog_at >= self.backlog.len()
    }

    fn on_client_gone(&mut self, cx: &mut FnCx<'_>) {
        // What was read before the end reaches the script first (all of it: no more comes).
        while self.backlog_at < self.backlog.len() && !self.finished {
            self.client_backlog(cx);
        }
        self.tell_server_closed(1006, String::new(), false, cx.now);
        self.drain(cx);
        self.finish(CloseReason::ClientClosed, cx);
    }

    fn on_peer(&mut self, data: &mut [u8], cx: &mut FnCx<'_>) {
        let mask = self.mask();
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        let mut events = Vec::new();
        peer.on_bytes(data, mask, &mut events);
        self.batch = true;
        for event in events {
            if self.finished {
                break;
            }
            match event {
                Event::Send(frame) => self.send_peer(Chunk::own(frame), cx),
                Event::Message { text, payload } => {
                    self.tell(true, cx.now, SocketEvent::Message { text, payload });
                    self.drain(cx);
                }
                Event::Closed {
                    code,
                    reason,
                    clean,
                    error,
                } => {
                    if let Some(e) = error {
                        self.tell(true, cx.now, SocketEvent::Error(e.to_string()));
                    }
                    self.tell_peer_closed(code, reason, clean, cx.now);
                    self.drain(cx);
                    if self.clientless {
                        let cause = match error {
                            Some(_) => {
                                CloseReason::ProtocolError(wsedge_proto::session::Side::Origin)
                            }
                            None => CloseReason::OriginClosed,
                        };
                        self.finish(cause, cx);
                    }
                }
            }
        }
        self.batch = false;
        self.drain(cx);
    }

    fn on_peer_event(&mut self, event: PeerEvent, cx: &mut FnCx<'_>) {
        match event {
            PeerEvent::Open => {
                self.peer = Some(Endpoint::new(Role::Client, self.max_message));
                self.tell(true, cx.now, SocketEvent::Open);
            }
            PeerEvent::Failed { reason } => {
                self.tell(
                    true,
                    cx.now,
                    SocketEvent::Error(format!("the connection failed: {}", reason.as_str())),
                );
                self.tell_peer_closed(1006, String::new(), false, cx.now);
                if self.clientless {
                    self.drain(cx);
                    return self.finish(reason, cx);
                }
            }
            PeerEvent::Closed { reset } => {
                let done = self.peer.as_ref().is_some_and(Endpoint::is_closed);
                if let Some(peer) = self.peer.as_mut() {
                    peer.abandon();
                }
                if !done {
                    self.tell_peer_closed(1006, String::new(), false, cx.now);
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
        if self.backlog_at < self.backlog.len() && !self.finished {
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
        self.flush_client();
        let frame = delivery.raw_frame();
        let limit = self.engine.borrow().limits().max_send_queue;
        if cx.queued_to_client + frame.len() > limit {
            if let Some(close) = self.server.as_mut().and_then(|s| s.close(1013, "", 0)) {
                self.send_client(Chunk::own(close), cx);
            }
            self.tell_server_closed(1013, String::new(), false, cx.now);
            self.drain(cx);
            return self.finish(CloseReason::SlowConsumer, cx);
        }
        self.send_client(
            Chunk::Shared {
                data: frame,
                off: 0,
            },
            cx,
        );
    }

    fn on_shutdown(&mut self, code: u16, reason: CloseReason, cx: &mut FnCx<'_>) {
        self.shutdown(code, reason, cx);
    }

    fn on_closed(&mut self, cx: &mut FnCx<'_>) {
        self.tell_server_closed(1006, String::new(), false, cx.now);
        if self.peer.as_ref().is_some_and(|p| !p.is_closed()) || self.peer.is_none() {
            self.tell_peer_closed(1006, String::new(), false, cx.now);
        }
        self.finished = true;
        let engine = self.engine.borrow();
        let mut st = engine.state.borrow_mut();
        st.remove_conn(self.id);
        st.apply_bus(cx.route, cx.bus);
    }

    fn on_wake(&mut self, cx: &mut FnCx<'_>) {
        self.drain(cx);
        self.client_backlog(cx);
    }
}

/// Moves `from`'s bytes to the end of `to` (no copy when `to` is empty); `from` keeps its
/// storage otherwise, for the next frames.
fn append(to: &mut Vec<u8>, from: &mut Vec<u8>) {
    if to.is_empty() {
        std::mem::swap(to, from);
    } else {
        to.extend_from_slice(from);
        from.clear();
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
