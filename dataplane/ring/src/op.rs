//! The operations: what each one owns while the kernel may touch it, the submission it
//! builds from that memory, and what its final completion hands back.
//!
//! An [`Op`] lives in the ring's op table (a slab) from its submission until its final
//! completion is drained. Every pointer a submission carries goes to memory the op owns on
//! the heap (a `Vec`'s buffer, a `Box`), to the buffer ring, or to `'static` bytes; never to
//! the op value itself, which moves when the table grows.

use std::num::NonZeroU32;
use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types};
use wsedge_proto::chunk::{BufId, Chunk};

use crate::bufring::{BUF_GROUP, BufRing};
use crate::send::SentChunks;
use crate::sys::RawSockAddr;

/// Most chunks written by one send (`SendMsg` with an iovec each).
pub(crate) const MAX_BATCH: usize = 16;

/// Who an operation is for. Opaque to the ring, which hands it back with every completion:
/// the worker encodes a connection id and the purpose (which side, head or relay...).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Owner(pub u64);

/// One operation in flight: its op-table slot and generation, encoded in the submission's
/// `user_data` by plain arithmetic. The generation tells a completion (or a cancel) meant for
/// an operation that already ended from one for the op that reuses its slot.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct OpId {
    slot: u32,
    /// 31 bits, never zero (so `Option<OpId>` is as small as `OpId`: a connection holds
    /// several).
    generation: NonZeroU32,
}

/// `user_data` values with the top bit set are the ring's own (no op-table record).
const RESERVED: u64 = 1 << 63;
/// The `user_data` of every AsyncCancel: its completion is swallowed.
pub(crate) const CANCEL_USER_DATA: u64 = RESERVED | 1;
const GEN_MASK: u32 = 0x7fff_ffff;

impl OpId {
    /// The id of op-table slot `slot` at `generation` (non-zero, 31 bits).
    pub(crate) fn new(slot: usize, generation: u32) -> OpId {
        debug_assert!(generation != 0 && generation <= GEN_MASK);
        OpId {
            // A slab of 2^32 records (hundreds of GiB) cannot exist; a truncated slot would
            // only make the op's completions look stale, never free memory early.
            slot: slot as u32,
            generation: NonZeroU32::new(generation & GEN_MASK).unwrap_or(NonZeroU32::MIN),
        }
    }

    pub(crate) fn slot(self) -> usize {
        self.slot as usize
    }

    pub(crate) fn generation(self) -> u32 {
        self.generation.get()
    }

    /// `generation << 32 | slot`: non-zero, top bit clear.
    pub(crate) fn user_data(self) -> u64 {
        (u64::from(self.generation.get()) << 32) | u64::from(self.slot)
    }

    /// The op a `user_data` names, if it can name one (not reserved, generation non-zero).
    pub(crate) fn from_user_data(user_data: u64) -> Option<OpId> {
        if user_data & RESERVED != 0 {
            return None;
        }
        let generation = NonZeroU32::new((user_data >> 32) as u32)?;
        Some(OpId {
            slot: user_data as u32,
            generation,
        })
    }
}

/// The generation after `g`, in 1..=2^31-1 (two billion ops before one repeats).
pub(crate) fn next_generation(g: u32) -> u32 {
    match g.wrapping_add(1) & GEN_MASK {
        0 => 1,
        n => n,
    }
}

/// What an operation does.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum OpKind {
    /// Multishot accept: `result` is the new socket (non-blocking, close-on-exec).
    Accept,
    /// An 8-byte eventfd read: the mailbox has something.
    Wake,
    /// Single-shot recv into a `Vec`'s spare capacity: `data` is `OpData::Head`.
    RecvHead,
    /// Multishot recv into the provided-buffer ring: `buf` names the buffer.
    RecvMulti,
    /// Single-shot recv into one provided buffer: `buf` names it (none on EOF or error).
    RecvOne,
    /// One send of up to 16 chunks: `data` is `OpData::Sent`.
    Send,
    /// Connect: `result` is 0 or `-errno`.
    Connect,
    /// Single-shot poll: `result` is the ready events or `-errno`.
    Poll,
}

/// The memory an operation owned, handed back with its final completion.
#[derive(Debug)]
pub enum OpData {
    /// Nothing to hand back (or not the final completion).
    None,
    /// `recv_head`'s buffer, its length advanced by the bytes received.
    Head(Vec<u8>),
    /// The chunks of a send, for [`crate::SendQueue::complete`] or [`crate::Ring::recycle`].
    Sent(Box<SentChunks>),
}

