//! Support for the TLS integration tests (tls*.rs): a throwaway PKI made by the test (rcgen;
//! no key is committed), a rustls client through tokio-rustls under tokio-tungstenite, the
//! proxy with a TLS listener, and metrics scraping.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, RsaKeySize,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use crate::common::{Config, Proxy, Route, ws_config};

pub(crate) type Wss = WebSocketStream<TlsStream<TcpStream>>;

// ---------------------------------------------------------------------------------------------
// A throwaway PKI
// ---------------------------------------------------------------------------------------------

/// A directory removed when dropped.
pub(crate) struct TestDir(pub(crate) PathBuf);

impl TestDir {
    pub(crate) fn new(tag: &str) -> TestDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wsedge-it-tls-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TestDir(dir)
    }

    pub(crate) fn write(&self, name: &str, data: impl AsRef<[u8]>) -> PathBuf {
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
pub(crate) enum KeyKind {
    Ecdsa,
    Rsa,
}

pub(crate) fn key_pair(kind: KeyKind) -> KeyPair {
    match kind {
        KeyKind::Ecdsa => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("p256 key"),
        KeyKind::Rsa => {
            KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048).expect("rsa key")
        }
    }
}

/// A CA that signs server certificates into its directory.
pub(crate) struct Pki {
    pub(crate) dir: TestDir,
    pub(crate) ca: CertifiedIssuer<'static, KeyPair>,
    pub(crate) ca_path: PathBuf,
}

/// A leaf certificate's files and DER.
pub(crate) struct Leaf {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) der: CertificateDer<'static>,
}

impl Pki {
    pub(crate) fn new(tag: &str) -> Pki {
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
    pub(crate) fn leaf(&self, stem: &str, names: &[&str], kind: KeyKind) -> Leaf {
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

    /// A client certificate (`clientAuth`) for `name`, signed by this CA.
    pub(crate) fn client_leaf(&self, stem: &str, name: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = key_pair(KeyKind::Ecdsa);
        let cert = params.signed_by(&key, &self.ca).expect("sign client leaf");
        Leaf {
            cert: self.dir.write(&format!("{stem}.pem"), cert.pem()),
            key: self.dir.write(&format!("{stem}.key"), key.serialize_pem()),
            der: cert.der().clone(),
        }
    }

    pub(crate) fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).expect("CA root");
        roots
    }
}

/// A `[[certificate]]` table.
pub(crate) fn certificate(id: &str, leaf: &Leaf, default: bool) -> String {
    format!(
        "[[certificate]]\nid = {id:?}\ncert = {:?}\nkey = {:?}\ndefault = {default}\n",
        leaf.cert.display().to_string(),
        leaf.key.display().to_string()
    )
}

pub(crate) const TLS_LISTENER: &str = "[[tls_listener]]\nlisten = [\"127.0.0.1:0\"]\n";

/// A free loopback port (for the metrics endpoint).
pub(crate) fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The proxy's TLS listener (listed after the plain one).
pub(crate) fn tls_addr(proxy: &Proxy) -> SocketAddr {
    *proxy.addrs.last().expect("a TLS listener")
}

// ---------------------------------------------------------------------------------------------
// A rustls client
// ---------------------------------------------------------------------------------------------

pub(crate) struct Client {
    /// A client certificate (its DER chain and PEM key file) to present.
    identity: Option<(CertificateDer<'static>, PathBuf)>,
    roots: RootCertStore,
    versions: &'static [&'static rustls::SupportedProtocolVersion],
    alpn: Vec<Vec<u8>>,
}

impl Client {
    pub(crate) fn new(pki: &Pki) -> Client {
        Client {
            identity: None,
            roots: pki.roots(),
            versions: rustls::ALL_VERSIONS,
            alpn: vec![b"http/1.1".to_vec()],
        }
    }

