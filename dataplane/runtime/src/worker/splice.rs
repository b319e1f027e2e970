//! The splice relay's pump, for a direction the session handed to splice: socket -> a pipe
//! borrowed from the worker's pool -> the other socket, with non-blocking `splice(2)`
//! syscalls on the worker after a `PollAdd` said the source is readable (io_uring's own
//! `Splice` goes through a kernel worker thread per call, which costs more than the copy it
//! saves: docs/benchmarks.md, "Relay buffers, splice and the handshake path: what was
//! tried"). The session is told what moved (`Spliced`, `SpliceWritten`), the source's EOF,
//! or that no pipe could be had.

use wsedge_proto::session::{Input, Side};
use wsedge_ring::pipes::Pipe;
use wsedge_ring::{OpId, sys};

use super::Worker;
use super::conn::splice_owner;

/// Rounds of splices per wake-up: then the direction polls again (which completes at once if
/// more is waiting), so other connections get their turn in between.
const ROUNDS_PER_WAKEUP: usize = 8;

/// One spliced direction: the pipe it holds while bytes are in it, and the poll it waits on.
#[derive(Debug, Default)]
pub(super) struct SpliceDir {
    pub(super) pipe: Option<Pipe>,
    /// Bytes in the pipe not yet written to the destination.
    in_pipe: u32,
    /// The poll in flight (readable source, or writable destination).
    pub(super) poll: Option<OpId>,
    /// The poll waits for the destination to take what the pipe holds.
    waiting_out: bool,
    /// The pipe waits for the destination's send queue to empty (bytes relayed buffered
    /// before the switch go first); [`Worker::splice_resume`] continues.
    held: bool,
}

impl Worker {
    /// The session handed the bytes from `from` to splice.
    pub(super) fn splice_start(&mut self, slot: usize, from: Side) {
        let io = &mut self.conns[slot].sides[from.index()];
        if io.splice.is_none() {
            io.splice = Some(Box::default());
        }
        self.splice_poll(slot, from, false);
    }

    fn splice_poll(&mut self, slot: usize, from: Side, out: bool) {
        let c = &mut self.conns[slot];
        let fd = if out {
            c.sides[from.other().index()].fd
        } else {
            c.sides[from.index()].fd
        };
        let events = if out { libc::POLLOUT } else { libc::POLLIN };
        let op = self.ring.poll(splice_owner(c.id, from), fd, events as u32);
        if let Some(splice) = c.sides[from.index()].splice.as_mut() {
            splice.poll = Some(op);
            splice.waiting_out = out;
        }
        c.ops += 1;
    }

    /// A splice poll completed.
    pub(super) fn on_splice_poll(&mut self, slot: usize, from: Side, result: i32) {
        let c = &mut self.conns[slot];
        let Some(splice) = c.sides[from.index()].splice.as_mut() else {
            return;
        };
        splice.poll = None;
        if c.session.is_closed() {
            // A pipe the direction held may still hold bytes: discard it.
            if let Some(pipe) = splice.pipe.take() {
                self.pipes.discard(pipe);
            }
            return;
        }
        let waiting_out = splice.waiting_out;
        if result < 0 {
            let side = if waiting_out { from.other() } else { from };
            return self.feed(slot, Input::Failed(side));
        }
        if waiting_out && !self.splice_flush(slot, from) {
            return;
        }
        self.splice_pump(slot, from);
    }

