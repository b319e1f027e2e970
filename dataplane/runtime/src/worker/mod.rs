//! One worker: an io_uring event loop and the tables it owns (its ring, listeners,
//! connections, timer wheel, buffers, pipes, mailbox, bus and counters), shared with no other
//! thread. It has no policy: every completion becomes an input of a connection's
//! [`Session`](wsedge_proto::session::Session), and every output of a session becomes an
//! operation (`conn.rs`); the loop's own work is accepting (`accept.rs`), the mailbox
//! (`commands.rs`), timers, the splice pump (`splice.rs`) and the kTLS hand-off (`ktls.rs`).
//!
//! The loop: fire expired timers, re-arm what needs it, submit and wait (until the next timer
//! at most), then dispatch each completion. See docs/architecture.md for who owns which
//! buffer when.

mod accept;
mod bridge;
mod commands;
mod conn;
mod functions;
mod ktls;
pub(crate) mod mailbox;
mod reads;
mod retire;
mod splice;
mod timer_key;
mod tls;
mod trim;
mod turn;

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use slab::Slab;
use wsedge_proto::firewall::{FirewallState, TraceEntry};
use wsedge_proto::function::Delivery;
use wsedge_proto::session::{CloseReason, Input, Output, Route};
use wsedge_proto::wheel::{Tick, TimerWheel};
use wsedge_ring::pipes::PipePool;
use wsedge_ring::{Completion, OpId, Owner, Ring, RingConfig, sys};

use self::accept::Listener;
use self::conn::Conn;
use self::functions::Functions;
use self::mailbox::{Command, Mailbox};
use self::timer_key::{PackedKey, TimerKey};
use crate::access_log::AccessLog;
use crate::bus::{Bus, BusMessage};
use crate::conn_id::ConnId;
use crate::settings::Settings;
use crate::stats::Stats;

const RING_ENTRIES: u32 = 4096;

/// Owner tags of the loop's own operations (a connection's tags have a purpose below these
/// in their top byte).
const OWNER_WAKE: u64 = 0xff << 56;
const OWNER_ACCEPT: u64 = 0xfe << 56;

/// What a worker is given at start.
#[derive(Debug)]
pub(crate) struct WorkerSpec {
    pub(crate) index: usize,
    pub(crate) cpu: Option<usize>,
    /// Each listening socket, with the `[[tls_listener]]` it belongs to (`None`: plain).
    pub(crate) listeners: Vec<(RawFd, Option<usize>)>,
    pub(crate) settings: Settings,
    pub(crate) access_log: AccessLog,
    pub(crate) mailbox: Receiver<Command>,
    pub(crate) wake_fd: RawFd,
    /// The other workers' mailboxes (channel fan-out).
    pub(crate) peers: Vec<Mailbox>,
    /// Names this host on bus messages.
    pub(crate) host: u64,
    /// The broker bridge, when `[broker]` is configured.
    pub(crate) bridge: Option<crate::broker::Port>,
}

/// Field order matters: the ring (which owns the buffer ring) goes last, after every
/// connection was dropped.
pub(crate) struct Worker {
    index: usize,
    settings: Settings,
    config_version: u64,
    /// The routes of `settings`, shared with the connections established on them.
    routes: Vec<Rc<Route>>,
    conns: Slab<Conn>,
    next_generation: u32,
    wheel: TimerWheel<PackedKey>,
    listeners: Vec<Listener>,
    accepting: bool,
    /// Accept ran out of descriptors and has not succeeded since (warn once per episode).
    accept_starved: bool,
    accept_paused: bool,
    wake_fd: RawFd,
    mailbox: Receiver<Command>,
    bus: Bus,
    /// The function host (JavaScript functions; the built-in ones are opened through it).
    functions: Functions,
    pipes: PipePool,
    /// Stream reads waiting for provided buffers, oldest first: served in turn, one buffer
    /// each, as buffers come back (worker/reads.rs).
    starved: VecDeque<(ConnId, wsedge_proto::session::Side)>,
    /// The kernel ends multishot recvs at a byte limit (the relay's window).
    recv_limit: bool,
    /// Clients accepted and not yet answered (their completions never wait, turn.rs).
    handshaking: usize,
    log: AccessLog,
    stats: Stats,
    start: Instant,
    rng: u64,
    /// When live connections are closed during a drain or shutdown.
    drain_deadline: Option<Tick>,
    exit_when_empty: bool,
    completions: Vec<Completion>,
    /// Completions a look took during the last turn that keep their place (relay work, the
    /// wake), oldest first: the next turn dispatches them first (turn.rs).
    waiting: VecDeque<Completion>,
    /// Completions taken while a turn runs (reused; turn.rs).
    early: Vec<Completion>,
    expired: Vec<PackedKey>,
    /// The outputs of the session being handled (reused).
    out: Vec<Output>,
    /// Inputs the worker produced while applying outputs, fed after them.
    deferred: Vec<(ConnId, Deferred)>,
    /// Per-address and global firewall counters (exact per address: the reuseport program
    /// sends every connection of an address to the same worker).
    fw_state: FirewallState,
    fw_trace: Vec<TraceEntry>,
    handshake_us: hdrhistogram::Histogram<u64>,
    trim: trim::Trim,
    /// Routes whose kTLS use (true) or buffered fallback (false) was logged (`ktls.rs`).
    ktls_said: std::collections::HashSet<(String, bool)>,
    ring: Ring,
}

