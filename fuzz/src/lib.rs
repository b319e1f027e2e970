//! The fuzz checks for wsedge, shared by the libFuzzer targets (`fuzz_targets/`) and the
//! stable-toolchain smoke test (`tests/smoke.rs`).
//!
//! Each function takes arbitrary bytes, drives one piece of pure code with them and panics
//! when an invariant breaks (a panic inside the code under test fails the same way).
//!
//! - [`handshake`] checks `handshake::parse_request` + `rewrite_for_origin`.
//! - [`path`] checks `path::normalize` on its own and through `parse_request`.
//! - [`response`] checks `response::parse_response`.
//! - [`config`] checks `wsedge_command::Config::from_toml`.
//! - [`frame`] checks the frame codec.
//!
//! The newer targets live in their own modules, each with its invariants in its `//!`:
//! - [`session()`]: the connection session driven through the simulated worker
//!   (`session::sim`), with the real session API;
//! - [`endpoint()`]: the built-in functions' `endpoint::ServerEndpoint`, against itself
//!   (chunking, modes, `echo`) and, for structured inputs, the frames it was given;
//! - [`channels()`]: the broadcast client protocol against `serde_json`'s reading, and the
//!   channel `Hub` against a model;
//! - [`frames_relay()`]: the `frames` relay's frame state against an independent reading of
//!   both streams (well-formed output, data kept, nothing after the proxy's Close);
//! - [`firewall()`]: rule evaluation against a model of the documented semantics;
//! - [`wire()`]: the control protocol's framing and decoding, with the allocator watched;
//! - [`since()`]: a recovering client's `since=<offset>:<epoch>`, against the grammar, and
//!   its round trip through `Display`;
//! - [`tls()`]: `wsedge_tls::TlsServer`'s record feeding: raw bytes, and interleavings of
//!   feed / take / seal / close with a real rustls client.
//!
//! `unsafe` is denied but for the allocation watch (`alloc.rs`), which forwards to the system
//! allocator.

#![deny(unsafe_code)]

mod alloc;
mod channels;
mod endpoint;
mod firewall;
mod frames_relay;
mod session;
mod since;
mod wire;

pub use channels::channels;
pub use endpoint::endpoint;
pub use firewall::firewall;
pub use frames_relay::frames_relay;
pub use session::session;
pub use since::since;
pub use wire::wire;

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

mod tls_checks;
pub use tls_checks::tls;
use wsedge_proto::accept::accept_key;
use wsedge_proto::firewall::Cidr;
use wsedge_proto::forwarding::{Forwarding, XRealIp};
use wsedge_proto::frame::tracker::Event as FrameEvent;
use wsedge_proto::frame::{
    FrameError, FrameHeader, FrameTracker, LengthRule, MAX_HEADER_LEN, OpCode, Role, TrackerConfig,
    Utf8Validator, build_close, parse_close_payload, parse_header, write_header,
};
use wsedge_proto::handshake::{
    HeadLimits, MAX_HEADERS_CAP, Request, RequestKind, parse_request, rewrite_for_origin,
};
use wsedge_proto::path::{EncodedSlashes, normalize};
use wsedge_proto::response::{ResponseError, parse_response};

/// The key of RFC 6455's example and its accept value.
pub const TEST_KEY: &[u8] = b"dGhlIHNhbXBsZSBub25jZQ==";

/// Limits that accept anything the rewriter can produce from a head within `limits`.
fn roomy(len: usize, limits: &HeadLimits) -> HeadLimits {
    HeadLimits {
        max_head_bytes: len + 1,
        max_headers: MAX_HEADERS_CAP,
        ..*limits
    }
}

const SLASH_MODES: [EncodedSlashes; 3] = [
    EncodedSlashes::Reject,
    EncodedSlashes::Keep,
    EncodedSlashes::Decode,
];

// ---------------------------------------------------------------------------------------------
// handshake
// ---------------------------------------------------------------------------------------------

