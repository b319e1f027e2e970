//! The messages of a connection's two sockets (the client's, the peer's), read and handed to
//! the script as socket events, at most [`MESSAGES_PER_TURN`] per turn on the client's; and
//! a channel's `gap` notice. Part of `session`.

use wsedge_proto::chunk::Chunk;
use wsedge_proto::function::FnCx;
use wsedge_proto::session::CloseReason;

use super::{JsSession, MESSAGES_PER_TURN};
use crate::endpoint::Event;
use crate::engine::SocketEvent;

impl JsSession {
    /// Hands the client's messages in `data` to the script, at most [`MESSAGES_PER_TURN`]:
    /// returns the bytes used (the rest is untouched).
    pub(super) fn client_bytes(&mut self, data: &mut [u8], cx: &mut FnCx<'_>) -> usize {
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
    pub(super) fn client_backlog(&mut self, cx: &mut FnCx<'_>) {
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

    /// Hands the peer's messages in `data` to the script.
    pub(super) fn peer_bytes(&mut self, data: &mut [u8], cx: &mut FnCx<'_>) {
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

    /// A `gap` notice on `topic`: one `gap` event on the server socket, only if its script
    /// listens for one (a socket with no listener costs no call into JavaScript). What the
    /// handler sends goes out before the channel's next message.
    pub(super) fn on_gap(&mut self, topic: &str, cx: &mut FnCx<'_>) {
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
}
