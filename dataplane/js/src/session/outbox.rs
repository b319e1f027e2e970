//! What a connection's script asked for (its runtime's outbox for the connection: the
//! upgrade or an answer, frames, closes, a peer to open, channel operations), turned into
//! [`FnAction`]s; and the ends the session makes itself (a fault, a shutdown). Part of
//! `session`.

use wsedge_proto::chunk::Chunk;
use wsedge_proto::frame::Role;
use wsedge_proto::function::{FnAction, FnCx};
use wsedge_proto::session::{CloseReason, Side};

use super::JsSession;
use crate::endpoint::Endpoint;
use crate::engine::SocketEvent;
use crate::state::{Decision, Fault, Peer};

impl JsSession {
    /// Moves the frames the script queued to `side` into the session's outgoing bytes (they
    /// go out with [`JsSession::emit`]).
    pub(super) fn flush(&mut self, side: Side) {
        if self.endpoint(side).is_none() {
            return;
        }
        let engine = self.engine.borrow();
        let mut st = engine.state.borrow_mut();
        if let Some(conn) = st.conns.get_mut(&self.id) {
            let queued = match side {
                Side::Client => &mut conn.to_client,
                Side::Origin => &mut conn.to_peer,
            };
            append(&mut self.out[side.index()], queued);
        }
    }

    /// Hands the outgoing bytes of both sides to the session, one chunk per side: the frames
    /// of every message of a read go out together (a chunk per message made a send per 16
    /// messages, and the socket's sends took a loop turn each).
    pub(super) fn emit(&mut self, cx: &mut FnCx<'_>) {
        if !self.out[0].is_empty() {
            cx.send_client(Chunk::own(std::mem::take(&mut self.out[0])));
        }
        if !self.out[1].is_empty() {
            cx.send_peer(Chunk::own(std::mem::take(&mut self.out[1])));
        }
    }

    /// Sends `frame` to `side` after everything the script queued before it.
    pub(super) fn send(&mut self, side: Side, frame: Chunk, cx: &mut FnCx<'_>) {
        self.flush(side);
        self.emit(cx);
        match side {
            Side::Client => cx.send_client(frame),
            Side::Origin => cx.send_peer(frame),
        }
    }

    pub(super) fn finish(&mut self, reason: CloseReason, cx: &mut FnCx<'_>) {
        if !self.finished {
            self.finished = true;
            // What was queued goes out before the end (sends after it are dropped).
            self.emit(cx);
            cx.finish(reason);
        }
    }

    /// Hands the session what the script asked for; see the module docs. Inside a read
    /// (`batch`), frames wait in `out` for the end of the read.
    pub(super) fn drain(&mut self, cx: &mut FnCx<'_>) {
        self.take_outbox(cx);
        if !self.batch {
            self.emit(cx);
        }
    }

    pub(super) fn take_outbox(&mut self, cx: &mut FnCx<'_>) {
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
                self.tell(Side::Client, now, SocketEvent::Open);
                continue;
            }
            self.flush(Side::Client);
            let close_client = self.take_close(false);
            if let (Some((code, reason)), Some(server)) = (close_client, self.server.as_mut())
                && let Some(frame) = server.close(code, &reason, 0)
            {
                self.send(Side::Client, Chunk::own(frame), cx);
            }
            self.flush(Side::Origin);
            let close_peer = self.take_close(true);
            if let Some((code, reason)) = close_peer {
                let mask = self.mask();
                if let Some(peer) = self.peer.as_mut()
                    && let Some(frame) = peer.close(code, &reason, mask)
                {
                    self.send(Side::Origin, Chunk::own(frame), cx);
                }
            }
            if let Some((code, reason)) = shutdown {
                self.end(code, true, reason, cx);
            }
            return;
        }
    }

    pub(super) fn take_close(&mut self, peer: bool) -> Option<(u16, String)> {
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
    pub(super) fn fail(&mut self, fault: Fault, cx: &mut FnCx<'_>) {
        let now = cx.now;
        self.emit(cx);
        if self.clientless {
            let mask = self.mask();
            if let Some(frame) = self.peer.as_mut().and_then(|p| p.close(1011, "", mask)) {
                cx.send_peer(Chunk::own(frame));
            }
            if fault == Fault::Error {
                self.tell_closed(Side::Origin, 1006, String::new(), false, now);
            }
            return self.finish(CloseReason::FunctionError, cx);
        }
        match self.server.as_mut() {
            Some(server) => {
                if let Some(frame) = server.close(1011, "", 0) {
                    cx.send_client(Chunk::own(frame));
                }
                if fault == Fault::Error {
                    self.tell_closed(Side::Client, 1011, String::new(), false, now);
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

    /// The edge ends the connection (drain, idle time, lifetime: `clean`; a slow consumer)
    /// with Close `code` on its socket (the client's; a client-less session's peer), the
    /// script told, and finishes. What both sockets read before reaches the script first,
    /// every message before the `close` event as in browsers (bounded: no more is read);
    /// what its handlers send goes out before the Close.
    pub(super) fn end(&mut self, code: u16, clean: bool, reason: CloseReason, cx: &mut FnCx<'_>) {
        self.read_all_waiting(Side::Client, cx);
        self.read_all_waiting(Side::Origin, cx);
        if self.finished {
            // A message ended it (the client's own Close, a fault).
            return;
        }
        let side = if self.clientless {
            Side::Origin
        } else {
            Side::Client
        };
        self.flush(side);
        let mask = if side == Side::Origin { self.mask() } else { 0 };
        if let Some(frame) = self.endpoint(side).and_then(|e| e.close(code, "", mask)) {
            self.send(side, Chunk::own(frame), cx);
        }
        self.tell_closed(side, code, String::new(), clean, cx.now);
        self.finish(reason, cx);
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
