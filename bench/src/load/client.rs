//! Client connections for the load generator: target URL and source-address parsing,
//! TCP connect from a chosen source address, TLS for `wss://` targets, and the WebSocket
//! opening handshake.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll};

use anyhow::{Context, bail};
use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

use super::tls::{Facts, TlsClient};
use crate::frame;

/// Where the load goes: `ws://HOST:PORT/PATH` or `wss://HOST:PORT/PATH`.
#[derive(Debug, Clone)]
pub struct Target {
    /// Resolved address.
    pub addr: SocketAddr,
    /// `HOST:PORT` as written (with TLS, the server name and the port), for the Host header.
    pub host: String,
    /// Request path (with query), at least "/".
    pub path: String,
    /// The URL is `wss://`.
    pub wss: bool,
    /// The TLS client of a `wss://` target (set with [`Target::with_tls`]).
    pub tls: Option<Arc<TlsClient>>,
}

impl Target {
    /// Parses and resolves a `ws://` or `wss://` URL (a `wss://` target also needs
    /// [`Target::with_tls`] before connections open).
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let (rest, wss) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
            (Some(r), _) => (r, false),
            (_, Some(r)) => (r, true),
            _ => bail!("target must be a ws:// or wss:// URL"),
        };
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let with_port = if host.contains(':') {
            host.to_owned()
        } else if wss {
            format!("{host}:443")
        } else {
            format!("{host}:80")
        };
        let addr = with_port
            .to_socket_addrs()?
            .next()
            .with_context(|| format!("cannot resolve {host}"))?;
        if !addr.ip().is_loopback() {
            bail!("load only goes to loopback addresses (127.0.0.0/8, ::1): {addr}");
        }
        Ok(Self {
            addr,
            host: host.to_owned(),
            path: path.to_owned(),
            wss,
            tls: None,
        })
    }

    /// The same target reached over TLS with `client`. The Host header becomes the server
    /// name (with the port) when that is a DNS name: a TLS terminator may insist that Host
    /// and SNI agree (wsedge answers 421 otherwise).
    pub fn with_tls(mut self, client: TlsClient) -> Self {
        if client.name().parse::<IpAddr>().is_err() {
            self.host = format!("{}:{}", client.name(), self.addr.port());
        }
        self.tls = Some(Arc::new(client));
        self
    }

    /// The same target, its TLS client with a session cache of its own (see
    /// [`TlsClient::own_cache`]); a plain target as it is.
    pub fn own_session_cache(&self) -> Self {
        let mut t = self.clone();
        t.tls = self.tls.as_ref().map(|c| Arc::new(c.own_cache()));
        t
    }

    /// Fails for a `wss://` target: for the modes that only speak plain `ws://`.
    pub fn require_plain(&self, mode: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.wss,
            "{mode} mode does not run over wss:// (ws:// only)"
        );
        Ok(())
    }

    fn tls_client(&self) -> anyhow::Result<Option<&TlsClient>> {
        match (&self.tls, self.wss) {
            (Some(c), _) => Ok(Some(c)),
            (None, true) => bail!("a wss:// target needs --tls-ca"),
            (None, false) => Ok(None),
        }
    }
}

/// A client connection: plain TCP, or TLS over TCP for `wss://` targets.
#[derive(Debug)]
pub enum Conn {
    /// `ws://`.
    Tcp(TcpStream),
    /// `wss://`.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Conn {
    /// The TCP stream of a plain connection (the modes that need the socket itself).
    pub fn into_tcp(self) -> anyhow::Result<TcpStream> {
        match self {
            Conn::Tcp(s) => Ok(s),
            Conn::Tls(_) => bail!("this mode needs plain ws:// connections"),
        }
    }

