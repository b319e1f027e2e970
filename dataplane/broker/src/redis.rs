//! The Redis backend: pub/sub for messages, a hash per channel for presence.
//!
//! Each shard's link is two connections on two threads (the `redis` crate's blocking
//! client, which cannot wait on a socket and a queue at once):
//! - the subscriber (`SUBSCRIBE`/`UNSUBSCRIBE`, then messages), reading with a short timeout
//!   so it takes its queued commands between messages;
//! - the publisher (`PUBLISH`, presence writes), blocked on its queue, sending whatever is
//!   queued as one pipeline.
//!
//! Keys: a channel `c` is the Redis channel `<prefix>c`; its presence is the hash
//! `<prefix>presence:c`, one field per host whose value is `"<count> <expiry, Unix ms>"`.
//! Every write also sets the key's expiry, so a channel whose hosts all went away disappears;
//! a reader ignores fields past their own expiry (a host that died without deleting its
//! field). Redis 7.0 has no per-field expiry, hence the expiry in the value.
//!
//! A channel of a recoverable namespace (`[[broker.recovery]]`) is published by a script
//! that also keeps its history (a stream), and its history is read by another, on the
//! publisher's connection (see [`crate::history`]): a read queued after a publication of
//! this host sees it.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};
use wsedge_command::broker::{BrokerConfig, RecoveryConfig, recovery_of};
use wsedge_proto::recovery::{Answer, Failure, Since, decide};
use wsedge_tls::ClientIdentity;

use crate::bridge::{LinkTx, report};
use crate::core::{LinkCmd, LinkEvent};
use crate::history::{self, Script, Scripts};
use crate::{Broker, HostCount, Input, Link};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the subscriber waits for a message before it looks at its queue.
const POLL: Duration = Duration::from_millis(5);
/// Commands sent as one pipeline at most.
const BATCH: usize = 256;

/// The Redis backend.
#[derive(Debug)]
pub struct Redis {
    /// Each shard's server, or why it cannot be reached (its `tls_ca` unreadable).
    servers: Vec<Result<ConnectionInfo, String>>,
    addresses: Vec<String>,
    prefix: String,
    host: String,
    ttl: Duration,
    recovery: Vec<RecoveryConfig>,
    scripts: Scripts,
}

impl Redis {
    /// `identity`: the client certificate presented to `rediss://` servers (`[broker]
    /// tls_cert`/`tls_key`, loaded and checked with the configuration).
    pub fn new(config: &BrokerConfig, identity: Option<&ClientIdentity>) -> Redis {
        let mut settings = RedisConnectionInfo::default();
        if let Some(user) = &config.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &config.password {
            settings = settings.set_password(password);
        }
        // `rediss://` with `tls_ca`: those CAs only (read once, here), else the system's.
        let ca = config.tls_ca.as_ref().map(|path| {
            std::fs::read(path).map_err(|e| format!("broker.tls_ca {}: {e}", path.display()))
        });
        // The redis crate builds its rustls configuration from PEM text (it takes no
        // `ClientConfig`): the identity's files as read and checked at load.
        let client_tls = identity.map(|i| redis::ClientTlsConfig {
            client_cert: i.cert_pem().to_vec(),
            client_key: i.key_pem().to_vec(),
        });
        let servers = (0..config.shards)
            .map(|i| {
                let address = &config.addresses[i % config.addresses.len()];
                let (host, port) = (address.host().to_owned(), address.port());
                let addr = if address.tls {
                    ConnectionAddr::TcpTls {
                        host,
                        port,
                        insecure: false,
                        tls_params: None,
                    }
                } else {
                    ConnectionAddr::Tcp(host, port)
                };
                let info = addr
                    .into_connection_info()
                    .map(|info| info.set_redis_settings(settings.clone()))
                    // INVARIANT: a TCP address always converts.
                    .unwrap_or_else(|_| unreachable!("a TCP address converts"));
                match (&ca, address.tls) {
                    (Some(Err(e)), true) => Err(e.clone()),
                    (ca, true) if ca.is_some() || client_tls.is_some() => {
                        let certs = redis::TlsCertificates {
                            client_tls: client_tls.clone(),
                            root_cert: ca.as_ref().and_then(|c| c.as_ref().ok()).cloned(),
                        };
                        redis::Client::build_with_tls(info, certs)
                            .map(|c| c.get_connection_info().clone())
                            .map_err(|e| format!("broker TLS (tls_ca, tls_cert, tls_key): {e}"))
                    }
                    _ => Ok(info),
                }
            })
            .collect();
        Redis {
            servers,
            addresses: (0..config.shards)
                .map(|i| config.addresses[i % config.addresses.len()].url.clone())
                .collect(),
            prefix: config.prefix.clone(),
            host: config.host.clone(),
            ttl: config.presence_ttl,
            recovery: config.recovery.clone(),
            scripts: Scripts::new(),
        }
    }

