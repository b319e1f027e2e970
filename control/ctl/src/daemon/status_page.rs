//! The control process's read-only status page (`[control] status_listen`), in the spirit of
//! HAProxy's stats page: `GET /` is a small HTML page whose script (`/status.js`) fetches
//! `GET /status.json` every couple of seconds and updates the tables in place (live
//! connections per route and worker, message and byte rates, configuration versions, the
//! fleet document). The JSON is the daemon's own `status` plus the dataplane's `stats` and
//! connection list, gathered on demand: nothing runs when nobody looks.
//!
//! Read-only by construction: only `GET`, no request changes anything, no cookies, and a
//! Content-Security-Policy that lets the page load nothing but its own script and JSON.
//! There is no authentication: bind it to loopback or a management network.
//!
//! Also here: [`History`], the recent configuration changes the page lists.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use wsedge_command::wire::{Request, Response};

use super::{Daemon, lock};

const PAGE: &str = include_str!("status_page.html");
const SCRIPT: &str = include_str!("status_page.js");
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Connections served at once (a browser opens a few speculatively).
const MAX_PEERS: usize = 16;
/// Connections read from the dataplane to count them by route.
const CONNECTION_SAMPLE: u32 = 10_000;
/// Configuration changes kept for the page.
const HISTORY: usize = 20;

/// Recent configuration changes: applied, accepted while the dataplane was away, refused.
#[derive(Debug, Default)]
pub(crate) struct History {
    entries: Mutex<VecDeque<Change>>,
}

#[derive(Debug, Clone, Serialize)]
struct Change {
    /// Unix seconds.
    at: u64,
    version: Option<u64>,
    source: String,
    outcome: &'static str,
    error: Option<String>,
}

impl History {
    fn push(&self, change: Change) {
        let mut entries = lock(&self.entries);
        if entries.len() == HISTORY {
            entries.pop_back();
        }
        entries.push_front(change);
    }

    /// A change became the desired configuration (`pushed`: the dataplane runs it).
    pub(crate) fn applied(&self, version: Option<u64>, source: &str, pushed: bool) {
        self.push(Change {
            at: wsedge_command::unix_now(),
            version,
            source: source.to_owned(),
            outcome: if pushed {
                "applied"
            } else {
                "accepted, not pushed"
            },
            error: None,
        });
    }

    /// The desired configuration the daemon started with (file or state file).
    pub(crate) fn started(&self, source: &str) {
        self.push(Change {
            at: wsedge_command::unix_now(),
            version: None,
            source: source.to_owned(),
            outcome: "desired at start",
            error: None,
        });
    }

    /// A change was refused; the configuration in force stays.
    pub(crate) fn refused(&self, source: &str, error: &str) {
        self.push(Change {
            at: wsedge_command::unix_now(),
            version: None,
            source: source.to_owned(),
            outcome: "refused",
            error: Some(error.to_owned()),
        });
    }

    fn list(&self) -> Vec<Change> {
        lock(&self.entries).iter().cloned().collect()
    }
}

/// Binds `addr` and serves the page on its own threads; the bound address.
pub(super) fn start(addr: SocketAddr, daemon: Arc<Daemon>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("wsedgectl-page".to_owned())
        .spawn(move || {
            for stream in listener.incoming() {
                let stream = match stream {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "status page accept failed");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                if active.load(Ordering::Acquire) >= MAX_PEERS {
                    continue; // dropped: the browser retries
                }
                active.fetch_add(1, Ordering::AcqRel);
                let (daemon, active) = (daemon.clone(), active.clone());
                let spawned = std::thread::Builder::new()
                    .name("wsedgectl-pagep".to_owned())
                    .spawn(move || {
                        if let Err(e) = serve(stream, &daemon) {
                            tracing::debug!(error = %e, "status page request failed");
                        }
                        active.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    tracing::warn!("cannot spawn a status page thread");
                }
            }
        })?;
    Ok(bound)
}

fn serve(mut stream: TcpStream, daemon: &Daemon) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
        if head.len() > MAX_REQUEST_HEAD {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"",
            );
        }
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let path = target.split(|b| *b == b'?').next().unwrap_or_default();
    if method != b"GET" && method != b"HEAD" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"read-only: GET\n",
        );
    }
    match path {
        b"/" | b"/index.html" => respond(
            &mut stream,
            "200 OK",
            "text/html; charset=utf-8",
            PAGE.as_bytes(),
        ),
        b"/status.js" => respond(
            &mut stream,
            "200 OK",
            "text/javascript; charset=utf-8",
            SCRIPT.as_bytes(),
        ),
        b"/status.json" => {
            let body = serde_json::to_vec(&snapshot(daemon)).unwrap_or_default();
            respond(&mut stream, "200 OK", "application/json", &body)
        }
        _ => respond(&mut stream, "404 Not Found", "text/plain", b"try /\n"),
    }
}

