//! The origin's response head: is it a valid 101 (tunnel) or something to relay and close?
//!
//! Step 8 of a connection's life (docs/architecture.md): after forwarding the rewritten head,
//! the ring driver feeds the origin's bytes to [`parse_response`] until it returns a
//! [`Response`]. `upgraded: true` means relay both ways; the bytes after `head_len` are early
//! frames from the origin and go to the client right after the head. A [`ResponseError`] is
//! answered with 502 and never becomes a tunnel. Pure: no sockets, no clock.

use std::mem::MaybeUninit;

use crate::accept::trim_ows;
use crate::body::{BodyEnd, ChunkedBody};
use crate::handshake::{HeadLimits, MAX_HEADERS_CAP, has_token};

/// What matters of the origin's response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// The status code as sent (100..=999 per httparse).
    pub status: u16,
    /// Bytes of the buffer taken by the head, blank line included; what follows belongs to
    /// the origin's stream (body, or WebSocket frames after a 101) and must be relayed.
    pub head_len: usize,
    /// True only for a 101 that completes the client's WebSocket upgrade: `Upgrade: websocket`,
    /// `Connection: upgrade` and the expected `Sec-WebSocket-Accept`.
    pub upgraded: bool,
    /// Where the body of a response that is not a 101 ends (RFC 9112 §6.3), as the head
    /// declares it for a GET; `None` for no body (1xx, 204, 304, a 101). The answer to a HEAD
    /// request has no body whatever this says.
    pub body: Option<BodyEnd>,
}

/// Why a 101 from the origin cannot become a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum BadUpgradeReason {
    /// A 101 answering a request that was not a WebSocket upgrade.
    #[error("101 to a request that asked for no upgrade")]
    NotRequested,
    /// A 101 over HTTP/1.0.
    #[error("101 over HTTP/1.0")]
    Http10,
    /// No `Upgrade` header with the token `websocket`.
    #[error("101 without Upgrade: websocket")]
    MissingUpgrade,
    /// No `Connection` header with the token `upgrade`.
    #[error("101 without Connection: upgrade")]
    MissingConnection,
    /// No `Sec-WebSocket-Accept`.
    #[error("101 without Sec-WebSocket-Accept")]
    MissingAccept,
    /// A `Sec-WebSocket-Accept` other than the expected value, or more than one.
    #[error("101 with a wrong Sec-WebSocket-Accept")]
    WrongAccept,
}

impl BadUpgradeReason {
    /// A snake_case label for counters and the access log.
    pub fn reason(self) -> &'static str {
        match self {
            BadUpgradeReason::NotRequested => "origin_bad_upgrade_not_requested",
            BadUpgradeReason::Http10 => "origin_bad_upgrade_http10",
            BadUpgradeReason::MissingUpgrade => "origin_bad_upgrade_missing_upgrade",
            BadUpgradeReason::MissingConnection => "origin_bad_upgrade_missing_connection",
            BadUpgradeReason::MissingAccept => "origin_bad_upgrade_missing_accept",
            BadUpgradeReason::WrongAccept => "origin_bad_upgrade_wrong_accept",
        }
    }
}

/// Why the origin's response head is unusable; the proxy answers 502 and closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ResponseError {
    /// httparse refused the head.
    #[error("malformed response head from origin")]
    Malformed,
    /// The head is longer than `max_head_bytes` or has more than `max_headers` lines.
    #[error("response head from origin too large")]
    TooLarge,
    /// A 101 that does not complete the client's WebSocket upgrade.
    #[error("bad upgrade from origin: {0}")]
    BadUpgrade(BadUpgradeReason),
}

impl ResponseError {
    /// A snake_case label for counters and the access log.
    pub fn reason(self) -> &'static str {
        match self {
            ResponseError::Malformed => "origin_malformed_response",
            ResponseError::TooLarge => "origin_response_too_large",
            ResponseError::BadUpgrade(r) => r.reason(),
        }
    }

    /// The status the proxy answers the client with: always 502.
    pub fn status(self) -> u16 {
        502
    }
}

