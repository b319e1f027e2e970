//! The session's policy without sockets: whole connection lives through the simulated
//! worker (`sim`), asserting the outputs the real worker would apply.

use super::sim::Sim;
use super::*;
use crate::frame::{OpCode, build_close, encode_frame};
use crate::function::{BridgeSpec, Bus, FnAction, FnCx, FunctionSession, FunctionSpec, PeerEvent};
use crate::handshake::HeadLimits;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

fn cfg() -> SessionConfig {
    SessionConfig {
        head_limits: HeadLimits::default(),
        handshake_ms: 10_000,
        max_in_flight: 1000,
        buffer_size: 64,
        linger_ms: LINGER_MS,
    }
}

fn frame_limits() -> FrameLimits {
    FrameLimits {
        client_max_message: u64::MAX,
        origin_max_message: u64::MAX,
        client_message_rate: None,
        keepalive_ms: None,
        keepalive_timeout_ms: 5_000,
        close_code: 1001,
        close_reason: "going away".to_owned(),
        close_grace_ms: 3_000,
    }
}

fn timers() -> RouteTimers {
    RouteTimers {
        connect_ms: 5_000,
        origin_handshake_ms: 10_000,
        idle_ms: 60_000,
        max_connection_ms: 900_000,
        jitter_pct: 0,
    }
}

fn route(relay: RelayMode, origins: &[&str]) -> Route {
    Route::new(
        "r".to_owned(),
        "/".to_owned(),
        origins.iter().map(|o| o.parse().expect("addr")).collect(),
        relay,
        timers(),
        frame_limits(),
        None,
        false,
        crate::forwarding::DEFAULT_FORWARDING.clone(),
    )
}

fn function_route(spec: FunctionSpec) -> Route {
    Route::new(
        "f".to_owned(),
        "/".to_owned(),
        Vec::new(),
        RelayMode::Frames,
        timers(),
        frame_limits(),
        Some(spec),
        false,
        crate::forwarding::DEFAULT_FORWARDING.clone(),
    )
}

fn upgrade_head() -> Vec<u8> {
    format!(
        "GET /ws HTTP/1.1\r\nHost: edge.test:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

fn ok_101() -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
    )
    .into_bytes()
}

fn masked(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(opcode, true, payload, Some([1, 2, 3, 4]), &mut out);
    out
}

fn unmasked(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(opcode, true, payload, None, &mut out);
    out
}

fn close_payload(code: u16) -> Vec<u8> {
    code.to_be_bytes().to_vec()
}

/// A session through to an upgraded relay on `relay`, with `early` bytes after the head.
fn upgraded(relay: RelayMode, early: &[u8]) -> Sim {
    let mut sim = Sim::new(cfg(), vec![route(relay, &["10.0.0.1:9000"])]);
    let mut head = upgrade_head();
    head.extend_from_slice(early);
    sim.client_head(&head);
    assert_eq!(sim.connects, vec!["10.0.0.1:9000".parse().expect("addr")]);
    assert_eq!(
        sim.session.peer_transport(),
        PeerTransport::Route,
        "an origin pool's own transport"
    );
    assert!(
        sim.watching,
        "the client is watched while the origin answers"
    );
    assert!(
        sim.sides[1].queue.is_empty() && sim.sides[1].written.is_empty(),
        "nothing goes to the origin before it is connected"
    );
    sim.connected(Ok(()));
    sim.flush(Side::Origin);
    let sent = sim.text(Side::Origin);
    assert!(sent.starts_with("GET /ws HTTP/1.1\r\n"), "{sent}");
    assert!(
        sent.ends_with("\r\n\r\n"),
        "early bytes never travel with the head: {sent:?}"
    );
    sim.origin_answers(&ok_101());
    assert!(!sim.watching);
    sim
}

#[test]
fn an_upgrade_relays_the_101_then_the_held_early_bytes_then_both_ways() {
    let mut sim = upgraded(RelayMode::Buffered, b"early");
    sim.flush_all();
    assert_eq!(
        sim.text(Side::Client),
        String::from_utf8(ok_101()).expect("utf8")
    );
    assert!(sim.text(Side::Origin).ends_with("\r\n\r\nearly"));
    assert!(sim.sides[0].reading && sim.sides[1].reading);
    sim.recv(Side::Client, b"hello");
    sim.recv(Side::Origin, b"world");
    sim.flush_all();
    assert!(sim.text(Side::Origin).ends_with("earlyhello"));
    assert!(sim.text(Side::Client).ends_with("world"));
    // The client closes first: the half-close travels on, then the origin closes.
    sim.eof(Side::Client);
    assert!(sim.sides[1].shut_write);
    assert_eq!(sim.closed, None);
    sim.eof(Side::Origin);
    assert!(sim.sides[0].shut_write);
    assert_eq!(sim.closed, Some(CloseReason::ClientClosed));
    assert_eq!(
        sim.session.bytes_from_client(),
        upgrade_head().len() as u64 + 10
    );
    assert_eq!(sim.session.poll_timeout(), None);
    sim.check_freed();
}

