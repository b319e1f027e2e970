//! A connection in the worker's slab: its session, and the I/O state the driver keeps for
//! each of its sockets. Outputs of the session become ring operations here
//! ([`Worker::apply`]); completions of those operations become its inputs
//! ([`Worker::on_conn_completion`]). Nothing is decided here that the session could decide.

use std::os::fd::RawFd;

use wsedge_proto::session::{
    CloseReason, ConnectFailure, Env, Input, Metric, Output, PeerTransport, Session, Side,
};
use wsedge_proto::wheel::TimerId;
use wsedge_ring::{Completion, OpData, OpId, OpKind, Owner, SendQueue, sys};

use super::splice::SpliceDir;
use super::{Deferred, Worker};
use crate::access_log::Entry;
use crate::conn_id::ConnId;
use crate::transport::{Sealed, Transport};

/// What an operation of a connection was for (the top byte of its owner tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Purpose {
    /// A head read or the stream read of a side.
    Recv = 1,
    Send = 2,
    Connect = 3,
    /// The poll watching the client while the origin answers.
    Watch = 4,
    /// The splice relay's poll for bytes from a side.
    Splice = 5,
}

pub(super) fn owner(id: ConnId, purpose: Purpose, side: Side) -> Owner {
    Owner(id.owner(((purpose as u8) << 1) | side.index() as u8))
}

fn purpose_of(tag: u8) -> (Option<Purpose>, Side) {
    let side = if tag & 1 == 0 {
        Side::Client
    } else {
        Side::Origin
    };
    let purpose = match tag >> 1 {
        1 => Some(Purpose::Recv),
        2 => Some(Purpose::Send),
        3 => Some(Purpose::Connect),
        4 => Some(Purpose::Watch),
        5 => Some(Purpose::Splice),
        _ => None,
    };
    (purpose, side)
}

/// The driver's state of one socket of a connection.
#[derive(Debug, Default)]
pub(super) struct SideIo {
    /// -1 while there is no socket.
    pub(super) fd: RawFd,
    pub(super) queue: SendQueue,
    pub(super) transport: Transport,
    /// The head read or stream read armed on this socket.
    pub(super) recv: Option<OpId>,
    /// That read is being cancelled (the session asked to stop).
    pub(super) stopping: bool,
    /// A side's one handshake operation: the connect on the origin side, the watch for the
    /// client leaving while the origin answers on the client side (one field for both:
    /// every connection keeps this record, idle ones too).
    pub(super) pending: Option<OpId>,
    /// The splice relay of the bytes coming from this socket.
    pub(super) splice: Option<Box<SpliceDir>>,
    /// That splice waits for TLS records to be written before the kTLS hand-off (`ktls.rs`).
    pub(super) splice_waiting: bool,
}

impl SideIo {
    fn new(fd: RawFd) -> SideIo {
        SideIo {
            fd,
            ..SideIo::default()
        }
    }
}

/// One connection.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) id: ConnId,
    pub(super) session: Session,
    pub(super) sides: [SideIo; 2],
    /// Operations in flight (a multishot one counts once, until its final completion).
    pub(super) ops: u16,
    /// A client accepted and not yet answered (counted in `Worker::handshaking`).
    pub(super) handshaking: bool,
    /// When it was accepted, in µs since the worker started, modulo 2^32 (71 minutes: a
    /// handshake ends long before; see `handshake_took`).
    accepted_us: u32,
    /// Its one wheel entry (the wheel keeps the deadline).
    pub(super) timer: Option<TimerId>,
}

impl Conn {
    pub(super) fn new(id: ConnId, session: Session, fd: RawFd, accepted_us: u64) -> Conn {
        Conn {
            id,
            session,
            sides: [SideIo::new(fd), SideIo::new(-1)],
            ops: 0,
            handshaking: false,
            accepted_us: accepted_us as u32,
            timer: None,
        }
    }

    /// µs from its accept to `now_us` (both in µs since the worker started).
    pub(super) fn handshake_took(&self, now_us: u64) -> u64 {
        u64::from((now_us as u32).wrapping_sub(self.accepted_us))
    }
}

