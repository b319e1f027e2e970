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
    HandshakeFacts, KtlsHandoff, KtlsMode, PLAINTEXT_HTTP_RESPONSE, Progress, TlsClient, TlsError,
    TlsServer,
};

use super::{NoKtls, Sealed, SplicePlan};

/// The TLS side of one socket: the edge as the server (a client's connection) or as the
/// client (to a TLS origin).
#[derive(Debug)]
enum Endpoint {
    Server(TlsServer),
    Client(TlsClient),
    /// The server's keys went to the kernel (kTLS): no records pass through user space any
    /// more; the handshake's facts stay for the access log.
    Kernel(HandshakeFacts),
}

impl Endpoint {
    fn feed(&mut self, cipher: &[u8]) -> Result<Progress, TlsError> {
        match self {
            Endpoint::Server(s) => s.feed(cipher),
            Endpoint::Client(c) => c.feed(cipher),
            Endpoint::Kernel(_) => Err(TlsError::Closed),
        }
    }

    fn take_plaintext(&mut self, out: &mut Vec<u8>) -> usize {
        match self {
            Endpoint::Server(s) => s.take_plaintext(out),
            Endpoint::Client(c) => c.take_plaintext(out),
            Endpoint::Kernel(_) => 0,
        }
    }

    fn take_ciphertext(&mut self, out: &mut Vec<u8>) -> usize {
        match self {
            Endpoint::Server(s) => s.take_ciphertext(out),
            Endpoint::Client(c) => c.take_ciphertext(out),
            Endpoint::Kernel(_) => 0,
        }
    }

    fn seal(&mut self, plaintext: &[u8]) -> Result<(), TlsError> {
        match self {
            Endpoint::Server(s) => s.seal(plaintext),
            Endpoint::Client(c) => c.seal(plaintext),
            Endpoint::Kernel(_) => Err(TlsError::Closed),
        }
    }

    fn close_notify(&mut self) {
        match self {
            Endpoint::Server(s) => s.close_notify(),
            Endpoint::Client(c) => c.close_notify(),
            Endpoint::Kernel(_) => {}
        }
    }

    /// Whether the session's bytes can be sealed now: after the handshake on the server
    /// side; at once on the client side (rustls holds them until its keys exist).
    fn can_seal(&self) -> bool {
        match self {
            Endpoint::Server(s) => !s.is_handshaking(),
            Endpoint::Client(_) => true,
            Endpoint::Kernel(_) => false,
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
            Endpoint::Kernel(facts) => Some(facts),
            Endpoint::Client(_) => None,
        }
    }

    /// This side is the edge's TLS client to an origin.
    pub(crate) fn is_origin(&self) -> bool {
        matches!(self.server, Endpoint::Client(_))
    }

    /// Whether this side's keys can go to the kernel (see `Transport::splice_plan`).
    pub(crate) fn ktls_plan(&self, sent: bool, reading: bool, kernel: bool) -> SplicePlan {
        let server = match &self.server {
            Endpoint::Server(server) => server,
            Endpoint::Kernel(_) => return SplicePlan::Ready,
            Endpoint::Client(_) => return SplicePlan::Buffered(NoKtls::Origin),
        };
        if self.failure.is_some() {
            SplicePlan::Buffered(NoKtls::Failed)
        } else if server.ktls_mode() == KtlsMode::Off {
            SplicePlan::Buffered(NoKtls::Off)
        } else if !kernel {
            SplicePlan::Buffered(NoKtls::Kernel)
        } else if server.is_handshaking() || server.wants_write() || !sent {
            // Records user space still has to write (flushed by the worker): they must be on
            // the wire before the kernel seals the next ones.
            SplicePlan::Wait
        } else if reading || !server.ktls_ready() {
            // An armed read (the client's own direction still streams, under `auto`) may
            // bring ciphertext after the keys left rustls; a partial record would be lost.
            SplicePlan::Buffered(NoKtls::Busy)
        } else {
            SplicePlan::HandOff
        }
    }

    /// Takes the traffic keys out for the kernel: from now on this side is kTLS (its bytes
    /// pass unchanged) whatever the kernel then does with them, its facts kept for the log.
    pub(crate) fn hand_off(&mut self) -> Result<KtlsHandoff, TlsError> {
        let facts = match &self.server {
            Endpoint::Server(server) => server.facts().cloned().ok_or(TlsError::NotReady)?,
            _ => return Err(TlsError::Closed),
        };
        match std::mem::replace(&mut self.server, Endpoint::Kernel(facts)) {
            Endpoint::Server(server) => server.into_ktls(),
            _ => Err(TlsError::Closed),
        }
    }

