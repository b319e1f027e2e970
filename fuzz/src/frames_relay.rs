//! `frames_relay`: the `frames` relay's frame state (`session::frames::FramesState`) on its
//! own, fed two WebSocket streams (client frames masked, origin frames unmasked, some broken
//! on purpose) cut into chunks anywhere, interleaved with the proxy's own frames (injected
//! Closes and Pings toward either side), graceful mode and time steps.
//!
//! What leaves toward each side is rebuilt from the pieces (ranges of the chunk, injected
//! bytes) and checked against an independent reading of both streams:
//! - pieces are in-bounds, increasing, non-overlapping ranges of their chunk, and `dropped`
//!   is exactly the chunk bytes not forwarded;
//! - the stream toward each side is well-formed for its reader (masked toward the origin,
//!   unmasked toward the client): the proxy's frames land only at frame boundaries, and no
//!   broken frame is passed on (but for a Close whose payload is read only once relayed:
//!   that one ends its source);
//! - the data payload toward a side is the source's data payload, byte for byte: all of
//!   what was fed while that direction is neither stopped nor broken, a prefix after;
//! - after the proxy sent its stopping frame (a Close) toward a side, not one byte more goes
//!   to it;
//! - while a source is not broken, the messages and Close codes reported for it are those its
//!   stream holds.

use arbitrary::{Arbitrary, Unstructured};
use wsedge_proto::frame::tracker::Event as FrameEvent;
use wsedge_proto::frame::{
    FrameTracker, OpCode, Role, TrackerConfig, apply_mask, encode_frame, parse_close_payload,
};
use wsedge_proto::session::frames::{FramesState, Piece, close_frame};
use wsedge_proto::session::{CloseReason, FrameLimits, Side};

/// One frame of a source stream.
#[derive(Debug, Arbitrary)]
struct FrameIn {
    /// 0 text, 1 binary, 2 continuation, 3 ping, 4 pong, 5 close, 6 raw bytes.
    kind: u8,
    fin: bool,
    len: u16,
    fill: u8,
    mask: [u8; 4],
    /// Flip this byte of the encoded frame (modulo its length) with this value.
    corrupt: Option<(u8, u8)>,
}

#[derive(Debug, Arbitrary)]
enum Op {
    /// The next `n` bytes (1 + n % 300) of a source stream.
    Chunk {
        origin: bool,
        n: u16,
    },
    /// A Close (stopping) or Ping toward a side.
    Inject {
        to_origin: bool,
        close: bool,
    },
    /// The keepalive ping toward the client.
    Ping,
    /// The proxy is ending the connection: close replies are absorbed.
    Graceful,
    Advance(u16),
}

#[derive(Debug, Arbitrary)]
struct Plan {
    client_max: Option<u16>,
    origin_max: Option<u16>,
    rate: Option<u8>,
    client: Vec<FrameIn>,
    origin: Vec<FrameIn>,
    ops: Vec<Op>,
}

/// Encodes one source frame (masked when it comes from the client).
fn encode(f: &FrameIn, from_client: bool, out: &mut Vec<u8>) {
    let start = out.len();
    let mask = from_client.then_some(f.mask);
    let data_len = usize::from(f.len % 2048);
    let payload: Vec<u8> = (0..data_len)
        .map(|i| f.fill.wrapping_add(i as u8))
        .collect();
    match f.kind % 7 {
        0 => encode_frame(OpCode::Text, f.fin, &payload, mask, out),
        1 => encode_frame(OpCode::Binary, f.fin, &payload, mask, out),
        2 => encode_frame(OpCode::Continuation, f.fin, &payload, mask, out),
        3 => encode_frame(OpCode::Ping, true, &payload[..data_len.min(125)], mask, out),
        4 => encode_frame(OpCode::Pong, true, &payload[..data_len.min(125)], mask, out),
        5 => {
            let code = [1000u16, 1001, 1008, 3000, 1005, 999][usize::from(f.fill) % 6];
            let mut close = code.to_be_bytes().to_vec();
            close.extend((0..data_len.min(60)).map(|i| b'a' + (i % 26) as u8));
            let close = if f.fin {
                &close[..]
            } else {
                &close[..data_len.min(1)]
            };
            encode_frame(OpCode::Close, true, close, mask, out);
        }
        _ => out.extend(payload.iter().take(usize::from(f.fill % 8) + 1)),
    }
    if let Some((at, value)) = f.corrupt
        && out.len() > start
    {
        let i = start + usize::from(at) % (out.len() - start);
        out[i] ^= value;
    }
}