    /// Moves bytes from `from` through a pipe to the other side until the source is empty
    /// (then polls for input again), the destination is full (polls for it), or the rounds are
    /// spent (polls again).
    fn splice_pump(&mut self, slot: usize, from: Side) {
        for _ in 0..ROUNDS_PER_WAKEUP {
            if !self.conns.contains(slot) || self.conns[slot].session.is_closed() {
                return;
            }
            let c = &mut self.conns[slot];
            let fd = c.sides[from.index()].fd;
            let Some(splice) = c.sides[from.index()].splice.as_mut() else {
                return;
            };
            let pipe = match splice.pipe.take() {
                Some(p) => p,
                None => {
                    let refused = self.pipes.refused();
                    match self.pipes.take() {
                        Ok(p) => p,
                        Err(e) => {
                            // Nothing was read yet: the buffered relay takes this direction
                            // over without losing a byte. A pipe the kernel made too small is
                            // said once per worker (every direction after it would say the
                            // same); other failures each time.
                            let now_refused = self.pipes.refused();
                            if now_refused == refused || now_refused == 1 {
                                tracing::warn!(worker = self.index, error = %e, "cannot create a splice pipe; relaying this direction buffered");
                            }
                            c.sides[from.index()].splice = None;
                            return self.feed(slot, Input::SpliceUnavailable(from));
                        }
                    }
                }
            };
            match sys::splice(fd, pipe.write, pipe.capacity) {
                Ok(0) => {
                    self.pipes.put(pipe);
                    self.conns[slot].sides[from.index()].splice = None;
                    return self.feed(slot, Input::Eof(from));
                }
                Ok(n) => {
                    splice.pipe = Some(pipe);
                    splice.in_pipe = n as u32;
                    self.feed(slot, Input::Spliced { from, n });
                    if !self.splice_flush(slot, from) {
                        return;
                    }
                    // Less than a pipeful does not end the wake-up: the sender may have
                    // refilled the socket since. A socket whose reader takes one short read
                    // per round trip never has its receive buffer grown by the kernel
                    // (autotuning grows it only for a reader that takes more than the window
                    // per round trip), and under a flood such a connection got a fifth of
                    // the others' share (docs/benchmarks.md, "Turns of the loop and new
                    // clients"). The price: one splice that says EAGAIN per wake-up.
                }
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    self.pipes.put(pipe);
                    break;
                }
                Err(e) => {
                    self.pipes.put(pipe);
                    let errno = e.raw_os_error().unwrap_or(0);
                    if self.ktls_read_failed(slot, from, errno) {
                        return;
                    }
                    return self.feed(slot, Input::Failed(from));
                }
            }
        }
        if self.conns.contains(slot) && !self.conns[slot].session.is_closed() {
            self.splice_poll(slot, from, false);
        }
    }

    /// The send queue of `to` emptied: a splice direction towards it whose pipe waited for
    /// that writes it and goes on.
    pub(super) fn splice_resume(&mut self, slot: usize, to: Side) {
        let from = to.other();
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        if c.session.is_closed() || !c.sides[to.index()].queue.is_empty() {
            return;
        }
        let Some(splice) = c.sides[from.index()].splice.as_mut() else {
            return;
        };
        if !std::mem::take(&mut splice.held) {
            return;
        }
        if self.splice_flush(slot, from) {
            self.splice_pump(slot, from);
        }
    }

    /// Writes what the pipe of `from`'s direction holds to the other side. True when the
    /// pipe is empty (and back in the pool); false when it waits for the destination (its
    /// room, or its send queue: `held`) or the connection ended.
    fn splice_flush(&mut self, slot: usize, from: Side) -> bool {
        loop {
            if !self.conns.contains(slot) || self.conns[slot].session.is_closed() {
                return false;
            }
            let c = &mut self.conns[slot];
            let to = &c.sides[from.other().index()];
            let (to_fd, to_busy) = (to.fd, !to.queue.is_empty());
            let Some(splice) = c.sides[from.index()].splice.as_mut() else {
                return false;
            };
            let Some(pipe) = splice.pipe.as_ref() else {
                return true;
            };
            if to_busy && splice.in_pipe > 0 {
                splice.held = true;
                return false;
            }
            if splice.in_pipe == 0 {
                if let Some(pipe) = splice.pipe.take() {
                    self.pipes.put(pipe);
                }
                return true;
            }
            match sys::splice(pipe.read, to_fd, splice.in_pipe) {
                Ok(n) => {
                    splice.in_pipe -= (n as u32).min(splice.in_pipe);
                    self.feed(slot, Input::SpliceWritten { from, n });
                }
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    self.splice_poll(slot, from, true);
                    return false;
                }
                Err(_) => {
                    self.feed(slot, Input::Failed(from.other()));
                    return false;
                }
            }
        }
    }
}