    fn connect(&self, shard: usize) -> Result<redis::Connection, String> {
        self.clone_for_thread(shard).connect()
    }

    fn presence_key(&self, channel: &str) -> String {
        format!("{}presence:{channel}", self.prefix)
    }
}

/// `host:port` (IPv6 in brackets) into its parts; the config validated the port.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Debug)]
struct RedisLink {
    sub: LinkTx,
    publ: LinkTx,
}

impl Link for RedisLink {
    fn send(&self, cmd: LinkCmd) {
        let _ = match cmd {
            LinkCmd::Subscribe(_) | LinkCmd::Unsubscribe(_) => self.sub.send(cmd),
            LinkCmd::Publish(..) | LinkCmd::Presence(..) | LinkCmd::History { .. } => {
                self.publ.send(cmd)
            }
        };
    }
}

/// What a link's threads share: the backend's settings and where to report.
struct Ctx {
    redis: Arc<RedisShared>,
    shard: usize,
    epoch: u64,
    events: Sender<Input>,
}

impl Ctx {
    fn report(&self, event: LinkEvent) {
        report(&self.events, self.shard, self.epoch, event);
    }
}

#[derive(Debug)]
struct RedisShared {
    prefix: String,
    host: String,
    ttl: Duration,
    recovery: Vec<RecoveryConfig>,
    scripts: Scripts,
}

impl Broker for Redis {
    fn open(&self, shard: usize, epoch: u64, events: Sender<Input>) -> Box<dyn Link> {
        let (sub_tx, sub_rx) = mpsc::channel();
        let (pub_tx, pub_rx) = mpsc::channel();
        let shared = Arc::new(RedisShared {
            prefix: self.prefix.clone(),
            host: self.host.clone(),
            ttl: self.ttl,
            recovery: self.recovery.clone(),
            scripts: self.scripts.clone(),
        });
        let ctx = Ctx {
            redis: shared,
            shard,
            epoch,
            events,
        };
        // Connecting may take CONNECT_TIMEOUT: the link's thread does it, not the bridge.
        let servers = self.clone_for_thread(shard);
        let spawned = std::thread::Builder::new()
            .name(format!("wsedge-redis{shard}"))
            .spawn(move || run_link(&servers, ctx, sub_rx, pub_rx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a broker link thread");
        }
        Box::new(RedisLink {
            sub: sub_tx,
            publ: pub_tx,
        })
    }

    fn presence(&self, shard: usize, channel: &str) -> Result<Vec<HostCount>, String> {
        let mut con = self.connect(shard)?;
        con.set_read_timeout(Some(Duration::from_secs(1)))
            .map_err(|e| e.to_string())?;
        let fields: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.presence_key(channel))
            .query(&mut con)
            .map_err(|e| format!("{}: {e}", self.addresses[shard]))?;
        let now = unix_ms();
        let mut hosts: Vec<HostCount> = fields
            .into_iter()
            .filter_map(|(host, value)| {
                let (count, expires) = value.split_once(' ')?;
                let expires: u64 = expires.parse().ok()?;
                (expires > now).then_some(HostCount {
                    host,
                    subscribers: count.parse().ok()?,
                })
            })
            .filter(|h| h.subscribers > 0)
            .collect();
        hosts.sort_by(|a, b| a.host.cmp(&b.host));
        Ok(hosts)
    }
}

/// What a link thread needs to connect on its own.
struct Servers {
    info: Result<ConnectionInfo, String>,
    address: String,
}

impl Redis {
    fn clone_for_thread(&self, shard: usize) -> Servers {
        Servers {
            info: self.servers[shard].clone(),
            address: self.addresses[shard].clone(),
        }
    }
}

impl Servers {
    fn connect(&self) -> Result<redis::Connection, String> {
        let info = self.info.clone()?;
        let client = redis::Client::open(info).map_err(|e| e.to_string())?;
        let con = client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .map_err(|e| format!("{}: {e}", self.address))?;
        con.set_write_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        con.set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        Ok(con)
    }
}

