//! The worker's io_uring: setup with the flags that suit one thread per ring, a submission
//! backlog so a full submission queue is never a panic, and completion draining.

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use io_uring::{IoUring, squeue, types};

/// One completion, copied out of the completion queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Completion {
    pub(crate) user_data: u64,
    pub(crate) result: i32,
    pub(crate) flags: u32,
}

/// INVARIANT: every entry pushed (to the queue or the backlog) refers only to memory that
/// stays valid until its completion is reaped; the worker guarantees it by freeing a
/// connection's slot only once its in-flight count is zero.
pub(crate) struct Ring {
    pub(crate) uring: IoUring,
    backlog: VecDeque<squeue::Entry>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("backlog", &self.backlog.len())
            .finish_non_exhaustive()
    }
}

impl Ring {
    /// Builds a ring of `entries` submissions (completion queue 4x larger). Tries
    /// SINGLE_ISSUER | DEFER_TASKRUN (completions run in our thread, when we ask), falling
    /// back to a plain ring on kernels that lack them.
    pub(crate) fn new(entries: u32) -> io::Result<Ring> {
        let tuned = IoUring::builder()
            .setup_cqsize(entries * 4)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_submit_all()
            .build(entries);
        let uring = match tuned {
            Ok(ring) => ring,
            Err(_) => IoUring::builder()
                .setup_cqsize(entries * 4)
                .build(entries)?,
        };
        Ok(Ring {
            uring,
            backlog: VecDeque::new(),
        })
    }

    /// Queues an operation.
    ///
    /// # Safety
    /// Every buffer, address or fd the entry refers to must stay valid until the entry's
    /// completion has been reaped (see the struct invariant).
    pub(crate) unsafe fn push(&mut self, entry: squeue::Entry) {
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

    /// Submits what is queued and waits for at least one completion, at most `timeout`
    /// (forever when `None`). Interruptions and timeouts are not errors.
    pub(crate) fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
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

    /// Moves every available completion into `out`.
    pub(crate) fn drain(&mut self, out: &mut Vec<Completion>) {
        let mut cq = self.uring.completion();
        cq.sync();
        for cqe in &mut cq {
            out.push(Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            });
        }
    }
}

/// Checks that io_uring can be set up here, with a message an operator can act on.
pub(crate) fn probe() -> Result<(), String> {
    match IoUring::new(8) {
        Ok(_) => Ok(()),
        Err(e) => {
            let hint = match e.raw_os_error() {
                Some(libc::ENOSYS) => {
                    "the kernel has no io_uring (CONFIG_IO_URING) or a seccomp filter blocks io_uring_setup"
                }
                Some(libc::EPERM) => {
                    "io_uring is disabled: check `sysctl kernel.io_uring_disabled` (must be 0, or 1 with this user in kernel.io_uring_group) and any seccomp profile (containers often block io_uring)"
                }
                Some(libc::ENOMEM) => {
                    "the locked-memory limit is too low for a ring: raise `ulimit -l`"
                }
                _ => "io_uring_setup failed",
            };
            Err(format!("cannot set up io_uring: {e}: {hint}"))
        }
    }
}
