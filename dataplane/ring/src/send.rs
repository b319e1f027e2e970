//! A socket's send queue: the chunks waiting to be written, and the accounting that puts a
//! partly written send back at the front.
//!
//! [`crate::Ring::send`] moves up to 16 chunks from the front of the queue into a send
//! operation ([`SentChunks`]), which owns them while the kernel reads them. The final
//! completion hands them back; [`SendQueue::complete`] drops what was written (giving
//! provided buffers back) and returns the rest to the front of the queue, before anything
//! pushed meanwhile.

use std::collections::VecDeque;

use wsedge_proto::chunk::Chunk;

use crate::bufring::BufRing;
use crate::op::{MAX_BATCH, SendBatch};

/// The chunks of one send operation, owned by it while the kernel reads them. Boxed in the
/// operation (its record in the op table stays 32 bytes: `ring.rs`) and reused by its queue.
#[derive(Debug, Default)]
pub struct SentChunks {
    /// At most [`MAX_BATCH`], in queue order.
    pub(crate) chunks: Vec<Chunk>,
    /// The iovecs and header when there is more than one chunk (reused between sends).
    pub(crate) batch: Option<Box<SendBatch>>,
    /// Bit `i` set: chunk `i` is a `Chunk::Buf` whose buffer is lent to this send.
    lent: u16,
}

impl SentChunks {
    /// Chunks in this send.
    pub fn count(&self) -> usize {
        self.chunks.len()
    }

    /// Bytes this send asked the kernel to write (what the chunks had left).
    pub fn bytes(&self) -> usize {
        self.chunks.iter().map(Chunk::remaining).sum()
    }

    /// The chunks, in order.
    pub fn chunks(&self) -> &[Chunk] {
        &self.chunks
    }

    /// Checks the `Chunk::Buf` chunks against the buffer ring and lends their buffers to
    /// the send: a chunk's range is clamped to its buffer, and a chunk naming a buffer the
    /// application does not hold is emptied (a caller bug, logged by the ring) so that the
    /// kernel never reads a buffer it may be filling.
    fn lend(&mut self, bufs: &mut BufRing) {
        let size = bufs.size();
        for (i, chunk) in self.chunks.iter_mut().enumerate() {
            if let Chunk::Buf { buf, off, len, .. } = chunk {
                *len = (*len).min(size);
                *off = (*off).min(*len);
                if bufs.lend(buf.0) {
                    self.lent |= 1 << i;
                } else {
                    *off = *len;
                }
            }
        }
    }

    /// The send completed: the kernel reads none of its buffers any more.
    pub(crate) fn unlend(&self, bufs: &mut BufRing) {
        for (i, chunk) in self.chunks.iter().enumerate() {
            if self.lent & (1 << i) != 0
                && let Chunk::Buf { buf, .. } = chunk
            {
                bufs.unlend(buf.0);
            }
        }
    }

    /// Gives back the provided buffers the chunks release (the caller then drops them).
    pub(crate) fn release_all(&self, bufs: &mut BufRing) {
        for chunk in &self.chunks {
            if let Some(id) = chunk.releases() {
                bufs.give_back(id);
            }
        }
    }
}

/// Bytes a send wrote, split by whom they belong to ([`Chunk::is_relayed`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Bytes relayed from the other side (backpressure, the access log).
    pub relayed: usize,
    /// The proxy's own bytes (answers, injected frames, a function's frames).
    pub own: usize,
}

/// The bytes queued for one socket.
///
/// An idle socket's queue is one null pointer: the queue's storage is allocated by the first
/// push and released by [`SendQueue::shrink`] once everything was written, so a connection
/// that is not sending keeps none (most of a proxy's connections are idle; issue 18's memory
/// budget). A flood keeps its storage, since its queue is never empty when it shrinks.
///
/// Dropping a queue that still holds `Chunk::Buf` chunks leaks their buffers (logged): call
/// [`SendQueue::clear`] when the connection ends.
#[derive(Debug, Default)]
pub struct SendQueue {
    inner: Option<Box<Queue>>,
}

impl SendQueue {
    /// An empty queue (allocates nothing).
    pub fn new() -> Self {
        Self::default()
    }

    fn storage(&mut self) -> &mut Queue {
        self.inner.get_or_insert_with(Box::default)
    }

    /// Queues `chunk` after everything queued (and after what is in flight).
    pub fn push(&mut self, chunk: Chunk) {
        self.storage().push(chunk);
    }

    /// Nothing pending and nothing in flight: every byte pushed was written (or dropped).
    pub fn is_empty(&self) -> bool {
        self.inner.as_ref().is_none_or(|q| q.is_empty())
    }

    /// Chunks are waiting that no send has taken yet.
    pub fn has_pending(&self) -> bool {
        self.inner.as_ref().is_some_and(|q| q.has_pending())
    }

    /// Bytes pushed and not yet written (including in flight).
    pub fn queued(&self) -> usize {
        self.inner.as_ref().map_or(0, |q| q.queued)
    }

    /// A send of this queue is in flight.
    pub fn sending(&self) -> bool {
        self.inner.as_ref().is_some_and(|q| q.sending)
    }

    /// Takes up to [`MAX_BATCH`] chunks from the front for a send, and marks it in flight.
    /// `None` if nothing is pending or a send is already in flight.
    /// Lends its `Chunk::Buf` buffers (see `SentChunks::lend`).
    pub(crate) fn take_batch(&mut self, bufs: &mut BufRing) -> Option<Box<SentChunks>> {
        self.inner.as_mut()?.take_batch(bufs)
    }