/// Connects both connections, starts the publisher, then runs the subscriber.
fn run_link(servers: &Servers, ctx: Ctx, sub_rx: Receiver<LinkCmd>, pub_rx: Receiver<LinkCmd>) {
    let (mut sub, publ) = match (servers.connect(), servers.connect()) {
        (Ok(s), Ok(p)) => (s, p),
        (Err(e), _) | (_, Err(e)) => {
            ctx.report(LinkEvent::Down(e));
            return;
        }
    };
    let pub_ctx = Ctx {
        redis: Arc::clone(&ctx.redis),
        shard: ctx.shard,
        epoch: ctx.epoch,
        events: ctx.events.clone(),
    };
    let spawned = std::thread::Builder::new()
        .name(format!("wsedge-redis{}p", ctx.shard))
        .spawn(move || run_publisher(publ, &pub_ctx, &pub_rx));
    if let Err(e) = spawned {
        ctx.report(LinkEvent::Down(format!("cannot start a thread: {e}")));
        return;
    }
    ctx.report(LinkEvent::Up);
    if let Err(e) = run_subscriber(&mut sub, &ctx, &sub_rx) {
        ctx.report(LinkEvent::Down(e));
    }
}

/// Ok when the link was closed by the bridge; the error when the connection failed.
fn run_subscriber(
    con: &mut redis::Connection,
    ctx: &Ctx,
    rx: &Receiver<LinkCmd>,
) -> Result<(), String> {
    let prefix = ctx.redis.prefix.clone();
    let mut pubsub = con.as_pubsub();
    pubsub
        .set_read_timeout(Some(POLL))
        .map_err(|e| e.to_string())?;
    loop {
        loop {
            match rx.try_recv() {
                Ok(LinkCmd::Subscribe(channel)) => {
                    pubsub
                        .subscribe(format!("{prefix}{channel}"))
                        .map_err(|e| e.to_string())?;
                    ctx.report(LinkEvent::Subscribed(channel));
                }
                Ok(LinkCmd::Unsubscribe(channel)) => pubsub
                    .unsubscribe(format!("{prefix}{channel}"))
                    .map_err(|e| e.to_string())?,
                Ok(_) => {}
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Ok(()),
            }
        }
        match pubsub.get_message() {
            Ok(msg) => {
                let Some(channel) = msg.get_channel_name().strip_prefix(&prefix) else {
                    continue;
                };
                ctx.report(LinkEvent::Message(
                    Arc::from(channel),
                    msg.get_payload_bytes().to_vec(),
                ));
            }
            Err(e) if e.is_timeout() => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn run_publisher(mut con: redis::Connection, ctx: &Ctx, rx: &Receiver<LinkCmd>) {
    let ttl_ms = ctx.redis.ttl.as_millis() as u64;
    let presence_key = |c: &str| format!("{}presence:{c}", ctx.redis.prefix);
    let mut epochs = Epochs::new(&ctx.redis.host, ctx.shard);
    while let Ok(first) = rx.recv() {
        let mut pipe = redis::pipe();
        // Every reply is looked at (none ignored): a `NOSCRIPT` is retried, see `send`.
        pipe.ignore_errors();
        let mut next = Some(first);
        let mut n = 0;
        // A history read waits for the publications queued before it (one pipeline).
        let mut read = None;
        while let Some(cmd) = next.take() {
            match cmd {
                LinkCmd::Publish(channel, record) => {
                    let pubsub = format!("{}{channel}", ctx.redis.prefix);
                    match recovery_of(&ctx.redis.recovery, &channel) {
                        Some(r) => {
                            let prefix = &ctx.redis.prefix;
                            let mut call = ctx.redis.scripts.publish.call(
                                history::meta_key(prefix, &channel),
                                history::stream_key(prefix, &channel),
                            );
                            call.arg(epochs.propose())
                                .arg(r.meta_ttl.as_millis() as u64)
                                .arg(record)
                                .arg(r.history_size)
                                .arg(r.history_ttl.as_millis() as u64)
                                .arg(pubsub);
                            pipe.add_command(call);
                        }
                        None => {
                            pipe.cmd("PUBLISH").arg(pubsub).arg(record);
                        }
                    }
                }
                LinkCmd::Presence(channel, 0) => {
                    pipe.cmd("HDEL")
                        .arg(presence_key(&channel))
                        .arg(&ctx.redis.host);
                }
                LinkCmd::Presence(channel, count) => {
                    let key = presence_key(&channel);
                    pipe.cmd("HSET")
                        .arg(&key)
                        .arg(&ctx.redis.host)
                        .arg(format!("{count} {}", unix_ms() + ttl_ms));
                    pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms);
                }
                LinkCmd::History {
                    token,
                    channel,
                    since,
                } => read = Some((token, channel, since)),
                LinkCmd::Subscribe(_) | LinkCmd::Unsubscribe(_) => {}
            }
            n += 1;
            if n < BATCH && read.is_none() {
                next = rx.try_recv().ok();
            }
        }
        if !pipe.is_empty()
            && let Err(e) = send(&mut con, &ctx.redis.scripts.publish, &pipe)
        {
            if let Some((token, ..)) = read {
                ctx.report(LinkEvent::History {
                    token,
                    answer: unavailable(),
                });
            }
            ctx.report(LinkEvent::Down(e.to_string()));
            return;
        }
        if let Some((token, channel, since)) = read {
            let (answer, failed) = read_history(&mut con, ctx, &mut epochs, &channel, since);
            ctx.report(LinkEvent::History { token, answer });
            if let Some(e) = failed {
                ctx.report(LinkEvent::Down(e));
                return;
            }
        }
    }
}

/// Sends the publisher's pipeline (built with `ignore_errors`: one reply per command). The
/// script calls Redis refused with `NOSCRIPT` (it restarted, or its scripts were flushed)
/// are sent again, once, after `SCRIPT LOAD`: they did not run, and nothing else is sent
/// twice. Any other error fails the pipeline (the link goes down).
fn send(
    con: &mut redis::Connection,
    script: &Script,
    pipe: &redis::Pipeline,
) -> redis::RedisResult<()> {
    let replies: Vec<redis::Value> = pipe.query(con)?;
    let mut again = redis::pipe();
    for (cmd, reply) in pipe.cmd_iter().zip(replies) {
        if let redis::Value::ServerError(e) = reply {
            let e = redis::RedisError::from(e);
            if !history::is_noscript(&e) {
                return Err(e);
            }
            again.add_command(cmd.clone());
        }
    }
    if !again.is_empty() {
        script.load().exec(con)?;
        again.exec(con)?;
    }
    Ok(())
}

/// Runs a script call, loading the script first if Redis does not have it (`NOSCRIPT`).
fn eval<T: redis::FromRedisValue>(
    con: &mut redis::Connection,
    script: &Script,
    call: &redis::Cmd,
) -> redis::RedisResult<T> {
    match call.query(con) {
        Err(e) if history::is_noscript(&e) => {
            script.load().exec(con)?;
            call.query(con)
        }
        other => other,
    }
}

fn unavailable() -> Answer {
    Answer::Failed {
        failure: Failure::Unavailable,
        position: None,
    }
}

/// Reads `channel`'s history for a subscriber, and decides its answer. The error when the
/// connection failed (the link goes down); a reply Redis refused only fails this read.
fn read_history(
    con: &mut redis::Connection,
    ctx: &Ctx,
    epochs: &mut Epochs,
    channel: &Arc<str>,
    since: Option<Since>,
) -> (Answer, Option<String>) {
    let Some(r) = recovery_of(&ctx.redis.recovery, channel) else {
        return (unavailable(), None);
    };
    let prefix = &ctx.redis.prefix;
    // The first offset wanted, when it can be compared in Lua (its numbers are doubles).
    let first = since
        .as_ref()
        .filter(|s| s.offset < 1 << 52)
        .map_or(String::new(), |s| (s.offset + 1).to_string());
    let script = &ctx.redis.scripts.read;
    let mut call = script.call(
        history::meta_key(prefix, channel),
        history::stream_key(prefix, channel),
    );
    call.arg(epochs.propose())
        .arg(r.meta_ttl.as_millis() as u64)
        .arg(since.as_ref().map_or("", |s| s.epoch.as_str()))
        .arg(first)
        .arg(r.history_size);
    let reply: redis::RedisResult<redis::Value> = eval(con, script, &call);
    match reply {
        Ok(reply) => match history::read_reply(channel, &reply) {
            Ok((epoch, top, entries)) => (
                decide(since.as_ref(), &epoch, top, entries, r.history_size),
                None,
            ),
            Err(bad) => {
                tracing::warn!(%channel, what = bad.0, "a channel history read returned something unexpected");
                (unavailable(), None)
            }
        },
        Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
            (unavailable(), Some(e.to_string()))
        }
        Err(e) => {
            tracing::warn!(%channel, error = %e, "a channel history read failed");
            (unavailable(), None)
        }
    }
}

/// Proposes epochs for histories that start (the scripts take one only when the channel
/// has none): the time, and a number of this host, link and proposal.
struct Epochs {
    seed: u64,
    count: u64,
}

impl Epochs {
    fn new(host: &str, shard: usize) -> Epochs {
        use std::hash::BuildHasher;
        let random = std::collections::hash_map::RandomState::new();
        Epochs {
            seed: random.hash_one((host, shard, unix_ms())),
            count: 0,
        }
    }

    fn propose(&mut self) -> String {
        self.count += 1;
        let unix_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        history::propose_epoch(unix_us, self.seed ^ self.count.wrapping_mul(0x9E37_79B9))
    }
}
