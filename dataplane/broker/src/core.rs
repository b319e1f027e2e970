//! The bridge's decisions, with no sockets, threads or clock: which channels this host holds
//! broker subscriptions for, where each message goes, when a link reconnects, who gets a
//! `gap`, what presence to write. Inputs are method calls with the time as a parameter; the
//! outputs ([`Output`]) are drained with [`Core::poll_output`], and [`Core::poll_timeout`]
//! says when [`Core::on_timeout`] has work, in quinn-proto's shape.
//!
//! The rules:
//! - a worker reports its subscriber count of a channel whenever it changes
//!   ([`Core::interest`]); the host subscribes at the broker when the first worker is
//!   interested and unsubscribes when the last one leaves;
//! - a message from the broker goes once to each interested worker (one `Arc` shared by all
//!   of them); the publisher's `skip` applies only on the host that published it;
//! - a local publication goes to the broker, and local subscribers get it back through the
//!   broker (one order per channel on every host). While the channel's shard is down, or its
//!   subscription not yet confirmed, it is delivered here directly, and its own echo, should
//!   it come back later, is recognised by its sequence number and dropped;
//! - a shard that comes (back) up resubscribes every channel it holds, and their subscribers
//!   get a `gap` (messages from other hosts may have been missed); a worker whose queue was
//!   full gets a `gap` before its next message of that channel;
//! - at most `max_channels` channels; past it a channel is served on this host only
//!   (every worker is offered its local publications) and counted;
//! - a subscriber's recovery is read once its channel's subscription is confirmed
//!   (`core/recovery.rs`), and always answered.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use wsedge_proto::function::ConnKey;
use wsedge_proto::recovery::{Answer, Since};

use crate::{HostId, Message, wire};

mod recovery;
mod stats;
pub use recovery::{RecoveryRequest, RecoveryStats};
pub use stats::{LAG_BOUNDS_US, Lag, Stats};

/// Milliseconds on the bridge's clock.
pub type Millis = u64;

/// Something the bridge asks of a shard's link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkCmd {
    Subscribe(Arc<str>),
    Unsubscribe(Arc<str>),
    /// An encoded record ([`wire::encode`]) for the channel's subject.
    Publish(Arc<str>, Vec<u8>),
    /// This host's subscriber count of the channel (0: gone), for the fleet's presence.
    Presence(Arc<str>, u64),
    /// Read the channel's history (after `since`, or only its position); answer with
    /// [`LinkEvent::History`] and the same token. Sent only once the channel's
    /// subscription is confirmed, so whatever is published after the read reaches this host
    /// live.
    History {
        token: u64,
        channel: Arc<str>,
        since: Option<Since>,
    },
}

/// What a shard's link reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// Connected (and authenticated): commands are carried from now on.
    Up,
    /// Could not connect, or lost the connection: why.
    Down(String),
    /// The broker confirmed a subscription.
    Subscribed(Arc<str>),
    /// A record arrived on a channel's subject.
    Message(Arc<str>, Vec<u8>),
    /// A history read's answer.
    History { token: u64, answer: Answer },
}

/// A message (or a gap notice) for one worker.
#[derive(Debug, Clone)]
pub struct Handoff {
    pub worker: usize,
    pub channel: Arc<str>,
    /// `None`: only a gap notice.
    pub message: Option<Arc<Message>>,
    /// Messages of this channel may have been lost before this point.
    pub gap: bool,
    /// Not a message: a recovery's answer for this one connection of the worker.
    pub answer: Option<(ConnKey, Arc<Answer>)>,
}

/// What the bridge must do.
#[derive(Debug, Clone)]
pub enum Output {
    /// Start shard `shard`'s link (dropping any older one); its events carry `epoch`.
    Connect {
        shard: usize,
        epoch: u64,
    },
    Link {
        shard: usize,
        cmd: LinkCmd,
    },
    /// Hand a message to a worker's queue; if the queue is full, call [`Core::dropped`].
    Deliver(Handoff),
}

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

