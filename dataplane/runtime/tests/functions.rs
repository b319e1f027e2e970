//! The built-in functions through the real binary: `echo` (sizes, fragments, ping, the close
//! handshake, protocol errors), `broadcast` (fan-out to 1,000 subscribers over both workers,
//! the `wsedge.v1` envelopes, publish permissions and channel limits, a slow consumer cut
//! off while the others keep receiving) and `bridge` (the edge's own WebSocket to a real
//! origin).

mod common;
mod functions_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::origins::EchoOrigin;
use common::raw::{OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_TEXT, frame};
use common::{Proxy, assert_echo, binary_payload, text_payload, within, ws_config, ws_request};
use functions_support::{Client, Msg, config_toml, function_route, loopback, tcp_from};
use serde_json::{Value, json};
use tokio_tungstenite::client_async_with_config;
use tokio_tungstenite::tungstenite::Message;

/// Message sizes around the frame-length encodings (7-bit, 16-bit, 64-bit) and 1 MiB.
const SIZES: [usize; 6] = [0, 125, 126, 65535, 65536, 1 << 20];

async fn start(workers: usize, routes: &str) -> Proxy {
    Proxy::start_toml(&config_toml(workers, routes)).await
}

fn echo_route() -> String {
    function_route("echo", "/echo", "echo", &[])
}

/// The access-log line of the connection from `local` (the client's own address).
async fn log_of(proxy: &mut Proxy, local: SocketAddr) -> Value {
    let client = local.to_string();
    proxy
        .wait_log(
            &format!("for client {client}"),
            Duration::from_secs(10),
            |v| v.get("client").and_then(Value::as_str) == Some(client.as_str()),
        )
        .await
}

