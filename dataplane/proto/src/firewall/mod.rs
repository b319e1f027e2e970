//! The edge firewall: ordered rules evaluated on the parsed request head.
//!
//! Step 5 of a connection's life (docs/architecture.md): after routing, the dataplane's
//! connection state machine asks [`Firewall::evaluate`] about the parsed [`Request`] and the
//! client address, before any origin connection is opened, and acts on the [`Verdict`]:
//! go on, answer 403 / a custom response / 429 with `Retry-After` / 429 / 503, or close with
//! no response. Pure: no clock (the caller passes a [`Tick`] in ms for rate limits and unix
//! seconds for list expiry), no I/O, no locks.
//!
//! - [`Firewall`] is immutable data built from the config: [`Rule`]s (criteria + [`Action`])
//!   compiled once, and named [`NetList`]s (the only part edited live, through
//!   [`Firewall::list_mut`]). Each worker holds its own copy.
//! - [`FirewallState`] is one worker's counters: token buckets and live connection counts.
//!   The dataplane steers each client address to one worker, so per-address counts are exact
//!   for the host; global limits are shared out between workers.
//!
//! Evaluation runs the rules in order, skipping those scoped to other routes. A rule whose
//! criteria hold applies its action: `allow` stops with [`Verdict::Allow`]; `deny`, `drop`
//! and `respond` stop with their verdict; `rate_limit` takes a token (and goes on) or stops
//! with [`Verdict::RateLimited`]; `address_cap` / `global_cap` go on while the live
//! connections are under the cap, else stop. No rule deciding means [`Verdict::Allow`].
//! A token taken by a rate limit stays taken even if a later rule refuses the handshake.

mod criteria;
mod netlist;
mod state;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use criteria::{Criterion, MatchOp, Matcher, TlsFacts, compile_regex, is_header_name};
pub use netlist::{Cidr, CidrError, NetList};
pub use state::{DEFAULT_MAX_TRACKED_ADDRESSES, FirewallState};

use crate::handshake::{Request, error_response};
use crate::wheel::Tick;
use criteria::{Compiled, Compiler, Subject, index_headers};
use state::BucketParams;

/// Longest body of a custom response.
pub const MAX_RESPONSE_BODY: usize = 4096;

/// Identifies a compiled rule set, so a worker's state notices its rules were replaced.
static NEXT_FIREWALL_ID: AtomicU64 = AtomicU64::new(1);

/// A firewall rule as configured: where it applies, when, and what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Shown in tracebacks; unique in a firewall.
    pub name: String,
    /// Route names the rule applies to; `None` = every route.
    pub routes: Option<Vec<String>>,
    /// The condition; `None` = always.
    pub when: Option<Criterion>,
    pub action: Action,
}

/// What a rule does when its criteria hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Admit; stop evaluating.
    Allow,
    /// 403.
    Deny,
    /// Close with no response.
    Drop,
    /// Answer this status (200..=499) and body (at most [`MAX_RESPONSE_BODY`] bytes).
    Respond { status: u16, body: String },
    /// Take a token from a bucket; 429 with `Retry-After` when empty.
    RateLimit(RateLimit),
    /// 429 when the client address already has `max` live connections.
    AddressCap { max: u32 },
    /// 503 when `max` connections are live (shared out between workers).
    GlobalCap { max: u32 },
}

/// A token bucket: `rate` handshakes per `period_ms`, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub scope: LimitScope,
    /// Tokens added per period (at least 1).
    pub rate: u32,
    /// The period in ms (e.g. 1000 or 60000).
    pub period_ms: u64,
    /// Bucket size in tokens (at least 1).
    pub burst: u32,
}

/// Whose bucket a rate limit takes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    /// One bucket per client address.
    Address,
    /// One bucket for everyone (each worker holds its share).
    Global,
}

/// Why rules or lists were refused by [`Firewall::new`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FirewallError {
    #[error("rule {rule:?}: unknown network list {list:?}")]
    UnknownList { rule: String, list: String },
    #[error("rule {rule:?}: invalid regex {pattern:?}: {message}")]
    Regex {
        rule: String,
        pattern: String,
        message: String,
    },
    #[error("rule {rule:?}: invalid header name {name:?}")]
    HeaderName { rule: String, name: String },
    #[error("rule {rule:?}: {message}")]
    Action { rule: String, message: String },
    #[error("duplicate rule name {0:?}")]
    DuplicateRule(String),
    #[error("rule name must not be empty")]
    EmptyRuleName,
    #[error("duplicate network list name {0:?}")]
    DuplicateList(String),
    #[error("too many rules (at most {max})", max = u32::MAX)]
    TooManyRules,
}

