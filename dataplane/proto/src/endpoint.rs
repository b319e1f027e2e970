//! The server side of a WebSocket connection that the edge answers itself (function routes).
//!
//! Pure, like the rest of `wsedge-proto`: no I/O, no clock, no `unsafe`. The dataplane's ring
//! driver owns the socket and the recv buffers of a function route's connection (`echo`,
//! `broadcast`) once its handshake is answered; it hands every received chunk to a
//! [`ServerEndpoint`] and turns what comes back into sends and closes:
//!
//! - [`ServerEndpoint::on_bytes`] reports [`EndpointEvent`]s: bytes to send as they are (a Pong
//!   for each Ping, the Close reply), data as message pieces ([`Mode::Streaming`], ranges into
//!   the chunk, unmasked in place) or as whole messages ([`Mode::Messages`], bounded), and
//!   [`EndpointEvent::Closed`] once the connection is done;
//! - [`ServerEndpoint::echo`] is the `echo` function in one call: it writes every byte to send
//!   (echoed data re-framed unmasked, Pongs, the Close reply) to one buffer, in order.
//!
//! The endpoint enforces RFC 6455 on the client's bytes through [`FrameTracker`] (masking, RSV
//! bits, opcodes, control-frame rules, fragmentation order, message size) and adds what needs
//! the payload: UTF-8 of text, validated incrementally across frames and chunks and failing
//! fast (Autobahn 6.*), and the Close payload (§7.4). Any violation fails the connection: a
//! Close with the error's code ([`FrameError::close_code`]: 1002, 1007 or 1009) and `Closed`.
//!
//! Streaming re-frames data at chunk granularity: every piece of a client frame that arrives in
//! one chunk becomes one server frame (the first piece of a message carries its opcode, the
//! rest are continuations, the last has FIN). Fragment boundaries carry no meaning in
//! WebSocket (§5.4), so an echo never holds a message, however large (Autobahn 9.* sends
//! 16 MiB), and the outgoing stream is always at a frame boundary between calls, where the
//! runtime may insert its own frames (a Close 1001 or 1013, broadcast deliveries).

use std::ops::Range;

use crate::frame::{
    CloseCode, Event, FrameError, FrameHeader, FrameTracker, OpCode, Role, TrackerConfig,
    Utf8Validator, apply_mask, encode_frame, parse_close_payload, write_close,
};

/// How a [`ServerEndpoint`] reports the client's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Pieces of messages as they arrive ([`EndpointEvent::Data`]); nothing is buffered. For
    /// `echo`.
    Streaming,
    /// Whole messages ([`EndpointEvent::Message`]), assembled up to
    /// [`EndpointConfig::max_message_len`]. For `broadcast`.
    Messages,
}

/// Settings of a [`ServerEndpoint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EndpointConfig {
    /// Largest message accepted, in payload bytes over all its fragments; a frame that would
    /// take its message past it fails the connection with 1009 before any of its payload is
    /// read. `u64::MAX` for no limit.
    pub max_message_len: u64,
    /// Pieces or whole messages.
    pub mode: Mode,
}

impl Default for EndpointConfig {
    /// Streaming, no message limit: the `echo` reference.
    fn default() -> Self {
        Self {
            max_message_len: u64::MAX,
            mode: Mode::Streaming,
        }
    }
}

/// What a [`ServerEndpoint`] found in a chunk, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointEvent {
    /// Complete server frames to write to the client as they are: a Pong, a Close.
    Send(Vec<u8>),
    /// ([`Mode::Streaming`]) The next piece of a message, already unmasked in place in the
    /// chunk given to [`ServerEndpoint::on_bytes`]; `payload` indexes that chunk (it may be
    /// empty, e.g. an empty message). The first piece of a message has its opcode (`Text` or
    /// `Binary`), later ones `Continuation`; `fin` marks the last. Text is valid UTF-8 so far
    /// (a piece may end inside a character; the message as a whole is checked before the
    /// piece with `fin`). Sending each piece as one frame
    /// ([`frame_fragment`]`(opcode, fin, &chunk[payload])`) echoes the message.
    Data {
        /// `Text`/`Binary` for a message's first piece, `Continuation` after.
        opcode: OpCode,
        /// This piece ends the message.
        fin: bool,
        /// The piece, as a range of the chunk.
        payload: Range<usize>,
    },
    /// ([`Mode::Messages`]) A complete message, unmasked; text is valid UTF-8.
    Message {
        /// `Text` or `Binary`.
        opcode: OpCode,
        /// The message's payload.
        payload: Vec<u8>,
    },
    /// The connection is done: flush what was queued (the Close frame is the last bytes to
    /// send), then close the socket. Nothing more comes from this endpoint.
    Closed {
        /// The status of the close: the client's code when it closed first (`None` if its
        /// Close carried none), else the code the endpoint sent (a protocol error's, or the
        /// one given to [`ServerEndpoint::close`]).
        code: Option<u16>,
        /// Why the endpoint failed the connection, when the client broke the protocol or a
        /// limit (the client is at fault).
        error: Option<FrameError>,
    },
}

/// Where a [`ServerEndpoint`] is in the close handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndpointState {
    /// Data flows both ways.
    Open,
    /// The endpoint sent a Close ([`ServerEndpoint::close`]) and waits for the client's; the
    /// client's data is read and dropped.
    CloseSent {
        /// The code it sent.
        code: u16,
    },
    /// Done ([`EndpointEvent::Closed`] was reported); input is ignored.
    Closed,
}

/// Appends one unfragmented, unmasked server frame carrying `payload` to `out`.
///
/// For `Text`, the caller guarantees UTF-8.
pub fn frame_message(opcode: OpCode, payload: &[u8], out: &mut Vec<u8>) {
    encode_frame(opcode, true, payload, None, out);
}

