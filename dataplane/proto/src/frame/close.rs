//! Close frames (RFC 6455 §5.5.1, §7.4): status codes, payload parsing, building.
//!
//! Pure. The `frames` relay reads the close frames that pass through (to log who closed and
//! why, and to reject invalid ones) and sends its own (1001 when a worker drains, 1002/1007/
//! 1009 from a [`super::FrameError`], 1008 from the firewall); the built-in functions answer
//! close with close.

use super::{FrameError, MAX_CONTROL_PAYLOAD, OpCode, encode_frame};

/// Close status code constants and the rule of which codes may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode;

impl CloseCode {
    /// 1000: normal closure.
    pub const NORMAL: u16 = 1000;
    /// 1001: the endpoint is going away (server shutdown, worker drain, page navigation).
    pub const GOING_AWAY: u16 = 1001;
    /// 1002: protocol error.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// 1003: a data type the endpoint cannot accept.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// 1005: no status code was present; never on the wire.
    pub const NO_STATUS: u16 = 1005;
    /// 1006: closed without a close frame; never on the wire.
    pub const ABNORMAL: u16 = 1006;
    /// 1007: data inconsistent with the message type (invalid UTF-8 in text).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// 1008: policy violation.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// 1009: message too big to process.
    pub const TOO_BIG: u16 = 1009;
    /// 1010: the client expected an extension the server did not negotiate.
    pub const MANDATORY_EXTENSION: u16 = 1010;
    /// 1011: unexpected condition on the server.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// 1012: service restart (IANA registry).
    pub const SERVICE_RESTART: u16 = 1012;
    /// 1013: try again later (IANA registry).
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// 1014: bad gateway: a gateway or proxy got an invalid response upstream (IANA registry).
    pub const BAD_GATEWAY: u16 = 1014;
    /// 1015: TLS handshake failure; never on the wire.
    pub const TLS_HANDSHAKE: u16 = 1015;

    /// Whether `code` may appear in a close frame.
    ///
    /// Valid: 1000-1003, 1007-1011, 1012-1014 (registered with IANA after RFC 6455: service
    /// restart, try again later, bad gateway; Autobahn 7.9.x does not list them as invalid),
    /// and 3000-4999 (libraries, frameworks, applications). Invalid: below 1000, 1004
    /// (reserved), 1005, 1006 and 1015 (local-only meanings), 1016-2999 (reserved for future
    /// RFCs) and 5000 and above.
    pub const fn is_valid_on_wire(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// Parses an unmasked close payload into its status code and reason.
///
/// `Ok(None)` for an empty payload (no status: report 1005 locally); `Ok(Some((code,
/// reason)))` for a valid one; `Err(CloseTooShort)` for a 1-byte payload,
/// `Err(InvalidCloseCode(code))` for a code that may not be on the wire (both 1002), and
/// `Err(InvalidUtf8)` (1007) if the reason is not UTF-8. The length limit (125) is the header
/// parser's job; this function accepts any length.
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<(u16, &str)>, FrameError> {
    match payload {
        [] => Ok(None),
        [_] => Err(FrameError::CloseTooShort),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !CloseCode::is_valid_on_wire(code) {
                return Err(FrameError::InvalidCloseCode(code));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| FrameError::InvalidUtf8)?;
            Ok(Some((code, reason)))
        }
    }
}

/// The longest prefix of `reason` that fits a close payload (123 bytes) and ends on a char
/// boundary.
fn clamp_reason(reason: &str) -> &str {
    let max = MAX_CONTROL_PAYLOAD - 2;
    if reason.len() <= max {
        return reason;
    }
    let mut end = max;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// Appends a complete close frame with `code` and `reason` to `out`.
///
/// The reason is cut to 123 bytes at a char boundary so the payload fits a control frame.
/// `mask` as for [`encode_frame`]: `None` toward a client, a fresh key toward an origin. The
/// code is written as given; the caller sends only codes for which
/// [`CloseCode::is_valid_on_wire`] holds.
pub fn write_close(code: u16, reason: &str, mask: Option<[u8; 4]>, out: &mut Vec<u8>) {
    let reason = clamp_reason(reason);
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + reason.len()].copy_from_slice(reason.as_bytes());
    encode_frame(OpCode::Close, true, &payload[..2 + reason.len()], mask, out);
}

/// A close frame from the server side (unmasked), e.g. 1001 to a client when draining.
///
/// See [`write_close`] for the reason limit.
pub fn build_close(code: u16, reason: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 2 + reason.len().min(123));
    write_close(code, reason, None, &mut out);
    out
}

