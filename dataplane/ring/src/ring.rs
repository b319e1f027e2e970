//! One worker thread's io_uring: setup with the flags that suit one thread per ring, the op
//! table that owns every operation's memory until its final completion, a submission backlog
//! so a full submission queue is never a panic, and completion draining.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use slab::Slab;
use wsedge_proto::chunk::BufId;

use crate::bufring::BufRing;
use crate::op::{
    CANCEL_USER_DATA, Completion, HeadRead, Op, OpData, OpId, Owner, next_generation, prepare_head,
};
use crate::send::SendQueue;
use crate::sys::RawSockAddr;

/// The ring's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingConfig {
    /// Submission queue entries (the completion queue is 4x larger). More operations than
    /// this can be started between two waits: the rest wait in a backlog.
    pub entries: u32,
    /// Provided buffers for multishot recvs: a power of two, at most 32768.
    pub buffer_count: u16,
    /// Bytes per provided buffer.
    pub buffer_size: u32,
}

/// An operation in flight and who it is for.
#[derive(Debug)]
struct Record {
    generation: u32,
    owner: Owner,
    op: Op,
}

// Every idle proxied connection keeps two records (a recv per side): issue 18's memory budget
// per connection counts them. An op's own memory is boxed (see `Op`) to keep this.
const _: () = assert!(std::mem::size_of::<Record>() == 32);

/// How long dropping a ring waits for its cancelled operations to complete before leaking
/// their memory rather than freeing memory the kernel may still write.
const DROP_REAP_LIMIT: Duration = Duration::from_secs(2);

/// One worker thread's io_uring and everything the kernel may touch through it.
///
/// INVARIANT: every entry pushed (to the submission queue or the backlog) refers only to
/// memory owned by a record in `ops` (on the heap: see `Op`), to `bufs`, or to `'static`
/// bytes; a record leaves `ops` only when its final completion is drained (or, at drop, is
/// leaked if it could not be reaped), and `bufs` outlives every operation.
pub struct Ring {
    /// Declared first: closed before the memory below is freed.
    uring: IoUring,
    backlog: VecDeque<squeue::Entry>,
    ops: Slab<Record>,
    bufs: BufRing,
    generation: u32,
    ignored: u64,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("in_flight", &self.ops.len())
            .field("backlog", &self.backlog.len())
            .field("bufs", &self.bufs)
            .field("ignored", &self.ignored)
            .finish_non_exhaustive()
    }
}

impl Ring {
    /// Builds a ring of `cfg.entries` submissions (completion queue 4x larger) and registers
    /// its provided-buffer ring. Tries SINGLE_ISSUER | DEFER_TASKRUN | SUBMIT_ALL
    /// (completions run in this thread, when it asks), falling back to a plain ring on kernels
    /// that lack them. The ring must be used from the thread that made it.
    pub fn new(cfg: RingConfig) -> io::Result<Ring> {
        let cq = cfg.entries.saturating_mul(4);
        let tuned = IoUring::builder()
            .setup_cqsize(cq)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_submit_all()
            .build(cfg.entries);
        let uring = match tuned {
            Ok(ring) => ring,
            Err(_) => IoUring::builder().setup_cqsize(cq).build(cfg.entries)?,
        };
        let bufs = BufRing::new(&uring, cfg.buffer_count, cfg.buffer_size)?;
        Ok(Ring {
            uring,
            backlog: VecDeque::new(),
            ops: Slab::new(),
            bufs,
            generation: 0,
            ignored: 0,
        })
    }

