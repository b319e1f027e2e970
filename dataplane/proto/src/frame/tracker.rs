//! Frame and message boundaries of one relay direction, without copying payload.
//!
//! Pure. The ring driver's `frames` relay owns one [`FrameTracker`] per direction of a
//! connection (client→origin as [`Role::Server`], origin→client as [`Role::Client`]) and
//! feeds it every recv chunk in order. The tracker parses headers (keeping at most
//! [`MAX_HEADER_LEN`] bytes of a header cut at a chunk boundary), counts down the payload of
//! the current frame, and reports [`Event`]s whose ranges index into the chunk the caller
//! still holds: the payload stays where the kernel put it. It enforces RSV bits, masking
//! direction, fragmentation order and the message size limit; the relay adds what needs the
//! payload (close payloads, UTF-8) with [`super::parse_close_payload`] and
//! [`super::Utf8Validator`] on the ranges it chooses to unmask.
//!
//! Because events are pulled one at a time ([`FrameTracker::poll_event`]), the caller may act
//! on each (unmask a range in place, stop forwarding at a frame boundary to inject a Close)
//! before asking for the next.

use std::ops::Range;

use super::{FrameError, FrameHeader, LengthRule, MAX_HEADER_LEN, OpCode, Role, parse_header_with};

/// Rules a [`FrameTracker`] enforces beyond the header syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackerConfig {
    /// Largest message accepted, in payload bytes summed over its fragments; a header that
    /// would take its message past it is [`FrameError::MessageTooBig`] (1009), before any of
    /// that frame's payload is reported. Control frames do not count. Default: no limit.
    pub max_message_len: u64,
    /// RSV bits (low three bits, `0b100` = RSV1) a negotiated extension allows; any other set
    /// bit is [`FrameError::ReservedBits`]. Default 0 (no extension).
    pub allowed_rsv: u8,
    /// Whether non-minimal payload lengths are errors. Default [`LengthRule::Minimal`].
    pub length_rule: LengthRule,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            max_message_len: u64::MAX,
            allowed_rsv: 0,
            length_rule: LengthRule::Minimal,
        }
    }
}

/// What a [`FrameTracker`] found in a chunk. Ranges index into the chunk given to the call that
/// returned the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete, accepted frame header. `range` holds the header bytes that are in this
    /// chunk: the whole header, or only its tail if it began in earlier chunks (then
    /// `range.start == 0`).
    Header {
        /// The parsed header.
        header: FrameHeader,
        /// The header bytes within this chunk.
        range: Range<usize>,
    },
    /// Payload bytes of the current frame (the last `Header`), never empty.
    Payload {
        /// The payload bytes within this chunk.
        range: Range<usize>,
        /// Position of `range.start` within the frame's payload; pass `(offset % 4) as usize`
        /// to [`super::apply_mask`] to unmask the range in place.
        offset: u64,
    },
    /// The current frame is complete (all its payload was reported). Follows its `Header`
    /// directly for an empty payload.
    FrameEnd {
        /// The frame's opcode.
        opcode: OpCode,
        /// The frame's FIN bit.
        fin: bool,
    },
    /// A data message is complete: follows the `FrameEnd` of a data frame with FIN set.
    MessageEnd {
        /// `Text` or `Binary`: the opcode of the message's first frame.
        opcode: OpCode,
        /// Total payload bytes of the message over all its fragments.
        len: u64,
    },
}

/// Where the tracker is in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a header; `header_buf[..header_fill]` holds its first bytes.
    Header,
    /// Inside the payload of `current`: `remaining` bytes to go, `offset` reported so far.
    Payload { remaining: u64, offset: u64 },
    /// The current frame's payload is complete; `FrameEnd` is due.
    FrameEnd,
    /// A data message just completed; `MessageEnd` is due.
    MessageEnd { opcode: OpCode, len: u64 },
}

