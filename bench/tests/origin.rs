//! The echo origin against an independent client (tokio-tungstenite): text and binary echo,
//! ping/pong, the close handshake, protocol errors, and the demo page on `GET /`.

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

async fn start() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(wsedge_bench::origin::serve_listener(l));
    addr
}

#[tokio::test]
async fn echoes_text_binary_and_ping_then_closes() {
    let addr = start().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    let big = vec![7u8; 200_000];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
    ws.send(Message::Ping(b"p".to_vec().into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Pong(b"p".to_vec().into())
    );
    ws.close(None).await.unwrap();
    while let Some(Ok(m)) = ws.next().await {
        assert!(matches!(m, Message::Close(_)), "{m:?}");
    }
}

#[tokio::test]
async fn serves_the_demo_page_and_rejects_bad_utf8() {
    let addr = start().await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut page = String::new();
    s.read_to_string(&mut page).await.unwrap();
    assert!(page.starts_with("HTTP/1.1 200"));
    assert!(page.contains("new WebSocket(`${location.protocol === \"https:\" ? \"wss\" : \"ws\"}://${location.host}/ws`)"));

    // A text frame with invalid UTF-8 ends with Close 1007.
    let (mut s, rest) = {
        let t = wsedge_bench::load::client::Target::parse(&format!("ws://{addr}/")).unwrap();
        wsedge_bench::load::client::open(&t, None).await.unwrap()
    };
    assert!(rest.is_empty());
    let mut f = Vec::new();
    wsedge_bench::frame::write_client_frame(
        &mut f,
        wsedge_bench::frame::OP_TEXT,
        &[0xff, 0xfe],
        [1, 2, 3, 4],
    );
    s.write_all(&f).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert_eq!(out, [0x88, 2, 0x03, 0xef]);
}
