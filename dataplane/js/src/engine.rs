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

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rquickjs::function::Opt;
use rquickjs::loader::{ImportAttributes, Loader, Resolver};
use rquickjs::module::Declared;
use rquickjs::{
    ArrayBuffer, CatchResultExt, Context, Ctx, Exception, Function, Module, Object, Persistent,
    Runtime, TypedArray, Value,
};
use wsedge_proto::frame::{OpCode, encode_frame};
use wsedge_proto::function::Payload;
use wsedge_proto::wheel::Tick;

use crate::script::{Disk, Script, ScriptError, resolve};
use crate::state::{BusOp, Conn, ConnId, Decision, Fault, FunctionStats, Peer, State, Topics};

const PRELUDE: &str = include_str!("prelude.js");

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

/// Where a runtime's modules come from.
#[derive(Clone)]
enum Source {
    Bundle(HashMap<String, Arc<[u8]>>),
    Disk(Rc<RefCell<Disk>>),
}

struct ModuleResolver;

impl Resolver for ModuleResolver {
    fn resolve<'js>(
        &mut self,
        _ctx: &Ctx<'js>,
        base: &str,
        name: &str,
        _attributes: Option<ImportAttributes<'js>>,
    ) -> rquickjs::Result<String> {
        resolve(base, name).map_err(|m| rquickjs::Error::new_resolving_message(base, name, m))
    }
}

struct ModuleLoader(Source);

impl Loader for ModuleLoader {
    fn load<'js>(
        &mut self,
        ctx: &Ctx<'js>,
        name: &str,
        _attributes: Option<ImportAttributes<'js>>,
    ) -> rquickjs::Result<Module<'js, Declared>> {
        let source = match &self.0 {
            Source::Bundle(modules) => modules
                .get(name)
                .cloned()
                .ok_or_else(|| rquickjs::Error::new_loading(name))?,
            Source::Disk(disk) => disk
                .borrow_mut()
                .read(name)
                .map_err(|m| rquickjs::Error::new_loading_message(name, m))?,
        };
        Module::declare(ctx.clone(), name, source.to_vec())
    }
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
            let host = bindings(&ctx, &state, &identity, limits).map_err(|e| caught(&ctx, e))?;
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

// ----- the native bindings ---------------------------------------------------------------

