//! One worker: an io_uring event loop that owns its listeners, connections, timers, buffers
//! and counters, and shares none of them.
//!
//! The loop: advance the timer wheel, re-arm what needs it, submit and wait (until the next
//! timer at most), then turn each completion into an event for the connection's pure state
//! machine and its decision into submissions. See docs/architecture.md for who owns which
//! buffer when.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types};
use slab::Slab;
use wsedge_command::{FunctionKind, RelayMode};
use wsedge_proto::conn::{
    CloseReason, Conn, ConnectAction, ConnectFailure, FirewallGate, FrameTimers, HeadAction,
    HeadContext, OriginAction, Phase, Refusal, Side, TimerAction,
};
use wsedge_proto::firewall::{FirewallState, TraceEntry, TraceOutcome, Verdict};
use wsedge_proto::handshake::error_response;
use wsedge_proto::route::RoundRobin;
use wsedge_proto::upgrade::{bridge_request, switching_protocols};
use wsedge_proto::wheel::{Tick, TimerId, TimerWheel};

use self::frames::{FramesState, Piece};
use self::functions::FunctionConn;
use super::bufring::{BUF_GROUP, BufRing};
use super::pipes::{Pipe, PipePool};
use super::ring::{Completion, Ring};
use super::sys::{self, RawSockAddr};
use super::token::{Kind, Token, next_generation};
use crate::access_log::{AccessLog, Entry};
use crate::settings::{RouteInfo, Settings};
use crate::stats::Stats;

/// Messages to a worker, delivered through its mailbox and a wake on its eventfd. Replies
/// travel back on the channel a request carries; the worker never blocks on them.
#[derive(Debug)]
pub(crate) enum Command {
    /// Stop accepting, let connections run up to the drain timeout, then close them and exit.
    Shutdown,
    /// Use these settings for new connections; live ones keep their route and origin.
    Apply {
        version: u64,
        settings: Box<Settings>,
    },
    /// Stop accepting (listeners closed); close what is left after `timeout`, if given.
    Drain {
        timeout: Option<Duration>,
    },
    Report {
        reply: Sender<WorkerReport>,
    },
    Connections {
        route: Option<String>,
        limit: usize,
        reply: Sender<Vec<ConnectionInfo>>,
    },
    Kill {
        id: u64,
        reply: Sender<bool>,
    },
    /// Deliver a message to this worker's subscribers of `channel` (broadcast function);
    /// the reply, when asked for, is how many received it.
    Publish {
        /// The broadcast route whose channel it is; `None` (the publish API): every
        /// broadcast route's channel of that name.
        route: Option<Arc<str>>,
        channel: Arc<str>,
        message: Arc<functions::Payload>,
        /// The publisher's connection id, when it must not receive its own message.
        skip: Option<u64>,
        reply: Option<Sender<usize>>,
    },
    /// How many of this worker's clients are subscribed to `channel`.
    Presence {
        channel: String,
        reply: Sender<usize>,
    },
    /// Spread graceful closes of the live connections over `over` (Close 1001 on `frames`
    /// routes at a random moment of the window; a plain close on the others).
    SpreadCloses {
        over: Duration,
    },
}

/// A worker's answer to [`Command::Report`].
#[derive(Debug, Clone)]
pub(crate) struct WorkerReport {
    pub(crate) index: usize,
    pub(crate) config_version: u64,
    pub(crate) live: usize,
    pub(crate) accepting: bool,
    pub(crate) stats: Stats,
    /// Accept to response-head-queued, in microseconds, since the worker started.
    pub(crate) handshake_us: hdrhistogram::Histogram<u64>,
}

/// One live connection, for `wsedgectl connections`.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionInfo {
    pub(crate) id: u64,
    pub(crate) worker: usize,
    pub(crate) client: SocketAddr,
    pub(crate) route: Option<String>,
    pub(crate) origin: Option<SocketAddr>,
    pub(crate) age_ms: u64,
    pub(crate) bytes_from_client: u64,
    pub(crate) bytes_to_client: u64,
    pub(crate) state: &'static str,
}

/// A connection id that names its worker, slot and incarnation.
pub(crate) fn connection_id(worker: usize, slot: usize, generation: u32) -> u64 {
    ((worker as u64) << 56) | (u64::from(generation) << 32) | slot as u64
}

/// The worker index of a connection id.
pub(crate) fn connection_worker(id: u64) -> usize {
    (id >> 56) as usize
}

mod frames;
pub(crate) mod functions;

/// How long a rejected client gets to read our answer before its socket is closed.
const LINGER_MS: u64 = 2_000;
/// Back-off after the process runs out of descriptors at accept.
const ACCEPT_BACKOFF_MS: u64 = 100;
/// First sizes of the head buffers (a browser's upgrade head is ~600 bytes, a 101 ~150).
const HEAD_BUF_START: usize = 1024;
const ORIGIN_HEAD_BUF_START: usize = 512;
const RING_ENTRIES: u32 = 4096;

/// Bytes queued for one socket. The front chunk may be in flight.
#[derive(Debug)]
enum Chunk {
    /// Bytes `off..len` of a provided buffer. The buffer is ours until the send of the
    /// chunk with `release` completes, then given back to the ring (a buffer split into
    /// several chunks by the frames relay releases with its last one).
    Buf {
        bid: u16,
        off: u32,
        len: u32,
        release: bool,
    },
    /// Bytes we produced or collected (origin head, origin response head). `counted` says
    /// whether the state machine counts them as relayed bytes.
    Owned {
        data: Vec<u8>,
        off: usize,
        counted: bool,
        origin_head: bool,
    },
    /// A canned error response.
    Static { data: &'static [u8], off: usize },
    /// A broadcast frame shared by every subscriber on this worker (framed once).
    Shared { data: Rc<[u8]>, off: usize },
}

/// Most queued chunks written by one send (`SendMsg` with an iovec each).
const MAX_BATCH: usize = 16;

/// The iovecs and message header of a batched send.
///
/// INVARIANT: while a `SendMsg` built from it is in flight, the box is neither moved out of
/// its `SideIo` nor written (a new batch is built only after that send completed).
struct SendBatch {
    iov: [libc::iovec; MAX_BATCH],
    msg: libc::msghdr,
}

impl SendBatch {
    fn new() -> Box<SendBatch> {
        Box::new(SendBatch {
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; MAX_BATCH],
            // SAFETY: msghdr is plain old data; all-zero (no name, no control, no iovecs) is
            // a valid value.
            msg: unsafe { std::mem::zeroed() },
        })
    }
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch").finish_non_exhaustive()
    }
}

/// Where the splice relay of one direction stands: which poll, if any, it waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpliceStage {
    Idle,
    /// Waiting for the source to become readable.
    PollIn,
    /// The pipe holds bytes the destination did not take: waiting for it to be writable.
    PollOut,
}

/// The I/O state of one socket of a connection.
#[derive(Debug)]
struct SideIo {
    fd: RawFd,
    /// A recv from this socket (head recv, or multishot relay recv) is in flight.
    recv_armed: bool,
    /// An AsyncCancel for that recv was sent (backpressure).
    recv_cancelled: bool,
    /// Bytes waiting to be written to this socket.
    outq: VecDeque<Chunk>,
    /// Bytes in `outq` not yet written (slow-consumer and backpressure checks).
    queued: usize,
    /// For writing several queued chunks with one send; made on first use.
    batch: Option<Box<SendBatch>>,
    sending: bool,
    /// `relay = "auto"`: a recv from this socket filled a whole buffer, so its bytes
    /// switch to the splice relay once the buffered ones are written.
    bulk: bool,
    /// No pipe could be had for this direction (descriptors exhausted): it stays buffered
    /// rather than failing a connection that works.
    no_splice: bool,
    /// Splice relay of the bytes coming from this socket.
    splice: SpliceStage,
    pipe: Option<Pipe>,
    in_pipe: u32,
}

impl Chunk {
    /// Bytes of this chunk not yet written.
    fn remaining(&self) -> usize {
        match self {
            Chunk::Buf { off, len, .. } => len.saturating_sub(*off) as usize,
            Chunk::Owned { data, off, .. } => data.len().saturating_sub(*off),
            Chunk::Static { data, off } => data.len().saturating_sub(*off),
            Chunk::Shared { data, off } => data.len().saturating_sub(*off),
        }
    }
}

impl SideIo {
    /// Queues `chunk` for writing to this socket.
    fn push(&mut self, chunk: Chunk) {
        let n = chunk.remaining();
        if n == 0 {
            // Nothing to write (a zero-length send would read as a closed peer). A provided
            // buffer still has to go back: the caller only pushes empty `Buf`s never.
            debug_assert!(!matches!(chunk, Chunk::Buf { release: true, .. }));
            return;
        }
        self.queued += n;
        self.outq.push_back(chunk);
    }

    fn new(fd: RawFd) -> SideIo {
        SideIo {
            fd,
            recv_armed: false,
            recv_cancelled: false,
            outq: VecDeque::new(),
            queued: 0,
            batch: None,
            sending: false,
            bulk: false,
            no_splice: false,
            splice: SpliceStage::Idle,
            pipe: None,
            in_pipe: 0,
        }
    }
}

/// What a connection needs while its handshake runs.
#[derive(Debug, Default)]
struct Handshake {
    /// The client's head (single-shot recvs write into its spare capacity).
    head: Vec<u8>,
    /// The origin's response head.
    origin_buf: Vec<u8>,
    /// The rewritten head to send to the origin.
    origin_head: Vec<u8>,
    /// What the client sent after its upgrade head: held until the origin's 101 is checked,
    /// then forwarded (through the frame tracker on a `frames` route); dropped if the origin
    /// declines the upgrade.
    held: Vec<u8>,
    /// The origin address, at a stable heap address (inside the box) while the connect is
    /// in flight.
    connect_addr: Option<RawSockAddr>,
}

/// The handshake buffers, created on first use.
fn handshake(hs: &mut Option<Box<Handshake>>) -> &mut Handshake {
    hs.get_or_insert_with(Box::default)
}

