//! Live certificates and session resumption through the real `wsedge` binary (two workers):
//! `wsedgectl certs` lists what serves, `wsedgectl certs reload` and SIGHUP swap the
//! certificate files on every worker while connections stay up, a broken file is refused
//! and the old certificate keeps serving, the expiry metric follows; and a TLS session made
//! on one worker resumes on the other (one ticketer and one session cache per listener).
//!
//! The TLS peer is rustls through tokio-rustls under tokio-tungstenite, with its own session
//! cache; the CLI is the real `wsedgectl` talking to the dataplane's control socket.

mod common;
#[allow(dead_code)] // shared helpers; this file uses some of them
mod control_support;
mod tls_support;

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, HandshakeKind};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::client_async_with_config;
use tokio_tungstenite::tungstenite::Message;

use common::origins::EchoOrigin;
use common::{Config, Proxy, Route, within, ws_config};
use control_support::ControlDir;
use tls_support::{
    Client, KeyKind, Pki, TLS_LISTENER, certificate, echo, free_port, metrics, sample, served,
    source_for, tcp_from, tls_addr,
};

/// A proxy with two workers, a control socket in `dir` and a metrics endpoint on `port`.
async fn start(dir: &ControlDir, origin: std::net::SocketAddr, certs: &str, port: u16) -> Proxy {
    let config = Config::new()
        .workers(2)
        .route(Route::new("echo", &[origin]))
        .table(&format!("{certs}\n{TLS_LISTENER}"));
    let toml = dir.toml(&config, &format!("metrics_listen = \"127.0.0.1:{port}\""));
    dir.start_dataplane(&toml).await
}

/// The DER of the certificate a fresh handshake as `localhost` gets on `worker` (of two).
async fn fresh_cert(client: &Client, addr: std::net::SocketAddr, worker: u64) -> Vec<u8> {
    let tls = client
        .tls_from(source_for(worker, 2), addr, "localhost")
        .await
        .expect("handshake");
    served(&tls).as_ref().to_vec()
}