    /// Accounts for a send that wrote `n` bytes (its completion's result). Fully written
    /// chunks are dropped (a releasing `Chunk::Buf` gives its buffer back); the partly written
    /// one and the unwritten ones go back to the front of the queue, in order, before anything
    /// pushed while the send was in flight.
    pub fn complete(&mut self, sent: Box<SentChunks>, n: usize, bufs: &mut BufRing) -> Written {
        self.storage().complete(sent, n, bufs)
    }

    /// Accounts for a send that failed: its chunks and everything pending are dropped (the
    /// socket takes no more bytes), their provided buffers given back.
    pub fn fail(&mut self, sent: Box<SentChunks>, bufs: &mut BufRing) {
        self.storage().fail(sent, bufs);
    }

    /// The connection is ending: drops what is pending and gives its buffers back. A send in
    /// flight still completes (its chunks come back through its completion).
    pub fn clear(&mut self, bufs: &mut BufRing) {
        if let Some(q) = self.inner.as_mut() {
            q.clear(bufs);
        }
    }

    /// Releases the queue's memory when everything was written (an idle connection keeps no
    /// allocation); otherwise only the spare storage of past sends.
    pub fn shrink(&mut self) {
        match self.inner.as_mut() {
            Some(q) if q.is_empty() => self.inner = None,
            Some(q) => q.shrink(),
            None => {}
        }
    }
}

/// A send queue's storage.
#[derive(Debug, Default)]
struct Queue {
    /// Chunks not yet handed to a send, in order.
    pending: VecDeque<Chunk>,
    /// INVARIANT: true exactly while a send operation built from this queue has not been
    /// handed back through `complete` or `fail`.
    sending: bool,
    /// Bytes pushed and not yet written, including those in flight.
    queued: usize,
    /// Bytes handed to the send in flight.
    in_flight: usize,
    /// The last send's storage (its chunk vector emptied, its batch kept), for the next
    /// one: steady sending allocates nothing.
    spare: Option<Box<SentChunks>>,
}

impl Queue {
    fn push(&mut self, chunk: Chunk) {
        self.queued += chunk.remaining();
        self.pending.push_back(chunk);
    }

    fn is_empty(&self) -> bool {
        self.pending.is_empty() && !self.sending
    }

    fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    fn take_batch(&mut self, bufs: &mut BufRing) -> Option<Box<SentChunks>> {
        if self.sending || self.pending.is_empty() {
            return None;
        }
        let take = self.pending.len().min(MAX_BATCH);
        let mut sent = self.spare.take().unwrap_or_default();
        sent.chunks.extend(self.pending.drain(..take));
        if sent.chunks.len() > 1 && sent.batch.is_none() {
            sent.batch = Some(SendBatch::new());
        }
        let before = sent.bytes();
        sent.lend(bufs);
        self.in_flight = sent.bytes();
        // Bytes a clamped chunk will never send are not queued any more.
        self.queued = self.queued.saturating_sub(before - self.in_flight);
        self.sending = true;
        Some(sent)
    }

    /// Keeps a finished send's storage for the next one.
    fn keep_storage(&mut self, mut sent: Box<SentChunks>) {
        sent.chunks.clear();
        sent.lent = 0;
        self.spare = Some(sent);
    }

    fn complete(&mut self, mut sent: Box<SentChunks>, n: usize, bufs: &mut BufRing) -> Written {
        self.sending = false;
        self.in_flight = 0;
        let chunks = &mut sent.chunks;
        let mut left = n;
        let mut written = Written::default();
        let mut done = chunks.len();
        for (i, chunk) in chunks.iter_mut().enumerate() {
            let take = left.min(chunk.remaining());
            chunk.advance(take);
            left -= take;
            if chunk.is_relayed() {
                written.relayed += take;
            } else {
                written.own += take;
            }
            if chunk.remaining() > 0 {
                done = i;
                break;
            }
        }
        self.queued = self.queued.saturating_sub(n - left);
        for chunk in chunks.drain(..done) {
            if let Some(id) = chunk.releases() {
                bufs.give_back(id);
            }
        }
        for chunk in chunks.drain(..).rev() {
            self.pending.push_front(chunk);
        }
        self.keep_storage(sent);
        written
    }

    fn fail(&mut self, mut sent: Box<SentChunks>, bufs: &mut BufRing) {
        self.sending = false;
        self.in_flight = 0;
        for chunk in sent.chunks.drain(..) {
            if let Some(id) = chunk.releases() {
                bufs.give_back(id);
            }
        }
        self.keep_storage(sent);
        self.clear(bufs);
    }

    fn clear(&mut self, bufs: &mut BufRing) {
        for chunk in self.pending.drain(..) {
            if let Some(id) = chunk.releases() {
                bufs.give_back(id);
            }
        }
        self.queued = self.in_flight;
    }

    /// Releases the spare storage; the pending chunks' deque too when it is empty. Storage
    /// that a send in flight holds is kept again when it completes.
    fn shrink(&mut self) {
        if self.pending.is_empty() {
            self.pending = VecDeque::new();
        }
        self.spare = None;
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        let leaked = self
            .pending
            .iter()
            .filter(|c| c.releases().is_some())
            .count();
        if leaked > 0 {
            tracing::error!(
                leaked,
                "send queue dropped with provided buffers (call clear first): they are lost to the ring"
            );
        }
    }
}
