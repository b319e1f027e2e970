//! Support for the firewall integration tests: clients bound to chosen loopback source
//! addresses (127.0.0.2, 127.0.0.3, ...), a raw handshake that tells an answer from a silent
//! close, access-log lookups by client address, and a control-socket `ApplyConfig`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::client_async_with_config;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::handshake::client::{Request, Response};
use wsedge_command::wire;

use crate::common::raw::{Head, head_end};
use crate::common::{Config, Proxy, Ws, ws_config, ws_request};

/// How long to wait for an access-log line.
pub(crate) const LOG_WAIT: Duration = Duration::from_secs(10);

/// `127.0.0.last`.
pub(crate) fn lo(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// `config` followed by `tail` (`[[list]]`, `[[rule]]`, `[control]` tables).
pub(crate) fn with_tables(config: &Config, tail: &str) -> String {
    format!("{}\n{tail}\n", config.to_toml())
}

/// The worker the reuseport program sends IPv4 client `ip` to: the arithmetic of
/// `driver/sys.rs::steer_by_client_address` (source address times a golden-ratio constant,
/// bits 16.., modulo the worker count).
pub(crate) fn worker_of(ip: Ipv4Addr, workers: u32) -> u64 {
    u64::from((u32::from(ip).wrapping_mul(0x9E37_79B1) >> 16) % workers)
}

/// A TCP connection to `addr` from source address `ip`.
pub(crate) async fn tcp_from(ip: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(IpAddr::V4(ip), 0))
        .unwrap_or_else(|e| panic!("bind {ip}: {e}"));
    let tcp = socket
        .connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr} from {ip}: {e}"));
    tcp.set_nodelay(true).expect("nodelay");
    tcp
}

/// A tungstenite handshake with `request` from source address `ip`.
pub(crate) async fn ws_from_req(
    ip: Ipv4Addr,
    addr: SocketAddr,
    request: Request,
) -> Result<(Ws, Response), WsError> {
    let tcp = tcp_from(ip, addr).await;
    client_async_with_config(request, tcp, Some(ws_config())).await
}

/// A WebSocket connection to `ws://addr{path}` from `ip`; panics unless the answer is 101.
pub(crate) async fn ws_from(ip: Ipv4Addr, addr: SocketAddr, path: &str) -> Ws {
    let url = format!("ws://{addr}{path}");
    match ws_from_req(ip, addr, ws_request(&url)).await {
        Ok((ws, resp)) => {
            assert_eq!(resp.status().as_u16(), 101, "handshake to {url} from {ip}");
            ws
        }
        Err(e) => panic!("handshake to {url} from {ip} failed: {e}"),
    }
}

/// The status of a handshake tungstenite saw refused with an HTTP answer; panics otherwise.
pub(crate) fn refused_status(result: Result<(Ws, Response), WsError>) -> u16 {
    match result {
        Ok((_, resp)) => panic!(
            "handshake succeeded ({}), expected a refusal",
            resp.status()
        ),
        Err(WsError::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("handshake failed without an HTTP answer: {e}"),
    }
}

/// What a raw handshake got back.
#[derive(Debug)]
pub(crate) enum Reply {
    /// A response head and its `Content-Length` body (none for a 101).
    Answer { head: Head, body: Vec<u8> },
    /// The connection ended before a single byte came back.
    Closed,
}

impl Reply {
    pub(crate) fn head(&self) -> &Head {
        match self {
            Reply::Answer { head, .. } => head,
            Reply::Closed => panic!("the connection was closed with no response"),
        }
    }

    pub(crate) fn status(&self) -> u16 {
        self.head().status()
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.head().get(name)
    }

    pub(crate) fn body_text(&self) -> String {
        match self {
            Reply::Answer { body, .. } => String::from_utf8_lossy(body).into_owned(),
            Reply::Closed => panic!("the connection was closed with no response"),
        }
    }

    /// The `X-Wsedge-*` header lines of the answer.
    pub(crate) fn debug_headers(&self) -> Vec<(String, String)> {
        self.head()
            .headers
            .iter()
            .filter(|(n, _)| n.to_ascii_lowercase().starts_with("x-wsedge-"))
            .cloned()
            .collect()
    }
}

/// Sends the request head `head` from `ip` and reads the answer (or the silent close). The
/// connection is closed afterwards (a 101 included).
pub(crate) async fn attempt(ip: Ipv4Addr, addr: SocketAddr, head: &str) -> Reply {
    let mut tcp = tcp_from(ip, addr).await;
    let _ = tcp.write_all(head.as_bytes()).await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = head_end(&buf) {
                let head = Head::parse(&buf[..end]);
                let want = if head.status() == 101 {
                    0
                } else {
                    head.content_length().unwrap_or(0)
                };
                while buf.len() < end + want {
                    match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let body = buf[end..buf.len().min(end + want)].to_vec();
                return Reply::Answer { head, body };
            }
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) if buf.is_empty() => return Reply::Closed,
                Ok(0) | Err(_) => panic!(
                    "connection ended inside a response head: {:?}",
                    String::from_utf8_lossy(&buf)
                ),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    read.unwrap_or_else(|_| panic!("no answer and no close within 10 s for {head:?}"))
}

/// Waits for the access-log line of a connection from `ip` with reason `reason`.
pub(crate) async fn log_of(proxy: &mut Proxy, ip: Ipv4Addr, reason: &str) -> Value {
    let prefix = format!("{ip}:");
    proxy
        .wait_log(
            &format!("from {ip} with reason {reason:?}"),
            LOG_WAIT,
            |v| {
                v["reason"] == reason
                    && v["client"].as_str().is_some_and(|c| c.starts_with(&prefix))
            },
        )
        .await
}

/// A temp directory for a control socket, removed on drop.
#[derive(Debug)]
pub(crate) struct SocketDir {
    pub(crate) dir: PathBuf,
}

impl SocketDir {
    pub(crate) fn new() -> SocketDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wsedge-fw-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create socket dir");
        SocketDir { dir }
    }

    pub(crate) fn socket(&self) -> PathBuf {
        self.dir.join("dp.sock")
    }

    /// A `[control]` table pointing the dataplane's socket into this directory.
    pub(crate) fn control_table(&self) -> String {
        format!(
            "[control]\nsocket = {:?}\n",
            self.socket().display().to_string()
        )
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `ApplyConfig { toml }` to the dataplane's control socket and returns the answer.
pub(crate) async fn apply_config(socket: &Path, toml: String) -> wire::Response {
    let socket = socket.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut client =
            wire::Client::connect(&socket, Duration::from_secs(15)).expect("connect control");
        client
            .call(&wire::Request::ApplyConfig {
                toml,
                source: Some("firewall-test".to_owned()),
            })
            .expect("apply_config call")
    })
    .await
    .expect("join")
}

/// Seconds since the epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}
