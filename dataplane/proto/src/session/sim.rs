//! A simulated worker for one session: applies outputs mechanically, the way the ring driver
//! does (send queues written on demand, provided buffers handed out and back, reads armed and
//! stopped), with a virtual clock. No policy lives here: every decision is the session's.
//! The session's unit tests and the `session` fuzz target drive sessions through it, and it
//! checks what the real driver relies on: each provided buffer is handed back exactly once, no
//! byte is sent to a side that was shut, nothing happens after `Close`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;

use super::{
    BufId, Chunk, ConnectFailure, Env, FirewallGate, HeadContext, Input, Output, Route, Session,
    SessionConfig, Side,
};
use crate::function::{Builtins, Bus, ConnKey, FunctionHost, FunctionSession, NoBus};
use crate::route::RouteTable;
use crate::wheel::Tick;

/// What a simulated side holds.
#[derive(Debug, Default)]
pub struct SimSide {
    /// Chunks queued and not yet written.
    pub queue: VecDeque<Chunk>,
    /// Bytes written to this side, in order.
    pub written: Vec<u8>,
    /// A head read holds this buffer.
    pub head_buf: Option<Vec<u8>>,
    /// A stream read is armed.
    pub reading: bool,
    /// A stop was asked for and not yet reported.
    pub stopping: bool,
    /// Bytes of this side are spliced.
    pub splicing: bool,
    /// Its write half was shut.
    pub shut_write: bool,
    /// Torn down.
    pub aborted: bool,
}

/// One session and everything the driver would hold for it.
#[derive(Debug)]
pub struct Sim {
    pub session: Session,
    pub cfg: SessionConfig,
    pub now: Tick,
    pub sides: [SimSide; 2],
    pub routes: RouteTable,
    pub route_list: Vec<Rc<Route>>,
    /// Provided buffers handed to the session and not yet back.
    pub buffers_out: Vec<u16>,
    /// What each provided buffer holds (after the session had it: unmasked in place).
    buf_data: std::collections::HashMap<u16, Vec<u8>>,
    next_buf: u16,
    /// Origins connected to, in order.
    pub connects: Vec<SocketAddr>,
    pub watching: bool,
    /// Every output, in order (for assertions).
    pub log: Vec<Output>,
    pub closed: Option<super::CloseReason>,
    pub metrics: Vec<super::Metric>,
    /// This connection's public id (1 unless set: several sims on one host need their own).
    pub conn: ConnKey,
    /// The worker's bus, shared by several sims (`NoBus` when unset).
    pub bus: Option<Rc<RefCell<dyn Bus>>>,
    /// The worker's function host for the client's head (`Builtins` when unset).
    pub host: Option<SharedHost>,
    /// The SNI of a TLS connection (`None`: plain TCP, the default).
    pub sni: Option<String>,
    out: Vec<Output>,
}

/// A function host several sims share (a worker has one).
#[derive(Clone)]
pub struct SharedHost(pub Rc<RefCell<dyn FunctionHost>>);

impl std::fmt::Debug for SharedHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedHost")
    }
}

impl Sim {
    /// A connection accepted at tick 0 on a worker with `routes` (matched by path prefix,
    /// any host).
    pub fn new(cfg: SessionConfig, routes: Vec<Route>) -> Sim {
        let table = RouteTable::new(
            routes
                .iter()
                .map(|r| (crate::route::HostPattern::Any, r.path_prefix.clone())),
        );
        let mut out = Vec::new();
        let peer: SocketAddr = "192.0.2.7:50000".parse().expect("addr");
        let session = Session::accepted(0, &cfg, peer, 7, &mut out);
        let mut sim = Sim {
            session,
            cfg,
            now: 0,
            sides: [SimSide::default(), SimSide::default()],
            routes: table,
            route_list: routes.into_iter().map(Rc::new).collect(),
            buffers_out: Vec::new(),
            buf_data: std::collections::HashMap::new(),
            next_buf: 0,
            connects: Vec::new(),
            watching: false,
            log: Vec::new(),
            closed: None,
            metrics: Vec::new(),
            conn: 1,
            bus: None,
            host: None,
            sni: None,
            out: Vec::new(),
        };
        sim.apply(out);
        sim
    }

