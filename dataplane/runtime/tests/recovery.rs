//! Recovery of missed channel messages (issue 16 item 5, docs/broker.md "Recovery"): real
//! `wsedge` processes and a real `redis-server` started by the test. A `wsedge.v1` client of
//! a recoverable namespace's channel is told its position; reconnecting with
//! `?since=<offset>:<epoch>` it gets exactly what it missed, in order, then live messages,
//! each once (while publications go on during its reconnection); an offset no longer kept,
//! past the top, or of another epoch gets a clear `cannot_recover`; with the broker gone,
//! `unavailable`, and a new epoch once it is back; a channel outside the namespace behaves
//! as before.

mod broker_support;
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use broker_support::start_host;
use broker_support::{Kind, Server, control_tables, metric, next_json, next_json_within, publish};
use common::{Ws, within, ws_connect_req, ws_request};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// The `[[broker.recovery]]` table of namespace `chat`, keeping `size` messages.
fn recovery(size: u64) -> String {
    format!("\n[[broker.recovery]]\nnamespace = \"chat\"\nhistory_size = {size}\n")
}
const ROOM: &str = "chat:room";

/// A client of `path` (`/ch/…`), `wsedge.v1` or raw: the socket, or the refusal's status.
async fn connect(addr: SocketAddr, path: &str, v1: bool) -> Result<Ws, u16> {
    let mut request = ws_request(&format!("ws://{addr}{path}"));
    if v1 {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("wsedge.v1"),
        );
    }
    match ws_connect_req(addr, request).await {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("{path}: {e}"),
    }
}

/// A `wsedge.v1` client of `channel`, with `since` if given: the socket and the first
/// notice it got.
async fn recovering(addr: SocketAddr, channel: &str, since: Option<&str>) -> (Ws, Value) {
    let path = match since {
        Some(s) => format!("/ch/{channel}?since={s}"),
        None => format!("/ch/{channel}"),
    };
    let mut ws = connect(addr, &path, true).await.expect("handshake");
    let notice = next_json(&mut ws).await;
    (ws, notice)
}