/// The bridge's settings.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub host: HostId,
    pub workers: usize,
    pub shards: usize,
    pub max_channels: usize,
    pub backoff: Backoff,
    /// How often every channel's presence is written again (well inside its expiry).
    pub presence_refresh_ms: u64,
    /// How long presence changes are gathered before they are written.
    pub presence_delay_ms: u64,
}

/// A shard link's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Waiting to retry (or to start).
    Down,
    Connecting,
    Up,
}

#[derive(Debug)]
struct Shard {
    state: LinkState,
    epoch: u64,
    /// Failures since it was last up.
    attempt: u32,
    retry_at: Option<Millis>,
    ever_up: bool,
    last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sub {
    /// Not asked for (the shard is down).
    None,
    Pending,
    Live,
}

#[derive(Debug)]
struct Channel {
    shard: usize,
    /// Each worker's subscriber count.
    counts: Vec<u64>,
    /// Workers with a count above 0.
    interested: usize,
    sub: Sub,
    /// Workers owed a gap notice before their next message.
    gap: Vec<bool>,
    /// The last own publication delivered here directly; its echo is dropped.
    local_upto: u64,
    presence_dirty: bool,
}

impl Channel {
    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// The bridge's state (see the module docs).
#[derive(Debug)]
pub struct Core {
    config: CoreConfig,
    shards: Vec<Shard>,
    channels: HashMap<Arc<str>, Channel>,
    /// Channels whose presence changed, written at `presence_due`.
    dirty: Vec<Arc<str>>,
    presence_due: Option<Millis>,
    refresh_due: Millis,
    next_seq: u64,
    rng: u64,
    out: VecDeque<Output>,
    stats: Stats,
    /// The wall clock (Unix microseconds) as the bridge last set it: publications carry it,
    /// arrivals are measured against it. `None`: records are not timed.
    wall_us: Option<u64>,
    /// Recoveries not answered yet, by token.
    recoveries: HashMap<u64, recovery::Pending>,
    next_token: u64,
    /// Answers a full worker queue refused: handed again at the next timeout.
    retry: Vec<Handoff>,
}

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
    /// A bridge whose shards all try to connect at `now`.
    pub fn new(config: CoreConfig, now: Millis, seed: u64) -> Core {
        let shards = (0..config.shards.max(1))
            .map(|_| Shard {
                state: LinkState::Down,
                epoch: 0,
                attempt: 0,
                retry_at: Some(now),
                ever_up: false,
                last_error: None,
            })
            .collect();
        Core {
            refresh_due: now + config.presence_refresh_ms,
            config,
            shards,
            channels: HashMap::new(),
            dirty: Vec::new(),
            presence_due: None,
            next_seq: 1,
            rng: seed | 1,
            out: VecDeque::new(),
            stats: Stats::default(),
            wall_us: None,
            recoveries: HashMap::new(),
            next_token: 1,
            retry: Vec::new(),
        }
    }

