//! The client's HTTP/1.1 request head: parse, classify, reject, rewrite for the origin.
//!
//! Steps 2, 3 and 7 of a connection's life (docs/architecture.md): the ring driver hands
//! [`parse_request`] the bytes read so far, gets back `Ok(None)` (read more), a [`Reject`]
//! (answer [`Reject::response`] and close; never forward) or a classified [`Request`]; after
//! routing and the firewall it asks [`rewrite_for_origin`] for the head to send to the origin,
//! followed by the tail `buf[head_len..]`. Pure: no sockets, no clock, no allocation beyond
//! the header list and the caller's output buffer.
//!
//! Strictness is deliberate: the head is relayed to origins whose parsers we do not know, so
//! every shape two parsers might read differently (CL+TE, duplicate CL, obs-fold, bare CR or
//! LF, control bytes, a second Host, a Host that is not `host[:port]`, a path that cannot be
//! normalized safely) is a 400 here, before any origin is contacted. The path is normalized
//! once ([`crate::path`]): routing, the firewall and the origin all see the same one.

use std::borrow::Cow;
use std::io::Write as _;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv6Addr};

use crate::accept::{is_valid_key, trim_ows};
use crate::forwarding::{Forwarding, XRealIp};
use crate::path::{self, EncodedSlashes, PathError};

/// Upper bound of [`HeadLimits::max_headers`]; the config caps it, parsers size their stack
/// header array with it.
pub const MAX_HEADERS_CAP: usize = 256;

/// Limits of a head (request or response), and what a request path may hold.
///
/// `max_head_bytes` bounds the head including its final blank line; `max_headers` bounds the
/// number of header lines and is clamped to [`MAX_HEADERS_CAP`]. Exceeding either is a 431
/// for a client ([`Reject::HeadTooLarge`]). `encoded_slashes` applies to request paths only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Longest accepted head in bytes, blank line included (default 16384).
    pub max_head_bytes: usize,
    /// Most header lines accepted (default 64, at most [`MAX_HEADERS_CAP`]).
    pub max_headers: usize,
    /// What `%2F`, `%5C` and `\` in a request path mean (default: a 400).
    pub encoded_slashes: EncodedSlashes,
}

impl Default for HeadLimits {
    fn default() -> Self {
        Self {
            max_head_bytes: 16 * 1024,
            max_headers: 64,
            encoded_slashes: EncodedSlashes::Reject,
        }
    }
}

/// How the body of a plain (non-upgrade) request is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// No body: neither `Content-Length` nor `Transfer-Encoding`.
    None,
    /// `Content-Length: n` (a single header with a single decimal value).
    Length(u64),
    /// `Transfer-Encoding: chunked` (the only coding accepted).
    Chunked,
}

/// What the request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind<'b> {
    /// A valid WebSocket upgrade (GET, HTTP/1.1, version 13, one valid key).
    WebSocket {
        /// The `Sec-WebSocket-Key` value, OWS-trimmed; feed it to
        /// [`crate::accept::accept_key`] for the value the origin's 101 must carry.
        key: &'b [u8],
    },
    /// Anything else: forwarded as plain HTTP with `Connection: close`.
    Plain {
        /// Framing of the request body that follows the head.
        body: BodyLength,
    },
}

/// A parsed, validated and classified request head, borrowing the read buffer.
///
/// `buf[..head_len]` is the head; `buf[head_len..]` is whatever the client sent after it
/// (body bytes or early WebSocket frames) and must be forwarded after the rewritten head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'b> {
    /// The method token as sent, e.g. `GET`.
    pub method: &'b str,
    /// The request-target as sent: origin-form (`/path?query`), or `*` for `OPTIONS`.
    /// Route and match on [`Request::path`] instead: this is the raw text.
    pub target: &'b str,
    /// The normalized path ([`crate::path::normalize`]); `*` for `OPTIONS *`.
    path: Cow<'b, str>,
    /// 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub minor_version: u8,
    /// Every header line as `(name, value)`, in order; values without surrounding OWS.
    pub headers: Vec<(&'b str, &'b [u8])>,
    /// Bytes of `buf` taken by the head, blank line included.
    pub head_len: usize,
    /// The `Host` value as sent (OWS-trimmed, port included), if there was one.
    pub host: Option<&'b str>,
    /// Classification: WebSocket upgrade or plain request.
    pub kind: RequestKind<'b>,
}

impl<'b> Request<'b> {
    /// A request assembled from its parts (tests, fuzz models, a function's outbound
    /// request): the path is `target`'s, normalized with `slashes`; `None` if it cannot be.
    pub fn from_parts(
        method: &'b str,
        target: &'b str,
        headers: Vec<(&'b str, &'b [u8])>,
        host: Option<&'b str>,
        kind: RequestKind<'b>,
        slashes: crate::path::EncodedSlashes,
    ) -> Option<Request<'b>> {
        let raw = target.split_once('?').map_or(target, |(p, _)| p);
        let path = if raw == "*" {
            Cow::Borrowed(raw)
        } else {
            crate::path::normalize(raw, slashes).ok()?
        };
        Some(Request {
            method,
            target,
            path,
            minor_version: 1,
            headers,
            head_len: 0,
            host,
            kind,
        })
    }

    /// The value of the first header called `name` (ASCII case-insensitive), if any.
    pub fn header(&self, name: &str) -> Option<&'b [u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|&(_, v)| v)
    }

    /// The normalized path (the request-target before the first `?`, normalized by
    /// [`crate::path::normalize`]): what routing, the firewall and the origin see.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query string after the first `?`, if the target has one (possibly empty).
    pub fn query(&self) -> Option<&'b str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// True for a WebSocket upgrade.
    pub fn is_websocket(&self) -> bool {
        matches!(self.kind, RequestKind::WebSocket { .. })
    }
}

/// Why a request head was answered with 400 and never forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum BadRequestReason {
    /// httparse refused the head (bad token, version, header name or value).
    #[error("malformed request head")]
    Malformed,
    /// A CR not followed by LF.
    #[error("bare CR in request head")]
    BareCr,
    /// An LF not preceded by CR (we accept only CRLF line endings).
    #[error("bare LF in request head")]
    BareLf,
    /// NUL, DEL or another control byte other than HTAB.
    #[error("control byte in request head")]
    ControlByte,
    /// A header line starting with SP or HTAB (obsolete line folding).
    #[error("obsolete line folding in request head")]
    ObsFold,
    /// Both `Content-Length` and `Transfer-Encoding`.
    #[error("both Content-Length and Transfer-Encoding")]
    ContentLengthAndTransferEncoding,
    /// More than one `Content-Length`, as repeated lines or a comma list.
    #[error("duplicate Content-Length")]
    DuplicateContentLength,
    /// A `Content-Length` that is not a decimal number fitting in u64.
    #[error("invalid Content-Length")]
    InvalidContentLength,
    /// A `Transfer-Encoding` other than one `chunked`, or any on HTTP/1.0.
    #[error("unsupported Transfer-Encoding")]
    UnsupportedTransferEncoding,
    /// HTTP/1.1 without `Host`.
    #[error("missing Host")]
    MissingHost,
    /// More than one `Host` line.
    #[error("duplicate Host")]
    DuplicateHost,
    /// A `Host` value that is not `uri-host [":" port]` (RFC 9110 §7.2): a reg-name (no
    /// percent-escapes), an IPv4 address or a bracketed IPv6 literal, then a decimal port up
    /// to 65535.
    #[error("invalid Host")]
    InvalidHost,
    /// A request-target that is not origin-form (`/...`), nor `*` with OPTIONS.
    #[error("request-target not in origin form")]
    TargetForm,
    /// A path that cannot be normalized safely (see [`crate::path`]).
    #[error("invalid path: {0}")]
    InvalidPath(PathError),
    /// An upgrade with a method other than GET.
    #[error("WebSocket upgrade with a method other than GET")]
    UpgradeMethod,
    /// An upgrade over HTTP/1.0.
    #[error("WebSocket upgrade over HTTP/1.0")]
    UpgradeHttp10,
    /// An upgrade carrying a request body (Content-Length > 0 or chunked).
    #[error("WebSocket upgrade with a request body")]
    UpgradeBody,
    /// An upgrade without `Sec-WebSocket-Key`.
    #[error("missing Sec-WebSocket-Key")]
    MissingKey,
    /// An upgrade with more than one `Sec-WebSocket-Key`.
    #[error("duplicate Sec-WebSocket-Key")]
    DuplicateKey,
    /// A `Sec-WebSocket-Key` that is not base64 of 16 bytes.
    #[error("invalid Sec-WebSocket-Key")]
    InvalidKey,
    /// A chunked request body that breaks the chunk grammar.
    #[error("malformed chunked body")]
    MalformedChunkedBody,
}

