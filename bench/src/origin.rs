//! The fast echo origin: a small, conformant WebSocket echo server plus the demo page.
//!
//! `GET /` without upgrade headers returns [`DEMO_PAGE`], a page that opens a WebSocket to
//! the same host and shows what comes back. An upgrade request on any path becomes an echo
//! WebSocket: text and binary messages (fragmented or not) come back as one frame each, pings
//! are answered, the close handshake is completed, and protocol errors (reserved bits or
//! opcodes, unmasked client frames, bad control frames, invalid UTF-8 in text or close
//! reasons, invalid close codes) end the connection with the RFC 6455 close code.
//!
//! The hot path is hand-written over a tokio `TcpStream`: every complete frame in the read
//! buffer is answered into one output buffer written with a single `write_all`, so a
//! pipelining client is answered in batches. An idle connection holds no read buffer: the
//! handshake buffer is released once the upgrade is done and one is allocated on first data.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::frame::{self, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT};

/// The page served on `GET /`: opens `ws://<same host>/ws` (`wss://` when the page came over
/// https, through a TLS-terminating wsedge), sends "hello", shows the echoes.
pub const DEMO_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>wsedge demo</title>
<style>body{font-family:sans-serif;max-width:40em;margin:2em auto}#log{border:1px solid #ccc;padding:.5em;min-height:8em;white-space:pre-wrap}</style>
</head><body>
<h1>wsedge demo: echo</h1>
<p>Status: <span id="status">connecting</span></p>
<form id="f"><input id="msg" autocomplete="off" value="hi there"> <button id="send" type="submit">Send</button></form>
<div id="log"></div>
<script>
const log = document.getElementById("log");
const status = document.getElementById("status");
const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
function line(t) { const d = document.createElement("div"); d.className = "echo"; d.textContent = t; log.appendChild(d); }
ws.onopen = () => { status.textContent = "open"; ws.send("hello"); };
ws.onmessage = (e) => line("echo: " + e.data);
ws.onclose = (e) => { status.textContent = "closed (" + e.code + ")"; };
ws.onerror = () => { status.textContent = "error"; };
document.getElementById("f").onsubmit = (e) => {
  e.preventDefault();
  const m = document.getElementById("msg");
  if (ws.readyState === WebSocket.OPEN) ws.send(m.value);
};
</script>
</body></html>
"#;

/// Largest message (after reassembly) the origin accepts; larger ones close with 1009.
const MAX_MESSAGE: u64 = 64 << 20;
/// Largest request head.
const MAX_HEAD: usize = 16 << 10;
/// Read size once a connection carries data.
const READ_CHUNK: usize = 64 << 10;

/// Binds `addr` with a deep backlog and serves connections until the process ends.
pub async fn run(addr: SocketAddr) -> io::Result<()> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    let listener = sock.listen(4096)?;
    eprintln!("wsedge-origin: listening on {}", listener.local_addr()?);
    serve_listener(listener).await
}

/// Serves connections accepted on `listener` until the process ends.
pub async fn serve_listener(listener: tokio::net::TcpListener) -> io::Result<()> {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                tokio::spawn(async move {
                    let _ = serve(s).await;
                });
            }
            Err(e) => {
                // EMFILE and friends: back off briefly rather than spin.
                eprintln!("wsedge-origin: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

fn header_has_token(value: &[u8], token: &str) -> bool {
    std::str::from_utf8(value)
        .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        .unwrap_or(false)
}

async fn respond(s: &mut TcpStream, status: &str, ctype: &str, body: &str) -> io::Result<()> {
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(resp.as_bytes()).await?;
    s.shutdown().await
}

/// What the origin needs from a request head.
#[derive(Debug)]
struct Head {
    upgrade: bool,
    key: Option<Vec<u8>>,
    version: Option<Vec<u8>>,
    path: String,
}

/// Parses a complete head (kept out of the async fn so the header array is not part of
/// every connection's future).
fn parse_head(head: &[u8]) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    let (mut upgrade, mut connection, mut key, mut version) = (false, false, None, None);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade |= header_has_token(h.value, "websocket");
        } else if h.name.eq_ignore_ascii_case("connection") {
            connection |= header_has_token(h.value, "upgrade");
        } else if h.name.eq_ignore_ascii_case("sec-websocket-key") {
            key = Some(h.value.to_vec());
        } else if h.name.eq_ignore_ascii_case("sec-websocket-version") {
            version = Some(h.value.to_vec());
        }
    }
    Some(Head {
        upgrade: upgrade && connection && req.method == Some("GET"),
        key,
        version,
        path: req.path.unwrap_or("/").to_owned(),
    })
}

