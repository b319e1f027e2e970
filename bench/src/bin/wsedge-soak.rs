//! `wsedge-soak`: the load and the report of `scripts/soak.sh`.
//!
//! `wsedge-soak run` drives two loads at once for a fixed time, over one or more targets
//! (connections alternate between them, so every route is soaked):
//! - **churn**: new WebSocket connections at a steady rate, from source addresses taken in
//!   turn; each upgrades, exchanges a few numbered messages (checked), closes with the close
//!   handshake and waits for the server to end TCP;
//! - **steady**: long-lived connections that each send numbered messages at a fixed rate; a
//!   reader checks that every echo arrives, in order, exactly once.
//!
//! At the end it writes a JSON summary (connections made, messages sent / received / lost /
//! reordered / corrupt, errors).
//!
//! `wsedge-soak report` reads the CSV of fd / RSS samples written by the script and that
//! summary, judges the run (message loss, fd and RSS growth after warm-up, fds back to the
//! baseline once the load stopped) and writes `soak.md` and `soak.png`; it exits 1 when the
//! run failed.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use plotters::prelude::*;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

use wsedge_bench::frame;
use wsedge_bench::load::client::{self, SourceAddrs, Target};

/// Soak load and report for wsedge.
#[derive(Debug, Parser)]
#[command(name = "wsedge-soak", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Runs churn and steady traffic for a fixed time; writes a JSON summary.
    Run(RunArgs),
    /// Judges a run from its samples CSV and summary; writes soak.md and soak.png.
    Report(ReportArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// `ws://HOST:PORT/PATH` (repeat: connections alternate between targets).
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// Seconds to run.
    #[arg(long)]
    duration: f64,
    /// New connections per second (churn).
    #[arg(long, default_value_t = 200.0)]
    churn_rate: f64,
    /// Messages each churn connection exchanges.
    #[arg(long, default_value_t = 3)]
    churn_messages: u64,
    /// Churn sessions in progress at most (more are counted as skipped).
    #[arg(long, default_value_t = 2000)]
    churn_max_in_flight: u64,
    /// Source addresses of churn connections (`127.0.0.2-127.0.0.254`).
    #[arg(long)]
    churn_source_addrs: Option<String>,
    /// Long-lived connections.
    #[arg(long, default_value_t = 200)]
    steady: usize,
    /// Messages per second on each long-lived connection.
    #[arg(long, default_value_t = 5.0)]
    steady_rate: f64,
    /// Source addresses of long-lived connections.
    #[arg(long)]
    steady_source_addrs: Option<String>,
    /// Message payload size in bytes (at least 24).
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Seconds between progress lines on stderr.
    #[arg(long, default_value_t = 30.0)]
    progress: f64,
    /// Where to write the JSON summary.
    #[arg(long)]
    summary_out: PathBuf,
}

#[derive(Debug, clap::Args)]
struct ReportArgs {
    /// Samples: `t_s,phase,fds,rss_kib` with phase baseline | load | after.
    #[arg(long)]
    csv: PathBuf,
    /// The JSON summary `run` wrote.
    #[arg(long)]
    summary: PathBuf,
    /// Output directory (soak.md, soak.png).
    #[arg(long)]
    out: PathBuf,
    /// Smoke run: no growth judgement (fds back to baseline and message checks still apply).
    #[arg(long)]
    smoke: bool,
    /// wsedge died during the run.
    #[arg(long)]
    wsedge_died: bool,
    /// Largest allowed growth of the mean fd count, last quarter over second quarter.
    #[arg(long, default_value_t = 20.0)]
    fd_slack: f64,
    /// Allowed RSS growth (fraction), last quarter over second quarter...
    #[arg(long, default_value_t = 0.10)]
    rss_growth: f64,
    /// ...plus this many MiB.
    #[arg(long, default_value_t = 4.0)]
    rss_slack_mib: f64,
    /// Extra line for the Markdown header (command, date).
    #[arg(long, default_value = "")]
    note: String,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Run(a) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            rt.block_on(run(a))
        }
        Cmd::Report(a) => {
            if report(&a)? {
                Ok(())
            } else {
                std::process::exit(1);
            }
        }
    }
}

