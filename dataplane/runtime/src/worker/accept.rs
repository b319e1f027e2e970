//! Accepting: a multishot accept on each of the worker's listeners, a session for each new
//! socket, and a pause (not a spin) when the process runs out of descriptors.

use std::os::fd::RawFd;

use wsedge_proto::session::{CloseReason, Session};
use wsedge_ring::{OpId, Owner, sys};

use super::conn::Conn;
use super::{OWNER_ACCEPT, TimerKey, Worker};
use crate::conn_id::{ConnId, next_generation};
use crate::transport::Transport;

/// Back-off after the process runs out of descriptors at accept.
const ACCEPT_BACKOFF_MS: u64 = 100;

/// One of the worker's listening sockets.
#[derive(Debug)]
pub(super) struct Listener {
    fd: RawFd,
    /// Its multishot accept, while armed.
    op: Option<OpId>,
    /// The `[[tls_listener]]` (index into the settings' TLS listeners) if it serves TLS.
    tls: Option<usize>,
}

impl Listener {
    pub(super) fn new(fd: RawFd, tls: Option<usize>) -> Listener {
        Listener { fd, op: None, tls }
    }
}

impl Worker {
    /// Arms the accept of every listener that has none (unless draining or backing off).
    pub(super) fn arm_listeners(&mut self) {
        if !self.accepting || self.accept_paused {
            return;
        }
        for (i, listener) in self.listeners.iter_mut().enumerate() {
            if listener.op.is_none() && listener.fd >= 0 {
                listener.op = Some(
                    self.ring
                        .accept_multi(Owner(OWNER_ACCEPT | i as u64), listener.fd),
                );
            }
        }
    }

    /// Stops accepting: each listener's multishot accept is cancelled, and its fd closed
    /// once that accept's last completion has arrived (at once if none is armed), so the
    /// kernel stops queueing connections for this worker (unless another process holds the
    /// same socket: a new generation after an upgrade). Closing the fd while the accept is
    /// still armed would not stop it (the operation holds the file), and a submission still
    /// in the backlog would name a number that may have been reused.
    pub(super) fn close_listeners(&mut self) {
        for listener in &mut self.listeners {
            match listener.op {
                Some(op) => self.ring.cancel(op),
                None if listener.fd >= 0 => {
                    sys::close(listener.fd);
                    listener.fd = -1;
                }
                None => {}
            }
        }
    }

    /// Whether no accept is armed any more.
    pub(super) fn accepts_ended(&self) -> bool {
        self.listeners.iter().all(|l| l.op.is_none())
    }

    /// At exit: cancels what is armed and closes every listener's fd at once (the ring,
    /// dropped next, reaps the cancelled operations).
    pub(super) fn drop_listeners(&mut self) {
        self.close_listeners();
        for listener in &mut self.listeners {
            if listener.fd >= 0 {
                sys::close(listener.fd);
                listener.fd = -1;
            }
        }
    }

    pub(super) fn on_accept(&mut self, listener: usize, res: i32, more: bool) {
        if !more && let Some(l) = self.listeners.get_mut(listener) {
            l.op = None;
            if !self.accepting && l.fd >= 0 {
                sys::close(l.fd);
                l.fd = -1;
            }
        }
        if res < 0 {
            match -res {
                libc::ECANCELED => {}
                libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => {
                    self.stats.accept_errors += 1;
                    if !self.accept_starved {
                        self.accept_starved = true;
                        tracing::warn!(
                            worker = self.index,
                            error = %std::io::Error::from_raw_os_error(-res),
                            "out of descriptors or memory at accept; pausing accept {ACCEPT_BACKOFF_MS} ms"
                        );
                    }
                    self.pause_accepting();
                }
                e => {
                    self.stats.accept_errors += 1;
                    tracing::warn!(worker = self.index, error = %std::io::Error::from_raw_os_error(e), "accept failed");
                }
            }
            return;
        }
        let fd = res;
        self.stats.accepted += 1;
        if self.accept_starved {
            self.accept_starved = false;
            tracing::info!(
                worker = self.index,
                "accepting again: descriptors are available"
            );
        }
        // A connection accepted after accepting stopped (its completion was on its way
        // when the accept was cancelled) is a client like any other: served, not reset.
        if self.conns.len() >= self.settings.max_connections {
            *self
                .stats
                .closed
                .entry(CloseReason::Overloaded.as_str())
                .or_default() += 1;
            sys::close(fd);
            return;
        }
        let Ok(peer) = sys::peer_addr(fd) else {
            // Gone between accept and now.
            sys::close(fd);
            return;
        };
        let now = self.now();
        self.next_generation = next_generation(self.next_generation);
        let seed = self.random();
        let accepted_us = self.now_us();
        let session = Session::accepted(now, &self.settings.session, peer, seed, &mut self.out);
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        let id = ConnId::new(slot, self.next_generation);
        let mut conn = Conn::new(id, session, fd, accepted_us);
        conn.handshaking = true;
        self.handshaking += 1;
        if let Some(tls) = self
            .listeners
            .get(listener)
            .and_then(|l| l.tls)
            .and_then(|i| self.settings.tls.get(i))
        {
            conn.sides[0].transport = Transport::tls(tls);
        }
        entry.insert(conn);
        // Its first output: the head read.
        self.apply_outputs(slot);
    }

    /// Stops arming accepts for a while; the drain and timers go on.
    fn pause_accepting(&mut self) {
        if !self.accept_paused {
            self.accept_paused = true;
            let at = self.now() + ACCEPT_BACKOFF_MS;
            self.wheel.insert(at, TimerKey::AcceptResume.pack());
        }
    }
}
