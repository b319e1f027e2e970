//! The WebSocket frame codec (RFC 6455 §5): headers, masking, close frames, UTF-8, message
//! tracking.
//!
//! Pure, like the rest of `wsedge-proto`: no I/O, no clock, no `unsafe`. Two users:
//!
//! - the ring driver's `frames` relay (dataplane/runtime), which follows frame boundaries while
//!   payload bytes pass through untouched: it feeds each received chunk to a
//!   [`FrameTracker`] and gets back header and payload *ranges* of that chunk, frame and message
//!   ends, and protocol errors with their close code. It never copies payload; it unmasks
//!   ([`apply_mask`]) and inspects only what it must (close frames, control frames, text for a
//!   function endpoint through [`Utf8Validator`]);
//! - the built-in functions (echo, broadcast), which build the frames they send with
//!   [`encode_frame`] and [`build_close`].
//!
//! A relay never needs to re-mask: the client's masked frames are valid as they are for an
//! origin (the proxy is a client there), and the origin's unmasked frames are valid for the
//! client. Masking matters only for frames the proxy originates ([`Role`] says which side it
//! plays).
//!
//! Layout: this module holds the header codec and the errors; [`mask`], [`utf8`], [`close`]
//! and [`tracker`] hold the rest, re-exported here.

pub mod close;
pub mod mask;
pub mod tracker;
pub mod utf8;

pub use close::{CloseCode, build_close, build_close_masked, parse_close_payload, write_close};
pub use mask::{apply_mask, apply_mask_simple};
pub use tracker::{Event, Events, FrameTracker, TrackerConfig};
pub use utf8::Utf8Validator;

/// Longest possible frame header: 2 bytes, an 8-byte length, a 4-byte masking key.
pub const MAX_HEADER_LEN: usize = 14;

/// Largest payload of a control frame (Close, Ping, Pong), RFC 6455 §5.5.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Largest payload length a frame may announce: the 64-bit form's most significant bit must
/// be 0 (RFC 6455 §5.2).
pub const MAX_PAYLOAD_LEN: u64 = i64::MAX as u64;

/// A frame's opcode (RFC 6455 §5.2); the reserved values 0x3-0x7 and 0xB-0xF have no variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpCode {
    /// 0x0: a later fragment of a fragmented message.
    Continuation = 0x0,
    /// 0x1: first (or only) frame of a text message (UTF-8 payload).
    Text = 0x1,
    /// 0x2: first (or only) frame of a binary message.
    Binary = 0x2,
    /// 0x8: connection close; payload empty or code + UTF-8 reason.
    Close = 0x8,
    /// 0x9: ping; the peer answers with a pong carrying the same payload.
    Ping = 0x9,
    /// 0xA: pong; answer to a ping, or an unsolicited heartbeat.
    Pong = 0xA,
}

impl OpCode {
    /// The opcode of a 4-bit value; `None` for reserved opcodes (and values above 0xF).
    #[inline]
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0x0 => Some(Self::Continuation),
            0x1 => Some(Self::Text),
            0x2 => Some(Self::Binary),
            0x8 => Some(Self::Close),
            0x9 => Some(Self::Ping),
            0xA => Some(Self::Pong),
            _ => None,
        }
    }

    /// The 4-bit wire value.
    #[inline]
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// Whether this is a control opcode (Close, Ping, Pong): at most 125 bytes of payload,
    /// never fragmented, allowed between the fragments of a data message.
    #[inline]
    pub const fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }

    /// Whether this is a data opcode (Continuation, Text, Binary).
    #[inline]
    pub const fn is_data(self) -> bool {
        !self.is_control()
    }
}

/// Which side of a WebSocket connection an endpoint plays, for masking rules (RFC 6455 §5.1).
///
/// Toward a browser the proxy is the [`Role::Server`]: frames it receives must be masked and
/// frames it sends must not be. Toward an origin it is the [`Role::Client`]: frames it
/// receives must be unmasked and frames it sends must be masked (fresh random key per frame;
/// the caller supplies it, this crate has no randomness).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// We are the server: the peer is a client, its frames are masked.
    Server,
    /// We are the client: the peer is a server, its frames are unmasked.
    Client,
}

