//! The fleet configuration: one TOML document in etcd (`<prefix>/<cluster>/config`) laid
//! over this host's file, and this host's status under a lease (`.../hosts/<host>`).
//!
//! Two threads of the daemon:
//! - `wsedgectl-fleet` reads the document, then watches it from the next revision. Each new
//!   document is laid over the file ([`overlay`]), validated by the same
//!   `Config::from_toml` as every other change and pushed through [`Daemon::change`] (the
//!   path of `wsedgectl apply`: persisted, then applied by the workers between completion
//!   batches, so live connections are untouched). A refused document leaves the last good
//!   configuration in force and is reported. A broken stream resumes from the revision after
//!   the last event; if etcd compacted that revision away, the document is read again.
//! - `wsedgectl-lease` keeps a lease alive and writes the host's [`HostStatus`] under it
//!   whenever it changes (a new lease after etcd lost the old one), so a host whose daemon
//!   is gone disappears from `wsedgectl fleet status` after `lease_ttl`.
//!
//! etcd being away costs nothing but freshness: the dataplane serves on, the daemon serves
//! the CLI, and both threads retry with a capped backoff.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use sha1::Digest as _;
use wsedge_command::fleet::FleetConfig;
use wsedge_command::wire::server::Failure;
use wsedge_command::wire::{Applied, ErrorKind, FleetView, HostStatus, Request, Response};

use super::{Daemon, lock};
use crate::etcd::{Etcd, EtcdError, Kv, WatchEvent, WatchMessage};

/// Tables a document may not set: they describe this host, not the fleet.
const HOST_TABLES: [&str; 2] = ["control", "fleet"];
/// Per-request timeout of unary etcd calls.
const ETCD_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest pause between two attempts to reach etcd.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The first pause.
const MIN_BACKOFF: Duration = Duration::from_millis(250);

/// The fleet side of the daemon.
#[derive(Debug)]
pub(super) struct Fleet {
    pub(super) config: FleetConfig,
    etcd: Etcd,
    state: Mutex<State>,
    /// Wakes the status thread after a change.
    kick: Mutex<Sender<()>>,
    kicked: Mutex<Option<Receiver<()>>>,
}

#[derive(Debug, Default)]
struct State {
    etcd_reachable: bool,
    etcd_error: Option<String>,
    /// The newest document seen, with its revision (none: absent or not read yet).
    document: Option<Kv>,
    applied_revision: Option<i64>,
    applied_hash: Option<String>,
    refused: Option<(i64, String)>,
    compactions: u64,
}

