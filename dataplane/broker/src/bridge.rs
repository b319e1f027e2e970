//! The bridge thread: drives the [`Core`] with what the workers and the links send, applies
//! its outputs (links opened and fed, messages handed to the workers' queues), logs the
//! links' state changes and publishes a [`Status`] for metrics and `wsedgectl`.
//!
//! One thread per host. Everything reaches it through one channel ([`Input`]), so it
//! waits on one thing only, with the core's next deadline as the timeout; it never blocks on
//! a socket (the links' own threads do) nor on a worker (a full queue is a drop).

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wsedge_command::broker::{BrokerBackend, BrokerConfig};
use wsedge_tls::ClientIdentity;

use crate::core::{Backoff, Core, CoreConfig, Handoff, LinkCmd, LinkEvent, LinkState, Output};
use crate::core::{Stats, shard_of};
use crate::{Broker, HostCount, HostId, Link, Message};

/// What the bridge thread receives.
#[derive(Debug)]
pub enum Input {
    /// Worker `worker` now has `count` subscribers of `channel`.
    Interest {
        worker: usize,
        channel: Arc<str>,
        count: u64,
    },
    /// A local publication.
    Publish(Message),
    /// A subscriber's recovery (after its interest was reported).
    Recover(crate::core::RecoveryRequest),
    /// An event of a shard's link.
    Link {
        shard: usize,
        epoch: u64,
        event: LinkEvent,
    },
}

/// The workers, as the bridge reaches them.
pub trait Workers: Send {
    /// Hands a message (or a gap notice) to its worker's queue: false if the queue is full
    /// (the bridge drops it and counts).
    fn hand(&self, handoff: &Handoff) -> bool;

    /// Called after a batch of [`Workers::hand`]s: wake the workers that were handed
    /// something (one wake per worker and batch, not per message).
    fn flush(&self) {}
}

/// One shard's link, for metrics and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardStatus {
    pub address: String,
    /// `"up"`, `"connecting"` or `"down"`.
    pub state: &'static str,
    pub last_error: Option<String>,
}

/// The bridge as the control plane shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub backend: &'static str,
    /// This host's name in presence.
    pub host: String,
    pub shards: Vec<ShardStatus>,
    pub stats: Stats,
    pub channels: usize,
    pub subscriptions: usize,
}

impl Status {
    /// Every shard is up: channels are shared with the other hosts.
    pub fn connected(&self) -> bool {
        self.shards.iter().all(|s| s.state == "up")
    }
}

#[derive(Debug)]
struct Shared {
    status: Mutex<Status>,
    broker: Arc<dyn Broker>,
    shards: usize,
}

/// The running bridge: where workers and the control plane reach it.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: Sender<Input>,
    shared: Arc<Shared>,
}

impl Handle {
    /// The channel a worker's bus sends its [`Input`]s on.
    pub fn sender(&self) -> Sender<Input> {
        self.tx.clone()
    }

    /// Publishes on every host (the publish API).
    pub fn publish(&self, message: Message) {
        let _ = self.tx.send(Input::Publish(message));
    }

    pub fn status(&self) -> Status {
        self.shared
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Each host's subscribers of `channel`, as kept in the broker (blocks up to ~1 s).
    pub fn presence(&self, channel: &str) -> Result<Vec<HostCount>, String> {
        let shard = shard_of(channel, self.shared.shards);
        self.shared.broker.presence(shard, channel)
    }
}

fn state_name(state: LinkState) -> &'static str {
    match state {
        LinkState::Up => "up",
        LinkState::Connecting => "connecting",
        LinkState::Down => "down",
    }
}