/// Whether the parser accepts a payload length written in more bytes than needed.
///
/// RFC 6455 §5.2 says "the minimal number of bytes MUST be used"; a proxy may still choose to
/// be lenient toward peers that violate it, since the frame stays unambiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LengthRule {
    /// A non-minimal length is [`FrameError::NonMinimalLength`] (RFC behaviour, default).
    #[default]
    Minimal,
    /// A non-minimal length is accepted as its value.
    AllowNonMinimal,
}

/// A parsed frame header (RFC 6455 §5.2), everything before the payload.
///
/// INVARIANT (for headers from [`parse_header`]): `rsv <= 0b111`, `payload_len <=
/// MAX_PAYLOAD_LEN`, and control opcodes have `fin` set and `payload_len <= 125`. Headers built
/// by hand for [`write_header`] should respect the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    /// FIN: this is the final fragment of its message.
    pub fin: bool,
    /// RSV1..RSV3 as the low three bits (`0b100` is RSV1). Reported, not judged: the caller
    /// rejects non-zero bits unless an extension was negotiated.
    pub rsv: u8,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key if the MASK bit is set; `None` for an unmasked frame.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes (extension data included).
    pub payload_len: u64,
}

impl FrameHeader {
    /// Whether the MASK bit is set (a masking key follows the length).
    #[inline]
    pub const fn masked(&self) -> bool {
        self.mask.is_some()
    }

    /// Length of this header in its minimal encoding, as [`write_header`] writes it (2 to 14).
    #[inline]
    pub const fn encoded_len(&self) -> usize {
        let len = match self.payload_len {
            0..=125 => 2,
            126..=0xFFFF => 4,
            _ => 10,
        };
        if self.mask.is_some() { len + 4 } else { len }
    }
}

/// A violation of RFC 6455 framing, or of a limit, seen on one direction of a connection.
///
/// Each maps to the close code to send before closing ([`FrameError::close_code`]). Which side
/// was at fault is the caller's knowledge (the peer whose bytes were parsed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum FrameError {
    /// Opcode 0x3-0x7 or 0xB-0xF.
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// A control frame with FIN = 0.
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A control frame announcing more than 125 bytes of payload.
    #[error("control frame payload longer than 125 bytes")]
    ControlTooLong,
    /// A 64-bit payload length with its most significant bit set.
    #[error("64-bit payload length with the most significant bit set")]
    LengthOverflow,
    /// A payload length not written in the minimal number of bytes (only under
    /// [`LengthRule::Minimal`]).
    #[error("payload length not minimally encoded")]
    NonMinimalLength,
    /// RSV bits set that no negotiated extension allows (raised by [`FrameTracker`], not by
    /// [`parse_header`]).
    #[error("reserved bits {0:#05b} set without a negotiated extension")]
    ReservedBits(u8),
    /// An unmasked frame from a client (we are [`Role::Server`]).
    #[error("unmasked frame from a client")]
    Unmasked,
    /// A masked frame from a server (we are [`Role::Client`]).
    #[error("masked frame from a server")]
    Masked,
    /// A continuation frame with no fragmented message open.
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    /// A Text or Binary frame while a fragmented message is still open.
    #[error("new data message before the fragmented one ended")]
    UnfinishedMessage,
    /// A message (sum of its fragments) over the configured limit.
    #[error("message larger than the limit")]
    MessageTooBig,
    /// A close payload of exactly 1 byte (a code needs 2).
    #[error("close payload of 1 byte")]
    CloseTooShort,
    /// A close code that may not appear on the wire ([`CloseCode::is_valid_on_wire`]).
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
    /// Text (a text message or a close reason) that is not UTF-8.
    #[error("invalid UTF-8 in text")]
    InvalidUtf8,
}

