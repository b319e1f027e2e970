//! What the binary upgrade (`crate::upgrade`) reads of the control plane: the
//! configuration in force (handed to the next generation) and the workers' mailboxes (to
//! retire them).

use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use wsedge_command::Config;
use wsedge_command::wire::server::{Failure, Server, Threads};
use wsedge_command::wire::{Client, Request, Response};

use super::{Shared, WORKER_REPLY_TIMEOUT};
use crate::worker::mailbox::{Command, Mailbox, WorkerReport};

impl Shared {
    /// The configuration in force: its text, where it came from, and the parsed value.
    pub(crate) fn config_in_force(&self) -> (String, String, Config) {
        let current = self.current();
        (
            current.toml.clone(),
            current.source.clone(),
            current.config.clone(),
        )
    }

    pub(crate) fn mailboxes(&self) -> &[Mailbox] {
        &self.mailboxes
    }

    /// After a failed upgrade: if the control socket's path no longer reaches this process
    /// (the new binary bound it, then died or was killed), binds it again, so the
    /// generation that keeps serving stays reachable by its path.
    pub(crate) fn reclaim_control_socket(self: &Arc<Self>) {
        let control = self.current().config.control.clone();
        let Some(path) = control.socket.clone() else {
            return;
        };
        let answering = Client::connect(&path, Duration::from_secs(1))
            .and_then(|mut c| c.call(&Request::Status))
            .ok()
            .and_then(|r| match r {
                Response::Status(s) => s.dataplane.map(|d| d.pid),
                _ => None,
            });
        if answering == Some(self.pid) {
            return;
        }
        let threads = Threads {
            accept: "wsedge-control",
            peer: "wsedge-ctl-peer",
        };
        let served = self.clone();
        let bound = Server::bind_replacing(&path, &control)
            .and_then(|server| server.spawn(threads, move |request| served.handle(request)));
        match bound {
            Ok(()) => {
                tracing::warn!(path = %path.display(), "control socket bound again after the failed upgrade")
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot bind the control socket again after the failed upgrade")
            }
        }
    }

    /// The workers' reports for a status: all of them, or, once a newer generation took
    /// over, those still running (a retiring worker exits when its last connection ends).
    pub(super) fn status_reports(&self) -> Result<Vec<WorkerReport>, Failure> {
        if !self.upgrade.retired() {
            return self.reports();
        }
        let pending: Vec<_> = self
            .mailboxes
            .iter()
            .filter_map(|m| {
                let (tx, rx) = mpsc::channel();
                m.send(Command::Report { reply: tx }).then_some(rx)
            })
            .collect();
        let deadline = Instant::now() + WORKER_REPLY_TIMEOUT;
        Ok(pending
            .into_iter()
            .filter_map(|rx| {
                rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    .ok()
            })
            .collect())
    }
}
