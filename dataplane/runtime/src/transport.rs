//! The seam between a socket and the session: what a side's bytes go through on their way in
//! and out. Two variants: plain TCP, and TLS terminated in user space ([`tls`], over
//! `wsedge-tls`'s sans-IO rustls server). The session only ever sees plaintext.
//!
//! The worker calls the transport on each path: a head read's bytes, a stream read's bytes,
//! each chunk the session queues ([`Transport::seal`]), each send completion
//! ([`Transport::written`], which turns bytes written back into the session's units) and a
//! write shutdown ([`Transport::close_notify`]). [`Transport::allows_splice`] tells the
//! session whether its bytes may travel by splice (never under user-space TLS: the kernel
//! would move ciphertext). The TLS-only steps (handshake records, alerts, the close after a
//! failure) are driven by `worker/tls.rs`.

pub(crate) mod tls;

use wsedge_proto::chunk::Chunk;
use wsedge_ring::{BufRing, Written};

pub(crate) use self::tls::TlsTransport;

/// What a side's bytes go through.
#[derive(Debug, Default)]
pub(crate) enum Transport {
    /// Plain TCP: bytes pass unchanged, in place.
    #[default]
    Plain,
    /// TLS terminated here: ciphertext on the socket, plaintext for the session.
    Tls(Box<TlsTransport>),
}

/// A chunk the session queued, once through the transport.
#[derive(Debug)]
pub(crate) enum Sealed {
    /// Write this to the socket.
    Chunk(Chunk),
    /// Nothing to write: the bytes were dropped (a TLS connection with no keys yet, or
    /// failed); they count as written at once.
    Dropped(Written),
}

impl Transport {
    /// A client connection accepted on a TLS listener.
    pub(crate) fn tls(listener: &wsedge_tls::ServerTls) -> Transport {
        Transport::Tls(Box::new(TlsTransport::new(listener.accept())))
    }

    /// The TLS handshake's facts (SNI, version, cipher, resumption, client certificate),
    /// once it finished; `None` on plain TCP.
    pub(crate) fn tls_facts(&self) -> Option<&wsedge_tls::HandshakeFacts> {
        match self {
            Transport::Tls(t) => t.facts(),
            _ => None,
        }
    }

    pub(crate) fn is_plain(&self) -> bool {
        matches!(self, Transport::Plain)
    }

    /// `X-Forwarded-Proto` for requests that came this way.
    pub(crate) fn proto(&self) -> &'static str {
        match self {
            Transport::Plain => "http",
            Transport::Tls(_) => "https",
        }
    }

    /// A head read is armed on a buffer holding `len` bytes of plaintext already.
    pub(crate) fn head_armed(&mut self, len: usize) {
        if let Transport::Tls(t) = self {
            t.head_armed(len);
        }
    }

    /// A chunk the session queued, as it goes to the socket. `bufs` gives a provided
    /// buffer's bytes to encrypt (the buffer is released once they are copied).
    pub(crate) fn seal(&mut self, chunk: Chunk, bufs: &mut BufRing) -> Sealed {
        match self {
            Transport::Plain => Sealed::Chunk(chunk),
            Transport::Tls(t) => t.seal(chunk, bufs),
        }
    }

    /// A send wrote `w`: what it wrote in the session's units (TLS: the plaintext whose
    /// records are now written in full).
    pub(crate) fn written(&mut self, w: Written) -> Written {
        match self {
            Transport::Plain => w,
            Transport::Tls(t) => t.written(w),
        }
    }

    /// The session shuts the write side: TLS first queues its `close_notify` (returned, to
    /// write before the shutdown). `None`: shut down now.
    pub(crate) fn close_notify(&mut self) -> Option<Chunk> {
        match self {
            Transport::Plain => None,
            Transport::Tls(t) => t.close_notify(),
        }
    }

    /// Whether the socket's bytes may be spliced (moved by the kernel without passing
    /// through the worker).
    pub(crate) fn allows_splice(&self) -> bool {
        match self {
            Transport::Plain => true,
            Transport::Tls(_) => false,
        }
    }
}
