//! A connection's reads: a head read's completion goes to the session with the worker's
//! tables (routing, the firewall, functions), a stream read's completion brings bytes
//! through the side's transport, an EOF, an error or the end of a multishot read; and the
//! reads that stopped for want of provided buffers are re-armed once buffers are back.

use wsedge_proto::firewall::TlsFacts;
use wsedge_proto::session::{Env, FirewallGate, HeadContext, Input, Side};
use wsedge_ring::Completion;

use super::Worker;
use super::conn::{Purpose, owner};

impl Worker {
    /// A head read completed: the buffer goes back to the session with what it got.
    pub(super) fn on_head(&mut self, slot: usize, side: Side, buf: Vec<u8>, result: i32) {
        let Some((buf, result)) = self.tls_head(slot, side, buf, result) else {
            return;
        };
        if side == Side::Origin {
            return self.feed(
                slot,
                Input::HeadRead {
                    side,
                    buf,
                    result,
                    cx: None,
                },
            );
        }
        let now = self.now();
        let conn = &mut self.conns[slot];
        let public = conn.id.public(self.index);
        let mut cx = HeadContext {
            routes: &self.settings.table,
            route_list: &self.routes,
            gate: Some(FirewallGate {
                firewall: &self.settings.firewall,
                state: &mut self.fw_state,
                unix_now: wsedge_command::unix_now(),
                trace: &mut self.fw_trace,
                tls: conn.sides[0].transport.tls_facts().map(firewall_facts),
            }),
            functions: &mut self.functions.host,
            conn: public,
            proto: conn.sides[0].transport.proto(),
            sni: conn.sides[0]
                .transport
                .tls_facts()
                .and_then(|f| f.sni.as_deref()),
        };
        let mut env = Env {
            now,
            cfg: &self.settings.session,
            out: &mut self.out,
            bus: &mut self.bus,
            conn: public,
            worker: self.index,
        };
        conn.session.handle(
            Input::HeadRead {
                side,
                buf,
                result,
                cx: Some(&mut cx),
            },
            &mut env,
        );
        self.apply_outputs(slot);
    }

    /// A stream read's completion: bytes (through the side's transport), an EOF, an error,
    /// or its end. Its op stays the side's read until the final completion is handled, so a
    /// stop the session asks for meanwhile is a cancel (a no-op on an op that has ended).
    pub(super) fn on_recv(&mut self, slot: usize, side: Side, c: Completion) {
        let i = side.index();
        let ended = !c.more;
        match (c.result, c.buf) {
            (n, Some(buf)) if n > 0 && !self.conns[slot].sides[i].transport.bytes_pass() => {
                self.tls_recv(slot, side, buf, n as usize);
            }
            (n, Some(buf)) if n > 0 && self.ring_is_low() => {
                // Spilled: copied out and the buffer given back at once (see ring_is_low).
                self.stats.reads_spilled += 1;
                let mut data = self.ring.buffers().bytes(buf, n as usize).to_vec();
                self.ring.buffers().give_back(buf);
                self.feed(
                    slot,
                    Input::RecvOwned {
                        from: side,
                        data: &mut data,
                    },
                );
            }
            (n, Some(buf)) if n > 0 => {
                let now = self.now();
                let conn = &mut self.conns[slot];
                let data = self.ring.buffers().bytes_mut(buf, n as usize);
                let mut env = Env {
                    now,
                    cfg: &self.settings.session,
                    out: &mut self.out,
                    bus: &mut self.bus,
                    conn: conn.id.public(self.index),
                    worker: self.index,
                };
                conn.session.handle(
                    Input::Recv {
                        from: side,
                        buf,
                        data,
                    },
                    &mut env,
                );
                self.apply_outputs(slot);
            }
            (0, _) => {
                let io = &mut self.conns[slot].sides[i];
                io.recv = None;
                io.stopping = false;
                return self.feed(slot, Input::Eof(side));
            }
            (e, _) if -e == libc::ENOBUFS => {
                // The buffer ring ran dry: re-armed once buffers come back (the session's
                // read stays on meanwhile).
                let c = &mut self.conns[slot];
                if !c.sides[i].stopping {
                    self.stats.reads_starved += 1;
                    c.sides[i].recv = None;
                    self.starved.push_back((c.id, side));
                    return;
                }
            }
            (e, _) if -e == libc::ECANCELED => {}
            (e, buf) if e < 0 => {
                if let Some(buf) = buf {
                    self.ring.buffers().give_back(buf);
                }
                let io = &mut self.conns[slot].sides[i];
                io.recv = None;
                io.stopping = false;
                if self.ktls_read_failed(slot, side, -e) {
                    return;
                }
                return self.feed(slot, Input::Failed(side));
            }
            (_, Some(buf)) => self.ring.buffers().give_back(buf),
            _ => {}
        }
        if !ended || !self.conns.contains(slot) {
            return;
        }
        let conn = &mut self.conns[slot];
        let io = &mut conn.sides[i];
        io.recv = None;
        if io.stopping {
            io.stopping = false;
            self.feed(slot, Input::ReadEnded(side));
        } else if !conn.session.is_closed() {
            // The kernel ended a read the session still wants (its budget reached, a
            // rationed one-buffer read done): arm the next.
            self.arm_read(slot, side);
        }
    }

