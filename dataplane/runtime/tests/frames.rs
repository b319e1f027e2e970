//! The `frames` relay through the real binary: it relays like the others, and because it
//! follows frame boundaries it can end connections with a Close frame (expiry), enforce
//! message limits (1009, 1008), reject protocol violations (1002), and keep idle clients
//! alive with pings (or close those that stop answering).

mod common;

use std::time::{Duration, Instant};

use common::origins::{EchoOrigin, OriginEvent};
use common::raw::{
    OP_BINARY, OP_CLOSE, OP_PING, OP_TEXT, RawConn, client_frame, server_frame, upgrade_head,
};
use common::{Config, Proxy, Route, assert_echo, scenarios, within, ws_connect};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn close_code(payload: &[u8]) -> u16 {
    assert!(
        payload.len() >= 2,
        "close frame without a code: {payload:?}"
    );
    u16::from_be_bytes([payload[0], payload[1]])
}

/// Reads frames until a Close arrives; returns its code.
async fn raw_wait_close(conn: &mut RawConn) -> u16 {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), conn.read_frame())
            .await
            .expect("no close frame within 10 s")
            .expect("stream ended before a close frame");
        if frame.opcode == OP_CLOSE {
            assert!(
                !frame.masked,
                "frames from the proxy to a client are unmasked"
            );
            return close_code(&frame.payload);
        }
    }
}

/// Reads messages until a Close arrives; returns its code.
async fn ws_wait_close(ws: &mut common::Ws) -> u16 {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no close within 10 s")
        {
            Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
            Some(Ok(Message::Close(None))) => panic!("close without a code"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("connection failed before a close frame: {e}"),
            None => panic!("connection ended before a close frame"),
        }
    }
}

