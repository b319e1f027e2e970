//! `wsedgectl daemon`: the control process. It owns the desired configuration, validates and
//! persists every change, pushes it to the dataplane's control socket, pushes again whenever
//! the dataplane (re)appears or runs something else, reloads its file on SIGHUP, and serves
//! the CLI on its own socket with the same wire protocol (forwarding dataplane-scope
//! requests).
//!
//! Threads: the signal loop (the caller's thread), a sync loop (once a second), and the
//! control-socket server's accept loop with one short-lived thread per CLI connection (the
//! same server the dataplane runs, `wsedge_command::wire::server`). One lock, `desired`,
//! serialises every change and every push, so versions reach the dataplane in order.
//!
//! The daemon does not number configurations: the dataplane numbers what it runs (each apply
//! is its previous version + 1), so a version never goes backwards or names two
//! configurations, whoever pushes. The daemon names its desired configuration by its content
//! hash (`wire::config_hash`) and knows the dataplane runs it when the dataplane's text is
//! the same.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use wsedge_command::Config;
use wsedge_command::wire::server::{Failure, Server, Threads};
use wsedge_command::wire::{
    self, Applied, Client, ConfigText, DaemonStatus, ErrorKind, Request, Response, Status,
    WireError,
};

use crate::edit::{self, EditError};
use crate::state::{self, Desired};

mod fleet;
mod status_page;

pub(crate) use fleet::{hash, overlay};

/// How often the daemon checks that the dataplane runs the desired configuration.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Timeout for one request to the dataplane (it waits up to 2 s on its workers).
const DATAPLANE_TIMEOUT: Duration = Duration::from_secs(8);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DaemonError {
    /// The configuration file is invalid (exit code 2).
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Setup(String),
}

impl From<EditError> for Failure {
    fn from(e: EditError) -> Failure {
        let kind = match e {
            EditError::NoRoute(_)
            | EditError::NoOrigin { .. }
            | EditError::NoList(_)
            | EditError::NoEntry { .. } => ErrorKind::NotFound,
            EditError::Document(_) | EditError::Invalid(_) => ErrorKind::InvalidConfig,
        };
        Failure::new(kind, e.to_string())
    }
}

#[derive(Debug, Default)]
struct SyncInfo {
    reachable: bool,
    in_sync: bool,
    /// The dataplane's version for the desired configuration, while it runs it.
    running_version: Option<u64>,
    last_error: Option<String>,
}