/// Serves one accepted connection: the HTTP head, then either the page or an echo WebSocket.
async fn serve(mut s: TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let end = loop {
        if let Some(end) = frame::head_end(&buf) {
            break end;
        }
        if buf.len() > MAX_HEAD {
            return respond(
                &mut s,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            )
            .await;
        }
        buf.reserve(1024);
        if s.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    };
    let Some(Head {
        upgrade,
        key,
        version,
        path,
    }) = parse_head(&buf[..end])
    else {
        return respond(&mut s, "400 Bad Request", "text/plain", "bad request\n").await;
    };
    if upgrade {
        let Some(key) = key else {
            return respond(&mut s, "400 Bad Request", "text/plain", "missing key\n").await;
        };
        if version.as_deref() != Some(b"13") {
            let resp = "HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
            s.write_all(resp.as_bytes()).await?;
            return Ok(());
        }
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            frame::accept_key(&key)
        );
        s.write_all(resp.as_bytes()).await?;
        // Keep only bytes that followed the head; an idle connection then holds no buffer.
        let rest = if buf.len() > end {
            buf[end..].to_vec()
        } else {
            Vec::new()
        };
        drop(buf);
        return echo(s, rest).await;
    }
    if path == "/" || path == "/index.html" {
        respond(&mut s, "200 OK", "text/html; charset=utf-8", DEMO_PAGE).await
    } else {
        respond(&mut s, "404 Not Found", "text/plain", "not found\n").await
    }
}

/// Per-connection message state.
#[derive(Debug, Default)]
struct Session {
    /// Opcode of the fragmented message being reassembled.
    frag_op: Option<u8>,
    /// Its payload so far.
    frag: Vec<u8>,
    /// Bytes of `frag` known to be valid UTF-8 (text messages).
    frag_valid: usize,
    /// Frames to send.
    out: Vec<u8>,
    /// A Close was queued; write `out` and end.
    closing: bool,
}

impl Session {
    fn fail(&mut self, code: u16) {
        frame::write_header(&mut self.out, OP_CLOSE, 2, None);
        self.out.extend_from_slice(&code.to_be_bytes());
        self.closing = true;
    }

    /// Checks `frag[frag_valid..]` incrementally; false on a definite UTF-8 error.
    fn check_frag_utf8(&mut self) -> bool {
        match std::str::from_utf8(&self.frag[self.frag_valid..]) {
            Ok(_) => {
                self.frag_valid = self.frag.len();
                true
            }
            Err(e) if e.error_len().is_some() => false,
            Err(e) => {
                self.frag_valid += e.valid_up_to();
                true
            }
        }
    }

