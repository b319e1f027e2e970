//! Binary upgrade without dropping connections (`wsedgectl upgrade BINARY`, or SIGUSR2 for
//! the binary this process was started from).
//!
//! The running generation starts the new binary as its child with `--upgrade-from SOCKET`
//! (`spawn`), hands it the configuration in force and the very same listening sockets
//! (`SCM_RIGHTS`, `handoff`; the new process checks each one, `inherit`), and waits for it
//! to report ready. Until then nothing changes here: a binary that is missing, crashes,
//! refuses what it was handed or is not ready within `dataplane.upgrade_ready_timeout`
//! leaves this generation serving, and the request fails with `upgrade_failed` and the
//! reason. Once it is ready, systemd is told the new main pid, and every worker retires
//! (`Command::Retire`): its accepts are cancelled (the sockets stay open in the new
//! generation, so no queued connection is lost), and its connections are closed at random
//! moments of `dataplane.upgrade_drain_window` (Close 1001 on `frames` routes), bounded by
//! their maximum connection time; the process exits when the last one is gone.
//!
//! The hand-off socket stays open as the link from the new generation to the old one: the
//! new one asks it for its status, so `wsedgectl status` shows the connections of every
//! generation still alive, and an upgrade is refused while `dataplane.max_old_generations`
//! of them are. The control socket's path is taken over by the new generation; the old
//! one keeps serving the peers it has and never removes the new one's socket file.

mod handoff;
pub(crate) mod inherit;
mod spawn;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use wsedge_command::wire::server::Failure;
use wsedge_command::wire::{
    Client, ErrorKind, GenerationStatus, Request, Response, Status, Upgraded,
};

use self::handoff::{Message, Reader};
use crate::control::Shared;
use crate::worker::mailbox::Command;

pub(crate) use spawn::child_args;

/// How long the old generation may take to answer a status request over the link.
const LINK_TIMEOUT: Duration = Duration::from_secs(3);

/// The link from this generation to the one it replaced.
#[derive(Debug)]
struct Older {
    client: Client,
    pid: u32,
    generation: u64,
    build: String,
}

/// This generation's part in upgrades: what it hands over, and who came before it.
#[derive(Debug)]
pub(crate) struct Upgrader {
    generation: u64,
    /// The binary this process was started from (SIGUSR2 starts it again: after a package
    /// upgrade the path holds the new binary).
    exe: PathBuf,
    args: Vec<OsString>,
    /// Listening sockets, `[worker][address]`, and each address as bound.
    listeners: Vec<Vec<RawFd>>,
    bound: Vec<SocketAddr>,
    /// Set when a new generation took over: this one drains and exits.
    retired: AtomicBool,
    busy: Mutex<()>,
    older: Mutex<Option<Older>>,
    shared: OnceLock<Weak<Shared>>,
    /// Whether this process is a new generation (its service listeners join the old
    /// one's), and the service listeners to stop when it retires.
    inherited: bool,
    services: Mutex<Vec<RawFd>>,
}

impl Upgrader {
    pub(crate) fn new(
        generation: u64,
        exe: PathBuf,
        args: Vec<OsString>,
        listeners: Vec<Vec<RawFd>>,
        bound: Vec<SocketAddr>,
        inherited: bool,
    ) -> Upgrader {
        Upgrader {
            generation,
            exe,
            args,
            listeners,
            bound,
            retired: AtomicBool::new(false),
            busy: Mutex::new(()),
            older: Mutex::new(None),
            shared: OnceLock::new(),
            inherited,
            services: Mutex::new(Vec::new()),
        }
    }

