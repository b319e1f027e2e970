//! Certificates from PEM files: loading a chain and its key (checked to match), reading what
//! an operator lists (names, issuer, expiry), and choosing one by SNI.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::SignatureScheme;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;
use x509_parser::public_key::PublicKey;

use crate::error::LoadError;
use crate::spec::{CertificateSpec, NamePattern};

/// PEM files larger than this are refused before parsing (a chain is a few KiB).
const MAX_PEM_FILE: u64 = 1 << 20;

/// What `wsedgectl certs` lists about one certificate; the control protocol carries it as is
/// (its `certs` answers).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CertInfo {
    pub id: String,
    /// The leaf's PEM file.
    #[serde(rename = "file")]
    pub cert_file: std::path::PathBuf,
    /// The SNI names it is served for (the override, or its DNS names).
    pub names: Vec<String>,
    /// Served to clients without SNI or with an unknown name.
    pub default: bool,
    /// The leaf's subject and issuer, RFC 4514 style (`CN=example.com, O=...`).
    pub subject: String,
    pub issuer: String,
    /// Validity, seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// `ECDSA P-256`, `RSA 2048`, `Ed25519`...
    pub key_type: String,
    /// Certificates in the chain file, the leaf included.
    pub chain_len: usize,
}

impl CertInfo {
    /// Seconds until `not_after` (negative once expired); `now` is Unix seconds.
    pub fn seconds_to_expiry(&self, now: i64) -> i64 {
        self.not_after.saturating_sub(now)
    }
}

/// A loaded `[[certificate]]`: the signing key with its chain, and its listing.
#[derive(Debug, Clone)]
pub(crate) struct LoadedCert {
    pub(crate) names: Vec<NamePattern>,
    pub(crate) default: bool,
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) info: CertInfo,
}

/// Reads a PEM file (bounded), naming it in the error.
pub(crate) fn read_pem_file(path: &Path) -> Result<Vec<u8>, LoadError> {
    let meta =
        std::fs::metadata(path).map_err(|e| LoadError::new(path, format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(LoadError::new(path, "not a regular file"));
    }
    if meta.len() > MAX_PEM_FILE {
        return Err(LoadError::new(
            path,
            format!(
                "{} bytes: too large for a PEM file (1 MiB at most)",
                meta.len()
            ),
        ));
    }
    std::fs::read(path).map_err(|e| LoadError::new(path, format!("cannot read: {e}")))
}

fn pem_problem(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "broken PEM: a section has no \"-----END {}-----\" line (file cut short?)",
            String::from_utf8_lossy(end_marker)
        ),
        pem::Error::IllegalSectionStart { line } => format!(
            "broken PEM: bad BEGIN line {:?}",
            String::from_utf8_lossy(line)
        ),
        pem::Error::Base64Decode(m) => format!("broken PEM: bad base64 ({m})"),
        other => format!("broken PEM: {other:?}"),
    }
}

/// Every `CERTIFICATE` block of a PEM file, in order (at least one).
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    parse_certs(path, &read_pem_file(path)?)
}

/// [`load_certs`] of bytes already read from `path`.
fn parse_certs(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LoadError::new(path, pem_problem(&e)))?;
    if certs.is_empty() {
        let hint = if PrivateKeyDer::from_pem_slice(bytes).is_ok() {
            " (it holds a private key: cert and key swapped?)"
        } else {
            ""
        };
        return Err(LoadError::new(
            path,
            format!("no PEM CERTIFICATE block found{hint}"),
        ));
    }
    Ok(certs)
}

fn parse_key(path: &Path, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, LoadError> {
    match PrivateKeyDer::from_pem_slice(bytes) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => {
            let hint = if CertificateDer::pem_slice_iter(bytes).next().is_some() {
                " (it holds a certificate: cert and key swapped?)"
            } else {
                ""
            };
            Err(LoadError::new(
                path,
                format!(
                    "no private key found (expected a PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block{hint})"
                ),
            ))
        }
        Err(e) => Err(LoadError::new(path, pem_problem(&e))),
    }
}

/// A chain and its key (PEM bytes read from `cert` and `key`), checked to match: a served
/// certificate, or a client certificate ([`crate::ClientIdentity`]). Errors name the file.
pub(crate) fn certified_key(
    cert: &Path,
    cert_pem: &[u8],
    key: &Path,
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, LoadError> {
    let chain = parse_certs(cert, cert_pem)?;
    let key_der = parse_key(key, key_pem)?;
    let signing_key = provider.key_provider.load_private_key(key_der).map_err(|e| {
        LoadError::new(
            key,
            format!("unusable private key ({e}): ECDSA P-256/P-384, RSA 2048+ or Ed25519 are accepted"),
        )
    })?;
    let certified = CertifiedKey::new(chain, signing_key);
    if let Err(e) = certified.keys_match() {
        let what = match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => format!(
                "this key does not belong to the certificate in {}",
                cert.display()
            ),
            other => format!("cannot check the key against {}: {other}", cert.display()),
        };
        return Err(LoadError::new(key, what));
    }
    Ok(certified)
}