#[test]
fn an_sni_route_is_chosen_only_on_a_tls_connection_for_that_name() {
    use crate::route::{HostPattern, RouteTable, SniPattern};
    // Route 0 only for SNI edge.test, route 1 for anything: same path, same host.
    let sim = |sni: Option<&str>| {
        let mut sim = Sim::new(
            cfg(),
            vec![
                route(RelayMode::Buffered, &["10.0.0.1:9000"]),
                route(RelayMode::Buffered, &["10.0.0.2:9000"]),
            ],
        );
        sim.routes = RouteTable::with_sni([
            (
                SniPattern::Exact("edge.test".into()),
                HostPattern::Any,
                "/".to_owned(),
            ),
            (SniPattern::Any, HostPattern::Any, "/".to_owned()),
        ]);
        sim.sni = sni.map(str::to_owned);
        sim.client_head(&upgrade_head()); // Host: edge.test:8080
        sim.connects.clone()
    };
    let addr = |a: &str| vec![a.parse::<std::net::SocketAddr>().expect("addr")];
    assert_eq!(sim(Some("edge.test")), addr("10.0.0.1:9000"));
    assert_eq!(sim(Some("EDGE.test.")), addr("10.0.0.1:9000"));
    // Plain TCP (or TLS without SNI): never the sni route.
    assert_eq!(sim(None), addr("10.0.0.2:9000"));
}

#[test]
fn a_declined_upgrade_is_relayed_with_connection_close_then_a_lingering_close() {
    let mut sim = Sim::new(cfg(), vec![route(RelayMode::Buffered, &["10.0.0.1:9000"])]);
    let mut head = upgrade_head();
    head.extend_from_slice(b"GET /internal HTTP/1.1\r\n\r\n");
    sim.client_head(&head);
    sim.connected(Ok(()));
    sim.flush(Side::Origin);
    sim.origin_answers(
        b"HTTP/1.1 403 Forbidden\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nno",
    );
    sim.flush_all();
    assert_eq!(
        sim.text(Side::Client),
        "HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno"
    );
    assert!(
        !sim.text(Side::Origin).contains("/internal"),
        "held bytes never forwarded behind a declined upgrade"
    );
    // The response is complete: the origin is torn down, the client's write side shut, its
    // input drained until its EOF.
    assert!(sim.sides[1].aborted);
    assert!(sim.sides[0].shut_write);
    assert!(matches!(sim.session.ending(), Ending::Lingering { .. }));
    sim.recv(Side::Client, b"ignored");
    sim.eof(Side::Client);
    assert_eq!(sim.closed, Some(CloseReason::NotUpgraded));
    sim.check_freed();
}