impl From<BadUpgradeReason> for ResponseError {
    fn from(r: BadUpgradeReason) -> Self {
        ResponseError::BadUpgrade(r)
    }
}

/// Parses the origin's response head at the start of `buf` and checks an upgrade.
///
/// `expected_accept` is `Some(accept_key(client_key))` when the forwarded request was a
/// WebSocket upgrade, `None` for a plain request.
/// - `Ok(None)`: incomplete and `buf.len() < limits.max_head_bytes`; read more.
/// - `Err(TooLarge)`: no complete head within `max_head_bytes`, or too many headers.
/// - `Err(Malformed)`: httparse refused the head.
/// - `Err(BadUpgrade(_))`: a 101 that is not a valid answer to our upgrade (or to no
///   upgrade at all); answer 502, never tunnel.
/// - `Ok(Some(r))` with `r.upgraded`: a valid 101; tunnel, starting with `buf[r.head_len..]`.
/// - `Ok(Some(r))` otherwise: any other status (1xx included), relayed as is.
pub fn parse_response(
    buf: &[u8],
    limits: &HeadLimits,
    expected_accept: Option<&[u8; 28]>,
) -> Result<Option<Response>, ResponseError> {
    // Uninitialised storage: zeroing 256 headers would cost more than parsing a typical head.
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_CAP];
    let max_headers = limits.max_headers.min(MAX_HEADERS_CAP);
    let mut parsed = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut storage[..max_headers],
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < limits.max_head_bytes => return Ok(None),
        Ok(httparse::Status::Partial) => return Err(ResponseError::TooLarge),
        Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooLarge),
        Err(_) => return Err(ResponseError::Malformed),
    };
    if head_len > limits.max_head_bytes {
        return Err(ResponseError::TooLarge);
    }
    let (Some(status), Some(minor_version)) = (parsed.code, parsed.version) else {
        return Err(ResponseError::Malformed);
    };
    // httparse takes any three digits; statuses below 100 do not exist.
    if status < 100 {
        return Err(ResponseError::Malformed);
    }

    if status != 101 {
        return Ok(Some(Response {
            status,
            head_len,
            upgraded: false,
            body: body_framing(status, parsed.headers)?,
        }));
    }

    let Some(expected) = expected_accept else {
        return Err(BadUpgradeReason::NotRequested.into());
    };
    if minor_version != 1 {
        return Err(BadUpgradeReason::Http10.into());
    }
    let mut upgrade = false;
    let mut connection = false;
    let mut accept: Option<&[u8]> = None;
    let mut accept_count = 0u32;
    for h in parsed.headers.iter() {
        let value = trim_ows(h.value);
        if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade |= has_token(value, b"websocket");
        } else if h.name.eq_ignore_ascii_case("connection") {
            connection |= has_token(value, b"upgrade");
        } else if h.name.eq_ignore_ascii_case("sec-websocket-accept") {
            accept_count += 1;
            accept = Some(value);
        }
    }
    if !upgrade {
        return Err(BadUpgradeReason::MissingUpgrade.into());
    }
    if !connection {
        return Err(BadUpgradeReason::MissingConnection.into());
    }
    match accept {
        None => Err(BadUpgradeReason::MissingAccept.into()),
        Some(a) if accept_count == 1 && a == expected.as_slice() => Ok(Some(Response {
            status,
            head_len,
            upgraded: true,
            body: None,
        })),
        Some(_) => Err(BadUpgradeReason::WrongAccept.into()),
    }
}

