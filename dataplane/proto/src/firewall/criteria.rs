//! Rule criteria: what a firewall rule looks at in the parsed request head, and the compiled
//! form the engine evaluates.
//!
//! Part of the pure firewall engine ([`crate::firewall`]), evaluated by the dataplane's
//! connection state machine on the parsed head before any origin connection is opened.
//! [`Criterion`] is plain data (what the control plane's config validates into);
//! [`crate::firewall::Firewall::new`] compiles it once: regexes built, list names resolved to
//! indices, header names interned so each handshake scans its headers once.
//!
//! Matching semantics:
//! - a positive matcher (`equals`, `starts_with`, `matches`, `exists`) is false when the
//!   value is absent; its negation is the plain logical negation (so `not_equals` is true
//!   for a request without that header);
//! - a header present several times matches if any of its values matches;
//! - header names are case-insensitive; header values, path, method and query are compared
//!   byte for byte (use `(?i)` in a regex for case-insensitive values);
//! - the path is the normalized one ([`crate::path`]): escapes of unreserved characters
//!   decoded, dot-segments removed, duplicate slashes merged, so `/x/../admin`,
//!   `/%61dmin` and `//admin` are all `/admin` to a rule, as they are to routing;
//! - Host is compared without its port and trailing dot, case-insensitively (its regex is
//!   compiled case-insensitive);
//! - query arguments are the `&`-separated `name=value` pairs of the target after `?`; a
//!   pair without `=` has an empty value; names and values are NOT percent-decoded;
//! - `all` of nothing is true, `any` of nothing is false.

use std::net::IpAddr;

use regex::bytes::{Regex, RegexBuilder};

use crate::handshake::Request;
use crate::route::host_without_port;

use super::FirewallError;
use super::netlist::NetList;

/// Longest regex source accepted, and the compiled-size limit (bytes) given to the regex
/// crate: rule patterns are short; a pathological one is refused at load, not at run time.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// A condition on a request (and its client address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Criterion {
    /// True if every criterion is (true when empty).
    All(Vec<Criterion>),
    /// True if at least one criterion is (false when empty).
    Any(Vec<Criterion>),
    /// Negation of a criterion.
    Not(Box<Criterion>),
    /// The client address is in the named network list (and its entry has not expired).
    ClientIn(String),
    /// The `Host` header without port.
    Host(Matcher),
    /// The method token (`GET`).
    Method(Matcher),
    /// The path: the request-target before `?`.
    Path(Matcher),
    /// A query argument by exact name.
    Query { name: String, matcher: Matcher },
    /// A header by name (case-insensitive).
    Header { name: String, matcher: Matcher },
    /// The TLS server name (SNI) the client sent, compared like Host (case-insensitive);
    /// absent on a plain listener and for a client that sent none.
    Sni(Matcher),
    /// The TLS version, `"1.2"` or `"1.3"`; absent on a plain listener.
    TlsVersion(Matcher),
    /// The client certificate's status on a TLS listener: `"not_requested"`, `"none"`,
    /// `"valid"` or `"invalid"`; absent on a plain listener.
    ClientCert(Matcher),
}

/// What a TLS listener's finished handshake tells the firewall ([`Criterion::Sni`],
/// [`Criterion::TlsVersion`], [`Criterion::ClientCert`]); `None` for a plain connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsFacts<'a> {
    pub sni: Option<&'a str>,
    /// `"1.2"` or `"1.3"`.
    pub version: &'a str,
    /// `"not_requested"`, `"none"`, `"valid"` or `"invalid"`.
    pub client_cert: &'a str,
}

/// A test on one value; `negate` inverts the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    pub op: MatchOp,
    pub negate: bool,
}

/// How a value is tested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchOp {
    /// The value is present.
    Exists,
    /// The value equals this text.
    Equals(String),
    /// The value starts with this text.
    StartsWith(String),
    /// The value matches this regex (unanchored; use `^...$` to anchor).
    Matches(String),
}

impl Matcher {
    pub fn new(op: MatchOp) -> Matcher {
        Matcher { op, negate: false }
    }

