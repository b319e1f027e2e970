//! Issue 12, defects 3, 5 and 6, against the real binary (two workers) and a real origin:
//! a route the configuration closes stays closed whatever the path looks like, a Host that
//! is not `host[:port]` is refused, and the client's forwarding headers (X-Real-IP among
//! them) never reach the origin unless the peer is a trusted proxy.
//!
//! The origin here is deliberately lenient, like many servers: it decodes every
//! percent-escape, reads `\` as `/`, drops `;parameters` and resolves dot-segments before
//! deciding what to serve, and it serves the closed path (`/internal`) to whoever asks. It
//! records every request line it receives, so each test can assert that the closed content
//! never reached the client and that the origin was never asked for it.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::raw::{Head, OP_TEXT, RawConn, accept_for, head_end, http_exchange, upgrade_head};
use common::{Config, Proxy, Route, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// What the origin serves for the closed path; must never reach a client.
const SECRET: &str = "SECRET-INTERNAL-CONTENT";

// ---------------------------------------------------------------------------------------------
// The lenient origin
// ---------------------------------------------------------------------------------------------

/// The path a lenient origin serves for `target`: everything percent-decoded, `\` read as
/// `/`, `;parameters` dropped from each segment (as servlet containers do), empty segments
/// merged, dot-segments resolved (clamped at the root).
fn origin_view(target: &str) -> String {
    let path = target.split(['?', '#']).next().unwrap_or("");
    let bytes = path.as_bytes();
    let mut decoded = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = |k: usize| {
            bytes
                .get(k)
                .and_then(|&b| (b as char).to_digit(16))
                .map(|d| d as u8)
        };
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                decoded.push(hi << 4 | lo);
                i += 3;
            }
            (b, _, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    let decoded = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut kept: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg.split(';').next().unwrap_or("") {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            name => kept.push(name),
        }
    }
    format!("/{}", kept.join("/"))
}

#[derive(Debug)]
struct LenientOrigin {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Head>>>,
    task: JoinHandle<()>,
}

impl Drop for LenientOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LenientOrigin {
    async fn start() -> LenientOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (a, r) = (accepted.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(tcp, r.clone()));
            }
        });
        LenientOrigin {
            addr,
            accepted,
            requests,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<Head> {
        self.requests.lock().expect("lock").clone()
    }

    /// Every request line received so far.
    fn request_lines(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|h| h.start_line.clone())
            .collect()
    }

    /// Panics if any request it received resolves to the closed path.
    fn assert_never_asked_for_internal(&self) {
        for line in self.request_lines() {
            let target = line.split(' ').nth(1).unwrap_or("");
            assert!(
                !origin_view(target).starts_with("/internal"),
                "the origin was asked for the closed path: {line:?}"
            );
        }
    }
}

/// Serves every request of a connection: an upgrade gets 101 and one text frame (then the
/// connection is held until the peer closes), anything else 200 with the content.
async fn serve(mut tcp: TcpStream, requests: Arc<Mutex<Vec<Head>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        while let Some(end) = head_end(&buf) {
            let head = Head::parse(&buf[..end]);
            buf.drain(..end);
            requests.lock().expect("lock").push(head.clone());
            let view = origin_view(head.target());
            let content = if view.starts_with("/internal") {
                format!("{SECRET} for {view}")
            } else {
                format!("served {view}")
            };
            if let Some(key) = head.all("sec-websocket-key").first() {
                let mut out = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    accept_for(key)
                )
                .into_bytes();
                out.extend_from_slice(&common::raw::server_frame(OP_TEXT, content.as_bytes()));
                if tcp.write_all(&out).await.is_err() {
                    return;
                }
                while let Ok(n) = tcp.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                }
                return;
            }
            let close = head.has_token("connection", "close");
            let out = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{content}",
                content.len(),
                if close { "Connection: close\r\n" } else { "" }
            );
            if tcp.write_all(out.as_bytes()).await.is_err() || close {
                let _ = tcp.shutdown().await;
                return;
            }
        }
        match tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    }
}

