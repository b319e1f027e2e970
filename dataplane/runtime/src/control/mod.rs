//! The dataplane's control plane: the Unix control socket, the optional Prometheus endpoint
//! and the optional HTTP publish API of the broadcast function, served by their own threads,
//! off the workers' hot path.
//!
//! Requests reach the workers only as [`Command`]s in their mailboxes, followed by a wake on
//! their eventfd; a worker applies them between completion batches. Replies come back on
//! per-request channels, awaited with a deadline, so a stalled worker yields an error reply
//! and never a hung control thread. The control plane keeps the configuration in force
//! (TOML text, version, source); `apply_config` validates a new one with the same
//! `wsedge_command::Config::from_toml` the control process uses, then sends every worker
//! its own copy. The control socket itself (bind, peer credentials, framing, failures) is
//! `wsedge_command::wire::server`, the same server the control process runs; this module is
//! its handler. No `unsafe` here.

mod broker_metrics;
mod certs;
mod channels;
mod functions;
mod metrics;
mod origins;
mod publish;
mod rows;
mod upgrade;
mod watchdog;

use std::path::PathBuf;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use wsedge_command::wire::server::{Failure, Server, Threads};
use wsedge_command::wire::{
    self, Applied, ConfigText, DataplaneStatus, ErrorKind, Request, Response, StatsReport, Status,
    WorkerStats, WorkerStatus,
};
use wsedge_command::{Config, ConnectionId};

use crate::settings::Settings;
use crate::worker::mailbox::{Command, ConnectionInfo, Mailbox, WorkerReport};
use rows::{connection_row, percentiles, worker_stats};