/// One completion of an operation.
#[derive(Debug)]
pub struct Completion {
    /// The owner given when the operation was started.
    pub owner: Owner,
    /// The operation.
    pub op: OpId,
    /// What it was.
    pub kind: OpKind,
    /// The kernel's result: bytes, a descriptor, events, or `-errno`.
    pub result: i32,
    /// A multishot operation continues (its record stays); when false the operation has
    /// ended and its memory is in `data`.
    pub more: bool,
    /// The provided buffer the kernel filled (held by the application from now on: give it
    /// back with [`BufRing::give_back`]).
    pub buf: Option<BufId>,
    /// The operation's memory, on its final completion.
    pub data: OpData,
}

/// An operation in flight and the memory the kernel may touch for it.
#[derive(Debug)]
pub(crate) enum Op {
    Accept {
        fd: RawFd,
    },
    /// INVARIANT: the kernel may write the 8 bytes of `buf` until the completion; nothing
    /// else touches them.
    Wake {
        fd: RawFd,
        buf: Box<[u8; 8]>,
    },
    /// INVARIANT: the kernel may write `head.asked` bytes of `head.buf`'s spare capacity,
    /// from `head.buf.len()`, until the completion; `head.buf` is neither read, resized nor
    /// reallocated meanwhile.
    RecvHead {
        fd: RawFd,
        head: Box<HeadRead>,
    },
    /// `limit`: bytes after which the kernel ends it (0: none; needs Linux 6.16).
    RecvMulti {
        fd: RawFd,
        limit: u32,
    },
    RecvOne {
        fd: RawFd,
    },
    /// INVARIANT: the chunks (and the iovecs and message header pointing at them) are only
    /// read by the kernel until the completion; every `Chunk::Buf` among them is lent in the
    /// buffer ring and lies inside its buffer.
    Send {
        fd: RawFd,
        sent: Box<SentChunks>,
    },
    /// INVARIANT: the address is only read by the kernel until the completion.
    Connect {
        fd: RawFd,
        addr: Box<RawSockAddr>,
    },
    Poll {
        fd: RawFd,
        events: u32,
    },
}

/// A head read's buffer and how many bytes of its spare capacity the kernel may write.
/// Boxed in [`Op::RecvHead`]: every variant's memory is a pointer or two words, so a record
/// in the op table is 32 bytes (each idle proxied connection keeps two recvs in it).
#[derive(Debug)]
pub(crate) struct HeadRead {
    pub(crate) buf: Vec<u8>,
    pub(crate) asked: u32,
}

/// Where the unwritten bytes of `chunk` start, and how many there are. A `Chunk::Buf` must
/// have been checked against the buffer ring (see `Ring::send`).
fn chunk_bytes(chunk: &Chunk, bufs: &BufRing) -> (*const u8, usize) {
    match chunk {
        Chunk::Buf { buf, off, len, .. } => {
            (bufs.ptr_at(buf.0, *off), len.saturating_sub(*off) as usize)
        }
        Chunk::Owned { data, off, .. } => tail(data, *off),
        Chunk::Static { data, off } => tail(data, *off),
        Chunk::Shared { data, off } => tail(data, *off),
    }
}

fn tail(data: &[u8], off: usize) -> (*const u8, usize) {
    let rest = data.get(off..).unwrap_or_default();
    (rest.as_ptr(), rest.len())
}

impl Op {
    pub(crate) fn kind(&self) -> OpKind {
        match self {
            Op::Accept { .. } => OpKind::Accept,
            Op::Wake { .. } => OpKind::Wake,
            Op::RecvHead { .. } => OpKind::RecvHead,
            Op::RecvMulti { .. } => OpKind::RecvMulti,
            Op::RecvOne { .. } => OpKind::RecvOne,
            Op::Send { .. } => OpKind::Send,
            Op::Connect { .. } => OpKind::Connect,
            Op::Poll { .. } => OpKind::Poll,
        }
    }

    /// Whether the kernel may post several completions for it.
    pub(crate) fn multishot(&self) -> bool {
        matches!(self, Op::Accept { .. } | Op::RecvMulti { .. })
    }

