//! `wsedge-load`: the benchmark load generator. Modes: `throughput`, `flood`, `latency`,
//! `handshakes`, `idle`, `fanout`, and `tcpkali` and `s-time` (drive independent tools).
//! `handshakes`, `throughput` and `flood` also run over `wss://` (`--tls-ca`, `--tls-name`,
//! `--resume`). Prints a human summary, or one JSON object with `--json`; exits 3 when a run
//! found corrupted or misrouted messages (after writing its record).

use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use wsedge_bench::load::{self, Common, client, tls};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    /// N connections keep --depth messages in flight: messages/s and bytes/s each way.
    Throughput,
    /// N connections write as fast as the socket accepts (no depth limit) and count the
    /// echoes: msg/s and bytes/s each way, fairness, latency under flood, CPU per message,
    /// handshake latency of new clients during the flood.
    Flood,
    /// The unbounded flood run by tcpkali (--tcpkali PATH), reported in our format.
    Tcpkali,
    /// A fixed total --rate over N connections: round-trip percentiles (from scheduled send time).
    Latency,
    /// --concurrency loops of connect, upgrade, one echo, close: sessions/s and percentiles;
    /// over wss:// each starts with a TLS handshake, full or (--resume) resumed.
    Handshakes,
    /// TLS handshakes/s from --concurrency copies of `openssl s_time` (-new, or -reuse with
    /// --resume) against a wss:// target: an independent tool, no WebSocket.
    STime,
    /// Open N connections and hold them: target RSS before, after and per connection.
    Idle,
    /// N subscribers and one publisher on a broadcast channel (--target ws://HOST/ch/NAME):
    /// deliveries/s and publish-to-last-subscriber percentiles; --rate 0 = --depth outstanding.
    /// Across hosts: --subscribe-target spreads the subscribers (the publisher stays on
    /// --target), --broker-pid / --broker-redis measure the broker.
    Fanout,
}

