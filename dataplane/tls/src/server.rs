//! [`TlsServer`]: one TLS connection from a client, sans-IO, for a completion-based worker.
//!
//! The worker reads ciphertext from the socket into its own buffers and calls
//! [`TlsServer::feed`]; it hands what [`TlsServer::take_plaintext`] gives to the session,
//! seals the session's output with [`TlsServer::seal`] and writes what
//! [`TlsServer::take_ciphertext`] gives. The first bytes are checked before rustls sees
//! them (plain HTTP on a TLS port is answered, not parsed as garbage), and the ClientHello
//! is read through rustls's `Acceptor` so an unknown server name is refused with the
//! `unrecognized_name` alert before any certificate is chosen.

use std::sync::Arc;

use rustls::server::{Accepted, Acceptor};
use rustls::{CipherSuite, HandshakeKind, ProtocolVersion, ServerConfig, ServerConnection};

use crate::certs::SniResolver;
use crate::client_auth::{ClientAuthPolicy, ClientCertStatus};
use crate::core::{Core, Progress, TlsLimits};
use crate::error::TlsError;
use crate::ktls::{KtlsHandoff, handoff};
use crate::spec::{KtlsMode, TlsVersion};

/// Answer for a client that spoke plain HTTP to a TLS port (what nginx answers, in clear).
pub const PLAINTEXT_HTTP_RESPONSE: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain\r\n\
Content-Length: 46\r\n\
Connection: close\r\n\
\r\n\
The plain HTTP request was sent to HTTPS port\n";

/// The fatal `unrecognized_name` (112) alert as a plaintext record: sent before any key
/// exists, so it is not encrypted.
const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 112];

/// One listener's TLS: the rustls configuration (built once, shared by every worker and
/// connection) and what a connection needs besides it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) resolver: Arc<SniResolver>,
    pub(crate) client_auth: ClientAuthPolicy,
    pub(crate) limits: TlsLimits,
    /// The listener's `ktls` setting.
    pub(crate) ktls: KtlsMode,
}

impl ServerTls {
    /// The listener's `ktls` setting.
    pub fn ktls(&self) -> KtlsMode {
        self.ktls
    }

    /// The rustls configuration every connection of this listener uses.
    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    /// The same listener with other memory bounds.
    pub fn with_limits(mut self, limits: TlsLimits) -> ServerTls {
        self.limits = limits;
        self
    }

    /// A new connection's TLS state.
    pub fn accept(&self) -> TlsServer {
        TlsServer::new(self)
    }
}

/// The facts of a finished handshake that the rest of the edge uses (routing, firewall,
/// access log, forwarding headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeFacts {
    /// The server name the client asked for (lower case), if it sent one.
    pub sni: Option<String>,
    /// The ALPN protocol selected (`http/1.1`), if any.
    pub alpn: Option<String>,
    pub version: TlsVersion,
    pub cipher_suite: CipherSuite,
    /// An abbreviated handshake (session ticket or session id).
    pub resumed: bool,
    pub client_cert: ClientCertStatus,
}

impl HandshakeFacts {
    /// The IANA name of the cipher suite (`TLS13_AES_128_GCM_SHA256`).
    pub fn cipher_name(&self) -> &'static str {
        self.cipher_suite.as_str().unwrap_or("unknown")
    }
}

pub(crate) fn version_of(v: Option<ProtocolVersion>) -> TlsVersion {
    match v {
        Some(ProtocolVersion::TLSv1_3) => TlsVersion::Tls13,
        _ => TlsVersion::Tls12,
    }
}

enum State {
    /// Reading the ClientHello.
    Hello(Box<Acceptor>),
    /// The handshake runs or is done.
    Open(Box<ServerConnection>),
    /// Refused before a connection existed; the alert (if any) waits in `early_out`.
    Refused,
    /// Handed to the kernel.
    Gone,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Hello(_) => "Hello",
            State::Open(_) => "Open",
            State::Refused => "Refused",
            State::Gone => "Gone",
        })
    }
}

/// One client's TLS connection (see the module doc for how a worker drives it).
#[derive(Debug)]
pub struct TlsServer {
    tls: ServerTls,
    state: State,
    core: Core,
    /// Records to send before the connection existed (an alert).
    early_out: Vec<u8>,
    /// Whether the first byte was checked.
    checked_first: bool,
    facts: Option<HandshakeFacts>,
}

impl TlsServer {
    pub fn new(tls: &ServerTls) -> TlsServer {
        TlsServer {
            tls: tls.clone(),
            state: State::Hello(Box::default()),
            core: Core::new(tls.limits),
            early_out: Vec::new(),
            checked_first: false,
            facts: None,
        }
    }

