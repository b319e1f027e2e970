//! `fanout` mode: one publisher and N subscribers on one broadcast channel (wsedge's
//! `broadcast` function in raw mode); reports deliveries/s counted at the subscribers and
//! the publish-to-last-subscriber latency of every message.
//!
//! Every subscriber connects to the target URL (e.g. `ws://127.0.0.1:19080/ch/bench`), so
//! it is subscribed to that path's channel at the handshake; source addresses are taken in
//! turn from `--source-addrs`, which lets the target's reuseport steering spread them over
//! its workers. One more connection on the same URL is the publisher, opened last.
//!
//! Across hosts (wsedge instances sharing a broker, docs/broker.md): with
//! `--subscribe-target URL` (repeatable), subscriber `i` connects to the `i % k`-th of
//! those k URLs instead, and the publisher stays on `--target`; a message is complete when
//! the last subscriber *anywhere* has it, so the latency spans the broker hop. With
//! `--broker-pid` / `--broker-redis` the broker's CPU and bytes in the measured window are
//! reported per message and per delivery (see [`super::broker`]).
//!
//! Each message is a binary frame whose payload starts with its sequence number and its
//! send time (nanoseconds since the run started, both little-endian u64), padded to
//! `--size`. With `--rate R > 0` the publisher sends R messages/s on a schedule and the send
//! time is the *scheduled* time (a stalled target is charged for the wait, as in `latency`);
//! with `--rate 0` it keeps `--depth` messages outstanding, a message counting as delivered
//! when the last subscriber has it. The publisher paces on a plain thread with a 1 ns timer
//! slack; subscribers run on the tokio runtime (`--threads`).
//!
//! For each message a shared counter is raised by every subscriber that receives it; the one
//! that completes it (the last subscriber) records now − send time into the HDR histogram.
//! Subscribers check sequence numbers: a gap counts as missing messages (they still count
//! toward completion, without a latency), and at the end every subscriber's total is
//! compared with what was published.

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use super::client::{SourceAddrs, Target, write_all_blocking};
use super::{Common, Outcome, broker, hist, set_timer_slack};
use crate::frame;

const MASK: [u8; 4] = [0x5a, 0x3c, 0x96, 0xe1];
/// Bytes of the payload used by the sequence number and the send time.
const STAMP: usize = 16;
/// Publisher: how long with no message completed before a closed loop gives up.
const STALL: Duration = Duration::from_secs(5);
/// After the last send: how long with no delivery before counting what is missing.
const QUIET: Duration = Duration::from_secs(3);

/// State shared by the publisher and every subscriber.
struct Shared {
    /// Run start: send times are nanoseconds since this instant.
    start: Instant,
    /// Subscribers that must have a message before it is complete.
    subscribers: u32,
    /// Per-message receipt counters, indexed by sequence number modulo their length.
    counts: Vec<AtomicU32>,
    /// Messages every subscriber has received (or missed).
    completed: AtomicU64,
    /// Messages sent so far; the final count once `done` is set.
    published: AtomicU64,
    /// The publisher has stopped.
    done: AtomicBool,
    /// Deliveries counted at the subscribers.
    delivered: AtomicU64,
    /// Messages subscribers found missing from their sequence (gaps).
    gaps: AtomicU64,
    /// Messages received twice or out of order.
    disorder: AtomicU64,
    /// Publish-to-last-subscriber latency of completed messages sent after the warm-up.
    latency: Mutex<Histogram<u64>>,
    /// Completed messages whose latency was not recorded (completed by a gap).
    incomplete: AtomicU64,
    /// Wakes a closed-loop publisher when a message completes.
    wake: (Mutex<()>, Condvar),
    /// The publisher waits for completions (`--rate 0`).
    closed_loop: bool,
    /// Warm-up in nanoseconds: messages sent earlier are not recorded.
    warmup_ns: u64,
}