/// Binary data from JavaScript: a `Uint8Array` (the prelude passes views as one) or an
/// `ArrayBuffer` (as a received message's data is: sent back without making a view of it).
enum Binary<'js> {
    View(TypedArray<'js, u8>),
    Buffer(ArrayBuffer<'js>),
}

/// The bytes of binary data, copied.
///
/// rquickjs 0.14 has no safe accessor for a typed array's or a buffer's bytes: this is the
/// crate's only `unsafe`.
#[allow(unsafe_code)]
fn copy_bytes(data: &Binary<'_>) -> Vec<u8> {
    // SAFETY: the slice borrows memory the engine owns only until JavaScript runs again; it
    // is copied at once, and no JavaScript runs while it is borrowed.
    let bytes = unsafe {
        match data {
            Binary::View(array) => array.as_bytes(),
            Binary::Buffer(buffer) => buffer.as_bytes(),
        }
    };
    bytes.map_or_else(Vec::new, <[u8]>::to_vec)
}

/// Message data from JavaScript: a string (text), a `Uint8Array` or an `ArrayBuffer`
/// (binary).
fn data_of(ctx: &Ctx<'_>, data: &Value<'_>) -> rquickjs::Result<(bool, Vec<u8>)> {
    if let Some(s) = data.as_string() {
        return Ok((true, s.to_string()?.into_bytes()));
    }
    if let Some(object) = data.as_object() {
        if let Ok(array) = TypedArray::<u8>::from_object(object.clone()) {
            return Ok((false, copy_bytes(&Binary::View(array))));
        }
        if let Some(buffer) = ArrayBuffer::from_object(object.clone()) {
            return Ok((false, copy_bytes(&Binary::Buffer(buffer))));
        }
    }
    Err(Exception::throw_type(
        ctx,
        "expected a string or binary data",
    ))
}

/// The components `URL` exposes, in the prelude's order.
fn url_parts(url: &url::Url) -> Vec<String> {
    use url::quirks as q;
    vec![
        q::href(url).to_owned(),
        q::protocol(url).to_owned(),
        q::username(url).to_owned(),
        q::password(url).to_owned(),
        q::host(url).to_owned(),
        q::hostname(url).to_owned(),
        q::port(url).to_owned(),
        q::pathname(url).to_owned(),
        q::search(url).to_owned(),
        q::hash(url).to_owned(),
        q::origin(url),
    ]
}

/// An HTTP/1.1 response with its body: `Content-Length` set, `Connection: close`.
fn http_response(status: u16, text: &str, headers: &[String], body: &[u8]) -> Vec<u8> {
    let reason = if text.is_empty() {
        reason_phrase(status)
    } else {
        text
    };
    let mut out = format!("HTTP/1.1 {status} {}\r\n", clean(reason)).into_bytes();
    let mut typed = false;
    for pair in headers.chunks(2) {
        let [name, value] = pair else { continue };
        let lower = name.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "content-length" | "connection" | "transfer-encoding" | "keep-alive" | "upgrade"
        ) {
            continue;
        }
        typed |= lower == "content-type";
        out.extend_from_slice(format!("{}: {}\r\n", clean(name), clean(value)).as_bytes());
    }
    if !typed && !body.is_empty() {
        out.extend_from_slice(b"Content-Type: text/plain;charset=UTF-8\r\n");
    }
    out.extend_from_slice(
        format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(body);
    out
}

/// A header name or value without line breaks (no response splitting).
fn clean(s: &str) -> String {
    s.chars().filter(|c| *c != '\r' && *c != '\n').collect()
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Where a `new WebSocket(url)` goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct WsTarget {
    pub(crate) addr: SocketAddr,
    /// The `Host` header's value.
    pub(crate) host: String,
    /// The request target (path and query).
    pub(crate) target: String,
    /// `wss://`: the name the peer's certificate must carry (`localhost`, or the address).
    pub(crate) tls: Option<String>,
}

/// A `ws://` or `wss://` URL's address, `Host` value, request target and TLS name (no name
/// resolution: `localhost` is 127.0.0.1, anything else must be an address).
pub(crate) fn ws_target(href: &str) -> Result<WsTarget, String> {
    let url = url::Url::parse(href).map_err(|e| format!("{href}: {e}"))?;
    let secure = match url.scheme() {
        "ws" => false,
        "wss" => true,
        other => {
            return Err(format!(
                "{href}: the scheme must be ws:// or wss://, not {other}:"
            ));
        }
    };
    let port = url.port().unwrap_or(if secure { 443 } else { 80 });
    let ip: IpAddr = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        Some(url::Host::Domain("localhost")) => IpAddr::from([127, 0, 0, 1]),
        _ => {
            return Err(format!(
                "{href}: give an IP address (functions resolve no names)"
            ));
        }
    };
    let host = url::quirks::host(&url).to_owned();
    let mut target = url.path().to_owned();
    if let Some(q) = url.query() {
        target.push('?');
        target.push_str(q);
    }
    // The certificate is checked against the name the script wrote: `localhost`, or the
    // address (an IP address SAN), without brackets for IPv6.
    let tls = secure.then(|| match url.host() {
        Some(url::Host::Domain(d)) => d.to_owned(),
        _ => ip.to_string(),
    });
    Ok(WsTarget {
        addr: SocketAddr::new(ip, port),
        host,
        target,
        tls,
    })
}

/// The edge's client handshake for `new WebSocket`: the head and the accept value.
fn client_head(
    host: &str,
    target: &str,
    protocols: &[String],
    random: [u8; 16],
) -> (Vec<u8>, [u8; 28]) {
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD.encode(random);
    let accept = wsedge_proto::accept::accept_key(key.as_bytes());
    let mut head = format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
    );
    if !protocols.is_empty() {
        head.push_str(&format!(
            "Sec-WebSocket-Protocol: {}\r\n",
            protocols.join(", ")
        ));
    }
    head.push_str("\r\n");
    (head.into_bytes(), accept)
}

/// A token as RFC 7230 defines it (subprotocol names).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

type St = Rc<RefCell<State>>;

