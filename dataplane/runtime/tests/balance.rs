//! Balancing policies with real processes: `wsedge` with several workers in front of
//! tokio-tungstenite echo origins.
//!
//! Consistent hashing keeps every member of a room on one origin whichever worker accepted
//! them, and across a configuration change that does not touch the pool; the access log
//! (client address -> worker, origin) and the origins' recorded requests are the evidence.
//! Weights split new connections (smooth weighted round robin); a re-admitted origin in
//! slow start gets a small share first, its full share after `slow_start`.
//! Needs the `wsedgectl` binary (`cargo build -p wsedgectl` or `cargo test --workspace`).

mod common;
#[allow(dead_code)] // shared helpers; this file uses some of them
mod control_support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use common::origins::EchoOrigin;
use common::raw::{RawConn, upgrade_head};
use common::{Config, Route, within};
use control_support::ControlDir;

/// Enough rooms that all of them hashing to one of the three origins (which the test takes
/// for a broken hash) is too unlikely to be luck: with 6 it is 3 in 3^6, and CI saw it once.
const ROOMS: [&str; 12] = [
    "lobby", "red", "blue", "green", "ops", "room-42", "yellow", "kitchen", "room-7", "alpha",
    "beta", "gamma",
];
const PER_ROOM: usize = 8;

/// Opens `PER_ROOM` connections for each room (`/chat?room=NAME`), one after the other,
/// each closed before the next, each from its own loopback address (`127.0.0.<first + n>`:
/// the listeners steer clients to workers by source address, so the members of a room are
/// accepted by several workers); returns (client address, room) of each.
async fn join_rooms(proxy: SocketAddr, first: u8) -> Vec<(SocketAddr, &'static str)> {
    let mut out = Vec::new();
    for round in 0..PER_ROOM {
        for (r, room) in ROOMS.iter().copied().enumerate() {
            let last = first + (round * ROOMS.len() + r) as u8;
            let ip = std::net::IpAddr::from([127, 0, 0, last]);
            let mut conn = RawConn::connect_from(ip, proxy).await;
            let port = conn.stream.local_addr().expect("local");
            let path = format!("/chat?room={room}&n={round}");
            conn.send(upgrade_head(&path, "edge.test", &[]).as_bytes())
                .await
                .expect("send");
            let head = conn.read_head().await.expect("answer");
            assert_eq!(head.status(), 101, "{room}: {}", head.text());
            out.push((port, room));
        }
    }
    out
}

