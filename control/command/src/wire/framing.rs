//! Framing: a 4-byte big-endian length, then that many bytes of JSON, the length checked
//! against [`MAX_FRAME`] before anything is allocated; and the envelope codec on top
//! ([`send`], [`decode_request`], [`decode_response`]). Blocking, over any `Read`/`Write`.

use std::io::{self, Read, Write};

use serde::Serialize;

use super::messages::{Envelope, ErrorKind, PROTOCOL_VERSION, Request, Response};

/// The largest frame body accepted, in bytes (a configuration is a few KiB).
pub const MAX_FRAME: usize = 4 * 1024 * 1024;

/// Why a frame could not be read, written or decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection between frames.
    #[error("connection closed")]
    Closed,
    #[error("truncated frame: the connection closed after {got} of {want} bytes")]
    Truncated { got: usize, want: usize },
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("protocol version {0} is not supported (this build speaks {PROTOCOL_VERSION})")]
    Version(u16),
    #[error("response id {got} does not match request id {want}")]
    IdMismatch { got: u64, want: u64 },
}

impl WireError {
    /// Whether the error came from a read or write timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, WireError::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }
}

/// Reads exactly `buf.len()` bytes; `Ok(n < len)` only at end of stream.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads one frame body. The announced length is checked against `max` before the body is
/// allocated; a stream that ends inside a frame is [`WireError::Truncated`].
pub fn read_frame(r: &mut impl Read, max: usize) -> Result<Vec<u8>, WireError> {
    let mut len_bytes = [0u8; 4];
    match read_full(r, &mut len_bytes)? {
        0 => return Err(WireError::Closed),
        4 => {}
        got => return Err(WireError::Truncated { got, want: 4 }),
    }
    let len = u32::from_be_bytes(len_bytes) as usize;
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    let got = read_full(r, &mut body)?;
    if got < len {
        return Err(WireError::Truncated {
            got: got + 4,
            want: len + 4,
        });
    }
    Ok(body)
}

/// Writes one frame (length prefix and body in one write).
pub fn write_frame(w: &mut impl Write, body: &[u8]) -> Result<(), WireError> {
    if body.len() > MAX_FRAME {
        return Err(WireError::TooLarge {
            len: body.len(),
            max: MAX_FRAME,
        });
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// Encodes and writes one envelope.
pub fn send<B: Serialize>(w: &mut impl Write, envelope: &Envelope<B>) -> Result<(), WireError> {
    let body = serde_json::to_vec(envelope).map_err(|e| WireError::Malformed(e.to_string()))?;
    write_frame(w, &body)
}

/// A request that could not be decoded, with what could be read of its envelope (so the
/// error reply can carry the request's id).
#[derive(Debug)]
pub struct DecodeError {
    pub id: Option<u64>,
    pub kind: ErrorKind,
    pub message: String,
}

/// Decodes a request frame body. Garbage, a missing field, an unknown `type` and another
/// protocol version are all errors the server answers (with the request's id when it could
/// be read).
pub fn decode_request(body: &[u8]) -> Result<Envelope<Request>, DecodeError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| DecodeError {
        id: None,
        kind: ErrorKind::BadRequest,
        message: format!("not a JSON message: {e}"),
    })?;
    let id = value.get("id").and_then(serde_json::Value::as_u64);
    let version = value.get("version").and_then(serde_json::Value::as_u64);
    match version {
        Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(DecodeError {
                id,
                kind: ErrorKind::UnsupportedVersion,
                message: format!(
                    "protocol version {v} is not supported (this build speaks {PROTOCOL_VERSION})"
                ),
            });
        }
        None => {
            return Err(DecodeError {
                id,
                kind: ErrorKind::BadRequest,
                message: "the envelope has no numeric \"version\"".to_owned(),
            });
        }
    }
    serde_json::from_value(value).map_err(|e| DecodeError {
        id,
        kind: ErrorKind::BadRequest,
        message: format!("not a valid request: {e}"),
    })
}

