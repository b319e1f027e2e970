//! The worker's pipe pool for the splice relay: a direction borrows a pipe only while its
//! bytes are in flight, so idle connections hold no pipes. The splices themselves are
//! synchronous, non-blocking syscalls on the worker ([`crate::sys::splice`]); the ring only
//! polls for readiness.

use std::os::fd::RawFd;

use crate::sys;

/// One kernel pipe. Owned by the pool or by exactly one splice direction.
#[derive(Debug)]
pub struct Pipe {
    /// The read end (`O_NONBLOCK`).
    pub read: RawFd,
    /// The write end (`O_NONBLOCK`).
    pub write: RawFd,
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
}

impl PipePool {
    /// An empty pool of pipes of `size` bytes that keeps at most `keep` free pipes.
    pub fn new(keep: usize, size: u32) -> PipePool {
        PipePool {
            free: Vec::new(),
            keep,
            size,
        }
    }

    /// The size pipes are made with (the kernel may round it).
    pub fn size(&self) -> u32 {
        self.size
    }

    /// A pipe from the pool, or a new one.
    pub fn take(&mut self) -> std::io::Result<Pipe> {
        match self.free.pop() {
            Some(p) => Ok(p),
            None => sys::pipe(self.size).map(|(read, write)| Pipe { read, write }),
        }
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