impl Worker {
    /// Feeds one input to the session in `slot`, then applies its outputs and what they
    /// produced in turn.
    pub(super) fn feed(&mut self, slot: usize, input: Input<'_>) {
        let now = self.now();
        let c = &mut self.conns[slot];
        let mut env = Env {
            now,
            cfg: &self.settings.session,
            out: &mut self.out,
            bus: &mut self.bus,
            conn: c.id.public(self.index),
            worker: self.index,
        };
        c.session.handle(input, &mut env);
        self.apply_outputs(slot);
    }

    /// Applies the outputs the session in `slot` just gave, then feeds the inputs applying
    /// them produced, and re-arms its timer.
    pub(super) fn apply_outputs(&mut self, slot: usize) {
        let mut outputs = std::mem::take(&mut self.out);
        for output in outputs.drain(..) {
            self.apply(slot, output);
        }
        self.out = outputs;
        while let Some((id, deferred)) = self.deferred.pop() {
            let Some(slot) = self.live_slot(id) else {
                continue;
            };
            // A seal the transport refused (not for want of keys) failed the side.
            let refused = match deferred {
                Deferred::Sent { to, .. } => Some(to),
                _ => None,
            };
            let input = match deferred {
                Deferred::ConnectFailed => Input::Connected(Err(ConnectFailure::Local)),
                Deferred::ReadEnded(side) => Input::ReadEnded(side),
                Deferred::DrainBy(deadline) => Input::DrainBy {
                    deadline,
                    reason: if self.exit_when_empty {
                        CloseReason::Shutdown
                    } else {
                        CloseReason::Drained
                    },
                },
                Deferred::SpliceUnavailable(side) => Input::SpliceUnavailable(side),
                Deferred::Abort(reason) => Input::Abort(reason),
                Deferred::Sent { to, relayed, own } => Input::Sent { to, relayed, own },
            };
            self.feed(slot, input);
            if let Some(side) = refused
                && self.conns.contains(slot)
            {
                self.tls_check_failed(slot, side);
            }
        }
        if self.conns.contains(slot) {
            self.rearm_timer(slot);
        }
    }

    /// Turns one output into operations.
    fn apply(&mut self, slot: usize, output: Output) {
        let c = &mut self.conns[slot];
        let id = c.id;
        match output {
            Output::ReadHead { side, buf } => {
                let io = &mut c.sides[side.index()];
                let max = self.settings.session.head_limits.max_head_bytes;
                io.transport.head_armed(buf.len());
                io.recv =
                    Some(
                        self.ring
                            .recv_head(owner(id, Purpose::Recv, side), io.fd, buf, max),
                    );
                io.stopping = false;
                c.ops += 1;
            }
            Output::Connect(addr) => self.connect(slot, addr),
            Output::WatchClient => {
                let io = &mut c.sides[0];
                if io.pending.is_none() {
                    let op = self.ring.poll(
                        owner(id, Purpose::Watch, Side::Client),
                        io.fd,
                        libc::POLLRDHUP as u32,
                    );
                    io.pending = Some(op);
                    c.ops += 1;
                }
            }
            Output::UnwatchClient => {
                let op = c.sides[0].pending;
                self.cancel(op);
            }
            Output::Send { to, chunk } => {
                let io = &mut c.sides[to.index()];
                match io.transport.seal(chunk, self.ring.buffers()) {
                    Sealed::Chunk(chunk) => {
                        io.queue.push(chunk);
                        self.kick_send(slot, to);
                    }
                    Sealed::Dropped(w) => self.deferred.push((
                        id,
                        Deferred::Sent {
                            to,
                            relayed: w.relayed,
                            own: w.own,
                        },
                    )),
                }
            }
            Output::Read(side) => {
                let io = &mut c.sides[side.index()];
                if io.recv.is_none() && io.fd >= 0 {
                    io.stopping = false;
                    self.arm_read(slot, side);
                }
            }
            Output::StopRead(side) => {
                let io = &mut c.sides[side.index()];
                match io.recv {
                    Some(op) if !io.stopping => {
                        io.stopping = true;
                        self.ring.cancel(op);
                    }
                    Some(_) => {}
                    None => {
                        // Not armed (starved for buffers): it has ended already.
                        self.starved.retain(|&(s, d)| s != id || d != side);
                        self.deferred.push((id, Deferred::ReadEnded(side)));
                    }
                }
            }
            Output::Splice(from) => {
                if c.sides.iter().all(|io| io.transport.allows_splice()) {
                    self.splice_start(slot, from);
                } else {
                    // Under user-space TLS the kernel would move ciphertext: kTLS or buffered.
                    self.splice_requested(slot, from);
                }
            }
            Output::ShutdownWrite(side) => {
                let io = &mut c.sides[side.index()];
                match io.transport.close_notify() {
                    Some(chunk) => {
                        io.queue.push(chunk);
                        self.kick_send(slot, side);
                    }
                    None => {
                        if io.transport.is_ktls() {
                            // The kernel seals it; best effort (the FIN follows anyway).
                            let _ = wsedge_ring::ktls::send_close_notify(io.fd);
                        }
                        sys::shutdown(io.fd, libc::SHUT_WR);
                    }
                }
            }
            Output::Abort(side) => {
                let io = &mut c.sides[side.index()];
                match (side, io.pending) {
                    (Side::Origin, Some(connect)) => self.ring.cancel(connect),
                    _ => sys::shutdown(io.fd, libc::SHUT_RDWR),
                }
            }
            Output::Release(buf) => self.ring.buffers().give_back(buf),
            Output::Metric(metric) => self.count(slot, metric),
            Output::OriginOutcome { origin, outcome } => {
                if let Some(view) = c.session.route().and_then(|r| r.balance.view()) {
                    view.report(origin, outcome);
                }
            }
            Output::Close(reason) => self.close(slot, reason),
        }
    }

