//! Errors: [`TlsError`] for a connection (what the peer did wrong, or which limit it hit; each
//! has a [`TlsErrorKind`] for counters), [`LoadError`] for files (which file, what is wrong).

use std::path::{Path, PathBuf};

use rustls::{AlertDescription, CertificateError, Error, InvalidMessage, PeerMisbehaved};

/// Why a TLS connection failed. After an error the connection is over: the caller sends what
/// [`take_ciphertext`](crate::TlsServer::take_ciphertext) still gives (the alert) and
/// closes. Most are the peer's fault; `SendQueueFull`, `Closed` and `NotReady` are the
/// caller's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// The client spoke plain HTTP to a TLS port (the first byte is an ASCII letter). Answer
    /// [`crate::PLAINTEXT_HTTP_RESPONSE`] in clear, as nginx does, or just close.
    #[error("plain HTTP sent to a TLS port")]
    PlaintextHttp,
    /// The first byte is no TLS handshake record (0x16) and not HTTP either.
    #[error("not TLS: the first byte is {first_byte:#04x}, not a handshake record (0x16)")]
    NotTls { first_byte: u8 },
    /// The client asked for a name no certificate serves and there is no default
    /// certificate: refused with an `unrecognized_name` alert.
    #[error("no certificate for server name {name:?} and no default certificate")]
    UnknownServerName { name: String },
    /// The client offered ALPN without `http/1.1` (e.g. `h2` alone): `no_application_protocol`.
    #[error("no shared ALPN protocol (only http/1.1 is served)")]
    NoSharedAlpn,
    /// A record longer than TLS allows (2^14 plaintext bytes plus expansion).
    #[error("oversized record: {detail}")]
    OversizedRecord { detail: String },
    /// A malformed or undecryptable record or message (garbage, truncated or corrupted
    /// ClientHello, bad MAC).
    #[error("bad record: {detail}")]
    BadRecord { detail: String },
    /// The peer sent a fatal alert.
    #[error("peer sent alert {alert}")]
    AlertReceived { alert: String },
    /// The client tried to renegotiate a TLS 1.2 connection again after being refused once
    /// (the first try gets a `no_renegotiation` warning and the connection goes on).
    #[error("renegotiation refused")]
    Renegotiation,
    /// The peer's certificate was refused: a client certificate under `require`, or an
    /// origin's certificate (the reason says why, for the 502 log line).
    #[error("certificate refused: {reason}")]
    Certificate { reason: String },
    /// The handshake failed: no shared version, cipher suite or group, an unexpected
    /// message, or another protocol violation.
    #[error("handshake failed: {detail}")]
    Handshake { detail: String },
    /// `seal` would queue more than the limit of unsent bytes: take and send the ciphertext
    /// first (nothing of this call was queued).
    #[error("send queue full: {queued} bytes unsent, limit {limit}")]
    SendQueueFull { queued: usize, limit: usize },
    /// `seal` after `close_notify` or after an error.
    #[error("connection closed")]
    Closed,
    /// `seal` on a server before the client's hello was read.
    #[error("handshake not started")]
    NotReady,
    /// Anything else rustls reports (a bug or resource failure, not the peer's doing).
    #[error("internal TLS error: {detail}")]
    Internal { detail: String },
}

/// The kind of a [`TlsError`], for counters and log fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsErrorKind {
    PlaintextHttp,
    NotTls,
    UnknownServerName,
    NoSharedAlpn,
    OversizedRecord,
    BadRecord,
    AlertReceived,
    Renegotiation,
    Certificate,
    Handshake,
    SendQueueFull,
    Closed,
    NotReady,
    Internal,
}

impl TlsErrorKind {
    /// Every kind, in counter order.
    pub const ALL: [TlsErrorKind; 14] = [
        TlsErrorKind::PlaintextHttp,
        TlsErrorKind::NotTls,
        TlsErrorKind::UnknownServerName,
        TlsErrorKind::NoSharedAlpn,
        TlsErrorKind::OversizedRecord,
        TlsErrorKind::BadRecord,
        TlsErrorKind::AlertReceived,
        TlsErrorKind::Renegotiation,
        TlsErrorKind::Certificate,
        TlsErrorKind::Handshake,
        TlsErrorKind::SendQueueFull,
        TlsErrorKind::Closed,
        TlsErrorKind::NotReady,
        TlsErrorKind::Internal,
    ];

