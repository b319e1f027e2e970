//! Presence: this host's subscriber count of each channel, written to the broker a moment
//! after it changes (changes gathered for `presence_delay_ms`) and every channel's again
//! each `presence_refresh_ms` (well inside its expiry), by shards that are up.

use std::sync::Arc;

use super::{Core, LinkCmd, LinkState, Millis, Output, shard_of};

impl Core {
    /// Refreshes every channel's presence when due, and writes the changed ones when due.
    pub(super) fn write_presence_due(&mut self, now: Millis) {
        if now >= self.refresh_due {
            self.refresh_due = now + self.config.presence_refresh_ms;
            let names: Vec<Arc<str>> = self.channels.keys().cloned().collect();
            for name in names {
                self.mark_dirty(&name);
            }
            self.presence_due = Some(now);
        }
        if self.presence_due.is_some_and(|t| t <= now) {
            self.presence_due = None;
            let mut dirty = std::mem::take(&mut self.dirty);
            // A channel removed after a change is listed twice.
            dirty.sort_unstable();
            dirty.dedup();
            for name in dirty {
                let shard = shard_of(&name, self.shards.len());
                let count = match self.channels.get_mut(&name) {
                    Some(c) => {
                        c.presence_dirty = false;
                        c.total()
                    }
                    None => 0,
                };
                if self.shards[shard].state == LinkState::Up {
                    self.out.push_back(Output::Link {
                        shard,
                        cmd: LinkCmd::Presence(name, count),
                    });
                }
            }
        }
    }

    pub(super) fn mark_dirty(&mut self, name: &Arc<str>) {
        match self.channels.get_mut(name) {
            Some(c) if c.presence_dirty => return,
            Some(c) => c.presence_dirty = true,
            None => {}
        }
        self.dirty.push(Arc::clone(name));
    }

    pub(super) fn presence_changed(&mut self, name: &Arc<str>, now: Millis) {
        self.mark_dirty(name);
        if self.presence_due.is_none() {
            self.presence_due = Some(now + self.config.presence_delay_ms);
        }
    }
}
