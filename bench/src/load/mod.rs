//! The load generator behind `wsedge-load`: shared options, process probes (CPU and RSS of
//! the target, the origin and the generator itself), connection opening, and the JSON /
//! human output. Each mode lives in its own module.

pub mod broker;
pub mod client;
pub mod fanout;
pub mod flood;
pub mod handshakes;
pub mod idle;
pub mod latency;
pub mod stime;
pub mod tcpkali;
pub mod throughput;
pub mod tls;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::procstat;
use client::{Conn, SourceAddrs, Target};

/// A latency histogram in nanoseconds, 1 µs to 120 s, 3 significant digits (every mode's).
fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 120_000_000_000, 3).expect("histogram bounds")
}

/// Asks for 1 ns of timer slack on the calling thread, so a paced sender's sleeps end on time
/// (the default 50 µs would show up as schedule lag).
fn set_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

/// Options every mode reads (each uses the ones it needs). The default (zeros, no pids) is
/// for tests, which set what their mode reads.
#[derive(Debug, Clone, Default)]
pub struct Common {
    /// Connections (throughput, latency, idle).
    pub connections: usize,
    /// Message payload size in bytes.
    pub size: usize,
    /// Messages in flight per connection (throughput).
    pub depth: usize,
    /// Measured time.
    pub duration: Duration,
    /// Time run before measuring (throughput, latency, handshakes).
    pub warmup: Duration,
    /// Total messages/s over all connections (latency).
    pub rate: f64,
    /// Concurrent connect loops (handshakes).
    pub concurrency: usize,
    /// Handshakes in progress at once while opening connections.
    pub open_concurrency: usize,
    /// Processes whose CPU and RSS count as the target (the proxy, or the origin when direct).
    pub pids: Vec<u32>,
    /// Processes whose CPU counts as the origin.
    pub origin_pids: Vec<u32>,
    /// Sender threads (latency).
    pub sender_threads: usize,
    /// Bytes of frames per write (flood).
    pub write_bytes: usize,
    /// New connections per second while ramping up, 0 = all before the flood (flood).
    pub connect_rate: f64,
    /// A fresh connection's handshake is timed this often during the window, 0 = never (flood).
    pub probe_interval: Duration,
    /// After the run, wait this long and count connections still established on the
    /// target's port, 0 = skip (flood, tcpkali).
    pub settle: Duration,
}

impl Common {
    /// Starts measuring CPU of the target, the origin and this process.
    pub fn probe(&self) -> Probe {
        Probe {
            pids: self.pids.clone(),
            origin_pids: self.origin_pids.clone(),
            t0: Instant::now(),
            target_cpu: procstat::cpu_sum(&self.pids),
            origin_cpu: procstat::cpu_sum(&self.origin_pids),
            load_cpu: procstat::self_cpu_seconds(),
        }
    }
}

/// CPU counters at the start of a measured window.
#[derive(Debug)]
pub struct Probe {
    pids: Vec<u32>,
    origin_pids: Vec<u32>,
    t0: Instant,
    target_cpu: f64,
    origin_cpu: f64,
    load_cpu: f64,
}

/// CPU used during a measured window.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Wall-clock seconds of the window.
    pub wall_s: f64,
    /// CPU seconds of the target processes (None without `--pid`).
    pub target_cpu_s: Option<f64>,
    /// CPU seconds of the origin processes (None without `--origin-pid`).
    pub origin_cpu_s: Option<f64>,
    /// CPU seconds of the generator itself.
    pub load_cpu_s: f64,
}

impl Probe {
    /// Ends the window.
    pub fn finish(&self) -> Usage {
        Usage {
            wall_s: self.t0.elapsed().as_secs_f64(),
            target_cpu_s: (!self.pids.is_empty())
                .then(|| procstat::cpu_sum(&self.pids) - self.target_cpu),
            origin_cpu_s: (!self.origin_pids.is_empty())
                .then(|| procstat::cpu_sum(&self.origin_pids) - self.origin_cpu),
            load_cpu_s: procstat::self_cpu_seconds() - self.load_cpu,
        }
    }
}

/// What a mode measured.
#[derive(Debug)]
pub struct Outcome {
    /// One or more human-readable lines.
    pub human: String,
    /// Mode-specific figures.
    pub results: Value,
    /// CPU during the measured window.
    pub usage: Usage,
    /// Payload bytes relayed (both directions) in the window, for CPU per GB.
    pub relayed_bytes: f64,
}

