//! `wsedge`, the dataplane binary: loads the config, binds one SO_REUSEPORT listener per
//! worker and address (refusing an address another process listens on, unless
//! `--takeover`), starts one pinned io_uring worker per core, and waits for a signal.
//!
//! Binary upgrade (`wsedgectl upgrade`, SIGUSR2): see `upgrade`; a process started with
//! `--upgrade-from` is the next generation and takes its listeners and configuration from
//! the running one.
//!
//! Shutdown (SIGTERM/SIGINT): every worker stops accepting, lets live connections run up to
//! `drain_timeout`, then closes them; the process exits 0. A worker that dies (panic or ring
//! failure) takes the process down with exit code 70, so a supervisor restarts it instead of
//! it running on at reduced capacity.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

mod access_log;
mod broker;
mod bus;
mod conn_id;
mod control;
mod health;
mod listeners;
mod settings;
mod stats;
mod transport;
mod upgrade;
mod worker;

use worker::mailbox::{Command, Mailbox};
use worker::{Worker, WorkerSpec};
use wsedge_ring::sys;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// wsedge: a WebSocket reverse proxy for Linux edge hosts (io_uring, one worker per core).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML); see docs/configuration.md.
    #[arg(short, long, value_name = "FILE")]
    config: PathBuf,
    /// Worker threads (overrides `dataplane.workers`; default: online CPUs).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Share the `listen` addresses with the process already listening on them (a wsedge of
    /// the same user) instead of refusing to start: both receive new connections until the
    /// old one stops listening. Without it, an address in use is an error.
    #[arg(long)]
    takeover: bool,
    /// Binary upgrade (started by the running wsedge, not by hand): take the configuration
    /// and listening sockets from the generation at this Unix socket.
    #[arg(long, value_name = "SOCKET", hide = true)]
    upgrade_from: Option<PathBuf>,
}

const EXIT_CONFIG: u8 = 2;
const EXIT_WORKER_DIED: u8 = 70;

