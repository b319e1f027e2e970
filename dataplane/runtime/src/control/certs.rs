//! The certificates in force, for the control socket and the metrics: `certs` lists them
//! (names, issuer, expiry) and `certs_reload` (or SIGHUP of the dataplane) reads their files
//! again.
//!
//! A reload builds a whole new [`wsedge_tls::CertStore`] from the configuration in force,
//! keeping each listener's session ticketer and cache, so tickets issued before it still
//! resume after it on any worker. If any file is missing or broken, the error names it and
//! nothing changes: the store in force keeps serving. Otherwise every worker gets the new
//! listeners through its mailbox and uses them for handshakes that start after; a
//! connection already up keeps the configuration it started with, so none is dropped.

use std::sync::mpsc;
use std::time::Instant;

use wsedge_command::wire::ErrorKind;
use wsedge_command::wire::server::Failure;
use wsedge_tls::{CertInfo, CertStore};

use super::{Shared, WORKER_REPLY_TIMEOUT};
use crate::worker::mailbox::Command;

impl Shared {
    /// Every certificate in force.
    pub(super) fn certs(&self) -> Vec<CertInfo> {
        views(&self.current().certs)
    }

    /// Reads the certificate files of the configuration in force again and hands the new
    /// listeners to every worker. Returns what now serves and how many workers confirmed.
    pub(crate) fn reload_certs(&self) -> Result<(Vec<CertInfo>, usize), Failure> {
        let mut current = self.current();
        let source = current.source.clone();
        let store = current.certs.reload(&current.config.tls).map_err(|e| {
            tracing::warn!(error = %e, "certificate reload refused; the certificates in force keep serving");
            Failure::new(ErrorKind::InvalidConfig, format!("{source}: {e}"))
        })?;
        let mut pending = Vec::with_capacity(self.mailboxes.len());
        for index in 0..self.mailboxes.len() {
            let (reply, rx) = mpsc::channel();
            let command = Command::Certificates {
                listeners: store.listeners().to_vec(),
                reply,
            };
            if !self.send(index, command) {
                return Err(Failure::new(
                    ErrorKind::Unavailable,
                    format!("worker {index} is not running"),
                ));
            }
            pending.push(rx);
        }
        let shown = views(&store);
        current.certs = store;
        drop(current);
        let deadline = Instant::now() + WORKER_REPLY_TIMEOUT;
        let confirmed = pending
            .into_iter()
            .filter(|rx| {
                rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    .is_ok()
            })
            .count();
        tracing::info!(
            certificates = shown.len(),
            workers = confirmed,
            "certificates reloaded"
        );
        Ok((shown, confirmed))
    }

    /// `(id, seconds to expiry)` of every certificate in force, for the metrics.
    pub(super) fn cert_expiry(&self, unix_now: i64) -> Vec<(String, i64)> {
        self.current()
            .certs
            .certificates()
            .map(|c| (c.id.clone(), c.seconds_to_expiry(unix_now)))
            .collect()
    }
}

fn views(store: &CertStore) -> Vec<CertInfo> {
    store.certificates().cloned().collect()
}
