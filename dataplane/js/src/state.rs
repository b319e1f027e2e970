//! What a runtime's native bindings change while JavaScript runs, shared (`Rc<RefCell>`)
//! between the bindings and the Rust side: each connection's outbox (frames to its client
//! and peer, its upgrade or answer, closes, faults), timers, channel operations waiting for a
//! bus, and the connections to wake. JavaScript never holds a borrow of it across a call back
//! into JavaScript, and the Rust side never runs JavaScript while it holds one.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::rc::Rc;

use wsedge_proto::channels::HubLimits;
use wsedge_proto::function::{Bus, ConnKey, Payload};
use wsedge_proto::session::CloseReason;
use wsedge_proto::wheel::Tick;

/// A connection's id inside one runtime (JavaScript sees `id * 2` for its server socket and
/// `id * 2 + 1` for its peer).
pub(crate) type ConnId = u64;

/// How a connection's function answers its request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum Decision {
    #[default]
    Pending,
    Upgrade {
        protocol: Option<String>,
    },
    Respond {
        status: u16,
        response: Vec<u8>,
    },
    /// Given to the session.
    Done,
}

/// The peer (outbound socket) of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum Peer {
    #[default]
    None,
    /// `new WebSocket` asked for it; the session has not been told yet.
    Requested {
        addr: SocketAddr,
        head: Vec<u8>,
        accept: [u8; 28],
        /// `wss://`: the name the peer's certificate is verified against.
        tls: Option<String>,
    },
    /// Connecting, open or done (the session knows).
    Asked,
}

/// Why a connection's function failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// An exception (or an interrupt) in its code: 1011, or 500 before the upgrade.
    Error,
    /// Its runtime went over its memory cap and was torn down.
    Memory,
}

/// One connection as the runtime knows it.
#[derive(Debug, Default)]
pub(crate) struct Conn {
    /// The session's connection key, once it started.
    pub(crate) key: Option<ConnKey>,
    /// A client-less connection (its peer only).
    pub(crate) clientless: bool,
    /// The request is a WebSocket upgrade (it may be upgraded).
    pub(crate) websocket: bool,
    pub(crate) decision: Decision,
    /// Server frames queued to the client.
    pub(crate) to_client: Vec<u8>,
    /// The script closed its server socket: code and reason.
    pub(crate) close_client: Option<(u16, String)>,
    /// Bytes queued to the client as of the last event.
    pub(crate) buffered: usize,
    /// Client frames (masked) queued to the peer.
    pub(crate) peer: Peer,
    pub(crate) to_peer: Vec<u8>,
    /// The script closed its peer socket.
    pub(crate) close_peer: Option<(u16, String)>,
    /// The server socket's open `upgradeWebSocket` options: idle time and lifetime (ms).
    pub(crate) idle_ms: Option<u64>,
    pub(crate) lifetime_ms: Option<u64>,
    pub(crate) last_active: Tick,
    pub(crate) opened_at: Tick,
    pub(crate) fault: Option<Fault>,
    /// The edge ends it: a Close with this code, then finish with this reason.
    pub(crate) shutdown: Option<(u16, CloseReason)>,
    /// Topics its server socket is subscribed to.
    pub(crate) topics: Vec<Box<str>>,
    /// Its server socket has a `gap` listener (`ongap` or `addEventListener("gap")`).
    pub(crate) gap_listener: bool,
    pub(crate) woken: bool,
}

/// A channel operation a script asked for, applied with the next bus.
#[derive(Debug)]
pub(crate) enum BusOp {
    Subscribe(ConnKey, Box<str>),
    Unsubscribe(ConnKey, Box<str>),
    LeaveAll(ConnKey),
    Publish {
        topic: Box<str>,
        payload: Payload,
        skip: Option<ConnKey>,
    },
}

/// A timer of the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timer {
    pub(crate) due: Tick,
    /// An interval's period.
    pub(crate) every: Option<u64>,
}