#[derive(Debug)]
struct Daemon {
    config_file: PathBuf,
    dataplane: PathBuf,
    state_file: Option<PathBuf>,
    desired: Mutex<Desired>,
    sync: Mutex<SyncInfo>,
    started: Instant,
    /// The fleet document in etcd (`[fleet]`), if configured.
    fleet: Option<fleet::Fleet>,
    /// Recent configuration changes, for the status page.
    history: status_page::History,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every guarded value is replaced whole, so a poisoned lock still holds a valid one.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs the daemon until SIGTERM or SIGINT.
pub(crate) fn run(config_file: &Path) -> Result<(), DaemonError> {
    let text = std::fs::read_to_string(config_file)
        .map_err(|e| DaemonError::Config(format!("{}: cannot read: {e}", config_file.display())))?;
    let source = config_file.display().to_string();
    let bootstrap =
        Config::from_toml(&text, &source).map_err(|e| DaemonError::Config(e.to_string()))?;
    let control = bootstrap.control.clone();
    let dataplane = control.socket.clone().ok_or_else(|| {
        DaemonError::Config(format!(
            "{source}: control.socket: the daemon needs the dataplane's control socket"
        ))
    })?;

    // The persisted state wins over the file: it holds live edits made since the file was
    // last applied. `wsedgectl reload` (or SIGHUP) goes back to the file.
    let mut desired = Desired { toml: text, source };
    if let Some(path) = &control.state_file {
        match state::load(path) {
            Ok(Some(saved)) => match Config::from_toml(&saved.toml, &path.display().to_string()) {
                Ok(_) => {
                    tracing::info!(
                        hash = %saved.hash(),
                        state = %path.display(),
                        "desired configuration restored from the state file"
                    );
                    desired = saved;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "state file invalid; using the configuration file")
                }
            },
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "state file unreadable; using the configuration file")
            }
        }
    }

    let daemon = Arc::new(Daemon {
        config_file: config_file.to_owned(),
        dataplane,
        state_file: control.state_file.clone(),
        desired: Mutex::new(desired),
        sync: Mutex::new(SyncInfo::default()),
        started: Instant::now(),
        fleet: bootstrap.fleet.clone().map(fleet::Fleet::new),
        history: status_page::History::default(),
    });
    {
        let d = lock(&daemon.desired);
        daemon.history.started(&d.source);
    }
    if let Some(path) = &daemon.state_file {
        let desired = lock(&daemon.desired).clone();
        state::save(path, &desired).map_err(|e| DaemonError::Setup(e.to_string()))?;
    }

    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| DaemonError::Setup(format!("cannot install signal handlers: {e}")))?;

    let socket_path = control.daemon_socket.clone();
    let server = Server::bind(&socket_path, &control)
        .map_err(|e| DaemonError::Setup(format!("{}: {e}", socket_path.display())))?;
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(f)
            .map(drop)
            .map_err(|e| DaemonError::Setup(format!("cannot spawn a thread: {e}")))
    };
    let threads = Threads {
        accept: "wsedgectl-accept",
        peer: "wsedgectl-peer",
    };
    let d = daemon.clone();
    server
        .spawn(threads, move |request| d.handle(request))
        .map_err(|e| DaemonError::Setup(format!("cannot spawn a thread: {e}")))?;
    let d = daemon.clone();
    spawn("wsedgectl-sync", Box::new(move || sync_loop(&d)))?;
    if daemon.fleet.is_some() {
        let d = daemon.clone();
        spawn(
            "wsedgectl-fleet",
            Box::new(move || {
                if let Some(f) = &d.fleet {
                    fleet::watch_loop(&d, f);
                }
            }),
        )?;
        let d = daemon.clone();
        spawn(
            "wsedgectl-lease",
            Box::new(move || {
                if let Some(f) = &d.fleet {
                    fleet::status_loop(&d, f);
                }
            }),
        )?;
    }
    if let Some(addr) = control.status_listen {
        let bound = status_page::start(addr, daemon.clone())
            .map_err(|e| DaemonError::Setup(format!("status page {addr}: {e}")))?;
        eprintln!("wsedgectl daemon: status page on http://{bound}/");
    }
    eprintln!(
        "wsedgectl daemon: listening on {}, dataplane {}",
        socket_path.display(),
        daemon.dataplane.display()
    );
    eprintln!("wsedgectl daemon: ready");
    wsedge_command::notify::ready("serving the CLI");

    let mut signals = signals;
    for signal in signals.forever() {
        if signal == signal_hook::consts::SIGHUP {
            tracing::info!("SIGHUP: reloading {}", daemon.config_file.display());
            match daemon.reload() {
                Ok(a) => {
                    tracing::info!(version = %version_text(a.version), hash = %a.hash, pushed = a.pushed, "reloaded")
                }
                Err(f) => {
                    tracing::error!(error = %f.message, "reload refused; the running configuration stays in force")
                }
            }
        } else {
            tracing::info!(
                signal,
                "stopping; the dataplane keeps serving its configuration"
            );
            wsedge_command::notify::stopping();
            break;
        }
    }
    let _ = std::fs::remove_file(&socket_path);
    Ok(())
}

impl Daemon {
    fn call_dataplane(&self, request: &Request) -> Result<Response, WireError> {
        // An upgrade waits for the new binary to be ready.
        let timeout = match request {
            Request::Upgrade { .. } => DATAPLANE_TIMEOUT * 15,
            _ => DATAPLANE_TIMEOUT,
        };
        let mut client = Client::connect(&self.dataplane, timeout)?;
        client.call(request)
    }