/// How long a worker may take to answer a request before the reply is an error.
const WORKER_REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections listed when the request names no limit.
const DEFAULT_CONNECTION_LIMIT: u32 = 100;

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ControlError {
    #[error("control socket {path}: {message}")]
    Socket { path: PathBuf, message: String },
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("publish API {addr}: {source}")]
    Publish {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What `main` hands over once the workers are ready.
#[derive(Debug)]
pub(crate) struct Startup {
    pub(crate) config: Config,
    /// The text `config` was validated from.
    pub(crate) toml: String,
    /// Where it came from (the file name).
    pub(crate) source: String,
    pub(crate) mailboxes: Vec<Mailbox>,
    pub(crate) started: Instant,
    /// The certificates and TLS listeners in force (reloads keep their resumption state).
    pub(crate) certs: wsedge_tls::CertStore,
    /// The origin pools' shared health (applied configurations keep unchanged pools).
    pub(crate) health: Arc<crate::health::Registry>,
    /// The broker bridge, when `[broker]` is configured.
    pub(crate) broker: Option<wsedge_broker::Handle>,
    /// This host's id on channel messages.
    pub(crate) host: u64,
    /// Binary upgrades; `replace_socket`: this is a new generation taking the socket over.
    pub(crate) upgrade: Arc<crate::upgrade::Upgrader>,
    pub(crate) replace_socket: bool,
}

/// The configuration in force.
#[derive(Debug)]
struct Current {
    config: Config,
    toml: String,
    /// `wire::config_hash(&toml)`.
    hash: String,
    source: String,
    /// Numbered by this process: 0 for the file it started with, + 1 for each apply. The
    /// dataplane is the only one that numbers what it runs, so the number never goes
    /// backwards and never names two configurations.
    version: u64,
    /// Its certificates and TLS listeners, loaded from the files it names.
    certs: wsedge_tls::CertStore,
}

/// State shared by the control threads (never touched by workers).
#[derive(Debug)]
pub(crate) struct Shared {
    current: Mutex<Current>,
    mailboxes: Vec<Mailbox>,
    started: Instant,
    pid: u32,
    health: Arc<crate::health::Registry>,
    broker: Option<wsedge_broker::Handle>,
    host: u64,
    upgrade: Arc<crate::upgrade::Upgrader>,
}

/// Keeps the control threads' resources (the socket file is removed when it is dropped).
#[derive(Debug)]
pub(crate) struct Handle {
    _socket: Option<crate::upgrade::SocketFile>,
    shared: Arc<Shared>,
}

impl Handle {
    /// SIGHUP: reads the certificate files again (see [`certs`]); a broken file is logged
    /// and the certificates in force keep serving.
    pub(crate) fn reload_certs(&self) {
        match self.shared.reload_certs() {
            Ok((certs, workers)) => {
                eprintln!(
                    "wsedge: SIGHUP: {} certificates reloaded on {workers} workers",
                    certs.len()
                );
            }
            Err(e) => eprintln!(
                "wsedge: SIGHUP: certificate reload refused, the certificates in force keep serving: {}",
                e.message
            ),
        }
    }
}

/// Starts the control socket (when `[control] socket` is set) and the metrics endpoint
/// (when `[control] metrics_listen` is set).
pub(crate) fn start(startup: Startup) -> Result<Handle, ControlError> {
    let control = startup.config.control.clone();
    let publish_listen = startup.config.functions.publish_listen;
    let shared = Arc::new(Shared {
        current: Mutex::new(Current {
            config: startup.config,
            hash: wire::config_hash(&startup.toml),
            toml: startup.toml,
            source: startup.source,
            version: 0,
            certs: startup.certs,
        }),
        mailboxes: startup.mailboxes,
        started: startup.started,
        pid: std::process::id(),
        health: startup.health,
        broker: startup.broker,
        host: startup.host,
        upgrade: startup.upgrade,
    });
    shared.upgrade.attach(&shared);
    let mut handle = Handle {
        _socket: None,
        shared: shared.clone(),
    };
    if let Some(path) = &control.socket {
        let threads = Threads {
            accept: "wsedge-control",
            peer: "wsedge-ctl-peer",
        };
        let served = shared.clone();
        let bind = if startup.replace_socket {
            Server::bind_replacing
        } else {
            Server::bind
        };
        bind(path, &control)
            .and_then(|server| server.spawn(threads, move |request| served.handle(request)))
            .map_err(|e| ControlError::Socket {
                path: path.clone(),
                message: e.to_string(),
            })?;
        handle._socket = Some(crate::upgrade::SocketFile::new(path.clone()));
        eprintln!("wsedge: control socket {}", path.display());
    }
    if let Some(addr) = control.metrics_listen {
        let bound = metrics::start(addr, shared.clone())
            .map_err(|source| ControlError::Metrics { addr, source })?;
        eprintln!("wsedge: metrics on http://{bound}/metrics");
    }
    // Ready (systemd) once every endpoint serves; the watchdog pings only after that.
    wsedge_command::notify::ready(&format!("serving with {} workers", shared.mailboxes.len()));
    if let Err(e) = watchdog::start(shared.clone()) {
        tracing::warn!(error = %e, "cannot start the systemd watchdog thread");
    }
    if let Some(addr) = publish_listen {
        let bound = publish::start(addr, shared)
            .map_err(|source| ControlError::Publish { addr, source })?;
        eprintln!("wsedge: publish API on http://{bound}/publish/");
    }
    Ok(handle)
}

impl Shared {
    fn current(&self) -> MutexGuard<'_, Current> {
        // A panic while holding the lock leaves `Current` whole (it is replaced in one
        // assignment), so a poisoned lock is still usable.
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The version and hash of the configuration in force.
    fn config_identity(&self) -> (u64, String) {
        let current = self.current();
        (current.version, current.hash.clone())
    }

    /// Sends `command` to worker `index` and wakes it; false if the worker is gone.
    fn send(&self, index: usize, command: Command) -> bool {
        self.mailboxes
            .get(index)
            .is_some_and(|mailbox| mailbox.send(command))
    }

    /// Asks every worker with `make` and collects the answers, all within one deadline.
    fn ask_all<T>(
        &self,
        what: &str,
        make: impl Fn(Sender<T>) -> Command,
    ) -> Result<Vec<T>, Failure> {
        let mut pending = Vec::with_capacity(self.mailboxes.len());
        for index in 0..self.mailboxes.len() {
            let (tx, rx) = mpsc::channel();
            if !self.send(index, make(tx)) {
                return Err(Failure::new(
                    ErrorKind::Unavailable,
                    format!("worker {index} is not running"),
                ));
            }
            pending.push(rx);
        }
        let deadline = Instant::now() + WORKER_REPLY_TIMEOUT;
        let mut out = Vec::with_capacity(pending.len());
        for (index, rx) in pending.into_iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(v) => out.push(v),
                Err(_) => {
                    return Err(Failure::new(
                        ErrorKind::Unavailable,
                        format!(
                            "worker {index} did not answer {what} within {WORKER_REPLY_TIMEOUT:?}"
                        ),
                    ));
                }
            }
        }
        Ok(out)
    }

    pub(crate) fn reports(&self) -> Result<Vec<WorkerReport>, Failure> {
        let mut reports = self.ask_all("a report request", |reply| Command::Report { reply })?;
        reports.sort_by_key(|r| r.index);
        Ok(reports)
    }

    /// Answers one request. Runs on a control thread; blocks at most a few seconds.
    pub(crate) fn handle(&self, request: Request) -> Response {
        self.dispatch(request).unwrap_or_else(Response::from)
    }

    fn dispatch(&self, request: Request) -> Result<Response, Failure> {
        match request {
            Request::Status => self.status().map(Response::Status),
            Request::Stats => self.stats().map(Response::Stats),
            Request::Connections { route, limit } => {
                let limit = limit.unwrap_or(DEFAULT_CONNECTION_LIMIT) as usize;
                let lists =
                    self.ask_all("a connections request", |reply| Command::Connections {
                        route: route.clone(),
                        limit,
                        reply,
                    })?;
                let mut all: Vec<ConnectionInfo> = lists.into_iter().flatten().collect();
                all.sort_by_key(|c| std::cmp::Reverse(c.age_ms));
                all.truncate(limit);
                Ok(Response::Connections {
                    connections: all.into_iter().map(connection_row).collect(),
                })
            }
            Request::Kill { id } => self.kill(id),
            Request::Upgrade { binary } => {
                (self.upgrade.upgrade(binary.map(PathBuf::from))).map(Response::Upgraded)
            }
            Request::ApplyConfig { toml, source } => {
                self.apply(toml, source).map(Response::Applied)
            }
            Request::ConfigShow => {
                let current = self.current();
                Ok(Response::Config(ConfigText {
                    version: Some(current.version),
                    hash: current.hash.clone(),
                    source: current.source.clone(),
                    toml: current.toml.clone(),
                }))
            }
            Request::RoutesList => Ok(Response::Routes {
                routes: wire::route_rows(&self.current().config),
            }),
            Request::LimitsGet { route } => {
                wire::limits_view(&self.current().config, route.as_deref())
                    .map(Response::Limits)
                    .ok_or_else(|| Failure::new(ErrorKind::NotFound, "no route with that name"))
            }
            Request::Drain {
                timeout_ms,
                over_ms,
            } => {
                let timeout = timeout_ms.map(Duration::from_millis);
                let over = over_ms.map(Duration::from_millis);
                // The connections the drain is about to close, counted before it starts: a
                // spread close due at once may be over before a report taken after it (then
                // `drain --over` said "closing 19" of 20).
                let live = self.reports()?.iter().map(|r| r.live as u64).sum();
                for index in 0..self.mailboxes.len() {
                    if let Some(over) = over {
                        self.send(index, Command::SpreadCloses { over });
                    }
                    self.send(index, Command::Drain { timeout });
                }
                tracing::info!(?timeout, ?over, "drain requested on the control socket");
                Ok(Response::Draining {
                    workers: self.mailboxes.len(),
                    live,
                })
            }
            Request::Publish { channel, message } => {
                let delivered = self.publish(&channel, message)?;
                Ok(Response::Published { channel, delivered })
            }
            Request::Presence { channel } => self.presence(channel),
            Request::OriginsHealth => Ok(self.origins()),
            Request::ListsShow { name } => {
                wire::list_views(&self.current().config, name.as_deref(), wire::unix_now())
                    .map(|lists| Response::Lists { lists })
                    .ok_or_else(|| Failure::new(ErrorKind::NotFound, "no list with that name"))
            }
            Request::Certs => Ok(Response::Certs {
                certificates: self.certs(),
            }),
            Request::CertsReload => self
                .reload_certs()
                .map(
                    |(certificates, workers_confirmed)| Response::CertsReloaded {
                        certificates,
                        workers_confirmed,
                    },
                ),
            Request::FunctionsList => self
                .functions()
                .map(|functions| Response::Functions { functions }),
            Request::FunctionDeploy { route, script } => {
                self.deploy(&route, &script).map(Response::Applied)
            }
            Request::Reload
            | Request::OriginAdd { .. }
            | Request::OriginRemove { .. }
            | Request::ListAdd { .. }
            | Request::ListRemove { .. }
            | Request::LimitsSet { .. } => Err(Failure::new(
                ErrorKind::NotSupported,
                "the dataplane applies whole configurations only (apply_config); edits are made by the control process, wsedgectl daemon",
            )),
        }
    }

    fn status(&self) -> Result<Status, Failure> {
        let reports = self.status_reports()?;
        let current = self.current();
        Ok(Status {
            dataplane: Some(DataplaneStatus {
                pid: self.pid,
                build: env!("CARGO_PKG_VERSION").to_owned(),
                uptime_ms: millis(self.started.elapsed()),
                config_version: current.version,
                config_hash: current.hash.clone(),
                config_source: current.source.clone(),
                workers: reports
                    .iter()
                    .map(|r| WorkerStatus {
                        index: r.index,
                        config_version: r.config_version,
                        live: r.live as u64,
                        accepting: r.accepting,
                    })
                    .collect(),
                generation: self.upgrade.generation(),
                old_generations: self.upgrade.older_status(),
            }),
            daemon: None,
        })
    }

    fn stats(&self) -> Result<StatsReport, Failure> {
        let reports = self.reports()?;
        let workers: Vec<WorkerStats> = reports.iter().map(worker_stats).collect();
        let mut merged: Option<hdrhistogram::Histogram<u64>> = None;
        for r in &reports {
            match merged.as_mut() {
                None => merged = Some(r.handshake_us.clone()),
                Some(m) => {
                    let _ = m.add(&r.handshake_us);
                }
            }
        }
        let mut total = WorkerStats::default();
        for w in &workers {
            total.add(w);
        }
        total.config_version = self.current().version;
        total.handshake_latency = merged.as_ref().and_then(percentiles);
        Ok(StatsReport {
            workers,
            total,
            functions: functions::function_rows(&reports),
        })
    }

    fn kill(&self, id: ConnectionId) -> Result<Response, Failure> {
        let index = id.worker();
        let (tx, rx) = mpsc::channel();
        if index >= self.mailboxes.len() || !self.send(index, Command::Kill { id, reply: tx }) {
            return Err(Failure::new(
                ErrorKind::NotFound,
                format!("no connection {id}"),
            ));
        }
        match rx.recv_timeout(WORKER_REPLY_TIMEOUT) {
            Ok(true) => {
                tracing::info!(%id, "connection killed on the control socket");
                Ok(Response::Killed { id })
            }
            Ok(false) => Err(Failure::new(
                ErrorKind::NotFound,
                format!("no connection {id} (already closed?)"),
            )),
            Err(_) => Err(Failure::new(
                ErrorKind::Unavailable,
                format!("worker {index} did not answer within {WORKER_REPLY_TIMEOUT:?}"),
            )),
        }
    }

    /// Validates `toml`, hands every worker its copy as the next version, and confirms which
    /// run it. The lock is held throughout, so concurrent applies are serialised and versions
    /// stay ordered.
    fn apply(&self, toml: String, source: Option<String>) -> Result<Applied, Failure> {
        let source = source.unwrap_or_else(|| "control socket".to_owned());
        let mut config = Config::from_toml(&toml, &source)
            .map_err(|e| Failure::new(ErrorKind::InvalidConfig, e.to_string()))?;
        let mut current = self.current();
        let restart_required = restart_fields(&current.config, &config);
        // Buffer rings and pipe pools are sized at start; workers keep theirs.
        let running = current.config.relay;
        config.relay.buffer_size = running.buffer_size;
        config.relay.buffer_count = running.buffer_count;
        config.relay.pipe_pool = running.pipe_pool;
        config.relay.pipe_size = running.pipe_size;
        let version = current.version + 1;
        let hash = wire::config_hash(&toml);
        // The certificate files are read again: a reload is also how new ones are taken.
        let certs = current
            .certs
            .reload(&config.tls)
            .map_err(|e| Failure::new(ErrorKind::InvalidConfig, format!("{source}: {e}")))?;
        let origins = config
            .load_origin_tls(&source)
            .map_err(|e| Failure::new(ErrorKind::InvalidConfig, e.to_string()))?;
        let settings = Settings::from_config(&config, self.mailboxes.len(), &self.health)
            .map_err(|e| Failure::new(ErrorKind::InvalidConfig, e))?
            .with_tls(&certs);
        self.health.set_origin_tls(&origins);
        let settings = settings.with_origins(origins);
        for index in 0..self.mailboxes.len() {
            let command = Command::Apply {
                version,
                settings: Box::new(settings.clone()),
            };
            if !self.send(index, command) {
                return Err(Failure::new(
                    ErrorKind::Unavailable,
                    format!("worker {index} is not running"),
                ));
            }
        }
        *current = Current {
            config,
            toml,
            hash: hash.clone(),
            source: source.clone(),
            version,
            certs,
        };
        drop(current);
        tracing::info!(version, %hash, %source, "configuration pushed to the workers");
        // Mailboxes are FIFO: a report sent after the apply shows the version it runs.
        let workers_confirmed = self
            .reports()
            .map(|reports| {
                reports
                    .iter()
                    .filter(|r| r.config_version == version)
                    .count()
            })
            .unwrap_or(0);
        Ok(Applied {
            version: Some(version),
            hash,
            source,
            pushed: true,
            workers_confirmed,
            restart_required,
        })
    }
}