impl FrameError {
    /// The close code to send for this error: 1007 for invalid UTF-8, 1009 for a message over
    /// the limit, 1002 (protocol error) for everything else.
    pub const fn close_code(self) -> u16 {
        match self {
            Self::InvalidUtf8 => CloseCode::INVALID_PAYLOAD,
            Self::MessageTooBig => CloseCode::TOO_BIG,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}

/// Parses a frame header at the start of `buf`, requiring a minimal length encoding.
///
/// Same as [`parse_header_with`] with [`LengthRule::Minimal`].
#[inline]
pub fn parse_header(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, FrameError> {
    parse_header_with(buf, LengthRule::Minimal)
}

/// Parses a frame header at the start of `buf`.
///
/// Returns `Ok(Some((header, n)))` where `buf[..n]` is the header and the payload starts at
/// `buf[n..]` (`n` is 2 to 14; the payload is not looked at), `Ok(None)` if `buf` holds only a
/// prefix of a header (read more; at most 13 bytes are ever needed before an answer), or the
/// first violation found. Errors are reported as soon as the bytes that prove them are there
/// (a reserved opcode with one byte in hand), in a fixed order (byte 0: opcode, then control
/// FIN; byte 1: control length; then the extended length), so every way of splitting the same
/// bytes yields the same error.
///
/// Checked: reserved opcodes, control frames with FIN = 0 or more than 125 bytes, a 64-bit
/// length with the MSB set, and (under [`LengthRule::Minimal`]) non-minimal lengths. Not
/// checked: RSV bits (reported in [`FrameHeader::rsv`]), masking direction ([`Role`]) and
/// fragmentation order, which need context ([`FrameTracker`] checks them).
#[inline]
pub fn parse_header_with(
    buf: &[u8],
    rule: LengthRule,
) -> Result<Option<(FrameHeader, usize)>, FrameError> {
    let Some(&b0) = buf.first() else {
        return Ok(None);
    };
    let fin = b0 & 0x80 != 0;
    let rsv = (b0 >> 4) & 0x7;
    let opcode = OpCode::from_u8(b0 & 0x0F).ok_or(FrameError::ReservedOpcode(b0 & 0x0F))?;
    if opcode.is_control() && !fin {
        return Err(FrameError::FragmentedControl);
    }
    let Some(&b1) = buf.get(1) else {
        return Ok(None);
    };
    let masked = b1 & 0x80 != 0;
    let len7 = b1 & 0x7F;
    if opcode.is_control() && len7 > MAX_CONTROL_PAYLOAD as u8 {
        return Err(FrameError::ControlTooLong);
    }
    let (payload_len, mut pos) = match len7 {
        126 => {
            let Some(ext) = buf.get(2..4) else {
                return Ok(None);
            };
            let len = u64::from(u16::from_be_bytes([ext[0], ext[1]]));
            if len < 126 && rule == LengthRule::Minimal {
                return Err(FrameError::NonMinimalLength);
            }
            (len, 4)
        }
        127 => {
            let Some(ext) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(ext);
            let len = u64::from_be_bytes(bytes);
            if len > MAX_PAYLOAD_LEN {
                return Err(FrameError::LengthOverflow);
            }
            if len <= 0xFFFF && rule == LengthRule::Minimal {
                return Err(FrameError::NonMinimalLength);
            }
            (len, 10)
        }
        short => (u64::from(short), 2),
    };
    let mask = if masked {
        let Some(key) = buf.get(pos..pos + 4) else {
            return Ok(None);
        };
        pos += 4;
        Some([key[0], key[1], key[2], key[3]])
    } else {
        None
    };
    let header = FrameHeader {
        fin,
        rsv,
        opcode,
        mask,
        payload_len,
    };
    Ok(Some((header, pos)))
}

/// Writes `h` in its minimal encoding into `out`; returns the number of bytes written.
///
/// `out[..n]` is the header (`n == h.encoded_len()`, 2 to 14). `rsv` is masked to three bits.
/// The caller keeps the invariants of [`FrameHeader`]: a `payload_len` above
/// [`MAX_PAYLOAD_LEN`] or a control frame over 125 bytes or without FIN would be written as
/// asked and rejected by a conforming peer.
pub fn write_header(h: &FrameHeader, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
    debug_assert!(
        h.payload_len <= MAX_PAYLOAD_LEN,
        "payload length above 2^63 - 1"
    );
    out[0] = (u8::from(h.fin) << 7) | ((h.rsv & 0x7) << 4) | h.opcode.as_u8();
    let mask_bit = if h.mask.is_some() { 0x80 } else { 0 };
    let mut pos = match h.payload_len {
        // The match arms bound the casts: each length fits the field it is written to.
        len @ 0..=125 => {
            out[1] = mask_bit | len as u8;
            2
        }
        len @ 126..=0xFFFF => {
            out[1] = mask_bit | 126;
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        len => {
            out[1] = mask_bit | 127;
            out[2..10].copy_from_slice(&len.to_be_bytes());
            10
        }
    };
    if let Some(key) = h.mask {
        out[pos..pos + 4].copy_from_slice(&key);
        pos += 4;
    }
    pos
}

/// Appends one complete frame (header + payload) to `out`, for frames the proxy originates.
///
/// RSV bits are 0. With `mask = Some(key)` the MASK bit is set and the payload is masked with
/// `key` as it is copied (client role: frames to an origin; use a fresh random key per frame);
/// with `None` it is copied as is (server role: frames to a client). The caller keeps the
/// control-frame rules (FIN set, payload at most 125 bytes) and, for Text, UTF-8.
pub fn encode_frame(
    opcode: OpCode,
    fin: bool,
    payload: &[u8],
    mask: Option<[u8; 4]>,
    out: &mut Vec<u8>,
) {
    let header = FrameHeader {
        fin,
        rsv: 0,
        opcode,
        mask,
        payload_len: payload.len() as u64,
    };
    let mut head = [0u8; MAX_HEADER_LEN];
    let n = write_header(&header, &mut head);
    out.reserve(n + payload.len());
    out.extend_from_slice(&head[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[start..], key, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(fin: bool, opcode: OpCode, mask: Option<[u8; 4]>, payload_len: u64) -> FrameHeader {
        FrameHeader {
            fin,
            rsv: 0,
            opcode,
            mask,
            payload_len,
        }
    }

    fn roundtrip(h: FrameHeader, expect_len: usize) {
        let mut out = [0u8; MAX_HEADER_LEN];
        let n = write_header(&h, &mut out);
        assert_eq!(n, expect_len, "{h:?}");
        assert_eq!(n, h.encoded_len());
        assert_eq!(parse_header(&out[..n]), Ok(Some((h, n))));
        // Every strict prefix is incomplete, never an error.
        for cut in 0..n {
            assert_eq!(parse_header(&out[..cut]), Ok(None), "{h:?} cut {cut}");
        }
        // Trailing payload bytes are not consumed.
        let mut long = out[..n].to_vec();
        long.extend_from_slice(&[0xAB; 20]);
        assert_eq!(parse_header(&long), Ok(Some((h, n))));
    }

    #[test]
    fn length_forms_and_boundaries() {
        let key = Some([1, 2, 3, 4]);
        for (len, size) in [
            (0u64, 2usize),
            (1, 2),
            (125, 2),
            (126, 4),
            (127, 4),
            (65535, 4),
            (65536, 10),
            (1 << 32, 10),
            (MAX_PAYLOAD_LEN, 10),
        ] {
            roundtrip(hdr(true, OpCode::Binary, None, len), size);
            roundtrip(hdr(false, OpCode::Text, key, len), size + 4);
            roundtrip(hdr(true, OpCode::Continuation, key, len), size + 4);
        }
        for op in [OpCode::Close, OpCode::Ping, OpCode::Pong] {
            roundtrip(hdr(true, op, None, 0), 2);
            roundtrip(hdr(true, op, key, 125), 6);
        }
    }

    #[test]
    fn exact_bytes() {
        // RFC 6455 §5.7: unmasked "Hello" and masked "Hello".
        assert_eq!(
            parse_header(&[0x81, 0x05, 0x48]),
            Ok(Some((hdr(true, OpCode::Text, None, 5), 2)))
        );
        assert_eq!(
            parse_header(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d]),
            Ok(Some((
                hdr(true, OpCode::Text, Some([0x37, 0xfa, 0x21, 0x3d]), 5),
                6
            )))
        );
        // 256 bytes binary, 16-bit form; 64 KiB binary, 64-bit form.
        assert_eq!(
            parse_header(&[0x82, 0x7E, 0x01, 0x00]),
            Ok(Some((hdr(true, OpCode::Binary, None, 256), 4)))
        );
        assert_eq!(
            parse_header(&[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]),
            Ok(Some((hdr(true, OpCode::Binary, None, 65536), 10)))
        );
        // RSV bits are reported.
        let (h, _) = parse_header(&[0xF2, 0x00]).unwrap().unwrap();
        assert_eq!(h.rsv, 0b111);
        let (h, _) = parse_header(&[0xC1, 0x00]).unwrap().unwrap();
        assert_eq!(h.rsv, 0b100);
        assert!(!h.masked());
    }

    #[test]
    fn errors() {
        for op in (0x3..=0x7).chain(0xB..=0xF) {
            assert_eq!(
                parse_header(&[0x80 | op]),
                Err(FrameError::ReservedOpcode(op))
            );
            assert_eq!(
                parse_header(&[op, 0x80]),
                Err(FrameError::ReservedOpcode(op))
            );
        }
        for op in [0x8, 0x9, 0xA] {
            assert_eq!(parse_header(&[op]), Err(FrameError::FragmentedControl));
            assert_eq!(
                parse_header(&[0x80 | op, 126]),
                Err(FrameError::ControlTooLong)
            );
            assert_eq!(
                parse_header(&[0x80 | op, 0xFF]),
                Err(FrameError::ControlTooLong)
            );
            assert!(parse_header(&[0x80 | op, 125]).unwrap().is_some());
        }
        // Non-minimal: 16-bit form for < 126, 64-bit form for <= 65535.
        assert_eq!(
            parse_header(&[0x82, 126, 0, 125]),
            Err(FrameError::NonMinimalLength)
        );
        assert_eq!(
            parse_header(&[0x82, 126, 0, 0]),
            Err(FrameError::NonMinimalLength)
        );
        let ext64 = |len: u64| {
            let mut b = vec![0x82, 127];
            b.extend_from_slice(&len.to_be_bytes());
            b
        };
        assert_eq!(
            parse_header(&ext64(65535)),
            Err(FrameError::NonMinimalLength)
        );
        assert_eq!(parse_header(&ext64(5)), Err(FrameError::NonMinimalLength));
        assert_eq!(
            parse_header(&ext64(1 << 63)),
            Err(FrameError::LengthOverflow)
        );
        assert_eq!(
            parse_header(&ext64(u64::MAX)),
            Err(FrameError::LengthOverflow)
        );
        // Lenient rule accepts non-minimal lengths, never the MSB.
        let lenient = LengthRule::AllowNonMinimal;
        assert_eq!(
            parse_header_with(&ext64(5), lenient),
            Ok(Some((hdr(true, OpCode::Binary, None, 5), 10)))
        );
        assert_eq!(
            parse_header_with(&[0x82, 126, 0, 7], lenient),
            Ok(Some((hdr(true, OpCode::Binary, None, 7), 4)))
        );
        assert_eq!(
            parse_header_with(&ext64(1 << 63), lenient),
            Err(FrameError::LengthOverflow)
        );
        // Close codes of the errors.
        assert_eq!(FrameError::InvalidUtf8.close_code(), 1007);
        assert_eq!(FrameError::MessageTooBig.close_code(), 1009);
        assert_eq!(FrameError::Unmasked.close_code(), 1002);
        assert_eq!(FrameError::NonMinimalLength.close_code(), 1002);
    }

    #[test]
    fn split_headers_byte_by_byte_give_same_answer() {
        let samples: Vec<Vec<u8>> = vec![
            vec![0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d],
            vec![0x02, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 9, 8, 7, 6],
            vec![0x82, 0x7E, 0xFF, 0xFF],
            vec![0x82, 126, 0, 3],
            vec![0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0],
            vec![0x09, 0x00],
            vec![0x89, 0x7E, 0x00, 0x00],
            vec![0x83, 0x00],
        ];
        for bytes in samples {
            let full = parse_header(&bytes);
            let mut first_answer = None;
            for cut in 0..=bytes.len() {
                match parse_header(&bytes[..cut]) {
                    Ok(None) => assert!(first_answer.is_none(), "{bytes:?} cut {cut}"),
                    other => {
                        first_answer.get_or_insert(cut);
                        assert_eq!(other, full, "{bytes:?} cut {cut}");
                    }
                }
            }
            assert!(first_answer.is_some());
        }
    }

    #[test]
    fn encode_frame_masked_and_unmasked() {
        let mut out = Vec::new();
        encode_frame(OpCode::Text, true, b"Hello", None, &mut out);
        assert_eq!(out, [0x81, 0x05, b'H', b'e', b'l', b'l', b'o']);
        out.clear();
        let key = [0x37, 0xfa, 0x21, 0x3d];
        encode_frame(OpCode::Text, true, b"Hello", Some(key), &mut out);
        assert_eq!(
            out,
            [
                0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58
            ]
        );
        out.clear();
        let big = vec![7u8; 70_000];
        encode_frame(OpCode::Binary, false, &big, Some(key), &mut out);
        let (h, n) = parse_header(&out).unwrap().unwrap();
        assert_eq!(h, hdr(false, OpCode::Binary, Some(key), 70_000));
        assert_eq!(n, 14);
        let mut payload = out[n..].to_vec();
        apply_mask(&mut payload, key, 0);
        assert_eq!(payload, big);
    }
}