impl Fleet {
    pub(super) fn new(config: FleetConfig) -> Fleet {
        let (tx, rx) = mpsc::channel();
        Fleet {
            etcd: Etcd::new(&config.etcd, ETCD_TIMEOUT),
            config,
            state: Mutex::new(State::default()),
            kick: Mutex::new(tx),
            kicked: Mutex::new(Some(rx)),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn kick(&self) {
        let _ = lock(&self.kick).send(());
    }

    fn reachable(&self, outcome: Result<(), &EtcdError>) {
        let mut state = self.state();
        match outcome {
            Ok(()) => {
                if !state.etcd_reachable {
                    tracing::info!(etcd = %self.config.etcd.join(","), "etcd reachable");
                }
                state.etcd_reachable = true;
                state.etcd_error = None;
            }
            Err(e) => {
                if state.etcd_reachable || state.etcd_error.is_none() {
                    tracing::warn!(error = %e, "etcd unreachable; the configuration in force stays");
                }
                state.etcd_reachable = false;
                state.etcd_error = Some(e.to_string());
            }
        }
    }

    /// What `wsedgectl status` shows.
    pub(super) fn view(&self) -> FleetView {
        let state = self.state();
        FleetView {
            etcd: self.config.etcd.clone(),
            key: self.config.config_key(),
            host: self.config.host.clone(),
            etcd_reachable: state.etcd_reachable,
            etcd_error: state.etcd_error.clone(),
            document_revision: state.document.as_ref().map(|d| d.mod_revision),
            document_hash: state.document.as_ref().map(|d| hash(&d.value)),
            applied_revision: state.applied_revision,
            applied_hash: state.applied_hash.clone(),
            refused_revision: state.refused.as_ref().map(|r| r.0),
            refused_error: state.refused.as_ref().map(|r| r.1.clone()),
            compactions: state.compactions,
        }
    }

    /// `reload` (SIGHUP) on a fleet host: the file as it is now, with the newest document
    /// over it. `None` when no document is known (then the file alone, as without a fleet).
    pub(super) fn reload(&self, daemon: &Daemon) -> Option<Result<Applied, Failure>> {
        let document = self.state().document.clone()?;
        let result = self.merged(daemon, &document).and_then(|merged| {
            daemon
                .change(|_| Ok((merged, self.source(document.mod_revision))))
                .map_err(|f| f.message)
        });
        Some(result.map_err(|message| Failure::new(ErrorKind::InvalidConfig, message)))
    }

    /// The source name of the document at `revision` (errors read `etcd:KEY@REV:LINE: ...`).
    fn source(&self, revision: i64) -> String {
        format!("etcd:{}@{revision}", self.config.config_key())
    }

    /// The desired configuration `document` makes: laid over the file as it reads now.
    fn merged(&self, daemon: &Daemon, document: &Kv) -> Result<String, String> {
        let text = std::str::from_utf8(&document.value)
            .map_err(|_| "the document is not UTF-8 text".to_owned())?;
        let file = std::fs::read_to_string(&daemon.config_file)
            .map_err(|e| format!("{}: cannot read: {e}", daemon.config_file.display()))?;
        overlay(text, &file, &daemon.config_file.display().to_string())
    }

    /// Handles the document (`None`: the key is absent or was deleted).
    fn consider(&self, daemon: &Daemon, document: Option<Kv>) {
        let Some(document) = document else {
            let mut state = self.state();
            if state.document.is_some() {
                tracing::warn!(key = %self.config.config_key(), "the fleet document was deleted; the configuration in force stays");
            }
            state.document = None;
            drop(state);
            self.kick();
            return;
        };
        let revision = document.mod_revision;
        {
            let mut state = self.state();
            state.document = Some(document.clone());
            if state.applied_revision == Some(revision)
                || state.refused.as_ref().map(|r| r.0) == Some(revision)
            {
                return;
            }
        }
        let doc_hash = hash(&document.value);
        // A document whose effect is already the desired configuration (a restarted daemon
        // restored it from its state file) is recorded, not pushed again.
        let outcome = self.merged(daemon, &document).and_then(|merged| {
            if lock(&daemon.desired).toml == merged {
                return Ok(None);
            }
            daemon
                .change(|_| Ok((merged, self.source(revision))))
                .map(Some)
                .map_err(|f| f.message)
        });
        let mut state = self.state();
        match outcome {
            Ok(applied) => {
                let version = applied.as_ref().and_then(|a| a.version);
                tracing::info!(revision, hash = %doc_hash, ?version, "fleet document applied");
                state.applied_revision = Some(revision);
                state.applied_hash = Some(doc_hash);
                state.refused = None;
            }
            Err(message) => {
                tracing::error!(revision, error = %message, "fleet document refused; the last good configuration stays in force");
                daemon.history.refused(&self.source(revision), &message);
                state.refused = Some((revision, message));
            }
        }
        drop(state);
        self.kick();
    }

    fn compacted(&self, compact_revision: i64) {
        tracing::warn!(
            compact_revision,
            "etcd compacted the revision the watch resumed from; reading the document again"
        );
        self.state().compactions += 1;
    }

    /// This host's status as written in etcd.
    fn host_status(&self, daemon: &Daemon, since: u64) -> HostStatus {
        let dataplane = match daemon.call_dataplane(&Request::Status) {
            Ok(Response::Status(s)) => s.dataplane,
            _ => None,
        };
        let desired = wsedge_command::wire::config_hash(&lock(&daemon.desired).toml);
        let state = self.state();
        let health = match &dataplane {
            None => "dataplane_unreachable",
            Some(_) if state.refused.is_some() => "refused",
            Some(d)
                if d.config_hash != desired
                    || d.workers
                        .iter()
                        .any(|w| w.config_version != d.config_version) =>
            {
                "out_of_sync"
            }
            Some(_) => "ok",
        };
        HostStatus {
            host: self.config.host.clone(),
            health: health.to_owned(),
            applied_revision: state.applied_revision,
            applied_hash: state.applied_hash.clone(),
            refused_revision: state.refused.as_ref().map(|r| r.0),
            refused_error: state.refused.as_ref().map(|r| r.1.clone()),
            desired_hash: desired,
            dataplane_config_version: dataplane.as_ref().map(|d| d.config_version),
            wsedge_build: dataplane.as_ref().map(|d| d.build.clone()),
            wsedgectl_build: env!("CARGO_PKG_VERSION").to_owned(),
            live: dataplane
                .as_ref()
                .map(|d| d.workers.iter().map(|w| w.live).sum()),
            since,
        }
    }
}

/// The `wsedgectl-fleet` thread: read, watch, apply; forever.
pub(super) fn watch_loop(daemon: &Daemon, fleet: &Fleet) {
    let key = fleet.config.config_key();
    // The revision to resume watching from; none: read the document first.
    let mut resume: Option<i64> = None;
    let mut backoff = MIN_BACKOFF;
    loop {
        let from = match resume {
            Some(revision) => revision,
            None => match fleet.etcd.get(&key) {
                Ok(range) => {
                    fleet.reachable(Ok(()));
                    fleet.consider(daemon, range.kvs.into_iter().next());
                    range.revision + 1
                }
                Err(e) => {
                    fleet.reachable(Err(&e));
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        resume = Some(from);
        match fleet.etcd.watch(&key, from) {
            Ok(mut watch) => loop {
                match watch.next_message() {
                    Ok(WatchMessage::Created) => {
                        fleet.reachable(Ok(()));
                        backoff = MIN_BACKOFF;
                        fleet.kick();
                    }
                    Ok(WatchMessage::Other) => {}
                    Ok(WatchMessage::Events(events)) => {
                        for event in events {
                            match event {
                                WatchEvent::Put(kv) => {
                                    resume = Some(kv.mod_revision + 1);
                                    fleet.consider(daemon, Some(kv));
                                }
                                WatchEvent::Delete { revision } => {
                                    resume = Some(revision + 1);
                                    fleet.consider(daemon, None);
                                }
                            }
                        }
                    }
                    Ok(WatchMessage::Compacted { compact_revision }) => {
                        fleet.compacted(compact_revision);
                        resume = None;
                        break;
                    }
                    Ok(WatchMessage::Canceled(reason)) => {
                        tracing::warn!(%reason, "etcd canceled the watch; watching again");
                        break;
                    }
                    Err(e) => {
                        fleet.reachable(Err(&e));
                        break;
                    }
                }
            },
            Err(e) => fleet.reachable(Err(&e)),
        }
        if resume.is_some() {
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// The `wsedgectl-lease` thread: keeps the lease, writes the host's status when it changes.
pub(super) fn status_loop(daemon: &Daemon, fleet: &Fleet) {
    let Some(kicked) = lock(&fleet.kicked).take() else {
        return;
    };
    let key = fleet.config.host_key();
    let ttl = fleet.config.lease_ttl;
    let period = (ttl / 3).max(Duration::from_secs(1));
    let mut lease: Option<i64> = None;
    let mut written: Option<HostStatus> = None;
    loop {
        let mut status = fleet.host_status(daemon, wsedge_command::unix_now());
        if let Some(old) = &written
            && old.same_as(&status)
        {
            status.since = old.since;
        }
        let outcome = (|| -> Result<(), EtcdError> {
            let id = match lease {
                Some(id) if fleet.etcd.lease_keepalive(id)? => id,
                _ => {
                    if lease.is_some() {
                        tracing::warn!("the status lease expired in etcd; granting a new one");
                    }
                    written = None;
                    let id = fleet.etcd.lease_grant(ttl)?;
                    lease = Some(id);
                    id
                }
            };
            if written.as_ref() != Some(&status) {
                let body =
                    serde_json::to_vec(&status).map_err(|e| EtcdError::Protocol(e.to_string()))?;
                fleet.etcd.put(&key, &body, Some(id))?;
                written = Some(status);
            }
            Ok(())
        })();
        if let Err(e) = outcome {
            fleet.reachable(Err(&e));
        }
        // A kick (a document applied or refused) writes at once; otherwise once a period.
        let _ = kicked.recv_timeout(period);
        while kicked.try_recv().is_ok() {}
    }
}

/// The first 12 hex digits of the SHA-1 of a document: equal documents, equal hashes.
pub(crate) fn hash(bytes: &[u8]) -> String {
    let digest = sha1::Sha1::digest(bytes);
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// Lays the fleet document over the host's file: every top-level table of the document
/// replaces the file's table of the same name (all `[[route]]` tables at once); the file's
/// other tables (its `[control]` and `[fleet]` always) follow the document. The document
/// comes first and verbatim, so validation errors name the document's own line numbers.
pub(crate) fn overlay(document: &str, file: &str, file_name: &str) -> Result<String, String> {
    let doc: toml_edit::DocumentMut = document
        .parse()
        .map_err(|e| format!("the document is not TOML: {e}"))?;
    for table in HOST_TABLES {
        if doc.contains_key(table) {
            return Err(format!(
                "the document sets [{table}], which belongs to each host's own file: remove it"
            ));
        }
    }
    let mut base: toml_edit::DocumentMut = file
        .parse()
        .map_err(|e| format!("{file_name} is not TOML: {e}"))?;
    let replaced: Vec<String> = base
        .iter()
        .map(|(k, _)| k.to_owned())
        .filter(|k| doc.contains_key(k))
        .collect();
    for key in &replaced {
        base.remove(key);
    }
    let mut out = document.to_owned();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!(
        "\n# ---- host-local tables from {file_name} ----\n"
    ));
    out.push_str(&base.to_string());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "[dataplane]\nlisten = [\"127.0.0.1:8080\"]\n\n[[route]]\nname = \"local\"\norigins = [\"127.0.0.1:1\"]\n\n[control]\nsocket = \"/run/wsedge/dataplane.sock\"\n";

    #[test]
    fn the_document_replaces_whole_tables_and_keeps_its_line_numbers() {
        let doc = "[[route]]\nname = \"a\"\norigins = [\"127.0.0.1:2\"]\n\n[[route]]\nname = \"b\"\norigins = [\"127.0.0.1:3\"]";
        let merged = overlay(doc, FILE, "/etc/wsedge/wsedge.toml").expect("overlay");
        assert!(merged.starts_with(doc), "{merged}");
        let config = wsedge_command::Config::from_toml(&merged, "m").expect("valid");
        let names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "b"], "the file's routes are replaced");
        assert_eq!(
            config.control.socket.as_deref(),
            Some(std::path::Path::new("/run/wsedge/dataplane.sock")),
            "the host keeps its [control]"
        );
        // An error in the document names the document's line.
        let bad = "[[route]]\nname = \"a\"\norigins = [\"nowhere\"]\n";
        let merged = overlay(bad, FILE, "f").expect("overlay");
        let e = wsedge_command::Config::from_toml(&merged, "etcd:/k@5")
            .expect_err("bad origin")
            .to_string();
        assert!(e.starts_with("etcd:/k@5:3: route[0].origins"), "{e}");
        // An empty document leaves the file as it is.
        let merged = overlay("", FILE, "f").expect("overlay");
        let config = wsedge_command::Config::from_toml(&merged, "m").expect("valid");
        assert_eq!(config.routes[0].name, "local");
    }

    #[test]
    fn host_tables_and_broken_documents_are_refused() {
        let e = overlay("[control]\nsocket = \"/x\"\n", FILE, "f").expect_err("control");
        assert!(e.contains("[control]"), "{e}");
        let e = overlay("[fleet]\ncluster = \"x\"\n", FILE, "f").expect_err("fleet");
        assert!(e.contains("[fleet]"), "{e}");
        let e = overlay("[[route]\n", FILE, "f").expect_err("syntax");
        assert!(e.contains("not TOML"), "{e}");
    }

    #[test]
    fn hashes_are_stable() {
        assert_eq!(hash(b"abc"), "a9993e364706");
        assert_ne!(hash(b"abc"), hash(b"abd"));
    }
}
