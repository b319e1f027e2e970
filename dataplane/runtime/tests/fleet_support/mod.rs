//! Support for the fleet tests: a real `etcd` (Debian's `etcd-server`, 3.4) on loopback with
//! its own data directory, a raw client of its JSON gateway for what the tests write behind
//! the hosts' backs (a broken document, a compaction), a TCP relay in front of etcd that the
//! test can cut and restore, and a host: a dataplane and its `wsedgectl daemon` with a
//! `[fleet]` table.
//!
//! The etcd binary is looked up as `etcd` on PATH (or `$WSEDGE_TEST_ETCD`); `.ci/run`
//! installs it. A machine without it fails these tests with a message saying so.

#![allow(dead_code)] // each test binary uses a subset

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::common::{Config, Proxy};
use crate::control_support::{ControlDir, CtlOut, Daemon, run_ctl};

/// A free loopback port (a race with other processes is possible but harmless in practice).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A running etcd, killed on drop; its data directory is removed with it.
#[derive(Debug)]
pub(crate) struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Etcd {
    pub(crate) fn start(name: &str) -> Etcd {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wsedge-etcd-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("etcd dir");
        let mut etcd = Etcd {
            child: None,
            dir,
            client_port: free_port(),
            peer_port: free_port(),
        };
        etcd.spawn();
        etcd
    }

    fn spawn(&mut self) {
        let bin = std::env::var("WSEDGE_TEST_ETCD").unwrap_or_else(|_| "etcd".to_owned());
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .expect("etcd log");
        let child = Command::new(&bin)
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {bin:?} ({e}): these tests need a real etcd 3.4+ \
                     (Debian: apt-get install etcd-server; .ci/run installs it)"
                )
            });
        self.child = Some(child);
        for _ in 0..200 {
            if gateway(
                &self.url(),
                "/v3/kv/range",
                &json!({"key": B64.encode("x")}),
            )
            .is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
        panic!("etcd did not answer within 10 s; its log:\n{log}");
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    /// SIGKILL: etcd disappears without a word.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports and data.
    pub(crate) fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Writes `value` at `key` straight through the gateway; the new revision.
    pub(crate) fn put(&self, key: &str, value: &str) -> i64 {
        let answer = gateway(
            &self.url(),
            "/v3/kv/put",
            &json!({"key": B64.encode(key), "value": B64.encode(value)}),
        )
        .expect("put");
        revision(&answer)
    }

    /// The store's current revision.
    pub(crate) fn revision(&self) -> i64 {
        let answer = gateway(
            &self.url(),
            "/v3/kv/range",
            &json!({"key": B64.encode("x")}),
        )
        .expect("range");
        revision(&answer)
    }

    /// The revision of the last change of `key` (0: absent).
    pub(crate) fn mod_revision(&self, key: &str) -> i64 {
        let answer = gateway(
            &self.url(),
            "/v3/kv/range",
            &json!({"key": B64.encode(key)}),
        )
        .expect("range");
        answer["kvs"][0]["mod_revision"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// Compacts the history up to `rev`.
    pub(crate) fn compact(&self, rev: i64) {
        let answer = gateway(
            &self.url(),
            "/v3/kv/compaction",
            &json!({"revision": rev.to_string(), "physical": true}),
        )
        .expect("compact");
        assert!(answer.get("error").is_none(), "compaction: {answer}");
    }
}

fn revision(answer: &Value) -> i64 {
    answer["header"]["revision"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {answer}"))
}

/// One POST to etcd's JSON gateway with std's TcpStream (an independent client: the tests do
/// not use wsedgectl's own).
pub(crate) fn gateway(url: &str, path: &str, body: &Value) -> std::io::Result<Value> {
    let authority = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(authority)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let body = body.to_string();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no response head"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        // size line, data, CRLF ... (the unary answers are small)
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        rest.to_owned()
    };
    serde_json::from_str(body.trim()).map_err(std::io::Error::other)
}

/// A TCP relay in front of etcd: [`Cut::cut`] closes every relayed connection and refuses new
/// ones (accepted, then closed at once) until [`Cut::restore`].
#[derive(Debug)]
pub(crate) struct Cut {
    pub(crate) addr: SocketAddr,
    cut: Arc<AtomicBool>,
    generation: Arc<AtomicUsize>,
    /// The last generation whose live relays were torn down.
    done: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Cut {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Cut {
    pub(crate) async fn start(target: SocketAddr) -> Cut {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cut = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let (c, g, d) = (cut.clone(), generation.clone(), done.clone());
        let task = tokio::spawn(async move {
            let mut relays = JoinSet::new();
            let mut seen = 0;
            // One interval for the whole loop: a sleep made anew each iteration would never
            // fire while clients keep connecting, and a cut would leave live relays up.
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut client, _)) = accepted else { return };
                        if c.load(Ordering::SeqCst) {
                            drop(client);
                            continue;
                        }
                        relays.spawn(async move {
                            if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                        });
                    }
                    _ = tick.tick() => {
                        let now = g.load(Ordering::SeqCst);
                        if now != seen {
                            seen = now;
                            relays.abort_all();
                            d.store(now, Ordering::SeqCst);
                        }
                        while relays.try_join_next().is_some() {}
                    }
                }
            }
        });
        Cut {
            addr,
            cut,
            generation,
            done,
            task,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Refuses new connections and tears down the live ones; returns once they are down.
    pub(crate) async fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        while self.done.load(Ordering::SeqCst) < generation {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub(crate) fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// One edge host: its dataplane and its control process, configured with `[fleet]`.
#[derive(Debug)]
pub(crate) struct Host {
    pub(crate) name: String,
    pub(crate) dir: ControlDir,
    pub(crate) proxy: Proxy,
    pub(crate) daemon: Daemon,
}

impl Host {
    /// Starts a host named `name` of cluster `cluster` on etcd at `etcd_url`.
    pub(crate) async fn start(name: &str, cluster: &str, etcd_url: &str, config: &Config) -> Host {
        let dir = ControlDir::new(name);
        let toml = format!(
            "{}\n[fleet]\netcd = [{etcd_url:?}]\ncluster = {cluster:?}\nhost = {name:?}\nlease_ttl = \"3s\"\n",
            dir.toml(config, "")
        );
        let proxy = dir.start_dataplane(&toml).await;
        let daemon = Daemon::start(&dir).await;
        Host {
            name: name.to_owned(),
            dir,
            proxy,
            daemon,
        }
    }

    /// `wsedgectl --json status` of this host's daemon.
    pub(crate) async fn status(&self) -> Value {
        self.dir.ctl(&["--json", "status"]).await.json()
    }
}

/// `wsedgectl fleet ARGS --etcd URL --cluster CLUSTER`.
pub(crate) async fn fleet_ctl(etcd_url: &str, cluster: &str, args: &[&str]) -> CtlOut {
    let mut full: Vec<String> = vec![
        "--config".into(),
        "/nonexistent/wsedge.toml".into(),
        "fleet".into(),
    ];
    full.extend(args.iter().map(|s| s.to_string()));
    full.extend([
        "--etcd".into(),
        etcd_url.into(),
        "--cluster".into(),
        cluster.into(),
    ]);
    run_ctl(&full, None).await
}

/// Polls until `pred` holds for what `probe` returns; panics with the last value after
/// `timeout`.
pub(crate) async fn eventually<F, Fut>(
    what: &str,
    timeout: Duration,
    probe: F,
    pred: impl Fn(&Value) -> bool,
) -> Value
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let v = probe().await;
        if pred(&v) {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("never saw {what} within {timeout:?}; last: {v:#}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