/// WebSocket load generator for wsedge benchmarks.
#[derive(Debug, Parser)]
#[command(name = "wsedge-load", version)]
struct Args {
    /// What to measure.
    #[arg(value_enum)]
    mode: Mode,
    /// Where to send load: ws://HOST:PORT/PATH or wss://HOST:PORT/PATH (loopback only).
    #[arg(long, default_value = "ws://127.0.0.1:9001/")]
    target: String,
    /// wss://: PEM file of the CA the target's certificate must chain to (required).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// wss://: the server name sent as SNI, checked in the certificate and used as the Host.
    #[arg(long, default_value = "localhost")]
    tls_name: String,
    /// wss://: resume TLS sessions (each handshake loop reuses its previous session) instead
    /// of a full handshake every time; s-time: `-reuse` instead of `-new`.
    #[arg(long)]
    resume: bool,
    /// wss://: TLS versions offered: 1.2, 1.3 or any (both; the server chooses).
    #[arg(long, default_value = "any")]
    tls_version: String,
    /// wss://: key exchange groups offered, in order (x25519, secp256r1, secp384r1,
    /// x25519mlkem768). X25519 alone by default: the group OpenSSL 3.0 peers use.
    #[arg(long, value_delimiter = ',', default_value = "x25519")]
    tls_groups: Vec<String>,
    /// S-time mode: the openssl binary.
    #[arg(long, default_value = "openssl")]
    openssl: std::path::PathBuf,
    /// Connections (throughput, latency, idle).
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Message payload size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Messages in flight per connection (throughput); outstanding messages (fanout, --rate 0).
    #[arg(long, default_value_t = 16)]
    depth: usize,
    /// Measured seconds (idle: seconds to hold after opening).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds run before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Total messages per second over all connections (latency); published per second
    /// (fanout, 0 = keep --depth outstanding).
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Concurrent connect/upgrade/echo/close loops (handshakes); s_time copies (s-time).
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Handshakes in flight while opening connections.
    #[arg(long, default_value_t = 256)]
    open_concurrency: usize,
    /// Bind client sockets to these addresses in turn: "127.0.0.1-127.0.0.50" or a comma list.
    #[arg(long)]
    source_addrs: Option<String>,
    /// Target process(es) whose CPU time and RSS are sampled (repeatable).
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Origin process(es) whose CPU time is sampled (repeatable).
    #[arg(long = "origin-pid")]
    origin_pids: Vec<u32>,
    /// Generator threads (throughput, handshakes, idle); latency mode uses --sender-threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Pacing threads in latency mode.
    #[arg(long, default_value_t = 1)]
    sender_threads: usize,
    /// Flood: bytes of frames per write syscall (at least one frame).
    #[arg(long, default_value_t = 256 * 1024)]
    write_bytes: usize,
    /// Flood: open connections at this rate (per second), each flooding once open; 0 = open
    /// all before flooding.
    #[arg(long, default_value_t = 0.0)]
    connect_rate: f64,
    /// Flood: open a fresh connection this often (seconds) during the measured window and
    /// time its connect + upgrade; 0 = no probes.
    #[arg(long, default_value_t = 0.1)]
    probe_interval: f64,
    /// Flood, tcpkali: after closing every connection, wait this long (seconds) and count
    /// the connections still established on the target's port; 0 = skip.
    #[arg(long, default_value_t = 0.0)]
    settle: f64,
    /// Tcpkali mode: the tcpkali binary.
    #[arg(long, default_value = "tcpkali")]
    tcpkali: std::path::PathBuf,
    /// Tcpkali mode: one more argument for tcpkali (repeatable), e.g. --tcpkali-arg=--workers=1.
    #[arg(long = "tcpkali-arg", allow_hyphen_values = true)]
    tcpkali_args: Vec<String>,
    /// Idle mode: processes to spread connections over (raised to fit 19,000 per process).
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// Idle mode: every held connection sends a small text message every SECONDS, all on one
    /// schedule (application heartbeats), and reads the echoes; 0 = silent.
    #[arg(long, default_value_t = 0.0, value_name = "SECONDS")]
    heartbeat: f64,
    /// Fanout: subscribers connect to these URLs in turn (repeatable or a comma list;
    /// subscriber i to the (i mod k)-th), e.g. one per wsedge instance sharing a broker; the
    /// publisher stays on --target. Default: every subscriber on --target.
    #[arg(long = "subscribe-target", value_delimiter = ',', value_name = "URL")]
    subscribe_targets: Vec<String>,
    /// Fanout: broker process(es) whose CPU is sampled in the window (repeatable), reported
    /// per published message and per delivery.
    #[arg(long = "broker-pid")]
    broker_pids: Vec<u32>,
    /// Fanout: redis://HOST:PORT whose `INFO stats` byte counters are read before and after
    /// the window: the broker's bytes in and out per published message and per delivery.
    #[arg(long, value_name = "URL")]
    broker_redis: Option<String>,
    /// Label of the target in the JSON (direct, wsedge-buffered, nginx, ...).
    #[arg(long, default_value = "")]
    label: String,
    /// Scenario name in the JSON.
    #[arg(long, default_value = "")]
    scenario: String,
    /// Print one JSON object instead of the human summary.
    #[arg(long)]
    json: bool,
    /// Also append the JSON object as one line to this file (the human summary still prints).
    #[arg(long, value_name = "FILE")]
    json_out: Option<std::path::PathBuf>,
    /// Internal: idle helper process.
    #[arg(long, hide = true)]
    child: bool,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let rt = if a.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(a.threads)
            .enable_all()
            .build()?
    };
    rt.block_on(run(a))
}

