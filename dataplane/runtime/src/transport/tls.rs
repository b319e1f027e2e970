//! The TLS variant of the transport: a client connection's [`TlsServer`], or a connection to
//! a TLS origin's [`TlsClient`] (rustls, sans-IO), between its socket and its session.
//!
//! - To an origin, the session's head is queued while the handshake runs (rustls keeps it
//!   and sends it encrypted right after); the ClientHello goes out when the connect
//!   completes, and a certificate the route does not trust fails the side (`failure`): the
//!   worker aborts with `CloseReason::OriginTls` and the session answers 502.
//!
//! - In: a head read's or stream read's ciphertext is fed to the server; what it decrypts
//!   goes to the session (in the same provided buffer when it fits, which is the usual case,
//!   else as bytes of its own). Handshake bytes give the session nothing.
//! - Out: each chunk the session queues is encrypted as it is queued; the ciphertext goes to
//!   the socket as one chunk of its own, and [`Segments`] remembers how much plaintext each
//!   ciphertext chunk carries, so a send completion is reported to the session in plaintext
//!   bytes (its backpressure and flush accounting never see TLS overhead).
//! - Records the server produces by itself (the handshake flight, session tickets, alerts,
//!   `close_notify`) come out of [`TlsTransport::flush`] and carry no plaintext.
//! - A failure (a refused or broken handshake, a bad record) keeps its error here: the
//!   worker writes the alert (or, for plain HTTP on the TLS port, a 400 in clear as nginx
//!   does), then ends the connection with `CloseReason::Tls` and counts the error's kind.

use std::collections::VecDeque;

use wsedge_proto::chunk::Chunk;
use wsedge_ring::{BufRing, Written};
use wsedge_tls::{
    HandshakeFacts, PLAINTEXT_HTTP_RESPONSE, Progress, TlsClient, TlsError, TlsServer,
};

use super::Sealed;

/// The TLS side of one socket: the edge as the server (a client's connection) or as the
/// client (to a TLS origin).
#[derive(Debug)]
enum Endpoint {
    Server(TlsServer),
    Client(TlsClient),
}

impl Endpoint {
    fn feed(&mut self, cipher: &[u8]) -> Result<Progress, TlsError> {
        match self {
            Endpoint::Server(s) => s.feed(cipher),
            Endpoint::Client(c) => c.feed(cipher),
        }
    }

    fn take_plaintext(&mut self, out: &mut Vec<u8>) -> usize {
        match self {
            Endpoint::Server(s) => s.take_plaintext(out),
            Endpoint::Client(c) => c.take_plaintext(out),
        }
    }

    fn take_ciphertext(&mut self, out: &mut Vec<u8>) -> usize {
        match self {
            Endpoint::Server(s) => s.take_ciphertext(out),
            Endpoint::Client(c) => c.take_ciphertext(out),
        }
    }

    fn seal(&mut self, plaintext: &[u8]) -> Result<(), TlsError> {
        match self {
            Endpoint::Server(s) => s.seal(plaintext),
            Endpoint::Client(c) => c.seal(plaintext),
        }
    }

    fn close_notify(&mut self) {
        match self {
            Endpoint::Server(s) => s.close_notify(),
            Endpoint::Client(c) => c.close_notify(),
        }
    }

    /// Whether the session's bytes can be sealed now: after the handshake on the server
    /// side; at once on the client side (rustls holds them until its keys exist).
    fn can_seal(&self) -> bool {
        match self {
            Endpoint::Server(s) => !s.is_handshaking(),
            Endpoint::Client(_) => true,
        }
    }
}

/// One side's TLS.
#[derive(Debug)]
pub(crate) struct TlsTransport {
    server: Endpoint,
    segments: Segments,
    /// Plaintext bytes the session's head buffer held when its read was armed: the read's
    /// ciphertext lands after them.
    head_start: usize,
    /// Why the TLS failed, once it did; the connection ends when what is queued is written.
    failure: Option<TlsError>,
    /// The worker told the session of the failure (once).
    pub(crate) failure_reported: bool,
    /// The handshake finished and was counted.
    pub(crate) handshake_counted: bool,
    /// A write shutdown waits for the `close_notify` to be written.
    pub(crate) shutdown_pending: bool,
    /// The clear-text 400 for plain HTTP on this port was queued.
    plain_answered: bool,
    /// Decrypted bytes of one read (reused).
    scratch: Vec<u8>,
}