    /// What the TLS handshake negotiated (None on a plain connection).
    pub fn tls_facts(&self) -> Option<Facts> {
        match self {
            Conn::Tcp(_) => None,
            Conn::Tls(s) => Some(Facts::of(s.get_ref().1)),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Source addresses client sockets bind to, used in turn.
#[derive(Debug, Default)]
pub struct SourceAddrs {
    addrs: Vec<IpAddr>,
    next: AtomicUsize,
}

impl SourceAddrs {
    /// Parses `127.0.0.1-127.0.0.50` (an IPv4 range), a comma list, or a single address.
    pub fn parse(spec: Option<&str>) -> anyhow::Result<Self> {
        let mut addrs = Vec::new();
        if let Some(spec) = spec {
            for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                if let Some((a, b)) = part.split_once('-') {
                    let a: Ipv4Addr = a.trim().parse().context("bad range start")?;
                    let b: Ipv4Addr = b.trim().parse().context("bad range end")?;
                    let (a, b) = (u32::from(a), u32::from(b));
                    if b < a || b - a > 1 << 20 {
                        bail!("bad address range {part}");
                    }
                    addrs.extend((a..=b).map(|x| IpAddr::V4(Ipv4Addr::from(x))));
                } else {
                    addrs.push(part.parse().context("bad source address")?);
                }
            }
        }
        Ok(Self {
            addrs,
            next: AtomicUsize::new(0),
        })
    }

    /// Number of addresses (0 = let the kernel choose).
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// True when no source address was given.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// The next address in turn, if any were given.
    pub fn pick(&self) -> Option<IpAddr> {
        if self.addrs.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.addrs[i % self.addrs.len()])
    }
}

/// Opens a TCP connection to `addr`, bound to `src` if given (the port is chosen at connect
/// time with IP_BIND_ADDRESS_NO_PORT, so each source address has its own port range).
pub async fn connect(addr: SocketAddr, src: Option<IpAddr>) -> io::Result<TcpStream> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = src {
        set_bind_no_port(&sock);
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let s = sock.connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn set_bind_no_port(sock: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd and a pointer to a live c_int of the size passed.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// A fresh `Sec-WebSocket-Key` (not cryptographically random; servers only echo it back).
fn make_key() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed) as u64;
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    b[8..].copy_from_slice(&t.to_le_bytes());
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// The upgrade request for `t` with `key`.
fn upgrade_request(t: &Target, key: &str) -> String {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        t.path, t.host
    )
}

/// Checks a response head (through its blank line) is a 101 accepting `key`.
fn check_upgrade_response(head: &[u8], key: &str) -> anyhow::Result<()> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(head)?;
    if resp.code != Some(101) {
        bail!("handshake answered {:?}", resp.code);
    }
    let want = frame::accept_key(key.as_bytes());
    let ok = resp
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept") && h.value == want.as_bytes());
    if !ok {
        bail!("bad Sec-WebSocket-Accept");
    }
    Ok(())
}

/// Sends the upgrade request and reads the 101; returns bytes that followed the response head.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    t: &Target,
) -> anyhow::Result<Vec<u8>> {
    let key = make_key();
    s.write_all(upgrade_request(t, &key).as_bytes()).await?;
    // Over TLS the request may still sit in the session's buffer: send it before reading.
    s.flush().await?;
    let mut buf = Vec::with_capacity(512);
    let end = loop {
        if let Some(e) = frame::head_end(&buf) {
            break e;
        }
        if buf.len() > 16384 {
            bail!("response head too large");
        }
        buf.reserve(512);
        if s.read_buf(&mut buf).await? == 0 {
            bail!("connection closed during handshake");
        }
    };
    check_upgrade_response(&buf[..end], &key)?;
    Ok(buf[end..].to_vec())
}

