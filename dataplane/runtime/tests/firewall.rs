//! The edge firewall against the real `wsedge` binary (two workers), with real clients bound
//! to several loopback source addresses: every action and criterion, route scoping, list
//! expiry, a live list edit through the control socket, per-address and global limits across
//! workers, and the debug switch (nothing of it shows when it is off).
//!
//! Timers are generous (rate limits refill per hour, expiries are seconds away): nothing
//! here measures speed.

mod common;
mod firewall_support;

use std::time::Duration;

use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use wsedge_command::wire;

use common::origins::EchoOrigin;
use common::raw::upgrade_head;
use common::{Config, Proxy, Route, assert_echo, within, ws_request};
use firewall_support::{
    Reply, SocketDir, apply_config, attempt, lo, log_of, refused_status, unix_now, with_tables,
    worker_of, ws_from, ws_from_req,
};

const HOST: &str = "app.example";

/// A proxy (two workers) with one route `chat` on "/" to `origin`, plus `tables`.
async fn proxy_with(origin: &EchoOrigin, tables: &str) -> Proxy {
    let config = Config::new().route(Route::new("chat", &[origin.addr]));
    Proxy::start_toml(&with_tables(&config, tables)).await
}

/// Retries `attempt` of `head` from `ip` until it is answered with `status` (a closed
/// connection takes a moment to be counted closed); panics after 5 s.
async fn until_status(
    ip: std::net::Ipv4Addr,
    addr: std::net::SocketAddr,
    head: &str,
    status: u16,
) -> Reply {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let reply = attempt(ip, addr, head).await;
        if matches!(&reply, Reply::Answer { head, .. } if head.status() == status) {
            return reply;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still no {status} from {ip} after 5 s; last: {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A WebSocket connection from `ip`, retried while refused (a connection closed just
/// before takes a moment to be counted closed); panics after 5 s.
async fn ws_admitted(ip: std::net::Ipv4Addr, addr: std::net::SocketAddr, path: &str) -> common::Ws {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match ws_from_req(ip, addr, ws_request(&format!("ws://{addr}{path}"))).await {
            Ok((ws, _)) => return ws,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "still refused from {ip} after 5 s: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_answers_403_and_never_contacts_the_origin() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let mut proxy = proxy_with(
            &origin,
            r#"
[[rule]]
name = "no-admin"
when = { field = "path", starts_with = "/admin" }
action = "deny"
"#,
        )
        .await;
        let reply = attempt(lo(2), proxy.addr, &upgrade_head("/admin/x", HOST, &[])).await;
        assert_eq!(reply.status(), 403);
        assert!(reply.head().has_token("connection", "close"));
        let line = log_of(&mut proxy, lo(2), "firewall_deny").await;
        assert_eq!(line["status"], 403);
        assert_eq!(line["route"], "chat");
        assert_eq!(line["origin"], Value::Null);
        assert_eq!(
            origin.accepted(),
            0,
            "a denied handshake must not reach the origin"
        );

        let mut ws = ws_from(lo(2), proxy.addr, "/chat").await;
        assert_echo(&mut ws, Message::text("allowed")).await;
        assert_eq!(origin.accepted(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_closes_without_any_response() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let mut proxy = proxy_with(
            &origin,
            r#"
[[rule]]
name = "drop-scanners"
when = { header = "X-Scanner", exists = true }
action = "drop"
"#,
        )
        .await;
        let head = upgrade_head("/chat", HOST, &[("X-Scanner", "1")]);
        let reply = attempt(lo(3), proxy.addr, &head).await;
        assert!(
            matches!(reply, Reply::Closed),
            "expected a silent close, got {reply:?}"
        );
        let line = log_of(&mut proxy, lo(3), "firewall_drop").await;
        assert_eq!(line["bytes_to_client"], 0);
        assert_eq!(origin.accepted(), 0);

        let reply = attempt(lo(3), proxy.addr, &upgrade_head("/chat", HOST, &[])).await;
        assert_eq!(reply.status(), 101);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn respond_sends_the_configured_status_and_body() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let mut proxy = proxy_with(
            &origin,
            r#"
[[rule]]
name = "token-required"
when = { query = "token", exists = false }
action = { respond = { status = 401, body = "token required\n" } }
"#,
        )
        .await;
        let reply = attempt(lo(2), proxy.addr, &upgrade_head("/chat?a=1", HOST, &[])).await;
        assert_eq!(reply.status(), 401);
        assert_eq!(reply.body_text(), "token required\n");
        assert_eq!(
            reply.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        let line = log_of(&mut proxy, lo(2), "firewall_respond").await;
        assert_eq!(line["status"], 401);
        assert_eq!(origin.accepted(), 0);

        let mut ws = ws_from(lo(2), proxy.addr, "/chat?token=abc").await;
        assert_echo(&mut ws, Message::text("with token")).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_per_address_passes_the_burst_then_429_with_retry_after() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let mut proxy = proxy_with(
            &origin,
            r#"
[[rule]]
name = "handshake-rate"
action = { rate_limit = { per = "address", rate = 1, every = "1h", burst = 3 } }
"#,
        )
        .await;
        let head = upgrade_head("/chat", HOST, &[]);
        for i in 0..3 {
            let reply = attempt(lo(2), proxy.addr, &head).await;
            assert_eq!(reply.status(), 101, "handshake {i} of the burst");
        }
        let reply = attempt(lo(2), proxy.addr, &head).await;
        assert_eq!(reply.status(), 429);
        assert_eq!(reply.body_text(), "too many requests\n");
        let retry: u64 = reply
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .expect("Retry-After in seconds");
        assert!((1..=3600).contains(&retry), "Retry-After {retry}");
        let line = log_of(&mut proxy, lo(2), "firewall_rate_limited").await;
        assert_eq!(line["status"], 429);

        // Another address (on the same worker: per-address, not per-worker) has its own bucket.
        assert_eq!(worker_of(lo(2), 2), worker_of(lo(3), 2));
        for i in 0..3 {
            let reply = attempt(lo(3), proxy.addr, &head).await;
            assert_eq!(reply.status(), 101, "handshake {i} from 127.0.0.3");
        }
        assert_eq!(attempt(lo(3), proxy.addr, &head).await.status(), 429);
        assert_eq!(origin.accepted(), 6);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_rate_limit_is_shared_out_between_workers() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let mut proxy = proxy_with(
            &origin,
            r#"
[[rule]]
name = "global-rate"
action = { rate_limit = { per = "global", rate = 1, every = "1h", burst = 4 } }
"#,
        )
        .await;
        let head = upgrade_head("/chat", HOST, &[]);
        // 127.0.0.2..=9: four addresses on each worker. Each worker holds half the burst.
        let mut passed = [0u32; 2];
        for round in 0..2 {
            for last in 2..=9u8 {
                let reply = attempt(lo(last), proxy.addr, &head).await;
                match reply.status() {
                    101 => passed[worker_of(lo(last), 2) as usize] += 1,
                    429 => assert!(reply.header("retry-after").is_some(), "Retry-After"),
                    s => panic!("round {round}, 127.0.0.{last}: unexpected status {s}"),
                }
            }
        }
        assert_eq!(
            passed,
            [2, 2],
            "burst 4 shared out: 2 handshakes per worker"
        );
        // Every 101 was logged by the worker the steering arithmetic names.
        for last in 2..=9u8 {
            let ip = lo(last);
            let line = proxy
                .wait_log(
                    &format!("any line from {ip}"),
                    firewall_support::LOG_WAIT,
                    |v| {
                        v["client"]
                            .as_str()
                            .is_some_and(|c| c.starts_with(&format!("{ip}:")))
                    },
                )
                .await;
            assert_eq!(line["worker"], worker_of(ip, 2), "worker of {ip}");
        }
        log_of(&mut proxy, lo(2), "firewall_rate_limited").await;
        assert_eq!(origin.accepted(), 4);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_cap_limits_live_connections_per_address() {
    within(40, async {
        let origin = EchoOrigin::start().await;
        let mut proxy = proxy_with(
            &origin,
            r#"
[[rule]]
name = "per-address"
action = { address_cap = 3 }
"#,
        )
        .await;
        let head = upgrade_head("/chat", HOST, &[]);
        // Three live connections from each of .2, .3 (same worker) and .4 (the other one).
        let mut held = Vec::new();
        for last in [2u8, 3, 4] {
            for _ in 0..3 {
                held.push((last, ws_from(lo(last), proxy.addr, "/chat").await));
            }
        }
        let reply = attempt(lo(2), proxy.addr, &head).await;
        assert_eq!(reply.status(), 429, "the 4th connection from 127.0.0.2");
        assert_eq!(reply.body_text(), "too many connections\n");
        assert_eq!(reply.header("retry-after"), None);
        let line = log_of(&mut proxy, lo(2), "firewall_address_cap").await;
        assert_eq!(line["status"], 429);
        assert_eq!(attempt(lo(4), proxy.addr, &head).await.status(), 429);
        // A fourth address still gets in, and the held connections all still relay.
        let mut fresh = ws_from(lo(5), proxy.addr, "/chat").await;
        assert_echo(&mut fresh, Message::text("fresh")).await;
        for (last, ws) in held.iter_mut() {
            assert_echo(ws, Message::text(format!("held from .{last}"))).await;
        }
        // Closing one of .2's connections lets .2 in again (and only once).
        let (_, mut ws) = held.remove(0);
        ws.close(None).await.expect("close");
        drop(ws);
        let mut again = ws_admitted(lo(2), proxy.addr, "/chat").await;
        assert_echo(&mut again, Message::text("in again")).await;
        let reply = attempt(lo(2), proxy.addr, &head).await;
        assert_eq!(reply.status(), 429, "three live from 127.0.0.2 again");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_cap_answers_503_when_full() {
    within(40, async {
        let origin = EchoOrigin::start().await;
        let mut proxy = proxy_with(
            &origin,
            r#"
[[rule]]
name = "total"
action = { global_cap = 4 }
"#,
        )
        .await;
        let head = upgrade_head("/chat", HOST, &[]);
        // 127.0.0.2..=9, one connection each, held: two per worker get in (4 shared out).
        let mut held = Vec::new();
        let mut refused = Vec::new();
        for last in 2..=9u8 {
            let result =
                ws_from_req(lo(last), proxy.addr, ws_request(&proxy.ws_url("/chat"))).await;
            match result {
                Ok((ws, _)) => held.push((last, ws)),
                Err(e) => {
                    assert_eq!(refused_status(Err(e)), 503, "127.0.0.{last}");
                    refused.push(last);
                }
            }
        }
        assert_eq!(
            held.len(),
            4,
            "accepted: {:?}",
            held.iter().map(|h| h.0).collect::<Vec<_>>()
        );
        for w in 0..2 {
            let on_w = held
                .iter()
                .filter(|(l, _)| worker_of(lo(*l), 2) == w)
                .count();
            assert_eq!(on_w, 2, "live connections on worker {w}");
        }
        let line = log_of(&mut proxy, lo(refused[0]), "firewall_global_cap").await;
        assert_eq!(line["status"], 503);
        for (_, ws) in held.iter_mut() {
            assert_echo(ws, Message::text("still here")).await;
        }
        // Closing everything makes room again.
        for (_, mut ws) in held.drain(..) {
            let _ = ws.close(None).await;
        }
        until_status(lo(refused[0]), proxy.addr, &head, 101).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_allowlist_refuses_a_foreign_page() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let mut proxy = proxy_with(
            &origin,
            r#"
[[rule]]
name = "only-my-app"
when = { header = "Origin", not_equals = "https://app.example" }
action = "deny"
"#,
        )
        .await;
        let url = proxy.ws_url("/chat");
        let mut foreign = ws_request(&url);
        foreign
            .headers_mut()
            .insert("Origin", "https://evil.example".parse().expect("value"));
        assert_eq!(
            refused_status(ws_from_req(lo(2), proxy.addr, foreign).await),
            403
        );
        log_of(&mut proxy, lo(2), "firewall_deny").await;
        // No Origin at all is not the right Origin either.
        let reply = attempt(lo(3), proxy.addr, &upgrade_head("/chat", HOST, &[])).await;
        assert_eq!(reply.status(), 403);
        assert_eq!(origin.accepted(), 0);

        let mut mine = ws_request(&url);
        mine.headers_mut()
            .insert("Origin", "https://app.example".parse().expect("value"));
        let (mut ws, resp) = ws_from_req(lo(2), proxy.addr, mine)
            .await
            .expect("the app's own Origin passes");
        assert_eq!(resp.status().as_u16(), 101);
        assert_echo(&mut ws, Message::text("from the app")).await;
        let seen = origin.requests();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].get("origin"), Some("https://app.example"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn criteria_combine_with_all_any_not_and_regexes() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let mut proxy = proxy_with(
            &origin,
            r#"
[[rule]]
name = "bots"
when = { any = [ { header = "User-Agent", matches = "(?i)(bot|crawler)" },
                 { field = "host", starts_with = "evil." } ] }
action = "deny"

[[rule]]
name = "known-paths"
when = { not = { field = "path", matches = "^/(chat|api)(/|$)" } }
action = { respond = { status = 404, body = "no such path\n" } }

[[rule]]
name = "debug-needs-admin"
when = { all = [ { field = "method", equals = "GET" },
                 { query = "debug", equals = "1" },
                 { not = { header = "X-Admin", equals = "yes" } } ] }
action = { respond = { status = 403, body = "admin only\n" } }
"#,
        )
        .await;
        let addr = proxy.addr;
        let ask = |path: &str, host: &str, extra: &[(&str, &str)]| upgrade_head(path, host, extra);

        let bot = attempt(
            lo(2),
            addr,
            &ask("/chat", HOST, &[("User-Agent", "FooBot/1.0")]),
        )
        .await;
        assert_eq!(bot.status(), 403);
        assert_eq!(bot.header("content-type"), Some("text/plain"));
        log_of(&mut proxy, lo(2), "firewall_deny").await;
        let crawler = attempt(
            lo(3),
            addr,
            &ask("/chat", HOST, &[("User-Agent", "a CRAWLER")]),
        )
        .await;
        assert_eq!(crawler.status(), 403);
        let evil = attempt(lo(4), addr, &ask("/chat", "evil.example", &[])).await;
        assert_eq!(evil.status(), 403);

        let unknown = attempt(lo(5), addr, &ask("/other", HOST, &[])).await;
        assert_eq!(unknown.status(), 404);
        assert_eq!(unknown.body_text(), "no such path\n");
        // The regex is anchored: "/chatty" is not "/chat".
        assert_eq!(
            attempt(lo(5), addr, &ask("/chatty", HOST, &[]))
                .await
                .status(),
            404
        );

        let debug = attempt(lo(6), addr, &ask("/api/x?debug=1", HOST, &[])).await;
        assert_eq!(debug.status(), 403);
        assert_eq!(debug.body_text(), "admin only\n");
        let admin = attempt(
            lo(6),
            addr,
            &ask("/api/x?debug=1", HOST, &[("X-Admin", "yes")]),
        )
        .await;
        assert_eq!(admin.status(), 101);
        let other_value = attempt(lo(6), addr, &ask("/api/x?debug=2", HOST, &[])).await;
        assert_eq!(other_value.status(), 101);
        let plain = attempt(
            lo(7),
            addr,
            &ask("/chat", HOST, &[("User-Agent", "Mozilla/5.0")]),
        )
        .await;
        assert_eq!(plain.status(), 101);
        assert_eq!(
            origin.accepted(),
            3,
            "only the three admitted handshakes reach the origin"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_apply_only_to_their_routes() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let config = Config::new()
            .route(Route::new("chat", &[origin.addr]).path("/chat"))
            .route(Route::new("api", &[origin.addr]).path("/api"));
        let tables = r#"
[[rule]]
name = "chat-needs-room"
routes = ["chat"]
when = { query = "room", exists = false }
action = "deny"
"#;
        let mut proxy = Proxy::start_toml(&with_tables(&config, tables)).await;
        let reply = attempt(lo(2), proxy.addr, &upgrade_head("/chat", HOST, &[])).await;
        assert_eq!(reply.status(), 403);
        let line = log_of(&mut proxy, lo(2), "firewall_deny").await;
        assert_eq!(line["route"], "chat");
        let reply = attempt(lo(2), proxy.addr, &upgrade_head("/chat?room=1", HOST, &[])).await;
        assert_eq!(reply.status(), 101);
        // The same request on the other route is not the rule's business.
        let reply = attempt(lo(2), proxy.addr, &upgrade_head("/api", HOST, &[])).await;
        assert_eq!(reply.status(), 101);
        assert_eq!(origin.accepted(), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_entry_stops_blocking_when_it_expires() {
    within(40, async {
        let origin = EchoOrigin::start().await;
        let expires = unix_now() + 4;
        let tables = format!(
            r#"
[[list]]
name = "blocked"
entries = [ {{ cidr = "127.0.0.7/32", expires = {expires} }}, "127.0.0.16/28" ]

[[rule]]
name = "blocklist"
when = {{ client_in = "blocked" }}
action = "deny"
"#
        );
        let mut proxy = proxy_with(&origin, &tables).await;
        let head = upgrade_head("/chat", HOST, &[]);
        assert!(
            unix_now() < expires,
            "the proxy took too long to start to see the entry before it expires"
        );
        assert_eq!(attempt(lo(7), proxy.addr, &head).await.status(), 403);
        log_of(&mut proxy, lo(7), "firewall_deny").await;
        assert_eq!(attempt(lo(20), proxy.addr, &head).await.status(), 403);
        assert_eq!(attempt(lo(8), proxy.addr, &head).await.status(), 101);

        // A second past the expiry, .7 gets in; the entry without expiry still blocks.
        while unix_now() <= expires {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(attempt(lo(7), proxy.addr, &head).await.status(), 101);
        assert_eq!(attempt(lo(20), proxy.addr, &head).await.status(), 403);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_list_edit_applies_to_new_connections_only() {
    within(40, async {
        let origin = EchoOrigin::start().await;
        let dir = SocketDir::new();
        let config = Config::new().route(Route::new("chat", &[origin.addr]));
        let tables = |entries: &str| {
            format!(
                "[[list]]\nname = \"blocked\"\nentries = [{entries}]\n\n[[rule]]\nname = \
                 \"blocklist\"\nwhen = {{ client_in = \"blocked\" }}\naction = \"deny\"\n\n{}",
                dir.control_table()
            )
        };
        let mut proxy = Proxy::start_toml(&with_tables(&config, &tables(""))).await;
        let head = upgrade_head("/chat", HOST, &[]);
        let mut live = ws_from(lo(5), proxy.addr, "/chat").await;
        assert_echo(&mut live, Message::text("before")).await;

        let answer = apply_config(
            &dir.socket(),
            with_tables(&config, &tables("\"127.0.0.5/32\"")),
        )
        .await;
        assert!(
            matches!(answer, wire::Response::Applied(_)),
            "apply_config answered {answer:?}"
        );
        let reply = until_status(lo(5), proxy.addr, &head, 403).await;
        assert_eq!(reply.status(), 403);
        log_of(&mut proxy, lo(5), "firewall_deny").await;
        // The connection established before the edit is untouched; others still get in.
        assert_echo(&mut live, Message::text("after")).await;
        assert_eq!(attempt(lo(6), proxy.addr, &head).await.status(), 101);

        // And removing the entry lets the address back in.
        let answer = apply_config(&dir.socket(), with_tables(&config, &tables(""))).await;
        assert!(matches!(answer, wire::Response::Applied(_)), "{answer:?}");
        until_status(lo(5), proxy.addr, &head, 101).await;
        assert_echo(&mut live, Message::text("still")).await;
    })
    .await;
}

/// Two routes to the same origin, `/quiet` without debug and `/loud` with it, and two rules:
/// a generous rate limit (passes) and a deny on `?x`.
async fn debug_proxy(origin: &EchoOrigin) -> Proxy {
    let config = Config::new()
        .route(Route::new("quiet", &[origin.addr]).path("/quiet"))
        .route(
            Route::new("loud", &[origin.addr])
                .path("/loud")
                .option("debug", "true"),
        );
    let tables = r#"
[[rule]]
name = "tag"
action = { rate_limit = { per = "address", rate = 1000, every = "1s" } }

[[rule]]
name = "deny-x"
when = { query = "x", exists = true }
action = "deny"
"#;
    Proxy::start_toml(&with_tables(&config, tables)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_off_leaks_nothing() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let mut proxy = debug_proxy(&origin).await;
        let pragma = [("Pragma", "wsedge-debug")];
        let ok = attempt(lo(2), proxy.addr, &upgrade_head("/quiet", HOST, &pragma)).await;
        assert_eq!(ok.status(), 101);
        assert_eq!(ok.debug_headers(), Vec::new(), "{}", ok.head().text());
        let denied = attempt(
            lo(3),
            proxy.addr,
            &upgrade_head("/quiet?x=1", HOST, &pragma),
        )
        .await;
        assert_eq!(denied.status(), 403);
        assert_eq!(
            denied.debug_headers(),
            Vec::new(),
            "{}",
            denied.head().text()
        );

        let line = log_of(&mut proxy, lo(3), "firewall_deny").await;
        assert!(line.get("traceback").is_none(), "traceback logged: {line}");
        let ip = lo(2);
        let line = proxy
            .wait_log("the 101's line", firewall_support::LOG_WAIT, |v| {
                v["status"] == 101
                    && v["client"]
                        .as_str()
                        .is_some_and(|c| c.starts_with(&format!("{ip}:")))
            })
            .await;
        assert!(line.get("traceback").is_none(), "traceback logged: {line}");
        // The origin sees no trace of the pragma's effect either.
        let seen = origin.requests();
        assert!(
            seen.iter()
                .all(|r| !r.raw.to_ascii_lowercase().contains("x-wsedge"))
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_on_names_route_origin_rules_and_worker() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let mut proxy = debug_proxy(&origin).await;
        let pragma = [("Pragma", "wsedge-debug")];

        let ok = attempt(lo(2), proxy.addr, &upgrade_head("/loud", HOST, &pragma)).await;
        assert_eq!(ok.status(), 101);
        assert_eq!(ok.header("x-wsedge-route"), Some("loud"));
        let origin_addr = origin.addr.to_string();
        assert_eq!(ok.header("x-wsedge-origin"), Some(origin_addr.as_str()));
        let worker = worker_of(lo(2), 2).to_string();
        assert_eq!(ok.header("x-wsedge-worker"), Some(worker.as_str()));
        let rules = ok.header("x-wsedge-rules").unwrap_or("");
        assert!(rules.starts_with("tag=passed"), "{}", ok.head().text());

        let denied = attempt(lo(4), proxy.addr, &upgrade_head("/loud?x=1", HOST, &pragma)).await;
        assert_eq!(denied.status(), 403);
        assert_eq!(denied.header("x-wsedge-route"), Some("loud"));
        assert_eq!(denied.header("x-wsedge-origin"), Some("-"));
        let rules = denied.header("x-wsedge-rules").unwrap_or("");
        assert!(
            rules.ends_with("deny-x=decided"),
            "{}",
            denied.head().text()
        );
        let worker = worker_of(lo(4), 2).to_string();
        assert_eq!(denied.header("x-wsedge-worker"), Some(worker.as_str()));

        // The access log has the full traceback, unmatched rules included.
        let line = log_of(&mut proxy, lo(4), "firewall_deny").await;
        assert_eq!(
            line["traceback"],
            serde_json::json!(["route:loud", "rule:tag=passed", "rule:deny-x=decided"])
        );
        // Without the pragma: no headers, but the log still has the traceback.
        let plain = attempt(lo(5), proxy.addr, &upgrade_head("/loud", HOST, &[])).await;
        assert_eq!(plain.status(), 101);
        assert_eq!(plain.debug_headers(), Vec::new());
        let ip = lo(5);
        let line = proxy
            .wait_log("the 101's line", firewall_support::LOG_WAIT, |v| {
                v["status"] == 101
                    && v["client"]
                        .as_str()
                        .is_some_and(|c| c.starts_with(&format!("{ip}:")))
            })
            .await;
        assert_eq!(
            line["traceback"],
            serde_json::json!(["route:loud", "rule:tag=passed", "rule:deny-x=no_match"])
        );
    })
    .await;
}

/// `X-Wsedge-Rules` names the rules that matched (passed or decided), not every rule
/// evaluated: the unmatched ones are only in the access log's traceback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_rules_header_names_only_matched_rules() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let proxy = debug_proxy(&origin).await;
        let pragma = [("Pragma", "wsedge-debug")];
        let ok = attempt(lo(2), proxy.addr, &upgrade_head("/loud", HOST, &pragma)).await;
        assert_eq!(ok.status(), 101);
        assert_eq!(
            ok.header("x-wsedge-rules"),
            Some("tag=passed"),
            "{}",
            ok.head().text()
        );
        let denied = attempt(lo(4), proxy.addr, &upgrade_head("/loud?x=1", HOST, &pragma)).await;
        assert_eq!(
            denied.header("x-wsedge-rules"),
            Some("tag=passed, deny-x=decided")
        );
    })
    .await;
}
