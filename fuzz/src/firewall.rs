//! `firewall`: the edge firewall (`wsedge_proto::firewall`) against a reference model.
//!
//! The input is decoded with `arbitrary` into network lists, rules (criteria trees of every
//! kind, every action, route scopes; names, patterns and values from small pools so they
//! collide, or anything) and a sequence of events: handshakes (any method, path, query,
//! headers and Host, from a pool of IPv4, IPv6 and IPv4-mapped peers, on a route or none),
//! connection closes, clock steps, live list edits and sweeps.
//!
//! The model is written from the documented semantics, without the engine's compiled form,
//! header index, range tables or bucket map:
//! - `Firewall::new` accepts exactly the rule sets the model finds valid, and refuses the
//!   others with the model's first error (same kind, same rule);
//! - each handshake's verdict and traceback are the model's: criteria evaluated directly on
//!   the request (a header or query argument given several times matches if any value
//!   does; Host without port, case-insensitive), list membership as "some live entry's
//!   network holds the address" (IPv4-mapped peers as IPv4), token buckets per address and
//!   rule (exact while tracked; at the tracking cap a due sweep, then untracked addresses
//!   pass) and per worker for global limits (rate and burst shared out), caps on the live
//!   connections the harness opened and closed;
//! - so a rule that denies everyone denies every handshake it is reached by, and so on;
//! - every verdict's response parses as an HTTP response with its status, a
//!   `Content-Length` that matches the body, `Connection: close`, and `Retry-After` exactly
//!   for rate limits; list edits report what the model says they did.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::{Arbitrary, Unstructured};
use regex::bytes::RegexBuilder;
use wsedge_proto::firewall::{
    Action, Cidr, Criterion, Firewall, FirewallError, FirewallState, LimitScope, MatchOp, Matcher,
    NetList, RateLimit, Rule, TraceEntry, TraceOutcome, Verdict, compile_regex,
};
use wsedge_proto::handshake::{BodyLength, HeadLimits, Request, RequestKind};
use wsedge_proto::response::parse_response;
use wsedge_proto::route::host_without_port;

// ---------------------------------------------------------------------------------------------
// Input
// ---------------------------------------------------------------------------------------------

/// Names for rules whose name byte is 250 or more (clashes and an empty name); the others
/// are named after their position.
const ODD_RULE_NAMES: [&str; 3] = ["r0", "", "r1"];
const LIST_NAMES: [&str; 3] = ["blocked", "office", "Blocked"];
const ROUTES: [&str; 3] = ["chat", "api", "ws"];
/// Header names; the last two are invalid, and picked only by bytes of 250 and more.
const HEADER_NAMES: [&str; 7] = [
    "Origin",
    "user-agent",
    "X-Key",
    "x-key",
    "Cookie",
    "bad name",
    "",
];

fn header_name(i: u8) -> &'static str {
    if i >= 250 {
        HEADER_NAMES[5 + usize::from(i % 2)]
    } else {
        HEADER_NAMES[usize::from(i) % 5]
    }
}
const QUERY_NAMES: [&str; 4] = ["token", "room", "", "a=b"];
const TEXTS: [&str; 12] = [
    "GET",
    "/ws",
    "/",
    "chat.example.com",
    "Chat.Example.COM",
    "https://app.example.com",
    "lobby",
    "",
    "1",
    "bot",
    "Mozilla/5.0",
    "session=1",
];
/// Patterns; the last two are invalid, and picked only by bytes of 250 and more.
const PATTERNS: [&str; 8] = [
    "^/ws",
    "(?i)bot",
    "^GET$",
    r"\d+",
    "example\\.com$",
    "^$",
    "[",
    "(a|b",
];
const PERIODS: [u64; 4] = [1, 7, 1000, 60_000];

fn peers() -> [IpAddr; 8] {
    [
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 200)),
        IpAddr::V6(Ipv4Addr::new(203, 0, 113, 7).to_ipv6_mapped()),
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9)),
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0xffff, 0, 1)),
        IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
    ]
}

/// Text from a pool (likely to match) or anything.
#[derive(Debug, Arbitrary)]
enum Text {
    Pool(u8),
    Any(String),
}