    /// Queues a submission, in the backlog if the submission queue is full (or already has a
    /// backlog: order is kept).
    ///
    /// # Safety
    /// Every buffer, address or fd the entry refers to must stay valid until the entry's
    /// completion has been reaped (see the struct invariant).
    unsafe fn push(&mut self, entry: squeue::Entry) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(entry);
            return;
        }
        // SAFETY: the caller vouches for the entry's memory.
        if unsafe { self.uring.submission().push(&entry) }.is_err() {
            self.backlog.push_back(entry);
        }
    }

    fn flush_backlog(&mut self) {
        while let Some(entry) = self.backlog.front() {
            // SAFETY: backlog entries were pushed under `push`'s contract.
            if unsafe { self.uring.submission().push(entry) }.is_err() {
                return;
            }
            self.backlog.pop_front();
        }
    }

    /// Puts `op` in the op table and queues its submission.
    fn start(&mut self, owner: Owner, op: Op) -> OpId {
        self.generation = next_generation(self.generation);
        let generation = self.generation;
        let vacant = self.ops.vacant_entry();
        let id = OpId::new(vacant.key(), generation);
        let record = vacant.insert(Record {
            generation,
            owner,
            op,
        });
        let entry = record.op.entry(&self.bufs).user_data(id.user_data());
        // SAFETY: the entry points only at heap memory owned by the record just inserted (not
        // at the record itself), at `bufs` or at `'static` bytes (`Op::entry`); the record
        // stays in `ops` until its final completion is drained (`drain`, `Drop`).
        unsafe { self.push(entry) };
        id
    }

    /// Multishot accept on a listener: one completion per connection (`result` is the new
    /// socket, non-blocking and close-on-exec), `more` until it ends.
    pub fn accept_multi(&mut self, owner: Owner, fd: RawFd) -> OpId {
        self.start(owner, Op::Accept { fd })
    }

    /// An 8-byte read on an eventfd into memory the operation owns: completes when the
    /// eventfd is signalled.
    pub fn read_wake(&mut self, owner: Owner, fd: RawFd) -> OpId {
        self.start(
            owner,
            Op::Wake {
                fd,
                buf: Box::new([0; 8]),
            },
        )
    }

    /// A single-shot recv into `buf`'s spare capacity, never past `max_len` bytes in all
    /// (+1, so that "over the limit" is detectable). A full `buf` grows first: by its
    /// capacity (at least 1024 bytes), capped by the limit. The completion's `data` is
    /// `OpData::Head(buf)` with its length advanced by the bytes received.
    pub fn recv_head(&mut self, owner: Owner, fd: RawFd, mut buf: Vec<u8>, max_len: usize) -> OpId {
        let asked = prepare_head(&mut buf, max_len);
        let head = Box::new(HeadRead { buf, asked });
        self.start(owner, Op::RecvHead { fd, head })
    }

    /// Multishot recv into the provided-buffer ring: each completion with `result > 0` names
    /// the buffer (`buf`) that holds its bytes, held until given back. It ends (`!more`) on
    /// EOF, an error, a cancel, or `-ENOBUFS` when the ring has no free buffer (start it
    /// again once buffers were given back).
    ///
    /// `limit` (bytes, 0 for none) ends it once that many were received, with the completion
    /// that reaches it, where the kernel can ([`crate::probe::recv_limit`]; elsewhere it is
    /// ignored): the relay's window, so a read never runs far past its backpressure.
    pub fn recv_multi(&mut self, owner: Owner, fd: RawFd, limit: u32) -> OpId {
        self.start(owner, Op::RecvMulti { fd, limit })
    }

    /// Single-shot recv into one provided buffer (its only completion names it, unless EOF,
    /// an error or `-ENOBUFS`): a read that can take at most one buffer, for rationing them.
    pub fn recv_one(&mut self, owner: Owner, fd: RawFd) -> OpId {
        self.start(owner, Op::RecvOne { fd })
    }

    /// Sends the front of `queue`: up to 16 chunks move into the operation (one `Send`, or
    /// one `SendMsg` with an iovec per chunk). `None` if nothing is pending or a send of this
    /// queue is already in flight. The final completion hands the chunks back in
    /// `OpData::Sent`, for [`SendQueue::complete`] (or [`SendQueue::fail`] when `result <= 0`).
    pub fn send(&mut self, owner: Owner, fd: RawFd, queue: &mut SendQueue) -> Option<OpId> {
        let sent = queue.take_batch(&mut self.bufs)?;
        Some(self.start(owner, Op::Send { fd, sent }))
    }

    /// Connects `fd` (a non-blocking socket of `addr`'s family) to `addr`: `result` is 0 or
    /// `-errno` (`-ECONNREFUSED`...).
    pub fn connect(&mut self, owner: Owner, fd: RawFd, addr: SocketAddr) -> OpId {
        let addr = Box::new(RawSockAddr::from_std(addr));
        self.start(owner, Op::Connect { fd, addr })
    }

    /// A single-shot poll for `events` (`POLLIN`, `POLLOUT`, `POLLRDHUP`...): `result` is the
    /// ready events or `-errno`.
    pub fn poll(&mut self, owner: Owner, fd: RawFd, events: u32) -> OpId {
        self.start(owner, Op::Poll { fd, events })
    }

    /// Asks the kernel to cancel `op`. The cancel's own completion is swallowed; `op`'s final
    /// completion still arrives (`-ECANCELED`, or its result if it finished first). Nothing
    /// happens if `op` already ended.
    pub fn cancel(&mut self, op: OpId) {
        if !self.is_live(op) {
            return;
        }
        let entry = opcode::AsyncCancel::new(op.user_data())
            .build()
            .user_data(CANCEL_USER_DATA);
        // SAFETY: an AsyncCancel refers to no memory; it names its target by `user_data`.
        unsafe { self.push(entry) };
    }

    /// Whether `op` has not had its final completion drained yet.
    pub fn is_live(&self, op: OpId) -> bool {
        self.ops
            .get(op.slot())
            .is_some_and(|r| r.generation == op.generation())
    }

    /// Operations whose final completion has not been drained.
    pub fn in_flight(&self) -> usize {
        self.ops.len()
    }

    /// Submissions waiting for room in the submission queue.
    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }

    /// Completions ignored because they named no operation in flight (a bug somewhere; each
    /// is logged).
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// Takes what completed without submitting what is queued and without waiting: runs the
    /// kernel's work deferred for this ring (with `DEFER_TASKRUN` operations that became
    /// ready complete only when the ring's thread asks), so [`Ring::drain`] sees it. Queued
    /// submissions stay queued, and so keep batching until the next submit.
    pub fn reap(&mut self) -> io::Result<()> {
        // The kernel ABI's flag (the crate keeps its constants private).
        const IORING_ENTER_GETEVENTS: u32 = 1;
        // SAFETY: nothing to submit and no argument (a null pointer of size 0, `()`): the
        // kernel reads no memory of ours; GETEVENTS with min_complete 0 runs the deferred
        // work and returns without waiting.
        let result = unsafe {
            self.uring
                .submitter()
                .enter::<()>(0, 0, IORING_ENTER_GETEVENTS, None)
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Submits what is queued (the backlog first, what still does not fit waits for the next
    /// submit) without taking completions or waiting.
    pub fn submit(&mut self) -> io::Result<()> {
        self.bufs.publish();
        self.flush_backlog();
        match self.uring.submit() {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EINTR)) => {}
            Err(e) => return Err(e),
        }
        self.flush_backlog();
        Ok(())
    }

    /// Publishes given-back buffers, submits what is queued and waits for at least one
    /// completion, at most `timeout` (forever when `None`). Interruptions and timeouts are
    /// not errors.
    pub fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.bufs.publish();
        // A backlog longer than the queue: hand the queue to the kernel without waiting and
        // refill it, until everything is submitted (or the kernel takes no more for now).
        loop {
            self.flush_backlog();
            if self.backlog.is_empty() {
                break;
            }
            match self.uring.submit() {
                Ok(n) if n > 0 => {}
                Ok(_) => break,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EINTR)) => break,
                Err(e) => return Err(e),
            }
        }
        loop {
            self.flush_backlog();
            let result = match timeout {
                Some(t) => {
                    let ts = types::Timespec::from(t);
                    let args = types::SubmitArgs::new().timespec(&ts);
                    self.uring.submitter().submit_with_args(1, &args)
                }
                None => self.uring.submitter().submit_and_wait(1),
            };
            match result {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                // The completion queue is full: reap first, submit on the next round.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(e),
            }
            // More backlog than queue space: keep submitting while completions are reaped.
            if self.backlog.is_empty() || !self.uring.completion().is_empty() {
                return Ok(());
            }
        }
    }

    /// Moves every available completion into `out`. A final completion (`!more`) frees its
    /// operation's record and returns its memory in `data`. A completion that names no
    /// operation in flight is ignored (counted in [`Ring::ignored`]; a buffer it carries goes
    /// back to the ring); an AsyncCancel's own completion is swallowed.
    pub fn drain(&mut self, out: &mut Vec<Completion>) {
        let Ring {
            uring,
            ops,
            bufs,
            ignored,
            ..
        } = self;
        let mut cq = uring.completion();
        cq.sync();
        for cqe in &mut cq {
            let (user_data, result, flags) = (cqe.user_data(), cqe.result(), cqe.flags());
            if user_data == CANCEL_USER_DATA {
                continue;
            }
            let mut buf = cqueue::buffer_select(flags);
            if let Some(id) = buf
                && !bufs.taken(id)
            {
                // Not the kernel's to give (logged): the application must not get it twice.
                buf = None;
            }
            let live = OpId::from_user_data(user_data).filter(|id| {
                ops.get(id.slot())
                    .is_some_and(|r| r.generation == id.generation())
            });
            let Some(id) = live else {
                *ignored += 1;
                tracing::error!(
                    user_data,
                    result,
                    "completion for no operation in flight (ignored)"
                );
                if let Some(b) = buf {
                    bufs.give_back(BufId(b));
                }
                continue;
            };
            let record = &ops[id.slot()];
            let (owner, kind) = (record.owner, record.op.kind());
            let more = record.op.multishot() && cqueue::more(flags);
            let data = if more {
                OpData::None
            } else {
                let record = ops.remove(id.slot());
                if let Op::Send { sent, .. } = &record.op {
                    sent.unlend(bufs);
                }
                record.op.finish(result)
            };
            out.push(Completion {
                owner,
                op: id,
                kind,
                result,
                more,
                buf: buf.map(BufId),
                data,
            });
        }
    }

    /// The provided-buffer ring: the bytes a recv completion named, and giving them back.
    pub fn buffers(&mut self) -> &mut BufRing {
        &mut self.bufs
    }

    /// Hands back the provided buffers that chunks returned by a send release: for a
    /// completion whose owner is gone. Other memory is simply dropped.
    pub fn recycle(&mut self, data: OpData) {
        match data {
            OpData::Sent(sent) => sent.release_all(&mut self.bufs),
            OpData::Head(_) | OpData::None => {}
        }
    }

    /// Disposes of a completion whose owner is gone: gives back its provided buffer, if any,
    /// and [`Ring::recycle`]s its memory.
    pub fn discard(&mut self, c: Completion) {
        if let Some(id) = c.buf {
            self.bufs.give_back(id);
        }
        self.recycle(c.data);
    }

    /// Queues a no-op with an arbitrary `user_data` (tests of stale completions).
    #[cfg(test)]
    fn submit_nop(&mut self, user_data: u64) {
        let entry = opcode::Nop::new().build().user_data(user_data);
        // SAFETY: a Nop refers to no memory.
        unsafe { self.push(entry) };
    }
}