/// One connection's resources; its decisions live in `conn`.
#[derive(Debug)]
struct Connection {
    generation: u32,
    conn: Conn,
    peer: SocketAddr,
    sides: [SideIo; 2],
    /// Operations in flight (a multishot counts once, until its final completion).
    ops: u32,
    /// When it was accepted, in µs since the worker started (handshake latency).
    accepted_us: u64,
    /// Buffers needed only until the relay starts (boxed, and freed then: an idle
    /// connection should cost as little as possible).
    hs: Option<Box<Handshake>>,
    /// The handshake's send queues still hold their capacity: released once both drain.
    compact: bool,
    head_bytes: u64,
    /// The route this connection was established with (kept across config changes).
    route: Option<Rc<RouteInfo>>,
    /// Frame state on a `frames` route once upgraded.
    frames: Option<Box<FramesState>>,
    /// Debug rules on: the route and firewall rules that matched (access log, headers).
    traceback: Option<Vec<String>>,
    /// A built-in function serving this connection (echo, broadcast).
    function: Option<Box<FunctionConn>>,
    origin_pick: usize,
    origin_addr: Option<SocketAddr>,
    connecting: bool,
    /// A poll for the client's close is in flight (while the origin handshake is pending).
    watching: bool,
    relay: RelayMode,
    /// Error-response bytes we sent on our own.
    extra_to_client: u64,
    /// After the client's queue drains: shut its write side, read and discard until EOF or
    /// the linger deadline, then close with this reason.
    after_send: Option<CloseReason>,
    linger: Option<(Tick, CloseReason)>,
    /// Deadline for an error answer to be written (a client that never reads).
    send_deadline: Option<Tick>,
    closing: Option<CloseReason>,
    timer: Option<(TimerId, Tick)>,
}

#[derive(Debug)]
struct Listener {
    fd: RawFd,
    armed: bool,
}

/// What a worker is given at start.
#[derive(Debug)]
pub(crate) struct WorkerSpec {
    pub(crate) index: usize,
    pub(crate) cpu: Option<usize>,
    pub(crate) listeners: Vec<RawFd>,
    pub(crate) settings: Settings,
    pub(crate) access_log: AccessLog,
    pub(crate) mailbox: Receiver<Command>,
    pub(crate) wake_fd: RawFd,
    /// The other workers' mailboxes (broadcast fan-out), with their eventfds.
    pub(crate) peers: Vec<(Sender<Command>, RawFd)>,
}

