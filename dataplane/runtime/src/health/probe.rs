//! The active checks themselves, blocking, on a thread of their own: a TCP connect, or a
//! WebSocket handshake to the configured path that must be answered `101` with the right
//! `Sec-WebSocket-Accept` (then a Close frame ends it politely), over TLS when the route's
//! origins speak it (verified as the route's connections are: a certificate the route does
//! not trust fails the check). Everything ends within the check's timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use wsedge_command::CheckKind;
use wsedge_proto::accept::accept_key;
use wsedge_proto::handshake::HeadLimits;
use wsedge_proto::health::Failure;
use wsedge_proto::response::parse_response;

/// The key every check sends (its accept value is checked, so any fixed key does, as long
/// as it is the base64 of 16 bytes, as RFC 6455 requires: strict origins such as
/// tungstenite refuse any other with a 400). "wsedge-health-ke".
const KEY: &str = "d3NlZGdlLWhlYWx0aC1rZQ==";
/// A masked Close 1000 "health check" (client frames are masked; the mask is zero).
const CLOSE: &[u8] = &[
    0x88, 0x8e, 0, 0, 0, 0, 0x03, 0xe8, b'h', b'e', b'a', b'l', b't', b'h', b' ', b'c', b'h', b'e',
    b'c', b'k',
];

/// Runs one check of `addr` within `timeout` (`tls`: the route's TLS to its origins).
pub(crate) fn run(
    kind: &CheckKind,
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&wsedge_tls::OriginTls>,
) -> Result<(), Failure> {
    let started = Instant::now();
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| {
        if e.kind() == std::io::ErrorKind::TimedOut || e.kind() == std::io::ErrorKind::WouldBlock {
            Failure::ConnectTimeout
        } else {
            Failure::ConnectFailed
        }
    })?;
    match kind {
        CheckKind::Tcp => Ok(()),
        CheckKind::WebSocket { path } => {
            let left = timeout.saturating_sub(started.elapsed());
            let _ = stream.set_nodelay(true);
            match tls {
                None => handshake(stream, addr, path, left, timeouts),
                Some(tls) => {
                    let conn = wsedge_tls::rustls::ClientConnection::new(
                        tls.config().clone(),
                        tls.server_name_for(addr.ip()),
                    )
                    .map_err(|_| Failure::ConnectFailed)?;
                    let stream = wsedge_tls::rustls::StreamOwned::new(conn, stream);
                    handshake(stream, addr, path, left, |s, d| timeouts(&s.sock, d))
                }
            }
        }
    }
}

fn handshake<S: Read + Write>(
    mut stream: S,
    addr: SocketAddr,
    path: &str,
    left: Duration,
    set_timeouts: impl Fn(&S, Duration) -> std::io::Result<()>,
) -> Result<(), Failure> {
    if left.is_zero() {
        return Err(Failure::Timeout);
    }
    let deadline = Instant::now() + left;
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: wsedge-health\r\n\r\n"
    );
    set_timeouts(&stream, left).map_err(|_| Failure::ConnectFailed)?;
    stream.write_all(head.as_bytes()).map_err(io_failure)?;
    let accept = accept_key(KEY.as_bytes());
    let limits = HeadLimits::default();
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure::Timeout);
        }
        set_timeouts(&stream, left).map_err(|_| Failure::BadAnswer)?;
        let n = match stream.read(&mut chunk) {
            // A read with a timeout is never restarted after a signal (signal(7)): try again
            // within what is left.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => r.map_err(io_failure)?,
        };
        if n == 0 {
            return Err(Failure::BadAnswer);
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_response(&buf, &limits, Some(&accept)) {
            Ok(None) => continue,
            Ok(Some(r)) if r.upgraded => {
                // The socket closes when the stream is dropped.
                let _ = stream.write_all(CLOSE);
                let _ = stream.flush();
                return Ok(());
            }
            Ok(Some(r)) => return Err(Failure::Status(r.status)),
            Err(_) => return Err(Failure::BadAnswer),
        }
    }
}

/// Both timeouts of the socket under a check.
fn timeouts(s: &TcpStream, d: Duration) -> std::io::Result<()> {
    s.set_read_timeout(Some(d))?;
    s.set_write_timeout(Some(d))
}

fn io_failure(e: std::io::Error) -> Failure {
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => Failure::Timeout,
        _ => Failure::BadAnswer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-shot origin answering the first request head with `answer(key)`.
    fn origin(answer: impl FnOnce(&str) -> Vec<u8> + Send + 'static) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = Vec::new();
            let mut chunk = [0u8; 512];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut chunk).expect("read");
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let text = String::from_utf8_lossy(&buf).to_string();
            let key = text
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap_or("")
                .to_owned();
            let _ = s.write_all(&answer(&key));
            std::thread::sleep(Duration::from_millis(200));
        });
        addr
    }

    fn ws() -> CheckKind {
        CheckKind::WebSocket {
            path: "/healthz".into(),
        }
    }

    const T: Duration = Duration::from_millis(500);

    #[test]
    fn a_101_with_the_right_accept_passes() {
        let addr = origin(|key| {
            let accept = accept_key(key.as_bytes());
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                std::str::from_utf8(&accept).expect("ascii")
            )
            .into_bytes()
        });
        assert_eq!(run(&ws(), addr, T, None), Ok(()));
    }

    #[test]
    fn a_wrong_accept_or_another_status_fails() {
        let addr = origin(|_| {
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n".to_vec()
        });
        assert_eq!(run(&ws(), addr, T, None), Err(Failure::BadAnswer));
        let addr = origin(|_| b"HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec());
        assert_eq!(run(&ws(), addr, T, None), Err(Failure::Status(503)));
    }

    #[test]
    fn the_key_is_sixteen_bytes_in_base64() {
        let decoded: Vec<u8> = {
            // A tiny decoder: the key uses no '+' or '/'.
            let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let mut bits = 0u32;
            let mut n = 0;
            let mut out = Vec::new();
            for c in KEY.bytes().filter(|c| *c != b'=') {
                let v = alphabet.iter().position(|a| *a == c).expect("base64") as u32;
                bits = (bits << 6) | v;
                n += 6;
                if n >= 8 {
                    n -= 8;
                    out.push((bits >> n) as u8);
                }
            }
            out
        };
        assert_eq!(decoded, b"wsedge-health-ke");
    }

    #[test]
    fn silence_is_a_timeout_and_a_closed_port_a_connect_failure() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        // A peer that accepts and holds the connection but never answers.
        let silent = std::thread::spawn({
            let listener = listener.try_clone().expect("clone");
            move || listener.accept().map(|(held, _)| held)
        });
        let started = Instant::now();
        assert_eq!(run(&ws(), addr, T, None), Err(Failure::Timeout));
        assert!(started.elapsed() < T + Duration::from_millis(300));
        // A listening socket passes a TCP check even if it never answers.
        assert_eq!(run(&CheckKind::Tcp, addr, T, None), Ok(()));
        drop(silent.join().expect("silent peer"));
        drop(listener);
        assert_eq!(
            run(&CheckKind::Tcp, addr, T, None),
            Err(Failure::ConnectFailed)
        );
    }
}
