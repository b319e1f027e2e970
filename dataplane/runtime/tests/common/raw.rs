//! Raw-TCP clients: hand-written HTTP heads, a minimal WebSocket frame encoder (client frames
//! are masked) and decoder, and tolerant readers for answers that end with a close or reset.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// The key of RFC 6455's example; its accept value is [`TEST_ACCEPT`].
pub(crate) const TEST_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub(crate) const TEST_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

pub(crate) const OP_CONT: u8 = 0x0;
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xA;

/// A parsed HTTP head (request or response).
#[derive(Debug, Clone)]
pub(crate) struct Head {
    /// The first line, without CRLF.
    pub(crate) start_line: String,
    /// Header lines in order, names as sent, values trimmed.
    pub(crate) headers: Vec<(String, String)>,
    /// The exact bytes, up to and including the blank line.
    pub(crate) raw: Vec<u8>,
}

impl Head {
    /// Parses `raw` (which ends with CRLF CRLF).
    pub(crate) fn parse(raw: &[u8]) -> Head {
        let text = String::from_utf8_lossy(raw);
        let mut lines = text.split("\r\n");
        let start_line = lines.next().unwrap_or("").to_string();
        let headers = lines
            .filter(|l| !l.is_empty())
            .map(|l| match l.split_once(':') {
                Some((n, v)) => (n.to_string(), v.trim().to_string()),
                None => (l.to_string(), String::new()),
            })
            .collect();
        Head {
            start_line,
            headers,
            raw: raw.to_vec(),
        }
    }

    /// The status code of a response head.
    pub(crate) fn status(&self) -> u16 {
        let mut parts = self.start_line.split(' ');
        let version = parts.next().unwrap_or("");
        assert!(
            version.starts_with("HTTP/1."),
            "not a response line: {:?}",
            self.start_line
        );
        parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {:?}", self.start_line))
    }

    /// The request target of a request head.
    pub(crate) fn target(&self) -> &str {
        self.start_line.split(' ').nth(1).unwrap_or("")
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub(crate) fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The only value of header `name`; panics if it appears more than once.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(
            all.len() <= 1,
            "header {name} appears {} times in {:?}",
            all.len(),
            String::from_utf8_lossy(&self.raw)
        );
        all.first().copied()
    }

    /// Whether header `name` (a comma list) has `token`, case-insensitively.
    pub(crate) fn has_token(&self, name: &str, token: &str) -> bool {
        self.all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    pub(crate) fn content_length(&self) -> Option<usize> {
        self.get("content-length").and_then(|v| v.parse().ok())
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }
}

/// Where the blank line ending a head is, if it is in `buf`: the head's length.
pub(crate) fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// A WebSocket handshake request for `path` with `Host: host` and [`TEST_KEY`], plus `extra`
/// header lines.
pub(crate) fn upgrade_head(path: &str, host: &str, extra: &[(&str, &str)]) -> String {
    let mut s = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {TEST_KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (n, v) in extra {
        s.push_str(&format!("{n}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s
}

/// A client frame: FIN set, masked with `mask`.
pub(crate) fn client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    frame(true, opcode, payload, Some(mask))
}

/// A server frame: FIN set, unmasked.
pub(crate) fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(true, opcode, payload, None)
}

/// Encodes one frame (RFC 6455 section 5.2).
pub(crate) fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | (opcode & 0x0F));
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= 0xFFFF {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) fin: bool,
    pub(crate) opcode: u8,
    pub(crate) masked: bool,
    pub(crate) payload: Vec<u8>,
}

/// Decodes one frame from the front of `buf`: `Some((frame, bytes used))`, or `None` if `buf`
/// does not hold a whole frame yet.
pub(crate) fn decode_frame(buf: &[u8]) -> Option<(Frame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0F;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut pos) = match buf[1] & 0x7F {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        n => (n as usize, 2),
    };
    let mask = if masked {
        if buf.len() < pos + 4 {
            return None;
        }
        let m = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
        pos += 4;
        Some(m)
    } else {
        None
    };
    if buf.len() < pos + len {
        return None;
    }
    let mut payload = buf[pos..pos + len].to_vec();
    if let Some(m) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    Some((
        Frame {
            fin,
            opcode,
            masked,
            payload,
        },
        pos + len,
    ))
}