/// The decision of [`Firewall::evaluate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on: connect to the origin (and call [`FirewallState::on_connection_open`]).
    Allow,
    /// Answer 403 and close.
    Deny,
    /// Close without a response.
    Drop,
    /// Answer this status and body and close.
    Respond { status: u16, body: Arc<str> },
    /// Answer 429 with `Retry-After: retry_after_secs` and close.
    RateLimited { retry_after_secs: u32 },
    /// The client address has too many live connections: 429 and close.
    PerAddressCap,
    /// Too many live connections in total: 503 and close.
    GlobalCap,
}

impl Verdict {
    /// The status to answer with; `None` for [`Verdict::Allow`] and [`Verdict::Drop`].
    pub fn status(&self) -> Option<u16> {
        match self {
            Verdict::Allow | Verdict::Drop => None,
            Verdict::Deny => Some(403),
            Verdict::Respond { status, .. } => Some(*status),
            Verdict::RateLimited { .. } | Verdict::PerAddressCap => Some(429),
            Verdict::GlobalCap => Some(503),
        }
    }

    /// A snake_case label for counters and the access log.
    pub fn reason(&self) -> &'static str {
        match self {
            Verdict::Allow => "firewall_allow",
            Verdict::Deny => "firewall_deny",
            Verdict::Drop => "firewall_drop",
            Verdict::Respond { .. } => "firewall_respond",
            Verdict::RateLimited { .. } => "firewall_rate_limited",
            Verdict::PerAddressCap => "firewall_address_cap",
            Verdict::GlobalCap => "firewall_global_cap",
        }
    }

    /// Appends the complete response to send before closing (nothing for `Allow`/`Drop`).
    /// Every response is short and has `Connection: close`.
    pub fn write_response(&self, out: &mut Vec<u8>) {
        match self {
            Verdict::Allow | Verdict::Drop => {}
            Verdict::Deny => out.extend_from_slice(error_response(403)),
            Verdict::GlobalCap => out.extend_from_slice(error_response(503)),
            Verdict::RateLimited { retry_after_secs } => {
                write_head(out, 429, "text/plain", 18, Some(*retry_after_secs));
                out.extend_from_slice(b"too many requests\n");
            }
            Verdict::PerAddressCap => {
                write_head(out, 429, "text/plain", 21, None);
                out.extend_from_slice(b"too many connections\n");
            }
            Verdict::Respond { status, body } => {
                write_head(out, *status, "text/plain; charset=utf-8", body.len(), None);
                out.extend_from_slice(body.as_bytes());
            }
        }
    }
}

fn write_head(out: &mut Vec<u8>, status: u16, content_type: &str, len: usize, retry: Option<u32>) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n",
        reason_phrase(status)
    );
    if let Some(secs) = retry {
        let _ = write!(out, "Retry-After: {secs}\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
}

/// The reason phrase for a status a rule may answer with (RFC 9110; generic otherwise).
fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        418 => "I'm a teapot",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        451 => "Unavailable For Legal Reasons",
        201..=299 => "Success",
        300..=399 => "Redirection",
        _ => "Client Error",
    }
}

/// One evaluated rule in a traceback, in evaluation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceEntry {
    /// Rule index; [`Firewall::rule_name`] names it.
    pub rule: usize,
    pub outcome: TraceOutcome,
}

/// What an evaluated rule did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceOutcome {
    /// Its criteria did not hold.
    NotMatched,
    /// Its criteria held; a rate limit or cap under its limit: evaluation went on.
    Passed,
    /// Its criteria held and its action is the verdict.
    Decided,
}

impl TraceOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            TraceOutcome::NotMatched => "no_match",
            TraceOutcome::Passed => "passed",
            TraceOutcome::Decided => "decided",
        }
    }
}

#[derive(Debug, Clone)]
enum CompiledAction {
    Allow,
    Deny,
    Drop,
    Respond(u16, Arc<str>),
    RateAddress(BucketParams),
    RateGlobal(RateLimit),
    AddressCap(u32),
    GlobalCap(u32),
}

#[derive(Debug, Clone)]
struct CompiledRule {
    name: Box<str>,
    routes: Option<Box<[Box<str>]>>,
    when: Option<Compiled>,
    action: CompiledAction,
}

/// Compiled rules and network lists: one copy per worker, immutable but for list edits.
#[derive(Debug, Clone)]
pub struct Firewall {
    id: u64,
    rules: Box<[CompiledRule]>,
    /// Per-address bucket parameters by rule index, for sweeps.
    address_params: Box<[Option<BucketParams>]>,
    lists: Vec<NetList>,
    /// Lower-case header names referenced by the rules.
    headers: Vec<Box<[u8]>>,
}

