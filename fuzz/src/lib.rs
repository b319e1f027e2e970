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
//! - [`conn`] checks the connection state machine `conn::Conn`, driven by a sequence of events
//!   decoded with `arbitrary`, the way the ring driver drives it.
//! - [`tls`] checks `wsedge_tls::TlsServer`'s record feeding: raw bytes, and interleavings of
//!   feed / take / seal / close with a real rustls client.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::{Arbitrary, Unstructured};

mod tls_checks;
pub use tls_checks::tls;
use wsedge_proto::accept::accept_key;
use wsedge_proto::conn::{
    CloseReason, Conn, ConnectAction, ConnectFailure, HeadAction, HeadContext, OriginAction, Phase,
    RouteTimers, Side, TimerAction, Upgrade,
};
use wsedge_proto::firewall::Cidr;
use wsedge_proto::forwarding::{Forwarding, XRealIp};
use wsedge_proto::frame::tracker::Event as FrameEvent;
use wsedge_proto::frame::{
    FrameError, FrameHeader, FrameTracker, LengthRule, MAX_HEADER_LEN, OpCode, Role, TrackerConfig,
    Utf8Validator, build_close, parse_close_payload, parse_header, write_header,
};
use wsedge_proto::handshake::{
    BodyLength, HeadLimits, MAX_HEADERS_CAP, Request, RequestKind, parse_request,
    rewrite_for_origin,
};
use wsedge_proto::path::{EncodedSlashes, normalize};
use wsedge_proto::response::{ResponseError, parse_response};
use wsedge_proto::route::{HostPattern, RouteTable};
use wsedge_proto::wheel::Tick;

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
// conn
// ---------------------------------------------------------------------------------------------

/// Largest recv completion the model delivers at once (one provided buffer).
pub const CHUNK: usize = 16384;
/// The in-flight cap per direction.
pub const MAX_IN_FLIGHT: u64 = 65536;
const HANDSHAKE_MS: u64 = 300;
const TIMERS: RouteTimers = RouteTimers {
    connect_ms: 100,
    origin_handshake_ms: 200,
    idle_ms: 1_000,
    max_connection_ms: 5_000,
    jitter_pct: 10,
};

/// Realistic client heads, so short inputs reach the later phases.
const CLIENT_HEADS: [&[u8]; 6] = [
    b"GET /ws/chat HTTP/1.1\r\nHost: chat.example.com\r\nUpgrade: websocket\r\n\
      Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
      Sec-WebSocket-Version: 13\r\n\r\n",
    b"POST /api/x HTTP/1.1\r\nHost: a.example.com\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /api/x HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    b"GET /api/plain HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /nowhere HTTP/1.1\r\nHost: other.test\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: chat.example.com\r\nUpgrade: websocket\r\n\
      Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
      Sec-WebSocket-Version: 8\r\n\r\n",
];

/// Realistic origin response heads (the 101s answer [`TEST_KEY`]).
const ORIGIN_HEADS: [&[u8]; 5] = [
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
      Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
      Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x05hello",
    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\nConnection: close\r\n\r\nforbidden",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
      Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
];

/// One thing the ring driver could report to a connection.
#[derive(Debug, Clone, Arbitrary)]
pub enum Event {
    /// Bytes of the client head (appended to what was read so far).
    ClientBytes(Vec<u8>),
    /// A whole realistic head from [`CLIENT_HEADS`].
    ClientHead(u8),
    /// A connect attempt ended: 0 = connected, 1 = refused, 2 = local failure.
    Connected(u8),
    /// The rewritten head was written to the origin.
    OriginHeadSent,
    /// Bytes of the origin's response head.
    OriginBytes(Vec<u8>),
    /// A whole realistic response head from [`ORIGIN_HEADS`].
    OriginHead(u8),
    /// A recv completion of `n` bytes (capped at [`CHUNK`]) from the client or the origin.
    Recv { from_origin: bool, n: u16 },
    /// A send completion of `n` bytes to the client or the origin (capped at what is queued).
    Sent { to_origin: bool, n: u32 },
    /// End of stream from one side.
    Eof { from_origin: bool },
    /// A reset or read error on one side: the driver closes.
    Reset,
    /// Time passes by `ms`; the driver checks the timers when they are due.
    Tick { ms: u16 },
    /// Time jumps by `ms * 1000`.
    BigTick { ms: u8 },
}

/// What the model (a stand-in for the ring driver) tracks besides the `Conn`.
struct Driver {
    conn: Conn,
    now: Tick,
    client_head: Vec<u8>,
    origin_head: Vec<u8>,
    /// Bytes queued to `[client, origin]`: forwarded from the other side, not yet written.
    queued: [u64; 2],
    eof: [bool; 2],
    shut: [bool; 2],
    head_sent: bool,
    /// The size of the origin buffer handed over when the relay started.
    origin_start: u64,
    closed: Option<&'static str>,
    bytes: [u64; 2],
}

