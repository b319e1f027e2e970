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
//!
//! The state and its outputs are here; the rules, by responsibility, in `core/`: `links`
//! (each shard's link: reconnection with backoff, resubscription and `gap`s when it comes
//! up), `routing` (reference counts, local publications, records from the broker to the
//! workers, drops), `presence` (what is written, when), `recovery`, and `stats`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use wsedge_proto::function::ConnKey;
use wsedge_proto::recovery::{Answer, Since};

use crate::{HostId, Message};

mod links;
mod presence;
mod recovery;
mod routing;
mod stats;
pub use links::{Backoff, LinkState};
pub use recovery::{RecoveryRequest, RecoveryStats};
pub use routing::shard_of;
pub use stats::{LAG_BOUNDS_US, Lag, Stats};

/// Milliseconds on the bridge's clock.
pub type Millis = u64;

/// Something the bridge asks of a shard's link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkCmd {
    Subscribe(Arc<str>),
    Unsubscribe(Arc<str>),
    /// An encoded record ([`crate::wire::encode`]) for the channel's subject.
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

    /// Reconnections due, presence writes due, refused answers.
    pub fn on_timeout(&mut self, now: Millis) {
        for handoff in std::mem::take(&mut self.retry) {
            self.out.push_back(Output::Deliver(handoff));
        }
        self.connect_due(now);
        self.write_presence_due(now);
    }
}

#[cfg(test)]
mod tests;