/// A raw TCP connection with a read buffer (bytes read past a head stay for the next read).
#[derive(Debug)]
pub(crate) struct RawConn {
    pub(crate) stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    pub(crate) async fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).expect("nodelay");
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// A connection to `addr` from source address `ip` (a loopback address other than
    /// 127.0.0.1: the listeners steer clients to workers by source address).
    pub(crate) async fn connect_from(ip: std::net::IpAddr, addr: SocketAddr) -> RawConn {
        let socket = match ip {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .expect("socket");
        socket
            .bind(SocketAddr::new(ip, 0))
            .unwrap_or_else(|e| panic!("bind {ip}: {e}"));
        let stream = socket
            .connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr} from {ip}: {e}"));
        stream.set_nodelay(true).expect("nodelay");
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes all of `bytes` in one write call sequence (one `write_all`).
    pub(crate) async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads more bytes into the buffer; `Ok(0)` at end of stream.
    async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads one HTTP head; the bytes after it stay buffered.
    pub(crate) async fn read_head(&mut self) -> io::Result<Head> {
        loop {
            if let Some(end) = head_end(&self.buf) {
                let head = Head::parse(&self.buf[..end]);
                self.buf.drain(..end);
                return Ok(head);
            }
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "end of stream before a complete head; got {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        }
    }

    /// Reads a response body: `Content-Length` bytes, or (without one) up to the end of the
    /// stream, an error, or `limit` of quiet time.
    pub(crate) async fn read_body(&mut self, head: &Head, limit: Duration) -> Vec<u8> {
        match head.content_length() {
            Some(n) => {
                while self.buf.len() < n {
                    match tokio::time::timeout(limit, self.fill()).await {
                        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                        Ok(Ok(_)) => {}
                    }
                }
                let take = n.min(self.buf.len());
                self.buf.drain(..take).collect()
            }
            None => {
                while let Ok(Ok(n)) = tokio::time::timeout(limit, self.fill()).await {
                    if n == 0 {
                        break;
                    }
                }
                std::mem::take(&mut self.buf)
            }
        }
    }

    /// Reads one WebSocket frame.
    pub(crate) async fn read_frame(&mut self) -> io::Result<Frame> {
        loop {
            if let Some((f, used)) = decode_frame(&self.buf) {
                self.buf.drain(..used);
                return Ok(f);
            }
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "end of stream inside a frame",
                ));
            }
        }
    }

    /// Reads until the peer closes (end of stream or reset): returns the bytes received before
    /// that (buffered ones included), or `None` if the connection is still open after `limit`.
    pub(crate) async fn read_until_closed(&mut self, limit: Duration) -> Option<Vec<u8>> {
        let closed = tokio::time::timeout(limit, async {
            loop {
                match self.fill().await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        closed.ok().map(|()| std::mem::take(&mut self.buf))
    }
}

/// Sends `request` on a new connection and reads the response head and body. Write errors are
/// ignored (a proxy may answer and close before reading a large request), and so is an end or
/// reset after the head.
pub(crate) async fn http_exchange(addr: SocketAddr, request: &[u8]) -> (Head, Vec<u8>) {
    let mut c = RawConn::connect(addr).await;
    let _ = c.send(request).await;
    let shown = String::from_utf8_lossy(&request[..request.len().min(300)]).into_owned();
    let head = tokio::time::timeout(Duration::from_secs(15), c.read_head())
        .await
        .unwrap_or_else(|_| panic!("no response head within 15 s for request {shown:?}"))
        .unwrap_or_else(|e| panic!("no response head for request {shown:?}: {e}"));
    let body = c.read_body(&head, Duration::from_secs(3)).await;
    (head, body)
}

/// The `Sec-WebSocket-Accept` value for a request key.
pub(crate) fn accept_for(key: &str) -> String {
    derive_accept_key(key.as_bytes())
}
