//! The `Sec-WebSocket-Key` / `Sec-WebSocket-Accept` pair of RFC 6455 §4.
//!
//! Pure functions: the handshake classifier ([`crate::handshake`]) validates the client's key
//! with [`is_valid_key`]; the ring driver computes the value the origin's 101 must carry with
//! [`accept_key`] and hands it to [`crate::response::parse_response`]. Nothing here touches a
//! socket.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha1::{Digest, Sha1};

/// The GUID RFC 6455 appends to the client's key before hashing.
pub const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Computes the `Sec-WebSocket-Accept` value for a client key.
///
/// Returns base64(SHA-1(`key` ++ [`WS_GUID`])), always 28 ASCII bytes. `key` is used as given
/// (pass the trimmed value, as [`crate::handshake::RequestKind::WebSocket`] holds it); it is
/// not validated here.
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WS_GUID.as_bytes());
    let digest = sha.finalize();
    let mut out = [0u8; 28];
    // INVARIANT: a SHA-1 digest is 20 bytes, and 20 bytes encode to exactly 28 padded base64
    // characters, so the output slice is always large enough. Nothing here depends on input.
    let written = STANDARD
        .encode_slice(digest, &mut out)
        .expect("20 bytes always encode to 28 base64 bytes");
    debug_assert_eq!(written, 28);
    out
}

/// Tells whether a `Sec-WebSocket-Key` header value is acceptable.
///
/// True iff, after trimming leading and trailing SP/HTAB, `value` is canonical padded base64
/// in the standard alphabet that decodes to exactly 16 bytes (that is, 22 characters then
/// `==`, with the unused low bits of the last character zero).
pub fn is_valid_key(value: &[u8]) -> bool {
    let value = trim_ows(value);
    // 16 bytes encode to 24 characters; checking the length first keeps the decode buffer
    // small and rejects long junk without decoding it.
    if value.len() != 24 {
        return false;
    }
    let mut out = [0u8; 18];
    matches!(STANDARD.decode_slice(value, &mut out), Ok(16))
}

/// Trims optional whitespace (SP, HTAB) from both ends of a header value.
pub(crate) fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6455_example() {
        assert_eq!(
            &accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn valid_keys() {
        assert!(is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(is_valid_key(b"  dGhlIHNhbXBsZSBub25jZQ==\t"));
        assert!(is_valid_key(b"AAAAAAAAAAAAAAAAAAAAAA=="));
        assert!(is_valid_key(b"+/+/+/+/+/+/+/+/+/+/+w=="));
    }

    #[test]
    fn invalid_keys() {
        // empty, short, long
        assert!(!is_valid_key(b""));
        assert!(!is_valid_key(b"   "));
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ="));
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ==="));
        // 16 bytes but unpadded
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ"));
        // decodes to 17 / 15 bytes
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZQAA="));
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25j"));
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZ0A="));
        // url-safe alphabet
        assert!(!is_valid_key(b"-_-_-_-_-_-_-_-_-_-_-w=="));
        // non-canonical trailing bits
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZR=="));
        // whitespace inside
        assert!(!is_valid_key(b"dGhlIHNhbXBs ZSBub25jZQ=="));
    }

    #[test]
    fn trims_only_ows() {
        assert_eq!(trim_ows(b" \t a b \t"), b"a b");
        assert_eq!(trim_ows(b"  "), b"");
        assert_eq!(trim_ows(b""), b"");
    }
}