fn side(origin: bool) -> Side {
    if origin { Side::Origin } else { Side::Client }
}

/// Drives a `Conn` through the events decoded from `data`, checking invariants after each.
pub fn conn(data: &[u8]) {
    run_conn(data);
}

/// Where the events of `data` left the connection: the phase, the status and why the model
/// closed it (`scripts/fuzz.sh` users pick `conn` seeds with it; see tests/smoke.rs).
pub fn conn_outcome(data: &[u8]) -> String {
    let d = run_conn(data);
    format!(
        "{:?} status={:?} closed={:?}",
        d.conn.phase(),
        d.conn.status(),
        d.closed
    )
}

fn run_conn(data: &[u8]) -> Driver {
    let limits = HeadLimits {
        max_head_bytes: 1024,
        max_headers: 16,
        ..HeadLimits::default()
    };
    let routes = RouteTable::new([
        (
            HostPattern::Exact("chat.example.com".into()),
            "/ws".to_string(),
        ),
        (
            HostPattern::Suffix(".example.com".into()),
            "/api".to_string(),
        ),
        (HostPattern::Any, "/api".to_string()),
    ]);
    let cx = HeadContext {
        limits: &limits,
        routes: &routes,
        peer: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        proto: "http",
        forwarding: &[],
    };
    let mut u = Unstructured::new(data);
    let mut d = Driver {
        conn: Conn::new(1_000, HANDSHAKE_MS, MAX_IN_FLIGHT),
        now: 1_000,
        client_head: Vec::new(),
        origin_head: Vec::new(),
        queued: [0; 2],
        eof: [false; 2],
        shut: [false; 2],
        head_sent: false,
        origin_start: 0,
        closed: None,
        bytes: [0; 2],
    };
    let mut steps = 0;
    while !u.is_empty() && steps < 256 {
        steps += 1;
        let Ok(event) = Event::arbitrary(&mut u) else {
            break;
        };
        d.apply(event, &cx);
        d.check(&limits);
    }
    d
}

impl Driver {
    fn close(&mut self, why: &'static str) {
        self.conn.close();
        self.closed = Some(why);
    }

    fn apply(&mut self, event: Event, cx: &HeadContext<'_>) {
        if self.closed.is_some() {
            return;
        }
        let phase = self.conn.phase();
        let max_head = cx.limits.max_head_bytes;
        match event {
            Event::ClientBytes(b) if phase == Phase::ClientHead => {
                // The driver never reads past the head limit (+1 to see it is over).
                let room = (max_head + 1).saturating_sub(self.client_head.len());
                self.client_head.extend_from_slice(&b[..b.len().min(room)]);
                self.on_client_head(cx);
            }
            Event::ClientHead(i) if phase == Phase::ClientHead => {
                let head = CLIENT_HEADS[usize::from(i) % CLIENT_HEADS.len()];
                let room = (max_head + 1).saturating_sub(self.client_head.len());
                self.client_head
                    .extend_from_slice(&head[..head.len().min(room)]);
                self.on_client_head(cx);
            }
            Event::Connected(r) if phase == Phase::Connecting && self.conn.status().is_none() => {
                let result = match r % 3 {
                    0 => Ok(()),
                    1 => Err(ConnectFailure::Refused),
                    _ => Err(ConnectFailure::Local),
                };
                match self.conn.on_connect_result(self.now, result, 2) {
                    ConnectAction::SendHead => {
                        assert_eq!(self.conn.phase(), Phase::OriginHead);
                    }
                    ConnectAction::TryNext => {
                        assert!(result.is_err());
                        self.conn.on_connect_start(self.now, TIMERS);
                    }
                    ConnectAction::Fail { status, reason } => {
                        assert_eq!(status, 502);
                        assert_eq!(self.conn.status(), Some(502));
                        assert!(matches!(
                            reason,
                            CloseReason::OriginUnreachable | CloseReason::ResourceExhausted
                        ));
                        self.close("connect failed");
                    }
                }
            }
            Event::OriginHeadSent if phase == Phase::OriginHead && !self.head_sent => {
                self.head_sent = true;
                self.conn.on_origin_head_sent();
            }
            Event::OriginBytes(b) if phase == Phase::OriginHead => {
                let room = (max_head + 1).saturating_sub(self.origin_head.len());
                self.origin_head.extend_from_slice(&b[..b.len().min(room)]);
                self.on_origin_head(cx.limits);
            }
            Event::OriginHead(i) if phase == Phase::OriginHead => {
                let head = ORIGIN_HEADS[usize::from(i) % ORIGIN_HEADS.len()];
                let room = (max_head + 1).saturating_sub(self.origin_head.len());
                self.origin_head
                    .extend_from_slice(&head[..head.len().min(room)]);
                self.on_origin_head(cx.limits);
            }
            Event::Recv { from_origin, n } => {
                let from = side(from_origin);
                // The driver only reads a side the state machine wants read.
                if n == 0 || !self.conn.wants_read(from) {
                    return;
                }
                let n = usize::from(n).min(CHUNK);
                let fwd = self.conn.on_recv(from, n, self.now);
                assert!(fwd <= n);
                self.queued[from.other().index()] += fwd as u64;
                self.bytes[from.index()] += fwd as u64;
                self.after_io();
            }
            Event::Sent { to_origin, n } => {
                let to = side(to_origin);
                let n = u64::from(n).min(self.queued[to.index()]);
                if n == 0 {
                    return;
                }
                self.queued[to.index()] -= n;
                self.conn.on_sent(to, n as usize, self.now);
                self.after_io();
            }
            Event::Eof { from_origin } => {
                let from = side(from_origin);
                if phase != Phase::Relay {
                    // Before the relay an early end closes the connection.
                    self.close("eof before relay");
                    return;
                }
                if self.eof[from.index()] || !self.conn.wants_read(from) {
                    return;
                }
                self.eof[from.index()] = true;
                self.conn.on_eof(from);
                self.after_io();
            }
            Event::Reset => self.close("reset"),
            Event::Tick { ms } => self.advance(u64::from(ms)),
            Event::BigTick { ms } => self.advance(u64::from(ms) * 1000),
            _ => {}
        }
    }

