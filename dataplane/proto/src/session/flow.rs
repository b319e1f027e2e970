//! One direction of a connection's byte stream, named by the side its bytes come from: what
//! is in flight (read, not yet written), what was relayed, where the message being relayed
//! ends, and whether the source is done.

use crate::body::{BodyEnd, Fed};

/// One direction of the relay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Flow {
    /// Received from the source, not yet written to the destination.
    pub(super) in_flight: u64,
    /// Total bytes relayed.
    pub(super) bytes: u64,
    /// Where the message the source is sending ends (a plain request's body, a response
    /// that is not a 101); `None` = a stream that ends only with EOF (the relay). Boxed:
    /// only plain HTTP exchanges have one, and every relayed connection holds two flows.
    pub(super) body: Option<Box<BodyEnd>>,
    /// No more bytes will be read from the source (EOF, body complete, or never started).
    pub(super) eof: bool,
    /// The destination's write side was shut down after the source's EOF.
    pub(super) shut: bool,
    /// Reading was started (a plain request's body after its head, or the relay).
    pub(super) started: bool,
}

impl Flow {
    /// `data` arrived: how many of its bytes to forward (fewer only when the message being
    /// relayed ends inside them: the source is then done, and what follows is dropped).
    pub(super) fn on_data(&mut self, data: &[u8]) -> usize {
        let forward = match self.body.as_mut().map(|f| f.feed(data)) {
            None | Some(Ok(Fed::More)) => data.len(),
            Some(Ok(Fed::Done(n))) => {
                self.body = None;
                self.eof = true;
                n
            }
            // A chunked body that breaks the grammar: nothing more of it is relayed.
            Some(Err(_)) => {
                self.body = None;
                self.eof = true;
                0
            }
        };
        self.count(forward);
        forward
    }

    /// `n` bytes to forward, in a stream with no message framing.
    pub(super) fn count(&mut self, n: usize) {
        self.in_flight += n as u64;
        self.bytes += n as u64;
    }

    /// `n` of its bytes were written to the destination (or dropped by the relay).
    pub(super) fn done(&mut self, n: usize) {
        self.in_flight = self.in_flight.saturating_sub(n as u64);
    }
}