    /// The submission for this operation. It points only at heap memory this op owns (so
    /// the op value may move), at the buffer ring, or at `'static` bytes; see the variants'
    /// invariants for who may touch that memory until the completion.
    pub(crate) fn entry(&mut self, bufs: &BufRing) -> squeue::Entry {
        match self {
            Op::Accept { fd } => opcode::AcceptMulti::new(types::Fd(*fd))
                .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
                .build(),
            Op::Wake { fd, buf } => opcode::Read::new(types::Fd(*fd), buf.as_mut_ptr(), 8).build(),
            Op::RecvHead { fd, head } => {
                let asked = head.asked;
                let spare = head.buf.spare_capacity_mut();
                debug_assert!(asked as usize <= spare.len());
                opcode::Recv::new(types::Fd(*fd), spare.as_mut_ptr().cast(), asked).build()
            }
            Op::RecvMulti { fd, limit } => {
                let entry = opcode::RecvMulti::new(types::Fd(*fd), BUF_GROUP).build();
                with_optlen(entry, *limit)
            }
            Op::RecvOne { fd } => opcode::Recv::new(types::Fd(*fd), std::ptr::null_mut(), 0)
                .buf_group(BUF_GROUP)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT),
            Op::Send { fd, sent } => {
                if let [chunk] = sent.chunks.as_slice() {
                    let (ptr, len) = chunk_bytes(chunk, bufs);
                    // A longer chunk goes out in part; the result says how much.
                    let len = u32::try_from(len).unwrap_or(u32::MAX);
                    opcode::Send::new(types::Fd(*fd), ptr, len)
                        .flags(libc::MSG_NOSIGNAL)
                        .build()
                } else {
                    let batch = sent.batch.get_or_insert_with(SendBatch::new);
                    let count = sent.chunks.len().min(MAX_BATCH);
                    for (iov, chunk) in batch.iov.iter_mut().zip(&sent.chunks) {
                        let (ptr, len) = chunk_bytes(chunk, bufs);
                        *iov = libc::iovec {
                            iov_base: ptr.cast_mut().cast(),
                            iov_len: len,
                        };
                    }
                    batch.msg.msg_iov = batch.iov.as_mut_ptr();
                    batch.msg.msg_iovlen = count as _;
                    opcode::SendMsg::new(types::Fd(*fd), &raw const batch.msg)
                        .flags(libc::MSG_NOSIGNAL as u32)
                        .build()
                }
            }
            Op::Connect { fd, addr } => {
                opcode::Connect::new(types::Fd(*fd), addr.as_ptr(), addr.len).build()
            }
            Op::Poll { fd, events } => opcode::PollAdd::new(types::Fd(*fd), *events).build(),
        }
    }

    /// The op's memory after its final completion with `result`: the kernel is done with it.
    pub(crate) fn finish(self, result: i32) -> OpData {
        match self {
            Op::RecvHead { head, .. } => {
                let HeadRead { mut buf, asked } = *head;
                if result > 0 {
                    let n = (result as u32).min(asked) as usize;
                    let new_len = (buf.len() + n).min(buf.capacity());
                    // SAFETY: the kernel initialised `result` bytes of the spare capacity from
                    // `len()` (at most the `asked` we gave it, which fits the capacity), and
                    // the completion that says so has been reaped.
                    unsafe { buf.set_len(new_len) };
                }
                OpData::Head(buf)
            }
            Op::Send { sent, .. } => OpData::Sent(sent),
            Op::Accept { .. }
            | Op::Wake { .. }
            | Op::RecvMulti { .. }
            | Op::RecvOne { .. }
            | Op::Connect { .. }
            | Op::Poll { .. } => OpData::None,
        }
    }
}

/// Where `optlen` lies in a submission entry (`struct io_uring_sqe`, include/uapi/linux/
/// io_uring.h: after opcode, flags, ioprio, fd, off, addr, len, op flags, user_data,
/// buf_group and personality; it shares the word with splice_fd_in and file_index).
const SQE_OPTLEN_OFFSET: usize = 44;
const _: () = assert!(std::mem::size_of::<squeue::Entry>() == 64);

/// `entry` with `optlen` set: for a multishot recv, the bytes after which the kernel ends
/// it (IORING_RECV_MSHOT_LIM, Linux 6.16; older kernels ignore the field). The io-uring
/// crate has no setter for it.
pub(crate) fn with_optlen(mut entry: squeue::Entry, optlen: u32) -> squeue::Entry {
    if optlen != 0 {
        let base: *mut squeue::Entry = &raw mut entry;
        // SAFETY: `Entry` is `#[repr(C)]` around the kernel's 64-byte `io_uring_sqe` (size
        // checked above); bytes 44..48 are its `optlen` word (4-aligned, inside the entry),
        // which a recv's entry leaves zero and the kernel reads as a plain u32.
        unsafe {
            base.cast::<u8>()
                .add(SQE_OPTLEN_OFFSET)
                .cast::<u32>()
                .write(optlen)
        };
    }
    entry
}

