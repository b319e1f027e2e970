//! The provided-buffer ring: the kernel picks a buffer for each multishot recv, so a
//! connection holds relay memory only while its bytes are in flight.
//!
//! Ownership: a buffer is either *in the ring* (the kernel's, to fill for any recv of the
//! group) or *held* by the application, from the recv completion that named it until
//! [`BufRing::give_back`]. While held it may also be *lent* to sends in flight (a `Chunk::Buf`
//! moved into a send operation): the kernel reads it then, so it cannot be written or
//! returned to the ring; a give-back that arrives while it is lent takes effect when the
//! last such send completes. The state of every buffer is tracked here, so no call from safe
//! code can hand the application a slice the kernel may write, nor give a buffer to the
//! kernel twice. Returned ids are published to the kernel in one tail store per loop
//! iteration ([`BufRing::publish`], also done by [`crate::Ring::submit_and_wait`]).

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;
use io_uring::types::BufRingEntry;
use wsedge_proto::chunk::BufId;

use crate::sys;

/// The buffer group id the ring's multishot recvs select from.
pub(crate) const BUF_GROUP: u16 = 0;

/// The largest ring the kernel accepts.
const MAX_COUNT: u16 = 1 << 15;

/// Where one buffer is.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// In the ring: the kernel may pick and fill it at any time.
    in_ring: bool,
    /// Sends in flight that read it (only while held).
    lent: u16,
    /// Given back while lent: goes back to the ring when `lent` drops to zero.
    return_pending: bool,
}

/// The worker's provided buffers: `count` buffers of `size` bytes in one anonymous mapping,
/// and the ring of entries through which the kernel picks them.
///
/// INVARIANT: `entries` maps `count` ring entries and `data` maps `count * size` bytes, both
/// alive until drop (or leaked, if the ring could not reap every operation); the ring is
/// registered with the owning [`crate::Ring`]'s io_uring under `BUF_GROUP`.
///
/// INVARIANT: `slots[id].in_ring` is true exactly for the ids between the kernel's head and
/// the local `tail` (so at most `count` entries are ever outstanding and a new entry never
/// overwrites one the kernel has not consumed); the application gets slices only of held
/// buffers, and mutable ones only of held buffers that no send reads.
#[derive(Debug)]
pub struct BufRing {
    entries: *mut BufRingEntry,
    entries_len: usize,
    data: *mut u8,
    data_len: usize,
    count: u16,
    size: u32,
    /// Local tail: ids added but maybe not yet published.
    tail: u16,
    /// Ids currently held by the application (not in the ring).
    held: usize,
    slots: Box<[Slot]>,
    /// Calls that named a buffer the application does not hold (refused, logged).
    misuses: Cell<u64>,
    /// Set when the owning ring could not reap every operation: the mappings are never
    /// unmapped, as the kernel may still fill them.
    leaked: bool,
}