/// Starts the bridge thread for `workers` workers of host `host`; `identity` is the client
/// certificate presented to TLS brokers (`[broker] tls_cert`/`tls_key`, loaded with the
/// configuration: `wsedge_command::Config::load_tls`).
pub fn start(
    config: &BrokerConfig,
    identity: Option<&ClientIdentity>,
    host: HostId,
    workers: usize,
    sink: Box<dyn Workers>,
) -> std::io::Result<Handle> {
    let broker: Arc<dyn Broker> = match config.backend {
        BrokerBackend::Redis => Arc::new(crate::redis::Redis::new(config, identity)),
        BrokerBackend::Nats => Arc::new(crate::nats::Nats::new(config, identity)),
    };
    let addresses: Vec<String> = (0..config.shards)
        .map(|i| config.addresses[i % config.addresses.len()].url.clone())
        .collect();
    let status = Status {
        backend: config.backend.as_str(),
        host: config.host.clone(),
        shards: addresses
            .iter()
            .map(|a| ShardStatus {
                address: a.clone(),
                state: "connecting",
                last_error: None,
            })
            .collect(),
        stats: Stats::default(),
        channels: 0,
        subscriptions: 0,
    };
    let shared = Arc::new(Shared {
        status: Mutex::new(status),
        broker: Arc::clone(&broker),
        shards: config.shards,
    });
    let (tx, rx) = mpsc::channel();
    let ttl = config.presence_ttl.as_millis() as u64;
    let core = Core::new(
        CoreConfig {
            host,
            workers,
            shards: config.shards,
            max_channels: config.max_channels,
            backoff: Backoff {
                min_ms: config.reconnect_min.as_millis() as u64,
                max_ms: config.reconnect_max.as_millis() as u64,
            },
            presence_refresh_ms: (ttl / 3).max(1000),
            presence_delay_ms: 200,
        },
        0,
        host,
    );
    let run = Run {
        core,
        rx,
        tx: tx.clone(),
        broker,
        links: (0..config.shards).map(|_| None).collect(),
        sink,
        shared: Arc::clone(&shared),
        addresses,
        reported: vec![None; config.shards],
        start: Instant::now(),
        identity: identity.is_some(),
    };
    std::thread::Builder::new()
        .name("wsedge-broker".to_owned())
        .spawn(move || run.run())?;
    Ok(Handle { tx, shared })
}

struct Run {
    core: Core,
    rx: Receiver<Input>,
    /// Handed to the links for their events.
    tx: Sender<Input>,
    broker: Arc<dyn Broker>,
    links: Vec<Option<Box<dyn Link>>>,
    sink: Box<dyn Workers>,
    shared: Arc<Shared>,
    addresses: Vec<String>,
    /// What was last logged per shard: up (true) or down (false).
    reported: Vec<Option<bool>>,
    start: Instant,
    /// A client certificate is configured (`tls_cert`): how a refusal is explained.
    identity: bool,
}

/// Adds the fix to a link error whose TLS alert says the server wants a client certificate
/// or refused ours (the same words for both backends: the redis crate's rustls error and
/// wsedge-tls's spell alerts differently, `CertificateRequired` / `bad_certificate`).
fn explain(why: String, identity: bool) -> String {
    let words = why.to_ascii_lowercase().replace('_', "");
    let refused = [
        "certificaterequired",
        "badcertificate",
        "unknownca",
        "certificateunknown",
    ];
    if !words.contains("alert") || !refused.iter().any(|a| words.contains(a)) {
        return why;
    }
    if identity {
        format!(
            "{why} (the server refused the client certificate of broker.tls_cert: is it \
             signed by a CA the server trusts, for client authentication, and still valid?)"
        )
    } else {
        format!(
            "{why} (the server requires a client certificate: set [broker] tls_cert and \
             tls_key)"
        )
    }
}

