//! [`JsHost`]: a worker's JavaScript functions behind `wsedge_proto::function::FunctionHost`.
//! One per worker, created on its thread. It keeps, per script route, the runtime of the
//! version that serves new connections and the retired runtimes that still have
//! connections (each dropped when its last one ends), opens a [`JsSession`] per request, and
//! runs what belongs to no connection: timers, promise jobs left by a capped drain, the
//! wakes and client-less sessions the scripts ask for. Routes whose function is built in
//! are opened as before ([`open_builtin`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use wsedge_proto::function::{
    Bus, ConnKey, FunctionHost, FunctionRequest, FunctionSession, FunctionSpec, Outbound, Refused,
    open_builtin,
};
use wsedge_proto::handshake::RequestKind;
use wsedge_proto::session::CloseReason;
use wsedge_proto::wheel::Tick;

use crate::engine::{Engine, Identity, Limits};
use crate::script::{Script, ScriptError};
use crate::session::{JsSession, StartInfo};
use crate::state::{Conn, FunctionStats, Topics};

/// One script route on this worker.
#[derive(Debug)]
struct JsFunction {
    name: Rc<str>,
    script: Script,
    limits: Limits,
    version: u64,
    /// Serves new connections.
    current: Rc<RefCell<Engine>>,
    /// Older versions (or torn-down runtimes) that still have connections.
    retired: Vec<Rc<RefCell<Engine>>>,
    topics: Rc<RefCell<Topics>>,
    stats: Rc<RefCell<FunctionStats>>,
}

/// A worker's JavaScript functions; see the module docs.
#[derive(Debug)]
pub struct JsHost {
    worker: usize,
    workers: usize,
    seed: u64,
    functions: HashMap<String, JsFunction>,
    /// Where `poll_wake` and `poll_outbound` resume (an engine may yield several).
    wakes: Vec<ConnKey>,
    outbound: Vec<Outbound>,
}

impl JsHost {
    /// The host of worker `worker` of `workers` (`globalThis.wsedge`); `seed` seeds the
    /// runtimes' random values (WebSocket keys and masks).
    pub fn new(worker: usize, workers: usize, seed: u64) -> JsHost {
        JsHost {
            worker,
            workers,
            seed: seed | 1,
            functions: HashMap::new(),
            wakes: Vec::new(),
            outbound: Vec::new(),
        }
    }

    fn build(
        &mut self,
        name: &Rc<str>,
        script: &Script,
        limits: Limits,
        version: u64,
        topics: &Rc<RefCell<Topics>>,
        stats: &Rc<RefCell<FunctionStats>>,
    ) -> Result<Rc<RefCell<Engine>>, ScriptError> {
        self.seed = self.seed.rotate_left(7) ^ 0x9E37_79B9_7F4A_7C15;
        let identity = Identity {
            name: Rc::clone(name),
            version,
            worker: self.worker,
            workers: self.workers,
        };
        let engine = Engine::new(
            script,
            identity,
            limits,
            self.seed,
            Rc::clone(topics),
            Rc::clone(stats),
        )?;
        Ok(Rc::new(RefCell::new(engine)))
    }

    /// Deploys `script` on route `route`: a new runtime serves new connections from now on;
    /// the previous version's keeps its live connections until they end. A script that
    /// fails to start is refused and the previous version keeps serving. Returns the version.
    pub fn deploy(
        &mut self,
        route: &str,
        script: Script,
        limits: Limits,
    ) -> Result<u64, ScriptError> {
        let (name, version, topics, stats) = match self.functions.get(route) {
            Some(f) => (
                Rc::clone(&f.name),
                f.version + 1,
                Rc::clone(&f.topics),
                Rc::clone(&f.stats),
            ),
            None => (Rc::from(route), 1, Rc::default(), Rc::default()),
        };
        let engine = self.build(&name, &script, limits, version, &topics, &stats)?;
        stats.borrow_mut().version = version;
        match self.functions.get_mut(route) {
            Some(f) => {
                let old = std::mem::replace(&mut f.current, engine);
                f.retired.push(old);
                f.script = script;
                f.limits = limits;
                f.version = version;
            }
            None => {
                self.functions.insert(
                    route.to_owned(),
                    JsFunction {
                        name,
                        script,
                        limits,
                        version,
                        current: engine,
                        retired: Vec::new(),
                        topics,
                        stats,
                    },
                );
            }
        }
        self.collect();
        Ok(version)
    }

    /// The script and limits route `route` serves new connections with, if one is deployed.
    pub fn deployed(&self, route: &str) -> Option<(&Script, Limits)> {
        self.functions.get(route).map(|f| (&f.script, f.limits))
    }

    /// The routes with a deployed function.
    pub fn routes(&self) -> Vec<String> {
        self.functions.keys().cloned().collect()
    }

    /// Removes route `route`'s function: its runtimes live on while they have connections.
    pub fn remove(&mut self, route: &str) -> bool {
        self.functions.remove(route).is_some()
    }

