//! Micro-benchmark of the firewall the connection state machine runs once per handshake
//! (step 5, before any origin connection): 100 rules of a realistic mix (header matchers, a
//! regex, path prefixes, query and host tests, a rate limit and caps) and a network list of
//! 100,000 CIDRs, on a browser upgrade head from an address outside the list (every rule
//! evaluated) and from one inside it (stops at the list rule). Budget: under 2 µs.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{Criterion as Bench, criterion_group, criterion_main};
use wsedge_proto::firewall::{
    Action, Cidr, Criterion, Firewall, FirewallState, LimitScope, MatchOp, Matcher, NetList,
    RateLimit, Rule, Verdict,
};
use wsedge_proto::handshake::{HeadLimits, parse_request};

mod heads;
use heads::BROWSER_UPGRADE;

/// A deterministic xorshift generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// 100,000 networks: /24s and /32s in IPv4 (outside 198.18.0.0/15) and /48s in IPv6.
fn big_list() -> NetList {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut entries = Vec::with_capacity(100_000);
    while entries.len() < 100_000 {
        let r = rng.next();
        let cidr = match r % 10 {
            0..=5 => Cidr::new(IpAddr::V4(Ipv4Addr::from((r >> 16) as u32 & !0xff)), 24),
            6..=7 => Cidr::new(IpAddr::V4(Ipv4Addr::from((r >> 16) as u32)), 32),
            _ => {
                let a = (0x2001_0db8u128 << 96) | (u128::from(r >> 16 & 0xffff_ffff) << 80);
                Cidr::new(IpAddr::V6(Ipv6Addr::from(a)), 48)
            }
        };
        if let Some(c) = cidr
            && !c.contains(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)))
        {
            let expires = r.is_multiple_of(7).then_some(4_000_000_000);
            entries.push((c, expires));
        }
    }
    entries.push((
        Cidr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 0)), 24).expect("cidr"),
        None,
    ));
    NetList::new("blocked", entries)
}

fn m(op: MatchOp) -> Matcher {
    Matcher::new(op)
}

fn header(name: &str, matcher: Matcher) -> Criterion {
    Criterion::Header {
        name: name.to_owned(),
        matcher,
    }
}

fn rule(i: usize, when: Option<Criterion>, action: Action) -> Rule {
    Rule {
        name: format!("rule-{i}"),
        routes: (i % 10 == 3).then(|| vec!["chat".to_owned(), "news".to_owned()]),
        when,
        action,
    }
}

/// 100 rules; none decides for the clean address, so all are evaluated.
fn hundred_rules() -> Vec<Rule> {
    let mut rules = Vec::with_capacity(100);
    for i in 0..100 {
        let r = match i {
            0 => rule(
                i,
                Some(header("Origin", Matcher::not(MatchOp::Exists))),
                Action::Deny,
            ),
            1 => rule(
                i,
                Some(header(
                    "User-Agent",
                    m(MatchOp::Matches(
                        r"(?i)(curl|wget|python-requests|go-http-client)/\d".into(),
                    )),
                )),
                Action::Deny,
            ),
            2 => rule(
                i,
                None,
                Action::RateLimit(RateLimit {
                    scope: LimitScope::Address,
                    rate: 1_000_000,
                    period_ms: 1_000,
                    burst: 1_000_000,
                }),
            ),
            3 => rule(i, None, Action::AddressCap { max: 100 }),
            4 => rule(i, None, Action::GlobalCap { max: 1_000_000 }),
            50 => rule(i, Some(Criterion::ClientIn("blocked".into())), Action::Deny),
            _ => {
                let when = match i % 6 {
                    0 => Criterion::Path(m(MatchOp::StartsWith(format!("/admin{i}")))),
                    1 => header(
                        "Origin",
                        m(MatchOp::Equals(format!("https://evil{i}.example"))),
                    ),
                    2 => header("User-Agent", m(MatchOp::StartsWith(format!("BadBot/{i}")))),
                    3 => Criterion::All(vec![
                        Criterion::Host(m(MatchOp::Equals(format!("h{i}.example.com")))),
                        Criterion::Method(m(MatchOp::Equals("GET".into()))),
                    ]),
                    4 => Criterion::Any(vec![
                        Criterion::Query {
                            name: format!("debug{i}"),
                            matcher: m(MatchOp::Exists),
                        },
                        header("Cookie", m(MatchOp::StartsWith(format!("blocked{i}=")))),
                    ]),
                    _ => header(
                        "Sec-WebSocket-Protocol",
                        m(MatchOp::Equals(format!("legacy.v{i}"))),
                    ),
                };
                rule(i, Some(when), Action::Deny)
            }
        };
        rules.push(r);
    }
    rules
}

fn bench(c: &mut Bench) {
    let fw = Firewall::new(hundred_rules(), vec![big_list()]).expect("bench rules are valid");
    let list = fw.list("blocked").expect("list");
    let limits = HeadLimits::default();
    let req = match parse_request(BROWSER_UPGRADE, &limits) {
        Ok(Some(req)) => req,
        other => panic!("bench head did not parse: {other:?}"),
    };
    let clean = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
    let listed = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 45));
    let unix_now = 1_800_000_000;
    assert!(!list.contains(clean, unix_now));
    assert!(list.contains(listed, unix_now));
    let mut check = FirewallState::new(4);
    let verdict = |state: &mut FirewallState, peer| {
        fw.evaluate(state, &req, peer, Some("chat"), 0, unix_now, None)
    };
    assert_eq!(
        verdict(&mut check, clean),
        Verdict::Allow,
        "every rule evaluated"
    );
    assert_eq!(
        verdict(&mut check, listed),
        Verdict::Deny,
        "stops at the list rule"
    );

    let mut g = c.benchmark_group("firewall");
    let mut state = FirewallState::new(4);
    let mut now = 0u64;
    g.bench_function("100_rules_100k_cidrs/clean_address", |b| {
        b.iter(|| {
            now += 1;
            fw.evaluate(
                &mut state,
                black_box(&req),
                black_box(clean),
                Some("chat"),
                now,
                unix_now,
                None,
            )
        })
    });
    g.bench_function("100_rules_100k_cidrs/listed_address", |b| {
        b.iter(|| {
            now += 1;
            fw.evaluate(
                &mut state,
                black_box(&req),
                black_box(listed),
                Some("chat"),
                now,
                unix_now,
                None,
            )
        })
    });
    let mut trace = Vec::with_capacity(128);
    g.bench_function("100_rules_100k_cidrs/clean_address_traced", |b| {
        b.iter(|| {
            now += 1;
            trace.clear();
            fw.evaluate(
                &mut state,
                black_box(&req),
                black_box(clean),
                Some("chat"),
                now,
                unix_now,
                Some(&mut trace),
            )
        })
    });
    g.bench_function("netlist_100k/contains", |b| {
        b.iter(|| list.contains(black_box(clean), unix_now))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
