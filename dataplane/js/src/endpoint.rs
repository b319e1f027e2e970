//! One side of a WebSocket a script holds, in whole messages: the server side of a client's
//! connection (frames from the client are masked) or the client side of an outbound socket
//! (frames from the peer are not, frames to it are). The validation is proto's
//! [`FrameTracker`] (masking, RSV bits, opcodes, control-frame rules, fragmentation order,
//! message size) plus what needs the payload: UTF-8 of text across frames, and the Close
//! payload, whose code and reason the script's `close` event carries. Pings are answered
//! with Pongs, a Close with a Close; a violation fails the connection with its close code.

use wsedge_proto::frame::{
    CloseCode, Event as FrameEvent, FrameError, FrameHeader, FrameTracker, OpCode, Role,
    TrackerConfig, Utf8Validator, apply_mask, encode_frame, parse_close_payload, write_close,
};

/// What the bytes of a side meant, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// A frame to send back as it is (a Pong, the Close reply).
    Send(Vec<u8>),
    /// A whole message (text is valid UTF-8).
    Message { text: bool, payload: Vec<u8> },
    /// The WebSocket is done: the close handshake completed (`clean`), or it failed.
    Closed {
        code: u16,
        reason: String,
        clean: bool,
        error: Option<FrameError>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// This side sent a Close and waits for the other's.
    CloseSent,
    Closed,
}

/// One side of a WebSocket after its handshake; see the module docs.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// The role of this side: `Server` reads masked frames, `Client` sends masked ones.
    role: Role,
    tracker: FrameTracker,
    utf8: Utf8Validator,
    state: State,
    frame: Option<FrameHeader>,
    /// The open data message's opcode.
    message: Option<OpCode>,
    /// INVARIANT: at most 125 bytes (the tracker rejects longer control frames).
    control: Vec<u8>,
    /// INVARIANT: at most the tracker's message limit.
    buffer: Vec<u8>,
}

impl Endpoint {
    pub(crate) fn new(role: Role, max_message: u64) -> Endpoint {
        Endpoint {
            role,
            tracker: FrameTracker::new(
                role,
                TrackerConfig {
                    max_message_len: max_message,
                    ..TrackerConfig::default()
                },
            ),
            utf8: Utf8Validator::new(),
            state: State::Open,
            frame: None,
            message: None,
            control: Vec::new(),
            buffer: Vec::new(),
        }
    }