/// The `__host` object: everything the prelude asks of the Rust side.
fn bindings<'js>(
    ctx: &Ctx<'js>,
    state: &St,
    identity: &Identity,
    limits: Limits,
) -> rquickjs::Result<Object<'js>> {
    let host = Object::new(ctx.clone())?;
    let name = Rc::clone(&identity.name);
    let info = vec![
        identity.name.to_string(),
        identity.version.to_string(),
        identity.worker.to_string(),
        identity.workers.to_string(),
    ];
    host.set("info", Function::new(ctx.clone(), move || info.clone())?)?;

    let n = Rc::clone(&name);
    // The scratch runtime a script is checked in (version 0) runs its module code once
    // before any version serves: its console output would be logged under no function.
    let quiet = identity.version == 0;
    host.set(
        "logOn",
        Function::new(ctx.clone(), move |level: i32| -> bool {
            let _ = &n;
            if quiet {
                return false;
            }
            match level {
                0 => tracing::enabled!(target: "wsedge_js::console", tracing::Level::TRACE),
                1 => tracing::enabled!(target: "wsedge_js::console", tracing::Level::DEBUG),
                2 => tracing::enabled!(target: "wsedge_js::console", tracing::Level::INFO),
                3 => tracing::enabled!(target: "wsedge_js::console", tracing::Level::WARN),
                _ => tracing::enabled!(target: "wsedge_js::console", tracing::Level::ERROR),
            }
        })?,
    )?;
    let n = Rc::clone(&name);
    host.set(
        "log",
        Function::new(
            ctx.clone(),
            move |level: i32, message: String| match level {
                0 => tracing::trace!(target: "wsedge_js::console", function = %n, "{message}"),
                1 => tracing::debug!(target: "wsedge_js::console", function = %n, "{message}"),
                2 => tracing::info!(target: "wsedge_js::console", function = %n, "{message}"),
                3 => tracing::warn!(target: "wsedge_js::console", function = %n, "{message}"),
                _ => tracing::error!(target: "wsedge_js::console", function = %n, "{message}"),
            },
        )?,
    )?;

    // Text.
    host.set(
        "encode",
        Function::new(ctx.clone(), |ctx: Ctx<'js>, s: String| {
            TypedArray::<u8>::new(ctx, s.into_bytes())
        })?,
    )?;
    host.set(
        "decode",
        Function::new(
            ctx.clone(),
            |ctx: Ctx<'js>, data: TypedArray<'js, u8>, fatal: bool| -> rquickjs::Result<String> {
                let bytes = copy_bytes(&Binary::View(data));
                if fatal {
                    String::from_utf8(bytes)
                        .map_err(|_| Exception::throw_type(&ctx, "TextDecoder: invalid UTF-8"))
                } else {
                    Ok(String::from_utf8_lossy(&bytes).into_owned())
                }
            },
        )?,
    )?;

    // URL.
    host.set(
        "urlParse",
        Function::new(
            ctx.clone(),
            |input: String, base: Opt<String>| -> Option<Vec<String>> {
                let parsed = match base.0 {
                    Some(base) => url::Url::parse(&base).ok()?.join(&input).ok()?,
                    None => url::Url::parse(&input).ok()?,
                };
                Some(url_parts(&parsed))
            },
        )?,
    )?;
    host.set(
        "urlSet",
        Function::new(
            ctx.clone(),
            |href: String, part: i32, value: String| -> Option<Vec<String>> {
                use url::quirks as q;
                let mut url = url::Url::parse(&href).ok()?;
                let ok = match part {
                    0 => q::set_href(&mut url, &value).is_ok(),
                    1 => q::set_protocol(&mut url, &value).is_ok(),
                    2 => q::set_username(&mut url, &value).is_ok(),
                    3 => q::set_password(&mut url, &value).is_ok(),
                    4 => q::set_host(&mut url, &value).is_ok(),
                    5 => q::set_hostname(&mut url, &value).is_ok(),
                    6 => q::set_port(&mut url, &value).is_ok(),
                    7 => {
                        q::set_pathname(&mut url, &value);
                        true
                    }
                    8 => {
                        q::set_search(&mut url, &value);
                        true
                    }
                    9 => {
                        q::set_hash(&mut url, &value);
                        true
                    }
                    _ => false,
                };
                if !ok && part == 0 {
                    return None;
                }
                Some(url_parts(&url))
            },
        )?,
    )?;
    host.set(
        "formParse",
        Function::new(ctx.clone(), |s: String| -> Vec<Vec<String>> {
            url::form_urlencoded::parse(s.as_bytes())
                .map(|(k, v)| vec![k.into_owned(), v.into_owned()])
                .collect()
        })?,
    )?;
    host.set(
        "formSerialize",
        Function::new(ctx.clone(), |pairs: Vec<Vec<String>>| -> String {
            let mut out = url::form_urlencoded::Serializer::new(String::new());
            for pair in &pairs {
                if let [k, v] = pair.as_slice() {
                    out.append_pair(k, v);
                }
            }
            out.finish()
        })?,
    )?;

    // Timers.
    let st = Rc::clone(state);
    host.set(
        "setTimer",
        Function::new(ctx.clone(), move |delay: f64, repeat: bool| -> u64 {
            let delay = if delay.is_finite() && delay > 0.0 {
                delay as u64
            } else {
                0
            };
            st.borrow_mut().set_timer(delay, repeat)
        })?,
    )?;
    let st = Rc::clone(state);
    host.set(
        "clearTimer",
        Function::new(ctx.clone(), move |id: f64| {
            st.borrow_mut().clear_timer(id as u64);
        })?,
    )?;

    // Faults the prelude pins on a connection (or on none: -1).
    let st = Rc::clone(state);
    let n = Rc::clone(&name);
    host.set(
        "fault",
        Function::new(ctx.clone(), move |conn: f64, text: String| {
            let mut st = st.borrow_mut();
            st.errors += 1;
            if conn < 0.0 {
                tracing::warn!(function = %n, "script error: {text}");
                return;
            }
            let id = conn as u64;
            tracing::warn!(function = %n, conn = id, "script error, closing its socket: {text}");
            if let Some(c) = st.conns.get_mut(&id) {
                c.fault.get_or_insert(Fault::Error);
                st.touch(id);
            }
        })?,
    )?;

    // Answers.
    let st = Rc::clone(state);
    host.set(
        "isWebSocket",
        Function::new(ctx.clone(), move |conn: f64| -> bool {
            st.borrow()
                .conns
                .get(&(conn as u64))
                .is_some_and(|c| c.websocket && c.decision == Decision::Pending)
        })?,
    )?;
    let st = Rc::clone(state);
    host.set(
        "upgrade",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>,
                  conn: f64,
                  protocol: String,
                  idle: f64,
                  life: f64|
                  -> rquickjs::Result<()> {
                if !protocol.is_empty() && !is_token(&protocol) {
                    return Err(Exception::throw_type(
                        &ctx,
                        "upgradeWebSocket: protocol must be a token",
                    ));
                }
                let mut st = st.borrow_mut();
                let id = conn as u64;
                let now = st.now;
                let Some(c) = st.conns.get_mut(&id) else {
                    return Ok(());
                };
                if c.decision != Decision::Pending {
                    return Ok(());
                }
                c.decision = Decision::Upgrade {
                    protocol: (!protocol.is_empty()).then_some(protocol),
                };
                let ms = |s: f64| (s.is_finite() && s > 0.0).then_some((s * 1000.0) as u64);
                c.idle_ms = ms(idle);
                c.lifetime_ms = ms(life);
                c.last_active = now;
                c.opened_at = now;
                st.touch(id);
                Ok(())
            },
        )?,
    )?;
    let st = Rc::clone(state);
    host.set(
        "respond",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>,
                  conn: f64,
                  status: u16,
                  text: String,
                  headers: Vec<String>,
                  body: Value<'js>|
                  -> rquickjs::Result<()> {
                let body = if body.is_null() || body.is_undefined() {
                    Vec::new()
                } else {
                    data_of(&ctx, &body)?.1
                };
                let response = http_response(status, &text, &headers, &body);
                let mut st = st.borrow_mut();
                let id = conn as u64;
                if let Some(c) = st.conns.get_mut(&id)
                    && c.decision == Decision::Pending
                {
                    c.decision = Decision::Respond { status, response };
                    st.touch(id);
                }
                Ok(())
            },
        )?,
    )?;

    // Sockets.
    let st = Rc::clone(state);
    host.set(
        "send",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>, socket: f64, data: Value<'js>| -> rquickjs::Result<()> {
                let (text, bytes) = data_of(&ctx, &data)?;
                let opcode = if text { OpCode::Text } else { OpCode::Binary };
                let socket = socket as u64;
                let (id, peer) = (socket / 2, socket % 2 == 1);
                let mut st = st.borrow_mut();
                let mask = if peer { st.random() as u32 } else { 0 };
                let Some(c) = st.conns.get_mut(&id) else {
                    return Ok(());
                };
                if peer {
                    encode_frame(
                        opcode,
                        true,
                        &bytes,
                        Some(mask.to_ne_bytes()),
                        &mut c.to_peer,
                    );
                } else if c.close_client.is_none() {
                    encode_frame(opcode, true, &bytes, None, &mut c.to_client);
                }
                st.touch(id);
                Ok(())
            },
        )?,
    )?;
    let st = Rc::clone(state);
    host.set(
        "close",
        Function::new(
            ctx.clone(),
            move |socket: f64, code: u16, reason: String| {
                let socket = socket as u64;
                let (id, peer) = (socket / 2, socket % 2 == 1);
                let mut st = st.borrow_mut();
                let Some(c) = st.conns.get_mut(&id) else {
                    return;
                };
                let slot = if peer {
                    &mut c.close_peer
                } else {
                    &mut c.close_client
                };
                slot.get_or_insert((code, reason));
                st.touch(id);
            },
        )?,
    )?;
    let st = Rc::clone(state);
    host.set(
        "buffered",
        Function::new(ctx.clone(), move |socket: f64| -> f64 {
            let socket = socket as u64;
            let st = st.borrow();
            st.conns.get(&(socket / 2)).map_or(0.0, |c| {
                if socket % 2 == 1 {
                    c.to_peer.len() as f64
                } else {
                    (c.buffered + c.to_client.len()) as f64
                }
            })
        })?,
    )?;
    let st = Rc::clone(state);
    host.set(
        "connect",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>, href: String, protocols: Vec<String>| -> rquickjs::Result<u64> {
                let WsTarget {
                    addr,
                    host,
                    target,
                    tls,
                } = ws_target(&href)
                    .map_err(|m| Exception::throw_syntax(&ctx, &format!("WebSocket: {m}")))?;
                if let Some(p) = protocols.iter().find(|p| !is_token(p)) {
                    return Err(Exception::throw_syntax(
                        &ctx,
                        &format!("WebSocket: {p:?} is not a valid subprotocol"),
                    ));
                }
                let mut st = st.borrow_mut();
                let mut random = [0u8; 16];
                random[..8].copy_from_slice(&st.random().to_ne_bytes());
                random[8..].copy_from_slice(&st.random().to_ne_bytes());
                let (head, accept) = client_head(&host, &target, &protocols, random);
                let requested = Peer::Requested {
                    addr,
                    head,
                    accept,
                    tls,
                };
                // The peer of the connection being handled, if it has none yet.
                if let Some(id) = st.current
                    && let Some(c) = st.conns.get_mut(&id)
                    && !c.clientless
                    && c.peer == Peer::None
                    && c.fault.is_none()
                {
                    c.peer = requested;
                    st.touch(id);
                    return Ok(id * 2 + 1);
                }
                // A connection of its own, with no client.
                let id = st.add_conn(Conn {
                    clientless: true,
                    peer: requested,
                    ..Conn::default()
                });
                st.outbound.push(id);
                Ok(id * 2 + 1)
            },
        )?,
    )?;

    // Channels.
    host.set(
        "topicOk",
        Function::new(ctx.clone(), |t: String| {
            wsedge_proto::channels::is_valid_channel(&t)
        })?,
    )?;
    let st = Rc::clone(state);
    host.set(
        "subscribe",
        Function::new(ctx.clone(), move |conn: f64, topic: String| {
            let mut st = st.borrow_mut();
            let id = conn as u64;
            let topic: Box<str> = topic.into();
            let Some(c) = st.conns.get_mut(&id) else {
                return;
            };
            let Some(key) = c.key else {
                return;
            };
            if c.topics.contains(&topic) {
                return;
            }
            c.topics.push(topic.clone());
            *st.topics.borrow_mut().entry(topic.clone()).or_insert(0) += 1;
            st.bus_ops.push(BusOp::Subscribe(key, topic));
            st.touch(id);
        })?,
    )?;
    let st = Rc::clone(state);
    host.set(
        "unsubscribe",
        Function::new(ctx.clone(), move |conn: f64, topic: String| {
            let mut st = st.borrow_mut();
            let id = conn as u64;
            let Some(c) = st.conns.get_mut(&id) else {
                return;
            };
            let Some(i) = c.topics.iter().position(|t| **t == *topic) else {
                return;
            };
            let topic = c.topics.swap_remove(i);
            let key = c.key;
            {
                let mut topics = st.topics.borrow_mut();
                if let Some(n) = topics.get_mut(&topic) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        topics.remove(&topic);
                    }
                }
            }
            if let Some(key) = key {
                st.bus_ops.push(BusOp::Unsubscribe(key, topic));
            }
            st.touch(id);
        })?,
    )?;
    // A server socket's script listens for `gap`: only then does a gap enter JavaScript.
    let st = Rc::clone(state);
    host.set(
        "listenGap",
        Function::new(ctx.clone(), move |conn: f64| {
            if let Some(c) = st.borrow_mut().conns.get_mut(&(conn as u64)) {
                c.gap_listener = true;
            }
        })?,
    )?;
    let st = Rc::clone(state);
    host.set(
        "isSubscribed",
        Function::new(ctx.clone(), move |conn: f64, topic: String| -> bool {
            st.borrow()
                .conns
                .get(&(conn as u64))
                .is_some_and(|c| c.topics.iter().any(|t| **t == *topic))
        })?,
    )?;
    let st = Rc::clone(state);
    host.set(
        "subscribers",
        Function::new(ctx.clone(), move |topic: String| -> f64 {
            st.borrow()
                .topics
                .borrow()
                .get(topic.as_str())
                .copied()
                .unwrap_or(0) as f64
        })?,
    )?;
    let st = Rc::clone(state);
    host.set(
        "publish",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>,
                  conn: f64,
                  topic: String,
                  data: Value<'js>|
                  -> rquickjs::Result<()> {
                let (text, bytes) = data_of(&ctx, &data)?;
                let payload = if text {
                    Payload::Text(String::from_utf8(bytes).unwrap_or_default())
                } else {
                    Payload::Binary(bytes)
                };
                let mut st = st.borrow_mut();
                let skip = if conn < 0.0 {
                    None
                } else {
                    st.conns.get(&(conn as u64)).and_then(|c| c.key)
                };
                st.bus_ops.push(BusOp::Publish {
                    topic: topic.into(),
                    payload,
                    skip,
                });
                if let Some(id) = st.current {
                    // The session handling this event applies it with its bus.
                    let _ = id;
                }
                Ok(())
            },
        )?,
    )?;
    let _ = limits;
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_targets_need_an_address_and_a_ws_scheme() {
        let t = ws_target("ws://127.0.0.1:9001/feed?x=1").expect("ok");
        assert_eq!(t.addr, "127.0.0.1:9001".parse().expect("addr"));
        assert_eq!(
            (t.host.as_str(), t.target.as_str(), t.tls),
            ("127.0.0.1:9001", "/feed?x=1", None)
        );
        let t = ws_target("ws://localhost/").expect("ok");
        assert_eq!((t.addr.port(), t.target.as_str()), (80, "/"));
        // wss://: port 443 by default, verified against the name written.
        let t = ws_target("wss://127.0.0.1/x").expect("ok");
        assert_eq!((t.addr.port(), t.tls.as_deref()), (443, Some("127.0.0.1")));
        let t = ws_target("wss://localhost:8443/").expect("ok");
        assert_eq!(
            (t.addr, t.host.as_str(), t.tls.as_deref()),
            (
                "127.0.0.1:8443".parse().expect("addr"),
                "localhost:8443",
                Some("localhost")
            )
        );
        let t = ws_target("wss://[::1]:9443/").expect("ok");
        assert_eq!(t.tls.as_deref(), Some("::1"));
        assert!(
            ws_target("ws://example.com/")
                .expect_err("dns")
                .contains("IP address")
        );
        assert!(ws_target("http://127.0.0.1/").is_err());
    }

    #[test]
    fn responses_carry_their_length_and_no_line_breaks_from_headers() {
        let r = http_response(
            403,
            "",
            &[
                "X-A".into(),
                "1\r\nInjected: yes".into(),
                "Content-Length".into(),
                "9".into(),
            ],
            b"no",
        );
        let text = String::from_utf8(r).expect("utf8");
        assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{text}");
        assert!(text.contains("X-A: 1Injected: yes\r\n"));
        assert!(text.contains("Content-Length: 2\r\nConnection: close\r\n\r\nno"));
        assert_eq!(text.matches("Content-Length").count(), 1);
    }
}
