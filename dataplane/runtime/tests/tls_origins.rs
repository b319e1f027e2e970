//! TLS from the edge to its origins through the real `wsedge` binary: a route with
//! `origin_tls` reaches a `wss://` origin (a rustls server under tokio-tungstenite, made by
//! the test), verified against the route's `origin_ca`, with SNI = `origin_server_name`; a
//! certificate for another name, or from a CA the route does not trust, is a 502 whose
//! access-log reason is `origin_tls_error`, and other connections are not affected. A `js`
//! route's scripts open `wss://` sockets verified the same way, against their URL's name.

mod common;
mod js_support;
mod tls_support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::ServerConfig;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use common::{Config, Proxy, Route, within};
use tls_support::{KeyKind, Leaf, Pki, TLS_LISTENER, certificate};

/// A wss:// echo origin: TLS with `leaf`, then a WebSocket echo. Records the SNI of every
/// handshake that finished.
struct TlsEchoOrigin {
    addr: SocketAddr,
    sni: Arc<Mutex<Vec<Option<String>>>>,
}

impl TlsEchoOrigin {
    async fn start(leaf: &Leaf) -> TlsEchoOrigin {
        let key = PrivateKeyDer::from_pem_file(&leaf.key).expect("origin key");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der.clone()], key)
            .expect("origin certificate");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let sni = Arc::new(Mutex::new(Vec::new()));
        let seen = sni.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let name = tls.get_ref().1.server_name().map(str::to_owned);
                    seen.lock().expect("lock").push(name);
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                        return;
                    };
                    while let Some(Ok(m)) = ws.next().await {
                        if m.is_text() || m.is_binary() {
                            if ws.send(m).await.is_err() {
                                return;
                            }
                        } else if m.is_close() {
                            return;
                        }
                    }
                });
            }
        });
        TlsEchoOrigin { addr, sni }
    }
}

/// A TLS route: `/{name}` to `origin`, with these origin TLS settings (raw TOML values).
fn tls_route(name: &str, origin: SocketAddr, server_name: Option<&str>, ca: &Pki) -> Route {
    let mut route = Route::new(name, &[origin])
        .path(&format!("/{name}"))
        .option("origin_tls", "true")
        .option(
            "origin_ca",
            &format!("{:?}", ca.ca_path.display().to_string()),
        );
    if let Some(n) = server_name {
        route = route.option("origin_server_name", &format!("{n:?}"));
    }
    route
}

