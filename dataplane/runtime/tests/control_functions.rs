//! Operator surfaces of the built-in functions and the firewall, with real processes: the
//! publish API (`wsedgectl publish`/`presence` through the daemon and straight to the
//! dataplane, and the HTTP endpoint on `[functions] publish_listen`) reaching subscribers of a
//! broadcast route on both workers; live network-list edits (`wsedgectl lists`) that block
//! new connections without touching live ones, with expiry; and `wsedgectl drain --over`,
//! which spreads Close 1001 over the window. Needs the `wsedgectl` binary: run with
//! `cargo test --workspace`.

mod common;
#[allow(dead_code)] // shared helpers; this file uses some of them
mod control_support;

use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;
use tokio::net::TcpSocket;
use tokio_tungstenite::client_async_with_config;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use common::origins::EchoOrigin;
use common::raw::http_exchange;
use common::{
    Config, Proxy, Route, Ws, assert_echo, next_data, within, ws_config, ws_connect, ws_request,
};
use control_support::{ControlDir, Daemon, wait_status, workers_version};

/// `base` with a `[control]` table pointing into `dir`.
fn with_control(dir: &ControlDir, base: &str) -> String {
    format!(
        "{base}\n[control]\nsocket = {:?}\ndaemon_socket = {:?}\nstate_file = {:?}\n",
        dir.dataplane_socket.display().to_string(),
        dir.daemon_socket.display().to_string(),
        dir.state_file.display().to_string(),
    )
}

/// A loopback address nobody listens on now (for `publish_listen`).
fn free_local_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// `127.0.0.N`.
fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// A WebSocket handshake from source address `src` (the reuseport program pins each client
/// address to one worker, so different sources reach different workers).
async fn ws_connect_from(src: IpAddr, addr: SocketAddr, path: &str) -> Result<Ws, WsError> {
    let socket = TcpSocket::new_v4().map_err(WsError::Io)?;
    socket.bind(SocketAddr::new(src, 0)).map_err(WsError::Io)?;
    let tcp = socket.connect(addr).await.map_err(WsError::Io)?;
    tcp.set_nodelay(true).map_err(WsError::Io)?;
    let url = format!("ws://{addr}{path}");
    client_async_with_config(ws_request(&url), tcp, Some(ws_config()))
        .await
        .map(|(ws, _)| ws)
}

/// The HTTP status of a refused handshake (panics if it succeeded or failed otherwise).
fn refused_status(result: Result<Ws, WsError>) -> u16 {
    match result {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("handshake failed without an HTTP answer: {e}"),
        Ok(_) => panic!("handshake succeeded; expected a refusal"),
    }
}

/// Asserts nothing arrives on `ws` for a short while.
async fn assert_silent(ws: &mut Ws) {
    let got = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
    assert!(got.is_err(), "unexpected message: {got:?}");
}

