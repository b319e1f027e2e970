//! The worker's pipe pool for the splice relay: a direction borrows a pipe only while its
//! bytes are in flight, so idle connections hold no pipes.

use std::os::fd::RawFd;

use super::sys;

/// One kernel pipe. Owned by the pool or by exactly one splice direction.
#[derive(Debug)]
pub(crate) struct Pipe {
    pub(crate) read: RawFd,
    pub(crate) write: RawFd,
}

impl Pipe {
    fn close(self) {
        sys::close(self.read);
        sys::close(self.write);
    }
}

#[derive(Debug)]
pub(crate) struct PipePool {
    free: Vec<Pipe>,
    keep: usize,
    size: u32,
}

impl PipePool {
    pub(crate) fn new(keep: usize, size: u32) -> PipePool {
        PipePool {
            free: Vec::new(),
            keep,
            size,
        }
    }

    pub(crate) fn size(&self) -> u32 {
        self.size
    }

    /// A pipe from the pool, or a new one.
    pub(crate) fn take(&mut self) -> std::io::Result<Pipe> {
        match self.free.pop() {
            Some(p) => Ok(p),
            None => sys::pipe(self.size).map(|(read, write)| Pipe { read, write }),
        }
    }

    /// Returns an empty pipe; a pipe that may still hold bytes must go to [`PipePool::discard`].
    pub(crate) fn put(&mut self, pipe: Pipe) {
        if self.free.len() < self.keep {
            self.free.push(pipe);
        } else {
            pipe.close();
        }
    }

    pub(crate) fn discard(&mut self, pipe: Pipe) {
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