    pub fn not(op: MatchOp) -> Matcher {
        Matcher { op, negate: true }
    }
}

/// A compiled test on one value.
#[derive(Debug, Clone)]
enum Op {
    Exists,
    Equals(Box<[u8]>),
    StartsWith(Box<[u8]>),
    Matches(Regex),
}

#[derive(Debug, Clone)]
pub(super) struct CompiledMatcher {
    op: Op,
    negate: bool,
}

impl CompiledMatcher {
    /// Applies the test to the values present (all positive tests fail on none).
    fn test<'v>(&self, mut values: impl Iterator<Item = &'v [u8]>, ignore_case: bool) -> bool {
        let hit = match &self.op {
            Op::Exists => values.next().is_some(),
            Op::Equals(want) if ignore_case => values.any(|v| v.eq_ignore_ascii_case(want)),
            Op::Equals(want) => values.any(|v| v == &want[..]),
            Op::StartsWith(want) if ignore_case => values.any(|v| {
                v.get(..want.len())
                    .is_some_and(|head| head.eq_ignore_ascii_case(want))
            }),
            Op::StartsWith(want) => values.any(|v| v.starts_with(want)),
            Op::Matches(re) => values.any(|v| re.is_match(v)),
        };
        hit != self.negate
    }
}

/// A compiled criterion.
#[derive(Debug, Clone)]
pub(super) enum Compiled {
    All(Box<[Compiled]>),
    Any(Box<[Compiled]>),
    Not(Box<Compiled>),
    /// Index into the firewall's lists.
    ClientIn(usize),
    Host(CompiledMatcher),
    Method(CompiledMatcher),
    Path(CompiledMatcher),
    Query(Box<[u8]>, CompiledMatcher),
    /// Index into the interned header names.
    Header(usize, CompiledMatcher),
    Sni(CompiledMatcher),
    TlsVersion(CompiledMatcher),
    ClientCert(CompiledMatcher),
}

/// What compiling needs: the lists to resolve names in, the interned header names.
pub(super) struct Compiler<'a> {
    pub(super) lists: &'a [NetList],
    /// Lower-case header names referenced by any rule.
    pub(super) headers: &'a mut Vec<Box<[u8]>>,
    pub(super) rule: &'a str,
}

impl Compiler<'_> {
    pub(super) fn compile(&mut self, c: &Criterion) -> Result<Compiled, FirewallError> {
        Ok(match c {
            Criterion::All(cs) => Compiled::All(self.many(cs)?),
            Criterion::Any(cs) => Compiled::Any(self.many(cs)?),
            Criterion::Not(c) => Compiled::Not(Box::new(self.compile(c)?)),
            Criterion::ClientIn(name) => {
                let index = self
                    .lists
                    .iter()
                    .position(|l| l.name() == name)
                    .ok_or_else(|| FirewallError::UnknownList {
                        rule: self.rule.to_owned(),
                        list: name.clone(),
                    })?;
                Compiled::ClientIn(index)
            }
            Criterion::Host(m) => Compiled::Host(self.matcher(m, true)?),
            Criterion::Method(m) => Compiled::Method(self.matcher(m, false)?),
            Criterion::Path(m) => Compiled::Path(self.matcher(m, false)?),
            Criterion::Sni(m) => Compiled::Sni(self.matcher(m, true)?),
            Criterion::TlsVersion(m) => Compiled::TlsVersion(self.matcher(m, false)?),
            Criterion::ClientCert(m) => Compiled::ClientCert(self.matcher(m, false)?),
            Criterion::Query { name, matcher } => {
                Compiled::Query(name.as_bytes().into(), self.matcher(matcher, false)?)
            }
            Criterion::Header { name, matcher } => {
                if !is_header_name(name) {
                    return Err(FirewallError::HeaderName {
                        rule: self.rule.to_owned(),
                        name: name.clone(),
                    });
                }
                let lower: Box<[u8]> = name.to_ascii_lowercase().into_bytes().into();
                let index = match self.headers.iter().position(|h| *h == lower) {
                    Some(i) => i,
                    None => {
                        self.headers.push(lower);
                        self.headers.len() - 1
                    }
                };
                Compiled::Header(index, self.matcher(matcher, false)?)
            }
        })
    }

    fn many(&mut self, cs: &[Criterion]) -> Result<Box<[Compiled]>, FirewallError> {
        cs.iter().map(|c| self.compile(c)).collect()
    }

    fn matcher(&self, m: &Matcher, ignore_case: bool) -> Result<CompiledMatcher, FirewallError> {
        let op = match &m.op {
            MatchOp::Exists => Op::Exists,
            MatchOp::Equals(s) => Op::Equals(s.as_bytes().into()),
            MatchOp::StartsWith(s) => Op::StartsWith(s.as_bytes().into()),
            MatchOp::Matches(pattern) => {
                Op::Matches(compile_regex(pattern, ignore_case).map_err(|message| {
                    FirewallError::Regex {
                        rule: self.rule.to_owned(),
                        pattern: pattern.clone(),
                        message,
                    }
                })?)
            }
        };
        Ok(CompiledMatcher {
            op,
            negate: m.negate,
        })
    }
}

