//! A drain's deadline frees what it closes, through the real binary (commit c0911fb: before
//! it, a connection the deadline closed with no completion left to free it stayed in its
//! worker's table, and the process never exited after SIGTERM).
//!
//! The state used: a built-in `echo` connection lingering after the close handshake. The
//! client sends a Close frame, the function answers it and finishes, and the edge shuts its
//! write side and lingers (up to 2 s) for the client's EOF, which never comes: the client
//! keeps its socket open. The drain's deadline is set to fall inside the linger; it closes
//! the connection (cancelling the linger's read) and the worker must free it and, after
//! SIGTERM, exit. (The state these tests used before, a client that half-closed, now closes
//! at once: its EOF leaves nothing to drain. No state is known any more where a live
//! connection has no operation in flight; the worker frees such a one at the deadline all
//! the same, `worker/mod.rs`.)

mod common;
#[allow(dead_code)] // shared helpers; this file uses some of them
mod control_support;
mod functions_support;

use std::time::{Duration, Instant};

use common::{Proxy, within};
use control_support::ControlDir;
use functions_support::{Client, Msg, config_toml, function_route, loopback};
use serde_json::Value;

/// The drain's deadline: well inside the 2 s linger the connection is in.
const DRAIN_TIMEOUT: &str = "300ms";

/// One worker (the connection and the drain on the same one) serving `echo` on `/echo`, with
/// the short drain timeout, and `extra` appended (a `[control]` table).
fn echo_config(extra: &str) -> String {
    let toml = config_toml(1, &function_route("echo", "/echo", "echo", &[]));
    let short = toml.replace(
        "drain_timeout = \"1s\"",
        &format!("drain_timeout = {DRAIN_TIMEOUT:?}"),
    );
    assert_ne!(short, toml, "the drain timeout was not replaced");
    format!("{short}\n{extra}")
}

/// An upgraded `echo` connection lingering after the close handshake: the edge answered
/// the client's Close and shut its write side; the client keeps its socket open (no EOF), so
/// the edge waits for it until its linger deadline.
async fn lingering_echo(proxy: &Proxy) -> Client {
    let mut c = Client::connect(loopback(1), proxy.addr, "/echo", None).await;
    c.send_text("before the close").await;
    let echoed = c.read_data().await;
    assert_eq!(echoed.text(), "before the close");
    c.send_close(1000).await;
    assert_eq!(c.read_data().await, Msg::Close(Some(1000), Vec::new()));
    assert!(
        c.wait_eof(Duration::from_secs(5)).await,
        "the edge did not shut its write side after the close handshake"
    );
    c
}

/// The connection's access-log line says the drain's deadline closed it (`shutdown`), not
/// the end of its linger (`client_closed`): it was still lingering when the deadline came.
async fn closed_by_the_deadline(proxy: &mut Proxy) {
    let line = proxy
        .wait_log("for the echo connection", Duration::from_secs(5), |v| {
            v.get("route").and_then(Value::as_str) == Some("echo")
        })
        .await;
    assert_eq!(line["reason"], "shutdown", "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_at_the_drain_deadline_with_a_lingering_connection_left() {
    within(30, async {
        let mut proxy = Proxy::start_toml(&echo_config("")).await;
        let _client = lingering_echo(&proxy).await;
        let start = Instant::now();
        proxy.sigterm();
        // drain_timeout (300 ms) + 2 s; before c0911fb it never exited.
        let status = proxy.wait_exit(Duration::from_millis(2_300)).await;
        let took = start.elapsed();
        let status = status.unwrap_or_else(|| {
            panic!(
                "wsedge still running {took:?} after SIGTERM with drain_timeout {DRAIN_TIMEOUT} \
                 and one lingering connection: the deadline closed it without freeing it"
            )
        });
        assert!(status.success(), "exit status {status:?} after {took:?}");
        closed_by_the_deadline(&mut proxy).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_with_a_timeout_leaves_no_lingering_connection_live() {
    within(30, async {
        let dir = ControlDir::new("drain-linger");
        let mut proxy = dir
            .start_dataplane(&echo_config(&dir.control_table("")))
            .await;
        let _client = lingering_echo(&proxy).await;
        // wsedgectl polls the live count until it is 0, or fails 5 s after the timeout.
        let out = dir.ctl_direct(&["drain", "--timeout", DRAIN_TIMEOUT]).await;
        assert!(
            out.ok().contains("drained: no live connections"),
            "{out:#?}"
        );
        let status = dir.ctl_direct(&["--json", "status"]).await.json();
        let workers = status["dataplane"]["workers"].as_array().expect("workers");
        assert!(
            workers.iter().all(|w| w["live"] == 0),
            "live connections after the drain: {status:#}"
        );
        closed_by_the_deadline(&mut proxy).await;
        // A drain does not stop the process.
        assert!(proxy.wait_exit(Duration::from_millis(100)).await.is_none());
    })
    .await;
}
