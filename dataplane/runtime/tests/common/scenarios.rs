//! Test bodies shared between the proxy tests and the `direct` sanity tests (which run them
//! straight against the origins, to check the peers and the harness themselves).

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::origins::{EchoOrigin, OriginEvent};
use super::raw::{OP_BINARY, OP_TEXT, RawConn, TEST_ACCEPT, client_frame, upgrade_head};
use super::{assert_echo, binary_payload, describe, next_data, text_payload, ws_connect};

/// The payload sizes of the echo tests: the frame-length encoding boundaries and 1 MiB.
pub(crate) const SIZES: [usize; 6] = [0, 125, 126, 65535, 65536, 1 << 20];

/// Text and binary echo at every size of [`SIZES`], on one connection.
pub(crate) async fn echo_sizes(addr: SocketAddr) {
    let mut ws = ws_connect(addr, "/echo").await;
    for n in SIZES {
        assert_echo(&mut ws, Message::text(text_payload(n))).await;
        assert_echo(&mut ws, Message::binary(binary_payload(n))).await;
    }
    ws.close(None).await.expect("close");
}

/// A client ping comes back as the origin's pong, and the origin saw the ping.
pub(crate) async fn ping_pong(addr: SocketAddr, origin: &EchoOrigin) {
    let mut ws = ws_connect(addr, "/echo").await;
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .expect("send ping");
    let next = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
    let got = match next.expect("no pong within 10 s") {
        Some(Ok(m @ Message::Pong(_))) => m,
        Some(Ok(m)) => panic!("expected a pong, got {}", describe(&m)),
        Some(Err(e)) => panic!("read failed while waiting for a pong: {e}"),
        None => panic!("connection ended while waiting for a pong"),
    };
    assert_eq!(got, Message::Pong(b"are you there".to_vec().into()));
    assert!(
        origin
            .events()
            .contains(&OriginEvent::Ping(b"are you there".to_vec())),
        "origin did not record the ping: {:?}",
        origin.events()
    );
    // The connection still relays data after the control frames.
    assert_echo(&mut ws, Message::text("after ping")).await;
}

/// Client Close(1000, "bye") reaches the origin; the origin's Close reply reaches the client,
/// and then the connection ends.
pub(crate) async fn close_handshake(addr: SocketAddr, origin: &EchoOrigin) {
    let mut ws = ws_connect(addr, "/echo").await;
    assert_echo(&mut ws, Message::text("before close")).await;
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .expect("send close");
    let reply = next_data(&mut ws).await;
    match &reply {
        Message::Close(Some(f)) => {
            assert_eq!(f.code, CloseCode::Normal, "close reply code");
            assert_eq!(
                f.reason.as_str(),
                "bye",
                "close reply reason (tungstenite echoes it)"
            );
        }
        other => panic!("expected the origin's Close reply, got {}", describe(other)),
    }
    // After the close handshake the stream ends.
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    match end {
        Ok(None) | Ok(Some(Err(_))) => {}
        Ok(Some(Ok(m))) => panic!("message after the close handshake: {}", describe(&m)),
        Err(_) => panic!("connection not ended 5 s after the close handshake"),
    }
    let want = OriginEvent::Close(Some((1000, "bye".to_string())));
    // The origin records the close when it reads it, which is before it replies.
    assert!(
        origin.events().contains(&want),
        "origin did not see Close(1000, bye): {:?}",
        origin.events()
    );
}

/// A raw client writes its upgrade head and a masked text frame in one write; the 101 comes
/// back, then the echo of that frame.
pub(crate) async fn early_frame(addr: SocketAddr, host: &str) {
    let mut c = RawConn::connect(addr).await;
    let mut bytes = upgrade_head("/echo", host, &[]).into_bytes();
    bytes.extend_from_slice(&client_frame(
        OP_TEXT,
        b"early bird",
        [0x11, 0x22, 0x33, 0x44],
    ));
    c.send(&bytes).await.expect("write head + frame");
    let head = tokio::time::timeout(Duration::from_secs(10), c.read_head())
        .await
        .expect("no response head within 10 s")
        .expect("response head");
    assert_eq!(head.status(), 101, "response: {}", head.text());
    assert_eq!(
        head.get("sec-websocket-accept"),
        Some(TEST_ACCEPT),
        "accept key in {}",
        head.text()
    );
    let f = tokio::time::timeout(Duration::from_secs(10), c.read_frame())
        .await
        .expect("no echo of the early frame within 10 s")
        .expect("echo frame");
    assert_eq!(f.opcode, OP_TEXT, "echo opcode: {f:?}");
    assert!(f.fin);
    assert!(!f.masked, "server frames are unmasked");
    assert_eq!(f.payload, b"early bird");
}