/// Appends one unmasked server frame (a fragment when `fin` is false) to `out`: how a
/// [`EndpointEvent::Data`] piece is echoed.
pub fn frame_fragment(opcode: OpCode, fin: bool, payload: &[u8], out: &mut Vec<u8>) {
    encode_frame(opcode, fin, payload, None, out);
}

/// An unmasked server Close frame with `code` and `reason` (cut to 123 bytes at a char
/// boundary). Send only codes for which [`CloseCode::is_valid_on_wire`] holds.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + reason.len().min(123));
    write_close(code, reason, None, &mut out);
    out
}

/// Where the endpoint's output goes: events, or (for [`ServerEndpoint::echo`]) one byte
/// buffer for everything sent plus events for the rest.
enum Sink<'a> {
    Events(&'a mut Vec<EndpointEvent>),
    Echo {
        out: &'a mut Vec<u8>,
        events: &'a mut Vec<EndpointEvent>,
    },
}

impl Sink<'_> {
    fn event(&mut self, event: EndpointEvent) {
        match self {
            Sink::Events(events) | Sink::Echo { events, .. } => events.push(event),
        }
    }

    /// Queues a control frame (Pong, Close) built by `build`.
    fn send_with(&mut self, build: impl FnOnce(&mut Vec<u8>)) {
        match self {
            Sink::Events(events) => {
                let mut bytes = Vec::with_capacity(16);
                build(&mut bytes);
                events.push(EndpointEvent::Send(bytes));
            }
            Sink::Echo { out, .. } => build(out),
        }
    }

    /// A data piece `chunk[range]` (Streaming).
    fn data(&mut self, opcode: OpCode, fin: bool, chunk: &[u8], range: Range<usize>) {
        match self {
            Sink::Events(events) => events.push(EndpointEvent::Data {
                opcode,
                fin,
                payload: range,
            }),
            Sink::Echo { out, .. } => frame_fragment(opcode, fin, &chunk[range], out),
        }
    }

    /// A whole message (Messages).
    fn message(&mut self, opcode: OpCode, payload: Vec<u8>) {
        match self {
            Sink::Events(events) => events.push(EndpointEvent::Message { opcode, payload }),
            Sink::Echo { out, .. } => frame_message(opcode, &payload, out),
        }
    }
}

/// The server side of one WebSocket connection, after the handshake.
///
/// Feed it the client's bytes in order, in chunks of any size ([`ServerEndpoint::on_bytes`] or
/// [`ServerEndpoint::echo`]); it keeps at most a frame header, a control payload (125 bytes),
/// 3 bytes of a cut UTF-8 character and, in [`Mode::Messages`], the message being assembled.
#[derive(Debug, Clone)]
pub struct ServerEndpoint {
    config: EndpointConfig,
    tracker: FrameTracker,
    utf8: Utf8Validator,
    state: EndpointState,
    /// The header of the frame whose payload is being read.
    frame: Option<FrameHeader>,
    /// The open data message's opcode (`Text`/`Binary`) until its last piece is reported.
    message: Option<OpCode>,
    /// Whether a piece of the open message was reported (later pieces are continuations).
    started: bool,
    /// The unmasked payload of the current control frame. INVARIANT: at most 125 bytes (the
    /// tracker rejects longer control frames).
    control: Vec<u8>,
    /// ([`Mode::Messages`]) The message being assembled, unmasked. INVARIANT: at most
    /// `config.max_message_len` bytes (the tracker enforces it at each header).
    buffer: Vec<u8>,
}

impl ServerEndpoint {
    /// An endpoint right after the 101 response.
    pub fn new(config: EndpointConfig) -> Self {
        let tracker = FrameTracker::new(
            Role::Server,
            TrackerConfig {
                max_message_len: config.max_message_len,
                ..TrackerConfig::default()
            },
        );
        Self {
            config,
            tracker,
            utf8: Utf8Validator::new(),
            state: EndpointState::Open,
            frame: None,
            message: None,
            started: false,
            control: Vec::new(),
            buffer: Vec::new(),
        }
    }

    /// Where the close handshake is.
    pub const fn state(&self) -> EndpointState {
        self.state
    }

    /// Whether data may still be sent to the client (no Close sent yet).
    pub const fn is_open(&self) -> bool {
        matches!(self.state, EndpointState::Open)
    }

    /// Handles the client's next bytes, appending what they mean to `out`.
    ///
    /// `chunk` is unmasked in place where its payload is reported (control frames and data);
    /// [`EndpointEvent::Data`] ranges index it, so act on them before reusing the buffer.
    /// Stops at the first `Closed`; later calls do nothing.
    pub fn on_bytes(&mut self, chunk: &mut [u8], out: &mut Vec<EndpointEvent>) {
        self.process(chunk, &mut Sink::Events(out));
    }

    /// Handles the client's next bytes as the `echo` function: appends to `out` every byte to
    /// send, in order (each data piece re-framed unmasked, whole messages in
    /// [`Mode::Messages`], Pongs, the Close reply); `events` gets only
    /// [`EndpointEvent::Closed`].
    pub fn echo(&mut self, chunk: &mut [u8], out: &mut Vec<u8>, events: &mut Vec<EndpointEvent>) {
        self.process(chunk, &mut Sink::Echo { out, events });
    }

    /// Starts the close handshake from the edge (drain 1001, slow consumer 1013, policy
    /// 1008): returns the Close frame to send, or `None` if a Close was already sent.
    ///
    /// Afterwards the client's data is dropped; its Close reply ends the connection
    /// ([`EndpointEvent::Closed`] with `code`). The runtime bounds the wait (drain grace). The
    /// outgoing stream is at a frame boundary between calls, so the frame may go out at once.
    pub fn close(&mut self, code: u16, reason: &str) -> Option<Vec<u8>> {
        if !self.is_open() {
            return None;
        }
        self.state = EndpointState::CloseSent { code };
        Some(close_frame(code, reason))
    }