/// A client of `channel` once the host's broker link is up (until then the answer is
/// `unavailable`): the socket and its `position` notice.
async fn positioned(addr: SocketAddr, channel: &str) -> (Ws, Value) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ws, notice) = recovering(addr, channel, None).await;
        if notice["type"] == "position" {
            return (ws, notice);
        }
        // Not up yet (`unavailable`), or coming up as the client subscribed: a channel live
        // when the link connects gets a `gap` first (docs/broker.md; CI saw it once).
        assert!(
            notice["reason"] == "unavailable" || notice["type"] == "gap",
            "{notice}"
        );
        assert!(Instant::now() < deadline, "the broker link never came up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The channel's last offset as Redis holds it.
fn top(server: &Server, channel: &str) -> u64 {
    let key = format!("wsedge:history-meta:{channel}");
    server
        .redis_cli(&["HGET", &key, "offset"])
        .parse()
        .unwrap_or(0)
}

/// Waits until Redis holds `want` as the channel's last offset.
async fn wait_top(server: &Server, channel: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while top(server, channel) != want {
        assert!(
            Instant::now() < deadline,
            "the offset of {channel} never reached {want}: {}",
            top(server, channel)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `wsedge_broker_recoveries_total{outcome="…"}` on metrics port `port`.
fn recoveries(port: u16, outcome: &str) -> u64 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let name = format!("wsedge_broker_recoveries_total{{outcome=\"{outcome}\"}} ");
    out.lines()
        .find_map(|l| l.strip_prefix(&name))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
}

/// A message's offset and text, checking it is a positioned message of `epoch`.
fn message(v: &Value, epoch: &str) -> (u64, String) {
    assert_eq!(v["type"], "message", "{v}");
    assert_eq!(v["epoch"], epoch, "{v}");
    let offset = v["offset"].as_u64().unwrap_or_else(|| panic!("{v}"));
    (offset, v["data"].as_str().unwrap_or_default().to_owned())
}

/// Two hosts: the subscriber on one, publications through the other. The client reads a
/// few messages, leaves, misses five, and reconnects with `since` while fifty more are
/// published: it gets the five, then the fifty, each once, in offset order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_recovers_exactly_the_missed_messages_then_live_ones() {
    within(120, async {
        let server = Server::start(Kind::Redis);
        let (socket, metrics, control) = control_tables("recovered");
        let a = start_host(&server, "host-a", &format!("{}{control}", recovery(100))).await;
        let b = start_host(&server, "host-b", &recovery(100)).await;
        let (mut ws, notice) = positioned(a.proxy.addr, ROOM).await;
        assert_eq!(notice["channel"], ROOM, "{notice}");
        let epoch = notice["epoch"].as_str().expect("epoch").to_owned();
        let mut last = notice["offset"].as_u64().expect("offset");
        // Until host b's link is up its publications stay on b (nobody there): publish
        // until one arrives, then the ones after it follow in order.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            publish(b.publish, ROOM, "warm");
            if let Some(v) = next_json_within(&mut ws, 1).await {
                let (offset, _) = message(&v, &epoch);
                assert!(offset > last, "{v} after {last}");
                last = offset;
                break;
            }
            assert!(Instant::now() < deadline, "host b's link never came up");
        }
        while let Some(v) = next_json_within(&mut ws, 1).await {
            last = message(&v, &epoch).0;
        }
        for i in 1..=3 {
            publish(b.publish, ROOM, &format!("m{i}"));
        }
        for i in 1..=3 {
            let v = next_json(&mut ws).await;
            assert_eq!(message(&v, &epoch), (last + i, format!("m{i}")));
        }
        let seen = last + 3;
        drop(ws);
        // Missed while away.
        for i in 4..=8 {
            publish(b.publish, ROOM, &format!("m{i}"));
        }
        wait_top(&server, ROOM, seen + 5).await;
        // Fifty more while the client reconnects.
        let port = b.publish;
        let publisher = std::thread::spawn(move || {
            for i in 9..=58 {
                publish(port, ROOM, &format!("m{i}"));
            }
        });
        let since = format!("{seen}:{epoch}");
        let (mut ws, notice) = recovering(a.proxy.addr, ROOM, Some(&since)).await;
        assert_eq!(notice["type"], "recovered", "{notice}");
        assert_eq!(notice["epoch"], epoch.as_str(), "{notice}");
        let missed = notice["missed"].as_u64().expect("missed");
        assert!(missed >= 5, "{notice}");
        assert_eq!(notice["offset"], seen + missed, "{notice}");
        for i in 4..=58 {
            let v = next_json(&mut ws).await;
            assert_eq!(
                message(&v, &epoch),
                (seen + i - 3, format!("m{i}")),
                "after {missed} recovered"
            );
        }
        publisher.join().expect("publisher");
        assert_eq!(
            next_json_within(&mut ws, 1).await,
            None,
            "nothing twice, nothing more"
        );
        assert_eq!(recoveries(metrics, "recovered"), 1);
        assert!(recoveries(metrics, "position") >= 1);
        // The stream keeps what a client may recover (MAXLEN ~ 100: at least 100).
        let len: u64 = server
            .redis_cli(&["XLEN", &format!("wsedge:history:{ROOM}")])
            .parse()
            .expect("XLEN");
        assert_eq!(len, seen + 55, "all of them, fewer than 100");
        let _ = std::fs::remove_file(&socket);
    })
    .await;
}

/// Another epoch, an offset no longer kept, one past the top, a history that was lost: a
/// `cannot_recover` notice with its reason and the position to continue from, then live
/// messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_be_recovered_is_said_clearly() {
    within(120, async {
        let server = Server::start(Kind::Redis);
        let (socket, metrics, control) = control_tables("cannot");
        let a = start_host(&server, "host-a", &format!("{}{control}", recovery(5))).await;
        let (mut ws, notice) = positioned(a.proxy.addr, ROOM).await;
        let epoch = notice["epoch"].as_str().expect("epoch").to_owned();
        assert_eq!(notice["offset"], 0, "a new history: {notice}");
        for i in 1..=3 {
            publish(a.publish, ROOM, &format!("m{i}"));
        }
        for i in 1..=3 {
            assert_eq!(
                message(&next_json(&mut ws).await, &epoch),
                (i, format!("m{i}"))
            );
        }
        drop(ws);

        // Another epoch.
        let (mut ws, notice) = recovering(a.proxy.addr, ROOM, Some("3:not-this-one")).await;
        assert_eq!(
            notice,
            json!({"type": "cannot_recover", "channel": ROOM, "reason": "epoch",
                   "offset": 3, "epoch": epoch})
        );
        publish(a.publish, ROOM, "live");
        assert_eq!(
            message(&next_json(&mut ws).await, &epoch),
            (4, "live".into())
        );
        drop(ws);

        // Ten missed, five kept.
        for i in 5..=14 {
            publish(a.publish, ROOM, &format!("m{i}"));
        }
        wait_top(&server, ROOM, 14).await;
        let (ws, notice) = recovering(a.proxy.addr, ROOM, Some(&format!("4:{epoch}"))).await;
        assert_eq!(
            notice,
            json!({"type": "cannot_recover", "channel": ROOM, "reason": "trimmed",
                   "offset": 14, "epoch": epoch})
        );
        drop(ws);
        // Five missed: recovered (`%3A` for `:`, as URLSearchParams writes it).
        let (mut ws, notice) = recovering(a.proxy.addr, ROOM, Some(&format!("9%3A{epoch}"))).await;
        assert_eq!(notice["type"], "recovered", "{notice}");
        assert_eq!(notice["missed"], 5, "{notice}");
        for i in 10..=14 {
            assert_eq!(
                message(&next_json(&mut ws).await, &epoch),
                (i, format!("m{i}"))
            );
        }
        drop(ws);
        // Past the top.
        let (ws, notice) = recovering(a.proxy.addr, ROOM, Some(&format!("99:{epoch}"))).await;
        assert_eq!(notice["reason"], "trimmed", "{notice}");
        drop(ws);

        // The history is lost (its meta expired or was deleted): a new epoch, from 0.
        server.redis_cli(&["DEL", &format!("wsedge:history-meta:{ROOM}")]);
        let (mut ws, notice) = recovering(a.proxy.addr, ROOM, Some(&format!("14:{epoch}"))).await;
        assert_eq!(notice["type"], "cannot_recover", "{notice}");
        assert_eq!(notice["reason"], "epoch", "{notice}");
        assert_eq!(notice["offset"], 0, "{notice}");
        let new_epoch = notice["epoch"].as_str().expect("epoch").to_owned();
        assert_ne!(new_epoch, epoch);
        publish(a.publish, ROOM, "anew");
        assert_eq!(
            message(&next_json(&mut ws).await, &new_epoch),
            (1, "anew".into())
        );
        assert_eq!(
            server.redis_cli(&["XLEN", &format!("wsedge:history:{ROOM}")]),
            "1",
            "the old history's stream was dropped"
        );
        assert_eq!(recoveries(metrics, "epoch"), 2);
        assert_eq!(recoveries(metrics, "trimmed"), 2);
        assert_eq!(recoveries(metrics, "recovered"), 1);
        let _ = std::fs::remove_file(&socket);
    })
    .await;
}