/// `parse_request` under the default limits, under small ones and with each encoded-slash
/// mode; every accepted head is rewritten for the origin and checked.
pub fn handshake(data: &[u8]) {
    let small = HeadLimits {
        max_head_bytes: 512,
        max_headers: 8,
        encoded_slashes: EncodedSlashes::Keep,
    };
    let decode = HeadLimits {
        encoded_slashes: EncodedSlashes::Decode,
        ..HeadLimits::default()
    };
    for limits in [HeadLimits::default(), small, decode] {
        check_request(data, &limits);
    }
}

fn check_request(data: &[u8], limits: &HeadLimits) {
    let result = parse_request(data, limits);
    match &result {
        Ok(None) => {
            // Incomplete is only allowed while under the limit.
            assert!(data.len() < limits.max_head_bytes, "Ok(None) at the limit");
        }
        Err(reject) => {
            assert!(matches!(reject.status(), 400 | 426 | 431));
            assert!(reject.response().starts_with(b"HTTP/1.1 "));
            assert!(!reject.reason().is_empty());
        }
        Ok(Some(req)) => check_accepted(data, limits, req),
    }
}

fn check_accepted(data: &[u8], limits: &HeadLimits, req: &Request<'_>) {
    let n = req.head_len;
    assert!(
        n <= data.len() && n <= limits.max_head_bytes,
        "head_len {n}"
    );
    assert!(
        data[..n].ends_with(b"\r\n\r\n"),
        "head must end with the blank line"
    );
    assert!(req.headers.len() <= limits.max_headers);
    assert!(req.minor_version <= 1);
    assert!(req.target.starts_with('/') || req.target == "*");
    assert!(!req.target.contains('#'), "a fragment was accepted");
    if req.target != "*" {
        let raw = req.target.split_once('?').map_or(req.target, |(p, _)| p);
        let normal = normalize(raw, limits.encoded_slashes).expect("accepted path normalizes");
        assert_eq!(req.path(), &*normal);
    }
    if let RequestKind::WebSocket { key } = req.kind {
        assert_eq!(req.method, "GET");
        assert_eq!(req.minor_version, 1);
        assert_eq!(key.len(), 24, "a valid key is base64 of 16 bytes");
    }

    // The decision depends on the head alone, and every shorter prefix asks for more.
    let again = parse_request(&data[..n], limits)
        .expect("head alone")
        .expect("complete");
    assert_eq!(&again, req, "head alone parses differently");
    for k in [0, n / 2, n - 1] {
        assert!(
            matches!(parse_request(&data[..k], limits), Ok(None)),
            "prefix of {k} of a {n}-byte head is not `need more`"
        );
    }

    let peers = [
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
        IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped()),
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    ];
    let peer = peers[data.len() % peers.len()];
    // Trust nobody; then trust every peer above (the client's chain is kept and extended),
    // without X-Real-IP.
    let trusting = Forwarding {
        trusted_proxies: vec![
            Cidr::V4 {
                addr: 0xcb00_7100,
                len: 24,
            },
            Cidr::V4 {
                addr: 0x0a00_0000,
                len: 8,
            },
            Cidr::V6 {
                addr: 0x2001_0db8 << 96,
                len: 32,
            },
        ],
        x_real_ip: XRealIp::Remove,
    };
    let mut out = Vec::new();
    for forwarding in [&Forwarding::default(), &trusting] {
        out.clear();
        rewrite_for_origin(req, peer, "http", forwarding, &mut out);
        check_rewritten(req, peer, forwarding, limits, &out);
    }

    // Head + tail: the rewritten head ends where it says, and the tail follows unchanged.
    let tail = &data[n..];
    let mut joined = out.clone();
    joined.extend_from_slice(tail);
    let re = parse_request(&joined, &roomy(joined.len(), limits))
        .expect("rewritten head + tail")
        .expect("complete");
    assert_eq!(
        re.head_len,
        out.len(),
        "rewritten head length with its tail"
    );
    assert_eq!(
        &joined[re.head_len..],
        tail,
        "the tail after the rewritten head"
    );
}

