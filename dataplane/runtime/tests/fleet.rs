//! The fleet configuration with real processes: a real etcd started by the test, two edge
//! hosts (each a `wsedge` dataplane and a `wsedgectl daemon` with `[fleet]`), tokio-tungstenite
//! clients talking through both, and `wsedgectl fleet` as the operator.
//!
//! - a `fleet apply` reaches both dataplanes while every live WebSocket keeps talking (no
//!   message lost, no reconnect: the origin saw each client connect once);
//! - a bad document is refused on every host and reported (etcd status key, `wsedgectl
//!   status`), the last good configuration serving on; a concurrent writer makes `fleet
//!   apply` fail with a conflict;
//! - a watch resuming from a compacted revision reads the document again;
//! - the daemon outlives etcd going away and follows it again when it is back.
//!
//! Needs `etcd` (Debian `etcd-server`) and the `wsedgectl` binary (`cargo test --workspace`).

mod common;
#[allow(dead_code)] // shared helpers; this file uses some of them
mod control_support;
mod fleet_support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use common::origins::EchoOrigin;
use common::{Config, Route, Ws, assert_echo, within, ws_connect};
use fleet_support::{Cut, Etcd, Host, eventually, fleet_ctl};

const KEY: &str = "/wsedge/t/config";

/// Sends numbered messages until told to stop; every one must come back, in order.
async fn chatter(
    mut ws: Ws,
    name: String,
    mut stop: watch::Receiver<bool>,
) -> Result<(Ws, u64), String> {
    let mut n = 0u64;
    loop {
        if *stop.borrow() {
            return Ok((ws, n));
        }
        let text = format!("{name} message {n}");
        ws.send(Message::text(text.clone()))
            .await
            .map_err(|e| format!("{name}: send {n}: {e}"))?;
        loop {
            match tokio::time::timeout(Duration::from_secs(15), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if t.as_str() == text => break,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                other => return Err(format!("{name}: message {n}: got {other:?}")),
            }
        }
        n += 1;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Opens one connection, checks it echoes, and returns which origin got it.
async fn lands_on(proxy: SocketAddr, origins: &[&EchoOrigin]) -> Option<SocketAddr> {
    let before: Vec<usize> = origins.iter().map(|o| o.accepted()).collect();
    let mut ws = ws_connect(proxy, "/").await;
    assert_echo(&mut ws, Message::text("probe")).await;
    let _ = ws.close(None).await;
    origins
        .iter()
        .zip(before)
        .find(|(o, b)| o.accepted() > *b)
        .map(|(o, _)| o.addr)
}

fn doc_to(origin: SocketAddr, extra: &str) -> String {
    format!("[[route]]\nname = \"main\"\npath_prefix = \"/\"\norigins = [\"{origin}\"]\n{extra}")
}

fn host_row<'a>(fleet: &'a Value, host: &str) -> Option<&'a Value> {
    fleet["hosts"]
        .as_array()?
        .iter()
        .find(|h| h["host"].as_str() == Some(host))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fleet_apply_reaches_both_hosts_and_bad_documents_are_refused_everywhere() {
    within(150, async {
        let etcd = Etcd::start("apply");
        let url = etcd.url();
        let a = EchoOrigin::start().await;
        let b = EchoOrigin::start().await;
        let config = Config::new()
            .workers(2)
            .route(Route::new("main", &[a.addr]));
        let h1 = Host::start("edge-1", "t", &url, &config).await;
        let h2 = Host::start("edge-2", "t", &url, &config).await;
        let hosts = [&h1, &h2];

        // Both hosts report themselves under their leases (no document yet).
        let fleet_status = || async { fleet_ctl(&url, "t", &["--json", "status"]).await.json() };
        eventually(
            "both hosts reporting",
            Duration::from_secs(15),
            fleet_status,
            |v| {
                ["edge-1", "edge-2"]
                    .iter()
                    .all(|h| host_row(v, h).is_some_and(|r| r["health"] == "ok"))
            },
        )
        .await;

        // 20 talking WebSockets on each host, all on origin A.
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut talking = JoinSet::new();
        let mut clients = Vec::new();
        for host in hosts {
            for i in 0..20 {
                let ws = ws_connect(host.proxy.addr, "/").await;
                clients.push((
                    host.name.clone(),
                    ws.get_ref().local_addr().expect("addr").to_string(),
                ));
                talking.spawn(chatter(
                    ws,
                    format!("{} conn {i}", host.name),
                    stop_rx.clone(),
                ));
            }
        }
        assert_eq!(a.accepted(), 40);
        tokio::time::sleep(Duration::from_millis(500)).await;

        // The operator moves the route to origin B for the whole fleet.
        let doc = h1.dir.dir.join("doc-b.toml");
        std::fs::write(&doc, doc_to(b.addr, "")).expect("write doc");
        let doc_arg = doc.display().to_string();
        let out = fleet_ctl(&url, "t", &["apply", &doc_arg, "--wait-applied", "20s"]).await;
        let text = out.ok();
        assert!(text.contains("applied by all 2 hosts"), "{text}");
        let rev_b: i64 = text
            .split("at revision ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no revision in {text}"));

        for host in hosts {
            let status = host.status().await;
            assert_eq!(
                status["dataplane"]["config_source"],
                Value::String(format!("etcd:{KEY}@{rev_b}")),
                "{status:#}"
            );
            assert!(
                status["dataplane"]["workers"]
                    .as_array()
                    .expect("workers")
                    .iter()
                    .all(|w| w["config_version"] == status["dataplane"]["config_version"]),
                "{status:#}"
            );
            assert_eq!(status["daemon"]["fleet"]["applied_revision"], rev_b);
            assert_eq!(
                lands_on(host.proxy.addr, &[&a, &b]).await,
                Some(b.addr),
                "{}",
                host.name
            );
        }
        let fleet = fleet_status().await;
        assert_eq!(fleet["document"]["revision"], rev_b, "{fleet:#}");
        for name in ["edge-1", "edge-2"] {
            let row = host_row(&fleet, name).expect("host row");
            assert_eq!(row["applied_revision"], rev_b, "{fleet:#}");
            assert_eq!(row["applied_hash"], fleet["document"]["hash"], "{fleet:#}");
            assert_eq!(row["health"], "ok", "{fleet:#}");
        }

        // A broken document written behind `fleet apply`'s back: every host refuses it.
        let rev_bad = etcd.put(
            KEY,
            &doc_to(b.addr, "").replace(&b.addr.to_string(), "origin-c:9003"),
        );
        let fleet = eventually(
            "both hosts refusing the bad document",
            Duration::from_secs(15),
            fleet_status,
            |v| {
                ["edge-1", "edge-2"].iter().all(|h| {
                    host_row(v, h).is_some_and(|r| {
                        r["refused_revision"] == rev_bad && r["health"] == "refused"
                    })
                })
            },
        )
        .await;
        for name in ["edge-1", "edge-2"] {
            let row = host_row(&fleet, name).expect("row");
            let error = row["refused_error"].as_str().expect("error");
            assert!(
                error.contains(&format!("etcd:{KEY}@{rev_bad}:4: route[0].origins")),
                "the refusal names the document, line and field: {error}"
            );
            assert_eq!(row["applied_revision"], rev_b, "the last good one stays");
        }
        let human = h1.dir.ctl(&["status"]).await;
        assert!(
            human.ok().contains(&format!("REFUSED revision {rev_bad}")),
            "{}",
            human.stdout
        );
        for host in hosts {
            let status = host.status().await;
            // The last good document still serves.
            assert_eq!(
                status["dataplane"]["config_source"],
                Value::String(format!("etcd:{KEY}@{rev_b}")),
                "{status:#}"
            );
            assert_eq!(lands_on(host.proxy.addr, &[&a, &b]).await, Some(b.addr));
        }

        // fleet apply refuses an invalid file before writing anything.
        let bad = h1.dir.dir.join("bad.toml");
        std::fs::write(
            &bad,
            "[[route]]\nname = \"main\"\norigins = [\"nowhere\"]\n",
        )
        .expect("write");
        let out = fleet_ctl(&url, "t", &["apply", &bad.display().to_string()]).await;
        assert_eq!(out.code, 2, "{out:#?}");
        assert!(out.stderr.contains("route[0].origins"), "{out:#?}");
        let out = fleet_ctl(
            &url,
            "t",
            &["apply", &h1.dir.dir.join("host.toml").display().to_string()],
        )
        .await;
        assert_eq!(out.code, 2, "an unreadable file: {out:#?}");
        std::fs::write(&bad, "[control]\nsocket = \"/tmp/x\"\n").expect("write");
        let out = fleet_ctl(&url, "t", &["apply", &bad.display().to_string()]).await;
        assert_eq!(out.code, 2, "{out:#?}");
        assert!(out.stderr.contains("[control]"), "{out:#?}");
        assert_eq!(etcd.mod_revision(KEY), rev_bad, "nothing was written");

        // A writer who reviewed revision rev_b loses the race to the one who wrote rev_bad.
        let out = fleet_ctl(
            &url,
            "t",
            &["apply", &doc_arg, "--revision", &rev_b.to_string()],
        )
        .await;
        assert_eq!(out.code, 1, "{out:#?}");
        assert!(
            out.stderr.contains("conflict")
                && out.stderr.contains(&format!(
                    "expected revision {rev_b}, etcd has revision {rev_bad}"
                )),
            "{out:#?}"
        );
        assert_eq!(etcd.mod_revision(KEY), rev_bad, "nothing was written");
        // The fix, applied over what is there now, clears the refusal everywhere.
        let out = fleet_ctl(
            &url,
            "t",
            &[
                "apply",
                &doc_arg,
                "--revision",
                &rev_bad.to_string(),
                "--wait-applied",
                "20s",
            ],
        )
        .await;
        assert!(out.ok().contains("applied by all 2 hosts"), "{out:#?}");
        let fleet = fleet_status().await;
        for name in ["edge-1", "edge-2"] {
            let row = host_row(&fleet, name).expect("row");
            assert_eq!(row["health"], "ok", "{fleet:#}");
            assert_eq!(row["refused_revision"], Value::Null, "{fleet:#}");
        }

        // Every original connection kept talking through it all, and none reconnected.
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop_tx.send(true).expect("stop");
        let mut total = 0;
        while let Some(done) = talking.join_next().await {
            let (mut ws, n) = done.expect("task").unwrap_or_else(|e| panic!("{e}"));
            assert!(n >= 10, "a connection stalled: {n} messages");
            total += n;
            let _ = ws.close(None).await;
        }
        assert_eq!(a.accepted(), 40, "no client reconnected to origin A");
        assert!(total > 400, "{total} messages");
        // Their connections were listed on origin A right before they closed: check one host.
        let list = h1
            .dir
            .ctl(&["--json", "connections", "--limit", "1000"])
            .await
            .json();
        let ours: HashSet<&str> = clients
            .iter()
            .filter(|(h, _)| h == "edge-1")
            .map(|(_, c)| c.as_str())
            .collect();
        let a_text = a.addr.to_string();
        for c in list["connections"].as_array().expect("list") {
            if ours.contains(c["client"].as_str().unwrap_or("")) {
                assert_eq!(c["origin"].as_str(), Some(a_text.as_str()), "{c}");
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fleet_watch_rereads_after_compaction_and_survives_etcd_restarts() {
    within(150, async {
        let mut etcd = Etcd::start("compact");
        let relay = Cut::start(etcd.addr()).await;
        let a = EchoOrigin::start().await;
        let b = EchoOrigin::start().await;
        let c = EchoOrigin::start().await;
        let config = Config::new()
            .workers(2)
            .route(Route::new("main", &[a.addr]));
        let host = Host::start("edge-1", "t", &relay.url(), &config).await;
        let status = || host.status();
        let fleet = |v: &Value| v["daemon"]["fleet"].clone();

        let rev1 = etcd.put(KEY, &doc_to(b.addr, ""));
        eventually("revision 1 applied", Duration::from_secs(15), status, |v| {
            fleet(v)["applied_revision"] == rev1
        })
        .await;
        assert_eq!(lands_on(host.proxy.addr, &[&a, &b, &c]).await, Some(b.addr));

        let (stop_tx, stop_rx) = watch::channel(false);
        let ws = ws_connect(host.proxy.addr, "/").await;
        let talking = tokio::spawn(chatter(ws, "live".into(), stop_rx));

        // The host loses etcd; meanwhile two documents are written and the history compacted.
        relay.cut().await;
        eventually("etcd unreachable", Duration::from_secs(15), status, |v| {
            fleet(v)["etcd_reachable"] == false
        })
        .await;
        let _rev2 = etcd.put(KEY, &doc_to(a.addr, ""));
        let rev3 = etcd.put(KEY, &doc_to(c.addr, ""));
        etcd.compact(rev3);
        relay.restore();
        // Resuming from rev1 + 1 hits the compaction: the daemon reads the document again.
        let v = eventually(
            "revision 3 applied after a compaction",
            Duration::from_secs(20),
            status,
            |v| fleet(v)["applied_revision"] == rev3,
        )
        .await;
        assert!(fleet(&v)["compactions"].as_u64() >= Some(1), "{v:#}");
        assert_eq!(fleet(&v)["etcd_reachable"], true);
        assert_eq!(lands_on(host.proxy.addr, &[&a, &b, &c]).await, Some(c.addr));

        // etcd dies: the host serves on, its daemon answers and says etcd is away.
        etcd.kill();
        let v = eventually("etcd reported away", Duration::from_secs(15), status, |v| {
            fleet(v)["etcd_reachable"] == false
        })
        .await;
        assert_eq!(v["daemon"]["in_sync"], true, "{v:#}");
        assert_eq!(lands_on(host.proxy.addr, &[&a, &b, &c]).await, Some(c.addr));
        let human = host.dir.ctl(&["status"]).await;
        assert!(human.ok().contains("etcd UNREACHABLE"), "{}", human.stdout);
        tokio::time::sleep(Duration::from_secs(2)).await;

        // etcd comes back: the watch resumes, the next document is applied, the host reports.
        etcd.restart();
        let rev4 = etcd.put(KEY, &doc_to(a.addr, "idle_timeout = \"90s\"\n"));
        eventually(
            "revision 4 applied after etcd's restart",
            Duration::from_secs(20),
            status,
            |v| fleet(v)["applied_revision"] == rev4 && fleet(v)["etcd_reachable"] == true,
        )
        .await;
        assert_eq!(lands_on(host.proxy.addr, &[&a, &b, &c]).await, Some(a.addr));
        let url = etcd.url();
        eventually(
            "the host's status back in etcd",
            Duration::from_secs(15),
            || async { fleet_ctl(&url, "t", &["--json", "status"]).await.json() },
            |v| {
                host_row(v, "edge-1")
                    .is_some_and(|r| r["applied_revision"] == rev4 && r["health"] == "ok")
            },
        )
        .await;

        stop_tx.send(true).expect("stop");
        let (_, n) = talking
            .await
            .expect("task")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            n >= 20,
            "the live connection kept talking throughout: {n} messages"
        );
        assert_eq!(
            b.accepted(),
            2,
            "the live connection never reconnected (1 probe + 1 live)"
        );
    })
    .await;
}
