//! The TLS part of the configuration model: what `[[certificate]]`, `[[tls_listener]]` and a
//! route's origin TLS settings mean once validated.
//!
//! `wsedge-command` validates the TOML straight into these types (no mirror structs), and
//! [`crate::CertStore`] loads the files they name. Nothing here touches the disk.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Every TLS setting of a configuration that is loaded from files at start and on reload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// `[[certificate]]` entries, in file order.
    pub certificates: Vec<CertificateSpec>,
    /// `[[tls_listener]]` entries, in file order.
    pub listeners: Vec<ListenerSpec>,
}

impl TlsConfig {
    /// No TLS listener and no certificate.
    pub fn is_empty(&self) -> bool {
        self.certificates.is_empty() && self.listeners.is_empty()
    }
}

/// One `[[certificate]]`: a PEM chain and its key, and the names it answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSpec {
    /// Its name in listings, errors and a listener's `certificates` (default
    /// `certificate[N]`).
    pub id: String,
    /// PEM file: the leaf first, then its intermediates.
    pub cert: PathBuf,
    /// PEM file: the private key (PKCS#8, PKCS#1 RSA or SEC1 EC; ECDSA P-256/P-384, RSA,
    /// Ed25519).
    pub key: PathBuf,
    /// The SNI names this certificate is served for; `None` = the DNS names of the
    /// certificate itself (its subjectAltName).
    pub names: Option<Vec<NamePattern>>,
    /// Served to clients that send no SNI or an unknown name.
    pub default: bool,
}

/// An SNI name a certificate is served for: exact, or a `*.` wildcard of one label.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NamePattern {
    /// A lower-case DNS name.
    Exact(String),
    /// `*.example.com`, held as the lower-case suffix `example.com`: matches one more label
    /// (`a.example.com`), neither `example.com` nor `a.b.example.com` (RFC 6125 §6.4.3).
    Wildcard(String),
}

impl NamePattern {
    /// Parses `name` or `*.suffix` (case-insensitive; no port, no IP address: a client never
    /// sends an address as SNI).
    pub fn parse(text: &str) -> Result<NamePattern, String> {
        let lower = text.to_ascii_lowercase();
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        if !is_dns_name(name) {
            return Err(format!(
                "{text:?} is not a DNS name or a \"*.example.com\" wildcard"
            ));
        }
        if name.parse::<std::net::IpAddr>().is_ok()
            || name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        {
            return Err(format!(
                "{text:?} is an IP address: clients never send one as SNI (mark the certificate default = true instead)"
            ));
        }
        Ok(if wild {
            NamePattern::Wildcard(name.to_owned())
        } else {
            NamePattern::Exact(name.to_owned())
        })
    }

    /// Whether `name` (lower-case) is served by this pattern.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            NamePattern::Exact(n) => n == name,
            NamePattern::Wildcard(suffix) => name
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        }
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NamePattern::Exact(n) => f.write_str(n),
            NamePattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

/// Letters, digits, `-` and `.` in labels of 1-63 bytes, 253 bytes at most.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// One `[[tls_listener]]`: addresses where wsedge terminates TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    pub listen: Vec<SocketAddr>,
    /// Ids of the certificates served here; `None` = every `[[certificate]]`.
    pub certificates: Option<Vec<String>>,
    pub client_auth: ClientAuth,
    /// PEM bundle of the CAs client certificates must chain to (set iff `client_auth` is
    /// not `None`).
    pub client_ca: Option<PathBuf>,
    pub alpn: Alpn,
    pub min_version: TlsVersion,
    pub ktls: KtlsMode,
}

/// Whether a listener's connections hand their TLS to the kernel (kTLS) once the handshake
/// is done, so that `splice` and `auto` routes can splice (HAProxy's `ktls on` bind option,
/// nginx's `ssl_conf_command Options KTLS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KtlsMode {
    /// When the kernel takes TLS keys and the route relays `splice` or `auto`; otherwise
    /// TLS stays in user space and those routes relay `buffered`. The default.
    #[default]
    Auto,
    /// Never: TLS always stays in user space.
    Off,
    /// As `auto`, and a host whose kernel cannot take TLS keys is refused at start (and by
    /// `wsedge --check`).
    Require,
}

impl KtlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            KtlsMode::Auto => "auto",
            KtlsMode::Off => "off",
            KtlsMode::Require => "require",
        }
    }
}

