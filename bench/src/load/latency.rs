//! `latency` mode: a fixed total message rate spread over N connections; round-trip time
//! percentiles from an HDR histogram, with coordinated omission accounted for.
//!
//! Each message carries its *scheduled* send time (nanoseconds since the run started) in its
//! first 8 payload bytes, and the round trip is measured from that time, not from when the
//! write happened: if the target stalls and the sender falls behind, the wait counts. Sending
//! runs on plain threads that sleep with a 1 ns timer slack (tokio's timer has 1 ms
//! granularity, which would add up to 1 ms of generator-made latency); each connection has a
//! blocking reader thread. The sender's own lag behind schedule is reported separately, so a
//! generator that could not keep up is visible.

use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use super::client::{SourceAddrs, Target, write_all_blocking};
use super::{Common, Outcome, hist, set_timer_slack};
use crate::frame;

const MASK: [u8; 4] = [0xa1, 0xb2, 0xc3, 0xd4];

/// Runs the latency mode.
pub async fn run(c: &Common, target: Target, src: Arc<SourceAddrs>) -> anyhow::Result<Outcome> {
    anyhow::ensure!(c.size >= 8, "latency mode needs --size >= 8");
    anyhow::ensure!(c.rate > 0.0, "latency mode needs --rate > 0");
    let target = Arc::new(target);
    let conns = super::open_many_tcp(&target, &src, c.connections, c.open_concurrency).await?;
    let mut writers = Vec::new();
    let mut read_side = Vec::new();
    let start = Instant::now() + Duration::from_millis(100);
    let warmup_ns = c.warmup.as_nanos() as u64;
    let total = c.warmup + c.duration;
    let end = start + total;
    let deadline = end + Duration::from_secs(2);
    for (s, rest) in conns {
        let s: TcpStream = s.into_std()?;
        writers.push(s.try_clone()?);
        read_side.push((s, rest));
    }
    // All readers on one thread with its own event loop: one wakeup per echo, no thread hops.
    let reader_thread = std::thread::spawn(move || -> anyhow::Result<(Histogram<u64>, u64)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let mut tasks = Vec::new();
            for (s, rest) in read_side {
                let s = tokio::net::TcpStream::from_std(s)?;
                tasks.push(tokio::spawn(reader(
                    s, rest, start, warmup_ns, end, deadline,
                )));
            }
            let mut h = hist();
            let mut n = 0;
            for t in tasks {
                let (a, b) = t.await?;
                h.add(a)?;
                n += b;
            }
            Ok((h, n))
        })
    });

    // Sender threads share the connections round robin; each paces its part of the rate.
    let threads = c.sender_threads.clamp(1, writers.len().max(1));
    let mut groups: Vec<Vec<TcpStream>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, w) in writers.into_iter().enumerate() {
        groups[i % threads].push(w);
    }
    let interval = Duration::from_secs_f64(threads as f64 / c.rate);
    let size = c.size;
    let probe_start = start + c.warmup;
    let senders: Vec<_> = groups
        .into_iter()
        .enumerate()
        .map(|(j, g)| {
            let offset = interval.mul_f64(j as f64 / threads as f64);
            std::thread::spawn(move || {
                sender(g, size, start, start + offset, interval, start + total)
            })
        })
        .collect();

    // CPU is measured over the recorded window only.
    let now = Instant::now();
    if probe_start > now {
        tokio::time::sleep(probe_start - now).await;
    }
    let probe = c.probe();
    let now = Instant::now();
    if end > now {
        tokio::time::sleep(end - now).await;
    }
    let usage = probe.finish();

    let mut lag = hist();
    let mut sent = 0u64;
    for s in senders {
        let (h, n) = s.join().map_err(|_| anyhow::anyhow!("sender panicked"))?;
        lag.add(h)?;
        sent += n;
    }
    let (rtt, received) = reader_thread
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    let ms = |v: u64| v as f64 / 1e6;
    let q = |h: &Histogram<u64>, p: f64| ms(h.value_at_quantile(p));
    let recorded = rtt.len();
    let human = format!(
        "latency: {} conns, {} B, {:.0} msg/s: p50 {:.3} ms, p90 {:.3}, p99 {:.3}, p99.9 {:.3}, max {:.3} ({} recorded; sent {}, echoed {}); sender lag p99 {:.3} ms, max {:.3}",
        c.connections,
        size,
        c.rate,
        q(&rtt, 0.5),
        q(&rtt, 0.9),
        q(&rtt, 0.99),
        q(&rtt, 0.999),
        ms(rtt.max()),
        recorded,
        sent,
        received,
        q(&lag, 0.99),
        ms(lag.max()),
    );
    let window_msgs = recorded as f64;
    Ok(Outcome {
        human,
        results: json!({
            "p50_ms": q(&rtt, 0.5),
            "p90_ms": q(&rtt, 0.9),
            "p99_ms": q(&rtt, 0.99),
            "p999_ms": q(&rtt, 0.999),
            "max_ms": ms(rtt.max()),
            "mean_ms": rtt.mean() / 1e6,
            "recorded": recorded,
            "sent": sent,
            "echoed": received,
            "lost": sent.saturating_sub(received),
            "sender_lag_p99_ms": q(&lag, 0.99),
            "sender_lag_max_ms": ms(lag.max()),
        }),
        usage,
        relayed_bytes: 2.0 * window_msgs * size as f64,
    })
}

