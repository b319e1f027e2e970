//! [`CertStore`]: every certificate and every TLS listener of a configuration, loaded from
//! files and built into rustls configurations once.
//!
//! A reload builds a whole new store from the files; if any file is broken it fails, naming
//! the file, and the caller keeps serving with the store (the `Arc<ServerConfig>`s) it has.
//! Live connections keep the configuration they started with. Session resumption state (one
//! ticketer, rotated every 6 hours with 12-hour tickets, and one session cache per listener)
//! is shared by every worker, since they all use the listener's one `ServerConfig`, and is
//! carried over by a reload as long as the listener's client-certificate policy is
//! unchanged: a ticket issued before the reload resumes after it, on any worker. A policy
//! change starts afresh, so no session made without a client certificate can resume where
//! one is now required.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};

use crate::certs::{CertInfo, LoadedCert, SniResolver, load_certificate};
use crate::client_auth::ClientAuthPolicy;
use crate::core::TlsLimits;
use crate::error::StoreError;
use crate::server::ServerTls;
use crate::spec::{Alpn, ClientAuth, ListenerSpec, TlsConfig, TlsVersion};

/// Sessions kept per listener for stateful resumption (TLS 1.2 session ids; TLS 1.3 and
/// ticket-capable TLS 1.2 clients use stateless tickets instead).
const SESSION_CACHE_ENTRIES: usize = 8192;

/// The resumption state of one listener, shared by all its `ServerConfig`s.
#[derive(Clone)]
struct Resumption {
    ticketer: Arc<dyn ProducesTickets>,
    cache: Arc<dyn StoresServerSessions>,
    policy: ClientAuthPolicy,
}

impl std::fmt::Debug for Resumption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resumption")
            .field("client_auth", &self.policy.mode)
            .finish_non_exhaustive()
    }
}

/// Every certificate and TLS listener of one configuration, ready to serve.
#[derive(Debug)]
pub struct CertStore {
    certs: Vec<LoadedCert>,
    listeners: Vec<ServerTls>,
    resumption: Vec<Resumption>,
}

impl CertStore {
    /// Loads every file `config` names and builds one rustls configuration per listener.
    pub fn load(config: &TlsConfig) -> Result<CertStore, StoreError> {
        CertStore::build(config, None)
    }

    /// A new store from `config` (read from the files again), keeping this store's
    /// resumption state where the listener's client-certificate policy is unchanged. On an
    /// error nothing changes: keep using `self`.
    pub fn reload(&self, config: &TlsConfig) -> Result<CertStore, StoreError> {
        CertStore::build(config, Some(self))
    }

    /// Listener `index` (in `[[tls_listener]]` order).
    pub fn listener(&self, index: usize) -> Option<&ServerTls> {
        self.listeners.get(index)
    }

    pub fn listeners(&self) -> &[ServerTls] {
        &self.listeners
    }

    /// Every certificate, in file order, for `wsedgectl certs` and the expiry metric.
    pub fn certificates(&self) -> impl Iterator<Item = &CertInfo> {
        self.certs.iter().map(|c| &c.info)
    }

    /// Whether two stores share listener `index`'s resumption state (a ticket issued by one
    /// resumes on the other).
    pub fn shares_resumption(&self, other: &CertStore, index: usize) -> bool {
        match (self.resumption.get(index), other.resumption.get(index)) {
            (Some(a), Some(b)) => Arc::ptr_eq(&a.ticketer, &b.ticketer),
            _ => false,
        }
    }