    /// A connection accepted at `now` as `conn` on a worker with `routes`, whose function
    /// routes `host` serves and whose channels go through `bus`.
    pub fn with_host(
        cfg: SessionConfig,
        routes: Vec<Route>,
        host: SharedHost,
        bus: Rc<RefCell<dyn Bus>>,
        conn: ConnKey,
        now: Tick,
    ) -> Sim {
        let mut sim = Sim::new(cfg, routes);
        sim.now = now;
        sim.session = {
            let mut out = Vec::new();
            let peer: SocketAddr = "192.0.2.7:50000".parse().expect("addr");
            let session = Session::accepted(now, &sim.cfg, peer, conn | 7, &mut out);
            sim.log.clear();
            sim.sides = [SimSide::default(), SimSide::default()];
            sim.apply(out);
            session
        };
        sim.host = Some(host);
        sim.bus = Some(bus);
        sim.conn = conn;
        sim
    }

    /// A client-less session (`Session::outbound`) for `function` on `route`, created at `now`
    /// as `conn`: what the worker does with a host's `poll_outbound`.
    pub fn outbound(
        cfg: SessionConfig,
        route: Route,
        function: Box<dyn FunctionSession>,
        bus: Rc<RefCell<dyn Bus>>,
        conn: ConnKey,
        now: Tick,
    ) -> Sim {
        let mut sim = Sim::new(cfg, vec![route]);
        sim.now = now;
        sim.log.clear();
        sim.sides = [SimSide::default(), SimSide::default()];
        sim.bus = Some(Rc::clone(&bus));
        sim.conn = conn;
        let route = Rc::clone(&sim.route_list[0]);
        let mut out = Vec::new();
        let session = {
            let mut bus = bus.borrow_mut();
            let mut env = Env {
                now,
                cfg: &sim.cfg,
                out: &mut out,
                bus: &mut *bus,
                conn,
                worker: 0,
            };
            Session::outbound(&sim.cfg, route, function, conn | 7, &mut env)
        };
        sim.session = session;
        sim.apply(out);
        sim
    }

    fn env_handle(&mut self, input: Input<'_>, bus: &mut dyn Bus) {
        // The driver's ordering rule for splice (`Output::Splice`): a pipe is written to a
        // side only once everything queued to it before was written.
        if let Input::SpliceWritten { from, .. } = input {
            let to = from.other();
            assert!(
                self.sides[to.index()].queue.is_empty(),
                "spliced bytes written to {to:?} ahead of its queue"
            );
        }
        let mut out = std::mem::take(&mut self.out);
        let mut env = Env {
            now: self.now,
            cfg: &self.cfg,
            out: &mut out,
            bus,
            conn: self.conn,
            worker: 0,
        };
        self.session.handle(input, &mut env);
        let drained = std::mem::take(&mut out);
        self.out = out;
        self.apply(drained);
    }

    /// Feeds an input that needs no head context (with the shared bus, if set).
    pub fn handle(&mut self, input: Input<'_>) {
        match self.bus.clone() {
            Some(bus) => self.env_handle(input, &mut *bus.borrow_mut()),
            None => self.env_handle(input, &mut NoBus),
        }
    }

    /// Feeds an input with a bus.
    pub fn handle_with(&mut self, input: Input<'_>, bus: &mut dyn Bus) {
        self.env_handle(input, bus);
    }

