//! One QuickJS runtime: one version of one function on one worker. It is created on the
//! worker's thread and never leaves it (no threads, no tokio). It holds the runtime and its
//! context, the native bindings (`__host` while the prelude runs), and the three entry points
//! the prelude returns. Every call into JavaScript goes through [`Engine::enter`]: it sets
//! the CPU budget the interrupt handler enforces, names the connection being handled, runs
//! the call, then drains the promise jobs it queued (capped), and accounts the time.
//!
//! Faults: an exception in an entry is logged (message and stack) and marks the connection
//! being handled; an interrupt at the budget is one such exception; an allocation over the
//! memory cap tears the runtime down ([`Engine::teardown`]): every connection of it is marked
//! and woken, and the host builds a new runtime from the same script.
//!
//! Here: the runtime and its entry points. `loader`: where its modules come from;
//! `bindings` and `conn_bindings`: the `__host` object the prelude calls; `web`: the HTTP
//! responses and `new WebSocket` handshakes those bindings build.

mod bindings;
mod conn_bindings;
mod loader;
mod web;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rquickjs::{
    ArrayBuffer, CatchResultExt, Context, Ctx, Function, Module, Object, Persistent, Runtime,
};
use wsedge_proto::wheel::Tick;

use crate::script::{Disk, Script, ScriptError};
use crate::state::{ConnId, Fault, FunctionStats, State, Topics};
use bindings::bindings;
use loader::{ModuleLoader, ModuleResolver, Source};

const PRELUDE: &str = include_str!("../prelude.js");

/// A runtime's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPU time one event (a call and the promise jobs it queued) may take.
    pub cpu_budget: Duration,
    /// Bytes the runtime may allocate.
    pub memory_limit: usize,
    /// Bytes queued to a client before a delivery closes it (1013).
    pub max_send_queue: usize,
    /// Promise jobs run after one event; the rest run on the next tick.
    pub job_cap: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpu_budget: Duration::from_millis(50),
            memory_limit: 64 << 20,
            max_send_queue: 1 << 20,
            job_cap: 10_000,
        }
    }
}

/// JavaScript CPU time between two measurements of a runtime's memory (see `Engine::enter`).
const MEMORY_CHECK_EVERY: Duration = Duration::from_millis(20);

/// Who this runtime is, for `globalThis.wsedge` and the logs.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub(crate) name: Rc<str>,
    pub(crate) version: u64,
    pub(crate) worker: usize,
    pub(crate) workers: usize,
}

/// The prelude's entry points.
struct Hooks {
    start: Persistent<Function<'static>>,
    event: Persistent<Function<'static>>,
    fire: Persistent<Function<'static>>,
}

/// A socket event for [`Engine::event`].
#[derive(Debug)]
pub(crate) enum SocketEvent {
    Open,
    Message {
        text: bool,
        payload: Vec<u8>,
    },
    Close {
        code: u16,
        reason: String,
        clean: bool,
    },
    Error(String),
    /// Messages of the socket's topic may have been lost (the broker's `gap` notice).
    Gap {
        topic: String,
    },
}

/// One runtime; see the module docs.
pub(crate) struct Engine {
    // Field order is drop order: the JavaScript values first, then the context, then the
    // runtime (a value that outlives its runtime aborts the process).
    hooks: Option<Hooks>,
    context: Option<Context>,
    runtime: Option<Runtime>,
    pub(crate) state: Rc<RefCell<State>>,
    deadline: Rc<Cell<Option<Instant>>>,
    limits: Limits,
    pub(crate) identity: Identity,
    stats: Rc<RefCell<FunctionStats>>,
    /// An allocation failed at the memory cap during the last entry.
    oom: bool,
    /// CPU time of the entries since the memory was last measured.
    unchecked: Duration,
    /// Torn down: no JavaScript runs any more.
    pub(crate) dead: bool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("function", &self.identity.name)
            .field("version", &self.identity.version)
            .field("dead", &self.dead)
            .finish_non_exhaustive()
    }
}

/// Runs `script` once in a scratch runtime.
pub(crate) fn check(script: &Script) -> Result<(), ScriptError> {
    let source = Source::Bundle(script.modules.clone());
    scratch(&script.entry, source, script_entry(script)?).map(|_| ())
}

/// Loads a script from disk by running it once in a scratch runtime; the modules it read are
/// the script.
pub(crate) fn check_from_disk(entry: String, disk: Disk) -> Result<Script, ScriptError> {
    let disk = Rc::new(RefCell::new(disk));
    let source = disk.borrow_mut().read(&entry).map_err(ScriptError::plain)?;
    scratch(&entry, Source::Disk(Rc::clone(&disk)), source)?;
    let modules = std::mem::take(&mut disk.borrow_mut().read);
    Ok(Script { entry, modules })
}

