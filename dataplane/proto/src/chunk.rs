//! Bytes queued for a socket, as the session decides them and the ring's send operation
//! owns them while the kernel reads them.
//!
//! The session (`crate::session`) says *what* goes to which side as [`Chunk`]s; the ring
//! crate (`wsedge-ring`) turns queued chunks into sends (one `Send`, or one `SendMsg` with an
//! iovec per chunk) and keeps them alive until the completion arrives. A chunk is either part
//! of the relayed stream (counted as bytes relayed, for backpressure and the access log) or
//! the proxy's own bytes (an error answer, an injected frame, a function's frames).

use std::rc::Rc;

/// A buffer of the worker's provided-buffer ring, named by its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BufId(pub u16);

/// Bytes to write to one socket; `off` is how many of them were already written.
#[derive(Debug)]
pub enum Chunk {
    /// Bytes `off..len` of a provided buffer, relayed from the other side. The buffer is
    /// handed back to the ring when the chunk with `release` has been written in full (a
    /// buffer split into several chunks by the frames relay releases with its last one).
    Buf {
        buf: BufId,
        off: u32,
        len: u32,
        release: bool,
    },
    /// Bytes the session produced or collected (a rewritten head, held early frames, an
    /// injected frame); `relayed` says whether they count as bytes relayed from the other
    /// side.
    Owned {
        data: Vec<u8>,
        off: usize,
        relayed: bool,
    },
    /// A canned answer (the proxy's own bytes).
    Static { data: &'static [u8], off: usize },
    /// A frame shared by every subscriber of a message on this worker (framed once; the
    /// proxy's own bytes).
    Shared { data: Rc<[u8]>, off: usize },
}

impl Chunk {
    /// Relayed bytes the session produced.
    pub fn relayed(data: Vec<u8>) -> Chunk {
        Chunk::Owned {
            data,
            off: 0,
            relayed: true,
        }
    }

    /// The proxy's own bytes.
    pub fn own(data: Vec<u8>) -> Chunk {
        Chunk::Owned {
            data,
            off: 0,
            relayed: false,
        }
    }

    /// Bytes not yet written.
    pub fn remaining(&self) -> usize {
        match self {
            Chunk::Buf { off, len, .. } => len.saturating_sub(*off) as usize,
            Chunk::Owned { data, off, .. } => data.len().saturating_sub(*off),
            Chunk::Static { data, off } => data.len().saturating_sub(*off),
            Chunk::Shared { data, off } => data.len().saturating_sub(*off),
        }
    }

    /// Whether these bytes count as relayed from the other side.
    pub fn is_relayed(&self) -> bool {
        match self {
            Chunk::Buf { .. } => true,
            Chunk::Owned { relayed, .. } => *relayed,
            Chunk::Static { .. } | Chunk::Shared { .. } => false,
        }
    }

    /// Marks `n` more bytes written (at most what remains).
    pub fn advance(&mut self, n: usize) {
        match self {
            Chunk::Buf { off, len, .. } => *off = (*off + n as u32).min(*len),
            Chunk::Owned { data, off, .. } => *off = (*off + n).min(data.len()),
            Chunk::Static { data, off } => *off = (*off + n).min(data.len()),
            Chunk::Shared { data, off } => *off = (*off + n).min(data.len()),
        }
    }

    /// The provided buffer to hand back once this chunk is written in full, if any.
    pub fn releases(&self) -> Option<BufId> {
        match self {
            Chunk::Buf {
                buf, release: true, ..
            } => Some(*buf),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_counts_down_what_remains() {
        let mut c = Chunk::relayed(b"hello".to_vec());
        assert_eq!(c.remaining(), 5);
        c.advance(2);
        assert_eq!(c.remaining(), 3);
        c.advance(10);
        assert_eq!(c.remaining(), 0);
        assert!(c.is_relayed());
        let b = Chunk::Buf {
            buf: BufId(3),
            off: 4,
            len: 10,
            release: true,
        };
        assert_eq!(b.remaining(), 6);
        assert_eq!(b.releases(), Some(BufId(3)));
        assert!(!Chunk::own(vec![1]).is_relayed());
        assert!(!Chunk::Static { data: b"x", off: 0 }.is_relayed());
    }
}
