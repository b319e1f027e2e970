//! The `[broker]` table: the message broker (Redis or NATS) that carries broadcast channels
//! between hosts (docs/broker.md). The dataplane's broker bridge (`wsedge-broker`) reads it
//! at start; a change takes a restart.
//!
//! ```toml
//! [broker]
//! backend = "redis"                         # or "nats"
//! addresses = ["redis://127.0.0.1:6379"]    # rediss:// for TLS; nats:// or tls:// for NATS
//! # tls_ca = "ca.pem"; tls_cert = "edge.pem"; tls_key = "edge.key"  (mutual TLS)
//! # tls_first = true                        # NATS handshake_first servers
//! host = "edge-1"                           # this host in presence (default: hostname-pid)
//! prefix = "wsedge:"                        # namespace of every key and subject
//! shards = 1                                # K connections; a channel's by its hash
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// Which broker carries the channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BrokerBackend {
    /// Redis pub/sub (`PUBLISH`/`SUBSCRIBE`), presence in hashes with an expiry.
    Redis,
    /// NATS core subjects (`PUB`/`SUB`).
    Nats,
}

impl BrokerBackend {
    /// The configuration spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            BrokerBackend::Redis => "redis",
            BrokerBackend::Nats => "nats",
        }
    }
}

/// One broker server: where to connect, as written (`redis://`, `rediss://`, `nats://` or
/// `tls://`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    /// `host:port`.
    pub authority: String,
    /// The URL as written (credentials excluded).
    pub url: String,
    /// `rediss://` or `tls://`: TLS, the server's certificate verified against its host name.
    pub tls: bool,
}

impl BrokerAddress {
    /// The host name or IP address (an IPv6 one without its brackets): what the server's
    /// certificate is verified against.
    pub fn host(&self) -> &str {
        let (host, _) = self.split();
        host.trim_start_matches('[').trim_end_matches(']')
    }

    /// The port (validated: present and not 0).
    pub fn port(&self) -> u16 {
        self.split().1.parse().unwrap_or_default()
    }

    fn split(&self) -> (&str, &str) {
        // INVARIANT: parse_address refused an authority without a port.
        self.authority
            .rsplit_once(':')
            .unwrap_or((&self.authority, ""))
    }
}

/// The validated `[broker]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    pub backend: BrokerBackend,
    /// The servers; shard `i` connects to `addresses[i % len]`.
    pub addresses: Vec<BrokerAddress>,
    /// Optional credentials (Redis `AUTH [user] password`, NATS `user`/`pass`).
    pub username: Option<String>,
    pub password: Option<String>,
    /// The CA certificates (PEM) a `rediss://` or `tls://` server's certificate is verified
    /// against; `None`: the system's trust store.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM chain) and its key presented to `rediss://` and `tls://`
    /// servers that require one (mutual TLS); both or neither. Read by
    /// [`crate::Config::load_tls`].
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// NATS `tls://` only: start TLS at once instead of after the server's `INFO` (the
    /// server's `handshake_first: true`).
    pub tls_first: bool,
    /// The first part of every Redis channel and key, or NATS subject.
    pub prefix: String,
    /// This host's name in presence (`GET /channels/<name>`).
    pub host: String,
    /// Broker connections (K); a channel lives on shard `hash(channel) % K`.
    pub shards: usize,
    /// Most channels the bridge holds broker subscriptions for; past it, new channels are
    /// served on this host only (counted).
    pub max_channels: usize,
    /// Messages in flight from the bridge to one worker; past it, messages for that worker
    /// are dropped (counted, and its subscribers get a `gap`).
    pub worker_queue: usize,
    /// How long a host's presence count lives in the broker without a refresh.
    pub presence_ttl: Duration,
    /// First and longest wait between reconnection attempts.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Namespaces whose channels keep a history clients recover from (Redis only).
    pub recovery: Vec<RecoveryConfig>,
}

/// A recoverable namespace (`[[broker.recovery]]`): every channel `<namespace>:<rest>` keeps
/// its recent messages in a Redis stream, with an offset and an epoch (docs/broker.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryConfig {
    /// The channels' name up to their first `:`.
    pub namespace: String,
    /// Messages kept per channel (`XADD … MAXLEN ~ size`): a client further behind cannot
    /// recover.
    pub history_size: u64,
    /// A channel's history is dropped when nothing was published on it for this long.
    pub history_ttl: Duration,
    /// A channel's position (its epoch and last offset) is kept this long after its last
    /// publication; past it, the channel's next history has a new epoch.
    pub meta_ttl: Duration,
}

