//! `endpoint`: the built-in functions' WebSocket server side, `endpoint::ServerEndpoint`.
//!
//! The client's byte stream is either the fuzz input as it is (anything, masked or not) or,
//! when the first byte says so, a sequence of frames built from the input with `arbitrary`
//! (well-formed masked frames: messages, fragmented or not, with pings between fragments,
//! pings, pongs, a close), for which the expected outcome is known without the code under
//! test: the oracle.
//!
//! Checked for every input, in both modes (streaming `echo`, whole-message `broadcast`):
//! - nothing after `Closed`, and calls after it do nothing; every frame the endpoint emits
//!   (`Send` events, the `echo` output, the frame `close()` returns) parses back as unmasked
//!   server frames, whole frames per call; a Close carries a code valid on the wire, no
//!   reason longer than a control frame allows, and is the last thing sent;
//! - a protocol error closes with the error's own code (1002/1007/1009); the client's Close
//!   is answered with its code (1000 when it had none); after the edge's own `close()` the
//!   endpoint sends and reports nothing but the final `Closed` with the edge's code;
//! - messages stay within `max_message_len`, text is UTF-8, streaming pieces are ranges of
//!   the chunk and start with a Text/Binary piece followed by continuations;
//! - the same messages, control frames and ending whether the stream arrives whole or cut
//!   into 1-64-byte chunks, whether the client's data is reported as pieces or as whole
//!   messages, and whether it goes through `on_bytes` or `echo` (whose output, parsed back
//!   as a client would, carries exactly those messages and control frames);
//! - structured inputs: exactly the messages, pongs and close reply the frames call for.

use arbitrary::{Arbitrary, Unstructured};
use wsedge_proto::endpoint::{EndpointConfig, EndpointEvent, EndpointState, Mode, ServerEndpoint};
use wsedge_proto::frame::{
    CloseCode, FrameError, FrameTracker, OpCode, Role, TrackerConfig, parse_close_payload,
    parse_header,
};

/// What the client sees of the endpoint's behaviour, independent of chunking and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    /// A whole data message (Text or Binary) and its payload.
    Message(OpCode, Vec<u8>),
    /// A control frame the endpoint sent (Pong or Close) and its payload.
    Control(OpCode, Vec<u8>),
    /// `EndpointEvent::Closed`.
    Closed(Option<u16>, Option<FrameError>),
}

/// Codes the edge closes with (drain, policy, slow consumer, normal).
const EDGE_CODES: [u16; 4] = [
    CloseCode::GOING_AWAY,
    CloseCode::POLICY_VIOLATION,
    CloseCode::TRY_AGAIN_LATER,
    CloseCode::NORMAL,
];

/// The endpoint's checks (see the module doc). Input: `[flags, seed, close, stream...]`.
///
/// - `flags`: bits 1-2 the message limit
///   (none, 0, 16, 1000), bit 7 a structured stream (frames built from the rest).
/// - `seed`: the chunk cuts (as in the `frame` target).
/// - `close`: bit 7 set: the edge calls `close()` before chunk `close & 31` with one of
///   `EDGE_CODES` (bits 5-6).
pub fn endpoint(data: &[u8]) {
    let [flags, seed, close, rest @ ..] = data else {
        return;
    };
    let max_message_len = [u64::MAX, 0, 16, 1000][usize::from((flags >> 1) & 3)];
    let (stream, expected) = if flags & 0x80 != 0 {
        let (stream, expected) = build_stream(rest, *seed, max_message_len);
        (stream, Some(expected))
    } else {
        (rest.to_vec(), None)
    };
    let edge_close = (close & 0x80 != 0).then(|| {
        (
            usize::from(close & 31),
            EDGE_CODES[usize::from((close >> 5) & 3)],
        )
    });
    let cuts = cut_points(*seed, stream.len());
    let mut runs = Vec::new();
    for mode in [Mode::Streaming, Mode::Messages] {
        let config = EndpointConfig {
            max_message_len,
            mode,
        };
        let whole = run_events(config, &stream, &[], edge_close.map(|(_, c)| (0, c)));
        let chunked = run_events(config, &stream, &cuts, edge_close);
        let echoed = run_echo(config, &stream, &cuts, edge_close);
        assert_eq!(chunked, echoed, "{mode:?}: echo output differs from events");
        if edge_close.is_none_or(|(at, _)| at == 0) {
            assert_eq!(whole, chunked, "{mode:?}: behaviour depends on chunking");
        }
        runs.push(chunked);
    }
    assert_eq!(runs[0], runs[1], "streaming and whole messages disagree");
    if let (Some(expected), None) = (expected, edge_close) {
        assert_eq!(
            runs[0], expected,
            "structured stream: not what its frames call for"
        );
    }
}