fn check_rewritten(
    req: &Request<'_>,
    peer: IpAddr,
    forwarding: &Forwarding,
    limits: &HeadLimits,
    out: &[u8],
) {
    let re = match parse_request(out, &roomy(out.len(), limits)) {
        Ok(Some(r)) => r,
        other => panic!(
            "rewritten head does not re-parse: {other:?}\n{}",
            String::from_utf8_lossy(out)
        ),
    };
    assert_eq!(re.head_len, out.len());
    assert_eq!(re.method, req.method);
    // The normalized path, the query as sent.
    assert_eq!(re.path(), req.path());
    assert_eq!(
        re.target.split_once('?').map_or(re.target, |(p, _)| p),
        req.path()
    );
    assert_eq!(re.query(), req.query());
    assert_eq!(re.minor_version, req.minor_version);
    assert_eq!(re.host, req.host);
    assert_eq!(re.kind, req.kind, "classification changed by the rewrite");

    let count = |name: &str| {
        re.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    };
    let sent = |name: &str| {
        req.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    };
    let peer_text = peer.to_canonical().to_string();
    let trusted = forwarding.trusts(peer);
    assert_eq!(count("x-forwarded-for"), 1);
    let xff = re.header("x-forwarded-for").unwrap_or_default();
    if trusted {
        // The client's chain, then the peer.
        let chain: Vec<&[u8]> = req
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-for"))
            .flat_map(|(_, v)| v.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|e| !e.is_empty())
            .chain(std::iter::once(peer_text.as_bytes()))
            .collect();
        assert_eq!(xff, chain.join(&b", "[..]).as_slice());
        assert_eq!(count("forwarded"), sent("forwarded"));
        assert_eq!(count("x-forwarded-proto"), sent("x-forwarded-proto").max(1));
        let host = sent("x-forwarded-host").max(usize::from(req.host.is_some()));
        assert_eq!(count("x-forwarded-host"), host);
    } else {
        assert_eq!(xff, peer_text.as_bytes());
        assert_eq!(count("x-forwarded-proto"), 1);
        assert_eq!(count("forwarded"), 0, "a client Forwarded header survived");
        assert_eq!(count("x-forwarded-host"), usize::from(req.host.is_some()));
    }
    match forwarding.x_real_ip {
        XRealIp::Remove => assert_eq!(count("x-real-ip"), 0),
        XRealIp::Set => {
            assert_eq!(count("x-real-ip"), 1);
            if !trusted {
                assert_eq!(re.header("x-real-ip"), Some(peer_text.as_bytes()));
            }
        }
    }
    if !req.is_websocket() {
        assert_eq!(count("upgrade"), 0);
        assert_eq!(count("connection"), 1);
        assert_eq!(re.header("connection"), Some(b"close".as_slice()));
        // Framing headers travel unchanged.
        for name in ["content-length", "transfer-encoding"] {
            assert_eq!(re.header(name), req.header(name), "{name}");
        }
    }
    // The origin never sees more header lines than we accepted, plus ours.
    assert!(re.headers.len() <= req.headers.len() + 5);
}

// ---------------------------------------------------------------------------------------------
// path
// ---------------------------------------------------------------------------------------------

/// `path::normalize` in every encoded-slash mode: an accepted path's normal form starts with
/// `/`, has no empty (but a trailing), `.` or `..` segment, no escaped unreserved character,
/// only upper-case escapes (`%2F`/`%5C` only when kept), no `\` or `#`, and is its own normal
/// form (returned borrowed). The same bytes as a request-target: `parse_request` routes on
/// exactly that normal form, and the rewritten head carries it.
pub fn path(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for mode in SLASH_MODES {
        let Ok(normal) = normalize(text, mode) else {
            continue;
        };
        check_normal(text, &normal, mode);
        match normalize(&normal, mode) {
            Ok(Cow::Borrowed(again)) => assert_eq!(again, &*normal),
            other => panic!("{text:?} -> {normal:?} -> {other:?}: not idempotent"),
        }
        if matches!(normal, Cow::Borrowed(_)) {
            assert_eq!(&*normal, text, "borrowed but changed");
        }
    }
    if text.len() > 4096 || text.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'?') {
        return;
    }
    let head = format!("GET {text} HTTP/1.1\r\nHost: h\r\n\r\n");
    for mode in SLASH_MODES {
        let limits = HeadLimits {
            encoded_slashes: mode,
            ..HeadLimits::default()
        };
        let parsed = parse_request(head.as_bytes(), &limits);
        let want = normalize(text, mode);
        match (&parsed, &want) {
            (Ok(Some(r)), Ok(n)) => {
                assert_eq!(r.path(), &**n);
                let mut out = Vec::new();
                rewrite_for_origin(
                    r,
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    "http",
                    &Forwarding::default(),
                    &mut out,
                );
                let line_end = out.iter().position(|&b| b == b'\r').unwrap_or(out.len());
                let line = String::from_utf8_lossy(&out[..line_end]);
                assert_eq!(line, format!("GET {n} HTTP/1.1"));
            }
            // Both refuse: the request is a 400, never forwarded.
            (Err(_), Err(_)) => {}
            _ => panic!("{text:?}: parse_request gave {parsed:?} but normalize {want:?}"),
        }
    }
}