/// `conns` concurrent connections each send `msgs` numbered messages (pipelined) and read them
/// back: none lost, none reordered, none crossed between connections.
pub(crate) async fn concurrent_echo(addr: SocketAddr, conns: usize, msgs: usize) {
    let mut set = JoinSet::new();
    for c in 0..conns {
        set.spawn(async move {
            let ws = ws_connect(addr, &format!("/echo/{c}")).await;
            let (mut tx, mut rx) = ws.split();
            let writer = tokio::spawn(async move {
                for m in 0..msgs {
                    tx.send(Message::text(format!("conn {c} msg {m}")))
                        .await
                        .expect("send");
                }
                tx
            });
            for m in 0..msgs {
                let got = loop {
                    match rx.next().await {
                        Some(Ok(Message::Text(t))) => break t,
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(other)) => {
                            panic!("conn {c}: expected message {m}, got {}", describe(&other))
                        }
                        Some(Err(e)) => panic!("conn {c}: read failed at message {m}: {e}"),
                        None => panic!("conn {c}: ended at message {m}"),
                    }
                };
                assert_eq!(got.as_str(), format!("conn {c} msg {m}"), "conn {c}");
            }
            let tx = writer.await.expect("writer");
            let mut ws = tx.reunite(rx).expect("reunite");
            let _ = ws.close(None).await;
            c
        });
    }
    let mut done = 0;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(_) => done += 1,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("connection task failed: {e}"),
        }
    }
    assert_eq!(done, conns);
}

/// An unbounded flood, as common load generators make it: `conns` connections each write
/// 16 KiB binary frames as fast as the socket takes them for `secs` seconds while reading
/// whatever comes back. Returns the bytes echoed to each connection (after a 101 each), so
/// a test can see how evenly the proxy served them.
pub(crate) async fn flood(addr: SocketAddr, conns: usize, secs: u64) -> Vec<u64> {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let start = Arc::new(tokio::sync::Barrier::new(conns));
    let mut set = JoinSet::new();
    for c in 0..conns {
        let start = Arc::clone(&start);
        set.spawn(async move {
            let mut conn = RawConn::connect(addr).await;
            let head = upgrade_head(&format!("/flood/{c}"), "edge.test", &[]);
            conn.send(head.as_bytes()).await.expect("upgrade request");
            let answer = conn.read_head().await.expect("answer");
            assert_eq!(answer.status(), 101, "conn {c}: {}", answer.text());
            let (mut rx, mut tx) = conn.stream.into_split();
            start.wait().await;
            let until = tokio::time::Instant::now() + Duration::from_secs(secs);
            let frame = client_frame(OP_BINARY, &vec![c as u8; 16 * 1024], [1, 2, 3, 4]);
            let writer = tokio::spawn(async move {
                while tokio::time::timeout_at(until, tx.write_all(&frame))
                    .await
                    .is_ok()
                {}
                tx
            });
            let mut echoed = 0u64;
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(Ok(n)) = tokio::time::timeout_at(until, rx.read(&mut buf)).await {
                assert!(n > 0, "conn {c}: closed during the flood");
                echoed += n as u64;
            }
            drop(writer.await.expect("writer"));
            (c, echoed)
        });
    }
    let mut echoed = vec![0; conns];
    while let Some(r) = set.join_next().await {
        match r {
            Ok((c, n)) => echoed[c] = n,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("connection task failed: {e}"),
        }
    }
    echoed
}
