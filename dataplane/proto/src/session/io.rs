//! The session's interface with its worker: the inputs it handles, the outputs it emits,
//! and the facts about its ending and phase that the worker reads.

use super::*;

/// An action for the worker, applied in the order given.
#[derive(Debug)]
pub enum Output {
    /// Read into this head buffer (single-shot, up to the head limit); the buffer comes back
    /// with [`Input::HeadRead`].
    ReadHead { side: Side, buf: Vec<u8> },
    /// Open the origin side: a socket connected to `addr` (a failed earlier attempt's socket
    /// is closed first).
    Connect(SocketAddr),
    /// Watch the client for a close (FIN, reset) without reading it: [`Input::ClientLeft`].
    WatchClient,
    /// Stop watching (the relay reads the client from now on).
    UnwatchClient,
    /// Queue bytes to a side.
    Send { to: Side, chunk: Chunk },
    /// Keep a stream read armed on a side (multishot, into provided buffers).
    Read(Side),
    /// Stop reading a side (backpressure, going bulk, discarding): [`Input::ReadEnded`]
    /// follows once no read is armed.
    StopRead(Side),
    /// Relay the bytes coming from this side with splice (socket -> pipe -> socket) for the
    /// rest of the connection: [`Input::Spliced`], [`Input::SpliceWritten`] report progress.
    /// The driver writes the pipe to the other side only once that side's send queue is
    /// empty: an `auto` direction going bulk may still have bytes queued from its buffered
    /// reads; one pipeful of its socket is read at once and waits (an unread socket keeps a
    /// small receive buffer for good, docs/benchmarks.md "Pipe size and TCP memory").
    Splice(Side),
    /// Shut a side's write half (a half-close travels on; a lingering close starts).
    ShutdownWrite(Side),
    /// Tear a side down at once: cancel a pending connect, shut the socket both ways.
    Abort(Side),
    /// Hand a provided buffer back to the ring (its bytes were consumed or dropped).
    Release(BufId),
    /// Something to count.
    Metric(Metric),
    /// What this connection saw of origin `origin` (an index into its route's pool): the
    /// worker hands it to the pool's shared health (`Route::balance`'s view). Given only for
    /// pools that have one.
    OriginOutcome { origin: usize, outcome: Outcome },
    /// The connection is over: log it with this reason, tear it down, free it once no
    /// operation of it is in flight. Always the last output of a session.
    Close(CloseReason),
}

/// What a session reports for the worker's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// The handshake completed (101 queued): handshake latency can be taken now.
    Upgraded,
    /// A response that is not a 101 was relayed.
    PlainHttp,
    /// The firewall refused the handshake.
    Firewall,
    /// Complete data messages seen from a side (frames relay).
    Messages { from: Side, count: u64 },
    /// A Close frame with this code was seen from a side (frames relay).
    CloseSeen(u16),
    /// The proxy sent a Close frame with this code (frames relay).
    CloseSent(u16),
    /// A splice direction could not get a pipe and stays buffered.
    SpliceFallback,
}