impl BadRequestReason {
    /// A snake_case label for counters and the access log.
    pub fn reason(self) -> &'static str {
        use BadRequestReason::*;
        match self {
            Malformed => "bad_request_malformed",
            BareCr => "bad_request_bare_cr",
            BareLf => "bad_request_bare_lf",
            ControlByte => "bad_request_control_byte",
            ObsFold => "bad_request_obs_fold",
            ContentLengthAndTransferEncoding => "bad_request_smuggling_cl_te",
            DuplicateContentLength => "bad_request_smuggling_duplicate_cl",
            InvalidContentLength => "bad_request_invalid_cl",
            UnsupportedTransferEncoding => "bad_request_unsupported_te",
            MissingHost => "bad_request_missing_host",
            DuplicateHost => "bad_request_duplicate_host",
            InvalidHost => "bad_request_invalid_host",
            TargetForm => "bad_request_target_form",
            InvalidPath(e) => e.reason(),
            UpgradeMethod => "bad_request_upgrade_method",
            UpgradeHttp10 => "bad_request_upgrade_http10",
            UpgradeBody => "bad_request_upgrade_body",
            MissingKey => "bad_request_ws_key_missing",
            DuplicateKey => "bad_request_ws_key_duplicate",
            InvalidKey => "bad_request_ws_key_invalid",
            MalformedChunkedBody => "bad_request_malformed_chunked_body",
        }
    }
}

/// Why a request head is answered by the proxy itself and never forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Reject {
    /// 400 Bad Request.
    #[error("bad request: {0}")]
    BadRequest(BadRequestReason),
    /// 426 Upgrade Required with `Sec-WebSocket-Version: 13`: an upgrade whose
    /// `Sec-WebSocket-Version` is missing or not exactly `13`.
    #[error("unsupported Sec-WebSocket-Version")]
    VersionNotSupported,
    /// 431: the head is longer than `max_head_bytes` or has more than `max_headers` lines.
    #[error("request head too large")]
    HeadTooLarge,
}

impl Reject {
    /// The HTTP status to answer with.
    pub fn status(self) -> u16 {
        match self {
            Reject::BadRequest(_) => 400,
            Reject::VersionNotSupported => 426,
            Reject::HeadTooLarge => 431,
        }
    }

    /// A snake_case label for counters and the access log.
    pub fn reason(self) -> &'static str {
        match self {
            Reject::BadRequest(r) => r.reason(),
            Reject::VersionNotSupported => "ws_version_not_supported",
            Reject::HeadTooLarge => "head_too_large",
        }
    }

    /// The complete static response to send before closing ([`error_response`] of
    /// [`Reject::status`]).
    pub fn response(self) -> &'static [u8] {
        error_response(self.status())
    }
}

impl From<BadRequestReason> for Reject {
    fn from(r: BadRequestReason) -> Self {
        Reject::BadRequest(r)
    }
}

/// Parses, validates and classifies the client's request head at the start of `buf`.
///
/// - `Ok(None)`: the head is not complete yet and `buf` is shorter than
///   `limits.max_head_bytes`; call again with more bytes (from the start of the head).
/// - `Err(Reject::HeadTooLarge)`: no complete head within the first `max_head_bytes` bytes,
///   or more than `max_headers` header lines.
/// - `Err(Reject::BadRequest(_))` / `Err(Reject::VersionNotSupported)`: see the behaviour
///   table in docs/architecture.md; answer and close, never forward.
/// - `Ok(Some(req))`: a complete, acceptable head of `req.head_len` bytes; bytes after it
///   belong to the client's stream and must be forwarded.
///
/// Only CRLF line endings are accepted. Leading empty lines before the request line are
/// skipped (RFC 9112 §2.2) and count in `head_len`.
pub fn parse_request<'b>(
    buf: &'b [u8],
    limits: &HeadLimits,
) -> Result<Option<Request<'b>>, Reject> {
    let head_len = match scan_head(buf, limits.max_head_bytes)? {
        Some(n) => n,
        None => return Ok(None),
    };
    let head = &buf[..head_len];

    // Uninitialised storage: zeroing 256 headers would cost more than parsing a typical head.
    let mut storage = [const { MaybeUninit::<httparse::Header<'b>>::uninit() }; MAX_HEADERS_CAP];
    let max_headers = limits.max_headers.min(MAX_HEADERS_CAP);
    let mut parsed = httparse::Request::new(&mut []);
    match parsed.parse_with_uninit_headers(head, &mut storage[..max_headers]) {
        Ok(httparse::Status::Complete(n)) if n == head_len => {}
        // The scan found the blank line, so httparse must agree on where the head ends.
        Ok(_) => return Err(BadRequestReason::Malformed.into()),
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::HeadTooLarge),
        Err(_) => return Err(BadRequestReason::Malformed.into()),
    }
    let (Some(method), Some(target), Some(minor_version)) =
        (parsed.method, parsed.path, parsed.version)
    else {
        return Err(BadRequestReason::Malformed.into());
    };

    let mut headers = Vec::with_capacity(parsed.headers.len());
    let mut host: Option<&'b [u8]> = None;
    let mut host_count = 0u32;
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut upgrade_websocket = false;
    let mut connection_upgrade = false;
    let mut version: Option<&'b [u8]> = None;
    let mut version_count = 0u32;
    let mut key: Option<&'b [u8]> = None;
    let mut key_count = 0u32;

    for h in parsed.headers.iter() {
        let name: &'b str = h.name;
        let value: &'b [u8] = trim_ows(h.value);
        headers.push((name, value));
        match name.len() {
            4 if name.eq_ignore_ascii_case("host") => {
                host_count += 1;
                host = Some(value);
            }
            7 if name.eq_ignore_ascii_case("upgrade") => {
                upgrade_websocket |= has_token(value, b"websocket");
            }
            10 if name.eq_ignore_ascii_case("connection") => {
                connection_upgrade |= has_token(value, b"upgrade");
            }
            14 if name.eq_ignore_ascii_case("content-length") => {
                if content_length.is_some() {
                    return Err(BadRequestReason::DuplicateContentLength.into());
                }
                content_length = Some(parse_content_length(value)?);
            }
            17 if name.eq_ignore_ascii_case("transfer-encoding") => {
                // One line holding exactly `chunked`; a second line is a second coding.
                if transfer_encoding || !value.eq_ignore_ascii_case(b"chunked") {
                    return Err(BadRequestReason::UnsupportedTransferEncoding.into());
                }
                transfer_encoding = true;
            }
            17 if name.eq_ignore_ascii_case("sec-websocket-key") => {
                key_count += 1;
                key = Some(value);
            }
            21 if name.eq_ignore_ascii_case("sec-websocket-version") => {
                version_count += 1;
                version = Some(value);
            }
            _ => {}
        }
    }

    // Framing first: these are the smuggling shapes.
    if content_length.is_some() && transfer_encoding {
        return Err(BadRequestReason::ContentLengthAndTransferEncoding.into());
    }
    if transfer_encoding && minor_version == 0 {
        // RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing.
        return Err(BadRequestReason::UnsupportedTransferEncoding.into());
    }
    let body = match (content_length, transfer_encoding) {
        (Some(n), _) => BodyLength::Length(n),
        (None, true) => BodyLength::Chunked,
        (None, false) => BodyLength::None,
    };

    // Host.
    if host_count > 1 {
        return Err(BadRequestReason::DuplicateHost.into());
    }
    let host = match host {
        Some(h) => Some(validate_host(h)?),
        None if minor_version >= 1 => return Err(BadRequestReason::MissingHost.into()),
        None => None,
    };

    // Target: a reverse proxy routes on Host + path; anything but origin-form would let the
    // origin see a different authority or path than the one we routed on.
    if !(target.starts_with('/') || (target == "*" && method == "OPTIONS")) {
        return Err(BadRequestReason::TargetForm.into());
    }
    if target.contains('#') {
        return Err(BadRequestReason::InvalidPath(PathError::Fragment).into());
    }
    let raw_path = target.split_once('?').map_or(target, |(p, _)| p);
    let path = if target == "*" {
        Cow::Borrowed(target)
    } else {
        path::normalize(raw_path, limits.encoded_slashes).map_err(BadRequestReason::InvalidPath)?
    };

    let kind = if upgrade_websocket && connection_upgrade {
        if method != "GET" {
            return Err(BadRequestReason::UpgradeMethod.into());
        }
        if minor_version != 1 {
            return Err(BadRequestReason::UpgradeHttp10.into());
        }
        if body != BodyLength::None && body != BodyLength::Length(0) {
            return Err(BadRequestReason::UpgradeBody.into());
        }
        if version_count != 1 || version != Some(b"13".as_slice()) {
            return Err(Reject::VersionNotSupported);
        }
        let key = match (key, key_count) {
            (Some(k), 1) if is_valid_key(k) => k,
            (Some(_), 1) => return Err(BadRequestReason::InvalidKey.into()),
            (None, _) => return Err(BadRequestReason::MissingKey.into()),
            (Some(_), _) => return Err(BadRequestReason::DuplicateKey.into()),
        };
        RequestKind::WebSocket { key }
    } else {
        RequestKind::Plain { body }
    };

    Ok(Some(Request {
        method,
        target,
        path,
        minor_version,
        headers,
        head_len,
        host,
        kind,
    }))
}