    /// Forwards a dataplane-scope request.
    fn forward(&self, request: &Request) -> Response {
        match self.call_dataplane(request) {
            Ok(response) => response,
            Err(e) => Response::error(
                ErrorKind::Unavailable,
                format!(
                    "cannot reach the dataplane at {}: {e}",
                    self.dataplane.display()
                ),
            ),
        }
    }

    /// Pushes `desired` to the dataplane.
    fn push(&self, desired: &Desired) -> Result<Applied, Failure> {
        let request = Request::ApplyConfig {
            toml: desired.toml.clone(),
            source: Some(desired.source.clone()),
        };
        match self.call_dataplane(&request) {
            Ok(Response::Applied(applied)) => Ok(applied),
            Ok(Response::Error { kind, message }) => Err(Failure::new(kind, message)),
            Ok(other) => Err(Failure::new(
                ErrorKind::Internal,
                format!("unexpected answer from the dataplane: {other:?}"),
            )),
            Err(e) => Err(Failure::new(
                ErrorKind::Unavailable,
                format!(
                    "cannot reach the dataplane at {}: {e}",
                    self.dataplane.display()
                ),
            )),
        }
    }

    /// Makes a change: `make` turns the desired state into new TOML text and its source. The
    /// result is validated, persisted and pushed; if validation fails (here or in the
    /// dataplane) nothing changes. An unreachable dataplane does not block the change: the
    /// sync loop pushes it when the dataplane is back.
    fn change(
        &self,
        make: impl FnOnce(&Desired) -> Result<(String, String), Failure>,
    ) -> Result<Applied, Failure> {
        let mut desired = lock(&self.desired);
        let (toml, source) = make(&desired)?;
        Config::from_toml(&toml, &source)
            .map_err(|e| Failure::new(ErrorKind::InvalidConfig, e.to_string()))?;
        let next = Desired { toml, source };
        if let Some(path) = &self.state_file {
            state::save(path, &next)
                .map_err(|e| Failure::new(ErrorKind::Internal, e.to_string()))?;
        }
        let outcome = self.push(&next);
        let mut sync = lock(&self.sync);
        let applied = match outcome {
            Ok(applied) => {
                sync.reachable = true;
                sync.in_sync = true;
                sync.running_version = applied.version;
                sync.last_error = None;
                applied
            }
            Err(f) if f.kind == ErrorKind::Unavailable => {
                sync.reachable = false;
                sync.in_sync = false;
                sync.running_version = None;
                sync.last_error = Some(f.message.clone());
                tracing::warn!(error = %f.message, hash = %next.hash(), "dataplane unreachable; the change is pushed when it is back");
                Applied {
                    version: None,
                    hash: next.hash(),
                    source: next.source.clone(),
                    pushed: false,
                    workers_confirmed: 0,
                    restart_required: Vec::new(),
                }
            }
            Err(f) => {
                // The dataplane refused it: restore the persisted state, keep the old one.
                if let Some(path) = &self.state_file
                    && let Err(e) = state::save(path, &desired)
                {
                    tracing::error!(error = %e, "cannot restore the state file");
                }
                return Err(f);
            }
        };
        tracing::info!(version = %version_text(applied.version), hash = %applied.hash, source = %next.source, pushed = applied.pushed, "configuration changed");
        self.history
            .applied(applied.version, &next.source, applied.pushed);
        *desired = next;
        Ok(applied)
    }

    fn reload(&self) -> Result<Applied, Failure> {
        if let Some(applied) = self.fleet.as_ref().and_then(|f| f.reload(self)) {
            return applied;
        }
        let file = self.config_file.clone();
        self.change(|_| {
            let text = std::fs::read_to_string(&file).map_err(|e| {
                Failure::new(
                    ErrorKind::InvalidConfig,
                    format!("{}: cannot read: {e}", file.display()),
                )
            })?;
            Ok((text, file.display().to_string()))
        })
    }