impl BufRing {
    /// Maps and registers `count` (a power of two, at most 32768) buffers of `size` bytes.
    pub(crate) fn new(ring: &IoUring, count: u16, size: u32) -> io::Result<BufRing> {
        if count == 0 || !count.is_power_of_two() || count > MAX_COUNT || size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "buffer ring: count must be a power of two up to {MAX_COUNT} and size non-zero (got {count} x {size})"
                ),
            ));
        }
        let entries_len = usize::from(count) * std::mem::size_of::<BufRingEntry>();
        let entries = sys::map_anonymous(entries_len)?.cast::<BufRingEntry>();
        let data_len = usize::from(count) * size as usize;
        let data = match sys::map_anonymous(data_len) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: just mapped, never shared with the kernel.
                unsafe { sys::unmap(entries.cast(), entries_len) };
                return Err(e);
            }
        };
        let mut this = BufRing {
            entries,
            entries_len,
            data,
            data_len,
            count,
            size,
            tail: 0,
            held: usize::from(count),
            slots: vec![Slot::default(); usize::from(count)].into_boxed_slice(),
            misuses: Cell::new(0),
            leaked: false,
        };
        for id in 0..count {
            this.push_entry(id);
        }
        this.publish();
        // SAFETY: `entries` is a page-aligned mapping of `count` entries that lives as long as
        // `this`; the owning `Ring` drops its io_uring before `this` (field order) and reaps
        // every operation first (or leaks this mapping, see `leak`).
        let registered = unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries as u64, count, BUF_GROUP, 0)
        };
        if let Err(e) = registered {
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "cannot register a provided-buffer ring (IORING_REGISTER_PBUF_RING, Linux 5.19+): {e}"
                ),
            ));
        }
        Ok(this)
    }

    /// Buffers held by the application (named by a recv completion and not yet back in the
    /// ring, including those lent to sends and those whose give-back waits for a send).
    pub fn held(&self) -> usize {
        self.held
    }

    /// Bytes per buffer.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Number of buffers.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// Calls refused because they named a buffer the application does not hold (a bug in
    /// the caller; each one is also logged).
    pub fn misuses(&self) -> u64 {
        self.misuses.get()
    }

    fn misuse(&self, what: &str, id: u16) {
        self.misuses.set(self.misuses.get() + 1);
        tracing::error!(id, count = self.count, "buffer ring: {what}");
    }

    fn slot(&self, id: u16) -> Option<Slot> {
        self.slots.get(usize::from(id)).copied()
    }

    /// Whether the application holds `id` (so the kernel will not write it).
    fn is_held(&self, id: u16) -> bool {
        self.slot(id).is_some_and(|s| !s.in_ring)
    }

    /// Start of buffer `id` (which must be < count).
    fn ptr(&self, id: u16) -> *mut u8 {
        debug_assert!(id < self.count);
        let id = id.min(self.count - 1);
        // SAFETY: id < count, so the offset stays inside the `data` mapping.
        unsafe { self.data.add(usize::from(id) * self.size as usize) }
    }

    /// Address of byte `off` of buffer `id`, for a send that reads it; `off` is clamped to
    /// the buffer.
    pub(crate) fn ptr_at(&self, id: u16, off: u32) -> *const u8 {
        let off = off.min(self.size);
        // SAFETY: off <= size, so the pointer stays inside (or one past) buffer `id`, inside
        // the mapping.
        unsafe { self.ptr(id).add(off as usize) }
    }

    /// The first `len` bytes of buffer `id`, which a recv completion handed to the
    /// application (`len` is clamped to the buffer size). Empty, and logged as a misuse, if
    /// the application does not hold `id`.
    pub fn bytes(&self, id: BufId, len: usize) -> &[u8] {
        if !self.is_held(id.0) {
            self.misuse("bytes() of a buffer the application does not hold", id.0);
            return &[];
        }
        let len = len.min(self.size as usize);
        // SAFETY: the buffer lies inside the mapping; it is held, so the kernel wrote it before
        // posting the completion that named it and will not write it until it is back in the
        // ring, which needs `&mut self` (so not while this slice lives). Sends in flight only
        // read it.
        unsafe { std::slice::from_raw_parts(self.ptr(id.0), len) }
    }

    /// Buffer `id`'s first `len` bytes, writable (a function endpoint unmasks in place).
    /// Empty, and logged as a misuse, unless the application holds `id` and no send in
    /// flight reads it.
    pub fn bytes_mut(&mut self, id: BufId, len: usize) -> &mut [u8] {
        match self.slot(id.0) {
            Some(s) if !s.in_ring && s.lent == 0 => {}
            _ => {
                self.misuse(
                    "bytes_mut() of a buffer not held, or read by a send in flight",
                    id.0,
                );
                return &mut [];
            }
        }
        let len = len.min(self.size as usize);
        // SAFETY: as for `bytes`; and no send in flight reads it, so neither the kernel nor
        // any other slice touches it while this one (borrowing `self` mutably) lives.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(id.0), len) }
    }

    /// Notes that the kernel handed `id` to the application in a completion. False (and
    /// logged) if the ring did not think the kernel had it.
    pub(crate) fn taken(&mut self, id: u16) -> bool {
        let Some(slot) = self.slots.get_mut(usize::from(id)) else {
            self.misuse("the kernel named a buffer id out of range", id);
            return false;
        };
        if !slot.in_ring {
            self.misuse("the kernel named a buffer the application holds", id);
            return false;
        }
        *slot = Slot::default();
        self.held += 1;
        true
    }

    /// Notes that a send about to be submitted reads `id`. False (nothing lent, logged) if
    /// the application does not hold it: the caller must then not send from it.
    pub(crate) fn lend(&mut self, id: u16) -> bool {
        match self.slots.get_mut(usize::from(id)) {
            Some(slot) if !slot.in_ring && slot.lent < u16::MAX => {
                slot.lent += 1;
                true
            }
            _ => {
                self.misuse("a send names a buffer the application does not hold", id);
                false
            }
        }
    }

    /// Notes that a send that read `id` completed; a give-back that waited for it happens now.
    pub(crate) fn unlend(&mut self, id: u16) {
        let Some(slot) = self.slots.get_mut(usize::from(id)) else {
            return;
        };
        debug_assert!(slot.lent > 0 && !slot.in_ring);
        slot.lent = slot.lent.saturating_sub(1);
        if slot.lent == 0 && slot.return_pending && !slot.in_ring {
            self.push_entry(id);
        }
    }

    /// Returns `id` to the ring (visible to the kernel after [`BufRing::publish`]). If a send
    /// in flight still reads it, it returns when that send completes. Refused (and logged)
    /// if the application does not hold `id`: a buffer is given back exactly once.
    pub fn give_back(&mut self, id: BufId) {
        let id = id.0;
        match self.slots.get_mut(usize::from(id)) {
            Some(slot) if !slot.in_ring && !slot.return_pending && slot.lent > 0 => {
                slot.return_pending = true;
            }
            Some(slot) if !slot.in_ring && !slot.return_pending => self.push_entry(id),
            _ => self.misuse("give_back() of a buffer the application does not hold", id),
        }
    }

    /// Writes the ring entry for `id` at the local tail.
    fn push_entry(&mut self, id: u16) {
        let mask = self.count - 1;
        let index = usize::from(self.tail & mask);
        let addr = self.ptr(id) as u64;
        // SAFETY: index < count, inside the entries mapping; by the struct invariant fewer than
        // `count` buffers are in the ring (`id` is not), so this entry is past the published
        // tail and the kernel does not read it until the next publish.
        let entry = unsafe { &mut *self.entries.add(index) };
        entry.set_addr(addr);
        entry.set_len(self.size);
        entry.set_bid(id);
        self.tail = self.tail.wrapping_add(1);
        self.slots[usize::from(id)] = Slot {
            in_ring: true,
            ..Slot::default()
        };
        self.held -= 1;
    }

    /// Makes every given-back buffer visible to the kernel (one release store).
    pub fn publish(&mut self) {
        // SAFETY: the tail field lives in the first entry of our mapping; the kernel reads it
        // concurrently, so it is written through an atomic with release ordering, which makes
        // the entry writes above visible first.
        unsafe {
            let tail = BufRingEntry::tail(self.entries).cast_mut();
            (*tail.cast::<AtomicU16>()).store(self.tail, Ordering::Release);
        }
    }

    /// Never unmap: the kernel may still fill these buffers (an operation the ring could
    /// not reap at drop).
    pub(crate) fn leak(&mut self) {
        self.leaked = true;
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.leaked {
            return;
        }
        // SAFETY: these are the mappings made in `new`; the owning ring reaped every
        // operation (else `leaked` is set) and closed its io_uring before dropping this.
        unsafe {
            sys::unmap(self.entries.cast(), self.entries_len);
            sys::unmap(self.data, self.data_len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registered ring no recv selects from: `taken` stands in for the kernel.
    fn bufs() -> (IoUring, BufRing) {
        let uring = IoUring::new(8).unwrap_or_else(|e| panic!("io_uring is required: {e}"));
        let bufs = BufRing::new(&uring, 4, 32)
            .unwrap_or_else(|e| panic!("a provided-buffer ring is required: {e}"));
        (uring, bufs)
    }

    #[test]
    fn buffers_in_the_ring_are_not_the_applications() {
        let (_uring, mut bufs) = bufs();
        assert_eq!((bufs.held(), bufs.count(), bufs.size()), (0, 4, 32));
        assert!(bufs.bytes(BufId(0), 8).is_empty());
        assert!(bufs.bytes_mut(BufId(1), 8).is_empty());
        bufs.give_back(BufId(2));
        bufs.give_back(BufId(9));
        assert_eq!(bufs.misuses(), 4);
        assert_eq!(bufs.held(), 0);
        assert!(!bufs.taken(9), "an id out of range");
    }

    #[test]
    fn a_held_buffer_is_readable_writable_and_given_back_once() {
        let (_uring, mut bufs) = bufs();
        assert!(bufs.taken(1));
        assert!(!bufs.taken(1), "the kernel cannot hand out a held buffer");
        assert_eq!(bufs.held(), 1);
        bufs.bytes_mut(BufId(1), 100).copy_from_slice(&[7; 32]);
        assert_eq!(bufs.bytes(BufId(1), 100), [7; 32], "clamped to the size");
        bufs.give_back(BufId(1));
        assert_eq!(bufs.held(), 0);
        bufs.give_back(BufId(1));
        assert_eq!(bufs.held(), 0);
        assert_eq!(
            bufs.misuses(),
            2,
            "the first taken(1) twice, then the second give_back"
        );
    }

    #[test]
    fn a_buffer_lent_to_a_send_returns_when_the_send_completes() {
        let (_uring, mut bufs) = bufs();
        assert!(bufs.taken(3));
        assert!(bufs.lend(3));
        assert!(bufs.lend(3), "two chunks of one buffer in one send");
        assert_eq!(
            bufs.bytes(BufId(3), 4).len(),
            4,
            "reading is fine while the kernel reads"
        );
        assert!(
            bufs.bytes_mut(BufId(3), 4).is_empty(),
            "no writing while a send reads it"
        );
        bufs.give_back(BufId(3));
        assert_eq!(bufs.held(), 1, "deferred until the send completes");
        bufs.unlend(3);
        assert_eq!(bufs.held(), 1);
        bufs.unlend(3);
        assert_eq!(bufs.held(), 0, "back in the ring");
        assert!(!bufs.lend(3), "cannot send from a buffer in the ring");
        assert_eq!(bufs.misuses(), 2);
    }
}