    /// The kernel holds this side's keys.
    pub(crate) fn in_kernel(&self) -> bool {
        matches!(self.server, Endpoint::Kernel(_))
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

    /// A finished handshake over memory with a rustls client (every record flushed), on a
    /// listener with `ktls`; the client is returned to write more.
    fn handshake(ktls: wsedge_tls::KtlsMode) -> (TlsServer, rustls::ClientConnection) {
        use std::sync::Arc;
        let leaf = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
        let dir = std::env::temp_dir().join(format!(
            "wsedge-ktls-plan-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("c.pem"), leaf.cert.pem()).expect("cert");
        std::fs::write(dir.join("c.key"), leaf.signing_key.serialize_pem()).expect("key");
        let store = wsedge_tls::CertStore::load(&wsedge_tls::TlsConfig {
            certificates: vec![wsedge_tls::CertificateSpec {
                id: "c".into(),
                cert: dir.join("c.pem"),
                key: dir.join("c.key"),
                names: None,
                default: true,
            }],
            listeners: vec![wsedge_tls::ListenerSpec {
                listen: vec!["127.0.0.1:1".parse().expect("addr")],
                certificates: None,
                client_auth: wsedge_tls::ClientAuth::None,
                client_ca: None,
                alpn: wsedge_tls::Alpn::Http11,
                min_version: wsedge_tls::TlsVersion::Tls12,
                ktls,
            }],
        })
        .expect("store");
        let _ = std::fs::remove_dir_all(&dir);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(leaf.cert.der().clone()).expect("root");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut client =
            rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().expect("name"))
                .expect("client");
        let mut server = store.listener(0).expect("listener").accept();
        for _ in 0..10 {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).expect("client records");
            }
            if !wire.is_empty() {
                server.feed(&wire).expect("server reads");
            }
            let mut back = Vec::new();
            server.take_ciphertext(&mut back);
            if !back.is_empty() {
                client.read_tls(&mut &back[..]).expect("client reads");
                client.process_new_packets().expect("client handshake");
            }
        }
        assert!(!server.is_handshaking() && !client.is_handshaking());
        (server, client)
    }

    #[test]
    fn ktls_plans_wait_for_written_records_and_refuse_what_the_kernel_would_miss() {
        use wsedge_tls::KtlsMode;
        let (server, mut client) = handshake(KtlsMode::Auto);
        let mut t = TlsTransport::new(server);
        // Sent, not reading, kernel able: hand off.
        assert_eq!(t.ktls_plan(true, false, true), SplicePlan::HandOff);
        // Records still queued to the socket: later.
        assert_eq!(t.ktls_plan(false, false, true), SplicePlan::Wait);
        // A read armed on the socket, or no kTLS in the kernel: buffered.
        assert_eq!(
            t.ktls_plan(true, true, true),
            SplicePlan::Buffered(NoKtls::Busy)
        );
        assert_eq!(
            t.ktls_plan(true, false, false),
            SplicePlan::Buffered(NoKtls::Kernel)
        );
        // Half a record in user space: the kernel would miss its start.
        use std::io::Write as _;
        client.writer().write_all(b"half of this").expect("write");
        let mut wire = Vec::new();
        client.write_tls(&mut wire).expect("record");
        let mut plain = Vec::new();
        t.decrypt(&wire[..wire.len() / 2], &mut plain)
            .expect("half");
        assert_eq!(
            t.ktls_plan(true, false, true),
            SplicePlan::Buffered(NoKtls::Busy)
        );
        t.decrypt(&wire[wire.len() / 2..], &mut plain)
            .expect("rest");
        assert_eq!(plain, b"half of this");
        assert_eq!(t.ktls_plan(true, false, true), SplicePlan::HandOff);

        // The hand-off: keys out, the side's bytes pass unchanged, its facts stay.
        let mut side = super::super::Transport::Tls(Box::new(t));
        let keys = side.hand_off().expect("keys");
        assert_eq!(keys.tx.key.len(), keys.rx.key.len());
        assert!(side.is_ktls() && side.bytes_pass() && side.allows_splice());
        assert_eq!(side.proto(), "https");
        assert!(
            side.tls_facts()
                .is_some_and(|f| f.sni.as_deref() == Some("localhost"))
        );
        assert_eq!(side.splice_plan(false, true, false), SplicePlan::Ready);

        // `ktls = "off"`: never, whatever the kernel.
        let (server, _) = handshake(KtlsMode::Off);
        let t = TlsTransport::new(server);
        assert_eq!(
            t.ktls_plan(true, false, true),
            SplicePlan::Buffered(NoKtls::Off)
        );
    }
}