    /// Checks the dataplane runs the desired configuration; pushes it if not.
    fn sync_once(&self) {
        let desired = lock(&self.desired);
        let shown = self.call_dataplane(&Request::ConfigShow);
        let mut sync = lock(&self.sync);
        let was_reachable = sync.reachable;
        match shown {
            Ok(Response::Config(running)) => {
                sync.reachable = true;
                if !was_reachable {
                    tracing::info!(dataplane = %self.dataplane.display(), version = %version_text(running.version), hash = %running.hash, "dataplane reachable");
                }
                // Same text, same configuration: whatever version the dataplane gave it.
                if running.toml == desired.toml {
                    sync.in_sync = true;
                    sync.running_version = running.version;
                    return;
                }
                tracing::info!(
                    running_version = %version_text(running.version),
                    running = %running.hash,
                    desired = %desired.hash(),
                    "dataplane runs another configuration; pushing the desired one"
                );
                drop(sync);
                let outcome = self.push(&desired);
                let mut sync = lock(&self.sync);
                match outcome {
                    Ok(applied) => {
                        sync.in_sync = true;
                        sync.running_version = applied.version;
                        sync.last_error = None;
                        tracing::info!(
                            version = %version_text(applied.version),
                            hash = %applied.hash,
                            workers = applied.workers_confirmed,
                            "dataplane re-synced"
                        );
                    }
                    Err(f) => {
                        sync.in_sync = false;
                        sync.running_version = None;
                        if sync.last_error.as_deref() != Some(f.message.as_str()) {
                            tracing::error!(error = %f.message, "push to the dataplane failed");
                        }
                        sync.last_error = Some(f.message);
                    }
                }
            }
            Ok(other) => {
                sync.in_sync = false;
                sync.running_version = None;
                sync.last_error = Some(format!("unexpected answer to config_show: {other:?}"));
            }
            Err(e) => {
                if was_reachable {
                    tracing::warn!(dataplane = %self.dataplane.display(), error = %e, "dataplane unreachable");
                }
                sync.reachable = false;
                sync.in_sync = false;
                sync.running_version = None;
                sync.last_error = Some(format!("cannot reach the dataplane: {e}"));
            }
        }
    }

    fn status(&self) -> Response {
        let dataplane = match self.call_dataplane(&Request::Status) {
            Ok(Response::Status(s)) => s.dataplane,
            _ => None,
        };
        let desired_hash = lock(&self.desired).hash();
        let sync = lock(&self.sync);
        let in_sync = sync.in_sync
            && dataplane.as_ref().is_some_and(|d| {
                d.config_hash == desired_hash
                    && d.workers
                        .iter()
                        .all(|w| w.config_version == d.config_version)
            });
        Response::Status(Status {
            daemon: Some(DaemonStatus {
                pid: std::process::id(),
                uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                config_file: self.config_file.display().to_string(),
                desired_hash,
                dataplane_socket: self.dataplane.display().to_string(),
                dataplane_reachable: dataplane.is_some(),
                in_sync,
                last_error: sync.last_error.clone(),
                fleet: self.fleet.as_ref().map(|f| Box::new(f.view())),
            }),
            dataplane,
        })
    }