/// The broker goes away (a Redis with no persistence: its histories go with it). A client
/// that connects meanwhile is told `unavailable` and gets this host's messages (with no
/// position); when the broker is back it gets a `gap`, and a client reconnecting with its
/// old position is told `cannot_recover` (`epoch`) with the new history's position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_went_away_is_unavailable_then_a_new_epoch() {
    within(120, async {
        let mut server = Server::start(Kind::Redis);
        let (socket, metrics, control) = control_tables("lost");
        let a = start_host(&server, "host-a", &format!("{}{control}", recovery(5))).await;
        let (mut ws, notice) = positioned(a.proxy.addr, ROOM).await;
        let epoch = notice["epoch"].as_str().expect("epoch").to_owned();
        publish(a.publish, ROOM, "m1");
        assert_eq!(message(&next_json(&mut ws).await, &epoch), (1, "m1".into()));
        drop(ws);
        server.kill();
        let deadline = Instant::now() + Duration::from_secs(20);
        while metric(metrics, "wsedge_broker_up") != Some(0.0) {
            assert!(Instant::now() < deadline, "the link never went down");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let since = format!("1:{epoch}");
        let (mut ws, notice) = recovering(a.proxy.addr, ROOM, Some(&since)).await;
        assert_eq!(
            notice,
            json!({"type": "cannot_recover", "channel": ROOM, "reason": "unavailable"})
        );
        publish(a.publish, ROOM, "local");
        assert_eq!(
            next_json(&mut ws).await,
            json!({"type": "message", "channel": ROOM, "data": "local"}),
            "delivered on this host, with no position"
        );
        server.up();
        assert_eq!(
            next_json(&mut ws).await,
            json!({"type": "gap", "channel": ROOM})
        );
        drop(ws);
        let deadline = Instant::now() + Duration::from_secs(20);
        let notice = loop {
            let (_ws, notice) = recovering(a.proxy.addr, ROOM, Some(&since)).await;
            if notice["reason"] != "unavailable" {
                break notice;
            }
            assert!(Instant::now() < deadline, "the link never came back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(notice["type"], "cannot_recover", "{notice}");
        assert_eq!(notice["reason"], "epoch", "{notice}");
        assert_eq!(notice["offset"], 0, "{notice}");
        assert_ne!(notice["epoch"], epoch.as_str(), "{notice}");
        assert!(recoveries(metrics, "unavailable") >= 1);
        // The restarted Redis had no scripts: the read above and this publication were
        // refused `NOSCRIPT`, loaded and run again (EVALSHA, never the script's text with
        // each call), and the publication is in the new history.
        let new_epoch = notice["epoch"].as_str().expect("epoch").to_owned();
        publish(a.publish, ROOM, "m2");
        wait_top(&server, ROOM, 1).await;
        let (mut ws, notice) =
            recovering(a.proxy.addr, ROOM, Some(&format!("0:{new_epoch}"))).await;
        assert_eq!(notice["type"], "recovered", "{notice}");
        assert_eq!(
            message(&next_json(&mut ws).await, &new_epoch),
            (1, "m2".into())
        );
        let errors = server.redis_cli(&["INFO", "errorstats"]);
        let noscript = errors
            .lines()
            .find_map(|l| l.strip_prefix("errorstat_NOSCRIPT:count="))
            .and_then(|n| n.trim().parse::<u64>().ok());
        eprintln!("after the restart: {noscript:?} NOSCRIPT answers");
        assert!(noscript >= Some(2), "NOSCRIPT fallbacks: {errors}");
        let commands = server.redis_cli(&["INFO", "commandstats"]);
        assert!(commands.contains("cmdstat_evalsha:"), "{commands}");
        assert!(!commands.contains("cmdstat_eval:"), "EVAL sent: {commands}");
        let _ = std::fs::remove_file(&socket);
    })
    .await;
}

/// Outside the recoverable namespace nothing changes: no notice, no positions, nothing in
/// Redis but pub/sub; a `since` there (or from a raw client, or malformed) is refused with
/// 400 at the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_outside_the_namespace_behaves_as_before() {
    within(90, async {
        let server = Server::start(Kind::Redis);
        let a = start_host(&server, "host-a", &recovery(5)).await;
        // Wait for the link (a recoverable channel's position says it is up).
        let (_chat, _) = positioned(a.proxy.addr, ROOM).await;
        let mut ws = connect(a.proxy.addr, "/ch/news", true).await.expect("news");
        // Its subscription may be pending a moment: publish until one arrives.
        let deadline = Instant::now() + Duration::from_secs(20);
        let first = loop {
            publish(a.publish, "news", "plain");
            if let Some(v) = next_json_within(&mut ws, 1).await {
                break v;
            }
            assert!(Instant::now() < deadline, "nothing arrived on news");
        };
        assert_eq!(
            first,
            json!({"type": "message", "channel": "news", "data": "plain"}),
            "no notice, no position"
        );
        assert_eq!(server.redis_cli(&["EXISTS", "wsedge:history:news"]), "0");
        assert_eq!(
            server.redis_cli(&["EXISTS", "wsedge:history-meta:news"]),
            "0"
        );
        for (path, v1) in [
            ("/ch/news?since=1:abc", true),
            (&*format!("/ch/{ROOM}?since=1:abc"), false),
            (&*format!("/ch/{ROOM}?since=1"), true),
            (&*format!("/ch/{ROOM}?since=x:abc"), true),
            ("/ch/?since=1:abc", true),
        ] {
            assert_eq!(
                connect(a.proxy.addr, path, v1).await.err(),
                Some(400),
                "{path}"
            );
        }
    })
    .await;
}
