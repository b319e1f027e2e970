//! The worker's pipe pool for the splice relay: a direction borrows a pipe only while its
//! bytes are in flight, so idle connections hold no pipes. The splices themselves are
//! synchronous, non-blocking syscalls on the worker ([`crate::sys::splice`]); the ring only
//! polls for readiness.
//!
//! The kernel may give a smaller pipe than asked: a user without CAP_SYS_RESOURCE whose pipes
//! together exceed `fs.pipe-user-pages-soft` (64 MiB by default, counted over all of that
//! user's processes) cannot grow a pipe, and its new pipes get two pages. A pipe below
//! [`MIN_CAPACITY`] (or below the size asked, when that is smaller) costs a splice call per
//! few KiB, more than the buffered relay's copy: the pool refuses it, and the direction is
//! relayed buffered instead (the caller's fallback).

use std::os::fd::RawFd;

use crate::sys;

/// The smallest pipe worth splicing through: the kernel's default pipe size.
pub const MIN_CAPACITY: u32 = 64 * 1024;

/// One kernel pipe. Owned by the pool or by exactly one splice direction.
#[derive(Debug)]
pub struct Pipe {
    /// The read end (`O_NONBLOCK`).
    pub read: RawFd,
    /// The write end (`O_NONBLOCK`).
    pub write: RawFd,
    /// Bytes it holds when full: what one splice into it may move.
    pub capacity: u32,
}

impl Pipe {
    fn close(self) {
        sys::close(self.read);
        sys::close(self.write);
    }
}

/// Free pipes of one size, at most `keep` of them kept open for reuse.
#[derive(Debug)]
pub struct PipePool {
    free: Vec<Pipe>,
    keep: usize,
    size: u32,
    /// Pipes the kernel made too small, closed and refused.
    refused: u64,
}

impl PipePool {
    /// An empty pool of pipes of `size` bytes that keeps at most `keep` free pipes.
    pub fn new(keep: usize, size: u32) -> PipePool {
        PipePool {
            free: Vec::new(),
            keep,
            size,
            refused: 0,
        }
    }

    /// How many pipes the kernel made too small so far (each one a direction relayed
    /// buffered).
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// A pipe from the pool, or a new one. Fails when no pipe can be made, or when the kernel
    /// made it smaller than [`MIN_CAPACITY`] and than the size asked (the error says so).
    pub fn take(&mut self) -> std::io::Result<Pipe> {
        if let Some(pipe) = self.free.pop() {
            return Ok(pipe);
        }
        let (read, write, capacity) = sys::pipe(self.size)?;
        let pipe = Pipe {
            read,
            write,
            capacity,
        };
        if capacity < self.size.min(MIN_CAPACITY) {
            pipe.close();
            self.refused += 1;
            return Err(std::io::Error::other(format!(
                "the kernel gave a {capacity}-byte pipe, not {} bytes: this user's pipes reached \
                 fs.pipe-user-pages-soft (raise it, e.g. with scripts/tune-host.sh, or run with \
                 CAP_SYS_RESOURCE)",
                self.size
            )));
        }
        Ok(pipe)
    }

    /// Returns an empty pipe; a pipe that may still hold bytes must go to [`PipePool::discard`].
    pub fn put(&mut self, pipe: Pipe) {
        if self.free.len() < self.keep {
            self.free.push(pipe);
        } else {
            pipe.close();
        }
    }

    /// Closes a pipe that may still hold bytes (they are dropped with it).
    pub fn discard(&mut self, pipe: Pipe) {
        pipe.close();
    }
}

impl Drop for PipePool {
    fn drop(&mut self) {
        for pipe in self.free.drain(..) {
            pipe.close();
        }
    }
}