    /// Opens the origin side (a failed earlier attempt's socket is closed first: its connect
    /// completed, so no operation uses it).
    fn connect(&mut self, slot: usize, addr: std::net::SocketAddr) {
        let c = &mut self.conns[slot];
        let io = &mut c.sides[1];
        if io.fd >= 0 {
            sys::close(io.fd);
            io.fd = -1;
        }
        // A TLS route's origin gets a fresh TLS client per attempt; a plain one none. A
        // function's peer says itself (ws:// or wss://); its route holds the trust for it.
        let route_tls = c
            .session
            .route()
            .and_then(|r| self.settings.origin_tls(&r.name));
        let client = match (c.session.peer_transport(), route_tls) {
            (PeerTransport::Plain, _) | (PeerTransport::Route, None) => None,
            (PeerTransport::Route, Some(tls)) => Some(tls.connect(addr.ip())),
            (PeerTransport::Tls { name }, Some(tls)) => Some(tls.connect_named(name, addr.ip())),
            (PeerTransport::Tls { .. }, None) => Some(Err(wsedge_tls::TlsError::Handshake {
                detail: "no trusted CA for wss:// on this route (set origin_ca, or install the system trust store)".into(),
            })),
        };
        io.transport = match client {
            None => Transport::Plain,
            Some(Ok(client)) => Transport::origin_tls(client),
            Some(Err(e)) => {
                tracing::warn!(worker = self.index, error = %e, "cannot start TLS to the origin");
                self.deferred.push((c.id, Deferred::ConnectFailed));
                return;
            }
        };
        match sys::tcp_socket(&addr) {
            Ok(fd) => {
                let _ = sys::set_nodelay(fd);
                io.fd = fd;
                io.pending = Some(self.ring.connect(
                    owner(c.id, Purpose::Connect, Side::Origin),
                    fd,
                    addr,
                ));
                c.ops += 1;
            }
            Err(e) => {
                tracing::warn!(worker = self.index, error = %e, "cannot create origin socket");
                self.deferred.push((c.id, Deferred::ConnectFailed));
            }
        }
    }

    /// Writes the front of `to`'s queue if no send of it is in flight.
    pub(super) fn kick_send(&mut self, slot: usize, to: Side) {
        let c = &mut self.conns[slot];
        let io = &mut c.sides[to.index()];
        if io.fd < 0 {
            return;
        }
        if self
            .ring
            .send(owner(c.id, Purpose::Send, to), io.fd, &mut io.queue)
            .is_some()
        {
            c.ops += 1;
        }
    }