    /// Handles one complete, unmasked frame.
    fn frame(&mut self, h: &frame::Header, payload: &[u8]) {
        match h.opcode {
            OP_TEXT | OP_BINARY if self.frag_op.is_some() => self.fail(1002),
            OP_TEXT | OP_BINARY if h.fin => {
                if h.opcode == OP_TEXT && std::str::from_utf8(payload).is_err() {
                    return self.fail(1007);
                }
                frame::write_header(&mut self.out, h.opcode, payload.len(), None);
                self.out.extend_from_slice(payload);
            }
            OP_TEXT | OP_BINARY => {
                self.frag_op = Some(h.opcode);
                self.frag.extend_from_slice(payload);
                self.frag_valid = 0;
                if h.opcode == OP_TEXT && !self.check_frag_utf8() {
                    self.fail(1007);
                }
            }
            OP_CONT => {
                let Some(op) = self.frag_op else {
                    return self.fail(1002);
                };
                if self.frag.len() as u64 + payload.len() as u64 > MAX_MESSAGE {
                    return self.fail(1009);
                }
                self.frag.extend_from_slice(payload);
                if op == OP_TEXT && !self.check_frag_utf8() {
                    return self.fail(1007);
                }
                if h.fin {
                    if op == OP_TEXT && self.frag_valid != self.frag.len() {
                        return self.fail(1007);
                    }
                    let msg = std::mem::take(&mut self.frag);
                    frame::write_header(&mut self.out, op, msg.len(), None);
                    self.out.extend_from_slice(&msg);
                    self.frag_op = None;
                    self.frag_valid = 0;
                }
            }
            OP_PING => {
                frame::write_header(&mut self.out, OP_PONG, payload.len(), None);
                self.out.extend_from_slice(payload);
            }
            OP_PONG => {}
            OP_CLOSE => {
                if payload.is_empty() {
                    frame::write_header(&mut self.out, OP_CLOSE, 0, None);
                    self.closing = true;
                    return;
                }
                if payload.len() < 2 {
                    return self.fail(1002);
                }
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
                if !valid {
                    return self.fail(1002);
                }
                if std::str::from_utf8(&payload[2..]).is_err() {
                    return self.fail(1007);
                }
                frame::write_header(&mut self.out, OP_CLOSE, 2, None);
                self.out.extend_from_slice(&code.to_be_bytes());
                self.closing = true;
            }
            _ => self.fail(1002),
        }
    }
}

/// Checks a header against the rules that do not need the payload; the close code if broken.
fn header_error(h: &frame::Header) -> Option<u16> {
    if h.rsv != 0 || h.mask.is_none() {
        return Some(1002);
    }
    match h.opcode {
        OP_CONT | OP_TEXT | OP_BINARY => (h.len > MAX_MESSAGE).then_some(1009),
        OP_CLOSE | OP_PING | OP_PONG => (!h.fin || h.len > 125).then_some(1002),
        _ => Some(1002),
    }
}

/// The echo loop of one upgraded connection; `buf` holds bytes that followed the head.
async fn echo(mut s: TcpStream, mut buf: Vec<u8>) -> io::Result<()> {
    let mut st = Session::default();
    let mut pos = 0usize;
    loop {
        // Answer every complete frame in the buffer.
        while !st.closing {
            let Some(h) = frame::parse_header(&buf[pos..]) else {
                break;
            };
            if let Some(code) = header_error(&h) {
                st.fail(code);
                break;
            }
            let total = h.header_len + h.len as usize;
            if buf.len() - pos < total {
                // Make room for the rest of this frame in one go.
                if pos > 0 {
                    buf.drain(..pos);
                    pos = 0;
                }
                buf.reserve(total - buf.len());
                break;
            }
            let body = &mut buf[pos + h.header_len..pos + total];
            frame::apply_mask(body, h.mask.unwrap_or_default(), 0);
            st.frame(&h, body);
            pos += total;
        }
        if pos == buf.len() {
            buf.clear();
            pos = 0;
        }
        if !st.out.is_empty() {
            s.write_all(&st.out).await?;
            st.out.clear();
            if st.out.capacity() > 4 * READ_CHUNK {
                st.out.shrink_to(READ_CHUNK);
            }
        }
        if st.closing {
            // The server closes the TCP connection first (RFC 6455 7.1.1).
            let _ = s.shutdown().await;
            return Ok(());
        }
        if buf.capacity() == 0 {
            // Idle connections hold no buffer until their peer sends something.
            s.readable().await?;
        }
        if buf.capacity() - buf.len() < 4096 {
            if pos > 0 {
                buf.drain(..pos);
                pos = 0;
            }
            buf.reserve(READ_CHUNK);
        }
        if s.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}