    /// Feeds bytes read from the socket. On an error the connection is over: send what
    /// `take_ciphertext` gives (an alert), then close (for `PlaintextHttp`, answer
    /// [`PLAINTEXT_HTTP_RESPONSE`] first).
    pub fn feed(&mut self, ciphertext: &[u8]) -> Result<Progress, TlsError> {
        if let Some(e) = &self.core.failed {
            return Err(e.clone());
        }
        if matches!(self.state, State::Refused | State::Gone) {
            return Err(TlsError::Closed);
        }
        let mut progress = Progress::default();
        if ciphertext.is_empty() {
            progress.plaintext = self.core.plaintext_pending();
            progress.peer_closed = self.core.peer_closed;
            return Ok(progress);
        }
        if !self.checked_first {
            self.checked_first = true;
            let first = ciphertext[0];
            if first != 0x16 {
                let e = if first.is_ascii_uppercase() {
                    TlsError::PlaintextHttp
                } else {
                    TlsError::NotTls { first_byte: first }
                };
                self.state = State::Refused;
                return Err(self.core.fail(e));
            }
        }
        let mut consumed = 0;
        if let State::Hello(acceptor) = &mut self.state {
            match read_hello(acceptor, ciphertext, &mut self.core.records) {
                Err(e) => {
                    self.state = State::Refused;
                    return Err(self.fail_with_alert(e));
                }
                Ok((n, None)) => {
                    progress.consumed = n;
                    return Ok(progress);
                }
                Ok((n, Some(accepted))) => {
                    consumed = n;
                    self.open(accepted)?;
                }
            }
        }
        let State::Open(conn) = &mut self.state else {
            return Err(TlsError::Closed);
        };
        let was_handshaking = conn.is_handshaking();
        // The bytes the acceptor buffered past the ClientHello moved into the connection:
        // process them even when `ciphertext` was all consumed.
        if consumed > 0 {
            match conn.process_new_packets() {
                Ok(_) => {}
                Err(e) => return Err(self.core.fail(TlsError::from_rustls(e, None))),
            }
        }
        let n = self.core.feed(conn, &ciphertext[consumed..], None)?;
        progress.consumed = consumed + n;
        if was_handshaking && !conn.is_handshaking() && self.facts.is_none() {
            self.facts = Some(facts_of(conn, &self.tls.client_auth));
            progress.handshake_done = true;
        }
        progress.plaintext = self.core.plaintext_pending();
        progress.peer_closed = self.core.peer_closed;
        Ok(progress)
    }

    /// The ClientHello is complete: refuse an unknown name ourselves (rustls would send
    /// `access_denied`), else make the connection.
    fn open(&mut self, accepted: Accepted) -> Result<(), TlsError> {
        let sni = accepted.client_hello().server_name().map(str::to_owned);
        if self.tls.resolver.refuses(sni.as_deref()) {
            self.state = State::Refused;
            self.early_out.extend_from_slice(&UNRECOGNIZED_NAME_ALERT);
            return Err(self.core.fail(TlsError::UnknownServerName {
                name: sni.unwrap_or_default(),
            }));
        }
        match accepted.into_connection(self.tls.config.clone()) {
            Ok(mut conn) => {
                conn.set_buffer_limit(None);
                self.state = State::Open(Box::new(conn));
                Ok(())
            }
            Err((e, mut alert)) => {
                let _ = alert.write(&mut self.early_out);
                self.state = State::Refused;
                Err(self.core.fail(TlsError::from_rustls(e, None)))
            }
        }
    }

    fn fail_with_alert(
        &mut self,
        (e, alert): (TlsError, Option<rustls::server::AcceptedAlert>),
    ) -> TlsError {
        if let Some(mut alert) = alert {
            let _ = alert.write(&mut self.early_out);
        }
        self.core.fail(e)
    }

    /// Appends the decrypted application bytes to `out`; returns how many.
    pub fn take_plaintext(&mut self, out: &mut Vec<u8>) -> usize {
        match &mut self.state {
            State::Open(conn) => self.core.take_plaintext(conn, out),
            _ => 0,
        }
    }