impl BrokerConfig {
    /// Reads the client certificate and key (`tls_cert`/`tls_key`), checked to match;
    /// `None` without them. The error names the setting and the file at fault.
    pub fn load_identity(&self) -> Result<Option<wsedge_tls::ClientIdentity>, String> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        wsedge_tls::ClientIdentity::load(cert, key)
            .map(Some)
            .map_err(|e| {
                let field = if &e.path == key {
                    "broker.tls_key"
                } else {
                    "broker.tls_cert"
                };
                format!("{field}: {e}")
            })
    }

    /// The recoverable namespace `channel` belongs to, if any.
    pub fn recovery_of(&self, channel: &str) -> Option<&RecoveryConfig> {
        recovery_of(&self.recovery, channel)
    }
}

/// The namespace of `recovery` that `channel` (`<namespace>:<rest>`) belongs to, if any.
pub fn recovery_of<'a>(
    recovery: &'a [RecoveryConfig],
    channel: &str,
) -> Option<&'a RecoveryConfig> {
    let (namespace, _) = channel.split_once(':')?;
    recovery.iter().find(|r| r.namespace == namespace)
}

/// One `[[broker.recovery]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRecovery {
    namespace: Spanned<String>,
    #[serde(default)]
    history_size: Option<Spanned<i64>>,
    #[serde(default)]
    history_ttl: Option<Spanned<String>>,
    #[serde(default)]
    meta_ttl: Option<Spanned<String>>,
}

/// The `[broker]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBroker {
    #[serde(default)]
    backend: Option<Spanned<String>>,
    addresses: Spanned<Vec<String>>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    tls: Option<Spanned<bool>>,
    #[serde(default)]
    tls_ca: Option<Spanned<PathBuf>>,
    #[serde(default)]
    tls_cert: Option<Spanned<PathBuf>>,
    #[serde(default)]
    tls_key: Option<Spanned<PathBuf>>,
    #[serde(default)]
    tls_first: Option<Spanned<bool>>,
    #[serde(default)]
    prefix: Option<Spanned<String>>,
    #[serde(default)]
    host: Option<Spanned<String>>,
    #[serde(default)]
    shards: Option<Spanned<i64>>,
    #[serde(default)]
    max_channels: Option<Spanned<i64>>,
    #[serde(default)]
    worker_queue: Option<Spanned<i64>>,
    #[serde(default)]
    presence_ttl: Option<Spanned<String>>,
    #[serde(default)]
    reconnect_min: Option<Spanned<String>>,
    #[serde(default)]
    reconnect_max: Option<Spanned<String>>,
    #[serde(default)]
    recovery: Option<Spanned<Vec<RawRecovery>>>,
}

