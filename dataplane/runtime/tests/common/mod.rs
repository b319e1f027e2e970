//! Test support for the wsedge integration tests: the real binary between peers from an
//! independent implementation (tokio-tungstenite and raw tokio TCP).
//!
//! - [`Proxy`]: spawns `wsedge --config FILE`, waits for `wsedge: ready`, collects the
//!   access log (stdout, one JSON object a line), kills the child on drop.
//! - [`Config`] / [`Route`]: the TOML configuration, with short timers suited to tests.
//! - origins (`origins.rs`): a tungstenite echo origin and raw-TCP origins.
//! - raw clients (`raw.rs`): hand-written heads, a masked-frame encoder, a frame decoder.
//!
//! Each test binary uses a subset of this module.
#![allow(dead_code)]

pub(crate) mod origins;
pub(crate) mod raw;
pub(crate) mod scenarios;

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

/// How long the binary may take to print `wsedge: ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs a test body with an overall deadline, so a broken proxy fails the test instead of
/// hanging it.
pub(crate) async fn within<F: Future>(secs: u64, body: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(secs), body).await {
        Ok(out) => out,
        Err(_) => panic!("test did not finish within {secs} s"),
    }
}

/// An address on loopback where nothing listens (connections to it are refused).
pub(crate) fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local_addr")
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// One `[[route]]` table.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    name: String,
    host: Option<String>,
    path_prefix: String,
    origins: Vec<String>,
    relay: String,
    extra: Vec<(String, String)>,
}

impl Route {
    /// A route named `name` for any host and path "/", relay "buffered". (Tests of `auto`,
    /// the product default, say so: once it splices, the worker's pipe pool keeps its pipes,
    /// which the descriptor-count checks of the fault tests would read as a leak.)
    pub(crate) fn new(name: &str, origins: &[SocketAddr]) -> Self {
        Route {
            name: name.to_string(),
            host: None,
            path_prefix: "/".to_string(),
            origins: origins.iter().map(|a| a.to_string()).collect(),
            relay: "buffered".to_string(),
            extra: Vec::new(),
        }
    }

    pub(crate) fn host(mut self, host: &str) -> Self {
        self.host = Some(host.to_string());
        self
    }

    pub(crate) fn path(mut self, prefix: &str) -> Self {
        self.path_prefix = prefix.to_string();
        self
    }

    pub(crate) fn relay(mut self, relay: &str) -> Self {
        self.relay = relay.to_string();
        self
    }

    /// A per-route key with a raw TOML value, e.g. `("client_max_message", "1000")`.
    pub(crate) fn option(mut self, key: &str, raw_value: &str) -> Self {
        self.extra.push((key.to_string(), raw_value.to_string()));
        self
    }

    /// A per-route duration override, e.g. `("idle_timeout", "1s")`.
    pub(crate) fn duration(mut self, key: &str, value: &str) -> Self {
        self.extra.push((key.to_string(), format!("{value:?}")));
        self
    }
}

/// The whole configuration file. Defaults are short enough for tests and long enough never to
/// fire in a test that does not set them.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    workers: usize,
    drain_timeout: String,
    /// `[limits]` keys with their raw TOML values.
    limits: Vec<(String, String)>,
    routes: Vec<Route>,
    /// Raw TOML tables appended at the end (e.g. a `[relay]` table).
    tables: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

impl Config {
    pub(crate) fn new() -> Self {
        let limits = [
            ("handshake_timeout", "\"5s\""),
            ("idle_timeout", "\"60s\""),
            ("max_connection_time", "\"10m\""),
            ("max_connection_time_jitter", "0"),
            ("max_head_bytes", "16384"),
            ("max_headers", "64"),
            ("origin_connect_timeout", "\"2s\""),
            ("origin_handshake_timeout", "\"5s\""),
        ];
        Config {
            workers: 2,
            drain_timeout: "1s".to_string(),
            limits: limits
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            routes: Vec::new(),
            tables: Vec::new(),
        }
    }

    /// Appends a raw TOML table, e.g. `"[relay]\nbuffer_size = 1024"`.
    pub(crate) fn table(mut self, toml: &str) -> Self {
        self.tables.push(toml.to_string());
        self
    }