/// Cut points from a small LCG seeded by `seed` (1-3 or 1-64 bytes apart).
fn cut_points(seed: u8, len: usize) -> Vec<usize> {
    let mut x = u32::from(seed) | 1;
    let mut cuts = Vec::new();
    let mut at = 0usize;
    while at < len {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        at += 1 + (x >> 16) as usize % if seed & 1 == 0 { 3 } else { 64 };
        cuts.push(at.min(len));
    }
    cuts
}

/// The chunks of `stream` at `cuts` (the last one runs to the end).
fn chunks(stream: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut start = 0;
    for end in cuts.iter().copied().chain([stream.len()]) {
        let end = end.max(start);
        out.push(stream[start..end].to_vec());
        start = end;
    }
    out
}

/// Splits `bytes` into whole unmasked server frames (panics on anything else) as `(opcode,
/// fin, payload)`.
fn server_frames(bytes: &[u8]) -> Vec<(OpCode, bool, Vec<u8>)> {
    let mut frames = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let (h, n) = parse_header(rest)
            .expect("emitted frame header is valid")
            .expect("emitted frames are whole: header");
        assert_eq!(h.rsv, 0, "RSV bits set on an emitted frame");
        assert!(h.mask.is_none(), "server frames are unmasked");
        let len = usize::try_from(h.payload_len).expect("length");
        assert!(rest.len() - n >= len, "emitted frames are whole: payload");
        frames.push((h.opcode, h.fin, rest[n..n + len].to_vec()));
        rest = &rest[n + len..];
    }
    frames
}

/// Checks a control frame the endpoint sends (or `close()` returns) and returns its item.
fn control_item(opcode: OpCode, fin: bool, payload: Vec<u8>) -> Item {
    assert!(opcode.is_control(), "sent {opcode:?} as a control frame");
    assert!(fin && payload.len() <= 125, "bad control frame");
    if opcode == OpCode::Close {
        let parsed = parse_close_payload(&payload).expect("emitted close payload is valid");
        let (code, _) = parsed.expect("the endpoint always sends a close code");
        assert!(CloseCode::is_valid_on_wire(code), "sent close code {code}");
    }
    assert_ne!(opcode, OpCode::Ping, "the endpoint never pings");
    Item::Control(opcode, payload)
}

/// The close code of a Close item.
fn close_code(item: &Item) -> Option<u16> {
    match item {
        Item::Control(OpCode::Close, p) => Some(u16::from_be_bytes([p[0], p[1]])),
        _ => None,
    }
}

/// Builds the behaviour summary while checking the rules shared by both drives.
#[derive(Default)]
struct Recorder {
    items: Vec<Item>,
    /// The streaming message being assembled from pieces.
    open: Option<(OpCode, Vec<u8>)>,
    closed: bool,
    /// The code given to `close()`, once called.
    edge_code: Option<u16>,
    max_message_len: u64,
}