    fn apply(&mut self, outputs: Vec<Output>) {
        for output in outputs {
            assert!(self.closed.is_none(), "an output after Close: {output:?}");
            match &output {
                Output::ReadHead { side, buf } => {
                    let s = &mut self.sides[side.index()];
                    assert!(s.head_buf.is_none(), "two head reads on {side:?}");
                    s.head_buf = Some(buf.clone());
                }
                Output::Connect(addr) => {
                    self.connects.push(*addr);
                    self.sides[1] = SimSide::default();
                }
                Output::WatchClient => self.watching = true,
                Output::UnwatchClient => self.watching = false,
                Output::Send { to, chunk } => {
                    let s = &mut self.sides[to.index()];
                    assert!(
                        !s.shut_write,
                        "bytes queued to {to:?} after its shutdown: {output:?}; outputs before: {:?}",
                        self.log.iter().rev().take(6).collect::<Vec<_>>()
                    );
                    s.queue.push_back(match chunk {
                        Chunk::Buf {
                            buf,
                            off,
                            len,
                            release,
                        } => Chunk::Buf {
                            buf: *buf,
                            off: *off,
                            len: *len,
                            release: *release,
                        },
                        Chunk::Owned { data, off, relayed } => Chunk::Owned {
                            data: data.clone(),
                            off: *off,
                            relayed: *relayed,
                        },
                        Chunk::Static { data, off } => Chunk::Static { data, off: *off },
                        Chunk::Shared { data, off } => Chunk::Shared {
                            data: Rc::clone(data),
                            off: *off,
                        },
                    });
                }
                Output::Read(side) => {
                    let s = &mut self.sides[side.index()];
                    assert!(!s.reading || s.stopping, "a second read armed on {side:?}");
                    s.reading = true;
                }
                Output::StopRead(side) => {
                    let s = &mut self.sides[side.index()];
                    if s.reading {
                        s.stopping = true;
                    }
                }
                Output::Splice(side) => self.sides[side.index()].splicing = true,
                Output::ShutdownWrite(side) => self.sides[side.index()].shut_write = true,
                Output::Abort(side) => self.sides[side.index()].aborted = true,
                Output::Release(buf) => self.give_back(*buf),
                Output::Metric(m) => self.metrics.push(*m),
                Output::OriginOutcome { .. } => {}
                Output::Close(reason) => self.closed = Some(*reason),
            }
            self.log.push(output);
        }
    }

    fn give_back(&mut self, buf: BufId) {
        let Some(i) = self.buffers_out.iter().position(|b| *b == buf.0) else {
            panic!("buffer {buf:?} handed back twice or never handed out");
        };
        self.buffers_out.swap_remove(i);
        self.buf_data.remove(&buf.0);
    }

    /// The client's head read completes with `bytes` appended.
    pub fn client_head(&mut self, bytes: &[u8]) {
        let mut buf = self.sides[0]
            .head_buf
            .take()
            .expect("no client head read armed");
        buf.extend_from_slice(bytes);
        let mut state = crate::firewall::FirewallState::new(1);
        let firewall =
            crate::firewall::Firewall::new(Vec::new(), Vec::new()).expect("an empty firewall");
        let mut trace = Vec::new();
        let mut builtins = Builtins;
        let host = self.host.clone();
        let mut host_ref = host.as_ref().map(|h| h.0.borrow_mut());
        let functions: &mut dyn FunctionHost = match host_ref.as_mut() {
            Some(h) => &mut **h,
            None => &mut builtins,
        };
        let shared_bus = self.bus.clone();
        let route_list = std::mem::take(&mut self.route_list);
        let routes = std::mem::take(&mut self.routes);
        let sni = self.sni.clone();
        let mut cx = HeadContext {
            routes: &routes,
            route_list: &route_list,
            gate: Some(FirewallGate {
                firewall: &firewall,
                state: &mut state,
                unix_now: 0,
                trace: &mut trace,
                tls: None,
            }),
            functions,
            conn: self.conn,
            proto: if sni.is_some() { "https" } else { "http" },
            sni: sni.as_deref(),
        };
        let n = bytes.len() as i32;
        let input = Input::HeadRead {
            side: Side::Client,
            buf,
            result: n,
            cx: Some(&mut cx),
        };
        match shared_bus {
            Some(bus) => self.env_handle(input, &mut *bus.borrow_mut()),
            None => self.env_handle(input, &mut NoBus),
        }
        self.route_list = route_list;
        self.routes = routes;
    }

    /// A head read on `side` ends with `result` (EOF 0, an error < 0) and no bytes.
    pub fn head_ends(&mut self, side: Side, result: i32) {
        let buf = self.sides[side.index()]
            .head_buf
            .take()
            .expect("no head read armed");
        self.handle(Input::HeadRead {
            side,
            buf,
            result,
            cx: None,
        });
    }

    pub fn connected(&mut self, result: Result<(), ConnectFailure>) {
        self.handle(Input::Connected(result));
    }

    /// The origin's head read completes with `bytes` appended.
    pub fn origin_answers(&mut self, bytes: &[u8]) {
        let mut buf = self.sides[1]
            .head_buf
            .take()
            .expect("no origin head read armed");
        buf.extend_from_slice(bytes);
        let n = bytes.len() as i32;
        self.handle(Input::HeadRead {
            side: Side::Origin,
            buf,
            result: n,
            cx: None,
        });
    }

