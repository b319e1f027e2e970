//! The worker's provided-buffer ring: the kernel picks a buffer for each multishot recv,
//! so a connection holds relay memory only while its bytes are in flight.
//!
//! Ownership: a buffer id is either in the ring (the kernel's to fill) or held by exactly one
//! queued send (ours until that send completes, then given back with [`BufRing::give_back`]).
//! Returned ids are published to the kernel in one tail store per loop iteration.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;
use io_uring::types::BufRingEntry;

use super::sys;

pub(crate) const BUF_GROUP: u16 = 0;

/// INVARIANT: `entries` maps `count` ring entries and `data` maps `count * size` bytes, both
/// alive until drop; the ring is registered with the worker's io_uring under [`BUF_GROUP`].
#[derive(Debug)]
pub(crate) struct BufRing {
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
}

impl BufRing {
    /// Maps and registers `count` (a power of two) buffers of `size` bytes.
    pub(crate) fn new(ring: &IoUring, count: u16, size: u32) -> io::Result<BufRing> {
        let entries_len = usize::from(count) * std::mem::size_of::<BufRingEntry>();
        let entries = sys::map_anonymous(entries_len)?.cast::<BufRingEntry>();
        let data_len = usize::from(count) * size as usize;
        let data = match sys::map_anonymous(data_len) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: just mapped, never shared.
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
        };
        for bid in 0..count {
            this.give_back(bid);
        }
        this.publish();
        // SAFETY: `entries` is a page-aligned mapping of `count` entries that lives as long as
        // `this`; the worker drops `this` only after its ring (field order), and ends its loop
        // only when no connection (so no recv selecting from this group) is left.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries as u64, count, BUF_GROUP, 0)?;
        }
        Ok(this)
    }

    /// Buffers held by the application (in queued sends).
    pub(crate) fn held(&self) -> usize {
        self.held
    }

    /// Start of buffer `bid` (for a send that references it).
    pub(crate) fn ptr(&self, bid: u16) -> *const u8 {
        debug_assert!(bid < self.count);
        // SAFETY: bid < count, so the offset stays inside the `data` mapping.
        unsafe { self.data.add(usize::from(bid) * self.size as usize) }
    }

    /// The first `len` bytes of buffer `bid`, which a recv completion handed to us.
    pub(crate) fn bytes(&self, bid: u16, len: usize) -> &[u8] {
        let len = len.min(self.size as usize);
        // SAFETY: the buffer lies inside the mapping; the kernel wrote it before posting the
        // completion that gave us `bid`, and will not write it again until it is given back.
        unsafe { std::slice::from_raw_parts(self.ptr(bid), len) }
    }

    /// Buffer `bid`'s first `len` bytes, writable: a function endpoint unmasks in place.
    pub(crate) fn bytes_mut(&mut self, bid: u16, len: usize) -> &mut [u8] {
        let len = len.min(self.size as usize);
        // SAFETY: as for `bytes`; and no send refers to `bid` yet (it was just handed to us
        // by a recv completion), so nothing else reads or writes it while we hold `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(bid).cast_mut(), len) }
    }

    /// Notes that the kernel handed `bid` to us in a completion.
    pub(crate) fn taken(&mut self) {
        self.held += 1;
    }

    /// Returns `bid` to the ring (visible to the kernel after [`BufRing::publish`]).
    pub(crate) fn give_back(&mut self, bid: u16) {
        let mask = self.count - 1;
        let index = usize::from(self.tail & mask);
        // SAFETY: index < count, inside the entries mapping; the kernel only reads entries
        // between its head and the published tail, and this one is past the published tail.
        let entry = unsafe { &mut *self.entries.add(index) };
        entry.set_addr(self.ptr(bid) as u64);
        entry.set_len(self.size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        self.held -= 1;
    }

    /// Makes every given-back buffer visible to the kernel (one release store).
    pub(crate) fn publish(&mut self) {
        // SAFETY: the tail field lives in the first entry of our mapping; the kernel reads it
        // concurrently, so it is written through an atomic with release ordering, which makes
        // the entry writes above visible first.
        unsafe {
            let tail = BufRingEntry::tail(self.entries).cast_mut();
            (*tail.cast::<AtomicU16>()).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: the worker drops the ring (and so ends every operation) before this, and
        // these are the mappings made in `new`.
        unsafe {
            sys::unmap(self.entries.cast(), self.entries_len);
            sys::unmap(self.data, self.data_len);
        }
    }
}
