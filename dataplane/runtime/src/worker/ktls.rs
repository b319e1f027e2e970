//! The worker's side of kernel TLS (kTLS): when the session hands a direction to splice and a
//! side still runs TLS in user space, the side's transport decides
//! (`Transport::splice_plan`) and the worker applies it here: the keys go to the kernel
//! (`wsedge_ring::ktls`), the side's transport becomes `Transport::Ktls` (bytes pass
//! unchanged) and the splice starts; or it waits until the records user space still writes
//! (the 101, session tickets) are out; or the direction relays buffered, logged once per
//! route with the reason.
//!
//! After the hand-off the kernel opens the client's records: one that is not application data
//! (an alert, `close_notify`, a post-handshake message) fails a read or a splice with
//! `EIO`/`EINVAL`. That ends the client's direction like an EOF, counted
//! (`ktls_control_records`), never as a socket error.

use wsedge_proto::session::{CloseReason, Input, Side};
use wsedge_ring::ktls::{self, Crypto};

use super::{Deferred, Worker};
use crate::transport::SplicePlan;

/// What became of a splice request under TLS.
enum Step {
    /// Start splicing now.
    Splice,
    /// Asked again after the next send completes.
    Wait,
    /// Relay buffered.
    Buffered,
    /// The hand-off broke the connection (keys taken out of user space, refused by the
    /// kernel): it ends.
    Broken,
}

impl Worker {
    /// The session asked to splice the bytes from `from` (an output being applied).
    pub(super) fn splice_requested(&mut self, slot: usize, from: Side) {
        let id = self.conns[slot].id;
        match self.ktls_step(slot) {
            Step::Splice => self.splice_start(slot, from),
            Step::Wait => self.splice_wait(slot, from),
            Step::Buffered => self.deferred.push((id, Deferred::SpliceUnavailable(from))),
            Step::Broken => self.deferred.push((id, Deferred::Abort(CloseReason::Tls))),
        }
    }

    /// A send completed on the connection: splices that waited for an idle socket try again.
    pub(super) fn ktls_retry(&mut self, slot: usize) {
        for from in [Side::Client, Side::Origin] {
            let Some(c) = self.conns.get_mut(slot) else {
                return;
            };
            if !c.sides[from.index()].splice_waiting || c.session.is_closed() {
                continue;
            }
            c.sides[from.index()].splice_waiting = false;
            match self.ktls_step(slot) {
                Step::Splice => self.splice_start(slot, from),
                Step::Wait => self.splice_wait(slot, from),
                Step::Buffered => self.feed(slot, Input::SpliceUnavailable(from)),
                Step::Broken => self.feed(slot, Input::Abort(CloseReason::Tls)),
            }
        }
    }

    /// The splice from `from` waits for a send to complete; records rustls still holds are
    /// queued, so that one will.
    fn splice_wait(&mut self, slot: usize, from: Side) {
        self.conns[slot].sides[from.index()].splice_waiting = true;
        for side in [Side::Client, Side::Origin] {
            self.tls_flush(slot, side);
        }
    }

    /// Decides for both sides of the connection, and hands off the ones that can.
    fn ktls_step(&mut self, slot: usize) -> Step {
        let kernel = ktls::support();
        let c = &self.conns[slot];
        let plans = [Side::Client, Side::Origin].map(|side| {
            let io = &c.sides[side.index()];
            io.transport
                .splice_plan(io.queue.is_empty(), io.recv.is_some(), kernel.is_ok())
        });
        if let Some(why) = plans.iter().find_map(|p| match p {
            SplicePlan::Buffered(why) => Some(*why),
            _ => None,
        }) {
            self.say_once(slot, false, || {
                let found = kernel
                    .as_ref()
                    .err()
                    .map_or(String::new(), |u| u.to_string());
                why.describe(&found)
            });
            return Step::Buffered;
        }
        if plans.contains(&SplicePlan::Wait) {
            return Step::Wait;
        }
        for side in [Side::Client, Side::Origin] {
            if plans[side.index()] == SplicePlan::HandOff
                && let Some(step) = self.hand_off(slot, side)
            {
                return step;
            }
        }
        Step::Splice
    }

    /// Hands one side's keys to the kernel; `None` when it worked.
    fn hand_off(&mut self, slot: usize, side: Side) -> Option<Step> {
        let io = &mut self.conns[slot].sides[side.index()];
        let fd = io.fd;
        // The TLS layer first: if the kernel refuses it, nothing changed on the socket and
        // rustls still holds the keys, so the connection goes on buffered.
        if let Err(e) = ktls::set_ulp(fd) {
            self.stats.ktls_failures += 1;
            tracing::warn!(worker = self.index, error = %e, "kTLS refused; this connection relays buffered");
            return Some(Step::Buffered);
        }
        let installed = io
            .transport
            .hand_off()
            .map_err(|e| e.to_string())
            .and_then(|keys| {
                let kernel = |i: &wsedge_tls::CryptoInfo| {
                    Crypto::new(i.version, i.cipher_type, &i.iv, &i.key, &i.salt, i.rec_seq)
                };
                let (tx, rx) = (kernel(&keys.tx)?, kernel(&keys.rx)?);
                ktls::set_crypto(fd, ktls::Direction::Tx, &tx).map_err(|e| e.to_string())?;
                ktls::set_crypto(fd, ktls::Direction::Rx, &rx).map_err(|e| e.to_string())
            });
        match installed {
            Ok(()) => {
                self.stats.ktls_handoffs += 1;
                self.say_once(slot, true, String::new);
                None
            }
            Err(e) => {
                // rustls gave its keys up: the connection cannot go on.
                self.stats.ktls_failures += 1;
                tracing::warn!(worker = self.index, error = %e, "kTLS hand-off failed; closing the connection");
                Some(Step::Broken)
            }
        }
    }

    /// Logs, once per route and worker, that its TLS connections splice through kTLS, or
    /// why they relay buffered.
    fn say_once(&mut self, slot: usize, used: bool, why: impl FnOnce() -> String) {
        let Some(route) = self.conns[slot].session.route() else {
            return;
        };
        if !self.ktls_said.insert((route.name.clone(), used)) {
            return;
        }
        if used {
            tracing::info!(worker = self.index, route = %route.name, "kTLS: TLS handed to the kernel after the handshake; this route's wss:// connections splice");
        } else {
            tracing::info!(worker = self.index, route = %route.name, reason = %why(), "splice under TLS falls back to buffered");
        }
    }

    /// A read or splice from `side` failed with `errno`: on a kTLS side, a record that is
    /// not application data ended that direction (an EOF, counted). True when handled.
    pub(super) fn ktls_read_failed(&mut self, slot: usize, side: Side, errno: i32) -> bool {
        let Some(c) = self.conns.get_mut(slot) else {
            return false;
        };
        let io = &mut c.sides[side.index()];
        if !io.transport.is_ktls() || !ktls::is_control_record(errno) {
            return false;
        }
        // As at an EOF, the direction's splice (if it was one) is over.
        io.splice = None;
        self.stats.ktls_control_records += 1;
        tracing::debug!(worker = self.index, client = %c.session.peer(), errno, "kTLS: a non-data record (alert, close_notify or post-handshake message) ends the client's direction");
        self.feed(slot, Input::Eof(side));
        true
    }
}
