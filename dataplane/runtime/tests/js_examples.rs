//! The shipped JavaScript examples (`docs/examples/functions/`, served together by
//! `docs/examples/functions.toml`) through the real binary: an echo, a chat with rooms and
//! presence, an authenticating proxy to an origin, a ticker on a timer, and the edge
//! platform's own examples. The files run as shipped; only addresses change (the listener
//! on port 0, the demo origin at 127.0.0.1:9001 replaced by the test's echo origin).

mod common;
mod js_support;

use std::path::{Path, PathBuf};

use futures_util::SinkExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use common::origins::EchoOrigin;
use common::{Proxy, assert_echo, binary_payload, text_payload, within, ws_connect};
use js_support::{Scripts, ask, http_get, next_text};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples")
}

/// Copies `from` into `to`, replacing `origin` for the demo origin's address in every file.
fn copy_tree(from: &Path, to: &Path, origin: &str) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let path = entry.path();
        let target = to.join(entry.file_name());
        if path.is_dir() {
            copy_tree(&path, &target, origin);
        } else {
            let text = std::fs::read_to_string(&path).expect("read example");
            std::fs::write(&target, text.replace("127.0.0.1:9001", origin)).expect("write");
        }
    }
}

/// wsedge serving `docs/examples/functions.toml` (2 workers, port 0), its demo origin
/// replaced by a test echo origin.
async fn start(scripts: &Scripts, origin: &EchoOrigin) -> Proxy {
    let origin = origin.addr.to_string();
    let functions = scripts.dir.join("functions");
    copy_tree(&examples().join("functions"), &functions, &origin);
    let toml = std::fs::read_to_string(examples().join("functions.toml")).expect("read toml");
    let toml = toml
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("workers = \"auto\"", "workers = 2")
        .replace("127.0.0.1:9001", &origin)
        .replace(
            "script = \"functions/",
            &format!("script = \"{}/", functions.display()),
        );
    assert!(!toml.contains("script = \"functions/"), "{toml}");
    Proxy::start_toml(&toml).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_serves() {
    within(90, async {
        let origin = EchoOrigin::start().await;
        let scripts = Scripts::new("examples");
        let proxy = start(&scripts, &origin).await;

        // echo.js
        let mut ws = ws_connect(proxy.addr, "/echo").await;
        for n in [0, 200, 70_000] {
            assert_echo(&mut ws, Message::text(text_payload(n))).await;
            assert_echo(&mut ws, Message::binary(binary_payload(n))).await;
        }
        assert_eq!(http_get(proxy.addr, "/echo").await.0, 426);

        // platform-pong.js: "pong", and a page for a plain GET.
        let mut ws = ws_connect(proxy.addr, "/pong").await;
        assert_eq!(ask(&mut ws, "ping").await, "pong");
        let (status, body) = http_get(proxy.addr, "/pong").await;
        assert_eq!(status, 200);
        assert!(body.contains("<h1>pong</h1>"), "{body}");

        // platform-received.js: "received: " before every message; 400 without an upgrade.
        let mut ws = ws_connect(proxy.addr, "/received").await;
        assert_eq!(ask(&mut ws, "hello").await, "received: hello");
        assert_eq!(http_get(proxy.addr, "/received").await.0, 400);

        // The demo route: anything else goes to the origin.
        let mut ws = ws_connect(proxy.addr, "/anything").await;
        assert_echo(&mut ws, Message::text("through the demo route")).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_has_rooms_and_presence() {
    within(60, async {
        let origin = EchoOrigin::start().await;
        let scripts = Scripts::new("chat");
        let proxy = start(&scripts, &origin).await;
        let json = |text: String| -> Value { serde_json::from_str(&text).expect("JSON") };

        let mut alice = ws_connect(proxy.addr, "/chat/lobby?name=alice").await;
        let welcome = json(next_text(&mut alice).await);
        assert_eq!(welcome["type"], "welcome");
        assert_eq!(
            (welcome["room"].as_str(), welcome["name"].as_str()),
            (Some("lobby"), Some("alice"))
        );
        let mut bob = ws_connect(proxy.addr, "/chat/lobby?name=bob").await;
        assert_eq!(json(next_text(&mut bob).await)["type"], "welcome");
        let joined = json(next_text(&mut alice).await);
        assert_eq!(
            (joined["type"].as_str(), joined["name"].as_str()),
            (Some("join"), Some("bob"))
        );
        // Another room hears nothing of the lobby.
        let mut carol = ws_connect(proxy.addr, "/chat/kitchen?name=carol").await;
        assert_eq!(json(next_text(&mut carol).await)["room"], "kitchen");

        bob.send(Message::text("hi all")).await.expect("send");
        for ws in [&mut alice, &mut bob] {
            let m = json(next_text(ws).await);
            assert_eq!(
                (m["type"].as_str(), m["from"].as_str(), m["text"].as_str()),
                (Some("message"), Some("bob"), Some("hi all"))
            );
        }
        bob.close(None).await.expect("close");
        let left = json(next_text(&mut alice).await);
        assert_eq!(
            (left["type"].as_str(), left["name"].as_str()),
            (Some("leave"), Some("bob"))
        );
        carol.send(Message::text("anyone?")).await.expect("send");
        let m = json(next_text(&mut carol).await);
        assert_eq!(m["from"], "carol");
        // No room: 404.
        assert_eq!(http_get(proxy.addr, "/chat/").await.0, 404);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_proxy_checks_the_token_then_pipes_to_the_origin() {
    within(60, async {
        let origin = EchoOrigin::start().await;
        let scripts = Scripts::new("auth");
        let proxy = start(&scripts, &origin).await;

        assert_eq!(http_get(proxy.addr, "/proxy?token=nope").await.0, 401);
        let url = proxy.ws_url("/proxy?token=wrong");
        match common::ws_connect_req(proxy.addr, common::ws_request(&url)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 401)
            }
            other => panic!("expected a 401, got {other:?}"),
        }
        assert_eq!(origin.accepted(), 0);

        // The token in the query string.
        let mut ws = ws_connect(proxy.addr, "/proxy?token=let-me-in").await;
        for n in [1, 70_000] {
            assert_echo(&mut ws, Message::text(text_payload(n))).await;
            assert_echo(&mut ws, Message::binary(binary_payload(n))).await;
        }
        assert_eq!(origin.accepted(), 1);
        assert_eq!(origin.requests()[0].path, "/ws");

        // The token as a subprotocol, chosen back by the edge.
        let mut request = common::ws_request(&proxy.ws_url("/proxy"));
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("chat, token.let-me-in"),
        );
        let (mut ws, response) = common::ws_connect_req(proxy.addr, request)
            .await
            .expect("handshake");
        assert_eq!(
            response
                .headers()
                .get("sec-websocket-protocol")
                .map(|v| v.as_bytes()),
            Some(&b"token.let-me-in"[..])
        );
        assert_echo(&mut ws, Message::text("with a protocol token")).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ticker_publishes_every_second_to_every_worker() {
    within(60, async {
        let origin = EchoOrigin::start().await;
        let scripts = Scripts::new("ticker");
        let proxy = start(&scripts, &origin).await;
        // Four subscribers: with two workers, some land on the worker that does not run the
        // interval, and still receive every tick.
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(ws_connect(proxy.addr, "/ticker").await);
        }
        for ws in &mut clients {
            let first: Value = serde_json::from_str(&next_text(ws).await).expect("JSON");
            let second: Value = serde_json::from_str(&next_text(ws).await).expect("JSON");
            let (a, b) = (first["seq"].as_u64(), second["seq"].as_u64());
            assert_eq!(b, a.map(|a| a + 1), "{first} then {second}");
            assert!(
                first["at"].as_str().is_some_and(|t| t.ends_with('Z')),
                "{first}"
            );
        }
    })
    .await;
}