/// An independent reading of one direction's bytes: the data payload (unmasked), data
/// messages, Close codes, and the first error.
#[derive(Debug, Default)]
struct Reading {
    data: Vec<u8>,
    messages: u64,
    close_codes: Vec<u16>,
    /// The framing broke a rule.
    error: bool,
    /// A Close payload is invalid (its frame is well-formed; the reading stops there).
    bad_close: bool,
}

fn read_stream(bytes: &[u8], role: Role) -> Reading {
    let mut t = FrameTracker::new(role, TrackerConfig::default());
    let mut r = Reading::default();
    let mut opcode = None;
    let mut mask = None;
    let mut close = Vec::new();
    let mut pos = 0;
    loop {
        match t.poll_event(bytes, &mut pos) {
            Ok(None) => break,
            Err(_) => {
                r.error = true;
                break;
            }
            Ok(Some(FrameEvent::Header { header, .. })) => {
                opcode = Some(header.opcode);
                mask = header.mask;
                close.clear();
            }
            Ok(Some(FrameEvent::Payload { range, offset })) => {
                let mut p = bytes[range].to_vec();
                if let Some(m) = mask {
                    apply_mask(&mut p, m, (offset % 4) as usize);
                }
                match opcode {
                    Some(OpCode::Text | OpCode::Binary | OpCode::Continuation) => {
                        r.data.extend_from_slice(&p)
                    }
                    Some(OpCode::Close) => close.extend_from_slice(&p),
                    _ => {}
                }
            }
            Ok(Some(FrameEvent::FrameEnd {
                opcode: OpCode::Close,
                ..
            })) => match parse_close_payload(&close) {
                Ok(Some((code, _))) => r.close_codes.push(code),
                Ok(None) => r.close_codes.push(1005),
                Err(_) => {
                    r.bad_close = true;
                    break;
                }
            },
            Ok(Some(FrameEvent::FrameEnd { .. })) => {}
            Ok(Some(FrameEvent::MessageEnd { .. })) => r.messages += 1,
        }
    }
    r
}

/// One direction: the source's bytes and what the relay made of them.
#[derive(Default)]
struct Direction {
    source: Vec<u8>,
    /// Bytes of `source` fed so far.
    fed: usize,
    /// The relay reported a violation by this source: it is read no more.
    broken: bool,
    messages: u64,
    close_codes: Vec<u16>,
}