/// How the body of a response with `status` (not 101) ends, from its headers (RFC 9112
/// §6.3): none for 1xx, 204 and 304; chunked when that is the final transfer coding; until the
/// origin closes for any other coding; else `Content-Length`; else until close. A malformed or
/// conflicting `Content-Length` is refused: relaying it would let the two ends disagree on
/// where the response ends.
fn body_framing(
    status: u16,
    headers: &[httparse::Header<'_>],
) -> Result<Option<BodyEnd>, ResponseError> {
    if status < 200 || status == 204 || status == 304 {
        return Ok(None);
    }
    let mut length: Option<u64> = None;
    let mut coding: Option<&[u8]> = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            coding = Some(trim_ows(h.value));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(trim_ows(h.value)).ok_or(ResponseError::Malformed)?;
            if length.is_some_and(|m| m != n) {
                return Err(ResponseError::Malformed);
            }
            length = Some(n);
        }
    }
    Ok(Some(match (coding, length) {
        (Some(te), _) => {
            let last = te.rsplit(|&b| b == b',').next().map(trim_ows);
            if last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")) {
                BodyEnd::Chunked(ChunkedBody::default())
            } else {
                BodyEnd::UntilClose
            }
        }
        (None, Some(0)) => return Ok(None),
        (None, Some(n)) => BodyEnd::Length(n),
        (None, None) => BodyEnd::UntilClose,
    }))
}

/// A `Content-Length` value: decimal digits fitting in u64 (a list of equal values, which
/// RFC 9110 §8.6 allows a recipient to accept, is taken as one).
fn parse_length(value: &[u8]) -> Option<u64> {
    let mut result = None;
    for part in value.split(|&b| b == b',') {
        let part = trim_ows(part);
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = std::str::from_utf8(part).ok()?.parse::<u64>().ok()?;
        if result.is_some_and(|m| m != n) {
            return None;
        }
        result = Some(n);
    }
    result
}

