//! The worker's mailbox: configuration changes, drains, reports, listings, kills, channel
//! messages from other workers and the publish API.

use std::rc::Rc;

use wsedge_proto::session::{CloseReason, Input};

use super::Worker;
use super::mailbox::{Command, ConnectionInfo, WorkerReport};
use crate::bus::BusMessage;
use crate::conn_id::ConnId;
use crate::settings::Settings;

impl Worker {
    pub(super) fn on_command(&mut self, command: Command) {
        match command {
            Command::Shutdown => {
                self.exit_when_empty = true;
                let timeout = self.settings.drain_timeout;
                self.start_drain(Some(timeout));
            }
            Command::Apply { version, settings } => self.apply_settings(version, *settings),
            Command::Certificates { listeners, reply } => {
                self.settings.tls = listeners;
                tracing::info!(worker = self.index, "certificates reloaded");
                let _ = reply.send(self.index);
            }
            Command::Drain { timeout } => self.start_drain(timeout),
            Command::Report { reply } => {
                let _ = reply.send(WorkerReport {
                    index: self.index,
                    config_version: self.config_version,
                    live: self.conns.len(),
                    accepting: self.accepting,
                    stats: self.stats.clone(),
                    ring_buffers: usize::from(self.ring.buffers().count()),
                    ring_held: self.ring.buffers().held(),
                    handshaking: self.handshaking,
                    handshake_us: self.handshake_us.clone(),
                    functions: self.functions.stats(),
                });
            }
            Command::Connections {
                route,
                limit,
                reply,
            } => {
                let now = self.now();
                let list = self
                    .conns
                    .iter()
                    .filter(|(_, c)| !c.session.is_closed())
                    .filter(|(_, c)| {
                        route
                            .as_deref()
                            .is_none_or(|want| c.session.route().is_some_and(|r| r.name == want))
                    })
                    .take(limit)
                    .map(|(_, c)| {
                        let s = &c.session;
                        ConnectionInfo {
                            id: c.id.connection_id(self.index),
                            worker: self.index,
                            client: s.peer(),
                            route: s.route().map(|r| r.name.clone()),
                            origin: s.origin(),
                            age_ms: now.saturating_sub(s.accepted_at()),
                            bytes_from_client: s.bytes_from_client(),
                            bytes_to_client: s.bytes_to_client(),
                            state: s.phase().as_str(),
                        }
                    })
                    .collect();
                let _ = reply.send(list);
            }
            Command::Publish {
                route,
                channel,
                message,
                skip,
                reply,
            } => {
                let message = BusMessage {
                    route,
                    channel,
                    payload: message,
                    skip,
                    host: 0,
                    position: None,
                };
                let mut targets = Vec::new();
                let delivered = self.deliver(&message, &mut targets);
                if let Some(reply) = reply {
                    let _ = reply.send(delivered);
                }
            }
            Command::Presence { channel, reply } => {
                let _ = reply.send(self.bus.presence(&channel));
            }
            Command::SpreadCloses { over } => {
                let now = self.now();
                let window = over.as_millis().max(1) as u64;
                let slots: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                for slot in slots {
                    let at = now + self.random() % window;
                    self.feed(
                        slot,
                        Input::CloseAt {
                            at,
                            reason: CloseReason::Drained,
                        },
                    );
                }
            }
            Command::Retire { over } => self.retire(over),
            Command::Kill { id, reply } => {
                let (worker, id) = ConnId::from_connection_id(id);
                let slot = (worker == self.index)
                    .then(|| self.live_slot(id))
                    .flatten()
                    .filter(|&slot| !self.conns[slot].session.is_closed());
                if let Some(slot) = slot {
                    self.feed(slot, Input::Abort(CloseReason::Killed));
                    self.maybe_free(slot);
                }
                let _ = reply.send(slot.is_some());
            }
        }
    }

    /// Swaps the settings new connections use. Live connections hold their own route.
    fn apply_settings(&mut self, version: u64, settings: Settings) {
        self.routes = settings.routes.iter().cloned().map(Rc::new).collect();
        self.settings = settings;
        self.deploy_scripts();
        self.config_version = version;
        tracing::info!(worker = self.index, version, "configuration applied");
    }
}