async fn run(a: Args) -> anyhow::Result<()> {
    let mut target = client::Target::parse(&a.target)?;
    let version = tls::Version::parse(&a.tls_version)?;
    if target.wss && !matches!(a.mode, Mode::STime) {
        anyhow::ensure!(
            matches!(a.mode, Mode::Handshakes | Mode::Throughput | Mode::Flood),
            "over wss:// only the handshakes, throughput, flood and s-time modes run"
        );
        let ca = a.tls_ca.clone().ok_or_else(|| {
            anyhow::anyhow!("a wss:// target needs --tls-ca FILE (the CA to trust)")
        })?;
        target = target.with_tls(tls::TlsClient::new(&tls::Options {
            ca,
            name: a.tls_name.clone(),
            resume: a.resume,
            version,
            groups: a.tls_groups.clone(),
        })?);
    }
    // The TLS mode the record names (null for ws://).
    let tls_mode = target.tls.as_ref().map(|t| t.describe());
    let src = Arc::new(client::SourceAddrs::parse(a.source_addrs.as_deref())?);
    let c = Common {
        connections: a.connections,
        size: a.size,
        depth: a.depth,
        duration: Duration::from_secs_f64(a.duration),
        warmup: Duration::from_secs_f64(a.warmup),
        rate: a.rate,
        concurrency: a.concurrency,
        open_concurrency: a.open_concurrency,
        pids: a.pids.clone(),
        origin_pids: a.origin_pids.clone(),
        sender_threads: a.sender_threads,
        write_bytes: a.write_bytes,
        connect_rate: a.connect_rate,
        probe_interval: Duration::from_secs_f64(a.probe_interval),
        settle: Duration::from_secs_f64(a.settle),
    };
    anyhow::ensure!(
        a.heartbeat.is_finite() && a.heartbeat >= 0.0,
        "--heartbeat takes seconds, 0 or more (got {})",
        a.heartbeat
    );
    if a.child {
        return load::idle::run_child(&c, target, src, Duration::from_secs_f64(a.heartbeat)).await;
    }
    anyhow::ensure!(
        matches!(a.mode, Mode::Fanout)
            || (a.subscribe_targets.is_empty()
                && a.broker_pids.is_empty()
                && a.broker_redis.is_none()),
        "--subscribe-target, --broker-pid and --broker-redis are fanout options"
    );
    if !matches!(a.mode, Mode::Idle) {
        anyhow::ensure!(
            a.connections.max(a.concurrency) <= load::idle::PER_PROCESS_MAX,
            "more than {} connections need several processes (20,000 fds each)",
            load::idle::PER_PROCESS_MAX
        );
    }
    let (name, out) = match a.mode {
        Mode::Throughput => ("throughput", load::throughput::run(&c, target, src).await?),
        Mode::Flood => ("flood", load::flood::run(&c, target, src).await?),
        Mode::Tcpkali => {
            let opts = load::tcpkali::Options {
                path: a.tcpkali.clone(),
                extra: a.tcpkali_args.clone(),
            };
            ("tcpkali", load::tcpkali::run(&c, &target, &opts).await?)
        }
        Mode::STime => {
            let opts = load::stime::Options {
                openssl: a.openssl.clone(),
                resume: a.resume,
                version,
                ca: a.tls_ca.clone(),
            };
            ("s_time", load::stime::run(&c, &target, &opts).await?)
        }
        Mode::Latency => ("latency", load::latency::run(&c, target, src).await?),
        Mode::Handshakes => ("handshakes", load::handshakes::run(&c, target, src).await?),
        Mode::Fanout => {
            let opts = load::fanout::Options {
                subscribe: a
                    .subscribe_targets
                    .iter()
                    .map(|u| client::Target::parse(u))
                    .collect::<anyhow::Result<_>>()?,
                broker: load::broker::Watch {
                    pids: a.broker_pids.clone(),
                    redis: a.broker_redis.clone(),
                },
            };
            ("fanout", load::fanout::run(&c, target, src, &opts).await?)
        }
        Mode::Idle => {
            let opts = load::idle::Options {
                url: a.target.clone(),
                src_spec: a.source_addrs.clone(),
                processes: a.processes,
                hold: c.duration,
                heartbeat: Duration::from_secs_f64(a.heartbeat),
            };
            let o = load::idle::run(&c, target, src, &opts).await?;
            ("idle", o)
        }
    };
    let mut rec = load::record(name, &a.label, &a.scenario, &a.target, &c, &out);
    if let Some(t) = tls_mode {
        rec["tls"] = t;
    } else if name == "s_time" {
        rec["tls"] = out.results["tls"].clone();
    }
    if let Some(path) = &a.json_out {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(f, "{}", serde_json::to_string(&rec)?)?;
    }
    if a.json {
        println!("{}", serde_json::to_string(&rec)?);
    } else {
        println!("{}", out.human);
        if !matches!(a.mode, Mode::Idle) {
            println!("{}", load::usage_line(&out.usage));
        }
    }
    if let Some(p) = out.results["problem"].as_str() {
        eprintln!("wsedge-load: {name}: {p}");
        std::process::exit(3);
    }
    Ok(())
}