impl TlsConfig {
    /// Refuses a listener with `ktls = "require"` when the kernel cannot take TLS keys
    /// (`kernel`: `Err(why)`, from `wsedge_ring::ktls::support`), naming the kernel setting.
    pub fn check_ktls(&self, kernel: Result<(), &dyn fmt::Display>) -> Result<(), String> {
        let Err(why) = kernel else {
            return Ok(());
        };
        match self
            .listeners
            .iter()
            .position(|l| l.ktls == KtlsMode::Require)
        {
            None => Ok(()),
            Some(index) => Err(format!(
                "tls_listener[{index}].ktls = \"require\", but this kernel has {why}: load the \
                 kernel's TLS module (`modprobe tls`, so that /proc/sys/net/ipv4/tcp_available_ulp \
                 lists \"tls\"; the kernel needs CONFIG_TLS), or set ktls = \"auto\""
            )),
        }
    }
}

/// Whether a listener asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    None,
    /// Asked for; the handshake goes on without one or with one that does not verify, and
    /// the result is reported ([`crate::ClientCertStatus`]) for the firewall to judge.
    Request,
    /// Required and verified: a client without a valid certificate fails the handshake.
    Require,
}

impl ClientAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::None => "none",
            ClientAuth::Request => "request",
            ClientAuth::Require => "require",
        }
    }
}

/// What a listener answers to the client's ALPN offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Alpn {
    /// Select `http/1.1`; a client that offers ALPN without it (say `h2` alone) is refused
    /// with a `no_application_protocol` alert. The default.
    #[default]
    Http11,
    /// Ignore ALPN (no protocol selected), for clients that offer only protocols wsedge does
    /// not speak but then send HTTP/1.1 anyway.
    Off,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum TlsVersion {
    #[default]
    Tls12,
    Tls13,
}

impl TlsVersion {
    /// `"TLSv1.2"` or `"TLSv1.3"` (the spelling of nginx's `$ssl_protocol`).
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "TLSv1.2",
            TlsVersion::Tls13 => "TLSv1.3",
        }
    }
}

/// TLS from the edge to a route's origins.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OriginTlsSpec {
    /// The name sent as SNI and checked against the origin's certificate; `None` = the
    /// origin's IP address (checked against the certificate's IP addresses, no SNI sent).
    pub server_name: Option<String>,
    /// PEM bundle of the CAs the origin's certificate must chain to; `None` = the system's
    /// trust store.
    pub ca: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_is_refused_without_kernel_tls() {
        let mut config = TlsConfig::default();
        let listener = |ktls| ListenerSpec {
            listen: vec![],
            certificates: None,
            client_auth: ClientAuth::None,
            client_ca: None,
            alpn: Alpn::Http11,
            min_version: TlsVersion::Tls12,
            ktls,
        };
        config.listeners = vec![listener(KtlsMode::Auto), listener(KtlsMode::Require)];
        let why = "no kTLS (tcp_available_ulp: mptcp)";
        let e = config
            .check_ktls(Err(&why))
            .expect_err("require without kTLS");
        assert!(
            e.starts_with(
                "tls_listener[1].ktls = \"require\", but this kernel has no kTLS (tcp_available_ulp: mptcp): "
            ),
            "{e}"
        );
        assert!(
            e.contains("modprobe tls") && e.contains("CONFIG_TLS"),
            "{e}"
        );
        assert_eq!(config.check_ktls(Ok(())), Ok(()));
        config.listeners[1].ktls = KtlsMode::Off;
        assert_eq!(
            config.check_ktls(Err(&why)),
            Ok(()),
            "auto and off run anywhere"
        );
    }

    #[test]
    fn name_patterns() {
        let exact = NamePattern::parse("WWW.Example.com").expect("exact");
        assert_eq!(exact, NamePattern::Exact("www.example.com".into()));
        assert!(exact.matches("www.example.com"));
        let wild = NamePattern::parse("*.Example.COM").expect("wildcard");
        assert_eq!(wild.to_string(), "*.example.com");
        assert!(wild.matches("a.example.com"));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches("a.b.example.com"));
        assert!(!wild.matches(".example.com"));
        for bad in [
            "",
            "a b",
            "*.",
            "a.*.com",
            "127.0.0.1",
            "-a.com",
            "a..com",
            "*",
        ] {
            assert!(NamePattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