/// A host name for presence: 1 to 64 of `A-Z a-z 0-9 . _ : -`.
pub fn is_valid_host(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Validates `raw`; `invalid(span, field, message)` builds the error naming file and line.
pub(crate) fn validate<E>(
    raw: RawBroker,
    invalid: &dyn Fn(std::ops::Range<usize>, &str, String) -> E,
) -> Result<BrokerConfig, E> {
    let backend = match raw
        .backend
        .as_ref()
        .map(|b| (b.get_ref().as_str(), b.span()))
    {
        None | Some(("redis", _)) => BrokerBackend::Redis,
        Some(("nats", _)) => BrokerBackend::Nats,
        Some((other, span)) => {
            return Err(invalid(
                span,
                "broker.backend",
                format!("{other:?} is not a broker (\"redis\" or \"nats\")"),
            ));
        }
    };
    if let Some(tls) = raw.tls.filter(|t| *t.get_ref()) {
        return Err(invalid(
            tls.span(),
            "broker.tls",
            "TLS is chosen per address: write rediss://host:port (Redis) or tls://host:port \
             (NATS); tls_ca sets the CAs the certificate is verified against"
                .into(),
        ));
    }
    let span = raw.addresses.span();
    let written = raw.addresses.into_inner();
    if written.is_empty() {
        return Err(invalid(
            span,
            "broker.addresses",
            "needs at least one".into(),
        ));
    }
    let mut addresses = Vec::with_capacity(written.len());
    for url in &written {
        let address = parse_address(backend, url)
            .map_err(|m| invalid(span.clone(), "broker.addresses", m))?;
        addresses.push(address);
    }
    // A TLS file setting: not empty, and only with an address that uses TLS.
    let tls_file = |path: Option<Spanned<PathBuf>>, field: &str| match path {
        None => Ok(None),
        Some(p) if p.get_ref().as_os_str().is_empty() => {
            Err(invalid(p.span(), field, "must not be empty".into()))
        }
        Some(p) if !addresses.iter().any(|a| a.tls) => Err(invalid(
            p.span(),
            field,
            "no address uses TLS (rediss://host:port or tls://host:port)".into(),
        )),
        Some(p) => Ok(Some(p.into_inner())),
    };
    let tls_ca = tls_file(raw.tls_ca, "broker.tls_ca")?;
    // Mutual TLS: a certificate without its key (or the reverse) is a mistake, not a
    // half-configured client.
    let (tls_cert, tls_key) = match (raw.tls_cert, raw.tls_key) {
        (Some(cert), None) => {
            return Err(invalid(
                cert.span(),
                "broker.tls_cert",
                "needs tls_key too (the client certificate's private key, PEM)".into(),
            ));
        }
        (None, Some(key)) => {
            return Err(invalid(
                key.span(),
                "broker.tls_key",
                "needs tls_cert too (the client certificate chain, PEM)".into(),
            ));
        }
        (cert, key) => (
            tls_file(cert, "broker.tls_cert")?,
            tls_file(key, "broker.tls_key")?,
        ),
    };
    let tls_first = match raw.tls_first {
        Some(t) if *t.get_ref() && backend != BrokerBackend::Nats => {
            return Err(invalid(
                t.span(),
                "broker.tls_first",
                "NATS only (a Redis server starts TLS at once already)".into(),
            ));
        }
        Some(t) if *t.get_ref() && !addresses.iter().any(|a| a.tls) => {
            return Err(invalid(
                t.span(),
                "broker.tls_first",
                "no address uses TLS (tls://host:port)".into(),
            ));
        }
        t => t.is_some_and(|t| t.into_inner()),
    };
    let prefix = match raw.prefix {
        None => match backend {
            BrokerBackend::Redis => "wsedge:".to_owned(),
            BrokerBackend::Nats => "wsedge.".to_owned(),
        },
        Some(p) => {
            let text = p.get_ref();
            let ok = text.len() <= 64
                && text.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-' | b'/')
                })
                && !(backend == BrokerBackend::Nats
                    && (text.starts_with('.') || text.contains("..")));
            if !ok {
                return Err(invalid(
                    p.span(),
                    "broker.prefix",
                    format!("{text:?}: up to 64 of A-Z a-z 0-9 . _ : - / (NATS: no empty token)"),
                ));
            }
            p.into_inner()
        }
    };
    let host = match raw.host {
        Some(h) => {
            if !is_valid_host(h.get_ref()) {
                return Err(invalid(
                    h.span(),
                    "broker.host",
                    format!(
                        "{:?} is not a host name (1 to 64 of A-Z a-z 0-9 . _ : -)",
                        h.get_ref()
                    ),
                ));
            }
            h.into_inner()
        }
        // Two dataplanes on one machine must not share a presence entry.
        None => format!(
            "{}-{}",
            crate::fleet::kernel_hostname()
                .filter(|h| is_valid_host(h) && h.len() < 50)
                .unwrap_or_else(|| "localhost".to_owned()),
            std::process::id()
        ),
    };
    let count = |v: Option<Spanned<i64>>, field: &str, default: usize, max: i64| match v {
        None => Ok(default),
        Some(n) if (1..=max).contains(n.get_ref()) => Ok(*n.get_ref() as usize),
        Some(n) => Err(invalid(n.span(), field, format!("must be from 1 to {max}"))),
    };
    let shards = count(raw.shards, "broker.shards", addresses.len(), 64)?;
    let max_channels = count(raw.max_channels, "broker.max_channels", 100_000, 10_000_000)?;
    let worker_queue = count(raw.worker_queue, "broker.worker_queue", 65_536, 16_777_216)?;
    let duration = |v: Option<Spanned<String>>,
                    field: &str,
                    default: Duration,
                    range: std::ops::RangeInclusive<Duration>,
                    words: &str| match v {
        None => Ok(default),
        Some(t) => {
            let d = crate::duration::parse_duration(t.get_ref())
                .map_err(|m| invalid(t.span(), field, m))?;
            if range.contains(&d) {
                Ok(d)
            } else {
                Err(invalid(t.span(), field, format!("must be {words}")))
            }
        }
    };
    let presence_ttl = duration(
        raw.presence_ttl,
        "broker.presence_ttl",
        Duration::from_secs(30),
        Duration::from_secs(3)..=Duration::from_secs(3600),
        "from 3s to 1h",
    )?;
    let reconnect_min = duration(
        raw.reconnect_min,
        "broker.reconnect_min",
        Duration::from_millis(100),
        Duration::from_millis(10)..=Duration::from_secs(60),
        "from 10ms to 60s",
    )?;
    let max_span = raw.reconnect_max.as_ref().map(Spanned::span);
    let reconnect_max = duration(
        raw.reconnect_max,
        "broker.reconnect_max",
        Duration::from_secs(5),
        Duration::from_millis(10)..=Duration::from_secs(600),
        "from 10ms to 10m",
    )?;
    if reconnect_max < reconnect_min {
        return Err(invalid(
            max_span.unwrap_or(span),
            "broker.reconnect_max",
            "must not be shorter than reconnect_min".into(),
        ));
    }
    let mut recovery = Vec::new();
    if let Some(tables) = raw.recovery {
        if backend == BrokerBackend::Nats && !tables.get_ref().is_empty() {
            return Err(invalid(
                tables.span(),
                "broker.recovery",
                "recovery needs a broker that keeps history (Redis Streams): NATS core keeps \
                 none; use backend = \"redis\" or remove [[broker.recovery]]"
                    .into(),
            ));
        }
        for table in tables.into_inner() {
            let ns = table.namespace.get_ref();
            let ok = (1..=64).contains(&ns.len())
                && ns
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !ok || recovery.iter().any(|r: &RecoveryConfig| &r.namespace == ns) {
                return Err(invalid(
                    table.namespace.span(),
                    "broker.recovery.namespace",
                    format!(
                        "{ns:?}: 1 to 64 of A-Z a-z 0-9 . _ - (a channel's name up to its \
                         first ':'), each namespace once"
                    ),
                ));
            }
            let history_size = match table.history_size {
                None => 100,
                Some(n) if (1..=1_000_000).contains(n.get_ref()) => *n.get_ref() as u64,
                Some(n) => {
                    return Err(invalid(
                        n.span(),
                        "broker.recovery.history_size",
                        "must be from 1 to 1000000".into(),
                    ));
                }
            };
            let history_ttl = duration(
                table.history_ttl,
                "broker.recovery.history_ttl",
                Duration::from_secs(600),
                Duration::from_secs(1)..=Duration::from_secs(30 * 24 * 3600),
                "from 1s to 720h",
            )?;
            let meta_span = table.meta_ttl.as_ref().map(Spanned::span);
            let meta_ttl = duration(
                table.meta_ttl,
                "broker.recovery.meta_ttl",
                Duration::from_secs(30 * 24 * 3600).max(history_ttl),
                Duration::from_secs(1)..=Duration::from_secs(365 * 24 * 3600),
                "from 1s to 8760h",
            )?;
            if meta_ttl < history_ttl {
                return Err(invalid(
                    meta_span.unwrap_or(span.clone()),
                    "broker.recovery.meta_ttl",
                    "must not be shorter than history_ttl".into(),
                ));
            }
            recovery.push(RecoveryConfig {
                namespace: table.namespace.into_inner(),
                history_size,
                history_ttl,
                meta_ttl,
            });
        }
    }
    Ok(BrokerConfig {
        backend,
        addresses,
        username: raw.username,
        password: raw.password,
        tls_ca,
        tls_cert,
        tls_key,
        tls_first,
        prefix,
        host,
        shards,
        max_channels,
        worker_queue,
        presence_ttl,
        reconnect_min,
        reconnect_max,
        recovery,
    })
}

