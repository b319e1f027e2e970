//! Operator-facing behaviour of the real binaries (issue 12, defects 8, 9, 11 and 12):
//!
//! - a second `wsedge` on a `listen` address in use refuses to start, naming the address
//!   and the process holding it, unless `--takeover`;
//! - `/metrics` escapes label values: a route named `eu"west\1` still gives a scrape that a
//!   strict, independent parser (the Python `prometheus_client` package) reads whole;
//! - configuration versions are the dataplane's own, never go backwards and never name two
//!   configurations, through the exact daemon / `--dataplane apply` / daemon restart sequence;
//! - configuration errors lead with `file:line: field: message` at the field's own line,
//!   `wsedgectl stats` shows the measured handshake latency, and connection ids are short
//!   (`1-42-7`), the same in `connections`, `kill`, the JSON views and the access log;
//! - transparent huge pages are off for the process unless `transparent_huge_pages = true`
//!   (issue 18's idle memory);
//! - one client address's connections meet one worker unless `steering = "connection"`,
//!   which spreads them over the workers (many clients behind a few addresses).
//!
//! Needs the `wsedgectl` binary (`cargo test --workspace`); the metrics test also installs
//! its parser with `scripts/prom-parser.sh` when `target/prom-venv` is missing.

mod common;
#[allow(dead_code)] // shared helpers; this file uses some of them
mod control_support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use common::origins::EchoOrigin;
use common::{Config, Proxy, Route, assert_echo, within, ws_connect};
use control_support::{ControlDir, Daemon, wait_status, workers_version};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A `wsedge` started by the test itself (not through [`Proxy`], which expects `ready`).
struct Spawned {
    child: std::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
    _config: tempfile_like::TempFile,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config file removed on drop (no crate needed for so little).
mod tempfile_like {
    use std::path::PathBuf;

    pub(crate) struct TempFile(pub(crate) PathBuf);

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn spawn_wsedge(toml: &str, args: &[&str]) -> Spawned {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "wsedge-ops-{}-{}.toml",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::write(&path, toml).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsedge"))
        .arg("--config")
        .arg(&path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wsedge");
    let (tx, lines) = mpsc::unbounded_channel();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("[second wsedge] {line}");
            let _ = tx.send(line);
        }
    });
    Spawned {
        child,
        lines,
        _config: tempfile_like::TempFile(path),
    }
}