impl Drop for Ring {
    /// Cancels what is in flight and reaps it, so no operation's memory is freed while the
    /// kernel may still use it. What cannot be reaped in time is leaked, never freed.
    fn drop(&mut self) {
        if self.ops.is_empty() {
            return;
        }
        let targets: Vec<u64> = self
            .ops
            .iter()
            .map(|(slot, r)| OpId::new(slot, r.generation).user_data())
            .collect();
        for target in targets {
            let entry = opcode::AsyncCancel::new(target)
                .build()
                .user_data(CANCEL_USER_DATA);
            // SAFETY: an AsyncCancel refers to no memory.
            unsafe { self.push(entry) };
        }
        let deadline = Instant::now() + DROP_REAP_LIMIT;
        let mut out = Vec::new();
        while !self.ops.is_empty() && Instant::now() < deadline {
            if self
                .submit_and_wait(Some(Duration::from_millis(20)))
                .is_err()
            {
                break;
            }
            self.drain(&mut out);
            for c in out.drain(..) {
                self.discard(c);
            }
        }
        if !self.ops.is_empty() {
            tracing::error!(
                in_flight = self.ops.len(),
                "io_uring operations did not end at shutdown: leaking their memory"
            );
            std::mem::forget(std::mem::take(&mut self.ops));
            self.bufs.leak();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Ring {
        Ring::new(RingConfig {
            entries: 8,
            buffer_count: 4,
            buffer_size: 64,
        })
        .unwrap_or_else(|e| panic!("io_uring with a provided-buffer ring is required: {e}"))
    }

    fn drain_for(ring: &mut Ring, wait: Duration) -> Vec<Completion> {
        let mut out = Vec::new();
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            ring.submit_and_wait(Some(Duration::from_millis(10)))
                .unwrap_or_else(|e| panic!("submit: {e}"));
            ring.drain(&mut out);
        }
        out
    }

    #[test]
    fn unknown_and_stale_user_data_are_ignored() {
        let mut ring = ring();
        let efd = crate::sys::eventfd().unwrap_or_else(|e| panic!("eventfd: {e}"));
        // An op that ends: its id is stale afterwards.
        let stale = ring.read_wake(Owner(1), efd);
        crate::sys::eventfd_signal(efd);
        let done = drain_for(&mut ring, Duration::from_millis(100));
        assert_eq!(done.len(), 1, "{done:?}");
        assert!(!ring.is_live(stale));
        // The next op reuses the slot with a new generation, and waits (the counter was read).
        let pending = ring.poll(Owner(2), efd, libc::POLLIN as u32);
        assert_eq!(pending.slot(), stale.slot());
        assert_ne!(pending, stale);

        let held_before = ring.buffers().held();
        ring.submit_nop(stale.user_data()); // stale: must not pass for `pending`
        ring.submit_nop(0); // names no op
        ring.submit_nop(0x0000_0005_0000_0063); // a slot never used
        ring.submit_nop(CANCEL_USER_DATA); // reserved: swallowed, not counted
        ring.cancel(stale); // stale: nothing is submitted, `pending` is not cancelled
        let out = drain_for(&mut ring, Duration::from_millis(50));
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(ring.ignored(), 3);
        assert!(ring.is_live(pending));
        assert_eq!(ring.buffers().held(), held_before);

        ring.cancel(pending);
        let out = drain_for(&mut ring, Duration::from_millis(50));
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!((out[0].owner, out[0].op), (Owner(2), pending));
        assert_eq!(out[0].result, -libc::ECANCELED);
        assert_eq!(ring.in_flight(), 0);
        crate::sys::close(efd);
    }

    #[test]
    fn a_full_submission_queue_is_a_backlog() {
        let mut ring = ring();
        let efd = crate::sys::eventfd().unwrap_or_else(|e| panic!("eventfd: {e}"));
        // 8 entries, 40 operations: 32 wait in the backlog.
        let ops: Vec<OpId> = (0..40)
            .map(|i| ring.poll(Owner(i), efd, libc::POLLIN as u32))
            .collect();
        assert!(ring.backlog() >= 32, "backlog {}", ring.backlog());
        for op in &ops {
            ring.cancel(*op);
        }
        let out = drain_for(&mut ring, Duration::from_millis(300));
        assert_eq!(out.len(), 40, "{out:?}");
        assert!(out.iter().all(|c| c.result == -libc::ECANCELED && !c.more));
        assert_eq!(ring.in_flight(), 0);
        assert_eq!(ring.backlog(), 0);
        crate::sys::close(efd);
    }
}