#[test]
fn origin_view_is_lenient() {
    assert_eq!(origin_view("/x/../internal"), "/internal");
    assert_eq!(origin_view("/%69nternal?x"), "/internal");
    assert_eq!(origin_view("/%2e%2e/internal"), "/internal");
    assert_eq!(origin_view("//internal"), "/internal");
    assert_eq!(origin_view("/%2Finternal"), "/internal");
    assert_eq!(origin_view("/x\\..\\internal"), "/internal");
    assert_eq!(origin_view("/x/..;/internal"), "/internal");
    assert_eq!(origin_view("/;x/internal"), "/internal");
    assert_eq!(origin_view("/ws/./chat"), "/ws/chat");
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Two ways an operator closes `/internal` (docs/firewall.md): a route for it whose rule
/// denies everything, or a path rule on the catch-all route.
fn closed_by_route(origin: SocketAddr) -> String {
    let config = Config::new()
        .route(Route::new("public", &[origin]))
        .route(Route::new("internal", &[origin]).path("/internal"));
    format!(
        "{}\n[[rule]]\nname = \"closed\"\nroutes = [\"internal\"]\naction = \"deny\"\n",
        config.to_toml()
    )
}

fn closed_by_path_rule(origin: SocketAddr, extra: &str) -> String {
    let config = Config::new().route(Route::new("public", &[origin]));
    format!(
        "{}\n{extra}\n[[rule]]\nname = \"closed\"\nwhen = {{ field = \"path\", starts_with = \"/internal\" }}\naction = \"deny\"\n",
        config.to_toml()
    )
}

/// A plain GET and a WebSocket upgrade for `target`.
fn requests_for(target: &str) -> [(String, String); 2] {
    [
        (
            "plain".to_string(),
            format!("GET {target} HTTP/1.1\r\nHost: app.test\r\nAccept: */*\r\n\r\n"),
        ),
        ("upgrade".to_string(), upgrade_head(target, "app.test", &[])),
    ]
}

/// Sends each trick (as plain GET and as upgrade) and asserts the answer's status and that
/// neither the answer nor anything after it carries the closed content.
async fn assert_tricks_refused(proxy: SocketAddr, tricks: &[(&str, u16)]) {
    for &(target, status) in tricks {
        for (kind, request) in requests_for(target) {
            let (head, body) = http_exchange(proxy, request.as_bytes()).await;
            let text = format!("{}{}", head.text(), String::from_utf8_lossy(&body));
            assert!(
                !text.contains(SECRET),
                "{kind} {target}: the client received the closed content:\n{text}"
            );
            assert_eq!(head.status(), status, "{kind} {target}:\n{text}");
        }
    }
}

/// The attacker's paths with the answer each gets: 403 where the path normalizes to the
/// closed route, 400 where it cannot be normalized safely.
const TRICKS: &[(&str, u16)] = &[
    ("/internal", 403),
    ("/x/../internal", 403),
    ("/%69nternal", 403),
    ("/%69%6E%74%65%72%6e%61%6c/x", 403),
    ("/x/%2e%2e/internal", 403),
    ("/x/.%2E/internal", 403),
    ("//internal", 403),
    ("///internal//x", 403),
    ("/internal/./", 403),
    ("/./internal", 403),
    ("/%2e/internal", 403),
    ("/%2e%2e/internal", 400),
    ("/../internal", 400),
    ("/..", 400),
    ("/%2Finternal", 400),
    ("/%2finternal", 400),
    ("/x%2F..%2Finternal", 400),
    ("/x%5C..%5Cinternal", 400),
    ("/x\\..\\internal", 400),
    ("/x/..;/internal", 400),
    ("/;x/internal", 400),
    ("/%zz/../internal", 400),
    ("/internal%00", 400),
    ("/x#/../internal", 400),
];

// ---------------------------------------------------------------------------------------------
// Defect 3: closed routes and path tricks
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_closed_by_a_rule_stays_closed_whatever_the_path_looks_like() {
    within(90, async {
        let origin = LenientOrigin::start().await;
        let mut proxy = Proxy::start_toml(&closed_by_route(origin.addr)).await;
        assert_tricks_refused(proxy.addr, TRICKS).await;
        origin.assert_never_asked_for_internal();
        assert_eq!(
            origin.accepted(),
            0,
            "refused before any origin connection; origin saw {:?}",
            origin.request_lines()
        );
        // Refusals say why.
        let line = proxy
            .wait_log_reason("bad_request_path_above_root", Duration::from_secs(5))
            .await;
        assert_eq!(line["status"], 400);
        let line = proxy
            .wait_log_reason("firewall_deny", Duration::from_secs(5))
            .await;
        assert_eq!(line["route"], "internal");
        proxy
            .wait_log_reason("bad_request_path_encoded_slash", Duration::from_secs(5))
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_rule_sees_the_normalized_path() {
    within(90, async {
        let origin = LenientOrigin::start().await;
        let proxy = Proxy::start_toml(&closed_by_path_rule(origin.addr, "")).await;
        assert_tricks_refused(proxy.addr, TRICKS).await;
        origin.assert_never_asked_for_internal();
        assert_eq!(origin.accepted(), 0, "saw {:?}", origin.request_lines());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decoded_encoded_slashes_are_separators_for_the_rule_too() {
    within(60, async {
        let origin = LenientOrigin::start().await;
        let toml = closed_by_path_rule(origin.addr, "[http]\nencoded_slashes = \"decode\"\n");
        let proxy = Proxy::start_toml(&toml).await;
        assert_tricks_refused(
            proxy.addr,
            &[
                ("/%2Finternal", 403),
                ("/x%2F..%2Finternal", 403),
                ("/x%5c..%5cinternal", 403),
                ("/x\\..\\internal", 403),
                ("/%2F..%2Finternal", 400),
            ],
        )
        .await;
        assert_eq!(origin.accepted(), 0, "saw {:?}", origin.request_lines());
        // A legitimate path with an encoded slash is forwarded decoded.
        let (head, body) = http_exchange(
            proxy.addr,
            b"GET /files/a%2Fb?q=%2F HTTP/1.1\r\nHost: app.test\r\n\r\n",
        )
        .await;
        assert_eq!(head.status(), 200, "{}", head.text());
        assert_eq!(String::from_utf8_lossy(&body), "served /files/a/b");
        assert_eq!(
            origin.request_lines(),
            vec!["GET /files/a/b?q=%2F HTTP/1.1"]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_sees_the_normalized_path_it_was_routed_on() {
    within(60, async {
        let origin = LenientOrigin::start().await;
        let proxy = Proxy::start_toml(&closed_by_route(origin.addr)).await;

        // A WebSocket through a dot-segment: upgraded, and the origin was asked for /ws/chat.
        let mut c = RawConn::connect(proxy.addr).await;
        c.send(upgrade_head("/ws/./chat?room=%2e%2e/1", "app.test", &[]).as_bytes())
            .await
            .expect("send");
        let head = tokio::time::timeout(Duration::from_secs(10), c.read_head())
            .await
            .expect("answer in time")
            .expect("a response head");
        assert_eq!(head.status(), 101, "{}", head.text());
        let frame = tokio::time::timeout(Duration::from_secs(10), c.read_frame())
            .await
            .expect("frame in time")
            .expect("a frame");
        assert_eq!(frame.payload, b"served /ws/chat");
        drop(c);

        for (target, line) in [
            ("//public/%7Euser//x/", "GET /public/~user/x/ HTTP/1.1"),
            ("/a/b/../c/%c3%a9", "GET /a/c/%C3%A9 HTTP/1.1"),
            ("/internal-docs/../public", "GET /public HTTP/1.1"),
        ] {
            let request = format!("GET {target} HTTP/1.1\r\nHost: app.test\r\n\r\n");
            let (head, _) = http_exchange(proxy.addr, request.as_bytes()).await;
            assert_eq!(head.status(), 200, "{target}: {}", head.text());
            let lines = origin.request_lines();
            assert_eq!(lines.last().map(String::as_str), Some(line), "{target}");
        }
        assert_eq!(
            origin.request_lines()[0],
            "GET /ws/chat?room=%2e%2e/1 HTTP/1.1",
            "normalized path, query as sent"
        );
        origin.assert_never_asked_for_internal();
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Defect 5: Host
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_is_not_host_and_port_gets_400() {
    within(60, async {
        let origin = LenientOrigin::start().await;
        let mut proxy = Proxy::start(&Config::new().route(Route::new("r", &[origin.addr]))).await;
        for host in [
            "::1:80",
            "::1",
            "2001:db8::1:443",
            "[::1",
            "[::1]x",
            "h:80:80",
            "h:99999",
            "ex%61mple",
        ] {
            for (kind, request) in [
                ("upgrade", upgrade_head("/ws", host, &[])),
                ("plain", format!("GET /ws HTTP/1.1\r\nHost: {host}\r\n\r\n")),
            ] {
                let (head, _) = http_exchange(proxy.addr, request.as_bytes()).await;
                assert_eq!(head.status(), 400, "{kind} Host: {host}: {}", head.text());
            }
        }
        assert_eq!(origin.accepted(), 0, "saw {:?}", origin.request_lines());
        proxy
            .wait_log_reason("bad_request_invalid_host", Duration::from_secs(5))
            .await;

        // A bracketed IPv6 literal works, port or not, and reaches the origin as sent.
        for host in ["[::1]:80", "[::1]"] {
            let mut c = RawConn::connect(proxy.addr).await;
            c.send(upgrade_head("/ws", host, &[]).as_bytes())
                .await
                .expect("send");
            let head = tokio::time::timeout(Duration::from_secs(10), c.read_head())
                .await
                .expect("answer in time")
                .expect("a response head");
            assert_eq!(head.status(), 101, "Host: {host}: {}", head.text());
            let seen = origin.requests();
            assert_eq!(seen.last().and_then(|h| h.get("host")), Some(host));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_still_route_case_insensitively_without_the_port() {
    within(30, async {
        let origin = LenientOrigin::start().await;
        let proxy =
            Proxy::start(&Config::new().route(Route::new("app", &[origin.addr]).host("app.test")))
                .await;
        for (host, status) in [
            ("APP.Test:8080", 200),
            ("app.test.", 200),
            ("app.test:", 200),
            ("other.test", 404),
        ] {
            let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            let (head, _) = http_exchange(proxy.addr, request.as_bytes()).await;
            assert_eq!(head.status(), status, "Host: {host}: {}", head.text());
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Defect 6: forwarding headers
// ---------------------------------------------------------------------------------------------

/// A TCP connection to `addr` from source address `ip` (any 127.0.0.0/8 address works on
/// loopback).
async fn tcp_from(ip: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(IpAddr::V4(ip), 0))
        .unwrap_or_else(|e| panic!("bind {ip}: {e}"));
    socket
        .connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr} from {ip}: {e}"))
}

/// Sends `request` from `ip` and returns the response status once the head arrived.
async fn status_from(ip: Ipv4Addr, addr: SocketAddr, request: &str) -> u16 {
    let mut tcp = tcp_from(ip, addr).await;
    tcp.write_all(request.as_bytes()).await.expect("send");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(end) = head_end(&buf) {
                return Head::parse(&buf[..end]).status();
            }
            match tcp.read(&mut chunk).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => panic!("closed before a head: {:?}", String::from_utf8_lossy(&buf)),
            }
        }
    });
    read.await.expect("a response head within 10 s")
}

/// A client's own forwarding headers, as a spoofer (or a proxy) sends them.
const CLIENT_CHAIN: &[(&str, &str)] = &[
    ("X-Real-IP", "6.6.6.6"),
    ("X-Forwarded-For", "6.6.6.6, 203.0.113.5"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "public.example"),
    ("Forwarded", "for=6.6.6.6;proto=https"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_x_real_ip_never_reaches_the_origin() {
    within(30, async {
        let origin = LenientOrigin::start().await;
        let proxy = Proxy::start(&Config::new().route(Route::new("r", &[origin.addr]))).await;
        let status = status_from(
            Ipv4Addr::new(127, 0, 0, 4),
            proxy.addr,
            &upgrade_head("/ws", "app.test", CLIENT_CHAIN),
        )
        .await;
        assert_eq!(status, 101);
        let seen = origin.requests();
        assert_eq!(seen.len(), 1);
        let head = &seen[0];
        let text = head.text();
        assert!(
            !text.contains("6.6.6.6"),
            "a client value reached the origin:\n{text}"
        );
        assert_eq!(head.all("x-real-ip"), vec!["127.0.0.4"], "{text}");
        assert_eq!(head.all("x-forwarded-for"), vec!["127.0.0.4"], "{text}");
        assert_eq!(head.all("x-forwarded-proto"), vec!["http"], "{text}");
        assert_eq!(head.all("x-forwarded-host"), vec!["app.test"], "{text}");
        assert!(head.all("forwarded").is_empty(), "{text}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_real_ip_can_be_removed() {
    within(30, async {
        let origin = LenientOrigin::start().await;
        let config = Config::new().route(Route::new("r", &[origin.addr]));
        let toml = format!("{}\n[http]\nx_real_ip = \"remove\"\n", config.to_toml());
        let proxy = Proxy::start_toml(&toml).await;
        let status = status_from(
            Ipv4Addr::new(127, 0, 0, 4),
            proxy.addr,
            &upgrade_head("/ws", "app.test", CLIENT_CHAIN),
        )
        .await;
        assert_eq!(status, 101);
        let head = &origin.requests()[0];
        assert!(head.all("x-real-ip").is_empty(), "{}", head.text());
        assert_eq!(head.all("x-forwarded-for"), vec!["127.0.0.4"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxys_chain_is_kept_and_extended() {
    within(30, async {
        let origin = LenientOrigin::start().await;
        // The route behind another proxy trusts it (127.0.0.2); the [http] default trusts
        // nobody, so another route is unaffected.
        let config = Config::new()
            .route(
                Route::new("behind-proxy", &[origin.addr])
                    .path("/ws")
                    .option("trusted_proxies", "[\"127.0.0.2/32\", \"10.0.0.0/8\"]"),
            )
            .route(Route::new("direct", &[origin.addr]));
        let proxy = Proxy::start(&config).await;
        let trusted = Ipv4Addr::new(127, 0, 0, 2);
        let stranger = Ipv4Addr::new(127, 0, 0, 3);

        let request = upgrade_head("/ws", "app.test", CLIENT_CHAIN);
        assert_eq!(status_from(trusted, proxy.addr, &request).await, 101);
        let head = origin.requests().pop().expect("a request");
        let text = head.text();
        assert_eq!(
            head.all("x-forwarded-for"),
            vec!["6.6.6.6, 203.0.113.5, 127.0.0.2"],
            "the chain kept, the peer appended:\n{text}"
        );
        // The rightmost address the trusted proxy vouches for, not the client's claim.
        assert_eq!(head.all("x-real-ip"), vec!["203.0.113.5"], "{text}");
        assert_eq!(head.all("x-forwarded-proto"), vec!["https"], "{text}");
        assert_eq!(
            head.all("x-forwarded-host"),
            vec!["public.example"],
            "{text}"
        );
        assert_eq!(
            head.all("forwarded"),
            vec!["for=6.6.6.6;proto=https"],
            "{text}"
        );

        // Anyone else: everything replaced.
        assert_eq!(status_from(stranger, proxy.addr, &request).await, 101);
        let head = origin.requests().pop().expect("a request");
        let text = head.text();
        assert!(
            !text.contains("6.6.6.6") && !text.contains("203.0.113.5"),
            "{text}"
        );
        assert_eq!(head.all("x-forwarded-for"), vec!["127.0.0.3"], "{text}");
        assert_eq!(head.all("x-real-ip"), vec!["127.0.0.3"], "{text}");

        // The trusted proxy on a route that does not trust it: replaced as well.
        let request = upgrade_head("/other", "app.test", CLIENT_CHAIN);
        assert_eq!(status_from(trusted, proxy.addr, &request).await, 101);
        let head = origin.requests().pop().expect("a request");
        assert_eq!(
            head.all("x-forwarded-for"),
            vec!["127.0.0.2"],
            "{}",
            head.text()
        );
        assert_eq!(head.all("x-real-ip"), vec!["127.0.0.2"], "{}", head.text());
    })
    .await;
}