/// Reads `redis://host:port`, `rediss://host:port` (TLS), `nats://host:port` or
/// `tls://host:port` (TLS; the scheme NATS clients use) (the scheme must match the backend;
/// no credentials in the URL: they go in `username`/`password`, kept out of logs).
fn parse_address(backend: BrokerBackend, url: &str) -> Result<BrokerAddress, String> {
    let (scheme, rest) = match backend {
        BrokerBackend::Redis => match url.strip_prefix("rediss://") {
            Some(rest) => ("rediss://", Some(rest)),
            None => ("redis://", url.strip_prefix("redis://")),
        },
        BrokerBackend::Nats => match url.strip_prefix("tls://") {
            Some(rest) => ("tls://", Some(rest)),
            None => ("nats://", url.strip_prefix("nats://")),
        },
    };
    let rest = rest.ok_or_else(|| {
        let schemes = match backend {
            BrokerBackend::Redis => "redis:// or rediss://",
            BrokerBackend::Nats => "nats:// or tls://",
        };
        format!("{url:?} must start with {schemes}")
    })?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') || authority.contains('@') {
        return Err(format!(
            "{url:?} must be {scheme}host:port (credentials go in username and password)"
        ));
    }
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("{url:?} needs a port, e.g. {scheme}127.0.0.1:6379"))?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(format!("{url:?}: {port:?} is not a port, or no host"));
    }
    Ok(BrokerAddress {
        authority: authority.to_owned(),
        url: format!("{scheme}{authority}"),
        tls: matches!(scheme, "rediss://" | "tls://"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn with_broker(table: &str) -> Result<Config, crate::ConfigError> {
        Config::from_toml(&format!("[broker]\n{table}\n"), "b.toml")
    }

    #[test]
    fn broker_table_validates() {
        let c = with_broker(
            "addresses = [\"redis://127.0.0.1:6379\", \"redis://10.0.0.2:6380/\"]\nhost = \"edge-1\"\nshards = 4\npresence_ttl = \"10s\"",
        )
        .expect("valid");
        let b = c.broker.expect("broker");
        assert_eq!(b.backend, BrokerBackend::Redis);
        assert_eq!(b.addresses[1].authority, "10.0.0.2:6380");
        assert_eq!(b.prefix, "wsedge:");
        assert_eq!((b.shards, b.host.as_str()), (4, "edge-1"));
        assert_eq!(b.presence_ttl, Duration::from_secs(10));
        assert!(!b.addresses[0].tls && b.tls_ca.is_none());
        // TLS per address, with the CAs it is verified against.
        let c = with_broker(
            "addresses = [\"rediss://r.example:6380\", \"redis://10.0.0.2:6379\"]\ntls_ca = \"/etc/wsedge/redis-ca.pem\"",
        )
        .expect("valid");
        let b = c.broker.expect("broker");
        assert_eq!(
            (
                b.addresses[0].tls,
                b.addresses[0].url.as_str(),
                b.addresses[1].tls
            ),
            (true, "rediss://r.example:6380", false)
        );
        assert_eq!(b.tls_ca, Some(PathBuf::from("/etc/wsedge/redis-ca.pem")));
        let c = with_broker("backend = \"nats\"\naddresses = [\"nats://n:4222\"]").expect("valid");
        let b = c.broker.expect("broker");
        assert_eq!(
            (b.backend, b.prefix.as_str(), b.shards),
            (BrokerBackend::Nats, "wsedge.", 1)
        );
        assert!(is_valid_host(&b.host), "{}", b.host);
        assert!(!b.addresses[0].tls);
        assert_eq!((b.addresses[0].host(), b.addresses[0].port()), ("n", 4222));
        // NATS over TLS: tls://, as NATS clients write it, with or without tls_ca.
        let c = with_broker(
            "backend = \"nats\"\naddresses = [\"tls://n.example:4443\", \"tls://[::1]:4222\"]\ntls_ca = \"/etc/wsedge/nats-ca.pem\"",
        )
        .expect("valid");
        let b = c.broker.expect("broker");
        let a = &b.addresses;
        assert_eq!(
            (a[0].tls, a[0].url.as_str(), a[0].host(), a[0].port()),
            (true, "tls://n.example:4443", "n.example", 4443)
        );
        assert_eq!((a[1].tls, a[1].host(), a[1].port()), (true, "::1", 4222));
        assert_eq!(b.tls_ca, Some(PathBuf::from("/etc/wsedge/nats-ca.pem")));
        let c = with_broker("backend = \"nats\"\naddresses = [\"tls://n:4222\"]").expect("valid");
        let b = c.broker.expect("broker");
        assert!(b.addresses[0].tls && b.tls_ca.is_none());
        assert_eq!(Config::from_toml("", "b").expect("valid").broker, None);
    }

    #[test]
    fn client_certificate_and_tls_first_validate() {
        let c = with_broker(
            "backend = \"nats\"\naddresses = [\"tls://n:4222\"]\ntls_cert = \"/etc/wsedge/edge.pem\"\ntls_key = \"/etc/wsedge/edge.key\"\ntls_first = true",
        )
        .expect("valid");
        let b = c.broker.expect("broker");
        assert_eq!(b.tls_cert, Some(PathBuf::from("/etc/wsedge/edge.pem")));
        assert_eq!(b.tls_key, Some(PathBuf::from("/etc/wsedge/edge.key")));
        assert!(b.tls_first);
        let b = with_broker("addresses = [\"rediss://n:1\"]\ntls_first = false")
            .expect("valid")
            .broker
            .expect("broker");
        assert_eq!((b.tls_cert, b.tls_key, b.tls_first), (None, None, false));
        // A certificate without its key: file:line: field: message, at the line written.
        let e = with_broker("addresses = [\"rediss://n:1\"]\ntls_cert = \"c.pem\"")
            .expect_err("no key")
            .to_string();
        assert!(
            e.starts_with("b.toml:3: broker.tls_cert: needs tls_key too"),
            "{e}"
        );
    }

    #[test]
    fn the_client_certificate_is_loaded_and_checked_with_the_tls_files() {
        let dir =
            std::env::temp_dir().join(format!("wsedge-broker-identity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["edge".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let other_key = rcgen::KeyPair::generate().expect("key");
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write");
            path.display().to_string()
        };
        let (c, k) = (
            write("edge.pem", cert.pem()),
            write("edge.key", key.serialize_pem()),
        );
        let other = write("other.key", other_key.serialize_pem());
        let load = |cert: &str, key: &str| {
            let text =
                format!("addresses = [\"rediss://n:1\"]\ntls_cert = {cert:?}\ntls_key = {key:?}");
            with_broker(&text)
                .expect("parses: no file is read")
                .load_tls("b.toml")
                .map(|loaded| loaded.broker.is_some())
                .map_err(|e| e.to_string())
        };
        assert_eq!(load(&c, &k), Ok(true));
        let missing = dir.join("missing.key").display().to_string();
        let e = load(&c, &missing).expect_err("missing");
        assert!(
            e.starts_with(&format!("b.toml: broker.tls_key: {missing}: cannot read")),
            "{e}"
        );
        let e = load(&c, &other).expect_err("mismatched");
        assert!(
            e.starts_with(&format!(
                "b.toml: broker.tls_key: {other}: this key does not belong to the certificate in {c}"
            )),
            "{e}"
        );
        let e = load(&k, &c).expect_err("swapped");
        assert!(
            e.starts_with(&format!(
                "b.toml: broker.tls_cert: {k}: no PEM CERTIFICATE block"
            )) && e.contains("cert and key swapped?"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn recovery_namespaces_validate() {
        let c = with_broker(
            "addresses = [\"redis://n:1\"]\n[[broker.recovery]]\nnamespace = \"chat\"\nhistory_size = 50\nhistory_ttl = \"5m\"\n[[broker.recovery]]\nnamespace = \"game.v2\"",
        )
        .expect("valid");
        let b = c.broker.expect("broker");
        assert_eq!(b.recovery.len(), 2);
        let chat = b.recovery_of("chat:room-1").expect("chat");
        assert_eq!(
            (chat.history_size, chat.history_ttl, chat.meta_ttl),
            (
                50,
                Duration::from_secs(300),
                Duration::from_secs(30 * 24 * 3600)
            )
        );
        assert_eq!(
            b.recovery_of("game.v2:x").map(|r| r.history_size),
            Some(100)
        );
        for plain in ["chat", "chatroom:1", "game:x", ":chat"] {
            assert_eq!(b.recovery_of(plain), None, "{plain}");
        }
        for (table, field) in [
            ("namespace = \"a:b\"", "broker.recovery.namespace"),
            ("namespace = \"\"", "broker.recovery.namespace"),
            (
                "namespace = \"a\"\nhistory_size = 0",
                "broker.recovery.history_size",
            ),
            (
                "namespace = \"a\"\nhistory_ttl = \"0s\"",
                "broker.recovery.history_ttl",
            ),
            (
                "namespace = \"a\"\nhistory_ttl = \"2h\"\nmeta_ttl = \"1h\"",
                "broker.recovery.meta_ttl",
            ),
            ("namespace = \"a\"\nsize = 1", "size"),
            (
                "namespace = \"a\"\n[[broker.recovery]]\nnamespace = \"a\"",
                "broker.recovery.namespace",
            ),
        ] {
            let e = with_broker(&format!(
                "addresses = [\"redis://n:1\"]\n[[broker.recovery]]\n{table}"
            ))
            .expect_err(table)
            .to_string();
            assert!(e.contains(field), "{table}: {e}");
        }
        let e = with_broker(
            "backend = \"nats\"\naddresses = [\"nats://n:1\"]\n[[broker.recovery]]\nnamespace = \"chat\"",
        )
        .expect_err("nats")
        .to_string();
        assert!(
            e.contains("broker.recovery") && e.contains("NATS core keeps none"),
            "{e}"
        );
    }

    #[test]
    fn broker_errors_name_the_field() {
        for (table, field) in [
            ("addresses = []", "broker.addresses"),
            ("addresses = [\"nats://n:1\"]", "broker.addresses"),
            // Each backend's own schemes only.
            ("addresses = [\"tls://n:1\"]", "broker.addresses"),
            (
                "backend = \"nats\"\naddresses = [\"rediss://n:1\"]",
                "broker.addresses",
            ),
            (
                "backend = \"nats\"\naddresses = [\"nats://n:1\"]\ntls_ca = \"ca.pem\"",
                "broker.tls_ca",
            ),
            (
                "addresses = [\"redis://n:1\"]\ntls_ca = \"ca.pem\"",
                "broker.tls_ca",
            ),
            (
                "addresses = [\"rediss://n:1\"]\ntls_ca = \"\"",
                "broker.tls_ca",
            ),
            ("addresses = [\"redis://u:p@n:1\"]", "broker.addresses"),
            ("addresses = [\"redis://n\"]", "broker.addresses"),
            (
                "backend = \"kafka\"\naddresses = [\"redis://n:1\"]",
                "broker.backend",
            ),
            ("addresses = [\"redis://n:1\"]\ntls = true", "broker.tls"),
            ("addresses = [\"redis://n:1\"]\nshards = 0", "broker.shards"),
            (
                "addresses = [\"redis://n:1\"]\nhost = \"a b\"",
                "broker.host",
            ),
            (
                "addresses = [\"redis://n:1\"]\nprefix = \"a b\"",
                "broker.prefix",
            ),
            (
                "backend = \"nats\"\naddresses = [\"nats://n:1\"]\nprefix = \"a..b\"",
                "broker.prefix",
            ),
            (
                "addresses = [\"redis://n:1\"]\npresence_ttl = \"1s\"",
                "broker.presence_ttl",
            ),
            (
                "addresses = [\"redis://n:1\"]\nreconnect_min = \"2s\"\nreconnect_max = \"1s\"",
                "broker.reconnect_max",
            ),
            ("addresses = [\"redis://n:1\"]\nwhat = 1", "what"),
            // Mutual TLS: both files, and only with a TLS address.
            (
                "addresses = [\"rediss://n:1\"]\ntls_key = \"k.pem\"",
                "broker.tls_key",
            ),
            (
                "addresses = [\"redis://n:1\"]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"",
                "broker.tls_cert",
            ),
            (
                "addresses = [\"rediss://n:1\"]\ntls_cert = \"c.pem\"\ntls_key = \"\"",
                "broker.tls_key",
            ),
            // TLS first: NATS, over tls://.
            (
                "addresses = [\"rediss://n:1\"]\ntls_first = true",
                "broker.tls_first",
            ),
            (
                "backend = \"nats\"\naddresses = [\"nats://n:1\"]\ntls_first = true",
                "broker.tls_first",
            ),
        ] {
            let e = with_broker(table).expect_err(table).to_string();
            assert!(e.contains(field), "{table}: {e}");
        }
    }
}