fn respond(stream: &mut TcpStream, status: &str, kind: &str, body: &[u8]) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nContent-Security-Policy: default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

/// Everything the page shows, in one JSON object.
pub(super) fn snapshot(daemon: &Daemon) -> Value {
    let (dataplane, daemon_status) = match daemon.status() {
        Response::Status(s) => (s.dataplane, s.daemon),
        _ => (None, None),
    };
    let mut errors = Vec::new();
    let stats = match daemon.call_dataplane(&Request::Stats) {
        Ok(Response::Stats(s)) => Some(s),
        Ok(Response::Error { message, .. }) => {
            errors.push(message);
            None
        }
        Ok(_) => None,
        Err(e) => {
            errors.push(format!("cannot reach the dataplane: {e}"));
            None
        }
    };
    let connections = match daemon.call_dataplane(&Request::Connections {
        route: None,
        limit: Some(CONNECTION_SAMPLE),
    }) {
        Ok(Response::Connections { connections }) => connections,
        _ => Vec::new(),
    };

    let origin_health = match daemon.call_dataplane(&Request::OriginsHealth) {
        Ok(Response::Origins { pools }) => serde_json::to_value(pools).unwrap_or(Value::Null),
        _ => Value::Null,
    };

    // Live connections per route and worker; bytes of live connections per worker (the
    // stats count a connection's bytes when it ends, so a rate needs both).
    let mut routes: BTreeMap<String, BTreeMap<usize, u64>> = BTreeMap::new();
    if let Ok(config) = daemon.desired_config() {
        for r in &config.routes {
            routes.entry(r.name.clone()).or_default();
        }
    }
    let mut live_bytes: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
    for c in &connections {
        let route = c.route.clone().unwrap_or_else(|| "(none)".to_owned());
        *routes
            .entry(route)
            .or_default()
            .entry(c.worker)
            .or_default() += 1;
        let b = live_bytes.entry(c.worker).or_default();
        b.0 += c.bytes_from_client;
        b.1 += c.bytes_to_client;
    }
    let workers: Vec<Value> = stats
        .as_ref()
        .map(|s| {
            s.workers
                .iter()
                .map(|w| {
                    let index = w.worker.unwrap_or(0);
                    let (live_in, live_out) = live_bytes.get(&index).copied().unwrap_or_default();
                    let accepting = dataplane
                        .as_ref()
                        .and_then(|d| d.workers.iter().find(|x| x.index == index))
                        .map(|x| x.accepting);
                    json!({
                        "index": index,
                        "config_version": w.config_version,
                        "live": w.live,
                        "accepting": accepting,
                        "accepted": w.accepted,
                        "upgraded": w.upgraded,
                        "rejected": w.rejected().map(|(_, n)| n).sum::<u64>(),
                        "bytes_from_clients": w.bytes_from_clients + live_in,
                        "bytes_to_clients": w.bytes_to_clients + live_out,
                        "messages_from_clients": w.messages_from_clients,
                        "messages_from_origins": w.messages_from_origins,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let routes: Vec<Value> = routes
        .into_iter()
        .map(|(name, by_worker)| {
            json!({
                "name": name,
                "live": by_worker.values().sum::<u64>(),
                "by_worker": by_worker.iter().map(|(w, n)| (w.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            })
        })
        .collect();
    let time_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    json!({
        "time_ms": time_ms,
        "host": daemon.fleet.as_ref().map(|f| f.config.host.clone())
            .or_else(wsedge_command::fleet::kernel_hostname),
        "daemon": daemon_status,
        "dataplane": dataplane,
        "workers": workers,
        "routes": routes,
        "connections_listed": connections.len(),
        "connections_capped": connections.len() as u64 >= u64::from(CONNECTION_SAMPLE),
        "history": daemon.history.list(),
        // Every route's origins with their health, as the dataplane's registry sees them.
        "origin_health": origin_health,
        "errors": errors,
    })
}
