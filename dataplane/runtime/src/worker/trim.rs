//! Giving memory back once the worker is quiet. Handshakes allocate and free transient
//! buffers (heads, the rewritten head, the 101, send queues' first storage); the allocator
//! keeps the pages they emptied until the thread allocates again, so a worker that went
//! idle after a burst of handshakes held them for good (idle RSS per connection 662-974 B
//! against 494-591 B when they are purged: docs/benchmarks.md, "Idle memory"). Every
//! 250 ms the worker looks at its churn (accepts and live connections); the first look
//! with none since the last, after some, it asks the allocator to give empty pages back
//! (`wsedge_ring::sys::alloc::collect`), once, so a steady relay or a handshake storm never
//! pays for it.

use super::{TimerKey, Worker};

/// How often the worker looks at its churn, in wheel ticks (ms). A burst's pages go back
/// within two looks of its end; a collect costs 0.1-0.3 ms with 9,000 connections, and a
/// worker that never goes quiet never pays it.
const TRIM_EVERY_MS: u64 = 250;

/// What the worker compares between trim ticks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Churn {
    accepted: u64,
    live: usize,
}

/// The trim timer's state: the churn seen at the last tick, and whether pages were freed
/// since the last collect.
#[derive(Debug, Default)]
pub(super) struct Trim {
    last: Churn,
    dirty: bool,
}

impl Trim {
    /// One tick: whether to collect now (quiet after churn).
    fn tick(&mut self, now: Churn) -> bool {
        if now != self.last {
            self.last = now;
            self.dirty = true;
            return false;
        }
        std::mem::take(&mut self.dirty)
    }
}

impl Worker {
    /// Arms the first trim tick (at start).
    pub(super) fn arm_trim(&mut self) {
        let at = self.now() + TRIM_EVERY_MS;
        self.wheel.insert(at, TimerKey::Trim.pack());
    }

    /// The trim tick: collect when quiet after churn, then arm the next tick.
    pub(super) fn on_trim_timer(&mut self) {
        let churn = Churn {
            accepted: self.stats.accepted,
            live: self.conns.len(),
        };
        if self.trim.tick(churn) {
            let took = wsedge_ring::sys::alloc::collect();
            tracing::debug!(
                worker = self.index,
                live = churn.live,
                took_us = took.as_micros() as u64,
                "gave freed memory back to the OS"
            );
        }
        self.arm_trim();
    }
}

#[cfg(test)]
mod tests {
    use super::{Churn, Trim};

    fn churn(accepted: u64, live: usize) -> Churn {
        Churn { accepted, live }
    }

    #[test]
    fn collects_once_on_the_first_quiet_tick_after_churn() {
        let mut t = Trim::default();
        assert!(!t.tick(churn(0, 0)), "nothing happened yet");
        assert!(!t.tick(churn(100, 100)), "busy: accepting");
        assert!(!t.tick(churn(300, 250)), "still busy");
        assert!(t.tick(churn(300, 250)), "first quiet tick after churn");
        assert!(!t.tick(churn(300, 250)), "once, not every quiet tick");
        assert!(!t.tick(churn(300, 240)), "closes are churn too");
        assert!(t.tick(churn(300, 240)));
    }

    #[test]
    fn a_steady_relay_never_collects() {
        let mut t = Trim::default();
        t.tick(churn(50, 50));
        t.tick(churn(50, 50));
        for _ in 0..10 {
            assert!(!t.tick(churn(50, 50)));
        }
    }
}