impl Text {
    fn get(&self) -> String {
        match self {
            Text::Pool(i) => TEXTS[usize::from(*i) % TEXTS.len()].to_owned(),
            Text::Any(s) => s.clone(),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Pattern {
    Pool(u8),
    Any(String),
}

#[derive(Debug, Arbitrary)]
enum OpSpec {
    Exists,
    Equals(Text),
    StartsWith(Text),
    Matches(Pattern),
}

#[derive(Debug, Arbitrary)]
struct MatchSpec {
    negate: bool,
    op: OpSpec,
}

impl MatchSpec {
    fn build(&self) -> Matcher {
        let op = match &self.op {
            OpSpec::Exists => MatchOp::Exists,
            OpSpec::Equals(t) => MatchOp::Equals(t.get()),
            OpSpec::StartsWith(t) => MatchOp::StartsWith(t.get()),
            OpSpec::Matches(Pattern::Pool(i)) if *i >= 250 => {
                MatchOp::Matches(PATTERNS[6 + usize::from(*i % 2)].to_owned())
            }
            OpSpec::Matches(Pattern::Pool(i)) => {
                MatchOp::Matches(PATTERNS[usize::from(*i) % 6].to_owned())
            }
            OpSpec::Matches(Pattern::Any(s)) => MatchOp::Matches(s.clone()),
        };
        Matcher {
            op,
            negate: self.negate,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum CritSpec {
    All(Vec<CritSpec>),
    Any(Vec<CritSpec>),
    Not(Box<CritSpec>),
    ClientIn(u8),
    Host(MatchSpec),
    Method(MatchSpec),
    Path(MatchSpec),
    Query(u8, MatchSpec),
    Header(u8, MatchSpec),
    HeaderAny(String, MatchSpec),
}

impl CritSpec {
    fn build(&self, depth: usize) -> Criterion {
        if depth > 4 {
            return Criterion::All(Vec::new());
        }
        let many = |cs: &[CritSpec]| cs.iter().take(4).map(|c| c.build(depth + 1)).collect();
        match self {
            CritSpec::All(cs) => Criterion::All(many(cs)),
            CritSpec::Any(cs) => Criterion::Any(many(cs)),
            CritSpec::Not(c) => Criterion::Not(Box::new(c.build(depth + 1))),
            CritSpec::ClientIn(i) => {
                Criterion::ClientIn(LIST_NAMES[usize::from(*i) % LIST_NAMES.len()].to_owned())
            }
            CritSpec::Host(m) => Criterion::Host(m.build()),
            CritSpec::Method(m) => Criterion::Method(m.build()),
            CritSpec::Path(m) => Criterion::Path(m.build()),
            CritSpec::Query(i, m) => Criterion::Query {
                name: QUERY_NAMES[usize::from(*i) % QUERY_NAMES.len()].to_owned(),
                matcher: m.build(),
            },
            CritSpec::Header(i, m) => Criterion::Header {
                name: header_name(*i).to_owned(),
                matcher: m.build(),
            },
            CritSpec::HeaderAny(name, m) => Criterion::Header {
                name: name.clone(),
                matcher: m.build(),
            },
        }
    }
}

#[derive(Debug, Arbitrary)]
enum ActionSpec {
    Allow,
    Deny,
    Drop,
    Respond {
        status: u16,
        body: u16,
    },
    RateLimit {
        global: bool,
        rate: u8,
        period: u8,
        burst: u8,
    },
    AddressCap(u8),
    GlobalCap(u8),
}

impl ActionSpec {
    fn build(&self) -> Action {
        match *self {
            ActionSpec::Allow => Action::Allow,
            ActionSpec::Deny => Action::Deny,
            ActionSpec::Drop => Action::Drop,
            ActionSpec::Respond { status, body } => Action::Respond {
                // Mostly valid statuses, sometimes not.
                status: if status % 64 == 0 {
                    status
                } else {
                    200 + status % 300
                },
                body: "é".repeat(usize::from(body) % 2100),
            },
            ActionSpec::RateLimit {
                global,
                rate,
                period,
                burst,
            } => Action::RateLimit(RateLimit {
                scope: if global {
                    LimitScope::Global
                } else {
                    LimitScope::Address
                },
                // Zero (refused) only from a zero byte.
                rate: u32::from(rate.min(1) + rate % 4),
                period_ms: PERIODS[usize::from(period) % 4] * u64::from(period / 4 % 2 + 1)
                    - u64::from(period == 255),
                burst: u32::from(burst.min(1) + burst % 4),
            }),
            ActionSpec::AddressCap(max) => Action::AddressCap {
                max: u32::from(max.min(1) + max % 3),
            },
            ActionSpec::GlobalCap(max) => Action::GlobalCap {
                max: u32::from(max.min(1) + max % 5),
            },
        }
    }
}

#[derive(Debug, Arbitrary)]
struct RuleSpec {
    name: u8,
    routes: Option<Vec<u8>>,
    when: Option<CritSpec>,
    action: ActionSpec,
}

/// A network from the peer pool (so it may hold peers), cut to `len` bits.
#[derive(Debug, Arbitrary)]
struct CidrSpec {
    peer: u8,
    len: u8,
}

impl CidrSpec {
    fn build(&self) -> Cidr {
        let ip = peers()[usize::from(self.peer) % 8];
        let cidr = match ip {
            IpAddr::V4(a) => Cidr::V4 {
                addr: u32::from(a),
                len: self.len % 33,
            },
            IpAddr::V6(a) => Cidr::V6 {
                addr: u128::from(a),
                len: self.len % 129,
            },
        }
        .truncated();
        // Through `Cidr::new`, which stores IPv4-mapped networks as IPv4.
        let (ip, len) = match cidr {
            Cidr::V4 { addr, len } => (IpAddr::V4(Ipv4Addr::from(addr)), len),
            Cidr::V6 { addr, len } => (IpAddr::V6(Ipv6Addr::from(addr)), len),
        };
        Cidr::new(ip, len).expect("host bits cleared")
    }
}

#[derive(Debug, Arbitrary)]
struct ListSpec {
    name: u8,
    entries: Vec<(CidrSpec, Option<u8>)>,
}

#[derive(Debug, Arbitrary)]
struct RequestSpec {
    method: Text,
    path: Text,
    query: Option<Vec<(u8, Text)>>,
    raw_query: Option<String>,
    headers: Vec<(u8, Text)>,
    host: Option<Text>,
}

#[derive(Debug, Arbitrary)]
enum EventSpec {
    Handshake {
        req: RequestSpec,
        peer: u8,
        route: u8,
        trace: bool,
    },
    Close(u8),
    Millis(u16),
    Seconds(u8),
    ListAdd {
        list: u8,
        cidr: CidrSpec,
        expires: Option<u8>,
    },
    ListRemove {
        list: u8,
        cidr: CidrSpec,
    },
    Purge(u8),
    Sweep,
}

/// The decoded input: counts are read first, then each item from the front of the data,
/// so random bytes give sizeable rule sets and event sequences.
#[derive(Debug)]
struct Input {
    workers: u8,
    max_tracked: u8,
    lists: Vec<ListSpec>,
    rules: Vec<RuleSpec>,
    events: Vec<EventSpec>,
}

impl Input {
    fn decode(u: &mut Unstructured<'_>) -> arbitrary::Result<Input> {
        let workers = u.arbitrary()?;
        let max_tracked = u.arbitrary()?;
        let lists = (0..u.int_in_range(0..=3)?)
            .map(|_| u.arbitrary())
            .collect::<arbitrary::Result<_>>()?;
        let rules = (0..u.int_in_range(0..=6)?)
            .map(|_| u.arbitrary())
            .collect::<arbitrary::Result<_>>()?;
        let mut events = Vec::new();
        while !u.is_empty() && events.len() < 64 {
            events.push(u.arbitrary()?);
        }
        Ok(Input {
            workers,
            max_tracked,
            lists,
            rules,
            events,
        })
    }
}

/// The request's owned parts; [`Parts::request`] borrows them as a parsed head would.
struct Parts {
    method: String,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    host: Option<String>,
}

impl RequestSpec {
    fn parts(&self) -> Parts {
        let mut target = self.path.get();
        if let Some(q) = &self.raw_query {
            target.push('?');
            target.push_str(q);
        } else if let Some(pairs) = &self.query {
            target.push('?');
            for (i, (name, value)) in pairs.iter().take(6).enumerate() {
                if i > 0 {
                    target.push('&');
                }
                target.push_str(QUERY_NAMES[usize::from(*name) % QUERY_NAMES.len()]);
                if name % 8 != 7 {
                    target.push('=');
                    target.push_str(&value.get());
                }
            }
        }
        let host = self.host.as_ref().map(|h| {
            let h = h.get();
            // Ports and trailing dots sometimes, as clients send them.
            match h.len() % 3 {
                0 => format!("{h}:8080"),
                1 => format!("{h}."),
                _ => h,
            }
        });
        let mut headers: Vec<(String, Vec<u8>)> = self
            .headers
            .iter()
            .take(12)
            .map(|(n, v)| {
                let name = header_name(*n % 250).to_owned();
                (name, v.get().into_bytes())
            })
            .collect();
        if let Some(h) = &host {
            headers.insert(0, ("Host".to_owned(), h.clone().into_bytes()));
        }
        Parts {
            method: self.method.get(),
            target,
            headers,
            host,
        }
    }
}

impl Parts {
    /// The request, when its target normalizes (one that does not never reaches the
    /// firewall: it is a 400).
    fn request(&self) -> Option<Request<'_>> {
        Request::from_parts(
            &self.method,
            &self.target,
            self.headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_slice()))
                .collect(),
            self.host.as_deref(),
            RequestKind::Plain {
                body: BodyLength::None,
            },
            wsedge_proto::path::EncodedSlashes::Keep,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

/// The first error `Firewall::new` must report, by kind and rule (or list) name.
fn model_error(rules: &[Rule], lists: &[NetList]) -> Option<(&'static str, String)> {
    for (i, l) in lists.iter().enumerate() {
        if lists[..i].iter().any(|o| o.name() == l.name()) {
            return Some(("duplicate_list", l.name().to_owned()));
        }
    }
    for (i, rule) in rules.iter().enumerate() {
        let name = rule.name.clone();
        if rule.name.is_empty() {
            return Some(("empty_name", name));
        }
        if rules[..i].iter().any(|r| r.name == rule.name) {
            return Some(("duplicate_rule", name));
        }
        let bad_action = match &rule.action {
            Action::Respond { status, body } => !(200..=499).contains(status) || body.len() > 4096,
            Action::RateLimit(l) => l.rate == 0 || l.burst == 0 || l.period_ms == 0,
            Action::AddressCap { max } | Action::GlobalCap { max } => *max == 0,
            _ => false,
        };
        if bad_action {
            return Some(("action", name));
        }
        if let Some(c) = &rule.when
            && let Some(kind) = criterion_error(c, lists)
        {
            return Some((kind, name));
        }
    }
    None
}

fn criterion_error(c: &Criterion, lists: &[NetList]) -> Option<&'static str> {
    let matcher = |m: &Matcher, ignore_case: bool| match &m.op {
        MatchOp::Matches(p) => compile_regex(p, ignore_case).err().map(|_| "regex"),
        _ => None,
    };
    match c {
        Criterion::All(cs) | Criterion::Any(cs) => {
            cs.iter().find_map(|c| criterion_error(c, lists))
        }
        Criterion::Not(c) => criterion_error(c, lists),
        Criterion::ClientIn(name) => {
            (!lists.iter().any(|l| l.name() == name)).then_some("unknown_list")
        }
        Criterion::Host(m) | Criterion::Sni(m) => matcher(m, true),
        Criterion::Method(m)
        | Criterion::Path(m)
        | Criterion::Query { matcher: m, .. }
        | Criterion::TlsVersion(m)
        | Criterion::ClientCert(m) => matcher(m, false),
        Criterion::Header { name, matcher: m } => {
            let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if name.is_empty() || !name.bytes().all(token) {
                Some("header_name")
            } else {
                matcher(m, false)
            }
        }
    }
}

fn error_kind(e: &FirewallError) -> (&'static str, String) {
    match e {
        FirewallError::UnknownList { rule, .. } => ("unknown_list", rule.clone()),
        FirewallError::Regex { rule, .. } => ("regex", rule.clone()),
        FirewallError::HeaderName { rule, .. } => ("header_name", rule.clone()),
        FirewallError::Action { rule, .. } => ("action", rule.clone()),
        FirewallError::DuplicateRule(name) => ("duplicate_rule", name.clone()),
        FirewallError::EmptyRuleName => ("empty_name", String::new()),
        FirewallError::DuplicateList(name) => ("duplicate_list", name.clone()),
        FirewallError::TooManyRules => ("too_many_rules", String::new()),
    }
}

/// A network list as entries only.
#[derive(Debug, Clone)]
struct ModelList {
    name: String,
    entries: BTreeMap<Cidr, Option<u64>>,
}

impl ModelList {
    fn alive(e: Option<u64>, now: u64) -> bool {
        e.is_none_or(|e| now < e)
    }

    fn contains(&self, ip: IpAddr, now: u64) -> bool {
        self.entries
            .iter()
            .any(|(c, e)| Self::alive(*e, now) && c.contains(ip))
    }

    fn purge(&mut self, now: u64) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, e| Self::alive(*e, now));
        before - self.entries.len()
    }
}

/// A token bucket in units: a token costs `period * share`, `rate` units come per ms.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    units: u64,
    at: u64,
}

#[derive(Debug, Clone, Copy)]
struct Params {
    rate: u64,
    cost: u64,
    capacity: u64,
}

impl Params {
    fn new(l: &RateLimit, share: u64) -> Params {
        let cost = l.period_ms.saturating_mul(share);
        Params {
            rate: u64::from(l.rate),
            cost,
            capacity: (u64::from(l.burst).saturating_mul(l.period_ms)).max(cost),
        }
    }

    fn full(&self, now: u64) -> Bucket {
        Bucket {
            units: self.capacity,
            at: now,
        }
    }

    fn take(&self, b: &mut Bucket, now: u64) -> Result<(), u32> {
        let gained = (now - b.at).saturating_mul(self.rate);
        b.units = b.units.saturating_add(gained).min(self.capacity);
        b.at = now;
        if b.units >= self.cost {
            b.units -= self.cost;
            return Ok(());
        }
        let ms = (self.cost - b.units).div_ceil(self.rate);
        Err(u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX).max(1))
    }

    fn full_at(&self, b: &Bucket, now: u64) -> bool {
        (now - b.at).saturating_mul(self.rate) >= self.capacity - b.units
    }
}

struct Model {
    rules: Vec<Rule>,
    lists: Vec<ModelList>,
    workers: u64,
    max_tracked: usize,
    /// Buckets exist once a handshake met a rule (the engine binds its state then).
    bound: bool,
    buckets: HashMap<(usize, IpAddr), Bucket>,
    global: HashMap<usize, Bucket>,
    last_sweep: Option<u64>,
    live: HashMap<IpAddr, u32>,
    /// The rules' patterns by (text, case-insensitive).
    regexes: HashMap<(String, bool), regex::bytes::Regex>,
}

impl Model {
    /// Compiles every pattern of `c` once, as the rule text says (no size limit of its own).
    fn compile(&mut self, c: &Criterion) {
        match c {
            Criterion::All(cs) | Criterion::Any(cs) => cs.iter().for_each(|c| self.compile(c)),
            Criterion::Not(c) => self.compile(c),
            Criterion::Host(m) | Criterion::Sni(m) => self.compile_matcher(m, true),
            Criterion::Method(m)
            | Criterion::TlsVersion(m)
            | Criterion::ClientCert(m)
            | Criterion::Path(m)
            | Criterion::Query { matcher: m, .. }
            | Criterion::Header { matcher: m, .. } => self.compile_matcher(m, false),
            Criterion::ClientIn(_) => {}
        }
    }