    /// The listener of a service thread (`/metrics`, the publish API) on `addr`. The first
    /// generation founds the address (refused if anything listens there); a new one joins
    /// the old one's socket group (SO_REUSEPORT), and the old one shuts its own down when
    /// it retires (its thread's accept then fails and the thread ends: see
    /// [`Upgrader::retired`]). A scrape queued on the old socket at that moment is reset.
    pub(crate) fn service_listener(&self, addr: SocketAddr) -> std::io::Result<TcpListener> {
        let group = if self.inherited {
            wsedge_ring::sys::Group::Join
        } else {
            wsedge_ring::sys::Group::Found
        };
        let listener = wsedge_ring::sys::service_listener(&addr, group)?;
        lock(&self.services).push(listener.as_raw_fd());
        Ok(listener)
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether a newer generation took over (this one drains and exits).
    pub(crate) fn retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// The control plane this upgrader reports to and retires.
    pub(crate) fn attach(&self, shared: &Arc<Shared>) {
        let _ = self.shared.set(Arc::downgrade(shared));
    }

    /// Keeps the link to the generation this one replaced (after `Ready` was sent).
    pub(crate) fn set_older(&self, stream: UnixStream, pid: u32, build: String) {
        match Client::from_stream(stream, LINK_TIMEOUT) {
            Ok(client) => {
                *lock(&self.older) = Some(Older {
                    client,
                    pid,
                    generation: self.generation.saturating_sub(1),
                    build,
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot keep the link to the old generation"),
        }
    }

    /// The older generations still alive, newest first, with their live connections.
    pub(crate) fn older_status(&self) -> Vec<GenerationStatus> {
        let mut older = lock(&self.older);
        let Some(link) = older.as_mut() else {
            return Vec::new();
        };
        let mut me = GenerationStatus {
            generation: link.generation,
            pid: link.pid,
            build: link.build.clone(),
            live: 0,
        };
        let mut rest = Vec::new();
        match link.client.call(&Request::Status) {
            Ok(Response::Status(Status {
                dataplane: Some(d), ..
            })) => {
                me.live = d.workers.iter().map(|w| w.live).sum();
                rest = d.old_generations;
            }
            // Alive, but some of its workers have already finished.
            Ok(_) => {}
            Err(e) => {
                tracing::info!(pid = link.pid, generation = link.generation, reason = %e, "old generation gone");
                *older = None;
                return Vec::new();
            }
        }
        let mut out = vec![me];
        out.extend(rest);
        out
    }

    /// Handles `wsedgectl upgrade` (and SIGUSR2, with no binary): see the module doc.
    pub(crate) fn upgrade(&self, binary: Option<PathBuf>) -> Result<Upgraded, Failure> {
        let refused = |m: String| Failure::new(ErrorKind::UpgradeRefused, m);
        let failed = |m: String| Failure::new(ErrorKind::UpgradeFailed, m);
        let Ok(_busy) = self.busy.try_lock() else {
            return Err(refused("an upgrade is already under way".to_owned()));
        };
        if self.retired() {
            return Err(refused(
                "this generation has been replaced and is draining".to_owned(),
            ));
        }
        let Some(shared) = self.shared.get().and_then(Weak::upgrade) else {
            return Err(refused("the control plane is not running".to_owned()));
        };
        let (toml, source, config) = shared.config_in_force();
        let dp = &config.dataplane;
        let old = self.older_status().len();
        if old >= dp.max_old_generations {
            return Err(refused(format!(
                "{old} old generation(s) still draining (pids {}); max_old_generations = {}: wait until they finish, or raise the limit",
                self.older_status()
                    .iter()
                    .map(|g| g.pid.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                dp.max_old_generations
            )));
        }
        let reports = shared.reports()?;
        if reports.iter().any(|r| !r.accepting) {
            return Err(refused(
                "this generation is draining (it no longer accepts): nothing to hand over"
                    .to_owned(),
            ));
        }
        let binary = binary.unwrap_or_else(|| self.exe.clone());
        let deadline = Instant::now() + dp.upgrade_ready_timeout;
        let dir = config
            .control
            .socket
            .as_deref()
            .and_then(Path::parent)
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(std::env::temp_dir, Path::to_path_buf);
        tracing::info!(binary = %binary.display(), generation = self.generation + 1, "upgrade: starting the new binary");
        // Whatever the new binary did before it failed, this generation stays reachable.
        let failed = |m: String| {
            shared.reclaim_control_socket();
            failed(m)
        };
        let started = spawn::start(&binary, &self.args, &dir, deadline)
            .map_err(|m| failed(upgrade_failed(&m)))?;
        let spawn::Started { mut child, stream } = started;
        let offer = Message::Offer {
            generation: self.generation + 1,
            old_pid: std::process::id(),
            old_build: env!("CARGO_PKG_VERSION").to_owned(),
            config_toml: toml,
            config_source: source,
            addresses: self.bound.clone(),
            workers: self.listeners.len(),
            fds: self.bound.len() * self.listeners.len(),
        };
        // By address, then worker.
        let fds: Vec<RawFd> = (0..self.bound.len())
            .flat_map(|a| self.listeners.iter().map(move |w| w[a]))
            .collect();
        let sent =
            handoff::send(&stream, &offer, &[]).and_then(|()| handoff::send_fds(&stream, &fds));
        if let Err(e) = sent {
            let why = spawn::exited(&mut child).unwrap_or_else(|| format!("hand-off: {e}"));
            spawn::abandon(child);
            return Err(failed(upgrade_failed(&why)));
        }
        let (pid, build) = match wait_ready(&stream, &mut child, deadline) {
            Ok(ready) => ready,
            Err(why) => {
                spawn::abandon(child);
                return Err(failed(upgrade_failed(&why)));
            }
        };
        // From here on the new generation serves: retire this one.
        self.retired.store(true, Ordering::Release);
        for fd in lock(&self.services).iter() {
            wsedge_ring::sys::shutdown(*fd, libc::SHUT_RDWR);
        }
        let _ = wsedge_command::notify::notify(&format!(
            "MAINPID={pid}\nSTATUS=upgraded: generation {} (pid {pid}) serves; this one drains",
            self.generation + 1
        ));
        let old_live: u64 = reports.iter().map(|r| r.live as u64).sum();
        let window = dp.upgrade_drain_window;
        for mailbox in shared.mailboxes() {
            mailbox.send(Command::Retire { over: window });
        }
        tracing::info!(
            pid,
            generation = self.generation + 1,
            live = old_live,
            ?window,
            "upgrade: the new generation serves; draining this one"
        );
        let served = shared.clone();
        let link = std::thread::Builder::new()
            .name("wsedge-upgrade".to_owned())
            .spawn(move || {
                wsedge_command::wire::server::serve_stream(stream, &|r| served.handle(r));
            });
        if let Err(e) = link {
            tracing::warn!(error = %e, "cannot serve the link to the new generation");
        }
        // Reaped if it exits while this process lives.
        let _ = std::thread::Builder::new()
            .name("wsedge-reap".to_owned())
            .spawn(move || child.wait());
        Ok(Upgraded {
            pid,
            generation: self.generation + 1,
            build,
            old_pid: std::process::id(),
            old_generation: self.generation,
            old_live,
            drain_window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
        })
    }
}

fn upgrade_failed(why: &str) -> String {
    tracing::error!(
        reason = why,
        "upgrade failed; this generation keeps serving"
    );
    format!("{why}; the running generation keeps serving")
}

/// Waits for `Ready` (or `Failed`, or the child's exit) until `deadline`.
fn wait_ready(
    stream: &UnixStream,
    child: &mut std::process::Child,
    deadline: Instant,
) -> Result<(u32, String), String> {
    let mut reader = Reader::new();
    stream
        .set_read_timeout(Some(spawn::POLL * 5))
        .map_err(|e| e.to_string())?;
    loop {
        match reader.next(stream) {
            Ok(Some(Message::Ready { pid, build })) => {
                let _ = stream.set_read_timeout(None);
                return Ok((pid, build));
            }
            Ok(Some(Message::Failed { reason })) => {
                return Err(format!("the new binary refused to start: {reason}"));
            }
            Ok(Some(other)) => return Err(format!("unexpected hand-off message {other:?}")),
            Ok(None) => {
                // Closed: it exited (give it a moment to be reaped) or closed the link.
                for _ in 0..50 {
                    if let Some(why) = spawn::exited(child) {
                        return Err(why);
                    }
                    std::thread::sleep(spawn::POLL);
                }
                return Err("the new binary closed the hand-off before it was ready".into());
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(format!("hand-off: {e}")),
        }
        if let Some(why) = spawn::exited(child) {
            return Err(why);
        }
        if Instant::now() >= deadline {
            return Err(
                "the new binary was not ready within dataplane.upgrade_ready_timeout".into(),
            );
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A control socket's file, removed when dropped unless another process has put its own
/// socket at the path since (the next generation after an upgrade).
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    inode: Option<(u64, u64)>,
}

impl SocketFile {
    pub(crate) fn new(path: PathBuf) -> SocketFile {
        let inode = std::fs::symlink_metadata(&path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        SocketFile { path, inode }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let now = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if now.is_some() && now == self.inode {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// SIGUSR2: upgrade to the binary this process was started from, on a thread of its own.
pub(crate) fn on_signal(upgrader: &Arc<Upgrader>) {
    let upgrader = upgrader.clone();
    let spawned = std::thread::Builder::new()
        .name("wsedge-upgrade".to_owned())
        .spawn(move || match upgrader.upgrade(None) {
            Ok(u) => tracing::info!(pid = u.pid, generation = u.generation, "SIGUSR2: upgraded"),
            Err(f) => tracing::error!(kind = f.kind.as_str(), reason = %f.message, "SIGUSR2: upgrade not done"),
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "SIGUSR2: cannot start the upgrade thread");
    }
}