// ---------------------------------------------------------------------------------------------
// echo
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_returns_text_and_binary_of_every_size() {
    within(60, async {
        let proxy = start(2, &echo_route()).await;
        let mut ws = common::ws_connect(proxy.addr, "/echo").await;
        for n in SIZES {
            assert_echo(&mut ws, Message::text(text_payload(n))).await;
            assert_echo(&mut ws, Message::binary(binary_payload(n))).await;
        }
        ws.close(None).await.expect("close");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_reassembles_fragments_answers_pings_and_closes_cleanly() {
    within(60, async {
        let mut proxy = start(2, &echo_route()).await;
        let mut c = Client::connect(loopback(1), proxy.addr, "/echo", None).await;
        let local = c.stream.local_addr().expect("local addr");

        // A text message in three fragments with a ping between them.
        let mask = Some([9, 8, 7, 6]);
        c.send_raw(&frame(false, OP_TEXT, "héllo, ".as_bytes(), mask))
            .await
            .expect("send");
        c.send_raw(&frame(true, OP_PING, b"are you there", mask))
            .await
            .expect("send");
        c.send_raw(&frame(false, OP_CONT, "fragmented ".as_bytes(), mask))
            .await
            .expect("send");
        c.send_raw(&frame(true, OP_CONT, "wörld".as_bytes(), mask))
            .await
            .expect("send");
        // A binary message in two fragments, one of them empty.
        c.send_raw(&frame(false, OP_BINARY, &[0, 1, 2, 255], mask))
            .await
            .expect("send");
        c.send_raw(&frame(true, OP_CONT, &[], mask))
            .await
            .expect("send");

        let mut pong = None;
        let mut data = Vec::new();
        while data.len() < 2 {
            match c.read_msg().await {
                Msg::Pong(p) => pong = Some(p),
                Msg::Ping(_) => {}
                m @ (Msg::Text(_) | Msg::Binary(_)) => data.push(m),
                m => panic!("unexpected {}", m.describe()),
            }
        }
        assert_eq!(pong.as_deref(), Some(&b"are you there"[..]), "pong payload");
        assert_eq!(
            data[0],
            Msg::Text("héllo, fragmented wörld".as_bytes().to_vec())
        );
        assert_eq!(data[1], Msg::Binary(vec![0, 1, 2, 255]));

        // A ping on its own.
        c.send_frame(true, OP_PING, b"p2").await;
        assert_eq!(c.read_msg().await, Msg::Pong(b"p2".to_vec()));

        // Close 1000 -> Close 1000 back, then the edge closes TCP.
        c.send_close(1000).await;
        match c.read_msg().await {
            Msg::Close(code, _) => assert_eq!(code, Some(1000), "close code echoed"),
            m => panic!("expected Close 1000, got {}", m.describe()),
        }
        assert!(
            c.wait_eof(Duration::from_secs(5)).await,
            "TCP still open 5 s after the close handshake"
        );
        let line = log_of(&mut proxy, local).await;
        assert_eq!(line["reason"], "client_closed", "{line}");
        assert_eq!(line["route"], "echo", "{line}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_rejects_invalid_utf8_and_unmasked_frames() {
    within(60, async {
        let proxy = start(2, &echo_route()).await;

        // Invalid UTF-8 in a text message: Close 1007.
        let mut c = Client::connect(loopback(1), proxy.addr, "/echo", None).await;
        c.send_frame(true, OP_TEXT, &[b'o', b'k', 0xC3, 0x28]).await;
        let close = loop {
            match c.read_msg().await {
                Msg::Close(code, _) => break code,
                // The valid prefix may be streamed back before the error is seen.
                Msg::Text(_) | Msg::Ping(_) | Msg::Pong(_) => continue,
                m => panic!("unexpected {}", m.describe()),
            }
        };
        assert_eq!(close, Some(1007), "invalid UTF-8 closes with 1007");
        assert!(
            c.wait_eof(Duration::from_secs(5)).await,
            "TCP closed after 1007"
        );

        // Invalid UTF-8 that starts in one fragment and fails in the next one.
        let mut c = Client::connect(loopback(1), proxy.addr, "/echo", None).await;
        c.send_frame(false, OP_TEXT, &[b'a', 0xE2, 0x82]).await;
        c.send_frame(true, OP_CONT, &[0x41]).await;
        let close = loop {
            match c.read_msg().await {
                Msg::Close(code, _) => break code,
                Msg::Text(_) | Msg::Ping(_) | Msg::Pong(_) => continue,
                m => panic!("unexpected {}", m.describe()),
            }
        };
        assert_eq!(
            close,
            Some(1007),
            "invalid UTF-8 across fragments closes with 1007"
        );

        // An unmasked client frame: Close 1002.
        let mut c = Client::connect(loopback(1), proxy.addr, "/echo", None).await;
        c.send_raw(&frame(true, OP_TEXT, b"not masked", None))
            .await
            .expect("send");
        match c.read_msg().await {
            Msg::Close(code, _) => assert_eq!(code, Some(1002), "unmasked frame -> 1002"),
            m => panic!("expected Close 1002, got {}", m.describe()),
        }
        assert!(
            c.wait_eof(Duration::from_secs(5)).await,
            "TCP closed after 1002"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// broadcast
// ---------------------------------------------------------------------------------------------

const SUBSCRIBERS: usize = 1000;
const PUBLISHERS: usize = 3;
const PER_PUBLISHER: usize = 20;
/// Client source addresses 127.0.0.2 ..= 127.0.0.40.
const FIRST_SRC: u8 = 2;
const LAST_SRC: u8 = 40;

/// Checks one subscriber's messages ("p{publisher}:{n}"): every publisher's numbers exactly
/// once and in order. Returns a description of the first problem.
fn check_sequence(got: &[String], publishers: &[usize]) -> Result<(), String> {
    let mut next: BTreeMap<usize, usize> = publishers.iter().map(|&p| (p, 0)).collect();
    for m in got {
        let (p, n) = m
            .strip_prefix('p')
            .and_then(|r| r.split_once(':'))
            .and_then(|(p, n)| Some((p.parse::<usize>().ok()?, n.parse::<usize>().ok()?)))
            .ok_or_else(|| format!("unexpected message {m:?}"))?;
        let want = next
            .get_mut(&p)
            .ok_or_else(|| format!("message from unexpected publisher: {m:?}"))?;
        if n != *want {
            return Err(format!("publisher {p}: expected #{want}, got #{n}"));
        }
        *want += 1;
    }
    for (p, n) in next {
        if n != PER_PUBLISHER {
            return Err(format!("publisher {p}: {n} of {PER_PUBLISHER} messages"));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_1000_subscribers_on_every_worker_once_and_in_order() {
    within(80, async {
        let routes = function_route(
            "room",
            "/ch/",
            "broadcast",
            &["echo_to_sender = false", "max_send_queue = 1048576"],
        );
        let mut proxy = start(2, &routes).await;
        let addr = proxy.addr;
        let started = Instant::now();

        // 1,000 raw subscribers from 39 source addresses, connected 100 at a time.
        let mut subscribers = Vec::with_capacity(SUBSCRIBERS);
        for batch in 0..SUBSCRIBERS / 100 {
            let mut joins = Vec::new();
            for i in batch * 100..(batch + 1) * 100 {
                let src = loopback(FIRST_SRC + (i % (LAST_SRC - FIRST_SRC + 1) as usize) as u8);
                joins.push(tokio::spawn(async move {
                    Client::connect(src, addr, "/ch/room", None).await
                }));
            }
            for j in joins {
                subscribers.push(j.await.expect("subscriber task"));
            }
        }
        let connected = started.elapsed();
        let locals: Vec<SocketAddr> = subscribers
            .iter()
            .map(|c| c.stream.local_addr().expect("local"))
            .collect();

        // Each subscriber reads 60 messages in its own task.
        let total = PUBLISHERS * PER_PUBLISHER;
        let readers: Vec<_> = subscribers
            .into_iter()
            .map(|mut c| {
                tokio::spawn(async move {
                    let mut got = Vec::with_capacity(total);
                    while got.len() < total {
                        match c.read_msg_within(Duration::from_secs(40)).await {
                            Msg::Text(t) => got.push(String::from_utf8(t).expect("utf-8")),
                            Msg::Ping(_) | Msg::Pong(_) => {}
                            m => panic!("subscriber got {}", m.describe()),
                        }
                    }
                    let last = Instant::now();
                    // Nothing more than the 60 (no duplicates arriving late).
                    c.assert_silent(Duration::from_millis(300)).await;
                    (c, got, last)
                })
            })
            .collect();

        // Three publishers (raw clients, also subscribed to the room), from their own
        // addresses, all connected before any publishes; then 20 numbered messages each,
        // concurrently.
        let mut publisher_clients = Vec::new();
        for p in 0..PUBLISHERS {
            publisher_clients
                .push(Client::connect(loopback(50 + p as u8), addr, "/ch/room", None).await);
        }
        let publish_start = Instant::now();
        let mut publishers = Vec::new();
        for (p, mut c) in publisher_clients.into_iter().enumerate() {
            publishers.push(tokio::spawn(async move {
                for n in 0..PER_PUBLISHER {
                    c.send_text(&format!("p{p}:{n}")).await;
                }
                // A publisher receives the others' messages, never its own.
                let mut got = Vec::new();
                while got.len() < (PUBLISHERS - 1) * PER_PUBLISHER {
                    match c.read_msg_within(Duration::from_secs(40)).await {
                        Msg::Text(t) => got.push(String::from_utf8(t).expect("utf-8")),
                        Msg::Ping(_) | Msg::Pong(_) => {}
                        m => panic!("publisher {p} got {}", m.describe()),
                    }
                }
                let others: Vec<usize> = (0..PUBLISHERS).filter(|&q| q != p).collect();
                if let Err(e) = check_sequence(&got, &others) {
                    panic!("publisher {p}: {e}; got {got:?}");
                }
                c.assert_silent(Duration::from_millis(300)).await;
                c
            }));
        }
        let mut publisher_conns = Vec::new();
        for p in publishers {
            publisher_conns.push(p.await.expect("publisher task"));
        }

        let all: Vec<usize> = (0..PUBLISHERS).collect();
        let mut conns = Vec::new();
        let mut last_delivery = publish_start;
        for (i, r) in readers.into_iter().enumerate() {
            let (c, got, last) = r.await.expect("subscriber task");
            last_delivery = last_delivery.max(last);
            if let Err(e) = check_sequence(&got, &all) {
                panic!("subscriber {i} ({}): {e}; got {got:?}", locals[i]);
            }
            conns.push(c);
        }
        let delivered = last_delivery - publish_start;
        eprintln!(
            "broadcast: {SUBSCRIBERS} subscribers connected in {connected:?}; \
             the last of {} deliveries {delivered:?} after the first publish",
            SUBSCRIBERS * total
        );

        // The subscribers were spread over both workers: the access log says which.
        drop(conns);
        drop(publisher_conns);
        let mut per_worker: BTreeMap<u64, usize> = BTreeMap::new();
        for local in &locals {
            let line = log_of(&mut proxy, *local).await;
            assert_eq!(line["route"], "room", "{line}");
            let worker = line["worker"].as_u64().expect("worker field");
            *per_worker.entry(worker).or_default() += 1;
        }
        eprintln!("broadcast: subscribers per worker {per_worker:?}");
        assert_eq!(
            per_worker.len(),
            2,
            "subscribers on both workers: {per_worker:?}"
        );
    })
    .await;
}

/// Reads the next data message of a v1 client as JSON.
async fn next_json(c: &mut Client) -> Value {
    match c.read_data().await {
        Msg::Text(t) => serde_json::from_slice(&t)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&t))),
        m => panic!("expected a JSON text message, got {}", m.describe()),
    }
}

async fn send_json(c: &mut Client, v: Value) {
    c.send_text(&v.to_string()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_v1_envelopes_and_raw_clients_talk_on_one_channel() {
    within(60, async {
        let routes = function_route(
            "chat",
            "/ch/",
            "broadcast",
            &["echo_to_sender = false", "max_channels_per_client = 3"],
        );
        let proxy = start(2, &routes).await;
        // One source address: one worker, so presence counts are exact.
        let src = loopback(1);

        // The handshake echoes the offered subprotocol.
        let mut v1 = Client::new(tcp_from(src, proxy.addr, None).await);
        let head = v1.handshake("/ch/", Some("wsedge.v1")).await;
        assert_eq!(head.status(), 101, "{}", head.text());
        assert_eq!(head.get("sec-websocket-protocol"), Some("wsedge.v1"));

        let mut raw = Client::connect(src, proxy.addr, "/ch/lobby", None).await;
        let mut marker = Client::connect(src, proxy.addr, "/ch/lobby", None).await;

        send_json(&mut v1, json!({"type": "subscribe", "channel": "lobby"})).await;
        assert_eq!(
            next_json(&mut v1).await,
            json!({"type": "subscribed", "channel": "lobby", "subscribers": 3})
        );
        // Subscribing twice is fine: the same answer.
        send_json(&mut v1, json!({"type": "subscribe", "channel": "lobby"})).await;
        assert_eq!(
            next_json(&mut v1).await,
            json!({"type": "subscribed", "channel": "lobby", "subscribers": 3})
        );

        // v1 publish: raw subscribers receive the JSON text of `data` (a string as itself).
        send_json(
            &mut v1,
            json!({"type": "publish", "channel": "lobby", "data": {"user": "ada", "n": [1, 2]}}),
        )
        .await;
        let got: Value = serde_json::from_str(&raw.read_data().await.text()).expect("json");
        assert_eq!(got, json!({"user": "ada", "n": [1, 2]}));
        marker.read_data().await;
        send_json(
            &mut v1,
            json!({"type": "publish", "channel": "lobby", "data": "hi all"}),
        )
        .await;
        assert_eq!(raw.read_data().await.text(), "hi all");
        assert_eq!(marker.read_data().await.text(), "hi all");

        // Raw text and binary reach the v1 client as `data` and `data_base64`.
        raw.send_text("hello from raw").await;
        assert_eq!(
            next_json(&mut v1).await,
            json!({"type": "message", "channel": "lobby", "data": "hello from raw"})
        );
        raw.send_binary(&[0, 1, 2, 255]).await;
        assert_eq!(
            next_json(&mut v1).await,
            json!({"type": "message", "channel": "lobby", "data_base64": "AAEC/w=="})
        );
        assert_eq!(marker.read_data().await.text(), "hello from raw");
        assert_eq!(marker.read_data().await, Msg::Binary(vec![0, 1, 2, 255]));

        // Unsubscribe: no more messages from lobby.
        send_json(&mut v1, json!({"type": "unsubscribe", "channel": "lobby"})).await;
        assert_eq!(
            next_json(&mut v1).await,
            json!({"type": "unsubscribed", "channel": "lobby"})
        );
        raw.send_text("after unsubscribe").await;
        // The marker (same worker, same delivery) got it: v1 would have by now.
        assert_eq!(marker.read_data().await.text(), "after unsubscribe");

        // Errors keep the connection open.
        v1.send_text("not json").await;
        assert_eq!(next_json(&mut v1).await["error"], "bad_envelope");
        send_json(&mut v1, json!({"type": "subscribe", "channel": "bad name"})).await;
        assert_eq!(next_json(&mut v1).await["error"], "bad_channel");
        send_json(&mut v1, json!({"type": "dance"})).await;
        assert_eq!(next_json(&mut v1).await["error"], "unknown_type");

        // max_channels_per_client = 3.
        for (i, ch) in ["a", "b", "c"].iter().enumerate() {
            send_json(&mut v1, json!({"type": "subscribe", "channel": ch})).await;
            let reply = next_json(&mut v1).await;
            assert_eq!(reply["type"], "subscribed", "subscribe #{i}: {reply}");
            assert_eq!(reply["channel"], *ch);
        }
        send_json(&mut v1, json!({"type": "subscribe", "channel": "d"})).await;
        let reply = next_json(&mut v1).await;
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(reply["error"], "too_many_channels", "{reply}");
        // Leaving one frees a place.
        send_json(&mut v1, json!({"type": "unsubscribe", "channel": "a"})).await;
        assert_eq!(next_json(&mut v1).await["type"], "unsubscribed");
        send_json(&mut v1, json!({"type": "subscribe", "channel": "d"})).await;
        assert_eq!(next_json(&mut v1).await["type"], "subscribed");

        // A raw client on channel d publishes; the v1 client (subscribed to d) receives it,
        // and nothing from lobby was left queued before it.
        let mut raw_d = Client::connect(src, proxy.addr, "/ch/d", None).await;
        raw_d.send_text("on d").await;
        assert_eq!(
            next_json(&mut v1).await,
            json!({"type": "message", "channel": "d", "data": "on d"})
        );
        // A v1 client may publish to a channel it has not joined.
        send_json(
            &mut v1,
            json!({"type": "publish", "channel": "lobby", "data": "from outside"}),
        )
        .await;
        assert_eq!(raw.read_data().await.text(), "from outside");
        v1.assert_silent(Duration::from_millis(300)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_crosses_workers_for_v1_clients() {
    within(60, async {
        let routes = function_route("chat", "/ch/", "broadcast", &["echo_to_sender = true"]);
        let mut proxy = start(2, &routes).await;
        // v1 subscribers from many addresses (so both workers hold some), one publisher.
        let mut subs = Vec::new();
        for n in 2..=21u8 {
            let mut c = Client::new(tcp_from(loopback(n), proxy.addr, None).await);
            assert_eq!(c.handshake("/ch/", Some("wsedge.v1")).await.status(), 101);
            send_json(&mut c, json!({"type": "subscribe", "channel": "news"})).await;
            assert_eq!(next_json(&mut c).await["type"], "subscribed");
            subs.push(c);
        }
        // echo_to_sender = true: the publisher gets its own message.
        let mut publisher = Client::new(tcp_from(loopback(1), proxy.addr, None).await);
        assert_eq!(
            publisher
                .handshake("/ch/news", Some("wsedge.v1"))
                .await
                .status(),
            101
        );
        send_json(
            &mut publisher,
            json!({"type": "publish", "channel": "news", "data": {"k": "v"}}),
        )
        .await;
        let want = json!({"type": "message", "channel": "news", "data": {"k": "v"}});
        assert_eq!(next_json(&mut publisher).await, want);
        let mut locals = Vec::new();
        for c in &mut subs {
            assert_eq!(next_json(c).await, want);
            locals.push(c.stream.local_addr().expect("local"));
        }
        drop(subs);
        let mut workers = std::collections::BTreeSet::new();
        for l in locals {
            workers.insert(log_of(&mut proxy, l).await["worker"].as_u64());
        }
        assert_eq!(workers.len(), 2, "subscribers on both workers: {workers:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_without_client_publishing_closes_raw_publishers_with_1008() {
    within(60, async {
        let routes = function_route("feed", "/feed/", "broadcast", &["publish = false"]);
        let mut proxy = start(2, &routes).await;
        let mut listener = Client::connect(loopback(1), proxy.addr, "/feed/x", None).await;
        let mut raw = Client::connect(loopback(1), proxy.addr, "/feed/x", None).await;
        let local = raw.stream.local_addr().expect("local");
        raw.send_text("may I?").await;
        match raw.read_data().await {
            Msg::Close(code, _) => assert_eq!(code, Some(1008), "raw publish refused with 1008"),
            m => panic!("expected Close 1008, got {}", m.describe()),
        }
        assert!(raw.wait_eof(Duration::from_secs(5)).await, "TCP closed");
        listener.assert_silent(Duration::from_millis(300)).await;
        let line = log_of(&mut proxy, local).await;
        eprintln!("raw publisher refused: {line}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_without_client_publishing_answers_v1_with_publish_forbidden() {
    within(60, async {
        let routes = function_route("feed", "/feed/", "broadcast", &["publish = false"]);
        let proxy = start(2, &routes).await;
        let mut listener = Client::connect(loopback(1), proxy.addr, "/feed/x", None).await;
        let mut v1 = Client::new(tcp_from(loopback(1), proxy.addr, None).await);
        assert_eq!(
            v1.handshake("/feed/", Some("wsedge.v1")).await.status(),
            101
        );
        send_json(
            &mut v1,
            json!({"type": "publish", "channel": "x", "data": "may I?"}),
        )
        .await;
        let reply = next_json(&mut v1).await;
        assert_eq!(reply["type"], "error", "{reply}");
        // docs/functions.md: `error` is one of the listed codes, here `publish_forbidden`.
        assert_eq!(reply["error"], "publish_forbidden", "{reply}");
        assert_eq!(reply["channel"], "x", "{reply}");
        listener.assert_silent(Duration::from_millis(300)).await;
        // The connection stays open and usable.
        send_json(&mut v1, json!({"type": "subscribe", "channel": "x"})).await;
        assert_eq!(next_json(&mut v1).await["type"], "subscribed");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_enforces_max_subscribers() {
    within(60, async {
        let routes = function_route("small", "/ch/", "broadcast", &["max_subscribers = 2"]);
        let proxy = start(2, &routes).await;
        // One source address: one worker (the limit is exact within a worker).
        let src = loopback(1);
        let _a = Client::connect(src, proxy.addr, "/ch/full", None).await;
        let mut v1 = Client::new(tcp_from(src, proxy.addr, None).await);
        assert_eq!(v1.handshake("/ch/", Some("wsedge.v1")).await.status(), 101);
        send_json(&mut v1, json!({"type": "subscribe", "channel": "full"})).await;
        assert_eq!(
            next_json(&mut v1).await,
            json!({"type": "subscribed", "channel": "full", "subscribers": 2})
        );
        // A third subscriber in v1: refused with channel_full, the connection stays.
        let mut late = Client::new(tcp_from(src, proxy.addr, None).await);
        assert_eq!(
            late.handshake("/ch/", Some("wsedge.v1")).await.status(),
            101
        );
        send_json(&mut late, json!({"type": "subscribe", "channel": "full"})).await;
        assert_eq!(
            next_json(&mut late).await,
            json!({"type": "error", "error": "channel_full", "channel": "full"})
        );
        send_json(&mut late, json!({"type": "subscribe", "channel": "other"})).await;
        assert_eq!(next_json(&mut late).await["type"], "subscribed");
        // A third subscriber by path: docs/functions.md says 503 at the handshake.
        let mut c = Client::new(tcp_from(src, proxy.addr, None).await);
        let head = c.handshake("/ch/full", None).await;
        assert_eq!(
            head.status(),
            503,
            "a path subscription over max_subscribers is refused at the handshake: {}",
            head.text()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_refuses_a_bad_path_channel_with_404() {
    within(60, async {
        let routes = function_route("chat", "/ch/", "broadcast", &[]);
        let proxy = start(2, &routes).await;
        for path in [
            "/ch/a/b",
            "/ch/bad!name",
            &format!("/ch/{}", "x".repeat(129)),
        ] {
            let mut c = Client::new(tcp_from(loopback(1), proxy.addr, None).await);
            let head = c.handshake(path, None).await;
            // docs/functions.md: "A name that is not a channel name is refused at the
            // handshake with 404."
            assert_eq!(head.status(), 404, "{path}: {}", head.text());
        }
        // The longest valid name is accepted, and a query string is ignored.
        let ok = format!("/ch/{}?token=abc", "x".repeat(128));
        let _c = Client::connect(loopback(1), proxy.addr, &ok, None).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_cuts_off_a_slow_consumer_and_keeps_serving_the_others() {
    within(80, async {
        const MESSAGES: usize = 800;
        const SIZE: usize = 16 * 1024;
        let routes = function_route(
            "flood",
            "/ch/",
            "broadcast",
            &["echo_to_sender = false", "max_send_queue = 65536"],
        );
        let mut proxy = start(2, &routes).await;
        let addr = proxy.addr;

        // The slow one: a small receive buffer, and it never reads after the handshake.
        let mut slow = Client::new(tcp_from(loopback(3), addr, Some(4096)).await);
        assert_eq!(slow.handshake("/ch/flood", None).await.status(), 101);
        let slow_local = slow.stream.local_addr().expect("local");

        // A normal subscriber on the other worker or the same one (two addresses).
        let mut normals = Vec::new();
        for n in [4u8, 5] {
            normals.push(Client::connect(loopback(n), addr, "/ch/flood", None).await);
        }
        // Each normal subscriber's progress: the publisher keeps at most WINDOW messages
        // ahead of them, so they are never slow, while the one that does not read falls
        // behind without bound.
        let progress: Vec<Arc<AtomicUsize>> = (0..normals.len())
            .map(|_| Arc::new(AtomicUsize::new(0)))
            .collect();
        let readers: Vec<_> = normals
            .into_iter()
            .zip(progress.iter().cloned())
            .map(|(mut c, done)| {
                tokio::spawn(async move {
                    let mut count = 0usize;
                    while count < MESSAGES {
                        match c.read_msg_within(Duration::from_secs(30)).await {
                            Msg::Binary(b) => {
                                assert_eq!(b.len(), SIZE, "message size");
                                let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
                                assert_eq!(n, count, "messages in order, none lost");
                                count += 1;
                                done.store(count, Ordering::Release);
                            }
                            Msg::Ping(_) | Msg::Pong(_) => {}
                            m => panic!("normal subscriber got {}", m.describe()),
                        }
                    }
                    count
                })
            })
            .collect();

        let mut publisher = Client::connect(loopback(6), addr, "/ch/flood", None).await;
        let mut body = vec![0x5au8; SIZE];
        const WINDOW: usize = 2;
        for n in 0..MESSAGES {
            let paced = Instant::now();
            while progress
                .iter()
                .any(|p| p.load(Ordering::Acquire) + WINDOW < n)
            {
                assert!(
                    paced.elapsed() < Duration::from_secs(30),
                    "normal subscribers stuck before message {n}"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            body[..4].copy_from_slice(&(n as u32).to_be_bytes());
            publisher.send_binary(&body).await;
        }

        for r in readers {
            assert_eq!(r.await.expect("reader"), MESSAGES);
        }
        let line = log_of(&mut proxy, slow_local).await;
        assert_eq!(line["reason"], "slow_consumer", "{line}");
        let sent = line["bytes_to_client"].as_u64().unwrap_or(0);
        eprintln!(
            "slow consumer cut off after {sent} bytes to it ({} published)",
            MESSAGES * SIZE
        );
        assert!(
            (sent as usize) < MESSAGES * SIZE / 2,
            "the slow consumer was cut off early, not after most of the flood: {line}"
        );
        // What reached its socket before the cut: whole messages, then possibly a Close 1013.
        let mut seen_close = None;
        loop {
            match tokio::time::timeout(Duration::from_secs(2), slow.read_frame()).await {
                Ok(Ok(f)) if f.opcode == OP_CLOSE => {
                    seen_close = Some(u16::from_be_bytes([f.payload[0], f.payload[1]]));
                    break;
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => break,
            }
        }
        eprintln!("slow consumer: Close frame seen on its socket: {seen_close:?}");
        if let Some(code) = seen_close {
            assert_eq!(code, 1013, "a slow consumer's Close is 1013");
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// bridge
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_opens_the_edges_own_websocket_to_the_origin() {
    within(60, async {
        let origin = EchoOrigin::start().await;
        let url = format!("ws://{}/socket", origin.addr);
        let routes = function_route(
            "legacy",
            "/legacy",
            "bridge",
            &[&format!("bridge_url = {url:?}")],
        );
        let proxy = start(2, &routes).await;

        let request = ws_request(&proxy.ws_url("/legacy/chat?room=1"));
        let client_key = request
            .headers()
            .get("sec-websocket-key")
            .expect("client key")
            .to_str()
            .expect("ascii")
            .to_string();
        let tcp = tcp_from(loopback(7), proxy.addr, None).await;
        let (mut ws, resp) = client_async_with_config(request, tcp, Some(ws_config()))
            .await
            .expect("handshake through the bridge");
        assert_eq!(resp.status().as_u16(), 101);

        for n in [0, 125, 126, 65536, 1 << 20] {
            assert_echo(&mut ws, Message::text(text_payload(n))).await;
            assert_echo(&mut ws, Message::binary(binary_payload(n))).await;
        }

        let requests = origin.requests();
        assert_eq!(requests.len(), 1, "one handshake at the origin");
        let r = &requests[0];
        assert_eq!(r.path, "/socket", "the bridge_url path: {}", r.raw);
        let origin_key = r.get("sec-websocket-key").expect("origin key");
        assert_ne!(
            origin_key, client_key,
            "the edge's own key, not the client's: {}",
            r.raw
        );
        assert_eq!(r.get("x-forwarded-for"), Some("127.0.0.7"), "{}", r.raw);
        assert_eq!(
            r.get("host"),
            Some(origin.addr.to_string().as_str()),
            "{}",
            r.raw
        );
        ws.close(None).await.expect("close");
    })
    .await;
}
