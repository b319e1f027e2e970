//! Tests with real rustls peers in memory (no sockets): a test PKI made at run time (rcgen;
//! no key is committed), written to a temporary directory because the store loads files.

mod certs;
mod client;
mod ktls;
mod server;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, RsaKeySize,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::{
    Alpn, CertStore, CertificateSpec, ClientAuth, ListenerSpec, NamePattern, TlsConfig, TlsError,
    TlsServer, TlsVersion,
};

/// A directory removed when dropped.
pub(crate) struct TestDir(pub(crate) PathBuf);

impl TestDir {
    pub(crate) fn new(tag: &str) -> TestDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wsedge-tls-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TestDir(dir)
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub(crate) fn write(&self, name: &str, data: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, data).expect("write test file");
        p
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
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

/// A throwaway CA that signs leaves into its directory.
pub(crate) struct Pki {
    pub(crate) dir: TestDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    pub(crate) ca_path: PathBuf,
}

/// A leaf's files and DER.
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

    fn sign(
        &self,
        stem: &str,
        names: &[&str],
        kind: KeyKind,
        usage: ExtendedKeyUsagePurpose,
    ) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or(stem));
        params.extended_key_usages = vec![usage];
        let key = key_pair(kind);
        let cert = params.signed_by(&key, &self.ca).expect("sign leaf");
        Leaf {
            cert: self.dir.write(&format!("{stem}.pem"), cert.pem()),
            key: self.dir.write(&format!("{stem}.key"), key.serialize_pem()),
            der: cert.der().clone(),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub(crate) fn leaf(&self, stem: &str, names: &[&str], kind: KeyKind) -> Leaf {
        self.sign(stem, names, kind, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate (for mutual TLS).
    pub(crate) fn client_leaf(&self, stem: &str, name: &str) -> Leaf {
        self.sign(
            stem,
            &[name],
            KeyKind::Ecdsa,
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    pub(crate) fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).expect("CA root");
        roots
    }
}

pub(crate) fn spec(id: &str, leaf: &Leaf, default: bool) -> CertificateSpec {
    CertificateSpec {
        id: id.to_owned(),
        cert: leaf.cert.clone(),
        key: leaf.key.clone(),
        names: None,
        default,
    }
}

pub(crate) fn listener() -> ListenerSpec {
    ListenerSpec {
        listen: vec!["127.0.0.1:8443".parse().expect("addr")],
        certificates: None,
        client_auth: ClientAuth::None,
        client_ca: None,
        alpn: Alpn::Http11,
        min_version: TlsVersion::Tls12,
        ktls: crate::KtlsMode::Auto,
    }
}

pub(crate) fn one_listener(certs: Vec<CertificateSpec>, listener: ListenerSpec) -> TlsConfig {
    TlsConfig {
        certificates: certs,
        listeners: vec![listener],
    }
}

/// A store with one ECDSA certificate for `a.test` (default) and one listener.
pub(crate) fn simple_store(pki: &Pki) -> (CertStore, Leaf) {
    let leaf = pki.leaf("a", &["a.test"], KeyKind::Ecdsa);
    let store =
        CertStore::load(&one_listener(vec![spec("a", &leaf, true)], listener())).expect("store");
    (store, leaf)
}

/// Client options for [`client`].
#[derive(Clone)]
pub(crate) struct ClientOpts {
    pub(crate) version: Option<TlsVersion>,
    pub(crate) alpn: Vec<&'static str>,
    pub(crate) sni: bool,
    /// `None`: accept any certificate (SNI-selection tests look at which one came).
    pub(crate) roots: Option<RootCertStore>,
    pub(crate) client_cert: Option<(PathBuf, PathBuf)>,
    pub(crate) secrets: bool,
    pub(crate) suites: Option<Vec<rustls::CipherSuite>>,
}

impl Default for ClientOpts {
    fn default() -> Self {
        ClientOpts {
            version: None,
            alpn: vec!["http/1.1"],
            sni: true,
            roots: None,
            client_cert: None,
            secrets: false,
            suites: None,
        }
    }
}

pub(crate) fn client_config(opts: &ClientOpts) -> Arc<ClientConfig> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if let Some(suites) = &opts.suites {
        provider
            .cipher_suites
            .retain(|s| suites.contains(&s.suite()));
    }
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = match opts.version {
        None => vec![&rustls::version::TLS13, &rustls::version::TLS12],
        Some(TlsVersion::Tls12) => vec![&rustls::version::TLS12],
        Some(TlsVersion::Tls13) => vec![&rustls::version::TLS13],
    };
    let builder = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&versions)
        .expect("versions");
    let builder = match &opts.roots {
        Some(roots) => builder.with_root_certificates(roots.clone()),
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny)),
    };
    let mut config = match &opts.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .expect("client cert")
                .collect::<Result<Vec<_>, _>>()
                .expect("client cert pem");
            let key = PrivateKeyDer::from_pem_file(key).expect("client key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
    };
    config.alpn_protocols = opts.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config.enable_sni = opts.sni;
    config.enable_secret_extraction = opts.secrets;
    Arc::new(config)
}