    pub(crate) fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    pub(crate) fn drain_timeout(mut self, d: &str) -> Self {
        self.drain_timeout = d.to_string();
        self
    }

    fn set_limit(mut self, key: &str, raw: String) -> Self {
        match self.limits.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = raw,
            None => self.limits.push((key.to_string(), raw)),
        }
        self
    }

    /// A `[limits]` duration, e.g. `("idle_timeout", "1s")`.
    pub(crate) fn duration(self, key: &str, value: &str) -> Self {
        self.set_limit(key, format!("{value:?}"))
    }

    /// A `[limits]` number, e.g. `("max_headers", 64)`.
    pub(crate) fn number(self, key: &str, value: u64) -> Self {
        self.set_limit(key, value.to_string())
    }

    pub(crate) fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    pub(crate) fn to_toml(&self) -> String {
        let mut s = String::new();
        s.push_str("[dataplane]\nlisten = [\"127.0.0.1:0\"]\n");
        s.push_str(&format!("workers = {}\n", self.workers));
        s.push_str(&format!("drain_timeout = {:?}\n\n", self.drain_timeout));
        s.push_str("[access_log]\ntarget = \"stdout\"\n\n[limits]\n");
        for (k, v) in &self.limits {
            s.push_str(&format!("{k} = {v}\n"));
        }
        for r in &self.routes {
            s.push_str("\n[[route]]\n");
            s.push_str(&format!("name = {:?}\n", r.name));
            if let Some(h) = &r.host {
                s.push_str(&format!("host = {h:?}\n"));
            }
            s.push_str(&format!("path_prefix = {:?}\n", r.path_prefix));
            let origins: Vec<String> = r.origins.iter().map(|o| format!("{o:?}")).collect();
            s.push_str(&format!("origins = [{}]\n", origins.join(", ")));
            s.push_str(&format!("relay = {:?}\n", r.relay));
            for (k, v) in &r.extra {
                s.push_str(&format!("{k} = {v}\n"));
            }
        }
        for table in &self.tables {
            s.push_str(&format!("\n{table}\n"));
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// The proxy process
// ---------------------------------------------------------------------------------------------

/// Kills and reaps the child, and removes its config file, whatever happens to the test.
#[derive(Debug)]
struct ChildGuard {
    child: Child,
    config_path: PathBuf,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config_path);
    }
}

/// A running `wsedge` with its listen address and its access log.
#[derive(Debug)]
pub(crate) struct Proxy {
    guard: ChildGuard,
    /// The first `listening on` address.
    pub(crate) addr: SocketAddr,
    /// Every `listening on` address, in order (plain ones first, then TLS ones, whose line
    /// ends with `(tls)`).
    pub(crate) addrs: Vec<SocketAddr>,
    logs_rx: mpsc::UnboundedReceiver<Value>,
    /// Access-log lines received so far.
    seen: Vec<Value>,
    /// The process's stderr (its log) after `wsedge: ready`.
    err_rx: mpsc::UnboundedReceiver<String>,
    /// Of which the lines read so far.
    err_seen: Vec<String>,
    /// The stderr lines before `wsedge: ready` (colours stripped).
    early: Vec<String>,
}

/// A log line without its terminal colours (`ESC [ ... m`).
pub(crate) fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn unique_config_path() -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("wsedge-it-{}-{n}-{nanos}.toml", std::process::id()))
}

impl Proxy {
    /// Writes `config` to a temp file, spawns the binary and waits for readiness.
    pub(crate) async fn start(config: &Config) -> Proxy {
        Self::start_toml(&config.to_toml()).await
    }