/// Collects stderr until the process exits; its exit code and every line.
async fn wait_exit(s: &mut Spawned, timeout: Duration) -> (Option<i32>, Vec<String>) {
    let mut lines = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while let Ok(Some(line)) = tokio::time::timeout_at(deadline, s.lines.recv()).await {
        lines.push(line);
    }
    let code = loop {
        if let Some(status) = s.child.try_wait().expect("try_wait") {
            break status.code();
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("wsedge still running after {timeout:?}; stderr: {lines:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    (code, lines)
}

/// Waits for `wsedge: ready`; panics with the stderr seen otherwise.
async fn wait_ready(s: &mut Spawned) {
    let mut seen = Vec::new();
    let ready = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = s.lines.recv().await {
            let done = line.starts_with("wsedge: ready");
            seen.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ready, Ok(true), "not ready; stderr: {seen:#?}");
}

/// `config` listening on `addr` instead of port 0.
fn toml_on(config: &Config, addr: SocketAddr) -> String {
    config.to_toml().replace(
        "listen = [\"127.0.0.1:0\"]",
        &format!("listen = [\"{addr}\"]"),
    )
}

/// GET /metrics, the body.
async fn scrape(metrics: SocketAddr) -> String {
    let mut tcp = tokio::net::TcpStream::connect(metrics)
        .await
        .expect("metrics");
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.expect("read");
    let (head, body) = out.split_once("\r\n\r\n").expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    body.to_owned()
}

/// A free loopback port for the metrics endpoint.
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The interpreter of the venv with `prometheus_client`, installed by
/// scripts/prom-parser.sh (which prints its path) if needed.
fn prom_python() -> PathBuf {
    let out = Command::new(repo_root().join("scripts/prom-parser.sh"))
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/prom-parser.sh");
    assert!(
        out.status.success(),
        "scripts/prom-parser.sh could not install the Prometheus parser (prometheus-client from PyPI):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// One sample as the independent parser read it.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses an exposition with `prometheus_client`; panics with its error if it refuses it.
fn strict_parse(text: &str) -> Vec<Sample> {
    use std::io::Write;
    let mut child = Command::new(prom_python())
        .arg(repo_root().join("scripts/prometheus/parse.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the parser");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("parser output");
    assert!(
        out.status.success(),
        "prometheus_client refused the scrape: {}\n--- scrape ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).expect("parser line is JSON");
            Sample {
                name: v["name"].as_str().expect("name").to_owned(),
                labels: v["labels"]
                    .as_object()
                    .expect("labels")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().expect("label").to_owned()))
                    .collect(),
                value: v["value"].as_f64().expect("value"),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 8. A second instance on a port in use
// ---------------------------------------------------------------------------------------------

/// The workers (access log `worker`) that served `n` echo connections from 127.0.0.1 through
/// a 2-worker wsedge with `[dataplane]` `extra` lines.
async fn workers_serving_one_address(origin: &EchoOrigin, extra: &str, n: usize) -> Vec<u64> {
    let config = Config::new()
        .workers(2)
        .route(Route::new("main", &[origin.addr]));
    let toml = config
        .to_toml()
        .replacen("[dataplane]\n", &format!("[dataplane]\n{extra}"), 1);
    let mut proxy = Proxy::start_toml(&toml).await;
    for i in 0..n {
        let mut ws = ws_connect(proxy.addr, "/").await;
        assert_echo(&mut ws, Message::text(format!("m{i}"))).await;
        ws.close(None).await.expect("close");
        common::wait_ws_end(&mut ws, Duration::from_secs(5)).await;
    }
    let lines = proxy.logs(n, Duration::from_secs(10)).await;
    let mut workers: Vec<u64> = lines.iter().filter_map(|l| l["worker"].as_u64()).collect();
    assert_eq!(workers.len(), n, "a worker in every line: {lines:#?}");
    workers.sort_unstable();
    workers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steering_keeps_an_address_on_one_worker_unless_set_per_connection() {
    within(60, async {
        let origin = EchoOrigin::start().await;
        // 16 connections: with the kernel's per-connection hash all of them on one of two
        // workers has a chance of 2 in 2^16.
        let by_address = workers_serving_one_address(&origin, "", 16).await;
        assert!(
            by_address.first() == by_address.last(),
            "default steering: one address, one worker: {by_address:?}"
        );
        let by_connection =
            workers_serving_one_address(&origin, "steering = \"connection\"\n", 16).await;
        assert!(
            by_connection.contains(&0) && by_connection.contains(&1),
            "steering = \"connection\": both workers serve the address: {by_connection:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_instance_on_a_port_in_use_is_refused() {
    within(90, async {
        let origin = EchoOrigin::start().await;
        let config = Config::new()
            .workers(2)
            .drain_timeout("1s")
            .route(Route::new("main", &[origin.addr]));
        let mut first = Proxy::start(&config).await;
        let addr = first.addr;
        let mut ws = ws_connect(addr, "/").await;
        assert_echo(&mut ws, Message::text("first")).await;

        // The same address again: refused before `ready`, naming the address and the
        // process that holds it.
        let mut second = spawn_wsedge(&toml_on(&config, addr), &[]);
        let (code, lines) = wait_exit(&mut second, Duration::from_secs(20)).await;
        assert_ne!(code, Some(0), "{lines:#?}");
        assert!(
            !lines.iter().any(|l| l.starts_with("wsedge: ready")),
            "the second instance must not start: {lines:#?}"
        );
        let error = lines
            .iter()
            .find(|l| l.contains(&format!("cannot listen on {addr}")))
            .unwrap_or_else(|| panic!("no error naming {addr}: {lines:#?}"));
        assert!(
            error.contains(&format!("in use by pid {} (", first.pid()))
                && error.contains(env!("CARGO_BIN_EXE_wsedge"))
                && error.contains("--takeover"),
            "{error}"
        );
        // The first one serves on, alone.
        assert_echo(&mut ws, Message::text("still the first")).await;

        // --takeover is the deliberate way to share the address.
        let mut joined = spawn_wsedge(&toml_on(&config, addr), &["--takeover"]);
        wait_ready(&mut joined).await;
        drop(joined);

        // Once the first one has stopped (its connection closed by the drain, leaving
        // TIME_WAIT on the port), the address is free again without --takeover.
        first.sigterm();
        let status = first.wait_exit(Duration::from_secs(15)).await;
        assert_eq!(status.and_then(|s| s.code()), Some(0));
        let mut next = spawn_wsedge(&toml_on(&config, addr), &[]);
        wait_ready(&mut next).await;
        let mut fresh = ws_connect(addr, "/").await;
        assert_echo(&mut fresh, Message::text("the next one")).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 9. Label values escaped for a strict parser
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_escape_route_names_for_a_strict_parser() {
    within(120, async {
        let origin = EchoOrigin::start().await;
        let dir = ControlDir::new("metrics-escape");
        let metrics = free_addr();
        let name = "eu\"west\\1";
        let config = Config::new()
            .workers(2)
            .route(Route::new(name, &[origin.addr]).relay("frames"));
        let toml = dir.toml(&config, &format!("metrics_listen = \"{metrics}\"\n"));
        let proxy = dir.start_dataplane(&toml).await;

        // Traffic on the route, through the frames relay: messages both ways and a Close
        // with a code, so every route-labelled family has a sample.
        let mut ws = ws_connect(proxy.addr, "/").await;
        assert_echo(&mut ws, Message::text("hello")).await;
        ws.close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "bye".into(),
        }))
        .await
        .expect("close");
        common::wait_ws_end(&mut ws, Duration::from_secs(5)).await;

        let mut body = String::new();
        for _ in 0..50 {
            body = scrape(metrics).await;
            if body.contains("wsedge_close_codes_total{") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let samples = strict_parse(&body);
        let sample_lines = body
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .count();
        assert_eq!(samples.len(), sample_lines, "every sample line was read");

        // The route name comes back exactly, as each close-code sample's label.
        let codes: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.name == "wsedge_close_codes_total")
            .collect();
        assert!(!codes.is_empty(), "{body}");
        assert!(
            codes
                .iter()
                .all(|s| s.labels.get("route").map(String::as_str) == Some(name)),
            "{codes:#?}"
        );
        assert!(
            codes
                .iter()
                .any(|s| s.labels.get("code").map(String::as_str) == Some("1001")
                    && s.labels.get("kind").map(String::as_str) == Some("seen")),
            "{codes:#?}"
        );
        let messages: f64 = samples
            .iter()
            .filter(|s| {
                s.name == "wsedge_messages_total"
                    && s.labels.get("direction").map(String::as_str) == Some("from_clients")
            })
            .map(|s| s.value)
            .sum();
        assert!(messages >= 1.0, "{body}");
        let info = samples
            .iter()
            .find(|s| s.name == "wsedge_config_info")
            .expect("wsedge_config_info");
        assert_eq!(info.labels.get("version").map(String::as_str), Some("0"));
        assert_eq!(info.labels.get("hash").map(String::len), Some(12));
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 11. Versions belong to the dataplane
// ---------------------------------------------------------------------------------------------

/// The dataplane's version and hash in a `status --json`, with every worker agreeing (the
/// hash is checked at the end of the test, after the versions).
fn dataplane_identity(status: &Value) -> (u64, Option<String>) {
    let dataplane = &status["dataplane"];
    let version = dataplane["config_version"]
        .as_u64()
        .unwrap_or_else(|| panic!("no dataplane version: {status:#}"));
    assert_eq!(workers_version(status), Some(version), "{status:#}");
    (
        version,
        dataplane["config_hash"].as_str().map(str::to_owned),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_versions_never_go_backwards_or_name_two_configurations() {
    within(120, async {
        let a = EchoOrigin::start().await;
        let b = EchoOrigin::start().await;
        let dir = ControlDir::new("versions");
        let config = Config::new()
            .workers(2)
            .route(Route::new("main", &[a.addr]));
        let toml = dir.toml(&config, "");
        let _proxy = dir.start_dataplane(&toml).await;
        // Every (version, hash) the dataplane shows: a version must always name one hash.
        let mut seen: BTreeMap<u64, Option<String>> = BTreeMap::new();
        let mut record = |(version, hash): (u64, Option<String>)| {
            if let Some(before) = seen.insert(version, hash.clone()) {
                assert_eq!(
                    before, hash,
                    "version {version} named two configurations: {seen:?}"
                );
            }
            version
        };

        // The daemon at its first configuration (a live edit, so it is not the file).
        let mut daemon = Daemon::start(&dir).await;
        dir.ctl(&["origins", "add", "main", &b.addr.to_string()])
            .await
            .ok();
        let synced = wait_status(
            &dir,
            "the daemon's configuration",
            Duration::from_secs(10),
            |s| s["daemon"]["in_sync"] == Value::Bool(true),
        )
        .await;
        let desired = synced["daemon"]["desired_hash"].as_str().map(str::to_owned);
        let v1 = record(dataplane_identity(&synced));

        // Without the daemon, an operator applies another file straight to the dataplane.
        daemon.kill();
        let drift = dir.dir.join("drift.toml");
        std::fs::write(&drift, &toml).expect("write");
        let out = dir
            .ctl_direct(&["--json", "apply", drift.to_str().expect("path")])
            .await
            .json();
        let v2 = out["version"].as_u64().expect("applied version");
        assert!(v2 > v1, "apply went from {v1} to {v2}");
        let direct = dir.ctl_direct(&["--json", "status"]).await.json();
        assert_eq!(record(dataplane_identity(&direct)), v2);

        // A restarted daemon pushes its desired configuration back: a new version, not v1.
        let _daemon = Daemon::start(&dir).await;
        let resynced = wait_status(&dir, "re-sync", Duration::from_secs(10), |s| {
            s["daemon"]["in_sync"] == Value::Bool(true)
        })
        .await;
        let (v3, hash3) = dataplane_identity(&resynced);
        assert!(v3 > v2, "the version went backwards: {v2} then {v3}");
        assert_eq!(hash3, desired, "the daemon's configuration again");
        record((v3, hash3));

        // Its next edit is numbered after everything the dataplane ran.
        let out = dir
            .ctl(&["--json", "origins", "remove", "main", &a.addr.to_string()])
            .await
            .json();
        let v4 = out["version"].as_u64().expect("applied version");
        assert!(v4 > v3, "edit numbered {v4} after {v3}");
        let status = dir.ctl(&["--json", "status"]).await.json();
        assert_eq!(record(dataplane_identity(&status)), v4);
        assert_eq!(status["daemon"]["in_sync"], Value::Bool(true), "{status:#}");
        assert_eq!(
            status["daemon"]["desired_hash"], status["dataplane"]["config_hash"],
            "{status:#}"
        );
        let shown = dir.ctl(&["config", "show"]).await;
        let hash = status["dataplane"]["config_hash"].as_str().expect("hash");
        assert!(
            shown
                .ok()
                .starts_with(&format!("# config version {v4} ({hash}) from ")),
            "{shown:#?}"
        );
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert!(
            seen.values()
                .all(|h| h.as_ref().is_some_and(|h| h.len() == 12)),
            "every configuration has its hash: {seen:?}"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 12. Papercuts
// ---------------------------------------------------------------------------------------------

/// `wsedge --check` on `text`: exit code and stderr.
fn check(text: &str) -> (Option<i32>, String) {
    let path = std::env::temp_dir().join(format!("wsedge-ops-check-{}.toml", std::process::id()));
    std::fs::write(&path, text).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_wsedge"))
        .arg("--config")
        .arg(&path)
        .arg("--check")
        .output()
        .expect("run wsedge --check");
    let _ = std::fs::remove_file(&path);
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "FILE");
    (out.status.code(), stderr)
}

#[test]
fn configuration_errors_name_the_fields_own_line() {
    // `origins = []` on line 13 of the second route: reported there, not at its name (11).
    let text = "[dataplane]\nlisten = [\"127.0.0.1:0\"]\n\n[[route]]\nname = \"chat\"\npath_prefix = \"/chat\"\norigins = [\"127.0.0.1:9001\"]\n\n# the new service\n[[route]]\nname = \"beta\"\npath_prefix = \"/beta\"\norigins = []\n";
    assert_eq!(text.lines().nth(12), Some("origins = []"));
    let (code, stderr) = check(text);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr.lines().next(),
        Some(
            "wsedge: invalid configuration: FILE:13: route[1].origins: a route needs at least one origin, or a function"
        ),
        "{stderr}"
    );

    // A syntax error: the same first line, then the parser's caret drawing.
    let (code, stderr) = check("[dataplane]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2x\n");
    assert_eq!(code, Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines[0].starts_with("wsedge: invalid configuration: FILE:3: dataplane.workers: "),
        "{stderr}"
    );
    assert_eq!(
        &lines[1..4],
        ["  |", "3 | workers = 2x", "  |           ^^"],
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_show_the_measured_handshake_latency() {
    within(60, async {
        let origin = EchoOrigin::start().await;
        let dir = ControlDir::new("hs-latency");
        let config = Config::new()
            .workers(2)
            .route(Route::new("main", &[origin.addr]));
        let toml = dir.toml(&config, "");
        let proxy = dir.start_dataplane(&toml).await;
        let mut conns = Vec::new();
        for i in 0..5 {
            let mut ws = ws_connect(proxy.addr, "/").await;
            assert_echo(&mut ws, Message::text(format!("hello {i}"))).await;
            conns.push(ws);
        }
        let json = dir.ctl_direct(&["--json", "stats"]).await.json();
        let total = &json["total"]["handshake_latency"];
        assert_eq!(total["count"], 5, "{json:#}");
        assert!(
            total["p50_us"].as_u64().is_some_and(|us| us > 0),
            "{json:#}"
        );

        let text = dir.ctl_direct(&["stats"]).await;
        let text = text.ok();
        let line = text
            .lines()
            .find(|l| l.starts_with("handshake latency:"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(
            line.starts_with("handshake latency:  p50 ") && line.contains("over 5 handshakes"),
            "{text}"
        );
        assert!(!text.contains("not measured"), "{text}");
        let total_row = text
            .lines()
            .find(|l| l.starts_with("total"))
            .expect("total row");
        assert!(!total_row.contains("n/a"), "{text}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_ids_are_short_and_typed_back() {
    within(60, async {
        let origin = EchoOrigin::start().await;
        let dir = ControlDir::new("conn-ids");
        let config = Config::new()
            .workers(2)
            .route(Route::new("main", &[origin.addr]));
        let toml = dir.toml(&config, "");
        let mut proxy = dir.start_dataplane(&toml).await;
        let _daemon = Daemon::start(&dir).await;
        let mut ws = ws_connect(proxy.addr, "/").await;
        assert_echo(&mut ws, Message::text("hi")).await;
        let mine = ws.get_ref().local_addr().expect("addr").to_string();

        // JSON: the id is the short text.
        let list = dir.ctl(&["--json", "connections"]).await.json();
        let row = list["connections"]
            .as_array()
            .expect("rows")
            .iter()
            .find(|r| r["client"] == mine.as_str())
            .cloned()
            .expect("our connection");
        let id = row["id"].as_str().expect("the id is text").to_owned();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(parts.len(), 3, "{id}");
        assert!(parts.iter().all(|p| p.parse::<u32>().is_ok()), "{id}");
        assert_eq!(
            parts[0],
            row["worker"].to_string(),
            "the worker comes first: {id}"
        );

        // The table prints the same id, and `kill` takes it back.
        let table = dir.ctl(&["connections"]).await;
        let table_row = table
            .ok()
            .lines()
            .find(|l| l.contains(&mine))
            .unwrap_or_else(|| panic!("{table:#?}"))
            .to_owned();
        assert_eq!(table_row.split_whitespace().next(), Some(id.as_str()));
        let out = dir.ctl(&["kill", &id]).await;
        assert_eq!(out.ok(), format!("connection {id} closed\n"));
        common::wait_ws_end(&mut ws, Duration::from_secs(5)).await;
        let log = proxy
            .wait_log_reason("killed", Duration::from_secs(5))
            .await;
        assert_eq!(log["id"], id.as_str(), "{log}");
        assert_eq!(log["client"], mine.as_str(), "{log}");

        // Gone now; a mistyped id is a usage error that says what an id looks like.
        assert_eq!(dir.ctl(&["kill", &id]).await.code, 1);
        let bad = dir.ctl(&["kill", "1-2"]).await;
        assert_eq!(bad.code, 2, "{bad:#?}");
        assert!(bad.stderr.contains("1-42-7"), "{bad:#?}");
    })
    .await;
}

/// The kernel's view of the process's huge pages: `THP_enabled` in /proc/PID/status (Linux
/// 5.0+), which `prctl(PR_SET_THP_DISABLE)` sets.
fn thp_enabled(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let value = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .unwrap_or_else(|| panic!("this kernel's /proc/PID/status has no THP_enabled line"));
    value.trim() == "1"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transparent_huge_pages_are_off_unless_configured() {
    within(60, async {
        let origin = EchoOrigin::start().await;
        let config = Config::new()
            .workers(1)
            .route(Route::new("main", &[origin.addr]));
        let default = Proxy::start_toml(&config.to_toml()).await;
        assert!(!thp_enabled(default.pid()), "huge pages left on by default");
        let mut ws = ws_connect(default.addr, "/").await;
        assert_echo(&mut ws, Message::text("relays with them off")).await;

        let toml = config.to_toml().replacen(
            "[dataplane]\n",
            "[dataplane]\ntransparent_huge_pages = true\n",
            1,
        );
        let on = Proxy::start_toml(&toml).await;
        assert!(
            thp_enabled(on.pid()),
            "transparent_huge_pages = true ignored"
        );
    })
    .await;
}