    /// A metric label / log value.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsErrorKind::PlaintextHttp => "plaintext_http",
            TlsErrorKind::NotTls => "not_tls",
            TlsErrorKind::UnknownServerName => "unknown_server_name",
            TlsErrorKind::NoSharedAlpn => "no_shared_alpn",
            TlsErrorKind::OversizedRecord => "oversized_record",
            TlsErrorKind::BadRecord => "bad_record",
            TlsErrorKind::AlertReceived => "alert_received",
            TlsErrorKind::Renegotiation => "renegotiation",
            TlsErrorKind::Certificate => "certificate",
            TlsErrorKind::Handshake => "handshake",
            TlsErrorKind::SendQueueFull => "send_queue_full",
            TlsErrorKind::Closed => "closed",
            TlsErrorKind::NotReady => "not_ready",
            TlsErrorKind::Internal => "internal",
        }
    }
}

impl TlsError {
    pub fn kind(&self) -> TlsErrorKind {
        match self {
            TlsError::PlaintextHttp => TlsErrorKind::PlaintextHttp,
            TlsError::NotTls { .. } => TlsErrorKind::NotTls,
            TlsError::UnknownServerName { .. } => TlsErrorKind::UnknownServerName,
            TlsError::NoSharedAlpn => TlsErrorKind::NoSharedAlpn,
            TlsError::OversizedRecord { .. } => TlsErrorKind::OversizedRecord,
            TlsError::BadRecord { .. } => TlsErrorKind::BadRecord,
            TlsError::AlertReceived { .. } => TlsErrorKind::AlertReceived,
            TlsError::Renegotiation => TlsErrorKind::Renegotiation,
            TlsError::Certificate { .. } => TlsErrorKind::Certificate,
            TlsError::Handshake { .. } => TlsErrorKind::Handshake,
            TlsError::SendQueueFull { .. } => TlsErrorKind::SendQueueFull,
            TlsError::Closed => TlsErrorKind::Closed,
            TlsError::NotReady => TlsErrorKind::NotReady,
            TlsError::Internal { .. } => TlsErrorKind::Internal,
        }
    }

    /// Maps a rustls error; `peer` (a server we are the client of) goes into certificate
    /// reasons.
    pub(crate) fn from_rustls(error: Error, peer_name: Option<&Peer>) -> TlsError {
        match error {
            Error::InvalidMessage(InvalidMessage::MessageTooLarge) => TlsError::OversizedRecord {
                detail: "record or handshake message longer than TLS allows".into(),
            },
            Error::InvalidMessage(m) => TlsError::BadRecord {
                detail: format!("{m:?}"),
            },
            Error::DecryptError => TlsError::BadRecord {
                detail: "cannot decrypt (bad MAC)".into(),
            },
            Error::AlertReceived(alert) => TlsError::AlertReceived {
                alert: alert_name(alert),
            },
            Error::NoApplicationProtocol => TlsError::NoSharedAlpn,
            Error::PeerMisbehaved(PeerMisbehaved::TooManyRenegotiationRequests) => {
                TlsError::Renegotiation
            }
            Error::InvalidCertificate(e) => TlsError::Certificate {
                reason: describe_certificate_error(&e, peer_name),
            },
            Error::NoCertificatesPresented => TlsError::Certificate {
                reason: "no client certificate presented (client_auth = \"require\")".into(),
            },
            e @ (Error::PeerIncompatible(_)
            | Error::PeerMisbehaved(_)
            | Error::InappropriateMessage { .. }
            | Error::InappropriateHandshakeMessage { .. }
            | Error::PeerSentOversizedRecord
            | Error::HandshakeNotComplete
            | Error::UnsupportedNameType) => {
                if matches!(e, Error::PeerSentOversizedRecord) {
                    TlsError::OversizedRecord {
                        detail: e.to_string(),
                    }
                } else {
                    TlsError::Handshake {
                        detail: e.to_string(),
                    }
                }
            }
            e => TlsError::Internal {
                detail: e.to_string(),
            },
        }
    }
}

