//! The allocator's housekeeping: mimalloc (the dataplane's global allocator, set in the
//! `wsedge` binary) keeps pages that frees emptied for a while before giving them back to
//! the OS, and does that work only when the thread allocates or frees again. A worker that
//! goes quiet after a burst of handshakes would keep those pages resident for good; the
//! worker calls [`collect`] once it is quiet (worker/trim.rs), as Envoy releases tcmalloc's
//! free memory on an interval.

use std::time::{Duration, Instant};

/// Gives the pages this thread's heap no longer uses back to the OS now (mimalloc's
/// `mi_collect(true)`: frees deferred frees, then purges empty pages without waiting for
/// the purge delay). Returns how long it took. Costs a walk over the thread's pages: call
/// it when the thread is quiet, not per operation.
pub fn collect() -> Duration {
    let start = Instant::now();
    // SAFETY: mi_collect takes no pointers and only touches mimalloc's own state for the
    // calling thread (and the shared arenas, under mimalloc's own synchronisation); it is
    // safe to call from any thread at any time, whichever allocator the process uses.
    unsafe { libmimalloc_sys::mi_collect(true) };
    start.elapsed()
}
