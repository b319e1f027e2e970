//! The control plane's channel requests (`wsedgectl publish` and `presence`, and the HTTP
//! publish API): through the workers' mailboxes on a single host, through the broker
//! bridge when `[broker]` is configured (docs/broker.md).

use std::sync::Arc;

use wsedge_command::wire::server::Failure;
use wsedge_command::wire::{self, ErrorKind, HostPresence, Response};
use wsedge_proto::function::Payload;

use super::Shared;
use crate::worker::mailbox::Command;

/// A `bad_request` unless `channel` is a channel name.
fn check_channel(channel: &str) -> Result<(), Failure> {
    wire::check_channel(channel).map_err(|m| Failure::new(ErrorKind::BadRequest, m))
}

impl Shared {
    /// Publishes `body` on `channel` of every broadcast route. Without a broker, every
    /// worker delivers it to its own subscribers and the answer is the sum of their counts.
    /// With a broker, it goes to every host through the bridge (this host's subscribers
    /// get it back from the broker); the answer is this host's subscribers of the channel
    /// at the time (other hosts' deliveries are not counted).
    pub(super) fn publish(&self, channel: &str, body: Vec<u8>) -> Result<u64, Failure> {
        check_channel(channel)?;
        if body.len() > wire::MAX_PUBLISH {
            return Err(Failure::new(
                ErrorKind::BadRequest,
                format!(
                    "a message of {} bytes exceeds the maximum of {}",
                    body.len(),
                    wire::MAX_PUBLISH
                ),
            ));
        }
        let channel: Arc<str> = Arc::from(channel);
        let message = Arc::new(Payload::from_body(body));
        if let Some(broker) = &self.broker {
            let local = self.local_presence(&channel)?;
            broker.publish(wsedge_broker::Message {
                route: None,
                channel,
                payload: message,
                skip: None,
                host: self.host,
                position: None,
            });
            return Ok(local);
        }
        let counts = self.ask_all("a publish", |reply| Command::Publish {
            route: None,
            channel: Arc::clone(&channel),
            message: Arc::clone(&message),
            skip: None,
            reply: Some(reply),
        })?;
        Ok(counts.iter().map(|&n| n as u64).sum())
    }

    /// Subscribers of `channel` on every worker of this host.
    fn local_presence(&self, channel: &str) -> Result<u64, Failure> {
        let counts = self.ask_all("a presence request", |reply| Command::Presence {
            channel: channel.to_owned(),
            reply,
        })?;
        Ok(counts.iter().map(|&n| n as u64).sum())
    }

    /// Subscribers of `channel`: this host's, or with a broker the fleet's, per host (each
    /// host's count as it keeps it in the broker, with an expiry). A broker that cannot be
    /// read answers `unavailable`, never this host's count alone as if it were the fleet's.
    pub(super) fn presence(&self, channel: String) -> Result<Response, Failure> {
        check_channel(&channel)?;
        let Some(broker) = &self.broker else {
            let subscribers = self.local_presence(&channel)?;
            return Ok(Response::Presence {
                channel,
                subscribers,
                hosts: Vec::new(),
            });
        };
        let counts = broker.presence(&channel).map_err(|e| {
            Failure::new(
                ErrorKind::Unavailable,
                format!("the broker's presence cannot be read: {e}"),
            )
        })?;
        let mut hosts: Vec<HostPresence> = counts
            .into_iter()
            .filter(|c| c.subscribers > 0)
            .map(|c| HostPresence {
                host: c.host,
                subscribers: c.subscribers,
            })
            .collect();
        hosts.sort_by(|a, b| a.host.cmp(&b.host));
        Ok(Response::Presence {
            subscribers: hosts.iter().map(|h| h.subscribers).sum(),
            channel,
            hosts,
        })
    }
}