impl Recorder {
    fn push(&mut self, item: Item) {
        assert!(!self.closed, "{item:?} after Closed");
        if let Some(last) = self.items.last() {
            assert!(
                close_code(last).is_none() || matches!(item, Item::Closed(..)),
                "{item:?} sent after a Close frame"
            );
        }
        match &item {
            Item::Message(opcode, payload) => {
                assert!(self.edge_code.is_none(), "data reported after close()");
                assert!(matches!(opcode, OpCode::Text | OpCode::Binary));
                assert!(
                    payload.len() as u64 <= self.max_message_len,
                    "message over the limit"
                );
                if *opcode == OpCode::Text {
                    assert!(
                        std::str::from_utf8(payload).is_ok(),
                        "text message not UTF-8"
                    );
                }
            }
            Item::Control(..) => assert!(self.edge_code.is_none(), "sent a frame after close()"),
            Item::Closed(code, error) => {
                self.closed = true;
                let sent = self.items.last().and_then(close_code);
                match (self.edge_code, error) {
                    (Some(edge), _) => assert_eq!(*code, Some(edge), "close() code not kept"),
                    (None, Some(e)) => {
                        assert_eq!(
                            *code,
                            Some(e.close_code()),
                            "error closed with another code"
                        );
                        assert_eq!(sent, *code, "no Close with the error's code sent");
                    }
                    (None, None) => assert_eq!(
                        sent,
                        Some(code.unwrap_or(CloseCode::NORMAL)),
                        "client's Close not answered with its code"
                    ),
                }
            }
        }
        self.items.push(item);
    }

    /// A streaming piece.
    fn piece(&mut self, opcode: OpCode, fin: bool, bytes: &[u8]) {
        assert!(!self.closed, "data after Closed");
        match (&mut self.open, opcode) {
            (None, OpCode::Text | OpCode::Binary) => self.open = Some((opcode, bytes.to_vec())),
            (Some((_, buf)), OpCode::Continuation) => buf.extend_from_slice(bytes),
            (open, _) => panic!("piece {opcode:?} with open message {open:?}"),
        }
        if fin && let Some((opcode, payload)) = self.open.take() {
            self.push(Item::Message(opcode, payload));
        }
    }

    fn edge_close(&mut self, ep: &mut ServerEndpoint, code: u16) {
        let was_open = ep.is_open() && !self.closed;
        match ep.close(code, "edge") {
            Some(frame) => {
                assert!(was_open, "close() gave a frame after a Close");
                let frames = server_frames(&frame);
                assert_eq!(frames.len(), 1);
                let (opcode, fin, payload) = frames.into_iter().next().expect("one frame");
                assert_eq!(opcode, OpCode::Close);
                assert_eq!(close_code(&control_item(opcode, fin, payload)), Some(code));
                assert_eq!(ep.state(), EndpointState::CloseSent { code });
                assert_eq!(ep.close(code, "again"), None, "second close() gave a frame");
                self.edge_code = Some(code);
                // A piece of a message cut by the close is never completed.
                self.open = None;
            }
            None => assert!(!was_open, "close() on an open endpoint gave nothing"),
        }
    }
}