/// Decodes a response frame body.
pub fn decode_response(body: &[u8]) -> Result<Envelope<Response>, WireError> {
    let envelope: Envelope<Response> =
        serde_json::from_slice(body).map_err(|e| WireError::Malformed(e.to_string()))?;
    if envelope.version != PROTOCOL_VERSION {
        return Err(WireError::Version(envelope.version));
    }
    Ok(envelope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection_id::ConnectionId;
    use std::io::Cursor;

    fn frame_of(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, body).expect("write");
        out
    }

    /// A reader that fails the test if more than the length prefix is read.
    struct OnlyPrefix {
        data: [u8; 4],
        pos: usize,
    }

    impl Read for OnlyPrefix {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            assert!(self.pos < 4, "read past the length prefix");
            let n = buf.len().min(4 - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn oversize_length_rejected_before_reading_the_body() {
        let mut r = OnlyPrefix {
            data: u32::MAX.to_be_bytes(),
            pos: 0,
        };
        match read_frame(&mut r, MAX_FRAME) {
            Err(WireError::TooLarge { len, max }) => {
                assert_eq!(len, u32::MAX as usize);
                assert_eq!(max, MAX_FRAME);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn truncated_frames() {
        assert!(matches!(
            read_frame(&mut Cursor::new(Vec::new()), MAX_FRAME),
            Err(WireError::Closed)
        ));
        assert!(matches!(
            read_frame(&mut Cursor::new(vec![0, 0]), MAX_FRAME),
            Err(WireError::Truncated { got: 2, want: 4 })
        ));
        let mut frame = frame_of(br#"{"version":1}"#);
        frame.truncate(8);
        assert!(matches!(
            read_frame(&mut Cursor::new(frame), MAX_FRAME),
            Err(WireError::Truncated { got: 8, want: 17 })
        ));
    }

    #[test]
    fn bad_requests_are_errors_with_the_id_when_known() {
        let e = decode_request(b"\x00\xffgarbage").expect_err("garbage");
        assert_eq!((e.id, e.kind), (None, ErrorKind::BadRequest));
        let e = decode_request(br#"{"version":2,"id":4,"body":{"type":"self_destruct"}}"#)
            .expect_err("unknown type");
        assert_eq!((e.id, e.kind), (Some(4), ErrorKind::BadRequest));
        assert!(e.message.contains("self_destruct"), "{}", e.message);
        let e = decode_request(br#"{"version":9,"id":5,"body":{"type":"status"}}"#)
            .expect_err("version");
        assert_eq!((e.id, e.kind), (Some(5), ErrorKind::UnsupportedVersion));
        let e = decode_request(br#"{"version":2,"id":6,"body":{"type":"kill"}}"#)
            .expect_err("missing field");
        assert_eq!((e.id, e.kind), (Some(6), ErrorKind::BadRequest));
        let ok = decode_request(br#"{"version":2,"id":7,"body":{"type":"status","extra":1}}"#)
            .expect("unknown fields are ignored");
        assert_eq!(ok.body, Request::Status);
    }

    #[test]
    fn protocol_1_peers_are_told_the_version_changed() {
        let e = decode_request(br#"{"version":1,"id":5,"body":{"type":"status"}}"#)
            .expect_err("version 1");
        assert_eq!((e.id, e.kind), (Some(5), ErrorKind::UnsupportedVersion));
        assert!(e.message.contains("this build speaks 2"), "{}", e.message);
    }

    #[test]
    fn kill_takes_the_text_id_or_the_old_integer() {
        let id = ConnectionId::new(1, 42, 7);
        for body in [
            r#"{"version":2,"id":1,"body":{"type":"kill","id":"1-42-7"}}"#.to_owned(),
            format!(
                r#"{{"version":2,"id":1,"body":{{"type":"kill","id":{}}}}}"#,
                id.to_raw()
            ),
        ] {
            let decoded = decode_request(body.as_bytes()).expect(&body);
            assert_eq!(decoded.body, Request::Kill { id });
        }
        let e = decode_request(br#"{"version":2,"id":2,"body":{"type":"kill","id":"1-42"}}"#)
            .expect_err("bad id");
        assert_eq!((e.id, e.kind), (Some(2), ErrorKind::BadRequest));
        assert!(e.message.contains("not a connection id"), "{}", e.message);
        let json = serde_json::to_string(&Response::Killed { id }).expect("json");
        assert_eq!(json, r#"{"type":"killed","id":"1-42-7"}"#);
    }

    #[test]
    fn config_hash_is_short_stable_and_content_only() {
        let a = super::super::config_hash("[[route]]\nname = \"a\"\n");
        assert_eq!(a.len(), 12);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(a, super::super::config_hash("[[route]]\nname = \"a\"\n"));
        assert_ne!(a, super::super::config_hash("[[route]]\nname = \"b\"\n"));
        // SHA-1 of the empty string starts da39a3ee5e6b.
        assert_eq!(super::super::config_hash(""), "da39a3ee5e6b");
    }

    #[test]
    fn unknown_error_kind_from_a_newer_peer() {
        let body = br#"{"version":2,"id":1,"body":{"type":"error","kind":"quota","message":"m"}}"#;
        let decoded = decode_response(body).expect("decode");
        assert_eq!(
            decoded.body,
            Response::error(ErrorKind::Unknown, "m"),
            "unknown kinds decode as Unknown"
        );
    }
}
