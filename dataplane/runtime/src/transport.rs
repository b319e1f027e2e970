//! The seam between a socket and the session: what a side's bytes go through on their way in
//! and out. Two variants: plain TCP, and TLS ([`tls`]): terminated in user space over
//! `wsedge-tls`'s sans-IO rustls server, or, after a hand-off, by the kernel (kTLS: the
//! socket carries plaintext for user space, the kernel seals and opens the records). The
//! session only ever sees plaintext.
//!
//! The worker calls the transport on each path: a head read's bytes, a stream read's bytes,
//! each chunk the session queues ([`Transport::seal`]), each send completion
//! ([`Transport::written`], which turns bytes written back into the session's units) and a
//! write shutdown ([`Transport::close_notify`]). [`Transport::allows_splice`] tells the
//! session whether its bytes may travel by splice (never under user-space TLS: the kernel
//! would move ciphertext); [`Transport::splice_plan`] decides whether a user-space TLS side
//! can go to the kernel first, and why not (`worker/ktls.rs` applies it). The TLS-only steps
//! (handshake records, alerts, the close after a failure) are driven by `worker/tls.rs`.

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
    /// TLS terminated here: ciphertext on the socket, plaintext for the session; or, once
    /// handed to the kernel ([`Transport::is_ktls`]), bytes pass unchanged as on plain TCP
    /// (so splice works) and only the handshake's facts stay, for the access log. (One
    /// boxed variant keeps `Transport` one pointer wide: a connection's memory budget.)
    Tls(Box<TlsTransport>),
}

/// What a side needs before the session's bytes from or to it may be spliced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SplicePlan {
    /// Nothing: its socket carries the session's bytes as they are.
    Ready,
    /// Hand its TLS keys to the kernel first.
    HandOff,
    /// Not yet: user space still writes records on it (the 101, tickets); ask again once
    /// its send queue is empty.
    Wait,
    /// Not on this connection: relay buffered.
    Buffered(NoKtls),
}

/// Why a TLS side stays in user space (and its `splice`/`auto` relay buffered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoKtls {
    /// `ktls = "off"` on the listener.
    Off,
    /// The kernel takes no TLS keys (`wsedge_ring::ktls::support` says why).
    Kernel,
    /// TLS to an origin stays in user space.
    Origin,
    /// The TLS connection failed.
    Failed,
    /// User space holds part of a record, or the client's stream read is still armed
    /// (`auto` going bulk towards the client): the kernel would miss bytes.
    Busy,
}

impl NoKtls {
    /// Why, for the log line (`kernel`: what the probe found).
    pub(crate) fn describe(self, kernel: &dyn std::fmt::Display) -> String {
        match self {
            NoKtls::Off => "ktls = \"off\" on this listener".into(),
            NoKtls::Kernel => format!("this kernel has {kernel}"),
            NoKtls::Origin => "TLS to the origin is terminated in user space".into(),
            NoKtls::Failed => "the TLS connection failed".into(),
            NoKtls::Busy => {
                "user space held part of a TLS record or an armed read at the hand-off".into()
            }
        }
    }
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

    /// A connection to a TLS origin (the ClientHello is written with the first send).
    pub(crate) fn origin_tls(client: wsedge_tls::TlsClient) -> Transport {
        Transport::Tls(Box::new(TlsTransport::origin(client)))
    }

    /// The TLS handshake's facts (SNI, version, cipher, resumption, client certificate),
    /// once it finished; `None` on plain TCP.
    pub(crate) fn tls_facts(&self) -> Option<&wsedge_tls::HandshakeFacts> {
        match self {
            Transport::Tls(t) => t.facts(),
            Transport::Plain => None,
        }
    }

    /// The socket carries the session's bytes unchanged (plain TCP, or kTLS).
    pub(crate) fn bytes_pass(&self) -> bool {
        match self {
            Transport::Plain => true,
            Transport::Tls(t) => t.in_kernel(),
        }
    }

    /// The kernel holds this side's TLS keys.
    pub(crate) fn is_ktls(&self) -> bool {
        matches!(self, Transport::Tls(t) if t.in_kernel())
    }

    /// What this side needs before a splice: `sent` says nothing is queued or in flight to
    /// its socket, `reading` that a read is armed on it, `kernel` whether the kernel takes
    /// TLS keys.
    pub(crate) fn splice_plan(&self, sent: bool, reading: bool, kernel: bool) -> SplicePlan {
        match self {
            Transport::Plain => SplicePlan::Ready,
            Transport::Tls(t) => t.ktls_plan(sent, reading, kernel),
        }
    }

    /// Takes the TLS keys out of a side [`splice_plan`](Self::splice_plan) said to hand off:
    /// the side is kTLS from now on (its bytes pass unchanged), whatever the kernel then
    /// does with the keys.
    pub(crate) fn hand_off(&mut self) -> Result<wsedge_tls::KtlsHandoff, wsedge_tls::TlsError> {
        match self {
            Transport::Tls(t) => t.hand_off(),
            Transport::Plain => Err(wsedge_tls::TlsError::Closed),
        }
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
            Transport::Tls(t) if !t.in_kernel() => t.seal(chunk, bufs),
            _ => Sealed::Chunk(chunk),
        }
    }

    /// A send wrote `w`: what it wrote in the session's units (TLS: the plaintext whose
    /// records are now written in full).
    pub(crate) fn written(&mut self, w: Written) -> Written {
        match self {
            Transport::Tls(t) if !t.in_kernel() => t.written(w),
            _ => w,
        }
    }

    /// The session shuts the write side: TLS first queues its `close_notify` (returned, to
    /// write before the shutdown). `None`: shut down now (kTLS: the worker has the kernel
    /// send it first, `wsedge_ring::ktls::send_close_notify`).
    pub(crate) fn close_notify(&mut self) -> Option<Chunk> {
        match self {
            Transport::Tls(t) if !t.in_kernel() => t.close_notify(),
            _ => None,
        }
    }

    /// Whether the socket's bytes may be spliced (moved by the kernel without passing
    /// through the worker).
    pub(crate) fn allows_splice(&self) -> bool {
        match self {
            Transport::Plain => true,
            Transport::Tls(t) => t.in_kernel(),
        }
    }
}