/// The fields of `new` that differ from `old` but only take effect at a restart.
fn restart_fields(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |changed: bool, name: &str| {
        if changed {
            out.push(name.to_owned());
        }
    };
    check(
        old.dataplane.listen != new.dataplane.listen,
        "dataplane.listen",
    );
    check(
        old.dataplane.workers != new.dataplane.workers,
        "dataplane.workers",
    );
    check(
        old.dataplane.pin_workers != new.dataplane.pin_workers,
        "dataplane.pin_workers",
    );
    check(
        old.dataplane.transparent_huge_pages != new.dataplane.transparent_huge_pages,
        "dataplane.transparent_huge_pages",
    );
    check(
        old.dataplane.steering != new.dataplane.steering,
        "dataplane.steering",
    );
    check(
        old.relay.buffer_size != new.relay.buffer_size,
        "relay.buffer_size",
    );
    check(
        old.relay.buffer_count != new.relay.buffer_count,
        "relay.buffer_count",
    );
    check(
        old.relay.pipe_pool != new.relay.pipe_pool,
        "relay.pipe_pool",
    );
    check(
        old.relay.pipe_size != new.relay.pipe_size,
        "relay.pipe_size",
    );
    check(old.access_log != new.access_log, "access_log");
    check(old.control != new.control, "control");
    check(
        old.functions.publish_listen != new.functions.publish_listen,
        "functions.publish_listen",
    );
    check(old.broker != new.broker, "broker");
    out
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