/// Compiles a rule pattern as the engine will (bytes regex, size-limited); the error text
/// says why it was refused. Exposed so the control plane can validate patterns early.
pub fn compile_regex(pattern: &str, ignore_case: bool) -> Result<Regex, String> {
    if pattern.len() > 4096 {
        return Err("pattern longer than 4096 bytes".to_owned());
    }
    RegexBuilder::new(pattern)
        .case_insensitive(ignore_case)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| e.to_string())
}

/// Whether `name` is a header name (an RFC 9110 token) a rule may test. Exposed, like
/// [`compile_regex`], so the control plane can validate names early.
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(is_token_byte)
}

/// RFC 9110 token characters (header names).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The per-handshake view rules are evaluated against: the request, the client address,
/// and caches filled once (header positions) or on first use (list lookups).
pub(super) struct Subject<'r, 'b> {
    pub(super) req: &'r Request<'b>,
    /// The Host value without port, computed once.
    pub(super) host: Option<&'b [u8]>,
    /// The normalized path, computed once.
    pub(super) path: &'r [u8],
    /// The query string (empty if none), computed once.
    pub(super) query: &'b str,
    /// Offsets `(name_start, name_end, value_end)` of the query pairs (the value starts at
    /// `name_end + 1`), split on first use.
    pub(super) query_pairs: &'r mut Vec<(usize, usize, usize)>,
    query_split: bool,
    pub(super) peer: IpAddr,
    pub(super) unix_now: u64,
    /// For each interned header name: index of its first occurrence in `req.headers`
    /// (`usize::MAX` = absent) and whether it occurs more than once.
    pub(super) header_at: &'r [(usize, bool)],
    /// For each list: 0 = not looked up yet, 1 = no, 2 = yes.
    pub(super) list_hit: &'r mut [u8],
    pub(super) lists: &'r [NetList],
    /// The TLS handshake's facts (set by `evaluate_tls`; `None`: plain TCP).
    pub(super) tls: Option<TlsFacts<'r>>,
}

/// Fills `out` with the first position of each interned header name in `req`.
pub(super) fn index_headers(req: &Request<'_>, names: &[Box<[u8]>], out: &mut Vec<(usize, bool)>) {
    out.clear();
    out.resize(names.len(), (usize::MAX, false));
    if names.is_empty() {
        return;
    }
    for (i, (name, _)) in req.headers.iter().enumerate() {
        let name = name.as_bytes();
        for (slot, want) in out.iter_mut().zip(names) {
            if name.len() == want.len() && name.eq_ignore_ascii_case(want) {
                if slot.0 == usize::MAX {
                    slot.0 = i;
                } else {
                    slot.1 = true;
                }
            }
        }
    }
}

