//! The `tls` checks: `wsedge_tls::TlsServer` fed arbitrary bytes and arbitrary interleavings of
//! feed / take / seal / close, alone or after a real handshake with a rustls client (so the
//! record layer after the handshake is reached too).
//!
//! Invariants: nothing panics; `feed` never reports more consumed than it was given; the
//! plaintext waiting is bounded (the limit plus one read's worth of records); after an error
//! every later `feed` fails the same way and `seal` refuses; `take_*` report what they
//! appended; a `seal` refused for room queues nothing.

use std::io::Write as _;
use std::sync::{Arc, OnceLock};

use arbitrary::{Arbitrary, Unstructured};
use wsedge_tls::rustls::pki_types::ServerName;
use wsedge_tls::rustls::{self, ClientConfig, ClientConnection};
use wsedge_tls::{
    Alpn, CertStore, CertificateSpec, ClientAuth, ListenerSpec, ServerTls, TlsConfig, TlsError,
    TlsLimits, TlsServer, TlsVersion,
};

const LIMITS: TlsLimits = TlsLimits {
    max_plaintext: 4096,
    max_unsent: 32 * 1024,
};
/// What `feed` may leave waiting: the limit, plus what one read of rustls's (at most one
/// maximum-size record and a read chunk) decrypts past it.
const PLAINTEXT_BOUND: usize = 4096 + 18 * 1024 + 4096;

struct Fixture {
    server: ServerTls,
    client: Arc<ClientConfig>,
}

/// One certificate (made once, with rcgen) and a client that trusts anything: the fuzz is
/// about bytes, not about verification.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let params = rcgen::CertificateParams::new(vec!["a.test".to_owned()]).expect("params");
        let cert = params.self_signed(&key).expect("cert");
        let dir = std::env::temp_dir().join(format!("wsedge-fuzz-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let cert_path = dir.join("a.pem");
        let key_path = dir.join("a.key");
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        let store = CertStore::load(&TlsConfig {
            certificates: vec![CertificateSpec {
                id: "a".into(),
                cert: cert_path,
                key: key_path,
                names: None,
                default: false,
            }],
            listeners: vec![ListenerSpec {
                listen: vec!["127.0.0.1:1".parse().expect("addr")],
                certificates: None,
                client_auth: ClientAuth::None,
                client_ca: None,
                alpn: Alpn::Http11,
                min_version: TlsVersion::Tls12,
                ktls: Default::default(),
            }],
        })
        .expect("store");
        let _ = std::fs::remove_dir_all(&dir);
        let server = store
            .listener(0)
            .expect("listener")
            .clone()
            .with_limits(LIMITS);
        let mut client = ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        Fixture {
            server,
            client: Arc::new(client),
        }
    })
}

#[derive(Debug)]
struct AnyCert;

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[derive(Debug, Arbitrary)]
enum Op {
    /// Raw bytes into the server.
    Feed(Vec<u8>),
    TakePlaintext,
    TakeCiphertext,
    Seal(Vec<u8>),
    CloseNotify,
    /// The client writes application data (real records).
    ClientSend(Vec<u8>),
    ClientClose,
    /// The client's pending records to the server, maybe cut short or with a byte changed.
    Deliver {
        cut: Option<u16>,
        flip: Option<(u16, u8)>,
    },
    /// The server's pending records to the client.
    Answer,
}

/// The server with the checks around every call.
struct Checked {
    server: TlsServer,
    failed: Option<TlsError>,
    closed: bool,
}

impl Checked {
    fn feed(&mut self, bytes: &[u8]) {
        let result = self.server.feed(bytes);
        match (&self.failed, result) {
            (Some(first), Err(again)) => assert_eq!(first.kind(), again.kind(), "error changed"),
            (Some(first), Ok(p)) => panic!("feed succeeded after {first:?}: {p:?}"),
            (None, Ok(p)) => {
                assert!(
                    p.consumed <= bytes.len(),
                    "consumed {} of {}",
                    p.consumed,
                    bytes.len()
                );
                assert!(
                    p.plaintext <= PLAINTEXT_BOUND,
                    "{} bytes of plaintext waiting",
                    p.plaintext
                );
            }
            (None, Err(e)) => {
                assert!(!e.to_string().is_empty());
                self.failed = Some(e);
            }
        }
    }

    /// Feeds everything, taking plaintext whenever `feed` stops.
    fn feed_all(&mut self, mut bytes: &[u8]) {
        let mut spins = 0;
        while !bytes.is_empty() && self.failed.is_none() {
            let Ok(p) = self.server.feed(bytes) else {
                self.feed(bytes);
                return;
            };
            assert!(p.consumed <= bytes.len());
            assert!(
                p.plaintext <= PLAINTEXT_BOUND,
                "{} bytes waiting",
                p.plaintext
            );
            bytes = &bytes[p.consumed..];
            let mut out = Vec::new();
            let n = self.server.take_plaintext(&mut out);
            assert_eq!(n, out.len());
            if p.consumed == 0 && n == 0 {
                spins += 1;
                assert!(spins < 3, "feed makes no progress and nothing to take");
            }
        }
    }