impl Firewall {
    /// Compiles rules (regexes built once, list names resolved) over the given lists.
    pub fn new(rules: Vec<Rule>, lists: Vec<NetList>) -> Result<Firewall, FirewallError> {
        for (i, l) in lists.iter().enumerate() {
            if lists[..i].iter().any(|o| o.name() == l.name()) {
                return Err(FirewallError::DuplicateList(l.name().to_owned()));
            }
        }
        if u32::try_from(rules.len()).is_err() {
            return Err(FirewallError::TooManyRules);
        }
        let mut headers = Vec::new();
        let mut compiled: Vec<CompiledRule> = Vec::with_capacity(rules.len());
        for rule in rules {
            if rule.name.is_empty() {
                return Err(FirewallError::EmptyRuleName);
            }
            if compiled.iter().any(|r| *r.name == *rule.name) {
                return Err(FirewallError::DuplicateRule(rule.name));
            }
            let bad = |message: &str| FirewallError::Action {
                rule: rule.name.clone(),
                message: message.to_owned(),
            };
            let action = match &rule.action {
                Action::Allow => CompiledAction::Allow,
                Action::Deny => CompiledAction::Deny,
                Action::Drop => CompiledAction::Drop,
                Action::Respond { status, body } => {
                    if !(200..=499).contains(status) {
                        return Err(bad("respond status must be from 200 to 499"));
                    }
                    if body.len() > MAX_RESPONSE_BODY {
                        return Err(bad("respond body longer than 4096 bytes"));
                    }
                    CompiledAction::Respond(*status, Arc::from(body.as_str()))
                }
                Action::RateLimit(limit) => {
                    if limit.rate == 0 || limit.burst == 0 || limit.period_ms == 0 {
                        return Err(bad("rate, burst and period must be at least 1"));
                    }
                    match limit.scope {
                        LimitScope::Address => CompiledAction::RateAddress(BucketParams::new(
                            limit.rate,
                            limit.period_ms,
                            limit.burst,
                            1,
                        )),
                        LimitScope::Global => CompiledAction::RateGlobal(*limit),
                    }
                }
                Action::AddressCap { max } | Action::GlobalCap { max } if *max == 0 => {
                    return Err(bad("cap must be at least 1 (use deny to refuse everyone)"));
                }
                Action::AddressCap { max } => CompiledAction::AddressCap(*max),
                Action::GlobalCap { max } => CompiledAction::GlobalCap(*max),
            };
            let when = match &rule.when {
                None => None,
                Some(c) => Some(
                    Compiler {
                        lists: &lists,
                        headers: &mut headers,
                        rule: &rule.name,
                    }
                    .compile(c)?,
                ),
            };
            compiled.push(CompiledRule {
                name: rule.name.into(),
                routes: rule
                    .routes
                    .map(|r| r.into_iter().map(String::into_boxed_str).collect()),
                when,
                action,
            });
        }
        let address_params = compiled
            .iter()
            .map(|r| match r.action {
                CompiledAction::RateAddress(p) => Some(p),
                _ => None,
            })
            .collect();
        Ok(Firewall {
            id: NEXT_FIREWALL_ID.fetch_add(1, Ordering::Relaxed),
            rules: compiled.into(),
            address_params,
            lists,
            headers,
        })
    }

    /// A firewall with no rules and no lists (everything allowed).
    pub fn empty() -> Firewall {
        Firewall {
            id: 0,
            rules: Box::new([]),
            address_params: Box::new([]),
            lists: Vec::new(),
            headers: Vec::new(),
        }
    }

    /// True if there are no rules (evaluation always allows).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The name of rule `index` (for tracebacks); `""` if out of range.
    pub fn rule_name(&self, index: usize) -> &str {
        self.rules.get(index).map_or("", |r| &r.name)
    }

    pub fn lists(&self) -> &[NetList] {
        &self.lists
    }

    pub fn list(&self, name: &str) -> Option<&NetList> {
        self.lists.iter().find(|l| l.name() == name)
    }

    /// The named list, to edit live ([`NetList::add`], [`NetList::remove`]); rules keep
    /// referring to it.
    pub fn list_mut(&mut self, name: &str) -> Option<&mut NetList> {
        self.lists.iter_mut().find(|l| l.name() == name)
    }

    /// Evaluates the rules that apply to `route` on a parsed head from `peer`.
    ///
    /// `now` is the worker's tick (ms) for rate limits; `unix_now` the wall clock (unix
    /// seconds) for list expiry. With `trace`, every evaluated rule is appended in order.
    /// The caller admits the connection only on [`Verdict::Allow`], and then calls
    /// [`FirewallState::on_connection_open`].
    #[allow(clippy::too_many_arguments)]
    pub fn evaluate(
        &self,
        state: &mut FirewallState,
        req: &Request<'_>,
        peer: IpAddr,
        route: Option<&str>,
        now: Tick,
        unix_now: u64,
        trace: Option<&mut Vec<TraceEntry>>,
    ) -> Verdict {
        self.evaluate_tls(state, req, peer, None, route, now, unix_now, trace)
    }

