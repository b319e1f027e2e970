//! The byte stream of a NATS link (nats.rs): plain TCP, or TLS over it for `tls://`
//! addresses, behind one `Read + Write` type so the protocol code is written once.
//!
//! A link reads on one thread and writes on another, so the stream splits like a
//! `TcpStream` does ([`Stream::try_clone`]). The TLS session (wsedge-tls's sans-IO
//! [`TlsClient`], the edge's own client: same crypto provider, trust store and certificate
//! messages) sits behind a mutex held only to feed or seal bytes, never across a blocking
//! socket read, so a reader waiting for the server never stops the writer. Timeouts are the
//! socket's own (`set_read_timeout`, `set_write_timeout` on the `TcpStream`).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};

use wsedge_tls::TlsClient;

/// Ciphertext read from the socket at once (a TLS record is at most ~16.6 KiB).
const READ_CHUNK: usize = 17 * 1024;

/// One half (or the whole) of a link's connection.
pub(crate) struct Stream {
    sock: TcpStream,
    tls: Option<Tls>,
}

/// The TLS side of a [`Stream`]: the session both halves share, and this half's buffers.
struct Tls {
    session: Arc<Mutex<TlsClient>>,
    /// Taken before the session is let go and held while the ciphertext is written, so
    /// records reach the socket in the order the session made them (the reader half too
    /// writes, rarely: a key update's answer, an alert).
    send: Arc<Mutex<()>>,
    /// Ciphertext read but not fed yet (the session takes less while plaintext waits).
    cipher: Vec<u8>,
    /// Plaintext taken from the session, not yet read; `plain_at` is where reading stands.
    plain: Vec<u8>,
    plain_at: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Stream {
    pub(crate) fn plain(sock: TcpStream) -> Stream {
        Stream { sock, tls: None }
    }

    /// Runs the TLS handshake of `session` on `sock` (within the socket's timeouts). The
    /// error says why, a certificate refusal with its reason.
    pub(crate) fn tls(sock: TcpStream, mut session: TlsClient) -> Result<Stream, String> {
        let mut sock = sock;
        let mut out = Vec::new();
        let mut cipher = Vec::new();
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            out.clear();
            session.take_ciphertext(&mut out);
            if !out.is_empty() {
                sock.write_all(&out)
                    .map_err(|e| format!("TLS handshake: {e}"))?;
            }
            if !session.is_handshaking() {
                break;
            }
            let n = sock
                .read(&mut chunk)
                .map_err(|e| format!("TLS handshake: {e}"))?;
            if n == 0 {
                return Err("TLS handshake: connection closed by the server".into());
            }
            cipher.extend_from_slice(&chunk[..n]);
            let progress = session.feed(&cipher).map_err(|e| e.to_string())?;
            cipher.drain(..progress.consumed);
        }
        Ok(Stream {
            sock,
            tls: Some(Tls {
                session: Arc::new(Mutex::new(session)),
                send: Arc::default(),
                // What followed the handshake's last record: the first application data.
                cipher,
                plain: Vec::new(),
                plain_at: 0,
            }),
        })
    }

    /// A second handle on the same connection (for the other thread): each reads what the
    /// other did not, both write in order. Read with one of them only.
    pub(crate) fn try_clone(&self) -> io::Result<Stream> {
        Ok(Stream {
            sock: self.sock.try_clone()?,
            tls: self.tls.as_ref().map(|t| Tls {
                session: Arc::clone(&t.session),
                send: Arc::clone(&t.send),
                cipher: Vec::new(),
                plain: Vec::new(),
                plain_at: 0,
            }),
        })
    }

    pub(crate) fn socket(&self) -> &TcpStream {
        &self.sock
    }

    /// Ends the connection both ways (the reading half then sees its end).
    pub(crate) fn shutdown(&self) {
        let _ = self.sock.shutdown(Shutdown::Both);
    }
}

/// Writes what `session` holds for the peer, in order (see [`Tls::send`]).
fn send_ciphertext(
    sock: &mut TcpStream,
    send: &Mutex<()>,
    mut session: MutexGuard<'_, TlsClient>,
) -> io::Result<()> {
    let mut out = Vec::new();
    session.take_ciphertext(&mut out);
    if out.is_empty() {
        return Ok(());
    }
    let _order = lock(send);
    drop(session);
    sock.write_all(&out)
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = &mut self.tls else {
            return self.sock.read(buf);
        };
        loop {
            if tls.plain_at < tls.plain.len() {
                let n = buf.len().min(tls.plain.len() - tls.plain_at);
                buf[..n].copy_from_slice(&tls.plain[tls.plain_at..tls.plain_at + n]);
                tls.plain_at += n;
                return Ok(n);
            }
            tls.plain.clear();
            tls.plain_at = 0;
            let mut session = lock(&tls.session);
            if !tls.cipher.is_empty() {
                let progress = session
                    .feed(&tls.cipher)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                tls.cipher.drain(..progress.consumed);
            }
            session.take_plaintext(&mut tls.plain);
            let closed = session.peer_closed();
            send_ciphertext(&mut self.sock, &tls.send, session)?;
            if !tls.plain.is_empty() {
                continue;
            }
            if closed {
                return Ok(0);
            }
            // Nothing to decrypt: wait for the server (the session is not held here).
            let at = tls.cipher.len();
            tls.cipher.resize(at + READ_CHUNK, 0);
            let n = self.sock.read(&mut tls.cipher[at..]);
            tls.cipher.truncate(at + *n.as_ref().unwrap_or(&0));
            if n? == 0 {
                return Ok(0);
            }
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(tls) = &self.tls else {
            return self.sock.write(buf);
        };
        let mut session = lock(&tls.session);
        session
            .seal(buf)
            .map_err(|e| io::Error::other(e.to_string()))?;
        send_ciphertext(&mut self.sock, &tls.send, session)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}