pub fn frames_relay(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(plan) = Plan::arbitrary(&mut u) else {
        return;
    };
    let limits = FrameLimits {
        client_max_message: plan.client_max.map_or(u64::MAX, u64::from),
        origin_max_message: plan.origin_max.map_or(u64::MAX, u64::from),
        client_message_rate: plan.rate.map(|r| u32::from(r % 8) + 1),
        keepalive_ms: None,
        keepalive_timeout_ms: 1000,
        close_code: 1001,
        close_reason: String::new(),
        close_grace_ms: 1000,
    };
    let mut now = 0u64;
    let mut state = FramesState::new(&limits, now);
    // Indexed by the side the bytes come from (`dirs`) or go to (`out`).
    let mut dirs = [Direction::default(), Direction::default()];
    for f in &plan.client {
        encode(f, true, &mut dirs[0].source);
    }
    for f in &plan.origin {
        encode(f, false, &mut dirs[1].source);
    }
    let mut out: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    // `out[to]`'s length when the proxy's stopping frame went to it.
    let mut stopped_at: [Option<usize>; 2] = [None, None];
    let mut pieces = Vec::new();

    for op in plan.ops {
        let was_stopped = state.close_sent;
        match op {
            Op::Chunk { origin, n } => {
                let from = if origin { Side::Origin } else { Side::Client };
                let (f, to) = (from.index(), from.other().index());
                let d = &mut dirs[f];
                if d.broken || d.fed == d.source.len() {
                    continue;
                }
                let end = (d.fed + 1 + usize::from(n) % 300).min(d.source.len());
                let chunk = d.source[d.fed..end].to_vec();
                d.fed = end;
                pieces.clear();
                let outcome = state.on_chunk(from, &chunk, now, &mut pieces);
                let mut last_end = 0;
                let mut forwarded = 0;
                for piece in &pieces {
                    match piece {
                        Piece::Forward(r) => {
                            assert!(
                                r.start >= last_end && r.start < r.end && r.end <= chunk.len(),
                                "piece {r:?} after {last_end} in a chunk of {}",
                                chunk.len()
                            );
                            last_end = r.end;
                            forwarded += r.len();
                            out[to].extend_from_slice(&chunk[r.clone()]);
                        }
                        Piece::Inject(bytes) => out[to].extend_from_slice(bytes),
                    }
                }
                assert_eq!(outcome.dropped, chunk.len() - forwarded, "dropped count");
                if state.close_sent[to] && !was_stopped[to] {
                    assert!(
                        matches!(pieces.last(), Some(Piece::Inject(_))),
                        "bytes forwarded after the proxy's stopping frame in the same chunk"
                    );
                }
                d.messages += outcome.messages;
                d.close_codes.extend(&outcome.close_codes);
                d.broken |= outcome.violation.is_some();
            }
            Op::Inject { to_origin, close } => {
                let to = if to_origin {
                    Side::Origin
                } else {
                    Side::Client
                };
                let frame = if close {
                    close_frame(to, 1001, "going away", [1, 2, 3, 4])
                } else {
                    let mut f = Vec::new();
                    let mask = to_origin.then_some([9, 8, 7, 6]);
                    encode_frame(OpCode::Ping, true, b"edge", mask, &mut f);
                    f
                };
                if let Some(now_bytes) = state.inject(to, frame, close) {
                    out[to.index()].extend_from_slice(&now_bytes);
                }
            }
            Op::Ping => {
                let frame = state.ping_frame();
                if let Some(now_bytes) = state.inject(Side::Client, frame, false) {
                    out[0].extend_from_slice(&now_bytes);
                }
            }
            Op::Graceful => state.grace = Some((CloseReason::Drained, now)),
            Op::Advance(ms) => now += u64::from(ms),
        }
        for to in 0..2 {
            if was_stopped[to] {
                let at = stopped_at[to].expect("stop recorded");
                assert_eq!(
                    out[to].len(),
                    at,
                    "bytes toward side {to} after the proxy's Close"
                );
            } else if state.close_sent[to] {
                stopped_at[to] = Some(out[to].len());
            }
        }
    }

    // Frames toward the origin are masked like the client's, toward the client unmasked
    // like the origin's: each direction is read with its source's role.
    for (from, role) in [(Side::Client, Role::Server), (Side::Origin, Role::Client)] {
        let (f, to) = (from.index(), from.other().index());
        let d = &dirs[f];
        let fed = read_stream(&d.source[..d.fed], role);
        let sent = read_stream(&out[to], role);
        assert!(
            !(fed.error || fed.bad_close) || d.broken,
            "{from:?} sent a broken stream and the relay did not say so"
        );
        assert!(
            !sent.error,
            "the stream toward {:?} is not well-formed",
            from.other()
        );
        // A Close is relayed as it arrives and read when complete: a broken one reaches the
        // other side only as the frame that broke its source.
        assert!(
            !sent.bad_close || d.broken,
            "a broken Close toward {:?} from a source that was not broken",
            from.other()
        );
        assert!(
            fed.data.starts_with(&sent.data),
            "data toward {:?} is not the source's data",
            from.other()
        );
        if !d.broken && stopped_at[to].is_none() {
            assert_eq!(
                sent.data.len(),
                fed.data.len(),
                "data from {from:?} lost on the way"
            );
            if !fed.error && !fed.bad_close {
                assert_eq!(d.messages, fed.messages, "messages from {from:?}");
                assert_eq!(d.close_codes, fed.close_codes, "close codes from {from:?}");
            }
        }
    }
}
