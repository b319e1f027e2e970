//! The `frames` relay's frame state: the buffered relay, following WebSocket frame boundaries
//! both ways.
//!
//! Each direction has a [`FrameTracker`] fed every received chunk in order. Payload bytes
//! stay in the provided buffer they arrived in and are forwarded as ranges of it; only frame
//! headers are parsed, and only control frames (≤ 125 bytes) are copied and unmasked. Knowing
//! where frames end lets the proxy inject its own frames into a stream at a boundary (Close
//! on expiry, drain or a violation; keepalive Pings), drop frames (the pongs to its own
//! pings, the close replies it asked for, anything after a Close it sent), and enforce
//! message size and rate limits. The session (`super::frames_stage`) acts on what it reports.

use std::ops::Range;

use super::policy::FrameLimits;
use super::reason::{CloseReason, Side};
use crate::frame::{
    self, Event, FrameTracker, OpCode, Role, TrackerConfig, encode_frame, parse_close_payload,
};
use crate::wheel::{Deadline, Tick};

/// A piece of what a chunk becomes on the way out.
#[derive(Debug)]
pub enum Piece {
    /// Bytes of the chunk, forwarded in place.
    Forward(Range<usize>),
    /// Frames the proxy injects at this point (a frame boundary).
    Inject(Vec<u8>),
}

/// What the relay must do after a chunk went through the tracker.
#[derive(Debug, Default)]
pub struct ChunkOutcome {
    /// Bytes of the chunk not forwarded.
    pub dropped: usize,
    /// The source broke the protocol or a limit: close code to send it, and why.
    pub violation: Option<(u16, CloseReason)>,
    /// The client answered the proxy's keepalive ping.
    pub pong: bool,
    /// Complete data messages seen.
    pub messages: u64,
    /// Close codes the source sent (for the counters).
    pub close_codes: Vec<u16>,
    /// The source sent Close (a reply during a graceful close).
    pub close_received: bool,
}

/// A control frame being collected so the proxy can read it.
#[derive(Debug)]
struct Ctrl {
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    payload: Vec<u8>,
}

/// Frame state of one connection on a `frames` route.
#[derive(Debug)]
pub struct FramesState {
    /// Indexed by the side the bytes come from.
    trackers: [FrameTracker; 2],
    ctrl: [Option<Ctrl>; 2],
    /// The current frame from this side is not forwarded.
    dropping: [bool; 2],
    /// The bytes forwarded so far from this side end at a frame boundary.
    at_boundary: [bool; 2],
    /// Frames waiting for a boundary in the stream toward this side.
    pending: [Vec<u8>; 2],
    /// After `pending`, nothing more may go to this side (a Close is among them).
    pending_stop: [bool; 2],
    /// A Close was sent toward this side: nothing more goes to it.
    pub close_sent: [bool; 2],
    /// This side sent its Close.
    pub close_received: [bool; 2],
    /// The first bytes of a header cut at the end of the last chunk from this side: the
    /// tracker reports only the header's tail with the next chunk, and whether the frame is
    /// forwarded is known only then.
    carry: [Vec<u8>; 2],
    /// The payload of the keepalive ping that is out.
    ping: Option<[u8; 8]>,
    pings_sent: u64,
    /// Client message rate: capacity per second, tokens in thousandths, last refill.
    rate: Option<(u32, u64, Tick)>,
    /// The proxy is ending the connection (close replies are absorbed): why, and when its
    /// grace period ends.
    pub grace: Option<(CloseReason, Tick)>,
    /// A keepalive ping is out; its pong is due by then.
    pub ping_deadline: Deadline,
    /// After a violation: the Close (side, code) owed to the violator, sent once the other
    /// side finished (its answers to what came before the violation are still relayed).
    pub deferred_close: Option<(Side, u16)>,
}

