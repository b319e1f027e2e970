//! `session`: the connection session (`session::Session`) through the simulated worker
//! (`session::sim::Sim`), which applies its outputs mechanically as the ring driver does.
//! This drives the real session API (inputs in, outputs drained), not a copy of the
//! driver's sequencing: every decision under test is the session's.
//!
//! The input picks a route (buffered, auto, splice, frames, the echo function, the bridge
//! function) and a sequence of events: client and origin bytes (canned heads and answers, or
//! raw bytes), connect results, partial writes, EOFs, failures, stopped reads, the client
//! leaving, splice progress, drains, scheduled closes, kills and time steps. Checked after
//! each event and at the end:
//! - the simulated worker's own rules hold: a provided buffer is handed back exactly once,
//!   one head read and one stream read per side at most, nothing is queued to a side after
//!   its write half was shut, nothing at all after `Close`;
//! - the session's invariants (`check_invariants`) hold;
//! - no early bytes reach the origin behind a WebSocket upgrade it did not accept: unless a
//!   101 was relayed, the origin received exactly the rewritten head (one blank line, at the
//!   end) for a WebSocket request;
//! - every connection ends: after both sides are done and time runs on, the session is
//!   closed with no timer left, and every buffer it held comes back at free.

use arbitrary::{Arbitrary, Unstructured};
use wsedge_proto::forwarding::DEFAULT_FORWARDING;
use wsedge_proto::function::{BridgeSpec, FunctionSpec};
use wsedge_proto::handshake::HeadLimits;
use wsedge_proto::session::sim::Sim;
use wsedge_proto::session::{
    CloseReason, ConnectFailure, FrameLimits, Input, Metric, RelayMode, Route, RouteTimers,
    SessionConfig, Side,
};

