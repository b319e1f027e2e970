//! The NATS backend: core NATS subjects (`PUB`/`SUB`), no JetStream.
//!
//! The client is written here: the core protocol is a handful of text lines (`INFO`,
//! `CONNECT`, `PING`/`PONG`, `SUB`/`UNSUB`, `PUB`, `MSG`, `+OK`/`-ERR`), and the maintained
//! client (`async-nats`) needs tokio, which the dataplane keeps out (the old blocking `nats`
//! crate is deprecated). Each shard's link is one connection and two threads: a reader
//! (messages, the server's pings, the pongs that confirm subscriptions) and a writer (its
//! queue of commands, flushed when the queue is empty).
//!
//! Subjects: a channel `c` is `<prefix>c` with each `.` written `~` (a channel name may hold
//! empty tokens, like `a..b`, which NATS refuses; `~` is never in a channel name).
//! Presence is not stored: NATS core keeps nothing. A reader publishes a request on
//! `<prefix>%presence` (the channel name as payload, an inbox to reply to) and every host's
//! link answers with its own count, from the presence the bridge hands it; the reader sums
//! what arrives within [`PRESENCE_WINDOW`]. A host that is gone simply does not answer.
//!
//! TLS (`tls://` addresses): as NATS clients do, the server's `INFO` is read in plaintext,
//! then the connection is upgraded (nats/stream.rs) and `CONNECT` goes encrypted; with
//! `tls_first` (a server's `handshake_first`) TLS starts at once and `INFO` comes
//! encrypted. A client certificate (`tls_cert`/`tls_key`) is presented when the server
//! asks (its `tls { verify: true }`).

mod conn;
mod stream;

use std::collections::{HashMap, VecDeque};
use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wsedge_command::broker::BrokerConfig;
use wsedge_tls::{ClientIdentity, OriginTls};

use crate::bridge::report;
use crate::core::{LinkCmd, LinkEvent};
use crate::{Broker, HostCount, Input, Link};
use conn::{Conn, Settings, connect, read_line, read_msg};
use stream::Stream;

/// How long a presence request collects the hosts' answers.
pub const PRESENCE_WINDOW: Duration = Duration::from_millis(300);

/// The NATS backend.
#[derive(Debug)]
pub struct Nats {
    addresses: Vec<String>,
    urls: Vec<String>,
    /// Each shard's `tls://` server name, with the TLS client (or why there is none:
    /// `tls_ca` unreadable, reported by each connection attempt); `None`: `nats://`.
    tls: Vec<Option<(String, Result<OriginTls, String>)>>,
    tls_first: bool,
    prefix: String,
    host: String,
    user: Option<String>,
    pass: Option<String>,
}

impl Nats {
    /// `identity`: the client certificate presented to `tls://` servers that ask for one
    /// (`[broker] tls_cert`/`tls_key`, loaded and checked with the configuration).
    pub fn new(config: &BrokerConfig, identity: Option<&ClientIdentity>) -> Nats {
        let pick = |i: usize| &config.addresses[i % config.addresses.len()];
        // Built once (the CA file or the system's store read here), shared by every shard.
        let client = config.addresses.iter().any(|a| a.tls).then(|| {
            OriginTls::trusting(
                "broker.tls_ca",
                "broker.tls_ca",
                config.tls_ca.as_deref(),
                None,
            )
            .map(|tls| match identity {
                Some(identity) => tls.with_identity(identity),
                None => tls,
            })
            .map_err(|e| e.to_string())
        });
        Nats {
            tls: (0..config.shards)
                .map(|i| match (pick(i), &client) {
                    (a, Some(c)) if a.tls => Some((a.host().to_owned(), c.clone())),
                    _ => None,
                })
                .collect(),
            tls_first: config.tls_first,
            addresses: (0..config.shards)
                .map(|i| pick(i).authority.clone())
                .collect(),
            urls: (0..config.shards).map(|i| pick(i).url.clone()).collect(),
            prefix: config.prefix.clone(),
            host: config.host.clone(),
            user: config.username.clone(),
            pass: config.password.clone(),
        }
    }