/// The status of a ws:// upgrade to `path` through the proxy's plain listener.
async fn upgrade(proxy: &Proxy, path: &str) -> Result<common::Ws, u16> {
    match common::ws_connect_req(proxy.addr, common::ws_request(&proxy.ws_url(path))).await {
        Ok((ws, resp)) => {
            assert_eq!(resp.status().as_u16(), 101);
            Ok(ws)
        }
        Err(WsError::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("upgrade to {path}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_origins_are_verified_with_sni_and_refusals_are_502() {
    within(90, async {
        let pki = Pki::new("origins");
        let leaf = pki.leaf("origin", &["origin.test", "127.0.0.1"], KeyKind::Ecdsa);
        let other_ca = Pki::new("origins-other");
        let origin = TlsEchoOrigin::start(&leaf).await;
        let edge = pki.leaf("localhost", &["localhost"], KeyKind::Ecdsa);
        let config = Config::new()
            .route(tls_route("good", origin.addr, Some("origin.test"), &pki))
            .route(tls_route("byip", origin.addr, None, &pki))
            .route(tls_route("framed", origin.addr, Some("origin.test"), &pki).relay("frames"))
            .route(tls_route("spliced", origin.addr, Some("origin.test"), &pki).relay("splice"))
            .route(tls_route(
                "wrongname",
                origin.addr,
                Some("other.test"),
                &pki,
            ))
            .route(tls_route(
                "untrusted",
                origin.addr,
                Some("origin.test"),
                &other_ca,
            ))
            .table(&format!(
                "{}\n{TLS_LISTENER}",
                certificate("localhost", &edge, true)
            ));
        let mut proxy = Proxy::start(&config).await;

        // Verified, with SNI = origin_server_name; the relay works both ways, big messages too.
        let mut good = upgrade(&proxy, "/good")
            .await
            .expect("101 through a TLS origin");
        common::assert_echo(&mut good, Message::text("over TLS to the origin")).await;
        let big: Vec<u8> = (0..(1usize << 20)).map(|i| (i * 13 % 251) as u8).collect();
        common::assert_echo(&mut good, Message::binary(big)).await;
        assert_eq!(
            origin.sni.lock().expect("lock").first().cloned(),
            Some(Some("origin.test".to_owned())),
            "SNI = origin_server_name"
        );
        // Without a server name: verified against the origin's IP address, no SNI.
        let mut byip = upgrade(&proxy, "/byip").await.expect("101 by IP");
        common::assert_echo(&mut byip, Message::text("by address")).await;
        assert_eq!(origin.sni.lock().expect("lock").get(1).cloned(), Some(None));

        // The frames relay works over it; splice cannot move ciphertext and relays buffered.
        for path in ["/framed", "/spliced"] {
            let mut ws = upgrade(&proxy, path).await.expect("101");
            common::assert_echo(&mut ws, Message::text(path)).await;
            let big: Vec<u8> = (0..300_000usize).map(|i| (i * 7 % 251) as u8).collect();
            common::assert_echo(&mut ws, Message::binary(big)).await;
        }

        // A certificate for another name, or from an untrusted CA: 502, reason logged.
        for path in ["/wrongname", "/untrusted"] {
            let status = upgrade(&proxy, path).await.err();
            assert_eq!(status, Some(502), "{path}");
        }
        let refused = proxy
            .wait_log_reason("origin_tls_error", Duration::from_secs(5))
            .await;
        assert_eq!(refused["status"], 502, "{refused}");
        let routes: Vec<String> = {
            let mut seen = Vec::new();
            for _ in 0..2 {
                let line = proxy
                    .wait_log("another origin_tls_error", Duration::from_secs(5), |v| {
                        v["reason"] == "origin_tls_error"
                            && !seen.contains(&v["route"].as_str().unwrap_or("").to_owned())
                    })
                    .await;
                seen.push(line["route"].as_str().unwrap_or("").to_owned());
            }
            seen
        };
        assert!(
            routes.contains(&"wrongname".to_owned()) && routes.contains(&"untrusted".to_owned()),
            "{routes:?}"
        );
        // The verified connections never noticed.
        common::assert_echo(&mut good, Message::text("still up")).await;
        common::assert_echo(&mut byip, Message::text("still up")).await;

        // wss:// in front and behind: TLS terminated and originated by the edge.
        let client = tls_support::Client::new(&pki);
        let mut both = client
            .wss(*proxy.addrs.last().expect("tls"), "localhost", "/good")
            .await;
        tls_support::echo(&mut both, Message::text("TLS on both sides")).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_health_checks_speak_tls_to_tls_origins() {
    within(60, async {
        let pki = Pki::new("origins-health");
        let leaf = pki.leaf("origin", &["origin.test"], KeyKind::Ecdsa);
        let other_ca = Pki::new("origins-health-other");
        let origin = TlsEchoOrigin::start(&leaf).await;
        let health = "{ check = \"websocket\", path = \"/health\", interval = \"200ms\", timeout = \"150ms\", rise = 1, fall = 2 }";
        let config = Config::new()
            .route(tls_route("checked", origin.addr, Some("origin.test"), &pki).option("health", health))
            .route(
                tls_route("distrusted", origin.addr, Some("origin.test"), &other_ca)
                    .option("health", health),
            );
        let mut proxy = Proxy::start(&config).await;
        // Several check periods: the trusted route's checks complete TLS handshakes (the origin
        // records each), the distrusted route's fail on the certificate.
        let mut checks = 0;
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            checks = origin.sni.lock().expect("lock").len();
            if checks >= 3 {
                break;
            }
        }
        assert!(checks >= 3, "websocket checks over TLS reached the origin {checks} times");
        assert!(
            origin
                .sni
                .lock()
                .expect("lock")
                .iter()
                .all(|n| n.as_deref() == Some("origin.test")),
            "checks send origin_server_name as SNI"
        );
        // The trusted route's origin stays up; the distrusted one is down: 503, not 502.
        let mut ws = upgrade(&proxy, "/checked").await.expect("101: the origin is up");
        common::assert_echo(&mut ws, Message::text("checked")).await;
        assert_eq!(upgrade(&proxy, "/distrusted").await.err(), Some(503));
        proxy
            .wait_log_reason("no_live_origin", Duration::from_secs(5))
            .await;
    })
    .await;
}

/// A script proxying its client to `wss://{target}/up`: the close of the upstream reaches the
/// client as 1000 when clean, else 4002 with the upstream's code.
fn wss_proxy_script(target: &str) -> String {
    r#"
export default {
  fetch(request) {
    const { socket, response } = upgradeWebSocket(request);
    const upstream = new WebSocket("wss://TARGET/up");
    const early = [];
    upstream.onopen = () => { for (const m of early) upstream.send(m); early.length = 0; };
    upstream.onmessage = (event) => socket.send(event.data);
    upstream.onclose = (event) =>
      socket.close(event.wasClean ? 1000 : 4002, "upstream closed " + event.code);
    socket.onmessage = (event) =>
      upstream.readyState === WebSocket.OPEN ? upstream.send(event.data) : early.push(event.data);
    socket.onclose = () => upstream.close();
    return response;
  },
};
"#
    .replace("TARGET", target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_opens_wss_sockets_verified_against_their_url_name() {
    within(90, async {
        let pki = Pki::new("js-wss");
        let leaf = pki.leaf("origin", &["localhost", "127.0.0.1"], KeyKind::Ecdsa);
        let other_ca = Pki::new("js-wss-other");
        let origin = TlsEchoOrigin::start(&leaf).await;
        let scripts = js_support::Scripts::new("wss");
        let by_name = scripts.write(
            "name.js",
            &wss_proxy_script(&format!("localhost:{}", origin.addr.port())),
        );
        let by_ip = scripts.write("ip.js", &wss_proxy_script(&origin.addr.to_string()));
        let ca = |p: &Pki| format!("origin_ca = {:?}", p.ca_path.display().to_string());
        let config = Config::new()
            .table(&js_support::js_route(
                "byname",
                "/byname",
                &by_name,
                &[&ca(&pki)],
            ))
            .table(&js_support::js_route("byip", "/byip", &by_ip, &[&ca(&pki)]))
            .table(&js_support::js_route(
                "distrusted",
                "/distrusted",
                &by_name,
                &[&ca(&other_ca)],
            ));
        let proxy = Proxy::start(&config).await;

        // Verified against `localhost`, sent as SNI; the relay works both ways, big ones too.
        let mut ws = common::ws_connect(proxy.addr, "/byname").await;
        common::assert_echo(&mut ws, Message::text("through a wss:// socket")).await;
        let big: Vec<u8> = (0..(1usize << 20)).map(|i| (i * 7 % 251) as u8).collect();
        common::assert_echo(&mut ws, Message::binary(big)).await;
        assert_eq!(
            origin.sni.lock().expect("lock").as_slice(),
            [Some("localhost".to_owned())],
            "one handshake, SNI = the URL's name"
        );
        // By address: checked against the certificate's IP address, no SNI.
        let mut ip = common::ws_connect(proxy.addr, "/byip").await;
        common::assert_echo(&mut ip, Message::text("by address")).await;
        assert_eq!(origin.sni.lock().expect("lock").last(), Some(&None));

        // A CA the route does not trust: the socket fails (close 1006, not clean), the
        // origin never finishes a handshake, and the other sockets keep working.
        let before = origin.sni.lock().expect("lock").len();
        let mut bad = common::ws_connect(proxy.addr, "/distrusted").await;
        bad.send(Message::text("never relayed"))
            .await
            .expect("send");
        let (code, reason) = js_support::close_of(&mut bad)
            .await
            .expect("the script closes the client");
        assert_eq!((code, reason.as_str()), (4002, "upstream closed 1006"));
        assert_eq!(origin.sni.lock().expect("lock").len(), before);
        common::assert_echo(&mut ws, Message::text("still up")).await;
        common::assert_echo(&mut ip, Message::text("still up")).await;
    })
    .await;
}