    fn on_client_head(&mut self, cx: &HeadContext<'_>) {
        let buf = self.client_head.clone();
        match self.conn.on_client_head(&buf, self.now, cx, None) {
            HeadAction::NeedMore => {
                assert!(buf.len() <= cx.limits.max_head_bytes);
                assert_eq!(self.conn.phase(), Phase::ClientHead);
            }
            HeadAction::Reject { status, reason } => {
                assert!(matches!(status, 400 | 404 | 426 | 431), "status {status}");
                assert_eq!(self.conn.status(), Some(status));
                match reason {
                    CloseReason::Rejected(r) => assert_eq!(r.status(), status),
                    CloseReason::NoRoute => assert_eq!(status, 404),
                    other => panic!("reject with {other:?}"),
                }
                assert!(self.conn.poll_timeout().is_none_or(|t| t > self.now));
                self.close("rejected");
            }
            HeadAction::Forward {
                route, origin_head, ..
            } => {
                assert!(route < cx.routes.len());
                assert_eq!(self.conn.phase(), Phase::Connecting);
                // What goes to the origin starts with a head that parses.
                let re = parse_request(&origin_head, &roomy(origin_head.len(), cx.limits));
                assert!(matches!(re, Ok(Some(_))), "forwarded head: {re:?}");
                if let Ok(Some(r)) = re {
                    let ws = self.conn.upgrade() == Some(Upgrade::WebSocket);
                    assert_eq!(r.is_websocket(), ws);
                    if let RequestKind::Plain {
                        body: BodyLength::Length(n),
                    } = r.kind
                    {
                        // Never more body than declared.
                        assert!((origin_head.len() - r.head_len) as u64 <= n);
                    }
                    if r.kind
                        == (RequestKind::Plain {
                            body: BodyLength::None,
                        })
                    {
                        assert_eq!(r.head_len, origin_head.len(), "pipelined bytes forwarded");
                    }
                }
                self.conn.on_connect_start(self.now, TIMERS);
            }
            // No firewall gate is given here, so no firewall verdict can come back.
            HeadAction::Firewall { verdict, .. } => {
                panic!("firewall verdict {verdict:?} without a firewall")
            }
        }
    }

    fn on_origin_head(&mut self, limits: &HeadLimits) {
        let buf = self.origin_head.clone();
        match self.conn.on_origin_head(&buf, self.now, limits) {
            OriginAction::NeedMore => assert_eq!(self.conn.phase(), Phase::OriginHead),
            OriginAction::Fail { status, reason } => {
                assert_eq!(status, 502);
                assert!(matches!(reason, CloseReason::OriginBadHandshake(_)));
                self.close("bad origin head");
            }
            OriginAction::Relay { status, .. } => {
                assert_eq!(self.conn.phase(), Phase::Relay);
                assert_eq!(self.conn.status(), Some(status));
                if status == 101 {
                    assert_eq!(self.conn.upgrade(), Some(Upgrade::WebSocket));
                    // A tunnel starts from scratch: the plain body model does not apply.
                    self.queued[Side::Origin.index()] = 0;
                    self.bytes = [0; 2];
                }
                self.origin_start = buf.len() as u64;
                self.queued[Side::Client.index()] += buf.len() as u64;
                self.bytes[Side::Origin.index()] += buf.len() as u64;
                self.conn.start_relay_timers(self.now as u32);
                self.after_io();
            }
        }
    }

