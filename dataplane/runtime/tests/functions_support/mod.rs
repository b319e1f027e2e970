//! Support for `tests/functions.rs`: configuration text for function routes and a light raw
//! WebSocket client (a few hundred bytes of state, so a test can hold a thousand of them)
//! that connects from a chosen loopback source address.
#![allow(dead_code)]

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::raw::{
    Frame, Head, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, TEST_ACCEPT, decode_frame, frame, head_end,
    upgrade_head,
};

/// A whole configuration file with `workers` workers and the given `[[route]]` text.
pub(crate) fn config_toml(workers: usize, routes: &str) -> String {
    format!(
        "[dataplane]\nlisten = [\"127.0.0.1:0\"]\nworkers = {workers}\ndrain_timeout = \"1s\"\n\n\
         [access_log]\ntarget = \"stdout\"\n\n\
         [limits]\nhandshake_timeout = \"5s\"\nidle_timeout = \"60s\"\n\
         max_connection_time = \"10m\"\nmax_connection_time_jitter = 0\n\n{routes}"
    )
}

/// One function `[[route]]` table; `extra` holds further `key = value` lines.
pub(crate) fn function_route(name: &str, prefix: &str, function: &str, extra: &[&str]) -> String {
    let mut s =
        format!("[[route]]\nname = {name:?}\npath_prefix = {prefix:?}\nfunction = {function:?}\n");
    for line in extra {
        s.push_str(line);
        s.push('\n');
    }
    s.push('\n');
    s
}

/// `127.0.0.{n}`.
pub(crate) fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// A TCP connection to `addr` from `src` (any port), optionally with a small receive buffer
/// set before connecting (so the window the peer sees is small from the start).
pub(crate) async fn tcp_from(src: IpAddr, addr: SocketAddr, recv_buffer: Option<u32>) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
    }
    socket
        .bind(SocketAddr::new(src, 0))
        .unwrap_or_else(|e| panic!("bind {src}: {e}"));
    let stream = socket
        .connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr} from {src}: {e}"));
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// A message as a raw client reassembles it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Msg {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// Close code (if any) and reason.
    Close(Option<u16>, Vec<u8>),
}

impl Msg {
    /// The text of a text message; panics on anything else.
    pub(crate) fn text(&self) -> String {
        match self {
            Msg::Text(t) => String::from_utf8(t.clone()).expect("UTF-8 text"),
            other => panic!("expected a text message, got {}", other.describe()),
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Msg::Text(t) => format!(
                "Text({:?})",
                String::from_utf8_lossy(&t[..t.len().min(200)])
            ),
            Msg::Binary(b) => format!("Binary({} bytes)", b.len()),
            Msg::Ping(p) => format!("Ping({p:?})"),
            Msg::Pong(p) => format!("Pong({p:?})"),
            Msg::Close(c, r) => format!("Close({c:?}, {:?})", String::from_utf8_lossy(r)),
        }
    }
}

/// A raw WebSocket client: masked frames out, frames in, nothing hidden.
#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) stream: TcpStream,
    buf: Vec<u8>,
    mask: [u8; 4],
    /// A fragmented data message in progress (control frames may come between fragments).
    partial: Option<(u8, Vec<u8>)>,
}

impl Client {
    /// Wraps a connected stream (no handshake yet).
    pub(crate) fn new(stream: TcpStream) -> Client {
        Client {
            stream,
            buf: Vec::new(),
            mask: [0x37, 0xfa, 0x21, 0x3d],
            partial: None,
        }
    }

    /// Connects from `src` and completes the handshake for `path`, offering `protocol`.
    pub(crate) async fn connect(
        src: IpAddr,
        addr: SocketAddr,
        path: &str,
        protocol: Option<&str>,
    ) -> Client {
        let mut c = Client::new(tcp_from(src, addr, None).await);
        let head = c.handshake(path, protocol).await;
        assert_eq!(head.status(), 101, "handshake for {path}: {}", head.text());
        c
    }

    /// Sends the upgrade request and reads the response head.
    pub(crate) async fn handshake(&mut self, path: &str, protocol: Option<&str>) -> Head {
        let extra: Vec<(&str, &str)> = protocol
            .map(|p| vec![("Sec-WebSocket-Protocol", p)])
            .unwrap_or_default();
        let request = upgrade_head(path, "edge.test", &extra);
        self.stream
            .write_all(request.as_bytes())
            .await
            .expect("send upgrade request");
        let head = tokio::time::timeout(Duration::from_secs(15), self.read_head())
            .await
            .unwrap_or_else(|_| panic!("no response head within 15 s for {path}"))
            .unwrap_or_else(|e| panic!("no response head for {path}: {e}"));
        if head.status() == 101 {
            assert_eq!(head.get("sec-websocket-accept"), Some(TEST_ACCEPT));
        }
        head
    }

    async fn fill(&mut self) -> io::Result<usize> {
        self.buf.reserve(8192);
        self.stream.read_buf(&mut self.buf).await
    }

