//! The firewall part of the configuration schema: `[[list]]` network lists and `[[rule]]`
//! firewall rules, validated into [`FirewallConfig`].
//!
//! The model is the dataplane engine's own (`wsedge_proto::firewall`, evaluated by the
//! connection state machine before any origin connection): rules validate straight into
//! [`Rule`]s and list entries into [`Cidr`]s, and [`FirewallConfig::build`] hands them to
//! [`Firewall::new`]. Validation here is complete, so that build cannot fail on a config
//! that passed: list and route names are resolved, CIDRs parsed, header names checked and
//! regexes compiled by the engine's own functions, so a bad pattern is reported with its
//! file and line by the control process too, before anything is pushed.
//!
//! ```toml
//! [[list]]
//! name = "blocked"
//! entries = ["203.0.113.0/24", { cidr = "2001:db8::/32", expires = 2026-12-01T00:00:00Z },
//!            { cidr = "198.51.100.7", expires = 1795000000 }]
//!
//! [[rule]]
//! name = "block-bad-nets"
//! when = { client_in = "blocked" }
//! action = "deny"                      # allow | deny | drop
//!
//! [[rule]]
//! name = "only-my-origin"
//! routes = ["chat"]                    # absent = every route
//! when = { header = "Origin", not_equals = "https://app.example.com" }
//! action = { respond = { status = 403, body = "wrong origin\n" } }
//!
//! [[rule]]
//! name = "handshake-rate"
//! action = { rate_limit = { per = "address", rate = 10, every = "1s", burst = 20 } }
//! ```

use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use wsedge_proto::firewall::{
    CidrError, FirewallError, MAX_RESPONSE_BODY, NetList, compile_regex, is_header_name,
};

use crate::error::ConfigError;

/// The model a [`FirewallConfig`] is made of: the engine's own types, so users of the
/// configuration name them without depending on the engine's crate.
pub use wsedge_proto::firewall::{
    Action, Cidr, Criterion, Firewall, LimitScope, MatchOp, Matcher, RateLimit, Rule,
};

/// Deepest nesting of `all` / `any` / `not`.
const MAX_DEPTH: usize = 16;

/// The validated `[[list]]` and `[[rule]]` entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirewallConfig {
    pub lists: Vec<NetListConfig>,
    /// In evaluation order; every rule passes [`Firewall::new`]: its criteria name defined
    /// lists and valid headers, its patterns compile, its action is within the engine's
    /// bounds, and `routes` names defined routes only.
    pub rules: Vec<Rule>,
}

/// A named network list, as written: entries in file order (the engine's [`NetList`] sorts
/// and merges them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetListConfig {
    pub name: String,
    pub entries: Vec<ListEntry>,
}

/// One network of a list, with its expiry (unix seconds; `None` = never).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListEntry {
    pub cidr: Cidr,
    pub expires: Option<u64>,
}

