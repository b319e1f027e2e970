//! Broadcast channels across hosts (issue 16, docs/broker.md): several `wsedge` processes
//! ("hosts") sharing a real `redis-server` or `nats-server` started by the test. A publish on
//! one host reaches the subscribers of every host, in one order; each host holds one broker
//! subscription per channel; presence sums the hosts; a broker absent at start or restarted
//! mid-stream is survived (local-only meanwhile, then resubscribed with a `gap` notice).

mod broker_support;
mod common;
mod js_support;
mod tls_support;

use std::time::Duration;

use broker_support::{
    Kind, Server, channel_crosses, control_tables, metric, next_data, next_json, next_json_within,
    presence, publish, send_json, start_host, start_sharded_host, subscriber, sync, v1_client,
    wait_link_down, wait_link_up, wait_presence, wsedgectl,
};
use common::within;
use serde_json::json;

const CHANNEL: &str = "news";

/// Three hosts, two subscribers on each, a `wsedge.v1` publisher on the first: every
/// subscriber gets every message, in the publisher's order (those of the publisher's host
/// too: it gets its own publications back through the broker like the others).
async fn fan_out_in_order(kind: Kind) {
    let server = Server::start(kind);
    let hosts = [
        start_host(&server, "host-a", "").await,
        start_host(&server, "host-b", "").await,
        start_host(&server, "host-c", "").await,
    ];
    let mut subs = Vec::new();
    for h in &hosts {
        for _ in 0..2 {
            subs.push(subscriber(h.proxy.addr, CHANNEL).await);
        }
    }
    // The publisher is a subscriber too: with echo_to_sender = false (the default) it does
    // not get its own messages back through the broker; its host's other subscribers do.
    let mut publisher = subscriber(hosts[0].proxy.addr, CHANNEL).await;
    let ports: Vec<u16> = hosts.iter().map(|h| h.publish).collect();
    sync(&ports, CHANNEL, &mut subs).await;
    const N: usize = 200;
    for i in 0..N {
        send_json(
            &mut publisher,
            json!({"type": "publish", "channel": CHANNEL, "data": i}),
        )
        .await;
    }
    for (s, ws) in subs.iter_mut().enumerate() {
        for i in 0..N {
            let v = next_data(ws).await;
            assert_eq!(v["type"], "message", "subscriber {s}: {v}");
            assert_eq!(
                v["data"],
                i,
                "subscriber {s} (host {}): out of order",
                s / 2
            );
        }
    }
    while let Some(v) = next_json_within(&mut publisher, 1).await {
        assert!(
            !v["data"].is_number(),
            "the publisher got its own message: {v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_publish_on_one_host_reaches_every_host_in_order() {
    within(90, fan_out_in_order(Kind::Redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_publish_on_one_host_reaches_every_host_in_order() {
    within(90, fan_out_in_order(Kind::Nats)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_broker_subscription_per_host_per_channel() {
    within(90, async {
        let server = Server::start(Kind::Redis);
        let a = start_host(&server, "host-a", "").await;
        let b = start_host(&server, "host-b", "").await;
        let mut subs = Vec::new();
        for h in [&a, &b] {
            for _ in 0..6 {
                subs.push(subscriber(h.proxy.addr, CHANNEL).await);
            }
        }
        sync(&[a.publish, b.publish], CHANNEL, &mut subs).await;
        let numsub = server.redis_cli(&["PUBSUB", "NUMSUB", "wsedge:news"]);
        assert_eq!(
            numsub.lines().nth(1),
            Some("2"),
            "12 subscribers on 2 hosts (2 workers each): one Redis subscription per host: {numsub}"
        );
        // The last subscriber of a host leaves: that host unsubscribes.
        subs.truncate(6);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let n = server.redis_cli(&["PUBSUB", "NUMSUB", "wsedge:news"]);
            if n.lines().nth(1) == Some("1") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "host-b kept its subscription: {n}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// Three hosts with 1, 2 and 3 subscribers: every host reports each host's count and the
/// total; when a host's subscribers leave, the fleet's count follows.
async fn presence_per_host(kind: Kind) {
    {
        let server = Server::start(kind);
        let a = start_host(&server, "host-a", "").await;
        let b = start_host(&server, "host-b", "").await;
        let c = start_host(&server, "host-c", "").await;
        let mut subs = Vec::new();
        for (h, n) in [(&a, 1), (&b, 2), (&c, 3)] {
            for _ in 0..n {
                subs.push(subscriber(h.proxy.addr, CHANNEL).await);
            }
        }
        let body = wait_presence(b.publish, CHANNEL, 6).await;
        assert_eq!(
            body["hosts"],
            json!({"host-a": 1, "host-b": 2, "host-c": 3}),
            "{body}"
        );
        // Host c's subscribers leave: the fleet's count follows.
        subs.truncate(3);
        let body = wait_presence(a.publish, CHANNEL, 3).await;
        assert_eq!(body["hosts"], json!({"host-a": 1, "host-b": 2}), "{body}");
        assert_eq!(presence(c.publish, "nobody")["subscribers"], 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_presence_reports_each_host_and_the_total() {
    within(90, presence_per_host(Kind::Redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_presence_reports_each_host_and_the_total() {
    within(90, presence_per_host(Kind::Nats)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_at_start_serves_local_only_then_joins() {
    within(90, async {
        let mut server = Server::absent(Kind::Redis);
        let a = start_host(&server, "host-a", "").await;
        let b = start_host(&server, "host-b", "").await;
        // Local-only: a publish on a reaches a's subscriber, not b's.
        let mut sub_a = subscriber(a.proxy.addr, CHANNEL).await;
        let mut sub_b = subscriber(b.proxy.addr, CHANNEL).await;
        publish(a.publish, CHANNEL, "local");
        assert_eq!(next_json(&mut sub_a).await["data"], "local");
        assert!(
            next_json_within(&mut sub_b, 1).await.is_none(),
            "no broker: nothing crosses hosts"
        );
        // The broker appears: both hosts connect (their subscribers get a gap: other hosts'
        // messages may have been missed), and messages cross.
        server.up();
        for ws in [&mut sub_a, &mut sub_b] {
            let v = next_json(ws).await;
            assert_eq!(v, json!({"type": "gap", "channel": CHANNEL}));
        }
        let mut subs = [sub_a, sub_b];
        sync(&[a.publish, b.publish], CHANNEL, &mut subs).await;
        publish(a.publish, CHANNEL, "shared");
        for ws in &mut subs {
            assert_eq!(next_data(ws).await["data"], "shared");
        }
    })
    .await;
}

/// The broker killed and started again on its port: each host resubscribes, its
/// subscribers get a `gap`, and messages cross again.
async fn restart_mid_stream(kind: Kind) {
    {
        let mut server = Server::start(kind);
        let a = start_host(&server, "host-a", "").await;
        let b = start_host(&server, "host-b", "").await;
        let mut subs = [
            subscriber(a.proxy.addr, CHANNEL).await,
            subscriber(b.proxy.addr, CHANNEL).await,
        ];
        sync(&[a.publish, b.publish], CHANNEL, &mut subs).await;
        publish(a.publish, CHANNEL, "before");
        for ws in &mut subs {
            assert_eq!(next_data(ws).await["data"], "before");
        }
        server.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.up();
        // Each host resubscribes and tells its subscribers of the gap.
        for ws in &mut subs {
            let v = next_data(ws).await;
            assert_eq!(v, json!({"type": "gap", "channel": CHANNEL}));
        }
        sync(&[a.publish, b.publish], CHANNEL, &mut subs).await;
        publish(a.publish, CHANNEL, "after");
        for ws in &mut subs {
            assert_eq!(next_data(ws).await["data"], "after");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_stream_resubscribes_and_sends_a_gap() {
    within(90, restart_mid_stream(Kind::Redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_mid_stream_resubscribes_and_sends_a_gap() {
    within(90, restart_mid_stream(Kind::Nats)).await;
}

/// TLS to the broker (`rediss://`, NATS `tls://`; `tls_ca`): channels cross between two
/// hosts; a host that does not trust the server's CA (the system's store) does not
/// connect: local-only, retrying.
async fn over_tls(kind: Kind) {
    let pki = tls_support::Pki::new("broker");
    let leaf = pki.leaf("server", &["127.0.0.1"], tls_support::KeyKind::Ecdsa);
    let server = Server::start_tls(kind, &leaf.cert, &leaf.key, &pki.ca_path);
    let scheme = match kind {
        Kind::Redis => "rediss://",
        Kind::Nats => "tls://",
    };
    assert!(server.url().starts_with(scheme), "{}", server.url());
    let ca = format!("tls_ca = {:?}\n", pki.ca_path.display().to_string());
    let a = start_host(&server, "host-a", &ca).await;
    let b = start_host(&server, "host-b", &ca).await;
    // Each host's messages reach the other's subscriber: both links are up over TLS.
    channel_crosses(&a, &b, CHANNEL, "over TLS").await;
    // Without tls_ca the server's certificate is checked against the system's CAs:
    // refused, the host stays local-only and keeps retrying.
    let (socket, metrics, control) = control_tables("tls");
    let _c = start_host(&server, "host-c", &control).await;
    wait_link_down(metrics, 2.0, "the untrusted host").await;
    let _ = std::fs::remove_file(&socket);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_carries_channels_and_an_untrusted_server_is_refused() {
    within(90, over_tls(Kind::Redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_over_tls_carries_channels_and_an_untrusted_server_is_refused() {
    within(90, over_tls(Kind::Nats)).await;
}

/// A JavaScript function whose sockets subscribe to a topic and forward a `gap` event to
/// their client as a text message.
const GAP_JS: &str = r#"
export default {
  fetch(request) {
    const { socket, response } = upgradeWebSocket(request);
    socket.onopen = () => { socket.subscribe("news"); socket.send("joined"); };
    socket.addEventListener("gap", (e) => socket.send(`gap:${e.type}:${e.topic}`));
    return response;
  },
};
"#;

/// The next text on a JavaScript function's socket that is not a `sync` (`None`: nothing
/// for `secs`).
async fn next_js_text(ws: &mut common::Ws, secs: u64) -> Option<String> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(secs), ws.next()).await;
        match next.ok()? {
            Some(Ok(Message::Text(t))) if t.starts_with("sync") => continue,
            Some(Ok(Message::Text(t))) => return Some(t.to_string()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Publishes `sync` through `port` until `ws` gets one: its host's broker subscription
/// carries messages again (a message other than a `sync` on the way is returned).
async fn js_sync(port: u16, ws: &mut common::Ws) -> Vec<String> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut others = Vec::new();
    loop {
        publish(port, CHANNEL, "sync");
        while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(1), ws.next()).await {
            match m {
                Message::Text(t) if t == "sync" => return others,
                Message::Text(t) => others.push(t.to_string()),
                _ => {}
            }
        }
        assert!(std::time::Instant::now() < deadline, "no sync came back");
    }
}

/// Redis restarted mid-stream: each socket of a JavaScript function subscribed to the topic
/// gets one `gap` event (its handler's message reaches the client), then messages again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_function_gets_one_gap_event_per_socket_when_redis_restarts() {
    within(90, async {
        let mut server = Server::start(Kind::Redis);
        let scripts = js_support::Scripts::new("gap");
        let path = scripts.write("gap.js", GAP_JS);
        let route = js_support::js_route("fn", "/fn/", &path, &[]);
        let (_socket, metrics, control) = control_tables("gap");
        let a = start_host(&server, "host-a", &format!("{control}\n{route}")).await;
        // Sockets that subscribe before the link is up get a gap when it comes up (they may
        // have missed messages): this test wants the restart's gap alone.
        wait_link_up(metrics).await;
        let mut socks = Vec::new();
        for _ in 0..4 {
            let mut ws = common::ws_connect(a.proxy.addr, "/fn/").await;
            assert_eq!(next_js_text(&mut ws, 10).await.as_deref(), Some("joined"));
            socks.push(ws);
        }
        for ws in &mut socks {
            let before = js_sync(a.publish, ws).await;
            assert!(before.is_empty(), "before the restart: {before:?}");
        }
        server.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.up();
        for ws in &mut socks {
            let got = next_js_text(ws, 20).await;
            assert_eq!(got.as_deref(), Some("gap:gap:news"));
        }
        // Messages cross again, and the gap was told once per socket.
        for ws in &mut socks {
            let on_the_way = js_sync(a.publish, ws).await;
            assert!(on_the_way.is_empty(), "a second gap event? {on_the_way:?}");
        }
        publish(a.publish, CHANNEL, "after");
        for ws in &mut socks {
            assert_eq!(next_js_text(ws, 10).await.as_deref(), Some("after"));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wsedgectl_presence_and_broker_metrics() {
    within(90, async {
        let server = Server::start(Kind::Redis);
        let (socket, metrics, control) = control_tables("ctl");
        let a = start_host(&server, "host-a", &control).await;
        let b = start_host(&server, "host-b", "").await;
        let _subs = [
            subscriber(a.proxy.addr, CHANNEL).await,
            subscriber(b.proxy.addr, CHANNEL).await,
            subscriber(b.proxy.addr, CHANNEL).await,
        ];
        wait_presence(a.publish, CHANNEL, 3).await;
        let out = wsedgectl(&socket, &["presence", CHANNEL]);
        assert_eq!(
            out, "news: 3 subscribers\n  host-a: 1\n  host-b: 2\n",
            "{out}"
        );
        let json = wsedgectl(&socket, &["--json", "presence", CHANNEL]);
        let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        assert_eq!(
            v["hosts"][1],
            json!({"host": "host-b", "subscribers": 2}),
            "{v}"
        );
        // Metrics: the link is up; b's publications reach a (publishes in), a's go out.
        assert_eq!(metric(metrics, "wsedge_broker_up"), Some(1.0));
        publish(b.publish, CHANNEL, "x");
        publish(a.publish, CHANNEL, "y");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while metric(metrics, "wsedge_broker_publishes_in_total") < Some(2.0) {
            assert!(
                std::time::Instant::now() < deadline,
                "publishes_in stays below 2"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(metric(metrics, "wsedge_broker_publishes_out_total") >= Some(1.0));
        assert!(metric(metrics, "wsedge_broker_deliveries_total") >= Some(2.0));
        assert_eq!(metric(metrics, "wsedge_broker_channels"), Some(1.0));
        // Both records were timed: the lag histogram counts them, well under a second here.
        let lag_count = metric(metrics, "wsedge_broker_lag_seconds_count").expect("lag");
        let lag_sum = metric(metrics, "wsedge_broker_lag_seconds_sum").expect("lag sum");
        assert!(lag_count >= 2.0, "{lag_count}");
        assert!(
            lag_sum / lag_count < 1.0,
            "mean lag {}",
            lag_sum / lag_count
        );
        let _ = std::fs::remove_file(&socket);
    })
    .await;
}

/// A worker whose queue from the bridge is full loses messages, never the bridge's time:
/// drops are counted, and its subscribers get a `gap` before the next message they get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_worker_queue_drops_counts_and_sends_a_gap() {
    within(90, async {
        let server = Server::start(Kind::Redis);
        let (socket, metrics, control) = control_tables("slow");
        let a = start_host(&server, "host-a", "").await;
        let b = start_host(&server, "host-b", &format!("worker_queue = 1\n{control}")).await;
        let mut subs = [subscriber(b.proxy.addr, CHANNEL).await];
        sync(&[a.publish, b.publish], CHANNEL, &mut subs).await;
        let mut publisher = v1_client(a.proxy.addr).await;
        const N: u64 = 3000;
        for i in 0..N {
            send_json(
                &mut publisher,
                json!({"type": "publish", "channel": CHANNEL, "data": i}),
            )
            .await;
        }
        // What arrives: increasing numbers, a gap before the first one after a loss.
        let (mut last, mut got, mut gaps) = (None::<u64>, 0u64, 0u64);
        let mut gap_pending = false;
        loop {
            // The end marker may be dropped too: sent again until it arrives.
            let Some(v) = next_json_within(&mut subs[0], 1).await else {
                publish(a.publish, CHANNEL, "end");
                continue;
            };
            if v["type"] == "gap" {
                gaps += 1;
                gap_pending = true;
                continue;
            }
            if v["data"] == "end" {
                break;
            }
            if v["data"].as_str().is_some_and(|d| d.starts_with("sync")) {
                continue;
            }
            let i = v["data"].as_u64().expect("number");
            if let Some(l) = last {
                assert!(i > l, "out of order: {i} after {l}");
                assert!(
                    i == l + 1 || gap_pending,
                    "{l} -> {i} lost messages without a gap"
                );
            }
            gap_pending = false;
            last = Some(i);
            got += 1;
        }
        let drops = metric(metrics, "wsedge_broker_drops_total").expect("drops metric");
        eprintln!("slow worker: {got} of {N} delivered, {drops} dropped, {gaps} gap notices");
        assert!(drops >= 1.0, "a queue of 1 under a burst of {N} must drop");
        assert!(gaps >= 1, "drops were not announced");
        assert_eq!(
            got + drops as u64,
            N,
            "every message delivered or counted as dropped"
        );
        let _ = std::fs::remove_file(&socket);
    })
    .await;
}

/// Past `max_channels`, a host holds no broker subscription for a new channel (counted):
/// its subscribers get that host's publications only; its publications still go out. The
/// channels within the bound keep crossing hosts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_channels_is_bounded_and_counted() {
    within(90, async {
        let server = Server::start(Kind::Redis);
        let (socket, metrics, control) = control_tables("flood");
        let a = start_host(&server, "host-a", &format!("max_channels = 2\n{control}")).await;
        let b = start_host(&server, "host-b", "").await;
        let mut held = Vec::new();
        for ch in ["c1", "c2"] {
            held.push(subscriber(a.proxy.addr, ch).await);
        }
        let mut over = subscriber(a.proxy.addr, "c3").await;
        let remote_over = subscriber(b.proxy.addr, "c3").await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while metric(metrics, "wsedge_broker_channels_refused_total") < Some(1.0) {
            assert!(std::time::Instant::now() < deadline, "no refusal counted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(metric(metrics, "wsedge_broker_channels"), Some(2.0));
        // c3 on host a: local publications still reach a's subscriber (and b's), b's do
        // not reach a.
        let mut remote = [remote_over];
        sync(&[a.publish], "c3", &mut remote).await;
        publish(a.publish, "c3", "from-a");
        assert_eq!(next_data(&mut over).await["data"], "from-a");
        assert_eq!(next_data(&mut remote[0]).await["data"], "from-a");
        publish(b.publish, "c3", "from-b");
        assert_eq!(next_data(&mut remote[0]).await["data"], "from-b");
        while let Some(v) = next_json_within(&mut over, 1).await {
            assert_ne!(v["data"], "from-b", "host a holds no subscription for c3");
        }
        // c1 still crosses hosts.
        let mut c1 = [held.remove(0)];
        sync(&[b.publish], "c1", &mut c1).await;
        let _ = std::fs::remove_file(&socket);
    })
    .await;
}

/// A broker that requires credentials: hosts with the right ones share channels; a host
/// with a wrong password stays local-only (its link down, as its metrics say).
async fn credentials(kind: Kind) {
    let server = Server::start_with_auth(kind, "edge", "s3cret");
    // Redis's `requirepass` is the password of its `default` user.
    let user = match kind {
        Kind::Redis => "default",
        Kind::Nats => "edge",
    };
    let good = format!("username = \"{user}\"\npassword = \"s3cret\"\n");
    let a = start_host(&server, "host-a", &good).await;
    let b = start_host(&server, "host-b", &good).await;
    let (socket, metrics, control) = control_tables("auth");
    let c = start_host(
        &server,
        "host-c",
        &format!("username = \"{user}\"\npassword = \"wrong\"\n{control}"),
    )
    .await;
    channel_crosses(&a, &b, CHANNEL, "authed").await;
    wait_link_down(metrics, 1.0, "host c logging in").await;
    // Host c serves its own subscribers still.
    let mut local = subscriber(c.proxy.addr, CHANNEL).await;
    publish(c.publish, CHANNEL, "local");
    assert_eq!(next_json(&mut local).await["data"], "local");
    let _ = std::fs::remove_file(&socket);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_credentials_are_used_and_a_wrong_password_is_local_only() {
    within(90, credentials(Kind::Redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_credentials_are_used_and_a_wrong_password_is_local_only() {
    within(90, credentials(Kind::Nats)).await;
}

/// Two Redis servers, one shard each: channels spread over both (by their hash, the same
/// on every host), and every one crosses hosts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_are_sharded_over_two_servers() {
    within(90, async {
        let r1 = Server::start(Kind::Redis);
        let r2 = Server::start(Kind::Redis);
        let a = start_sharded_host(&[&r1, &r2], "host-a", "").await;
        let b = start_sharded_host(&[&r1, &r2], "host-b", "").await;
        let channels: Vec<String> = (0..8).map(|i| format!("room{i}")).collect();
        let mut all = Vec::new();
        for ch in &channels {
            let mut subs = [
                subscriber(a.proxy.addr, ch).await,
                subscriber(b.proxy.addr, ch).await,
            ];
            sync(&[a.publish, b.publish], ch, &mut subs).await;
            publish(b.publish, ch, "hello");
            for ws in &mut subs {
                assert_eq!(next_data(ws).await["data"], "hello", "{ch}");
            }
            all.extend(subs);
        }
        // Each server holds the subscriptions of its channels, from both hosts.
        let held = |s: &Server| {
            s.redis_cli(&["PUBSUB", "CHANNELS", "wsedge:room*"])
                .lines()
                .count()
        };
        let (n1, n2) = (held(&r1), held(&r2));
        assert_eq!(
            n1 + n2,
            8,
            "every channel on exactly one server: {n1} + {n2}"
        );
        assert!(n1 > 0 && n2 > 0, "8 channels all on one shard: {n1} + {n2}");
    })
    .await;
}