/// What one stream read gave the session.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// The first `n` bytes of the provided buffer are plaintext now (0: only handshake or
    /// part of a record came).
    InPlace(usize),
    /// More plaintext than the buffer holds (a record that began in earlier reads ended in
    /// this one): the buffer is not used.
    Owned(Vec<u8>),
}

impl TlsTransport {
    pub(crate) fn new(server: TlsServer) -> TlsTransport {
        TlsTransport::with(Endpoint::Server(server))
    }

    /// TLS to an origin (the ClientHello waits in [`flush`](Self::flush)).
    pub(crate) fn origin(client: TlsClient) -> TlsTransport {
        TlsTransport::with(Endpoint::Client(client))
    }

    fn with(server: Endpoint) -> TlsTransport {
        TlsTransport {
            server,
            segments: Segments::default(),
            head_start: 0,
            failure: None,
            failure_reported: false,
            handshake_counted: false,
            shutdown_pending: false,
            plain_answered: false,
            scratch: Vec::new(),
        }
    }

    /// The handshake's facts (SNI, version, cipher, resumption), once it finished.
    pub(crate) fn facts(&self) -> Option<&HandshakeFacts> {
        match &self.server {
            Endpoint::Server(s) => s.facts(),
            Endpoint::Client(_) => None,
        }
    }

    /// This side is the edge's TLS client to an origin.
    pub(crate) fn is_origin(&self) -> bool {
        matches!(self.server, Endpoint::Client(_))
    }

    /// Why the TLS failed, if it did.
    pub(crate) fn failure(&self) -> Option<&TlsError> {
        self.failure.as_ref()
    }

    pub(crate) fn head_armed(&mut self, len: usize) {
        self.head_start = len;
    }

    /// Feeds `cipher` and appends what it decrypts to `out`. `Err` once the TLS failed (the
    /// alert waits in [`flush`](Self::flush)).
    fn decrypt(&mut self, mut cipher: &[u8], out: &mut Vec<u8>) -> Result<(), ()> {
        if self.failure.is_some() {
            return Err(());
        }
        while !cipher.is_empty() {
            match self.server.feed(cipher) {
                Ok(progress) => {
                    let took = self.server.take_plaintext(out);
                    if progress.consumed == 0 && took == 0 {
                        // Nothing moves (cannot happen with the plaintext taken each turn;
                        // a guard against spinning).
                        break;
                    }
                    cipher = &cipher[progress.consumed.min(cipher.len())..];
                }
                Err(e) => {
                    self.failure = Some(e);
                    return Err(());
                }
            }
        }
        Ok(())
    }

    /// A head read appended ciphertext to `buf` (after `head_start` bytes of plaintext):
    /// replaces it with the plaintext it carried; returns how many bytes that is (0 while
    /// the handshake runs).
    pub(crate) fn received_head(&mut self, buf: &mut Vec<u8>) -> Result<usize, ()> {
        let start = self.head_start.min(buf.len());
        let cipher = buf.split_off(start);
        self.decrypt(&cipher, buf)?;
        Ok(buf.len() - start)
    }

    /// A stream read put `n` bytes of ciphertext at the start of `buffer` (a whole provided
    /// buffer): decrypts them, in place when the plaintext fits.
    pub(crate) fn received(&mut self, buffer: &mut [u8], n: usize) -> Result<Delivery, ()> {
        let mut plain = std::mem::take(&mut self.scratch);
        plain.clear();
        let result = self.decrypt(&buffer[..n.min(buffer.len())], &mut plain);
        let delivery = match result {
            Err(()) => Err(()),
            Ok(()) if plain.len() <= buffer.len() => {
                buffer[..plain.len()].copy_from_slice(&plain);
                Ok(Delivery::InPlace(plain.len()))
            }
            Ok(()) => return Ok(Delivery::Owned(plain)),
        };
        self.scratch = plain;
        delivery
    }

    /// Records to write that carry no plaintext of the session's: the handshake flight,
    /// session tickets, alerts (and, after plain HTTP on this port, the clear-text 400).
    pub(crate) fn flush(&mut self) -> Option<Chunk> {
        let mut out = Vec::new();
        self.server.take_ciphertext(&mut out);
        if self.failure == Some(TlsError::PlaintextHttp) && !self.plain_answered {
            self.plain_answered = true;
            out.extend_from_slice(PLAINTEXT_HTTP_RESPONSE);
        }
        if out.is_empty() {
            return None;
        }
        self.segments.push(out.len(), Written::default());
        Some(Chunk::own(out))
    }