#[test]
fn an_error_answer_is_written_then_the_client_lingers_until_its_deadline() {
    let mut sim = Sim::new(cfg(), vec![route(RelayMode::Buffered, &["10.0.0.1:9000"])]);
    sim.client_head(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n");
    assert!(sim.connects.is_empty(), "never forwarded");
    assert!(matches!(sim.session.ending(), Ending::Flushing { .. }));
    sim.flush(Side::Client);
    assert!(sim.text(Side::Client).starts_with("HTTP/1.1 400 "));
    assert!(matches!(sim.session.ending(), Ending::Lingering { .. }));
    assert!(sim.sides[0].shut_write && sim.sides[0].reading);
    assert_eq!(sim.session.poll_timeout(), Some(LINGER_MS));
    sim.advance(LINGER_MS);
    assert!(matches!(sim.closed, Some(CloseReason::Rejected(_))));
    assert_eq!(sim.session.status(), Some(400));
}

#[test]
fn an_answer_the_client_never_reads_ends_at_the_flush_deadline() {
    let mut sim = Sim::new(cfg(), vec![route(RelayMode::Buffered, &["10.0.0.1:9000"])]);
    sim.client_head(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n");
    sim.connected(Err(ConnectFailure::Refused));
    assert!(sim.text(Side::Client).is_empty());
    assert!(matches!(sim.session.ending(), Ending::Flushing { .. }));
    sim.advance(LINGER_MS - 1);
    assert_eq!(sim.closed, None);
    sim.advance(LINGER_MS);
    assert_eq!(sim.closed, Some(CloseReason::OriginUnreachable));
    assert_eq!(sim.session.status(), Some(502));
}

#[test]
fn handshake_timeouts_close_silently_or_with_408() {
    let mut silent = Sim::new(cfg(), vec![route(RelayMode::Buffered, &["10.0.0.1:9000"])]);
    assert_eq!(silent.session.poll_timeout(), Some(10_000));
    silent.advance(10_000);
    assert_eq!(silent.closed, Some(CloseReason::HandshakeTimeout));
    assert!(silent.sides[0].queue.is_empty());

    let mut slow = Sim::new(cfg(), vec![route(RelayMode::Buffered, &["10.0.0.1:9000"])]);
    slow.client_head(b"GET /ws HT");
    assert!(slow.sides[0].head_buf.is_some(), "reads on");
    slow.advance(10_000);
    slow.flush(Side::Client);
    assert!(slow.text(Side::Client).starts_with("HTTP/1.1 408 "));
}

#[test]
fn a_refused_connect_tries_the_next_origin_once_then_answers_502() {
    let mut sim = Sim::new(
        cfg(),
        vec![route(
            RelayMode::Buffered,
            &["10.0.0.1:1", "10.0.0.2:2", "10.0.0.3:3"],
        )],
    );
    sim.client_head(&upgrade_head());
    sim.connected(Err(ConnectFailure::Refused));
    assert_eq!(sim.connects.len(), 2);
    assert_ne!(sim.connects[0], sim.connects[1]);
    sim.connected(Err(ConnectFailure::Refused));
    assert_eq!(sim.connects.len(), 2, "one retry only");
    sim.flush(Side::Client);
    assert!(sim.text(Side::Client).starts_with("HTTP/1.1 502 "));
    let mut local = Sim::new(
        cfg(),
        vec![route(RelayMode::Buffered, &["10.0.0.1:1", "10.0.0.2:2"])],
    );
    local.client_head(&upgrade_head());
    local.connected(Err(ConnectFailure::Local));
    assert_eq!(local.connects.len(), 1, "a local failure is not retried");
}

#[test]
fn an_origin_that_does_not_answer_in_time_is_a_504_and_is_torn_down() {
    let mut sim = Sim::new(cfg(), vec![route(RelayMode::Buffered, &["10.0.0.1:9000"])]);
    sim.client_head(&upgrade_head());
    sim.advance(100);
    sim.connected(Ok(()));
    assert_eq!(sim.session.poll_timeout(), Some(10_100));
    sim.advance(10_100);
    assert!(sim.sides[1].aborted);
    sim.flush(Side::Client);
    assert!(sim.text(Side::Client).starts_with("HTTP/1.1 504 "));
}

#[test]
fn a_client_leaving_while_the_origin_answers_ends_it_at_once() {
    let mut sim = Sim::new(cfg(), vec![route(RelayMode::Buffered, &["10.0.0.1:9000"])]);
    sim.client_head(&upgrade_head());
    sim.connected(Ok(()));
    sim.handle(Input::ClientLeft { reset: false });
    assert_eq!(sim.closed, Some(CloseReason::ClientGone));
    assert_eq!(sim.session.status(), None, "nothing was answered");
}

#[test]
fn backpressure_stops_reading_a_side_until_its_bytes_are_written() {
    let mut sim = upgraded(RelayMode::Buffered, b"");
    sim.flush_all();
    assert_eq!(sim.session.read_budget(Side::Client, &cfg()), Some(2000));
    for _ in 0..15 {
        sim.recv(Side::Client, &[b'x'; 64]);
    }
    assert!(
        sim.sides[0].reading && !sim.sides[0].stopping,
        "960 < 1000 in flight"
    );
    assert_eq!(
        sim.session.read_budget(Side::Client, &cfg()),
        Some(1040),
        "a read armed now: the 40 bytes left in the window, and one window more"
    );
    assert_eq!(sim.session.read_budget(Side::Origin, &cfg()), Some(2000));
    sim.recv(Side::Client, &[b'x'; 64]);
    assert!(
        sim.sides[0].stopping,
        "1024 >= 1000 bytes in flight: stop reading"
    );
    sim.read_ended(Side::Client);
    assert_eq!(sim.session.read_budget(Side::Client, &cfg()), Some(1000));
    sim.write(Side::Origin, 100);
    assert!(sim.sides[0].reading, "below the limit again: read");
    assert_eq!(sim.session.read_budget(Side::Client, &cfg()), Some(1076));
    sim.flush_all();
    sim.check_freed();
}

#[test]
fn auto_relay_switches_to_splice_both_ways_once_a_direction_goes_bulk() {
    let mut sim = upgraded(RelayMode::Auto, b"");
    sim.flush_all();
    sim.recv(Side::Client, b"small");
    sim.flush_all();
    assert!(!sim.sides[0].stopping, "a small message does not go bulk");
    sim.recv(Side::Client, &[b'b'; 64]);
    assert!(
        sim.sides[0].stopping,
        "a full buffer: bulk, the stream read ends"
    );
    assert!(!sim.sides[0].splicing, "not while the stream read is armed");
    sim.read_ended(Side::Client);
    assert!(
        sim.sides[0].splicing,
        "then splice, with the buffered bytes still queued (the driver writes them first)"
    );
    assert!(!sim.sides[1].written.ends_with(&[b'b'; 64]), "still queued");
    sim.flush(Side::Origin);
    assert!(
        sim.sides[1].stopping && !sim.sides[1].splicing,
        "the other direction, which sent nothing yet, goes bulk too: its read ends first"
    );
    sim.read_ended(Side::Origin);
    assert!(sim.sides[1].splicing, "then it splices");
    sim.handle(Input::Spliced {
        from: Side::Client,
        n: 100,
    });
    sim.handle(Input::SpliceWritten {
        from: Side::Client,
        n: 100,
    });
    sim.eof(Side::Client);
    assert!(sim.sides[1].shut_write);
}

#[test]
fn a_splice_direction_without_a_pipe_stays_buffered() {
    let mut sim = upgraded(RelayMode::Splice, b"");
    sim.flush_all();
    assert!(sim.sides[0].splicing && sim.sides[1].splicing);
    assert!(!sim.sides[0].reading);
    sim.sides[0].splicing = false;
    sim.handle(Input::SpliceUnavailable(Side::Client));
    assert!(sim.sides[0].reading, "buffered from now on");
    assert!(sim.metrics.contains(&Metric::SpliceFallback));
}

#[test]
fn idle_and_maximum_time_end_a_stream_relay() {
    let mut sim = upgraded(RelayMode::Buffered, b"");
    sim.flush_all();
    sim.advance(30_000);
    sim.recv(Side::Client, b"activity");
    sim.flush_all();
    assert_eq!(sim.session.poll_timeout(), Some(90_000));
    sim.advance(90_000);
    assert_eq!(sim.closed, Some(CloseReason::IdleTimeout));
}

#[test]
fn frames_max_connection_time_closes_both_sides_gracefully() {
    let mut sim = upgraded(RelayMode::Frames, &masked(OpCode::Text, b"early"));
    sim.flush_all();
    assert!(
        sim.sides[1]
            .written
            .ends_with(&masked(OpCode::Text, b"early")),
        "the held early frame went through the tracker to the origin after the 101"
    );
    sim.advance(900_000);
    sim.flush_all();
    let close = build_close(1001, "going away");
    assert!(
        sim.sides[0].written.ends_with(&close),
        "Close 1001 to the client"
    );
    assert!(sim.metrics.contains(&Metric::CloseSent(1001)));
    // Both answer: the handshake is done and the connection ends.
    sim.recv(Side::Client, &masked(OpCode::Close, &close_payload(1001)));
    assert_eq!(sim.closed, None);
    sim.recv(Side::Origin, &unmasked(OpCode::Close, &close_payload(1001)));
    sim.flush_all();
    assert_eq!(sim.closed, Some(CloseReason::MaxConnectionTime));
    sim.check_freed();
}

#[test]
fn frames_graceful_close_ends_at_its_grace_when_nobody_answers() {
    let mut sim = upgraded(RelayMode::Frames, b"");
    sim.flush_all();
    sim.handle(Input::CloseAt {
        at: 500,
        reason: CloseReason::Drained,
    });
    sim.advance(500);
    assert_eq!(sim.session.poll_timeout(), Some(3_500));
    sim.advance(3_500);
    assert_eq!(sim.closed, Some(CloseReason::Drained));
}

#[test]
fn a_drain_deadline_sends_close_frames_one_grace_early_only_where_they_exist() {
    let mut frames = upgraded(RelayMode::Frames, b"");
    frames.flush_all();
    frames.handle(Input::DrainBy {
        deadline: 10_000,
        reason: CloseReason::Shutdown,
    });
    assert_eq!(
        frames.session.poll_timeout(),
        Some(7_000),
        "grace 3 s before the deadline"
    );
    frames.advance(7_000);
    frames.flush_all();
    assert!(
        frames.sides[0]
            .written
            .ends_with(&build_close(1001, "going away"))
    );

    let mut stream = upgraded(RelayMode::Buffered, b"");
    stream.flush_all();
    stream.handle(Input::DrainBy {
        deadline: 10_000,
        reason: CloseReason::Shutdown,
    });
    assert_eq!(
        stream.session.poll_timeout(),
        Some(60_000),
        "no Close frame to send"
    );
    stream.handle(Input::Abort(CloseReason::Shutdown));
    assert_eq!(stream.closed, Some(CloseReason::Shutdown));
}

#[test]
fn frames_violation_closes_the_violator_with_1002_after_the_other_side() {
    let mut sim = upgraded(RelayMode::Frames, b"");
    sim.flush_all();
    sim.recv(Side::Client, &unmasked(OpCode::Text, b"unmasked"));
    sim.flush_all();
    let to_origin = &sim.sides[1].written;
    assert!(to_origin.len() > 2);
    assert!(
        !sim.sides[0].written.ends_with(&build_close(1002, "")),
        "the violator's Close waits for the other side"
    );
    sim.recv(Side::Origin, &unmasked(OpCode::Close, &close_payload(1001)));
    sim.flush_all();
    assert!(sim.sides[0].written.ends_with(&build_close(1002, "")));
    assert_eq!(sim.closed, Some(CloseReason::ProtocolError(Side::Client)));
}

#[test]
fn frames_keepalive_pings_and_closes_without_a_pong() {
    let mut r = route(RelayMode::Frames, &["10.0.0.1:9000"]);
    r.frames.keepalive_ms = Some(20_000);
    let mut sim = Sim::new(cfg(), vec![r]);
    sim.client_head(&upgrade_head());
    sim.connected(Ok(()));
    sim.flush(Side::Origin);
    sim.origin_answers(&ok_101());
    sim.flush_all();
    assert_eq!(sim.session.poll_timeout(), Some(20_000));
    sim.advance(20_000);
    sim.flush_all();
    let ping = sim.sides[0].written.iter().rposition(|b| *b == 0x89);
    assert!(ping.is_some(), "a Ping to the client");
    assert_eq!(sim.session.poll_timeout(), Some(25_000));
    sim.advance(25_000);
    assert_eq!(sim.closed, Some(CloseReason::KeepaliveTimeout));
}

#[test]
fn a_close_the_client_starts_is_the_clients_whoever_closes_tcp_first() {
    let mut sim = upgraded(RelayMode::Frames, b"");
    sim.flush_all();
    sim.recv(Side::Client, &masked(OpCode::Close, &close_payload(1000)));
    sim.recv(Side::Origin, &unmasked(OpCode::Close, &close_payload(1000)));
    sim.flush_all();
    sim.eof(Side::Origin);
    sim.eof(Side::Client);
    assert_eq!(sim.closed, Some(CloseReason::ClientClosed));
}

#[test]
fn a_plain_request_forwards_exactly_its_body() {
    let mut sim = Sim::new(cfg(), vec![route(RelayMode::Buffered, &["10.0.0.1:9000"])]);
    sim.client_head(b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123");
    sim.connected(Ok(()));
    assert!(
        !sim.sides[0].reading,
        "the body waits for the head to be written"
    );
    sim.flush(Side::Origin);
    assert!(sim.sides[0].reading);
    sim.recv(Side::Client, b"456789GET /y HTTP/1.1\r\n\r\n");
    sim.flush(Side::Origin);
    assert!(sim.text(Side::Origin).ends_with("\r\n\r\n0123456789"));
    assert!(!sim.text(Side::Origin).contains("/y"));
    sim.origin_answers(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    sim.flush_all();
    assert!(
        sim.text(Side::Client)
            .ends_with("Connection: close\r\n\r\nok")
    );
    sim.eof(Side::Client);
    assert_eq!(sim.closed, Some(CloseReason::HttpDone));
    sim.check_freed();
}

/// A client upgraded by the built-in `echo` function, its 101 written.
fn upgraded_echo() -> Sim {
    let mut sim = Sim::new(cfg(), vec![function_route(FunctionSpec::Echo)]);
    sim.client_head(&upgrade_head());
    sim.flush_all();
    sim
}

#[test]
fn echo_answers_the_upgrade_itself_and_ends_with_the_close_handshake() {
    let mut sim = Sim::new(cfg(), vec![function_route(FunctionSpec::Echo)]);
    let mut head = upgrade_head();
    head.extend_from_slice(&masked(OpCode::Text, b"early"));
    sim.client_head(&head);
    assert!(sim.connects.is_empty(), "no origin");
    sim.flush_all();
    let text = sim.text(Side::Client);
    assert!(
        text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{text}"
    );
    assert!(text.contains(ACCEPT));
    assert!(
        sim.sides[0]
            .written
            .ends_with(&unmasked(OpCode::Text, b"early"))
    );
    sim.recv(Side::Client, &masked(OpCode::Binary, b"\x00\x01"));
    sim.flush_all();
    assert!(
        sim.sides[0]
            .written
            .ends_with(&unmasked(OpCode::Binary, b"\x00\x01"))
    );
    sim.recv(Side::Client, &masked(OpCode::Close, &close_payload(1000)));
    sim.flush_all();
    assert!(sim.sides[0].written.ends_with(&build_close(1000, "")));
    assert!(matches!(sim.session.ending(), Ending::Lingering { .. }));
    sim.eof(Side::Client);
    assert_eq!(sim.closed, Some(CloseReason::ClientClosed));
    sim.check_freed();
}

#[test]
fn a_function_is_sent_close_1001_on_a_drain_and_on_idle_time() {
    let mut sim = upgraded_echo();
    sim.handle(Input::DrainBy {
        deadline: 10_000,
        reason: CloseReason::Drained,
    });
    sim.advance(7_000);
    sim.flush_all();
    assert!(sim.sides[0].written.ends_with(&build_close(1001, "")));
    let mut idle = upgraded_echo();
    idle.advance(60_000);
    idle.flush_all();
    assert!(idle.sides[0].written.ends_with(&build_close(1001, "")));
}

/// A function's client that half-closes: the function finishes and the session closes at
/// once, its write side with the close (the client's EOF came: nothing is left to drain, so
/// no linger). Before, it lingered with no read armed until its linger deadline (2 s).
#[test]
fn a_half_closed_function_client_is_closed_at_once() {
    let mut sim = upgraded_echo();
    sim.eof(Side::Client);
    assert!(
        sim.closed.is_some(),
        "still open after the client's EOF: {:?}",
        sim.session.ending()
    );
    assert_eq!(sim.session.poll_timeout(), None, "no linger timer");
    sim.check_freed();
}

/// The same client, lingering after the function closed (it sent a Close frame and was
/// answered): its EOF, whenever it comes, ends the linger; until then its read stays armed.
#[test]
fn a_function_client_lingers_with_its_read_armed_until_its_eof() {
    let mut sim = upgraded_echo();
    sim.recv(Side::Client, &masked(OpCode::Close, &close_payload(1000)));
    sim.flush_all();
    assert!(matches!(sim.session.ending(), Ending::Lingering { .. }));
    assert!(
        sim.sides[Side::Client.index()].reading,
        "the linger drains the client"
    );
    sim.eof(Side::Client);
    assert_eq!(sim.closed, Some(CloseReason::ClientClosed));
    sim.check_freed();
}

fn bridge_route() -> Route {
    let mut r = function_route(FunctionSpec::Bridge(BridgeSpec {
        addr: "10.0.0.9:9000".parse().expect("addr"),
        host: "10.0.0.9:9000".to_owned(),
        path: "/socket".to_owned(),
    }));
    r.origins = vec!["10.0.0.9:9000".parse().expect("addr")];
    r
}

#[test]
fn bridge_opens_its_own_websocket_then_joins_it_to_the_client() {
    let mut sim = Sim::new(cfg(), vec![bridge_route()]);
    sim.client_head(&upgrade_head());
    assert_eq!(sim.connects, vec!["10.0.0.9:9000".parse().expect("addr")]);
    assert!(
        sim.text(Side::Client).is_empty(),
        "no 101 before the peer's"
    );
    sim.connected(Ok(()));
    sim.flush(Side::Origin);
    let request = sim.text(Side::Origin);
    assert!(
        request.starts_with("GET /socket HTTP/1.1\r\nHost: 10.0.0.9:9000\r\n"),
        "{request}"
    );
    assert!(!request.contains(KEY), "the edge's own key");
    let key = request
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
        .expect("key");
    let accept =
        String::from_utf8(crate::accept::accept_key(key.as_bytes()).to_vec()).expect("ascii");
    let mut answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes();
    answer.extend_from_slice(&unmasked(OpCode::Text, b"hi"));
    sim.origin_answers(&answer);
    sim.flush_all();
    let text = sim.text(Side::Client);
    assert!(text.contains(ACCEPT), "the client's own accept: {text}");
    assert!(!text.contains(&accept), "the peer's 101 is not relayed");
    assert!(
        sim.sides[0]
            .written
            .ends_with(&unmasked(OpCode::Text, b"hi"))
    );
    sim.recv(Side::Client, &masked(OpCode::Text, b"to peer"));
    sim.flush_all();
    assert!(
        sim.sides[1]
            .written
            .ends_with(&masked(OpCode::Text, b"to peer"))
    );
}

#[test]
fn bridge_answers_502_when_its_peer_cannot_be_reached() {
    let mut sim = Sim::new(cfg(), vec![bridge_route()]);
    sim.client_head(&upgrade_head());
    sim.connected(Err(ConnectFailure::Refused));
    sim.flush(Side::Client);
    assert!(sim.text(Side::Client).starts_with("HTTP/1.1 502 "));
    sim.advance(LINGER_MS);
    assert_eq!(sim.closed, Some(CloseReason::OriginUnreachable));
}

/// A function scripted by its test: it records its calls and emits, on any call, what the
/// test queued for it.
#[derive(Debug, Default)]
struct Scripted {
    calls: Calls,
    queued: Queued,
    /// Its peer's bytes wait in it: it wants no more ([`FunctionSession::wants_peer`]).
    peer_full: Rc<std::cell::Cell<bool>>,
}

impl Scripted {
    fn emit(&mut self, call: &str, cx: &mut FnCx<'_>) {
        self.calls.borrow_mut().push(call.to_owned());
        cx.actions.append(&mut self.queued.borrow_mut());
    }
}

impl FunctionSession for Scripted {
    fn on_start(&mut self, cx: &mut FnCx<'_>) {
        self.emit("start", cx);
    }
    fn on_client(&mut self, data: &mut [u8], cx: &mut FnCx<'_>) {
        let call = format!("client {}", data.len());
        self.emit(&call, cx);
    }
    fn on_client_gone(&mut self, cx: &mut FnCx<'_>) {
        self.emit("client_gone", cx);
    }
    fn on_peer(&mut self, data: &mut [u8], cx: &mut FnCx<'_>) {
        let call = format!("peer {}", data.len());
        self.emit(&call, cx);
    }
    fn on_peer_event(&mut self, event: PeerEvent, cx: &mut FnCx<'_>) {
        let call = format!("peer_event {event:?}");
        self.emit(&call, cx);
    }
    fn on_shutdown(&mut self, code: u16, _reason: CloseReason, cx: &mut FnCx<'_>) {
        let call = format!("shutdown {code}");
        self.emit(&call, cx);
    }
    fn on_closed(&mut self, _cx: &mut FnCx<'_>) {
        self.calls.borrow_mut().push("closed".to_owned());
    }
    fn on_wake(&mut self, cx: &mut FnCx<'_>) {
        self.emit("wake", cx);
    }
    fn wants_peer(&self) -> bool {
        !self.peer_full.get()
    }
}

/// A host that opens one [`Scripted`] per request, sharing its test's handles.
#[derive(Debug, Default)]
struct ScriptedHost {
    calls: Calls,
    queued: Queued,
}

impl crate::function::FunctionHost for ScriptedHost {
    fn open(
        &mut self,
        _request: &crate::function::FunctionRequest<'_>,
        _bus: &mut dyn Bus,
    ) -> Result<Box<dyn FunctionSession>, crate::function::Refused> {
        Ok(Box::new(Scripted {
            calls: Rc::clone(&self.calls),
            queued: Rc::clone(&self.queued),
            ..Scripted::default()
        }))
    }
}

type Calls = Rc<std::cell::RefCell<Vec<String>>>;
type Queued = Rc<std::cell::RefCell<Vec<FnAction>>>;

fn scripted_sim() -> (Sim, Calls, Queued) {
    let host = ScriptedHost::default();
    let (calls, queued) = (Rc::clone(&host.calls), Rc::clone(&host.queued));
    let bus: Rc<std::cell::RefCell<dyn Bus>> =
        Rc::new(std::cell::RefCell::new(crate::function::NoBus));
    let sim = Sim::with_host(
        cfg(),
        vec![function_route(FunctionSpec::Echo)],
        super::sim::SharedHost(Rc::new(std::cell::RefCell::new(host))),
        bus,
        1,
        0,
    );
    (sim, calls, queued)
}

#[test]
fn a_function_may_answer_after_its_start_the_client_watched_meanwhile() {
    let (mut sim, calls, queued) = scripted_sim();
    let mut head = upgrade_head();
    head.extend_from_slice(&masked(OpCode::Text, b"early"));
    sim.client_head(&head);
    assert_eq!(*calls.borrow(), ["start"]);
    assert!(sim.text(Side::Client).is_empty(), "no answer yet");
    assert!(
        sim.watching,
        "a client that leaves while the function works ends it"
    );
    assert!(!sim.sides[0].reading);
    assert_eq!(
        sim.session.poll_timeout(),
        Some(10_000),
        "its answer is due in time"
    );
    // The host wakes it with its answer (an async `fetch` resolved).
    sim.advance(300);
    queued
        .borrow_mut()
        .push(FnAction::Upgrade { protocol: None });
    sim.handle(Input::Wake);
    assert!(!sim.watching, "read from now on");
    assert!(sim.sides[0].reading);
    sim.flush_all();
    assert!(sim.text(Side::Client).starts_with("HTTP/1.1 101 "));
    assert_eq!(
        calls.borrow().last().map(String::as_str),
        Some("client 11"),
        "the early frame reaches it after the upgrade: {:?}",
        calls.borrow()
    );
    assert_eq!(
        sim.session.poll_timeout(),
        Some(60_300),
        "idle time, not the answer's"
    );
}

#[test]
fn a_function_that_never_answers_is_a_504_and_a_client_that_leaves_ends_it() {
    let (mut sim, calls, _queued) = scripted_sim();
    sim.client_head(&upgrade_head());
    sim.advance(10_000);
    sim.flush(Side::Client);
    assert!(sim.text(Side::Client).starts_with("HTTP/1.1 504 "));
    sim.advance(10_000 + LINGER_MS);
    assert_eq!(sim.closed, Some(CloseReason::FunctionTimeout));
    assert_eq!(calls.borrow().last().map(String::as_str), Some("closed"));

    let (mut gone, calls, _queued) = scripted_sim();
    gone.client_head(&upgrade_head());
    gone.handle(Input::ClientLeft { reset: false });
    assert_eq!(gone.closed, Some(CloseReason::ClientGone));
    assert_eq!(*calls.borrow(), ["start", "closed"]);
}

#[test]
fn a_wake_reaches_an_upgraded_function_and_not_one_whose_peer_connects() {
    let (mut sim, calls, queued) = scripted_sim();
    queued
        .borrow_mut()
        .push(FnAction::Upgrade { protocol: None });
    sim.client_head(&upgrade_head());
    sim.flush_all();
    queued
        .borrow_mut()
        .push(FnAction::SendClient(Chunk::own(unmasked(
            OpCode::Text,
            b"tick",
        ))));
    sim.handle(Input::Wake);
    sim.flush_all();
    assert!(
        sim.sides[0]
            .written
            .ends_with(&unmasked(OpCode::Text, b"tick"))
    );
    queued.borrow_mut().push(FnAction::OpenPeer {
        addr: "10.0.0.9:9000".parse().expect("addr"),
        head: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        accept: [b'a'; 28],
        tls: None,
    });
    sim.handle(Input::Wake);
    assert_eq!(sim.connects.len(), 1);
    assert_eq!(sim.session.peer_transport(), PeerTransport::Plain);
    let before = calls.borrow().len();
    sim.handle(Input::Wake);
    assert_eq!(calls.borrow().len(), before, "its peer's event comes first");
}

#[test]
fn an_upgrade_after_the_peer_opened_hands_the_early_bytes_to_the_function() {
    let (mut sim, calls, queued) = scripted_sim();
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let accept: [u8; 28] = crate::accept::accept_key(key.as_bytes());
    queued.borrow_mut().push(FnAction::OpenPeer {
        addr: "10.0.0.9:9000".parse().expect("addr"),
        head: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        accept,
        tls: None,
    });
    let mut head = upgrade_head();
    head.extend_from_slice(&masked(OpCode::Text, b"early"));
    sim.client_head(&head);
    sim.connected(Ok(()));
    sim.flush(Side::Origin);
    // The peer opens; the function answers its client only now.
    queued
        .borrow_mut()
        .push(FnAction::Upgrade { protocol: None });
    sim.origin_answers(&ok_101());
    sim.flush_all();
    assert!(sim.text(Side::Client).starts_with("HTTP/1.1 101 "));
    let calls = calls.borrow();
    assert_eq!(
        calls.iter().map(String::as_str).collect::<Vec<_>>(),
        ["start", "peer_event Open", "client 11"],
    );
}

#[test]
fn an_outbound_session_runs_a_peer_with_no_client_and_closes_after_its_last_bytes() {
    let calls = Rc::new(std::cell::RefCell::new(Vec::new()));
    let queued = Rc::new(std::cell::RefCell::new(vec![FnAction::OpenPeer {
        addr: "10.0.0.9:9000".parse().expect("addr"),
        head: b"GET /feed HTTP/1.1\r\n\r\n".to_vec(),
        accept: crate::accept::accept_key(KEY.as_bytes()),
        tls: Some("feed.test".into()),
    }]));
    let peer_full = Rc::new(std::cell::Cell::new(false));
    let function = Box::new(Scripted {
        calls: Rc::clone(&calls),
        queued: Rc::clone(&queued),
        peer_full: Rc::clone(&peer_full),
    });
    let bus: Rc<std::cell::RefCell<dyn Bus>> =
        Rc::new(std::cell::RefCell::new(crate::function::NoBus));
    let mut sim = Sim::outbound(
        cfg(),
        function_route(FunctionSpec::Echo),
        function,
        bus,
        9,
        1_000,
    );
    assert!(sim.session.is_clientless());
    assert_eq!(sim.connects, vec!["10.0.0.9:9000".parse().expect("addr")]);
    // A wss:// peer: the worker opens it over TLS, verified against the URL's name.
    assert_eq!(
        sim.session.peer_transport(),
        PeerTransport::Tls { name: "feed.test" }
    );
    sim.connected(Ok(()));
    sim.flush(Side::Origin);
    assert_eq!(sim.text(Side::Origin), "GET /feed HTTP/1.1\r\n\r\n");
    let mut answer = ok_101();
    answer.extend_from_slice(&unmasked(OpCode::Text, b"p1"));
    sim.origin_answers(&answer);
    assert_eq!(
        calls
            .borrow()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["start", "peer_event Open", "peer 4"],
        "the peer's first message came with its 101: the function reads it"
    );
    assert!(sim.sides[1].reading, "the peer is read");
    assert!(!sim.sides[0].reading && !sim.watching, "there is no client");
    sim.recv(Side::Origin, &unmasked(OpCode::Text, b"p2"));
    assert_eq!(calls.borrow().last().map(String::as_str), Some("peer 4"));
    // A function with its peer's bytes still waiting stops the peer's reads until a wake
    // finds it ready again.
    peer_full.set(true);
    sim.recv(Side::Origin, &unmasked(OpCode::Text, b"p3"));
    assert!(sim.sides[1].stopping, "the peer's reads stop");
    sim.read_ended(Side::Origin);
    assert!(!sim.sides[1].reading);
    sim.handle(Input::Wake);
    assert!(!sim.sides[1].reading, "still full");
    peer_full.set(false);
    sim.handle(Input::Wake);
    assert!(sim.sides[1].reading, "read again");
    // No idle time for a client-less session; a drain asks it to shut down.
    assert_eq!(sim.session.poll_timeout(), None);
    assert!(sim.session.can_close_gracefully());
    queued.borrow_mut().extend([
        FnAction::SendPeer(Chunk::own(b"close-frame".to_vec())),
        FnAction::SendClient(Chunk::own(b"nowhere".to_vec())),
        FnAction::Finish(CloseReason::ClientClosed),
    ]);
    sim.handle(Input::Abort(CloseReason::Drained));
    assert_eq!(sim.closed, Some(CloseReason::Drained));

    // Finishing: its bytes to the peer are written first, then it closes.
    let queued = Rc::new(std::cell::RefCell::new(vec![FnAction::OpenPeer {
        addr: "10.0.0.9:9000".parse().expect("addr"),
        head: b"GET /feed HTTP/1.1\r\n\r\n".to_vec(),
        accept: crate::accept::accept_key(KEY.as_bytes()),
        tls: None,
    }]));
    let bus: Rc<std::cell::RefCell<dyn Bus>> =
        Rc::new(std::cell::RefCell::new(crate::function::NoBus));
    let mut sim = Sim::outbound(
        cfg(),
        function_route(FunctionSpec::Echo),
        Box::new(Scripted {
            queued: Rc::clone(&queued),
            ..Scripted::default()
        }),
        bus,
        10,
        0,
    );
    sim.connected(Ok(()));
    sim.flush(Side::Origin);
    sim.origin_answers(&ok_101());
    queued.borrow_mut().extend([
        FnAction::SendPeer(Chunk::own(b"bye".to_vec())),
        FnAction::SendClient(Chunk::own(b"nowhere".to_vec())),
        FnAction::Finish(CloseReason::ClientClosed),
    ]);
    sim.handle(Input::DrainBy {
        deadline: 5_000,
        reason: CloseReason::Drained,
    });
    sim.advance(2_000);
    assert_eq!(sim.closed, None, "its last bytes are not written yet");
    sim.flush(Side::Origin);
    assert!(sim.text(Side::Origin).ends_with("bye"));
    assert_eq!(sim.closed, Some(CloseReason::ClientClosed));
    assert!(
        sim.log.iter().all(|o| !matches!(
            o,
            Output::Send {
                to: Side::Client,
                ..
            } | Output::Read(Side::Client)
                | Output::ShutdownWrite(Side::Client)
                | Output::WatchClient
        )),
        "nothing for a client that does not exist: {:?}",
        sim.log
    );
}

/// Every connection holds a session for its whole life, idle ones too (issue 18: ≤ 512 B of
/// memory per idle proxied connection, the worker's own record included). A new field that
/// pushes it past the budget belongs in a boxed stage or in `Extra`.
#[test]
fn session_fits_its_memory_budget() {
    let size = std::mem::size_of::<Session>();
    assert!(size <= 264, "Session is {size} B, over its 264 B budget");
}
