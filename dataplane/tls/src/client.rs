//! TLS from the edge to an origin: [`OriginTls`] (one per route, built once) and
//! [`TlsClient`] (one per origin connection, the same sans-IO shape as
//! [`crate::TlsServer`]). The origin's certificate is verified against the system's trust
//! store or the route's `origin_ca`, for the route's `origin_server_name` (also sent as SNI)
//! or else the origin's IP address; a refusal says why, for the 502 log line. A client
//! certificate ([`ClientIdentity`], the broker's `tls_cert`/`tls_key`) is presented when the
//! server asks for one.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ClientConnection, HandshakeKind, RootCertStore, SignatureScheme};

use crate::certs::{certified_key, read_pem_file};
use crate::client_auth::load_roots;
use crate::core::{Core, Progress, TlsLimits};
use crate::error::{LoadError, Peer, StoreError, TlsError};
use crate::server::version_of;
use crate::spec::{OriginTlsSpec, TlsVersion};

/// The system's trust store, read once (`rustls-native-certs`: `/etc/ssl/certs` and the
/// `SSL_CERT_FILE`/`SSL_CERT_DIR` overrides). Unreadable entries are skipped and counted.
#[derive(Debug, Clone)]
pub struct SystemRoots {
    roots: Arc<RootCertStore>,
    /// Certificates of the store that could not be read or used.
    pub skipped: usize,
}

impl SystemRoots {
    pub fn load() -> SystemRoots {
        let found = rustls_native_certs::load_native_certs();
        let mut skipped = found.errors.len();
        let mut roots = RootCertStore::empty();
        for cert in found.certs {
            if roots.add(cert).is_err() {
                skipped += 1;
            }
        }
        SystemRoots {
            roots: Arc::new(roots),
            skipped,
        }
    }

    /// Trust anchors found.
    pub fn len(&self) -> usize {
        self.roots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }
}

/// A client certificate and its key, loaded once from PEM files and checked to match (the
/// same checks as a served `[[certificate]]`). Cheap to clone; `Debug` shows no key.
#[derive(Clone)]
pub struct ClientIdentity {
    key: Arc<CertifiedKey>,
    /// The files' text, for a client that builds its own TLS from PEM (the `redis` crate).
    cert_pem: Arc<[u8]>,
    key_pem: Arc<[u8]>,
}

impl ClientIdentity {
    /// Reads the chain in `cert` and the private key in `key`; an error names the file at
    /// fault (unreadable, no PEM block, cert and key swapped, a key of another certificate).
    pub fn load(cert: &Path, key: &Path) -> Result<ClientIdentity, LoadError> {
        let cert_pem = read_pem_file(cert)?;
        let key_pem = read_pem_file(key)?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let certified = certified_key(cert, &cert_pem, key, &key_pem, &provider)?;
        Ok(ClientIdentity {
            key: Arc::new(certified),
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
        })
    }

    /// The certificate chain file's PEM text.
    pub fn cert_pem(&self) -> &[u8] {
        &self.cert_pem
    }

    /// The private key file's PEM text.
    pub fn key_pem(&self) -> &[u8] {
        &self.key_pem
    }
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("chain_len", &self.key.cert.len())
            .finish_non_exhaustive()
    }
}

/// Presents the one client certificate to every server that asks.
struct Presents(Arc<CertifiedKey>);

impl std::fmt::Debug for Presents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Presents(client certificate)")
    }
}

impl ResolvesClientCert for Presents {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A route's TLS to its origins, built once per configuration. Cheap to clone.
#[derive(Debug, Clone)]
pub struct OriginTls {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
    limits: TlsLimits,
    /// How certificate refusals name the server (`origin`) and the setting of its CAs.
    role: &'static str,
    ca_setting: &'static str,
}

impl OriginTls {
    /// Builds from a route's settings; `system` is used when `spec.ca` is `None` (pass
    /// `None` to load it here). `route` names the route in errors.
    pub fn build(
        route: &str,
        spec: &OriginTlsSpec,
        system: Option<&SystemRoots>,
    ) -> Result<OriginTls, StoreError> {
        let context = format!("route {route:?} origin_ca");
        let mut tls = OriginTls::trusting(&context, "origin_ca", spec.ca.as_deref(), system)?;
        let mut config = (*tls.config).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.enable_secret_extraction = true;
        tls.config = Arc::new(config);
        tls.role = "origin";
        tls.server_name = match &spec.server_name {
            None => None,
            Some(name) => {
                Some(
                    ServerName::try_from(name.clone()).map_err(|_| StoreError::Setting {
                        context: format!("route {route:?} origin_server_name"),
                        what: format!("{name:?} is not a DNS name or IP address"),
                    })?,
                )
            }
        };
        Ok(tls)
    }