    pub(crate) fn version(mut self, v: &'static rustls::SupportedProtocolVersion) -> Client {
        static TLS12: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
        static TLS13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        self.versions = match v.version {
            rustls::ProtocolVersion::TLSv1_2 => &TLS12,
            _ => &TLS13,
        };
        self
    }

    /// Presents `leaf` as its client certificate.
    pub(crate) fn identity(mut self, leaf: &Leaf) -> Client {
        self.identity = Some((leaf.der.clone(), leaf.key.clone()));
        self
    }

    pub(crate) fn alpn(mut self, protocols: &[&str]) -> Client {
        self.alpn = protocols.iter().map(|p| p.as_bytes().to_vec()).collect();
        self
    }

    pub(crate) fn connector(&self) -> TlsConnector {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(self.versions)
            .expect("versions")
            .with_root_certificates(self.roots.clone());
        let mut config = match &self.identity {
            None => config.with_no_client_auth(),
            Some((der, key)) => {
                let pem = std::fs::read(key).expect("client key");
                let key =
                    rustls::pki_types::PrivateKeyDer::from_pem_slice(&pem).expect("client key PEM");
                config
                    .with_client_auth_cert(vec![der.clone()], key)
                    .expect("client certificate")
            }
        };
        config.alpn_protocols = self.alpn.clone();
        TlsConnector::from(Arc::new(config))
    }

    /// The TLS handshake with `server_name` (a DNS name sends SNI; an IP address sends none).
    pub(crate) async fn tls(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(server_name.to_owned()).expect("server name");
        self.connector().connect(name, tcp).await
    }

    /// The TLS handshake from source address `ip` (which names the worker: [`worker_of`]).
    pub(crate) async fn tls_from(
        &self,
        ip: Ipv4Addr,
        addr: SocketAddr,
        server_name: &str,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = tcp_from(ip, addr).await;
        let name = ServerName::try_from(server_name.to_owned()).expect("server name");
        self.connector().connect(name, tcp).await
    }

    /// wss:// to `path` through the proxy, as `server_name`.
    pub(crate) async fn wss(&self, addr: SocketAddr, server_name: &str, path: &str) -> Wss {
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
pub(crate) fn served(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a server certificate")
        .clone()
        .into_owned()
}

pub(crate) async fn echo(ws: &mut Wss, msg: Message) {
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
pub(crate) async fn proxy(origin: SocketAddr, certs: &str, extra: &str) -> Proxy {
    let config = Config::new()
        .route(Route::new("echo", &[origin]))
        .table(&format!("{certs}\n{TLS_LISTENER}\n{extra}"));
    Proxy::start(&config).await
}

/// Reads until EOF or reset; the bytes read before.
pub(crate) async fn read_to_close(tcp: &mut TcpStream) -> Vec<u8> {
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

pub(crate) async fn metrics(port: u16) -> String {
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
pub(crate) fn sample(text: &str, family: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(family) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The worker the reuseport steering program sends IPv4 client `ip` to (the arithmetic of
/// `wsedge_ring::sys::steer_by_client_address`).
pub(crate) fn worker_of(ip: Ipv4Addr, workers: u32) -> u64 {
    u64::from((u32::from(ip).wrapping_mul(0x9E37_79B1) >> 16) % workers)
}

/// A loopback source address that `workers` workers steer to `worker`.
pub(crate) fn source_for(worker: u64, workers: u32) -> Ipv4Addr {
    (2..=250u8)
        .map(|last| Ipv4Addr::new(127, 0, 0, last))
        .find(|ip| worker_of(*ip, workers) == worker)
        .expect("a loopback address for every worker")
}

/// A TCP connection to `addr` from source address `ip` (any of 127.0.0.0/8 works).
pub(crate) async fn tcp_from(ip: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(IpAddr::V4(ip), 0))
        .unwrap_or_else(|e| panic!("bind {ip}: {e}"));
    let tcp = socket
        .connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr} from {ip}: {e}"));
    let _ = tcp.set_nodelay(true);
    tcp
}
