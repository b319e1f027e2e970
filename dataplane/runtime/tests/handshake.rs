//! The handshake behaviour table (design.md), client side, through the real binary: plain HTTP
//! forwarding, refusals answered by the proxy itself, and origin answers relayed or refused.

mod common;

use std::time::{Duration, Instant};

use common::origins::{
    DECLINED_BODY, EchoOrigin, FORBIDDEN_BODY, KeepAliveOrigin, PLAIN_BODY, RawOrigin, SECRET_BODY,
};
use common::raw::{RawConn, TEST_KEY, http_exchange, upgrade_head};
use common::{Config, Proxy, Route, dead_addr, within, ws_connect_req, ws_request};

/// A proxy with one catch-all route to `origin`.
async fn proxy_to(origin: std::net::SocketAddr) -> Proxy {
    Proxy::start(&Config::new().route(Route::new("r", &[origin]))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_request_is_forwarded_with_connection_close() {
    within(30, async {
        let plain = RawOrigin::plain().await;
        let proxy = proxy_to(plain.addr).await;
        let req = "GET /plain/page?q=1 HTTP/1.1\r\nHost: plain.test:8080\r\n\
                   X-Forwarded-For: 6.6.6.6\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n";
        let (head, body) = http_exchange(proxy.addr, req.as_bytes()).await;
        assert_eq!(head.status(), 200, "response: {}", head.text());
        assert_eq!(body, PLAIN_BODY.as_bytes(), "origin's body relayed");

        let heads = plain.heads();
        assert_eq!(heads.len(), 1, "the origin got one request");
        let got = &heads[0];
        let text = got.text();
        assert!(
            got.start_line.starts_with("GET /plain/page?q=1 HTTP/1.1"),
            "request line: {text}"
        );
        assert_eq!(got.get("connection"), Some("close"), "head:\n{text}");
        assert!(got.all("upgrade").is_empty(), "head:\n{text}");
        assert_eq!(
            got.all("x-forwarded-for"),
            vec!["127.0.0.1"],
            "client-sent X-Forwarded-For replaced; head:\n{text}"
        );
        let xfh = got.get("x-forwarded-host").unwrap_or("");
        assert!(
            xfh.starts_with("plain.test"),
            "X-Forwarded-Host in:\n{text}"
        );
        assert_eq!(got.get("x-forwarded-proto"), Some("http"), "head:\n{text}");
        assert_eq!(got.get("host"), Some("plain.test:8080"), "head:\n{text}");
        assert_eq!(got.get("accept"), Some("*/*"), "head:\n{text}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_websocket_upgrade_is_forwarded_as_plain_http_without_upgrade() {
    within(30, async {
        let plain = RawOrigin::plain().await;
        let proxy = proxy_to(plain.addr).await;
        let req = "GET /h2c HTTP/1.1\r\nHost: plain.test\r\nUpgrade: h2c\r\n\
                   Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n";
        let (head, body) = http_exchange(proxy.addr, req.as_bytes()).await;
        assert_eq!(head.status(), 200, "response: {}", head.text());
        assert_eq!(body, PLAIN_BODY.as_bytes());
        let heads = plain.heads();
        assert_eq!(heads.len(), 1);
        let text = heads[0].text();
        assert!(heads[0].all("upgrade").is_empty(), "head:\n{text}");
        assert_eq!(heads[0].get("connection"), Some("close"), "head:\n{text}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_down_gives_502() {
    within(30, async {
        let proxy = proxy_to(dead_addr()).await;
        let req = upgrade_head("/", "down.test", &[]);
        let (head, _) = http_exchange(proxy.addr, req.as_bytes()).await;
        assert_eq!(head.status(), 502, "response: {}", head.text());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_403_is_relayed_with_its_body() {
    within(30, async {
        let origin = RawOrigin::forbidden().await;
        let proxy = proxy_to(origin.addr).await;
        let req = upgrade_head("/private", "app.test", &[]);
        let (head, body) = http_exchange(proxy.addr, req.as_bytes()).await;
        assert_eq!(head.status(), 403, "response: {}", head.text());
        assert_eq!(
            String::from_utf8_lossy(&body),
            FORBIDDEN_BODY,
            "origin's body relayed"
        );
        assert_eq!(origin.heads().len(), 1, "the upgrade reached the origin");
        assert_eq!(origin.heads()[0].target(), "/private");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_101_with_wrong_accept_gives_502() {
    within(30, async {
        let origin = RawOrigin::wrong_accept().await;
        let proxy = proxy_to(origin.addr).await;
        let req = upgrade_head("/", "app.test", &[]);
        let (head, _) = http_exchange(proxy.addr, req.as_bytes()).await;
        assert_eq!(head.status(), 502, "response: {}", head.text());
        assert_eq!(origin.heads().len(), 1, "the upgrade reached the origin");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_8_gives_426_with_version_13() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let proxy = proxy_to(origin.addr).await;
        let req = format!(
            "GET / HTTP/1.1\r\nHost: app.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {TEST_KEY}\r\nSec-WebSocket-Version: 8\r\n\r\n"
        );
        let (head, _) = http_exchange(proxy.addr, req.as_bytes()).await;
        assert_eq!(head.status(), 426, "response: {}", head.text());
        assert_eq!(
            head.get("sec-websocket-version"),
            Some("13"),
            "response: {}",
            head.text()
        );
        assert_eq!(origin.accepted(), 0, "never forwarded");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_upgrade_requests_give_400_and_are_never_forwarded() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let proxy = proxy_to(origin.addr).await;
        let common = "Host: app.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";
        let cases = [
            (
                "missing key",
                format!("GET / HTTP/1.1\r\n{common}Sec-WebSocket-Version: 13\r\n\r\n"),
            ),
            (
                "invalid key",
                format!(
                    "GET / HTTP/1.1\r\n{common}Sec-WebSocket-Key: c2hvcnQ=\r\n\
                     Sec-WebSocket-Version: 13\r\n\r\n"
                ),
            ),
            (
                "POST upgrade",
                format!(
                    "POST / HTTP/1.1\r\n{common}Sec-WebSocket-Key: {TEST_KEY}\r\n\
                     Sec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n"
                ),
            ),
            (
                "HTTP/1.0 upgrade",
                format!(
                    "GET / HTTP/1.0\r\n{common}Sec-WebSocket-Key: {TEST_KEY}\r\n\
                     Sec-WebSocket-Version: 13\r\n\r\n"
                ),
            ),
        ];
        for (what, req) in &cases {
            let (head, _) = http_exchange(proxy.addr, req.as_bytes()).await;
            assert_eq!(head.status(), 400, "{what}: response {}", head.text());
        }
        assert_eq!(origin.accepted(), 0, "none of them was forwarded");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shape_content_length_and_transfer_encoding_gives_400() {
    within(30, async {
        let plain = RawOrigin::plain().await;
        let proxy = proxy_to(plain.addr).await;
        let req = "POST /submit HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n\
                   Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let (head, _) = http_exchange(proxy.addr, req.as_bytes()).await;
        assert_eq!(head.status(), 400, "response: {}", head.text());
        // Give a wrongly forwarded request time to arrive before checking it did not.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(plain.accepted(), 0, "the plain origin never received it");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_head_gives_431() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let proxy = proxy_to(origin.addr).await;
        let big = "a".repeat(20 * 1024);
        let req = upgrade_head("/", "app.test", &[("X-Big", &big)]);
        let (head, _) = http_exchange(proxy.addr, req.as_bytes()).await;
        assert_eq!(head.status(), 431, "response: {}", head.text());
        assert_eq!(origin.accepted(), 0, "never forwarded");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_headers_gives_431() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let proxy = proxy_to(origin.addr).await;
        let names: Vec<String> = (0..80).map(|i| format!("X-H-{i}")).collect();
        let extra: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        let req = upgrade_head("/", "app.test", &extra);
        assert!(
            req.len() < 16384,
            "small enough to hit only the count limit"
        );
        let (head, _) = http_exchange(proxy.addr, req.as_bytes()).await;
        assert_eq!(head.status(), 431, "response: {}", head.text());
        assert_eq!(origin.accepted(), 0, "never forwarded");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incomplete_head_gets_408_or_close_after_handshake_timeout() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let mut proxy = Proxy::start(
            &Config::new()
                .duration("handshake_timeout", "1s")
                .route(Route::new("r", &[origin.addr])),
        )
        .await;
        let mut c = RawConn::connect(proxy.addr).await;
        let start = Instant::now();
        c.send(b"GET / HTTP/1.1\r\nHost: app.test\r\nUpgrade: websocket\r\n")
            .await
            .expect("send half a head");
        let got = c
            .read_until_closed(Duration::from_secs(6))
            .await
            .expect("connection still open 6 s after half a head (timeout 1 s)");
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(700) && elapsed <= Duration::from_secs(4),
            "closed after {elapsed:?}, expected about 1 s"
        );
        if !got.is_empty() {
            let text = String::from_utf8_lossy(&got);
            assert!(
                text.starts_with("HTTP/1.1 408"),
                "only a 408 may be sent; got {text:?}"
            );
        }
        proxy
            .wait_log_reason("handshake_timeout", Duration::from_secs(5))
            .await;
        assert_eq!(origin.accepted(), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_closed_after_handshake_timeout() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let mut proxy = Proxy::start(
            &Config::new()
                .duration("handshake_timeout", "1s")
                .route(Route::new("r", &[origin.addr])),
        )
        .await;
        let start = Instant::now();
        let mut c = RawConn::connect(proxy.addr).await;
        let got = c
            .read_until_closed(Duration::from_secs(6))
            .await
            .expect("silent connection still open 6 s later (timeout 1 s)");
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(700) && elapsed <= Duration::from_secs(4),
            "closed after {elapsed:?}, expected about 1 s"
        );
        if !got.is_empty() {
            let text = String::from_utf8_lossy(&got);
            assert!(text.starts_with("HTTP/1.1 408"), "got {text:?}");
        }
        proxy
            .wait_log_reason("handshake_timeout", Duration::from_secs(5))
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_not_answering_within_origin_handshake_timeout_gives_504() {
    within(30, async {
        let origin = RawOrigin::silent().await;
        let proxy = Proxy::start(
            &Config::new()
                .duration("origin_handshake_timeout", "1s")
                .route(Route::new("r", &[origin.addr])),
        )
        .await;
        let start = Instant::now();
        let req = upgrade_head("/", "app.test", &[]);
        let (head, _) = http_exchange(proxy.addr, req.as_bytes()).await;
        let elapsed = start.elapsed();
        assert_eq!(head.status(), 504, "response: {}", head.text());
        assert!(
            elapsed >= Duration::from_millis(700) && elapsed <= Duration::from_secs(5),
            "504 after {elapsed:?}, expected about 1 s"
        );
        assert_eq!(origin.accepted(), 1, "the origin was connected to");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_matching_route_gives_404() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let proxy = Proxy::start(
            &Config::new().route(Route::new("only", &[origin.addr]).host("only.example")),
        )
        .await;
        let req = upgrade_head("/", "other.example", &[]);
        let (head, _) = http_exchange(proxy.addr, req.as_bytes()).await;
        assert_eq!(head.status(), 404, "response: {}", head.text());
        assert_eq!(origin.accepted(), 0, "never forwarded");

        // The route itself works for its host.
        let (_ws, resp) = ws_connect_req(proxy.addr, ws_request("ws://only.example/"))
            .await
            .expect("handshake for the routed host");
        assert_eq!(resp.status().as_u16(), 101);
        assert_eq!(origin.requests().len(), 1);
    })
    .await;
}

/// A catch-all route to `origin`, and a route for `/internal` that the firewall closes.
fn closed_internal_route(origin: std::net::SocketAddr) -> String {
    let mut toml = Config::new()
        .route(Route::new("internal", &[origin]).path("/internal"))
        .route(Route::new("app", &[origin]))
        .to_toml();
    toml.push_str("\n[[rule]]\nname = \"closed\"\nroutes = [\"internal\"]\naction = \"deny\"\n");
    toml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_behind_a_declined_upgrade_never_reaches_the_origin() {
    within(30, async {
        let origin = KeepAliveOrigin::start().await;
        let proxy = Proxy::start_toml(&closed_internal_route(origin.addr)).await;
        // The closed route answers a direct request itself.
        let direct = "GET /internal HTTP/1.1\r\nHost: app.test\r\n\r\n";
        let (head, body) = http_exchange(proxy.addr, direct.as_bytes()).await;
        assert_eq!(head.status(), 403, "closed route: {}", head.text());
        assert!(!String::from_utf8_lossy(&body).contains("SECRET"));

        // One write: an upgrade the origin declines (keep-alive), then a request for the
        // closed path.
        let mut c = RawConn::connect(proxy.addr).await;
        let mut bytes = upgrade_head("/declined", "app.test", &[]).into_bytes();
        bytes.extend_from_slice(b"GET /internal HTTP/1.1\r\nHost: app.test\r\n\r\n");
        c.send(&bytes).await.expect("send");
        let head = c.read_head().await.expect("response head");
        assert_eq!(head.status(), 200, "{}", head.text());
        let rest = c
            .read_until_closed(Duration::from_secs(5))
            .await
            .expect("the proxy ends the exchange after a declined upgrade");
        let rest = String::from_utf8_lossy(&rest);
        assert!(rest.starts_with(DECLINED_BODY), "body: {rest:?}");
        assert!(
            !rest.contains("SECRET"),
            "the closed route's content leaked: {rest:?}"
        );
        assert!(!rest.contains(SECRET_BODY));
        assert_eq!(
            origin.requests(),
            vec!["GET /declined HTTP/1.1".to_string()],
            "the origin saw only the upgrade request"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_upgrade_is_relayed_with_connection_close_and_both_sides_closed() {
    within(30, async {
        let origin = KeepAliveOrigin::start().await;
        let mut proxy = Proxy::start(&Config::new().route(Route::new("r", &[origin.addr]))).await;
        for (n, path) in [(1, "/declined"), (2, "/chunked")] {
            let start = Instant::now();
            let mut c = RawConn::connect(proxy.addr).await;
            c.send(upgrade_head(path, "app.test", &[]).as_bytes())
                .await
                .expect("send");
            let head = c.read_head().await.expect("response head");
            assert_eq!(head.status(), 200, "{}", head.text());
            assert_eq!(
                head.all("connection"),
                vec!["close"],
                "the origin's keep-alive is replaced: {}",
                head.text()
            );
            assert!(head.all("keep-alive").is_empty(), "{}", head.text());
            let rest = c
                .read_until_closed(Duration::from_secs(3))
                .await
                .expect("the client connection is closed once the response is written");
            assert!(
                String::from_utf8_lossy(&rest).contains(DECLINED_BODY),
                "{path}: {rest:?}"
            );
            assert!(
                origin.wait_closed(n, Duration::from_secs(2)).await,
                "{path}: the origin connection is closed too: {:?}",
                origin.events()
            );
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "{path}: took {:?}",
                start.elapsed()
            );
            let line = proxy
                .wait_log_reason("not_upgraded", Duration::from_secs(5))
                .await;
            assert_eq!(line["status"], 200, "{line}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_during_the_origin_handshake_tears_the_origin_down() {
    within(30, async {
        let origin = RawOrigin::silent().await;
        let mut proxy = Proxy::start(
            &Config::new()
                .duration("origin_handshake_timeout", "10s")
                .route(Route::new("r", &[origin.addr])),
        )
        .await;
        let mut c = RawConn::connect(proxy.addr).await;
        c.send(upgrade_head("/", "app.test", &[]).as_bytes())
            .await
            .expect("send");
        // The origin has the request and is not answering.
        let deadline = Instant::now() + Duration::from_secs(5);
        while origin.heads().is_empty() {
            assert!(Instant::now() < deadline, "the origin never got the head");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = Instant::now();
        drop(c);
        let line = proxy
            .wait_log_reason("client_gone", Duration::from_secs(3))
            .await;
        assert!(
            left.elapsed() < Duration::from_secs(2),
            "noticed {:?} after the client left (origin timeout 10 s)",
            left.elapsed()
        );
        assert!(line["status"].is_null(), "no answer was sent: {line}");
        assert!(
            origin.closed_within(Duration::from_secs(2)).await,
            "the origin connection is torn down at once"
        );
    })
    .await;
}
