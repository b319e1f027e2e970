//! Timers of live connections (max connection time, idle timeout, per-route overrides) and
//! the SIGTERM drain, through the real binary. Margins are generous: these never assert speed.

mod common;

use std::time::{Duration, Instant};

use common::origins::EchoOrigin;
use common::{Config, Proxy, Route, assert_echo, wait_ws_end, within, ws_connect};
use tokio_tungstenite::tungstenite::Message;

fn about_one_second(elapsed: Duration, what: &str) {
    assert!(
        elapsed >= Duration::from_millis(700) && elapsed <= Duration::from_secs(4),
        "{what} after {elapsed:?}, expected about 1 s (0.7 s to 4 s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connection_time_ends_an_open_websocket() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let mut proxy = Proxy::start(
            &Config::new()
                .duration("max_connection_time", "1s")
                .number("max_connection_time_jitter", 0)
                .route(Route::new("r", &[origin.addr])),
        )
        .await;
        let start = Instant::now();
        let mut ws = ws_connect(proxy.addr, "/").await;
        assert_echo(&mut ws, Message::text("alive")).await;
        wait_ws_end(&mut ws, Duration::from_secs(6)).await;
        about_one_second(start.elapsed(), "connection ended");
        proxy
            .wait_log_reason("max_connection_time", Duration::from_secs(5))
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_ends_a_silent_websocket() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let mut proxy = Proxy::start(
            &Config::new()
                .duration("idle_timeout", "1s")
                .route(Route::new("r", &[origin.addr])),
        )
        .await;
        let mut ws = ws_connect(proxy.addr, "/").await;
        assert_echo(&mut ws, Message::text("last words")).await;
        let idle_since = Instant::now();
        wait_ws_end(&mut ws, Duration::from_secs(6)).await;
        about_one_second(idle_since.elapsed(), "idle connection ended");
        proxy
            .wait_log_reason("idle_timeout", Duration::from_secs(5))
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_resets_the_idle_timeout() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let mut proxy = Proxy::start(
            &Config::new()
                .duration("idle_timeout", "1s")
                .route(Route::new("r", &[origin.addr])),
        )
        .await;
        let mut ws = ws_connect(proxy.addr, "/").await;
        let start = Instant::now();
        let mut i = 0;
        // A message every 300 ms for 3 s: three times the idle timeout, never idle for 1 s.
        loop {
            assert_echo(&mut ws, Message::text(format!("tick {i}"))).await;
            i += 1;
            if start.elapsed() >= Duration::from_secs(3) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert!(i >= 5, "only {i} exchanges");
        // Then silence: now the idle timeout ends it.
        let idle_since = Instant::now();
        wait_ws_end(&mut ws, Duration::from_secs(6)).await;
        about_one_second(idle_since.elapsed(), "idle connection ended");
        proxy
            .wait_log_reason("idle_timeout", Duration::from_secs(5))
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_idle_timeout_overrides_the_default() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let mut proxy = Proxy::start(
            &Config::new()
                .duration("idle_timeout", "60s")
                .route(
                    Route::new("short", &[origin.addr])
                        .path("/short")
                        .duration("idle_timeout", "1s"),
                )
                .route(Route::new("long", &[origin.addr])),
        )
        .await;
        let mut long = ws_connect(proxy.addr, "/long").await;
        let mut short = ws_connect(proxy.addr, "/short").await;
        let idle_since = Instant::now();
        wait_ws_end(&mut short, Duration::from_secs(6)).await;
        about_one_second(idle_since.elapsed(), "connection on the 1 s route ended");
        let line = proxy
            .wait_log_reason("idle_timeout", Duration::from_secs(5))
            .await;
        assert_eq!(line.get("route").and_then(|v| v.as_str()), Some("short"));
        // The route with the default (60 s) keeps its equally idle connection.
        assert_echo(&mut long, Message::text("still here")).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_live_connection_exits_zero_within_drain_timeout() {
    within(30, async {
        let origin = EchoOrigin::start().await;
        let mut proxy = Proxy::start(
            &Config::new()
                .drain_timeout("1s")
                .route(Route::new("r", &[origin.addr])),
        )
        .await;
        let mut ws = ws_connect(proxy.addr, "/").await;
        assert_echo(&mut ws, Message::text("before sigterm")).await;
        let start = Instant::now();
        proxy.sigterm();
        let status = proxy
            .wait_exit(Duration::from_secs(6))
            .await
            .expect("wsedge still running 6 s after SIGTERM (drain_timeout 1 s)");
        assert!(
            status.success(),
            "exit status {status:?} after {:?}",
            start.elapsed()
        );
        // The live connection did not outlive the process.
        wait_ws_end(&mut ws, Duration::from_secs(3)).await;
    })
    .await;
}