impl FramesState {
    pub fn new(limits: &FrameLimits, now: Tick) -> FramesState {
        let config = |max: u64| TrackerConfig {
            max_message_len: max,
            ..TrackerConfig::default()
        };
        FramesState {
            trackers: [
                FrameTracker::new(Role::Server, config(limits.client_max_message)),
                FrameTracker::new(Role::Client, config(limits.origin_max_message)),
            ],
            ctrl: [None, None],
            dropping: [false; 2],
            at_boundary: [true; 2],
            pending: [Vec::new(), Vec::new()],
            pending_stop: [false; 2],
            carry: [Vec::new(), Vec::new()],
            close_sent: [false; 2],
            close_received: [false; 2],
            ping: None,
            pings_sent: 0,
            rate: limits
                .client_message_rate
                .map(|r| (r, u64::from(r) * 1000, now)),
            grace: None,
            ping_deadline: Deadline::NEVER,
            deferred_close: None,
        }
    }

    /// Runs `data` (bytes from `from`, in stream order) through the tracker, filling
    /// `pieces` with what goes to the other side.
    pub fn on_chunk(
        &mut self,
        from: Side,
        data: &[u8],
        now: Tick,
        pieces: &mut Vec<Piece>,
    ) -> ChunkOutcome {
        let f = from.index();
        let to = from.other().index();
        let mut out = ChunkOutcome::default();
        let mut forwarded = 0usize;
        let mut pos = 0usize;
        // End of the last byte range the tracker reported in this chunk.
        let mut reported = 0usize;
        let carried = std::mem::take(&mut self.carry[f]);
        let mut carried_used = false;
        let forward = |pieces: &mut Vec<Piece>, range: Range<usize>, forwarded: &mut usize| {
            *forwarded += range.len();
            if let Some(Piece::Forward(last)) = pieces.last_mut()
                && last.end == range.start
            {
                last.end = range.end;
                return;
            }
            pieces.push(Piece::Forward(range));
        };
        loop {
            let event = match self.trackers[f].poll_event(data, &mut pos) {
                Ok(Some(e)) => e,
                Ok(None) => break,
                Err(e) => {
                    let reason = if e == frame::FrameError::MessageTooBig {
                        CloseReason::MessageTooBig(from)
                    } else {
                        CloseReason::ProtocolError(from)
                    };
                    out.violation = Some((e.close_code(), reason));
                    break;
                }
            };
            match event {
                Event::Header { header, range } => {
                    reported = range.end;
                    carried_used |= range.start == 0;
                    self.at_boundary[f] = false;
                    let ours_to_absorb = match header.opcode {
                        // The pong to the proxy's own ping (clients may also send
                        // unsolicited pongs; dropping those is harmless, RFC 6455 §5.5.3).
                        OpCode::Pong => from == Side::Client && self.ping.is_some(),
                        // A close reply to the proxy's Close.
                        OpCode::Close => self.grace.is_some(),
                        _ => false,
                    };
                    self.dropping[f] = ours_to_absorb || self.close_sent[to];
                    if header.opcode.is_control() {
                        self.ctrl[f] = Some(Ctrl {
                            opcode: header.opcode,
                            mask: header.mask,
                            payload: Vec::with_capacity(header.payload_len as usize),
                        });
                    }
                    if !self.dropping[f] {
                        if range.start == 0 && !carried.is_empty() {
                            pieces.push(Piece::Inject(carried.clone()));
                        }
                        forward(pieces, range, &mut forwarded);
                    }
                }
                Event::Payload { range, offset } => {
                    reported = range.end;
                    if let Some(ctrl) = self.ctrl[f].as_mut() {
                        let start = ctrl.payload.len();
                        ctrl.payload.extend_from_slice(&data[range.clone()]);
                        if let Some(mask) = ctrl.mask {
                            frame::apply_mask(
                                &mut ctrl.payload[start..],
                                mask,
                                (offset % 4) as usize,
                            );
                        }
                    }
                    if !self.dropping[f] {
                        forward(pieces, range, &mut forwarded);
                    }
                }
                Event::FrameEnd { .. } => {
                    self.at_boundary[f] = true;
                    if let Some(ctrl) = self.ctrl[f].take() {
                        match ctrl.opcode {
                            OpCode::Pong
                                if from == Side::Client
                                    && self.ping.is_some_and(|p| ctrl.payload == p) =>
                            {
                                self.ping = None;
                                out.pong = true;
                            }
                            OpCode::Close => {
                                self.close_received[f] = true;
                                out.close_received = true;
                                match parse_close_payload(&ctrl.payload) {
                                    Ok(Some((code, _))) => out.close_codes.push(code),
                                    Ok(None) => out.close_codes.push(1005),
                                    Err(e) => {
                                        out.violation = Some((
                                            e.close_code(),
                                            CloseReason::ProtocolError(from),
                                        ));
                                        break;
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                    self.dropping[f] = false;
                    // The stream toward the other side is at a boundary: injected frames go here.
                    if !self.pending[to].is_empty() {
                        pieces.push(Piece::Inject(std::mem::take(&mut self.pending[to])));
                        if self.pending_stop[to] {
                            self.close_sent[to] = true;
                        }
                    }
                }
                Event::MessageEnd { .. } => {
                    out.messages += 1;
                    if from == Side::Client && !self.take_rate_token(now) {
                        out.violation = Some((1008, CloseReason::MessageRate));
                        break;
                    }
                }
            }
        }
        if out.violation.is_none() && reported < data.len() {
            // Only a header cut at the chunk's end is left unreported. It may span several
            // chunks: keep what was carried if no header consumed it.
            let mut carry = if carried_used { Vec::new() } else { carried };
            carry.extend_from_slice(&data[reported..]);
            self.carry[f] = carry;
        }
        out.dropped = data.len() - forwarded;
        out
    }

    fn take_rate_token(&mut self, now: Tick) -> bool {
        let Some((per_second, tokens, last)) = self.rate.as_mut() else {
            return true;
        };
        let cap = u64::from(*per_second) * 1000;
        let elapsed = now.saturating_sub(*last);
        *tokens = (*tokens + elapsed * u64::from(*per_second)).min(cap);
        *last = now;
        if *tokens >= 1000 {
            *tokens -= 1000;
            true
        } else {
            false
        }
    }

    /// Queues `frame` toward `to`: returned now if that stream is at a boundary (the caller
    /// sends it), kept for the next boundary otherwise. `stop`: nothing may follow it.
    pub fn inject(&mut self, to: Side, frame: Vec<u8>, stop: bool) -> Option<Vec<u8>> {
        let t = to.index();
        if self.close_sent[t] {
            return None;
        }
        if self.at_boundary[to.other().index()] && self.pending[t].is_empty() {
            if stop {
                self.close_sent[t] = true;
            }
            Some(frame)
        } else {
            self.pending[t].extend_from_slice(&frame);
            self.pending_stop[t] |= stop;
            None
        }
    }

    /// A keepalive Ping for the client, remembering its payload to recognise the pong.
    pub fn ping_frame(&mut self) -> Vec<u8> {
        self.pings_sent += 1;
        let payload = self.pings_sent.to_be_bytes();
        self.ping = Some(payload);
        let mut out = Vec::with_capacity(10);
        encode_frame(OpCode::Ping, true, &payload, None, &mut out);
        out
    }

    /// Whether the proxy still owes `to` frames of its own (a Close deferred after a
    /// violation, or frames waiting for a boundary): its write side must stay open for them.
    pub fn owes(&self, to: Side) -> bool {
        self.deferred_close
            .is_some_and(|(violator, _)| violator == to)
            || !self.pending[to.index()].is_empty()
    }

    /// Whether both sides are done with the close handshake (replied with Close, or gone).
    pub fn handshake_done(&self, eof: [bool; 2]) -> bool {
        (0..2).all(|i| self.close_received[i] || eof[i])
    }
}

/// A Close frame toward `to`: unmasked toward the client (we are its server), masked toward
/// the origin (we are its client).
pub fn close_frame(to: Side, code: u16, reason: &str, mask: [u8; 4]) -> Vec<u8> {
    match to {
        Side::Client => frame::build_close(code, reason),
        Side::Origin => frame::build_close_masked(code, reason, mask),
    }
}