    fn count(&mut self, slot: usize, metric: Metric) {
        match metric {
            Metric::Upgraded => {
                self.handshake_done(slot);
                self.stats.upgraded += 1;
                let took = self.conns[slot].handshake_took(self.now_us());
                let _ = self.handshake_us.record(took.max(1));
                if let Some(deadline) = self.drain_deadline {
                    self.deferred
                        .push((self.conns[slot].id, Deferred::DrainBy(deadline)));
                }
            }
            Metric::PlainHttp => {
                self.handshake_done(slot);
                self.stats.plain_http += 1;
                let took = self.conns[slot].handshake_took(self.now_us());
                let _ = self.handshake_us.record(took.max(1));
            }
            Metric::Firewall => self.stats.firewall += 1,
            Metric::Messages { from, count } => match from {
                Side::Client => self.stats.messages_from_clients += count,
                Side::Origin => self.stats.messages_from_origins += count,
            },
            Metric::CloseSeen(code) | Metric::CloseSent(code) => {
                let route = self.conns[slot]
                    .session
                    .route()
                    .map_or_else(String::new, |r| r.name.clone());
                let counter = match metric {
                    Metric::CloseSeen(_) => &mut self.stats.close_codes_seen,
                    _ => &mut self.stats.close_codes_sent,
                };
                *counter.entry((route, code)).or_default() += 1;
            }
            Metric::SpliceFallback => self.stats.splice_fallbacks += 1,
        }
    }

    /// A client's handshake is over (answered, or the connection closed): its completions
    /// keep their place in the turn's order from now on (`turn.rs`).
    fn handshake_done(&mut self, slot: usize) {
        let c = &mut self.conns[slot];
        if c.handshaking {
            c.handshaking = false;
            self.handshaking -= 1;
        }
    }

    /// The session is over: log it once, count it, and wake every operation still in flight
    /// (cancel, shut the sockets down); the slot is freed when the last one completed.
    fn close(&mut self, slot: usize, reason: CloseReason) {
        self.handshake_done(slot);
        let now = self.now();
        let c = &mut self.conns[slot];
        if c.session.firewall_admitted() {
            self.fw_state.on_connection_close(c.session.peer().ip());
        }
        if let Some(timer) = c.timer.take() {
            self.wheel.cancel(timer);
        }
        *self.stats.closed.entry(reason.as_str()).or_default() += 1;
        if self.log.enabled() {
            let s = &c.session;
            self.log.record(&Entry {
                id: c.id.connection_id(self.index),
                worker: self.index,
                client: s.peer(),
                route: s.route().map(|r| r.name.as_str()),
                origin: s.origin(),
                status: s.status(),
                bytes_from_client: s.bytes_from_client(),
                bytes_to_client: s.bytes_to_client(),
                duration_ms: now.saturating_sub(s.accepted_at()),
                reason: reason.as_str(),
                traceback: s.traceback(),
                tls: c.sides[0].transport.tls_facts(),
            });
        }
        self.starved.retain(|&(id, _)| id != c.id);
        // Shutting down completes what is still pending on the sockets; after a clean end
        // (both sides at EOF, nothing in flight) there is nothing to wake, so spare the
        // syscalls: the close at free ends the connection.
        if c.ops > 0 {
            for io in &c.sides {
                if io.fd >= 0 {
                    sys::shutdown(io.fd, libc::SHUT_RDWR);
                }
            }
        }
        let mut ops = Vec::new();
        for io in &mut c.sides {
            ops.extend(io.recv.filter(|_| !io.stopping));
            ops.extend(io.pending);
            if let Some(splice) = &io.splice {
                ops.extend(splice.poll);
            }
            io.stopping = true;
        }
        for op in ops {
            self.ring.cancel(op);
        }
    }