/// The alert's RFC name in snake case (`bad_certificate`), as logs spell it.
fn alert_name(alert: AlertDescription) -> String {
    // rustls spells this one the British way; the RFC says `unrecognized_name`.
    if alert == AlertDescription::UnrecognisedName {
        return "unrecognized_name".to_owned();
    }
    let debug = format!("{alert:?}");
    let mut out = String::with_capacity(debug.len() + 4);
    for (i, c) in debug.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A server we are the TLS client of, as certificate refusals name it.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// `origin 10.0.0.7 (api.example)`, `server 127.0.0.1`.
    pub(crate) name: String,
    /// The setting that holds the CAs it is verified against (`origin_ca`).
    pub(crate) ca_setting: &'static str,
}

/// Why a certificate was refused, in words an operator reads in a 502 log line.
pub(crate) fn describe_certificate_error(e: &CertificateError, peer: Option<&Peer>) -> String {
    let whose = peer.map_or_else(String::new, |p| format!("{}: ", p.name));
    let why = match e {
        CertificateError::UnknownIssuer => match peer {
            Some(p) => format!(
                "not signed by a trusted CA (unknown issuer; set {} to the CA that signed it)",
                p.ca_setting
            ),
            None => "not signed by a trusted CA (unknown issuer)".to_owned(),
        },
        CertificateError::NotValidForName => "not valid for the name asked for".to_owned(),
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => format!(
            "valid for [{}], not for {:?}",
            presented
                .iter()
                .map(|p| presented_name(p))
                .collect::<Vec<_>>()
                .join(", "),
            server_name_text(expected)
        ),
        CertificateError::Expired => "expired".to_owned(),
        CertificateError::ExpiredContext { time, not_after } => format!(
            "expired: not after {} s since the epoch, now {}",
            not_after.as_secs(),
            time.as_secs()
        ),
        CertificateError::NotValidYet => "not valid yet".to_owned(),
        CertificateError::NotValidYetContext { time, not_before } => format!(
            "not valid yet: not before {} s since the epoch, now {}",
            not_before.as_secs(),
            time.as_secs()
        ),
        CertificateError::Revoked => "revoked".to_owned(),
        CertificateError::BadEncoding => "not a valid X.509 certificate".to_owned(),
        CertificateError::BadSignature => "bad signature in the chain".to_owned(),
        CertificateError::UnsupportedSignatureAlgorithmContext { .. } => {
            "signed with an unsupported algorithm".to_owned()
        }
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "not issued for this purpose (extended key usage)".to_owned()
        }
        CertificateError::ApplicationVerificationFailure => "refused by the verifier".to_owned(),
        other => format!("{other:?}"),
    };
    format!("{whose}certificate {why}")
}

/// rustls lists the presented names in their `Debug` form (`DnsName("a.test")`): the name.
fn presented_name(text: &str) -> &str {
    for prefix in ["DnsName(\"", "IpAddress(", "URI(\""] {
        if let Some(inner) = text.strip_prefix(prefix) {
            return inner.trim_end_matches(')').trim_end_matches('"');
        }
    }
    text
}

fn server_name_text(name: &rustls::pki_types::ServerName<'_>) -> String {
    match name {
        rustls::pki_types::ServerName::DnsName(d) => d.as_ref().to_owned(),
        rustls::pki_types::ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

/// A certificate, key or CA file that cannot be used: the message names the file and what is
/// wrong with it. A reload that meets one changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {what}", path.display())]
pub struct LoadError {
    pub path: PathBuf,
    pub what: String,
}

impl LoadError {
    pub(crate) fn new(path: &Path, what: impl Into<String>) -> LoadError {
        LoadError {
            path: path.to_owned(),
            what: what.into(),
        }
    }
}

/// Why a TLS configuration could not be built: a file problem, or a setting that contradicts
/// the certificates (e.g. a listener that names an unknown certificate id).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("{context}: {source}")]
    File {
        /// Which setting named the file (`certificate "main" cert`, `tls_listener[0] client_ca`).
        context: String,
        #[source]
        source: LoadError,
    },
    #[error("{context}: {what}")]
    Setting { context: String, what: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_names_are_snake_case() {
        assert_eq!(
            alert_name(AlertDescription::UnrecognisedName),
            "unrecognized_name"
        );
        assert_eq!(
            alert_name(AlertDescription::BadCertificate),
            "bad_certificate"
        );
    }

    #[test]
    fn every_kind_has_a_distinct_label() {
        let mut labels: Vec<&str> = TlsErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), TlsErrorKind::ALL.len());
    }
}
