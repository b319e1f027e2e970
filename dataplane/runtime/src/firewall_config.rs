//! Turns the validated firewall configuration (`wsedge_command::firewall`) into the pure
//! engine's types (`wsedge_proto::firewall`), one to one. Each worker builds its own copy.

use wsedge_command::firewall::{
    ActionConfig, CriterionConfig, FirewallConfig, MatchOpConfig, MatcherConfig,
};
use wsedge_proto::firewall::{
    Action, Cidr, Criterion, Firewall, FirewallError, LimitScope, MatchOp, Matcher, NetList,
    RateLimit, Rule,
};

/// The engine for `config`. Cannot fail on a configuration that passed validation; an error
/// here is reported like an invalid configuration.
pub(crate) fn build(config: &FirewallConfig) -> Result<Firewall, FirewallError> {
    let lists = config
        .lists
        .iter()
        .map(|l| {
            NetList::new(
                l.name.clone(),
                l.entries
                    .iter()
                    .filter_map(|e| Cidr::new(e.addr, e.len).map(|c| (c, e.expires))),
            )
        })
        .collect();
    let rules = config
        .rules
        .iter()
        .map(|r| Rule {
            name: r.name.clone(),
            routes: r.routes.clone(),
            when: r.when.as_ref().map(criterion),
            action: action(&r.action),
        })
        .collect();
    Firewall::new(rules, lists)
}

fn criterion(c: &CriterionConfig) -> Criterion {
    match c {
        CriterionConfig::All(list) => Criterion::All(list.iter().map(criterion).collect()),
        CriterionConfig::Any(list) => Criterion::Any(list.iter().map(criterion).collect()),
        CriterionConfig::Not(inner) => Criterion::Not(Box::new(criterion(inner))),
        CriterionConfig::ClientIn(list) => Criterion::ClientIn(list.clone()),
        CriterionConfig::Host(m) => Criterion::Host(matcher(m)),
        CriterionConfig::Method(m) => Criterion::Method(matcher(m)),
        CriterionConfig::Path(m) => Criterion::Path(matcher(m)),
        CriterionConfig::Query { name, matcher: m } => Criterion::Query {
            name: name.clone(),
            matcher: matcher(m),
        },
        CriterionConfig::Header { name, matcher: m } => Criterion::Header {
            name: name.clone(),
            matcher: matcher(m),
        },
    }
}

fn matcher(m: &MatcherConfig) -> Matcher {
    let op = match &m.op {
        MatchOpConfig::Exists => MatchOp::Exists,
        MatchOpConfig::Equals(v) => MatchOp::Equals(v.clone()),
        MatchOpConfig::StartsWith(v) => MatchOp::StartsWith(v.clone()),
        MatchOpConfig::Matches(v) => MatchOp::Matches(v.clone()),
    };
    Matcher {
        op,
        negate: m.negate,
    }
}

fn action(a: &ActionConfig) -> Action {
    match a {
        ActionConfig::Allow => Action::Allow,
        ActionConfig::Deny => Action::Deny,
        ActionConfig::Drop => Action::Drop,
        ActionConfig::Respond { status, body } => Action::Respond {
            status: *status,
            body: body.clone(),
        },
        ActionConfig::RateLimit {
            per_address,
            rate,
            every,
            burst,
        } => Action::RateLimit(RateLimit {
            scope: if *per_address {
                LimitScope::Address
            } else {
                LimitScope::Global
            },
            rate: *rate,
            period_ms: u64::try_from(every.as_millis()).unwrap_or(u64::MAX),
            burst: *burst,
        }),
        ActionConfig::AddressCap(max) => Action::AddressCap { max: *max },
        ActionConfig::GlobalCap(max) => Action::GlobalCap { max: *max },
    }
}