    fn take_ciphertext(&mut self) -> Vec<u8> {
        let mut out = vec![0xee; 3];
        let n = self.server.take_ciphertext(&mut out);
        assert_eq!(n + 3, out.len(), "take_ciphertext reports what it appended");
        assert!(
            !self.server.wants_write(),
            "records left after take_ciphertext"
        );
        out.split_off(3)
    }

    fn seal(&mut self, data: &[u8]) {
        match self.server.seal(data) {
            Ok(()) => assert!(
                self.failed.is_none() && !self.closed,
                "seal accepted after the end"
            ),
            Err(TlsError::SendQueueFull { queued, limit }) => {
                assert!(queued + data.len() > limit)
            }
            Err(_) => {}
        }
    }
}

/// Entry point: the first byte picks raw bytes (0), ops on a fresh server (1), or ops after
/// a completed handshake (2).
pub fn tls(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let mut s = Checked {
        server: f.server.accept(),
        failed: None,
        closed: false,
    };
    match mode % 3 {
        0 => {
            // Split the bytes at points taken from the bytes themselves.
            let mut at = 0;
            let mut k = 0usize;
            while at < rest.len() && s.failed.is_none() {
                let step = 1 + usize::from(rest[k % rest.len()]) * 7;
                k += 1;
                let end = (at + step).min(rest.len());
                s.feed_all(&rest[at..end]);
                at = end;
                s.take_ciphertext();
            }
        }
        m => {
            let name = ServerName::try_from("a.test").expect("name");
            let mut client = Peer {
                conn: ClientConnection::new(f.client.clone(), name).expect("client"),
                dead: false,
            };
            client.conn.set_buffer_limit(None);
            if m == 2 {
                for _ in 0..8 {
                    let to_server = client_records(&mut client.conn);
                    s.feed_all(&to_server);
                    let to_client = s.take_ciphertext();
                    if to_server.is_empty() && to_client.is_empty() {
                        break;
                    }
                    to_client_conn(&mut client, &to_client);
                }
                assert!(
                    s.failed.is_some() || !s.server.is_handshaking(),
                    "an honest handshake did not finish"
                );
            }
            let mut u = Unstructured::new(rest);
            let mut steps = 0;
            while let Ok(op) = Op::arbitrary(&mut u) {
                steps += 1;
                if steps > 64 {
                    break;
                }
                run_op(&mut s, &mut client, op);
            }
        }
    }
}

fn client_records(client: &mut ClientConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while client.wants_write() {
        match client.write_tls(&mut out) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    out
}

/// The real rustls client the ops drive. Once it has failed (a fatal alert sent) it is dead:
/// rustls wants such a connection dropped, and asserts (debug builds) if it is used again.
struct Peer {
    conn: ClientConnection,
    dead: bool,
}

fn to_client_conn(peer: &mut Peer, bytes: &[u8]) {
    if peer.dead {
        return;
    }
    let client = &mut peer.conn;
    let mut rd = bytes;
    while !rd.is_empty() {
        match client.read_tls(&mut rd) {
            Ok(0) => return,
            Err(_) => {
                peer.dead = true;
                return;
            }
            Ok(_) => {}
        }
        if client.process_new_packets().is_err() {
            peer.dead = true;
            return;
        }
        let mut sink = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut client.reader(), &mut sink) {
            if n == 0 {
                break;
            }
        }
    }
}

fn run_op(s: &mut Checked, client: &mut Peer, op: Op) {
    match op {
        Op::Feed(bytes) => s.feed(&bytes),
        Op::TakePlaintext => {
            let mut out = vec![1, 2];
            let n = s.server.take_plaintext(&mut out);
            assert_eq!(n + 2, out.len());
        }
        Op::TakeCiphertext => {
            s.take_ciphertext();
        }
        Op::Seal(data) => s.seal(&data),
        Op::CloseNotify => {
            s.server.close_notify();
            s.closed = true;
            assert!(s.server.seal(b"x").is_err(), "seal after close_notify");
        }
        Op::ClientSend(_) | Op::ClientClose if client.dead => {}
        Op::ClientSend(data) => {
            let _ = client.conn.writer().write_all(&data);
        }
        Op::ClientClose => {
            client.conn.send_close_notify();
            // rustls's client asserts (debug builds) if it must send a fatal alert after its
            // close_notify: it reads nothing more here (the server side drops input after its
            // own close_notify for the same reason).
            client.dead = true;
        }
        Op::Deliver { cut, flip } => {
            let mut bytes = client_records(&mut client.conn);
            if let Some((at, x)) = flip
                && !bytes.is_empty()
            {
                let i = usize::from(at) % bytes.len();
                bytes[i] ^= x | 1;
            }
            if let Some(cut) = cut {
                bytes.truncate(usize::from(cut));
            }
            s.feed_all(&bytes);
        }
        Op::Answer => {
            let bytes = s.take_ciphertext();
            to_client_conn(client, &bytes);
        }
    }
}