/// A POST to the publish API; returns status and body text.
async fn http_post(addr: SocketAddr, path: &str, body: &[u8]) -> (u16, String) {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    let (head, body) = http_exchange(addr, &request).await;
    (head.status(), String::from_utf8_lossy(&body).into_owned())
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publish_reaches_subscribers_on_every_worker() {
    within(120, async {
        let dir = ControlDir::new("publish");
        let publish_addr = free_local_addr();
        let base = format!(
            "[dataplane]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\ndrain_timeout = \"1s\"\n\n[access_log]\ntarget = \"stdout\"\n\n[functions]\npublish_listen = \"{publish_addr}\"\n\n[[route]]\nname = \"chat\"\npath_prefix = \"/ch/\"\nfunction = \"broadcast\"\n"
        );
        let toml = with_control(&dir, &base);
        let proxy = dir.start_dataplane(&toml).await;
        let _daemon = Daemon::start(&dir).await;
        wait_status(&dir, "in sync everywhere", Duration::from_secs(10), |s| {
            workers_version(s) == Some(0) && s["daemon"]["in_sync"] == Value::Bool(true)
        })
        .await;

        // Raw-mode subscribers of `news` from 24 source addresses (both workers get some),
        // and one subscriber of another channel.
        let mut news = Vec::new();
        for n in 10..34u8 {
            news.push(
                ws_connect_from(loopback(n), proxy.addr, "/ch/news")
                    .await
                    .expect("subscribe"),
            );
        }
        let mut other = ws_connect(proxy.addr, "/ch/other").await;
        let subscribers = news.len() as u64;
        let listed = dir
            .ctl(&["--json", "connections", "--route", "chat"])
            .await
            .json();
        let workers: BTreeSet<u64> = listed["connections"]
            .as_array()
            .expect("connections")
            .iter()
            .filter_map(|c| c["worker"].as_u64())
            .collect();
        assert_eq!(
            workers,
            BTreeSet::from([0, 1]),
            "both workers hold subscribers: {listed}"
        );

        // Presence, through the daemon and over HTTP.
        let presence = dir.ctl(&["--json", "presence", "news"]).await.json();
        assert_eq!(presence["subscribers"].as_u64(), Some(subscribers), "{presence}");
        let (head, body) = http_exchange(
            publish_addr,
            format!("GET /channels/news HTTP/1.1\r\nHost: {publish_addr}\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(head.status(), 200);
        assert_eq!(head.get("connection"), Some("close"));
        let presence = json(&String::from_utf8_lossy(&body));
        assert_eq!(presence["channel"], "news");
        assert_eq!(presence["subscribers"].as_u64(), Some(subscribers));

        // The CLI, through the daemon.
        let out = dir
            .ctl(&["--json", "publish", "news", "hello from the cli"])
            .await
            .json();
        assert_eq!(out["delivered"].as_u64(), Some(subscribers), "{out}");
        for ws in &mut news {
            assert_eq!(next_data(ws).await, Message::text("hello from the cli"));
        }
        let human = dir.ctl(&["publish", "news", "second"]).await;
        assert_eq!(
            human.ok(),
            format!("published on news: delivered to {subscribers} subscribers\n")
        );
        for ws in &mut news {
            assert_eq!(next_data(ws).await, Message::text("second"));
        }

        // The HTTP endpoint.
        let (status, body) = http_post(publish_addr, "/publish/news", b"hello over http").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(json(&body)["delivered"].as_u64(), Some(subscribers));
        for ws in &mut news {
            assert_eq!(next_data(ws).await, Message::text("hello over http"));
        }

        // Bytes that are not UTF-8 arrive as binary: from a file, straight to the dataplane.
        let file = dir.dir.join("payload.bin");
        std::fs::write(&file, [0u8, 159, 146, 150, 255]).expect("write payload");
        let out = dir
            .ctl_direct(&[
                "--json",
                "publish",
                "news",
                "--file",
                &file.display().to_string(),
            ])
            .await
            .json();
        assert_eq!(out["delivered"].as_u64(), Some(subscribers), "{out}");
        for ws in &mut news {
            assert_eq!(
                next_data(ws).await,
                Message::binary(vec![0u8, 159, 146, 150, 255])
            );
        }

        // A channel nobody listens to, and refusals.
        let (status, body) = http_post(publish_addr, "/publish/empty", b"x").await;
        assert_eq!((status, json(&body)["delivered"].as_u64()), (200, Some(0)));
        let bad = dir.ctl(&["publish", "bad name", "x"]).await;
        assert_eq!(bad.code, 2, "{bad:#?}");
        let (status, _) = http_post(publish_addr, "/publish/bad%20name", b"x").await;
        assert_eq!(status, 400);
        let (status, _) = http_post(publish_addr, "/publish/news", &vec![b'a'; (1 << 20) + 1]).await;
        assert_eq!(status, 413);
        let (head, _) = http_exchange(
            publish_addr,
            b"POST /publish/news HTTP/1.1\r\nHost: x\r\n\r\nbody",
        )
        .await;
        assert_eq!(head.status(), 411);
        let (head, _) = http_exchange(publish_addr, b"GET /publish/news HTTP/1.1\r\n\r\n").await;
        assert_eq!(head.status(), 405);
        // Garbage, a half-sent head and a peer that vanishes do not stop the endpoint.
        for junk in [&b"\x16\x03\x01\x02\x00garbage\r\n\r\n"[..], b"POST /publish/news HTT"] {
            use tokio::io::AsyncWriteExt;
            let mut c = tokio::net::TcpStream::connect(publish_addr)
                .await
                .expect("connect");
            let _ = c.write_all(junk).await;
        }
        let (status, body) = http_post(publish_addr, "/publish/news", b"still here").await;
        assert_eq!(status, 200, "{body}");
        for ws in &mut news {
            assert_eq!(next_data(ws).await, Message::text("still here"));
        }
        assert_silent(&mut other).await;
    })
    .await;
}

/// A route to an echo origin behind a rule that denies the clients in list `blocked`.
const BLOCK_RULES: &str = "\n[[list]]\nname = \"blocked\"\nentries = []\n\n[[rule]]\nname = \"deny-blocked\"\nwhen = { client_in = \"blocked\" }\naction = \"deny\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_edits_block_new_connections_and_expire() {
    within(120, async {
        let origin = EchoOrigin::start().await;
        let dir = ControlDir::new("lists");
        let config = Config::new()
            .workers(2)
            .route(Route::new("main", &[origin.addr]));
        let toml = with_control(&dir, &format!("{}{BLOCK_RULES}", config.to_toml()));
        let proxy = dir.start_dataplane(&toml).await;
        let _daemon = Daemon::start(&dir).await;
        wait_status(&dir, "in sync everywhere", Duration::from_secs(10), |s| {
            workers_version(s) == Some(0) && s["daemon"]["in_sync"] == Value::Bool(true)
        })
        .await;
        let blocked = loopback(5);

        // A live connection from the address before it is listed.
        let mut live = ws_connect_from(blocked, proxy.addr, "/")
            .await
            .expect("connect before the block");
        assert_echo(&mut live, Message::text("before")).await;

        dir.ctl(&["lists", "add", "blocked", "127.0.0.5"])
            .await
            .ok();
        let shown = dir.ctl(&["lists", "show"]).await;
        assert!(
            shown.ok().contains("blocked  127.0.0.5/32  never"),
            "{shown:#?}"
        );
        assert_eq!(
            refused_status(ws_connect_from(blocked, proxy.addr, "/").await),
            403
        );
        // Others still get in; the live connection from the listed address is untouched.
        let mut neighbour = ws_connect_from(loopback(6), proxy.addr, "/")
            .await
            .expect("unlisted address");
        assert_echo(&mut neighbour, Message::text("neighbour")).await;
        assert_echo(&mut live, Message::text("after the block")).await;

        dir.ctl(&["lists", "remove", "blocked", "127.0.0.5/32"])
            .await
            .ok();
        let mut back = ws_connect_from(blocked, proxy.addr, "/")
            .await
            .expect("unblocked");
        assert_echo(&mut back, Message::text("unblocked")).await;
        let missing = dir.ctl(&["lists", "remove", "blocked", "127.0.0.5"]).await;
        assert_eq!(missing.code, 1, "{missing:#?}");

        // An entry with an expiry 2 s ahead matches, then stops matching once it passes.
        dir.ctl(&["lists", "add", "blocked", "127.0.0.5", "--for", "2s"])
            .await
            .ok();
        let view = dir
            .ctl(&["--json", "lists", "show", "blocked"])
            .await
            .json();
        let expires = view["lists"][0]["entries"][0]["expires"]
            .as_u64()
            .unwrap_or_else(|| panic!("an expiry: {view}"));
        assert_eq!(
            refused_status(ws_connect_from(blocked, proxy.addr, "/").await),
            403
        );
        let until_expiry = std::time::UNIX_EPOCH + Duration::from_secs(expires);
        if let Ok(left) = until_expiry.duration_since(std::time::SystemTime::now()) {
            tokio::time::sleep(left + Duration::from_millis(200)).await;
        }
        let mut after = ws_connect_from(blocked, proxy.addr, "/")
            .await
            .expect("expired entry no longer matches");
        assert_echo(&mut after, Message::text("expired")).await;
        let view = dir
            .ctl(&["--json", "lists", "show", "blocked"])
            .await
            .json();
        assert_eq!(
            view["lists"][0]["entries"].as_array().map(Vec::len),
            Some(0),
            "expired entries are hidden: {view}"
        );
        assert_echo(&mut live, Message::text("still live")).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_over_spreads_close_1001() {
    within(120, async {
        let origin = EchoOrigin::start().await;
        let dir = ControlDir::new("spread");
        let config = Config::new()
            .workers(2)
            .route(Route::new("live", &[origin.addr]).relay("frames"));
        let mut proxy: Proxy = dir.start_dataplane(&dir.toml(&config, "")).await;

        let mut waiting = tokio::task::JoinSet::new();
        let start = Instant::now();
        for i in 0..20u8 {
            let mut ws = ws_connect_from(loopback(20 + i), proxy.addr, "/")
                .await
                .expect("connect");
            assert_echo(&mut ws, Message::text(format!("hello {i}"))).await;
            waiting.spawn(async move {
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Close(frame))) => {
                            return (frame.map(|f| u16::from(f.code)), start.elapsed());
                        }
                        Some(Ok(_)) => continue,
                        other => panic!("connection {i} ended without a Close: {other:?}"),
                    }
                }
            });
        }

        let began = start.elapsed();
        let out = dir
            .ctl_direct(&["drain", "--over", "2s", "--timeout", "10s"])
            .await;
        let text = out.ok();
        assert!(
            text.contains("closing 20 live connections spread over 2s")
                && text.contains("drained: no live connections"),
            "{text}"
        );
        let mut times = Vec::new();
        while let Some(done) = waiting.join_next().await {
            let (code, at) = done.expect("client task");
            assert_eq!(code, Some(1001), "Close 1001 (going away)");
            times.push(at - began);
        }
        times.sort();
        let (first, last) = (times[0], times[times.len() - 1]);
        assert!(
            last - first > Duration::from_millis(100),
            "closes spread over the window, not all at once: {times:?}"
        );
        assert!(
            last < Duration::from_millis(3500),
            "all within the 2 s window (plus slack): {times:?}"
        );

        // The access log says why.
        let drained = std::cell::RefCell::new(HashSet::new());
        proxy
            .wait_log("20 drained connections", Duration::from_secs(10), |v| {
                if v.get("reason").and_then(Value::as_str) == Some("drained") {
                    drained
                        .borrow_mut()
                        .insert(v.get("client").map(Value::to_string).unwrap_or_default());
                }
                drained.borrow().len() >= 20
            })
            .await;
        // The host stopped accepting.
        assert!(
            ws_connect_from(loopback(99), proxy.addr, "/")
                .await
                .is_err()
        );
    })
    .await;
}