const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Canned client heads (a raw `ClientBytes` event can send anything else).
const CLIENT_HEADS: &[&str] = &[
    "GET /ws HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    "GET /ws HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\u{81}\u{85}\u{1}\u{2}\u{3}\u{4}iggk`GET /internal HTTP/1.1\r\n\r\n",
    "GET /page HTTP/1.1\r\nHost: a.test\r\n\r\n",
    "POST /api HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nabcGET /x HTTP/1.1\r\n\r\n",
    "POST /api HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    "HEAD /h HTTP/1.1\r\nHost: a.test\r\n\r\n",
    "GET /ws HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\n\r\n",
    "GET /%2e%2e/x HTTP/1.1\r\nHost: ::1:80\r\n\r\n",
];

/// Canned origin answers.
fn origin_answer(i: u8) -> Vec<u8> {
    let answers: [String; 8] = [
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
        ),
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n\u{81}\u{2}hi"
        ),
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n".into(),
        "HTTP/1.1 403 Forbidden\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nno".into(),
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n".into(),
        "HTTP/1.1 204 No Content\r\n\r\n".into(),
        "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n".into(),
        "HTTP/1.1 200 OK\r\n\r\nuntil close".into(),
    ];
    answers[usize::from(i) % answers.len()].clone().into_bytes()
}

#[derive(Debug, Arbitrary)]
enum Event {
    ClientHead(u8),
    ClientBytes(Vec<u8>),
    OriginAnswer(u8),
    OriginBytes(Vec<u8>),
    Connected(u8),
    Write { origin: bool, limit: u16 },
    Eof { origin: bool },
    Failed { origin: bool },
    ReadEnded { origin: bool },
    ClientLeft { reset: bool },
    Spliced { origin: bool, n: u16 },
    SpliceUnavailable { origin: bool },
    Advance(u16),
    DrainBy(u16),
    CloseAt(u16),
    Kill,
}

fn side(origin: bool) -> Side {
    if origin { Side::Origin } else { Side::Client }
}

fn route(kind: u8) -> Route {
    let relay = match kind % 4 {
        0 => RelayMode::Buffered,
        1 => RelayMode::Auto,
        2 => RelayMode::Splice,
        _ => RelayMode::Frames,
    };
    let function = match kind / 4 % 4 {
        1 => Some(FunctionSpec::Echo),
        2 => Some(FunctionSpec::Bridge(BridgeSpec {
            addr: "10.0.0.9:9000".parse().expect("addr"),
            host: "10.0.0.9:9000".to_owned(),
            path: "/b".to_owned(),
        })),
        _ => None,
    };
    Route::new(
        "r".to_owned(),
        "/".to_owned(),
        vec![
            "10.0.0.1:1".parse().expect("addr"),
            "10.0.0.2:2".parse().expect("addr"),
        ],
        relay,
        RouteTimers {
            connect_ms: 500,
            origin_handshake_ms: 1_000,
            idle_ms: 5_000,
            max_connection_ms: 20_000,
            jitter_pct: (kind / 16) % 51,
        },
        FrameLimits {
            client_max_message: 4096,
            origin_max_message: 4096,
            client_message_rate: (kind & 1 == 1).then_some(50),
            keepalive_ms: (kind & 2 == 2).then_some(700),
            keepalive_timeout_ms: 300,
            close_code: 1001,
            close_reason: "going away".to_owned(),
            close_grace_ms: 400,
        },
        function,
        kind & 0x40 != 0,
        DEFAULT_FORWARDING.clone(),
    )
}

/// Drives a session through the events decoded from `data`, checking invariants.
pub fn session(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(kind) = u8::arbitrary(&mut u) else {
        return;
    };
    let cfg = SessionConfig {
        head_limits: HeadLimits {
            max_head_bytes: 1024,
            max_headers: 16,
            ..HeadLimits::default()
        },
        handshake_ms: 2_000,
        max_in_flight: 512,
        buffer_size: 64,
        linger_ms: 300,
    };
    let mut sim = Sim::new(cfg, vec![route(kind)]);
    let mut websocket_request = false;
    // WSEDGE_FUZZ_TRACE=1 prints each event and the outputs it caused (to read a finding).
    let trace = std::env::var_os("WSEDGE_FUZZ_TRACE").is_some();
    let mut steps = 0;
    while !u.is_empty() && steps < 256 && sim.closed.is_none() {
        steps += 1;
        let Ok(event) = Event::arbitrary(&mut u) else {
            break;
        };
        if trace {
            eprintln!("event {event:?}");
        }
        let before = sim.log.len();
        apply(&mut sim, event, &mut websocket_request);
        if trace {
            for o in &sim.log[before..] {
                eprintln!("    -> {o:?}");
            }
        }
        sim.session.check_invariants();
        check_held_bytes(&sim, websocket_request);
    }
    // Everything ends: both sides done, every queue written, time runs on.
    for _ in 0..64 {
        if sim.closed.is_some() {
            break;
        }
        if trace {
            eprintln!("ending round; outputs so far {}", sim.log.len());
        }
        for origin in [false, true] {
            let s = side(origin);
            sim.flush(s);
            if sim.sides[s.index()].head_buf.is_some() {
                sim.head_ends(s, 0);
            } else if sim.sides[s.index()].reading || sim.sides[s.index()].splicing {
                sim.sides[s.index()].splicing = false;
                sim.eof(s);
            }
            sim.read_ended(s);
        }
        if sim.session.phase() == wsedge_proto::session::Phase::Connecting {
            sim.connected(Err(ConnectFailure::Refused));
        }
        let at = sim.session.poll_timeout().unwrap_or(sim.now).max(sim.now) + 1;
        sim.advance(at);
        check_held_bytes(&sim, websocket_request);
    }
    assert!(
        sim.closed.is_some(),
        "the connection never ended: {:?}, last outputs {:?}",
        sim.session,
        sim.log.iter().rev().take(8).collect::<Vec<_>>()
    );
    assert_eq!(
        sim.session.poll_timeout(),
        None,
        "a closed session keeps a timer"
    );
    sim.check_freed();
}

fn apply(sim: &mut Sim, event: Event, websocket_request: &mut bool) {
    match event {
        Event::ClientHead(i) if sim.sides[0].head_buf.is_some() => {
            let head = CLIENT_HEADS[usize::from(i) % CLIENT_HEADS.len()];
            // Known to be a WebSocket request only when nothing came before it.
            let first = sim.sides[0].head_buf.as_ref().is_some_and(Vec::is_empty);
            *websocket_request |= first && head.contains("Upgrade: websocket");
            sim.client_head(head.as_bytes());
        }
        Event::ClientBytes(b) if !b.is_empty() => {
            if sim.sides[0].head_buf.is_some() {
                let head = sim.sides[0].head_buf.as_ref().map_or(0, Vec::len);
                let room = (1024 + 1usize).saturating_sub(head);
                sim.client_head(&b[..b.len().min(room).max(1)]);
            } else if sim.sides[0].reading && !sim.sides[0].stopping {
                sim.recv(Side::Client, &b[..b.len().min(64)]);
            }
        }
        Event::OriginAnswer(i) if sim.sides[1].head_buf.is_some() => {
            sim.origin_answers(&origin_answer(i));
        }
        Event::OriginBytes(b) if !b.is_empty() => {
            if sim.sides[1].head_buf.is_some() {
                sim.origin_answers(&b[..b.len().min(512)]);
            } else if sim.sides[1].reading && !sim.sides[1].stopping {
                sim.recv(Side::Origin, &b[..b.len().min(64)]);
            }
        }
        Event::Connected(r) if sim.session.phase() == wsedge_proto::session::Phase::Connecting => {
            sim.connected(match r % 3 {
                0 => Ok(()),
                1 => Err(ConnectFailure::Refused),
                _ => Err(ConnectFailure::Local),
            });
        }
        Event::Write { origin, limit } => sim.write(side(origin), usize::from(limit) + 1),
        Event::Eof { origin } => {
            let s = side(origin);
            let io = &sim.sides[s.index()];
            if io.reading && !io.stopping {
                sim.eof(s);
            } else if io.head_buf.is_some() {
                sim.head_ends(s, 0);
            }
        }
        Event::Failed { origin } => {
            let s = side(origin);
            if sim.sides[s.index()].head_buf.is_some() {
                sim.head_ends(s, -104);
            } else {
                sim.handle(Input::Failed(s));
            }
        }
        Event::ReadEnded { origin } => sim.read_ended(side(origin)),
        Event::ClientLeft { reset } if sim.watching => {
            sim.watching = false;
            sim.handle(Input::ClientLeft { reset });
        }
        Event::Spliced { origin, n } if sim.sides[side(origin).index()].splicing => {
            let from = side(origin);
            let n = usize::from(n % 4096) + 1;
            sim.handle(Input::Spliced { from, n });
            // Like the driver: the pipe is written once the bytes queued before it are.
            sim.flush(from.other());
            sim.handle(Input::SpliceWritten { from, n });
        }
        Event::SpliceUnavailable { origin } if sim.sides[side(origin).index()].splicing => {
            sim.sides[side(origin).index()].splicing = false;
            sim.handle(Input::SpliceUnavailable(side(origin)));
        }
        Event::Advance(ms) => {
            let at = sim.now + u64::from(ms);
            sim.advance(at);
        }
        Event::DrainBy(ms) => {
            let deadline = sim.now + u64::from(ms);
            sim.handle(Input::DrainBy {
                deadline,
                reason: CloseReason::Drained,
            });
        }
        Event::CloseAt(ms) => {
            let at = sim.now + u64::from(ms);
            sim.handle(Input::CloseAt {
                at,
                reason: CloseReason::Drained,
            });
        }
        Event::Kill => sim.handle(Input::Abort(CloseReason::Killed)),
        _ => {}
    }
}

/// Unless the origin's 101 was relayed, a WebSocket request's origin got its head and nothing
/// more (no early frames, no smuggled request).
fn check_held_bytes(sim: &Sim, websocket_request: bool) {
    if !websocket_request
        || sim.metrics.contains(&Metric::Upgraded)
        || sim.session.route().is_some_and(|r| r.function.is_some())
    {
        return;
    }
    let to_origin = &sim.sides[1].written;
    let blank_lines = to_origin.windows(4).filter(|w| w == b"\r\n\r\n").count();
    assert!(
        blank_lines == 0 || (blank_lines == 1 && to_origin.ends_with(b"\r\n\r\n")),
        "bytes after the head reached the origin before its 101: {:?}",
        String::from_utf8_lossy(to_origin)
    );
}