/// Paces messages over `conns` round robin: message i is due at `first + i * interval`.
fn sender(
    mut conns: Vec<TcpStream>,
    size: usize,
    start: Instant,
    first: Instant,
    interval: Duration,
    end: Instant,
) -> (Histogram<u64>, u64) {
    set_timer_slack();
    let mut lag = hist();
    let mut buf = Vec::with_capacity(size + 14);
    let payload = vec![b'l'; size];
    frame::write_client_frame(&mut buf, frame::OP_BINARY, &payload, MASK);
    let at = buf.len() - size;
    let mut sent = 0u64;
    let mut i: u64 = 0;
    let n = conns.len();
    if n == 0 {
        return (lag, 0);
    }
    loop {
        let due = first + interval.mul_f64(i as f64);
        if due >= end {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let late = Instant::now().saturating_duration_since(due);
        let _ = lag.record((late.as_nanos() as u64).max(1_000));
        // Stamp the scheduled time (ns since the run start), masked in place.
        let mut ts = (due.duration_since(start).as_nanos() as u64).to_le_bytes();
        frame::apply_mask(&mut ts, MASK, 0);
        buf[at..at + 8].copy_from_slice(&ts);
        let k = (i as usize) % n;
        if write_all_blocking(&mut conns[k], &buf).is_ok() {
            sent += 1;
        }
        i += 1;
    }
    (lag, sent)
}

/// Reads echoes on one connection and records round-trip times from the scheduled send time.
async fn reader(
    mut s: tokio::net::TcpStream,
    rest: Vec<u8>,
    start: Instant,
    warmup_ns: u64,
    end: Instant,
    deadline: Instant,
) -> (Histogram<u64>, u64) {
    use tokio::io::AsyncReadExt;
    let mut h = hist();
    let mut n = 0u64;
    let mut buf = rest;
    buf.reserve(64 * 1024);
    let mut pos = 0usize;
    // A message the target sends in fragments is timed at its last one.
    let mut msg = frame::Reassembly::<8>::default();
    loop {
        // Parse every complete frame.
        while let Some(hd) = frame::parse_header(&buf[pos..]) {
            let total = hd.header_len + hd.len as usize;
            if buf.len() - pos < total {
                break;
            }
            let p = pos + hd.header_len;
            if hd.opcode < 8
                && let Some(m) = msg.frame(&hd, &buf[p..p + hd.len as usize])
                && m.opcode == frame::OP_BINARY
                && m.len >= 8
            {
                let sched = u64::from_le_bytes(m.head);
                let now = start.elapsed().as_nanos() as u64;
                n += 1;
                if sched >= warmup_ns {
                    let _ = h.record(now.saturating_sub(sched).max(1_000));
                }
            }
            pos += total;
        }
        if pos > 0 {
            buf.drain(..pos);
            pos = 0;
        }
        let now = Instant::now();
        if now > deadline {
            break;
        }
        // Once sending has ended, a quiet 100 ms means everything that will come back has.
        let wait = if now > end {
            Duration::from_millis(100)
        } else {
            end - now + Duration::from_millis(100)
        };
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        match tokio::time::timeout(wait, s.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => {
                if Instant::now() > end {
                    break;
                }
            }
        }
    }
    (h, n)
}