/// An input the worker itself produces while applying an output.
#[derive(Debug, Clone, Copy)]
enum Deferred {
    /// The connect could not even start (no socket): a local failure.
    ConnectFailed,
    /// A stop asked for a read that was not armed.
    ReadEnded(wsedge_proto::session::Side),
    /// A drain with a deadline is on: a connection that just upgraded hears of it.
    DrainBy(Tick),
    /// A splice direction could not get a pipe, or stays in user-space TLS.
    SpliceUnavailable(wsedge_proto::session::Side),
    /// The connection cannot go on (a kTLS hand-off the kernel refused after the keys left
    /// rustls).
    Abort(CloseReason),
    /// Bytes the transport dropped instead of writing (TLS without keys): written, for the
    /// session.
    Sent {
        to: wsedge_proto::session::Side,
        relayed: usize,
        own: usize,
    },
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("index", &self.index)
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Sets up the ring and buffers; errors here stop the process with a message.
    pub(crate) fn new(spec: WorkerSpec) -> std::io::Result<Worker> {
        if let Some(cpu) = spec.cpu
            && let Err(e) = sys::pin_to_cpu(cpu)
        {
            tracing::warn!(worker = spec.index, cpu, error = %e, "cannot pin worker to its core");
        }
        let relay = spec.settings.relay;
        let ring = Ring::new(RingConfig {
            entries: RING_ENTRIES,
            buffer_count: relay.buffer_count,
            buffer_size: relay.buffer_size,
        })?;
        let workers = spec.settings.workers;
        let capacity = spec.settings.max_connections.min(1 << 20);
        let start = Instant::now();
        let seed = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64))
            ^ (spec.index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut worker = Worker {
            index: spec.index,
            routes: spec.settings.routes.iter().cloned().map(Rc::new).collect(),
            config_version: 0,
            pipes: PipePool::new(relay.pipe_pool, relay.pipe_size),
            settings: spec.settings,
            // Sized once for the worker's limit: the pages of unused slots are never
            // touched, so they cost no memory, and the slab never copies itself as it grows.
            conns: Slab::with_capacity(capacity),
            next_generation: 0,
            wheel: TimerWheel::with_capacity(0, capacity),
            listeners: spec
                .listeners
                .into_iter()
                .map(|(fd, tls)| Listener::new(fd, tls))
                .collect(),
            accepting: true,
            accept_starved: false,
            accept_paused: false,
            wake_fd: spec.wake_fd,
            mailbox: spec.mailbox,
            bus: Bus::new(spec.peers, spec.host, spec.bridge),
            functions: Functions::new(spec.index, workers, seed),
            starved: VecDeque::new(),
            recv_limit: wsedge_ring::recv_limit(),
            handshaking: 0,
            log: spec.access_log,
            stats: Stats::default(),
            start,
            rng: seed | 1,
            drain_deadline: None,
            exit_when_empty: false,
            completions: Vec::with_capacity(1024),
            waiting: VecDeque::new(),
            early: Vec::new(),
            expired: Vec::new(),
            out: Vec::with_capacity(16),
            deferred: Vec::new(),
            fw_state: FirewallState::new(workers),
            fw_trace: Vec::new(),
            // 1 µs to 1 h, 2 significant digits: a few KiB per worker.
            handshake_us: hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 2)
                .map_err(std::io::Error::other)?,
            trim: trim::Trim::default(),
            ktls_said: std::collections::HashSet::new(),
            ring,
        };
        worker.deploy_scripts();
        Ok(worker)
    }

    fn now(&self) -> Tick {
        self.start.elapsed().as_millis() as Tick
    }

    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn random(&mut self) -> u64 {
        // xorshift64: jitter and seeds need spread, not cryptographic quality.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Runs until shut down and drained; returns the worker's counters.
    pub(crate) fn run(mut self) -> std::io::Result<Stats> {
        self.ring.read_wake(Owner(OWNER_WAKE), self.wake_fd);
        // The modules' top-level code ran at deploy: what it asked for (outbound sockets).
        self.pump_functions();
        self.arm_trim();
        loop {
            let now = self.now();
            self.fire_timers(now);
            // Not before the cancelled accepts have ended: a connection they still hand over
            // is served, not left unaccepted.
            if self.exit_when_empty && self.conns.is_empty() && self.accepts_ended() {
                break;
            }
            self.arm_listeners();
            self.rearm_starved();
            self.rearm_functions_timer(now);
            self.log.flush();
            // Function work left for this turn (a capped read, a capped pump) and relay work
            // held back from the last one do not wait.
            let timeout = if self.functions.due(now) || self.work_waiting() {
                Some(Duration::ZERO)
            } else {
                self.wheel
                    .next_expiration()
                    .map(|t| Duration::from_millis(t.saturating_sub(now).max(1)))
            };
            self.ring.submit_and_wait(timeout)?;
            let mut completions = std::mem::take(&mut self.completions);
            self.ring.drain(&mut completions);
            self.dispatch_turn(&mut completions)?;
            self.completions = completions;
        }
        self.log.flush();
        self.drop_listeners();
        Ok(std::mem::take(&mut self.stats))
    }

    fn fire_timers(&mut self, now: Tick) {
        let mut expired = std::mem::take(&mut self.expired);
        self.wheel.advance(now, &mut expired);
        for key in expired.drain(..) {
            match key.unpack() {
                TimerKey::Conn(id) => {
                    if let Some(slot) = self.live_slot(id) {
                        // The entry that fired is gone from the wheel; one armed since (the
                        // connection was fed earlier in this batch) is kept.
                        let c = &mut self.conns[slot];
                        if c.timer.is_some_and(|t| self.wheel.deadline(t).is_none()) {
                            c.timer = None;
                        }
                        self.feed(slot, Input::Timeout);
                        self.pump_functions();
                        self.maybe_free(slot);
                    }
                }
                TimerKey::AcceptResume => self.accept_paused = false,
                TimerKey::Trim => self.on_trim_timer(),
                TimerKey::Functions => self.on_functions_timer(now),
                TimerKey::DrainDeadline => {
                    let slots: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                    for slot in slots {
                        self.feed(slot, Input::Abort(CloseReason::Shutdown));
                        // A session closed with no operation in flight gets no completion
                        // that would free it: free it here, or the worker never empties.
                        self.maybe_free(slot);
                    }
                }
            }
        }
        self.expired = expired;
    }

    /// The slot of a live connection with this id (a stale id names none).
    fn live_slot(&self, id: ConnId) -> Option<usize> {
        let slot = id.slot as usize;
        self.conns
            .get(slot)
            .is_some_and(|c| c.id == id)
            .then_some(slot)
    }

    fn dispatch(&mut self, c: Completion) {
        match c.owner.0 {
            OWNER_WAKE => {
                self.on_wake();
                return;
            }
            o if turn::is_accept(o) => {
                self.on_accept((o & 0xffff_ffff) as usize, c.result, c.more);
                return;
            }
            _ => {}
        }
        let (id, purpose) = ConnId::from_owner(c.owner.0);
        let Some(slot) = self.live_slot(id) else {
            // INVARIANT: a slot is freed only with no op in flight, so this is a bug; the
            // ring still hands back what the operation held.
            tracing::error!(owner = c.owner.0, "completion for a freed connection");
            self.ring.discard(c);
            return;
        };
        self.on_conn_completion(slot, purpose, c);
        self.pump_functions();
        self.maybe_free(slot);
    }

    fn on_wake(&mut self) {
        loop {
            match self.mailbox.try_recv() {
                Ok(command) => self.on_command(command),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.on_command(Command::Shutdown);
                    break;
                }
            }
        }
        self.pump_functions();
        self.drain_bridge();
        self.ring.read_wake(Owner(OWNER_WAKE), self.wake_fd);
    }

    /// Delivers the messages published on this worker (or arrived from others) to its
    /// subscribers: each framed at most once per format, shared by every send.
    fn drain_bus(&mut self) {
        let mut targets = Vec::new();
        while let Some(message) = self.bus.next_local() {
            self.deliver(&message, &mut targets);
        }
    }

    /// Delivers one message here; returns how many subscribers it reached.
    fn deliver(&mut self, message: &BusMessage, targets: &mut Vec<u64>) -> usize {
        targets.clear();
        self.bus
            .subscribers(message.route.as_deref(), &message.channel, targets);
        // Framed at most once per format, for every subscriber of this worker.
        let mut delivery = Delivery::positioned(
            message.channel.clone(),
            message.payload.clone(),
            message.position.clone(),
        );
        let mut delivered = 0;
        for &key in targets.iter() {
            if Some(key) == message.skip {
                continue;
            }
            let (worker, id) = ConnId::from_public(key);
            let Some(slot) = self.live_slot(id).filter(|_| worker == self.index) else {
                continue;
            };
            if self.conns[slot].session.is_closed() {
                continue;
            }
            self.feed(slot, Input::Deliver(&mut delivery));
            delivered += 1;
            self.maybe_free(slot);
        }
        delivered
    }

    // ----- timers -----------------------------------------------------------------------

    /// Puts the connection's one wheel entry at its session's next deadline.
    fn rearm_timer(&mut self, slot: usize) {
        let c = &mut self.conns[slot];
        let want = c.session.poll_timeout();
        let armed = c.timer.and_then(|t| Some((t, self.wheel.deadline(t)?)));
        match (armed, want) {
            (Some((_, at)), Some(w)) if w >= at => {}
            (current, Some(w)) => {
                if let Some((timer, _)) = current {
                    self.wheel.cancel(timer);
                }
                c.timer = Some(self.wheel.insert(w, TimerKey::Conn(c.id).pack()));
            }
            (Some((timer, _)), None) => {
                self.wheel.cancel(timer);
                c.timer = None;
            }
            (None, None) => {}
        }
    }

    // ----- draining ---------------------------------------------------------------------

    /// Stops accepting (the listeners close, so the kernel refuses new connections and a
    /// load balancer sees the host leave). Live connections go on; with a timeout, those that
    /// can end with a Close frame are sent one in time, and what is left is closed then.
    fn start_drain(&mut self, timeout: Option<Duration>) {
        let now = self.now();
        if let Some(t) = timeout {
            let deadline = now + t.as_millis() as Tick;
            if self.drain_deadline.is_none_or(|d| deadline < d) {
                self.drain_deadline = Some(deadline);
                self.wheel.insert(deadline, TimerKey::DrainDeadline.pack());
            }
            let slots: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for slot in slots {
                self.feed_drain(slot);
            }
        }
        if !self.accepting {
            return;
        }
        self.accepting = false;
        self.close_listeners();
        tracing::info!(worker = self.index, live = self.conns.len(), "draining");
    }

    /// Tells a connection of the drain's deadline, if one is on.
    fn feed_drain(&mut self, slot: usize) {
        if let Some(deadline) = self.drain_deadline {
            let reason = if self.exit_when_empty {
                CloseReason::Shutdown
            } else {
                CloseReason::Drained
            };
            self.feed(slot, Input::DrainBy { deadline, reason });
            self.maybe_free(slot);
        }
    }

    /// Cancels an operation (its completion still arrives and is counted).
    fn cancel(&mut self, op: Option<OpId>) {
        if let Some(op) = op {
            self.ring.cancel(op);
        }
    }
}
