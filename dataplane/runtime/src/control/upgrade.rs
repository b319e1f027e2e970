//! What the binary upgrade (`crate::upgrade`) reads of the control plane: the
//! configuration in force (handed to the next generation) and the workers' mailboxes (to
//! retire them).

use std::sync::mpsc;
use std::time::Instant;

use wsedge_command::Config;
use wsedge_command::wire::server::Failure;

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