    async fn read_head(&mut self) -> io::Result<Head> {
        loop {
            if let Some(end) = head_end(&self.buf) {
                let head = Head::parse(&self.buf[..end]);
                self.buf.drain(..end);
                if self.buf.is_empty() {
                    self.buf = Vec::new();
                }
                return Ok(head);
            }
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "end of stream before a complete head",
                ));
            }
        }
    }

    /// Sends raw bytes.
    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Sends one masked frame.
    pub(crate) async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let bytes = frame(fin, opcode, payload, Some(self.mask));
        self.stream.write_all(&bytes).await.expect("send frame");
    }

    /// Sends one whole text message (a single frame).
    pub(crate) async fn send_text(&mut self, text: &str) {
        self.send_frame(true, 0x1, text.as_bytes()).await;
    }

    /// Sends one whole binary message (a single frame).
    pub(crate) async fn send_binary(&mut self, data: &[u8]) {
        self.send_frame(true, 0x2, data).await;
    }

    /// Sends a Close frame with `code`.
    pub(crate) async fn send_close(&mut self, code: u16) {
        self.send_frame(true, OP_CLOSE, &code.to_be_bytes()).await;
    }

    /// Reads one frame.
    pub(crate) async fn read_frame(&mut self) -> io::Result<Frame> {
        loop {
            if let Some(&b0) = self.buf.first()
                && !matches!(b0 & 0x0F, 0x0..=0x2 | 0x8..=0xA)
            {
                let shown = String::from_utf8_lossy(&self.buf[..self.buf.len().min(80)]);
                return Err(io::Error::other(format!(
                    "not a WebSocket frame (opcode {:#x}): the edge wrote {shown:?}",
                    b0 & 0x0F
                )));
            }
            if let Some((f, used)) = decode_frame(&self.buf) {
                self.buf.drain(..used);
                if self.buf.is_empty() && self.buf.capacity() > 65536 {
                    self.buf = Vec::new();
                }
                return Ok(f);
            }
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "end of stream inside or before a frame",
                ));
            }
        }
    }

    /// Reads the next message (data fragments reassembled; control frames as they come).
    /// Panics on an end of stream, a masked server frame, or after `limit`.
    pub(crate) async fn read_msg_within(&mut self, limit: Duration) -> Msg {
        match tokio::time::timeout(limit, self.read_msg_inner()).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => panic!("reading a message: {e}"),
            Err(_) => panic!("no message within {limit:?}"),
        }
    }

    /// [`Client::read_msg_within`] with 20 s.
    pub(crate) async fn read_msg(&mut self) -> Msg {
        self.read_msg_within(Duration::from_secs(20)).await
    }

    /// The next data or close message, skipping pings and pongs.
    pub(crate) async fn read_data(&mut self) -> Msg {
        loop {
            match self.read_msg().await {
                Msg::Ping(_) | Msg::Pong(_) => continue,
                m => return m,
            }
        }
    }

    async fn read_msg_inner(&mut self) -> io::Result<Msg> {
        loop {
            let f = self.read_frame().await?;
            if f.masked {
                return Err(io::Error::other("the server sent a masked frame"));
            }
            match f.opcode {
                OP_PING => return Ok(Msg::Ping(f.payload)),
                OP_PONG => return Ok(Msg::Pong(f.payload)),
                OP_CLOSE => {
                    let code = (f.payload.len() >= 2)
                        .then(|| u16::from_be_bytes([f.payload[0], f.payload[1]]));
                    let reason = f.payload.get(2..).unwrap_or_default().to_vec();
                    return Ok(Msg::Close(code, reason));
                }
                OP_CONT => match self.partial.as_mut() {
                    Some((_, acc)) => acc.extend_from_slice(&f.payload),
                    None => return Err(io::Error::other("continuation without a message")),
                },
                op @ (0x1 | 0x2) => {
                    if self.partial.is_some() {
                        return Err(io::Error::other("new message inside a fragmented one"));
                    }
                    self.partial = Some((op, f.payload));
                }
                op => return Err(io::Error::other(format!("unexpected opcode {op:#x}"))),
            }
            if f.fin {
                let (op, payload) = self.partial.take().expect("data frame");
                return Ok(if op == 0x1 {
                    Msg::Text(payload)
                } else {
                    Msg::Binary(payload)
                });
            }
        }
    }

    /// Waits for the end of the TCP stream (end or reset), discarding what arrives; `false`
    /// if it is still open after `limit`.
    pub(crate) async fn wait_eof(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, async {
            loop {
                self.buf.clear();
                match self.fill().await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }

    /// Asserts that nothing arrives within `quiet` (the connection stays open and silent).
    pub(crate) async fn assert_silent(&mut self, quiet: Duration) {
        if let Ok(r) = tokio::time::timeout(quiet, self.read_msg_inner()).await {
            match r {
                Ok(m) => panic!("expected silence, got {}", m.describe()),
                Err(e) => panic!("expected silence, got an error: {e}"),
            }
        }
    }
}