impl Run {
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn run(mut self) {
        loop {
            let now = self.now();
            self.core.on_timeout(now);
            self.apply();
            let wait = self
                .core
                .poll_timeout()
                .map_or(Duration::from_secs(3600), |t| {
                    Duration::from_millis(t.saturating_sub(now).max(1))
                });
            match self.rx.recv_timeout(wait) {
                Ok(input) => {
                    self.handle(input);
                    // A burst is taken whole before outputs are applied, bounded so the
                    // timers still run.
                    for _ in 0..1024 {
                        match self.rx.try_recv() {
                            Ok(input) => self.handle(input),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                // Unreachable while `self.tx` lives; kept for clarity.
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.apply();
            self.publish_status();
        }
    }

    fn handle(&mut self, input: Input) {
        let now = self.now();
        let unix_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        self.core.set_wall_clock(unix_us);
        match input {
            Input::Interest {
                worker,
                channel,
                count,
            } => self.core.interest(worker, &channel, count, now),
            Input::Publish(message) => self.core.publish(message),
            Input::Recover(request) => self.core.recover(request),
            Input::Link {
                shard,
                epoch,
                event,
            } => {
                let event = match event {
                    LinkEvent::Down(why) => LinkEvent::Down(explain(why, self.identity)),
                    other => other,
                };
                self.core.link(shard, epoch, event, now);
                self.log_state(shard, now);
            }
        }
    }

    fn apply(&mut self) {
        self.apply_outputs();
        self.sink.flush();
    }

    fn apply_outputs(&mut self) {
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Connect { shard, epoch } => {
                    // The old link (if any) is dropped first: its threads end.
                    self.links[shard] = None;
                    self.links[shard] = Some(self.broker.open(shard, epoch, self.tx.clone()));
                }
                Output::Link { shard, cmd } => {
                    if let Some(link) = &self.links[shard] {
                        link.send(cmd);
                    }
                }
                Output::Deliver(mut handoff) => {
                    self.core.claim_gap(&mut handoff);
                    if !self.sink.hand(&handoff) {
                        self.core.dropped(&handoff);
                    }
                }
            }
        }
    }

    fn log_state(&mut self, shard: usize, now: u64) {
        let Some(state) = self.core.link_state(shard) else {
            return;
        };
        let address = &self.addresses[shard];
        let before = self.reported[shard];
        match state {
            LinkState::Up if before != Some(true) => {
                tracing::info!(shard, %address, "broker connected: channels are shared with the other hosts");
                self.reported[shard] = Some(true);
            }
            LinkState::Down => {
                let retry_ms = self
                    .core
                    .retry_at(shard)
                    .map_or(0, |t| t.saturating_sub(now));
                let error = self.core.last_error(shard).unwrap_or("?");
                if before == Some(false) {
                    tracing::debug!(shard, %address, error, retry_ms, "broker still unreachable");
                } else {
                    tracing::warn!(shard, %address, error, retry_ms,
                        "broker unreachable: serving this host only (local-only), retrying with backoff");
                }
                self.reported[shard] = Some(false);
            }
            _ => {}
        }
    }

    fn publish_status(&self) {
        let mut status = self.shared.status.lock().unwrap_or_else(|p| p.into_inner());
        status.stats = self.core.stats();
        status.channels = self.core.channel_count();
        status.subscriptions = self.core.live_subscriptions();
        for (i, s) in status.shards.iter_mut().enumerate() {
            let state = self.core.link_state(i).unwrap_or(LinkState::Down);
            s.state = state_name(state);
            s.last_error = self.core.last_error(i).map(str::to_owned);
        }
    }
}

/// A command for a shard's link, as its threads receive it (shared by the backends).
pub(crate) type LinkTx = Sender<LinkCmd>;

/// Sends a link's event to the bridge.
pub(crate) fn report(events: &Sender<Input>, shard: usize, epoch: u64, event: LinkEvent) {
    let _ = events.send(Input::Link {
        shard,
        epoch,
        event,
    });
}

#[cfg(test)]
mod tests {
    use super::explain;

    #[test]
    fn certificate_refusals_name_the_settings() {
        // The redis crate's words (rustls's error) and wsedge-tls's, with and without a
        // client certificate configured.
        let redis = "rediss://r:6380: received fatal alert: CertificateRequired".to_owned();
        assert!(explain(redis.clone(), false).ends_with("set [broker] tls_cert and tls_key)"));
        let nats = "peer sent alert bad_certificate".to_owned();
        let e = explain(nats, true);
        assert!(
            e.contains("refused the client certificate of broker.tls_cert"),
            "{e}"
        );
        // Anything else is left as it is.
        let other = "connection refused (os error 111)".to_owned();
        assert_eq!(explain(other.clone(), false), other);
        let untrusted = "certificate refused: server 127.0.0.1: unknown issuer".to_owned();
        assert_eq!(explain(untrusted.clone(), false), untrusted);
    }
}