    /// Whether data may still be sent.
    pub(crate) fn is_open(&self) -> bool {
        self.state == State::Open
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Appends one frame of this side to `out` (masked with `mask` on the client side).
    #[cfg(test)]
    pub(crate) fn frame(&self, opcode: OpCode, payload: &[u8], mask: u32, out: &mut Vec<u8>) {
        encode_frame(opcode, true, payload, self.mask(mask), out);
    }

    fn mask(&self, mask: u32) -> Option<[u8; 4]> {
        (self.role == Role::Client).then(|| mask.to_ne_bytes())
    }

    /// Starts the close handshake: the Close frame to send, or `None` if one was sent.
    pub(crate) fn close(&mut self, code: u16, reason: &str, mask: u32) -> Option<Vec<u8>> {
        if self.state != State::Open {
            return None;
        }
        self.state = State::CloseSent;
        let mut out = Vec::with_capacity(8 + reason.len());
        write_close(code, reason, self.mask(mask), &mut out);
        Some(out)
    }

    /// Marks it done without a handshake (the connection went away).
    pub(crate) fn abandon(&mut self) {
        self.state = State::Closed;
        self.buffer = Vec::new();
    }

    /// All of `chunk`: [`Endpoint::on_bytes_upto`] with no cap (the tests' shorthand).
    #[cfg(test)]
    pub(crate) fn on_bytes(&mut self, chunk: &mut [u8], mask: u32, out: &mut Vec<Event>) {
        self.on_bytes_upto(chunk, mask, out, usize::MAX);
    }

    /// Handles the next bytes from the other side (unmasked in place), appending what they
    /// meant to `out`, stopping after `messages` whole messages: returns how many bytes of
    /// `chunk` it used. The rest (untouched) is to be handed back later, first. `mask` masks
    /// this side's replies on the client side.
    pub(crate) fn on_bytes_upto(
        &mut self,
        chunk: &mut [u8],
        mask: u32,
        out: &mut Vec<Event>,
        messages: usize,
    ) -> usize {
        let mut pos = 0;
        let mut seen = 0;
        while self.state != State::Closed && seen < messages {
            let event = match self.tracker.poll_event(chunk, &mut pos) {
                Ok(Some(event)) => event,
                Ok(None) => return chunk.len(),
                Err(e) => {
                    self.fail(e, mask, out);
                    return chunk.len();
                }
            };
            seen += usize::from(matches!(event, FrameEvent::MessageEnd { .. }));
            let step = match event {
                FrameEvent::Header { header, .. } => {
                    self.frame = Some(header);
                    match header.opcode {
                        OpCode::Text | OpCode::Binary => self.message = Some(header.opcode),
                        OpCode::Continuation => {}
                        OpCode::Close | OpCode::Ping | OpCode::Pong => self.control.clear(),
                    }
                    Ok(())
                }
                FrameEvent::Payload { range, offset } => self.on_payload(chunk, range, offset),
                FrameEvent::FrameEnd { opcode, .. } => self.on_frame_end(opcode, mask, out),
                FrameEvent::MessageEnd { opcode, .. } => self.on_message_end(opcode, out),
            };
            if let Err(e) = step {
                self.fail(e, mask, out);
                return chunk.len();
            }
        }
        if self.state == State::Closed {
            // Nothing after the end is read.
            return chunk.len();
        }
        pos
    }

    fn on_payload(
        &mut self,
        chunk: &mut [u8],
        range: std::ops::Range<usize>,
        offset: u64,
    ) -> Result<(), FrameError> {
        let Some(header) = self.frame else {
            return Ok(());
        };
        let bytes = &mut chunk[range];
        if let Some(key) = header.mask {
            apply_mask(bytes, key, (offset % 4) as usize);
        }
        if header.opcode.is_control() {
            self.control.extend_from_slice(bytes);
            return Ok(());
        }
        if self.state != State::Open {
            return Ok(());
        }
        if self.message == Some(OpCode::Text) {
            self.utf8.feed(bytes)?;
        }
        self.buffer.extend_from_slice(bytes);
        Ok(())
    }

    fn on_frame_end(
        &mut self,
        opcode: OpCode,
        mask: u32,
        out: &mut Vec<Event>,
    ) -> Result<(), FrameError> {
        match opcode {
            OpCode::Ping if self.state == State::Open => {
                let mut pong = Vec::with_capacity(self.control.len() + 6);
                encode_frame(
                    OpCode::Pong,
                    true,
                    &self.control,
                    self.mask(mask),
                    &mut pong,
                );
                out.push(Event::Send(pong));
                Ok(())
            }
            OpCode::Close => self.on_close(mask, out),
            _ => Ok(()),
        }
    }

    fn on_message_end(&mut self, opcode: OpCode, out: &mut Vec<Event>) -> Result<(), FrameError> {
        self.message = None;
        if self.state != State::Open {
            self.buffer.clear();
            return Ok(());
        }
        let text = opcode == OpCode::Text;
        if text {
            self.utf8.finish()?;
        }
        out.push(Event::Message {
            text,
            payload: std::mem::take(&mut self.buffer),
        });
        Ok(())
    }

    fn on_close(&mut self, mask: u32, out: &mut Vec<Event>) -> Result<(), FrameError> {
        let parsed = parse_close_payload(&self.control)?;
        let (code, reason) = match parsed {
            Some((code, reason)) => (code, reason.to_owned()),
            None => (1005, String::new()),
        };
        if self.state == State::Open {
            let reply = parsed.map_or(CloseCode::NORMAL, |(c, _)| c);
            let mut frame = Vec::with_capacity(8);
            write_close(reply, "", self.mask(mask), &mut frame);
            out.push(Event::Send(frame));
        }
        self.state = State::Closed;
        self.buffer = Vec::new();
        out.push(Event::Closed {
            code,
            reason,
            clean: true,
            error: None,
        });
        Ok(())
    }

    fn fail(&mut self, error: FrameError, mask: u32, out: &mut Vec<Event>) {
        let code = error.close_code();
        if self.state == State::Open {
            let mut frame = Vec::with_capacity(8);
            write_close(code, "", self.mask(mask), &mut frame);
            out.push(Event::Send(frame));
        }
        self.state = State::Closed;
        self.buffer = Vec::new();
        out.push(Event::Closed {
            code,
            reason: String::new(),
            clean: false,
            error: Some(error),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(opcode, true, payload, Some([1, 2, 3, 4]), &mut out);
        out
    }

    #[test]
    fn server_side_reads_masked_messages_answers_pings_and_closes_with_the_reason() {
        let mut e = Endpoint::new(Role::Server, 1 << 20);
        let mut out = Vec::new();
        let mut bytes = masked(OpCode::Text, "héllo".as_bytes());
        bytes.extend(masked(OpCode::Ping, b"p"));
        let mut close = vec![0x03, 0xE8];
        close.extend_from_slice(b"bye");
        bytes.extend(masked(OpCode::Close, &close));
        // Any chunking gives the same events.
        let (a, b) = bytes.split_at_mut(5);
        e.on_bytes(a, 0, &mut out);
        e.on_bytes(b, 0, &mut out);
        assert_eq!(
            out[0],
            Event::Message {
                text: true,
                payload: "héllo".as_bytes().to_vec()
            }
        );
        assert_eq!(out[1], Event::Send(vec![0x8A, 1, b'p']));
        assert_eq!(out[2], Event::Send(vec![0x88, 2, 0x03, 0xE8]));
        assert_eq!(
            out[3],
            Event::Closed {
                code: 1000,
                reason: "bye".into(),
                clean: true,
                error: None
            }
        );
        assert!(e.is_closed());
    }

    #[test]
    fn client_side_masks_what_it_sends_and_refuses_masked_frames() {
        let mut e = Endpoint::new(Role::Client, 1 << 20);
        let mut frame = Vec::new();
        e.frame(OpCode::Text, b"hi", 0x0102_0304, &mut frame);
        assert_eq!(frame[1] & 0x80, 0x80, "masked");
        let mut out = Vec::new();
        e.on_bytes(&mut masked(OpCode::Text, b"x"), 7, &mut out);
        assert!(matches!(
            out.last(),
            Some(Event::Closed {
                code: 1002,
                clean: false,
                ..
            })
        ));
        let mut bad = Endpoint::new(Role::Server, 1 << 20);
        let mut out = Vec::new();
        bad.on_bytes(&mut masked(OpCode::Text, &[0xFF]), 0, &mut out);
        assert!(matches!(out.last(), Some(Event::Closed { code: 1007, .. })));
    }
}