/// Waits until the origin recorded a Close; returns its code.
async fn origin_close_code(origin: &EchoOrigin) -> u16 {
    for _ in 0..100 {
        for event in origin.events() {
            if let OriginEvent::Close(Some((code, _))) = event {
                return code;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the origin saw no Close frame: {:?}", origin.events());
}

/// Opens a raw upgraded connection through the proxy.
async fn raw_upgrade(proxy: &Proxy) -> RawConn {
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(upgrade_head("/", "edge.test", &[]).as_bytes())
        .await
        .expect("send head");
    let head = conn.read_head().await.expect("response head");
    assert_eq!(head.status(), 101);
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_relay_echoes_at_boundary_sizes_and_passes_control_frames() {
    within(60, async {
        let origin = EchoOrigin::start().await;
        let proxy =
            Proxy::start(&Config::new().route(Route::new("f", &[origin.addr]).relay("frames")))
                .await;
        scenarios::echo_sizes(proxy.addr).await;
        scenarios::ping_pong(proxy.addr, &origin).await;
        scenarios::close_handshake(proxy.addr, &origin).await;
        scenarios::early_frame(proxy.addr, "edge.test").await;
        scenarios::concurrent_echo(proxy.addr, 50, 20).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_relay_forwards_fragmented_messages_split_across_writes() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let proxy =
            Proxy::start(&Config::new().route(Route::new("f", &[origin.addr]).relay("frames")))
                .await;
        let mut conn = raw_upgrade(&proxy).await;
        let mask = [1, 2, 3, 4];
        let mut first = common::raw::frame(false, OP_TEXT, b"hello ", Some(mask));
        let second = common::raw::frame(true, 0x0, b"world", Some(mask));
        // A ping between the fragments, and a write boundary inside a header.
        first.extend_from_slice(&client_frame(OP_PING, b"p", mask));
        first.extend_from_slice(&second[..1]);
        conn.send(&first).await.expect("send");
        tokio::time::sleep(Duration::from_millis(50)).await;
        conn.send(&second[1..]).await.expect("send");
        let mut text = Vec::new();
        let mut pong = false;
        while text != b"hello world" || !pong {
            let f = tokio::time::timeout(Duration::from_secs(10), conn.read_frame())
                .await
                .expect("frame within 10 s")
                .expect("frame");
            match f.opcode {
                0xA => pong = true,
                OP_TEXT | 0x0 => text.extend_from_slice(&f.payload),
                other => panic!("unexpected opcode {other}"),
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_max_connection_time_sends_close_1001_to_client_and_origin() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let mut proxy = Proxy::start(
            &Config::new()
                .duration("max_connection_time", "1s")
                .number("max_connection_time_jitter", 0)
                .route(Route::new("f", &[origin.addr]).relay("frames")),
        )
        .await;
        let start = Instant::now();
        let mut ws = ws_connect(proxy.addr, "/").await;
        assert_echo(&mut ws, Message::text("alive")).await;
        assert_eq!(ws_wait_close(&mut ws).await, 1001);
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(700) && elapsed <= Duration::from_secs(5),
            "close after {elapsed:?}"
        );
        assert_eq!(origin_close_code(&origin).await, 1001);
        let line = proxy
            .wait_log_reason("max_connection_time", Duration::from_secs(10))
            .await;
        assert_eq!(line["status"], 101);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_message_over_the_limit_gets_1009_and_the_origin_1001() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let mut proxy = Proxy::start(
            &Config::new().route(
                Route::new("f", &[origin.addr])
                    .relay("frames")
                    .option("client_max_message", "1000"),
            ),
        )
        .await;
        let mut ws = ws_connect(proxy.addr, "/").await;
        assert_echo(&mut ws, Message::binary(vec![7u8; 1000])).await;
        ws.send(Message::binary(vec![7u8; 1001]))
            .await
            .expect("send");
        assert_eq!(ws_wait_close(&mut ws).await, 1009);
        assert_eq!(origin_close_code(&origin).await, 1001);
        proxy
            .wait_log_reason("client_message_too_big", Duration::from_secs(10))
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_message_rate_over_the_limit_gets_1008() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let mut proxy = Proxy::start(
            &Config::new().route(
                Route::new("f", &[origin.addr])
                    .relay("frames")
                    .option("client_message_rate", "5"),
            ),
        )
        .await;
        let mut conn = raw_upgrade(&proxy).await;
        let mut burst = Vec::new();
        for i in 0..50u8 {
            burst.extend_from_slice(&client_frame(OP_BINARY, &[i], [9, 9, 9, 9]));
        }
        conn.send(&burst).await.expect("send");
        assert_eq!(raw_wait_close(&mut conn).await, 1008);
        proxy
            .wait_log_reason("message_rate", Duration::from_secs(10))
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_unmasked_client_frame_gets_1002() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let mut proxy =
            Proxy::start(&Config::new().route(Route::new("f", &[origin.addr]).relay("frames")))
                .await;
        let mut conn = raw_upgrade(&proxy).await;
        conn.send(&server_frame(OP_TEXT, b"not masked"))
            .await
            .expect("send");
        assert_eq!(raw_wait_close(&mut conn).await, 1002);
        assert_eq!(origin_close_code(&origin).await, 1001);
        proxy
            .wait_log_reason("client_protocol_error", Duration::from_secs(10))
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_keepalive_closes_a_client_that_stops_answering_pings() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let mut proxy = Proxy::start(
            &Config::new().route(
                Route::new("f", &[origin.addr])
                    .relay("frames")
                    .duration("keepalive_interval", "500ms")
                    .duration("keepalive_timeout", "500ms")
                    .duration("close_grace", "500ms"),
            ),
        )
        .await;
        let mut conn = raw_upgrade(&proxy).await;
        // Read (never answer) until the proxy gives up.
        let ping = tokio::time::timeout(Duration::from_secs(5), conn.read_frame())
            .await
            .expect("a ping within 5 s")
            .expect("frame");
        assert_eq!(ping.opcode, OP_PING, "the proxy's keepalive ping");
        assert!(
            conn.read_until_closed(Duration::from_secs(5))
                .await
                .is_some(),
            "connection still open after the keepalive timeout"
        );
        proxy
            .wait_log_reason("keepalive_timeout", Duration::from_secs(10))
            .await;
        assert!(
            !origin
                .events()
                .iter()
                .any(|e| matches!(e, OriginEvent::Ping(_))),
            "the proxy's own pings must not reach the origin"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_client_answering_pings_outlives_the_idle_timeout() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let proxy = Proxy::start(
            &Config::new().duration("idle_timeout", "1s").route(
                Route::new("f", &[origin.addr])
                    .relay("frames")
                    .duration("keepalive_interval", "300ms")
                    .duration("keepalive_timeout", "2s"),
            ),
        )
        .await;
        let mut ws = ws_connect(proxy.addr, "/").await;
        // tungstenite answers pings while it reads; send nothing for 2.5 s.
        let quiet_until = Instant::now() + Duration::from_millis(2500);
        let mut pings = 0;
        while Instant::now() < quiet_until {
            match tokio::time::timeout_at(quiet_until.into(), ws.next()).await {
                Err(_) => break,
                Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
                Ok(other) => panic!("unexpected while idle: {other:?}"),
            }
        }
        assert!(pings >= 2, "expected keepalive pings, got {pings}");
        assert_echo(&mut ws, Message::text("still here")).await;
        ws.send(Message::Close(Some(
            tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "done".into(),
            },
        )))
        .await
        .expect("close");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drain_ends_frames_connections_with_close_1001_before_the_deadline() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let mut proxy = Proxy::start(
            &Config::new().drain_timeout("3s").route(
                Route::new("f", &[origin.addr])
                    .relay("frames")
                    .duration("close_grace", "1s"),
            ),
        )
        .await;
        let mut ws = ws_connect(proxy.addr, "/").await;
        assert_echo(&mut ws, Message::text("alive")).await;
        let start = Instant::now();
        proxy.sigterm();
        // The Close comes at a frame boundary, close_grace (1 s) before the 3 s deadline, so
        // the close handshake can finish before the process exits; never a bare TCP close.
        assert_eq!(ws_wait_close(&mut ws).await, 1001);
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_millis(2900),
            "Close after {elapsed:?}"
        );
        assert_eq!(origin_close_code(&origin).await, 1001);
        let status = proxy
            .wait_exit(Duration::from_secs(5))
            .await
            .expect("the dataplane exits after the drain");
        assert!(status.success(), "{status:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_the_client_started_is_logged_as_the_clients() {
    within(30, async {
        // The echo origin answers the client's Close and closes its TCP side at once (as a
        // server does, RFC 6455 §7.1.1): its FIN reaches the proxy before the client's.
        let origin = EchoOrigin::start().await;
        let mut proxy =
            Proxy::start(&Config::new().route(Route::new("f", &[origin.addr]).relay("frames")))
                .await;
        let mut ws = ws_connect(proxy.addr, "/").await;
        assert_echo(&mut ws, Message::text("bye soon")).await;
        ws.close(None).await.expect("send close");
        while let Some(Ok(_)) = ws.next().await {}
        drop(ws);
        let line = proxy
            .wait_log("the connection's end", Duration::from_secs(5), |v| {
                v["status"] == 101
            })
            .await;
        assert_eq!(line["reason"], "client_closed", "{line}");
    })
    .await;
}