/// Splits `a=1&b&c=` into `(name_start, name_end, value_end)` offsets; empty pairs are
/// skipped, a pair without `=` has `name_end == value_end` (an empty value).
fn split_query(query: &[u8], out: &mut Vec<(usize, usize, usize)>) {
    out.clear();
    let mut start = 0;
    for pair in query.split(|&b| b == b'&') {
        let end = start + pair.len();
        if !pair.is_empty() {
            let eq = pair
                .iter()
                .position(|&b| b == b'=')
                .map_or(end, |i| start + i);
            out.push((start, eq, end));
        }
        start = end + 1;
    }
}

impl<'r, 'b> Subject<'r, 'b> {
    /// The view of `req`, with the values every rule may need computed once.
    pub(super) fn new(
        req: &'r Request<'b>,
        peer: IpAddr,
        unix_now: u64,
        header_at: &'r [(usize, bool)],
        list_hit: &'r mut [u8],
        query_pairs: &'r mut Vec<(usize, usize, usize)>,
        lists: &'r [NetList],
    ) -> Self {
        query_pairs.clear();
        Subject {
            req,
            host: req.host.map(|h| host_without_port(h).as_bytes()),
            path: req.path().as_bytes(),
            query: req.query().unwrap_or(""),
            query_pairs,
            query_split: false,
            peer,
            unix_now,
            header_at,
            list_hit,
            lists,
            tls: None,
        }
    }

    pub(super) fn eval(&mut self, c: &Compiled) -> bool {
        match c {
            Compiled::All(cs) => cs.iter().all(|c| self.eval(c)),
            Compiled::Any(cs) => cs.iter().any(|c| self.eval(c)),
            Compiled::Not(c) => !self.eval(c),
            Compiled::ClientIn(i) => self.in_list(*i),
            Compiled::Host(m) => m.test(self.host.into_iter(), true),
            Compiled::Method(m) => m.test(std::iter::once(self.req.method.as_bytes()), false),
            Compiled::Path(m) => m.test(std::iter::once(self.path), false),
            Compiled::Sni(m) => m.test(
                self.tls
                    .and_then(|t| t.sni)
                    .map(|s| s.trim_end_matches('.').as_bytes())
                    .into_iter(),
                true,
            ),
            Compiled::TlsVersion(m) => {
                m.test(self.tls.map(|t| t.version.as_bytes()).into_iter(), false)
            }
            Compiled::ClientCert(m) => m.test(
                self.tls.map(|t| t.client_cert.as_bytes()).into_iter(),
                false,
            ),
            Compiled::Query(name, m) => {
                if !self.query_split {
                    split_query(self.query.as_bytes(), self.query_pairs);
                    self.query_split = true;
                }
                let query = self.query.as_bytes();
                let values = self
                    .query_pairs
                    .iter()
                    .filter(|&&(start, eq, _)| query.get(start..eq) == Some(&name[..]))
                    .map(|&(_, eq, end)| query.get((eq + 1).min(end)..end).unwrap_or(&[]));
                m.test(values, false)
            }
            Compiled::Header(i, m) => {
                let (first, repeated) = self
                    .header_at
                    .get(*i)
                    .copied()
                    .unwrap_or((usize::MAX, false));
                let headers = &self.req.headers;
                match (headers.get(first), repeated) {
                    (None, _) => m.test(std::iter::empty(), false),
                    (Some(&(_, v)), false) => m.test(std::iter::once(v), false),
                    (Some(&(name, _)), true) => m.test(
                        headers[first..]
                            .iter()
                            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                            .map(|&(_, v)| v),
                        false,
                    ),
                }
            }
        }
    }

    fn in_list(&mut self, i: usize) -> bool {
        match self.list_hit.get(i).copied() {
            Some(1) => false,
            Some(2) => true,
            _ => {
                let hit = self
                    .lists
                    .get(i)
                    .is_some_and(|l| l.contains(self.peer, self.unix_now));
                if let Some(slot) = self.list_hit.get_mut(i) {
                    *slot = if hit { 2 } else { 1 };
                }
                hit
            }
        }
    }
}