/// Per room: the workers that accepted its members and the origins they reached (from the
/// access-log lines of `joined`).
fn by_room(
    lines: &[serde_json::Value],
    joined: &[(SocketAddr, &'static str)],
) -> BTreeMap<&'static str, (BTreeSet<u64>, BTreeSet<String>)> {
    let mut out: BTreeMap<&str, (BTreeSet<u64>, BTreeSet<String>)> = BTreeMap::new();
    for (port, room) in joined {
        let line = lines
            .iter()
            .find(|l| l["client"].as_str().is_some_and(|c| c == port.to_string()))
            .unwrap_or_else(|| panic!("no access-log line for client {port}"));
        let entry = out.entry(room).or_default();
        entry.0.insert(line["worker"].as_u64().expect("worker"));
        entry
            .1
            .insert(line["origin"].as_str().expect("origin").to_owned());
    }
    out
}

#[tokio::test]
async fn a_room_keeps_its_origin_across_workers_and_an_unrelated_config_change() {
    within(90, async {
        let dir = ControlDir::new("balance-hash");
        let origins = [
            EchoOrigin::start().await,
            EchoOrigin::start().await,
            EchoOrigin::start().await,
        ];
        let addrs: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
        let rooms = Route::new("rooms", &addrs)
            .path("/chat")
            .option("balance", "\"consistent_hash\"")
            .option("hash_key", "\"query:room\"");
        let config = Config::new().workers(4).route(rooms.clone());
        let toml = dir.toml(&config, "");
        let mut proxy = dir.start_dataplane(&toml).await;

        let first = join_rooms(proxy.addr, 2).await;
        let lines = proxy.logs(first.len(), Duration::from_secs(10)).await;
        let before = by_room(&lines, &first);
        let mut used = BTreeSet::new();
        for (room, (workers, origins)) in &before {
            assert_eq!(origins.len(), 1, "{room} reached {origins:?}");
            assert!(
                workers.len() >= 2,
                "{room}'s {PER_ROOM} members were all accepted by worker {workers:?}"
            );
            used.extend(origins.iter().cloned());
        }
        assert!(used.len() >= 2, "every room hashed to {used:?}");
        // The origins saw the same: each room's requests at one origin only.
        for room in ROOMS {
            let holders: Vec<SocketAddr> = origins
                .iter()
                .filter(|o| {
                    o.requests()
                        .iter()
                        .any(|r| r.path.starts_with(&format!("/chat?room={room}&")))
                })
                .map(|o| o.addr)
                .collect();
            assert_eq!(holders.len(), 1, "{room} at {holders:?}");
        }

        // An unrelated change: another route, other limits; the rooms' pool is untouched.
        let other = EchoOrigin::start().await;
        let changed = Config::new()
            .workers(4)
            .duration("idle_timeout", "90s")
            .route(Route::new("other", &[other.addr]).path("/other"))
            .route(rooms);
        std::fs::write(&dir.daemon_config, dir.toml(&changed, "")).expect("write");
        let applied = dir
            .ctl_direct(&["apply", &dir.daemon_config.display().to_string()])
            .await;
        assert!(
            applied.ok().contains("applied config version 1"),
            "{applied:?}"
        );

        let second = join_rooms(proxy.addr, 100).await;
        let lines = proxy
            .logs(first.len() + second.len(), Duration::from_secs(10))
            .await;
        let after = by_room(&lines, &second);
        for room in ROOMS {
            assert_eq!(
                before[room].1, after[room].1,
                "{room} moved after the configuration change"
            );
            assert!(after[room].0.len() >= 2, "{room}: {:?}", after[room].0);
        }
        assert_eq!(other.accepted(), 0);
    })
    .await;
}

/// `n` handshakes one after the other, each closed before the next; how many reached each
/// of `origins` (by their accepted connections).
async fn spread(proxy: SocketAddr, origins: &[&EchoOrigin], n: usize) -> Vec<usize> {
    let before: Vec<usize> = origins.iter().map(|o| o.accepted()).collect();
    for _ in 0..n {
        let mut conn = RawConn::connect(proxy).await;
        conn.send(upgrade_head("/", "edge.test", &[]).as_bytes())
            .await
            .expect("send");
        assert_eq!(conn.read_head().await.expect("answer").status(), 101);
    }
    origins
        .iter()
        .zip(before)
        .map(|(o, b)| o.accepted() - b)
        .collect()
}

#[tokio::test]
async fn weights_split_new_connections() {
    within(60, async {
        let (a, b, c) = (
            EchoOrigin::start().await,
            EchoOrigin::start().await,
            EchoOrigin::start().await,
        );
        // One worker: the smooth weighted round robin is per worker.
        let route = Route::new("main", &[a.addr, b.addr, c.addr]).option("weights", "[3, 1, 0]");
        let proxy = common::Proxy::start(&Config::new().workers(1).route(route)).await;
        assert_eq!(spread(proxy.addr, &[&a, &b, &c], 12).await, [9, 3, 0]);
    })
    .await;
}

#[tokio::test]
async fn a_readmitted_origin_gets_a_growing_share_during_slow_start() {
    within(60, async {
        let dir = ControlDir::new("balance-slow-start");
        let a = EchoOrigin::start().await;
        let b = EchoOrigin::start().await;
        let b_addr = b.addr;
        let route = Route::new("main", &[a.addr, b.addr]).option(
            "health",
            "{ check = \"tcp\", interval = \"200ms\", timeout = \"100ms\", rise = 1, fall = 1, max_fails = 0, slow_start = \"4s\" }",
        );
        let config = Config::new().workers(1).route(route);
        let proxy = dir.start_dataplane(&dir.toml(&config, "")).await;
        let state = |v: &serde_json::Value| {
            v["pools"][0]["origins"]
                .as_array()
                .and_then(|o| o.iter().find(|o| o["addr"] == b_addr.to_string()).cloned())
                .expect("origin b")
        };
        drop(b);
        loop {
            let v = dir.ctl_direct(&["--json", "origins"]).await.json();
            if state(&v)["state"] == "down" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let b = EchoOrigin::start_at(b_addr).await;
        loop {
            let v = dir.ctl_direct(&["--json", "origins"]).await.json();
            let s = state(&v);
            if s["state"] == "up" {
                let pct = s["slow_start_pct"].as_u64().expect("ramping");
                assert!(pct < 40, "{s}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        // Just re-admitted: about a tenth of a's share (checks add to b's accepted count,
        // at most a few in this time).
        let early = spread(proxy.addr, &[&a, &b], 20).await;
        assert!(early[0] >= 15, "re-admitted b took {} of 20 at once", early[1]);
        // After slow_start: full weight again, an even split.
        tokio::time::sleep(Duration::from_millis(4200)).await;
        let v = dir.ctl_direct(&["--json", "origins"]).await.json();
        assert_eq!(state(&v)["slow_start_pct"], serde_json::Value::Null, "{v}");
        let checks_before = b.accepted();
        let late = spread(proxy.addr, &[&a], 20).await;
        let to_b = b.accepted() - checks_before;
        assert!((9..=12).contains(&late[0]), "a got {} of 20 after slow start", late[0]);
        assert!(to_b >= 8, "b got {to_b} of 20 (and its checks) after slow start");
    })
    .await;
}