/// Drives an endpoint with `on_bytes`, checking every event.
fn run_events(
    config: EndpointConfig,
    stream: &[u8],
    cuts: &[usize],
    edge_close: Option<(usize, u16)>,
) -> Vec<Item> {
    let mut ep = ServerEndpoint::new(config);
    let mut rec = Recorder {
        max_message_len: config.max_message_len,
        ..Recorder::default()
    };
    let mut events = Vec::new();
    for (i, mut chunk) in chunks(stream, cuts).into_iter().enumerate() {
        if let Some((at, code)) = edge_close
            && at == i
        {
            rec.edge_close(&mut ep, code);
        }
        events.clear();
        ep.on_bytes(&mut chunk, &mut events);
        if rec.closed {
            assert!(events.is_empty(), "events after Closed");
        }
        for event in events.drain(..) {
            match event {
                EndpointEvent::Send(bytes) => {
                    let frames = server_frames(&bytes);
                    assert_eq!(frames.len(), 1, "a Send holds one frame");
                    for (opcode, fin, payload) in frames {
                        rec.push(control_item(opcode, fin, payload));
                    }
                }
                EndpointEvent::Data {
                    opcode,
                    fin,
                    payload,
                } => {
                    assert_eq!(config.mode, Mode::Streaming, "Data in Messages mode");
                    assert!(payload.start <= payload.end && payload.end <= chunk.len());
                    rec.piece(opcode, fin, &chunk[payload]);
                }
                EndpointEvent::Message { opcode, payload } => {
                    assert_eq!(config.mode, Mode::Messages, "Message in Streaming mode");
                    rec.push(Item::Message(opcode, payload));
                }
                EndpointEvent::Closed { code, error } => rec.push(Item::Closed(code, error)),
            }
        }
        assert_eq!(
            rec.closed,
            ep.state() == EndpointState::Closed,
            "state and Closed event disagree"
        );
    }
    rec.items
}

/// Drives an endpoint with `echo`, parsing its output as the client would.
fn run_echo(
    config: EndpointConfig,
    stream: &[u8],
    cuts: &[usize],
    edge_close: Option<(usize, u16)>,
) -> Vec<Item> {
    let mut ep = ServerEndpoint::new(config);
    let mut rec = Recorder {
        max_message_len: config.max_message_len,
        ..Recorder::default()
    };
    // The client's view of what the endpoint sends: a tracker checks fragmentation order.
    let mut client = FrameTracker::new(Role::Client, TrackerConfig::default());
    let mut out = Vec::new();
    let mut events = Vec::new();
    for (i, mut chunk) in chunks(stream, cuts).into_iter().enumerate() {
        if let Some((at, code)) = edge_close
            && at == i
        {
            rec.edge_close(&mut ep, code);
        }
        out.clear();
        events.clear();
        ep.echo(&mut chunk, &mut out, &mut events);
        if rec.closed {
            assert!(out.is_empty() && events.is_empty(), "output after Closed");
        }
        let mut pos = 0;
        while client
            .poll_event(&out, &mut pos)
            .expect("echo output is a valid server stream")
            .is_some()
        {}
        assert!(
            client.at_frame_boundary(),
            "echo output ends inside a frame"
        );
        for (opcode, fin, payload) in server_frames(&out) {
            if opcode.is_control() {
                rec.push(control_item(opcode, fin, payload));
            } else {
                rec.piece(opcode, fin, &payload);
            }
        }
        for event in events.drain(..) {
            match event {
                EndpointEvent::Closed { code, error } => rec.push(Item::Closed(code, error)),
                other => panic!("echo reported {other:?}"),
            }
        }
    }
    rec.items
}

// ---------------------------------------------------------------------------------------------
// Structured streams
// ---------------------------------------------------------------------------------------------

/// One thing the structured client does.
#[derive(Debug, Arbitrary)]
enum ClientOp {
    /// A data message, cut into fragments of `frags` sizes (the rest in the last), with a
    /// Ping after the first fragment when `ping` is given.
    Message {
        binary: bool,
        payload: Vec<u8>,
        frags: Vec<u8>,
        ping: Option<Vec<u8>>,
    },
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// A Close with a code (mapped into the valid ones) and a reason, or empty.
    Close(Option<(u16, String)>),
}

/// A masked client frame, written without the code under test.
fn client_frame(opcode: OpCode, fin: bool, payload: &[u8], key: [u8; 4], out: &mut Vec<u8>) {
    out.push(u8::from(fin) << 7 | opcode.as_u8());
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
}

/// Writes the structured client's frames and what the endpoint must answer to them.
struct Builder {
    stream: Vec<u8>,
    expected: Vec<Item>,
    /// The expected outcome already ended with `Closed`.
    done: bool,
    seed: u8,
    frames: u8,
}