    /// Encrypts a chunk the session queued; a provided buffer it names is released once its
    /// bytes are copied. Before the handshake finished (or after a failure) there are no
    /// keys: the bytes are dropped (the session's answers to a client that never finished
    /// its handshake, such as a 408, cannot be sent). Any other refusal fails the side: the
    /// connection ends rather than go on with a hole in its stream.
    pub(crate) fn seal(&mut self, chunk: Chunk, bufs: &mut BufRing) -> Sealed {
        let n = chunk.remaining();
        let plain = if chunk.is_relayed() {
            Written { relayed: n, own: 0 }
        } else {
            Written { relayed: 0, own: n }
        };
        let ready = self.server.can_seal() && self.failure.is_none();
        let sealed = if ready {
            match &chunk {
                Chunk::Buf { buf, off, len, .. } => {
                    let bytes = bufs.bytes(*buf, *len as usize);
                    self.server.seal(&bytes[(*off as usize).min(bytes.len())..])
                }
                Chunk::Owned { data, off, .. } => self.server.seal(&data[*off..]),
                Chunk::Static { data, off } => self.server.seal(&data[*off..]),
                Chunk::Shared { data, off } => self.server.seal(&data[*off..]),
            }
        } else {
            Err(TlsError::NotReady)
        };
        if let Some(buf) = chunk.releases() {
            bufs.give_back(buf);
        }
        if let Err(e) = &sealed
            && *e != TlsError::NotReady
            && self.failure.is_none()
        {
            self.failure = Some(e.clone());
        }
        let mut out = Vec::new();
        if sealed.is_ok() {
            self.server.take_ciphertext(&mut out);
        }
        if out.is_empty() {
            return Sealed::Dropped(plain);
        }
        self.segments.push(out.len(), plain);
        Sealed::Chunk(Chunk::own(out))
    }

    /// A send wrote `w` bytes of ciphertext: the plaintext of the records now fully written.
    pub(crate) fn written(&mut self, w: Written) -> Written {
        self.segments.written(w.relayed + w.own)
    }

    /// Queues `close_notify` and returns it to write; the shutdown follows once it is
    /// written.
    pub(crate) fn close_notify(&mut self) -> Option<Chunk> {
        self.server.close_notify();
        let chunk = self.flush();
        self.shutdown_pending = chunk.is_some();
        chunk
    }
}

/// The ciphertext chunks queued on the socket, oldest first: each one's length and the
/// plaintext it carries, in the session's units.
#[derive(Debug, Default)]
struct Segments {
    queue: VecDeque<(usize, Written)>,
}

impl Segments {
    fn push(&mut self, cipher: usize, plain: Written) {
        self.queue.push_back((cipher, plain));
    }

    /// `n` more ciphertext bytes were written: the plaintext of the chunks finished.
    fn written(&mut self, mut n: usize) -> Written {
        let mut done = Written::default();
        while let Some((cipher, plain)) = self.queue.front_mut() {
            if *cipher > n {
                *cipher -= n;
                break;
            }
            n -= *cipher;
            done.relayed += plain.relayed;
            done.own += plain.own;
            self.queue.pop_front();
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_reported_when_its_whole_ciphertext_is_written() {
        let mut s = Segments::default();
        s.push(100, Written::default()); // handshake: carries nothing
        s.push(
            60,
            Written {
                relayed: 38,
                own: 0,
            },
        );
        s.push(30, Written { relayed: 0, own: 8 });
        assert_eq!(s.written(90), Written::default());
        assert_eq!(s.written(10), Written::default());
        assert_eq!(s.written(59), Written::default());
        assert_eq!(
            s.written(1),
            Written {
                relayed: 38,
                own: 0
            }
        );
        assert_eq!(s.written(30), Written { relayed: 0, own: 8 });
        assert!(s.queue.is_empty());
        // Several chunks in one completion.
        s.push(10, Written { relayed: 5, own: 0 });
        s.push(10, Written { relayed: 0, own: 2 });
        assert_eq!(s.written(20), Written { relayed: 5, own: 2 });
    }
}
