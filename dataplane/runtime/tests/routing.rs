//! Routing through the real binary: by path prefix, by host (exact, wildcard, none), round robin
//! within a pool, and falling over to the next origin when one refuses.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::origins::EchoOrigin;
use common::{
    Config, Proxy, Route, assert_echo, dead_addr, within, ws_connect, ws_connect_req, ws_request,
};
use tokio_tungstenite::tungstenite::Message;

/// Opens a WebSocket to the proxy with the given Host and path, echoes one message, closes.
async fn visit(proxy: SocketAddr, host: &str, path: &str) {
    let url = format!("ws://{host}{path}");
    let (mut ws, resp) = ws_connect_req(proxy, ws_request(&url))
        .await
        .unwrap_or_else(|e| panic!("handshake for {url} failed: {e}"));
    assert_eq!(resp.status().as_u16(), 101);
    assert_echo(&mut ws, Message::text(format!("hello {url}"))).await;
    let _ = ws.close(None).await;
}

fn paths(origin: &EchoOrigin) -> Vec<String> {
    origin.requests().into_iter().map(|r| r.path).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_on_path_prefix_reach_different_origins() {
    within(30, async {
        let a = EchoOrigin::start().await;
        let b = EchoOrigin::start().await;
        let mut proxy = Proxy::start(
            &Config::new()
                .route(Route::new("route-a", &[a.addr]).path("/a"))
                .route(Route::new("route-b", &[b.addr]).path("/b")),
        )
        .await;
        visit(proxy.addr, "app.test", "/a/one").await;
        visit(proxy.addr, "app.test", "/b/two").await;
        visit(proxy.addr, "app.test", "/a").await;
        assert_eq!(paths(&a), vec!["/a/one", "/a"]);
        assert_eq!(paths(&b), vec!["/b/two"]);
        // The access log names the route.
        proxy
            .wait_log("for route-b", Duration::from_secs(5), |v| {
                v.get("route").and_then(|r| r.as_str()) == Some("route-b")
            })
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longest_path_prefix_wins() {
    within(30, async {
        let short = EchoOrigin::start().await;
        let long = EchoOrigin::start().await;
        // The shorter prefix comes first in the file: specificity, not order, decides.
        let proxy = Proxy::start(
            &Config::new()
                .route(Route::new("short", &[short.addr]).path("/api"))
                .route(Route::new("long", &[long.addr]).path("/api/live")),
        )
        .await;
        visit(proxy.addr, "app.test", "/api/live/feed").await;
        visit(proxy.addr, "app.test", "/api/other").await;
        assert_eq!(paths(&long), vec!["/api/live/feed"]);
        assert_eq!(paths(&short), vec!["/api/other"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_on_host_reach_different_origins() {
    within(30, async {
        let exact = EchoOrigin::start().await;
        let wild = EchoOrigin::start().await;
        let any = EchoOrigin::start().await;
        let proxy = Proxy::start(
            &Config::new()
                .route(Route::new("any", &[any.addr]))
                .route(Route::new("wild", &[wild.addr]).host("*.b.test"))
                .route(Route::new("exact", &[exact.addr]).host("a.test")),
        )
        .await;
        visit(proxy.addr, "a.test", "/exact").await;
        visit(proxy.addr, "x.b.test", "/wild").await;
        visit(proxy.addr, "elsewhere.test", "/any").await;
        assert_eq!(paths(&exact), vec!["/exact"]);
        assert_eq!(paths(&wild), vec!["/wild"]);
        assert_eq!(paths(&any), vec!["/any"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_across_the_origins_of_a_pool() {
    within(30, async {
        let first = EchoOrigin::start().await;
        let second = EchoOrigin::start().await;
        // One worker: round robin state is per worker, so with several the split of a few
        // connections would depend on which worker accepts them.
        let proxy = Proxy::start(
            &Config::new()
                .workers(1)
                .route(Route::new("pool", &[first.addr, second.addr])),
        )
        .await;
        for i in 0..4 {
            let mut ws = ws_connect(proxy.addr, &format!("/rr/{i}")).await;
            assert_echo(&mut ws, Message::text(format!("rr {i}"))).await;
            ws.close(None).await.expect("close");
        }
        let (n1, n2) = (first.requests().len(), second.requests().len());
        assert_eq!(
            (n1, n2),
            (2, 2),
            "4 connections should split evenly; first got {:?}, second {:?}",
            paths(&first),
            paths(&second)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_origin_falls_over_to_the_next_one() {
    within(30, async {
        let live = EchoOrigin::start().await;
        let proxy = Proxy::start(
            &Config::new()
                .workers(1)
                .route(Route::new("pool", &[dead_addr(), live.addr])),
        )
        .await;
        // Round robin on one worker: at least two of these four start with the dead origin.
        for i in 0..4 {
            let mut ws = ws_connect(proxy.addr, &format!("/fo/{i}")).await;
            assert_echo(&mut ws, Message::text(format!("fo {i}"))).await;
            ws.close(None).await.expect("close");
        }
        assert_eq!(
            live.requests().len(),
            4,
            "every connection reached the live origin"
        );
    })
    .await;
}