impl Builder {
    fn frame(&mut self, opcode: OpCode, fin: bool, payload: &[u8]) {
        self.frames = self.frames.wrapping_add(1);
        let n = self.frames;
        let key = [self.seed, n, self.seed ^ 0x5a, n.wrapping_mul(37)];
        client_frame(opcode, fin, payload, key, &mut self.stream);
    }

    fn expect(&mut self, item: Item) {
        if !self.done {
            self.done = matches!(item, Item::Closed(..));
            self.expected.push(item);
        }
    }

    /// A frame header took its message past the limit: 1009, before any of its payload.
    fn too_big(&mut self) {
        let code = CloseCode::TOO_BIG;
        self.expect(Item::Control(OpCode::Close, code.to_be_bytes().to_vec()));
        self.expect(Item::Closed(Some(code), Some(FrameError::MessageTooBig)));
    }

    fn op(&mut self, op: ClientOp, max: u64) {
        match op {
            ClientOp::Message {
                binary,
                payload,
                frags,
                ping,
            } => {
                let (opcode, payload) = if binary {
                    (OpCode::Binary, payload)
                } else {
                    let text = String::from_utf8_lossy(&payload).into_owned();
                    (OpCode::Text, text.into_bytes())
                };
                // Fragment ends: the given sizes, then the rest in a final fragment.
                let mut ends: Vec<usize> = frags
                    .iter()
                    .scan(0usize, |at, &size| {
                        *at = (*at + usize::from(size)).min(payload.len());
                        Some(*at)
                    })
                    .collect();
                ends.push(payload.len());
                let last = ends.len() - 1;
                let mut ping = ping.map(|mut p| {
                    p.truncate(125);
                    p
                });
                let mut start = 0;
                for (i, end) in ends.into_iter().enumerate() {
                    let wire = if i == 0 { opcode } else { OpCode::Continuation };
                    self.frame(wire, i == last, &payload[start..end]);
                    if end as u64 > max {
                        self.too_big();
                    }
                    start = end;
                    if i != last
                        && let Some(p) = ping.take()
                    {
                        self.frame(OpCode::Ping, true, &p);
                        self.expect(Item::Control(OpCode::Pong, p));
                    }
                }
                self.expect(Item::Message(opcode, payload));
            }
            ClientOp::Ping(mut p) => {
                p.truncate(125);
                self.frame(OpCode::Ping, true, &p);
                self.expect(Item::Control(OpCode::Pong, p));
            }
            ClientOp::Pong(mut p) => {
                p.truncate(125);
                self.frame(OpCode::Pong, true, &p);
            }
            ClientOp::Close(status) => {
                let mut payload = Vec::new();
                let code = status.map(|(code, mut reason)| {
                    let code = if CloseCode::is_valid_on_wire(code) {
                        code
                    } else {
                        3000 + code % 2000
                    };
                    while reason.len() > 123 {
                        reason.pop();
                    }
                    payload.extend_from_slice(&code.to_be_bytes());
                    payload.extend_from_slice(reason.as_bytes());
                    code
                });
                self.frame(OpCode::Close, true, &payload);
                let reply = code.unwrap_or(CloseCode::NORMAL);
                self.expect(Item::Control(OpCode::Close, reply.to_be_bytes().to_vec()));
                self.expect(Item::Closed(code, None));
            }
        }
    }
}

/// Builds a client stream from `data`, and the items the endpoint must produce for it.
fn build_stream(data: &[u8], seed: u8, max: u64) -> (Vec<u8>, Vec<Item>) {
    let mut u = Unstructured::new(data);
    let mut b = Builder {
        stream: Vec::new(),
        expected: Vec::new(),
        done: false,
        seed,
        frames: 0,
    };
    while !u.is_empty() && b.stream.len() < 16 * 1024 {
        let Ok(op) = ClientOp::arbitrary(&mut u) else {
            break;
        };
        b.op(op, max);
    }
    (b.stream, b.expected)
}