    pub(crate) async fn start_toml(toml: &str) -> Proxy {
        let config_path = unique_config_path();
        std::fs::write(&config_path, toml).expect("write config");
        let child = Command::new(env!("CARGO_BIN_EXE_wsedge"))
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wsedge");
        let mut guard = ChildGuard { child, config_path };

        // stderr: readiness lines to the test, everything echoed (shown when a test fails).
        let (err_tx, mut err_rx) = mpsc::unbounded_channel::<String>();
        let stderr = guard.child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[wsedge stderr] {line}");
                let _ = err_tx.send(line);
            }
        });

        // stdout: the access log, one JSON object a line.
        let (log_tx, logs_rx) = mpsc::unbounded_channel::<Value>();
        let stdout = guard.child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                eprintln!("[wsedge stdout] {line}");
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = log_tx.send(v);
                }
            }
        });

        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let mut lines = Vec::new();
        let mut addrs: Vec<SocketAddr> = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, err_rx.recv()).await {
                Ok(Some(line)) => {
                    if let Some(rest) = line.strip_prefix("wsedge: listening on ") {
                        let token = rest.split_whitespace().next().unwrap_or("");
                        match token.parse() {
                            Ok(a) => addrs.push(a),
                            Err(e) => panic!("unparsable listen line {line:?}: {e}"),
                        }
                    } else if line.starts_with("wsedge: ready") {
                        break;
                    }
                    lines.push(line);
                }
                Ok(None) => {
                    let status = guard.child.wait().ok();
                    panic!(
                        "wsedge exited before `wsedge: ready` (status {status:?}); stderr:\n{}",
                        lines.join("\n")
                    );
                }
                Err(_) => panic!(
                    "wsedge not ready within {READY_TIMEOUT:?}; stderr:\n{}",
                    lines.join("\n")
                ),
            }
        }
        let addr = *addrs.first().unwrap_or_else(|| {
            panic!("no `listening on` line before ready:\n{}", lines.join("\n"))
        });
        assert_ne!(addr.port(), 0, "listen line must carry the real port");
        Proxy {
            guard,
            addr,
            addrs,
            logs_rx,
            seen: Vec::new(),
            err_rx,
            err_seen: Vec::new(),
            early: lines.iter().map(|l| strip_ansi(l)).collect(),
        }
    }

    /// [`Proxy::wait_stderr`], the lines logged before `wsedge: ready` included (what the
    /// process said while starting, e.g. a broker refusing it at once).
    pub(crate) async fn wait_stderr_from_start(
        &mut self,
        needles: &[&str],
        timeout: Duration,
    ) -> String {
        let matches = |line: &&String| needles.iter().all(|n| line.contains(n));
        match self.early.iter().find(matches) {
            Some(line) => line.clone(),
            None => self.wait_stderr(needles, timeout).await,
        }
    }

    /// Waits for a stderr (log) line containing every one of `needles`; panics with the
    /// lines seen otherwise.
    pub(crate) async fn wait_stderr(&mut self, needles: &[&str], timeout: Duration) -> String {
        let matches = |line: &String| needles.iter().all(|n| line.contains(n));
        if let Some(line) = self.err_seen.iter().find(|l| matches(l)) {
            return line.clone();
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.err_rx.recv()).await {
                Ok(Some(line)) => {
                    let line = strip_ansi(&line);
                    self.err_seen.push(line.clone());
                    if matches(&line) {
                        return line;
                    }
                }
                Ok(None) | Err(_) => panic!(
                    "no stderr line with {needles:?} within {timeout:?}; lines seen: {:#?}",
                    self.err_seen
                ),
            }
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.guard.child.id()
    }

    /// `ws://ADDR{path}`.
    pub(crate) fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Sends SIGTERM (through kill(1), to keep the tests free of `unsafe`).
    pub(crate) fn sigterm(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status:?}");
    }

    /// Waits for the process to exit; `None` if it is still running after `timeout`.
    pub(crate) async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.guard.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for an access-log line matching `pred`; panics with every line seen otherwise.
    pub(crate) async fn wait_log(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.logs_rx.recv()).await {
                Ok(Some(v)) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Ok(None) | Err(_) => panic!(
                    "no access-log line {what} within {timeout:?}; lines seen: {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// Waits until `n` access-log lines have been received in all, and returns them all.
    pub(crate) async fn logs(&mut self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.seen.len() < n {
            match tokio::time::timeout_at(deadline, self.logs_rx.recv()).await {
                Ok(Some(v)) => self.seen.push(v),
                Ok(None) | Err(_) => panic!(
                    "{} access-log lines within {timeout:?}, not {n}: {:#?}",
                    self.seen.len(),
                    self.seen
                ),
            }
        }
        self.seen.clone()
    }

    /// Waits for an access-log line whose `reason` is `reason`.
    pub(crate) async fn wait_log_reason(&mut self, reason: &str, timeout: Duration) -> Value {
        self.wait_log(&format!("with reason {reason:?}"), timeout, |v| {
            v.get("reason").and_then(Value::as_str) == Some(reason)
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket clients (tokio-tungstenite)
// ---------------------------------------------------------------------------------------------

pub(crate) type Ws = WebSocketStream<TcpStream>;

/// Limits high enough for the 1 MiB messages of the echo tests.
pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(16 << 20))
        .max_frame_size(Some(16 << 20))
}

/// A client request for `url` (`ws://host:port/path`) to add headers to.
pub(crate) fn ws_request(url: &str) -> Request {
    url.into_client_request().expect("client request")
}

/// Connects to `addr` over TCP and runs the client handshake with `request` (its Host header
/// may name anything: the TCP peer is `addr`).
pub(crate) async fn ws_connect_req(
    addr: SocketAddr,
    request: Request,
) -> Result<(Ws, Response), WsError> {
    let tcp = TcpStream::connect(addr).await.map_err(WsError::Io)?;
    tcp.set_nodelay(true).map_err(WsError::Io)?;
    client_async_with_config(request, tcp, Some(ws_config())).await
}

/// Connects to `ws://addr{path}`, panicking on failure.
pub(crate) async fn ws_connect(addr: SocketAddr, path: &str) -> Ws {
    let url = format!("ws://{addr}{path}");
    match ws_connect_req(addr, ws_request(&url)).await {
        Ok((ws, resp)) => {
            assert_eq!(resp.status().as_u16(), 101, "handshake to {url}");
            ws
        }
        Err(e) => panic!("WebSocket handshake to {url} failed: {e}"),
    }
}

/// The next data or close message, skipping pings and pongs; panics after 20 s without one.
pub(crate) async fn next_data(ws: &mut Ws) -> Message {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(20), ws.next()).await;
        match next.expect("no message within 20 s") {
            Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_))) => continue,
            Some(Ok(m)) => return m,
            Some(Err(e)) => panic!("WebSocket read failed: {e}"),
            None => panic!("WebSocket ended while a message was expected"),
        }
    }
}

