//! The messages of a connection's two sockets (the client's, the peer's), read and handed to
//! the script as socket events by one loop for both, at most [`MESSAGES_PER_TURN`] per turn
//! of the worker's loop on each; and a channel's `gap` notice. Part of `session`.

use wsedge_proto::chunk::Chunk;
use wsedge_proto::frame::FrameError;
use wsedge_proto::function::FnCx;
use wsedge_proto::session::{CloseReason, Side};

use super::{JsSession, MESSAGES_PER_TURN};
use crate::endpoint::Event;
use crate::engine::SocketEvent;

/// A socket's bytes read and not handed to the script yet (beyond [`MESSAGES_PER_TURN`]),
/// from `at` on.
#[derive(Debug, Default)]
pub(super) struct Waiting {
    bytes: Vec<u8>,
    at: usize,
}

impl Waiting {
    pub(super) fn is_empty(&self) -> bool {
        self.at >= self.bytes.len()
    }
}

impl JsSession {
    /// The next bytes read from the socket on `side`: its messages, up to the cap; the rest
    /// waits for the next turn (and so do later reads, behind it).
    pub(super) fn on_bytes(&mut self, side: Side, data: &mut [u8], cx: &mut FnCx<'_>) {
        let waiting = &mut self.waiting[side.index()];
        if !waiting.is_empty() {
            waiting.bytes.extend_from_slice(data);
            return;
        }
        let used = self.read(side, data, cx);
        if used < data.len() && !self.finished {
            let waiting = &mut self.waiting[side.index()];
            waiting.bytes.clear();
            waiting.bytes.extend_from_slice(&data[used..]);
            waiting.at = 0;
            self.defer();
        }
    }

    /// Hands the script the next messages waiting on `side` since an earlier turn; asks for
    /// another turn if some are left.
    pub(super) fn read_waiting(&mut self, side: Side, cx: &mut FnCx<'_>) {
        let i = side.index();
        if self.waiting[i].is_empty() || self.finished {
            return;
        }
        let mut waiting = std::mem::take(&mut self.waiting[i]);
        let used = self.read(side, &mut waiting.bytes[waiting.at..], cx);
        waiting.at += used;
        if !waiting.is_empty() && !self.finished {
            self.waiting[i] = waiting;
            self.defer();
        }
        // Otherwise all handed over: its storage goes (a quiet socket keeps none).
    }

    /// Hands the script every message waiting on `side` (the connection ends: nothing more
    /// is read, and each message is delivered before the socket's `close` event).
    pub(super) fn read_all_waiting(&mut self, side: Side, cx: &mut FnCx<'_>) {
        while !self.waiting[side.index()].is_empty() && !self.finished {
            self.read_waiting(side, cx);
        }
    }

    /// Hands the script the messages in `data` from the socket on `side`, at most
    /// [`MESSAGES_PER_TURN`]: returns the bytes used (the rest is untouched). The replies to
    /// them go out together at the end.
    fn read(&mut self, side: Side, data: &mut [u8], cx: &mut FnCx<'_>) -> usize {
        // The edge is the peer's client: what it sends there is masked.
        let mask = if side == Side::Origin { self.mask() } else { 0 };
        let Some(endpoint) = self.endpoint(side) else {
            return data.len();
        };
        let mut events = Vec::new();
        let used = endpoint.on_bytes_upto(data, mask, &mut events, MESSAGES_PER_TURN);
        if side == Side::Client {
            // The idle time is the client's (the peer's messages do not keep it open).
            self.touch(cx.now);
        }
        self.batch = true;
        for event in events {
            if self.finished {
                break;
            }
            match event {
                Event::Send(frame) => self.send(side, Chunk::own(frame), cx),
                Event::Message { text, payload } => {
                    self.tell(side, cx.now, SocketEvent::Message { text, payload });
                    self.drain(cx);
                }
                Event::Closed {
                    code,
                    reason,
                    clean,
                    error,
                } => self.closed(side, code, reason, clean, error, cx),
            }
        }
        self.batch = false;
        self.drain(cx);
        used
    }

    /// The socket on `side` finished its close handshake or failed: the script is told.
    /// The difference between the sides: the client's socket closing ends the connection;
    /// the peer's ends only a client-less one (otherwise the script decides what its client
    /// gets).
    fn closed(
        &mut self,
        side: Side,
        code: u16,
        reason: String,
        clean: bool,
        error: Option<FrameError>,
        cx: &mut FnCx<'_>,
    ) {
        // (Before the script is told: `server_told` says whether the edge closed first.)
        let cause = match (side, error) {
            (Side::Client, Some(e)) if e.close_code() == 1009 => {
                Some(CloseReason::MessageTooBig(Side::Client))
            }
            (Side::Client, Some(_)) => Some(CloseReason::ProtocolError(Side::Client)),
            (Side::Client, None) if self.server_told => Some(CloseReason::OriginClosed),
            (Side::Client, None) => Some(CloseReason::ClientClosed),
            (Side::Origin, _) if !self.clientless => None,
            (Side::Origin, Some(_)) => Some(CloseReason::ProtocolError(Side::Origin)),
            (Side::Origin, None) => Some(CloseReason::OriginClosed),
        };
        if let Some(e) = error {
            self.tell(side, cx.now, SocketEvent::Error(e.to_string()));
        }
        self.tell_closed(side, code, reason, clean, cx.now);
        self.drain(cx);
        if let Some(cause) = cause {
            // The connection ends: the other socket's waiting messages come before its close.
            self.read_all_waiting(side.other(), cx);
            self.finish(cause, cx);
        }
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
        self.flush(Side::Client);
        let topic = topic.to_owned();
        self.tell(Side::Client, cx.now, SocketEvent::Gap { topic });
        self.drain(cx);
    }
}