/// The same handshake on a blocking socket (its read timeout bounds each read), plain or TLS;
/// returns the bytes that followed the response head. For probes timed on their own thread,
/// so the generator's event loop does not add to what they measure.
pub fn handshake_blocking<S: io::Read + io::Write + ?Sized>(
    s: &mut S,
    t: &Target,
) -> anyhow::Result<Vec<u8>> {
    let key = make_key();
    s.write_all(upgrade_request(t, &key).as_bytes())?;
    s.flush()?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    let end = loop {
        if let Some(e) = frame::head_end(&buf) {
            break e;
        }
        if buf.len() > 16384 {
            bail!("response head too large");
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed during handshake");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    check_upgrade_response(&buf[..end], &key)?;
    Ok(buf[end..].to_vec())
}

/// Connect + handshake in one call (plain `ws://` targets only).
pub async fn open(t: &Target, src: Option<IpAddr>) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    t.require_plain("this")?;
    let mut s = connect(t.addr, src).await?;
    let rest = handshake(&mut s, t).await?;
    Ok((s, rest))
}

/// Connect, TLS handshake for a `wss://` target, WebSocket handshake; returns the connection
/// and the bytes that followed the 101.
pub async fn open_conn(t: &Target, src: Option<IpAddr>) -> anyhow::Result<(Conn, Vec<u8>)> {
    let tls = t.tls_client()?;
    let tcp = connect(t.addr, src).await?;
    let mut s = match tls {
        None => Conn::Tcp(tcp),
        Some(c) => Conn::Tls(Box::new(c.connect(tcp).await.context("TLS handshake")?)),
    };
    let rest = handshake(&mut s, t).await?;
    Ok((s, rest))
}

/// Something a blocking probe reads and writes: a socket, or TLS over one.
pub trait BlockingStream: io::Read + io::Write + Send {}
impl<S: io::Read + io::Write + Send> BlockingStream for S {}

/// A blocking connection of a probe: the stream (plain or TLS) and its socket (a second
/// handle, for timeouts).
pub struct BlockingConn {
    /// Where the WebSocket bytes go.
    pub stream: Box<dyn BlockingStream>,
    /// The TCP socket under it.
    pub socket: std::net::TcpStream,
}

impl std::fmt::Debug for BlockingConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingConn")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

/// Connect (within `timeout`), TLS handshake for a `wss://` target and WebSocket handshake on
/// a blocking socket whose reads time out after `timeout`.
pub fn open_blocking(t: &Target, timeout: std::time::Duration) -> anyhow::Result<BlockingConn> {
    let tls = t.tls_client()?;
    let s = std::net::TcpStream::connect_timeout(&t.addr, timeout)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    let socket = s.try_clone()?;
    let mut stream: Box<dyn BlockingStream> = match tls {
        None => Box::new(s),
        Some(c) => Box::new(c.connect_blocking(s)?),
    };
    handshake_blocking(&mut *stream, t)?;
    Ok(BlockingConn { stream, socket })
}

/// Incremental parser of server→client frames that skips payloads without copying them.
#[derive(Debug, Default)]
pub struct FrameCounter {
    /// Payload bytes of the current frame still to skip.
    skip: u64,
    /// Bytes of a header split across reads.
    partial: Vec<u8>,
    /// FIN of the current frame.
    fin: bool,
}

impl FrameCounter {
    /// Consumes `data`; returns (complete data messages, payload bytes seen, saw close).
    pub fn feed(&mut self, mut data: &[u8]) -> (u64, u64, bool) {
        let (mut msgs, mut bytes, mut close) = (0u64, 0u64, false);
        loop {
            if self.skip > 0 {
                let n = (self.skip as usize).min(data.len());
                self.skip -= n as u64;
                bytes += n as u64;
                data = &data[n..];
                if self.skip > 0 {
                    return (msgs, bytes, close);
                }
                if self.fin {
                    msgs += 1;
                }
                continue;
            }
            if data.is_empty() {
                return (msgs, bytes, close);
            }
            let h = if self.partial.is_empty() {
                match frame::parse_header(data) {
                    Some(h) => {
                        data = &data[h.header_len..];
                        h
                    }
                    None => {
                        self.partial.extend_from_slice(data);
                        return (msgs, bytes, close);
                    }
                }
            } else {
                let old = self.partial.len();
                self.partial.extend_from_slice(&data[..data.len().min(14)]);
                match frame::parse_header(&self.partial) {
                    Some(h) => {
                        data = &data[h.header_len - old..];
                        self.partial.clear();
                        h
                    }
                    None => {
                        self.partial.truncate(old);
                        self.partial.extend_from_slice(data);
                        return (msgs, bytes, close);
                    }
                }
            };
            if h.opcode == frame::OP_CLOSE {
                close = true;
            }
            let is_data = h.opcode < 8;
            self.fin = h.fin && is_data;
            self.skip = h.len;
            if h.len == 0 && self.fin {
                msgs += 1;
            }
        }
    }
}

/// Writes all of `buf` on a blocking-API socket whose file is non-blocking (it is shared with
/// a reader's tokio handle): on a full send buffer, waits for POLLOUT. The paced senders of
/// the latency and fan-out modes write from plain threads with it.
pub fn write_all_blocking(s: &mut std::net::TcpStream, mut buf: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    while !buf.is_empty() {
        match s.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut p = libc::pollfd {
                    fd: s.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd for the duration of the call.
                unsafe { libc::poll(&mut p, 1, 100) };
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_split_frames() {
        let mut wire = Vec::new();
        for len in [0usize, 5, 200, 70_000] {
            frame::write_header(&mut wire, frame::OP_BINARY, len, None);
            wire.extend(std::iter::repeat_n(7u8, len));
        }
        for step in [1usize, 3, 13, 1000, wire.len()] {
            let mut c = FrameCounter::default();
            let (mut m, mut b) = (0, 0);
            for chunk in wire.chunks(step) {
                let (mm, bb, _) = c.feed(chunk);
                m += mm;
                b += bb;
            }
            assert_eq!((m, b), (4, 70_205), "step {step}");
        }
    }

    #[test]
    fn source_ranges() {
        let s = SourceAddrs::parse(Some("127.0.0.1-127.0.0.3,127.0.1.1")).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s.pick(), Some("127.0.0.1".parse().unwrap()));
    }
}
