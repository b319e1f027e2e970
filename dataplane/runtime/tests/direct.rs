//! Sanity tests of the test peers and harness, without the proxy: the clients talk straight to
//! the origins. If one of these fails, the proxy tests that use the same peer say nothing.

mod common;

use std::time::Duration;

use common::origins::{EchoOrigin, FORBIDDEN_BODY, GREETING, PLAIN_BODY, RawOrigin};
use common::raw::{
    OP_BINARY, OP_CLOSE, OP_TEXT, RawConn, client_frame, decode_frame, frame, http_exchange,
    upgrade_head,
};
use common::{Config, Route, next_data, scenarios, within, ws_connect, ws_connect_req, ws_request};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_echo_sizes() {
    within(60, async {
        let origin = EchoOrigin::start().await;
        scenarios::echo_sizes(origin.addr).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_ping_pong_and_close() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        scenarios::ping_pong(origin.addr, &origin).await;
        scenarios::close_handshake(origin.addr, &origin).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_early_frame_with_raw_client() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let host = origin.addr.to_string();
        scenarios::early_frame(origin.addr, &host).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_concurrent_echo() {
    within(60, async {
        let origin = EchoOrigin::start().await;
        scenarios::concurrent_echo(origin.addr, 50, 20).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_subprotocol_and_recorded_headers() {
    within(30, async {
        let origin = EchoOrigin::with_protocol("superchat").await;
        let mut req = ws_request(&format!("ws://{}/sub", origin.addr));
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", "chat, superchat".parse().unwrap());
        req.headers_mut()
            .insert("X-Test", "recorded".parse().unwrap());
        let (_ws, resp) = ws_connect_req(origin.addr, req).await.expect("handshake");
        assert_eq!(
            resp.headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap()),
            Some("superchat")
        );
        let reqs = origin.requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].path, "/sub");
        assert_eq!(reqs[0].get("x-test"), Some("recorded"));
        assert_eq!(
            reqs[0].get("sec-websocket-protocol"),
            Some("chat, superchat")
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_raw_origins() {
    within(30, async {
        // 403 with a body.
        let forbidden = RawOrigin::forbidden().await;
        let req = upgrade_head("/x", "example.test", &[]);
        let (head, body) = http_exchange(forbidden.addr, req.as_bytes()).await;
        assert_eq!(head.status(), 403);
        assert_eq!(body, FORBIDDEN_BODY.as_bytes());
        assert_eq!(forbidden.heads().len(), 1);
        assert_eq!(forbidden.heads()[0].target(), "/x");

        // Plain HTTP: the exact request is recorded.
        let plain = RawOrigin::plain().await;
        let req = "GET /plain HTTP/1.1\r\nHost: a.test:81\r\nX-A: 1\r\n\r\n";
        let (head, body) = http_exchange(plain.addr, req.as_bytes()).await;
        assert_eq!(head.status(), 200);
        assert_eq!(body, PLAIN_BODY.as_bytes());
        assert_eq!(plain.heads()[0].raw, req.as_bytes());
        assert_eq!(plain.heads()[0].get("host"), Some("a.test:81"));

        // A 101 with a wrong accept key is refused by tungstenite.
        let wrong = RawOrigin::wrong_accept().await;
        let res = ws_connect_req(wrong.addr, ws_request(&format!("ws://{}/", wrong.addr))).await;
        assert!(res.is_err(), "tungstenite accepted a wrong accept key");

        // A valid 101 followed by a frame in the same write: the client reads the frame.
        let greeting = RawOrigin::greeting().await;
        let mut ws = ws_connect(greeting.addr, "/").await;
        assert_eq!(next_data(&mut ws).await, Message::text(GREETING));

        // The silent origin takes the head and never answers.
        let silent = RawOrigin::silent().await;
        let mut c = RawConn::connect(silent.addr).await;
        c.send(upgrade_head("/", "s.test", &[]).as_bytes())
            .await
            .unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(500), c.read_head())
                .await
                .is_err(),
            "silent origin answered"
        );
        assert_eq!(silent.accepted(), 1);
    })
    .await;
}

#[test]
fn frame_codec_round_trips() {
    for n in [0usize, 1, 125, 126, 127, 65535, 65536, 70000] {
        let payload: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
        for (masked, op) in [(true, OP_TEXT), (false, OP_BINARY), (true, OP_CLOSE)] {
            let mask = masked.then_some([1, 2, 3, 250]);
            let bytes = frame(true, op, &payload, mask);
            let header = match n {
                0..=125 => 2,
                126..=65535 => 4,
                _ => 10,
            } + if masked { 4 } else { 0 };
            assert_eq!(bytes.len(), header + n);
            let (f, used) = decode_frame(&bytes).expect("whole frame");
            assert_eq!(used, bytes.len());
            assert_eq!((f.fin, f.opcode, f.masked), (true, op, masked));
            assert_eq!(f.payload, payload);
            assert!(decode_frame(&bytes[..bytes.len() - 1]).is_none());
        }
    }
    // RFC 6455 5.7: a masked "Hello".
    assert_eq!(
        client_frame(OP_TEXT, b"Hello", [0x37, 0xfa, 0x21, 0x3d]),
        [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58
        ]
    );
}

/// The harness's configuration builder writes files the product's own schema accepts.
#[test]
fn config_builder_matches_the_schema() {
    let a = "127.0.0.1:9001".parse().unwrap();
    let b = "127.0.0.1:9002".parse().unwrap();
    let cfg = Config::new()
        .workers(1)
        .drain_timeout("2s")
        .duration("idle_timeout", "1s")
        .number("max_headers", 10)
        .route(
            Route::new("exact", &[a, b])
                .host("only.example")
                .path("/ws")
                .relay("splice")
                .duration("idle_timeout", "500ms")
                .duration("max_connection_time", "1s")
                .duration("origin_connect_timeout", "1s")
                .duration("origin_handshake_timeout", "1s"),
        )
        .route(Route::new("wild", &[a]).host("*.example"))
        .route(Route::new("any", &[b]));
    let text = cfg.to_toml();
    let parsed = wsedge_command::Config::from_toml(&text, "test.toml")
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(parsed.routes.len(), 3);
    assert_eq!(parsed.routes[0].origins, vec![a, b]);
    assert_eq!(parsed.routes[0].relay.as_str(), "splice");
    assert_eq!(
        parsed.routes[0].limits.idle_timeout,
        Duration::from_millis(500)
    );
    assert_eq!(parsed.routes[2].limits.idle_timeout, Duration::from_secs(1));
    assert_eq!(parsed.limits.max_headers, 10);
    assert_eq!(parsed.limits.max_connection_time_jitter, 0);
    assert_eq!(parsed.dataplane.drain_timeout, Duration::from_secs(2));
    assert_eq!(parsed.worker_count(), 1);
}