impl Shared {
    /// One more subscriber has message `seq` (or missed it); the last one completes it.
    fn mark(&self, seq: u64, sent_ns: Option<u64>) {
        let slot = &self.counts[(seq % self.counts.len() as u64) as usize];
        if slot.fetch_add(1, Ordering::AcqRel) + 1 != self.subscribers {
            return;
        }
        // The slot is reused for seq + len, which is sent only after this one completed.
        slot.store(0, Ordering::Release);
        match sent_ns {
            Some(t) if t >= self.warmup_ns => {
                let now = self.start.elapsed().as_nanos() as u64;
                let mut h = self.latency.lock().expect("latency lock");
                let _ = h.record(now.saturating_sub(t).max(1_000));
            }
            Some(_) => {}
            None => {
                self.incomplete.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.completed.fetch_add(1, Ordering::AcqRel);
        if self.closed_loop {
            let _g = self.wake.0.lock().expect("wake lock");
            self.wake.1.notify_one();
        }
    }
}

/// What one subscriber saw.
#[derive(Debug, Default, Clone, Copy)]
struct SubEnd {
    received: u64,
    closed_by_target: bool,
}

/// Fan-out options beyond [`Common`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Where subscribers connect, in turn (empty: the publisher's target).
    pub subscribe: Vec<Target>,
    /// The broker whose cost is measured in the window.
    pub broker: broker::Watch,
}

/// A target as a URL, for the record.
fn url(t: &Target) -> String {
    format!("ws://{}{}", t.host, t.path)
}

/// Runs the fan-out mode: subscribers spread over `o.subscribe` (or all on `target`), the
/// publisher on `target`.
pub async fn run(
    c: &Common,
    target: Target,
    src: Arc<SourceAddrs>,
    o: &Options,
) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        c.size >= STAMP,
        "fanout mode needs --size >= {STAMP} (sequence number and send time)"
    );
    anyhow::ensure!(c.connections >= 1, "fanout mode needs --connections >= 1");
    anyhow::ensure!(
        c.rate >= 0.0,
        "--rate must be >= 0 (0: closed loop with --depth)"
    );
    let closed_loop = c.rate == 0.0;
    let total = c.warmup + c.duration;
    // Open loop: one counter per message of the whole run. Closed loop: a ring wider than
    // the messages that can be outstanding.
    let slots = if closed_loop {
        (c.depth.max(1) * 2).next_power_of_two().max(1024)
    } else {
        let n = (c.rate * total.as_secs_f64()).ceil() as usize + 16;
        anyhow::ensure!(n <= 64 << 20, "--rate × time is over 64M messages");
        n
    };
    let target = Arc::new(target);
    let sub_targets: Vec<Arc<Target>> = if o.subscribe.is_empty() {
        vec![target.clone()]
    } else {
        o.subscribe.iter().cloned().map(Arc::new).collect()
    };
    let t_open = Instant::now();
    // Round robin: target j gets subscribers j, j + k, j + 2k, ...
    let k = sub_targets.len();
    let mut subs = Vec::with_capacity(c.connections);
    let mut spread = Vec::with_capacity(k);
    for (j, t) in sub_targets.iter().enumerate() {
        let n = (c.connections + k - 1 - j) / k;
        subs.extend(super::open_many_tcp(t, &src, n, c.open_concurrency).await?);
        spread.push(json!({ "target": url(t), "subscribers": n }));
    }
    let mut publisher = super::open_many_tcp(&target, &src, 1, 1).await?;
    let open_s = t_open.elapsed().as_secs_f64();
    let (pub_stream, pub_rest) = publisher.pop().expect("one publisher");
    drop(pub_rest);

    let start = Instant::now() + Duration::from_millis(200);
    let shared = Arc::new(Shared {
        start,
        subscribers: c.connections as u32,
        counts: (0..slots).map(|_| AtomicU32::new(0)).collect(),
        completed: AtomicU64::new(0),
        published: AtomicU64::new(0),
        done: AtomicBool::new(false),
        delivered: AtomicU64::new(0),
        gaps: AtomicU64::new(0),
        disorder: AtomicU64::new(0),
        latency: Mutex::new(hist()),
        incomplete: AtomicU64::new(0),
        wake: (Mutex::new(()), Condvar::new()),
        closed_loop,
        warmup_ns: c.warmup.as_nanos() as u64,
    });
    let (done_tx, done_rx) = watch::channel(false);

    let mut tasks = Vec::with_capacity(subs.len());
    for (s, rest) in subs {
        tasks.push(tokio::spawn(subscriber(
            s,
            rest,
            shared.clone(),
            done_rx.clone(),
        )));
    }

    // The publisher writes from a plain thread; its read side (nothing expected unless the
    // route echoes to the sender) is drained here so it never fills.
    let pub_std: TcpStream = pub_stream.into_std()?;
    let writer = pub_std.try_clone()?;
    let pub_read = tokio::net::TcpStream::from_std(pub_std)?;
    let drain = tokio::spawn(async move {
        let mut s = pub_read;
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    let (size, rate, depth) = (c.size, c.rate, c.depth.max(1) as u64);
    let depth = depth.min(slots as u64 / 2);
    let pshared = shared.clone();
    let end = start + total;
    let pub_thread =
        std::thread::spawn(move || publish(writer, pshared, size, rate, depth, end, slots as u64));

    // The measured window: deliveries at the subscribers, CPU of everyone.
    let now = Instant::now();
    if start + c.warmup > now {
        tokio::time::sleep(start + c.warmup - now).await;
    }
    let probe = c.probe();
    let broker_window = broker::start(&o.broker).await?;
    let t0 = Instant::now();
    let (d0, p0) = (
        shared.delivered.load(Ordering::Relaxed),
        shared.published.load(Ordering::Relaxed),
    );
    let now = Instant::now();
    if end > now {
        tokio::time::sleep(end - now).await;
    }
    let (d1, p1) = (
        shared.delivered.load(Ordering::Relaxed),
        shared.published.load(Ordering::Relaxed),
    );
    let wall = t0.elapsed().as_secs_f64();
    let usage = probe.finish();
    let broker = match broker_window {
        Some(b) => b.finish(p1 - p0, d1 - d0).await?,
        None => serde_json::Value::Null,
    };
    while !pub_thread.is_finished() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pub_out = pub_thread
        .join()
        .map_err(|_| anyhow::anyhow!("publisher panicked"))?;
    let _ = done_tx.send(true);
    let published = shared.published.load(Ordering::Acquire);
    let expected = published * c.connections as u64;

    // Let deliveries finish: until everything arrived or nothing moved for QUIET.
    let mut last = (shared.delivered.load(Ordering::Relaxed), Instant::now());
    loop {
        if tasks.iter().all(|t| t.is_finished()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let d = shared.delivered.load(Ordering::Relaxed);
        if d != last.0 {
            last = (d, Instant::now());
        } else if last.1.elapsed() > QUIET {
            break;
        }
    }
    let mut ends = Vec::with_capacity(tasks.len());
    for t in tasks {
        if t.is_finished() {
            ends.push(t.await.unwrap_or_default());
        } else {
            t.abort();
            ends.push(SubEnd {
                received: u64::MAX,
                ..SubEnd::default()
            });
        }
    }
    drain.abort();
    let delivered = shared.delivered.load(Ordering::Relaxed);
    let short_subs = ends.iter().filter(|e| e.received != published).count();
    let closed_subs = ends.iter().filter(|e| e.closed_by_target).count();
    let hung = ends.iter().filter(|e| e.received == u64::MAX).count();
    let missing = expected.saturating_sub(delivered);

    let lat = shared.latency.lock().expect("latency lock").clone();
    let ms = |v: u64| v as f64 / 1e6;
    let q = |p: f64| ms(lat.value_at_quantile(p));
    let dps = (d1 - d0) as f64 / wall;
    let pps = (p1 - p0) as f64 / wall;
    let how = if closed_loop {
        format!("depth {depth}")
    } else {
        format!("{rate:.0} msg/s")
    };
    let mut human = format!(
        "fanout: {} subscribers, {} B, {}: published {:.0} msg/s, delivered {:.0}/s; publish to last subscriber p50 {:.3} ms, p90 {:.3}, p99 {:.3}, p99.9 {:.3}, max {:.3} ({} recorded); published {}, delivered {} of {} (missing {}), over {:.1} s; publisher lag p99 {:.3} ms, max {:.3}; opened in {:.1} s",
        c.connections,
        size,
        how,
        pps,
        dps,
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        ms(lat.max()),
        lat.len(),
        published,
        delivered,
        expected,
        missing,
        wall,
        ms(pub_out.lag.value_at_quantile(0.99)),
        ms(pub_out.lag.max()),
        open_s,
    );
    if k > 1 {
        human += &format!(
            "\nfanout: subscribers over {k} targets (round robin), publisher on {}",
            url(&target)
        );
    }
    human += &broker::line(&broker);
    if missing > 0 || short_subs > 0 || pub_out.stalled || pub_out.write_error {
        human += &format!(
            "\nfanout: PROBLEM: {short_subs} subscribers short ({closed_subs} closed by the target, {hung} still waiting), {} gaps, {} out of order, publisher stalled: {}, write error: {}",
            shared.gaps.load(Ordering::Relaxed),
            shared.disorder.load(Ordering::Relaxed),
            pub_out.stalled,
            pub_out.write_error,
        );
    }
    let window_deliveries = (d1 - d0) as f64;
    Ok(Outcome {
        human,
        results: json!({
            "subscribers": c.connections,
            "closed_loop": closed_loop,
            "depth": if closed_loop { Some(depth) } else { None },
            "published_msgs_per_s": pps,
            "deliveries_per_s": dps,
            "msgs_per_s": dps,
            "p50_ms": q(0.5),
            "p90_ms": q(0.9),
            "p99_ms": q(0.99),
            "p999_ms": q(0.999),
            "max_ms": ms(lat.max()),
            "mean_ms": lat.mean() / 1e6,
            "recorded": lat.len(),
            "published": published,
            "expected_deliveries": expected,
            "delivered": delivered,
            "missing": missing,
            "gaps": shared.gaps.load(Ordering::Relaxed),
            "out_of_order": shared.disorder.load(Ordering::Relaxed),
            "completed_without_latency": shared.incomplete.load(Ordering::Relaxed),
            "subscribers_short": short_subs,
            "subscribers_closed_by_target": closed_subs,
            "subscribers_still_waiting": hung,
            "publisher_stalled": pub_out.stalled,
            "publisher_write_error": pub_out.write_error,
            "publisher_lag_p99_ms": ms(pub_out.lag.value_at_quantile(0.99)),
            "publisher_lag_max_ms": ms(pub_out.lag.max()),
            "open_s": open_s,
            "wall_s": wall,
            "publish_target": url(&target),
            "subscribe_targets": spread,
            "broker": broker,
        }),
        usage,
        // Bytes the target moved in the window: each delivery out, plus the publications in.
        relayed_bytes: (window_deliveries + (p1 - p0) as f64) * size as f64,
    })
}

/// What the publisher thread reports.
struct PubOut {
    lag: Histogram<u64>,
    stalled: bool,
    write_error: bool,
}

/// Sends numbered messages until `end`: on a schedule (`rate > 0`) or keeping `depth`
/// messages outstanding.
fn publish(
    mut s: TcpStream,
    sh: Arc<Shared>,
    size: usize,
    rate: f64,
    depth: u64,
    end: Instant,
    slots: u64,
) -> PubOut {
    set_timer_slack();
    let mut out = PubOut {
        lag: hist(),
        stalled: false,
        write_error: false,
    };
    let mut buf = Vec::with_capacity(size + 14);
    frame::write_client_frame(&mut buf, frame::OP_BINARY, &vec![b'f'; size], MASK);
    let at = buf.len() - size;
    let interval = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
    let now = Instant::now();
    if sh.start > now {
        std::thread::sleep(sh.start - now);
    }
    let mut seq: u64 = 0;
    loop {
        let stamp = if let Some(iv) = interval {
            let due = sh.start + iv.mul_f64(seq as f64);
            if due >= end || seq >= slots {
                break;
            }
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let late = Instant::now().saturating_duration_since(due);
            let _ = out.lag.record((late.as_nanos() as u64).max(1_000));
            due.duration_since(sh.start).as_nanos() as u64
        } else {
            if Instant::now() >= end {
                break;
            }
            // Wait until fewer than `depth` messages are outstanding.
            let mut g = sh.wake.0.lock().expect("wake lock");
            let mut last = (sh.completed.load(Ordering::Acquire), Instant::now());
            while seq - sh.completed.load(Ordering::Acquire) >= depth {
                let (g2, _) = sh
                    .wake
                    .1
                    .wait_timeout(g, Duration::from_millis(50))
                    .expect("wake lock");
                g = g2;
                let c = sh.completed.load(Ordering::Acquire);
                if c != last.0 {
                    last = (c, Instant::now());
                } else if last.1.elapsed() > STALL {
                    out.stalled = true;
                    break;
                }
                if Instant::now() >= end {
                    break;
                }
            }
            drop(g);
            if out.stalled || Instant::now() >= end {
                break;
            }
            sh.start.elapsed().as_nanos() as u64
        };
        let mut st = [0u8; STAMP];
        st[..8].copy_from_slice(&seq.to_le_bytes());
        st[8..].copy_from_slice(&stamp.to_le_bytes());
        frame::apply_mask(&mut st, MASK, 0);
        buf[at..at + STAMP].copy_from_slice(&st);
        // Count it before the write: a fast subscriber may see it before write returns.
        sh.published.store(seq + 1, Ordering::Release);
        if write_all_blocking(&mut s, &buf).is_err() {
            sh.published.store(seq, Ordering::Release);
            out.write_error = true;
            break;
        }
        seq += 1;
    }
    sh.done.store(true, Ordering::Release);
    out
}

/// Reads one subscriber's deliveries until it has every published message.
async fn subscriber(
    mut s: tokio::net::TcpStream,
    rest: Vec<u8>,
    sh: Arc<Shared>,
    mut done: watch::Receiver<bool>,
) -> SubEnd {
    let mut end = SubEnd::default();
    let mut next: u64 = 0;
    let mut buf = rest;
    buf.reserve(8 * 1024);
    loop {
        let mut pos = 0usize;
        let mut got = 0u64;
        let mut closed = false;
        while let Some(h) = frame::parse_header(&buf[pos..]) {
            let len = h.header_len + h.len as usize;
            if buf.len() - pos < len {
                if buf.capacity() - pos < len {
                    buf.reserve(len);
                }
                break;
            }
            if h.opcode == frame::OP_CLOSE {
                closed = true;
                break;
            }
            if (h.opcode == frame::OP_BINARY || h.opcode == frame::OP_TEXT)
                && h.len as usize >= STAMP
            {
                let p = pos + h.header_len;
                let seq = u64::from_le_bytes(buf[p..p + 8].try_into().expect("8 bytes"));
                let sent = u64::from_le_bytes(buf[p + 8..p + 16].try_into().expect("8 bytes"));
                if seq >= next {
                    for missed in next..seq {
                        sh.gaps.fetch_add(1, Ordering::Relaxed);
                        sh.mark(missed, None);
                    }
                    sh.mark(seq, Some(sent));
                    got += 1;
                    next = seq + 1;
                } else {
                    sh.disorder.fetch_add(1, Ordering::Relaxed);
                }
            }
            pos += len;
        }
        if got > 0 {
            end.received += got;
            sh.delivered.fetch_add(got, Ordering::Relaxed);
        }
        if closed {
            end.closed_by_target = true;
            return end;
        }
        if pos > 0 {
            buf.drain(..pos);
        }
        if *done.borrow_and_update() && next >= sh.published.load(Ordering::Acquire) {
            return end;
        }
        if buf.capacity() - buf.len() < 2048 {
            buf.reserve(8 * 1024);
        }
        // Also wake at the end of the run, when nothing more may arrive.
        tokio::select! {
            r = s.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    end.closed_by_target = true;
                    return end;
                }
                Ok(_) => {}
            },
            _ = done.changed() => {}
        }
    }
}