    /// Sets the wall clock (Unix microseconds) used to time records (the lag metric).
    pub fn set_wall_clock(&mut self, unix_us: u64) {
        self.wall_us = Some(unix_us);
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

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

    /// Channels held.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Channels whose broker subscription is confirmed.
    pub fn live_subscriptions(&self) -> usize {
        self.channels
            .values()
            .filter(|c| c.sub == Sub::Live)
            .count()
    }

    /// This host's subscribers of `channel`, as the workers reported them.
    pub fn local_count(&self, channel: &str) -> u64 {
        self.channels.get(channel).map_or(0, Channel::total)
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The earliest time [`Core::on_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let retry = self.shards.iter().filter_map(|s| s.retry_at).min();
        // Refused answers are tried again at once (the bridge waits at least 1 ms).
        let answers = (!self.retry.is_empty()).then_some(0);
        [retry, self.presence_due, Some(self.refresh_due), answers]
            .into_iter()
            .flatten()
            .min()
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Reconnections due, presence writes due, refused answers.
    pub fn on_timeout(&mut self, now: Millis) {
        for handoff in std::mem::take(&mut self.retry) {
            self.out.push_back(Output::Deliver(handoff));
        }
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

    fn mark_dirty(&mut self, name: &Arc<str>) {
        match self.channels.get_mut(name) {
            Some(c) if c.presence_dirty => return,
            Some(c) => c.presence_dirty = true,
            None => {}
        }
        self.dirty.push(Arc::clone(name));
    }

    fn presence_changed(&mut self, name: &Arc<str>, now: Millis) {
        self.mark_dirty(name);
        if self.presence_due.is_none() {
            self.presence_due = Some(now + self.config.presence_delay_ms);
        }
    }

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

    fn on_record(&mut self, name: &Arc<str>, bytes: &[u8]) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use wsedge_proto::function::Payload;

    const ME: HostId = 7;
    const OTHER: HostId = 9;

    fn config(shards: usize, max_channels: usize) -> CoreConfig {
        CoreConfig {
            host: ME,
            workers: 3,
            shards,
            max_channels,
            backoff: Backoff {
                min_ms: 100,
                max_ms: 1600,
            },
            presence_refresh_ms: 10_000,
            presence_delay_ms: 500,
        }
    }

    fn msg(host: HostId, channel: &str, text: &str, skip: Option<u64>) -> Message {
        Message {
            route: None,
            channel: Arc::from(channel),
            payload: Arc::new(Payload::Text(text.into())),
            skip,
            host,
            position: None,
        }
    }

    fn drain(core: &mut Core) -> Vec<Output> {
        std::iter::from_fn(|| core.poll_output()).collect()
    }

    /// A core with every shard up.
    fn up_core(shards: usize) -> Core {
        let mut core = Core::new(config(shards, 100), 0, 1);
        core.on_timeout(0);
        for out in drain(&mut core) {
            let Output::Connect { shard, epoch } = out else {
                panic!("{out:?}")
            };
            core.link(shard, epoch, LinkEvent::Up, 0);
        }
        core
    }

    fn handoffs(outs: &[Output]) -> Vec<(usize, Option<String>, bool)> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Deliver(h) => Some((
                    h.worker,
                    h.message.as_ref().map(|m| match &*m.payload {
                        Payload::Text(t) => t.clone(),
                        other => format!("{other:?}"),
                    }),
                    h.gap,
                )),
                _ => None,
            })
            .collect()
    }

    fn link_cmds(outs: &[Output]) -> Vec<LinkCmd> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Link { cmd, .. } => Some(cmd.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_drop_marks_the_next_handoff_of_the_same_burst_with_a_gap() {
        let mut core = up_core(1);
        core.interest(0, "a", 1, 0);
        core.link(0, 1, LinkEvent::Subscribed("a".into()), 0);
        drain(&mut core);
        for text in ["1", "2", "3"] {
            let record = wire::encode(&msg(OTHER, "a", text, None), 1);
            core.link(0, 1, LinkEvent::Message("a".into(), record), 0);
        }
        let outs = drain(&mut core);
        let mut handed = Vec::new();
        for (i, out) in outs.into_iter().enumerate() {
            let Output::Deliver(mut h) = out else {
                continue;
            };
            core.claim_gap(&mut h);
            if i == 0 {
                core.dropped(&h);
            } else {
                handed.push(h.gap);
            }
        }
        assert_eq!(
            handed,
            [true, false],
            "the one after the drop says so, once"
        );
        assert_eq!(core.stats().drops, 1);
    }

    #[test]
    fn timed_records_are_measured() {
        let mut core = up_core(1);
        core.interest(0, "a", 1, 0);
        drain(&mut core);
        core.set_wall_clock(1_000_000);
        let m = msg(OTHER, "a", "x", None);
        let timed = |t| LinkEvent::Message("a".into(), wire::encode_at(&m, 1, Some(t)));
        core.link(0, 1, timed(997_000), 0);
        core.link(0, 1, timed(2_000_000), 0);
        core.link(0, 1, LinkEvent::Message("a".into(), wire::encode(&m, 2)), 0);
        let lag = core.stats().lag;
        assert_eq!(lag.count, 2, "an untimed record is not counted");
        assert_eq!(lag.sum_us, 3_000, "a clock ahead of ours counts as 0");
        assert_eq!(lag.buckets[0], 1);
        assert_eq!(lag.buckets[3], 1, "3 ms is in the 5 ms bucket");
        // Our own publications carry the clock.
        core.publish(msg(ME, "a", "y", None));
        let sent = drain(&mut core).into_iter().find_map(|o| match o {
            Output::Link {
                cmd: LinkCmd::Publish(_, record),
                ..
            } => Some(record),
            _ => None,
        });
        let (_, _, t) = wire::decode_at(&"a".into(), &sent.expect("published")).expect("decodes");
        assert_eq!(t, Some(1_000_000));
    }

    #[test]
    fn subscribes_on_first_worker_and_unsubscribes_on_last() {
        let mut core = up_core(1);
        drain(&mut core);
        core.interest(0, "a", 2, 0);
        assert_eq!(
            link_cmds(&drain(&mut core)),
            [LinkCmd::Subscribe("a".into())]
        );
        core.interest(1, "a", 1, 0);
        core.interest(0, "a", 5, 0);
        core.interest(0, "a", 0, 0);
        assert!(link_cmds(&drain(&mut core)).is_empty(), "still one worker");
        assert_eq!(core.local_count("a"), 1);
        core.interest(1, "a", 0, 0);
        assert_eq!(
            link_cmds(&drain(&mut core)),
            [LinkCmd::Unsubscribe("a".into())]
        );
        assert_eq!(core.channel_count(), 0);
        core.interest(2, "never", 0, 0);
        core.interest(99, "bad worker", 1, 0);
        assert_eq!(core.channel_count(), 0);
    }

    #[test]
    fn a_record_goes_once_to_each_interested_worker() {
        let mut core = up_core(1);
        core.interest(0, "a", 3, 0);
        core.interest(2, "a", 1, 0);
        core.link(0, 1, LinkEvent::Subscribed("a".into()), 0);
        drain(&mut core);
        let record = wire::encode(&msg(OTHER, "a", "hi", Some(5)), 1);
        core.link(0, 1, LinkEvent::Message("a".into(), record), 0);
        let outs = drain(&mut core);
        assert_eq!(
            handoffs(&outs),
            [(0, Some("hi".into()), false), (2, Some("hi".into()), false)]
        );
        // One message shared by both workers; a foreign host's skip key is not ours.
        let arcs: Vec<&Arc<Message>> = outs
            .iter()
            .filter_map(|o| match o {
                Output::Deliver(h) => h.message.as_ref(),
                _ => None,
            })
            .collect();
        assert!(Arc::ptr_eq(arcs[0], arcs[1]));
        assert_eq!(arcs[0].skip, None);
        // Nobody interested, foreign bytes: counted, not delivered.
        core.link(
            0,
            1,
            LinkEvent::Message("zz".into(), wire::encode(&msg(OTHER, "zz", "x", None), 2)),
            0,
        );
        core.link(
            0,
            1,
            LinkEvent::Message("a".into(), b"not ours".to_vec()),
            0,
        );
        assert!(handoffs(&drain(&mut core)).is_empty());
        let s = core.stats();
        assert_eq!(
            (s.unrouted, s.decode_errors, s.deliveries, s.publishes_in),
            (1, 1, 2, 3)
        );
    }

    #[test]
    fn local_publications_come_back_through_the_broker_once() {
        let mut core = up_core(1);
        core.interest(1, "a", 1, 0);
        drain(&mut core);
        // Pending subscription: delivered here at once, and sent to the broker.
        core.publish(msg(ME, "a", "early", Some(11)));
        let outs = drain(&mut core);
        assert_eq!(handoffs(&outs), [(1, Some("early".into()), false)]);
        let [LinkCmd::Publish(_, early)] = &link_cmds(&outs)[..] else {
            panic!("{outs:?}")
        };
        // Its echo arrives after the subscription: a duplicate, dropped.
        core.link(0, 1, LinkEvent::Message("a".into(), early.clone()), 0);
        assert!(handoffs(&drain(&mut core)).is_empty());
        assert_eq!(core.stats().duplicates, 1);
        // Live: only the broker's copy is delivered, with our own skip key kept.
        core.publish(msg(ME, "a", "late", Some(11)));
        let outs = drain(&mut core);
        assert!(handoffs(&outs).is_empty());
        let [LinkCmd::Publish(_, late)] = &link_cmds(&outs)[..] else {
            panic!("{outs:?}")
        };
        core.link(0, 1, LinkEvent::Message("a".into(), late.clone()), 0);
        let outs = drain(&mut core);
        assert_eq!(handoffs(&outs), [(1, Some("late".into()), false)]);
        let Output::Deliver(h) = &outs[0] else {
            panic!()
        };
        assert_eq!(h.message.as_ref().and_then(|m| m.skip), Some(11));
        let s = core.stats();
        assert_eq!((s.publishes_out, s.publishes_local), (2, 1));
    }

    #[test]
    fn down_at_start_serves_locally_then_connects_with_backoff() {
        let mut core = Core::new(config(1, 100), 0, 3);
        assert_eq!(core.poll_timeout(), Some(0));
        core.on_timeout(0);
        let [Output::Connect { shard: 0, epoch: 1 }] = &drain(&mut core)[..] else {
            panic!()
        };
        core.interest(0, "a", 1, 0);
        core.link(0, 1, LinkEvent::Down("refused".into()), 10);
        assert_eq!(core.link_state(0), Some(LinkState::Down));
        assert_eq!(core.last_error(0), Some("refused"));
        // Local-only: delivered here, nothing for the broker.
        core.publish(msg(ME, "a", "local", None));
        let outs = drain(&mut core);
        assert_eq!(handoffs(&outs), [(0, Some("local".into()), false)]);
        assert!(link_cmds(&outs).is_empty());
        // The retries back off: 100, 200, 400, 800, 1600, 1600 (each in [d/2, d]).
        let mut now = 10;
        let mut epoch = 1;
        for (i, d) in [100u64, 200, 400, 800, 1600, 1600].into_iter().enumerate() {
            let at = core.retry_at(0).expect("retry planned");
            assert!(
                (now + d / 2..=now + d).contains(&at),
                "retry {i}: {at} not in {now}+[{}, {d}]",
                d / 2
            );
            core.on_timeout(at - 1);
            assert!(drain(&mut core).is_empty(), "not before its time");
            core.on_timeout(at);
            epoch += 1;
            let outs = drain(&mut core);
            assert!(matches!(outs[..], [Output::Connect { shard: 0, epoch: e }] if e == epoch));
            now = at + 5;
            // A stale link's event changes nothing.
            core.link(0, epoch - 1, LinkEvent::Up, now);
            assert_eq!(core.link_state(0), Some(LinkState::Connecting));
            core.link(0, epoch, LinkEvent::Down("refused".into()), now);
        }
        // It comes up: resubscribes, and the subscriber hears of a gap.
        let at = core.retry_at(0).expect("retry");
        core.on_timeout(at);
        drain(&mut core);
        core.link(0, epoch + 1, LinkEvent::Up, at);
        let outs = drain(&mut core);
        assert_eq!(handoffs(&outs), [(0, None, true)]);
        assert_eq!(link_cmds(&outs), [LinkCmd::Subscribe("a".into())]);
        assert_eq!(
            core.stats().reconnects,
            0,
            "the first connection is no reconnection"
        );
        assert_eq!(core.stats().link_failures, 7);
    }

    #[test]
    fn a_restart_resubscribes_every_channel_with_a_gap() {
        let mut core = up_core(2);
        for name in ["a", "b", "c", "d"] {
            core.interest(0, name, 1, 0);
        }
        core.interest(1, "a", 1, 0);
        drain(&mut core);
        let shard = shard_of("a", 2);
        let on_shard: Vec<&str> = ["a", "b", "c", "d"]
            .into_iter()
            .filter(|n| shard_of(n, 2) == shard)
            .collect();
        core.link(shard, 1, LinkEvent::Down("reset".into()), 5);
        let retry = core.retry_at(shard).expect("retry");
        core.on_timeout(retry);
        drain(&mut core);
        core.link(shard, 2, LinkEvent::Up, retry);
        let outs = drain(&mut core);
        let mut subs: Vec<String> = link_cmds(&outs)
            .into_iter()
            .map(|c| match c {
                LinkCmd::Subscribe(n) => n.to_string(),
                other => panic!("{other:?}"),
            })
            .collect();
        subs.sort();
        assert_eq!(subs, on_shard);
        // One gap notice per interested worker of each resubscribed channel.
        let gaps = handoffs(&outs);
        assert_eq!(gaps.len(), on_shard.len() + 1, "{gaps:?}");
        assert!(gaps.iter().all(|(_, m, gap)| m.is_none() && *gap));
        assert_eq!(core.stats().reconnects, 1);
        assert_eq!(core.stats().gaps, on_shard.len() as u64);
    }

    #[test]
    fn a_full_worker_queue_drops_and_owes_a_gap() {
        let mut core = up_core(1);
        core.interest(0, "a", 1, 0);
        core.interest(1, "a", 1, 0);
        core.link(0, 1, LinkEvent::Subscribed("a".into()), 0);
        drain(&mut core);
        let record = |n: u64| wire::encode(&msg(OTHER, "a", &n.to_string(), None), n);
        core.link(0, 1, LinkEvent::Message("a".into(), record(1)), 0);
        // The bridge could not queue worker 1's copy.
        for out in drain(&mut core) {
            if let Output::Deliver(h) = out
                && h.worker == 1
            {
                core.dropped(&h);
            }
        }
        core.link(0, 1, LinkEvent::Message("a".into(), record(2)), 0);
        assert_eq!(
            handoffs(&drain(&mut core)),
            [(0, Some("2".into()), false), (1, Some("2".into()), true)]
        );
        let s = core.stats();
        assert_eq!((s.drops, s.gaps), (1, 1));
    }

    #[test]
    fn channels_are_bounded() {
        let mut core = Core::new(config(1, 2), 0, 1);
        core.interest(0, "a", 1, 0);
        core.interest(0, "b", 1, 0);
        core.interest(1, "c", 1, 0);
        assert_eq!(core.channel_count(), 2);
        assert_eq!(core.stats().channels_refused, 1);
        drain(&mut core);
        // A publication on the refused channel is offered to every worker.
        core.publish(msg(ME, "c", "x", None));
        assert_eq!(handoffs(&drain(&mut core)).len(), 3);
        // Room again, but c's subscribers have not changed yet: c is still offered.
        core.interest(0, "b", 0, 0);
        drain(&mut core);
        core.publish(msg(ME, "c", "y", None));
        assert_eq!(handoffs(&drain(&mut core)).len(), 3);
        // The next change of that worker's count is taken.
        core.interest(1, "c", 2, 0);
        assert_eq!(core.channel_count(), 2);
        assert_eq!(core.local_count("c"), 2);
    }

    #[test]
    fn presence_is_written_after_changes_and_refreshed() {
        let mut core = up_core(1);
        drain(&mut core);
        core.interest(0, "a", 2, 100);
        core.interest(1, "a", 1, 150);
        drain(&mut core);
        assert_eq!(core.poll_timeout(), Some(600));
        core.on_timeout(600);
        assert_eq!(
            link_cmds(&drain(&mut core)),
            [LinkCmd::Presence("a".into(), 3)]
        );
        core.interest(0, "a", 0, 700);
        core.interest(1, "a", 0, 700);
        drain(&mut core);
        core.on_timeout(1200);
        assert_eq!(
            link_cmds(&drain(&mut core)),
            [LinkCmd::Presence("a".into(), 0)]
        );
        core.interest(2, "b", 4, 1300);
        core.on_timeout(1800);
        drain(&mut core);
        // The refresh rewrites every channel held.
        core.on_timeout(10_000);
        assert_eq!(
            link_cmds(&drain(&mut core)),
            [LinkCmd::Presence("b".into(), 4)]
        );
    }

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard_of("news", 1), 0);
        assert_eq!(shard_of("news", 4), shard_of("news", 4));
        let mut seen = [0usize; 4];
        for i in 0..400 {
            seen[shard_of(&format!("room-{i}"), 4)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        let b = Backoff {
            min_ms: 10,
            max_ms: 50,
        };
        for attempt in 0..40 {
            for r in [0, 1, 7, u64::MAX] {
                let d = b.delay(attempt, r);
                assert!((5..=50).contains(&d), "{attempt} {r} {d}");
            }
        }
    }
}