/// Follows frame and message boundaries of one direction of a WebSocket stream.
///
/// Feed it the stream's bytes in order, in chunks of any size. Header bytes are read once
/// (copied into a 14-byte buffer only when a header is cut by a chunk boundary); payload
/// bytes are never read, only counted. For every chunk, call [`FrameTracker::poll_event`]
/// until it returns `Ok(None)` (chunk consumed, no event due), or iterate
/// [`FrameTracker::feed`].
///
/// Events come in stream order and in the same sequence however the stream is chunked (only
/// the ranges differ). Errors are sticky: after the first `Err`, every call returns it again;
/// the caller sends a close with [`FrameError::close_code`] and stops reading. Between events
/// the tracker holds: at most 14 header bytes, the current header, and the open message's
/// opcode and length.
#[derive(Debug, Clone)]
pub struct FrameTracker {
    role: Role,
    config: TrackerConfig,
    phase: Phase,
    /// INVARIANT: `header_fill < MAX_HEADER_LEN`, and `header_buf[..header_fill]` is an
    /// incomplete but so far valid header (only while `phase == Header`).
    header_buf: [u8; MAX_HEADER_LEN],
    header_fill: u8,
    /// The last accepted header: the frame whose payload is being counted.
    current: Option<FrameHeader>,
    /// The open data message: opcode of its first frame and payload bytes announced so far.
    message: Option<(OpCode, u64)>,
    /// Whether a Close frame header was seen (the peer must send nothing after it).
    close_seen: bool,
    error: Option<FrameError>,
}

impl FrameTracker {
    /// A tracker at the start of a stream. `role` is the proxy's side toward the peer whose
    /// bytes are tracked: [`Role::Server`] for bytes from a client (frames must be masked),
    /// [`Role::Client`] for bytes from an origin (frames must be unmasked).
    pub const fn new(role: Role, config: TrackerConfig) -> Self {
        Self {
            role,
            config,
            phase: Phase::Header,
            header_buf: [0; MAX_HEADER_LEN],
            header_fill: 0,
            current: None,
            message: None,
            close_seen: false,
            error: None,
        }
    }

    /// Iterates over the events of `chunk`: [`FrameTracker::poll_event`] until `Ok(None)`,
    /// ending after the first error.
    ///
    /// The iterator borrows `chunk`, so a caller that unmasks ranges in place collects the
    /// events first or uses `poll_event` directly.
    pub fn feed<'a>(&'a mut self, chunk: &'a [u8]) -> Events<'a> {
        Events {
            tracker: self,
            chunk,
            pos: 0,
            done: false,
        }
    }