/// One pass over the raw head: finds its end and rejects bytes httparse tolerates.
///
/// Returns the head length (through the blank line's CRLF), `None` if the head is not complete
/// and `buf` is shorter than `limit`, or the reason to reject. Only the first `limit` bytes are
/// examined: a head that does not end within them is [`Reject::HeadTooLarge`].
fn scan_head(buf: &[u8], limit: usize) -> Result<Option<usize>, Reject> {
    let n = buf.len().min(limit);
    let mut i = 0;
    let mut line_start = 0;
    // A non-empty line (the request line) has been seen; empty lines before it are skipped.
    let mut started = false;
    while i < n {
        let b = buf[i];
        match b {
            b'\r' => {
                if i + 1 >= n {
                    break;
                }
                if buf[i + 1] != b'\n' {
                    return Err(BadRequestReason::BareCr.into());
                }
                if i == line_start {
                    if started {
                        return Ok(Some(i + 2));
                    }
                } else {
                    started = true;
                }
                i += 2;
                line_start = i;
                continue;
            }
            b'\n' => return Err(BadRequestReason::BareLf.into()),
            b' ' | b'\t' if i == line_start && started => {
                return Err(BadRequestReason::ObsFold.into());
            }
            b'\t' => {}
            0..=0x1f | 0x7f => return Err(BadRequestReason::ControlByte.into()),
            _ => {}
        }
        i += 1;
        // Fast path: skip plain bytes eight at a time. It never skips a line start: CR and
        // LF are control bytes, and the CRLF arm above `continue`s to the per-byte check.
        while let Some(word) = buf[i..n].first_chunk::<8>() {
            if has_control_byte(u64::from_le_bytes(*word)) {
                break;
            }
            i += 8;
        }
    }
    if buf.len() >= limit {
        Err(Reject::HeadTooLarge)
    } else {
        Ok(None)
    }
}

/// True if some byte of the word is below 0x20 or is 0x7f (SWAR; exact for "any").
fn has_control_byte(x: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below_space = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
    let y = x ^ (ONES * 0x7f);
    let del = y.wrapping_sub(ONES) & !y & HIGH;
    (below_space | del) != 0
}

/// True if the comma-separated list `value` holds `token` (ASCII case-insensitive, OWS
/// around elements, empty elements ignored).
pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| trim_ows(t).eq_ignore_ascii_case(token))
}

/// Parses a single `Content-Length` value: decimal digits only, fitting in u64.
fn parse_content_length(value: &[u8]) -> Result<u64, Reject> {
    if value.contains(&b',') {
        return Err(BadRequestReason::DuplicateContentLength.into());
    }
    if value.is_empty() {
        return Err(BadRequestReason::InvalidContentLength.into());
    }
    let mut n: u64 = 0;
    for &b in value {
        if !b.is_ascii_digit() {
            return Err(BadRequestReason::InvalidContentLength.into());
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(BadRequestReason::InvalidContentLength)?;
    }
    Ok(n)
}

/// Checks a `Host` value is `uri-host [":" port]` (RFC 9110 §7.2, RFC 3986 §3.2.2).
///
/// The host is a bracketed IPv6 literal (no zone, no IPvFuture) or a non-empty reg-name of
/// unreserved and sub-delim characters (which covers IPv4 addresses; percent-escapes are
/// refused: no client sends them and an origin might decode them); the port, if a `:` is
/// there, is decimal digits up to 65535 (may be empty, as RFC 3986 allows). The value may be
/// empty as a whole (RFC 9112 §3.2). So `::1:80`, `user@host`, `a b` and `[::1` are refused.
fn validate_host(value: &[u8]) -> Result<&str, Reject> {
    let invalid = || Reject::from(BadRequestReason::InvalidHost);
    let text = std::str::from_utf8(value).map_err(|_| invalid())?;
    if text.is_empty() {
        return Ok(text);
    }
    let port = if let Some(rest) = text.strip_prefix('[') {
        let (literal, after) = rest.split_once(']').ok_or_else(invalid)?;
        literal.parse::<Ipv6Addr>().map_err(|_| invalid())?;
        match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(invalid)?),
        }
    } else {
        let (name, port) = match text.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (text, None),
        };
        let reg_name = |b: u8| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                )
        };
        if name.is_empty() || !name.bytes().all(reg_name) {
            return Err(invalid());
        }
        port
    };
    if let Some(port) = port {
        let digits = port.bytes().all(|b| b.is_ascii_digit());
        if !digits || port.len() > 5 || port.parse::<u32>().is_ok_and(|p| p > 65535) {
            return Err(invalid());
        }
    }
    Ok(text)
}

/// The forwarding headers: who the client is, as the client (or a proxy) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ForwardingHeader {
    Forwarded,
    XForwardedFor,
    XForwardedHost,
    XForwardedProto,
    XRealIp,
}

fn forwarding_header(name: &str) -> Option<ForwardingHeader> {
    use ForwardingHeader::*;
    let is = |canonical: &str| name.eq_ignore_ascii_case(canonical);
    match name.len() {
        9 if is("forwarded") => Some(Forwarded),
        9 if is("x-real-ip") => Some(XRealIp),
        15 if is("x-forwarded-for") => Some(XForwardedFor),
        16 if is("x-forwarded-host") => Some(XForwardedHost),
        17 if is("x-forwarded-proto") => Some(XForwardedProto),
        _ => None,
    }
}

/// Hop-by-hop headers always dropped from a plain request (replaced by `Connection: close`).
fn is_plain_hop_header(name: &str) -> bool {
    match name.len() {
        7 => name.eq_ignore_ascii_case("upgrade"),
        10 => name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("keep-alive"),
        16 => name.eq_ignore_ascii_case("proxy-connection"),
        _ => false,
    }
}

/// Headers never dropped because `Connection` names them: routing and framing depend on them,
/// and dropping framing headers would let the origin read the body differently than we did.
fn is_protected(name: &str) -> bool {
    name.eq_ignore_ascii_case("host")
        || name.eq_ignore_ascii_case("content-length")
        || name.eq_ignore_ascii_case("transfer-encoding")
}

/// Connection tokens that name no other header we need to look for.
fn is_plain_connection_token(t: &[u8]) -> bool {
    t.is_empty()
        || t.eq_ignore_ascii_case(b"close")
        || t.eq_ignore_ascii_case(b"keep-alive")
        || t.eq_ignore_ascii_case(b"upgrade")
}