/// Counts the host keeps per function, across its versions and runtimes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FunctionStats {
    /// Calls into JavaScript: requests, socket events, timers.
    pub invocations: u64,
    /// Exceptions (handlers, timers, rejected promises), interrupts and memory faults.
    pub errors: u64,
    /// Scripts interrupted at their CPU budget (also counted in `errors`).
    pub interrupts: u64,
    /// Time spent in JavaScript, in microseconds.
    pub cpu_us: u64,
    /// Bytes the function's runtimes hold on this worker (at the last report).
    pub memory_bytes: u64,
    /// Live connections (server sockets and client-less peers) on this worker.
    pub sockets: u64,
    /// Runtimes torn down at their memory cap and recreated.
    pub restarts: u64,
    /// The version serving new connections.
    pub version: u64,
}

/// Hashes the ids this runtime hands out (connections, timers: sequential integers no client
/// picks) with one multiplication. SipHash, the default, resists keys an attacker chooses,
/// which these are not, and cost ~6 % of an echo's instructions (a few lookups a message).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: the high bits (which the table's control bytes use) mix every
        // bit of the id; the low ones of sequential ids differ too (the factor is odd).
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A table by runtime id (see [`IdHasher`]).
pub(crate) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Per-topic subscription counts of one function on this worker (shared by its versions).
pub(crate) type Topics = HashMap<Box<str>, usize>;

/// See the module docs.
#[derive(Debug)]
pub(crate) struct State {
    /// The function's (route's) name: logs, channels.
    pub(crate) name: Rc<str>,
    pub(crate) now: Tick,
    rng: u64,
    pub(crate) conns: IdMap<Conn>,
    next_conn: ConnId,
    /// The connection whose event is being handled (and whose promise jobs run after it).
    pub(crate) current: Option<ConnId>,
    pub(crate) wakes: Vec<ConnId>,
    /// Connections with client bytes left for the next turn of the worker's loop (woken by
    /// the host's timer, due at once: not by this turn's wakes, or they would not wait).
    pub(crate) deferred: Vec<ConnId>,
    /// Client-less connections to create.
    pub(crate) outbound: Vec<ConnId>,
    pub(crate) bus_ops: Vec<BusOp>,
    pub(crate) timers: IdMap<Timer>,
    pub(crate) timer_queue: BTreeSet<(Tick, u64)>,
    next_timer: u64,
    /// Connections with a deadline of their own (idle time, lifetime).
    pub(crate) deadlines: BTreeSet<(Tick, ConnId)>,
    pub(crate) topics: Rc<std::cell::RefCell<Topics>>,
    /// Errors counted by the bindings (exceptions reported from JavaScript).
    pub(crate) errors: u64,
    pub(crate) max_message: u64,
    /// The worker's address of the client, for the peer's `X-Forwarded-For`.
    pub(crate) limits: HubLimits,
}

impl State {
    pub(crate) fn new(name: Rc<str>, seed: u64, topics: Rc<std::cell::RefCell<Topics>>) -> State {
        State {
            name,
            now: 0,
            rng: seed | 1,
            conns: IdMap::default(),
            next_conn: 1,
            current: None,
            wakes: Vec::new(),
            deferred: Vec::new(),
            outbound: Vec::new(),
            bus_ops: Vec::new(),
            timers: IdMap::default(),
            timer_queue: BTreeSet::new(),
            next_timer: 1,
            deadlines: BTreeSet::new(),
            topics,
            errors: 0,
            max_message: 16 << 20,
            limits: HubLimits::default(),
        }
    }

    /// A fresh random value (masks, keys): xorshift64, not for cryptography.
    pub(crate) fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    pub(crate) fn mix(&mut self, random: u64) {
        self.rng ^= random.rotate_left(17) | 1;
    }