/// Loads one `[[certificate]]`: the chain, the key, checks that they match, and reads the
/// leaf for names and listing. Every error names the file at fault.
pub(crate) fn load_certificate(
    spec: &CertificateSpec,
    provider: &CryptoProvider,
) -> Result<LoadedCert, LoadError> {
    let (cert_pem, key_pem) = (read_pem_file(&spec.cert)?, read_pem_file(&spec.key)?);
    let certified = certified_key(&spec.cert, &cert_pem, &spec.key, &key_pem, provider)?;
    let leaf = certified
        .cert
        .first()
        .ok_or_else(|| LoadError::new(&spec.cert, "no certificate"))?;
    let parsed = Leaf::parse(leaf.as_ref()).map_err(|what| LoadError::new(&spec.cert, what))?;
    let names = match &spec.names {
        Some(names) => names.clone(),
        None => parsed
            .dns_names
            .iter()
            .filter_map(|n| NamePattern::parse(n).ok())
            .collect(),
    };
    if names.is_empty() && !spec.default {
        return Err(LoadError::new(
            &spec.cert,
            "the certificate has no DNS name to serve it for: set names = [...] or default = true",
        ));
    }
    let info = CertInfo {
        id: spec.id.clone(),
        cert_file: spec.cert.clone(),
        names: names.iter().map(ToString::to_string).collect(),
        default: spec.default,
        subject: parsed.subject,
        issuer: parsed.issuer,
        not_before: parsed.not_before,
        not_after: parsed.not_after,
        key_type: parsed.key_type,
        chain_len: certified.cert.len(),
    };
    Ok(LoadedCert {
        names,
        default: spec.default,
        key: Arc::new(certified),
        info,
    })
}

/// What the listing needs from a leaf certificate.
struct Leaf {
    subject: String,
    issuer: String,
    not_before: i64,
    not_after: i64,
    key_type: String,
    dns_names: Vec<String>,
}

impl Leaf {
    fn parse(der: &[u8]) -> Result<Leaf, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("the first certificate is not valid X.509 DER: {e}"))?;
        let mut dns_names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::DNSName(n) = name {
                    dns_names.push((*n).to_owned());
                }
            }
        }
        let key_type = match cert.public_key().parsed() {
            Ok(PublicKey::EC(point)) => format!("ECDSA P-{}", point.key_size()),
            Ok(PublicKey::RSA(rsa)) => format!("RSA {}", rsa.key_size()),
            Ok(PublicKey::DSA(_)) => "DSA".to_owned(),
            Ok(PublicKey::GostR3410(_) | PublicKey::GostR3410_2012(_)) => "GOST".to_owned(),
            Ok(PublicKey::Unknown(_)) | Err(_) => {
                let oid = &cert.public_key().algorithm.algorithm;
                if oid.to_id_string() == "1.3.101.112" {
                    "Ed25519".to_owned()
                } else {
                    format!("key algorithm {oid}")
                }
            }
        };
        Ok(Leaf {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            key_type,
            dns_names,
        })
    }
}

/// Chooses a listener's certificate by SNI: exact names first, then `*.` wildcards of the
/// name's parent, then the default certificate. Names compare case-insensitively. When
/// several certificates serve a name (an ECDSA and an RSA one), the first whose key can
/// sign with a scheme the client offers wins.
#[derive(Debug, Default)]
pub(crate) struct SniResolver {
    exact: HashMap<String, Vec<Arc<CertifiedKey>>>,
    wildcard: HashMap<String, Vec<Arc<CertifiedKey>>>,
    default: Vec<Arc<CertifiedKey>>,
}

impl SniResolver {
    pub(crate) fn new<'a>(certs: impl IntoIterator<Item = &'a LoadedCert>) -> SniResolver {
        let mut r = SniResolver::default();
        for cert in certs {
            for name in &cert.names {
                let (map, key) = match name {
                    NamePattern::Exact(n) => (&mut r.exact, n),
                    NamePattern::Wildcard(s) => (&mut r.wildcard, s),
                };
                map.entry(key.clone()).or_default().push(cert.key.clone());
            }
            if cert.default {
                r.default.push(cert.key.clone());
            }
        }
        r
    }

    /// The candidates for `sni` (`None`: no SNI sent); empty when the name is unknown and
    /// there is no default.
    fn candidates(&self, sni: Option<&str>) -> &[Arc<CertifiedKey>] {
        let Some(name) = sni else {
            return &self.default;
        };
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        if let Some(keys) = self.exact.get(name) {
            return keys;
        }
        if let Some((label, parent)) = name.split_once('.')
            && !label.is_empty()
            && let Some(keys) = self.wildcard.get(parent)
        {
            return keys;
        }
        &self.default
    }

    /// Whether a client asking for `sni` gets no certificate (refused: `unrecognized_name`).
    pub(crate) fn refuses(&self, sni: Option<&str>) -> bool {
        self.candidates(sni).is_empty()
    }

    fn choose(&self, sni: Option<&str>, schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        let keys = self.candidates(sni);
        keys.iter()
            .find(|k| k.key.choose_scheme(schemes).is_some())
            .or_else(|| keys.first())
            .cloned()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(hello.server_name(), hello.signature_schemes())
    }
}
