//! Origins on loopback: a tokio-tungstenite echo origin that records handshake requests and
//! control frames, and raw-TCP origins with fixed behaviours.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::accept_hdr_async_with_config;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::raw::{Head, OP_TEXT, accept_for, head_end, server_frame};
use super::ws_config;

/// A handshake request as the echo origin received it.
#[derive(Debug, Clone)]
pub(crate) struct RecordedRequest {
    /// The request target (path and query).
    pub(crate) path: String,
    /// Header names (lower case) and values, as tungstenite parsed them.
    pub(crate) headers: Vec<(String, String)>,
    /// The exact head bytes received.
    pub(crate) raw: String,
}

impl RecordedRequest {
    pub(crate) fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The only value of `name`; panics if it appears more than once.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(all.len() <= 1, "header {name} appears {} times", all.len());
        all.first().copied()
    }
}

/// What the echo origin saw besides data messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OriginEvent {
    Ping(Vec<u8>),
    Close(Option<(u16, String)>),
}

/// A WebSocket echo origin (tokio-tungstenite). Echoes text and binary messages; tungstenite
/// answers pings and replies to Close by itself.
#[derive(Debug)]
pub(crate) struct EchoOrigin {
    pub(crate) addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    events: Arc<Mutex<Vec<OriginEvent>>>,
    task: JoinHandle<()>,
}

impl Drop for EchoOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoOrigin {
    pub(crate) async fn start() -> EchoOrigin {
        Self::start_inner(None).await
    }

    /// An echo origin that selects subprotocol `protocol` when the client offers it.
    pub(crate) async fn with_protocol(protocol: &str) -> EchoOrigin {
        Self::start_inner(Some(protocol.to_string())).await
    }

    /// An echo origin on `addr` (an origin that was stopped comes back on its address);
    /// retries the bind for up to 2 s while the old listener goes away.
    pub(crate) async fn start_at(addr: SocketAddr) -> EchoOrigin {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => return Self::serve(listener, None),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    panic!("cannot bind {addr} again: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    async fn start_inner(protocol: Option<String>) -> EchoOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(listener, protocol)
    }

    fn serve(listener: TcpListener, protocol: Option<String>) -> EchoOrigin {
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let events = Arc::new(Mutex::new(Vec::new()));
        let (a, r, e) = (accepted.clone(), requests.clone(), events.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let _ = tcp.set_nodelay(true);
                tokio::spawn(echo_conn(tcp, protocol.clone(), r.clone(), e.clone()));
            }
        });
        EchoOrigin {
            addr,
            accepted,
            requests,
            events,
            task,
        }
    }

    /// TCP connections accepted so far (handshakes or not).
    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Handshake requests received so far.
    pub(crate) fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.lock().expect("lock").clone()
    }

    pub(crate) fn events(&self) -> Vec<OriginEvent> {
        self.events.lock().expect("lock").clone()
    }
}

