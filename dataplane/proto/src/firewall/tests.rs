//! Unit tests of the firewall engine: criteria, actions, combinators, limits, traces.

use super::*;
use crate::handshake::{HeadLimits, parse_request};

const HEAD: &[u8] = b"GET /ws/chat?room=lobby&token=abc&flag HTTP/1.1\r\n\
    Host: Chat.Example.com:8080\r\n\
    Connection: Upgrade\r\n\
    Upgrade: websocket\r\n\
    Origin: https://app.example.com\r\n\
    User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0\r\n\
    Cookie: session=1\r\n\
    Cookie: theme=dark\r\n\
    Sec-WebSocket-Protocol: chat.v2\r\n\
    Sec-WebSocket-Version: 13\r\n\
    Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n\
    \r\n";

fn with_request<T>(head: &[u8], f: impl FnOnce(&Request<'_>) -> T) -> T {
    let limits = HeadLimits::default();
    match parse_request(head, &limits) {
        Ok(Some(req)) => f(&req),
        other => panic!("test head did not parse: {other:?}"),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn rule(name: &str, when: Option<Criterion>, action: Action) -> Rule {
    Rule {
        name: name.to_owned(),
        routes: None,
        when,
        action,
    }
}

fn header(name: &str, op: MatchOp, negate: bool) -> Criterion {
    Criterion::Header {
        name: name.to_owned(),
        matcher: Matcher { op, negate },
    }
}

fn eq(s: &str) -> MatchOp {
    MatchOp::Equals(s.to_owned())
}

fn prefix(s: &str) -> MatchOp {
    MatchOp::StartsWith(s.to_owned())
}

fn re(s: &str) -> MatchOp {
    MatchOp::Matches(s.to_owned())
}

/// Does `c` hold for [`HEAD`] from 192.0.2.1? (A one-rule firewall that denies on it.)
fn holds(c: Criterion) -> bool {
    holds_on(HEAD, c)
}

fn holds_on(head: &[u8], c: Criterion) -> bool {
    let lists = vec![NetList::new(
        "blocked",
        [
            ("192.0.2.0/24".parse().expect("cidr"), None),
            ("2001:db8::/32".parse().expect("cidr"), Some(1_000)),
        ],
    )];
    let fw = Firewall::new(vec![rule("r", Some(c), Action::Deny)], lists).expect("valid");
    let mut state = FirewallState::new(1);
    with_request(head, |req| {
        fw.evaluate(&mut state, req, ip("192.0.2.1"), Some("chat"), 0, 0, None) == Verdict::Deny
    })
}

/// Whether `c` holds for a connection whose TLS handshake gave `tls` (`None`: plain TCP).
fn holds_tls(tls: Option<TlsFacts<'_>>, c: Criterion) -> bool {
    let fw = Firewall::new(vec![rule("r", Some(c), Action::Deny)], Vec::new()).expect("valid");
    let mut state = FirewallState::new(1);
    with_request(HEAD, |req| {
        fw.evaluate_tls(&mut state, req, ip("192.0.2.1"), tls, None, 0, 0, None) == Verdict::Deny
    })
}

#[test]
fn tls_criteria_see_the_handshake_and_nothing_on_plain_tcp() {
    let tls = TlsFacts {
        sni: Some("Api.Example.com."),
        version: "1.3",
        client_cert: "invalid",
    };
    let no_sni = TlsFacts {
        sni: None,
        version: "1.2",
        client_cert: "not_requested",
    };
    // SNI: case-insensitive, without the trailing dot, like Host.
    assert!(holds_tls(
        Some(tls),
        Criterion::Sni(Matcher::new(eq("api.example.com")))
    ));
    assert!(holds_tls(
        Some(tls),
        Criterion::Sni(Matcher::new(re("^api\\.")))
    ));
    assert!(!holds_tls(
        Some(no_sni),
        Criterion::Sni(Matcher::new(MatchOp::Exists))
    ));
    assert!(holds_tls(
        Some(no_sni),
        Criterion::Sni(Matcher::not(MatchOp::Exists))
    ));
    assert!(holds_tls(
        Some(tls),
        Criterion::TlsVersion(Matcher::new(eq("1.3")))
    ));
    assert!(holds_tls(
        Some(no_sni),
        Criterion::TlsVersion(Matcher::not(eq("1.3")))
    ));
    assert!(holds_tls(
        Some(tls),
        Criterion::ClientCert(Matcher::not(eq("valid")))
    ));
    assert!(!holds_tls(
        Some(tls),
        Criterion::ClientCert(Matcher::new(eq("valid")))
    ));
    // Plain TCP: every TLS value is absent, so positive tests fail and negations hold.
    for c in [
        Criterion::Sni(Matcher::new(MatchOp::Exists)),
        Criterion::TlsVersion(Matcher::new(eq("1.2"))),
        Criterion::TlsVersion(Matcher::new(MatchOp::Exists)),
        Criterion::ClientCert(Matcher::new(eq("none"))),
    ] {
        assert!(!holds_tls(None, c.clone()), "{c:?} on plain TCP");
        assert!(holds_tls(None, Criterion::Not(Box::new(c))));
    }
    assert!(holds_tls(
        None,
        Criterion::ClientCert(Matcher::not(eq("valid")))
    ));
    // `evaluate` is plain TCP.
    assert!(!holds(Criterion::TlsVersion(Matcher::new(MatchOp::Exists))));
}

#[test]
fn header_operators_and_negations() {
    assert!(holds(header(
        "origin",
        eq("https://app.example.com"),
        false
    )));
    assert!(!holds(header(
        "Origin",
        eq("https://APP.example.com"),
        false
    )));
    assert!(holds(header("Origin", eq("https://evil.example"), true)));
    assert!(!holds(header(
        "Origin",
        eq("https://app.example.com"),
        true
    )));
    assert!(holds(header("User-Agent", prefix("Mozilla/"), false)));
    assert!(!holds(header("User-Agent", prefix("curl/"), false)));
    assert!(holds(header("User-Agent", prefix("curl/"), true)));
    assert!(holds(header(
        "User-Agent",
        re(r"Chrome/1[0-9]{2}\b"),
        false
    )));
    assert!(!holds(header("User-Agent", re(r"^curl"), false)));
    assert!(holds(header("User-Agent", re(r"(?i)^MOZILLA"), false)));
    assert!(holds(header(
        "Sec-WebSocket-Protocol",
        MatchOp::Exists,
        false
    )));
    assert!(!holds(header("X-Forwarded-For", MatchOp::Exists, false)));
    assert!(holds(header("X-Forwarded-For", MatchOp::Exists, true)));
    // Absent header: positive tests fail, negations hold.
    assert!(!holds(header("X-Missing", eq(""), false)));
    assert!(holds(header("X-Missing", eq("x"), true)));
    assert!(holds(header("X-Missing", re("."), true)));
}

#[test]
fn repeated_headers_match_any_value() {
    assert!(holds(header("Cookie", eq("theme=dark"), false)));
    assert!(holds(header("cookie", prefix("session="), false)));
    assert!(!holds(header("Cookie", eq("theme=dark"), true)));
}

#[test]
fn host_method_path_query() {
    let m = |op| Matcher::new(op);
    assert!(holds(Criterion::Host(m(eq("chat.example.com")))));
    assert!(holds(Criterion::Host(m(eq("CHAT.EXAMPLE.COM")))));
    assert!(holds(Criterion::Host(m(prefix("chat.")))));
    assert!(holds(Criterion::Host(m(re(r"^chat\.example\.com$")))));
    assert!(!holds(Criterion::Host(m(eq("chat.example.com:8080")))));
    assert!(holds(Criterion::Method(m(eq("GET")))));
    assert!(!holds(Criterion::Method(m(eq("get")))));
    assert!(holds(Criterion::Method(Matcher::not(eq("POST")))));
    assert!(holds(Criterion::Path(m(prefix("/ws/")))));
    assert!(holds(Criterion::Path(m(eq("/ws/chat")))));
    assert!(!holds(Criterion::Path(m(eq("/ws/chat?room=lobby")))));
    assert!(holds(Criterion::Path(m(re("^/ws/[a-z]+$")))));
    let q = |name: &str, matcher| Criterion::Query {
        name: name.to_owned(),
        matcher,
    };
    assert!(holds(q("room", m(eq("lobby")))));
    assert!(holds(q("token", m(MatchOp::Exists))));
    assert!(holds(q("flag", m(eq("")))));
    assert!(!holds(q("Room", m(MatchOp::Exists))));
    assert!(holds(q("missing", Matcher::not(MatchOp::Exists))));
    assert!(holds(q("token", m(re("^[a-z]{3}$")))));
    // No query at all.
    let head = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
    assert!(!holds_on(head, q("room", m(MatchOp::Exists))));
    assert!(holds_on(head, q("room", Matcher::not(eq("lobby")))));
    // Percent-encoding is not decoded.
    let head = b"GET /x?na%6De=v%20 HTTP/1.1\r\nHost: a\r\n\r\n";
    assert!(holds_on(head, q("na%6De", m(eq("v%20")))));
    assert!(!holds_on(head, q("name", m(MatchOp::Exists))));
}

#[test]
fn client_lists_and_combinators() {
    let inl = || Criterion::ClientIn("blocked".to_owned());
    assert!(holds(inl()));
    assert!(!holds(Criterion::Not(Box::new(inl()))));
    let yes = || Criterion::Method(Matcher::new(eq("GET")));
    let no = || Criterion::Method(Matcher::new(eq("POST")));
    assert!(holds(Criterion::All(vec![yes(), inl(), yes()])));
    assert!(!holds(Criterion::All(vec![yes(), no()])));
    assert!(holds(Criterion::Any(vec![no(), yes()])));
    assert!(!holds(Criterion::Any(vec![no(), no()])));
    assert!(holds(Criterion::All(vec![])));
    assert!(!holds(Criterion::Any(vec![])));
    assert!(holds(Criterion::Any(vec![
        Criterion::All(vec![no(), yes()]),
        Criterion::Not(Box::new(no())),
    ])));
}

#[test]
fn list_lookup_uses_peer_family_and_expiry() {
    let lists = vec![NetList::new(
        "blocked",
        [
            ("192.0.2.0/24".parse().expect("cidr"), None),
            ("2001:db8::/32".parse().expect("cidr"), Some(1_000)),
        ],
    )];
    let rules = vec![rule(
        "r",
        Some(Criterion::ClientIn("blocked".into())),
        Action::Drop,
    )];
    let fw = Firewall::new(rules, lists).expect("valid");
    let mut s = FirewallState::new(1);
    with_request(HEAD, |req| {
        let mut verdict =
            |peer: &str, unix_now| fw.evaluate(&mut s, req, ip(peer), None, 0, unix_now, None);
        assert_eq!(verdict("192.0.2.200", 0), Verdict::Drop);
        assert_eq!(verdict("::ffff:192.0.2.200", 0), Verdict::Drop);
        assert_eq!(verdict("192.0.3.1", 0), Verdict::Allow);
        assert_eq!(verdict("2001:db8::1", 999), Verdict::Drop);
        assert_eq!(verdict("2001:db8::1", 1_000), Verdict::Allow, "expired");
        assert_eq!(verdict("2001:db9::1", 0), Verdict::Allow);
    });
}

#[test]
fn live_list_edit_through_firewall() {
    let lists = vec![NetList::new("blocked", [])];
    let rules = vec![rule(
        "r",
        Some(Criterion::ClientIn("blocked".into())),
        Action::Deny,
    )];
    let mut fw = Firewall::new(rules, lists).expect("valid");
    let mut s = FirewallState::new(1);
    let peer = ip("198.51.100.9");
    with_request(HEAD, |req| {
        assert_eq!(
            fw.evaluate(&mut s, req, peer, None, 0, 10, None),
            Verdict::Allow
        );
        let list = fw.list_mut("blocked").expect("list");
        assert!(list.add("198.51.100.0/24".parse().expect("cidr"), Some(20), 10));
        assert_eq!(
            fw.evaluate(&mut s, req, peer, None, 0, 10, None),
            Verdict::Deny
        );
        assert_eq!(
            fw.evaluate(&mut s, req, peer, None, 0, 20, None),
            Verdict::Allow
        );
        assert_eq!(fw.list("blocked").map(|l| l.entries(20).count()), Some(0));
    });
}

#[test]
fn terminal_actions_and_order() {
    let get = || Some(Criterion::Method(Matcher::new(eq("GET"))));
    let post = || Some(Criterion::Method(Matcher::new(eq("POST"))));
    let respond = Action::Respond {
        status: 418,
        body: "no tea\n".to_owned(),
    };
    let cases = [
        (vec![rule("a", get(), Action::Deny)], Verdict::Deny),
        (vec![rule("a", get(), Action::Drop)], Verdict::Drop),
        (
            vec![rule("a", post(), Action::Deny), rule("b", get(), respond)],
            Verdict::Respond {
                status: 418,
                body: Arc::from("no tea\n"),
            },
        ),
        (
            vec![
                rule("a", get(), Action::Allow),
                rule("b", None, Action::Deny),
            ],
            Verdict::Allow,
        ),
        (
            vec![
                rule("a", post(), Action::Allow),
                rule("b", None, Action::Deny),
            ],
            Verdict::Deny,
        ),
        (vec![rule("a", post(), Action::Deny)], Verdict::Allow),
    ];
    for (rules, want) in cases {
        let fw = Firewall::new(rules, vec![]).expect("valid");
        let mut s = FirewallState::new(1);
        let got = with_request(HEAD, |req| {
            fw.evaluate(&mut s, req, ip("10.0.0.1"), None, 0, 0, None)
        });
        assert_eq!(got, want);
    }
}

#[test]
fn route_scoping() {
    let mut r = rule("chat-only", None, Action::Deny);
    r.routes = Some(vec!["chat".to_owned(), "news".to_owned()]);
    let fw = Firewall::new(vec![r], vec![]).expect("valid");
    let mut s = FirewallState::new(1);
    with_request(HEAD, |req| {
        let mut v = |route| fw.evaluate(&mut s, req, ip("10.0.0.1"), route, 0, 0, None);
        assert_eq!(v(Some("chat")), Verdict::Deny);
        assert_eq!(v(Some("news")), Verdict::Deny);
        assert_eq!(v(Some("other")), Verdict::Allow);
        assert_eq!(v(None), Verdict::Allow);
    });
}

fn rate(scope: LimitScope, rate: u32, period_ms: u64, burst: u32) -> Action {
    Action::RateLimit(RateLimit {
        scope,
        rate,
        period_ms,
        burst,
    })
}

#[test]
fn per_address_rate_limit_with_fake_tick() {
    let rules = vec![
        rule("rl", None, rate(LimitScope::Address, 2, 1000, 3)),
        rule(
            "after",
            Some(Criterion::Path(Matcher::new(eq("/nope")))),
            Action::Deny,
        ),
    ];
    let fw = Firewall::new(rules, vec![]).expect("valid");
    let mut s = FirewallState::new(4);
    let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
    with_request(HEAD, |req| {
        let mut v = |peer, now| fw.evaluate(&mut s, req, peer, None, now, 0, None);
        for _ in 0..3 {
            assert_eq!(v(a, 0), Verdict::Allow);
        }
        assert_eq!(
            v(a, 0),
            Verdict::RateLimited {
                retry_after_secs: 1
            }
        );
        // Another address has its own bucket, not shared out between workers.
        for _ in 0..3 {
            assert_eq!(v(b, 0), Verdict::Allow);
        }
        // 2 per second: one token per 500 ms.
        assert!(matches!(v(a, 499), Verdict::RateLimited { .. }));
        assert_eq!(v(a, 500), Verdict::Allow);
        assert!(matches!(v(a, 500), Verdict::RateLimited { .. }));
        assert_eq!(v(a, 1_500), Verdict::Allow);
        assert_eq!(v(a, 1_500), Verdict::Allow);
        assert!(matches!(v(a, 1_500), Verdict::RateLimited { .. }));
    });
}

#[test]
fn global_rate_limit_is_shared_out() {
    let rules = vec![rule("g", None, rate(LimitScope::Global, 60, 60_000, 4))];
    let fw = Firewall::new(rules, vec![]).expect("valid");
    // Two workers: 2 at once, then one every 2 s, whatever the address.
    let mut s = FirewallState::new(2);
    with_request(HEAD, |req| {
        let mut v = |peer: &str, now| fw.evaluate(&mut s, req, ip(peer), None, now, 0, None);
        assert_eq!(v("10.0.0.1", 0), Verdict::Allow);
        assert_eq!(v("10.0.0.2", 0), Verdict::Allow);
        assert_eq!(
            v("10.0.0.3", 0),
            Verdict::RateLimited {
                retry_after_secs: 2
            }
        );
        assert_eq!(v("10.0.0.3", 2_000), Verdict::Allow);
    });
}

#[test]
fn caps_count_live_connections() {
    let rules = vec![
        rule("per-ip", None, Action::AddressCap { max: 2 }),
        rule("total", None, Action::GlobalCap { max: 5 }),
    ];
    let fw = Firewall::new(rules, vec![]).expect("valid");
    let mut s = FirewallState::new(1);
    let (a, b, c) = (ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3"));
    with_request(HEAD, |req| {
        let admit = |s: &mut FirewallState, peer| {
            let v = fw.evaluate(s, req, peer, None, 0, 0, None);
            if v == Verdict::Allow {
                s.on_connection_open(peer);
            }
            v
        };
        assert_eq!(admit(&mut s, a), Verdict::Allow);
        assert_eq!(admit(&mut s, a), Verdict::Allow);
        assert_eq!(admit(&mut s, a), Verdict::PerAddressCap);
        assert_eq!(
            admit(&mut s, ip("::ffff:10.0.0.1")),
            Verdict::PerAddressCap,
            "mapped address counts as the IPv4 one"
        );
        s.on_connection_close(a);
        assert_eq!(admit(&mut s, a), Verdict::Allow);
        assert_eq!(admit(&mut s, b), Verdict::Allow);
        assert_eq!(admit(&mut s, b), Verdict::Allow);
        assert_eq!(admit(&mut s, c), Verdict::Allow);
        assert_eq!(s.live_total(), 5);
        assert_eq!(admit(&mut s, ip("10.0.0.4")), Verdict::GlobalCap);
        s.on_connection_close(b);
        assert_eq!(admit(&mut s, ip("10.0.0.4")), Verdict::Allow);
        for peer in [a, a, b, c, ip("10.0.0.4")] {
            s.on_connection_close(peer);
        }
        assert_eq!(s.live_total(), 0);
        assert_eq!(s.live_connections(a), 0);
    });
    // A global cap is shared out between workers (rounded up).
    let fw =
        Firewall::new(vec![rule("t", None, Action::GlobalCap { max: 5 })], vec![]).expect("valid");
    let mut s = FirewallState::new(2);
    for i in 0..3 {
        s.on_connection_open(ip(&format!("10.0.1.{i}")));
    }
    let v = with_request(HEAD, |req| {
        fw.evaluate(&mut s, req, ip("10.0.2.1"), None, 0, 0, None)
    });
    assert_eq!(v, Verdict::GlobalCap);
}

#[test]
fn bucket_map_stays_bounded() {
    let rules = vec![rule("rl", None, rate(LimitScope::Address, 1, 1000, 1))];
    let fw = Firewall::new(rules, vec![]).expect("valid");
    let mut s = FirewallState::new(1).with_max_tracked_addresses(100);
    with_request(HEAD, |req| {
        for i in 0..1_000u32 {
            let peer = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert_eq!(
                fw.evaluate(&mut s, req, peer, None, 0, 0, None),
                Verdict::Allow
            );
        }
        assert_eq!(s.tracked_addresses(), 100);
        // A second later every bucket is full again: the next new address sweeps them.
        let peer = ip("10.9.9.9");
        fw.evaluate(&mut s, req, peer, None, 1_000, 0, None);
        assert_eq!(s.tracked_addresses(), 1);
        fw.evaluate(&mut s, req, peer, None, 1_000, 0, None);
        fw.sweep(&mut s, 1_500);
        assert_eq!(s.tracked_addresses(), 1, "not full again yet");
        fw.sweep(&mut s, 2_000);
        assert_eq!(s.tracked_addresses(), 0);
    });
}

#[test]
fn new_rules_reset_buckets() {
    let rules = || vec![rule("rl", None, rate(LimitScope::Address, 1, 60_000, 1))];
    let fw = Firewall::new(rules(), vec![]).expect("valid");
    let mut s = FirewallState::new(1);
    let peer = ip("10.0.0.1");
    with_request(HEAD, |req| {
        assert_eq!(
            fw.evaluate(&mut s, req, peer, None, 0, 0, None),
            Verdict::Allow
        );
        assert!(matches!(
            fw.evaluate(&mut s, req, peer, None, 0, 0, None),
            Verdict::RateLimited { .. }
        ));
        // A clone (another worker's copy, or after a list edit) keeps the buckets.
        let copy = fw.clone();
        assert!(matches!(
            copy.evaluate(&mut s, req, peer, None, 0, 0, None),
            Verdict::RateLimited { .. }
        ));
        let reloaded = Firewall::new(rules(), vec![]).expect("valid");
        assert_eq!(
            reloaded.evaluate(&mut s, req, peer, None, 0, 0, None),
            Verdict::Allow
        );
    });
}

#[test]
fn traceback_lists_evaluated_rules_in_order() {
    let mut scoped = rule("other-route", None, Action::Deny);
    scoped.routes = Some(vec!["news".to_owned()]);
    let rules = vec![
        rule(
            "bad-origin",
            Some(header("Origin", eq("https://app.example.com"), true)),
            Action::Deny,
        ),
        scoped,
        rule("rate", None, rate(LimitScope::Address, 10, 1000, 10)),
        rule(
            "ws-path",
            Some(Criterion::Path(Matcher::new(prefix("/ws")))),
            Action::Allow,
        ),
        rule("never-reached", None, Action::Deny),
    ];
    let fw = Firewall::new(rules, vec![]).expect("valid");
    let mut s = FirewallState::new(1);
    let mut trace = Vec::new();
    let v = with_request(HEAD, |req| {
        fw.evaluate(
            &mut s,
            req,
            ip("10.0.0.1"),
            Some("chat"),
            0,
            0,
            Some(&mut trace),
        )
    });
    assert_eq!(v, Verdict::Allow);
    let named: Vec<(&str, &str)> = trace
        .iter()
        .map(|t| (fw.rule_name(t.rule), t.outcome.as_str()))
        .collect();
    assert_eq!(
        named,
        vec![
            ("bad-origin", "no_match"),
            ("rate", "passed"),
            ("ws-path", "decided"),
        ]
    );
}

#[test]
fn responses() {
    let mut out = Vec::new();
    Verdict::RateLimited {
        retry_after_secs: 7,
    }
    .write_response(&mut out);
    let text = String::from_utf8(out.clone()).expect("ascii");
    assert!(
        text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\nRetry-After: 7\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\ntoo many requests\n"), "{text}");
    out.clear();
    Verdict::PerAddressCap.write_response(&mut out);
    let text = String::from_utf8(out.clone()).expect("ascii");
    assert!(text.contains("Content-Length: 21\r\n") && text.ends_with("too many connections\n"));
    out.clear();
    Verdict::Respond {
        status: 451,
        body: Arc::from("gone"),
    }
    .write_response(&mut out);
    assert_eq!(
        out,
        b"HTTP/1.1 451 Unavailable For Legal Reasons\r\nContent-Type: text/plain; charset=utf-8\r\n\
          Content-Length: 4\r\nConnection: close\r\n\r\ngone"
    );
    out.clear();
    Verdict::Drop.write_response(&mut out);
    Verdict::Allow.write_response(&mut out);
    assert!(out.is_empty());
    Verdict::Deny.write_response(&mut out);
    assert!(out.starts_with(b"HTTP/1.1 403 "));
    assert_eq!(Verdict::GlobalCap.status(), Some(503));
    assert_eq!(Verdict::Drop.status(), None);
    assert_eq!(Verdict::PerAddressCap.reason(), "firewall_address_cap");
}

#[test]
fn construction_errors() {
    let err = |rules: Vec<Rule>, lists: Vec<NetList>| {
        Firewall::new(rules, lists).expect_err("should be refused")
    };
    assert!(matches!(
        err(
            vec![rule(
                "a",
                Some(Criterion::ClientIn("x".into())),
                Action::Deny
            )],
            vec![]
        ),
        FirewallError::UnknownList { .. }
    ));
    assert!(matches!(
        err(
            vec![rule(
                "a",
                Some(header("UA", re("(unclosed"), false)),
                Action::Deny
            )],
            vec![]
        ),
        FirewallError::Regex { .. }
    ));
    assert!(matches!(
        err(
            vec![rule(
                "a",
                Some(header("Bad Name", MatchOp::Exists, false)),
                Action::Deny
            )],
            vec![]
        ),
        FirewallError::HeaderName { .. }
    ));
    assert!(matches!(
        err(
            vec![rule("a", None, Action::Deny), rule("a", None, Action::Drop)],
            vec![]
        ),
        FirewallError::DuplicateRule(_)
    ));
    assert!(matches!(
        err(vec![], vec![NetList::new("l", []), NetList::new("l", [])]),
        FirewallError::DuplicateList(_)
    ));
    for action in [
        Action::Respond {
            status: 500,
            body: String::new(),
        },
        Action::Respond {
            status: 200,
            body: "x".repeat(MAX_RESPONSE_BODY + 1),
        },
        rate(LimitScope::Address, 0, 1000, 1),
        rate(LimitScope::Global, 1, 1000, 0),
        Action::AddressCap { max: 0 },
    ] {
        assert!(matches!(
            err(vec![rule("a", None, action)], vec![]),
            FirewallError::Action { .. }
        ));
    }
    assert!(Firewall::empty().is_empty());
}