    fn settings(&self, shard: usize) -> Settings {
        Settings {
            address: self.addresses[shard].clone(),
            url: self.urls[shard].clone(),
            tls: self.tls[shard].clone(),
            tls_first: self.tls_first,
            prefix: self.prefix.clone(),
            host: self.host.clone(),
            user: self.user.clone(),
            pass: self.pass.clone(),
        }
    }
}

/// The subject of `channel`.
fn subject(prefix: &str, channel: &str) -> String {
    format!("{prefix}{}", channel.replace('.', "~"))
}

/// The channel of a subject of ours.
fn channel_of(prefix: &str, subject: &str) -> Option<String> {
    subject
        .strip_prefix(prefix)
        .map(|rest| rest.replace('~', "."))
}

fn presence_subject(prefix: &str) -> String {
    format!("{prefix}%presence")
}

/// What the writer thread takes: the bridge's commands and the reader's own needs.
enum Write_ {
    Cmd(LinkCmd),
    Pong,
    /// Answer a presence request.
    Reply(String, Vec<u8>),
    /// The bridge dropped the link.
    Close,
}

#[derive(Debug)]
struct NatsLink {
    tx: Sender<Write_>,
    /// Where a history read is answered at once: NATS core keeps no history (the
    /// configuration refuses a recoverable namespace with NATS; this is the belt).
    events: Sender<Input>,
    shard: usize,
    epoch: u64,
}

impl std::fmt::Debug for Write_ {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Write")
    }
}

impl Drop for NatsLink {
    fn drop(&mut self) {
        // The reader holds a sender too, so the queue alone would not end the writer.
        let _ = self.tx.send(Write_::Close);
    }
}

impl Link for NatsLink {
    fn send(&self, cmd: LinkCmd) {
        if let LinkCmd::History { token, .. } = cmd {
            let answer = wsedge_proto::recovery::Answer::Failed {
                failure: wsedge_proto::recovery::Failure::Unavailable,
                position: None,
            };
            report(
                &self.events,
                self.shard,
                self.epoch,
                LinkEvent::History { token, answer },
            );
            return;
        }
        let _ = self.tx.send(Write_::Cmd(cmd));
    }
}

