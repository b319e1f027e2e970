//! wss:// through the real `wsedge` binary: TLS terminated by wsedge (rustls in the worker,
//! at the Transport seam) in front of a plain ws:// echo origin.
//!
//! The peers are independent of wsedge's TLS code: a rustls client through tokio-rustls under
//! tokio-tungstenite, and Python's `ssl` module (OpenSSL) with a hand-written WebSocket
//! exchange. Certificates come from a throwaway CA made by the test (rcgen; no key is
//! committed).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, RsaKeySize,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use common::origins::EchoOrigin;
use common::{Config, Proxy, Route, within, ws_config};

type Wss = WebSocketStream<TlsStream<TcpStream>>;

// ---------------------------------------------------------------------------------------------
// A throwaway PKI
// ---------------------------------------------------------------------------------------------

/// A directory removed when dropped.
struct TestDir(PathBuf);

impl TestDir {
    fn new(tag: &str) -> TestDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wsedge-it-tls-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TestDir(dir)
    }

    fn write(&self, name: &str, data: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, data).expect("write test file");
        p
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Clone, Copy)]
enum KeyKind {
    Ecdsa,
    Rsa,
}

fn key_pair(kind: KeyKind) -> KeyPair {
    match kind {
        KeyKind::Ecdsa => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("p256 key"),
        KeyKind::Rsa => {
            KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048).expect("rsa key")
        }
    }
}

/// A CA that signs server certificates into its directory.
struct Pki {
    dir: TestDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    ca_path: PathBuf,
}

/// A leaf certificate's files and DER.
struct Leaf {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let dir = TestDir::new(tag);
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("wsedge test CA {tag}"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, key_pair(KeyKind::Ecdsa)).expect("CA");
        let ca_path = dir.write("ca.pem", ca.pem());
        Pki { dir, ca, ca_path }
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    fn leaf(&self, stem: &str, names: &[&str], kind: KeyKind) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or(stem));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = key_pair(kind);
        let cert = params.signed_by(&key, &self.ca).expect("sign leaf");
        Leaf {
            cert: self.dir.write(&format!("{stem}.pem"), cert.pem()),
            key: self.dir.write(&format!("{stem}.key"), key.serialize_pem()),
            der: cert.der().clone(),
        }
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).expect("CA root");
        roots
    }
}

/// A `[[certificate]]` table.
fn certificate(id: &str, leaf: &Leaf, default: bool) -> String {
    format!(
        "[[certificate]]\nid = {id:?}\ncert = {:?}\nkey = {:?}\ndefault = {default}\n",
        leaf.cert.display().to_string(),
        leaf.key.display().to_string()
    )
}

const TLS_LISTENER: &str = "[[tls_listener]]\nlisten = [\"127.0.0.1:0\"]\n";

/// A free loopback port (for the metrics endpoint).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The proxy's TLS listener (listed after the plain one).
fn tls_addr(proxy: &Proxy) -> SocketAddr {
    *proxy.addrs.last().expect("a TLS listener")
}

// ---------------------------------------------------------------------------------------------
// A rustls client
// ---------------------------------------------------------------------------------------------

struct Client {
    roots: RootCertStore,
    versions: &'static [&'static rustls::SupportedProtocolVersion],
    alpn: Vec<Vec<u8>>,
}

impl Client {
    fn new(pki: &Pki) -> Client {
        Client {
            roots: pki.roots(),
            versions: rustls::ALL_VERSIONS,
            alpn: vec![b"http/1.1".to_vec()],
        }
    }

    fn version(mut self, v: &'static rustls::SupportedProtocolVersion) -> Client {
        static TLS12: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
        static TLS13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        self.versions = match v.version {
            rustls::ProtocolVersion::TLSv1_2 => &TLS12,
            _ => &TLS13,
        };
        self
    }

    fn alpn(mut self, protocols: &[&str]) -> Client {
        self.alpn = protocols.iter().map(|p| p.as_bytes().to_vec()).collect();
        self
    }

    fn connector(&self) -> TlsConnector {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(self.versions)
            .expect("versions")
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = self.alpn.clone();
        TlsConnector::from(Arc::new(config))
    }

    /// The TLS handshake with `server_name` (a DNS name sends SNI; an IP address sends none).
    async fn tls(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(server_name.to_owned()).expect("server name");
        self.connector().connect(name, tcp).await
    }

    /// wss:// to `path` through the proxy, as `server_name`.
    async fn wss(&self, addr: SocketAddr, server_name: &str, path: &str) -> Wss {
        let tls = self.tls(addr, server_name).await.expect("TLS handshake");
        let url = format!("wss://{server_name}:{}{path}", addr.port());
        let (ws, resp) = client_async_with_config(url, tls, Some(ws_config()))
            .await
            .expect("WebSocket handshake over TLS");
        assert_eq!(resp.status(), 101);
        ws
    }
}

/// The certificate the server presented.
fn served(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a server certificate")
        .clone()
        .into_owned()
}

async fn echo(ws: &mut Wss, msg: Message) {
    ws.send(msg.clone()).await.expect("send");
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(m @ (Message::Text(_) | Message::Binary(_))))) => {
                assert_eq!(m, msg, "echo differs");
                return;
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("no echo: {other:?}"),
        }
    }
}

/// A proxy with a plain listener and a TLS one, serving `certs` tables, routing `/` to
/// `origin`.
async fn proxy(origin: SocketAddr, certs: &str, extra: &str) -> Proxy {
    let config = Config::new()
        .route(Route::new("echo", &[origin]))
        .table(&format!("{certs}\n{TLS_LISTENER}\n{extra}"));
    Proxy::start(&config).await
}

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

/// Reads until EOF or reset; the bytes read before.
async fn read_to_close(tcp: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the proxy did not close within 5 s (got {got:?})"),
        }
    }
}

async fn metrics(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("scrape");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("read metrics");
    body
}

/// The sum of a metric family's samples whose labels contain `label`.
fn sample(text: &str, family: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(family) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
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