fn main() -> ExitCode {
    // Huge pages off before anything else allocates (only later faults follow the setting).
    // `run` sets them again from the configuration, and reports a failure then.
    let _ = sys::set_transparent_huge_pages(false);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WSEDGE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    // A new generation runs the configuration in force in the old one.
    let mut inherited = match cli
        .upgrade_from
        .as_deref()
        .map(upgrade::inherit::Inherited::connect)
    {
        Some(Err(e)) => {
            eprintln!("wsedge: upgrade: {e}");
            return ExitCode::FAILURE;
        }
        Some(Ok(i)) => Some(i),
        None => None,
    };
    // The text is kept: the control socket shows the configuration in force as written.
    let mut source = cli.config.display().to_string();
    let loaded = match &inherited {
        Some(i) => {
            source.clone_from(&i.config_source);
            Ok(i.config_toml.clone())
        }
        None => std::fs::read_to_string(&cli.config).map_err(|source_err| {
            wsedge_command::ConfigError::Read {
                file: source.clone(),
                source: source_err,
            }
        }),
    }
    .and_then(|text| wsedge_command::Config::from_toml(&text, &source).map(|c| (c, text)));
    let (config, text) = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wsedge: invalid configuration: {e}");
            if let Some(i) = &inherited {
                i.fail(&format!("invalid configuration: {e}"));
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Certificates, keys and CA bundles are files of their own, read here (not by the
    // parser) so that --check catches a missing or broken one, naming it.
    let tls = match config.load_tls(&source) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("wsedge: invalid configuration: {e}");
            if let Some(i) = &inherited {
                i.fail(&format!("invalid configuration: {e}"));
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // The worker settings: the firewall engine and the JavaScript functions' modules (each
    // loaded and run once in a scratch runtime, so --check refuses one that does not compile,
    // naming its file and line).
    let mut count = cli.workers.unwrap_or_else(|| config.worker_count()).max(1);
    if let Some(i) = inherited.as_ref()
        && i.workers() != count
    {
        tracing::warn!(
            configured = count,
            inherited = i.workers(),
            "upgrade: the worker count follows the inherited listeners (one per worker); changing it needs a restart"
        );
        count = i.workers();
    }
    // Origin health: one registry for the process, kept across configuration pushes.
    let health = health::Registry::new();
    let settings = match settings::Settings::from_config(&config, count, &health) {
        Ok(s) => {
            health.set_origin_tls(&tls.origins);
            s.with_tls(&tls.store).with_origins(tls.origins)
        }
        Err(e) => {
            eprintln!("wsedge: invalid configuration: {e}");
            if let Some(i) = &inherited {
                i.fail(&format!("invalid configuration: {e}"));
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if cli.check {
        eprintln!("wsedge: {} is valid", cli.config.display());
        return ExitCode::SUCCESS;
    }
    match run(
        config,
        (settings, health),
        (tls.store, tls.broker),
        (text, source),
        count,
        cli.takeover,
        &mut inherited,
    ) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wsedge: {e:#}");
            if let Some(i) = &inherited {
                i.fail(&format!("{e:#}"));
            }
            ExitCode::FAILURE
        }
    }
}

fn run(
    config: wsedge_command::Config,
    (settings, health): (settings::Settings, std::sync::Arc<health::Registry>),
    (certs, broker_identity): (wsedge_tls::CertStore, Option<wsedge_tls::ClientIdentity>),
    (text, source): (String, String),
    count: usize,
    takeover: bool,
    inherited: &mut Option<upgrade::inherit::Inherited>,
) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    wsedge_ring::probe().map_err(anyhow::Error::msg)?;
    // Before the workers allocate their slabs: only later faults follow the setting.
    let thp = config.dataplane.transparent_huge_pages;
    if let Err(e) = sys::set_transparent_huge_pages(thp) {
        tracing::warn!(error = %e, enabled = thp, "could not set transparent huge pages for the process");
    }
    if !config.tls.listeners.is_empty() {
        match wsedge_ring::ktls::support() {
            Ok(()) => tracing::info!(
                "kTLS available: splice and auto routes splice wss:// after the handshake"
            ),
            Err(why) => {
                tracing::info!(%why, trial = why.trial.as_deref().unwrap_or(""), "kTLS unavailable: splice and auto routes relay wss:// buffered")
            }
        }
    }
    anyhow::ensure!(
        count <= conn_id::MAX_WORKERS,
        "at most {} workers (a connection id names its worker in 8 bits)",
        conn_id::MAX_WORKERS
    );
    // Names this host on channel messages (a broker bridge drops its own echoes by it).
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()).rotate_left(32);
    let signals = sys::block_shutdown_signals().context("blocking signals")?;

    // Listeners are created here, in a fixed order, so port 0 resolves once for all workers;
    // an address another process listens on is refused unless --takeover. The plain
    // addresses come first, then each `[[tls_listener]]`'s, marked with its index.
    let mut addrs: Vec<(std::net::SocketAddr, Option<usize>)> =
        config.dataplane.listen.iter().map(|a| (*a, None)).collect();
    for (index, l) in config.tls.listeners.iter().enumerate() {
        addrs.extend(l.listen.iter().map(|a| (*a, Some(index))));
    }
    let plain: Vec<std::net::SocketAddr> = addrs.iter().map(|(a, _)| *a).collect();
    let listeners = match inherited.as_mut() {
        Some(i) => i.take_listeners(&plain).map_err(anyhow::Error::msg)?,
        None => listeners::open(&plain, count, takeover)?,
    };
    // How new connections spread over the workers. An inherited group is still the old
    // generation's until this one reports ready (a failed upgrade must change nothing), so
    // its steering is set after that; a group joined with --takeover is the other process's
    // and keeps its steering.
    let steer_later = match (inherited.is_some(), takeover) {
        (false, false) => {
            listeners::steer(
                &listeners.per_worker,
                &listeners.bound,
                config.dataplane.steering,
            );
            None
        }
        (true, _) => Some((listeners.per_worker.clone(), listeners.bound.clone())),
        (false, true) => None,
    };
    let upgrader = std::sync::Arc::new(upgrade::Upgrader::new(
        inherited.as_ref().map_or(1, |i| i.generation),
        std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe")),
        upgrade::child_args(std::env::args_os().skip(1)),
        listeners.per_worker.clone(),
        listeners.bound.clone(),
        inherited.is_some(),
    ));
    for (bound, (_, tls)) in listeners.bound.iter().zip(&addrs) {
        match tls {
            None => eprintln!("wsedge: listening on {bound}"),
            Some(_) => eprintln!("wsedge: listening on {bound} (tls)"),
        }
    }
    let per_worker: Vec<Vec<(std::os::fd::RawFd, Option<usize>)>> = listeners
        .per_worker
        .into_iter()
        .map(|fds| fds.into_iter().zip(addrs.iter().map(|(_, t)| *t)).collect())
        .collect();

    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (done_tx, done_rx) = mpsc::channel::<(usize, Result<stats::Stats, String>)>();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let mut mailboxes = Vec::with_capacity(count);
    let mut receivers = Vec::with_capacity(count);
    for _ in 0..count {
        let (tx, rx) = mpsc::channel();
        let wake_fd = sys::eventfd().context("creating a worker eventfd")?;
        mailboxes.push(Mailbox { tx, wake_fd });
        receivers.push(rx);
    }
    // The broker bridge (`[broker]`): its own thread, reaching the workers like the control
    // plane does (a queue and the wake eventfd). It connects in the background: a broker
    // that is down at start means local-only service and retries, not a failed start.
    let wake_fds: Vec<std::os::fd::RawFd> = mailboxes.iter().map(|m| m.wake_fd).collect();
    let (broker, mut ports) = match &config.broker {
        Some(b) => {
            let (handle, ports) = broker::start(b, broker_identity.as_ref(), host, &wake_fds)
                .context("starting the broker bridge")?;
            (Some(handle), ports.into_iter().map(Some).collect())
        }
        None => (None, (0..count).map(|_| None).collect::<Vec<_>>()),
    };
    let mut handles = Vec::with_capacity(count);
    for ((index, listeners), rx) in per_worker.into_iter().enumerate().zip(receivers) {
        let wake_fd = mailboxes[index].wake_fd;
        let peers = mailboxes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != index)
            .map(|(_, mailbox)| mailbox.clone())
            .collect();
        let spec = WorkerSpec {
            index,
            cpu: config.dataplane.pin_workers.then_some(index % cpus),
            listeners,
            settings: settings.clone(),
            access_log: access_log::AccessLog::open(&config.access_log)
                .context("opening the access log")?,
            mailbox: rx,
            wake_fd,
            peers,
            host,
            bridge: ports[index].take(),
        };
        let done = done_tx.clone();
        let ready = ready_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("wsedge-w{index}"))
            .spawn(move || {
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let worker = match Worker::new(spec) {
                        Ok(w) => w,
                        Err(e) => {
                            let msg = format!("worker {index}: setup failed: {e}");
                            let _ = ready.send(Err(msg.clone()));
                            return Err(msg);
                        }
                    };
                    let _ = ready.send(Ok(()));
                    worker
                        .run()
                        .map_err(|e| format!("worker {index}: ring failed: {e}"))
                }));
                let result = outcome.unwrap_or_else(|_| Err(format!("worker {index} panicked")));
                let _ = done.send((index, result));
            })
            .context("spawning a worker thread")?;
        handles.push(handle);
    }
    drop(done_tx);
    drop(ready_tx);
    for _ in 0..count {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(msg)) => anyhow::bail!(msg),
            Err(_) => anyhow::bail!("a worker exited during setup"),
        }
    }

    // Control socket and metrics (issue 4): their own threads, talking to the workers only
    // through the mailboxes. The handle removes the socket file when `run` returns.
    let control = control::start(control::Startup {
        config: config.clone(),
        toml: text,
        source,
        mailboxes: mailboxes.clone(),
        started,
        certs,
        health: health.clone(),
        broker,
        host,
        upgrade: upgrader.clone(),
        replace_socket: inherited.is_some(),
    })
    .context("starting the control plane")?;
    health::start(health).context("starting the wsedge-health thread")?;

    if let Some(i) = inherited.take() {
        let (pid, build) = (i.old_pid, i.old_build.clone());
        let link = i.ready().map_err(anyhow::Error::msg)?;
        upgrader.set_older(link, pid, build);
        if let Some((per_worker, bound)) = &steer_later {
            listeners::steer(per_worker, bound, config.dataplane.steering);
        }
    }
    eprintln!(
        "wsedge: ready workers={count} generation={}",
        upgrader.generation()
    );

    let mut total = stats::Stats::default();
    let mut finished = 0;
    let mut shutting_down = false;
    let mut exit = ExitCode::SUCCESS;
    while finished < count {
        if let Some(sig) = sys::wait_signal(&signals, Duration::from_millis(200)) {
            if sig == libc::SIGHUP {
                // The configuration is the control process's to reload (it pushes it); the
                // certificate files are read again here, on every worker.
                control.reload_certs();
            } else if sig == libc::SIGUSR2 {
                upgrade::on_signal(&upgrader);
            } else if !shutting_down {
                shutting_down = true;
                wsedge_command::notify::stopping();
                tracing::info!(signal = sig, "shutting down: draining connections");
                for mailbox in &mailboxes {
                    mailbox.send(Command::Shutdown);
                }
            }
        }
        while let Ok((index, result)) = done_rx.try_recv() {
            finished += 1;
            match result {
                Ok(s) => total.add(&s),
                Err(msg) => {
                    tracing::error!("{msg}; exiting so a supervisor can restart wsedge");
                    eprintln!("wsedge: {msg}");
                    return Ok(ExitCode::from(EXIT_WORKER_DIED));
                }
            }
            if !shutting_down && !upgrader.retired() {
                tracing::error!(worker = index, "worker stopped unexpectedly");
                exit = ExitCode::from(EXIT_WORKER_DIED);
            }
        }
    }
    for h in handles {
        let _ = h.join();
    }
    tracing::info!(
        accepted = total.accepted,
        upgraded = total.upgraded,
        plain_http = total.plain_http,
        closed = ?total.closed,
        "stopped"
    );
    Ok(exit)
}