// ----- load ---------------------------------------------------------------------------------

/// Counters shared by every task.
#[derive(Debug, Default)]
struct Stats {
    churn_started: AtomicU64,
    churn_ok: AtomicU64,
    churn_failed: AtomicU64,
    churn_skipped: AtomicU64,
    churn_msgs: AtomicU64,
    steady_open: AtomicU64,
    steady_failed: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    lost: AtomicU64,
    reordered: AtomicU64,
    corrupt: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Stats {
    async fn error(&self, what: &str, e: &anyhow::Error) {
        *self.last_error.lock().await = Some(format!("{what}: {e:#}"));
    }
}

/// A server→client message, or the end of the stream.
enum Event {
    Data(Vec<u8>),
    Close,
    Eof,
}

/// Reads whole messages (fragments joined; pings and pongs skipped) from the server side.
struct MsgReader<R> {
    r: R,
    buf: Vec<u8>,
    msg: Vec<u8>,
}

impl<R: AsyncRead + Unpin> MsgReader<R> {
    fn new(r: R, rest: Vec<u8>) -> Self {
        Self {
            r,
            buf: rest,
            msg: Vec::new(),
        }
    }

    async fn next(&mut self) -> anyhow::Result<Event> {
        loop {
            if let Some(h) = frame::parse_header(&self.buf) {
                let total = h.header_len + h.len as usize;
                if self.buf.len() >= total {
                    let mut payload = self.buf[h.header_len..total].to_vec();
                    if let Some(m) = h.mask {
                        frame::apply_mask(&mut payload, m, 0);
                    }
                    self.buf.drain(..total);
                    match h.opcode {
                        frame::OP_CLOSE => return Ok(Event::Close),
                        frame::OP_PING | frame::OP_PONG => {}
                        _ => {
                            self.msg.extend_from_slice(&payload);
                            if h.fin {
                                return Ok(Event::Data(std::mem::take(&mut self.msg)));
                            }
                        }
                    }
                    continue;
                }
            }
            self.buf.reserve(4096);
            if self.r.read_buf(&mut self.buf).await? == 0 {
                return Ok(Event::Eof);
            }
        }
    }
}

/// A message: connection id, sequence number, then a pattern derived from both.
fn message(id: u64, seq: u64, size: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(size);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    let mut x = id.wrapping_mul(31).wrapping_add(seq);
    while p.len() < size {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        p.push((x >> 56) as u8);
    }
    let mut out = Vec::with_capacity(size + 14);
    let mask = (seq as u32 ^ id as u32).to_be_bytes();
    frame::write_client_frame(&mut out, frame::OP_BINARY, &p, mask);
    out
}

/// Checks an echoed payload; returns (id, seq) when it is intact.
fn check(payload: &[u8], size: usize) -> Option<(u64, u64)> {
    if payload.len() != size || size < 16 {
        return None;
    }
    let id = u64::from_be_bytes(payload[..8].try_into().ok()?);
    let seq = u64::from_be_bytes(payload[8..16].try_into().ok()?);
    let mut x = id.wrapping_mul(31).wrapping_add(seq);
    for &b in &payload[16..] {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        if b != (x >> 56) as u8 {
            return None;
        }
    }
    Some((id, seq))
}

fn close_frame() -> Vec<u8> {
    let mut c = Vec::with_capacity(8);
    frame::write_client_frame(
        &mut c,
        frame::OP_CLOSE,
        &1000u16.to_be_bytes(),
        [9, 8, 7, 6],
    );
    c
}

/// One churn session: upgrade, `n` checked echoes, close handshake, server closes TCP.
async fn churn_session(
    t: &Target,
    src: Option<IpAddr>,
    id: u64,
    n: u64,
    size: usize,
) -> anyhow::Result<()> {
    let (s, rest) = tokio::time::timeout(Duration::from_secs(10), client::open(t, src))
        .await
        .context("handshake timed out")??;
    let (rd, mut wr) = s.into_split();
    let mut r = MsgReader::new(rd, rest);
    let body = async {
        for seq in 0..n {
            wr.write_all(&message(id, seq, size)).await?;
            match r.next().await? {
                Event::Data(p) => {
                    if check(&p, size) != Some((id, seq)) {
                        bail!("churn echo {seq} wrong or corrupt");
                    }
                }
                Event::Close => bail!("close before echo {seq}"),
                Event::Eof => bail!("end of stream before echo {seq}"),
            }
        }
        wr.write_all(&close_frame()).await?;
        loop {
            match r.next().await {
                Ok(Event::Eof) | Err(_) => break,
                Ok(_) => {}
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(15), body)
        .await
        .context("churn session timed out")?
}

/// Result of one long-lived connection.
#[derive(Debug, Default)]
struct SteadyResult {
    sent: u64,
    received: u64,
}

/// One long-lived connection: numbered messages at `rate`/s until `stop`, then waits for the
/// remaining echoes, closes, and accounts for anything missing.
#[allow(clippy::too_many_arguments)]
async fn steady_conn(
    t: Arc<Target>,
    src: Option<IpAddr>,
    id: u64,
    rate: f64,
    size: usize,
    phase: Duration,
    stop: Arc<AtomicBool>,
    st: Arc<Stats>,
) -> anyhow::Result<SteadyResult> {
    let (s, rest) = client::open(&t, src).await?;
    st.steady_open.fetch_add(1, Ordering::Relaxed);
    let (rd, mut wr) = s.into_split();
    let received = Arc::new(AtomicU64::new(0));
    let reader = {
        let (received, st) = (received.clone(), st.clone());
        tokio::spawn(async move {
            let mut r = MsgReader::new(rd, rest);
            let mut expected = 0u64;
            loop {
                match r.next().await? {
                    Event::Data(p) => match check(&p, size) {
                        Some((pid, seq)) if pid == id => {
                            if seq < expected {
                                st.reordered.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            if seq > expected {
                                // A gap: those numbers were lost or come later (reordered).
                                st.reordered.fetch_add(1, Ordering::Relaxed);
                            }
                            expected = seq + 1;
                            received.fetch_add(1, Ordering::Relaxed);
                            st.received.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            st.corrupt.fetch_add(1, Ordering::Relaxed);
                        }
                    },
                    Event::Close => {}
                    Event::Eof => return anyhow::Ok(()),
                }
            }
        })
    };
    tokio::time::sleep(phase).await;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = 0u64;
    let mut res = anyhow::Ok(());
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        if let Err(e) = wr.write_all(&message(id, sent, size)).await {
            res = Err(e.into());
            break;
        }
        sent += 1;
        st.sent.fetch_add(1, Ordering::Relaxed);
    }
    // Let the last echoes arrive.
    let t0 = Instant::now();
    while received.load(Ordering::Relaxed) < sent && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = wr.write_all(&close_frame()).await;
    match tokio::time::timeout(Duration::from_secs(10), reader).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => res = res.and(Err(e.context("reader"))),
        Ok(Err(e)) => res = res.and(Err(e.into())),
        Err(_) => res = res.and(Err(anyhow::anyhow!("no end of stream after close"))),
    }
    let got = received.load(Ordering::Relaxed);
    st.lost
        .fetch_add(sent.saturating_sub(got), Ordering::Relaxed);
    res.map(|()| SteadyResult {
        sent,
        received: got,
    })
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.size >= 24, "--size must be at least 24");
    anyhow::ensure!(
        a.churn_rate >= 0.0 && a.steady_rate > 0.0,
        "rates must be positive"
    );
    let targets: Vec<Arc<Target>> = a
        .targets
        .iter()
        .map(|u| Target::parse(u).map(Arc::new))
        .collect::<anyhow::Result<_>>()?;
    let churn_src = Arc::new(SourceAddrs::parse(a.churn_source_addrs.as_deref())?);
    let steady_src = SourceAddrs::parse(a.steady_source_addrs.as_deref())?;
    let st = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let t_start = Instant::now();

    // Steady connections, opened gradually over the first second, sending out of phase.
    let mut steady = Vec::with_capacity(a.steady);
    for i in 0..a.steady {
        let t = targets[i % targets.len()].clone();
        let phase = Duration::from_secs_f64((i as f64 / a.steady as f64) / a.steady_rate);
        let (src, stop, st) = (steady_src.pick(), stop.clone(), st.clone());
        let (rate, size, id) = (a.steady_rate, a.size, i as u64);
        steady.push(tokio::spawn(async move {
            let r = steady_conn(t, src, id, rate, size, phase, stop, st.clone()).await;
            if let Err(e) = &r {
                st.steady_failed.fetch_add(1, Ordering::Relaxed);
                st.error(&format!("steady connection {id}"), e).await;
            }
            r
        }));
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Churn: a ticker at the rate; each tick starts one session.
    let churn = {
        let (st, stop, targets, src) = (st.clone(), stop.clone(), targets.clone(), churn_src);
        let (rate, n, size, cap) = (
            a.churn_rate,
            a.churn_messages,
            a.size,
            a.churn_max_in_flight,
        );
        tokio::spawn(async move {
            if rate <= 0.0 {
                return;
            }
            let in_flight = Arc::new(AtomicU64::new(0));
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if in_flight.load(Ordering::Relaxed) >= cap {
                    st.churn_skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let t = targets[(k as usize) % targets.len()].clone();
                let (ip, id) = (src.pick(), 1_000_000_000 + k);
                k += 1;
                st.churn_started.fetch_add(1, Ordering::Relaxed);
                in_flight.fetch_add(1, Ordering::Relaxed);
                let (st, in_flight) = (st.clone(), in_flight.clone());
                tokio::spawn(async move {
                    match churn_session(&t, ip, id, n, size).await {
                        Ok(()) => {
                            st.churn_ok.fetch_add(1, Ordering::Relaxed);
                            st.churn_msgs.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => {
                            st.churn_failed.fetch_add(1, Ordering::Relaxed);
                            st.error("churn session", &e).await;
                        }
                    }
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
            // Let the sessions in progress finish.
            let t0 = Instant::now();
            while in_flight.load(Ordering::Relaxed) > 0 && t0.elapsed() < Duration::from_secs(20) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // Progress until the end.
    let end = t_start + Duration::from_secs_f64(a.duration);
    let every = Duration::from_secs_f64(a.progress.max(1.0));
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        tokio::time::sleep((end - now).min(every)).await;
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        eprintln!(
            "[soak-load {:>6.0} s] churn ok {} failed {} skipped {}; steady open {} failed {}; msgs sent {} received {} reordered {} corrupt {}",
            t_start.elapsed().as_secs_f64(),
            g(&st.churn_ok),
            g(&st.churn_failed),
            g(&st.churn_skipped),
            g(&st.steady_open),
            g(&st.steady_failed),
            g(&st.sent),
            g(&st.received),
            g(&st.reordered),
            g(&st.corrupt),
        );
    }
    stop.store(true, Ordering::Relaxed);
    let load_s = t_start.elapsed().as_secs_f64();
    churn.await?;
    let (mut s_sent, mut s_recv) = (0u64, 0u64);
    for t in steady {
        if let Ok(r) = t.await? {
            s_sent += r.sent;
            s_recv += r.received;
        }
    }
    let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let churn_ok = g(&st.churn_ok);
    let summary = json!({
        "targets": a.targets,
        "duration_s": load_s,
        "churn_rate": a.churn_rate,
        "churn_started": g(&st.churn_started),
        "churn_ok": churn_ok,
        "churn_failed": g(&st.churn_failed),
        "churn_skipped": g(&st.churn_skipped),
        "churn_msgs": g(&st.churn_msgs),
        "churn_achieved_per_s": churn_ok as f64 / load_s.max(1e-9),
        "steady": a.steady,
        "steady_rate": a.steady_rate,
        "steady_opened": g(&st.steady_open),
        "steady_failed": g(&st.steady_failed),
        "connections": churn_ok + g(&st.steady_open),
        "msgs_sent": g(&st.sent),
        "msgs_received": g(&st.received),
        "msgs_lost": g(&st.lost),
        "msgs_reordered": g(&st.reordered),
        "msgs_corrupt": g(&st.corrupt),
        "steady_clean_sent": s_sent,
        "steady_clean_received": s_recv,
        "size": a.size,
        "last_error": *st.last_error.lock().await,
    });
    eprintln!("[soak-load] done: {summary}");
    std::fs::write(&a.summary_out, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("writing {}", a.summary_out.display()))?;
    Ok(())
}

// ----- report -------------------------------------------------------------------------------

/// One sample row.
#[derive(Debug, Clone)]
struct Sample {
    t: f64,
    phase: String,
    fds: f64,
    rss_mib: f64,
}

fn read_csv(path: &Path) -> anyhow::Result<Vec<Sample>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 4 {
            bail!("{} line {}: want 4 fields", path.display(), i + 1);
        }
        out.push(Sample {
            t: f[0].parse()?,
            phase: f[1].to_owned(),
            fds: f[2].parse()?,
            rss_mib: f[3].parse::<f64>()? / 1024.0,
        });
    }
    Ok(out)
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.iter().sum::<f64>() / xs.len() as f64
}

fn report(a: &ReportArgs) -> anyhow::Result<bool> {
    let samples = read_csv(&a.csv)?;
    let sum: Value = serde_json::from_str(
        &std::fs::read_to_string(&a.summary).with_context(|| format!("{}", a.summary.display()))?,
    )?;
    let u = |k: &str| sum[k].as_u64().unwrap_or(0);
    let load: Vec<&Sample> = samples.iter().filter(|s| s.phase == "load").collect();
    let base: Vec<&Sample> = samples.iter().filter(|s| s.phase == "baseline").collect();
    let after: Vec<&Sample> = samples.iter().filter(|s| s.phase == "after").collect();
    anyhow::ensure!(!load.is_empty(), "no samples under load");

    let mut fails: Vec<String> = Vec::new();
    let mut checks: Vec<String> = Vec::new();
    if a.wsedge_died {
        fails.push("wsedge died during the run".into());
    }
    for (k, what) in [
        ("msgs_lost", "messages lost"),
        ("msgs_reordered", "messages reordered or duplicated"),
        ("msgs_corrupt", "messages corrupt"),
        ("churn_failed", "churn sessions failed"),
        ("steady_failed", "long-lived connections failed"),
        (
            "churn_skipped",
            "churn sessions skipped (generator saturated)",
        ),
    ] {
        if u(k) > 0 {
            fails.push(format!("{what}: {}", u(k)));
        }
    }
    if u("steady_opened") != u("steady") {
        fails.push(format!(
            "only {} of {} long-lived connections opened",
            u("steady_opened"),
            u("steady")
        ));
    }
    if u("msgs_sent") == 0 || (u("churn_ok") == 0 && sum["churn_rate"].as_f64() > Some(0.0)) {
        fails.push("no traffic".into());
    }
    // fds back to the baseline once the load stopped.
    let fd_base = base.last().map(|s| s.fds);
    let fd_after = after.last().map(|s| s.fds);
    match (fd_base, fd_after) {
        (Some(b), Some(e)) if b == e => {
            checks.push(format!("fds after the load: {e} = baseline {b}"));
        }
        (Some(b), Some(e)) => fails.push(format!("fds after the load: {e}, baseline {b}")),
        _ => fails.push("no baseline / after samples".into()),
    }
    // Growth after warm-up: mean of the last quarter against the mean of the second quarter.
    let n = load.len();
    let q = |i: usize| &load[n * i / 4..n * (i + 1) / 4];
    let (q2, q4) = (q(1), q(3));
    let fd2 = mean(&q2.iter().map(|s| s.fds).collect::<Vec<_>>());
    let fd4 = mean(&q4.iter().map(|s| s.fds).collect::<Vec<_>>());
    let rss2 = mean(&q2.iter().map(|s| s.rss_mib).collect::<Vec<_>>());
    let rss4 = mean(&q4.iter().map(|s| s.rss_mib).collect::<Vec<_>>());
    let growth = format!(
        "mean fds {fd2:.1} → {fd4:.1} (allowed +{:.0}); mean RSS {rss2:.2} → {rss4:.2} MiB (allowed +{:.0} % + {:.0} MiB); second quarter → last quarter of {n} samples under load",
        a.fd_slack,
        a.rss_growth * 100.0,
        a.rss_slack_mib
    );
    if a.smoke {
        checks.push(format!("growth not judged (smoke): {growth}"));
    } else if n < 8 {
        fails.push(format!("too few samples under load ({n}) to judge growth"));
    } else if fd4 - fd2 > a.fd_slack || rss4 > rss2 * (1.0 + a.rss_growth) + a.rss_slack_mib {
        fails.push(format!("growth: {growth}"));
    } else {
        checks.push(format!("no growth: {growth}"));
    }

    let stat = |f: fn(&Sample) -> f64| {
        let v: Vec<f64> = load.iter().map(|s| f(s)).collect();
        (
            v[0],
            v[v.len() - 1],
            v.iter().copied().fold(f64::MIN, f64::max),
        )
    };
    let (fs, fe, fm) = stat(|s| s.fds);
    let (rs, re, rm) = stat(|s| s.rss_mib);
    let passed = fails.is_empty();

    let mut md = String::new();
    let _ = writeln!(md, "# wsedge soak\n");
    if !a.note.is_empty() {
        let _ = writeln!(md, "{}\n", a.note);
    }
    let _ = writeln!(
        md,
        "Load: {:.0} s; churn {} new connections/s ({} messages each), {} long-lived connections at {} msg/s each, {} B messages; targets {}.\n",
        sum["duration_s"].as_f64().unwrap_or(0.0),
        sum["churn_rate"],
        u("churn_msgs").checked_div(u("churn_ok")).unwrap_or(0),
        u("steady"),
        sum["steady_rate"],
        u("size"),
        sum["targets"]
            .as_array()
            .map(|v| v
                .iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    );
    let _ = writeln!(
        md,
        "| wsedge | start | end | max | baseline (idle, before) | after (idle, after) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    let opt = |v: Option<f64>, d: usize| v.map_or("n/a".into(), |x| format!("{x:.d$}"));
    let _ = writeln!(
        md,
        "| fds | {fs:.0} | {fe:.0} | {fm:.0} | {} | {} |",
        opt(fd_base, 0),
        opt(fd_after, 0)
    );
    let _ = writeln!(
        md,
        "| RSS MiB | {rs:.1} | {re:.1} | {rm:.1} | {} | {} |\n",
        opt(base.last().map(|s| s.rss_mib), 1),
        opt(after.last().map(|s| s.rss_mib), 1)
    );
    let _ = writeln!(
        md,
        "| connections made | churn sessions ok / failed / skipped | long-lived | messages sent | received | lost | reordered | corrupt |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    let _ = writeln!(
        md,
        "| {} | {} / {} / {} | {} | {} | {} | {} | {} | {} |\n",
        u("connections"),
        u("churn_ok"),
        u("churn_failed"),
        u("churn_skipped"),
        u("steady_opened"),
        u("msgs_sent") + u("churn_msgs"),
        u("msgs_received") + u("churn_msgs"),
        u("msgs_lost"),
        u("msgs_reordered"),
        u("msgs_corrupt"),
    );
    let _ = writeln!(
        md,
        "(Messages: long-lived {} sent / {} received, plus {} echoed in churn sessions.)\n",
        u("msgs_sent"),
        u("msgs_received"),
        u("churn_msgs")
    );
    let _ = writeln!(
        md,
        "**Verdict: {}**\n",
        if passed { "PASS" } else { "FAIL" }
    );
    for c in &checks {
        let _ = writeln!(md, "- ok: {c}");
    }
    for f in &fails {
        let _ = writeln!(md, "- FAIL: {f}");
    }
    if let Some(e) = sum["last_error"].as_str() {
        let _ = writeln!(md, "\nLast load error: `{e}`");
    }
    std::fs::create_dir_all(&a.out)?;
    let png = a.out.join("soak.png");
    if wsedge_bench::report::load_font() {
        plot(&png, &samples)?;
        let _ = writeln!(md, "\n![fds and RSS over time](soak.png)");
    } else {
        let _ = writeln!(md, "\n(No plot: no TrueType font found; set WSEDGE_FONT.)");
    }
    std::fs::write(a.out.join("soak.md"), &md)?;
    print!("{md}");
    Ok(passed)
}

/// A plotted figure of a sample.
type Field = fn(&Sample) -> f64;

/// fds (top) and RSS (bottom) against minutes, every phase; shaded where no load ran.
fn plot(path: &Path, samples: &[Sample]) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(280);
    let t_max = samples
        .iter()
        .map(|s| s.t / 60.0)
        .fold(0.0, f64::max)
        .max(0.1);
    let t_load: Vec<f64> = samples
        .iter()
        .filter(|s| s.phase == "load")
        .map(|s| s.t / 60.0)
        .collect();
    let (l0, l1) = (
        t_load.first().copied().unwrap_or(0.0),
        t_load.last().copied().unwrap_or(t_max),
    );
    let panels: [(_, &str, Field, RGBColor); 2] = [
        (&top, "wsedge open fds", |s| s.fds, RGBColor(31, 119, 180)),
        (
            &bottom,
            "wsedge RSS (MiB)",
            |s| s.rss_mib,
            RGBColor(214, 39, 40),
        ),
    ];
    for (area, title, f, colour) in panels {
        let max = samples.iter().map(f).fold(0.0, f64::max).max(1.0) * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..t_max, 0.0..max)?;
        chart
            .configure_mesh()
            .x_desc("minutes")
            .label_style(("sans-serif", 12))
            .draw()?;
        chart.draw_series(std::iter::once(Rectangle::new(
            [(l0, 0.0), (l1, max)],
            RGBColor(240, 240, 200).filled(),
        )))?;
        chart.draw_series(LineSeries::new(
            samples.iter().map(|s| (s.t / 60.0, f(s))),
            colour.stroke_width(2),
        ))?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unmasks a client frame built by `message` back into its payload.
    fn payload_of(wire: &[u8]) -> Vec<u8> {
        let h = frame::parse_header(wire).unwrap();
        let mut p = wire[h.header_len..].to_vec();
        frame::apply_mask(&mut p, h.mask.unwrap(), 0);
        p
    }

    #[test]
    fn messages_round_trip_and_corruption_is_seen() {
        let p = payload_of(&message(7, 42, 128));
        assert_eq!(check(&p, 128), Some((7, 42)));
        let mut bad = p.clone();
        bad[100] ^= 1;
        assert_eq!(check(&bad, 128), None);
        assert_eq!(check(&p[..127], 128), None);
    }

    #[tokio::test]
    async fn reader_joins_fragments_and_skips_control_frames() {
        let body = payload_of(&message(1, 2, 64));
        let mut wire = Vec::new();
        frame::write_header_fin(&mut wire, false, frame::OP_BINARY, 10, None);
        wire.extend_from_slice(&body[..10]);
        frame::write_header(&mut wire, frame::OP_PING, 1, None);
        wire.push(b'x');
        frame::write_header_fin(&mut wire, true, frame::OP_CONT, 54, None);
        wire.extend_from_slice(&body[10..]);
        frame::write_header(&mut wire, frame::OP_CLOSE, 0, None);
        let (head, tail) = wire.split_at(5);
        let mut r = MsgReader::new(tail, head.to_vec());
        match r.next().await.unwrap() {
            Event::Data(p) => assert_eq!(check(&p, 64), Some((1, 2))),
            _ => panic!("want data"),
        }
        assert!(matches!(r.next().await.unwrap(), Event::Close));
        assert!(matches!(r.next().await.unwrap(), Event::Eof));
    }

    #[test]
    fn csv_reads() {
        let dir = std::env::temp_dir().join(format!("wsedge-soak-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s.csv");
        std::fs::write(&p, "t_s,phase,fds,rss_kib\n0.0,baseline,11,2048\n").unwrap();
        let s = read_csv(&p).unwrap();
        assert_eq!(
            (s[0].fds, s[0].rss_mib, s[0].phase.as_str()),
            (11.0, 2.0, "baseline")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