/// Sends `msg` and asserts that the same message comes back.
pub(crate) async fn assert_echo(ws: &mut Ws, msg: Message) {
    let what = describe(&msg);
    ws.send(msg.clone()).await.expect("send");
    let got = next_data(ws).await;
    assert!(got == msg, "echo of {what}: got {}", describe(&got));
}

/// A short description of a message (kind and length, not the payload).
pub(crate) fn describe(m: &Message) -> String {
    match m {
        Message::Text(t) => format!("Text({} bytes)", t.len()),
        Message::Binary(b) => format!("Binary({} bytes)", b.len()),
        Message::Ping(p) => format!("Ping({p:?})"),
        Message::Pong(p) => format!("Pong({p:?})"),
        Message::Close(c) => format!("Close({c:?})"),
        Message::Frame(_) => "Frame".to_string(),
    }
}

/// Waits until the connection ends (end of stream, error, or a Close frame) without sending
/// anything; returns how long it took. Panics if it does not end within `timeout`.
pub(crate) async fn wait_ws_end(ws: &mut Ws, timeout: Duration) -> Duration {
    let start = Instant::now();
    let ended = tokio::time::timeout(timeout, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(m)) => panic!("unexpected message while waiting for the end: {m:?}"),
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "connection still open after {timeout:?} (expected it to be ended)"
    );
    start.elapsed()
}

/// Text payload of `n` bytes (ASCII, position-dependent so reordering would show).
pub(crate) fn text_payload(n: usize) -> String {
    (0..n).map(|i| (b'a' + (i % 26) as u8) as char).collect()
}

/// Binary payload of `n` bytes (a simple LCG, all byte values).
pub(crate) fn binary_payload(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678 ^ n as u32;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect()
}