    fn build(config: &TlsConfig, previous: Option<&CertStore>) -> Result<CertStore, StoreError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut certs: Vec<LoadedCert> = Vec::with_capacity(config.certificates.len());
        for spec in &config.certificates {
            if certs.iter().any(|c| c.info.id == spec.id) {
                return Err(StoreError::Setting {
                    context: format!("certificate {:?}", spec.id),
                    what: "duplicate certificate id".into(),
                });
            }
            let loaded = load_certificate(spec, &provider).map_err(|source| StoreError::File {
                context: format!("certificate {:?}", spec.id),
                source,
            })?;
            certs.push(loaded);
        }
        let mut listeners = Vec::with_capacity(config.listeners.len());
        let mut resumption = Vec::with_capacity(config.listeners.len());
        for (index, spec) in config.listeners.iter().enumerate() {
            let context = format!("tls_listener[{index}]");
            let chosen = choose_certs(&certs, spec, &context)?;
            let policy = match (spec.client_auth, &spec.client_ca) {
                (ClientAuth::None, _) => ClientAuthPolicy::none(),
                (mode, Some(ca)) => {
                    ClientAuthPolicy::build(mode, ca, provider.clone()).map_err(|source| {
                        StoreError::File {
                            context: format!("{context} client_ca"),
                            source,
                        }
                    })?
                }
                (mode, None) => {
                    return Err(StoreError::Setting {
                        context,
                        what: format!(
                            "client_auth = {:?} needs client_ca, the CA bundle client certificates must chain to",
                            mode.as_str()
                        ),
                    });
                }
            };
            let kept = previous
                .and_then(|p| p.resumption.get(index))
                .filter(|r| r.policy == policy)
                .cloned();
            let state = match kept {
                Some(r) => r,
                None => Resumption {
                    ticketer: rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| {
                        StoreError::Setting {
                            context: context.clone(),
                            what: format!("cannot make a session ticketer: {e}"),
                        }
                    })?,
                    cache: ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES),
                    policy: policy.clone(),
                },
            };
            let resolver = Arc::new(SniResolver::new(chosen));
            let server_config = server_config(spec, &provider, &policy, &resolver, &state)
                .map_err(|what| StoreError::Setting {
                    context: context.clone(),
                    what,
                })?;
            listeners.push(ServerTls {
                config: Arc::new(server_config),
                resolver,
                client_auth: policy,
                limits: TlsLimits::default(),
                ktls: spec.ktls,
            });
            resumption.push(state);
        }
        Ok(CertStore {
            certs,
            listeners,
            resumption,
        })
    }
}

/// The certificates a listener serves: the ones it names, or all.
fn choose_certs<'a>(
    certs: &'a [LoadedCert],
    spec: &ListenerSpec,
    context: &str,
) -> Result<Vec<&'a LoadedCert>, StoreError> {
    let chosen: Vec<&LoadedCert> =
        match &spec.certificates {
            None => certs.iter().collect(),
            Some(ids) => {
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    let cert = certs.iter().find(|c| &c.info.id == id).ok_or_else(|| {
                        StoreError::Setting {
                            context: format!("{context} certificates"),
                            what: format!("no [[certificate]] with id {id:?}"),
                        }
                    })?;
                    out.push(cert);
                }
                out
            }
        };
    if chosen.is_empty() {
        return Err(StoreError::Setting {
            context: context.to_owned(),
            what: "no certificate to serve: add a [[certificate]]".into(),
        });
    }
    Ok(chosen)
}

fn server_config(
    spec: &ListenerSpec,
    provider: &Arc<CryptoProvider>,
    policy: &ClientAuthPolicy,
    resolver: &Arc<SniResolver>,
    resumption: &Resumption,
) -> Result<ServerConfig, String> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match spec.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?;
    let builder = match policy.handshake_verifier() {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver.clone());
    config.alpn_protocols = match spec.alpn {
        Alpn::Http11 => vec![b"http/1.1".to_vec()],
        Alpn::Off => Vec::new(),
    };
    config.ticketer = resumption.ticketer.clone();
    config.session_storage = resumption.cache.clone();
    // kTLS needs the traffic secrets after the handshake (`TlsServer::into_ktls`).
    config.enable_secret_extraction = true;
    // No 0-RTT: early data can be replayed, and a WebSocket upgrade is not idempotent.
    config.max_early_data_size = 0;
    Ok(config)
}