pub(crate) fn connect(config: &Arc<ClientConfig>, name: &str) -> ClientConnection {
    ClientConnection::new(
        config.clone(),
        ServerName::try_from(name.to_owned()).expect("server name"),
    )
    .expect("client connection")
}

/// Trusts any server certificate (but checks signatures, so handshakes stay real).
#[derive(Debug)]
struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A rustls client and a `TlsServer` joined in memory.
pub(crate) struct Pair {
    pub(crate) client: ClientConnection,
    pub(crate) server: TlsServer,
    /// Plaintext the server took / the client read.
    pub(crate) at_server: Vec<u8>,
    pub(crate) at_client: Vec<u8>,
    pub(crate) server_err: Option<TlsError>,
    pub(crate) client_err: Option<rustls::Error>,
    pub(crate) handshake_done_seen: usize,
}

impl Pair {
    pub(crate) fn new(client: ClientConnection, server: TlsServer) -> Pair {
        Pair {
            client,
            server,
            at_server: Vec::new(),
            at_client: Vec::new(),
            server_err: None,
            client_err: None,
            handshake_done_seen: 0,
        }
    }

    /// Moves bytes both ways until neither side has anything to say.
    pub(crate) fn run(&mut self) -> &mut Pair {
        for _ in 0..64 {
            let mut moved = false;
            let mut c2s = Vec::new();
            while self.client.wants_write() {
                match self.client.write_tls(&mut c2s) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            if !c2s.is_empty() && self.server_err.is_none() {
                moved = true;
                self.feed_server(&c2s);
            }
            let mut s2c = Vec::new();
            self.server.take_ciphertext(&mut s2c);
            if !s2c.is_empty() && self.client_err.is_none() {
                moved = true;
                self.feed_client(&s2c);
            }
            if !moved {
                break;
            }
        }
        self
    }

    pub(crate) fn feed_server(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.server.feed(bytes) {
                Ok(p) => {
                    if p.handshake_done {
                        self.handshake_done_seen += 1;
                    }
                    bytes = &bytes[p.consumed..];
                    let took = self.server.take_plaintext(&mut self.at_server);
                    assert!(p.consumed > 0 || took > 0, "feed made no progress");
                }
                Err(e) => {
                    self.server_err = Some(e);
                    return;
                }
            }
        }
    }

    pub(crate) fn feed_client(&mut self, bytes: &[u8]) {
        let mut rd = bytes;
        while !rd.is_empty() {
            match self.client.read_tls(&mut rd) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            match self.client.process_new_packets() {
                Ok(_) => {
                    use std::io::Read as _;
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = self.client.reader().read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        self.at_client.extend_from_slice(&buf[..n]);
                    }
                }
                Err(e) => {
                    self.client_err = Some(e);
                    return;
                }
            }
        }
    }

    pub(crate) fn assert_ok(&self) {
        assert!(self.server_err.is_none(), "server: {:?}", self.server_err);
        assert!(self.client_err.is_none(), "client: {:?}", self.client_err);
        assert!(!self.client.is_handshaking() && !self.server.is_handshaking());
    }

    /// The leaf the server presented.
    pub(crate) fn served_cert(&self) -> Option<CertificateDer<'static>> {
        self.client
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned()
    }
}

/// A full handshake of a fresh client against `store`'s listener 0.
pub(crate) fn handshake(store: &CertStore, opts: &ClientOpts, name: &str) -> Pair {
    let config = client_config(opts);
    let mut pair = Pair::new(
        connect(&config, name),
        store.listener(0).expect("listener").accept(),
    );
    pair.run();
    pair
}

pub(crate) fn names(list: &[&str]) -> Option<Vec<NamePattern>> {
    Some(
        list.iter()
            .map(|n| NamePattern::parse(n).expect("name"))
            .collect(),
    )
}

pub(crate) fn file_text(path: &Path) -> String {
    std::fs::read_to_string(path).expect("read")
}
