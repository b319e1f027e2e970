//! What the broker bridge hands this worker (docs/broker.md): channel messages from every
//! host (this one's included, through the broker's loopback) and `gap` notices, delivered
//! to this worker's subscribers like any bus message; and recovery answers, each for one
//! subscriber (docs/broker.md, "Recovery").

use wsedge_proto::function::Delivery;
use wsedge_proto::session::Input;

use super::Worker;
use crate::bus::BusMessage;
use crate::conn_id::ConnId;

/// Handoffs taken per wake, so a flood from the bridge cannot starve the ring.
const BATCH: usize = 4096;

impl Worker {
    /// Delivers what the bridge queued for this worker. Past [`BATCH`], the worker wakes
    /// itself (its eventfd) to take the rest after the ring's completions: the bridge wakes
    /// a worker once per batch of handoffs, not per handoff.
    pub(super) fn drain_bridge(&mut self) {
        let mut targets = Vec::new();
        for _ in 0..BATCH {
            let Some(handoff) = self.bus.bridge().and_then(|p| p.next()) else {
                return;
            };
            if let Some((conn, answer)) = handoff.answer {
                self.deliver_answer(conn, Delivery::answer(handoff.channel, answer));
                continue;
            }
            if handoff.gap {
                let route = handoff.message.as_ref().and_then(|m| m.route.clone());
                self.deliver_gap(route.as_deref(), &handoff.channel, &mut targets);
            }
            if let Some(m) = handoff.message {
                let message = BusMessage {
                    route: m.route.clone(),
                    channel: m.channel.clone(),
                    payload: m.payload.clone(),
                    skip: m.skip,
                    host: m.host,
                    position: m.position.clone(),
                };
                self.deliver(&message, &mut targets);
            }
        }
        wsedge_ring::sys::eventfd_signal(self.wake_fd);
    }

    /// A recovery's answer, to the one subscriber that asked (if it is still here).
    fn deliver_answer(&mut self, conn: u64, mut delivery: Delivery) {
        let (worker, id) = ConnId::from_public(conn);
        let Some(slot) = self.live_slot(id).filter(|_| worker == self.index) else {
            return;
        };
        if self.conns[slot].session.is_closed() {
            return;
        }
        self.feed(slot, Input::Deliver(&mut delivery));
        self.maybe_free(slot);
    }

    /// Tells this worker's subscribers of `channel` (of `route`, or of every route) that
    /// messages may have been lost: a `{"type":"gap"}` envelope for `wsedge.v1` clients.
    fn deliver_gap(
        &mut self,
        route: Option<&str>,
        channel: &std::sync::Arc<str>,
        targets: &mut Vec<u64>,
    ) {
        targets.clear();
        self.bus.subscribers(route, channel, targets);
        let mut delivery = Delivery::gap(channel.clone());
        for &key in targets.iter() {
            let (worker, id) = ConnId::from_public(key);
            let Some(slot) = self.live_slot(id).filter(|_| worker == self.index) else {
                continue;
            };
            if self.conns[slot].session.is_closed() {
                continue;
            }
            self.feed(slot, Input::Deliver(&mut delivery));
            self.maybe_free(slot);
        }
    }
}