/// An event of the connection, for [`Session::handle`].
pub enum Input<'a> {
    /// A head read completed: `result` bytes (0 = EOF, negative = error) landed in `buf`,
    /// which comes back. The client's head is decided with `cx`.
    HeadRead {
        side: Side,
        buf: Vec<u8>,
        result: i32,
        cx: Option<&'a mut HeadContext<'a>>,
    },
    /// The origin side's connect ended.
    Connected(Result<(), ConnectFailure>),
    /// Bytes from a side, in provided buffer `buf` (writable: functions unmask in place).
    Recv {
        from: Side,
        buf: BufId,
        data: &'a mut [u8],
    },
    /// Bytes from a side that are in no provided buffer: a transport made them (TLS
    /// plaintext that did not fit the buffer its ciphertext came in), or the worker copied
    /// them out of a ring running low. Relayed by copy.
    RecvOwned { from: Side, data: &'a mut [u8] },
    /// A side sent EOF.
    Eof(Side),
    /// Reading or writing a side failed (reset, broken pipe).
    Failed(Side),
    /// No read is armed on this side any more (after [`Output::StopRead`]).
    ReadEnded(Side),
    /// Bytes were written to a side: `relayed` of them relayed from the other side, `own`
    /// the proxy's own.
    Sent {
        to: Side,
        relayed: usize,
        own: usize,
    },
    /// The splice relay moved `n` bytes from `from` into its pipe.
    Spliced { from: Side, n: usize },
    /// The splice relay wrote `n` bytes of `from`'s pipe to the other side.
    SpliceWritten { from: Side, n: usize },
    /// No pipe could be had for `from` (descriptors exhausted): nothing was read; it stays
    /// buffered.
    SpliceUnavailable(Side),
    /// The client closed (or reset) while it was watched.
    ClientLeft { reset: bool },
    /// A timer may be due.
    Timeout,
    /// A drain with a deadline: a connection that can end with a Close frame sends it in time
    /// for its close handshake to finish by `deadline`; the others are aborted then.
    DrainBy { deadline: Tick, reason: CloseReason },
    /// A graceful close (a Close frame where the relay can send one, else a close) at `at`.
    CloseAt { at: Tick, reason: CloseReason },
    /// End now (an operator's kill, a forced shutdown).
    Abort(CloseReason),
    /// A channel message for a function's client.
    Deliver(&'a mut Delivery),
    /// The function host has work for this connection's function
    /// (`FunctionHost::poll_wake` named it): [`FunctionSession::on_wake`].
    Wake,
}

impl std::fmt::Debug for Input<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Input::HeadRead { side, result, .. } => {
                write!(f, "HeadRead({side:?}, {result})")
            }
            Input::Connected(r) => write!(f, "Connected({r:?})"),
            Input::Recv { from, buf, data } => {
                write!(f, "Recv({from:?}, {buf:?}, {} bytes)", data.len())
            }
            Input::RecvOwned { from, data } => {
                write!(f, "RecvOwned({from:?}, {} bytes)", data.len())
            }
            Input::Eof(s) => write!(f, "Eof({s:?})"),
            Input::Failed(s) => write!(f, "Failed({s:?})"),
            Input::ReadEnded(s) => write!(f, "ReadEnded({s:?})"),
            Input::Sent { to, relayed, own } => write!(f, "Sent({to:?}, {relayed}+{own})"),
            Input::Spliced { from, n } => write!(f, "Spliced({from:?}, {n})"),
            Input::SpliceWritten { from, n } => write!(f, "SpliceWritten({from:?}, {n})"),
            Input::SpliceUnavailable(s) => write!(f, "SpliceUnavailable({s:?})"),
            Input::ClientLeft { reset } => write!(f, "ClientLeft(reset: {reset})"),
            Input::Timeout => f.write_str("Timeout"),
            Input::DrainBy { deadline, reason } => write!(f, "DrainBy({deadline}, {reason:?})"),
            Input::CloseAt { at, reason } => write!(f, "CloseAt({at}, {reason:?})"),
            Input::Abort(r) => write!(f, "Abort({r:?})"),
            Input::Deliver(d) => write!(f, "Deliver({})", d.channel),
            Input::Wake => f.write_str("Wake"),
        }
    }
}

/// Why a connect attempt failed, as far as retrying cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// Refused or unreachable: another origin may do better.
    Refused,
    /// A local failure (no descriptors, no memory): retrying elsewhere won't help.
    Local,
}

/// What every call of [`Session::handle`] gets besides the input.
pub struct Env<'a> {
    pub now: Tick,
    pub cfg: &'a SessionConfig,
    /// Where outputs go (the worker applies and clears them).
    pub out: &'a mut Vec<Output>,
    /// Channels, for functions.
    pub bus: &'a mut dyn Bus,
    /// This connection's public id.
    pub conn: ConnKey,
    /// The worker's index (debug headers).
    pub worker: usize,
}

impl std::fmt::Debug for Env<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("now", &self.now)
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

/// How a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Not ending.
    Open,
    /// The proxy's last bytes to the client are being written (an error answer, a function's
    /// last frames); then `then`, or a close at `until` if the client does not read.
    Flushing {
        reason: CloseReason,
        until: Tick,
        then: AfterFlush,
    },
    /// The client's write side is shut; its input is read and dropped until its EOF or
    /// `until`, so closing never resets an answer it has not read yet.
    Lingering { reason: CloseReason, until: Tick },
    /// Over ([`Output::Close`] was given).
    Closed(CloseReason),
}

/// What follows a flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFlush {
    Linger,
    Close,
}

/// Where a connection is, for `wsedgectl connections`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    ClientHead,
    Connecting,
    OriginHead,
    Relay,
    Function,
    Ending,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::ClientHead => "client_head",
            Phase::Connecting => "connecting",
            Phase::OriginHead => "origin_head",
            Phase::Relay => "relay",
            Phase::Function => "function",
            Phase::Ending => "ending",
        }
    }
}