    /// Queues application bytes to send (encrypted once the handshake is done). Nothing is
    /// queued on an error.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<(), TlsError> {
        match &mut self.state {
            State::Open(conn) => self.core.seal(conn, plaintext),
            State::Hello(_) => Err(TlsError::NotReady),
            State::Refused | State::Gone => Err(TlsError::Closed),
        }
    }

    /// Appends the records to write to the socket (handshake, application data, alerts,
    /// `close_notify`); returns how many bytes.
    pub fn take_ciphertext(&mut self, out: &mut Vec<u8>) -> usize {
        let mut n = self.early_out.len();
        out.append(&mut self.early_out);
        if let State::Open(conn) = &mut self.state {
            n += self.core.take_ciphertext(conn, out);
        }
        n
    }

    /// Queues a `close_notify` alert: the orderly end of the TLS stream (take the ciphertext
    /// and write it before shutting the socket). Later `seal`s fail with `Closed`.
    pub fn close_notify(&mut self) {
        match &mut self.state {
            State::Open(conn) => self.core.close_notify(conn),
            // No keys yet, so nothing to send: the connection is simply over.
            State::Hello(_) => {
                self.core.closing = true;
                self.state = State::Refused;
            }
            State::Refused | State::Gone => {}
        }
    }

    /// The handshake is not finished (also true before the ClientHello was read).
    pub fn is_handshaking(&self) -> bool {
        match &self.state {
            State::Open(conn) => conn.is_handshaking(),
            State::Hello(_) => true,
            State::Refused | State::Gone => false,
        }
    }

    /// Records are waiting for `take_ciphertext`.
    pub fn wants_write(&self) -> bool {
        !self.early_out.is_empty() || matches!(&self.state, State::Open(conn) if conn.wants_write())
    }

    /// The peer sent `close_notify`.
    pub fn peer_closed(&self) -> bool {
        self.core.peer_closed
    }

    /// The handshake's facts, once it finished.
    pub fn facts(&self) -> Option<&HandshakeFacts> {
        self.facts.as_ref()
    }

    /// The `ktls` setting of the listener this connection came in on.
    pub fn ktls_mode(&self) -> KtlsMode {
        self.tls.ktls
    }

    /// Whether the keys can go to the kernel now: the handshake is done, nothing waits to
    /// be written or read, and the fed bytes end at a record boundary (user space has not
    /// read half a record the kernel would then miss).
    pub fn ktls_ready(&self) -> bool {
        matches!(&self.state, State::Open(conn) if !conn.is_handshaking() && !conn.wants_write())
            && self.core.plaintext_pending() == 0
            && self.core.records.at_boundary()
            && self.core.failed.is_none()
            && !self.core.closing
    }

    /// Extracts the traffic keys for kernel TLS (see [`crate::ktls`]); the connection is
    /// then gone from user space. Fails unless [`ktls_ready`](Self::ktls_ready).
    pub fn into_ktls(mut self) -> Result<KtlsHandoff, TlsError> {
        if !self.ktls_ready() {
            return Err(TlsError::Internal {
                detail: "kTLS hand-off before the connection is ready (handshake, pending bytes or a partial record)".into(),
            });
        }
        let State::Open(conn) = std::mem::replace(&mut self.state, State::Gone) else {
            return Err(TlsError::Closed);
        };
        let version = version_of(conn.protocol_version());
        let secrets = conn
            .dangerous_extract_secrets()
            .map_err(|e| TlsError::from_rustls(e, None))?;
        handoff(version, secrets)
    }
}

type HelloError = (TlsError, Option<rustls::server::AcceptedAlert>);

/// Feeds the acceptor until the ClientHello is complete or the input is spent.
fn read_hello(
    acceptor: &mut Acceptor,
    input: &[u8],
    records: &mut crate::core::RecordScan,
) -> Result<(usize, Option<Accepted>), HelloError> {
    let mut consumed = 0;
    while consumed < input.len() {
        let mut rest = &input[consumed..];
        let n = match acceptor.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                return Err((
                    TlsError::OversizedRecord {
                        detail: format!("ClientHello: {e}"),
                    },
                    None,
                ));
            }
        };
        records.scan(&input[consumed..consumed + n]);
        consumed += n;
        match acceptor.accept() {
            Ok(None) => {}
            Ok(Some(accepted)) => return Ok((consumed, Some(accepted))),
            Err((e, alert)) => return Err((TlsError::from_rustls(e, None), Some(alert))),
        }
    }
    Ok((consumed, None))
}

fn facts_of(conn: &ServerConnection, client_auth: &ClientAuthPolicy) -> HandshakeFacts {
    HandshakeFacts {
        sni: conn.server_name().map(str::to_ascii_lowercase),
        alpn: conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        version: version_of(conn.protocol_version()),
        cipher_suite: conn
            .negotiated_cipher_suite()
            .map_or(CipherSuite::Unknown(0), |s| s.suite()),
        resumed: conn.handshake_kind() == Some(HandshakeKind::Resumed),
        client_cert: client_auth.status(conn.peer_certificates()),
    }
}
