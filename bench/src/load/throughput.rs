//! `throughput` mode: N connections each keep `depth` messages in flight for a duration;
//! reports messages/s and payload bytes/s each way.
//!
//! Each connection is one task that writes a pre-built, pre-masked batch of frames and, for
//! every echoed message it reads back, writes one more frame. The generator never touches
//! payload bytes in the hot loop: it parses frame headers and skips payloads. Over `wss://`
//! each connection is a TLS session (full handshake) and the record says what it negotiated.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::{FrameCounter, SourceAddrs, Target};
use super::{Common, Outcome};
use crate::frame;

#[derive(Debug, Default)]
struct Counters {
    sent_msgs: AtomicU64,
    recv_msgs: AtomicU64,
    recv_bytes: AtomicU64,
}

/// Runs the throughput mode.
pub async fn run(c: &Common, target: Target, src: Arc<SourceAddrs>) -> anyhow::Result<Outcome> {
    let size = c.size;
    let depth = c.depth.max(1);
    let mut one = Vec::with_capacity(size + 14);
    let payload = vec![b'x'; size];
    frame::write_client_frame(
        &mut one,
        frame::OP_BINARY,
        &payload,
        [0x12, 0x34, 0x56, 0x78],
    );
    let frame_len = one.len();
    let batch: Arc<Vec<u8>> = Arc::new(one.repeat(depth));
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let target = Arc::new(target);

    // Open every connection first, so the measured window has all of them running.
    let conns = super::open_many(&target, &src, c.connections, c.open_concurrency).await?;
    let tls = super::tls_tally(&conns);
    let mut tasks = Vec::new();
    for (mut s, rest) in conns {
        let (batch, counters, stop) = (batch.clone(), counters.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut fc = FrameCounter::default();
            let mut buf = vec![0u8; 256 * 1024];
            let (m, b, _) = fc.feed(&rest);
            let mut inflight = (depth as u64).saturating_sub(m);
            counters.recv_msgs.fetch_add(m, Ordering::Relaxed);
            counters.recv_bytes.fetch_add(b, Ordering::Relaxed);
            // flush: over TLS, the last records may still be in the session (a no-op on TCP).
            if s.write_all(&batch).await.is_err() || s.flush().await.is_err() {
                return;
            }
            counters
                .sent_msgs
                .fetch_add(depth as u64, Ordering::Relaxed);
            loop {
                let n = match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let (m, b, close) = fc.feed(&buf[..n]);
                counters.recv_msgs.fetch_add(m, Ordering::Relaxed);
                counters.recv_bytes.fetch_add(b, Ordering::Relaxed);
                inflight -= m.min(inflight);
                if close {
                    return;
                }
                if stop.load(Ordering::Relaxed) {
                    if inflight == 0 {
                        return;
                    }
                    continue;
                }
                // Refill what came back, one write for the whole batch.
                let k = (depth as u64 - inflight) as usize;
                if k > 0 {
                    if s.write_all(&batch[..k * frame_len]).await.is_err()
                        || s.flush().await.is_err()
                    {
                        return;
                    }
                    inflight += k as u64;
                    counters.sent_msgs.fetch_add(k as u64, Ordering::Relaxed);
                }
            }
        }));
    }

    let snap = |c: &Counters| {
        (
            c.sent_msgs.load(Ordering::Relaxed),
            c.recv_msgs.load(Ordering::Relaxed),
            c.recv_bytes.load(Ordering::Relaxed),
        )
    };
    tokio::time::sleep(c.warmup).await;
    let probe = c.probe();
    let t0 = Instant::now();
    let a = snap(&counters);
    tokio::time::sleep(c.duration).await;
    let b = snap(&counters);
    let wall = t0.elapsed().as_secs_f64();
    let usage = probe.finish();
    stop.store(true, Ordering::Relaxed);
    // Let in-flight echoes drain briefly, then drop the rest.
    let drain = tokio::time::timeout(Duration::from_secs(2), async {
        for t in &mut tasks {
            let _ = t.await;
        }
    })
    .await;
    if drain.is_err() {
        for t in &tasks {
            t.abort();
        }
    }

    let sent = (b.0 - a.0) as f64 / wall;
    let recv = (b.1 - a.1) as f64 / wall;
    let recv_bytes = (b.2 - a.2) as f64 / wall;
    let sent_bytes = sent * size as f64;
    let relayed = (b.2 - a.2) as f64 + (b.0 - a.0) as f64 * size as f64;
    let human = format!(
        "throughput: {} conns, {} B, depth {}: sent {:.0} msg/s ({:.1} MB/s), echoed {:.0} msg/s ({:.1} MB/s) over {:.1} s",
        c.connections,
        size,
        depth,
        sent,
        sent_bytes / 1e6,
        recv,
        recv_bytes / 1e6,
        wall
    );
    Ok(Outcome {
        human,
        results: json!({
            "tls": tls,
            "sent_msgs_per_s": sent,
            "recv_msgs_per_s": recv,
            "msgs_per_s": recv,
            "sent_bytes_per_s": sent_bytes,
            "recv_bytes_per_s": recv_bytes,
            "wall_s": wall,
        }),
        usage,
        relayed_bytes: relayed,
    })
}