    /// `bytes` arrive from `from` on its stream read, in a fresh provided buffer.
    pub fn recv(&mut self, from: Side, bytes: &[u8]) {
        assert!(
            self.sides[from.index()].reading,
            "no read armed on {from:?}"
        );
        let id = self.next_buf;
        self.next_buf = self.next_buf.wrapping_add(1);
        self.buffers_out.push(id);
        let mut data = bytes.to_vec();
        self.buf_data.insert(id, Vec::new());
        self.handle(Input::Recv {
            from,
            buf: BufId(id),
            data: &mut data,
        });
        if let Some(slot) = self.buf_data.get_mut(&id) {
            *slot = data;
        }
    }

    pub fn eof(&mut self, from: Side) {
        self.sides[from.index()].reading = false;
        self.sides[from.index()].stopping = false;
        self.handle(Input::Eof(from));
    }

    /// Reports a pending stop as done.
    pub fn read_ended(&mut self, side: Side) {
        let s = &mut self.sides[side.index()];
        if s.stopping {
            s.reading = false;
            s.stopping = false;
            self.handle(Input::ReadEnded(side));
        }
    }

    /// Writes up to `limit` bytes of `to`'s queue (as one send completion).
    pub fn write(&mut self, to: Side, limit: usize) {
        let s = &mut self.sides[to.index()];
        let (mut relayed, mut own) = (0, 0);
        let mut left = limit;
        let mut released = Vec::new();
        while left > 0 {
            let Some(front) = s.queue.front_mut() else {
                break;
            };
            let take = left.min(front.remaining());
            let start = match front {
                Chunk::Buf { off, .. } => *off as usize,
                Chunk::Owned { off, .. }
                | Chunk::Static { off, .. }
                | Chunk::Shared { off, .. } => *off,
            };
            match front {
                Chunk::Buf { buf, .. } => {
                    let data = self.buf_data.get(&buf.0).map_or(&[][..], Vec::as_slice);
                    s.written.extend_from_slice(&data[start..start + take]);
                }
                Chunk::Owned { data, .. } => {
                    s.written.extend_from_slice(&data[start..start + take])
                }
                Chunk::Static { data, .. } => {
                    s.written.extend_from_slice(&data[start..start + take])
                }
                Chunk::Shared { data, .. } => {
                    s.written.extend_from_slice(&data[start..start + take])
                }
            }
            if front.is_relayed() {
                relayed += take;
            } else {
                own += take;
            }
            front.advance(take);
            left -= take;
            if front.remaining() == 0 {
                if let Some(buf) = front.releases() {
                    released.push(buf);
                }
                s.queue.pop_front();
            }
        }
        for buf in released {
            self.give_back(buf);
        }
        if relayed + own > 0 {
            self.handle(Input::Sent { to, relayed, own });
        }
    }

    /// Writes everything queued to `to`.
    pub fn flush(&mut self, to: Side) {
        self.write(to, usize::MAX);
    }

    /// Writes everything queued to both sides until nothing is left.
    pub fn flush_all(&mut self) {
        while self.sides.iter().any(|s| !s.queue.is_empty()) && self.closed.is_none() {
            self.flush(Side::Client);
            self.flush(Side::Origin);
        }
    }

    /// Advances the clock to `at` and fires the timer if it is due.
    pub fn advance(&mut self, at: Tick) {
        self.now = at;
        if self.session.poll_timeout().is_some_and(|t| t <= at) {
            self.handle(Input::Timeout);
        }
    }

    /// Everything written to `side` so far, as text.
    pub fn text(&self, side: Side) -> String {
        String::from_utf8_lossy(&self.sides[side.index()].written).into_owned()
    }

    /// Checks what must hold once the session closed and the driver freed it: every buffer
    /// handed out came back (queued ones are given back by the driver at free).
    pub fn check_freed(&mut self) {
        for side in &mut self.sides {
            for chunk in side.queue.drain(..) {
                if let Some(buf) = chunk.releases() {
                    let i = self
                        .buffers_out
                        .iter()
                        .position(|b| *b == buf.0)
                        .expect("queued buffer not out");
                    self.buffers_out.swap_remove(i);
                }
            }
        }
        assert!(
            self.buffers_out.is_empty(),
            "buffers never handed back: {:?}",
            self.buffers_out
        );
    }
}
