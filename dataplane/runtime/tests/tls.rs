//! wss:// through the real `wsedge` binary: TLS terminated by wsedge (rustls in the worker,
//! at the Transport seam) in front of a plain ws:// echo origin.
//!
//! The peers are independent of wsedge's TLS code: a rustls client through tokio-rustls under
//! tokio-tungstenite, and Python's `ssl` module (OpenSSL) with a hand-written WebSocket
//! exchange. Certificates come from a throwaway CA made by the test (rcgen; no key is
//! committed).

mod common;
mod js_support;
mod tls_support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::client_async_with_config;
use tokio_tungstenite::tungstenite::Message;

use common::origins::EchoOrigin;
use common::{Config, Proxy, Route, within, ws_config, ws_connect_req, ws_request};
use tls_support::{
    Client, KeyKind, Pki, TLS_LISTENER, certificate, echo, free_port, metrics, proxy,
    read_to_close, sample, served, tls_addr,
};

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_echo_over_tls13_and_tls12_to_a_plain_origin() {
    within(60, async {
        let pki = Pki::new("echo");
        let leaf = pki.leaf("localhost", &["localhost", "127.0.0.1"], KeyKind::Ecdsa);
        let rsa = pki.leaf("rsa", &["rsa.test"], KeyKind::Rsa);
        let origin = EchoOrigin::start().await;
        let certs = format!(
            "{}{}",
            certificate("localhost", &leaf, true),
            certificate("rsa", &rsa, false)
        );
        let mut proxy = proxy(origin.addr, &certs, "").await;
        let addr = tls_addr(&proxy);

        for (version, name, label) in [
            (&rustls::version::TLS13, "TLSv1.3", "localhost"),
            (&rustls::version::TLS12, "TLSv1.2", "localhost"),
            (&rustls::version::TLS13, "TLSv1.3", "rsa.test"),
            (&rustls::version::TLS12, "TLSv1.2", "rsa.test"),
        ] {
            let client = Client::new(&pki).version(version);
            let tls = client.tls(addr, label).await.expect("handshake");
            let (_, conn) = tls.get_ref();
            assert_eq!(
                conn.protocol_version().map(|v| format!("{v:?}")),
                Some(name.replace("v1.", "v1_")),
                "negotiated version"
            );
            assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
            let url = format!("wss://{label}:{}/echo", addr.port());
            let (mut ws, _) = client_async_with_config(url, tls, Some(ws_config()))
                .await
                .expect("WebSocket over TLS");
            echo(&mut ws, Message::text("hello over TLS")).await;
            // Larger than a TLS record and than the relay buffer: records cross reads.
            let big: Vec<u8> = (0..(1usize << 20)).map(|i| (i * 7 % 251) as u8).collect();
            echo(&mut ws, Message::binary(big)).await;
            for i in 0..50 {
                echo(&mut ws, Message::text(format!("message {i}"))).await;
            }
            ws.close(None).await.expect("close");
            while let Some(Ok(_)) = ws.next().await {}
        }

        // The origin was told the client spoke https.
        let requests = origin.requests();
        assert_eq!(requests.len(), 4);
        for r in &requests {
            assert_eq!(r.get("x-forwarded-proto"), Some("https"), "{}", r.raw);
        }
        // The plain listener still speaks ws://.
        let mut plain = common::ws_connect(proxy.addr, "/plain").await;
        common::assert_echo(&mut plain, Message::text("plain")).await;
        assert_eq!(
            origin
                .requests()
                .last()
                .and_then(|r| r.get("x-forwarded-proto").map(str::to_owned)),
            Some("http".to_owned())
        );
        let line = proxy
            .wait_log("of a wss connection", Duration::from_secs(5), |v| {
                v.get("status").and_then(serde_json::Value::as_u64) == Some(101)
            })
            .await;
        // The handshake's facts are logged.
        assert!(
            ["localhost", "rsa.test"].contains(&line["sni"].as_str().unwrap_or("")),
            "{line}"
        );
        assert!(
            ["TLSv1.3", "TLSv1.2"].contains(&line["tls_version"].as_str().unwrap_or("")),
            "{line}"
        );
        assert!(
            line["cipher"]
                .as_str()
                .is_some_and(|c| c.starts_with("TLS13_") || c.starts_with("TLS_ECDHE_")),
            "{line}"
        );
        assert_eq!(line["resumed"], false, "{line}");
        assert_eq!(line["client_cert"], "not_requested", "{line}");
        // The WebSocket close handshake ended it (the origin closes its TCP first).
        assert!(
            ["client_closed", "origin_closed"].contains(&line["reason"].as_str().unwrap_or("")),
            "{line}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_only_client_is_refused_and_others_go_on() {
    within(30, async {
        let pki = Pki::new("alpn");
        let leaf = pki.leaf("localhost", &["localhost"], KeyKind::Ecdsa);
        let origin = EchoOrigin::start().await;
        let mut proxy = proxy(origin.addr, &certificate("localhost", &leaf, true), "").await;
        let addr = tls_addr(&proxy);
        let mut live = Client::new(&pki).wss(addr, "localhost", "/live").await;

        let refused = Client::new(&pki)
            .alpn(&["h2"])
            .tls(addr, "localhost")
            .await
            .expect_err("an h2-only client must be refused");
        assert!(
            refused.to_string().contains("NoApplicationProtocol"),
            "refused with {refused}"
        );
        // Offering both is fine: http/1.1 is chosen.
        let tls = Client::new(&pki)
            .alpn(&["h2", "http/1.1"])
            .tls(addr, "localhost")
            .await
            .expect("h2 + http/1.1");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        echo(&mut live, Message::text("still here")).await;
        let line = proxy
            .wait_log_reason("tls_error", Duration::from_secs(5))
            .await;
        assert_eq!(line["status"], serde_json::Value::Null, "{line}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_plain_http_and_truncated_hellos_are_closed_and_counted() {
    within(60, async {
        let pki = Pki::new("garbage");
        let leaf = pki.leaf("localhost", &["localhost"], KeyKind::Ecdsa);
        let origin = EchoOrigin::start().await;
        let port = free_port();
        let mut proxy = proxy(
            origin.addr,
            &certificate("localhost", &leaf, true),
            &format!("[control]\nmetrics_listen = \"127.0.0.1:{port}\""),
        )
        .await;
        let addr = tls_addr(&proxy);
        let mut live = Client::new(&pki).wss(addr, "localhost", "/live").await;

        // Random bytes (a fixed xorshift stream), starting like a handshake record and not.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut random = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        };
        let mut garbage = vec![random(600), random(3000)];
        let mut record = vec![0x16, 0x03, 0x01, 0x02, 0x00];
        record.extend(random(512));
        garbage.push(record);
        let mut sent = 0;
        for bytes in &garbage {
            let mut tcp = TcpStream::connect(addr).await.expect("connect");
            tcp.write_all(bytes).await.expect("write garbage");
            let answer = read_to_close(&mut tcp).await;
            // At most a TLS alert record, never anything of the origin's.
            assert!(
                answer.is_empty() || answer[0] == 0x15,
                "answer to garbage: {answer:?}"
            );
            sent += 1;
        }
        // Plain HTTP on the TLS port: a 400 in clear, as nginx answers.
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("write");
        let answer = String::from_utf8_lossy(&read_to_close(&mut tcp).await).into_owned();
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n")
                && answer.contains("plain HTTP request was sent to HTTPS port"),
            "{answer}"
        );
        sent += 1;
        // A ClientHello cut short, then EOF.
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(&[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00])
            .await
            .expect("write");
        tcp.shutdown().await.expect("shutdown");
        assert!(read_to_close(&mut tcp).await.is_empty());

        // The live connection did not notice.
        echo(&mut live, Message::text("unaffected")).await;
        let mut fresh = Client::new(&pki).wss(addr, "localhost", "/fresh").await;
        echo(&mut fresh, Message::text("new connections too")).await;

        let mut counted = 0;
        for _ in 0..50 {
            let text = metrics(port).await;
            counted = sample(
                &text,
                "wsedge_connections_closed_total",
                "reason=\"tls_error\"",
            );
            if counted >= sent {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            counted, sent,
            "TLS failures counted as closes with reason tls_error"
        );
        let text = metrics(port).await;
        assert_eq!(
            sample(&text, "wsedge_tls_errors_total", "kind=\"plaintext_http\""),
            1,
            "{text}"
        );
        assert!(
            sample(&text, "wsedge_tls_handshakes_total", "") >= 2,
            "{text}"
        );
        proxy
            .wait_log_reason("tls_error", Duration::from_secs(5))
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_selects_among_certificates_with_a_default() {
    within(60, async {
        let pki = Pki::new("sni");
        let default = pki.leaf("localhost", &["localhost", "127.0.0.1"], KeyKind::Ecdsa);
        let a = pki.leaf("a", &["a.test"], KeyKind::Ecdsa);
        let wild = pki.leaf("wild", &["*.b.test"], KeyKind::Rsa);
        let origin = EchoOrigin::start().await;
        let certs = format!(
            "{}{}{}",
            certificate("localhost", &default, true),
            certificate("a", &a, false),
            certificate("wild", &wild, false)
        );
        let proxy = proxy(origin.addr, &certs, "").await;
        let addr = tls_addr(&proxy);
        let client = Client::new(&pki);
        for (name, want) in [
            ("a.test", &a.der),
            ("x.b.test", &wild.der),
            ("localhost", &default.der),
            // An IP address: rustls sends no SNI, so the default answers.
            ("127.0.0.1", &default.der),
        ] {
            let tls = client.tls(addr, name).await.expect("handshake");
            assert!(served(&tls) == *want, "{name} got the wrong certificate");
            let url = format!("wss://{name}:{}/sni", addr.port());
            let (mut ws, _) = client_async_with_config(url, tls, Some(ws_config()))
                .await
                .expect("WebSocket");
            echo(&mut ws, Message::text(name)).await;
        }
        // An unknown name with a default: the default (whose name the client then refuses:
        // that is the client's check, not a failure of ours).
        let err = client
            .tls(addr, "unknown.test")
            .await
            .expect_err("the default certificate does not name unknown.test");
        assert!(err.to_string().contains("certificate"), "{err}");
        drop(proxy);

        // Without a default, an unknown name is refused with unrecognized_name.
        let certs = format!(
            "{}{}",
            certificate("a", &a, false),
            certificate("wild", &wild, false)
        );
        let mut proxy = self::proxy(origin.addr, &certs, "").await;
        let addr = tls_addr(&proxy);
        let err = client
            .tls(addr, "unknown.test")
            .await
            .expect_err("unknown name without default");
        assert!(err.to_string().contains("UnrecognisedName"), "{err}");
        let mut ws = client.wss(addr, "a.test", "/a").await;
        echo(&mut ws, Message::text("a")).await;
        proxy
            .wait_log_reason("tls_error", Duration::from_secs(5))
            .await;
    })
    .await;
}

/// Python's `ssl` (OpenSSL): a second TLS implementation, with a WebSocket exchange written
/// by hand.
const PYTHON_CLIENT: &str = r#"
import base64, os, socket, ssl, struct, sys
host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
ctx.set_alpn_protocols(["http/1.1"])
with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
    with ctx.wrap_socket(raw, server_hostname=host) as s:
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall((f"GET /py HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                sys.exit("closed during the handshake: %r" % head)
            head += chunk
        head, rest = head.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        payload = ("python ssl " + s.version()).encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
        while len(rest) < 2 + len(payload):
            chunk = s.recv(4096)
            if not chunk:
                sys.exit("closed before the echo")
            rest += chunk
        assert rest[0] == 0x81 and rest[1] == len(payload), rest
        assert rest[2:2 + len(payload)] == payload, rest
        print(s.version(), s.selected_alpn_protocol(), s.cipher()[0])
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_ssl_client_gets_its_echo() {
    within(60, async {
        let pki = Pki::new("python");
        let leaf = pki.leaf("localhost", &["localhost"], KeyKind::Ecdsa);
        let origin = EchoOrigin::start().await;
        let proxy = proxy(origin.addr, &certificate("localhost", &leaf, true), "").await;
        let addr = tls_addr(&proxy);
        let ca = pki.ca_path.clone();
        let out = tokio::task::spawn_blocking(move || python(&ca, addr))
            .await
            .expect("python task");
        assert!(
            out.status.success(),
            "python ssl client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.starts_with("TLSv1.3 http/1.1 TLS_"), "{said}");
    })
    .await;
}

fn python(ca: &Path, addr: SocketAddr) -> std::process::Output {
    std::process::Command::new("python3")
        .arg("-c")
        .arg(PYTHON_CLIENT)
        .arg("localhost")
        .arg(addr.port().to_string())
        .arg(ca)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}): install python3 (apt-get install python3)")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_other_than_the_sni_is_misdirected() {
    within(60, async {
        let pki = Pki::new("misdirected");
        let leaf = pki.leaf("both", &["a.test", "b.test", "127.0.0.1"], KeyKind::Ecdsa);
        let origin = EchoOrigin::start().await;
        let mut proxy = proxy(origin.addr, &certificate("both", &leaf, true), "").await;
        let addr = tls_addr(&proxy);
        let client = Client::new(&pki);
        // The status of an upgrade over TLS made for `sni`, asking for `host`.
        let status = |sni: &'static str, host: &'static str| {
            let client = &client;
            async move {
                use tokio_tungstenite::tungstenite::client::IntoClientRequest;
                let tls = client.tls(addr, sni).await.expect("TLS handshake");
                let mut req = format!("wss://{sni}:{}/m", addr.port())
                    .into_client_request()
                    .expect("request");
                req.headers_mut()
                    .insert("host", host.parse().expect("host header"));
                match client_async_with_config(req, tls, Some(ws_config())).await {
                    Ok((mut ws, resp)) => {
                        echo(&mut ws, Message::text(host)).await;
                        resp.status().as_u16()
                    }
                    Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                        resp.status().as_u16()
                    }
                    Err(e) => panic!("{sni}/{host}: {e}"),
                }
            }
        };
        // The same name (any case, with a port or a trailing dot): served.
        assert_eq!(status("a.test", "a.test").await, 101);
        assert_eq!(status("a.test", "A.Test:8443").await, 101);
        assert_eq!(status("a.test", "a.test.").await, 101);
        // Another name the certificate also covers: 421, the route is never chosen.
        assert_eq!(status("a.test", "b.test").await, 421);
        let line = proxy
            .wait_log_reason("misdirected", Duration::from_secs(5))
            .await;
        assert_eq!(line["status"], 421, "{line}");
        assert_eq!(line["sni"], "a.test", "{line}");
        assert_eq!(
            origin.requests().len(),
            3,
            "the origin saw only the matching ones"
        );
        // No SNI (a client connecting to an address): no name to compare.
        assert_eq!(status("127.0.0.1", "b.test").await, 101);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_select_on_the_sni_name_and_never_on_plain_connections() {
    within(60, async {
        let pki = Pki::new("sni-routes");
        let a = pki.leaf("a", &["a.test"], KeyKind::Ecdsa);
        let w = pki.leaf("w", &["*.w.test"], KeyKind::Ecdsa);
        let api = EchoOrigin::start().await;
        let wild = EchoOrigin::start().await;
        // Two routes on the same path, told apart only by the TLS server name.
        let config = Config::new()
            .route(Route::new("api", &[api.addr]).option("sni", "\"a.test\""))
            .route(Route::new("wild", &[wild.addr]).option("sni", "\"*.w.test\""))
            .table(&format!(
                "{}{}\n{TLS_LISTENER}",
                certificate("a", &a, false),
                certificate("w", &w, false)
            ));
        let mut proxy = Proxy::start(&config).await;
        let addr = tls_addr(&proxy);
        let client = Client::new(&pki);

        let mut ws = client.wss(addr, "a.test", "/to-api").await;
        echo(&mut ws, Message::text("for a.test")).await;
        let mut ws2 = client.wss(addr, "x.w.test", "/to-wild").await;
        echo(&mut ws2, Message::text("for x.w.test")).await;
        let paths =
            |o: &EchoOrigin| -> Vec<String> { o.requests().into_iter().map(|r| r.path).collect() };
        assert_eq!(paths(&api), ["/to-api"], "SNI a.test: the api route");
        assert_eq!(
            paths(&wild),
            ["/to-wild"],
            "SNI x.w.test: the wildcard route"
        );
        drop((ws, ws2));
        let line = proxy
            .wait_log("of the api route", Duration::from_secs(5), |l| {
                l["route"] == "api"
            })
            .await;
        assert_eq!(line["sni"], "a.test", "{line}");
        assert_eq!(line["status"], 101, "{line}");

        // The plain listener, asking for the same Host: no route with sni matches it.
        let plain = proxy.addrs[0];
        let req = ws_request(&format!("ws://a.test:{}/to-api", plain.port()));
        match ws_connect_req(plain, req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 404)
            }
            other => panic!("a plain connection reached an sni route: {other:?}"),
        }
        assert_eq!(
            paths(&api),
            ["/to-api"],
            "no plain request reached the api origin"
        );
        assert_eq!(paths(&wild), ["/to-wild"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_answers_messages_bigger_than_the_tls_send_bound() {
    within(60, async {
        let pki = Pki::new("fn-big");
        let leaf = pki.leaf("localhost", &["localhost"], KeyKind::Ecdsa);
        let origin = EchoOrigin::start().await;
        let scripts = js_support::Scripts::new("tls-big");
        let script = scripts.write(
            "echo.js",
            "export default { fetch(request) {\n  const { socket, response } = upgradeWebSocket(request);\n  socket.onmessage = (event) => socket.send(event.data);\n  return response;\n} };\n",
        );
        let route = js_support::js_route("jsecho", "/jsecho", &script, &[]);
        let proxy = proxy(origin.addr, &certificate("localhost", &leaf, true), &route).await;
        let addr = tls_addr(&proxy);
        let client = Client::new(&pki);
        let mut ws = client.wss(addr, "localhost", "/jsecho").await;
        // A script's send is one chunk of its own: 1 MiB is four times the TLS side's
        // 256 KiB send bound (such a chunk was once dropped without a word).
        let big: Vec<u8> = (0..(1usize << 20)).map(|i| (i * 11 % 251) as u8).collect();
        echo(&mut ws, Message::binary(big)).await;
        echo(&mut ws, Message::text("and after it")).await;
        assert_eq!(origin.requests().len(), 0, "answered by the edge");
    })
    .await;
}
