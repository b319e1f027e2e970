//! A global allocator that records the largest single allocation a closure makes, so the
//! `wire` target can check that a frame's announced length is checked before its body is
//! allocated. The only `unsafe` of the fuzz crate: it forwards every call to the system
//! allocator unchanged and only reads and writes a thread-local counter.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Tracking;

thread_local! {
    /// The largest allocation (bytes) since [`largest_allocation`] started, while it runs.
    /// `const` and without a destructor, so using it from the allocator never allocates.
    static LARGEST: Cell<Option<usize>> = const { Cell::new(None) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| {
        if let Some(max) = l.get() {
            l.set(Some(max.max(size)));
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments, so `System`'s
// guarantees hold; `note` neither allocates nor touches the memory.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` and `layout` come from this allocator, which is `System`'s.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as for `dealloc`; `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Runs `f` and returns its result with the size of the largest single allocation (or
/// reallocation) it made on this thread (0 if none).
pub(crate) fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let outer = LARGEST.with(|l| l.replace(Some(0)));
    let result = f();
    let largest = LARGEST.with(|l| l.replace(outer)).unwrap_or(0);
    // A nested call's allocations count for the outer one too.
    if let Some(o) = outer {
        LARGEST.with(|l| l.set(Some(o.max(largest))));
    }
    (result, largest)
}