/// The iovecs and message header of a batched send (boxed, so the header's pointer to the
/// iovecs stays valid wherever the box is moved).
pub(crate) struct SendBatch {
    iov: [libc::iovec; MAX_BATCH],
    msg: libc::msghdr,
}

impl SendBatch {
    pub(crate) fn new() -> Box<SendBatch> {
        Box::new(SendBatch {
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; MAX_BATCH],
            // SAFETY: msghdr is plain old data; all-zero (no name, no control, no iovecs) is
            // a valid value.
            msg: unsafe { std::mem::zeroed() },
        })
    }
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch").finish_non_exhaustive()
    }
}

/// The head buffer's first capacity, and its growth step (a browser's upgrade head is ~600
/// bytes, a 101 ~150).
pub(crate) const HEAD_BUF_START: usize = 1024;

/// Readies `buf` for a head recv and says how many bytes to ask for: never past `max_len`
/// bytes in all, plus one so that "over the limit" is detectable. A full buffer grows by its
/// capacity (at least [`HEAD_BUF_START`]: doubling), capped by what the limit allows.
pub(crate) fn prepare_head(buf: &mut Vec<u8>, max_len: usize) -> u32 {
    if buf.capacity() == buf.len() {
        let grow = buf
            .capacity()
            .max(HEAD_BUF_START)
            .min(max_len.saturating_sub(buf.len()).max(1));
        buf.reserve_exact(grow);
    }
    let spare = buf.capacity() - buf.len();
    let len = spare.min(max_len + 1 - buf.len().min(max_len));
    u32::try_from(len).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_ids_round_trip_and_are_non_zero() {
        for (slot, generation) in [(0, 1), (u32::MAX as usize, GEN_MASK), (12345, 77)] {
            let id = OpId::new(slot, generation);
            let ud = id.user_data();
            assert_ne!(ud, 0);
            assert_eq!(ud & RESERVED, 0);
            assert_eq!(OpId::from_user_data(ud), Some(id));
        }
        assert_eq!(OpId::from_user_data(0), None);
        assert_eq!(OpId::from_user_data(42), None, "generation 0 names no op");
        assert_eq!(OpId::from_user_data(CANCEL_USER_DATA), None);
    }

    #[test]
    fn generations_skip_zero_when_they_wrap() {
        assert_eq!(next_generation(0), 1);
        assert_eq!(next_generation(GEN_MASK - 1), GEN_MASK);
        assert_eq!(next_generation(GEN_MASK), 1);
    }

    #[test]
    fn head_buffers_double_and_never_pass_the_limit() {
        let max = 10_000;
        let mut buf = Vec::new();
        let mut asks = Vec::new();
        while buf.len() <= max {
            let ask = prepare_head(&mut buf, max) as usize;
            assert!(ask >= 1 && ask <= buf.capacity() - buf.len());
            assert!(buf.len() + ask <= max + 1, "asked past the limit");
            asks.push(buf.capacity());
            buf.resize(buf.len() + ask, 0); // as if the kernel filled all of it
        }
        assert_eq!(buf.len(), max + 1);
        assert_eq!(asks[..4], [1024, 2048, 4096, 8192]);
        assert_eq!(*asks.last().unwrap_or(&0), max + 1);
    }

    #[test]
    fn head_buffers_with_room_past_the_limit_ask_for_one_byte_over_it() {
        let mut buf = Vec::with_capacity(4096);
        assert_eq!(prepare_head(&mut buf, 100), 101);
        assert_eq!(buf.capacity(), 4096, "no growth when there is room");
        buf.resize(60, 0);
        assert_eq!(prepare_head(&mut buf, 100), 41);
        buf.resize(101, 0);
        // Already over the limit (the caller should have stopped): one byte, as before.
        assert_eq!(prepare_head(&mut buf, 100), 1);
        let mut none = Vec::new();
        assert_eq!(
            prepare_head(&mut none, 0),
            1,
            "a zero limit still detects a byte"
        );
    }
}