    pub(crate) fn add_conn(&mut self, conn: Conn) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(id, conn);
        id
    }

    /// `id` has work for its session: wake it, unless its own event is being handled (its
    /// session takes the work when the event ends).
    pub(crate) fn touch(&mut self, id: ConnId) {
        if self.current == Some(id) {
            return;
        }
        if let Some(conn) = self.conns.get_mut(&id)
            && !conn.woken
        {
            conn.woken = true;
            self.wakes.push(id);
        }
    }

    pub(crate) fn set_timer(&mut self, delay: u64, repeat: bool) -> u64 {
        let id = self.next_timer;
        self.next_timer += 1;
        let due = self.now.saturating_add(delay.max(u64::from(repeat)));
        self.timers.insert(
            id,
            Timer {
                due,
                every: repeat.then_some(delay.max(1)),
            },
        );
        self.timer_queue.insert((due, id));
        id
    }

    pub(crate) fn clear_timer(&mut self, id: u64) {
        if let Some(timer) = self.timers.remove(&id) {
            self.timer_queue.remove(&(timer.due, id));
        }
    }

    /// The next due timer at `now`: its id and whether it is its last firing (a timeout).
    pub(crate) fn due_timer(&mut self, now: Tick) -> Option<(u64, bool)> {
        let &(due, id) = self.timer_queue.first()?;
        if due > now {
            return None;
        }
        self.timer_queue.remove(&(due, id));
        let timer = self.timers.get_mut(&id)?;
        match timer.every {
            Some(every) => {
                timer.due = now.saturating_add(every);
                self.timer_queue.insert((timer.due, id));
                Some((id, false))
            }
            None => {
                self.timers.remove(&id);
                Some((id, true))
            }
        }
    }

    /// The earliest tick at which a timer or a connection deadline is due.
    pub(crate) fn next_due(&self) -> Option<Tick> {
        let timer = self.timer_queue.first().map(|&(t, _)| t);
        let deadline = self.deadlines.first().map(|&(t, _)| t);
        timer.into_iter().chain(deadline).min()
    }

    /// Re-arms `id`'s own deadline (idle time, lifetime) from its state.
    pub(crate) fn arm_deadline(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let idle = conn.idle_ms.map(|ms| conn.last_active.saturating_add(ms));
        let life = conn.lifetime_ms.map(|ms| conn.opened_at.saturating_add(ms));
        if let Some(at) = idle.into_iter().chain(life).min() {
            self.deadlines.insert((at, id));
        }
    }

    /// Connections whose deadline passed: told to shut down (1001), and woken.
    pub(crate) fn expire(&mut self, now: Tick) {
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.remove(&(at, id));
            let Some(conn) = self.conns.get_mut(&id) else {
                continue;
            };
            let idle = conn
                .idle_ms
                .is_some_and(|ms| now >= conn.last_active.saturating_add(ms));
            let life = conn
                .lifetime_ms
                .is_some_and(|ms| now >= conn.opened_at.saturating_add(ms));
            if conn.shutdown.is_none() && (idle || life) {
                let reason = if life {
                    CloseReason::MaxConnectionTime
                } else {
                    CloseReason::IdleTimeout
                };
                conn.shutdown = Some((1001, reason));
                self.touch(id);
            } else if conn.shutdown.is_none() {
                // Activity moved its idle deadline on.
                self.arm_deadline(id);
            }
        }
    }

    /// Applies the channel operations waiting for a bus.
    pub(crate) fn apply_bus(&mut self, route: &str, bus: &mut dyn Bus) {
        for op in self.bus_ops.drain(..) {
            match op {
                BusOp::Subscribe(key, topic) => {
                    if bus.subscribe(route, &topic, key, self.limits).is_err() {
                        tracing::debug!(function = %self.name, topic = %topic, "subscribe refused by the channel limits");
                    }
                }
                BusOp::Unsubscribe(key, topic) => {
                    bus.unsubscribe(route, &topic, key);
                }
                BusOp::LeaveAll(key) => bus.leave_all(route, key),
                BusOp::Publish {
                    topic,
                    payload,
                    skip,
                } => bus.publish(route, &topic, payload, skip),
            }
        }
    }

    /// Forgets a connection: its topics leave the counts (and the bus, with the next one).
    pub(crate) fn remove_conn(&mut self, id: ConnId) -> Option<Conn> {
        let conn = self.conns.remove(&id)?;
        if !conn.topics.is_empty() {
            let mut topics = self.topics.borrow_mut();
            for topic in &conn.topics {
                if let Some(n) = topics.get_mut(topic) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        topics.remove(topic);
                    }
                }
            }
            if let Some(key) = conn.key {
                self.bus_ops.push(BusOp::LeaveAll(key));
            }
        }
        Some(conn)
    }
}