    /// A client of another protocol than HTTP (no ALPN, no kTLS hand-off), whose servers
    /// are named per connection ([`OriginTls::connect_named`]): the broker's `tls://` NATS
    /// links. Trusts the CAs of `ca` (a PEM bundle) or else the system's store (`system`,
    /// or loaded here when `None`); `context` names the setting in errors, `setting` is
    /// the one to set when the system's store is empty.
    pub fn trusting(
        context: &str,
        setting: &'static str,
        ca: Option<&Path>,
        system: Option<&SystemRoots>,
    ) -> Result<OriginTls, StoreError> {
        let roots = match ca {
            Some(path) => Arc::new(load_roots(path).map_err(|source| StoreError::File {
                context: context.to_owned(),
                source,
            })?),
            None => match system {
                Some(s) => s.roots.clone(),
                None => SystemRoots::load().roots,
            },
        };
        if roots.is_empty() {
            return Err(StoreError::Setting {
                context: context.to_owned(),
                what: format!(
                    "no trusted CA: the system trust store is empty (install ca-certificates or set {setting})"
                ),
            });
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Setting {
                context: context.to_owned(),
                what: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(OriginTls {
            config: Arc::new(config),
            server_name: None,
            limits: TlsLimits::default(),
            role: "server",
            ca_setting: setting,
        })
    }

    /// The same settings, presenting `identity` when a server asks for a client certificate
    /// (mutual TLS: the broker's `tls_cert`/`tls_key`).
    pub fn with_identity(mut self, identity: &ClientIdentity) -> OriginTls {
        let mut config = (*self.config).clone();
        config.client_auth_cert_resolver = Arc::new(Presents(Arc::clone(&identity.key)));
        self.config = Arc::new(config);
        self
    }

    /// The rustls configuration (session cache included: reconnects to an origin resume).
    pub fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    /// The same settings with other memory bounds.
    pub fn with_limits(mut self, limits: TlsLimits) -> OriginTls {
        self.limits = limits;
        self
    }

    /// The name the origin at `addr` is verified against (and sent as SNI when it is a DNS
    /// name): `origin_server_name`, else the address.
    pub fn server_name_for(&self, addr: IpAddr) -> ServerName<'static> {
        self.server_name
            .clone()
            .unwrap_or(ServerName::IpAddress(addr.into()))
    }

    /// A connection to the origin at `addr`.
    pub fn connect(&self, addr: IpAddr) -> Result<TlsClient, TlsError> {
        TlsClient::new(self, addr)
    }

    /// A connection to `addr` verified against `name` instead of the configured one (a
    /// script's `wss://` socket: the name in its URL, a DNS name or an IP address).
    pub fn connect_named(&self, name: &str, addr: IpAddr) -> Result<TlsClient, TlsError> {
        let server = ServerName::try_from(name.to_owned()).map_err(|_| TlsError::Handshake {
            detail: format!("{name:?} is not a DNS name or IP address"),
        })?;
        TlsClient::with_name(self, server, addr)
    }
}

/// What a finished origin handshake negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginFacts {
    pub version: TlsVersion,
    pub cipher_suite: rustls::CipherSuite,
    pub alpn: Option<String>,
    pub resumed: bool,
}

/// One TLS connection to an origin: the client side of the sans-IO shape.
#[derive(Debug)]
pub struct TlsClient {
    conn: Box<ClientConnection>,
    core: Core,
    /// The name verified (for error messages).
    peer: Peer,
    facts: Option<OriginFacts>,
}

impl TlsClient {
    /// Starts the handshake (the ClientHello waits in `take_ciphertext`).
    pub fn new(tls: &OriginTls, addr: IpAddr) -> Result<TlsClient, TlsError> {
        TlsClient::with_name(tls, tls.server_name_for(addr), addr)
    }

    fn with_name(
        tls: &OriginTls,
        name: ServerName<'static>,
        addr: IpAddr,
    ) -> Result<TlsClient, TlsError> {
        let role = tls.role;
        let peer = Peer {
            name: match &name {
                ServerName::DnsName(d) => format!("{role} {addr} ({})", d.as_ref()),
                _ => format!("{role} {addr}"),
            },
            ca_setting: tls.ca_setting,
        };
        let mut conn = ClientConnection::new(tls.config.clone(), name)
            .map_err(|e| TlsError::from_rustls(e, Some(&peer)))?;
        conn.set_buffer_limit(None);
        Ok(TlsClient {
            conn: Box::new(conn),
            core: Core::new(tls.limits),
            peer,
            facts: None,
        })
    }

    /// Feeds bytes read from the origin's socket. A certificate refusal comes back as
    /// [`TlsError::Certificate`] whose reason names the origin and what is wrong.
    pub fn feed(&mut self, ciphertext: &[u8]) -> Result<Progress, TlsError> {
        let was_handshaking = self.conn.is_handshaking();
        let consumed = self
            .core
            .feed(&mut self.conn, ciphertext, Some(&self.peer))?;
        let mut progress = Progress {
            consumed,
            plaintext: self.core.plaintext_pending(),
            peer_closed: self.core.peer_closed,
            handshake_done: false,
        };
        if was_handshaking && !self.conn.is_handshaking() && self.facts.is_none() {
            self.facts = Some(OriginFacts {
                version: version_of(self.conn.protocol_version()),
                cipher_suite: self
                    .conn
                    .negotiated_cipher_suite()
                    .map_or(rustls::CipherSuite::Unknown(0), |s| s.suite()),
                alpn: self
                    .conn
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned()),
                resumed: self.conn.handshake_kind() == Some(HandshakeKind::Resumed),
            });
            progress.handshake_done = true;
        }
        Ok(progress)
    }

    pub fn take_plaintext(&mut self, out: &mut Vec<u8>) -> usize {
        self.core.take_plaintext(&mut self.conn, out)
    }

    /// Queues bytes for the origin; before the handshake finishes they wait and go out
    /// encrypted right after it.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<(), TlsError> {
        self.core.seal(&mut self.conn, plaintext)
    }

    pub fn take_ciphertext(&mut self, out: &mut Vec<u8>) -> usize {
        self.core.take_ciphertext(&mut self.conn, out)
    }

    pub fn close_notify(&mut self) {
        self.core.close_notify(&mut self.conn);
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    pub fn peer_closed(&self) -> bool {
        self.core.peer_closed
    }

    pub fn facts(&self) -> Option<&OriginFacts> {
        self.facts.as_ref()
    }
}