    /// Arms `side`'s stream read. Normally a multishot recv the kernel ends at the session's
    /// read budget (where it can: [`wsedge_ring::recv_limit`]), so a flooding side cannot
    /// fill the shared buffer ring far past its backpressure before the session's stop
    /// lands. While reads wait for buffers, buffers are rationed: the
    /// side joins the back of that queue, served in turn one buffer at a time
    /// ([`Worker::rearm_starved`]).
    pub(super) fn arm_read(&mut self, slot: usize, side: Side) {
        let conn = &mut self.conns[slot];
        if !self.starved.is_empty() {
            self.starved.push_back((conn.id, side));
            return;
        }
        let limit = match conn.session.read_budget(side, &self.settings.session) {
            Some(budget) if self.recv_limit => budget.clamp(1, u64::from(u32::MAX)) as u32,
            _ => 0,
        };
        let io = &mut conn.sides[side.index()];
        io.recv = Some(
            self.ring
                .recv_multi(owner(conn.id, Purpose::Recv, side), io.fd, limit),
        );
        conn.ops += 1;
    }

    /// Whether at most a sixty-fourth of the provided buffers (at least one) is left in the
    /// ring: any reserve keeps the worker from wedging, a small one copies less. Bytes read
    /// then are copied out and their buffer given back at once, so relayed bytes waiting for a
    /// slow peer can never hold every buffer: if they could, no side could be read any more
    /// (not even the origin whose answers would unblock those sends) and the whole worker
    /// would wedge (seen: an unbounded flood through 350 connections, 2 x 64 KiB in flight
    /// each, against 1,024 buffers). The copies stay bounded by `max_in_flight` per side.
    pub(super) fn ring_is_low(&mut self) -> bool {
        let ring = self.ring.buffers();
        let count = usize::from(ring.count());
        count.saturating_sub(ring.held()) <= (count / 64).max(1)
    }

    /// Serves the reads waiting for buffers, oldest first: as many as there are free
    /// buffers, each a one-shot recv that can take one buffer at most. A side served comes
    /// back to the queue's end for its next buffer while others wait, so under a flood every
    /// connection gets its turn (with re-armed multishot reads the first few in line took
    /// every returned buffer and the rest never got one); once nobody waits, reads are
    /// multishot again.
    pub(super) fn rearm_starved(&mut self) {
        let ring = self.ring.buffers();
        let mut free = usize::from(ring.count()).saturating_sub(ring.held());
        while free > 0 {
            let Some((id, side)) = self.starved.pop_front() else {
                return;
            };
            let Some(slot) = self.live_slot(id) else {
                continue;
            };
            let c = &mut self.conns[slot];
            let io = &mut c.sides[side.index()];
            if io.recv.is_none() && io.fd >= 0 && !c.session.is_closed() {
                io.recv = Some(self.ring.recv_one(owner(id, Purpose::Recv, side), io.fd));
                c.ops += 1;
                self.stats.reads_rationed += 1;
                free -= 1;
            }
        }
    }
}

/// What the firewall's TLS criteria see of a finished handshake.
fn firewall_facts(f: &wsedge_tls::HandshakeFacts) -> TlsFacts<'_> {
    TlsFacts {
        sni: f.sni.as_deref(),
        version: match f.version {
            wsedge_tls::TlsVersion::Tls12 => "1.2",
            wsedge_tls::TlsVersion::Tls13 => "1.3",
        },
        client_cert: f.client_cert.as_str(),
    }
}
