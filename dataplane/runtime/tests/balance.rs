//! Balancing policies with real processes: `wsedge` with several workers in front of
//! tokio-tungstenite echo origins.
//!
//! Consistent hashing keeps every member of a room on one origin whichever worker accepted
//! them, and across a configuration change that does not touch the pool; the access log
//! (client port -> worker, origin) and the origins' recorded requests are the evidence.
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

const ROOMS: [&str; 6] = ["lobby", "red", "blue", "green", "ops", "room-42"];
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