// The handshake callback's error type is tungstenite's.
#[allow(clippy::result_large_err)]
async fn echo_conn(
    mut tcp: TcpStream,
    protocol: Option<String>,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    events: Arc<Mutex<Vec<OriginEvent>>>,
) {
    // tungstenite's server handshake refuses bytes that follow the request head in the same
    // read ("junk after request"), but a client may send its first frames right behind its
    // head. So the head is read here and replayed to tungstenite on its own, then the rest.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let end = loop {
        if let Some(end) = head_end(&buf) {
            break end;
        }
        match tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    };
    let rest = buf.split_off(end);
    let raw = String::from_utf8_lossy(&buf).into_owned();
    let stream = HeadFirst {
        head: buf,
        head_pos: 0,
        rest,
        rest_pos: 0,
        inner: tcp,
    };
    let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let headers = req
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        requests
            .lock()
            .expect("lock")
            .push(RecordedRequest { path, headers, raw });
        if let Some(p) = protocol {
            let offered = req
                .headers()
                .get_all("sec-websocket-protocol")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|t| t.trim() == p);
            if offered {
                resp.headers_mut().insert(
                    "Sec-WebSocket-Protocol",
                    HeaderValue::from_str(&p).expect("header value"),
                );
            }
        }
        Ok(resp)
    };
    let Ok(mut ws) = accept_hdr_async_with_config(stream, callback, Some(ws_config())).await else {
        return;
    };
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                if ws.send(m).await.is_err() {
                    return;
                }
            }
            Ok(Message::Ping(p)) => {
                events
                    .lock()
                    .expect("lock")
                    .push(OriginEvent::Ping(p.to_vec()));
            }
            Ok(Message::Close(c)) => {
                let c = c.map(|f| (u16::from(f.code), f.reason.as_str().to_string()));
                events.lock().expect("lock").push(OriginEvent::Close(c));
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// A stream that first yields an already-read request head (never together with later bytes),
/// then the bytes read after it, then the socket.
#[derive(Debug)]
struct HeadFirst {
    head: Vec<u8>,
    head_pos: usize,
    rest: Vec<u8>,
    rest_pos: usize,
    inner: TcpStream,
}

fn replay(src: &[u8], pos: &mut usize, buf: &mut ReadBuf<'_>) {
    let n = buf.remaining().min(src.len() - *pos);
    buf.put_slice(&src[*pos..*pos + n]);
    *pos += n;
}

impl AsyncRead for HeadFirst {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.head_pos < this.head.len() {
            replay(&this.head, &mut this.head_pos, buf);
            return Poll::Ready(Ok(()));
        }
        if this.rest_pos < this.rest.len() {
            replay(&this.rest, &mut this.rest_pos, buf);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for HeadFirst {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// What a raw origin does once it has read a request head.
#[derive(Debug, Clone)]
pub(crate) enum Behavior {
    /// Writes these bytes and closes.
    Respond(Vec<u8>),
    /// Never answers; holds the connection until the peer closes it.
    Silent,
    /// Answers 101 (with a correct or a wrong accept key) followed, in the same write, by
    /// `after`; then holds the connection until the peer closes it.
    Upgrade { valid_accept: bool, after: Vec<u8> },
}

/// A raw-TCP origin recording every request head it receives.
#[derive(Debug)]
pub(crate) struct RawOrigin {
    pub(crate) addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Connections that ended (the peer closed or reset them, or the behaviour finished).
    closed: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<Head>>>,
    task: JoinHandle<()>,
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) const FORBIDDEN_BODY: &str = "forbidden by origin";
pub(crate) const PLAIN_BODY: &str = "hello from the plain origin";
pub(crate) const GREETING: &str = "hello from origin";

fn response(status_line: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status_line}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl RawOrigin {
    pub(crate) async fn start(behavior: Behavior) -> RawOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (a, c, h) = (accepted.clone(), closed.clone(), heads.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let (behavior, h, c) = (behavior.clone(), h.clone(), c.clone());
                tokio::spawn(async move {
                    raw_conn(tcp, behavior, h).await;
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        RawOrigin {
            addr,
            accepted,
            closed,
            heads,
            task,
        }
    }

    /// Answers `403 Forbidden` with body [`FORBIDDEN_BODY`].
    pub(crate) async fn forbidden() -> RawOrigin {
        Self::start(Behavior::Respond(response("403 Forbidden", FORBIDDEN_BODY))).await
    }

    /// A plain HTTP origin answering `200 OK` with body [`PLAIN_BODY`].
    pub(crate) async fn plain() -> RawOrigin {
        Self::start(Behavior::Respond(response("200 OK", PLAIN_BODY))).await
    }

    /// Accepts and never answers.
    pub(crate) async fn silent() -> RawOrigin {
        Self::start(Behavior::Silent).await
    }

    /// Answers 101 with a wrong `Sec-WebSocket-Accept`.
    pub(crate) async fn wrong_accept() -> RawOrigin {
        Self::start(Behavior::Upgrade {
            valid_accept: false,
            after: Vec::new(),
        })
        .await
    }

    /// Answers a valid 101 and, in the same write, a text frame [`GREETING`].
    pub(crate) async fn greeting() -> RawOrigin {
        Self::start(Behavior::Upgrade {
            valid_accept: true,
            after: server_frame(OP_TEXT, GREETING.as_bytes()),
        })
        .await
    }

    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub(crate) fn heads(&self) -> Vec<Head> {
        self.heads.lock().expect("lock").clone()
    }

    /// Waits until every accepted connection has ended; false if one is still open after
    /// `limit`.
    pub(crate) async fn closed_within(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let accepted = self.accepted.load(Ordering::SeqCst);
            if accepted > 0 && self.closed.load(Ordering::SeqCst) >= accepted {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn raw_conn(mut tcp: TcpStream, behavior: Behavior, heads: Arc<Mutex<Vec<Head>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let head = loop {
        if let Some(end) = head_end(&buf) {
            break Head::parse(&buf[..end]);
        }
        match tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    };
    heads.lock().expect("lock").push(head.clone());
    match behavior {
        Behavior::Respond(bytes) => {
            let _ = tcp.write_all(&bytes).await;
            let _ = tcp.shutdown().await;
            // Let the peer read everything before the socket is dropped.
            let _ = tokio::time::timeout(Duration::from_secs(5), drain(&mut tcp)).await;
        }
        Behavior::Silent => drain(&mut tcp).await,
        Behavior::Upgrade {
            valid_accept,
            after,
        } => {
            let key = head.get("sec-websocket-key").unwrap_or("").to_string();
            let accept = if valid_accept {
                accept_for(&key)
            } else {
                accept_for("not the key the client sent")
            };
            let mut out = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            )
            .into_bytes();
            out.extend_from_slice(&after);
            if tcp.write_all(&out).await.is_err() {
                return;
            }
            drain(&mut tcp).await;
        }
    }
}

/// Reads and discards until the peer closes.
async fn drain(tcp: &mut TcpStream) {
    let mut chunk = [0u8; 16384];
    while let Ok(n) = tcp.read(&mut chunk).await {
        if n == 0 {
            return;
        }
    }
}

/// What a [`KeepAliveOrigin`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeepAliveEvent {
    /// A request line, as received.
    Request(String),
    /// A connection ended (the peer closed or reset it).
    Closed,
}

/// A raw HTTP/1.1 origin that keeps connections alive and serves every request it reads on
/// one: an upgrade to `/declined` gets `200` with a body (declining it, keep-alive), a request
/// for `/chunked` a chunked `200`, anything else (`/internal`, say) [`SECRET_BODY`]. It
/// records every request line and every connection end, so a test can tell what reached it.
#[derive(Debug)]
pub(crate) struct KeepAliveOrigin {
    pub(crate) addr: SocketAddr,
    events: Arc<Mutex<Vec<KeepAliveEvent>>>,
    task: JoinHandle<()>,
}

impl Drop for KeepAliveOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What [`KeepAliveOrigin`] serves for paths that a closed route stands for.
pub(crate) const SECRET_BODY: &str = "SECRET internal content";
/// Its body for a declined upgrade.
pub(crate) const DECLINED_BODY: &str = "no upgrade here";

impl KeepAliveOrigin {
    pub(crate) async fn start() -> KeepAliveOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let events = Arc::new(Mutex::new(Vec::new()));
        let recorded = events.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(keep_alive_conn(tcp, recorded.clone()));
            }
        });
        KeepAliveOrigin { addr, events, task }
    }

    pub(crate) fn events(&self) -> Vec<KeepAliveEvent> {
        self.events.lock().expect("lock").clone()
    }

    /// The request lines received so far.
    pub(crate) fn requests(&self) -> Vec<String> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                KeepAliveEvent::Request(line) => Some(line),
                KeepAliveEvent::Closed => None,
            })
            .collect()
    }

    /// Waits until `n` connections ended; false if they did not within `limit`.
    pub(crate) async fn wait_closed(&self, n: usize, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            let closed = self
                .events()
                .iter()
                .filter(|e| **e == KeepAliveEvent::Closed)
                .count();
            if closed >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }
}

async fn keep_alive_conn(mut tcp: TcpStream, events: Arc<Mutex<Vec<KeepAliveEvent>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        while let Some(end) = head_end(&buf) {
            let head = Head::parse(&buf[..end]);
            buf.drain(..end);
            events
                .lock()
                .expect("lock")
                .push(KeepAliveEvent::Request(head.start_line.clone()));
            let target = head.target().to_string();
            let response = if target.starts_with("/declined") {
                format!(
                    "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=30\r\n\
                     Content-Length: {}\r\n\r\n{DECLINED_BODY}",
                    DECLINED_BODY.len()
                )
            } else if target.starts_with("/chunked") {
                format!(
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{DECLINED_BODY}\r\n0\r\n\r\n",
                    DECLINED_BODY.len()
                )
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{SECRET_BODY}",
                    SECRET_BODY.len()
                )
            };
            if tcp.write_all(response.as_bytes()).await.is_err() {
                events.lock().expect("lock").push(KeepAliveEvent::Closed);
                return;
            }
        }
        match tcp.read(&mut chunk).await {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => {
                events.lock().expect("lock").push(KeepAliveEvent::Closed);
                return;
            }
        }
    }
}
