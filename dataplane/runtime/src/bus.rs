//! The worker's bus for channel messages (the `broadcast` function, and scripts' topics):
//! the channels this worker's clients are subscribed to (one [`Hub`] per broadcast route),
//! the other workers (their mailboxes), and the broker bridge's [`Port`] when `[broker]` is
//! configured. Every message carries the host it was published on.
//!
//! Without a bridge, publishing is deferred: a function that publishes while it runs queues
//! the message here, and the worker delivers it to its local subscribers once that function
//! returned (no session is re-entered), while the other workers get it through their
//! mailboxes. With a bridge, a publication goes to the bridge only, and every subscriber of
//! this host (this worker's included) gets it back from the bridge: through the broker's
//! loopback, so every host sees one order per channel (docs/broker.md). The bridge also
//! hears of every change of this worker's subscriber count of a channel, and of every
//! subscriber that recovers its channel's history (a recoverable namespace, docs/broker.md).

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::Arc;

use wsedge_proto::channels::{Hub, HubError, HubLimits};
use wsedge_proto::function::{self, ConnKey, Payload};
use wsedge_proto::recovery::{Position, Since};

use crate::broker::Port;
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
    pub(crate) host: HostId,
    /// Its place in its channel's history (a recoverable channel's, through the broker).
    pub(crate) position: Option<Position>,
}

/// The bus of one worker.
#[derive(Debug)]
pub(crate) struct Bus {
    hubs: HashMap<String, Hub<ConnKey>>,
    /// The other workers.
    peers: Vec<Mailbox>,
    /// Published here, not yet delivered to this worker's subscribers.
    outbox: VecDeque<BusMessage>,
    /// The broker bridge (`[broker]`): publications go there instead of to the peers.
    bridge: Option<Port>,
    host: HostId,
}

impl Bus {
    pub(crate) fn new(peers: Vec<Mailbox>, host: HostId, bridge: Option<Port>) -> Bus {
        Bus {
            hubs: HashMap::new(),
            peers,
            outbox: VecDeque::new(),
            bridge,
            host,
        }
    }

    /// The broker bridge's port, if `[broker]` is configured.
    pub(crate) fn bridge(&self) -> Option<&Port> {
        self.bridge.as_ref()
    }

    /// Tells the bridge (if any) this worker's subscriber count of `channel`.
    fn report(&self, channel: &str) {
        if let Some(port) = &self.bridge {
            port.interest(channel, self.presence(channel));
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
        let result = hub.subscribe(conn, channel);
        if result.is_ok() {
            self.report(channel);
        }
        result
    }

    fn unsubscribe(&mut self, route: &str, channel: &str, conn: ConnKey) -> bool {
        let left = self
            .hubs
            .get_mut(route)
            .is_some_and(|hub| hub.unsubscribe(conn, channel).is_some());
        if left {
            self.report(channel);
        }
        left
    }

    fn leave_all(&mut self, route: &str, conn: ConnKey) {
        let Some(hub) = self.hubs.get_mut(route) else {
            return;
        };
        if self.bridge.is_none() {
            hub.remove_conn(conn);
            return;
        }
        let channels: Vec<String> = hub.channels_of(conn).map(str::to_owned).collect();
        hub.remove_conn(conn);
        for channel in channels {
            self.report(&channel);
        }
    }

    fn publish(&mut self, route: &str, channel: &str, payload: Payload, skip: Option<ConnKey>) {
        let message = BusMessage {
            route: Some(Arc::from(route)),
            channel: Arc::from(channel),
            payload: Arc::new(payload),
            skip,
            host: self.host,
            position: None,
        };
        if let Some(port) = &self.bridge {
            port.publish(wsedge_broker::Message {
                route: message.route,
                channel: message.channel,
                payload: message.payload,
                skip: message.skip,
                host: message.host,
                position: None,
            });
            return;
        }
        for peer in &self.peers {
            peer.send(Command::Publish {
                route: message.route.clone(),
                channel: Arc::clone(&message.channel),
                message: Arc::clone(&message.payload),
                skip,
                reply: None,
            });
        }
        self.outbox.push_back(message);
    }

    fn recoverable(&self, channel: &str) -> bool {
        self.bridge.as_ref().is_some_and(|p| p.recoverable(channel))
    }

    fn recover(&mut self, _route: &str, channel: &str, conn: ConnKey, since: Option<Since>) {
        if let Some(port) = &self.bridge {
            port.recover(channel, conn, since);
        }
    }
}