/// The head of a response the proxy relays and then ends the exchange after (RFC 9112 §9.6):
/// the same status line and headers, without `Connection` and `Keep-Alive`, with
/// `Connection: close`. `head` is a complete response head that [`parse_response`] accepted.
pub fn closing_head(head: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len() + 19);
    let mut lines = head.split(|&b| b == b'\n');
    if let Some(status_line) = lines.next() {
        out.extend_from_slice(status_line);
        out.push(b'\n');
    }
    for line in lines {
        let text = line.strip_suffix(b"\r").unwrap_or(line);
        if text.is_empty() {
            break;
        }
        let name = text.split(|&b| b == b':').next().unwrap_or(text);
        let name = trim_ows(name);
        if name.eq_ignore_ascii_case(b"connection") || name.eq_ignore_ascii_case(b"keep-alive") {
            continue;
        }
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accept::accept_key;

    const ACCEPT: &[u8; 28] = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    const GOOD_101: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\
        Upgrade: websocket\r\n\
        Connection: Upgrade\r\n\
        Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
        \r\n";

    fn parse(buf: &[u8], accept: Option<&[u8; 28]>) -> Result<Option<Response>, ResponseError> {
        parse_response(buf, &HeadLimits::default(), accept)
    }

    fn bad(buf: &[u8]) -> BadUpgradeReason {
        match parse(buf, Some(ACCEPT)) {
            Err(ResponseError::BadUpgrade(r)) => r,
            other => panic!("expected a bad upgrade, got {other:?}"),
        }
    }

    fn resp(lines: &[&str]) -> Vec<u8> {
        let mut v = b"HTTP/1.1 101 Switching Protocols\r\n".to_vec();
        for l in lines {
            v.extend_from_slice(l.as_bytes());
            v.extend_from_slice(b"\r\n");
        }
        v.extend_from_slice(b"\r\n");
        v
    }

    #[test]
    fn expected_accept_matches_rfc_example() {
        assert_eq!(&accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), ACCEPT);
    }

    #[test]
    fn good_101() {
        assert_eq!(
            parse(GOOD_101, Some(ACCEPT)),
            Ok(Some(Response {
                status: 101,
                head_len: GOOD_101.len(),
                upgraded: true,
                body: None,
            }))
        );
        // Case, lists and OWS in the header values.
        let buf = resp(&[
            "upgrade: WebSocket",
            "CONNECTION: keep-alive,  upgrade",
            "Sec-WebSocket-Accept:   s3pPLMBiTxaQ9kYGzzhZRbK+xOo=  ",
            "Sec-WebSocket-Protocol: chat",
        ]);
        assert!(matches!(
            parse(&buf, Some(ACCEPT)),
            Ok(Some(Response { upgraded: true, .. }))
        ));
    }

    #[test]
    fn bytes_after_101_are_not_consumed() {
        let mut buf = GOOD_101.to_vec();
        buf.extend_from_slice(b"\x81\x05hello\x89\x00");
        let r = match parse(&buf, Some(ACCEPT)) {
            Ok(Some(r)) => r,
            other => panic!("{other:?}"),
        };
        assert!(r.upgraded);
        assert_eq!(r.head_len, GOOD_101.len());
        assert_eq!(&buf[r.head_len..], b"\x81\x05hello\x89\x00");
    }

    #[test]
    fn wrong_accept() {
        let buf = resp(&[
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo",
        ]);
        assert_eq!(bad(&buf), BadUpgradeReason::WrongAccept);
        // Accept is case-sensitive base64.
        let buf = resp(&[
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Accept: S3PPLMBITXAQ9KYGZZHZRBK+XOO=",
        ]);
        assert_eq!(bad(&buf), BadUpgradeReason::WrongAccept);
        // A second Accept, even a correct one.
        let mut lines = vec![
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
        ];
        lines.push("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(bad(&resp(&lines)), BadUpgradeReason::WrongAccept);
        // Another key's accept.
        let other = accept_key(b"AAAAAAAAAAAAAAAAAAAAAA==");
        assert_eq!(
            parse(GOOD_101, Some(&other)),
            Err(ResponseError::BadUpgrade(BadUpgradeReason::WrongAccept))
        );
    }

    #[test]
    fn missing_headers() {
        let buf = resp(&[
            "Connection: Upgrade",
            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
        ]);
        assert_eq!(bad(&buf), BadUpgradeReason::MissingUpgrade);
        let buf = resp(&[
            "Upgrade: h2c",
            "Connection: Upgrade",
            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
        ]);
        assert_eq!(bad(&buf), BadUpgradeReason::MissingUpgrade);
        let buf = resp(&[
            "Upgrade: websocket",
            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
        ]);
        assert_eq!(bad(&buf), BadUpgradeReason::MissingConnection);
        let buf = resp(&[
            "Upgrade: websocket",
            "Connection: keep-alive",
            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
        ]);
        assert_eq!(bad(&buf), BadUpgradeReason::MissingConnection);
        let buf = resp(&["Upgrade: websocket", "Connection: Upgrade"]);
        assert_eq!(bad(&buf), BadUpgradeReason::MissingAccept);
        assert_eq!(bad(&resp(&[])), BadUpgradeReason::MissingUpgrade);
    }

    #[test]
    fn unrequested_101_and_http10() {
        assert_eq!(
            parse(GOOD_101, None),
            Err(ResponseError::BadUpgrade(BadUpgradeReason::NotRequested))
        );
        let mut buf = GOOD_101.to_vec();
        buf[7] = b'0';
        assert_eq!(bad(&buf), BadUpgradeReason::Http10);
        assert_eq!(ResponseError::from(BadUpgradeReason::Http10).status(), 502);
    }

    #[test]
    fn statuses_below_100_are_malformed() {
        let r = parse_response(b"HTTP/1.1 099 Odd\r\n\r\n", &HeadLimits::default(), None);
        assert_eq!(r, Err(ResponseError::Malformed));
    }

    #[test]
    fn other_statuses_pass_through() {
        let buf = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
        for accept in [Some(ACCEPT), None] {
            assert_eq!(
                parse(buf, accept),
                Ok(Some(Response {
                    status: 403,
                    head_len: buf.len(),
                    upgraded: false,
                    body: None,
                }))
            );
        }
        let buf = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n";
        assert_eq!(
            parse(buf, None),
            Ok(Some(Response {
                status: 100,
                head_len: 25,
                upgraded: false,
                body: None,
            }))
        );
        let buf = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nbody";
        assert!(matches!(
            parse(buf, Some(ACCEPT)),
            Ok(Some(Response {
                status: 200,
                upgraded: false,
                ..
            }))
        ));
    }

    #[test]
    fn response_bodies_are_framed() {
        let body =
            |head: &str| parse(head.as_bytes(), Some(ACCEPT)).map(|r| r.and_then(|r| r.body));
        assert_eq!(
            body("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n"),
            Ok(Some(BodyEnd::Length(12)))
        );
        assert_eq!(
            body("HTTP/1.1 200 OK\r\nContent-Length: 12, 12\r\n\r\n"),
            Ok(Some(BodyEnd::Length(12)))
        );
        assert_eq!(
            body(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n"
            ),
            Ok(Some(BodyEnd::Chunked(ChunkedBody::default())))
        );
        assert_eq!(
            body("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Ok(Some(BodyEnd::UntilClose))
        );
        assert_eq!(
            body("HTTP/1.1 404 Not Found\r\n\r\n"),
            Ok(Some(BodyEnd::UntilClose))
        );
        for none in [
            "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\n\r\n",
            "HTTP/1.1 103 Early Hints\r\n\r\n",
            "HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n",
        ] {
            assert_eq!(body(none), Ok(None), "{none}");
        }
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
        ] {
            assert_eq!(body(bad), Err(ResponseError::Malformed), "{bad}");
        }
    }

    #[test]
    fn closing_head_replaces_keep_alive() {
        let head = b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
            Content-Length: 2\r\nX-Keep: Connection\r\n\r\n";
        assert_eq!(
            closing_head(head),
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Keep: Connection\r\n\
              Connection: close\r\n\r\n"
                .to_vec()
        );
        let parsed = parse(&closing_head(head), None);
        assert!(matches!(parsed, Ok(Some(Response { status: 200, .. }))));
    }

    #[test]
    fn incomplete_malformed_too_large() {
        for end in 0..GOOD_101.len() {
            assert_eq!(parse(&GOOD_101[..end], Some(ACCEPT)), Ok(None), "{end}");
        }
        assert_eq!(
            parse(b"HTTP/1.1 2OO OK\r\n\r\n", None),
            Err(ResponseError::Malformed)
        );
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", None),
            Err(ResponseError::Malformed)
        );
        let small = HeadLimits {
            max_head_bytes: GOOD_101.len() - 1,
            max_headers: 64,
            ..HeadLimits::default()
        };
        assert_eq!(
            parse_response(GOOD_101, &small, Some(ACCEPT)),
            Err(ResponseError::TooLarge)
        );
        assert_eq!(
            parse_response(&GOOD_101[..GOOD_101.len() - 1], &small, Some(ACCEPT)),
            Err(ResponseError::TooLarge)
        );
        assert_eq!(
            parse_response(&GOOD_101[..GOOD_101.len() - 2], &small, Some(ACCEPT)),
            Ok(None)
        );
        let few = HeadLimits {
            max_head_bytes: 16384,
            max_headers: 2,
            ..HeadLimits::default()
        };
        assert_eq!(
            parse_response(GOOD_101, &few, Some(ACCEPT)),
            Err(ResponseError::TooLarge)
        );
    }

    #[test]
    fn reason_labels() {
        assert_eq!(
            ResponseError::Malformed.reason(),
            "origin_malformed_response"
        );
        assert_eq!(
            ResponseError::TooLarge.reason(),
            "origin_response_too_large"
        );
        assert_eq!(
            ResponseError::BadUpgrade(BadUpgradeReason::WrongAccept).reason(),
            "origin_bad_upgrade_wrong_accept"
        );
    }
}