    fn compile_matcher(&mut self, m: &Matcher, ignore_case: bool) {
        if let MatchOp::Matches(p) = &m.op {
            let re = RegexBuilder::new(p)
                .case_insensitive(ignore_case)
                .build()
                .expect("the firewall accepted it");
            self.regexes.insert((p.clone(), ignore_case), re);
        }
    }

    fn matcher(&self, m: &Matcher, values: &[&[u8]], ignore_case: bool) -> bool {
        let eq = |a: &[u8], b: &[u8]| {
            if ignore_case {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        let hit = match &m.op {
            MatchOp::Exists => !values.is_empty(),
            MatchOp::Equals(s) => values.iter().any(|v| eq(v, s.as_bytes())),
            MatchOp::StartsWith(s) => values
                .iter()
                .any(|v| v.len() >= s.len() && eq(&v[..s.len()], s.as_bytes())),
            MatchOp::Matches(p) => {
                let re = &self.regexes[&(p.clone(), ignore_case)];
                values.iter().any(|v| re.is_match(v))
            }
        };
        hit != m.negate
    }

    fn holds(&self, c: &Criterion, req: &Request<'_>, peer: IpAddr, unix_now: u64) -> bool {
        let path = req.target.split('?').next().unwrap_or("");
        let query = req.target.split_once('?').map_or("", |(_, q)| q);
        match c {
            Criterion::All(cs) => cs.iter().all(|c| self.holds(c, req, peer, unix_now)),
            Criterion::Any(cs) => cs.iter().any(|c| self.holds(c, req, peer, unix_now)),
            Criterion::Not(c) => !self.holds(c, req, peer, unix_now),
            Criterion::ClientIn(name) => self
                .lists
                .iter()
                .any(|l| l.name == *name && l.contains(peer, unix_now)),
            Criterion::Host(m) => {
                let host: Vec<&[u8]> = req
                    .host
                    .map(|h| host_without_port(h).as_bytes())
                    .into_iter()
                    .collect();
                self.matcher(m, &host, true)
            }
            Criterion::Method(m) => self.matcher(m, &[req.method.as_bytes()], false),
            // The fuzzed connections are plain TCP: no TLS value exists.
            Criterion::Sni(m) => self.matcher(m, &[], true),
            Criterion::TlsVersion(m) | Criterion::ClientCert(m) => self.matcher(m, &[], false),
            Criterion::Path(m) => self.matcher(m, &[path.as_bytes()], false),
            Criterion::Query { name, matcher } => {
                let values: Vec<&[u8]> = query
                    .split('&')
                    .filter(|p| !p.is_empty())
                    .map(|p| p.split_once('=').unwrap_or((p, "")))
                    .filter(|(n, _)| n == name)
                    .map(|(_, v)| v.as_bytes())
                    .collect();
                self.matcher(matcher, &values, false)
            }
            Criterion::Header { name, matcher } => {
                let values: Vec<&[u8]> = req
                    .headers
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| *v)
                    .collect();
                self.matcher(matcher, &values, false)
            }
        }
    }

    fn take_address(
        &mut self,
        rule: usize,
        peer: IpAddr,
        l: &RateLimit,
        now: u64,
    ) -> Result<(), u32> {
        let p = Params::new(l, 1);
        let key = (rule, peer.to_canonical());
        if let Some(b) = self.buckets.get_mut(&key) {
            return p.take(b, now);
        }
        if self.buckets.len() >= self.max_tracked {
            if self.last_sweep.is_none_or(|t| now >= t + 1000) {
                self.sweep(now);
            }
            if self.buckets.len() >= self.max_tracked {
                return p.take(&mut p.full(now), now);
            }
        }
        let mut b = p.full(now);
        let r = p.take(&mut b, now);
        self.buckets.insert(key, b);
        r
    }

    fn sweep(&mut self, now: u64) {
        let rules = &self.rules;
        self.buckets
            .retain(|&(rule, _), b| match &rules[rule].action {
                Action::RateLimit(l) if l.scope == LimitScope::Address => {
                    !Params::new(l, 1).full_at(b, now)
                }
                _ => false,
            });
        self.last_sweep = Some(now);
    }

    fn live_total(&self) -> u64 {
        self.live.values().map(|&n| u64::from(n)).sum()
    }

    fn evaluate(
        &mut self,
        req: &Request<'_>,
        peer: IpAddr,
        route: Option<&str>,
        now: u64,
        unix_now: u64,
    ) -> (Verdict, Vec<TraceEntry>) {
        if self.rules.is_empty() {
            return (Verdict::Allow, Vec::new());
        }
        self.bound = true;
        let mut trace = Vec::new();
        for index in 0..self.rules.len() {
            let rule = self.rules[index].clone();
            if let Some(routes) = &rule.routes
                && !route.is_some_and(|r| routes.iter().any(|n| n == r))
            {
                continue;
            }
            let matched = rule
                .when
                .as_ref()
                .is_none_or(|c| self.holds(c, req, peer, unix_now));
            let decided = if matched {
                match &rule.action {
                    Action::Allow => Some(Verdict::Allow),
                    Action::Deny => Some(Verdict::Deny),
                    Action::Drop => Some(Verdict::Drop),
                    Action::Respond { status, body } => Some(Verdict::Respond {
                        status: *status,
                        body: body.as_str().into(),
                    }),
                    Action::RateLimit(l) => {
                        let result = match l.scope {
                            LimitScope::Address => self.take_address(index, peer, l, now),
                            LimitScope::Global => {
                                let p = Params::new(l, self.workers);
                                let b = self.global.entry(index).or_insert_with(|| p.full(now));
                                p.take(b, now)
                            }
                        };
                        result
                            .err()
                            .map(|retry_after_secs| Verdict::RateLimited { retry_after_secs })
                    }
                    Action::AddressCap { max } => {
                        let live = self.live.get(&peer.to_canonical()).copied().unwrap_or(0);
                        (live >= *max).then_some(Verdict::PerAddressCap)
                    }
                    Action::GlobalCap { max } => {
                        let share = u64::from(*max).div_ceil(self.workers);
                        (self.live_total() >= share).then_some(Verdict::GlobalCap)
                    }
                }
            } else {
                None
            };
            let outcome = match (matched, &decided) {
                (false, _) => TraceOutcome::NotMatched,
                (true, None) => TraceOutcome::Passed,
                (true, Some(_)) => TraceOutcome::Decided,
            };
            trace.push(TraceEntry {
                rule: index,
                outcome,
            });
            if let Some(v) = decided {
                return (v, trace);
            }
        }
        (Verdict::Allow, trace)
    }
}

// ---------------------------------------------------------------------------------------------
// The target
// ---------------------------------------------------------------------------------------------

/// The firewall's checks (see the module doc).
pub fn firewall(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(input) = Input::decode(&mut u) else {
        return;
    };
    let unix_start = 1_000_000u64;
    let lists: Vec<NetList> = input
        .lists
        .iter()
        .take(3)
        .map(|l| {
            let entries = l
                .entries
                .iter()
                .take(8)
                .map(|(c, e)| (c.build(), e.map(|x| unix_start + u64::from(x % 16))));
            NetList::new(LIST_NAMES[usize::from(l.name) % 3], entries)
        })
        .collect();
    // A CIDR given twice keeps the last expiry.
    let mut model_lists: Vec<ModelList> = input
        .lists
        .iter()
        .take(3)
        .map(|l| ModelList {
            name: LIST_NAMES[usize::from(l.name) % 3].to_owned(),
            entries: l
                .entries
                .iter()
                .take(8)
                .map(|(c, e)| (c.build(), e.map(|x| unix_start + u64::from(x % 16))))
                .collect(),
        })
        .collect();
    let rules: Vec<Rule> = input
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| Rule {
            name: if r.name >= 250 {
                ODD_RULE_NAMES[usize::from(r.name % 3)].to_owned()
            } else {
                format!("r{i}")
            },
            routes: r.routes.as_ref().map(|rs| {
                rs.iter()
                    .take(3)
                    .map(|i| ROUTES[usize::from(*i) % 3].to_owned())
                    .collect()
            }),
            when: r.when.as_ref().map(|c| c.build(0)),
            action: r.action.build(),
        })
        .collect();
    let expected_error = model_error(&rules, &lists);
    let mut fw = match Firewall::new(rules.clone(), lists.clone()) {
        Ok(fw) => {
            assert_eq!(
                expected_error, None,
                "Firewall::new accepted an invalid rule set"
            );
            fw
        }
        Err(e) => {
            assert_eq!(Some(error_kind(&e)), expected_error, "Firewall::new: {e}");
            return;
        }
    };
    assert_eq!(fw.rule_count(), rules.len());
    for (i, r) in rules.iter().enumerate() {
        assert_eq!(fw.rule_name(i), r.name);
    }
    let workers = u64::from(input.workers % 4 + 1);
    let max_tracked = match input.max_tracked % 4 {
        0 => 65_536,
        n => usize::from(n),
    };
    let mut state = FirewallState::new(workers as usize).with_max_tracked_addresses(max_tracked);
    let mut model = Model {
        rules,
        lists: Vec::new(),
        workers,
        max_tracked,
        bound: false,
        buckets: HashMap::new(),
        global: HashMap::new(),
        last_sweep: None,
        live: HashMap::new(),
        regexes: HashMap::new(),
    };
    model.lists.append(&mut model_lists);
    for rule in model.rules.clone() {
        if let Some(c) = &rule.when {
            model.compile(c);
        }
    }
    let peers = peers();
    let mut now = 0u64;
    let mut unix_now = unix_start;
    for event in &input.events {
        match event {
            EventSpec::Handshake {
                req,
                peer,
                route,
                trace,
            } => {
                let parts = req.parts();
                let Some(req) = parts.request() else {
                    continue;
                };
                let peer = peers[usize::from(*peer) % peers.len()];
                let route = ROUTES.get(usize::from(*route) % 4).copied();
                let mut got_trace = Vec::new();
                let verdict = fw.evaluate(
                    &mut state,
                    &req,
                    peer,
                    route,
                    now,
                    unix_now,
                    trace.then_some(&mut got_trace),
                );
                let (want, want_trace) = model.evaluate(&req, peer, route, now, unix_now);
                assert_eq!(
                    verdict, want,
                    "verdict for {req:?} from {peer} on {route:?}"
                );
                if *trace {
                    assert_eq!(got_trace, want_trace, "traceback");
                }
                check_response(&verdict);
                if verdict == Verdict::Allow {
                    state.on_connection_open(peer);
                    *model.live.entry(peer.to_canonical()).or_insert(0) += 1;
                }
            }
            EventSpec::Close(peer) => {
                let peer = peers[usize::from(*peer) % peers.len()];
                state.on_connection_close(peer);
                let key = peer.to_canonical();
                if let Some(n) = model.live.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        model.live.remove(&key);
                    }
                }
            }
            EventSpec::Millis(ms) => now += u64::from(*ms),
            EventSpec::Seconds(s) => {
                now += u64::from(*s) * 1000;
                unix_now += u64::from(*s % 8);
            }
            EventSpec::ListAdd {
                list,
                cidr,
                expires,
            } => {
                let name = LIST_NAMES[usize::from(*list) % 3];
                let cidr = cidr.build();
                let expires = expires.map(|x| unix_start + u64::from(x % 16));
                let added = fw.list_mut(name).map(|l| l.add(cidr, expires, unix_now));
                let want = model.lists.iter_mut().find(|l| l.name == name).map(|l| {
                    let live = ModelList::alive(expires, unix_now);
                    if live {
                        l.entries.insert(cidr, expires);
                    }
                    l.purge(unix_now);
                    live
                });
                assert_eq!(added, want, "list add");
            }
            EventSpec::ListRemove { list, cidr } => {
                let name = LIST_NAMES[usize::from(*list) % 3];
                let cidr = cidr.build();
                let removed = fw.list_mut(name).map(|l| l.remove(cidr, unix_now));
                let want = model.lists.iter_mut().find(|l| l.name == name).map(|l| {
                    let was = l
                        .entries
                        .remove(&cidr)
                        .is_some_and(|e| ModelList::alive(e, unix_now));
                    l.purge(unix_now);
                    was
                });
                assert_eq!(removed, want, "list remove");
            }
            EventSpec::Purge(list) => {
                let name = LIST_NAMES[usize::from(*list) % 3];
                let purged = fw.list_mut(name).map(|l| l.purge_expired(unix_now));
                let want = model
                    .lists
                    .iter_mut()
                    .find(|l| l.name == name)
                    .map(|l| l.purge(unix_now));
                assert_eq!(purged, want, "purge");
            }
            EventSpec::Sweep => {
                fw.sweep(&mut state, now);
                if model.bound {
                    model.sweep(now);
                }
            }
        }
        // The lists, entry for entry, and their lookups for every peer.
        for l in &model.lists {
            let real = fw.list(&l.name).expect("list");
            let want: Vec<_> = l
                .entries
                .iter()
                .filter(|(_, e)| ModelList::alive(**e, unix_now))
                .map(|(c, e)| (*c, *e))
                .collect();
            assert_eq!(real.entries(unix_now).collect::<Vec<_>>(), want);
            for p in peers {
                assert_eq!(
                    real.contains(p, unix_now),
                    l.contains(p, unix_now),
                    "{p} in {}",
                    l.name
                );
            }
        }
        assert_eq!(
            state.tracked_addresses(),
            model.buckets.len(),
            "tracked addresses"
        );
        assert_eq!(state.live_total(), model.live_total());
        for p in peers {
            let live = model.live.get(&p.to_canonical()).copied().unwrap_or(0);
            assert_eq!(state.live_connections(p), live);
        }
    }
}