    /// [`evaluate`](Self::evaluate) for a connection whose TLS handshake gave `tls` (`None`:
    /// plain TCP, where the TLS criteria see no value).
    #[allow(clippy::too_many_arguments)]
    pub fn evaluate_tls(
        &self,
        state: &mut FirewallState,
        req: &Request<'_>,
        peer: IpAddr,
        tls: Option<TlsFacts<'_>>,
        route: Option<&str>,
        now: Tick,
        unix_now: u64,
        mut trace: Option<&mut Vec<TraceEntry>>,
    ) -> Verdict {
        if self.rules.is_empty() {
            return Verdict::Allow;
        }
        if state.firewall_id != self.id {
            state.reset_buckets(self.id, self.rules.len());
        }
        let mut header_at = std::mem::take(&mut state.header_at);
        let mut list_hit = std::mem::take(&mut state.list_hit);
        let mut query_pairs = std::mem::take(&mut state.query_pairs);
        index_headers(req, &self.headers, &mut header_at);
        list_hit.clear();
        list_hit.resize(self.lists.len(), 0);
        let mut subject = Subject::new(
            req,
            peer,
            unix_now,
            &header_at,
            &mut list_hit,
            &mut query_pairs,
            &self.lists,
        );
        subject.tls = tls;
        let mut verdict = Verdict::Allow;
        for (index, rule) in self.rules.iter().enumerate() {
            if let Some(routes) = &rule.routes
                && !route.is_some_and(|r| routes.iter().any(|n| **n == *r))
            {
                continue;
            }
            let matched = rule.when.as_ref().is_none_or(|c| subject.eval(c));
            let decided = if matched {
                self.apply(state, index, &rule.action, peer, now)
            } else {
                None
            };
            if let Some(t) = trace.as_deref_mut() {
                let outcome = match (matched, &decided) {
                    (false, _) => TraceOutcome::NotMatched,
                    (true, None) => TraceOutcome::Passed,
                    (true, Some(_)) => TraceOutcome::Decided,
                };
                t.push(TraceEntry {
                    rule: index,
                    outcome,
                });
            }
            if let Some(v) = decided {
                verdict = v;
                break;
            }
        }
        state.header_at = header_at;
        state.list_hit = list_hit;
        state.query_pairs = query_pairs;
        verdict
    }

    /// Applies a matched rule's action; `None` = evaluation goes on.
    fn apply(
        &self,
        state: &mut FirewallState,
        index: usize,
        action: &CompiledAction,
        peer: IpAddr,
        now: Tick,
    ) -> Option<Verdict> {
        match action {
            CompiledAction::Allow => Some(Verdict::Allow),
            CompiledAction::Deny => Some(Verdict::Deny),
            CompiledAction::Drop => Some(Verdict::Drop),
            CompiledAction::Respond(status, body) => Some(Verdict::Respond {
                status: *status,
                body: Arc::clone(body),
            }),
            CompiledAction::RateAddress(p) => {
                // INVARIANT: Firewall::new refuses more than u32::MAX rules.
                let rule = index as u32;
                state
                    .take_address(rule, peer, p, now, &self.address_params)
                    .err()
                    .map(|retry_after_secs| Verdict::RateLimited { retry_after_secs })
            }
            CompiledAction::RateGlobal(limit) => {
                // Shared out between workers (rate and burst divided by their number).
                let p = BucketParams::new(limit.rate, limit.period_ms, limit.burst, state.workers);
                state
                    .take_global(index, &p, now)
                    .err()
                    .map(|retry_after_secs| Verdict::RateLimited { retry_after_secs })
            }
            CompiledAction::AddressCap(max) => {
                (state.live_connections(peer) >= *max).then_some(Verdict::PerAddressCap)
            }
            CompiledAction::GlobalCap(max) => {
                let share = u64::from(*max).div_ceil(state.workers);
                (state.live_total() >= share).then_some(Verdict::GlobalCap)
            }
        }
    }

    /// Drops the per-address buckets that have refilled completely at `now` (optional: the
    /// evaluation sweeps by itself when the map is full; a periodic call keeps memory low).
    pub fn sweep(&self, state: &mut FirewallState, now: Tick) {
        if state.firewall_id == self.id {
            state.sweep(now, &self.address_params);
        }
    }
}

#[cfg(test)]
mod tests;