    /// Frees a closed connection once none of its operations is in flight.
    pub(super) fn maybe_free(&mut self, slot: usize) {
        let Some(c) = self.conns.get(slot) else {
            return;
        };
        if !c.session.is_closed() || c.ops > 0 {
            return;
        }
        let mut c = self.conns.remove(slot);
        if let Some(timer) = c.timer.take() {
            self.wheel.cancel(timer);
        }
        for io in &mut c.sides {
            io.queue.clear(self.ring.buffers());
            if let Some(mut splice) = io.splice.take()
                && let Some(pipe) = splice.pipe.take()
            {
                self.pipes.discard(pipe);
            }
            if io.fd >= 0 {
                sys::close(io.fd);
            }
        }
    }

    /// A completion of one of the connection's operations, as an input of its session.
    pub(super) fn on_conn_completion(&mut self, slot: usize, tag: u8, c: Completion) {
        let (purpose, side) = purpose_of(tag);
        let i = side.index();
        if !c.more {
            self.conns[slot].ops -= 1;
        }
        match (purpose, c.kind) {
            (Some(Purpose::Recv), OpKind::RecvHead) => {
                self.conns[slot].sides[i].recv = None;
                let OpData::Head(buf) = c.data else {
                    return;
                };
                self.on_head(slot, side, buf, c.result);
            }
            (Some(Purpose::Recv), OpKind::RecvMulti | OpKind::RecvOne) => {
                self.on_recv(slot, side, c);
            }
            (Some(Purpose::Send), OpKind::Send) => {
                let OpData::Sent(sent) = c.data else {
                    return;
                };
                let io = &mut self.conns[slot].sides[i];
                if c.result > 0 {
                    let written = io
                        .queue
                        .complete(sent, c.result as usize, self.ring.buffers());
                    if io.queue.is_empty() {
                        io.queue.shrink();
                    }
                    let written = io.transport.written(written);
                    if written.relayed + written.own > 0 {
                        self.feed(
                            slot,
                            Input::Sent {
                                to: side,
                                relayed: written.relayed,
                                own: written.own,
                            },
                        );
                    }
                    if self.conns.contains(slot) && !self.conns[slot].session.is_closed() {
                        self.kick_send(slot, side);
                    }
                    self.tls_sent(slot, side);
                    self.splice_resume(slot, side);
                } else {
                    io.queue.fail(sent, self.ring.buffers());
                    self.feed(slot, Input::Failed(side));
                }
            }
            (Some(Purpose::Connect), OpKind::Connect) => {
                self.conns[slot].sides[1].pending = None;
                let result = match -c.result {
                    0 => Ok(()),
                    libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => {
                        Err(ConnectFailure::Local)
                    }
                    _ => Err(ConnectFailure::Refused),
                };
                if c.result == -libc::ECANCELED {
                    return;
                }
                self.feed(slot, Input::Connected(result));
                // TLS to the origin: the ClientHello, if the session sent nothing yet.
                if c.result == 0 && self.conns.contains(slot) {
                    self.tls_flush(slot, Side::Origin);
                }
            }
            (Some(Purpose::Watch), OpKind::Poll) => {
                self.conns[slot].sides[0].pending = None;
                if c.result == -libc::ECANCELED {
                    return;
                }
                let reset = c.result < 0 || c.result & i32::from(libc::POLLERR) != 0;
                self.feed(slot, Input::ClientLeft { reset });
            }
            (Some(Purpose::Splice), OpKind::Poll) => self.on_splice_poll(slot, side, c.result),
            _ => {
                tracing::error!(tag, kind = ?c.kind, "completion with an unexpected owner tag");
                self.ring.discard(c);
            }
        }
    }
}

/// The splice relay's poll owner for bytes from `from`.
pub(super) fn splice_owner(id: ConnId, from: Side) -> Owner {
    owner(id, Purpose::Splice, from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection's record lives in the worker's slab for its whole life, idle ones too
    /// (issue 18: ≤ 512 B per idle proxied connection in all, with its two recvs in the
    /// ring's op table, 32 B each, and its timer-wheel entry, 32 B). Per-side state that only
    /// a busy or special connection needs is boxed (the send queue's storage, a splice, TLS).
    #[test]
    fn connection_record_fits_its_memory_budget() {
        let (conn, side) = (std::mem::size_of::<Conn>(), std::mem::size_of::<SideIo>());
        assert!(
            conn <= 384,
            "Conn is {conn} B, over its 384 B budget (SideIo {side} B)"
        );
    }
}
