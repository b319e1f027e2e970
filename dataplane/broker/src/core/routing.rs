//! Channels and messages: the reference counts the workers report (a broker subscription
//! per channel held, within `max_channels`), local publications (to the broker, or
//! delivered here directly while the channel's subscription is not live), records from the
//! broker handed once to each interested worker (own echoes dropped), and the `gap`s owed
//! after a full worker queue.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{Channel, Core, Handoff, LinkCmd, LinkState, Millis, Output, Stats, Sub};
use crate::{Message, wire};

/// The shard of `channel` among `shards`: FNV-1a, the same on every host and build.
pub fn shard_of(channel: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in channel.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

impl Core {
    /// Worker `worker` now has `count` subscribers of `channel`.
    pub fn interest(&mut self, worker: usize, channel: &str, count: u64, now: Millis) {
        if worker >= self.config.workers {
            return;
        }
        let shards = self.shards.len();
        let name: Arc<str> = match self.channels.get_key_value(channel) {
            Some((name, _)) => Arc::clone(name),
            None if count == 0 => return,
            None => {
                if self.channels.len() >= self.config.max_channels {
                    self.stats.channels_refused += 1;
                    return;
                }
                let name: Arc<str> = Arc::from(channel);
                let shard = shard_of(channel, shards);
                let up = self.shards[shard].state == LinkState::Up;
                self.channels.insert(
                    Arc::clone(&name),
                    Channel {
                        shard,
                        counts: vec![0; self.config.workers],
                        interested: 0,
                        sub: if up { Sub::Pending } else { Sub::None },
                        gap: vec![false; self.config.workers],
                        local_upto: 0,
                        presence_dirty: false,
                    },
                );
                if up {
                    self.out.push_back(Output::Link {
                        shard,
                        cmd: LinkCmd::Subscribe(Arc::clone(&name)),
                    });
                }
                name
            }
        };
        let Some(c) = self.channels.get_mut(&name) else {
            return;
        };
        let before = c.counts[worker];
        c.counts[worker] = count;
        match (before > 0, count > 0) {
            (false, true) => c.interested += 1,
            (true, false) => {
                c.interested -= 1;
                c.gap[worker] = false;
            }
            _ => {}
        }
        if c.interested == 0 {
            let (shard, sub) = (c.shard, c.sub);
            self.channels.remove(&name);
            self.forget_parked(&name);
            if sub != Sub::None && self.shards[shard].state == LinkState::Up {
                self.out.push_back(Output::Link {
                    shard,
                    cmd: LinkCmd::Unsubscribe(Arc::clone(&name)),
                });
            }
        }
        if before != count {
            self.presence_changed(&name, now);
        }
    }

    /// A local publication (a client's, a script's, the publish API's).
    pub fn publish(&mut self, message: Message) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let shard = shard_of(&message.channel, self.shards.len());
        let up = self.shards[shard].state == LinkState::Up;
        if up {
            self.stats.publishes_out += 1;
            self.out.push_back(Output::Link {
                shard,
                cmd: LinkCmd::Publish(
                    Arc::clone(&message.channel),
                    wire::encode_at(&message, seq, self.wall_us),
                ),
            });
        }
        let full = self.channels.len() >= self.config.max_channels;
        let message = Arc::new(message);
        match self.channels.get_mut(&message.channel) {
            Some(c) if up && c.sub == Sub::Live => {}
            Some(c) => {
                c.local_upto = seq;
                self.stats.publishes_local += 1;
                Self::hand_out(&mut self.out, &mut self.stats, c, &message);
            }
            // A channel past the bound: offered to every worker, each keeps it if it has
            // subscribers. Once any channel was refused, an unheld channel may be one whose
            // subscribers are still waiting for their next count change to be taken (room
            // came back since): it is offered too, so they never miss their host's messages.
            None if full || self.stats.channels_refused > 0 => {
                self.stats.publishes_local += 1;
                for worker in 0..self.config.workers {
                    self.stats.deliveries += 1;
                    self.out.push_back(Output::Deliver(Handoff {
                        worker,
                        channel: Arc::clone(&message.channel),
                        message: Some(Arc::clone(&message)),
                        gap: false,
                        answer: None,
                    }));
                }
            }
            // Nobody here listens.
            None => {}
        }
    }

    fn hand_out(out: &mut VecDeque<Output>, stats: &mut Stats, c: &mut Channel, m: &Arc<Message>) {
        for (worker, count) in c.counts.iter().enumerate() {
            if *count == 0 {
                continue;
            }
            stats.deliveries += 1;
            out.push_back(Output::Deliver(Handoff {
                worker,
                channel: Arc::clone(&m.channel),
                message: Some(Arc::clone(m)),
                gap: std::mem::take(&mut c.gap[worker]),
                answer: None,
            }));
        }
    }

    /// Marks `handoff` as carrying the gap its worker is owed on its channel (a drop since
    /// it was made: handoffs of one burst are made before any of them is handed over), and
    /// clears what is owed. Called just before handing it to the worker's queue.
    pub fn claim_gap(&mut self, handoff: &mut Handoff) {
        // A recovery answer is for one connection: the gap stays owed to the channel's
        // next message (every subscriber of the worker gets it there).
        if handoff.answer.is_some() {
            return;
        }
        if let Some(c) = self.channels.get_mut(&handoff.channel)
            && let Some(owed) = c.gap.get_mut(handoff.worker)
        {
            handoff.gap |= std::mem::take(owed);
        }
    }

    /// A worker's queue was full: `handoff` was not delivered.
    pub fn dropped(&mut self, handoff: &Handoff) {
        if handoff.answer.is_some() {
            // Its subscriber waits for it: kept, handed again.
            self.retry.push(handoff.clone());
            return;
        }
        if handoff.message.is_some() {
            self.stats.drops += 1;
        }
        if let Some(c) = self.channels.get_mut(&handoff.channel)
            && c.counts.get(handoff.worker).is_some_and(|n| *n > 0)
        {
            if !c.gap[handoff.worker] {
                self.stats.gaps += 1;
            }
            c.gap[handoff.worker] = true;
        }
    }

    pub(super) fn on_record(&mut self, name: &Arc<str>, bytes: &[u8]) {
        self.stats.publishes_in += 1;
        let Ok((mut message, seq, published_us)) = wire::decode_any(name, bytes) else {
            self.stats.decode_errors += 1;
            return;
        };
        if let (Some(sent), Some(now)) = (published_us, self.wall_us) {
            self.stats.lag.record(now.saturating_sub(sent));
        }
        let Some(c) = self.channels.get_mut(name) else {
            self.stats.unrouted += 1;
            return;
        };
        // A record on the subject proves the subscription.
        if c.sub == Sub::Pending {
            c.sub = Sub::Live;
            self.send_parked(name);
        }
        let Some(c) = self.channels.get_mut(name) else {
            return;
        };
        if message.host == self.config.host {
            if seq <= c.local_upto {
                self.stats.duplicates += 1;
                return;
            }
        } else {
            // Connection keys name connections of their own host only.
            message.skip = None;
        }
        Self::hand_out(&mut self.out, &mut self.stats, c, &Arc::new(message));
    }
}