/// Opens `n` WebSocket connections (over TLS for a `wss://` target), at most `concurrency`
/// handshakes at a time.
pub async fn open_many(
    target: &Arc<Target>,
    src: &Arc<SourceAddrs>,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<(Conn, Vec<u8>)>> {
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let (t, ip): (Arc<Target>, Option<IpAddr>) = (target.clone(), src.pick());
        tasks.push(tokio::spawn(async move {
            let r = client::open_conn(&t, ip).await;
            drop(permit);
            r
        }));
    }
    let mut out = Vec::with_capacity(n);
    for (i, t) in tasks.into_iter().enumerate() {
        out.push(
            t.await?
                .with_context(|| format!("opening connection {i} of {n}"))?,
        );
    }
    Ok(out)
}

/// [`open_many`] for the modes that need the sockets themselves (plain `ws://` only).
pub async fn open_many_tcp(
    target: &Arc<Target>,
    src: &Arc<SourceAddrs>,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<(tokio::net::TcpStream, Vec<u8>)>> {
    target.require_plain("this")?;
    open_many(target, src, n, concurrency)
        .await?
        .into_iter()
        .map(|(c, rest)| Ok((c.into_tcp()?, rest)))
        .collect()
}

/// What the TLS handshakes of opened connections negotiated (None for plain connections).
pub fn tls_tally(conns: &[(Conn, Vec<u8>)]) -> Option<Value> {
    let mut t = tls::Tally::default();
    for f in conns.iter().filter_map(|(c, _)| c.tls_facts()) {
        t.add(f);
    }
    (t.full + t.resumed > 0).then(|| t.to_json())
}

/// Builds the JSON record of one run.
pub fn record(
    mode: &str,
    label: &str,
    scenario: &str,
    url: &str,
    c: &Common,
    o: &Outcome,
) -> Value {
    let u = o.usage;
    let gb = o.relayed_bytes / 1e9;
    // Every figure says which generator produced it: ours, or the independent tool a mode
    // drives (tcpkali, openssl s_time).
    let generator = match mode {
        "tcpkali" => "tcpkali",
        "s_time" => stime::GENERATOR,
        _ => "wsedge-load",
    };
    json!({
        "mode": mode,
        "generator": generator,
        "label": label,
        "scenario": scenario,
        "target": url,
        "params": {
            "connections": c.connections,
            "size": c.size,
            "depth": c.depth,
            "duration_s": c.duration.as_secs_f64(),
            "rate": c.rate,
            "concurrency": c.concurrency,
            "write_bytes": c.write_bytes,
            "connect_rate": c.connect_rate,
            "probe_interval_s": c.probe_interval.as_secs_f64(),
        },
        "results": o.results,
        "usage": {
            "wall_s": u.wall_s,
            "target_cpu_s": u.target_cpu_s,
            "origin_cpu_s": u.origin_cpu_s,
            "load_cpu_s": u.load_cpu_s,
            "target_cpu_pct": u.target_cpu_s.map(|s| 100.0 * s / u.wall_s),
            "origin_cpu_pct": u.origin_cpu_s.map(|s| 100.0 * s / u.wall_s),
            "load_cpu_pct": 100.0 * u.load_cpu_s / u.wall_s,
            "relayed_bytes": o.relayed_bytes,
            "target_cpu_s_per_gb": u.target_cpu_s.filter(|_| gb > 0.0).map(|s| s / gb),
        },
    })
}

/// A human line about the kernel's TCP counters over a window (the non-zero ones): a run
/// with retransmits or memory pressure on loopback was shaped by the host.
pub fn kernel_line(k: &Value) -> String {
    let nz: Vec<String> = k
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
        .map(|(n, v)| format!("{n} {v}"))
        .collect();
    if nz.is_empty() {
        "kernel TCP counters (host-wide) during the window: no retransmits, drops or memory pressure".into()
    } else {
        format!(
            "kernel TCP counters (host-wide) during the window: {}",
            nz.join(", ")
        )
    }
}

/// A human line about CPU use.
pub fn usage_line(u: &Usage) -> String {
    let mut s = format!(
        "cpu: generator {:.0}%",
        100.0 * u.load_cpu_s / u.wall_s.max(1e-9)
    );
    if let Some(t) = u.target_cpu_s {
        s += &format!(", target {:.0}% ({t:.2} s)", 100.0 * t / u.wall_s.max(1e-9));
    }
    if let Some(o) = u.origin_cpu_s {
        s += &format!(", origin {:.0}%", 100.0 * o / u.wall_s.max(1e-9));
    }
    s
}
