//! The seam between a socket and the session: what a side's bytes go through on their way in
//! and out. Plain TCP today; TLS (rustls, then kernel TLS where the kernel offers it) is the
//! next variant, with no change to the session, which only ever sees plaintext.
//!
//! One hook on each path of the worker: received bytes pass through [`Transport::received`]
//! before the session sees them, chunks the session queues pass through [`Transport::seal`]
//! before they reach the socket's send queue, and [`Transport::allows_splice`] tells the
//! session whether its bytes may travel by splice (never under user-space TLS: the kernel
//! would move ciphertext).

use wsedge_proto::chunk::Chunk;

/// What a side's bytes go through.
#[derive(Debug, Default)]
pub(crate) enum Transport {
    /// Plain TCP: bytes pass unchanged, in place.
    #[default]
    Plain,
}

/// Received bytes as the session gets them.
#[derive(Debug)]
pub(crate) enum Received {
    /// The bytes of the provided buffer are the plaintext, in place.
    InPlace,
}

impl Transport {
    /// Bytes arrived from the socket into a provided buffer.
    pub(crate) fn received(&mut self, _bytes: &mut [u8]) -> Received {
        match self {
            Transport::Plain => Received::InPlace,
        }
    }

    /// A chunk the session queued, as it goes to the socket.
    pub(crate) fn seal(&mut self, chunk: Chunk) -> Chunk {
        match self {
            Transport::Plain => chunk,
        }
    }

    /// Whether the socket's bytes may be spliced (moved by the kernel without passing
    /// through the worker).
    pub(crate) fn allows_splice(&self) -> bool {
        match self {
            Transport::Plain => true,
        }
    }
}