fn check_normal(input: &str, n: &str, mode: EncodedSlashes) {
    assert!(n.starts_with('/'), "{input:?} -> {n:?}");
    let segs: Vec<&str> = n[1..].split('/').collect();
    for (k, s) in segs.iter().enumerate() {
        assert!(!s.is_empty() || k + 1 == segs.len(), "{input:?} -> {n:?}");
        let name = s.split(';').next().unwrap_or("");
        assert!(
            !(matches!(name, "." | "..") || (s.contains(';') && name.is_empty())),
            "{input:?} -> {n:?}: dot-like segment {s:?}"
        );
    }
    assert!(!n.contains('\\') && !n.contains('#'), "{input:?} -> {n:?}");
    let b = n.as_bytes();
    for (k, _) in n.match_indices('%') {
        let hex = |i: usize| {
            b.get(i)
                .filter(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c))
                .map(|&c| (c as char).to_digit(16).unwrap_or(0) as u8)
        };
        let (Some(hi), Some(lo)) = (hex(k + 1), hex(k + 2)) else {
            panic!("{input:?} -> {n:?}: escape not two upper-case hex digits");
        };
        let v = hi << 4 | lo;
        let unreserved = v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~');
        assert!(!unreserved && v >= 0x20 && v != 0x7f, "{input:?} -> {n:?}");
        if v == b'/' || v == b'\\' {
            assert_eq!(mode, EncodedSlashes::Keep, "{input:?} -> {n:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// response
// ---------------------------------------------------------------------------------------------

/// `parse_response` for a plain request and for an upgrade with the RFC example key.
pub fn response(data: &[u8]) {
    let expected = accept_key(TEST_KEY);
    let small = HeadLimits {
        max_head_bytes: 512,
        max_headers: 8,
        ..HeadLimits::default()
    };
    for limits in [HeadLimits::default(), small] {
        for accept in [None, Some(&expected)] {
            check_response(data, &limits, accept);
        }
    }
}

fn check_response(data: &[u8], limits: &HeadLimits, accept: Option<&[u8; 28]>) {
    match parse_response(data, limits, accept) {
        Ok(None) => assert!(data.len() < limits.max_head_bytes, "Ok(None) at the limit"),
        Err(e) => {
            assert_eq!(e.status(), 502);
            assert!(!e.reason().is_empty());
            if let ResponseError::BadUpgrade(_) = e {
                // Only a 101 can be a bad upgrade (httparse skips leading empty lines, so
                // the status line need not start the buffer).
                assert!(data.windows(4).any(|w| w == b" 101"));
            }
        }
        Ok(Some(r)) => {
            let n = r.head_len;
            assert!(n <= data.len() && n <= limits.max_head_bytes);
            assert!(data[..n].ends_with(b"\n"), "head must end with a line end");
            // Three digits. NOTE: httparse also accepts 000-099, which `Response::status`
            // documents as 100..=999; such a status is relayed as is (reported, not fixed here).
            assert!(r.status <= 999);
            // A 101 is either a tunnel or an error, never relayed as is; a tunnel needs our
            // upgrade.
            assert_eq!(r.upgraded, r.status == 101);
            if r.upgraded {
                assert!(accept.is_some(), "tunnel without an upgrade request");
            }
            let again = parse_response(&data[..n], limits, accept);
            assert_eq!(again, Ok(Some(r)), "head alone parses differently");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// config
// ---------------------------------------------------------------------------------------------

/// `Config::from_toml` never panics; an accepted config holds only valid values, an error
/// names the file.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match wsedge_command::Config::from_toml(text, "fuzz.toml") {
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with("fuzz.toml"),
                "error does not name the file: {msg}"
            );
        }
        Ok(c) => {
            assert!(!c.dataplane.listen.is_empty() || !c.tls.listeners.is_empty());
            for l in &c.tls.listeners {
                assert!(!l.listen.is_empty());
                assert_eq!(
                    l.client_ca.is_some(),
                    l.client_auth != wsedge_tls::ClientAuth::None
                );
                let ids = l.certificates.clone().unwrap_or_default();
                assert!(
                    ids.iter()
                        .all(|id| c.tls.certificates.iter().any(|s| &s.id == id))
                );
                assert!(l.certificates.is_some() || !c.tls.certificates.is_empty());
            }
            assert!(c.dataplane.workers.is_none_or(|w| w > 0));
            let r = &c.relay;
            assert!(r.buffer_size.is_power_of_two() && (1024..=1 << 20).contains(&r.buffer_size));
            assert!(r.buffer_count.is_power_of_two() && r.buffer_count <= 32768);
            let mut all = vec![c.limits];
            for route in &c.routes {
                assert!(!route.origins.is_empty(), "route without origins");
                assert!(route.path_prefix.starts_with('/'));
                assert!(!route.name.is_empty() && route.name.len() <= 64);
                all.push(route.limits);
            }
            for l in all {
                assert!((1..=MAX_HEADERS_CAP).contains(&l.max_headers));
                assert!((512..=1 << 20).contains(&l.max_head_bytes));
                assert!(l.max_connection_time_jitter <= 50);
            }
            // Validation is complete: the engine accepts every firewall that passed it.
            if let Err(e) = c.firewall.build() {
                panic!("validated firewall refused by the engine: {e}");
            }
            // Deterministic: the same text validates to the same config.
            let again = wsedge_command::Config::from_toml(text, "fuzz.toml").expect("again");
            assert_eq!(again, c);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// frame
// ---------------------------------------------------------------------------------------------

/// What a `FrameTracker` reported, without the chunk-relative ranges.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Header(FrameHeader),
    /// A frame's payload, summed over its `Payload` events.
    Payload(u64),
    FrameEnd(OpCode, bool),
    MessageEnd(OpCode, u64),
    Error(FrameError),
}

/// Tracks `stream` cut into chunks at `cuts`; checks every range lies inside its chunk and
/// in order, and returns what was seen.
fn track(role: Role, config: TrackerConfig, stream: &[u8], cuts: &[usize]) -> Vec<Seen> {
    let mut t = FrameTracker::new(role, config);
    let mut seen = Vec::new();
    let mut payload: Option<u64> = None;
    let mut start = 0;
    for end in cuts.iter().copied().chain([stream.len()]) {
        let chunk = &stream[start..end.max(start)];
        start = end.max(start);
        let mut pos = 0;
        let mut last = 0;
        loop {
            match t.poll_event(chunk, &mut pos) {
                Ok(None) => {
                    assert_eq!(pos, chunk.len(), "chunk not consumed");
                    break;
                }
                Ok(Some(event)) => {
                    let range = match &event {
                        FrameEvent::Header { range, .. } | FrameEvent::Payload { range, .. } => {
                            Some(range.clone())
                        }
                        _ => None,
                    };
                    if let Some(r) = range {
                        assert!(r.start <= r.end && r.end <= chunk.len(), "{r:?}");
                        assert!(r.start >= last, "ranges out of order");
                        last = r.end;
                    }
                    match event {
                        FrameEvent::Header { header, .. } => {
                            seen.push(Seen::Header(header));
                            payload = Some(0);
                        }
                        FrameEvent::Payload { range, offset } => {
                            let p = payload.as_mut().expect("payload before a header");
                            assert_eq!(offset, *p, "payload offset");
                            *p += range.len() as u64;
                        }
                        FrameEvent::FrameEnd { opcode, fin } => {
                            seen.push(Seen::Payload(payload.take().unwrap_or(0)));
                            seen.push(Seen::FrameEnd(opcode, fin));
                        }
                        FrameEvent::MessageEnd { opcode, len } => {
                            seen.push(Seen::MessageEnd(opcode, len))
                        }
                    }
                }
                Err(e) => {
                    // Errors are sticky.
                    assert_eq!(t.poll_event(chunk, &mut pos), Err(e));
                    seen.push(Seen::Error(e));
                    return seen;
                }
            }
        }
    }
    seen
}

/// The frame codec: a `FrameTracker` reports the same frames, messages and error however the
/// stream is cut into chunks; each frame's payload adds up to its header's length; the
/// streaming UTF-8 validator agrees with `std::str::from_utf8` for any chunking; close
/// payloads and encoded headers never panic and round-trip.
pub fn frame(data: &[u8]) {
    let [flags, seed, stream @ ..] = data else {
        return;
    };
    let role = if flags & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let config = TrackerConfig {
        max_message_len: if flags & 2 == 0 { u64::MAX } else { 1000 },
        allowed_rsv: (flags >> 2) & 7,
        length_rule: if flags & 32 == 0 {
            LengthRule::Minimal
        } else {
            LengthRule::AllowNonMinimal
        },
    };
    // Cut points from a small LCG seeded by `seed`, including 1-byte chunks.
    let mut x = u32::from(*seed) | 1;
    let mut cuts = Vec::new();
    let mut at = 0usize;
    while at < stream.len() {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        at += 1 + (x >> 16) as usize % if seed & 1 == 0 { 3 } else { 64 };
        cuts.push(at.min(stream.len()));
    }
    let whole = track(role, config, stream, &[]);
    let chunked = track(role, config, stream, &cuts);
    assert_eq!(whole, chunked, "events depend on chunking");
    let mut open: Option<FrameHeader> = None;
    for s in &whole {
        match s {
            Seen::Header(h) => {
                assert_eq!(h.masked(), role == Role::Server, "mask rule");
                open = Some(*h);
            }
            Seen::Payload(n) => assert_eq!(Some(*n), open.map(|h| h.payload_len)),
            Seen::MessageEnd(_, len) => assert!(*len <= config.max_message_len),
            _ => {}
        }
    }
    // A header that parses is re-encoded to the same bytes when it is minimally encoded.
    if let Ok(Some((h, n))) = parse_header(stream) {
        let mut out = [0u8; MAX_HEADER_LEN];
        let m = write_header(&h, &mut out);
        assert_eq!(m, h.encoded_len());
        let (again, used) = parse_header(&out[..m])
            .expect("re-encoded")
            .expect("complete");
        assert_eq!((again, used), (h, m));
        if n == m {
            assert_eq!(
                &out[..m],
                &stream[..n],
                "minimal header re-encoded differently"
            );
        }
    }
    // UTF-8, whole and chunked.
    let std_ok = std::str::from_utf8(stream).is_ok();
    let mut v = Utf8Validator::new();
    assert_eq!(v.feed(stream).and_then(|()| v.finish()).is_ok(), std_ok);
    let mut v = Utf8Validator::new();
    let mut start = 0;
    let mut ok = true;
    for &end in &cuts {
        ok &= v.feed(&stream[start..end]).is_ok();
        start = end;
    }
    ok &= v.finish().is_ok();
    assert_eq!(ok, std_ok, "chunked UTF-8 validation");
    // Close payloads (a control frame's payload is at most 125 bytes; the tracker enforces
    // that, and `build_close` cuts longer reasons).
    if let (true, Ok(Some((code, reason)))) = (stream.len() <= 125, parse_close_payload(stream)) {
        let built = build_close(code, reason);
        let (h, n) = parse_header(&built).expect("built").expect("complete");
        assert_eq!(h.opcode, OpCode::Close);
        assert_eq!(parse_close_payload(&built[n..]), Ok(Some((code, reason))));
    }
}