/// A close frame from the client side (masked with `mask`), e.g. to an origin.
///
/// See [`write_close`] for the reason limit; use a fresh random `mask` per frame.
pub fn build_close_masked(code: u16, reason: &str, mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 2 + reason.len().min(123));
    write_close(code, reason, Some(mask), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::super::{apply_mask, parse_header};
    use super::*;

    #[test]
    fn wire_validity() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            assert!(CloseCode::is_valid_on_wire(code), "{code}");
        }
        for code in [1012, 1013, 1014] {
            assert!(CloseCode::is_valid_on_wire(code), "{code}");
        }
        // Autobahn 7.9.x invalid codes, plus the local-only ones and the ends of the range.
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!CloseCode::is_valid_on_wire(code), "{code}");
        }
    }

    #[test]
    fn payload_rules() {
        assert_eq!(parse_close_payload(&[]), Ok(None));
        assert_eq!(parse_close_payload(&[0x03]), Err(FrameError::CloseTooShort));
        assert_eq!(parse_close_payload(&[0x03, 0xE8]), Ok(Some((1000, ""))));
        assert_eq!(parse_close_payload(b"\x03\xe9bye"), Ok(Some((1001, "bye"))));
        assert_eq!(
            parse_close_payload(&[0x03, 0xED]),
            Err(FrameError::InvalidCloseCode(1005))
        );
        assert_eq!(
            parse_close_payload(&[0, 0]),
            Err(FrameError::InvalidCloseCode(0))
        );
        assert_eq!(
            parse_close_payload(b"\x03\xe8\xce\xba\xed\xa0\x80"),
            Err(FrameError::InvalidUtf8)
        );
        assert_eq!(FrameError::CloseTooShort.close_code(), 1002);
        assert_eq!(FrameError::InvalidCloseCode(1005).close_code(), 1002);
    }

    #[test]
    fn build_unmasked_and_masked() {
        let frame = build_close(CloseCode::GOING_AWAY, "draining");
        assert_eq!(&frame[..4], &[0x88, 10, 0x03, 0xE9]);
        let (h, n) = parse_header(&frame).unwrap().unwrap();
        assert_eq!(
            (h.opcode, h.fin, h.mask, h.payload_len),
            (OpCode::Close, true, None, 10)
        );
        assert_eq!(
            parse_close_payload(&frame[n..]),
            Ok(Some((1001, "draining")))
        );

        let key = [9, 8, 7, 6];
        let frame = build_close_masked(CloseCode::NORMAL, "", key);
        let (h, n) = parse_header(&frame).unwrap().unwrap();
        assert_eq!(h.mask, Some(key));
        let mut payload = frame[n..].to_vec();
        apply_mask(&mut payload, key, 0);
        assert_eq!(parse_close_payload(&payload), Ok(Some((1000, ""))));
    }

    #[test]
    fn long_reason_is_cut_on_a_char_boundary() {
        // 61 two-byte chars = 122 bytes fit; a 62nd would make 124 > 123.
        let reason = "é".repeat(80);
        let frame = build_close(CloseCode::POLICY_VIOLATION, &reason);
        let (h, n) = parse_header(&frame).unwrap().unwrap();
        assert!(h.payload_len <= 125);
        let (code, got) = parse_close_payload(&frame[n..]).unwrap().unwrap();
        assert_eq!((code, got), (1008, "é".repeat(61).as_str()));
        let ascii = "x".repeat(200);
        let frame = build_close(CloseCode::NORMAL, &ascii);
        assert_eq!(frame.len(), 2 + 125);
    }
}
