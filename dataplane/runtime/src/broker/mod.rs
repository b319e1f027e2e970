//! The dataplane's side of the broker bridge (`wsedge-broker`, issue 16, docs/broker.md):
//! started by `main` when the configuration has a `[broker]` table, and the ports that
//! connect each worker's [`Bus`](crate::bus::Bus) to it.
//!
//! Where the bridge runs: a dedicated thread of the dataplane process (`wsedge-broker`),
//! not the control process. Channel messages are dataplane traffic: through the control
//! process every message would cross one more socket and copy, and the dataplane would
//! stop sharing channels whenever the control process restarts (it is optional). On a
//! worker it would put blocking sockets on the hot path. Its own thread talks to the
//! workers exactly as the control plane does: a channel and the worker's eventfd.
//!
//! - worker to bridge: [`Port::interest`], [`Port::publish`] and [`Port::recover`] send
//!   [`wsedge_broker::Input`]s on an mpsc channel (never blocks); a recovery is sent after
//!   the subscriber's interest, on the same channel, so the bridge holds the channel by then;
//! - bridge to worker: a bounded queue per worker (`[broker] worker_queue`) plus a write
//!   to the worker's wake eventfd. A full queue refuses the message (the bridge counts the
//!   drop and owes that worker's subscribers a `gap`); the bridge never waits on a worker.

use std::cell::Cell;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};

use wsedge_broker::core::{Handoff, RecoveryRequest};
use wsedge_broker::{Handle, HostId, Input, Message, Workers};
use wsedge_command::broker::{BrokerConfig, RecoveryConfig, recovery_of};
use wsedge_proto::function::ConnKey;
use wsedge_proto::recovery::Since;
use wsedge_ring::sys;

/// A worker's connection to the bridge.
#[derive(Debug)]
pub(crate) struct Port {
    worker: usize,
    to_bridge: Sender<Input>,
    from_bridge: Receiver<Handoff>,
    /// The recoverable namespaces (`[[broker.recovery]]`).
    recovery: Arc<[RecoveryConfig]>,
}

impl Port {
    /// This worker now has `count` subscribers of `channel` (over every broadcast route).
    pub(crate) fn interest(&self, channel: &str, count: usize) {
        let _ = self.to_bridge.send(Input::Interest {
            worker: self.worker,
            channel: Arc::from(channel),
            count: count as u64,
        });
    }

    /// A publication of this host: the bridge hands it to the broker, and the local
    /// subscribers (this worker's included) get it back from there.
    pub(crate) fn publish(&self, message: Message) {
        let _ = self.to_bridge.send(Input::Publish(message));
    }

    /// Whether `channel` keeps a history (a recoverable namespace's channel).
    pub(crate) fn recoverable(&self, channel: &str) -> bool {
        recovery_of(&self.recovery, channel).is_some()
    }

    /// Reads `channel`'s history for subscriber `conn` of this worker: the answer comes
    /// back as a handoff for that connection.
    pub(crate) fn recover(&self, channel: &str, conn: ConnKey, since: Option<Since>) {
        let _ = self.to_bridge.send(Input::Recover(RecoveryRequest {
            worker: self.worker,
            conn,
            channel: Arc::from(channel),
            since,
        }));
    }

    /// The next message (or gap notice) the bridge handed to this worker.
    pub(crate) fn next(&self) -> Option<Handoff> {
        self.from_bridge.try_recv().ok()
    }
}

/// The workers' queues, as the bridge holds them.
struct Queues {
    queues: Vec<(SyncSender<Handoff>, RawFd)>,
    /// Workers handed something since the last [`Workers::flush`].
    woken: Vec<Cell<bool>>,
}

impl Workers for Queues {
    fn hand(&self, handoff: &Handoff) -> bool {
        let Some((tx, _)) = self.queues.get(handoff.worker) else {
            return false;
        };
        match tx.try_send(handoff.clone()) {
            Ok(()) => {
                self.woken[handoff.worker].set(true);
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    /// One eventfd write per worker and batch: a burst of a thousand messages costs each
    /// worker one wake, not a thousand.
    fn flush(&self) {
        for ((_, wake_fd), woken) in self.queues.iter().zip(&self.woken) {
            if woken.replace(false) {
                sys::eventfd_signal(*wake_fd);
            }
        }
    }
}

/// Starts the bridge thread for workers woken by `wake_fds`; one [`Port`] per worker, in
/// order.
pub(crate) fn start(
    config: &BrokerConfig,
    identity: Option<&wsedge_tls::ClientIdentity>,
    host: HostId,
    wake_fds: &[RawFd],
) -> std::io::Result<(Handle, Vec<Port>)> {
    let mut queues = Vec::with_capacity(wake_fds.len());
    let mut receivers = Vec::with_capacity(wake_fds.len());
    for &fd in wake_fds {
        let (tx, rx) = mpsc::sync_channel(config.worker_queue);
        queues.push((tx, fd));
        receivers.push(rx);
    }
    let woken = queues.iter().map(|_| Cell::new(false)).collect();
    let recovery: Arc<[RecoveryConfig]> = config.recovery.clone().into();
    let handle = wsedge_broker::start(
        config,
        identity,
        host,
        wake_fds.len(),
        Box::new(Queues { queues, woken }),
    )?;
    let ports = receivers
        .into_iter()
        .enumerate()
        .map(|(worker, from_bridge)| Port {
            worker,
            to_bridge: handle.sender(),
            from_bridge,
            recovery: Arc::clone(&recovery),
        })
        .collect();
    tracing::info!(
        backend = config.backend.as_str(),
        host = %config.host,
        shards = config.shards,
        "broker bridge started: broadcast channels are shared with the other hosts once it connects"
    );
    Ok((handle, ports))
}