    /// Counters per function (route name), memory and live sockets as of now.
    pub fn stats(&self) -> Vec<(String, FunctionStats)> {
        let mut out: Vec<(String, FunctionStats)> = self
            .functions
            .iter()
            .map(|(route, f)| {
                let mut stats = *f.stats.borrow();
                stats.memory_bytes = 0;
                stats.sockets = 0;
                for engine in std::iter::once(&f.current).chain(&f.retired) {
                    let engine = engine.borrow();
                    stats.memory_bytes += engine.memory();
                    stats.sockets += engine.state.borrow().conns.len() as u64;
                }
                stats.errors += f.errors();
                (route.clone(), stats)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Every runtime, current and retired.
    fn engines(&self) -> impl Iterator<Item = (&JsFunction, &Rc<RefCell<Engine>>)> {
        self.functions.values().flat_map(|f| {
            std::iter::once(&f.current)
                .chain(&f.retired)
                .map(move |e| (f, e))
        })
    }

    /// Drops retired runtimes with no connection left, and rebuilds a current runtime that
    /// was torn down at its memory cap.
    fn collect(&mut self) {
        let mut rebuild = Vec::new();
        for (route, f) in &mut self.functions {
            f.retired.retain(|e| {
                let engine = e.borrow();
                let st = engine.state.borrow();
                !st.conns.is_empty() || !st.wakes.is_empty()
            });
            if f.current.borrow().dead {
                rebuild.push(route.clone());
            }
        }
        for route in rebuild {
            let Some(f) = self.functions.get(&route) else {
                continue;
            };
            let (name, script, limits, version, topics, stats) = (
                Rc::clone(&f.name),
                f.script.clone(),
                f.limits,
                f.version,
                Rc::clone(&f.topics),
                Rc::clone(&f.stats),
            );
            match self.build(&name, &script, limits, version, &topics, &stats) {
                Ok(engine) => {
                    stats.borrow_mut().restarts += 1;
                    if let Some(f) = self.functions.get_mut(&route) {
                        let dead = std::mem::replace(&mut f.current, engine);
                        f.retired.push(dead);
                    }
                }
                Err(e) => {
                    tracing::error!(function = %name, "could not recreate the runtime: {e}");
                }
            }
        }
    }

    fn gather(&mut self) {
        let (mut wakes, mut outbound): (Vec<ConnKey>, Vec<Outbound>) = (Vec::new(), Vec::new());
        for (f, engine) in self.engines() {
            let engine_ref = engine.borrow();
            let mut st = engine_ref.state.borrow_mut();
            for id in std::mem::take(&mut st.wakes) {
                if let Some(conn) = st.conns.get(&id)
                    && let Some(key) = conn.key
                {
                    wakes.push(key);
                }
            }
            for id in std::mem::take(&mut st.outbound) {
                outbound.push(Outbound {
                    route: f.name.to_string(),
                    function: Box::new(JsSession::outbound(Rc::clone(engine), id)),
                });
            }
        }
        // Popped from the back: keep the order they were asked in.
        wakes.reverse();
        outbound.reverse();
        self.wakes.extend(wakes);
        self.outbound.extend(outbound);
    }
}

impl JsFunction {
    /// Errors the bindings counted (exceptions reported by the prelude) in every runtime.
    fn errors(&self) -> u64 {
        std::iter::once(&self.current)
            .chain(&self.retired)
            .map(|e| e.borrow().state.borrow().errors)
            .sum()
    }
}

impl FunctionHost for JsHost {
    fn open(
        &mut self,
        request: &FunctionRequest<'_>,
        bus: &mut dyn Bus,
    ) -> Result<Box<dyn FunctionSession>, Refused> {
        let FunctionSpec::Script(_) = request.spec else {
            return open_builtin(request, bus);
        };
        let unavailable = Refused {
            status: 503,
            reason: CloseReason::FunctionError,
        };
        if self
            .functions
            .get(request.route)
            .is_some_and(|f| f.current.borrow().dead)
        {
            self.collect();
        }
        let f = self.functions.get(request.route).ok_or(unavailable)?;
        let engine = Rc::clone(&f.current);
        let r = request.request;
        let mut url = format!("http://{}{}", r.host.unwrap_or("localhost"), r.path());
        if let Some(query) = r.query() {
            url.push('?');
            url.push_str(query);
        }
        let mut headers = Vec::with_capacity(r.headers.len() * 2);
        for (name, value) in &r.headers {
            headers.push((*name).to_owned());
            headers.push(String::from_utf8_lossy(value).into_owned());
        }
        let websocket =
            matches!(r.kind, RequestKind::WebSocket { .. }) && request.client_accept.is_some();
        let id = {
            let engine = engine.borrow();
            if engine.dead {
                return Err(unavailable);
            }
            let mut st = engine.state.borrow_mut();
            st.add_conn(Conn {
                websocket,
                ..Conn::default()
            })
        };
        let start = StartInfo {
            method: r.method.to_owned(),
            url,
            headers,
        };
        Ok(Box::new(JsSession::inbound(
            engine,
            id,
            start,
            websocket,
            request.max_message,
        )))
    }

    fn poll_timeout(&self) -> Option<Tick> {
        self.engines()
            .filter_map(|(_, e)| {
                let engine = e.borrow();
                let now = engine.state.borrow().now;
                engine.next_due(now)
            })
            .min()
    }

    fn on_timeout(&mut self, now: Tick, bus: &mut dyn Bus) {
        let engines: Vec<(Rc<str>, Rc<RefCell<Engine>>)> = self
            .engines()
            .map(|(f, e)| (Rc::clone(&f.name), Rc::clone(e)))
            .collect();
        for (route, engine) in engines {
            let mut engine = engine.borrow_mut();
            engine.timers(now);
            engine.state.borrow_mut().apply_bus(&route, bus);
        }
        self.collect();
    }

    fn poll_wake(&mut self) -> Option<ConnKey> {
        if self.wakes.is_empty() {
            self.collect();
            self.gather();
        }
        self.wakes.pop()
    }

    fn poll_outbound(&mut self) -> Option<Outbound> {
        if self.outbound.is_empty() {
            self.gather();
        }
        self.outbound.pop()
    }
}
