//! Origin health and balancing with real processes: `wsedge` in front of tokio-tungstenite
//! echo origins and raw-TCP origins started by the test, its state read with the real
//! `wsedgectl` and `/metrics`.
//!
//! A killed origin is taken down by active checks within fall × interval and new
//! connections avoid it; it is re-admitted after rise good checks and receives connections
//! again; a pool with no live origin answers 503 with `Retry-After` (never 502s); passive
//! ejection after consecutive refused connects or 5xx answers to the handshake; least
//! connections fills the emptiest origin; `wsedgectl origins` and the metrics show all of it.
//! Needs the `wsedgectl` binary (`cargo build -p wsedgectl` or `cargo test --workspace`).

mod common;
#[allow(dead_code)] // shared helpers; this file uses some of them
mod control_support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::origins::{Behavior, EchoOrigin, RawOrigin};
use common::raw::{RawConn, upgrade_head};
use common::{Config, Proxy, Route, dead_addr, within};
use control_support::ControlDir;

/// The route's `[route.health]` as an inline table.
fn health(fields: &str) -> String {
    format!("{{ {fields} }}")
}

/// A dataplane with a control socket (and a metrics endpoint on `metrics`, when given).
async fn start(dir: &ControlDir, config: Config, metrics: Option<u16>) -> Proxy {
    let extra = metrics.map_or(String::new(), |p| {
        format!("metrics_listen = \"127.0.0.1:{p}\"\n")
    });
    dir.start_dataplane(&dir.toml(&config, &extra)).await
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

/// `wsedgectl --json origins` straight from the dataplane.
async fn origins(dir: &ControlDir) -> Value {
    let v = dir.ctl_direct(&["--json", "origins"]).await.json();
    assert_eq!(v["type"], "origins", "{v}");
    v
}

/// Origin `addr`'s row in an `origins` answer.
fn row(v: &Value, addr: SocketAddr) -> Value {
    v["pools"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["origins"].as_array().cloned().unwrap_or_default())
        .find(|o| o["addr"] == addr.to_string())
        .unwrap_or_else(|| panic!("no origin {addr} in {v}"))
}

/// Polls `wsedgectl origins` until `addr` is in `state`; how long that took.
async fn wait_state(dir: &ControlDir, addr: SocketAddr, state: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let v = origins(dir).await;
        if row(&v, addr)["state"] == state {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{addr} not {state} within {limit:?}: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A WebSocket handshake through the proxy; the status it got and the connection.
async fn handshake(proxy: SocketAddr) -> (u16, common::raw::Head, RawConn) {
    let mut conn = RawConn::connect(proxy).await;
    conn.send(upgrade_head("/", "edge.test", &[]).as_bytes())
        .await
        .expect("send");
    let head = conn.read_head().await.expect("an answer");
    (head.status(), head, conn)
}

/// `n` handshakes one after the other, each closed before the next; their statuses.
async fn handshakes(proxy: SocketAddr, n: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (status, _, conn) = handshake(proxy).await;
        drop(conn);
        out.push(status);
    }
    out
}

/// The origins of the access-log lines after the first `skip`.
fn logged_origins(lines: &[Value], skip: usize) -> Vec<String> {
    lines[skip..]
        .iter()
        .map(|l| l["origin"].as_str().unwrap_or("none").to_owned())
        .collect()
}

fn metrics(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    text
}

const INTERVAL_MS: u64 = 300;

fn active_tcp(rise: u32, fall: u32) -> String {
    health(&format!(
        "check = \"tcp\", interval = \"{INTERVAL_MS}ms\", timeout = \"150ms\", rise = {rise}, fall = {fall}, max_fails = 0"
    ))
}

#[tokio::test]
async fn a_killed_origin_is_ejected_within_fall_times_interval() {
    within(60, async {
        let dir = ControlDir::new("health-kill");
        let (a, b, c) = (
            EchoOrigin::start().await,
            EchoOrigin::start().await,
            EchoOrigin::start().await,
        );
        let b_addr = b.addr;
        let route =
            Route::new("main", &[a.addr, b.addr, c.addr]).option("health", &active_tcp(2, 2));
        let port = free_port();
        let mut proxy = start(&dir, Config::new().route(route), Some(port)).await;
        // Every origin is checked and up.
        let v = origins(&dir).await;
        assert_eq!(row(&v, b_addr)["state"], "up", "{v:#}");

        drop(b);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let took = wait_state(&dir, b_addr, "down", Duration::from_secs(5)).await;
        // Down after `fall` failed checks: at most one interval until the first, then
        // fall - 1 more (plus scheduling and polling slack).
        let bound = Duration::from_millis(INTERVAL_MS * 3 + 500);
        eprintln!("killed origin down after {took:?} (interval {INTERVAL_MS} ms, fall 2)");
        assert!(took <= bound, "ejected after {took:?}, bound {bound:?}");
        let r = row(&origins(&dir).await, b_addr);
        assert_eq!(r["why"], "checks_failed: connect_failed", "{r}");
        assert_eq!(r["last_check"], "connect_failed", "{r}");

        // New connections all succeed, on the two live origins only, in turn.
        let statuses = handshakes(proxy.addr, 8).await;
        assert!(statuses.iter().all(|&s| s == 101), "{statuses:?}");
        let lines = proxy.logs(8, Duration::from_secs(5)).await;
        let used = logged_origins(&lines, 0);
        assert!(!used.contains(&b_addr.to_string()), "{used:?}");
        for live in [a.addr, c.addr] {
            let n = used.iter().filter(|o| **o == live.to_string()).count();
            assert!(n >= 3, "{live} got {n} of {used:?}");
        }
        let text = metrics(port);
        let line = format!("wsedge_origin_up{{route=\"main\",origin=\"{b_addr}\"}} 0");
        assert!(text.contains(&line), "{line} missing:\n{text}");
        let line = format!("wsedge_origin_up{{route=\"main\",origin=\"{}\"}} 1", a.addr);
        assert!(text.contains(&line), "{line} missing:\n{text}");
    })
    .await;
}

#[tokio::test]
async fn a_revived_origin_is_readmitted_after_rise_checks() {
    within(60, async {
        let dir = ControlDir::new("health-revive");
        let (a, b) = (EchoOrigin::start().await, EchoOrigin::start().await);
        let b_addr = b.addr;
        let route = Route::new("main", &[a.addr, b.addr]).option("health", &active_tcp(3, 1));
        let mut proxy = start(&dir, Config::new().workers(1).route(route), None).await;
        drop(b);
        tokio::time::sleep(Duration::from_millis(20)).await;
        wait_state(&dir, b_addr, "down", Duration::from_secs(5)).await;
        let statuses = handshakes(proxy.addr, 2).await;
        assert_eq!(statuses, [101, 101]);

        let b = EchoOrigin::start_at(b_addr).await;
        let took = wait_state(&dir, b_addr, "up", Duration::from_secs(5)).await;
        // Up after `rise` good checks in a row: at most rise intervals (plus slack), and
        // never before rise - 1 intervals have passed.
        let bound = Duration::from_millis(INTERVAL_MS * 3 + 500);
        eprintln!("revived origin up after {took:?} (interval {INTERVAL_MS} ms, rise 3)");
        assert!(took <= bound, "re-admitted after {took:?}, bound {bound:?}");
        assert!(
            took >= Duration::from_millis(INTERVAL_MS * 2 - 100),
            "re-admitted after {took:?}: fewer than rise = 3 checks"
        );
        let r = row(&origins(&dir).await, b_addr);
        assert_eq!(r["why"], "checks_passed", "{r}");
        assert_eq!(r["transitions"], 2, "{r}");

        // It gets its turn again (one worker: strict alternation over the two).
        let statuses = handshakes(proxy.addr, 4).await;
        assert!(statuses.iter().all(|&s| s == 101), "{statuses:?}");
        let lines = proxy.logs(6, Duration::from_secs(5)).await;
        let used = logged_origins(&lines, 2);
        let on_b = used.iter().filter(|o| **o == b_addr.to_string()).count();
        assert_eq!(on_b, 2, "{used:?}");
        assert!(b.accepted() >= 2);
    })
    .await;
}

#[tokio::test]
async fn with_every_origin_down_the_answer_is_503_with_retry_after() {
    within(60, async {
        let dir = ControlDir::new("health-all-down");
        let (a, b) = (EchoOrigin::start().await, EchoOrigin::start().await);
        let addrs = [a.addr, b.addr];
        // Retry-After: the soonest an origin can be back, rise × interval = 3 × 1 s.
        let route = Route::new("main", &addrs).option(
            "health",
            &health("check = \"tcp\", interval = \"1s\", timeout = \"200ms\", rise = 3, fall = 1"),
        );
        let mut proxy = start(&dir, Config::new().route(route), None).await;
        drop((a, b));
        tokio::time::sleep(Duration::from_millis(20)).await;
        for addr in addrs {
            wait_state(&dir, addr, "down", Duration::from_secs(5)).await;
        }
        for _ in 0..6 {
            let (status, head, mut conn) = handshake(proxy.addr).await;
            assert_eq!(status, 503, "{}", head.text());
            assert_eq!(head.get("retry-after"), Some("3"), "{}", head.text());
            let body = conn.read_body(&head, Duration::from_secs(2)).await;
            assert_eq!(body, b"no origin available\n");
        }
        let lines = proxy.logs(6, Duration::from_secs(5)).await;
        for l in &lines {
            assert_eq!(l["reason"], "no_live_origin", "{l}");
            assert_eq!(l["status"], 503, "{l}");
            assert_eq!(l["origin"], Value::Null, "no origin was tried: {l}");
        }
    })
    .await;
}

#[tokio::test]
async fn consecutive_refused_connects_and_5xx_answers_eject_passively() {
    within(60, async {
        let dir = ControlDir::new("health-passive");
        let good = EchoOrigin::start().await;
        let failing = RawOrigin::start(Behavior::Respond(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                .to_vec(),
        ))
        .await;
        let refused = dead_addr();
        let route = Route::new("main", &[good.addr, failing.addr, refused])
            .option("health", &health("max_fails = 2, eject_time = \"30s\""));
        let proxy = start(&dir, Config::new().route(route), None).await;

        // Until both are ejected, some handshakes meet the 503 origin (refused connects are
        // retried on another origin); at most max_fails of them.
        let first = handshakes(proxy.addr, 12).await;
        let got_503 = first.iter().filter(|&&s| s == 503).count();
        assert!(
            (1..=2).contains(&got_503),
            "503s before the ejection: {first:?}"
        );
        assert!(
            first.iter().all(|&s| s == 101 || s == 503),
            "never a 502: {first:?}"
        );
        let v = origins(&dir).await;
        let r = row(&v, failing.addr);
        assert_eq!(r["state"], "down", "{v:#}");
        assert_eq!(r["why"], "ejected: status_503", "{r}");
        assert_eq!(r["ejections"], 1, "{r}");
        let r = row(&v, refused);
        assert_eq!(r["state"], "down", "{v:#}");
        assert_eq!(r["why"], "ejected: connect_failed", "{r}");
        assert_eq!(row(&v, good.addr)["state"], "up");

        // From then on every connection goes to the good origin.
        let heads_before = failing.heads().len();
        let after = handshakes(proxy.addr, 10).await;
        assert!(after.iter().all(|&s| s == 101), "{after:?}");
        assert_eq!(
            failing.heads().len(),
            heads_before,
            "an ejected origin got a handshake"
        );
    })
    .await;
}

#[tokio::test]
async fn least_connections_sends_new_connections_to_the_emptiest_origin() {
    within(60, async {
        let (a, b) = (EchoOrigin::start().await, EchoOrigin::start().await);
        // One worker: least connections counts per worker.
        let route =
            Route::new("main", &[a.addr, b.addr]).option("balance", "\"least_connections\"");
        let proxy = Proxy::start(&Config::new().workers(1).route(route)).await;
        let mut on_a = Vec::new();
        let mut on_b = Vec::new();
        for _ in 0..4 {
            let before = (a.accepted(), b.accepted());
            let (status, _, conn) = handshake(proxy.addr).await;
            assert_eq!(status, 101);
            if a.accepted() > before.0 {
                on_a.push(conn);
            } else {
                assert!(b.accepted() > before.1);
                on_b.push(conn);
            }
        }
        assert_eq!((on_a.len(), on_b.len()), (2, 2), "ties go in turn");
        // Close both connections on A: A holds 0, B holds 2.
        on_a.clear();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Round robin would alternate; least connections fills A first.
        let before = a.accepted();
        for _ in 0..2 {
            let (status, _, conn) = handshake(proxy.addr).await;
            assert_eq!(status, 101);
            on_a.push(conn);
        }
        assert_eq!(a.accepted() - before, 2, "both new connections went to A");
        // Now 2 and 2: the next ones spread again.
        let (before_a, before_b) = (a.accepted(), b.accepted());
        for _ in 0..2 {
            let (_, _, conn) = handshake(proxy.addr).await;
            on_b.push(conn);
        }
        assert_eq!((a.accepted() - before_a, b.accepted() - before_b), (1, 1));
    })
    .await;
}

#[tokio::test]
async fn wsedgectl_origins_shows_each_pools_state() {
    within(60, async {
        let dir = ControlDir::new("health-ctl");
        let live = EchoOrigin::start().await;
        let dead = dead_addr();
        let watched = Route::new("watched", &[live.addr, dead])
            .path("/w")
            .option("health", &active_tcp(2, 1))
            .option("balance", "\"least_connections\"");
        let plain = Route::new("plain", &[live.addr]);
        let _proxy = start(&dir, Config::new().route(watched).route(plain), None).await;
        wait_state(&dir, dead, "down", Duration::from_secs(5)).await;

        let text = dir.ctl_direct(&["origins"]).await.ok().to_owned();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ROUTE"), "{text}");
        for column in ["ORIGIN", "STATE", "WHY", "LAST CHECK", "EJECTIONS", "CHECK"] {
            assert!(lines[0].contains(column), "{column} missing: {text}");
        }
        let dead_line = lines
            .iter()
            .find(|l| l.contains(&dead.to_string()))
            .unwrap_or_else(|| panic!("{dead} missing: {text}"));
        for word in [
            "watched",
            "down",
            "checks_failed: connect_failed",
            "least_connections",
            "tcp every 300ms",
        ] {
            assert!(dead_line.contains(word), "{word} missing: {dead_line}");
        }
        let live_line = lines
            .iter()
            .find(|l| l.starts_with("watched") && l.contains(&live.addr.to_string()))
            .unwrap_or_else(|| panic!("{} missing: {text}", live.addr));
        assert!(live_line.contains(" up "), "{live_line}");
        assert!(live_line.contains("ok "), "last check ok: {live_line}");
        let plain_line = lines
            .iter()
            .find(|l| l.starts_with("plain"))
            .unwrap_or_else(|| panic!("plain missing: {text}"));
        assert!(plain_line.contains("unwatched"), "{plain_line}");

        // Through the control process too (it forwards the request to the dataplane).
        let _daemon = control_support::Daemon::start(&dir).await;
        let via_daemon = dir.ctl(&["--json", "origins"]).await.json();
        assert_eq!(row(&via_daemon, dead)["state"], "down", "{via_daemon:#}");

        // `origins list` still lists the configured origins (through the dataplane here).
        let v = origins(&dir).await;
        let pools = v["pools"].as_array().expect("pools");
        assert_eq!(pools.len(), 2, "{v:#}");
        assert_eq!(pools[0]["watched"], true);
        assert_eq!(pools[1]["watched"], false);
        let r = row(&v, dead);
        assert!(r["checks"].as_u64().unwrap_or(0) >= 1, "{r}");
        assert_eq!(r["checks"], r["checks_failed"], "{r}");
    })
    .await;
}