    fn handle(&self, request: Request) -> Response {
        let result = match request {
            Request::Status => return self.status(),
            Request::Stats
            | Request::Connections { .. }
            | Request::Kill { .. }
            | Request::Drain { .. }
            | Request::Publish { .. }
            | Request::Presence { .. }
            | Request::OriginsHealth
            | Request::Certs
            | Request::CertsReload
            | Request::FunctionsList
            | Request::Upgrade { .. } => return self.forward(&request),
            // A deploy is an edit of the route's `script`: persisted, then pushed (where the
            // dataplane compiles it, or refuses it and the state file is restored).
            Request::FunctionDeploy { route, script } => self
                .change(|d| {
                    let toml = wsedge_command::edit::set_script(&d.toml, &route, &script).map_err(
                        |m| {
                            let kind = if m.starts_with("no route") {
                                ErrorKind::NotFound
                            } else {
                                ErrorKind::BadRequest
                            };
                            Failure::new(kind, m)
                        },
                    )?;
                    Ok((toml, edited(&d.source)))
                })
                .map(Response::Applied),
            Request::ApplyConfig { toml, source, .. } => self
                .change(|_| Ok((toml, source.unwrap_or_else(|| "wsedgectl apply".to_owned()))))
                .map(Response::Applied),
            Request::ConfigShow => {
                let d = lock(&self.desired);
                let sync = lock(&self.sync);
                Ok(Response::Config(ConfigText {
                    version: sync.in_sync.then_some(sync.running_version).flatten(),
                    hash: d.hash(),
                    source: d.source.clone(),
                    toml: d.toml.clone(),
                }))
            }
            Request::RoutesList => self.desired_config().map(|c| Response::Routes {
                routes: wire::route_rows(&c),
            }),
            Request::LimitsGet { route } => self.desired_config().and_then(|c| {
                wire::limits_view(&c, route.as_deref())
                    .map(Response::Limits)
                    .ok_or_else(|| Failure::new(ErrorKind::NotFound, "no route with that name"))
            }),
            Request::ListsShow { name } => self.desired_config().and_then(|c| {
                wire::list_views(&c, name.as_deref(), wire::unix_now())
                    .map(|lists| Response::Lists { lists })
                    .ok_or_else(|| Failure::new(ErrorKind::NotFound, "no list with that name"))
            }),
            Request::ListAdd {
                name,
                cidr,
                expires,
            } => self
                .change(|d| {
                    Ok((
                        edit::list_add(&d.toml, &name, &cidr, expires)?,
                        edited(&d.source),
                    ))
                })
                .map(Response::Applied),
            Request::ListRemove { name, cidr } => self
                .change(|d| Ok((edit::list_remove(&d.toml, &name, &cidr)?, edited(&d.source))))
                .map(Response::Applied),
            Request::Reload => self.reload().map(Response::Applied),
            Request::OriginAdd { route, addr } => self
                .change(|d| Ok((edit::origin_add(&d.toml, &route, &addr)?, edited(&d.source))))
                .map(Response::Applied),
            Request::OriginRemove { route, addr } => self
                .change(|d| {
                    Ok((
                        edit::origin_remove(&d.toml, &route, &addr)?,
                        edited(&d.source),
                    ))
                })
                .map(Response::Applied),
            Request::LimitsSet { key, value, route } => self
                .change(|d| {
                    Ok((
                        edit::limits_set(&d.toml, &key, &value, route.as_deref())?,
                        edited(&d.source),
                    ))
                })
                .map(Response::Applied),
        };
        result.unwrap_or_else(Response::from)
    }

    fn desired_config(&self) -> Result<Config, Failure> {
        let d = lock(&self.desired);
        Config::from_toml(&d.toml, &d.source)
            .map_err(|e| Failure::new(ErrorKind::Internal, e.to_string()))
    }
}

/// A dataplane version for the log: the number, or `none` (not pushed, not known).
fn version_text(version: Option<u64>) -> String {
    version.map_or_else(|| "none".to_owned(), |v| v.to_string())
}

/// The source name of an edited configuration.
fn edited(source: &str) -> String {
    if source.ends_with(" + live edits") {
        source.to_owned()
    } else {
        format!("{source} + live edits")
    }
}

fn sync_loop(daemon: &Daemon) {
    // The watchdog is pinged from this loop: a ping proves the loop that keeps the dataplane
    // in sync still turns (each turn is bounded by the dataplane call's timeout).
    let watchdog = wsedge_command::notify::watchdog_period().is_some();
    loop {
        daemon.sync_once();
        if watchdog {
            wsedge_command::notify::watchdog_ping();
        }
        std::thread::sleep(SYNC_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edited_source_names() {
        assert_eq!(edited("/etc/w.toml"), "/etc/w.toml + live edits");
        assert_eq!(
            edited("/etc/w.toml + live edits"),
            "/etc/w.toml + live edits"
        );
    }
}