/// Writes the request head to send to the origin into `out` (appended, not cleared).
///
/// The request line is `METHOD path[?query] HTTP/1.x` with the normalized path
/// ([`Request::path`], what was routed on) and the query as sent. Headers follow in order,
/// as sent, except:
/// - the forwarding headers (`X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host`,
///   `Forwarded`, `X-Real-IP`) are dropped, unless `peer` is one of `forwarding`'s trusted
///   proxies: then `Forwarded`, `X-Forwarded-Proto` and `X-Forwarded-Host` stay as sent and
///   only `X-Forwarded-For` and `X-Real-IP` are dropped (and rewritten below);
/// - for a [`RequestKind::Plain`] request `Upgrade`, `Connection`, `Keep-Alive`,
///   `Proxy-Connection` and the headers named in `Connection` are dropped too (never `Host`,
///   `Content-Length` or `Transfer-Encoding`) and `Connection: close` is added.
///
/// Then `X-Forwarded-For: <peer>` (IPv4-mapped addresses written as IPv4; from a trusted
/// proxy, the client's chain, comma-joined, then `, <peer>`), `X-Forwarded-Proto: <proto>`
/// and, if the client sent a Host, `X-Forwarded-Host: <host>` (both only if a trusted proxy
/// did not send its own), and `X-Real-IP: <client>` unless [`XRealIp::Remove`] (the peer, or
/// from a trusted proxy [`Forwarding::client_address`]); then the blank line. The tail
/// `buf[req.head_len..]` is not included.
pub fn rewrite_for_origin(
    req: &Request<'_>,
    peer: IpAddr,
    proto: &str,
    forwarding: &Forwarding,
    out: &mut Vec<u8>,
) {
    let plain = !req.is_websocket();
    // Only look for Connection-named headers if some Connection token names one.
    let named_hops = plain
        && req.headers.iter().any(|&(n, v)| {
            n.eq_ignore_ascii_case("connection")
                && v.split(|&b| b == b',')
                    .any(|t| !is_plain_connection_token(trim_ows(t)))
        });
    let trusted = !forwarding.trusted_proxies.is_empty() && forwarding.trusts(peer);
    let mut kept_proto = false;
    let mut kept_host = false;

    out.reserve(req.head_len + 160);
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path().as_bytes());
    if let Some(query) = req.query() {
        out.push(b'?');
        out.extend_from_slice(query.as_bytes());
    }
    out.extend_from_slice(if req.minor_version == 0 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });

    for &(name, value) in &req.headers {
        if let Some(which) = forwarding_header(name) {
            match which {
                ForwardingHeader::Forwarded if trusted => {}
                ForwardingHeader::XForwardedProto if trusted => kept_proto = true,
                ForwardingHeader::XForwardedHost if trusted => kept_host = true,
                _ => continue,
            }
        }
        if plain {
            if is_plain_hop_header(name) {
                continue;
            }
            if named_hops && !is_protected(name) && named_in_connection(req, name) {
                continue;
            }
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }

    if plain {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    if trusted {
        for value in client_xff(req) {
            for entry in value.split(|&b| b == b',').map(trim_ows) {
                if !entry.is_empty() {
                    out.extend_from_slice(entry);
                    out.extend_from_slice(b", ");
                }
            }
        }
    }
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{}", peer.to_canonical());
    out.extend_from_slice(b"\r\n");
    if !kept_proto {
        out.extend_from_slice(b"X-Forwarded-Proto: ");
        out.extend_from_slice(proto.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(host) = req.host
        && !kept_host
    {
        out.extend_from_slice(b"X-Forwarded-Host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if forwarding.x_real_ip == XRealIp::Set {
        let client = if trusted {
            forwarding.client_address(peer, client_xff(req))
        } else {
            peer.to_canonical()
        };
        let _ = write!(out, "X-Real-IP: {client}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The values of the client's `X-Forwarded-For` lines, in order.
fn client_xff<'r>(req: &'r Request<'_>) -> impl DoubleEndedIterator<Item = &'r [u8]> {
    req.headers
        .iter()
        .filter(|(n, _)| forwarding_header(n) == Some(ForwardingHeader::XForwardedFor))
        .map(|&(_, v)| v)
}

/// True if some `Connection` header of `req` lists `name` as a token.
fn named_in_connection(req: &Request<'_>, name: &str) -> bool {
    req.headers
        .iter()
        .any(|&(n, v)| n.eq_ignore_ascii_case("connection") && has_token(v, name.as_bytes()))
}

/// A complete, short response for a status the proxy answers itself.
///
/// Every response has `Content-Type: text/plain`, a correct `Content-Length`, `Connection:
/// close` and a one-line body; 426 adds `Sec-WebSocket-Version: 13`, 429 adds `Retry-After: 1`
/// (build your own for another value). Covered: 400, 403, 404, 408, 421, 426, 429, 431, 500, 502,
/// 503, 504; any other status gets the 500 response.
pub fn error_response(status: u16) -> &'static [u8] {
    match status {
        400 => {
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\
              Connection: close\r\n\r\nbad request\n"
        }
        403 => {
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\
              Connection: close\r\n\r\nforbidden\n"
        }
        404 => {
            b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\
              Connection: close\r\n\r\nnot found\n"
        }
        408 => {
            b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\nContent-Length: 16\r\n\
              Connection: close\r\n\r\nrequest timeout\n"
        }
        421 => {
            b"HTTP/1.1 421 Misdirected Request\r\nContent-Type: text/plain\r\nContent-Length: 20\r\n\
              Connection: close\r\n\r\nmisdirected request\n"
        }
        426 => {
            b"HTTP/1.1 426 Upgrade Required\r\nContent-Type: text/plain\r\nContent-Length: 17\r\n\
              Sec-WebSocket-Version: 13\r\nConnection: close\r\n\r\nupgrade required\n"
        }
        429 => {
            b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nContent-Length: 18\r\n\
              Retry-After: 1\r\nConnection: close\r\n\r\ntoo many requests\n"
        }
        431 => {
            b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain\r\n\
              Content-Length: 32\r\nConnection: close\r\n\r\nrequest header fields too large\n"
        }
        502 => {
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\
              Connection: close\r\n\r\nbad gateway\n"
        }
        503 => {
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 20\r\n\
              Connection: close\r\n\r\nservice unavailable\n"
        }
        504 => {
            b"HTTP/1.1 504 Gateway Timeout\r\nContent-Type: text/plain\r\nContent-Length: 16\r\n\
              Connection: close\r\n\r\ngateway timeout\n"
        }
        _ => {
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n\
              Content-Length: 22\r\nConnection: close\r\n\r\ninternal server error\n"
        }
    }
}

/// The answer when a route's pool has no live origin: 503 with `Retry-After` (seconds, at
/// least 1), so clients back off instead of retrying into a pile of 502s.
pub fn unavailable_response(retry_after_secs: u32) -> Vec<u8> {
    const BODY: &str = "no origin available\n";
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Retry-After: {}\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len(),
        retry_after_secs.max(1)
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accept::accept_key;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const UPGRADE: &[u8] = b"GET /chat?room=1 HTTP/1.1\r\n\
        Host: example.com:8080\r\n\
        Upgrade: websocket\r\n\
        Connection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\
        \r\n";

    fn parse(buf: &[u8]) -> Result<Option<Request<'_>>, Reject> {
        parse_request(buf, &HeadLimits::default())
    }

    fn ok(buf: &[u8]) -> Request<'_> {
        match parse(buf) {
            Ok(Some(r)) => r,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn bad(buf: &[u8]) -> BadRequestReason {
        match parse(buf) {
            Err(Reject::BadRequest(r)) => r,
            other => panic!("expected 400, got {other:?}"),
        }
    }

    /// A head made of `request_line`, then `lines`, then the blank line.
    fn head(request_line: &str, lines: &[&str]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(request_line.as_bytes());
        v.extend_from_slice(b"\r\n");
        for l in lines {
            v.extend_from_slice(l.as_bytes());
            v.extend_from_slice(b"\r\n");
        }
        v.extend_from_slice(b"\r\n");
        v
    }

    const WS: [&str; 5] = [
        "Host: h",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ];

    /// The valid upgrade `WS` with line `i` replaced (removed if empty) and `extra` appended.
    fn ws_with(replace: &[(usize, &'static str)], extra: &[&'static str]) -> Vec<u8> {
        let mut lines: Vec<&str> = WS.to_vec();
        // Replace in descending index order so removals do not shift later indices.
        let mut replace = replace.to_vec();
        replace.sort_by_key(|r| std::cmp::Reverse(r.0));
        for &(i, l) in &replace {
            if l.is_empty() {
                lines.remove(i);
            } else {
                lines[i] = l;
            }
        }
        lines.extend_from_slice(extra);
        head("GET /ws HTTP/1.1", &lines)
    }

    // ---- classification -------------------------------------------------------------

    #[test]
    fn websocket_upgrade() {
        let r = ok(UPGRADE);
        assert_eq!(r.method, "GET");
        assert_eq!(r.target, "/chat?room=1");
        assert_eq!(r.path(), "/chat");
        assert_eq!(r.query(), Some("room=1"));
        assert_eq!(r.minor_version, 1);
        assert_eq!(r.host, Some("example.com:8080"));
        assert_eq!(r.head_len, UPGRADE.len());
        assert_eq!(r.headers.len(), 5);
        assert_eq!(r.header("upgrade"), Some(&b"websocket"[..]));
        assert_eq!(r.header("SEC-WEBSOCKET-VERSION"), Some(&b"13"[..]));
        assert_eq!(r.header("origin"), None);
        assert_eq!(
            r.kind,
            RequestKind::WebSocket {
                key: b"dGhlIHNhbXBsZSBub25jZQ=="
            }
        );
        if let RequestKind::WebSocket { key } = r.kind {
            assert_eq!(&accept_key(key), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        }
    }

    #[test]
    fn upgrade_tokens_case_insensitive_and_lists() {
        for (up, conn) in [
            ("Upgrade: WebSocket", "Connection: upgrade"),
            ("Upgrade: websocket", "Connection: keep-alive, Upgrade"),
            ("Upgrade: h2c,  WEBSOCKET ", "Connection:UPGRADE,keep-alive"),
            ("Upgrade: websocket", "Connection: ,, upgrade ,"),
        ] {
            let buf = ws_with(&[(1, up), (2, conn)], &[]);
            assert!(ok(&buf).is_websocket(), "{up} / {conn}");
        }
    }

    #[test]
    fn repeated_connection_and_upgrade_lines() {
        let buf = ws_with(&[(2, "Connection: keep-alive")], &["Connection: Upgrade"]);
        assert!(ok(&buf).is_websocket());
        let buf = ws_with(&[(1, "Upgrade: h2c")], &["Upgrade: websocket"]);
        assert!(ok(&buf).is_websocket());
    }

    #[test]
    fn not_an_upgrade_is_plain() {
        for (up, conn) in [
            ("Upgrade: h2c", "Connection: Upgrade"),
            ("Upgrade: websocket", "Connection: keep-alive"),
            ("Upgrade: websockets", "Connection: Upgrade"),
            ("Upgrade: websocket/13", "Connection: Upgrade"),
            ("Upgrade: websocket", "Connection: Upgraded"),
            ("", "Connection: Upgrade"),
            ("Upgrade: websocket", ""),
        ] {
            let buf = ws_with(&[(1, up), (2, conn)], &[]);
            assert_eq!(
                ok(&buf).kind,
                RequestKind::Plain {
                    body: BodyLength::None
                },
                "{up} / {conn}"
            );
        }
        // Without upgrade headers, version and key do not matter.
        let buf = head("POST /x HTTP/1.1", &["Host: h", "Sec-WebSocket-Version: 8"]);
        assert!(!ok(&buf).is_websocket());
    }

    #[test]
    fn plain_body_lengths() {
        let buf = head("POST /x HTTP/1.1", &["Host: h", "Content-Length: 42"]);
        assert_eq!(
            ok(&buf).kind,
            RequestKind::Plain {
                body: BodyLength::Length(42)
            }
        );
        let buf = head(
            "POST /x HTTP/1.1",
            &["Host: h", "Transfer-Encoding: Chunked"],
        );
        assert_eq!(
            ok(&buf).kind,
            RequestKind::Plain {
                body: BodyLength::Chunked
            }
        );
        let buf = head("GET / HTTP/1.0", &[]);
        let r = ok(&buf);
        assert_eq!(r.minor_version, 0);
        assert_eq!(r.host, None);
        assert!(!r.is_websocket());
    }

    #[test]
    fn target_forms() {
        let buf = head("OPTIONS * HTTP/1.1", &["Host: h"]);
        assert_eq!(ok(&buf).path(), "*");
        let buf = head("GET /a? HTTP/1.1", &["Host: h"]);
        assert_eq!(ok(&buf).query(), Some(""));
        let buf = head("GET /a HTTP/1.1", &["Host: h"]);
        assert_eq!(ok(&buf).query(), None);
        for line in [
            "GET http://h/a HTTP/1.1",
            "CONNECT h:443 HTTP/1.1",
            "GET * HTTP/1.1",
        ] {
            let buf = head(line, &["Host: h"]);
            assert_eq!(bad(&buf), BadRequestReason::TargetForm, "{line}");
        }
    }

    // ---- WebSocket-specific rejections ----------------------------------------------

    #[test]
    fn version_not_13_is_426() {
        for v in [
            "",
            "Sec-WebSocket-Version: 8",
            "Sec-WebSocket-Version: 13, 8",
            "Sec-WebSocket-Version: 013",
            "Sec-WebSocket-Version:",
        ] {
            let buf = ws_with(&[(4, v)], &[]);
            assert_eq!(parse(&buf), Err(Reject::VersionNotSupported), "{v:?}");
        }
        let buf = ws_with(&[], &["Sec-WebSocket-Version: 13"]);
        assert_eq!(parse(&buf), Err(Reject::VersionNotSupported));
        assert_eq!(Reject::VersionNotSupported.status(), 426);
        // Whitespace around the value is OWS.
        let buf = ws_with(&[(4, "Sec-WebSocket-Version:  13 ")], &[]);
        assert!(ok(&buf).is_websocket());
    }

    #[test]
    fn bad_keys_are_400() {
        let buf = ws_with(&[(3, "")], &[]);
        assert_eq!(bad(&buf), BadRequestReason::MissingKey);
        let buf = ws_with(&[(3, "Sec-WebSocket-Key: c2hvcnQ=")], &[]);
        assert_eq!(bad(&buf), BadRequestReason::InvalidKey);
        let buf = ws_with(&[(3, "Sec-WebSocket-Key:")], &[]);
        assert_eq!(bad(&buf), BadRequestReason::InvalidKey);
        let buf = ws_with(&[], &["Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]);
        assert_eq!(bad(&buf), BadRequestReason::DuplicateKey);
        // Trimmed key is what the request carries.
        let buf = ws_with(
            &[(3, "Sec-WebSocket-Key:   AAAAAAAAAAAAAAAAAAAAAA==  ")],
            &[],
        );
        assert_eq!(
            ok(&buf).kind,
            RequestKind::WebSocket {
                key: b"AAAAAAAAAAAAAAAAAAAAAA=="
            }
        );
    }

    #[test]
    fn upgrade_method_version_body() {
        let mut buf = ws_with(&[], &[]);
        buf.splice(0..3, *b"POST");
        assert_eq!(bad(&buf), BadRequestReason::UpgradeMethod);

        let lines: Vec<&str> = WS.to_vec();
        let buf = head("GET /ws HTTP/1.0", &lines);
        assert_eq!(bad(&buf), BadRequestReason::UpgradeHttp10);

        let buf = ws_with(&[], &["Content-Length: 5"]);
        assert_eq!(bad(&buf), BadRequestReason::UpgradeBody);
        let buf = ws_with(&[], &["Transfer-Encoding: chunked"]);
        assert_eq!(bad(&buf), BadRequestReason::UpgradeBody);
        let buf = ws_with(&[], &["Content-Length: 0"]);
        assert!(ok(&buf).is_websocket());
    }

    // ---- smuggling shapes and malformed heads ------------------------------------------

    #[test]
    fn content_length_and_transfer_encoding() {
        let buf = head(
            "POST / HTTP/1.1",
            &["Host: h", "Content-Length: 4", "Transfer-Encoding: chunked"],
        );
        assert_eq!(
            bad(&buf),
            BadRequestReason::ContentLengthAndTransferEncoding
        );
        let buf = head(
            "POST / HTTP/1.1",
            &["Host: h", "Transfer-Encoding: chunked", "Content-Length: 4"],
        );
        assert_eq!(
            bad(&buf),
            BadRequestReason::ContentLengthAndTransferEncoding
        );
        assert_eq!(
            Reject::from(BadRequestReason::ContentLengthAndTransferEncoding).reason(),
            "bad_request_smuggling_cl_te"
        );
    }

    #[test]
    fn content_length_shapes() {
        for (cls, want) in [
            (
                &["Content-Length: 4", "Content-Length: 4"][..],
                BadRequestReason::DuplicateContentLength,
            ),
            (
                &["Content-Length: 4, 4"][..],
                BadRequestReason::DuplicateContentLength,
            ),
            (
                &["Content-Length: 4,"][..],
                BadRequestReason::DuplicateContentLength,
            ),
            (
                &["Content-Length: +4"][..],
                BadRequestReason::InvalidContentLength,
            ),
            (
                &["Content-Length: -1"][..],
                BadRequestReason::InvalidContentLength,
            ),
            (
                &["Content-Length: 0x10"][..],
                BadRequestReason::InvalidContentLength,
            ),
            (
                &["Content-Length: 4 4"][..],
                BadRequestReason::InvalidContentLength,
            ),
            (
                &["Content-Length:"][..],
                BadRequestReason::InvalidContentLength,
            ),
            (
                &["Content-Length: 18446744073709551616"][..],
                BadRequestReason::InvalidContentLength,
            ),
        ] {
            let mut lines = vec!["Host: h"];
            lines.extend_from_slice(cls);
            let buf = head("POST / HTTP/1.1", &lines);
            assert_eq!(bad(&buf), want, "{cls:?}");
        }
        let buf = head(
            "POST / HTTP/1.1",
            &["Host: h", "Content-Length: 18446744073709551615"],
        );
        assert_eq!(
            ok(&buf).kind,
            RequestKind::Plain {
                body: BodyLength::Length(u64::MAX)
            }
        );
    }

    #[test]
    fn transfer_encoding_shapes() {
        for te in [
            &["Transfer-Encoding: gzip, chunked"][..],
            &["Transfer-Encoding: chunked, chunked"][..],
            &["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"][..],
            &["Transfer-Encoding: gzip", "Transfer-Encoding: chunked"][..],
            &["Transfer-Encoding: identity"][..],
            &["Transfer-Encoding: xchunked"][..],
            &["Transfer-Encoding: chunked;q=1"][..],
            &["Transfer-Encoding:"][..],
        ] {
            let mut lines = vec!["Host: h"];
            lines.extend_from_slice(te);
            let buf = head("POST / HTTP/1.1", &lines);
            assert_eq!(
                bad(&buf),
                BadRequestReason::UnsupportedTransferEncoding,
                "{te:?}"
            );
        }
        let buf = head("POST / HTTP/1.0", &["Transfer-Encoding: chunked"]);
        assert_eq!(bad(&buf), BadRequestReason::UnsupportedTransferEncoding);
    }

    #[test]
    fn obs_fold() {
        let buf = b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n";
        assert_eq!(bad(buf), BadRequestReason::ObsFold);
        let buf = b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n\tb\r\n\r\n";
        assert_eq!(bad(buf), BadRequestReason::ObsFold);
        // Whitespace before the first header line.
        let buf = b"GET / HTTP/1.1\r\n Host: h\r\n\r\n";
        assert_eq!(bad(buf), BadRequestReason::ObsFold);
        // Even while the head is incomplete.
        let buf = b"GET / HTTP/1.1\r\nHost: h\r\n\t";
        assert_eq!(bad(buf), BadRequestReason::ObsFold);
    }

    #[test]
    fn bare_cr_bare_lf_and_control_bytes() {
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n"),
            BadRequestReason::BareCr
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost: h\r\r\n\r\n"),
            BadRequestReason::BareCr
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost: h\r\n\r\r\n"),
            BadRequestReason::BareCr
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\nHost: h\n\n"),
            BadRequestReason::BareLf
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\nb\r\n\r\n"),
            BadRequestReason::BareLf
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\0b\r\n\r\n"),
            BadRequestReason::ControlByte
        );
        assert_eq!(
            bad(b"GET /\0 HTTP/1.1\r\nHost: h\r\n\r\n"),
            BadRequestReason::ControlByte
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x7fb\r\n\r\n"),
            BadRequestReason::ControlByte
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: \x1b[31m\r\n\r\n"),
            BadRequestReason::ControlByte
        );
        // HTAB inside a value is fine; obs-text too.
        let r = ok(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\tb\xe9\r\n\r\n");
        assert_eq!(r.header("x-a"), Some(&b"a\tb\xe9"[..]));
    }

    #[test]
    fn malformed_heads() {
        for buf in [
            &b"GET / HTTP/1.1 \r\nHost: h\r\n\r\n"[..],
            b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost h\r\n\r\n",
            b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
        ] {
            assert_eq!(
                bad(buf),
                BadRequestReason::Malformed,
                "{}",
                String::from_utf8_lossy(buf)
            );
        }
    }

    #[test]
    fn host_rules() {
        let buf = head("GET / HTTP/1.1", &[]);
        assert_eq!(bad(&buf), BadRequestReason::MissingHost);
        let buf = head("GET / HTTP/1.1", &["Host: a", "Host: a"]);
        assert_eq!(bad(&buf), BadRequestReason::DuplicateHost);
        let buf = head("GET / HTTP/1.0", &["Host: a", "Host: b"]);
        assert_eq!(bad(&buf), BadRequestReason::DuplicateHost);
        for h in ["Host: user@h", "Host: h/x", "Host: a b", "Host: hé"] {
            let buf = head("GET / HTTP/1.1", &[h]);
            assert_eq!(bad(&buf), BadRequestReason::InvalidHost, "{h}");
        }
        let buf = head("GET / HTTP/1.1", &["hOsT:   [::1]:8080  "]);
        assert_eq!(ok(&buf).host, Some("[::1]:8080"));
        let buf = head("GET / HTTP/1.1", &["Host:"]);
        assert_eq!(ok(&buf).host, Some(""));
    }

    #[test]
    fn host_must_be_uri_host_and_port() {
        for good in [
            "example.com",
            "Example.COM:8080",
            "example.com.",
            "example.com:",
            "a-b_c~d.example",
            "192.0.2.1",
            "192.0.2.1:80",
            "[::1]",
            "[::1]:80",
            "[2001:DB8::1]:443",
            "[::ffff:192.0.2.1]:1",
            "localhost:65535",
            "h:0",
            "h:00080",
            "x!$&'()*+,;=y",
        ] {
            let line = format!("Host: {good}");
            let buf = head("GET / HTTP/1.1", &[&line]);
            assert_eq!(ok(&buf).host, Some(good), "{good}");
        }
        for bad_host in [
            "::1:80",
            "::1",
            "2001:db8::1",
            "[::1",
            "::1]",
            "[::1]x",
            "[::1]:x",
            "[::1]:80:80",
            "[]",
            "[192.0.2.1]",
            "[fe80::1%25eth0]",
            "[v1.fe80::a]",
            "h:80:80",
            "h:8o",
            "h:-1",
            "h:65536",
            "h:123456",
            ":80",
            ":",
            "ex%61mple.com",
            "user@h",
            "h@",
            "[::1]@h",
            "a\"b",
            "h/",
            "h?",
            "h#",
        ] {
            let line = format!("Host: {bad_host}");
            let buf = head("GET / HTTP/1.1", &[&line]);
            assert_eq!(bad(&buf), BadRequestReason::InvalidHost, "{bad_host}");
        }
    }

    #[test]
    fn path_is_normalized_once_for_everyone() {
        for (target, path, query) in [
            ("/x/../internal", "/internal", None),
            ("/%69nternal?x=1", "/internal", Some("x=1")),
            ("//internal/./?a=/../", "/internal/", Some("a=/../")),
            ("/ws/%2e/chat", "/ws/chat", None),
            ("/caf%c3%a9", "/caf%C3%A9", None),
        ] {
            let buf = head(&format!("GET {target} HTTP/1.1"), &["Host: h"]);
            let r = ok(&buf);
            assert_eq!(r.target, target, "the raw target is kept");
            assert_eq!((r.path(), r.query()), (path, query), "{target}");
        }
        let buf = head("OPTIONS * HTTP/1.1", &["Host: h"]);
        assert_eq!(ok(&buf).path(), "*");
        for (target, e) in [
            ("/%2e%2e/internal", PathError::AboveRoot),
            ("/..", PathError::AboveRoot),
            ("/%2Finternal", PathError::EncodedSlash),
            ("/a\\b", PathError::EncodedSlash),
            ("/%zz", PathError::BadEscape),
            ("/%00", PathError::EncodedControl),
            ("/x/..;/internal", PathError::SegmentParams),
            ("/a#b", PathError::Fragment),
            ("/a?b#c", PathError::Fragment),
        ] {
            let buf = head(&format!("GET {target} HTTP/1.1"), &["Host: h"]);
            assert_eq!(bad(&buf), BadRequestReason::InvalidPath(e), "{target}");
            let reject = Reject::BadRequest(BadRequestReason::InvalidPath(e));
            assert_eq!((reject.status(), reject.reason()), (400, e.reason()));
        }
        // Absolute-form stays refused: it would name an authority besides Host.
        let buf = head("GET http://h/internal HTTP/1.1", &["Host: h"]);
        assert_eq!(bad(&buf), BadRequestReason::TargetForm);
        // The encoded-slash option is read from the limits.
        let buf = head("GET /a%2fb HTTP/1.1", &["Host: h"]);
        for (mode, want) in [
            (EncodedSlashes::Keep, "/a%2Fb"),
            (EncodedSlashes::Decode, "/a/b"),
        ] {
            let limits = HeadLimits {
                encoded_slashes: mode,
                ..HeadLimits::default()
            };
            let r = parse_request(&buf, &limits);
            assert_eq!(
                r.ok().flatten().map(|r| r.path().to_owned()).as_deref(),
                Some(want)
            );
        }
    }

    /// The obvious byte-at-a-time version of `scan_head`, for differential testing.
    fn scan_head_simple(buf: &[u8], limit: usize) -> Result<Option<usize>, Reject> {
        let n = buf.len().min(limit);
        let mut started = false;
        let mut line_start = 0;
        let mut i = 0;
        while i < n {
            let b = buf[i];
            if i == line_start && started && (b == b' ' || b == b'\t') {
                return Err(BadRequestReason::ObsFold.into());
            }
            if b == b'\r' {
                if i + 1 == n {
                    break;
                }
                if buf[i + 1] != b'\n' {
                    return Err(BadRequestReason::BareCr.into());
                }
                if i == line_start && started {
                    return Ok(Some(i + 2));
                }
                started |= i != line_start;
                i += 2;
                line_start = i;
                continue;
            }
            if b == b'\n' {
                return Err(BadRequestReason::BareLf.into());
            }
            if (b < 0x20 && b != b'\t') || b == 0x7f {
                return Err(BadRequestReason::ControlByte.into());
            }
            i += 1;
        }
        if buf.len() >= limit {
            Err(Reject::HeadTooLarge)
        } else {
            Ok(None)
        }
    }

    #[test]
    fn swar_control_byte_detection() {
        for pos in 0..8 {
            for b in 0..=255u8 {
                let mut w = *b"abcdefgh";
                w[pos] = b;
                let want = b < 0x20 || b == 0x7f;
                assert_eq!(
                    has_control_byte(u64::from_le_bytes(w)),
                    want,
                    "{b:#x} at {pos}"
                );
            }
        }
        assert!(!has_control_byte(u64::from_le_bytes([0xff; 8])));
        assert!(!has_control_byte(u64::from_le_bytes([0x80; 8])));
        assert!(!has_control_byte(u64::from_le_bytes([0x20; 8])));
    }

    #[test]
    fn scan_head_matches_simple_version() {
        // Deterministic xorshift; an alphabet rich in the bytes the scan cares about.
        let alphabet = b"\r\n\r\n\t \x00\x7f\x1f\x80\xffaaaaaaaaaaaaaaaa:/";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut buf: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            // Often start from a valid prefix so the end-of-head logic is exercised.
            if next() % 2 == 0 {
                let mut v = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
                v.append(&mut buf);
                buf = v;
            }
            let limit = (next() % 96) as usize;
            assert_eq!(
                scan_head(&buf, limit),
                scan_head_simple(&buf, limit),
                "{buf:?} limit {limit}"
            );
        }
    }

    // ---- sizes, partial input, tail -----------------------------------------------------

    #[test]
    fn incomplete_is_none() {
        for end in 0..UPGRADE.len() {
            assert_eq!(parse(&UPGRADE[..end]), Ok(None), "prefix of {end} bytes");
        }
        assert!(ok(UPGRADE).is_websocket());
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        let mut buf = b"\r\n\r\n".to_vec();
        buf.extend_from_slice(UPGRADE);
        let r = ok(&buf);
        assert_eq!(r.head_len, buf.len());
        assert!(r.is_websocket());
    }

    #[test]
    fn tail_is_preserved() {
        let mut buf = UPGRADE.to_vec();
        // An early masked text frame right after the head.
        buf.extend_from_slice(b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58");
        let r = ok(&buf);
        assert_eq!(r.head_len, UPGRADE.len());
        assert_eq!(
            &buf[r.head_len..],
            b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
        );
        // Body bytes after a plain head, and a pipelined request, are tail too.
        let mut buf = head("POST /x HTTP/1.1", &["Host: h", "Content-Length: 3"]);
        let len = buf.len();
        buf.extend_from_slice(b"abcGET / HTTP/1.1\r\n");
        let r = ok(&buf);
        assert_eq!(r.head_len, len);
        assert_eq!(&buf[r.head_len..], b"abcGET / HTTP/1.1\r\n");
    }

    #[test]
    fn too_large_by_size() {
        let limits = HeadLimits {
            max_head_bytes: UPGRADE.len(),
            max_headers: 64,
            ..HeadLimits::default()
        };
        // Exactly at the limit is fine.
        assert!(matches!(parse_request(UPGRADE, &limits), Ok(Some(_))));
        let small = HeadLimits {
            max_head_bytes: UPGRADE.len() - 1,
            ..limits
        };
        // Complete but one byte too long.
        assert_eq!(parse_request(UPGRADE, &small), Err(Reject::HeadTooLarge));
        // Incomplete, buffer at the limit.
        assert_eq!(
            parse_request(&UPGRADE[..UPGRADE.len() - 1], &small),
            Err(Reject::HeadTooLarge)
        );
        // Incomplete, below the limit.
        assert_eq!(
            parse_request(&UPGRADE[..UPGRADE.len() - 2], &small),
            Ok(None)
        );
        // Default limit: 16 KiB of header.
        let big = format!("X-Big: {}", "a".repeat(16 * 1024));
        let buf = head("GET / HTTP/1.1", &["Host: h", &big]);
        assert_eq!(parse(&buf), Err(Reject::HeadTooLarge));
        assert_eq!(parse(&buf[..16 * 1024]), Err(Reject::HeadTooLarge));
        assert_eq!(parse(&buf[..16 * 1024 - 1]), Ok(None));
        assert_eq!(Reject::HeadTooLarge.status(), 431);
    }

    #[test]
    fn too_large_by_header_count() {
        let names: Vec<String> = (0..64).map(|i| format!("X-H{i}: v")).collect();
        let mut lines: Vec<&str> = vec!["Host: h"];
        lines.extend(names.iter().map(String::as_str));
        // 65 headers with the default limit of 64.
        let buf = head("GET / HTTP/1.1", &lines);
        assert_eq!(parse(&buf), Err(Reject::HeadTooLarge));
        // 64 are fine.
        let buf = head("GET / HTTP/1.1", &lines[..64]);
        assert_eq!(ok(&buf).headers.len(), 64);
        // A configured maximum above the cap is clamped, not a panic.
        let limits = HeadLimits {
            max_head_bytes: 1 << 20,
            max_headers: 10_000,
            ..HeadLimits::default()
        };
        let many: Vec<String> = (0..300).map(|i| format!("X-H{i}: v")).collect();
        let mut lines: Vec<&str> = vec!["Host: h"];
        lines.extend(many.iter().map(String::as_str));
        let buf = head("GET / HTTP/1.1", &lines);
        assert_eq!(parse_request(&buf, &limits), Err(Reject::HeadTooLarge));
    }

    // ---- rewrite ---------------------------------------------------------------------------

    fn rewrite(buf: &[u8], peer: IpAddr) -> String {
        let r = ok(buf);
        let mut out = Vec::new();
        rewrite_for_origin(&r, peer, "http", &Forwarding::default(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn rewrite_websocket() {
        let buf = b"GET /chat?x=1 HTTP/1.1\r\n\
            Host: Example.com:8080\r\n\
            X-Forwarded-For: 6.6.6.6\r\n\
            Upgrade: websocket\r\n\
            Connection: keep-alive, Upgrade\r\n\
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
            Forwarded: for=6.6.6.6\r\n\
            Sec-WebSocket-Version: 13\r\n\
            Sec-WebSocket-Protocol: chat, superchat\r\n\
            Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
            x-forwarded-proto: https\r\n\
            X-Forwarded-Host: evil\r\n\
            \r\n";
        let out = rewrite(buf, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)));
        assert_eq!(
            out,
            "GET /chat?x=1 HTTP/1.1\r\n\
            Host: Example.com:8080\r\n\
            Upgrade: websocket\r\n\
            Connection: keep-alive, Upgrade\r\n\
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
            Sec-WebSocket-Version: 13\r\n\
            Sec-WebSocket-Protocol: chat, superchat\r\n\
            Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
            X-Forwarded-For: 192.0.2.7\r\n\
            X-Forwarded-Proto: http\r\n\
            X-Forwarded-Host: Example.com:8080\r\n\
            X-Real-IP: 192.0.2.7\r\n\
            \r\n"
        );
    }

    #[test]
    fn rewrite_plain() {
        let buf = b"POST /api HTTP/1.1\r\n\
            Host: h:81\r\n\
            Upgrade: h2c\r\n\
            Connection: Upgrade, HTTP2-Settings, X-Secret, Host, Content-Length\r\n\
            HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\
            Keep-Alive: timeout=5\r\n\
            Proxy-Connection: keep-alive\r\n\
            X-Secret: s\r\n\
            Content-Length: 3\r\n\
            Accept: */*\r\n\
            \r\nabc";
        let out = rewrite(
            buf,
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        );
        assert_eq!(
            out,
            "POST /api HTTP/1.1\r\n\
            Host: h:81\r\n\
            Content-Length: 3\r\n\
            Accept: */*\r\n\
            Connection: close\r\n\
            X-Forwarded-For: 2001:db8::1\r\n\
            X-Forwarded-Proto: http\r\n\
            X-Forwarded-Host: h:81\r\n\
            X-Real-IP: 2001:db8::1\r\n\
            \r\n"
        );
    }

    #[test]
    fn rewrite_plain_http10_without_host_and_mapped_peer() {
        let buf = b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\nUser-Agent: t\r\n\r\n";
        let peer = IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped());
        let mut out = Vec::from(&b"keep"[..]);
        let r = ok(buf);
        let no_real_ip = Forwarding {
            x_real_ip: XRealIp::Remove,
            ..Forwarding::default()
        };
        rewrite_for_origin(&r, peer, "https", &no_real_ip, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "keepGET /x HTTP/1.0\r\n\
            User-Agent: t\r\n\
            Connection: close\r\n\
            X-Forwarded-For: 10.1.2.3\r\n\
            X-Forwarded-Proto: https\r\n\
            \r\n"
        );
    }

    /// A head with every forwarding header a client might send, two lines of XFF included.
    const SPOOFED: &[u8] = b"GET /a/./b?q=%2e%2e HTTP/1.1\r\n\
        Host: app.test\r\n\
        X-Real-IP: 6.6.6.6\r\n\
        X-Forwarded-For: 6.6.6.6, 203.0.113.5\r\n\
        x-real-ip: 7.7.7.7\r\n\
        Forwarded: for=6.6.6.6;proto=https\r\n\
        X-Forwarded-For: 10.9.9.9\r\n\
        X-Forwarded-Proto: https\r\n\
        X-Forwarded-Host: public.test\r\n\
        Accept: */*\r\n\
        \r\n";

    fn rewrite_with(buf: &[u8], peer: &str, forwarding: &Forwarding) -> String {
        let r = ok(buf);
        let mut out = Vec::new();
        let peer: IpAddr = peer.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        rewrite_for_origin(&r, peer, "http", forwarding, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    fn trusting_ten() -> Forwarding {
        Forwarding {
            trusted_proxies: vec![
                "10.0.0.0/8"
                    .parse()
                    .unwrap_or(crate::firewall::Cidr::V4 { addr: 0, len: 32 }),
            ],
            x_real_ip: XRealIp::Set,
        }
    }

    #[test]
    fn rewrite_replaces_every_forwarding_header_from_an_untrusted_peer() {
        let want = "GET /a/b?q=%2e%2e HTTP/1.1\r\n\
            Host: app.test\r\n\
            Accept: */*\r\n\
            Connection: close\r\n\
            X-Forwarded-For: 192.0.2.7\r\n\
            X-Forwarded-Proto: http\r\n\
            X-Forwarded-Host: app.test\r\n\
            X-Real-IP: 192.0.2.7\r\n\
            \r\n";
        assert_eq!(
            rewrite_with(SPOOFED, "192.0.2.7", &Forwarding::default()),
            want
        );
        // The same from a peer outside the trusted ranges.
        assert_eq!(rewrite_with(SPOOFED, "192.0.2.7", &trusting_ten()), want);
        let remove = Forwarding {
            x_real_ip: XRealIp::Remove,
            ..trusting_ten()
        };
        let out = rewrite_with(SPOOFED, "192.0.2.7", &remove);
        assert!(!out.to_ascii_lowercase().contains("x-real-ip"), "{out}");
    }

    #[test]
    fn rewrite_keeps_and_extends_the_chain_of_a_trusted_proxy() {
        assert_eq!(
            rewrite_with(SPOOFED, "::ffff:10.0.0.1", &trusting_ten()),
            "GET /a/b?q=%2e%2e HTTP/1.1\r\n\
            Host: app.test\r\n\
            Forwarded: for=6.6.6.6;proto=https\r\n\
            X-Forwarded-Proto: https\r\n\
            X-Forwarded-Host: public.test\r\n\
            Accept: */*\r\n\
            Connection: close\r\n\
            X-Forwarded-For: 6.6.6.6, 203.0.113.5, 10.9.9.9, 10.0.0.1\r\n\
            X-Real-IP: 203.0.113.5\r\n\
            \r\n"
        );
        // A trusted proxy that sent no forwarding headers: ours are added.
        let out = rewrite_with(UPGRADE, "10.0.0.1", &trusting_ten());
        assert!(
            out.ends_with(
                "X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: http\r\n\
                 X-Forwarded-Host: example.com:8080\r\nX-Real-IP: 10.0.0.1\r\n\r\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn rewrite_forwards_the_normalized_path_and_the_query_as_sent() {
        for (line, want) in [
            ("GET /ws/./chat HTTP/1.1", "GET /ws/chat HTTP/1.1"),
            (
                "GET //ws/%63hat?a=%2F&b=/../x HTTP/1.1",
                "GET /ws/chat?a=%2F&b=/../x HTTP/1.1",
            ),
            ("GET /x/../ws? HTTP/1.1", "GET /ws? HTTP/1.1"),
            ("GET /ws HTTP/1.0", "GET /ws HTTP/1.0"),
            ("OPTIONS * HTTP/1.1", "OPTIONS * HTTP/1.1"),
        ] {
            let buf = head(line, &["Host: h"]);
            let out = rewrite(&buf, IpAddr::V4(Ipv4Addr::LOCALHOST));
            assert!(out.starts_with(&format!("{want}\r\n")), "{line}: {out}");
        }
    }

    #[test]
    fn rewrite_output_parses_back() {
        let out = rewrite(UPGRADE, IpAddr::V4(Ipv4Addr::LOCALHOST));
        let r = ok(out.as_bytes());
        assert!(r.is_websocket());
        assert_eq!(r.header("x-forwarded-for"), Some(&b"127.0.0.1"[..]));
        assert_eq!(r.head_len, out.len());
    }

    // ---- errors ----------------------------------------------------------------------------

    #[test]
    fn error_responses_are_complete() {
        for status in [
            400u16, 403, 404, 408, 421, 426, 429, 431, 500, 502, 503, 504,
        ] {
            let bytes = error_response(status);
            let mut hs = [httparse::EMPTY_HEADER; 16];
            let mut resp = httparse::Response::new(&mut hs);
            let Ok(httparse::Status::Complete(n)) = resp.parse(bytes) else {
                panic!("{status}: not a complete response");
            };
            assert_eq!(resp.code, Some(status));
            let find = |name: &str| {
                resp.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| h.value)
            };
            let cl = find("content-length").unwrap_or_default();
            assert_eq!(
                std::str::from_utf8(cl).ok().and_then(|s| s.parse().ok()),
                Some(bytes.len() - n),
                "{status}: Content-Length"
            );
            assert_eq!(find("connection"), Some(&b"close"[..]), "{status}");
            assert!(bytes.ends_with(b"\n"));
            assert_eq!(
                find("sec-websocket-version"),
                (status == 426).then_some(&b"13"[..])
            );
            assert_eq!(find("retry-after"), (status == 429).then_some(&b"1"[..]));
        }
        assert_eq!(error_response(599), error_response(500));
        assert_eq!(
            Reject::BadRequest(BadRequestReason::ObsFold).response(),
            error_response(400)
        );
    }

    #[test]
    fn unavailable_has_retry_after() {
        for (secs, expect) in [(0u32, "1"), (1, "1"), (30, "30")] {
            let bytes = unavailable_response(secs);
            let mut hs = [httparse::EMPTY_HEADER; 16];
            let mut resp = httparse::Response::new(&mut hs);
            let Ok(httparse::Status::Complete(n)) = resp.parse(&bytes) else {
                panic!("not a complete response");
            };
            assert_eq!(resp.code, Some(503));
            let find = |name: &str| {
                resp.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| h.value.to_vec())
            };
            assert_eq!(find("retry-after"), Some(expect.as_bytes().to_vec()));
            assert_eq!(find("connection"), Some(b"close".to_vec()));
            let cl: usize = String::from_utf8(find("content-length").expect("length"))
                .expect("utf-8")
                .parse()
                .expect("number");
            assert_eq!(cl, bytes.len() - n);
        }
    }

    #[test]
    fn reason_labels_are_snake_case() {
        let all = [
            BadRequestReason::Malformed,
            BadRequestReason::BareCr,
            BadRequestReason::BareLf,
            BadRequestReason::ControlByte,
            BadRequestReason::ObsFold,
            BadRequestReason::ContentLengthAndTransferEncoding,
            BadRequestReason::DuplicateContentLength,
            BadRequestReason::InvalidContentLength,
            BadRequestReason::UnsupportedTransferEncoding,
            BadRequestReason::MissingHost,
            BadRequestReason::DuplicateHost,
            BadRequestReason::InvalidHost,
            BadRequestReason::TargetForm,
            BadRequestReason::InvalidPath(PathError::NotAbsolute),
            BadRequestReason::InvalidPath(PathError::BadEscape),
            BadRequestReason::InvalidPath(PathError::EncodedControl),
            BadRequestReason::InvalidPath(PathError::EncodedSlash),
            BadRequestReason::InvalidPath(PathError::AboveRoot),
            BadRequestReason::InvalidPath(PathError::SegmentParams),
            BadRequestReason::InvalidPath(PathError::Fragment),
            BadRequestReason::UpgradeMethod,
            BadRequestReason::UpgradeHttp10,
            BadRequestReason::UpgradeBody,
            BadRequestReason::MissingKey,
            BadRequestReason::DuplicateKey,
            BadRequestReason::InvalidKey,
        ];
        let mut labels: Vec<&str> = all.iter().map(|r| r.reason()).collect();
        labels.push(Reject::VersionNotSupported.reason());
        labels.push(Reject::HeadTooLarge.reason());
        for l in &labels {
            assert!(
                l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{l}"
            );
        }
        let n = labels.len();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), n, "labels are unique");
    }
}
