//! Client certificates (mutual TLS) per listener: `require` lets rustls refuse the handshake;
//! `request` lets any client through and checks its chain once the handshake is done, so
//! the result ([`ClientCertStatus`]) can reach the firewall, as an edge's "client certificate
//! validation" criterion does.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::certs::load_certs;
use crate::error::{LoadError, TlsError};
use crate::spec::ClientAuth;

/// What a TLS server knows of its client's certificate once the handshake is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCertStatus {
    /// The listener does not ask for one (`client_auth = "none"`).
    NotRequested,
    /// Asked for; the client sent none.
    None,
    /// Sent and chains to the listener's `client_ca`.
    Valid,
    /// Sent but does not verify (`client_auth = "request"` only: `require` refuses the
    /// handshake instead); the reason says why.
    Invalid { reason: String },
}

impl ClientCertStatus {
    /// `"none"`, `"valid"`, `"invalid"` or `"not_requested"`: a log value.
    pub fn as_str(&self) -> &'static str {
        match self {
            ClientCertStatus::NotRequested => "not_requested",
            ClientCertStatus::None => "none",
            ClientCertStatus::Valid => "valid",
            ClientCertStatus::Invalid { .. } => "invalid",
        }
    }
}

/// Loads a CA bundle into a root store; every certificate must be usable as a trust anchor.
pub(crate) fn load_roots(path: &Path) -> Result<RootCertStore, LoadError> {
    let certs = load_certs(path)?;
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            LoadError::new(
                path,
                format!("certificate #{} is not a usable CA: {e}", i + 1),
            )
        })?;
    }
    Ok(roots)
}

/// A listener's client-certificate policy, built once per configuration.
#[derive(Debug, Clone)]
pub(crate) struct ClientAuthPolicy {
    pub(crate) mode: ClientAuth,
    /// The full verifier (chain + signatures), `None` when mode is `None`.
    pub(crate) verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// The CA bundle's certificates, to tell whether two policies are the same.
    pub(crate) ca_certs: Vec<CertificateDer<'static>>,
}

impl PartialEq for ClientAuthPolicy {
    fn eq(&self, other: &Self) -> bool {
        self.mode == other.mode && self.ca_certs == other.ca_certs
    }
}

impl ClientAuthPolicy {
    pub(crate) fn none() -> ClientAuthPolicy {
        ClientAuthPolicy {
            mode: ClientAuth::None,
            verifier: None,
            ca_certs: Vec::new(),
        }
    }

    pub(crate) fn build(
        mode: ClientAuth,
        ca: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<ClientAuthPolicy, LoadError> {
        let ca_certs = load_certs(ca)?;
        let roots = load_roots(ca)?;
        let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        if mode == ClientAuth::Request {
            builder = builder.allow_unauthenticated();
        }
        let verifier = builder
            .build()
            .map_err(|e| LoadError::new(ca, format!("cannot build a client verifier: {e}")))?;
        Ok(ClientAuthPolicy {
            mode,
            verifier: Some(verifier),
            ca_certs,
        })
    }

    /// The verifier rustls runs during the handshake.
    pub(crate) fn handshake_verifier(&self) -> Option<Arc<dyn ClientCertVerifier>> {
        let inner = self.verifier.clone()?;
        Some(match self.mode {
            ClientAuth::None => return None,
            ClientAuth::Require => inner,
            ClientAuth::Request => Arc::new(DeferredChainCheck { inner }),
        })
    }

    /// The status of a finished handshake whose client presented `chain` (leaf first).
    pub(crate) fn status(&self, chain: Option<&[CertificateDer<'static>]>) -> ClientCertStatus {
        let Some(verifier) = &self.verifier else {
            return ClientCertStatus::NotRequested;
        };
        let Some((leaf, intermediates)) = chain.and_then(<[_]>::split_first) else {
            return ClientCertStatus::None;
        };
        match self.mode {
            // rustls verified it during the handshake, or refused the handshake.
            ClientAuth::Require => ClientCertStatus::Valid,
            ClientAuth::None => ClientCertStatus::NotRequested,
            ClientAuth::Request => {
                match verifier.verify_client_cert(leaf, intermediates, UnixTime::now()) {
                    Ok(_) => ClientCertStatus::Valid,
                    Err(e) => ClientCertStatus::Invalid {
                        reason: match TlsError::from_rustls(e, None) {
                            TlsError::Certificate { reason } => reason,
                            other => other.to_string(),
                        },
                    },
                }
            }
        }
    }
}

/// `client_auth = "request"`: asks for a certificate, lets the handshake through whatever the
/// chain, but still checks the client's signature (it proves the client holds the key of
/// the certificate it sent). The chain is checked after the handshake
/// ([`ClientAuthPolicy::status`]), once.
#[derive(Debug)]
struct DeferredChainCheck {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for DeferredChainCheck {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
