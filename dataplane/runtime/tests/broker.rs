//! Broadcast channels across hosts (issue 16, docs/broker.md): several `wsedge` processes
//! ("hosts") sharing a real `redis-server` or `nats-server` started by the test. A publish on
//! one host reaches the subscribers of every host, in one order; each host holds one broker
//! subscription per channel; presence sums the hosts; a broker absent at start or restarted
//! mid-stream is survived (local-only meanwhile, then resubscribed with a `gap` notice).

mod broker_support;
mod common;

use std::time::Duration;

use broker_support::{
    Kind, Server, next_data, next_json, next_json_within, presence, publish, send_json, start_host,
    subscriber, sync, v1_client, wait_presence,
};
use common::within;
use serde_json::json;

const CHANNEL: &str = "news";

/// Three hosts, two subscribers on each, a `wsedge.v1` publisher on the first: every
/// subscriber gets every message, in the publisher's order (its own included: the
/// publisher's host gets it back through the broker like the others).
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
    sync(hosts[0].publish, CHANNEL, &mut subs).await;
    let mut publisher = v1_client(hosts[0].proxy.addr).await;
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
        sync(a.publish, CHANNEL, &mut subs).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_reports_each_host_and_the_total() {
    within(90, async {
        let server = Server::start(Kind::Redis);
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
    })
    .await;
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
        sync(a.publish, CHANNEL, &mut subs).await;
        publish(a.publish, CHANNEL, "shared");
        for ws in &mut subs {
            assert_eq!(next_data(ws).await["data"], "shared");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_resubscribes_and_sends_a_gap() {
    within(90, async {
        let mut server = Server::start(Kind::Redis);
        let a = start_host(&server, "host-a", "").await;
        let b = start_host(&server, "host-b", "").await;
        let mut subs = [
            subscriber(a.proxy.addr, CHANNEL).await,
            subscriber(b.proxy.addr, CHANNEL).await,
        ];
        sync(a.publish, CHANNEL, &mut subs).await;
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
        sync(a.publish, CHANNEL, &mut subs).await;
        publish(a.publish, CHANNEL, "after");
        for ws in &mut subs {
            assert_eq!(next_data(ws).await["data"], "after");
        }
    })
    .await;
}