    /// After relay activity: propagate half-closes and end the connection when it is done,
    /// as the driver does.
    fn after_io(&mut self) {
        if self.conn.phase() != Phase::Relay {
            return;
        }
        for to in [Side::Client, Side::Origin] {
            if self.conn.wants_shutdown(to) {
                assert_eq!(self.queued[to.index()], 0, "shutdown with bytes queued");
                assert!(
                    self.eof[to.other().index()],
                    "shutdown before the source ended"
                );
                self.conn.mark_shutdown(to);
                self.shut[to.index()] = true;
            }
        }
        if let Some(reason) = self.conn.finished() {
            assert!(matches!(
                reason,
                CloseReason::ClientClosed
                    | CloseReason::OriginClosed
                    | CloseReason::HttpDone
                    | CloseReason::NotUpgraded
            ));
            assert_eq!(
                self.queued[Side::Client.index()],
                0,
                "finished with bytes queued"
            );
            self.close("finished");
        }
    }

    fn advance(&mut self, ms: u64) {
        let before = self.conn.poll_timeout();
        self.now += ms;
        let Some(due) = before else {
            assert_eq!(
                self.conn.on_timeout(self.now),
                None,
                "a timer fired without a deadline"
            );
            return;
        };
        if due > self.now {
            assert_eq!(self.conn.on_timeout(self.now), None, "a timer fired early");
            return;
        }
        let phase = self.conn.phase();
        match self.conn.on_timeout(self.now) {
            None => panic!("deadline {due} passed at {} but nothing fired", self.now),
            Some(other @ (TimerAction::Ping | TimerAction::GracefulClose(_))) => {
                panic!("{other:?} without the frames relay")
            }
            Some(TimerAction::Close { reason, status }) => {
                match (phase, reason) {
                    (Phase::ClientHead, CloseReason::HandshakeTimeout) => {
                        assert!(status.is_none() || status == Some(408));
                        assert_eq!(status.is_some(), !self.client_head.is_empty());
                    }
                    (Phase::Connecting, CloseReason::OriginConnectTimeout) => {
                        assert_eq!(status, Some(502));
                    }
                    (Phase::OriginHead, CloseReason::OriginHandshakeTimeout) => {
                        assert_eq!(status, Some(504));
                    }
                    (Phase::Relay, CloseReason::IdleTimeout | CloseReason::MaxConnectionTime) => {
                        assert_eq!(status, None)
                    }
                    other => panic!("timeout {other:?}"),
                }
                if let Some(s) = status {
                    assert_eq!(self.conn.status(), Some(s));
                }
                self.close("timeout");
            }
        }
    }

    fn check(&self, limits: &HeadLimits) {
        let c = &self.conn;
        let phase = c.phase();
        if self.closed.is_some() {
            assert_eq!(phase, Phase::Done);
            assert_eq!(c.poll_timeout(), None, "timer left on a closed connection");
            assert_eq!(c.finished(), None);
            return;
        }
        if c.finished().is_some() {
            assert_eq!(phase, Phase::Relay, "finished outside the relay");
        }
        // A connection that is not done always has a deadline.
        assert!(c.poll_timeout().is_some(), "no deadline in {phase:?}");
        for s in [Side::Client, Side::Origin] {
            let queued_to_other = self.queued[s.other().index()];
            // In-flight never exceeds the cap plus one read (plus the origin's head buffer
            // at the start of the relay).
            let extra = match s {
                Side::Client => CHUNK as u64,
                Side::Origin => (CHUNK as u64).max(self.origin_start),
            };
            assert!(
                queued_to_other < MAX_IN_FLIGHT + extra,
                "{queued_to_other} bytes in flight from {s:?}"
            );
            if c.wants_read(s) {
                assert!(queued_to_other < MAX_IN_FLIGHT, "wants_read over the cap");
                assert!(!self.eof[s.index()], "wants_read after EOF");
            }
            if c.wants_shutdown(s) {
                assert_eq!(phase, Phase::Relay);
                assert_eq!(c.status(), Some(101));
            }
            if phase == Phase::Relay {
                assert_eq!(
                    c.bytes_from(s),
                    self.bytes[s.index()],
                    "byte count from {s:?}"
                );
            }
        }
        assert!(self.client_head.len() <= limits.max_head_bytes + 1);
        if phase == Phase::Relay {
            // Liveness: once everything that can end has ended and all bytes were written,
            // the connection is finished (and the model closed it).
            let done = if c.status() == Some(101) {
                self.eof == [true, true] && self.queued == [0, 0]
            } else {
                self.eof[Side::Origin.index()] && self.queued[Side::Client.index()] == 0
            };
            assert!(!done, "everything ended but the connection is not finished");
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
