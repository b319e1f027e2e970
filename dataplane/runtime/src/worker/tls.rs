//! The worker's side of a TLS transport (`crate::transport::tls`): the steps the session
//! never sees. A head read that only carried handshake records is read again without
//! waking the session; the records the TLS server writes by itself (handshake flight,
//! tickets, alerts, `close_notify`) are queued on the socket; a finished handshake is
//! counted; a failed one is counted by kind and, once its alert is written, ends the
//! connection with `CloseReason::Tls`.

use wsedge_proto::chunk::BufId;
use wsedge_proto::session::{CloseReason, Env, Input, Side};
use wsedge_ring::sys;

use super::Worker;
use super::conn::{Purpose, owner};
use crate::transport::Transport;
use crate::transport::tls::Delivery;

impl Worker {
    /// A head read completed on a TLS side: its ciphertext becomes plaintext. Returns what
    /// the session gets, or `None` when this completion is not the session's (handshake
    /// only: read again; failed: the connection is ending).
    pub(super) fn tls_head(
        &mut self,
        slot: usize,
        side: Side,
        mut buf: Vec<u8>,
        result: i32,
    ) -> Option<(Vec<u8>, i32)> {
        let c = &mut self.conns[slot];
        let io = &mut c.sides[side.index()];
        let Transport::Tls(t) = &mut io.transport else {
            return Some((buf, result));
        };
        if result <= 0 || t.in_kernel() {
            return Some((buf, result));
        }
        let outcome = t.received_head(&mut buf);
        self.tls_flush(slot, side);
        match outcome {
            Ok(0) => {
                let c = &mut self.conns[slot];
                let io = &mut c.sides[side.index()];
                let max = self.settings.session.head_limits.max_head_bytes;
                io.recv =
                    Some(
                        self.ring
                            .recv_head(owner(c.id, Purpose::Recv, side), io.fd, buf, max),
                    );
                c.ops += 1;
                None
            }
            Ok(n) => {
                self.tls_handshake_done(slot, side);
                Some((buf, i32::try_from(n).unwrap_or(i32::MAX)))
            }
            Err(()) => {
                self.tls_check_failed(slot, side);
                None
            }
        }
    }

    /// A stream read's ciphertext on a TLS side: the plaintext goes to the session.
    pub(super) fn tls_recv(&mut self, slot: usize, side: Side, buf: BufId, n: usize) {
        let now = self.now();
        let size = self.ring.buffers().size() as usize;
        let low = self.ring_is_low();
        let c = &mut self.conns[slot];
        let Transport::Tls(t) = &mut c.sides[side.index()].transport else {
            return;
        };
        let data = self.ring.buffers().bytes_mut(buf, size);
        let delivery = match t.received(data, n) {
            // Spilled, as a plain read is (reads.rs, ring_is_low): relayed as owned bytes and
            // the buffer given back at once.
            Ok(Delivery::InPlace(m)) if m > 0 && low => Ok(Delivery::Owned(data[..m].to_vec())),
            d => d,
        };
        let mut env = Env {
            now,
            cfg: &self.settings.session,
            out: &mut self.out,
            bus: &mut self.bus,
            conn: c.id.public(self.index),
            worker: self.index,
        };
        match delivery {
            Ok(Delivery::InPlace(0)) | Err(()) => self.ring.buffers().give_back(buf),
            Ok(Delivery::InPlace(m)) => {
                let data = &mut data[..m];
                c.session.handle(
                    Input::Recv {
                        from: side,
                        buf,
                        data,
                    },
                    &mut env,
                );
                self.apply_outputs(slot);
            }
            Ok(Delivery::Owned(mut plain)) => {
                self.ring.buffers().give_back(buf);
                c.session.handle(
                    Input::RecvOwned {
                        from: side,
                        data: &mut plain,
                    },
                    &mut env,
                );
                self.apply_outputs(slot);
            }
        }
        if self.conns.contains(slot) {
            self.tls_flush(slot, side);
            self.tls_check_failed(slot, side);
        }
    }

    /// Queues what the side's TLS server has to write by itself.
    pub(super) fn tls_flush(&mut self, slot: usize, side: Side) {
        let io = &mut self.conns[slot].sides[side.index()];
        if let Transport::Tls(t) = &mut io.transport
            && let Some(chunk) = t.flush()
        {
            io.queue.push(chunk);
            self.kick_send(slot, side);
        }
    }

    /// After a send on a TLS side: a shutdown that waited for `close_notify`, or the end of
    /// a failed connection once its alert is out.
    pub(super) fn tls_sent(&mut self, slot: usize, side: Side) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let io = &mut c.sides[side.index()];
        if let Transport::Tls(t) = &mut io.transport
            && t.shutdown_pending
            && io.queue.is_empty()
        {
            t.shutdown_pending = false;
            sys::shutdown(io.fd, libc::SHUT_WR);
        }
        self.tls_check_failed(slot, side);
        if self.conns.contains(slot) {
            self.ktls_retry(slot);
        }
    }

    /// A failed TLS ends the connection once nothing is left to write (the alert): counted
    /// by kind, and `CloseReason::Tls` for the session.
    pub(super) fn tls_check_failed(&mut self, slot: usize, side: Side) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let io = &mut c.sides[side.index()];
        let Transport::Tls(t) = &mut io.transport else {
            return;
        };
        let Some(e) = t.failure() else {
            return;
        };
        if t.failure_reported || !io.queue.is_empty() || c.session.is_closed() {
            return;
        }
        let e = e.clone();
        t.failure_reported = true;
        if t.is_origin() {
            // The origin's certificate or handshake: a 502 for the client, and why in the log.
            tracing::warn!(worker = self.index, client = %c.session.peer(), error = %e, "TLS to the origin failed");
            return self.feed(slot, Input::Abort(CloseReason::OriginTls));
        }
        let kind = e.kind().as_str();
        tracing::debug!(worker = self.index, client = %c.session.peer(), error = %e, "TLS failed");
        *self.stats.tls_errors.entry(kind).or_default() += 1;
        self.feed(slot, Input::Abort(CloseReason::Tls));
    }

    /// The handshake finished: counted once.
    fn tls_handshake_done(&mut self, slot: usize, side: Side) {
        let io = &mut self.conns[slot].sides[side.index()];
        let Transport::Tls(t) = &mut io.transport else {
            return;
        };
        if t.handshake_counted || t.is_origin() {
            return;
        }
        t.handshake_counted = true;
        if let Some(facts) = t.facts() {
            self.stats.tls_handshakes += 1;
            if facts.resumed {
                self.stats.tls_resumed += 1;
            }
        }
    }
}
