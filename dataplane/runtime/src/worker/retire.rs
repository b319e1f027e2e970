//! Retiring after a binary upgrade: the new generation serves the same listening sockets,
//! so this worker stops accepting (its accepts cancelled, the sockets left to the new
//! generation: nothing queued is lost) and closes its connections spread over the upgrade's
//! drain window, so clients reconnect (to the new generation) a few at a time rather than
//! all at once. Each relaying connection gets a random moment of the window (Close with the
//! route's close code, 1001 by default, on `frames` routes and upgraded functions; a plain
//! close on stream routes, as a drain does); one still in its handshake is told when it
//! upgrades (closed by the window's end). A connection whose maximum connection time comes
//! first ends then, as always; the window itself is never longer than the longest maximum
//! connection time. The worker exits once its last connection is gone; whatever is left at
//! the window's end plus the close grace is closed.

use std::time::Duration;

use wsedge_proto::session::{CloseReason, Input, Phase};

use super::Worker;

impl Worker {
    pub(super) fn retire(&mut self, over: Duration) {
        let now = self.now();
        let longest = self.routes.iter().map(|r| r.timers.max_connection_ms).max();
        let window = (over.as_millis() as u64)
            .min(longest.unwrap_or(u64::MAX).max(1))
            .max(1);
        let grace = self
            .routes
            .iter()
            .map(|r| r.frames.close_grace_ms)
            .max()
            .unwrap_or(0);
        let slots: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for slot in slots {
            if matches!(
                self.conns[slot].session.phase(),
                Phase::Relay | Phase::Function
            ) {
                let at = now + self.random() % window;
                let reason = CloseReason::Drained;
                self.feed(slot, Input::CloseAt { at, reason });
                self.maybe_free(slot);
            }
        }
        // Stops accepting; a connection upgrading from now on is told of the deadline.
        self.start_drain(Some(Duration::from_millis(window + grace)));
        self.exit_when_empty = true;
        tracing::info!(
            worker = self.index,
            live = self.conns.len(),
            window_ms = window,
            "retiring: a new generation serves"
        );
    }
}
