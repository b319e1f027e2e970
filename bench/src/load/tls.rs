//! The generator's TLS client, for `wss://` targets: one rustls configuration (aws-lc-rs, the
//! workspace's provider) trusting the CA given with `--tls-ca`, sending `--tls-name` as SNI,
//! offering ALPN `http/1.1` and only the key exchange groups of `--tls-groups` (X25519 by
//! default: what OpenSSL 3.0 clients and servers choose, so every target does the same key
//! exchange; rustls alone would offer the post-quantum hybrid first, which OpenSSL 3.0's
//! HAProxy and nginx lack).
//!
//! Session resumption is a choice, never an accident: without `--resume` the client keeps no
//! session (every handshake is full); with it, [`TlsClient::own_cache`] gives each handshake
//! loop a session cache of its own, so each reconnect of a loop offers the ticket (TLS 1.3)
//! or session (TLS 1.2) of its previous connection, as a browser reconnecting would. Every
//! handshake's [`Facts`] say what actually happened, so a figure can say how many were
//! resumed.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::client::Resumption;
use rustls::crypto::SupportedKxGroup;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, RootCertStore};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// TLS versions the client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// TLS 1.3 and 1.2 (the server chooses; every target here picks 1.3).
    Any,
    /// TLS 1.2 only.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

impl Version {
    /// Parses `1.2`, `1.3` or `any`.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "any" => Self::Any,
            "1.2" => Self::Tls12,
            "1.3" => Self::Tls13,
            _ => bail!("--tls-version: 1.2, 1.3 or any, not {s:?}"),
        })
    }

    /// As written on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::Tls12 => "1.2",
            Self::Tls13 => "1.3",
        }
    }
}

/// What the command line asks of the TLS client.
#[derive(Debug, Clone)]
pub struct Options {
    /// PEM file of the CA(s) the target's certificate must chain to.
    pub ca: PathBuf,
    /// The server name: sent as SNI (unless an IP address) and checked in the certificate.
    pub name: String,
    /// Resume sessions (a cache per handshake loop) instead of full handshakes every time.
    pub resume: bool,
    /// Versions offered.
    pub version: Version,
    /// Key exchange groups offered, by name (`x25519`, `secp256r1`, `secp384r1`,
    /// `x25519mlkem768`), in order of preference.
    pub groups: Vec<String>,
}

/// The key exchange group called `name` (aws-lc-rs).
fn kx_group(name: &str) -> anyhow::Result<&'static dyn SupportedKxGroup> {
    use rustls::crypto::aws_lc_rs::kx_group as g;
    Ok(match name.to_ascii_lowercase().as_str() {
        "x25519" => g::X25519,
        "secp256r1" | "p-256" | "p256" => g::SECP256R1,
        "secp384r1" | "p-384" | "p384" => g::SECP384R1,
        "x25519mlkem768" => g::X25519MLKEM768,
        _ => bail!(
            "--tls-groups: unknown group {name:?} (x25519, secp256r1, secp384r1, x25519mlkem768)"
        ),
    })
}

/// A TLS client for one target.
#[derive(Debug, Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    opts: Options,
}

/// What one handshake turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// True when the session was resumed (a TLS 1.3 ticket, a TLS 1.2 ticket or session id).
    pub resumed: bool,
    /// The negotiated version, e.g. "TLSv1_3".
    pub version: &'static str,
    /// The cipher suite, e.g. "TLS13_AES_256_GCM_SHA384".
    pub cipher: &'static str,
    /// The key exchange group ("none" for a resumed TLS 1.2 session, which has none).
    pub kx: &'static str,
}

impl Facts {
    /// The facts of a connection whose handshake is done.
    pub fn of(c: &rustls::CommonState) -> Self {
        let version = c
            .protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or("unknown");
        let cipher = c
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("unknown");
        let kx = c
            .negotiated_key_exchange_group()
            .and_then(|g| g.name().as_str())
            .unwrap_or("none");
        Self {
            resumed: c.handshake_kind() == Some(HandshakeKind::Resumed),
            version,
            cipher,
            kx,
        }
    }
}