    fn process(&mut self, chunk: &mut [u8], sink: &mut Sink<'_>) {
        let mut pos = 0;
        while self.state != EndpointState::Closed {
            let event = match self.tracker.poll_event(chunk, &mut pos) {
                Ok(Some(event)) => event,
                Ok(None) => return,
                Err(e) => return self.fail(e, sink),
            };
            let step = match event {
                Event::Header { header, .. } => {
                    self.on_header(header);
                    Ok(())
                }
                Event::Payload { range, offset } => self.on_payload(chunk, range, offset, sink),
                Event::FrameEnd { opcode, fin } => self.on_frame_end(opcode, fin, chunk, pos, sink),
                Event::MessageEnd { opcode, .. } => self.on_message_end(opcode, sink),
            };
            if let Err(e) = step {
                return self.fail(e, sink);
            }
        }
    }

    fn on_header(&mut self, header: FrameHeader) {
        self.frame = Some(header);
        match header.opcode {
            OpCode::Text | OpCode::Binary => {
                self.message = Some(header.opcode);
                self.started = false;
            }
            OpCode::Continuation => {}
            OpCode::Close | OpCode::Ping | OpCode::Pong => self.control.clear(),
        }
    }

    fn on_payload(
        &mut self,
        chunk: &mut [u8],
        range: Range<usize>,
        offset: u64,
        sink: &mut Sink<'_>,
    ) -> Result<(), FrameError> {
        // INVARIANT: the tracker reports payload only after the header of its frame.
        let Some(header) = self.frame else {
            return Ok(());
        };
        let bytes = &mut chunk[range.clone()];
        if let Some(key) = header.mask {
            apply_mask(bytes, key, (offset % 4) as usize);
        }
        if header.opcode.is_control() {
            self.control.extend_from_slice(bytes);
            return Ok(());
        }
        if !self.is_open() {
            // Closing: the client's data is dropped.
            return Ok(());
        }
        let Some(opcode) = self.message else {
            return Ok(());
        };
        if opcode == OpCode::Text {
            self.utf8.feed(bytes)?;
        }
        match self.config.mode {
            Mode::Messages => self.buffer.extend_from_slice(bytes),
            Mode::Streaming => {
                let last = header.fin && self.tracker.payload_remaining() == 0;
                self.emit_piece(opcode, last, chunk, range, sink)?;
            }
        }
        Ok(())
    }

    /// Reports one Streaming piece; the last one of a text message checks its end first.
    fn emit_piece(
        &mut self,
        opcode: OpCode,
        last: bool,
        chunk: &[u8],
        range: Range<usize>,
        sink: &mut Sink<'_>,
    ) -> Result<(), FrameError> {
        if last {
            if opcode == OpCode::Text {
                self.utf8.finish()?;
            }
            self.message = None;
        }
        let wire = if self.started {
            OpCode::Continuation
        } else {
            opcode
        };
        self.started = true;
        sink.data(wire, last, chunk, range);
        Ok(())
    }