impl FirewallConfig {
    /// The engine for this configuration: lists indexed, rules compiled. Each dataplane
    /// worker builds its own copy. Cannot fail on a configuration that passed validation;
    /// an error here is reported like an invalid configuration.
    pub fn build(&self) -> Result<Firewall, FirewallError> {
        let lists = self
            .lists
            .iter()
            .map(|l| {
                NetList::new(
                    l.name.clone(),
                    l.entries.iter().map(|e| (e.cidr, e.expires)),
                )
            })
            .collect();
        Firewall::new(self.rules.clone(), lists)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawList {
    name: Spanned<String>,
    #[serde(default)]
    entries: Vec<Spanned<RawEntry>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawEntry {
    Plain(String),
    Full(RawFullEntry),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFullEntry {
    cidr: String,
    expires: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    name: Spanned<String>,
    routes: Option<Spanned<Vec<String>>>,
    when: Option<Spanned<RawCriterion>>,
    action: Spanned<RawAction>,
}

/// A criterion table: exactly one of the combinators / `client_in`, or one subject
/// (`field`, `header`, `query`) with one operator.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCriterion {
    all: Option<Vec<Spanned<RawCriterion>>>,
    any: Option<Vec<Spanned<RawCriterion>>>,
    not: Option<Box<Spanned<RawCriterion>>>,
    client_in: Option<String>,
    field: Option<String>,
    header: Option<String>,
    query: Option<String>,
    equals: Option<String>,
    not_equals: Option<String>,
    starts_with: Option<String>,
    not_starts_with: Option<String>,
    matches: Option<String>,
    not_matches: Option<String>,
    exists: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawAction {
    Word(String),
    Table(RawActionTable),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawActionTable {
    respond: Option<RawRespond>,
    rate_limit: Option<RawRateLimit>,
    address_cap: Option<i64>,
    global_cap: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRespond {
    status: i64,
    #[serde(default)]
    body: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    per: String,
    rate: i64,
    every: String,
    burst: Option<i64>,
}

/// Builds a [`ConfigError::Invalid`] for a span and field.
pub(crate) type Invalid<'a> = &'a dyn Fn(Range<usize>, &str, String) -> ConfigError;

/// Validates the `[[list]]` and `[[rule]]` arrays; `routes` are the defined route names.
pub(crate) fn validate(
    lists: Vec<Spanned<RawList>>,
    rules: Vec<Spanned<RawRule>>,
    routes: &[&str],
    invalid: Invalid<'_>,
) -> Result<FirewallConfig, ConfigError> {
    let mut out = FirewallConfig::default();
    for (index, raw) in lists.into_iter().enumerate() {
        let field = |f: &str| format!("list[{index}].{f}");
        let raw = raw.into_inner();
        let name_span = raw.name.span();
        let name = raw.name.into_inner();
        check_name(&name).map_err(|m| invalid(name_span.clone(), &field("name"), m))?;
        if out.lists.iter().any(|l| l.name == name) {
            return Err(invalid(
                name_span,
                &field("name"),
                format!("duplicate list name {name:?}"),
            ));
        }
        let mut entries = Vec::with_capacity(raw.entries.len());
        for (i, entry) in raw.entries.into_iter().enumerate() {
            let span = entry.span();
            let f = field(&format!("entries[{i}]"));
            let (cidr, expires) = match entry.into_inner() {
                RawEntry::Plain(c) => (c, None),
                RawEntry::Full(e) => (e.cidr, e.expires),
            };
            let cidr = parse_cidr(&cidr).map_err(|m| invalid(span.clone(), &f, m))?;
            let expires = expires
                .map(|v| parse_expiry(&v))
                .transpose()
                .map_err(|m| invalid(span.clone(), &f, m))?;
            entries.push(ListEntry { cidr, expires });
        }
        out.lists.push(NetListConfig { name, entries });
    }
    for (index, raw) in rules.into_iter().enumerate() {
        let field = |f: &str| format!("rule[{index}].{f}");
        let raw = raw.into_inner();
        let name_span = raw.name.span();
        let name = raw.name.into_inner();
        check_name(&name).map_err(|m| invalid(name_span.clone(), &field("name"), m))?;
        if out.rules.iter().any(|r| r.name == name) {
            return Err(invalid(
                name_span,
                &field("name"),
                format!("duplicate rule name {name:?}"),
            ));
        }
        let rule_routes = match raw.routes {
            None => None,
            Some(r) => {
                let span = r.span();
                let names = r.into_inner();
                if let Some(unknown) = names.iter().find(|n| !routes.contains(&n.as_str())) {
                    return Err(invalid(
                        span,
                        &field("routes"),
                        format!("no route named {unknown:?}"),
                    ));
                }
                Some(names)
            }
        };
        let when = match raw.when {
            None => None,
            Some(w) => Some(criterion(w, &field("when"), &out.lists, invalid, 0)?),
        };
        let action = action(raw.action, &field("action"), invalid)?;
        out.rules.push(Rule {
            name,
            routes: rule_routes,
            when,
            action,
        });
    }
    Ok(out)
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_graphic()) {
        Err("must be 1-64 printable characters without spaces".to_owned())
    } else {
        Ok(())
    }
}

fn criterion(
    raw: Spanned<RawCriterion>,
    field: &str,
    lists: &[NetListConfig],
    invalid: Invalid<'_>,
    depth: usize,
) -> Result<Criterion, ConfigError> {
    let span = raw.span();
    let err = |m: String| invalid(span.clone(), field, m);
    if depth > MAX_DEPTH {
        return Err(err(format!("nested deeper than {MAX_DEPTH} levels")));
    }
    let c = raw.into_inner();
    let shapes = [
        c.all.is_some(),
        c.any.is_some(),
        c.not.is_some(),
        c.client_in.is_some(),
        c.field.is_some() || c.header.is_some() || c.query.is_some(),
    ];
    if shapes.iter().filter(|s| **s).count() != 1 {
        return Err(err(
            "needs exactly one of all, any, not, client_in, or a subject (field, header, query) \
             with an operator"
                .to_owned(),
        ));
    }
    let many = |cs: Vec<Spanned<RawCriterion>>, key: &str| {
        cs.into_iter()
            .enumerate()
            .map(|(i, c)| criterion(c, &format!("{field}.{key}[{i}]"), lists, invalid, depth + 1))
            .collect::<Result<Vec<_>, _>>()
    };
    if let Some(cs) = c.all {
        return Ok(Criterion::All(many(cs, "all")?));
    }
    if let Some(cs) = c.any {
        return Ok(Criterion::Any(many(cs, "any")?));
    }
    if let Some(inner) = c.not {
        let inner = criterion(*inner, &format!("{field}.not"), lists, invalid, depth + 1)?;
        return Ok(Criterion::Not(Box::new(inner)));
    }
    if let Some(list) = c.client_in {
        if !lists.iter().any(|l| l.name == list) {
            return Err(err(format!(
                "client_in: no list named {list:?} (lists are defined with [[list]])"
            )));
        }
        return Ok(Criterion::ClientIn(list));
    }
    let ops = [
        c.equals.map(|v| (MatchOp::Equals(v), false)),
        c.not_equals.map(|v| (MatchOp::Equals(v), true)),
        c.starts_with.map(|v| (MatchOp::StartsWith(v), false)),
        c.not_starts_with.map(|v| (MatchOp::StartsWith(v), true)),
        c.matches.map(|v| (MatchOp::Matches(v), false)),
        c.not_matches.map(|v| (MatchOp::Matches(v), true)),
        c.exists.map(|e| (MatchOp::Exists, !e)),
    ];
    let mut ops = ops.into_iter().flatten();
    let (Some((op, negate)), None) = (ops.next(), ops.next()) else {
        return Err(err(
            "needs exactly one operator: equals, not_equals, starts_with, not_starts_with, \
             matches, not_matches or exists"
                .to_owned(),
        ));
    };
    let subjects = [c.field.is_some(), c.header.is_some(), c.query.is_some()];
    if subjects.iter().filter(|s| **s).count() != 1 {
        return Err(err("needs exactly one of field, header, query".to_owned()));
    }
    let case_insensitive = matches!(c.field.as_deref(), Some("host" | "sni"));
    if let MatchOp::Matches(pattern) = &op {
        // Compiled as the engine compiles it (bytes regex, same limits), then dropped.
        compile_regex(pattern, case_insensitive).map_err(|m| err(format!("invalid regex: {m}")))?;
    }
    let matcher = Matcher { op, negate };
    if let Some(name) = c.header {
        if !is_header_name(&name) {
            return Err(err(format!("{name:?} is not a header name")));
        }
        return Ok(Criterion::Header { name, matcher });
    }
    if let Some(name) = c.query {
        return Ok(Criterion::Query { name, matcher });
    }
    match c.field.as_deref() {
        Some("host") => Ok(Criterion::Host(matcher)),
        Some("method") => Ok(Criterion::Method(matcher)),
        Some("path") => Ok(Criterion::Path(matcher)),
        Some("sni") => Ok(Criterion::Sni(matcher)),
        Some(field @ ("tls_version" | "client_cert")) => {
            let allowed: &[&str] = if field == "tls_version" {
                &["1.2", "1.3"]
            } else {
                &["not_requested", "none", "valid", "invalid"]
            };
            if let MatchOp::Equals(v) = &matcher.op
                && !allowed.contains(&v.as_str())
            {
                return Err(err(format!(
                    "field {field:?}: {v:?} is never its value (one of {})",
                    allowed
                        .iter()
                        .map(|a| format!("{a:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            Ok(if field == "tls_version" {
                Criterion::TlsVersion(matcher)
            } else {
                Criterion::ClientCert(matcher)
            })
        }
        other => Err(err(format!(
            "field {:?}: must be \"host\", \"method\", \"path\", \"sni\", \"tls_version\" or \
             \"client_cert\" (use header = \"...\" or query = \"...\" for those)",
            other.unwrap_or("")
        ))),
    }
}

fn action(
    raw: Spanned<RawAction>,
    field: &str,
    invalid: Invalid<'_>,
) -> Result<Action, ConfigError> {
    let span = raw.span();
    let err = |m: &str| invalid(span.clone(), field, m.to_owned());
    let table = match raw.into_inner() {
        RawAction::Word(w) => {
            return match w.as_str() {
                "allow" => Ok(Action::Allow),
                "deny" => Ok(Action::Deny),
                "drop" => Ok(Action::Drop),
                _ => Err(err(
                    "must be \"allow\", \"deny\", \"drop\", or a table with one of respond, \
                     rate_limit, address_cap, global_cap",
                )),
            };
        }
        RawAction::Table(t) => t,
    };
    let count = [
        table.respond.is_some(),
        table.rate_limit.is_some(),
        table.address_cap.is_some(),
        table.global_cap.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    if count != 1 {
        return Err(err(
            "needs exactly one of respond, rate_limit, address_cap, global_cap",
        ));
    }
    let positive_u32 = |v: i64, what: &str| {
        u32::try_from(v)
            .ok()
            .filter(|v| *v >= 1)
            .ok_or_else(|| err(&format!("{what} must be from 1 to {}", u32::MAX)))
    };
    if let Some(r) = table.respond {
        if !(200..=499).contains(&r.status) {
            return Err(err("respond.status must be from 200 to 499"));
        }
        if r.body.len() > MAX_RESPONSE_BODY {
            return Err(err("respond.body must be at most 4096 bytes"));
        }
        return Ok(Action::Respond {
            status: r.status as u16,
            body: r.body,
        });
    }
    if let Some(r) = table.rate_limit {
        let scope = match r.per.as_str() {
            "address" => LimitScope::Address,
            "global" => LimitScope::Global,
            _ => return Err(err("rate_limit.per must be \"address\" or \"global\"")),
        };
        let rate = positive_u32(r.rate, "rate_limit.rate")?;
        let every = crate::duration::parse_duration(&r.every)
            .map_err(|m| invalid(span.clone(), field, format!("rate_limit.every: {m}")))?;
        if every.is_zero() || every > Duration::from_secs(3600) {
            return Err(err("rate_limit.every must be from 1ms to 1h"));
        }
        let burst = match r.burst {
            None => rate,
            Some(b) => positive_u32(b, "rate_limit.burst")?,
        };
        return Ok(Action::RateLimit(RateLimit {
            scope,
            rate,
            // At most an hour: always fits.
            period_ms: u64::try_from(every.as_millis()).unwrap_or(u64::MAX),
            burst,
        }));
    }
    if let Some(max) = table.address_cap {
        return Ok(Action::AddressCap {
            max: positive_u32(max, "address_cap")?,
        });
    }
    match table.global_cap {
        Some(max) => Ok(Action::GlobalCap {
            max: positive_u32(max, "global_cap")?,
        }),
        None => Err(err("needs one action")),
    }
}

/// Parses `"addr/len"` or a bare address into the engine's [`Cidr`]; host bits must be
/// clear. The engine's parser decides; the messages are the configuration's.
pub fn parse_cidr(text: &str) -> Result<Cidr, String> {
    text.parse::<Cidr>().map_err(|e| match e {
        CidrError::Syntax(_) => {
            format!("{text:?} is not an IP address or CIDR (e.g. \"203.0.113.0/24\")")
        }
        CidrError::PrefixLength(_) => {
            // The address parsed, so a colon means IPv6.
            let max = if text.contains(':') { 128 } else { 32 };
            format!("{text:?}: prefix length above {max}")
        }
        CidrError::HostBits(..) => {
            format!("{text:?}: address has bits set after the prefix length")
        }
    })
}

/// An expiry: unix seconds (integer) or a TOML offset date-time (`2026-12-01T00:00:00Z`).
fn parse_expiry(value: &toml::Value) -> Result<u64, String> {
    let bad = || {
        "expires must be unix seconds or a date-time with offset (2026-12-01T00:00:00Z)".to_owned()
    };
    match value {
        toml::Value::Integer(n) => u64::try_from(*n).map_err(|_| bad()),
        toml::Value::Datetime(dt) => {
            let (Some(date), Some(time), Some(offset)) = (dt.date, dt.time, dt.offset) else {
                return Err(bad());
            };
            let offset_secs = match offset {
                toml::value::Offset::Z => 0,
                toml::value::Offset::Custom { minutes } => i64::from(minutes) * 60,
            };
            let days = days_from_civil(
                i64::from(date.year),
                i64::from(date.month),
                i64::from(date.day),
            );
            let secs = days * 86_400
                + i64::from(time.hour) * 3_600
                + i64::from(time.minute) * 60
                + i64::from(time.second.unwrap_or(0))
                - offset_secs;
            u64::try_from(secs).map_err(|_| bad())
        }
        _ => Err(bad()),
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (month 1..=12).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    // Shift the year to start in March so the leap day is last.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const ROUTE: &str = "[[route]]\nname = \"chat\"\norigins = [\"127.0.0.1:1\"]\n";

    fn load(extra: &str) -> Result<Config, String> {
        Config::from_toml(&format!("{ROUTE}{extra}"), "edge.toml").map_err(|e| e.to_string())
    }

    fn error_of(extra: &str) -> String {
        match load(extra) {
            Ok(_) => panic!("accepted: {extra}"),
            Err(e) => e,
        }
    }

    #[test]
    fn full_example() {
        let text = r#"
[[list]]
name = "blocked"
entries = ["203.0.113.0/24", { cidr = "2001:db8::/32", expires = 2026-12-01T00:00:00Z },
           { cidr = "198.51.100.7", expires = 1795000000 }]

[[rule]]
name = "block-bad-nets"
when = { client_in = "blocked" }
action = "deny"

[[rule]]
name = "only-my-origin"
routes = ["chat"]
when = { all = [ { header = "Origin", not_equals = "https://app.example.com" },
                 { not = { field = "path", starts_with = "/public" } } ] }
action = { respond = { status = 403, body = "wrong origin\n" } }

[[rule]]
name = "bots"
when = { any = [ { header = "User-Agent", matches = "(?i)curl|wget" },
                 { header = "User-Agent", exists = false },
                 { query = "debug", exists = true },
                 { field = "host", equals = "old.example.com" },
                 { field = "method", not_equals = "GET" } ] }
action = "drop"

[[rule]]
name = "handshake-rate"
action = { rate_limit = { per = "address", rate = 10, every = "1s", burst = 20 } }

[[rule]]
name = "global-rate"
action = { rate_limit = { per = "global", rate = 6000, every = "1m" } }

[[rule]]
name = "per-ip"
action = { address_cap = 50 }

[[rule]]
name = "total"
action = { global_cap = 100000 }
"#;
        let config = load(text).expect("valid");
        let fw = &config.firewall;
        assert_eq!(fw.lists.len(), 1);
        assert_eq!(
            fw.lists[0].entries,
            vec![
                ListEntry {
                    cidr: Cidr::new("203.0.113.0".parse().expect("ip"), 24).expect("cidr"),
                    expires: None
                },
                ListEntry {
                    cidr: Cidr::new("2001:db8::".parse().expect("ip"), 32).expect("cidr"),
                    expires: Some(1_796_083_200)
                },
                ListEntry {
                    cidr: Cidr::new("198.51.100.7".parse().expect("ip"), 32).expect("cidr"),
                    expires: Some(1_795_000_000)
                },
            ]
        );
        assert_eq!(fw.rules.len(), 7);
        assert_eq!(
            fw.rules[0].when,
            Some(Criterion::ClientIn("blocked".into()))
        );
        assert_eq!(fw.rules[1].routes, Some(vec!["chat".to_owned()]));
        assert_eq!(
            fw.rules[1].when,
            Some(Criterion::All(vec![
                Criterion::Header {
                    name: "Origin".into(),
                    matcher: Matcher {
                        op: MatchOp::Equals("https://app.example.com".into()),
                        negate: true
                    }
                },
                Criterion::Not(Box::new(Criterion::Path(Matcher {
                    op: MatchOp::StartsWith("/public".into()),
                    negate: false
                }))),
            ]))
        );
        let Some(Criterion::Any(any)) = &fw.rules[2].when else {
            panic!("any expected");
        };
        assert_eq!(
            any[1],
            Criterion::Header {
                name: "User-Agent".into(),
                matcher: Matcher {
                    op: MatchOp::Exists,
                    negate: true
                }
            }
        );
        assert!(matches!(any[3], Criterion::Host(_)));
        assert_eq!(fw.rules[2].action, Action::Drop);
        assert_eq!(
            fw.rules[3].action,
            Action::RateLimit(RateLimit {
                scope: LimitScope::Address,
                rate: 10,
                period_ms: 1_000,
                burst: 20
            })
        );
        assert_eq!(
            fw.rules[4].action,
            Action::RateLimit(RateLimit {
                scope: LimitScope::Global,
                rate: 6000,
                period_ms: 60_000,
                burst: 6000
            })
        );
        assert_eq!(fw.rules[5].action, Action::AddressCap { max: 50 });
        assert_eq!(fw.rules[6].action, Action::GlobalCap { max: 100_000 });
        assert!(fw.rules[6].when.is_none());
    }

    #[test]
    fn validated_firewall_builds_into_the_engine() {
        let config = load(
            "[[list]]\nname = \"l\"\nentries = [\"10.0.0.0/8\", \"::ffff:192.0.2.0/120\"]\n\
             [[rule]]\nname = \"r\"\nroutes = [\"chat\"]\n\
             when = { any = [ { client_in = \"l\" }, { field = \"host\", matches = \"^A\" } ] }\n\
             action = { rate_limit = { per = \"address\", rate = 2, every = \"500ms\" } }\n",
        )
        .expect("valid");
        let firewall = config.firewall.build().expect("the engine accepts it");
        assert_eq!(firewall.rule_count(), 1);
        assert_eq!(firewall.rule_name(0), "r");
        let list = firewall.list("l").expect("list");
        // The IPv4-mapped network is the IPv4 one to the engine.
        assert!(list.contains("192.0.2.7".parse().expect("ip"), 0));
        assert!(list.contains("10.1.2.3".parse().expect("ip"), 0));
        assert!(!list.contains("11.0.0.1".parse().expect("ip"), 0));
    }

    #[test]
    fn tls_fields_parse_and_their_values_are_checked() {
        let config = load(
            "[[rule]]\nname = \"mtls\"\n\
             when = { all = [ { field = \"sni\", equals = \"Admin.example.com\" },\
                              { field = \"client_cert\", not_equals = \"valid\" },\
                              { field = \"tls_version\", equals = \"1.2\" } ] }\n\
             action = \"deny\"\n",
        )
        .expect("valid");
        let Some(Criterion::All(all)) = &config.firewall.rules[0].when else {
            panic!("all");
        };
        assert!(
            matches!(&all[0], Criterion::Sni(m) if m.op == MatchOp::Equals("Admin.example.com".into()))
        );
        assert!(matches!(&all[1], Criterion::ClientCert(m) if m.negate));
        assert!(matches!(&all[2], Criterion::TlsVersion(_)));
        config.firewall.build().expect("the engine accepts it");
        for (when, want) in [
            (
                "{ field = \"tls_version\", equals = \"TLSv1.3\" }",
                "field \"tls_version\": \"TLSv1.3\" is never its value (one of \"1.2\", \"1.3\")",
            ),
            (
                "{ field = \"client_cert\", equals = \"ok\" }",
                "field \"client_cert\": \"ok\" is never its value",
            ),
            ("{ field = \"sni\", matches = \"(\" }", "invalid regex"),
        ] {
            let e = load(&format!(
                "[[rule]]\nname = \"r\"\nwhen = {when}\naction = \"deny\"\n"
            ))
            .expect_err(when)
            .to_string();
            assert!(e.contains(want), "{when}: {e}");
        }
    }

    #[test]
    fn no_firewall_by_default() {
        assert_eq!(load("").expect("valid").firewall, FirewallConfig::default());
    }

    #[test]
    fn errors_name_line_and_field() {
        let cases = [
            (
                "[[list]]\nname = \"l\"\nentries = [\"10.0.0.1/8\"]\n",
                "edge.toml:6: list[0].entries[0]: \"10.0.0.1/8\": address has bits set",
            ),
            (
                "[[list]]\nname = \"l\"\nentries = [\n  \"10.0.0.0/8\",\n  { cidr = \"::/0\", expires = \"soon\" },\n]\n",
                "edge.toml:8: list[0].entries[1]: expires must be",
            ),
            (
                "[[list]]\nname = \"l\"\n[[list]]\nname = \"l\"\n",
                "edge.toml:7: list[1].name: duplicate list name",
            ),
            (
                "[[rule]]\nname = \"r\"\nwhen = { client_in = \"nope\" }\naction = \"deny\"\n",
                "edge.toml:6: rule[0].when: client_in: no list named \"nope\"",
            ),
            (
                "[[rule]]\nname = \"r\"\nroutes = [\"chat\", \"news\"]\naction = \"deny\"\n",
                "edge.toml:6: rule[0].routes: no route named \"news\"",
            ),
            (
                "[[rule]]\nname = \"r\"\naction = \"reject\"\n",
                "edge.toml:6: rule[0].action: must be \"allow\"",
            ),
            (
                "[[rule]]\nname = \"r\"\naction = { respond = { status = 500 } }\n",
                "edge.toml:6: rule[0].action: respond.status must be from 200 to 499",
            ),
            (
                "[[rule]]\nname = \"r\"\naction = { rate_limit = { per = \"ip\", rate = 1, every = \"1s\" } }\n",
                "edge.toml:6: rule[0].action: rate_limit.per",
            ),
            (
                "[[rule]]\nname = \"r\"\naction = { rate_limit = { per = \"global\", rate = 0, every = \"1s\" } }\n",
                "edge.toml:6: rule[0].action: rate_limit.rate must be from 1",
            ),
            (
                "[[rule]]\nname = \"r\"\naction = { rate_limit = { per = \"global\", rate = 1, every = \"2h\" } }\n",
                "edge.toml:6: rule[0].action: rate_limit.every must be from 1ms to 1h",
            ),
            (
                "[[rule]]\nname = \"r\"\naction = { address_cap = 0 }\n",
                "edge.toml:6: rule[0].action: address_cap must be from 1",
            ),
            (
                "[[rule]]\nname = \"r\"\naction = { address_cap = 1, global_cap = 2 }\n",
                "edge.toml:6: rule[0].action: needs exactly one of",
            ),
            (
                "[[rule]]\nname = \"r\"\naction = \"deny\"\n[[rule]]\nname = \"r\"\naction = \"deny\"\n",
                "edge.toml:8: rule[1].name: duplicate rule name",
            ),
            (
                "[[rule]]\nname = \"r\"\naction = \"deny\"\nwhen = { any = [\n  { header = \"UA\", exists = true },\n  { header = \"UA\", matches = \"(x\" },\n] }\n",
                "edge.toml:9: rule[0].when.any[1]: invalid regex",
            ),
            (
                "[[rule]]\nname = \"r\"\naction = \"deny\"\nwhen = { header = \"UA\", equals = \"a\", starts_with = \"b\" }\n",
                "edge.toml:7: rule[0].when: needs exactly one operator",
            ),
            (
                "[[rule]]\nname = \"r\"\naction = \"deny\"\nwhen = { header = \"U A\", exists = true }\n",
                "edge.toml:7: rule[0].when: \"U A\" is not a header name",
            ),
            (
                "[[rule]]\nname = \"r\"\naction = \"deny\"\nwhen = { field = \"cookie\", exists = true }\n",
                "edge.toml:7: rule[0].when: field \"cookie\"",
            ),
            (
                "[[rule]]\nname = \"r\"\naction = \"deny\"\nwhen = { client_in = \"l\", header = \"a\", exists = true }\n",
                "edge.toml:7: rule[0].when: needs exactly one of all",
            ),
            (
                "[[rule]]\nname = \"r\"\naction = \"deny\"\nwhen = { header = \"a\", query = \"b\", exists = true }\n",
                "edge.toml:7: rule[0].when: needs exactly one of field, header, query",
            ),
        ];
        for (extra, want) in cases {
            let msg = error_of(extra);
            assert!(msg.starts_with(want), "{extra}\n got: {msg}\nwant: {want}");
        }
        // Unknown keys are syntax errors with a position.
        let msg = error_of(
            "[[rule]]\nname = \"r\"\naction = \"deny\"\nwhen = { header = \"a\", exist = true }\n",
        );
        assert!(
            msg.starts_with("edge.toml:7: rule[0].when: unknown field `exist`"),
            "{msg}"
        );
    }

    #[test]
    fn cidrs_and_dates() {
        assert_eq!(
            parse_cidr("::/0"),
            Ok(Cidr::new("::".parse().expect("ip"), 0).expect("cidr"))
        );
        assert_eq!(
            parse_cidr("10.1.2.3"),
            Ok(Cidr::new("10.1.2.3".parse().expect("ip"), 32).expect("cidr"))
        );
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::1/129",
            "a/8",
            "10.0.0.0/8/8",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad:?}");
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        let v: toml::Value = toml::from_str::<toml::Table>("t = 2026-12-01T01:00:00+01:00")
            .expect("toml")
            .remove("t")
            .expect("t");
        assert_eq!(parse_expiry(&v), Ok(1_796_083_200));
        let local: toml::Value = toml::from_str::<toml::Table>("t = 2026-12-01T00:00:00")
            .expect("toml")
            .remove("t")
            .expect("t");
        assert!(parse_expiry(&local).is_err(), "no offset: ambiguous");
    }
}