impl TlsClient {
    /// Builds the client: reads the CA file, checks the name and the groups.
    pub fn new(opts: &Options) -> anyhow::Result<Self> {
        let pem = std::fs::read(&opts.ca)
            .with_context(|| format!("--tls-ca: reading {}", opts.ca.display()))?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.with_context(|| format!("--tls-ca: {}", opts.ca.display()))?;
            roots
                .add(cert)
                .with_context(|| format!("--tls-ca: {}", opts.ca.display()))?;
        }
        anyhow::ensure!(
            !roots.is_empty(),
            "--tls-ca: no certificate in {}",
            opts.ca.display()
        );
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        anyhow::ensure!(!opts.groups.is_empty(), "--tls-groups: at least one group");
        provider.kx_groups = opts
            .groups
            .iter()
            .map(|g| kx_group(g))
            .collect::<anyhow::Result<_>>()?;
        static TLS12: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
        static TLS13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        let versions: &[&'static rustls::SupportedProtocolVersion] = match opts.version {
            Version::Any => rustls::ALL_VERSIONS,
            Version::Tls12 => &TLS12,
            Version::Tls13 => &TLS13,
        };
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .context("TLS versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = if opts.resume {
            Resumption::in_memory_sessions(16)
        } else {
            Resumption::disabled()
        };
        let name = ServerName::try_from(opts.name.as_str())
            .map(|n| n.to_owned())
            .with_context(|| format!("--tls-name: not a server name: {:?}", opts.name))?;
        Ok(Self {
            config: Arc::new(config),
            name,
            opts: opts.clone(),
        })
    }

    /// The server name the handshakes are made for.
    pub fn name(&self) -> &str {
        &self.opts.name
    }

    /// True when the client resumes sessions.
    pub fn resumes(&self) -> bool {
        self.opts.resume
    }

    /// The same client with a session cache of its own (with `--resume`; otherwise the same
    /// client, which keeps no session anyway).
    pub fn own_cache(&self) -> Self {
        if !self.opts.resume {
            return self.clone();
        }
        let mut config = (*self.config).clone();
        config.resumption = Resumption::in_memory_sessions(16);
        Self {
            config: Arc::new(config),
            name: self.name.clone(),
            opts: self.opts.clone(),
        }
    }

    /// The TLS handshake over a connected socket.
    pub async fn connect(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        TlsConnector::from(self.config.clone())
            .connect(self.name.clone(), tcp)
            .await
    }

    /// The TLS handshake over a connected blocking socket (its read timeout bounds each read).
    pub fn connect_blocking(
        &self,
        tcp: std::net::TcpStream,
    ) -> anyhow::Result<rustls::StreamOwned<ClientConnection, std::net::TcpStream>> {
        let conn = ClientConnection::new(self.config.clone(), self.name.clone())?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        Ok(s)
    }

    /// The TLS mode for the JSON record: what was offered and whether sessions resume.
    pub fn describe(&self) -> Value {
        json!({
            "mode": if self.opts.resume { "resume" } else { "full" },
            "name": self.opts.name,
            "ca": self.opts.ca.display().to_string(),
            "version": self.opts.version.as_str(),
            "groups": self.opts.groups,
            "alpn": "http/1.1",
        })
    }
}

/// Handshakes counted by kind over a window, and what they negotiated.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Full handshakes.
    pub full: u64,
    /// Resumed handshakes.
    pub resumed: u64,
    /// The facts of the last handshake with a key exchange (of the last one, if none had).
    pub last: Option<Facts>,
    /// Handshakes whose version, cipher or group differed from the previous one's.
    pub changed: u64,
}

impl Tally {
    /// Counts one handshake.
    pub fn add(&mut self, f: Facts) {
        if f.resumed {
            self.resumed += 1;
        } else {
            self.full += 1;
        }
        match &mut self.last {
            None => self.last = Some(f),
            Some(l) => {
                // A resumed TLS 1.2 session has no key exchange: not a change of group.
                let kx_differs = l.kx != f.kx && l.kx != "none" && f.kx != "none";
                if l.version != f.version || l.cipher != f.cipher || kx_differs {
                    self.changed += 1;
                }
                if f.kx != "none" {
                    *l = f;
                }
            }
        }
    }

    /// Adds another tally (another loop's).
    pub fn merge(&mut self, o: &Tally) {
        self.full += o.full;
        self.resumed += o.resumed;
        self.changed += o.changed;
        match (self.last, o.last) {
            (None, b) => self.last = b,
            (Some(a), Some(b)) if a.version != b.version || a.cipher != b.cipher => {
                self.changed += 1;
            }
            (Some(a), Some(b)) if a.kx == "none" => self.last = Some(b),
            _ => {}
        }
    }

    /// Resumed handshakes / all handshakes (None when there were none).
    pub fn resumed_fraction(&self) -> Option<f64> {
        let n = self.full + self.resumed;
        (n > 0).then(|| self.resumed as f64 / n as f64)
    }

    /// The tally for the JSON record.
    pub fn to_json(&self) -> Value {
        json!({
            "full": self.full,
            "resumed": self.resumed,
            "resumed_fraction": self.resumed_fraction(),
            "version": self.last.map(|f| f.version),
            "cipher": self.last.map(|f| f.cipher),
            "kx_group": self.last.map(|f| f.kx),
            "changed": self.changed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(resumed: bool, kx: &'static str) -> Facts {
        Facts {
            resumed,
            version: "TLSv1_2",
            cipher: "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            kx,
        }
    }

    #[test]
    fn tally_counts_kinds_and_keeps_the_group_of_full_handshakes() {
        let mut t = Tally::default();
        assert_eq!(t.resumed_fraction(), None);
        t.add(facts(false, "X25519"));
        t.add(facts(true, "none"));
        t.add(facts(true, "none"));
        t.add(facts(true, "none"));
        assert_eq!((t.full, t.resumed, t.changed), (1, 3, 0));
        assert_eq!(t.resumed_fraction(), Some(0.75));
        let j = t.to_json();
        assert_eq!(j["kx_group"], "X25519");
        assert_eq!(j["resumed_fraction"], 0.75);
        let mut u = Tally::default();
        u.add(facts(false, "secp256r1"));
        assert_eq!(u.changed, 0);
        u.add(facts(false, "X25519"));
        assert_eq!(u.changed, 1);
        t.merge(&u);
        assert_eq!((t.full, t.resumed, t.changed), (3, 3, 1));
    }

    #[test]
    fn versions_and_groups_parse() {
        assert_eq!(Version::parse("1.2").unwrap(), Version::Tls12);
        assert_eq!(Version::parse("any").unwrap().as_str(), "any");
        assert!(Version::parse("1.1").is_err());
        assert!(kx_group("X25519").is_ok());
        assert!(kx_group("ffdhe2048").is_err());
    }
}
