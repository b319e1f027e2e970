//! The broker bridge: broadcast channels shared by many hosts through Redis or NATS
//! (issue 16; the operator's page is docs/broker.md).
//!
//! Where it sits: each worker's bus (dataplane/runtime `bus.rs`) keeps its own subscribers and
//! talks to the bridge through a channel ([`Input`]); the bridge answers through the workers'
//! mailboxes ([`Workers`]). One bridge per host (per `wsedge` process), on a thread of its
//! own, never on a worker: workers stay free of blocking sockets and of any async runtime.
//!
//! - [`core`]: the decisions, pure (reference counts, routing, gaps, backoff, presence);
//! - [`wire`]: the record a publication travels as;
//! - [`history`]: channel histories in Redis Streams, for recovery (the scripts, the reply);
//! - [`bridge`]: the thread that drives the core, and its [`Handle`];
//! - [`redis`] and [`nats`]: the [`Broker`] backends, blocking clients on threads of their
//!   own per shard (NATS: `nats/conn.rs` connects, over `nats/stream.rs`, plain or TLS).

#![forbid(unsafe_code)]

pub mod bridge;
pub mod core;
pub mod history;
pub mod nats;
pub mod redis;
pub mod wire;

use std::sync::Arc;
use std::sync::mpsc::Sender;

use wsedge_proto::function::{ConnKey, Payload};
use wsedge_proto::recovery::Position;

pub use bridge::{Handle, Input, Status, Workers, start};

/// Names the host (the `wsedge` process) a message was published on.
pub type HostId = u64;

/// A channel message on its way to subscribers: between workers, and between hosts.
#[derive(Debug, Clone)]
pub struct Message {
    /// The broadcast route whose channel it is; `None`: every broadcast route's channel of
    /// that name (the publish API).
    pub route: Option<Arc<str>>,
    pub channel: Arc<str>,
    pub payload: Arc<Payload>,
    /// The publisher, when it must not receive its own message (a key of `host` only).
    pub skip: Option<ConnKey>,
    pub host: HostId,
    /// Its place in the channel's history (a recoverable namespace's channel, as the
    /// broker gave it); `None` for a message not (yet) through the broker.
    pub position: Option<Position>,
}

/// One host's subscribers of a channel, as the fleet's presence reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCount {
    pub host: String,
    pub subscribers: u64,
}

/// A message broker backend.
pub trait Broker: Send + Sync + std::fmt::Debug {
    /// Starts shard `shard`'s link: it connects on threads of its own and reports to
    /// `events` as [`Input::Link`] with `epoch`. Dropping the link closes it.
    fn open(&self, shard: usize, epoch: u64, events: Sender<Input>) -> Box<dyn Link>;

    /// The fleet's presence of `channel` (kept on shard `shard`): each host's count.
    /// Blocks for at most about a second.
    fn presence(&self, shard: usize, channel: &str) -> Result<Vec<HostCount>, String>;
}

/// A shard's open link, as the bridge holds it.
pub trait Link: Send + std::fmt::Debug {
    /// Queues a command; never blocks. Commands after the link failed are dropped.
    fn send(&self, cmd: core::LinkCmd);
}