impl Broker for Nats {
    fn open(&self, shard: usize, epoch: u64, events: Sender<Input>) -> Box<dyn Link> {
        let (tx, rx) = mpsc::channel();
        let settings = self.settings(shard);
        let own = tx.clone();
        let link_events = events.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("wsedge-nats{shard}"))
            .spawn(move || {
                let reason = match connect(&settings) {
                    Ok(conn) => run(conn, &settings, shard, epoch, &events, own, rx),
                    Err(e) => Some(e),
                };
                if let Some(reason) = reason {
                    report(&events, shard, epoch, LinkEvent::Down(reason));
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a broker link thread");
        }
        Box::new(NatsLink {
            tx,
            events: link_events,
            shard,
            epoch,
        })
    }

    fn presence(&self, shard: usize, channel: &str) -> Result<Vec<HostCount>, String> {
        let s = self.settings(shard);
        let mut conn = connect(&s)?;
        conn.reader
            .get_ref()
            .socket()
            .set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(|e| e.to_string())?;
        let inbox = format!("_INBOX.wsedge.{}.{}", std::process::id(), nanos());
        let text = format!(
            "SUB {inbox} 1\r\nPUB {} {inbox} {}\r\n{channel}\r\n",
            presence_subject(&s.prefix),
            channel.len()
        );
        conn.writer
            .write_all(text.as_bytes())
            .and_then(|()| conn.writer.flush())
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + PRESENCE_WINDOW;
        let mut hosts: Vec<HostCount> = Vec::new();
        let mut line = Vec::new();
        while Instant::now() < deadline {
            match read_line(&mut conn.reader, &mut line) {
                Ok(()) => {}
                Err(_) => continue,
            }
            let text = String::from_utf8_lossy(&line).into_owned();
            let mut parts = text.split(' ');
            let verb = parts.next().unwrap_or_default();
            let args: Vec<&str> = parts.collect();
            if verb == "MSG" {
                let msg = read_msg(&mut conn.reader, &args, false)?;
                let answer: serde_json::Value =
                    serde_json::from_slice(&msg.payload).unwrap_or_default();
                if let (Some(host), Some(n)) = (
                    answer.get("host").and_then(serde_json::Value::as_str),
                    answer
                        .get("subscribers")
                        .and_then(serde_json::Value::as_u64),
                ) && n > 0
                {
                    hosts.push(HostCount {
                        host: host.to_owned(),
                        subscribers: n,
                    });
                }
            } else if verb == "PING" {
                let _ = conn
                    .writer
                    .write_all(b"PONG\r\n")
                    .and_then(|()| conn.writer.flush());
            }
        }
        hosts.sort_by(|a, b| a.host.cmp(&b.host));
        Ok(hosts)
    }
}

fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

/// Runs a connected link: the writer on a thread of its own, the reader here. The reason
/// it ended, or `None` when the bridge closed it.
fn run(
    conn: Conn,
    s: &Settings,
    shard: usize,
    epoch: u64,
    events: &Sender<Input>,
    own: Sender<Write_>,
    rx: Receiver<Write_>,
) -> Option<String> {
    let Conn {
        mut reader,
        writer,
        max_payload,
    } = conn;
    // Subscriptions waiting for the PONG that follows their SUB (None: a keepalive PING).
    let acks: Arc<Mutex<VecDeque<Option<Arc<str>>>>> = Arc::default();
    // This host's counts, as the bridge last wrote them (answers presence requests).
    let counts: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let closed = Arc::new(AtomicBool::new(false));
    let writer_side = Writer {
        closed: Arc::clone(&closed),
        out: writer,
        prefix: s.prefix.clone(),
        max_payload,
        sids: HashMap::new(),
        next_sid: 2,
        acks: Arc::clone(&acks),
        counts: Arc::clone(&counts),
    };
    let (w_events, w_shard) = (events.clone(), shard);
    let spawned = std::thread::Builder::new()
        .name(format!("wsedge-nats{shard}w"))
        .spawn(move || {
            if let Err(e) = writer_side.run(&rx) {
                report(&w_events, w_shard, epoch, LinkEvent::Down(e));
            }
        });
    if let Err(e) = spawned {
        return Some(format!("cannot start a thread: {e}"));
    }
    // The presence requests of every host (sid 1).
    let _ = own.send(Write_::Cmd(LinkCmd::Subscribe(Arc::from(""))));
    report(events, shard, epoch, LinkEvent::Up);
    let presence = presence_subject(&s.prefix);
    let mut line = Vec::new();
    loop {
        if let Err(e) = read_line(&mut reader, &mut line) {
            // The writer closed the socket because the bridge dropped the link: no failure.
            return (!closed.load(Ordering::Acquire)).then_some(e);
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        let mut parts = text.split(' ').filter(|p| !p.is_empty());
        let verb = parts.next().unwrap_or_default().to_ascii_uppercase();
        let args: Vec<&str> = parts.collect();
        match verb.as_str() {
            "MSG" | "HMSG" => {
                let msg = match read_msg(&mut reader, &args, verb == "HMSG") {
                    Ok(m) => m,
                    Err(e) => return Some(e),
                };
                if msg.subject == presence {
                    let channel = String::from_utf8_lossy(&msg.payload).into_owned();
                    let n = counts
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&channel)
                        .copied()
                        .unwrap_or(0);
                    if let Some(reply) = msg.reply {
                        let answer = serde_json::json!({"host": s.host, "subscribers": n});
                        let _ = own.send(Write_::Reply(reply, answer.to_string().into_bytes()));
                    }
                } else if let Some(channel) = channel_of(&s.prefix, &msg.subject) {
                    report(
                        events,
                        shard,
                        epoch,
                        LinkEvent::Message(Arc::from(channel), msg.payload),
                    );
                }
            }
            "PING" if own.send(Write_::Pong).is_err() => return None,
            "PONG" => {
                let acked = acks.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                if let Some(Some(channel)) = acked {
                    report(events, shard, epoch, LinkEvent::Subscribed(channel));
                }
            }
            "-ERR" => {
                // Permission errors leave the connection open; the others close it.
                if !text.to_ascii_lowercase().contains("permissions violation") {
                    return Some(text);
                }
                tracing::warn!(error = %text, "NATS refused an operation");
            }
            _ => {}
        }
    }
}

struct Writer {
    /// Set when the bridge closed the link (the reader's error is then no failure).
    closed: Arc<AtomicBool>,
    out: BufWriter<Stream>,
    prefix: String,
    max_payload: usize,
    /// Channel → subscription id; sid 1 is the presence subject.
    sids: HashMap<Arc<str>, u64>,
    next_sid: u64,
    acks: Arc<Mutex<VecDeque<Option<Arc<str>>>>>,
    counts: Arc<Mutex<HashMap<String, u64>>>,
}

impl Writer {
    fn run(mut self, rx: &Receiver<Write_>) -> Result<(), String> {
        while let Ok(first) = rx.recv() {
            let mut next = Some(first);
            while let Some(w) = next.take() {
                if matches!(w, Write_::Close) {
                    self.closed.store(true, Ordering::Release);
                    self.out.get_ref().shutdown();
                    return Ok(());
                }
                self.write(w).map_err(|e| e.to_string())?;
                next = rx.try_recv().ok();
            }
            self.out.flush().map_err(|e| e.to_string())?;
        }
        // The bridge dropped the link: close the connection so the reader ends too.
        self.out.get_ref().shutdown();
        Ok(())
    }