    /// The next event of `chunk[*pos..]`, advancing `*pos` past the bytes it covers.
    ///
    /// `Ok(None)`: every byte of `chunk` is accounted for (`*pos == chunk.len()`) and no event
    /// is due; feed the next chunk starting at `pos = 0`. A header cut at the end of the chunk
    /// is kept inside and completed from the next chunk. `FrameEnd` and `MessageEnd` that fall
    /// exactly at the end of a chunk are reported with that chunk. `Err`: the stream broke a
    /// rule; the error repeats on every later call.
    ///
    /// `*pos` must not exceed `chunk.len()` (a larger value is treated as the end).
    pub fn poll_event(
        &mut self,
        chunk: &[u8],
        pos: &mut usize,
    ) -> Result<Option<Event>, FrameError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        match self.phase {
            Phase::FrameEnd => Ok(Some(self.end_frame())),
            Phase::MessageEnd { opcode, len } => {
                self.phase = Phase::Header;
                Ok(Some(Event::MessageEnd { opcode, len }))
            }
            Phase::Payload { remaining, offset } => {
                let start = (*pos).min(chunk.len());
                let avail = chunk.len() - start;
                if avail == 0 {
                    *pos = start;
                    return Ok(None);
                }
                // `take <= avail`, so it fits a usize.
                let take = remaining.min(avail as u64) as usize;
                let end = start + take;
                *pos = end;
                let remaining = remaining - take as u64;
                self.phase = if remaining == 0 {
                    Phase::FrameEnd
                } else {
                    Phase::Payload {
                        remaining,
                        offset: offset + take as u64,
                    }
                };
                Ok(Some(Event::Payload {
                    range: start..end,
                    offset,
                }))
            }
            Phase::Header => {
                let start = (*pos).min(chunk.len());
                match self.read_header(&chunk[start..]) {
                    Ok(Some((header, used))) => {
                        if let Err(e) = self.accept(&header) {
                            self.error = Some(e);
                            return Err(e);
                        }
                        *pos = start + used;
                        Ok(Some(Event::Header {
                            header,
                            range: start..start + used,
                        }))
                    }
                    Ok(None) => {
                        *pos = chunk.len();
                        Ok(None)
                    }
                    Err(e) => {
                        self.error = Some(e);
                        Err(e)
                    }
                }
            }
        }
    }

    /// Parses a header from the buffered prefix plus `input`; returns it with the number of
    /// bytes of `input` it used, or buffers all of `input` (`Ok(None)`).
    fn read_header(&mut self, input: &[u8]) -> Result<Option<(FrameHeader, usize)>, FrameError> {
        if input.is_empty() {
            return Ok(None);
        }
        let rule = self.config.length_rule;
        let fill = usize::from(self.header_fill);
        if fill == 0 {
            // Fast path: the header is read in place.
            return match parse_header_with(input, rule)? {
                Some(found) => Ok(Some(found)),
                None => {
                    // An incomplete header is shorter than MAX_HEADER_LEN.
                    self.header_buf[..input.len()].copy_from_slice(input);
                    self.header_fill = input.len() as u8;
                    Ok(None)
                }
            };
        }
        let copy = (MAX_HEADER_LEN - fill).min(input.len());
        self.header_buf[fill..fill + copy].copy_from_slice(&input[..copy]);
        match parse_header_with(&self.header_buf[..fill + copy], rule)? {
            Some((header, len)) => {
                // The buffered prefix alone was incomplete, so `len > fill`.
                self.header_fill = 0;
                Ok(Some((header, len - fill)))
            }
            None => {
                // Still incomplete: `fill + copy < MAX_HEADER_LEN`, and copy == input.len().
                self.header_fill = (fill + copy) as u8;
                Ok(None)
            }
        }
    }

    /// Checks a complete header against the role, the extension bits, the fragmentation
    /// state and the size limit, then makes it the current frame.
    fn accept(&mut self, h: &FrameHeader) -> Result<(), FrameError> {
        let stray_rsv = h.rsv & !self.config.allowed_rsv;
        if stray_rsv != 0 {
            return Err(FrameError::ReservedBits(h.rsv));
        }
        match (self.role, h.masked()) {
            (Role::Server, false) => return Err(FrameError::Unmasked),
            (Role::Client, true) => return Err(FrameError::Masked),
            _ => {}
        }
        match h.opcode {
            OpCode::Continuation => {
                let Some((_, len)) = self.message.as_mut() else {
                    return Err(FrameError::UnexpectedContinuation);
                };
                let total = len.saturating_add(h.payload_len);
                if total > self.config.max_message_len {
                    return Err(FrameError::MessageTooBig);
                }
                *len = total;
            }
            OpCode::Text | OpCode::Binary => {
                if self.message.is_some() {
                    return Err(FrameError::UnfinishedMessage);
                }
                if h.payload_len > self.config.max_message_len {
                    return Err(FrameError::MessageTooBig);
                }
                self.message = Some((h.opcode, h.payload_len));
            }
            OpCode::Close => self.close_seen = true,
            OpCode::Ping | OpCode::Pong => {}
        }
        self.current = Some(*h);
        self.phase = if h.payload_len == 0 {
            Phase::FrameEnd
        } else {
            Phase::Payload {
                remaining: h.payload_len,
                offset: 0,
            }
        };
        Ok(())
    }

    /// Emits `FrameEnd` for the current frame and queues `MessageEnd` if it ended a message.
    fn end_frame(&mut self) -> Event {
        // INVARIANT: Phase::FrameEnd is only entered from `accept`, which sets `current`.
        let (opcode, fin) = self
            .current
            .map_or((OpCode::Continuation, false), |h| (h.opcode, h.fin));
        self.phase = Phase::Header;
        if fin
            && opcode.is_data()
            && let Some((opcode, len)) = self.message.take()
        {
            self.phase = Phase::MessageEnd { opcode, len };
        }
        Event::FrameEnd { opcode, fin }
    }

    /// The header of the frame being read (its payload may still be arriving), if any.
    pub const fn current(&self) -> Option<&FrameHeader> {
        self.current.as_ref()
    }

    /// Payload bytes of the current frame still to come (0 between frames).
    pub const fn payload_remaining(&self) -> u64 {
        match self.phase {
            Phase::Payload { remaining, .. } => remaining,
            _ => 0,
        }
    }

    /// Whether the bytes consumed so far end exactly on a frame boundary: no header half read,
    /// no payload pending. Only there may the relay insert a frame of its own (a Close 1001, a
    /// Ping) into this direction. Pending `FrameEnd`/`MessageEnd` events do not matter: their
    /// bytes are all consumed.
    pub const fn at_frame_boundary(&self) -> bool {
        match self.phase {
            Phase::Header => self.header_fill == 0,
            Phase::Payload { .. } => false,
            Phase::FrameEnd | Phase::MessageEnd { .. } => true,
        }
    }

    /// Whether a fragmented data message is open (its final fragment not yet seen). Control
    /// frames the relay inserts are fine inside one; data frames are not.
    pub const fn in_message(&self) -> bool {
        // Once the final fragment's header is accepted, the message is no longer open even
        // though its `MessageEnd` is still to come.
        let final_seen = matches!(self.current, Some(h) if h.fin && h.opcode.is_data());
        self.message.is_some() && !final_seen
    }

    /// Whether a Close frame header was seen on this direction.
    pub const fn close_seen(&self) -> bool {
        self.close_seen
    }

    /// The error that stopped the tracker, if any.
    pub const fn error(&self) -> Option<FrameError> {
        self.error
    }
}

