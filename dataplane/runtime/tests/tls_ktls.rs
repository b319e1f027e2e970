//! Kernel TLS (kTLS) through the real `wsedge` binary: a `splice` and an `auto` route behind
//! a TLS listener with `ktls = "auto"`, and `ktls = "require"` checked against the kernel.
//!
//! Where the kernel takes TLS keys (`tls` in /proc/sys/net/ipv4/tcp_available_ulp, confirmed
//! on a loopback socket by `wsedge_ring::ktls::support`, the probe the binary runs too), the
//! hand-off must happen (counted, logged) and messages relay over the spliced sockets. Where
//! it does not (these machines: no CONFIG_TLS), the kernel part is skipped loudly on stderr,
//! and what can be checked here still is: the relay works buffered, the fallback is counted,
//! and the log line says why (no kTLS in this kernel).

mod common;
mod js_support;
mod tls_support;

use std::process::Command;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use common::origins::EchoOrigin;
use common::{Config, Proxy, Route, within};
use tls_support::{
    Client, KeyKind, Pki, TLS_LISTENER, certificate, echo, free_port, metrics, sample, tls_addr,
};

/// Whether this kernel takes TLS keys; prints the loud skip line when it does not.
fn kernel_tls(test: &str) -> bool {
    match wsedge_ring::ktls::support() {
        Ok(()) => true,
        Err(why) => {
            eprintln!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 {test}: SKIPPING kernel part: no kTLS (tcp_available_ulp: {})\n\
                 ({}). The hand-off to the kernel is not exercised on this host; the buffered\n\
                 fallback and its reason are checked instead.\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n",
                why.ulps,
                why.trial.as_deref().unwrap_or("no trial"),
            );
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splice_routes_over_wss_hand_off_to_the_kernel_or_say_why_not() {
    within(90, async {
        let has_ktls = kernel_tls("splice_routes_over_wss");
        let pki = Pki::new("ktls");
        let leaf = pki.leaf("localhost", &["localhost"], KeyKind::Ecdsa);
        let origin = EchoOrigin::start().await;
        let port = free_port();
        let config = Config::new()
            .route(
                Route::new("spliced", &[origin.addr])
                    .path("/spliced")
                    .relay("splice"),
            )
            .route(Route::new("automatic", &[origin.addr]).path("/auto").relay("auto"))
            .table(&format!(
                "{}\n{TLS_LISTENER}ktls = \"auto\"\n\n[control]\nmetrics_listen = \"127.0.0.1:{port}\"\n",
                certificate("localhost", &leaf, true)
            ));
        let mut proxy = Proxy::start(&config).await;
        let addr = tls_addr(&proxy);

        for path in ["/spliced", "/auto"] {
            for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
                let client = Client::new(&pki).version(version);
                let mut ws = client.wss(addr, "localhost", path).await;
                echo(&mut ws, Message::text(format!("hello {path}"))).await;
                // Bigger than a pipe and than a TLS record: `auto` goes bulk.
                let big: Vec<u8> = (0..(1usize << 20)).map(|i| (i * 7 % 251) as u8).collect();
                echo(&mut ws, Message::binary(big)).await;
                for i in 0..20 {
                    echo(&mut ws, Message::text(format!("{path} {i}"))).await;
                }
                ws.close(None).await.expect("close");
                while let Some(Ok(_)) = ws.next().await {}
            }
        }

        let text = metrics(port).await;
        let handoffs = sample(&text, "wsedge_ktls_handoffs_total", "");
        let failures = sample(&text, "wsedge_ktls_failures_total", "");
        let fallbacks = sample(&text, "wsedge_splice_fallbacks_total", "");
        assert!(
            text.contains("# TYPE wsedge_ktls_handoffs_total counter"),
            "{text}"
        );
        if has_ktls {
            // Every `splice` connection hands off (4: two versions, two routes at most; the
            // `auto` ones when their client's direction goes bulk first).
            assert!(handoffs >= 2, "kTLS hand-offs: {handoffs}\n{text}");
            assert_eq!(failures, 0, "{text}");
            proxy
                .wait_stderr(
                    &["kTLS: TLS handed to the kernel", "route=spliced"],
                    Duration::from_secs(5),
                )
                .await;
        } else {
            assert_eq!(handoffs, 0, "no kTLS here, yet hand-offs: {text}");
            assert_eq!(failures, 0, "the probe said no: nothing tried: {text}");
            assert!(
                fallbacks >= 2,
                "each splice connection relays buffered, counted: {fallbacks}\n{text}"
            );
            // The fallback line says why, once per route, naming what the kernel lists.
            let line = proxy
                .wait_stderr(
                    &[
                        "splice under TLS falls back to buffered",
                        "route=spliced",
                        "reason=this kernel has no kTLS (tcp_available_ulp:",
                    ],
                    Duration::from_secs(5),
                )
                .await;
            eprintln!("fallback line: {line}");
        }
        // The access log still carries the TLS facts (kept across a hand-off).
        let line = proxy
            .wait_log("of a spliced wss connection", Duration::from_secs(5), |v| {
                v["route"] == "spliced" && v["status"] == 101
            })
            .await;
        assert!(
            ["TLSv1.3", "TLSv1.2"].contains(&line["tls_version"].as_str().unwrap_or("")),
            "{line}"
        );
    })
    .await;
}

#[test]
fn require_is_refused_without_kernel_tls_naming_the_setting() {
    let has_ktls = kernel_tls("require_is_refused");
    let pki = Pki::new("ktls-require");
    let leaf = pki.leaf("localhost", &["localhost"], KeyKind::Ecdsa);
    let toml = Config::new()
        .route(Route::new("spliced", &["127.0.0.1:9".parse().expect("addr")]).relay("splice"))
        .table(&format!(
            "{}\n{TLS_LISTENER}ktls = \"require\"\n",
            certificate("localhost", &leaf, true)
        ))
        .to_toml();
    let path = pki.dir.write("require.toml", toml);
    let out = Command::new(env!("CARGO_BIN_EXE_wsedge"))
        .args(["--config", path.to_str().expect("utf-8"), "--check"])
        .env("WSEDGE_LOG", "error")
        .output()
        .expect("run wsedge --check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if has_ktls {
        assert!(out.status.success(), "require with kTLS present: {stderr}");
        return;
    }
    assert_eq!(
        out.status.code(),
        Some(2),
        "refused as a configuration error: {stderr}"
    );
    assert!(
        stderr.contains(
            "tls_listener[0].ktls = \"require\", but this kernel has no kTLS (tcp_available_ulp: "
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("modprobe tls") && stderr.contains("CONFIG_TLS"),
        "{stderr}"
    );
}