/// Fresh handshakes on each of the two workers: every one gets `want`.
async fn all_serve(client: &Client, addr: std::net::SocketAddr, want: &[u8], what: &str) {
    for worker in [0, 1, 0, 1] {
        assert!(
            fresh_cert(client, addr, worker).await == want,
            "worker {worker}: not the {what} certificate"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_on_every_worker_without_dropping_a_connection() {
    within(120, async {
        let pki = Pki::new("reload");
        let v1 = pki.leaf("site", &["localhost"], KeyKind::Ecdsa);
        let origin = EchoOrigin::start().await;
        let dir = ControlDir::new("tls-reload");
        let port = free_port();
        let proxy = start(&dir, origin.addr, &certificate("site", &v1, true), port).await;
        let addr = tls_addr(&proxy);
        let client = Client::new(&pki);

        // `certs`: the one certificate, its names, issuer and expiry.
        let listed = dir.ctl_direct(&["--json", "certs"]).await.json();
        let certs = listed["certificates"].as_array().expect("certificates");
        assert_eq!(certs.len(), 1, "{listed}");
        assert_eq!(certs[0]["id"], "site");
        assert_eq!(certs[0]["names"], serde_json::json!(["localhost"]));
        assert_eq!(certs[0]["default"], true);
        assert_eq!(certs[0]["key_type"], "ECDSA P-256");
        assert!(
            certs[0]["issuer"]
                .as_str()
                .is_some_and(|i| i.contains("wsedge test CA reload")),
            "{listed}"
        );
        let human = dir.ctl_direct(&["certs"]).await;
        let text = human.ok();
        assert!(
            text.starts_with("ID") && text.contains("site") && text.contains("(in "),
            "{text}"
        );
        // The expiry metric agrees with the listing.
        let not_after = certs[0]["not_after"].as_i64().expect("not_after");
        let now = i64::try_from(wsedge_command::wire::unix_now()).expect("now");
        let exposed = metrics(port).await;
        let line = exposed
            .lines()
            .find(|l| l.starts_with("wsedge_tls_certificate_expiry_seconds{certificate=\"site\"}"))
            .unwrap_or_else(|| panic!("no expiry metric:\n{exposed}"));
        let left: i64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("value");
        assert!(
            (left - (not_after - now)).abs() <= 60,
            "{line} vs {not_after}"
        );

        // Connections made before the reload (the OS picks the source: 127.0.0.1).
        let mut live = Vec::new();
        for i in 0..4 {
            let mut ws = client.wss(addr, "localhost", &format!("/live{i}")).await;
            echo(&mut ws, Message::text("before")).await;
            live.push(ws);
        }
        all_serve(&client, addr, v1.der.as_ref(), "first").await;

        // New files in place, then `certs reload`: every worker serves the new certificate.
        let v2 = pki.leaf("site", &["localhost", "v2.test"], KeyKind::Rsa);
        assert!(v2.der != v1.der);
        let reloaded = dir.ctl_direct(&["--json", "certs", "reload"]).await.json();
        assert_eq!(reloaded["workers_confirmed"], 2, "{reloaded}");
        assert_eq!(
            reloaded["certificates"][0]["key_type"], "RSA 2048",
            "{reloaded}"
        );
        all_serve(&client, addr, v2.der.as_ref(), "reloaded").await;
        for ws in &mut live {
            echo(ws, Message::text("after the reload")).await;
        }

        // A broken certificate file: refused with the file named; the old one serves on.
        std::fs::write(&v2.cert, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n")
            .expect("break the file");
        let refused = dir.ctl_direct(&["certs", "reload"]).await;
        assert_eq!(refused.code, 2, "{refused:#?}");
        assert!(
            refused.stderr.contains("invalid_config") && refused.stderr.contains("site.pem"),
            "{refused:#?}"
        );
        all_serve(&client, addr, v2.der.as_ref(), "still the reloaded").await;
        let listed = dir.ctl_direct(&["--json", "certs"]).await.json();
        assert_eq!(listed["certificates"][0]["key_type"], "RSA 2048");

        // SIGHUP of the dataplane reloads too.
        let v3 = pki.leaf("site", &["localhost"], KeyKind::Ecdsa);
        signal(proxy.pid(), "HUP");
        let mut swapped = false;
        for _ in 0..50 {
            if fresh_cert(&client, addr, 1).await == v3.der.as_ref() {
                swapped = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(swapped, "SIGHUP did not swap the certificate");
        all_serve(&client, addr, v3.der.as_ref(), "SIGHUP-reloaded").await;
        for ws in &mut live {
            echo(ws, Message::text("after SIGHUP")).await;
        }
        // None was dropped: no TLS error was counted either.
        let exposed = metrics(port).await;
        assert_eq!(
            sample(&exposed, "wsedge_tls_errors_total", ""),
            0,
            "{exposed}"
        );
    })
    .await;
}

/// Sends SIG`name` to `pid` with the `kill` command (the tests use no `unsafe`).
fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// A rustls client configuration that keeps sessions (tickets and ids) between handshakes.
fn resuming(pki: &Pki, version: &'static rustls::SupportedProtocolVersion) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .expect("versions")
        .with_root_certificates(pki.roots())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumes_whichever_worker_takes_the_reconnect() {
    within(120, async {
        let pki = Pki::new("resume");
        let leaf = pki.leaf("site", &["localhost"], KeyKind::Ecdsa);
        let origin = EchoOrigin::start().await;
        let dir = ControlDir::new("tls-resume");
        let port = free_port();
        let mut proxy = start(&dir, origin.addr, &certificate("site", &leaf, true), port).await;
        let addr = tls_addr(&proxy);

        for (version, label) in [
            (&rustls::version::TLS13, "TLS 1.3 (tickets)"),
            (&rustls::version::TLS12, "TLS 1.2"),
        ] {
            let connector = resuming(&pki, version);
            let name = ServerName::try_from("localhost").expect("name");
            let mut kinds = Vec::new();
            // The full handshake on worker 0, then reconnects alternating between the
            // workers (the source address decides which one takes it).
            for i in 0..16u64 {
                let tcp = tcp_from(source_for(i % 2, 2), addr).await;
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .expect("handshake");
                kinds.push(tls.get_ref().1.handshake_kind());
                // A WebSocket over each, so TLS 1.3 tickets (sent after the handshake) arrive.
                let url = format!("wss://localhost:{}/r{i}", addr.port());
                let (mut ws, _) = client_async_with_config(url, tls, Some(ws_config()))
                    .await
                    .expect("WebSocket");
                echo(&mut ws, Message::text(format!("{label} {i}"))).await;
                let _ = ws.close(None).await;
            }
            assert_eq!(kinds[0], Some(HandshakeKind::Full), "{label}: {kinds:?}");
            assert!(
                kinds[1..]
                    .iter()
                    .all(|k| *k == Some(HandshakeKind::Resumed)),
                "{label}: every reconnect resumes, whichever worker takes it: {kinds:?}"
            );
        }

        // Per version: worker 0 made the session and resumed 7 reconnects, worker 1 resumed 8
        // it never saw made.
        let exposed = metrics(port).await;
        let w0 = sample(&exposed, "wsedge_tls_resumed_total", "worker=\"0\"");
        let w1 = sample(&exposed, "wsedge_tls_resumed_total", "worker=\"1\"");
        assert_eq!((w0, w1), (14, 16), "resumed per worker:\n{exposed}");
        // The access log says so, with the version and the name.
        let line = proxy
            .wait_log(
                "a resumed TLS 1.2 connection",
                Duration::from_secs(5),
                |v| v["resumed"] == true && v["tls_version"] == "TLSv1.2",
            )
            .await;
        assert_eq!(line["sni"], "localhost", "{line}");
        assert_eq!(line["status"], 101, "{line}");
    })
    .await;
}
