//! `handshakes` mode: M concurrent loops that each connect, upgrade, exchange one message,
//! close (WebSocket close handshake, then TCP) and start over; reports sessions/s, the
//! latency of the handshake (TCP connect through the 101) and of the whole session, and the
//! target's CPU seconds per 1,000 sessions.
//!
//! Over `wss://` each session begins with a TLS handshake (counted in the handshake latency):
//! a full one every time, or with `--resume` a resumption of the loop's previous session
//! (each loop has its own session cache, as one reconnecting client would). The record
//! counts full and resumed handshakes in the measured window (`results.tls`), so a
//! "resumed handshakes/s" figure says how many really were.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::{self, FrameCounter, SourceAddrs, Target};
use super::tls::{Facts, Tally};
use super::{Common, Outcome, hist};
use crate::frame;

/// One session; returns the handshake duration and, over TLS, what the handshake was.
async fn session(
    t: &Target,
    src: Option<std::net::IpAddr>,
    msg: &[u8],
) -> anyhow::Result<(Duration, Option<Facts>)> {
    let t0 = Instant::now();
    let (mut s, rest) = client::open_conn(t, src).await?;
    let hs = t0.elapsed();
    let facts = s.tls_facts();
    s.write_all(msg).await?;
    s.flush().await?;
    let mut fc = FrameCounter::default();
    let mut got = fc.feed(&rest).0;
    let mut buf = [0u8; 4096];
    while got == 0 {
        let n = s.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "closed before the echo");
        got += fc.feed(&buf[..n]).0;
    }
    let mut close = Vec::with_capacity(8);
    frame::write_client_frame(
        &mut close,
        frame::OP_CLOSE,
        &1000u16.to_be_bytes(),
        [9, 8, 7, 6],
    );
    s.write_all(&close).await?;
    s.flush().await?;
    // Wait for the peer's Close and its end of stream, so the server closes TCP first.
    let wait = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    });
    wait.await
        .map_err(|_| anyhow::anyhow!("no close from the peer"))?;
    Ok((hs, facts))
}

/// Runs the handshakes mode.
pub async fn run(c: &Common, target: Target, src: Arc<SourceAddrs>) -> anyhow::Result<Outcome> {
    let target = Arc::new(target);
    let mut msg = Vec::new();
    frame::write_client_frame(
        &mut msg,
        frame::OP_BINARY,
        &vec![b'h'; c.size],
        [1, 3, 5, 7],
    );
    let msg = Arc::new(msg);
    let recording = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let sessions = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..c.concurrency.max(1) {
        // With --resume, every loop resumes its own previous session.
        let t = Arc::new(target.own_session_cache());
        let (src, msg) = (src.clone(), msg.clone());
        let (recording, stop, errors, sessions) = (
            recording.clone(),
            stop.clone(),
            errors.clone(),
            sessions.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let (mut hs, mut total) = (hist(), hist());
            let mut tally = Tally::default();
            let mut last_err = None;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                match session(&t, src.pick(), &msg).await {
                    Ok((d, facts)) if recording.load(Ordering::Relaxed) => {
                        let _ = hs.record((d.as_nanos() as u64).max(1_000));
                        let _ = total.record((t0.elapsed().as_nanos() as u64).max(1_000));
                        sessions.fetch_add(1, Ordering::Relaxed);
                        if let Some(f) = facts {
                            tally.add(f);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if recording.load(Ordering::Relaxed) {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        last_err = Some(e.to_string());
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (hs, total, tally, last_err)
        }));
    }
    tokio::time::sleep(c.warmup).await;
    recording.store(true, Ordering::Relaxed);
    let probe = c.probe();
    let n0 = sessions.load(Ordering::Relaxed);
    tokio::time::sleep(c.duration).await;
    let n1 = sessions.load(Ordering::Relaxed);
    let usage = probe.finish();
    recording.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let (mut hs, mut total) = (hist(), hist());
    let mut tally = Tally::default();
    let mut last_err = None;
    for t in tasks {
        let (a, b, tl, e) = t.await?;
        hs.add(a)?;
        total.add(b)?;
        tally.merge(&tl);
        last_err = last_err.or(e);
    }
    let n = n1 - n0;
    let rate = n as f64 / usage.wall_s;
    // Target CPU seconds per 1,000 sessions of the window.
    let cpu_per_1k = usage
        .target_cpu_s
        .filter(|_| n > 0)
        .map(|s| 1000.0 * s / n as f64);
    let tls = target.tls.is_some().then(|| tally.to_json());
    let ms = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p) as f64 / 1e6;
    let errs = errors.load(Ordering::Relaxed);
    let mut human = format!(
        "handshakes: {} loops: {:.0} sessions/s; handshake p50 {:.3} ms, p99 {:.3}, p99.9 {:.3}, max {:.3}; session p50 {:.3} ms, p99 {:.3}; {} errors",
        c.concurrency,
        rate,
        ms(&hs, 0.5),
        ms(&hs, 0.99),
        ms(&hs, 0.999),
        hs.max() as f64 / 1e6,
        ms(&total, 0.5),
        ms(&total, 0.99),
        errs
    );
    if let Some(e) = &last_err {
        human += &format!(" (last: {e})");
    }
    if let Some(x) = cpu_per_1k {
        human += &format!("; target CPU {x:.3} s per 1,000 sessions");
    }
    if target.tls.is_some() {
        human += &format!(
            "\nhandshakes: TLS {} / {} / {}: {} full, {} resumed ({:.1} % resumed)",
            tally.last.map_or("?", |f| f.version),
            tally.last.map_or("?", |f| f.cipher),
            tally.last.map_or("?", |f| f.kx),
            tally.full,
            tally.resumed,
            100.0 * tally.resumed_fraction().unwrap_or(0.0),
        );
    }
    Ok(Outcome {
        human,
        results: json!({
            "sessions_per_s": rate,
            "handshake_p50_ms": ms(&hs, 0.5),
            "handshake_p90_ms": ms(&hs, 0.9),
            "handshake_p99_ms": ms(&hs, 0.99),
            "handshake_p999_ms": ms(&hs, 0.999),
            "handshake_max_ms": hs.max() as f64 / 1e6,
            "session_p50_ms": ms(&total, 0.5),
            "session_p99_ms": ms(&total, 0.99),
            "errors": errs,
            "last_error": last_err,
            "target_cpu_s_per_1k_sessions": cpu_per_1k,
            "tls": tls,
        }),
        usage,
        relayed_bytes: n as f64 * 2.0 * c.size as f64,
    })
}