    fn on_frame_end(
        &mut self,
        opcode: OpCode,
        fin: bool,
        chunk: &[u8],
        pos: usize,
        sink: &mut Sink<'_>,
    ) -> Result<(), FrameError> {
        match opcode {
            OpCode::Ping => {
                if self.is_open() {
                    let payload = &self.control;
                    sink.send_with(|out| encode_frame(OpCode::Pong, true, payload, None, out));
                }
                Ok(())
            }
            OpCode::Pong => Ok(()),
            OpCode::Close => self.on_close(sink),
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                // A final frame with an empty payload had no piece to carry FIN.
                if fin
                    && self.config.mode == Mode::Streaming
                    && self.is_open()
                    && let Some(message) = self.message
                {
                    self.emit_piece(message, true, chunk, pos..pos, sink)?;
                }
                Ok(())
            }
        }
    }

    fn on_message_end(&mut self, opcode: OpCode, sink: &mut Sink<'_>) -> Result<(), FrameError> {
        self.message = None;
        if self.config.mode != Mode::Messages || !self.is_open() {
            return Ok(());
        }
        if opcode == OpCode::Text {
            self.utf8.finish()?;
        }
        sink.message(opcode, std::mem::take(&mut self.buffer));
        Ok(())
    }

    /// The client's Close frame is complete (`self.control` holds its payload).
    fn on_close(&mut self, sink: &mut Sink<'_>) -> Result<(), FrameError> {
        let parsed = parse_close_payload(&self.control).map(|p| p.map(|(code, _)| code));
        match self.state {
            EndpointState::Open => {
                let code = parsed?;
                let reply = code.unwrap_or(CloseCode::NORMAL);
                sink.send_with(|out| write_close(reply, "", None, out));
                self.finish(code, None, sink);
            }
            EndpointState::CloseSent { code } => {
                // The handshake the edge started is complete; a malformed reply changes
                // nothing now.
                self.finish(Some(code), parsed.err(), sink);
            }
            EndpointState::Closed => {}
        }
        Ok(())
    }

    /// Fails the connection: a Close with the error's code unless one was sent, then `Closed`.
    fn fail(&mut self, error: FrameError, sink: &mut Sink<'_>) {
        match self.state {
            EndpointState::Open => {
                let code = error.close_code();
                sink.send_with(|out| write_close(code, "", None, out));
                self.finish(Some(code), Some(error), sink);
            }
            EndpointState::CloseSent { code } => self.finish(Some(code), Some(error), sink),
            EndpointState::Closed => {}
        }
    }

    fn finish(&mut self, code: Option<u16>, error: Option<FrameError>, sink: &mut Sink<'_>) {
        self.state = EndpointState::Closed;
        self.buffer = Vec::new();
        sink.event(EndpointEvent::Closed { code, error });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::build_close_masked;

    const KEY: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

    /// A masked client frame.
    fn cframe(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(opcode, fin, payload, Some(KEY), &mut out);
        out
    }

    /// An unmasked server frame.
    fn sframe(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame_fragment(opcode, fin, payload, &mut out);
        out
    }

    fn client_close(code: u16, reason: &str) -> Vec<u8> {
        build_close_masked(code, reason, KEY)
    }

    /// Echoes `stream` cut at the sorted positions `cuts`; returns the bytes sent and events.
    fn echo_cut(
        config: EndpointConfig,
        stream: &[u8],
        cuts: &[usize],
    ) -> (Vec<u8>, Vec<EndpointEvent>) {
        let mut ep = ServerEndpoint::new(config);
        let mut out = Vec::new();
        let mut events = Vec::new();
        let mut bounds = vec![0];
        bounds.extend_from_slice(cuts);
        bounds.push(stream.len());
        for w in bounds.windows(2) {
            let mut chunk = stream[w[0]..w[1]].to_vec();
            ep.echo(&mut chunk, &mut out, &mut events);
        }
        (out, events)
    }

    fn echo_all(stream: &[u8]) -> (Vec<u8>, Vec<EndpointEvent>) {
        echo_cut(EndpointConfig::default(), stream, &[])
    }

    /// What a client sees in the server's bytes: whole messages and control frames.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Seen {
        Msg(OpCode, Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<u16>),
    }

    /// Decodes server output with an independent client-side tracker; every frame must be
    /// unmasked and well formed.
    fn decode(bytes: &[u8]) -> Vec<Seen> {
        let mut t = FrameTracker::new(Role::Client, TrackerConfig::default());
        let mut seen = Vec::new();
        let mut control = Vec::new();
        let mut message = Vec::new();
        let mut current = None;
        for event in t.feed(bytes) {
            match event.expect("server output is valid") {
                Event::Header { header, .. } => {
                    current = Some(header.opcode);
                    control.clear();
                }
                Event::Payload { range, .. } => match current {
                    Some(op) if op.is_control() => control.extend_from_slice(&bytes[range]),
                    _ => message.extend_from_slice(&bytes[range]),
                },
                Event::FrameEnd { opcode, .. } => match opcode {
                    OpCode::Pong => seen.push(Seen::Pong(control.clone())),
                    OpCode::Close => {
                        let code = parse_close_payload(&control).expect("valid close");
                        seen.push(Seen::Close(code.map(|(c, _)| c)));
                    }
                    OpCode::Ping => panic!("the endpoint never pings"),
                    _ => {}
                },
                Event::MessageEnd { opcode, .. } => {
                    seen.push(Seen::Msg(opcode, std::mem::take(&mut message)));
                }
            }
        }
        assert!(t.at_frame_boundary(), "output ends mid-frame");
        seen
    }

    fn closed(code: Option<u16>, error: Option<FrameError>) -> EndpointEvent {
        EndpointEvent::Closed { code, error }
    }

    #[test]
    fn echo_exact_bytes_whole() {
        let (out, ev) = echo_all(&cframe(OpCode::Text, true, b"Hello"));
        assert_eq!(out, [0x81, 0x05, b'H', b'e', b'l', b'l', b'o']);
        assert!(ev.is_empty());
        let (out, _) = echo_all(&cframe(OpCode::Binary, true, &[0, 1, 2, 255]));
        assert_eq!(out, sframe(OpCode::Binary, true, &[0, 1, 2, 255]));
        let mut s = cframe(OpCode::Text, false, b"Hel");
        s.extend(cframe(OpCode::Continuation, false, b""));
        s.extend(cframe(OpCode::Continuation, true, b"lo"));
        let (out, _) = echo_all(&s);
        let mut want = sframe(OpCode::Text, false, b"Hel");
        want.extend(sframe(OpCode::Continuation, true, b"lo"));
        assert_eq!(out, want);
        // Empty messages, and an empty final fragment.
        let (out, _) = echo_all(&cframe(OpCode::Text, true, b""));
        assert_eq!(out, [0x81, 0x00]);
        let mut s = cframe(OpCode::Binary, false, b"ab");
        s.extend(cframe(OpCode::Continuation, true, b""));
        let (out, _) = echo_all(&s);
        let mut want = sframe(OpCode::Binary, false, b"ab");
        want.extend(sframe(OpCode::Continuation, true, b""));
        assert_eq!(out, want);
        // Large lengths keep their form.
        let big = vec![7u8; 70_000];
        let (out, _) = echo_all(&cframe(OpCode::Binary, true, &big));
        assert_eq!(out, sframe(OpCode::Binary, true, &big));
    }

    #[test]
    fn echo_exact_bytes_at_every_split() {
        let text = "héllo wörld €😀".as_bytes();
        for (opcode, payload) in [(OpCode::Text, text), (OpCode::Binary, &[9u8; 200][..])] {
            let stream = cframe(opcode, true, payload);
            let header = stream.len() - payload.len();
            for cut in 0..=stream.len() {
                let (out, ev) = echo_cut(EndpointConfig::default(), &stream, &[cut]);
                assert!(ev.is_empty());
                let k = cut.saturating_sub(header);
                let want = if k == 0 || k == payload.len() {
                    sframe(opcode, true, payload)
                } else {
                    let mut w = sframe(opcode, false, &payload[..k]);
                    w.extend(sframe(OpCode::Continuation, true, &payload[k..]));
                    w
                };
                assert_eq!(out, want, "{opcode:?} cut {cut}");
            }
        }
        // A fragmented message: every cut re-frames into the same message.
        let mut s = cframe(OpCode::Text, false, "κό".as_bytes());
        s.extend(cframe(OpCode::Ping, true, b"p"));
        s.extend(cframe(OpCode::Continuation, true, "σμε".as_bytes()));
        let want = vec![
            Seen::Pong(b"p".to_vec()),
            Seen::Msg(OpCode::Text, "κόσμε".as_bytes().to_vec()),
        ];
        for i in 0..=s.len() {
            for j in i..=s.len() {
                let (out, _) = echo_cut(EndpointConfig::default(), &s, &[i, j]);
                assert_eq!(decode(&out), want, "cuts {i},{j}");
            }
        }
        // Byte at a time.
        let cuts: Vec<usize> = (1..s.len()).collect();
        let (out, _) = echo_cut(EndpointConfig::default(), &s, &cuts);
        assert_eq!(decode(&out), want);
    }

    #[test]
    fn streaming_events_unmask_in_place() {
        let mut ep = ServerEndpoint::new(EndpointConfig::default());
        let mut stream = cframe(OpCode::Text, false, b"abc");
        stream.extend(cframe(OpCode::Ping, true, b"hi"));
        stream.extend(cframe(OpCode::Continuation, true, b"de"));
        let mut ev = Vec::new();
        ep.on_bytes(&mut stream, &mut ev);
        assert_eq!(ev.len(), 3);
        let EndpointEvent::Data {
            opcode,
            fin,
            payload,
        } = ev[0].clone()
        else {
            panic!("{ev:?}")
        };
        assert_eq!(
            (opcode, fin, &stream[payload]),
            (OpCode::Text, false, &b"abc"[..])
        );
        assert_eq!(
            ev[1],
            EndpointEvent::Send(sframe(OpCode::Pong, true, b"hi"))
        );
        let EndpointEvent::Data {
            opcode,
            fin,
            payload,
        } = ev[2].clone()
        else {
            panic!("{ev:?}")
        };
        assert_eq!(
            (opcode, fin, &stream[payload]),
            (OpCode::Continuation, true, &b"de"[..])
        );
        // An empty message is an empty range.
        let mut ev = Vec::new();
        ep.on_bytes(&mut cframe(OpCode::Binary, true, b""), &mut ev);
        assert!(matches!(
            &ev[..],
            [EndpointEvent::Data { opcode: OpCode::Binary, fin: true, payload }] if payload.is_empty()
        ));
    }

    #[test]
    fn ping_pong() {
        let (out, _) = echo_all(&cframe(OpCode::Ping, true, b"abc"));
        assert_eq!(out, sframe(OpCode::Pong, true, b"abc"));
        let (out, _) = echo_all(&cframe(OpCode::Ping, true, b""));
        assert_eq!(out, [0x8A, 0x00]);
        // 125 bytes, one byte at a time; unsolicited pongs are ignored.
        let payload: Vec<u8> = (0..125).collect();
        let mut s = cframe(OpCode::Pong, true, b"x");
        s.extend(cframe(OpCode::Ping, true, &payload));
        let cuts: Vec<usize> = (1..s.len()).collect();
        let (out, _) = echo_cut(EndpointConfig::default(), &s, &cuts);
        assert_eq!(out, sframe(OpCode::Pong, true, &payload));
        // Ten pings, ten pongs in order.
        let s: Vec<u8> = (0..10u8)
            .flat_map(|i| cframe(OpCode::Ping, true, &[i]))
            .collect();
        let (out, _) = echo_all(&s);
        let want: Vec<Seen> = (0..10u8).map(|i| Seen::Pong(vec![i])).collect();
        assert_eq!(decode(&out), want);
    }

    #[test]
    fn close_handshake() {
        let (out, ev) = echo_all(&client_close(1000, "bye"));
        assert_eq!(out, close_frame(1000, ""));
        assert_eq!(ev, [closed(Some(1000), None)]);
        // No code: answered with 1000, reported as none.
        let (out, ev) = echo_all(&cframe(OpCode::Close, true, b""));
        assert_eq!(out, [0x88, 0x02, 0x03, 0xE8]);
        assert_eq!(ev, [closed(None, None)]);
        for code in [1001, 1003, 1007, 1011, 1012, 1013, 1014, 3000, 4999] {
            let (out, ev) = echo_all(&client_close(code, "ok"));
            assert_eq!(out, close_frame(code, ""), "{code}");
            assert_eq!(ev, [closed(Some(code), None)]);
        }
        // Anything after the Close is ignored, in the same chunk or later ones.
        let mut s = cframe(OpCode::Text, true, b"before");
        s.extend(client_close(1000, ""));
        s.extend(cframe(OpCode::Ping, true, b"late"));
        s.extend(cframe(OpCode::Text, true, b"late"));
        s.extend([0xFF; 4]);
        for cut in 0..=s.len() {
            let (out, ev) = echo_cut(EndpointConfig::default(), &s, &[cut]);
            assert_eq!(
                decode(&out),
                [
                    Seen::Msg(OpCode::Text, b"before".to_vec()),
                    Seen::Close(Some(1000))
                ]
            );
            assert_eq!(ev, [closed(Some(1000), None)]);
        }
    }

    #[test]
    fn edge_initiated_close() {
        let mut ep = ServerEndpoint::new(EndpointConfig::default());
        assert_eq!(ep.close(1001, "drain"), Some(close_frame(1001, "drain")));
        assert_eq!(ep.state(), EndpointState::CloseSent { code: 1001 });
        assert_eq!(ep.close(1000, ""), None);
        let mut s = cframe(OpCode::Text, true, b"dropped");
        s.extend(cframe(OpCode::Ping, true, b"unanswered"));
        s.extend(client_close(1001, ""));
        let (mut out, mut ev) = (Vec::new(), Vec::new());
        ep.echo(&mut s, &mut out, &mut ev);
        assert!(out.is_empty());
        assert_eq!(ev, [closed(Some(1001), None)]);
        assert_eq!(ep.state(), EndpointState::Closed);
        // A protocol error while closing ends it without another Close.
        let mut ep = ServerEndpoint::new(EndpointConfig::default());
        ep.close(1013, "");
        let mut ev = Vec::new();
        ep.on_bytes(&mut sframe(OpCode::Text, true, b"unmasked"), &mut ev);
        assert_eq!(ev, [closed(Some(1013), Some(FrameError::Unmasked))]);
    }

    /// Streams that fail the connection, with the error and the code sent.
    fn failing_cases() -> Vec<(&'static str, Vec<u8>, FrameError)> {
        let mut rsv1 = cframe(OpCode::Text, true, b"x");
        rsv1[0] |= 0x40;
        let mut rsv3_ping = cframe(OpCode::Ping, true, b"");
        rsv3_ping[0] |= 0x10;
        let mut frag_ping = cframe(OpCode::Ping, true, b"p");
        frag_ping[0] &= 0x7F;
        let mut text_in_frag = cframe(OpCode::Text, false, b"a");
        text_in_frag.extend(cframe(OpCode::Text, true, b"b"));
        let mut cont_after = cframe(OpCode::Text, true, b"a");
        cont_after.extend(cframe(OpCode::Continuation, true, b"b"));
        let mut cases = vec![
            (
                "unmasked",
                sframe(OpCode::Text, true, b"hi"),
                FrameError::Unmasked,
            ),
            ("rsv1", rsv1, FrameError::ReservedBits(0b100)),
            ("rsv3 ping", rsv3_ping, FrameError::ReservedBits(0b001)),
            (
                "opcode 3",
                vec![0x83, 0x80, 1, 2, 3, 4],
                FrameError::ReservedOpcode(3),
            ),
            (
                "opcode 0xB",
                vec![0x8B, 0x80, 1, 2, 3, 4],
                FrameError::ReservedOpcode(0xB),
            ),
            ("fragmented ping", frag_ping, FrameError::FragmentedControl),
            (
                "ping 126",
                cframe(OpCode::Ping, true, &[0; 126]),
                FrameError::ControlTooLong,
            ),
            (
                "continuation first",
                cframe(OpCode::Continuation, true, b"x"),
                FrameError::UnexpectedContinuation,
            ),
            (
                "continuation after",
                cont_after,
                FrameError::UnexpectedContinuation,
            ),
            (
                "text in fragmented",
                text_in_frag,
                FrameError::UnfinishedMessage,
            ),
            (
                "non-minimal",
                vec![0x81, 0xFE, 0, 5, 1, 2, 3, 4],
                FrameError::NonMinimalLength,
            ),
            (
                "close 1 byte",
                cframe(OpCode::Close, true, &[3]),
                FrameError::CloseTooShort,
            ),
            (
                "close bad utf-8",
                cframe(OpCode::Close, true, &[0x03, 0xE8, 0xFF, 0xFE]),
                FrameError::InvalidUtf8,
            ),
            (
                "text bad utf-8",
                cframe(OpCode::Text, true, &[0xCE, 0xBA, 0xFF]),
                FrameError::InvalidUtf8,
            ),
        ];
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            cases.push((
                "close code",
                cframe(OpCode::Close, true, &u16::to_be_bytes(code)),
                FrameError::InvalidCloseCode(code),
            ));
        }
        cases
    }

    #[test]
    fn protocol_errors_close_with_their_code() {
        for (name, stream, error) in failing_cases() {
            let code = error.close_code();
            let want_code = match error {
                FrameError::InvalidUtf8 => 1007,
                _ => 1002,
            };
            assert_eq!(code, want_code, "{name}");
            for cut in 0..=stream.len() {
                // Trailing garbage after the violation is never looked at.
                let mut s = stream.clone();
                s.extend(cframe(OpCode::Text, true, b"after"));
                let (out, ev) = echo_cut(EndpointConfig::default(), &s, &[cut]);
                assert!(
                    out.ends_with(&close_frame(code, "")),
                    "{name} cut {cut}: {out:x?}"
                );
                assert_eq!(
                    decode(&out).last(),
                    Some(&Seen::Close(Some(code))),
                    "{name}"
                );
                assert_eq!(ev, [closed(Some(code), Some(error))], "{name} cut {cut}");
            }
        }
    }

    #[test]
    fn utf8_fails_fast_across_fragments() {
        // Autobahn 6.4.1 shape: a valid first fragment, then one that turns invalid midway.
        let mut s = cframe(OpCode::Text, false, "κόσμε".as_bytes());
        let bad_start = s.len();
        s.extend(cframe(
            OpCode::Continuation,
            false,
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80edited",
        ));
        s.extend(cframe(OpCode::Continuation, true, b"rest"));
        // The invalid byte is 0x90 after 0xF4: the 13th payload byte after a 6-byte header.
        let fail_at = bad_start + 6 + 13;
        let mut ep = ServerEndpoint::new(EndpointConfig::default());
        let (mut out, mut ev) = (Vec::new(), Vec::new());
        for (i, b) in s.iter().enumerate() {
            ep.echo(&mut [*b], &mut out, &mut ev);
            if i + 1 < fail_at {
                assert!(ev.is_empty(), "failed early at {i}");
            } else {
                assert_eq!(
                    ev,
                    [closed(Some(1007), Some(FrameError::InvalidUtf8))],
                    "at {i}"
                );
            }
        }
        // What was valid went out as fragments; then the Close, nothing else.
        let seen = decode(&out);
        assert_eq!(seen, [Seen::Close(Some(1007))]);
        assert!(out.starts_with(&[0x01]));
        // A message that ends inside a character fails at its end, whole or fragmented.
        let mut s = cframe(OpCode::Text, false, b"ok \xF0\x9F");
        s.extend(cframe(OpCode::Continuation, true, b"\x98"));
        for cut in 0..=s.len() {
            let (out, ev) = echo_cut(EndpointConfig::default(), &s, &[cut]);
            assert_eq!(decode(&out), [Seen::Close(Some(1007))], "cut {cut}");
            assert_eq!(ev, [closed(Some(1007), Some(FrameError::InvalidUtf8))]);
        }
        // Split inside a character across fragments is fine.
        let mut s = cframe(OpCode::Text, false, b"\xF0\x9F");
        s.extend(cframe(OpCode::Continuation, true, b"\x98\x80"));
        let (out, ev) = echo_all(&s);
        assert_eq!(
            decode(&out),
            [Seen::Msg(OpCode::Text, "😀".as_bytes().to_vec())]
        );
        assert!(ev.is_empty());
    }

    #[test]
    fn messages_mode_and_size_limit() {
        let config = EndpointConfig {
            max_message_len: 10,
            mode: Mode::Messages,
        };
        let mut s = cframe(OpCode::Text, false, b"hello");
        s.extend(cframe(OpCode::Ping, true, &[1; 100]));
        s.extend(cframe(OpCode::Continuation, false, b""));
        s.extend(cframe(OpCode::Continuation, true, b"world"));
        s.extend(cframe(OpCode::Binary, true, b""));
        for cut in 0..=s.len() {
            let mut ep = ServerEndpoint::new(config);
            let mut ev = Vec::new();
            let (mut a, mut b) = (s[..cut].to_vec(), s[cut..].to_vec());
            ep.on_bytes(&mut a, &mut ev);
            ep.on_bytes(&mut b, &mut ev);
            assert_eq!(
                ev,
                [
                    EndpointEvent::Send(sframe(OpCode::Pong, true, &[1; 100])),
                    EndpointEvent::Message {
                        opcode: OpCode::Text,
                        payload: b"helloworld".to_vec()
                    },
                    EndpointEvent::Message {
                        opcode: OpCode::Binary,
                        payload: Vec::new()
                    },
                ],
                "cut {cut}"
            );
        }
        // Over the limit in one frame or across fragments: 1009.
        let mut over = cframe(OpCode::Text, false, b"hello");
        over.extend(cframe(OpCode::Continuation, true, b"world!"));
        for s in [cframe(OpCode::Binary, true, &[0; 11]), over] {
            let mut ep = ServerEndpoint::new(config);
            let mut ev = Vec::new();
            ep.on_bytes(&mut s.clone(), &mut ev);
            assert_eq!(
                ev.last(),
                Some(&closed(Some(1009), Some(FrameError::MessageTooBig)))
            );
            let Some(EndpointEvent::Send(bytes)) = ev.iter().rev().nth(1) else {
                panic!("{ev:?}")
            };
            assert_eq!(bytes, &close_frame(1009, ""));
        }
        // Invalid text in Messages mode fails before the message ends.
        let mut ep = ServerEndpoint::new(config);
        let mut ev = Vec::new();
        ep.on_bytes(&mut cframe(OpCode::Text, false, b"a\xC0"), &mut ev);
        assert_eq!(
            ev.last(),
            Some(&closed(Some(1007), Some(FrameError::InvalidUtf8)))
        );
        // The same limit in Streaming mode.
        let streaming = EndpointConfig {
            max_message_len: 10,
            mode: Mode::Streaming,
        };
        let (out, ev) = echo_cut(streaming, &cframe(OpCode::Text, true, &[b'a'; 11]), &[]);
        assert_eq!(out, close_frame(1009, ""));
        assert_eq!(ev, [closed(Some(1009), Some(FrameError::MessageTooBig))]);
        // An echo in Messages mode frames whole messages.
        let mut s = cframe(OpCode::Binary, false, b"ab");
        s.extend(cframe(OpCode::Continuation, true, b"cd"));
        let (out, _) = echo_cut(config, &s, &[7]);
        assert_eq!(out, sframe(OpCode::Binary, true, b"abcd"));
    }

    /// One hand-built case of Autobahn|Testsuite groups 1-7: what the client sends, what it
    /// must see back, and how the endpoint ends.
    struct Case {
        name: &'static str,
        stream: Vec<u8>,
        seen: Vec<Seen>,
        closed: Option<EndpointEvent>,
    }

    fn autobahn_cases() -> Vec<Case> {
        let text = |s: &str| Seen::Msg(OpCode::Text, s.as_bytes().to_vec());
        let bin = |b: &[u8]| Seen::Msg(OpCode::Binary, b.to_vec());
        let cat = |frames: &[Vec<u8>]| frames.concat();
        let t = |fin, p: &[u8]| cframe(OpCode::Text, fin, p);
        let c = |fin, p: &[u8]| cframe(OpCode::Continuation, fin, p);
        let ping = |p: &[u8]| cframe(OpCode::Ping, true, p);
        let big = vec![b'*'; 65536];
        vec![
            // 1.*: text and binary of lengths 0, 125, 126, 127, 128, 65535, 65536.
            Case {
                name: "1.1.x",
                stream: cat(&[t(true, b""), t(true, &[b'*'; 125]), t(true, &[b'*'; 126]), t(true, &big)]),
                seen: vec![text(""), text(&"*".repeat(125)), text(&"*".repeat(126)), text(&"*".repeat(65536))],
                closed: None,
            },
            Case {
                name: "1.2.x",
                stream: cat(&[cframe(OpCode::Binary, true, &[0xFE; 127]), cframe(OpCode::Binary, true, &[0xFE; 65535])]),
                seen: vec![bin(&[0xFE; 127]), bin(&[0xFE; 65535])],
                closed: None,
            },
            // 2.*: pings.
            Case {
                name: "2.3 binary ping",
                stream: ping(&[0x00, 0xFF, 0xFE, 0xFD, 0xFC, 0xFB, 0x00, 0xFF]),
                seen: vec![Seen::Pong(vec![0x00, 0xFF, 0xFE, 0xFD, 0xFC, 0xFB, 0x00, 0xFF])],
                closed: None,
            },
            Case {
                name: "2.5 ping 126",
                stream: ping(&[b'x'; 126]),
                seen: vec![Seen::Close(Some(1002))],
                closed: Some(closed(Some(1002), Some(FrameError::ControlTooLong))),
            },
            Case {
                name: "2.11 ten pings then close",
                stream: cat(&[(0..10u8).flat_map(|i| ping(&[i])).collect(), client_close(1000, "")]),
                seen: (0..10u8).map(|i| Seen::Pong(vec![i])).chain([Seen::Close(Some(1000))]).collect(),
                closed: Some(closed(Some(1000), None)),
            },
            // 3.*: RSV bits after a valid message: the message is echoed, then 1002.
            Case {
                name: "3.2",
                stream: {
                    let mut bad = t(true, b"Hello, world!");
                    bad[0] |= 0x20;
                    cat(&[t(true, b"Hello, world!"), bad, ping(b"")])
                },
                seen: vec![text("Hello, world!"), Seen::Close(Some(1002))],
                closed: Some(closed(Some(1002), Some(FrameError::ReservedBits(0b010)))),
            },
            // 4.*: reserved opcodes.
            Case {
                name: "4.1.3",
                stream: cat(&[t(true, b"Hello"), vec![0x85, 0x80, 1, 2, 3, 4], ping(b"")]),
                seen: vec![text("Hello"), Seen::Close(Some(1002))],
                closed: Some(closed(Some(1002), Some(FrameError::ReservedOpcode(5)))),
            },
            // 5.*: fragmentation.
            Case {
                name: "5.1 fragmented ping",
                stream: cat(&[{
                    let mut p = ping(b"frag1");
                    p[0] &= 0x7F;
                    p
                }]),
                seen: vec![Seen::Close(Some(1002))],
                closed: Some(closed(Some(1002), Some(FrameError::FragmentedControl))),
            },
            Case {
                name: "5.6 text with ping between fragments",
                stream: cat(&[t(false, b"fragment1"), ping(b"ping payload"), c(true, b"fragment2")]),
                seen: vec![Seen::Pong(b"ping payload".to_vec()), text("fragment1fragment2")],
                closed: None,
            },
            Case {
                name: "5.9 continuation first",
                stream: cat(&[c(false, b"fragment1"), t(true, b"fragment2"), c(true, b"fragment3")]),
                seen: vec![Seen::Close(Some(1002))],
                closed: Some(closed(Some(1002), Some(FrameError::UnexpectedContinuation))),
            },
            Case {
                name: "5.19 pings inside a 5-fragment message",
                stream: cat(&[
                    t(false, b"fragment1"),
                    c(false, b"fragment2"),
                    ping(b"pongme 1!"),
                    c(false, b"fragment3"),
                    c(false, b"fragment4"),
                    ping(b"pongme 2!"),
                    c(true, b"fragment5"),
                ]),
                seen: vec![
                    Seen::Pong(b"pongme 1!".to_vec()),
                    Seen::Pong(b"pongme 2!".to_vec()),
                    text("fragment1fragment2fragment3fragment4fragment5"),
                ],
                closed: None,
            },
            // 6.*: UTF-8.
            Case {
                name: "6.2.3 valid UTF-8 in fragments",
                stream: cat(&[t(false, "Hello-µ@ß".as_bytes()), c(true, "öäüàá-UTF-8!!".as_bytes())]),
                seen: vec![text("Hello-µ@ßöäüàá-UTF-8!!")],
                closed: None,
            },
            Case {
                name: "6.3.1 surrogate",
                stream: t(true, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64"),
                seen: vec![Seen::Close(Some(1007))],
                closed: Some(closed(Some(1007), Some(FrameError::InvalidUtf8))),
            },
            Case {
                name: "6.6.x empty fragments of text",
                stream: cat(&[t(false, b""), c(false, b""), c(true, b"")]),
                seen: vec![text("")],
                closed: None,
            },
            // 7.*: closing.
            Case {
                name: "7.1.1 text then close",
                stream: cat(&[t(true, b"Hello World!"), client_close(1000, "")]),
                seen: vec![text("Hello World!"), Seen::Close(Some(1000))],
                closed: Some(closed(Some(1000), None)),
            },
            Case {
                name: "7.1.5 close in the middle of a fragmented message",
                stream: cat(&[t(false, b"fragment1"), client_close(1000, ""), c(true, b"fragment2")]),
                seen: vec![Seen::Close(Some(1000))],
                closed: Some(closed(Some(1000), None)),
            },
            Case {
                name: "7.3.6 close reason too long",
                stream: {
                    let mut s = vec![0x88, 0x80 | 126, 0, 126];
                    s.extend(KEY);
                    s.extend([b'a'; 126]);
                    s
                },
                seen: vec![Seen::Close(Some(1002))],
                closed: Some(closed(Some(1002), Some(FrameError::ControlTooLong))),
            },
            Case {
                name: "7.5.1 close reason not UTF-8",
                stream: cframe(OpCode::Close, true, b"\x03\xe8\xce\xba\xed\xa0\x80"),
                seen: vec![Seen::Close(Some(1007))],
                closed: Some(closed(Some(1007), Some(FrameError::InvalidUtf8))),
            },
        ]
    }

    #[test]
    fn autobahn_like_groups_1_to_7_at_every_split() {
        for case in autobahn_cases() {
            let (out, ev) = echo_all(&case.stream);
            assert_eq!(decode(&out), case.seen, "{}", case.name);
            assert_eq!(ev.last().cloned(), case.closed, "{}", case.name);
            // Differential: however the stream is chunked, the client sees the same thing.
            let step = if case.stream.len() > 2000 { 97 } else { 1 };
            for cut in (0..=case.stream.len()).step_by(step) {
                let (out, ev) = echo_cut(EndpointConfig::default(), &case.stream, &[cut]);
                assert_eq!(decode(&out), case.seen, "{} cut {cut}", case.name);
                assert_eq!(ev.last().cloned(), case.closed, "{} cut {cut}", case.name);
            }
            if case.stream.len() <= 2000 {
                let cuts: Vec<usize> = (1..case.stream.len()).collect();
                let (out, _) = echo_cut(EndpointConfig::default(), &case.stream, &cuts);
                assert_eq!(decode(&out), case.seen, "{} byte by byte", case.name);
            }
        }
    }
}