/// Iterator over the events of one chunk, from [`FrameTracker::feed`].
#[derive(Debug)]
pub struct Events<'a> {
    tracker: &'a mut FrameTracker,
    chunk: &'a [u8],
    pos: usize,
    done: bool,
}

impl Iterator for Events<'_> {
    type Item = Result<Event, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.tracker.poll_event(self.chunk, &mut self.pos) {
            Ok(Some(event)) => Some(Ok(event)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Utf8Validator, apply_mask, encode_frame};
    use super::*;

    const KEY: [u8; 4] = [0xA1, 0xB2, 0xC3, 0xD4];

    fn frame(opcode: OpCode, fin: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(opcode, fin, payload, mask, &mut out);
        out
    }

    /// An event with chunk-independent positions: payload runs merged, ranges made absolute.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Abs {
        Header { header: FrameHeader, end: usize },
        Payload { range: Range<usize>, offset: u64 },
        FrameEnd { opcode: OpCode, fin: bool },
        MessageEnd { opcode: OpCode, len: u64 },
        Error(FrameError),
    }

    /// Feeds `stream` cut at `cuts` (sorted positions) and returns the normalized events.
    fn run(role: Role, config: TrackerConfig, stream: &[u8], cuts: &[usize]) -> Vec<Abs> {
        let mut t = FrameTracker::new(role, config);
        let mut out: Vec<Abs> = Vec::new();
        let mut bounds = vec![0];
        bounds.extend_from_slice(cuts);
        bounds.push(stream.len());
        for w in bounds.windows(2) {
            let base = w[0];
            let chunk = &stream[w[0]..w[1]];
            let mut pos = 0;
            loop {
                match t.poll_event(chunk, &mut pos) {
                    Ok(None) => {
                        assert_eq!(pos, chunk.len());
                        break;
                    }
                    Err(e) => {
                        out.push(Abs::Error(e));
                        // Sticky.
                        assert_eq!(t.poll_event(chunk, &mut pos), Err(e));
                        return out;
                    }
                    Ok(Some(Event::Header { header, range })) => {
                        assert_eq!(range.end, pos);
                        out.push(Abs::Header {
                            header,
                            end: base + range.end,
                        });
                    }
                    Ok(Some(Event::Payload { range, offset })) => {
                        assert!(!range.is_empty());
                        assert_eq!(range.end, pos);
                        let abs = base + range.start..base + range.end;
                        if let Some(Abs::Payload { range: prev, .. }) = out.last_mut()
                            && prev.end == abs.start
                        {
                            prev.end = abs.end;
                            continue;
                        }
                        out.push(Abs::Payload { range: abs, offset });
                    }
                    Ok(Some(Event::FrameEnd { opcode, fin })) => {
                        out.push(Abs::FrameEnd { opcode, fin });
                    }
                    Ok(Some(Event::MessageEnd { opcode, len })) => {
                        out.push(Abs::MessageEnd { opcode, len });
                    }
                }
            }
        }
        out
    }

    fn sample_stream(mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut s = Vec::new();
        s.extend(frame(OpCode::Text, true, b"Hello", mask));
        s.extend(frame(OpCode::Binary, false, &[1, 2, 3], mask));
        s.extend(frame(OpCode::Ping, true, b"ping", mask));
        s.extend(frame(OpCode::Continuation, false, &[], mask));
        s.extend(frame(OpCode::Continuation, true, &[9; 200], mask));
        s.extend(frame(OpCode::Pong, true, &[], mask));
        s.extend(frame(OpCode::Text, true, &[], mask));
        s.extend(frame(OpCode::Close, true, &[0x03, 0xE8], mask));
        s
    }

    #[test]
    fn events_of_a_stream() {
        let stream = sample_stream(Some(KEY));
        let ev = run(Role::Server, TrackerConfig::default(), &stream, &[]);
        let kinds: Vec<String> = ev
            .iter()
            .map(|e| match e {
                Abs::Header { header, .. } => format!("H{:?}", header.opcode),
                Abs::Payload { range, .. } => format!("P{}", range.len()),
                Abs::FrameEnd { .. } => "F".into(),
                Abs::MessageEnd { opcode, len } => format!("M{opcode:?}{len}"),
                Abs::Error(e) => format!("E{e:?}"),
            })
            .collect();
        assert_eq!(
            kinds.join(" "),
            "HText P5 F MText5 HBinary P3 F HPing P4 F HContinuation F HContinuation P200 F \
             MBinary203 HPong F HText F MText0 HClose P2 F"
        );
        let mut t = FrameTracker::new(Role::Server, TrackerConfig::default());
        let n = t.feed(&stream).count();
        assert_eq!(n, ev.len());
        assert!(t.close_seen());
        assert!(t.at_frame_boundary());
    }

    #[test]
    fn same_events_at_every_split() {
        for (role, mask) in [(Role::Server, Some(KEY)), (Role::Client, None)] {
            let stream = sample_stream(mask);
            let config = TrackerConfig::default();
            let whole = run(role, config, &stream, &[]);
            // Byte by byte.
            let all: Vec<usize> = (1..stream.len()).collect();
            assert_eq!(run(role, config, &stream, &all), whole);
            // Every cut into two and three chunks (empty chunks included).
            for i in 0..=stream.len() {
                assert_eq!(run(role, config, &stream, &[i]), whole, "cut {i}");
                for j in (i..=stream.len()).step_by(7) {
                    assert_eq!(run(role, config, &stream, &[i, j]), whole, "cuts {i},{j}");
                }
            }
        }
    }

    #[test]
    fn large_frames_and_length_forms_across_splits() {
        let mut stream = Vec::new();
        stream.extend(frame(OpCode::Binary, true, &[5; 125], Some(KEY)));
        stream.extend(frame(OpCode::Binary, true, &[5; 126], Some(KEY)));
        stream.extend(frame(OpCode::Binary, false, &[5; 65535], Some(KEY)));
        stream.extend(frame(OpCode::Continuation, true, &[5; 65536], Some(KEY)));
        let config = TrackerConfig::default();
        let whole = run(Role::Server, config, &stream, &[]);
        assert_eq!(
            whole
                .iter()
                .filter(|e| matches!(e, Abs::MessageEnd { .. }))
                .count(),
            3
        );
        assert!(whole.contains(&Abs::MessageEnd {
            opcode: OpCode::Binary,
            len: 65535 + 65536
        }));
        // Cuts around every header and at a stride through the payloads.
        let header_ends: Vec<usize> = whole
            .iter()
            .filter_map(|e| match e {
                Abs::Header { end, .. } => Some(*end),
                _ => None,
            })
            .collect();
        let mut cuts: Vec<usize> = (0..stream.len()).step_by(997).collect();
        for end in header_ends {
            cuts.extend(end.saturating_sub(15)..(end + 2).min(stream.len()));
        }
        for cut in cuts {
            assert_eq!(
                run(Role::Server, config, &stream, &[cut]),
                whole,
                "cut {cut}"
            );
        }
    }

    #[test]
    fn masking_direction() {
        let unmasked = frame(OpCode::Text, true, b"hi", None);
        let masked = frame(OpCode::Text, true, b"hi", Some(KEY));
        let config = TrackerConfig::default();
        assert_eq!(
            run(Role::Server, config, &unmasked, &[]),
            [Abs::Error(FrameError::Unmasked)]
        );
        assert_eq!(
            run(Role::Client, config, &masked, &[]),
            [Abs::Error(FrameError::Masked)]
        );
        assert_eq!(run(Role::Client, config, &unmasked, &[]).len(), 4);
    }

    #[test]
    fn fragmentation_rules() {
        let config = TrackerConfig::default();
        let m = Some(KEY);
        // Continuation without a message.
        let s = frame(OpCode::Continuation, true, b"x", m);
        assert_eq!(
            run(Role::Server, config, &s, &[]),
            [Abs::Error(FrameError::UnexpectedContinuation)]
        );
        // A new data frame while a fragmented message is open.
        for op in [OpCode::Text, OpCode::Binary] {
            let mut s = frame(OpCode::Text, false, b"a", m);
            s.extend(frame(op, true, b"b", m));
            let ev = run(Role::Server, config, &s, &[]);
            assert_eq!(ev.last(), Some(&Abs::Error(FrameError::UnfinishedMessage)));
        }
        // Continuation after a finished message.
        let mut s = frame(OpCode::Text, true, b"a", m);
        s.extend(frame(OpCode::Continuation, true, b"b", m));
        let ev = run(Role::Server, config, &s, &[]);
        assert_eq!(
            ev.last(),
            Some(&Abs::Error(FrameError::UnexpectedContinuation))
        );
        // Header-level errors surface through the tracker too, at every split.
        let mut s = frame(OpCode::Text, true, b"ok", m);
        s.extend([0x81, 0xFE, 0x00, 0x05]);
        let whole = run(Role::Server, config, &s, &[]);
        assert_eq!(
            whole.last(),
            Some(&Abs::Error(FrameError::NonMinimalLength))
        );
        for i in 0..=s.len() {
            assert_eq!(run(Role::Server, config, &s, &[i]), whole);
        }
        let lenient = TrackerConfig {
            length_rule: LengthRule::AllowNonMinimal,
            ..config
        };
        let mut s = vec![0x82, 0xFE, 0x00, 0x01];
        s.extend(KEY);
        s.push(0x00);
        assert_eq!(run(Role::Server, lenient, &s, &[]).len(), 4);
    }

    #[test]
    fn reserved_bits() {
        let mut s = frame(OpCode::Text, true, b"x", Some(KEY));
        s[0] |= 0x40; // RSV1
        let config = TrackerConfig::default();
        assert_eq!(
            run(Role::Server, config, &s, &[]),
            [Abs::Error(FrameError::ReservedBits(0b100))]
        );
        let deflate = TrackerConfig {
            allowed_rsv: 0b100,
            ..config
        };
        assert_eq!(run(Role::Server, deflate, &s, &[]).len(), 4);
        s[0] |= 0x10; // RSV3 too
        assert_eq!(
            run(Role::Server, deflate, &s, &[]),
            [Abs::Error(FrameError::ReservedBits(0b101))]
        );
    }

    #[test]
    fn message_size_limit() {
        let config = TrackerConfig {
            max_message_len: 10,
            ..TrackerConfig::default()
        };
        let m = Some(KEY);
        // Exactly at the limit, fragmented, with a control frame that does not count.
        let mut s = frame(OpCode::Binary, false, &[0; 6], m);
        s.extend(frame(OpCode::Ping, true, &[0; 100], m));
        s.extend(frame(OpCode::Continuation, true, &[0; 4], m));
        let ev = run(Role::Server, config, &s, &[]);
        assert_eq!(
            ev.last(),
            Some(&Abs::MessageEnd {
                opcode: OpCode::Binary,
                len: 10
            })
        );
        // One byte over in a single frame: rejected at the header, before any payload.
        let s = frame(OpCode::Text, true, &[b'a'; 11], m);
        assert_eq!(
            run(Role::Server, config, &s, &[]),
            [Abs::Error(FrameError::MessageTooBig)]
        );
        // Over across fragments.
        let mut s = frame(OpCode::Text, false, &[b'a'; 6], m);
        s.extend(frame(OpCode::Continuation, true, &[b'a'; 5], m));
        let ev = run(Role::Server, config, &s, &[]);
        assert_eq!(ev.last(), Some(&Abs::Error(FrameError::MessageTooBig)));
        assert_eq!(FrameError::MessageTooBig.close_code(), 1009);
        // A huge announced length is rejected without waiting for the payload.
        let mut huge = vec![0x82, 0xFF];
        huge.extend((1u64 << 40).to_be_bytes());
        huge.extend(KEY);
        assert_eq!(
            run(Role::Server, config, &huge, &[]),
            [Abs::Error(FrameError::MessageTooBig)]
        );
    }

    #[test]
    fn boundaries_and_state() {
        let mut t = FrameTracker::new(Role::Client, TrackerConfig::default());
        assert!(t.at_frame_boundary());
        let s = frame(OpCode::Binary, false, &[1; 10], None);
        // Half a header: not a boundary.
        let mut pos = 0;
        assert_eq!(t.poll_event(&s[..1], &mut pos), Ok(None));
        assert!(!t.at_frame_boundary());
        let mut pos = 0;
        let rest = &s[1..6];
        assert!(matches!(
            t.poll_event(rest, &mut pos),
            Ok(Some(Event::Header { range, .. })) if range == (0..1)
        ));
        assert!(t.in_message());
        assert_eq!(t.payload_remaining(), 10);
        assert_eq!(
            t.poll_event(rest, &mut pos),
            Ok(Some(Event::Payload {
                range: 1..5,
                offset: 0
            }))
        );
        assert_eq!(t.poll_event(rest, &mut pos), Ok(None));
        assert!(!t.at_frame_boundary());
        let mut pos = 0;
        let tail = &s[6..];
        assert_eq!(
            t.poll_event(tail, &mut pos),
            Ok(Some(Event::Payload {
                range: 0..6,
                offset: 4
            }))
        );
        // The frame's end is due in this chunk even though every byte is consumed.
        assert!(t.at_frame_boundary());
        assert_eq!(
            t.poll_event(tail, &mut pos),
            Ok(Some(Event::FrameEnd {
                opcode: OpCode::Binary,
                fin: false
            }))
        );
        assert_eq!(t.poll_event(tail, &mut pos), Ok(None));
        assert!(t.in_message());
        let fin = frame(OpCode::Continuation, true, &[], None);
        let ev: Vec<_> = t.feed(&fin).collect();
        assert_eq!(ev.len(), 3);
        assert!(!t.in_message());
        assert_eq!(t.current().map(|h| h.opcode), Some(OpCode::Continuation));
        assert_eq!(t.error(), None);
    }

    #[test]
    fn unmask_and_validate_in_place() {
        // What a function endpoint does: unmask payload ranges in the recv buffer as they
        // come, validate text incrementally, never copy.
        let text = "κόσμε 😀 ".repeat(30);
        let mut stream = frame(OpCode::Text, false, &text.as_bytes()[..101], Some(KEY));
        stream.extend(frame(
            OpCode::Continuation,
            true,
            &text.as_bytes()[101..],
            Some(KEY),
        ));
        for chunk_len in [1, 3, 7, 64, 1000] {
            let mut t = FrameTracker::new(Role::Server, TrackerConfig::default());
            let mut v = Utf8Validator::new();
            let mut mask = None;
            let mut got = Vec::new();
            let mut done = false;
            for piece in stream.clone().chunks_mut(chunk_len) {
                let mut pos = 0;
                while let Some(ev) = t.poll_event(piece, &mut pos).unwrap() {
                    match ev {
                        Event::Header { header, .. } => mask = header.mask,
                        Event::Payload { range, offset } => {
                            let bytes = &mut piece[range];
                            if let Some(key) = mask {
                                apply_mask(bytes, key, (offset % 4) as usize);
                            }
                            v.feed(bytes).unwrap();
                            got.extend_from_slice(bytes);
                        }
                        Event::FrameEnd { .. } => {}
                        Event::MessageEnd { opcode, len } => {
                            assert_eq!((opcode, len), (OpCode::Text, text.len() as u64));
                            v.finish().unwrap();
                            done = true;
                        }
                    }
                }
            }
            assert!(done);
            assert_eq!(got, text.as_bytes(), "chunk {chunk_len}");
        }
    }
}
