//! What reaches a worker from outside its thread: [`Command`]s through its [`Mailbox`] (an
//! mpsc channel plus the eventfd whose read is always armed in the worker's ring, so a
//! message wakes the loop), and what it answers ([`WorkerReport`], [`ConnectionInfo`]).
//! Replies travel back on the channel a request carries; the worker never blocks on them.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Duration;

use wsedge_command::ConnectionId;
use wsedge_proto::function::Payload;
use wsedge_ring::sys;

use crate::settings::Settings;
use crate::stats::Stats;

/// Messages to a worker.
#[derive(Debug)]
pub(crate) enum Command {
    /// Stop accepting, let connections run up to the drain timeout, then close them and exit.
    Shutdown,
    /// Use these settings for new connections; live ones keep their route and origin.
    Apply {
        version: u64,
        settings: Box<Settings>,
    },
    /// Serve these TLS listeners (certificates read again) to new handshakes; live
    /// connections keep the configuration they started with. Answers when done.
    Certificates {
        listeners: Vec<wsedge_tls::ServerTls>,
        reply: Sender<usize>,
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
    /// End the connection with this public id.
    Kill {
        id: ConnectionId,
        reply: Sender<bool>,
    },
    /// Deliver a message to this worker's subscribers of `channel`; the reply, when asked
    /// for, is how many received it.
    Publish {
        /// The broadcast route whose channel it is; `None` (the publish API): every
        /// broadcast route's channel of that name.
        route: Option<Arc<str>>,
        channel: Arc<str>,
        message: Arc<Payload>,
        /// The publisher's public id, when it must not receive its own message.
        skip: Option<u64>,
        reply: Option<Sender<usize>>,
    },
    /// How many of this worker's clients are subscribed to `channel`.
    Presence {
        channel: String,
        reply: Sender<usize>,
    },
    /// Spread graceful closes of the live connections over `over` (a Close frame where the
    /// relay can send one, at a random moment of the window; a plain close elsewhere).
    SpreadCloses {
        over: Duration,
    },
    /// A new generation took over after a binary upgrade: stop accepting, close the live
    /// connections at random moments of `over` (bounded by their maximum connection time),
    /// then exit.
    Retire {
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
    /// The provided-buffer ring: its buffers, and those held now (relayed bytes waiting
    /// for a send, a read being handled).
    pub(crate) ring_buffers: usize,
    pub(crate) ring_held: usize,
    /// Clients accepted and not yet answered.
    pub(crate) handshaking: usize,
    /// Accept to response-head-queued, in microseconds, since the worker started.
    pub(crate) handshake_us: hdrhistogram::Histogram<u64>,
    /// Counters of each JavaScript function (by route name) on this worker.
    pub(crate) functions: Vec<(String, wsedge_js::FunctionStats)>,
}

/// One live connection, for `wsedgectl connections`.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionInfo {
    pub(crate) id: ConnectionId,
    pub(crate) worker: usize,
    pub(crate) client: SocketAddr,
    pub(crate) route: Option<String>,
    pub(crate) origin: Option<SocketAddr>,
    pub(crate) age_ms: u64,
    pub(crate) bytes_from_client: u64,
    pub(crate) bytes_to_client: u64,
    pub(crate) state: &'static str,
}

/// A worker's mailbox, as other threads hold it.
#[derive(Debug, Clone)]
pub(crate) struct Mailbox {
    pub(crate) tx: Sender<Command>,
    pub(crate) wake_fd: RawFd,
}

impl Mailbox {
    /// Sends `command` and wakes the worker. False if the worker is gone.
    pub(crate) fn send(&self, command: Command) -> bool {
        if self.tx.send(command).is_err() {
            return false;
        }
        sys::eventfd_signal(self.wake_fd);
        true
    }
}