/// Field order matters: the ring is dropped before the buffer ring it refers to.
pub(crate) struct Worker {
    ring: Ring,
    bufs: BufRing,
    index: usize,
    settings: Settings,
    config_version: u64,
    /// The routes of `settings`, shared with the connections established on them.
    routes: Vec<Rc<RouteInfo>>,
    round_robin: Vec<RoundRobin>,
    conns: Slab<Connection>,
    next_generation: u32,
    wheel: TimerWheel<(u32, u32)>,
    listeners: Vec<Listener>,
    accept_paused_until: Option<Tick>,
    /// Accept ran out of descriptors and has not succeeded since (warn once per episode).
    accept_starved: bool,
    wake_fd: RawFd,
    /// The eventfd read lands here; boxed so its address is stable.
    wake_buf: Box<u64>,
    mailbox: Receiver<Command>,
    peers: Vec<(Sender<Command>, RawFd)>,
    pipes: PipePool,
    starved: Vec<(u32, u32, Side)>,
    log: AccessLog,
    stats: Stats,
    start: Instant,
    rng: u64,
    accepting: bool,
    /// When live connections are closed during a drain or shutdown.
    drain_deadline: Option<Tick>,
    drain_forced: bool,
    exit_when_empty: bool,
    completions: Vec<Completion>,
    expired: Vec<(u32, u32)>,
    pieces: Vec<Piece>,
    /// Per-address and global firewall counters (exact per address: the reuseport program
    /// sends every connection of an address to the same worker).
    fw_state: FirewallState,
    fw_trace: Vec<TraceEntry>,
    handshake_us: hdrhistogram::Histogram<u64>,
    /// Broadcast channels of this worker's clients, one hub per broadcast route.
    hubs: std::collections::HashMap<String, wsedge_proto::channels::Hub<u64>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("index", &self.index)
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

fn side_of_low_bit(kind: Kind) -> Side {
    if (kind as u8) & 1 == 0 {
        Side::Client
    } else {
        Side::Origin
    }
}

fn recv_kind(side: Side) -> Kind {
    match side {
        Side::Client => Kind::RecvClient,
        Side::Origin => Kind::RecvOrigin,
    }
}

fn send_kind(side: Side) -> Kind {
    match side {
        Side::Client => Kind::SendClient,
        Side::Origin => Kind::SendOrigin,
    }
}

fn splice_kind(stage: SpliceStage, from: Side) -> Kind {
    match (stage, from) {
        (SpliceStage::PollOut, Side::Client) => Kind::PollOutClient,
        (SpliceStage::PollOut, Side::Origin) => Kind::PollOutOrigin,
        (_, Side::Client) => Kind::PollInClient,
        (_, Side::Origin) => Kind::PollInOrigin,
    }
}

fn reset_reason(side: Side) -> CloseReason {
    match side {
        Side::Client => CloseReason::ClientReset,
        Side::Origin => CloseReason::OriginReset,
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
        let ring = Ring::new(RING_ENTRIES)?;
        let relay = spec.settings.relay;
        let bufs = BufRing::new(&ring.uring, relay.buffer_count, relay.buffer_size)?;
        let workers = spec.settings.workers;
        let capacity = spec.settings.max_connections.min(1 << 20);
        let start = Instant::now();
        let seed = start.elapsed().as_nanos() as u64
            ^ (spec.index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Ok(Worker {
            ring,
            bufs,
            index: spec.index,
            round_robin: vec![RoundRobin::default(); spec.settings.route_info.len()],
            routes: spec
                .settings
                .route_info
                .iter()
                .cloned()
                .map(Rc::new)
                .collect(),
            config_version: 0,
            pipes: PipePool::new(relay.pipe_pool, relay.pipe_size),
            settings: spec.settings,
            // Sized once for the worker's limit: the pages of unused slots are never touched, so
            // they cost no memory, and the slab never copies itself while it grows.
            conns: Slab::with_capacity(capacity),
            next_generation: 0,
            wheel: TimerWheel::with_capacity(0, capacity),
            listeners: spec
                .listeners
                .into_iter()
                .map(|fd| Listener { fd, armed: false })
                .collect(),
            accept_paused_until: None,
            accept_starved: false,
            wake_fd: spec.wake_fd,
            wake_buf: Box::new(0),
            mailbox: spec.mailbox,
            peers: spec.peers,
            starved: Vec::new(),
            log: spec.access_log,
            stats: Stats::default(),
            start,
            rng: seed | 1,
            accepting: true,
            drain_deadline: None,
            drain_forced: false,
            exit_when_empty: false,
            completions: Vec::with_capacity(1024),
            expired: Vec::new(),
            pieces: Vec::new(),
            hubs: std::collections::HashMap::new(),
            fw_state: FirewallState::new(workers),
            fw_trace: Vec::new(),
            // 1 µs to 1 h, 2 significant digits: a few KiB per worker.
            handshake_us: hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 2)
                .map_err(std::io::Error::other)?,
        })
    }

    /// Records the handshake latency of the connection in `slot` (response head queued now).
    fn record_handshake(&mut self, slot: usize) {
        let now_us = self.start.elapsed().as_micros() as u64;
        let took = now_us.saturating_sub(self.conns[slot].accepted_us).max(1);
        let _ = self.handshake_us.record(took);
    }

    fn now(&self) -> Tick {
        self.start.elapsed().as_millis() as Tick
    }

    fn random(&mut self) -> u32 {
        // xorshift64: jitter needs spread, not cryptographic quality.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 32) as u32
    }

    /// Queues an operation.
    fn submit(&mut self, entry: squeue::Entry) {
        // SAFETY: every entry built in this module refers only to (a) a connection's own
        // heap buffers (the boxed handshake buffers and connect address, queued chunks, the
        // boxed `SendBatch` whose iovecs point at queued chunks), which are neither
        // moved nor mutated while an operation on them is in flight and are freed only when
        // the connection's `ops` count is zero; (b) the provided-buffer ring, which lives as
        // long as the worker; (c) `'static` bytes; (d) the boxed `wake_buf`; or (e) file
        // descriptors that stay open until their operations completed.
        unsafe { self.ring.push(entry) };
    }

    /// Asks the kernel to cancel the operation whose `user_data` is `target`. The cancel's
    /// own completion is ignored; the target's completion still arrives and is counted.
    fn submit_cancel(&mut self, target: u64) {
        self.submit(
            opcode::AsyncCancel::new(target)
                .build()
                .user_data(Token::new(Kind::Cancel, 0, 0).encode()),
        );
    }

    /// Runs until shut down and drained; returns the worker's counters.
    pub(crate) fn run(mut self) -> std::io::Result<Stats> {
        self.arm_wake();
        loop {
            let now = self.now();
            self.fire_timers(now);
            self.check_drain(now);
            if self.exit_when_empty && self.conns.is_empty() {
                break;
            }
            self.arm_listeners(now);
            self.bufs.publish();
            self.rearm_starved();
            self.log.flush();
            let timeout = self.wait_timeout(now);
            self.ring.submit_and_wait(timeout)?;
            let mut completions = std::mem::take(&mut self.completions);
            self.ring.drain(&mut completions);
            for c in completions.drain(..) {
                self.on_completion(c);
            }
            self.completions = completions;
        }
        self.log.flush();
        for l in &self.listeners {
            sys::close(l.fd);
        }
        Ok(std::mem::take(&mut self.stats))
    }

    fn wait_timeout(&self, now: Tick) -> Option<Duration> {
        let deadlines = [
            self.wheel.next_expiration(),
            self.accept_paused_until,
            self.drain_deadline,
        ];
        deadlines
            .into_iter()
            .flatten()
            .min()
            .map(|t| Duration::from_millis(t.saturating_sub(now).max(1)))
    }

    fn fire_timers(&mut self, now: Tick) {
        let mut expired = std::mem::take(&mut self.expired);
        self.wheel.advance(now, &mut expired);
        for (slot, generation) in expired.drain(..) {
            self.on_timer(slot as usize, generation, now);
        }
        self.expired = expired;
    }

    fn check_drain(&mut self, now: Tick) {
        if let Some(deadline) = self.drain_deadline
            && now >= deadline
            && !self.drain_forced
        {
            self.drain_forced = true;
            let slots: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for slot in slots {
                self.begin_close(slot, CloseReason::Shutdown);
            }
        }
    }

    fn arm_listeners(&mut self, now: Tick) {
        if !self.accepting {
            return;
        }
        if let Some(until) = self.accept_paused_until {
            if now < until {
                return;
            }
            self.accept_paused_until = None;
        }
        for i in 0..self.listeners.len() {
            if !self.listeners[i].armed {
                let entry = opcode::AcceptMulti::new(types::Fd(self.listeners[i].fd))
                    .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
                    .build()
                    .user_data(Token::new(Kind::Accept, 0, i as u32).encode());
                self.submit(entry);
                self.listeners[i].armed = true;
            }
        }
    }

    fn arm_wake(&mut self) {
        let ptr = (&raw mut *self.wake_buf).cast::<u8>();
        let entry = opcode::Read::new(types::Fd(self.wake_fd), ptr, 8)
            .build()
            .user_data(Token::new(Kind::Wake, 0, 0).encode());
        self.submit(entry);
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
        self.arm_wake();
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Shutdown => {
                self.exit_when_empty = true;
                let timeout = self.settings.drain_timeout;
                self.start_drain(Some(timeout));
            }
            Command::Apply { version, settings } => self.apply(version, *settings),
            Command::Drain { timeout } => self.start_drain(timeout),
            Command::Report { reply } => {
                let _ = reply.send(WorkerReport {
                    index: self.index,
                    config_version: self.config_version,
                    live: self.conns.len(),
                    accepting: self.accepting,
                    stats: self.stats.clone(),
                    handshake_us: self.handshake_us.clone(),
                });
            }
            Command::Connections {
                route,
                limit,
                reply,
            } => {
                let now = self.now();
                let list = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.closing.is_none())
                    .filter(|(_, c)| {
                        route
                            .as_deref()
                            .is_none_or(|want| c.route.as_ref().is_some_and(|r| r.name == want))
                    })
                    .take(limit)
                    .map(|(slot, c)| ConnectionInfo {
                        id: connection_id(self.index, slot, c.generation),
                        worker: self.index,
                        client: c.peer,
                        route: c.route.as_ref().map(|r| r.name.clone()),
                        origin: c.origin_addr,
                        age_ms: now.saturating_sub(c.conn.accepted_at()),
                        bytes_from_client: c.head_bytes + c.conn.bytes_from(Side::Client),
                        bytes_to_client: c.conn.bytes_from(Side::Origin) + c.extra_to_client,
                        state: c.conn.phase().as_str(),
                    })
                    .collect();
                let _ = reply.send(list);
            }
            Command::Publish {
                route,
                channel,
                message,
                skip,
                reply,
            } => {
                let delivered = self.deliver(route.as_deref(), &channel, &message, skip);
                if let Some(reply) = reply {
                    let _ = reply.send(delivered);
                }
            }
            Command::Presence { channel, reply } => {
                let _ = reply.send(self.presence(&channel));
            }
            Command::SpreadCloses { over } => {
                let now = self.now();
                let window = over.as_millis().max(1) as u64;
                let slots: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                for slot in slots {
                    let at = now + u64::from(self.random()) % window;
                    self.conns[slot]
                        .conn
                        .schedule_close(at, CloseReason::Drained);
                    self.rearm_timer(slot);
                }
            }
            Command::Kill { id, reply } => {
                let slot = (id & 0xffff_ffff) as usize;
                let generation = ((id >> 32) as u32) & 0x00ff_ffff;
                let found = connection_worker(id) == self.index
                    && self
                        .conns
                        .get(slot)
                        .is_some_and(|c| c.generation == generation && c.closing.is_none());
                if found {
                    self.begin_close(slot, CloseReason::Killed);
                    self.maybe_free(slot);
                }
                let _ = reply.send(found);
            }
        }
    }

    /// Swaps the settings new connections use. Live connections hold their own route.
    fn apply(&mut self, version: u64, settings: Settings) {
        self.routes = settings.route_info.iter().cloned().map(Rc::new).collect();
        self.round_robin = vec![RoundRobin::default(); self.routes.len()];
        self.settings = settings;
        self.config_version = version;
        tracing::info!(worker = self.index, version, "configuration applied");
    }

    /// Stops accepting: cancels the multishot accepts and closes the listeners, so the
    /// kernel refuses new connections (a load balancer sees the host leave). Live
    /// connections go on; with a timeout, what is left then is closed.
    fn start_drain(&mut self, timeout: Option<Duration>) {
        let now = self.now();
        if let Some(t) = timeout {
            let deadline = now + t.as_millis() as Tick;
            self.drain_deadline = Some(self.drain_deadline.map_or(deadline, |d| d.min(deadline)));
            let slots: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for slot in slots {
                self.schedule_drain_close(slot);
            }
        }
        if !self.accepting {
            return;
        }
        self.accepting = false;
        for i in 0..self.listeners.len() {
            if self.listeners[i].armed {
                let ud = Token::new(Kind::Accept, 0, i as u32).encode();
                self.submit_cancel(ud);
            }
            // The cancel names the operation, not the fd: closing now is safe, and the
            // kernel stops queueing connections for this worker.
            sys::close(self.listeners[i].fd);
            self.listeners[i].fd = -1;
        }
        tracing::info!(worker = self.index, live = self.conns.len(), "draining");
    }

    /// During a drain with a deadline, a connection that can end with a Close frame (a
    /// `frames` relay after its 101, a function) is sent one in time to finish its close
    /// handshake by the deadline (the route's `close_grace` before it); the others are closed
    /// at the deadline.
    fn schedule_drain_close(&mut self, slot: usize) {
        let Some(deadline) = self.drain_deadline else {
            return;
        };
        let reason = if self.exit_when_empty {
            CloseReason::Shutdown
        } else {
            CloseReason::Drained
        };
        let now = self.now();
        let c = &mut self.conns[slot];
        if c.closing.is_some() || (c.frames.is_none() && c.function.is_none()) {
            return;
        }
        let grace = c
            .route
            .as_ref()
            .map_or(0, |r| r.frames.close_grace.as_millis() as u64);
        c.conn
            .schedule_close(deadline.saturating_sub(grace).max(now), reason);
        self.rearm_timer(slot);
    }

    fn on_completion(&mut self, c: Completion) {
        let Some(token) = Token::decode(c.user_data) else {
            tracing::error!(user_data = c.user_data, "completion with unknown token");
            return;
        };
        match token.kind {
            Kind::Accept => self.on_accept(token.slot as usize, c.result, c.flags),
            Kind::Wake => self.on_wake(),
            Kind::Cancel => {}
            _ => {
                let slot = token.slot as usize;
                let valid = self
                    .conns
                    .get(slot)
                    .is_some_and(|conn| conn.generation == token.generation);
                if !valid {
                    // INVARIANT: a slot is freed only with no op in flight, so this is a bug.
                    tracing::error!(?token, "completion for a freed connection");
                    if let Some(bid) = cqueue::buffer_select(c.flags) {
                        self.bufs.taken();
                        self.bufs.give_back(bid);
                    }
                    return;
                }
                self.on_conn_completion(slot, token.kind, c);
                self.maybe_free(slot);
            }
        }
    }

    fn on_conn_completion(&mut self, slot: usize, kind: Kind, c: Completion) {
        let now = self.now();
        match kind {
            Kind::ClientHead => self.on_client_head(slot, c.result, now),
            Kind::Connect => self.on_connect(slot, c.result, now),
            Kind::OriginHead => self.on_origin_head(slot, c.result, now),
            Kind::RecvClient | Kind::RecvOrigin => {
                self.on_recv(slot, side_of_low_bit(kind), c.result, c.flags, now)
            }
            Kind::SendClient | Kind::SendOrigin => {
                self.on_send(slot, side_of_low_bit(kind), c.result, now)
            }
            Kind::PollInClient | Kind::PollInOrigin => {
                self.on_splice_poll_in(slot, side_of_low_bit(kind), c.result, now)
            }
            Kind::PollOutClient | Kind::PollOutOrigin => {
                self.on_splice_poll_out(slot, side_of_low_bit(kind), c.result, now)
            }
            Kind::WatchClient => self.on_watch_client(slot, c.result),
            Kind::Accept | Kind::Wake | Kind::Cancel => {}
        }
        if self.conns.contains(slot) {
            self.rearm_timer(slot);
        }
    }

    // ----- accept and the client head -------------------------------------------------

    fn on_accept(&mut self, listener: usize, res: i32, flags: u32) {
        if !cqueue::more(flags)
            && let Some(l) = self.listeners.get_mut(listener)
        {
            l.armed = false;
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
                    self.accept_paused_until = Some(self.now() + ACCEPT_BACKOFF_MS);
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
        if !self.accepting || self.conns.len() >= self.settings.max_connections {
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
        let slot = self.conns.insert(Connection {
            generation: self.next_generation,
            conn: Conn::new(
                now,
                self.settings.handshake_ms,
                u64::from(self.settings.relay.max_in_flight),
            ),
            peer,
            sides: [SideIo::new(fd), SideIo::new(-1)],
            ops: 0,
            accepted_us: self.start.elapsed().as_micros() as u64,
            hs: Some(Box::new(Handshake {
                head: Vec::with_capacity(HEAD_BUF_START),
                ..Handshake::default()
            })),
            head_bytes: 0,
            compact: false,
            route: None,
            frames: None,
            traceback: None,
            function: None,
            origin_pick: 0,
            origin_addr: None,
            connecting: false,
            watching: false,
            relay: RelayMode::Buffered,
            extra_to_client: 0,
            after_send: None,
            linger: None,
            send_deadline: None,
            closing: None,
            timer: None,
        });
        self.arm_head_recv(slot, Side::Client);
        self.rearm_timer(slot);
    }

    /// Single-shot recv into the connection's own head buffer (client or origin head).
    fn arm_head_recv(&mut self, slot: usize, side: Side) {
        let max = self.settings.head_limits.max_head_bytes;
        let c = &mut self.conns[slot];
        let hs = handshake(&mut c.hs);
        let buf = match side {
            Side::Client => &mut hs.head,
            Side::Origin => &mut hs.origin_buf,
        };
        if buf.capacity() == buf.len() {
            let grow = buf
                .capacity()
                .max(HEAD_BUF_START)
                .min(max.saturating_sub(buf.len()).max(1));
            buf.reserve_exact(grow);
        }
        let spare = buf.capacity() - buf.len();
        // Never read past the head limit (+1 so "over the limit" is detectable).
        let len = spare.min(max + 1 - buf.len().min(max)) as u32;
        // SAFETY: `len()` is within the allocation, so the offset pointer stays inside it.
        let ptr = unsafe { buf.as_mut_ptr().add(buf.len()) };
        let kind = match side {
            Side::Client => Kind::ClientHead,
            Side::Origin => Kind::OriginHead,
        };
        let entry = opcode::Recv::new(types::Fd(c.sides[side.index()].fd), ptr, len)
            .build()
            .user_data(Token::new(kind, c.generation, slot as u32).encode());
        c.sides[side.index()].recv_armed = true;
        c.ops += 1;
        self.submit(entry);
    }

    /// A head recv completed after the connection started ending (error answer queued,
    /// lingering or closing): account for it and, when lingering on the client, go on
    /// reading to discard. Returns false when the connection is not ending.
    fn head_recv_while_ending(&mut self, slot: usize, side: Side, res: i32) -> bool {
        let c = &mut self.conns[slot];
        if c.closing.is_none() && c.after_send.is_none() && c.linger.is_none() {
            return false;
        }
        c.ops -= 1;
        c.sides[side.index()].recv_armed = false;
        if side == Side::Client
            && c.closing.is_none()
            && let Some((_, reason)) = c.linger
        {
            if res == 0 || (res < 0 && -res != libc::ECANCELED) {
                self.begin_close(slot, reason);
            } else {
                self.arm_recv(slot, Side::Client);
            }
        }
        true
    }

    /// Accounts for `res` bytes the kernel wrote into a head buffer. Returns false on EOF or
    /// error.
    fn grow_head(&mut self, slot: usize, side: Side, res: i32) -> bool {
        let c = &mut self.conns[slot];
        c.ops -= 1;
        c.sides[side.index()].recv_armed = false;
        if res <= 0 {
            return false;
        }
        let hs = handshake(&mut c.hs);
        let buf = match side {
            Side::Client => &mut hs.head,
            Side::Origin => &mut hs.origin_buf,
        };
        let new_len = buf.len() + res as usize;
        debug_assert!(new_len <= buf.capacity());
        // SAFETY: the kernel initialised `res` bytes of the spare capacity we passed it, and
        // `res` is at most the length we asked for.
        unsafe { buf.set_len(new_len.min(buf.capacity())) };
        true
    }

    fn on_client_head(&mut self, slot: usize, res: i32, now: Tick) {
        if self.head_recv_while_ending(slot, Side::Client, res) {
            return;
        }
        if !self.grow_head(slot, Side::Client, res) {
            let reason = if res == 0 {
                CloseReason::ClientGone
            } else {
                CloseReason::ClientReset
            };
            self.begin_close(slot, reason);
            return;
        }
        let settings = &self.settings;
        let c = &mut self.conns[slot];
        let head = &handshake(&mut c.hs).head;
        c.head_bytes = head.len() as u64;
        let cx = HeadContext {
            limits: &settings.head_limits,
            routes: &settings.routes,
            peer: c.peer.ip(),
            proto: "http",
            forwarding: &settings.forwarding,
        };
        let mut gate = FirewallGate {
            firewall: &settings.firewall,
            state: &mut self.fw_state,
            unix_now: wsedge_command::unix_now(),
            route_names: &settings.route_names,
            route_debug: &settings.route_debug,
            trace: &mut self.fw_trace,
        };
        let action = c.conn.on_client_head(head, now, &cx, Some(&mut gate));
        if let HeadAction::Forward { route, .. } | HeadAction::Firewall { route, .. } = &action
            && settings.route_debug.get(*route).copied().unwrap_or(false)
        {
            let mut traceback = vec![format!("route:{}", settings.route_names[*route])];
            traceback.extend(self.fw_trace.iter().map(|e| {
                format!(
                    "rule:{}={}",
                    settings.firewall.rule_name(e.rule),
                    e.outcome.as_str()
                )
            }));
            c.traceback = Some(traceback);
        }
        match action {
            HeadAction::Firewall { route, verdict } => {
                c.route = Some(Rc::clone(&self.routes[route]));
                self.stats.firewall += 1;
                let refusal = Refusal::of(&verdict).unwrap_or(Refusal::Deny);
                if verdict == Verdict::Drop {
                    self.begin_close(slot, CloseReason::Firewall(refusal));
                } else {
                    let mut response = Vec::new();
                    verdict.write_response(&mut response);
                    let response = self.with_debug_headers(slot, response);
                    let status = verdict.status().unwrap_or(403);
                    self.respond(
                        slot,
                        status,
                        Chunk::Owned {
                            data: response,
                            off: 0,
                            counted: false,
                            origin_head: false,
                        },
                        CloseReason::Firewall(refusal),
                    );
                }
            }
            HeadAction::NeedMore => self.arm_head_recv(slot, Side::Client),
            HeadAction::Reject { status, reason } => self.respond_error(slot, status, reason),
            HeadAction::Forward {
                route,
                mut origin_head,
                held,
            } => {
                let info = Rc::clone(&self.routes[route]);
                // The client's early bytes wait for the origin's 101 (or are never forwarded):
                // they count as received from the client only once relayed.
                self.conns[slot].head_bytes -= held.len() as u64;
                match info.function.as_ref().map(|f| f.kind) {
                    Some(FunctionKind::Echo | FunctionKind::Broadcast) => {
                        self.function_upgrade(slot, info, held, now);
                        return;
                    }
                    // Refused by `Settings::from_config` until the worker runs scripts.
                    Some(FunctionKind::Js) => {
                        return self.respond_error(slot, 503, CloseReason::FunctionError);
                    }
                    Some(FunctionKind::Bridge) => {
                        // The edge's own client handshake, then the client's early frames.
                        let random = [self.random(), self.random(), self.random(), self.random()];
                        let mut key = [0u8; 16];
                        for (i, r) in random.iter().enumerate() {
                            key[i * 4..i * 4 + 4].copy_from_slice(&r.to_ne_bytes());
                        }
                        let c = &mut self.conns[slot];
                        let target = info.function.as_ref().and_then(|f| f.bridge.as_ref());
                        if let Some(target) = target {
                            let (head, accept) =
                                bridge_request(&target.host, &target.path, key, c.peer.ip());
                            origin_head = head;
                            c.conn.expect_origin_accept(accept);
                        }
                    }
                    None => {}
                }
                let c = &mut self.conns[slot];
                let hs = handshake(&mut c.hs);
                hs.head = Vec::new();
                hs.held = held;
                hs.origin_head = origin_head;
                c.relay = info.relay;
                c.route = Some(info);
                self.start_connect(slot, route, true, now);
                self.watch_client(slot);
            }
        }
    }

    /// Watches the client for a close (FIN or reset) while the origin handshake is pending,
    /// without reading it: its early bytes stay in the kernel until the 101 is checked. A
    /// client that leaves then takes the origin side down at once.
    fn watch_client(&mut self, slot: usize) {
        let c = &mut self.conns[slot];
        if c.watching || c.closing.is_some() {
            return;
        }
        let entry = opcode::PollAdd::new(
            types::Fd(c.sides[Side::Client.index()].fd),
            libc::POLLRDHUP as u32,
        )
        .build()
        .user_data(Token::new(Kind::WatchClient, c.generation, slot as u32).encode());
        c.watching = true;
        c.ops += 1;
        self.submit(entry);
    }

    fn on_watch_client(&mut self, slot: usize, res: i32) {
        let c = &mut self.conns[slot];
        c.ops -= 1;
        c.watching = false;
        let waiting = matches!(c.conn.phase(), Phase::Connecting | Phase::OriginHead);
        if !waiting || c.closing.is_some() || c.after_send.is_some() || c.linger.is_some() {
            // Cancelled when the relay started, or the connection is ending anyway.
            return;
        }
        let reason = if res < 0 || res & i32::from(libc::POLLERR) != 0 {
            CloseReason::ClientReset
        } else {
            CloseReason::ClientGone
        };
        self.begin_close(slot, reason);
    }

    // ----- the origin -------------------------------------------------------------------

    fn start_connect(&mut self, slot: usize, route: usize, first: bool, now: Tick) {
        let c = &mut self.conns[slot];
        let Some(info) = c.route.clone() else {
            return;
        };
        let count = info.origins.len();
        c.origin_pick = if first {
            self.round_robin
                .get_mut(route)
                .map_or(0, |rr| rr.pick(count))
        } else {
            (c.origin_pick + 1) % count.max(1)
        };
        let addr = info.origins[c.origin_pick];
        c.origin_addr = Some(addr);
        c.conn.on_connect_start(now, info.timers);
        let fd = match sys::tcp_socket(&addr) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(worker = self.index, error = %e, "cannot create origin socket");
                let action = c
                    .conn
                    .on_connect_result(now, Err(ConnectFailure::Local), count);
                self.apply_connect_action(slot, action, now);
                return;
            }
        };
        let _ = sys::set_nodelay(fd);
        c.sides[Side::Origin.index()].fd = fd;
        let raw = handshake(&mut c.hs)
            .connect_addr
            .insert(RawSockAddr::from_std(addr));
        let entry = opcode::Connect::new(types::Fd(fd), raw.as_ptr(), raw.len)
            .build()
            .user_data(Token::new(Kind::Connect, c.generation, slot as u32).encode());
        c.connecting = true;
        c.ops += 1;
        self.submit(entry);
    }

    fn on_connect(&mut self, slot: usize, res: i32, now: Tick) {
        let c = &mut self.conns[slot];
        c.ops -= 1;
        c.connecting = false;
        if let Some(hs) = c.hs.as_mut() {
            hs.connect_addr = None;
        }
        if c.closing.is_some() || c.after_send.is_some() {
            return;
        }
        let result = if res >= 0 {
            Ok(())
        } else {
            match -res {
                libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => {
                    Err(ConnectFailure::Local)
                }
                _ => Err(ConnectFailure::Refused),
            }
        };
        let count = c.route.as_ref().map_or(0, |r| r.origins.len());
        let action = c.conn.on_connect_result(now, result, count);
        self.apply_connect_action(slot, action, now);
    }

    fn apply_connect_action(&mut self, slot: usize, action: ConnectAction, now: Tick) {
        match action {
            ConnectAction::SendHead => {
                let c = &mut self.conns[slot];
                let hs = handshake(&mut c.hs);
                let data = std::mem::take(&mut hs.origin_head);
                hs.origin_buf = Vec::with_capacity(ORIGIN_HEAD_BUF_START);
                c.sides[Side::Origin.index()].push(Chunk::Owned {
                    data,
                    off: 0,
                    counted: false,
                    origin_head: true,
                });
                self.kick_send(slot, Side::Origin);
                self.arm_head_recv(slot, Side::Origin);
            }
            ConnectAction::TryNext => {
                let c = &mut self.conns[slot];
                sys::close(c.sides[Side::Origin.index()].fd);
                c.sides[Side::Origin.index()].fd = -1;
                if let Some(route) = c.conn.route() {
                    self.start_connect(slot, route, false, now);
                }
            }
            ConnectAction::Fail { status, reason } => self.respond_error(slot, status, reason),
        }
    }

    fn on_origin_head(&mut self, slot: usize, res: i32, now: Tick) {
        if self.head_recv_while_ending(slot, Side::Origin, res) {
            return;
        }
        if !self.grow_head(slot, Side::Origin, res) {
            let reason = if res == 0 {
                CloseReason::OriginHeadIncomplete
            } else {
                CloseReason::OriginReset
            };
            self.respond_error(slot, 502, reason);
            return;
        }
        let c = &mut self.conns[slot];
        match c.conn.on_origin_head(
            &handshake(&mut c.hs).origin_buf,
            now,
            &self.settings.head_limits,
        ) {
            OriginAction::NeedMore => self.arm_head_recv(slot, Side::Origin),
            OriginAction::Fail { status, reason } => self.respond_error(slot, status, reason),
            OriginAction::Relay {
                status,
                head_len,
                head,
                body_len,
            } => self.relay_response(slot, status, head_len, head, body_len, now),
        }
    }

    /// Queues the origin's response (its head, or the proxy's rewrite of it, and the bytes that
    /// followed) to the client and starts relaying: on a 101, first the client's held early
    /// bytes to the origin.
    fn relay_response(
        &mut self,
        slot: usize,
        status: u16,
        head_len: usize,
        head: Option<Vec<u8>>,
        body_len: usize,
        now: Tick,
    ) {
        let c = &mut self.conns[slot];
        if c.watching {
            // The relay reads the client from now on (and sees its EOF itself).
            let target = Token::new(Kind::WatchClient, c.generation, slot as u32).encode();
            self.submit_cancel(target);
        }
        let c = &mut self.conns[slot];
        let buf = std::mem::take(&mut handshake(&mut c.hs).origin_buf);
        let held = std::mem::take(&mut handshake(&mut c.hs).held);
        let mut head_len = head_len;
        let mut data = match head {
            Some(mut rewritten) => {
                let body = &buf[head_len..head_len + body_len];
                head_len = rewritten.len();
                rewritten.extend_from_slice(body);
                rewritten
            }
            None => {
                let mut buf = buf;
                buf.truncate(head_len + body_len);
                buf
            }
        };
        let bridged = c
            .route
            .as_ref()
            .and_then(|r| r.function.as_ref())
            .is_some_and(|f| f.kind == FunctionKind::Bridge);
        if bridged
            && status == 101
            && let Some(accept) = c.conn.client_accept()
        {
            // The client gets the edge's own 101, for its own key; the backend's head
            // is not relayed (and no longer counted as in flight).
            let own = switching_protocols(&accept, None);
            c.conn.on_dropped(Side::Origin, head_len);
            let early = data.split_off(head_len);
            c.extra_to_client += own.len() as u64;
            c.sides[Side::Client.index()].push(Chunk::Owned {
                data: own,
                off: 0,
                counted: false,
                origin_head: false,
            });
            data = early;
            head_len = 0;
        }
        if c.traceback.is_some() && c.conn.debug_pragma() {
            let before = data.len();
            data = self.with_debug_headers(slot, data);
            let c = &mut self.conns[slot];
            c.extra_to_client += (data.len() - before) as u64;
            if head_len > 0 {
                head_len += data.len() - before;
            }
        }
        let c = &mut self.conns[slot];
        let framed = status == 101 && c.relay == RelayMode::Frames;
        let early_origin = if framed && data.len() > head_len {
            data.split_off(head_len)
        } else {
            Vec::new()
        };
        c.sides[Side::Client.index()].push(Chunk::Owned {
            data,
            off: 0,
            counted: true,
            origin_head: false,
        });
        if framed {
            self.frames_start(slot, held, early_origin, now);
            self.schedule_drain_close(slot);
        } else if status == 101 && !held.is_empty() {
            // The upgrade is checked: what the client sent after its head goes on now.
            let c = &mut self.conns[slot];
            c.conn.on_recv(Side::Client, held.len(), now);
            c.sides[Side::Origin.index()].push(Chunk::Owned {
                data: held,
                off: 0,
                counted: true,
                origin_head: false,
            });
            self.kick_send(slot, Side::Origin);
        }
        self.record_handshake(slot);
        let c = &mut self.conns[slot];
        if status == 101 {
            self.stats.upgraded += 1;
        } else {
            self.stats.plain_http += 1;
            // A response relayed as is goes through the buffered path.
            c.relay = RelayMode::Buffered;
        }
        if self.conns[slot].closing.is_some() {
            return;
        }
        // No head recv or connect is in flight now: the buffers can go.
        self.conns[slot].hs = None;
        self.conns[slot].compact = true;
        let random = self.random();
        self.conns[slot].conn.start_relay_timers(random);
        self.kick_send(slot, Side::Client);
        self.after_progress(slot);
    }

    // ----- sending ----------------------------------------------------------------------

    /// Where the unwritten bytes of `chunk` start, and how many there are.
    fn chunk_bytes(&self, chunk: &Chunk) -> (*const u8, u32) {
        match chunk {
            Chunk::Buf { bid, off, len, .. } => {
                // SAFETY: off < len <= buffer size, so the offset stays inside the buffer.
                (unsafe { self.bufs.ptr(*bid).add(*off as usize) }, len - off)
            }
            Chunk::Owned { data, off, .. } => (data[*off..].as_ptr(), (data.len() - off) as u32),
            Chunk::Static { data, off } => (data[*off..].as_ptr(), (data.len() - off) as u32),
            Chunk::Shared { data, off } => (data[*off..].as_ptr(), (data.len() - off) as u32),
        }
    }

    /// Writes the front of `to`'s queue: one `Send` for a single chunk, one `SendMsg` with an
    /// iovec per chunk for up to [`MAX_BATCH`] of them.
    fn kick_send(&mut self, slot: usize, to: Side) {
        let c = &self.conns[slot];
        let io = &c.sides[to.index()];
        if io.sending || io.fd < 0 || io.outq.is_empty() {
            return;
        }
        let token = Token::new(send_kind(to), c.generation, slot as u32).encode();
        let fd = io.fd;
        let entry = if io.outq.len() == 1 {
            let (ptr, len) = self.chunk_bytes(&io.outq[0]);
            opcode::Send::new(types::Fd(fd), ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        } else {
            let mut iov = [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; MAX_BATCH];
            let mut count = 0;
            for chunk in io.outq.iter().take(MAX_BATCH) {
                let (ptr, len) = self.chunk_bytes(chunk);
                iov[count] = libc::iovec {
                    iov_base: ptr.cast_mut().cast(),
                    iov_len: len as usize,
                };
                count += 1;
            }
            let io = &mut self.conns[slot].sides[to.index()];
            let batch = io.batch.get_or_insert_with(SendBatch::new);
            batch.iov = iov;
            batch.msg.msg_iov = batch.iov.as_mut_ptr();
            batch.msg.msg_iovlen = count as _;
            opcode::SendMsg::new(types::Fd(fd), &raw const batch.msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
        };
        let c = &mut self.conns[slot];
        c.sides[to.index()].sending = true;
        c.ops += 1;
        self.submit(entry.user_data(token));
    }

    fn on_send(&mut self, slot: usize, to: Side, res: i32, now: Tick) {
        let c = &mut self.conns[slot];
        c.ops -= 1;
        c.sides[to.index()].sending = false;
        if c.closing.is_some() {
            return;
        }
        if res <= 0 {
            let reason = c.after_send.unwrap_or(reset_reason(to));
            self.begin_close(slot, reason);
            return;
        }
        let n = res as usize;
        c.sides[to.index()].queued = c.sides[to.index()].queued.saturating_sub(n);
        match to {
            Side::Client => self.stats.bytes_to_clients += n as u64,
            Side::Origin => self.stats.bytes_from_clients += n as u64,
        }
        // A batched send may have written several chunks, the last one perhaps in part.
        let mut head_sent = false;
        let mut left = n;
        while left > 0 {
            let io = &mut c.sides[to.index()];
            let Some(front) = io.outq.front_mut() else {
                break;
            };
            let take = left.min(front.remaining());
            left -= take;
            let mut release = None;
            match front {
                Chunk::Buf {
                    bid,
                    off,
                    len,
                    release: last,
                } => {
                    *off += take as u32;
                    if *off >= *len && *last {
                        release = Some(*bid);
                    }
                    c.conn.on_sent(to, take, now);
                }
                Chunk::Owned {
                    data,
                    off,
                    counted,
                    origin_head,
                } => {
                    *off += take;
                    if *counted {
                        c.conn.on_sent(to, take, now);
                    }
                    head_sent |= *origin_head && *off >= data.len();
                }
                Chunk::Static { off, .. } | Chunk::Shared { off, .. } => *off += take,
            }
            let io = &mut c.sides[to.index()];
            if io.outq.front().is_some_and(|f| f.remaining() == 0) {
                io.outq.pop_front();
            }
            if let Some(bid) = release {
                self.bufs.give_back(bid);
            }
        }
        if c.compact && c.sides.iter().all(|io| io.outq.is_empty()) {
            // The handshake's queues drained: an idle connection keeps no allocation.
            c.compact = false;
            for io in &mut c.sides {
                io.outq = VecDeque::new();
                io.batch = None;
            }
        }
        let c = &mut self.conns[slot];
        if head_sent && c.conn.on_origin_head_sent() {
            self.after_progress(slot);
        }
        let c = &mut self.conns[slot];
        if c.sides[to.index()].outq.is_empty()
            && to == Side::Client
            && let Some(reason) = c.after_send.take()
        {
            self.start_linger(slot, reason, now);
            return;
        }
        self.kick_send(slot, to);
        if self.conns[slot].function.is_some() {
            self.function_read(slot);
        } else {
            self.after_progress(slot);
        }
    }

    // ----- relay ------------------------------------------------------------------------

    /// Re-evaluates a relaying connection after any event: start or stop reading each side,
    /// pass half-closes on, and end it when both directions are done.
    fn after_progress(&mut self, slot: usize) {
        let c = &mut self.conns[slot];
        if c.closing.is_some() || c.after_send.is_some() || c.linger.is_some() {
            return;
        }
        if c.function.is_some() {
            self.function_read(slot);
            return;
        }
        if c.conn.phase() != Phase::Relay && c.conn.phase() != Phase::OriginHead {
            return;
        }
        for from in [Side::Client, Side::Origin] {
            let to = from.other();
            if self.conns[slot].conn.wants_shutdown(to) {
                let c = &mut self.conns[slot];
                sys::shutdown(c.sides[to.index()].fd, libc::SHUT_WR);
                c.conn.mark_shutdown(to);
            }
            let c = &self.conns[slot];
            let wants = c.conn.wants_read(from);
            let upgraded = c.conn.status() == Some(101);
            let io = &c.sides[from.index()];
            let splice = !io.no_splice
                && (c.relay == RelayMode::Splice || (c.relay == RelayMode::Auto && io.bulk));
            if splice && upgraded {
                if io.recv_armed {
                    // `auto` going bulk: the multishot recv ends first (what it still
                    // delivers is forwarded as usual), then the buffered bytes drain.
                    if !io.recv_cancelled {
                        self.cancel_recv(slot, from);
                    }
                } else if wants
                    && io.splice == SpliceStage::Idle
                    && c.sides[to.index()].outq.is_empty()
                {
                    self.splice_arm_poll(slot, from, false);
                }
            } else {
                let io = &c.sides[from.index()];
                if wants && !io.recv_armed {
                    self.arm_recv(slot, from);
                } else if !wants && io.recv_armed && !io.recv_cancelled {
                    self.cancel_recv(slot, from);
                }
            }
        }
        let c = &mut self.conns[slot];
        if let (Some(reason), Some(frames)) = (c.conn.graceful_close(), c.frames.as_mut()) {
            let eof = [c.conn.saw_eof(Side::Client), c.conn.saw_eof(Side::Origin)];
            if let Some((violator, code)) = frames.deferred_close {
                let other = violator.other().index();
                if frames.close_received[other] || eof[other] {
                    frames.deferred_close = None;
                    self.frames_send_close(slot, violator, code, "");
                }
            }
            let c = &self.conns[slot];
            if c.frames
                .as_ref()
                .is_some_and(|f| f.deferred_close.is_none() && f.handshake_done(eof))
            {
                self.finish_after_flush(slot, reason);
                return;
            }
        }
        if let Some(reason) = self.conns[slot].conn.finished() {
            if self.conns[slot].conn.status() == Some(101) {
                let reason = self.conns[slot].conn.graceful_close().unwrap_or(reason);
                self.begin_close(slot, reason);
            } else {
                let now = self.now();
                self.start_linger(slot, reason, now);
            }
        }
    }

    fn arm_recv(&mut self, slot: usize, from: Side) {
        let c = &mut self.conns[slot];
        let io = &mut c.sides[from.index()];
        if io.fd < 0 {
            return;
        }
        let entry = opcode::RecvMulti::new(types::Fd(io.fd), BUF_GROUP)
            .build()
            .user_data(Token::new(recv_kind(from), c.generation, slot as u32).encode());
        io.recv_armed = true;
        io.recv_cancelled = false;
        c.ops += 1;
        self.submit(entry);
    }

    fn cancel_recv(&mut self, slot: usize, from: Side) {
        let c = &mut self.conns[slot];
        c.sides[from.index()].recv_cancelled = true;
        let target = Token::new(recv_kind(from), c.generation, slot as u32).encode();
        self.submit_cancel(target);
    }

    fn on_recv(&mut self, slot: usize, from: Side, res: i32, flags: u32, now: Tick) {
        let bid = cqueue::buffer_select(flags);
        if bid.is_some() {
            self.bufs.taken();
        }
        let c = &mut self.conns[slot];
        if !cqueue::more(flags) {
            c.ops -= 1;
            c.sides[from.index()].recv_armed = false;
            c.sides[from.index()].recv_cancelled = false;
        }
        if c.closing.is_some() || c.linger.is_some() || c.after_send.is_some() {
            // Discarding (lingering close, or a final answer being written) or tearing down.
            if let Some(bid) = bid {
                self.bufs.give_back(bid);
            }
            if res <= 0
                && let Some((_, reason)) = self.conns[slot].linger
            {
                self.begin_close(slot, reason);
            }
            return;
        }
        match res {
            n if n > 0 => {
                let Some(bid) = bid else {
                    tracing::error!("recv completion without a buffer");
                    self.begin_close(slot, reset_reason(from));
                    return;
                };
                if c.function.is_some() {
                    self.function_on_recv(slot, bid, n as usize, now);
                    return;
                }
                let forward = if c.frames.is_some() {
                    c.conn.on_recv(from, n as usize, now)
                } else {
                    // A plain request's body or a declined upgrade's response ends inside
                    // these bytes at most once: what follows it is never relayed.
                    c.conn
                        .on_recv_data(from, self.bufs.bytes(bid, n as usize), now)
                };
                if c.relay == RelayMode::Auto && n as u32 == self.settings.relay.buffer_size {
                    c.sides[from.index()].bulk = true;
                }
                if c.frames.is_some() {
                    self.frames_on_recv(slot, from, bid, n as usize, now);
                    return;
                }
                if forward > 0 {
                    let to = from.other();
                    c.sides[to.index()].push(Chunk::Buf {
                        bid,
                        off: 0,
                        len: forward as u32,
                        release: true,
                    });
                    self.kick_send(slot, to);
                } else {
                    self.bufs.give_back(bid);
                }
            }
            0 if c.function.is_some() => {
                self.begin_close(slot, CloseReason::ClientClosed);
                return;
            }
            0 => c.conn.on_eof(from),
            e if -e == libc::ENOBUFS => {
                self.starved.push((slot as u32, c.generation, from));
            }
            e if -e == libc::ECANCELED => {}
            _ => {
                self.begin_close(slot, reset_reason(from));
                return;
            }
        }
        self.after_progress(slot);
    }

    fn rearm_starved(&mut self) {
        if self.starved.is_empty()
            || self.bufs.held() >= usize::from(self.settings.relay.buffer_count)
        {
            return;
        }
        let starved = std::mem::take(&mut self.starved);
        for (slot, generation, _side) in starved {
            let slot = slot as usize;
            if self
                .conns
                .get(slot)
                .is_some_and(|c| c.generation == generation)
            {
                self.after_progress(slot);
            }
        }
    }

    // ----- frames relay -----------------------------------------------------------------

    /// Sets up frame tracking when a `frames` route upgraded: the client's held early bytes
    /// go to the origin and the origin's early bytes to the client, each through its tracker.
    fn frames_start(&mut self, slot: usize, held: Vec<u8>, early_origin: Vec<u8>, now: Tick) {
        let c = &mut self.conns[slot];
        let Some(route) = c.route.clone() else {
            return;
        };
        let options = &route.frames;
        c.conn.set_frame_timers(FrameTimers {
            keepalive_ms: options.keepalive_interval.map(|d| d.as_millis() as u64),
            keepalive_timeout_ms: options.keepalive_timeout.as_millis() as u64,
            close_grace_ms: options.close_grace.as_millis() as u64,
        });
        c.frames = Some(Box::new(FramesState::new(options, now)));
        for (from, early) in [(Side::Client, held), (Side::Origin, early_origin)] {
            if early.is_empty() || self.conns[slot].closing.is_some() {
                continue;
            }
            let mut pieces = std::mem::take(&mut self.pieces);
            pieces.clear();
            let c = &mut self.conns[slot];
            if from == Side::Client {
                // The origin's early bytes were counted with the response head; these were held.
                c.conn.on_recv(from, early.len(), now);
            }
            let Some(state) = c.frames.as_mut() else {
                return;
            };
            let outcome = state.on_chunk(from, &early, now, &mut pieces);
            let io = &mut c.sides[from.other().index()];
            for piece in pieces.drain(..) {
                let (data, counted) = match piece {
                    Piece::Forward(range) => (early[range].to_vec(), true),
                    Piece::Inject(frame) => (frame, false),
                };
                io.push(Chunk::Owned {
                    data,
                    off: 0,
                    counted,
                    origin_head: false,
                });
            }
            self.pieces = pieces;
            self.kick_send(slot, from.other());
            self.frames_outcome(slot, from, outcome, now, true);
        }
    }

    /// A chunk from `from` on a `frames` route: forwards its frames as ranges of the
    /// buffer, with injected frames at boundaries, and acts on what the tracker saw.
    fn frames_on_recv(&mut self, slot: usize, from: Side, bid: u16, n: usize, now: Tick) {
        let mut pieces = std::mem::take(&mut self.pieces);
        pieces.clear();
        let c = &mut self.conns[slot];
        let Some(state) = c.frames.as_mut() else {
            self.pieces = pieces;
            return;
        };
        let outcome = state.on_chunk(from, self.bufs.bytes(bid, n), now, &mut pieces);
        let last_forward = pieces.iter().rposition(|p| matches!(p, Piece::Forward(_)));
        let to = from.other();
        let io = &mut c.sides[to.index()];
        for (i, piece) in pieces.drain(..).enumerate() {
            io.push(match piece {
                Piece::Forward(range) => Chunk::Buf {
                    bid,
                    off: range.start as u32,
                    len: range.end as u32,
                    release: Some(i) == last_forward,
                },
                Piece::Inject(data) => Chunk::Owned {
                    data,
                    off: 0,
                    counted: false,
                    origin_head: false,
                },
            });
        }
        if last_forward.is_none() {
            self.bufs.give_back(bid);
        }
        self.pieces = pieces;
        self.kick_send(slot, to);
        self.frames_outcome(slot, from, outcome, now, true);
    }

    fn frames_outcome(
        &mut self,
        slot: usize,
        from: Side,
        outcome: frames::ChunkOutcome,
        _now: Tick,
        counted: bool,
    ) {
        let c = &mut self.conns[slot];
        if counted {
            c.conn.on_dropped(from, outcome.dropped);
        }
        match from {
            Side::Client => self.stats.messages_from_clients += outcome.messages,
            Side::Origin => self.stats.messages_from_origins += outcome.messages,
        }
        if !outcome.close_codes.is_empty() {
            let route = c.route.as_ref().map_or("", |r| r.name.as_str());
            for code in &outcome.close_codes {
                *self
                    .stats
                    .close_codes_seen
                    .entry((route.to_owned(), *code))
                    .or_default() += 1;
            }
        }
        if outcome.close_received {
            c.conn.on_close_frame(from);
        }
        if outcome.pong {
            c.conn.on_pong();
        }
        if let Some((code, reason)) = outcome.violation {
            tracing::debug!(worker = self.index, side = ?from, code, reason = reason.as_str(), "frame rule broken");
            self.frames_violation(slot, from, code, reason);
        }
        self.after_progress(slot);
    }

    /// Queues a frame the proxy originates toward `to`, at the next frame boundary.
    fn frames_inject(&mut self, slot: usize, to: Side, frame: Vec<u8>, stop: bool) {
        let c = &mut self.conns[slot];
        let Some(state) = c.frames.as_mut() else {
            return;
        };
        if let Some(data) = state.inject(to, frame, stop) {
            c.sides[to.index()].push(Chunk::Owned {
                data,
                off: 0,
                counted: false,
                origin_head: false,
            });
            self.kick_send(slot, to);
        }
    }

    fn frames_send_close(&mut self, slot: usize, to: Side, code: u16, reason: &str) {
        let mask = self.random().to_ne_bytes();
        let frame = frames::close_frame(to, code, reason, mask);
        if let Some(route) = self.conns[slot].route.as_ref() {
            *self
                .stats
                .close_codes_sent
                .entry((route.name.clone(), code))
                .or_default() += 1;
        }
        self.frames_inject(slot, to, frame, true);
    }

    /// Closes once the client's queue (a Close frame, most likely) is written, with a bounded
    /// wait; at once if nothing is queued.
    fn finish_after_flush(&mut self, slot: usize, reason: CloseReason) {
        let now = self.now();
        let c = &mut self.conns[slot];
        if c.sides[Side::Client.index()].outq.is_empty() {
            self.begin_close(slot, reason);
        } else {
            c.conn.close();
            c.after_send = Some(reason);
            c.send_deadline = Some(now + LINGER_MS);
        }
    }

    /// Ends a `frames` connection politely: Close (the route's code, 1001 by default) to both
    /// sides at a frame boundary, then waits for the close handshake up to the grace period.
    fn start_graceful_close(&mut self, slot: usize, reason: CloseReason) {
        let now = self.now();
        let c = &mut self.conns[slot];
        let Some(state) = c.frames.as_mut() else {
            self.begin_close(slot, reason);
            return;
        };
        if state.graceful {
            return;
        }
        state.graceful = true;
        c.conn.begin_graceful_close(now, reason);
        let (code, text) = c.route.as_ref().map_or((1001, String::new()), |r| {
            (r.frames.close_code, r.frames.close_reason.clone())
        });
        self.frames_send_close(slot, Side::Client, code, &text);
        self.frames_send_close(slot, Side::Origin, code, &text);
        self.rearm_timer(slot);
    }

    /// A side broke the protocol or a limit: Close `code` to it, 1001 to the other side.
    fn frames_violation(&mut self, slot: usize, violator: Side, code: u16, reason: CloseReason) {
        let now = self.now();
        let c = &mut self.conns[slot];
        let Some(state) = c.frames.as_mut() else {
            return;
        };
        // Its stream is broken: no close reply is expected from it.
        state.close_received[violator.index()] = true;
        if state.graceful {
            return;
        }
        state.graceful = true;
        // The other side first: what it still sends (answers to the violator's valid frames
        // before the violation) reaches the violator before its Close, as it would directly.
        state.deferred_close = Some((violator, code));
        c.conn.begin_graceful_close(now, reason);
        self.frames_send_close(slot, violator.other(), 1001, "going away");
        self.rearm_timer(slot);
    }

    fn send_keepalive_ping(&mut self, slot: usize) {
        let Some(state) = self.conns[slot].frames.as_mut() else {
            return;
        };
        let frame = state.ping_frame();
        self.frames_inject(slot, Side::Client, frame, false);
    }

    // ----- splice relay -----------------------------------------------------------------

    fn splice_arm_poll(&mut self, slot: usize, from: Side, out: bool) {
        let c = &mut self.conns[slot];
        let (fd, events, stage) = if out {
            (
                c.sides[from.other().index()].fd,
                libc::POLLOUT,
                SpliceStage::PollOut,
            )
        } else {
            (c.sides[from.index()].fd, libc::POLLIN, SpliceStage::PollIn)
        };
        let entry = opcode::PollAdd::new(types::Fd(fd), events as u32)
            .build()
            .user_data(Token::new(splice_kind(stage, from), c.generation, slot as u32).encode());
        c.sides[from.index()].splice = stage;
        c.ops += 1;
        self.submit(entry);
    }

    /// Accounts for a finished operation of the splice relay of bytes from `from`. Returns
    /// false when the connection is closing: a pipe the direction held is discarded (it may
    /// still hold bytes), and nothing more is done.
    fn splice_op_done(&mut self, slot: usize, from: Side) -> bool {
        let c = &mut self.conns[slot];
        c.ops -= 1;
        let io = &mut c.sides[from.index()];
        io.splice = SpliceStage::Idle;
        if c.closing.is_some() {
            if let Some(pipe) = io.pipe.take() {
                self.pipes.discard(pipe);
            }
            return false;
        }
        true
    }

    fn on_splice_poll_in(&mut self, slot: usize, from: Side, res: i32, now: Tick) {
        if !self.splice_op_done(slot, from) {
            return;
        }
        if res < 0 {
            self.begin_close(slot, reset_reason(from));
            return;
        }
        self.splice_pump(slot, from, now);
    }

    fn on_splice_poll_out(&mut self, slot: usize, from: Side, res: i32, now: Tick) {
        if !self.splice_op_done(slot, from) {
            return;
        }
        if res < 0 {
            self.begin_close(slot, reset_reason(from.other()));
            return;
        }
        if self.splice_flush(slot, from, now) {
            self.splice_pump(slot, from, now);
        }
    }

    /// Moves bytes from `from` through a pipe to the other side with synchronous
    /// non-blocking splices until the source is empty or gave less than a pipeful (then
    /// waits for input again), the destination is full (waits for it), or the per-wakeup
    /// budget is spent (polls again, which completes at once: other connections get their
    /// turn in between).
    fn splice_pump(&mut self, slot: usize, from: Side, now: Tick) {
        const ROUNDS_PER_WAKEUP: usize = 8;
        for _ in 0..ROUNDS_PER_WAKEUP {
            let c = &mut self.conns[slot];
            let io = &mut c.sides[from.index()];
            let pipe = match io.pipe.take() {
                Some(p) => p,
                None => match self.pipes.take() {
                    Ok(p) => p,
                    Err(e) => {
                        // Nothing was read yet: the buffered relay takes this direction
                        // over without losing a byte.
                        tracing::warn!(worker = self.index, error = %e, "cannot create a splice pipe; relaying this direction buffered");
                        self.stats.splice_fallbacks += 1;
                        io.no_splice = true;
                        self.after_progress(slot);
                        return;
                    }
                },
            };
            match sys::splice(io.fd, pipe.write, self.pipes.size()) {
                Ok(0) => {
                    self.pipes.put(pipe);
                    c.conn.on_eof(from);
                    self.after_progress(slot);
                    return;
                }
                Ok(n) => {
                    io.pipe = Some(pipe);
                    io.in_pipe = n as u32;
                    c.conn.on_recv(from, n, now);
                    // Less than a pipeful: the source is most likely empty now. Polling
                    // again (which checks readiness first) is cheaper than a splice that
                    // would only say EAGAIN.
                    if n < self.pipes.size() as usize {
                        if self.splice_flush(slot, from, now) {
                            self.after_progress(slot);
                        }
                        return;
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    self.pipes.put(pipe);
                    self.after_progress(slot);
                    return;
                }
                Err(_) => {
                    self.pipes.put(pipe);
                    self.begin_close(slot, reset_reason(from));
                    return;
                }
            }
            if !self.splice_flush(slot, from, now) {
                return;
            }
        }
        self.splice_arm_poll(slot, from, false);
    }

    /// Writes what the pipe of `from`'s direction holds to the other side. True when the
    /// pipe is empty (and back in the pool); false when it waits for the destination to
    /// drain or the connection is closing.
    fn splice_flush(&mut self, slot: usize, from: Side, now: Tick) -> bool {
        let c = &mut self.conns[slot];
        let to_fd = c.sides[from.other().index()].fd;
        let io = &mut c.sides[from.index()];
        let Some(pipe) = io.pipe.as_ref() else {
            return true;
        };
        while io.in_pipe > 0 {
            match sys::splice(pipe.read, to_fd, io.in_pipe) {
                Ok(n) => {
                    io.in_pipe -= (n as u32).min(io.in_pipe);
                    c.conn.on_sent(from.other(), n, now);
                }
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    self.splice_arm_poll(slot, from, true);
                    return false;
                }
                Err(_) => {
                    self.begin_close(slot, reset_reason(from.other()));
                    return false;
                }
            }
        }
        if let Some(pipe) = io.pipe.take() {
            self.pipes.put(pipe);
        }
        true
    }

    // ----- endings ----------------------------------------------------------------------

    /// Answers `status` to the client (a canned response), tears the origin down, then
    /// closes with a lingering close so the client can read the answer.
    fn respond_error(&mut self, slot: usize, status: u16, reason: CloseReason) {
        let data = error_response(status);
        self.respond(slot, status, Chunk::Static { data, off: 0 }, reason);
    }

    /// With debug rules on the route and `Pragma: wsedge-debug` on the request, adds headers
    /// naming the route, origin, matched rules and worker to the response head at the
    /// start of `response`. Otherwise returns it unchanged: nothing leaks when debug is off.
    fn with_debug_headers(&self, slot: usize, mut response: Vec<u8>) -> Vec<u8> {
        let c = &self.conns[slot];
        let Some(traceback) = c.traceback.as_ref() else {
            return response;
        };
        if !c.conn.debug_pragma() {
            return response;
        }
        let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
            return response;
        };
        let route = c.route.as_ref().map_or("-", |r| r.name.as_str());
        let origin = c
            .origin_addr
            .map_or_else(|| "-".to_owned(), |a| a.to_string());
        let not_matched = format!("={}", TraceOutcome::NotMatched.as_str());
        let rules: Vec<&str> = traceback
            .iter()
            .filter_map(|t| t.strip_prefix("rule:"))
            .filter(|t| !t.ends_with(not_matched.as_str()))
            .collect();
        let headers = format!(
            "X-Wsedge-Route: {route}\r\nX-Wsedge-Origin: {origin}\r\nX-Wsedge-Rules: {}\r\nX-Wsedge-Worker: {}\r\n",
            if rules.is_empty() {
                "-".to_owned()
            } else {
                rules.join(", ")
            },
            self.index
        );
        response.splice(end + 2..end + 2, headers.into_bytes());
        response
    }

    /// Sends `answer` (a complete response) and closes with a lingering close.
    fn respond(&mut self, slot: usize, status: u16, answer: Chunk, reason: CloseReason) {
        let c = &mut self.conns[slot];
        if c.closing.is_some() || c.after_send.is_some() {
            return;
        }
        c.conn.set_status(status);
        c.conn.close();
        self.teardown_origin(slot);
        let now = self.now();
        let c = &mut self.conns[slot];
        c.extra_to_client += answer.remaining() as u64;
        c.after_send = Some(reason);
        if c.sides[Side::Client.index()].recv_armed {
            // A pending head read: cancel it (not SHUT_RD, which would spoil the lingering
            // close); its completion is handled by `head_recv_while_ending`.
            let target = Token::new(Kind::ClientHead, c.generation, slot as u32).encode();
            self.submit_cancel(target);
        }
        let c = &mut self.conns[slot];
        c.sides[Side::Client.index()].push(answer);
        c.linger = None;
        // The answer itself must go out within the linger time.
        c.send_deadline = Some(now + LINGER_MS);
        self.kick_send(slot, Side::Client);
    }

    fn teardown_origin(&mut self, slot: usize) {
        let c = &mut self.conns[slot];
        if c.connecting {
            let target = Token::new(Kind::Connect, c.generation, slot as u32).encode();
            self.submit_cancel(target);
        } else {
            sys::shutdown(c.sides[Side::Origin.index()].fd, libc::SHUT_RDWR);
        }
    }

    /// Shuts the client's write side and discards what it still sends until EOF or the
    /// linger deadline, so closing never resets an answer the client has not read yet.
    fn start_linger(&mut self, slot: usize, reason: CloseReason, now: Tick) {
        self.teardown_origin(slot);
        let c = &mut self.conns[slot];
        c.conn.close();
        c.after_send = None;
        c.send_deadline = None;
        c.linger = Some((now + LINGER_MS, reason));
        let fd = c.sides[Side::Client.index()].fd;
        sys::shutdown(fd, libc::SHUT_WR);
        // Read to discard; a head recv still pending re-arms this when it completes.
        if !c.sides[Side::Client.index()].recv_armed {
            self.arm_recv(slot, Side::Client);
        }
    }

    /// Ends a connection: logs it once, wakes every in-flight operation (shutdown, cancel),
    /// and frees the slot when the last one has completed.
    fn begin_close(&mut self, slot: usize, reason: CloseReason) {
        let now = self.now();
        let c = &mut self.conns[slot];
        if c.closing.is_some() {
            return;
        }
        c.closing = Some(reason);
        c.conn.close();
        if c.conn.firewall_admitted() {
            self.fw_state.on_connection_close(c.peer.ip());
        }
        if c.function.is_some() {
            self.broadcast_leave_all(slot);
        }
        let c = &mut self.conns[slot];
        if let Some((id, _)) = c.timer.take() {
            self.wheel.cancel(id);
        }
        let c = &self.conns[slot];
        let route = c.route.as_ref().map(|r| r.name.as_str());
        let from_client = c.head_bytes + c.conn.bytes_from(Side::Client);
        let to_client = c.conn.bytes_from(Side::Origin) + c.extra_to_client;
        *self.stats.closed.entry(reason.as_str()).or_default() += 1;
        if self.log.enabled() {
            self.log.record(&Entry {
                worker: self.index,
                client: c.peer,
                route,
                origin: c.origin_addr,
                status: c.conn.status(),
                bytes_from_client: from_client,
                bytes_to_client: to_client,
                duration_ms: now.saturating_sub(c.conn.accepted_at()),
                reason: reason.as_str(),
                traceback: c.traceback.as_deref(),
            });
        }
        if c.connecting {
            let target = Token::new(Kind::Connect, c.generation, slot as u32).encode();
            self.submit_cancel(target);
        }
        let c = &self.conns[slot];
        // Shutting down completes what is still pending on the sockets; after a clean end
        // (both sides at EOF, nothing in flight) there is nothing to wake, so spare the
        // syscalls: `close` in `maybe_free` ends the connection.
        if c.ops > 0 {
            for side in [Side::Client, Side::Origin] {
                sys::shutdown(c.sides[side.index()].fd, libc::SHUT_RDWR);
            }
        }
        let generation = c.generation;
        let armed: Vec<u64> = [Side::Client, Side::Origin]
            .into_iter()
            .filter(|s| c.sides[s.index()].recv_armed)
            .map(|s| Token::new(recv_kind(s), generation, slot as u32).encode())
            .collect();
        for target in armed {
            self.submit_cancel(target);
        }
    }

    fn maybe_free(&mut self, slot: usize) {
        let Some(c) = self.conns.get(slot) else {
            return;
        };
        if c.closing.is_none() || c.ops > 0 {
            return;
        }
        let mut c = self.conns.remove(slot);
        if let Some((id, _)) = c.timer.take() {
            self.wheel.cancel(id);
        }
        for io in &mut c.sides {
            for chunk in io.outq.drain(..) {
                if let Chunk::Buf {
                    bid, release: true, ..
                } = chunk
                {
                    self.bufs.give_back(bid);
                }
            }
            if let Some(pipe) = io.pipe.take() {
                self.pipes.discard(pipe);
            }
            sys::close(io.fd);
        }
    }

    // ----- timers -----------------------------------------------------------------------

    fn rearm_timer(&mut self, slot: usize) {
        let c = &mut self.conns[slot];
        if c.closing.is_some() {
            return;
        }
        let want = [
            c.conn.poll_timeout(),
            c.linger.map(|(t, _)| t),
            c.send_deadline,
        ]
        .into_iter()
        .flatten()
        .min();
        match (c.timer, want) {
            (Some((_, at)), Some(w)) if w >= at => {}
            (current, Some(w)) => {
                if let Some((id, _)) = current {
                    self.wheel.cancel(id);
                }
                let id = self.wheel.insert(w, (slot as u32, c.generation));
                c.timer = Some((id, w));
            }
            (Some((id, _)), None) => {
                self.wheel.cancel(id);
                c.timer = None;
            }
            (None, None) => {}
        }
    }

    fn on_timer(&mut self, slot: usize, generation: u32, now: Tick) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        if c.generation != generation || c.closing.is_some() {
            return;
        }
        c.timer = None;
        if let Some((deadline, reason)) = c.linger
            && now >= deadline
        {
            self.begin_close(slot, reason);
            return;
        }
        if let Some(deadline) = c.send_deadline
            && now >= deadline
        {
            let reason = c.after_send.unwrap_or(CloseReason::ClientReset);
            self.begin_close(slot, reason);
            return;
        }
        match c.conn.on_timeout(now) {
            Some(TimerAction::Close {
                reason,
                status: Some(status),
            }) => self.respond_error(slot, status, reason),
            Some(TimerAction::Close {
                reason,
                status: None,
            }) if c.function.is_some() => self.function_close(slot, 1001, reason),
            Some(TimerAction::Close {
                reason,
                status: None,
            }) => self.begin_close(slot, reason),
            Some(TimerAction::Ping) => self.send_keepalive_ping(slot),
            Some(TimerAction::GracefulClose(reason)) => self.start_graceful_close(slot, reason),
            None => {}
        }
        if self.conns.contains(slot) {
            self.rearm_timer(slot);
            self.maybe_free(slot);
        }
    }
}