    fn write(&mut self, w: Write_) -> std::io::Result<()> {
        match w {
            Write_::Pong => self.out.write_all(b"PONG\r\n"),
            Write_::Close => Ok(()),
            Write_::Reply(subject, payload) => self.publish(&subject, &payload),
            Write_::Cmd(LinkCmd::Subscribe(channel)) if channel.is_empty() => {
                let text = format!("SUB {} 1\r\n", presence_subject(&self.prefix));
                self.out.write_all(text.as_bytes())
            }
            Write_::Cmd(LinkCmd::Subscribe(channel)) => {
                let sid = self.next_sid;
                self.next_sid += 1;
                self.sids.insert(Arc::clone(&channel), sid);
                let text = format!("SUB {} {sid}\r\nPING\r\n", subject(&self.prefix, &channel));
                self.acks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_back(Some(channel));
                self.out.write_all(text.as_bytes())
            }
            Write_::Cmd(LinkCmd::Unsubscribe(channel)) => match self.sids.remove(&channel) {
                Some(sid) => self.out.write_all(format!("UNSUB {sid}\r\n").as_bytes()),
                None => Ok(()),
            },
            Write_::Cmd(LinkCmd::Publish(channel, record)) => {
                if record.len() > self.max_payload {
                    tracing::debug!(%channel, len = record.len(), "message over the NATS max_payload: not published");
                    return Ok(());
                }
                let subject = subject(&self.prefix, &channel);
                self.publish(&subject, &record)
            }
            Write_::Cmd(LinkCmd::Presence(channel, n)) => {
                let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
                if n == 0 {
                    counts.remove(&*channel);
                } else {
                    counts.insert(channel.to_string(), n);
                }
                Ok(())
            }
            // Answered by the link itself (see `NatsLink`).
            Write_::Cmd(LinkCmd::History { .. }) => Ok(()),
        }
    }

    fn publish(&mut self, subject: &str, payload: &[u8]) -> std::io::Result<()> {
        self.out
            .write_all(format!("PUB {subject} {}\r\n", payload.len()).as_bytes())?;
        self.out.write_all(payload)?;
        self.out.write_all(b"\r\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip_and_stay_apart() {
        for c in ["news", "a.b", "a..b", ".x.", "r:1-2_3"] {
            let s = subject("wsedge.", c);
            assert!(!s["wsedge.".len()..].contains('.'), "{s}");
            assert_eq!(channel_of("wsedge.", &s).as_deref(), Some(c));
            assert_ne!(s, presence_subject("wsedge."));
        }
        assert_eq!(channel_of("wsedge.", "other.x"), None);
    }
}