fn script_entry(script: &Script) -> Result<Arc<[u8]>, ScriptError> {
    script
        .modules
        .get(&script.entry)
        .cloned()
        .ok_or_else(|| ScriptError::plain(format!("{}: no such module", script.entry)))
}

fn scratch(entry: &str, source: Source, main: Arc<[u8]>) -> Result<Engine, ScriptError> {
    let identity = Identity {
        name: Rc::from("check"),
        version: 0,
        worker: 0,
        workers: 1,
    };
    Engine::build(
        entry,
        main,
        source,
        identity,
        Limits::default(),
        1,
        Rc::default(),
        Rc::default(),
    )
}

impl Engine {
    /// A runtime running `script`: the prelude, then the module (its top-level code runs
    /// now, with a budget of at least a second).
    pub(crate) fn new(
        script: &Script,
        identity: Identity,
        limits: Limits,
        seed: u64,
        topics: Rc<RefCell<Topics>>,
        stats: Rc<RefCell<FunctionStats>>,
    ) -> Result<Engine, ScriptError> {
        let main = script_entry(script)?;
        Engine::build(
            &script.entry,
            main,
            Source::Bundle(script.modules.clone()),
            identity,
            limits,
            seed,
            topics,
            stats,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        entry: &str,
        main: Arc<[u8]>,
        source: Source,
        identity: Identity,
        limits: Limits,
        seed: u64,
        topics: Rc<RefCell<Topics>>,
        stats: Rc<RefCell<FunctionStats>>,
    ) -> Result<Engine, ScriptError> {
        let runtime = Runtime::new().map_err(|e| ScriptError::plain(e.to_string()))?;
        runtime.set_memory_limit(limits.memory_limit);
        let deadline: Rc<Cell<Option<Instant>>> = Rc::new(Cell::new(None));
        let check = Rc::clone(&deadline);
        runtime.set_interrupt_handler(Some(Box::new(move || {
            check.get().is_some_and(|d| Instant::now() >= d)
        })));
        runtime.set_loader(ModuleResolver, ModuleLoader(source));
        let context = Context::full(&runtime).map_err(|e| ScriptError::plain(e.to_string()))?;
        let mut state = State::new(Rc::clone(&identity.name), seed, topics);
        state.max_message = 16 << 20;
        let state = Rc::new(RefCell::new(state));
        let startup = limits.cpu_budget.max(Duration::from_secs(1));
        deadline.set(Some(Instant::now() + startup));
        let hooks = context.with(|ctx| -> Result<Hooks, ScriptError> {
            let caught = |ctx: &Ctx<'_>, e: rquickjs::Error| {
                ScriptError::from_engine(
                    &Err::<(), _>(e)
                        .catch(ctx)
                        .err()
                        .map_or_else(|| "error".to_owned(), |e| e.to_string()),
                )
            };
            let host = bindings(&ctx, &state, &identity).map_err(|e| caught(&ctx, e))?;
            ctx.globals()
                .set("__host", host)
                .map_err(|e| caught(&ctx, e))?;
            let api: Object = ctx.eval(PRELUDE).map_err(|e| caught(&ctx, e))?;
            let get = |name: &str| -> Result<Function<'_>, ScriptError> {
                api.get::<_, Function>(name).map_err(|e| caught(&ctx, e))
            };
            let (start, event, fire, install) =
                (get("start")?, get("event")?, get("fire")?, get("install")?);
            let module =
                Module::declare(ctx.clone(), entry, main.to_vec()).map_err(|e| caught(&ctx, e))?;
            let (module, promise) = module.eval().map_err(|e| caught(&ctx, e))?;
            // Top-level await: run the module's jobs until it settles.
            let mut jobs = 0;
            while ctx.execute_pending_job() && jobs < limits.job_cap {
                jobs += 1;
            }
            promise.finish::<()>().map_err(|e| caught(&ctx, e))?;
            let namespace = module.namespace().map_err(|e| caught(&ctx, e))?;
            install
                .call::<_, ()>((namespace,))
                .map_err(|e| caught(&ctx, e))?;
            Ok(Hooks {
                start: Persistent::save(&ctx, start),
                event: Persistent::save(&ctx, event),
                fire: Persistent::save(&ctx, fire),
            })
        });
        deadline.set(None);
        let hooks = match hooks {
            Ok(hooks) => hooks,
            Err(mut error) => {
                if error.message.contains("interrupted") {
                    error.message = format!(
                        "{} (the module's top-level code ran over {} ms)",
                        error.message,
                        startup.as_millis()
                    );
                }
                return Err(error);
            }
        };
        Ok(Engine {
            hooks: Some(hooks),
            context: Some(context),
            runtime: Some(runtime),
            state,
            deadline,
            limits,
            identity,
            stats,
            oom: false,
            unchecked: Duration::ZERO,
            dead: false,
        })
    }

    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    /// Bytes the runtime holds now.
    pub(crate) fn memory(&self) -> u64 {
        self.runtime
            .as_ref()
            .map_or(0, |rt| rt.memory_usage().malloc_size.max(0) as u64)
    }

    /// Whether promise jobs wait (a capped drain left some).
    pub(crate) fn jobs_pending(&self) -> bool {
        self.runtime.as_ref().is_some_and(Runtime::is_job_pending)
    }

    /// Runs `call` as the event of `current` (or of no connection), then its promise jobs;
    /// see the module docs.
    fn enter(
        &mut self,
        current: Option<ConnId>,
        now: Tick,
        call: impl for<'js> FnOnce(&Ctx<'js>, &Hooks) -> rquickjs::Result<()>,
    ) {
        if self.dead {
            return;
        }
        let (Some(context), Some(hooks)) = (self.context.as_ref(), self.hooks.as_ref()) else {
            return;
        };
        let errors_before = {
            let mut st = self.state.borrow_mut();
            st.now = st.now.max(now);
            st.current = current;
            st.errors
        };
        let started = Instant::now();
        self.deadline.set(Some(started + self.limits.cpu_budget));
        let result = context.with(|ctx| match call(&ctx, hooks).catch(&ctx) {
            Ok(()) => None,
            Err(e) => Some(e.to_string()),
        });
        let failed = result.is_some();
        // (Errors the prelude caught count too: an allocation at the cap may be caught.)
        if let Some(text) = result {
            self.report(current, &text);
        }
        self.drain_jobs(current);
        let failed = failed || self.state.borrow().errors != errors_before;
        let took = started.elapsed();
        let slow = took >= Duration::from_millis(2);
        self.unchecked += took;
        if (failed || slow || self.unchecked >= MEMORY_CHECK_EVERY) && !self.oom {
            // At the cap QuickJS may not even allocate its error (it throws `null`), and a
            // script may catch the error and go on: a runtime (nearly) full is at its cap.
            // Measuring walks the whole heap (built-ins included: ~1.7M instructions for a
            // small one, which at every 1024th event was an eighth of an echo's cost), so it
            // is done after a failure, a slow event (where big allocations happen) and every
            // 20 ms of JavaScript; a collection (another walk) only when the heap looks full,
            // to see whether it is.
            self.unchecked = Duration::ZERO;
            if let Some(rt) = self.runtime.as_ref() {
                let full = self.limits.memory_limit / 10 * 9;
                let used = |rt: &Runtime| rt.memory_usage().malloc_size.max(0) as usize;
                if used(rt) >= full {
                    rt.run_gc();
                    self.oom = used(rt) >= full;
                }
            }
        }
        self.deadline.set(None);
        self.state.borrow_mut().current = None;
        {
            let mut stats = self.stats.borrow_mut();
            stats.invocations += 1;
            stats.cpu_us += took.as_micros() as u64;
        }
        if self.oom {
            self.teardown();
        }
    }

    /// Runs queued promise jobs, at most the cap (the rest wait for the next tick), under
    /// the current budget.
    fn drain_jobs(&mut self, current: Option<ConnId>) {
        for _ in 0..self.limits.job_cap {
            let Some(runtime) = self.runtime.as_ref() else {
                return;
            };
            match runtime.execute_pending_job() {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    let text = e.0.with(|ctx| {
                        let value = ctx.catch();
                        match value.as_exception() {
                            Some(ex) => format!(
                                "{}\n{}",
                                ex.message().unwrap_or_default(),
                                ex.stack().unwrap_or_default()
                            ),
                            None => format!("uncaught {value:?}"),
                        }
                    });
                    self.report(current, &text);
                }
            }
        }
    }

    /// An exception escaped an entry (an interrupt, an allocation at the cap, or an error the
    /// prelude could not pin on a socket): logged, counted, and pinned on `current`.
    fn report(&mut self, current: Option<ConnId>, text: &str) {
        let interrupted = text.contains("interrupted");
        if text.contains("out of memory") {
            self.oom = true;
        }
        {
            let mut stats = self.stats.borrow_mut();
            stats.errors += 1;
            stats.interrupts += u64::from(interrupted);
        }
        let name = &self.identity.name;
        if interrupted {
            tracing::warn!(function = %name, budget_ms = self.limits.cpu_budget.as_millis() as u64, "script interrupted at its CPU budget: {text}");
        } else {
            tracing::warn!(function = %name, "script error: {text}");
        }
        if let Some(id) = current
            && let Some(conn) = self.state.borrow_mut().conns.get_mut(&id)
        {
            conn.fault.get_or_insert(Fault::Error);
        }
    }

    /// Tears the runtime down (its memory cap was hit): every connection of it is marked and
    /// woken; nothing runs here any more.
    pub(crate) fn teardown(&mut self) {
        self.dead = true;
        self.hooks = None;
        self.context = None;
        self.runtime = None;
        let mut st = self.state.borrow_mut();
        st.current = None;
        st.timers.clear();
        st.timer_queue.clear();
        st.outbound.clear();
        st.deferred.clear();
        let ids: Vec<ConnId> = st.conns.keys().copied().collect();
        for id in ids {
            if let Some(conn) = st.conns.get_mut(&id) {
                conn.fault = Some(Fault::Memory);
            }
            st.touch(id);
        }
        self.stats.borrow_mut().errors += 1;
        tracing::warn!(function = %self.identity.name, version = self.identity.version, limit = self.limits.memory_limit, "runtime over its memory cap: torn down, its sockets closed");
    }

    /// A connection's request: calls the module's `fetch`.
    pub(crate) fn start(
        &mut self,
        id: ConnId,
        now: Tick,
        method: &str,
        url: &str,
        headers: &[String],
    ) {
        self.enter(Some(id), now, |ctx, hooks| {
            let start = hooks.start.clone().restore(ctx)?;
            start.call::<_, ()>((id, method, url, headers.to_vec()))
        });
    }

    /// A socket event (`peer`: the connection's outbound socket).
    pub(crate) fn event(&mut self, id: ConnId, peer: bool, now: Tick, event: SocketEvent) {
        // Ids go to JavaScript as integers (a u64 that fits becomes one): the prelude's tables are
        // keyed by them, and a float key is turned into a string first.
        let socket = id * 2 + u64::from(peer);
        self.enter(Some(id), now, |ctx, hooks| {
            let dispatch = hooks.event.clone().restore(ctx)?;
            match event {
                SocketEvent::Open => dispatch.call::<_, ()>((socket, 0)),
                SocketEvent::Message {
                    text: true,
                    payload,
                } => {
                    let text = String::from_utf8(payload).unwrap_or_default();
                    dispatch.call::<_, ()>((socket, 1, text))
                }
                SocketEvent::Message { payload, .. } => {
                    let data = ArrayBuffer::new(ctx.clone(), payload)?;
                    dispatch.call::<_, ()>((socket, 2, data))
                }
                SocketEvent::Close {
                    code,
                    reason,
                    clean,
                } => dispatch.call::<_, ()>((socket, 3, code, reason, clean)),
                SocketEvent::Error(message) => dispatch.call::<_, ()>((socket, 4, message)),
                SocketEvent::Gap { topic } => dispatch.call::<_, ()>((socket, 5, topic)),
            }
        });
    }

    /// Runs the timers due at `now`, then drains jobs left by a capped drain.
    pub(crate) fn timers(&mut self, now: Tick) {
        {
            let mut st = self.state.borrow_mut();
            for id in std::mem::take(&mut st.deferred) {
                st.touch(id);
            }
            st.expire(now);
        }
        // Each due timer fires once per tick (an interval is re-armed a period later).
        let mut fired = 0;
        while !self.dead && fired < self.limits.job_cap {
            let due = self.state.borrow_mut().due_timer(now);
            let Some((id, last)) = due else {
                break;
            };
            fired += 1;
            self.enter(None, now, |ctx, hooks| {
                let fire = hooks.fire.clone().restore(ctx)?;
                fire.call::<_, ()>((id, last))
            });
        }
        if self.jobs_pending() {
            self.enter(None, now, |_, _| Ok(()));
        }
    }

    /// The earliest tick at which [`Engine::timers`] has work.
    pub(crate) fn next_due(&self, now: Tick) -> Option<Tick> {
        if self.dead {
            return None;
        }
        if self.jobs_pending() || !self.state.borrow().deferred.is_empty() {
            return Some(now);
        }
        self.state.borrow().next_due()
    }
}
