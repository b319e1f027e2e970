//! Mutual TLS per listener through the real `wsedge` binary: `client_auth = "require"`
//! refuses a client without a certificate from `client_ca` at the handshake, `"request"`
//! lets every client in and records what it presented (none, valid, invalid with why) in the
//! access log. The peer is rustls (tokio-rustls under tokio-tungstenite) with certificates
//! from throwaway CAs made by the test.

mod common;
mod tls_support;

use std::time::Duration;

use tokio_tungstenite::client_async_with_config;
use tokio_tungstenite::tungstenite::Message;

use common::origins::EchoOrigin;
use common::{Config, Proxy, Route, within, ws_config};
use tls_support::{Client, KeyKind, Pki, certificate, echo};

/// Whether a wss:// exchange (handshake, upgrade, one echo) through `addr` works.
async fn wss_works(client: &Client, addr: std::net::SocketAddr) -> bool {
    let Ok(tls) = client.tls(addr, "localhost").await else {
        return false;
    };
    let url = format!("wss://localhost:{}/m", addr.port());
    // TLS 1.3: the client finishes its handshake before the server checked its
    // certificate, so a refusal arrives as an alert on the first read.
    let Ok(Ok((mut ws, _))) = tokio::time::timeout(
        Duration::from_secs(10),
        client_async_with_config(url, tls, Some(ws_config())),
    )
    .await
    else {
        return false;
    };
    echo(&mut ws, Message::text("mutual")).await;
    let _ = ws.close(None).await;
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_required_or_requested_per_listener() {
    within(90, async {
        let servers = Pki::new("mtls-server");
        let leaf = servers.leaf("localhost", &["localhost"], KeyKind::Ecdsa);
        let clients = Pki::new("mtls-clients");
        let good = clients.client_leaf("alice", "alice");
        let strangers = Pki::new("mtls-strangers");
        let stranger = strangers.client_leaf("mallory", "mallory");
        let origin = EchoOrigin::start().await;
        let ca = clients.ca_path.display().to_string();
        let listeners = format!(
            "[[tls_listener]]\nlisten = [\"127.0.0.1:0\"]\nclient_auth = \"require\"\nclient_ca = {ca:?}\n\n\
             [[tls_listener]]\nlisten = [\"127.0.0.1:0\"]\nclient_auth = \"request\"\nclient_ca = {ca:?}\n"
        );
        let config = Config::new()
            .route(Route::new("echo", &[origin.addr]))
            .table(&format!("{}\n{listeners}", certificate("localhost", &leaf, true)));
        let mut proxy = Proxy::start(&config).await;
        let (require, request) = (proxy.addrs[1], proxy.addrs[2]);

        let anonymous = Client::new(&servers);
        let alice = Client::new(&servers).identity(&good);
        let mallory = Client::new(&servers).identity(&stranger);

        // require: only a certificate from client_ca gets in.
        assert!(wss_works(&alice, require).await, "a valid client certificate");
        let line = proxy
            .wait_log("alice on the require listener", Duration::from_secs(5), |v| {
                v["status"] == 101
            })
            .await;
        assert_eq!(line["client_cert"], "valid", "{line}");
        let first = line["id"].clone();
        assert!(!wss_works(&anonymous, require).await, "no certificate must be refused");
        proxy
            .wait_log_reason("tls_error", Duration::from_secs(5))
            .await;
        assert!(
            !wss_works(&mallory, require).await,
            "a certificate from another CA must be refused"
        );
        proxy
            .wait_log_reason("tls_error", Duration::from_secs(5))
            .await;

        // request: everyone gets in; the log says what each presented.
        for (client, want) in [(&anonymous, "none"), (&mallory, "invalid"), (&alice, "valid")] {
            assert!(wss_works(client, request).await, "{want} on request");
            // Lines accumulate: the one of this connection is the new one with this status.
            let line = proxy
                .wait_log(&format!("client_cert {want}"), Duration::from_secs(5), |v| {
                    v["status"] == 101 && v["client_cert"] == want && v["id"] != first
                })
                .await;
            if want == "invalid" {
                assert!(
                    line["client_cert_error"]
                        .as_str()
                        .is_some_and(|e| !e.is_empty()),
                    "{line}"
                );
            }
        }
    })
    .await;
}

/// The HTTP status wsedge answers a WebSocket upgrade over `client`'s TLS as `name` (101, or
/// the firewall's refusal).
async fn upgrade_status(client: &Client, addr: std::net::SocketAddr, name: &str) -> u16 {
    use tokio_tungstenite::tungstenite::Error;
    let tls = client.tls(addr, name).await.expect("TLS handshake");
    let url = format!("wss://{name}:{}/fw", addr.port());
    match client_async_with_config(url, tls, Some(ws_config())).await {
        Ok((mut ws, resp)) => {
            let _ = ws.close(None).await;
            resp.status().as_u16()
        }
        Err(Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("upgrade as {name}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firewall_rules_on_sni_tls_version_and_client_certificate() {
    within(90, async {
        let servers = Pki::new("fw-server");
        let leaf = servers.leaf("site", &["localhost", "admin.test", "app.test"], KeyKind::Ecdsa);
        let clients = Pki::new("fw-clients");
        let good = clients.client_leaf("alice", "alice");
        let origin = EchoOrigin::start().await;
        let ca = clients.ca_path.display().to_string();
        let tables = format!(
            "{}\n[[tls_listener]]\nlisten = [\"127.0.0.1:0\"]\nclient_auth = \"request\"\nclient_ca = {ca:?}\n\n\
             [[rule]]\nname = \"admin-needs-a-certificate\"\n\
             when = {{ all = [ {{ field = \"sni\", equals = \"ADMIN.test\" }}, {{ field = \"client_cert\", not_equals = \"valid\" }} ] }}\n\
             action = \"deny\"\n\n\
             [[rule]]\nname = \"app-tls13-only\"\n\
             when = {{ all = [ {{ field = \"sni\", equals = \"app.test\" }}, {{ field = \"tls_version\", not_equals = \"1.3\" }} ] }}\n\
             action = \"deny\"\n\n\
             [[rule]]\nname = \"plain-no-admin\"\n\
             when = {{ all = [ {{ field = \"tls_version\", exists = false }}, {{ field = \"host\", equals = \"admin.test\" }} ] }}\n\
             action = \"deny\"\n",
            certificate("site", &leaf, true)
        );
        let config = Config::new()
            .route(Route::new("echo", &[origin.addr]))
            .table(&tables);
        let proxy = Proxy::start(&config).await;
        let tls = proxy.addrs[1];

        let anonymous = Client::new(&servers);
        let alice = Client::new(&servers).identity(&good);
        let tls12 = Client::new(&servers).version(&rustls::version::TLS12);

        // SNI + client certificate.
        assert_eq!(upgrade_status(&anonymous, tls, "admin.test").await, 403);
        assert_eq!(upgrade_status(&alice, tls, "admin.test").await, 101);
        assert_eq!(upgrade_status(&anonymous, tls, "localhost").await, 101);
        // SNI + TLS version.
        assert_eq!(upgrade_status(&tls12, tls, "app.test").await, 403);
        assert_eq!(upgrade_status(&anonymous, tls, "app.test").await, 101);
        assert_eq!(upgrade_status(&tls12, tls, "localhost").await, 101);
        // Plain TCP has no TLS version: the third rule sees it absent.
        let mut req = common::ws_request(&proxy.ws_url("/fw"));
        req.headers_mut()
            .insert("host", "admin.test".parse().expect("header"));
        match common::ws_connect_req(proxy.addr, req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 403, "plain admin.test")
            }
            other => panic!("plain admin.test must be refused: {other:?}"),
        }
        // ...and TLS rules never match it: plain localhost is let through.
        let mut ws = common::ws_connect(proxy.addr, "/plain").await;
        common::assert_echo(&mut ws, Message::text("plain")).await;
    })
    .await;
}
