//! `wsedge-tls`: TLS for the wsedge dataplane (issue 14), over rustls 0.23 with the aws-lc-rs
//! provider, with no I/O of its own and no `unsafe`.
//!
//! It sits between a worker's sockets and its sans-IO session (`wsedge_proto::session`), at
//! the worker's per-side `Transport` seam: the worker reads ciphertext into its buffers and
//! feeds it to a [`TlsServer`] (client side) or [`TlsClient`] (origin side), hands the
//! plaintext to the session, seals the session's output and writes the ciphertext back.
//! Nothing here blocks, reads a clock on the per-byte path or spawns anything.
//!
//! - [`CertStore`] loads `[[certificate]]` PEM files (ECDSA and RSA), chooses by SNI (exact,
//!   `*.` wildcard, default; an unknown name without default is refused with
//!   `unrecognized_name`), builds one `Arc<rustls::ServerConfig>` per `[[tls_listener]]` for
//!   every worker to share, with one ticketer and session cache per listener so a session
//!   resumes on any worker, and reloads from files without disturbing what serves.
//! - [`TlsServer`]: one client connection; its [`HandshakeFacts`] (SNI, ALPN, version,
//!   cipher, resumption, [`ClientCertStatus`]) feed routing, the firewall and the access log.
//! - [`OriginTls`] / [`TlsClient`]: TLS to origins, verified against the system roots or a
//!   route's CA, with refusal reasons fit for a 502 log line; [`ClientIdentity`]: a client
//!   certificate they present (mutual TLS to the broker).
//! - [`ktls`]: each direction's kTLS key parts (`KtlsHandoff`) built from the extracted
//!   traffic secrets (the kernel structs, setsockopt and run-time probe: `wsedge_ring::ktls`).
//! - [`spec`]: the configuration model `wsedge-command` validates into.

#![forbid(unsafe_code)]

mod certs;
mod client;
mod client_auth;
mod core;
mod error;
pub mod ktls;
mod server;
pub mod spec;
mod store;

pub use certs::CertInfo;
pub use client::{ClientIdentity, OriginFacts, OriginTls, SystemRoots, TlsClient};
pub use client_auth::ClientCertStatus;
pub use core::{Progress, TlsLimits};
pub use error::{LoadError, StoreError, TlsError, TlsErrorKind};
pub use ktls::{CryptoInfo, KtlsHandoff};
pub use server::{HandshakeFacts, PLAINTEXT_HTTP_RESPONSE, ServerTls, TlsServer};
pub use spec::{
    Alpn, CertificateSpec, ClientAuth, KtlsMode, ListenerSpec, NamePattern, OriginTlsSpec,
    TlsConfig, TlsVersion,
};
pub use store::CertStore;

/// rustls itself, for the types that appear in this API (`CipherSuite`, configs).
pub use rustls;

#[cfg(test)]
mod tests;
