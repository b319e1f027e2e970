//! Each shard's link, as the bridge's decisions see it: when it (re)connects (backoff),
//! what its events change (channels fall back to local-only when it is down; when it comes
//! up, every channel of the shard is subscribed again and its subscribers owed a `gap`).

use std::sync::Arc;

use super::{Core, Handoff, LinkCmd, LinkEvent, Millis, Output, Sub};

/// Reconnection delays: doubling from `min_ms` up to `max_ms`, each drawn in `[d/2, d]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min_ms: u64,
    pub max_ms: u64,
}

impl Backoff {
    /// The wait before attempt `attempt + 1` (0: after the first failure); `random` spreads
    /// hosts that lost the same broker at once.
    pub fn delay(&self, attempt: u32, random: u64) -> u64 {
        let d = self
            .min_ms
            .saturating_mul(1u64 << attempt.min(30))
            .min(self.max_ms)
            .max(1);
        d / 2 + random % (d - d / 2 + 1)
    }
}

/// A shard link's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Waiting to retry (or to start).
    Down,
    Connecting,
    Up,
}

impl Core {
    pub fn link_state(&self, shard: usize) -> Option<LinkState> {
        self.shards.get(shard).map(|s| s.state)
    }

    /// The last connection error of a shard not up.
    pub fn last_error(&self, shard: usize) -> Option<&str> {
        self.shards.get(shard).and_then(|s| s.last_error.as_deref())
    }

    /// When a shard that is down tries again.
    pub fn retry_at(&self, shard: usize) -> Option<Millis> {
        self.shards.get(shard).and_then(|s| s.retry_at)
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Shards due to try again: started (a new link epoch).
    pub(super) fn connect_due(&mut self, now: Millis) {
        for (index, shard) in self.shards.iter_mut().enumerate() {
            if shard.state == LinkState::Down && shard.retry_at.is_some_and(|t| t <= now) {
                shard.state = LinkState::Connecting;
                shard.retry_at = None;
                shard.epoch += 1;
                self.out.push_back(Output::Connect {
                    shard: index,
                    epoch: shard.epoch,
                });
            }
        }
    }

    /// An event of shard `shard`'s link number `epoch` (older links' events are ignored).
    pub fn link(&mut self, shard: usize, epoch: u64, event: LinkEvent, now: Millis) {
        let Some(s) = self.shards.get(shard) else {
            return;
        };
        if s.epoch != epoch || s.state == LinkState::Down {
            return;
        }
        match event {
            LinkEvent::Up => self.on_up(shard, now),
            LinkEvent::Down(error) => {
                let delay = {
                    let attempt = self.shards[shard].attempt;
                    let random = self.random();
                    self.config.backoff.delay(attempt, random)
                };
                let s = &mut self.shards[shard];
                s.state = LinkState::Down;
                s.attempt = s.attempt.saturating_add(1);
                s.retry_at = Some(now + delay);
                s.last_error = Some(error);
                self.stats.link_failures += 1;
                for c in self.channels.values_mut().filter(|c| c.shard == shard) {
                    c.sub = Sub::None;
                }
                self.fail_recoveries(shard);
            }
            LinkEvent::Subscribed(name) => {
                if let Some(c) = self.channels.get_mut(&name)
                    && c.sub == Sub::Pending
                {
                    c.sub = Sub::Live;
                    self.send_parked(&name);
                }
            }
            LinkEvent::Message(name, bytes) => self.on_record(&name, &bytes),
            LinkEvent::History { token, answer } => self.on_history(token, answer),
        }
    }

    fn on_up(&mut self, shard: usize, now: Millis) {
        let s = &mut self.shards[shard];
        if s.state == LinkState::Up {
            return;
        }
        if s.ever_up {
            self.stats.reconnects += 1;
        }
        s.state = LinkState::Up;
        s.ever_up = true;
        s.attempt = 0;
        s.last_error = None;
        let mut names = Vec::new();
        for (name, c) in self.channels.iter_mut().filter(|(_, c)| c.shard == shard) {
            c.sub = Sub::Pending;
            names.push(Arc::clone(name));
            // It existed while the shard was not up: other hosts' messages were missed.
            self.stats.gaps += 1;
            for (worker, count) in c.counts.iter().enumerate() {
                if *count > 0 {
                    c.gap[worker] = false;
                    self.out.push_back(Output::Deliver(Handoff {
                        worker,
                        channel: Arc::clone(name),
                        message: None,
                        gap: true,
                        answer: None,
                    }));
                }
            }
        }
        for name in names {
            self.out.push_back(Output::Link {
                shard,
                cmd: LinkCmd::Subscribe(Arc::clone(&name)),
            });
            self.presence_changed(&name, now);
        }
    }
}
