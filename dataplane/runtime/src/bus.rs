//! The worker's bus for channel messages (the `broadcast` function, and scripts' topics):
//! the channels this worker's clients are subscribed to (one [`Hub`] per broadcast route),
//! the other workers (their mailboxes), and an egress port a broker bridge can attach to for
//! other hosts. Every message carries the host it was published on.
//!
//! Publishing is deferred: a function that publishes while it runs queues the message here,
//! and the worker delivers it to its local subscribers once that function returned (no
//! session is re-entered), while the other workers get it through their mailboxes.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::Arc;

use wsedge_proto::channels::{Hub, HubError, HubLimits};
use wsedge_proto::function::{self, ConnKey, Payload};

use crate::worker::mailbox::{Command, Mailbox};

/// Names the host a message was published on (breaks echo loops through a broker).
pub(crate) type HostId = u64;

/// A message on its way to subscribers.
#[derive(Debug, Clone)]
pub(crate) struct BusMessage {
    /// The broadcast route whose channel it is; `None`: every broadcast route's channel of
    /// that name (the publish API).
    pub(crate) route: Option<Arc<str>>,
    pub(crate) channel: Arc<str>,
    pub(crate) payload: Arc<Payload>,
    /// The publisher, when it must not receive its own message.
    pub(crate) skip: Option<ConnKey>,
    #[expect(
        dead_code,
        reason = "read by a broker bridge on the egress port (issue 16): it drops its own host's echoes"
    )]
    pub(crate) host: HostId,
}

/// The bus of one worker.
#[derive(Debug)]
pub(crate) struct Bus {
    hubs: HashMap<String, Hub<ConnKey>>,
    /// The other workers.
    peers: Vec<Mailbox>,
    /// Published here, not yet delivered to this worker's subscribers.
    outbox: VecDeque<BusMessage>,
    /// Where this host's publications go for other hosts, once a bridge is attached.
    egress: Option<std::sync::mpsc::Sender<BusMessage>>,
    host: HostId,
}

impl Bus {
    pub(crate) fn new(peers: Vec<Mailbox>, host: HostId) -> Bus {
        Bus {
            hubs: HashMap::new(),
            peers,
            outbox: VecDeque::new(),
            egress: None,
            host,
        }
    }

    /// The next message to deliver locally.
    pub(crate) fn next_local(&mut self) -> Option<BusMessage> {
        self.outbox.pop_front()
    }

    /// This worker's subscribers of `channel` (of `route`, or of every broadcast route).
    pub(crate) fn subscribers(&self, route: Option<&str>, channel: &str, out: &mut Vec<ConnKey>) {
        for (name, hub) in &self.hubs {
            if route.is_none_or(|r| r == name) {
                out.extend(hub.subscribers(channel));
            }
        }
    }

    /// Subscribers of `channel` on this worker, over every broadcast route.
    pub(crate) fn presence(&self, channel: &str) -> usize {
        self.hubs.values().map(|h| h.local_count(channel)).sum()
    }
}

impl function::Bus for Bus {
    fn subscribe(
        &mut self,
        route: &str,
        channel: &str,
        conn: ConnKey,
        limits: HubLimits,
    ) -> Result<usize, HubError> {
        let hub = self
            .hubs
            .entry(route.to_owned())
            .or_insert_with(|| Hub::new(limits));
        hub.set_limits(limits);
        hub.subscribe(conn, channel)
    }

    fn unsubscribe(&mut self, route: &str, channel: &str, conn: ConnKey) -> bool {
        self.hubs
            .get_mut(route)
            .is_some_and(|hub| hub.unsubscribe(conn, channel).is_some())
    }

    fn leave_all(&mut self, route: &str, conn: ConnKey) {
        if let Some(hub) = self.hubs.get_mut(route) {
            hub.remove_conn(conn);
        }
    }

    fn publish(&mut self, route: &str, channel: &str, payload: Payload, skip: Option<ConnKey>) {
        let message = BusMessage {
            route: Some(Arc::from(route)),
            channel: Arc::from(channel),
            payload: Arc::new(payload),
            skip,
            host: self.host,
        };
        for peer in &self.peers {
            peer.send(Command::Publish {
                route: message.route.clone(),
                channel: Arc::clone(&message.channel),
                message: Arc::clone(&message.payload),
                skip,
                reply: None,
            });
        }
        if let Some(egress) = &self.egress
            && egress.send(message.clone()).is_err()
        {
            self.egress = None;
        }
        self.outbox.push_back(message);
    }
}