/// The response a verdict sends, read as a client would.
fn check_response(verdict: &Verdict) {
    assert!(verdict.reason().starts_with("firewall_"));
    let mut out = Vec::new();
    verdict.write_response(&mut out);
    let Some(status) = verdict.status() else {
        assert!(out.is_empty(), "{verdict:?} sends nothing");
        return;
    };
    let r = parse_response(&out, &HeadLimits::default(), None)
        .expect("a valid response")
        .expect("a whole response");
    assert_eq!(r.status, status);
    let head = std::str::from_utf8(&out[..r.head_len]).expect("ASCII head");
    let body_len = out.len() - r.head_len;
    assert!(
        head.contains(&format!("\r\nContent-Length: {body_len}\r\n")),
        "{head}"
    );
    assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
    let retry = head
        .split("\r\n")
        .find_map(|l| l.strip_prefix("Retry-After: "))
        .map(|s| s.parse::<u32>().expect("Retry-After seconds"));
    match verdict {
        Verdict::RateLimited { retry_after_secs } => {
            assert!(*retry_after_secs >= 1);
            assert_eq!(retry, Some(*retry_after_secs));
        }
        _ => assert_eq!(retry, None),
    }
    if let Verdict::Respond { body, .. } = verdict {
        assert_eq!(&out[r.head_len..], body.as_bytes());
    }
}
