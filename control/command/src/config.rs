//! The configuration schema: TOML text in, validated [`Config`] out.
//!
//! Two layers: `Raw*` structs mirror the file (serde, unknown keys rejected), and the public
//! types hold only valid states (addresses parsed, durations typed, route limits resolved
//! against the `[limits]` defaults). Each dataplane worker keeps its own copy of a `Config`;
//! the control process validates with the same code before it pushes anything.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use wsedge_proto::firewall::Cidr;
pub use wsedge_proto::forwarding::{Forwarding, XRealIp};
use wsedge_proto::handshake::MAX_HEADERS_CAP;
pub use wsedge_proto::path::EncodedSlashes;
pub use wsedge_proto::route::SniPattern;

use crate::error::ConfigError;

mod health;
mod syntax;

pub use health::{ActiveCheck, CheckKind, HashKey, HealthConfig, Policy};

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub dataplane: DataplaneConfig,
    pub access_log: AccessLogTarget,
    pub relay: RelayConfig,
    /// The `[limits]` table: the defaults every route starts from.
    pub limits: Limits,
    /// The `[http]` table: how request paths are read, and the forwarding defaults.
    pub http: HttpConfig,
    pub routes: Vec<Route>,
    pub control: ControlConfig,
    pub functions: FunctionsConfig,
    /// The `[[list]]` network lists and `[[rule]]` firewall rules.
    pub firewall: crate::firewall::FirewallConfig,
    /// The `[fleet]` table (etcd): read by the control process only.
    pub fleet: Option<crate::fleet::FleetConfig>,
    /// `[[certificate]]` and `[[tls_listener]]` (the files are read by [`Config::load_tls`]).
    pub tls: crate::tls::TlsConfig,
    /// The `[broker]` table: channels shared with other hosts through Redis or NATS.
    pub broker: Option<crate::broker::BrokerConfig>,
}

/// The `[functions]` table: process-wide settings of the built-in functions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunctionsConfig {
    /// The HTTP publish API (`POST /publish/<channel>`) on this address; `None` = off.
    pub publish_listen: Option<SocketAddr>,
}

/// Which built-in function answers a route instead of origins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FunctionKind {
    /// The edge completes the handshake and echoes every message.
    Echo,
    /// Channels: clients subscribe and publish; messages fan out to every subscriber.
    Broadcast,
    /// The edge terminates the client's WebSocket and opens its own to `bridge_url`.
    Bridge,
    /// A JavaScript module answers (`script`); see docs/functions.md.
    Js,
}

/// A `js` route's module and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptConfig {
    /// The module's entry file, resolved against the config file's directory.
    pub path: PathBuf,
    /// CPU time one event may take before the script is interrupted (default 50 ms).
    pub cpu_budget: Duration,
    /// Bytes the function's runtime may allocate on one worker (default 64 MiB).
    pub memory_limit: usize,
}

/// Where a `bridge` route connects: `ws://IP:port/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeTarget {
    pub addr: SocketAddr,
    /// The Host header sent (`IP:port` as written).
    pub host: String,
    /// Path and query sent in the request line.
    pub path: String,
}

/// A route's built-in function and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionConfig {
    pub kind: FunctionKind,
    /// `bridge` only.
    pub bridge: Option<BridgeTarget>,
    /// `js` only.
    pub script: Option<ScriptConfig>,
    /// `broadcast`: whether clients may publish (else only the publish API does).
    pub publish: bool,
    /// `broadcast`: whether a publisher receives its own messages.
    pub echo_to_sender: bool,
    /// `broadcast`: most subscribers of one channel on one worker.
    pub max_subscribers: usize,
    /// `broadcast`: most channels one client may subscribe to.
    pub max_channels_per_client: usize,
    /// Bytes queued to one client before it counts as a slow consumer and is closed (1013).
    pub max_send_queue: usize,
}

/// The `[control]` table: the dataplane's control socket, the control process's own socket
/// and state file, and the metrics endpoint. Read at start; not changed by pushes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    /// The dataplane's control socket; `None` = no control socket.
    pub socket: Option<PathBuf>,
    /// Permission bits of the socket file (default 0o600).
    pub socket_mode: u32,
    /// Group owning the socket file (so its members may connect with mode 0660).
    pub socket_group: Option<String>,
    /// Peer uids allowed besides the dataplane's own uid and root.
    pub allowed_uids: Vec<u32>,
    /// Where the control process (`wsedgectl daemon`) listens for the CLI.
    pub daemon_socket: PathBuf,
    /// Where the control process persists the applied configuration.
    pub state_file: Option<PathBuf>,
    /// Prometheus `/metrics` on this address; `None` = off.
    pub metrics_listen: Option<SocketAddr>,
    /// The control process's read-only status page (HTML and JSON) on this address;
    /// `None` = off.
    pub status_listen: Option<SocketAddr>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: None,
            socket_mode: 0o600,
            socket_group: None,
            allowed_uids: Vec::new(),
            daemon_socket: PathBuf::from("/run/wsedge/control.sock"),
            state_file: None,
            metrics_listen: None,
            status_listen: None,
        }
    }
}

/// The `[dataplane]` table: process-wide settings read at start.
#[derive(Debug, Clone, PartialEq)]
pub struct DataplaneConfig {
    pub listen: Vec<SocketAddr>,
    /// `None` means one worker per online CPU.
    pub workers: Option<usize>,
    pub drain_timeout: Duration,
    pub max_connections_per_worker: usize,
    /// Pin worker `i` to CPU `i % cpus` (the default). Off lets the scheduler move workers,
    /// which suits hosts where the proxy shares its cores with other busy processes.
    pub pin_workers: bool,
    /// Let the kernel back the process's memory with transparent huge pages (default off:
    /// the allocator asks for them, and they round every worker's heap up to 2 MiB steps,
    /// with no throughput measured in return).
    pub transparent_huge_pages: bool,
    /// How the kernel spreads new connections over the workers' listeners.
    pub steering: Steering,
    /// Binary upgrade (`wsedgectl upgrade`, SIGUSR2): the window over which the old
    /// generation closes its connections once the new one is ready (default 60 s).
    pub upgrade_drain_window: Duration,
    /// Binary upgrade: how many old generations may still be draining at once; an upgrade
    /// that would make one more is refused (default 2).
    pub max_old_generations: usize,
    /// Binary upgrade: how long the new binary has to report ready (default 30 s).
    pub upgrade_ready_timeout: Duration,
}

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    Off,
    File(PathBuf),
}

/// The `[relay]` table: per-worker relay resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayConfig {
    /// Bytes per provided buffer (a power of two, 1 KiB ..= 1 MiB).
    pub buffer_size: u32,
    /// Buffers in each worker's ring (a power of two, up to 32768).
    pub buffer_count: u16,
    pub max_in_flight: u32,
    /// Free pipes each worker keeps for the splice relay.
    pub pipe_pool: usize,
    /// Bytes each splice pipe is asked to hold (4 KiB ..= 1 MiB).
    pub pipe_size: u32,
}

/// Timers and limits; `[limits]` holds the defaults, a route may override the per-route ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub handshake_timeout: Duration,
    pub origin_connect_timeout: Duration,
    pub origin_handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connection_time: Duration,
    /// Per cent (0..=50) of random jitter on `max_connection_time`.
    pub max_connection_time_jitter: u8,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 16 * 1024,
            max_headers: 64,
            handshake_timeout: Duration::from_secs(10),
            origin_connect_timeout: Duration::from_secs(5),
            origin_handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(15 * 60),
            max_connection_time: Duration::from_secs(15 * 60),
            max_connection_time_jitter: 5,
        }
    }
}

/// `[http] encoded_slashes` as written: validated into `wsedge_proto::path::EncodedSlashes`
/// (a raw spelling only; the model is proto's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawEncodedSlashes {
    Reject,
    Keep,
    Decode,
}

impl From<RawEncodedSlashes> for EncodedSlashes {
    fn from(raw: RawEncodedSlashes) -> Self {
        match raw {
            RawEncodedSlashes::Reject => EncodedSlashes::Reject,
            RawEncodedSlashes::Keep => EncodedSlashes::Keep,
            RawEncodedSlashes::Decode => EncodedSlashes::Decode,
        }
    }
}

/// `x_real_ip` as written: validated into `wsedge_proto::forwarding::XRealIp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawXRealIp {
    Set,
    Remove,
}

impl From<RawXRealIp> for XRealIp {
    fn from(raw: RawXRealIp) -> Self {
        match raw {
            RawXRealIp::Set => XRealIp::Set,
            RawXRealIp::Remove => XRealIp::Remove,
        }
    }
}

/// The `[http]` table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpConfig {
    /// Global: the path is normalized before a route is known.
    pub encoded_slashes: EncodedSlashes,
    /// The forwarding policy of routes that do not set their own.
    pub forwarding: Forwarding,
}

/// How new connections are spread over the workers (`[dataplane] steering`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Steering {
    /// A hash of the client's address picks the worker: every connection of an address meets
    /// the same worker, so per-address firewall limits are exact.
    #[default]
    ClientAddress,
    /// The kernel's own choice per connection (a hash of the four-tuple): one busy address,
    /// or many clients behind a few addresses (a NAT, a CDN, a balancer that hides them), is
    /// spread over every worker; per-address limits then hold per worker.
    Connection,
}

/// How the bytes of an upgraded connection travel between the two sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayMode {
    /// Recv into the worker's provided-buffer ring, then send.
    Buffered,
    /// socket -> pipe -> socket, pipes borrowed from the worker's pool while bytes are in flight.
    Splice,
    /// Buffered, following WebSocket frame boundaries both ways: graceful Close on expiry
    /// and drain, message limits, proxy keepalive.
    Frames,
    /// Buffered until a direction fills a whole relay buffer in one recv (bulk traffic);
    /// then both directions splice for the rest of the connection.
    Auto,
}

impl RelayMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RelayMode::Buffered => "buffered",
            RelayMode::Splice => "splice",
            RelayMode::Frames => "frames",
            RelayMode::Auto => "auto",
        }
    }
}

/// Which `Host` values a route accepts (compared without the port, case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Any,
    /// Lower-case host name.
    Exact(String),
    /// Lower-case suffix including the leading dot: `*.example.com` is `.example.com`.
    Suffix(String),
}

/// A validated route: where matching requests go and with which limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    /// `sni`: the TLS server names the route is for (the syntax of certificate names: exact
    /// or a one-label `*.` wildcard); `Any` when unset. A route with `sni` never matches a
    /// plain connection or a TLS client without SNI.
    pub sni: SniPattern,
    pub host: HostMatch,
    pub path_prefix: String,
    /// The origin pool: non-empty (unless a function answers), at most
    /// `wsedge_proto::balance::MAX_POOL` addresses, spread by `balance`, watched by `health`.
    pub origins: Vec<SocketAddr>,
    /// How new connections are spread over the live origins (default round robin).
    pub balance: Policy,
    /// What `balance = "consistent_hash"` hashes (`hash_key`); `None` for other policies.
    pub hash_key: Option<HashKey>,
    /// Each origin's weight (`weights`, 0 to 1000, as many as origins); empty = all 1.
    pub weights: Vec<u32>,
    /// Active checks and passive ejection (`[route.health]`); `None` = every origin always
    /// live.
    pub health: Option<HealthConfig>,
    pub relay: RelayMode,
    /// The `[limits]` defaults with this route's overrides applied.
    pub limits: Limits,
    /// What a `frames` relay enforces (ignored by the other relays).
    pub frames: FrameOptions,
    /// A built-in function answering this route instead of `origins` (then empty).
    pub function: Option<FunctionConfig>,
    /// Debug rules: the access log carries a traceback of the route and firewall rules that
    /// matched, and `Pragma: wsedge-debug` gets response headers naming them. Default off.
    pub debug: bool,
    /// The `[http]` forwarding defaults with this route's overrides applied.
    pub forwarding: Forwarding,
    /// TLS to the origins (`origin_tls = true` or `wss://` origins); `None` = plain TCP. On
    /// a `js` route: the trust for its scripts' `wss://` sockets (always `Some`).
    pub origin_tls: Option<crate::tls::OriginTlsSpec>,
}

/// Per-route options of the `frames` relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameOptions {
    /// Largest message from the client, in bytes (Close 1009 to it); `None` = no limit.
    pub client_max_message: Option<u64>,
    /// Largest message from the origin (Close 1009 to it); `None` = no limit.
    pub origin_max_message: Option<u64>,
    /// Messages per second a client may send on one connection (burst: the same number);
    /// over it: Close 1008. `None` = no limit.
    pub client_message_rate: Option<u32>,
    /// Ping the client after this long without traffic; `None` = no keepalive.
    pub keepalive_interval: Option<Duration>,
    /// No pong within this after a keepalive ping: the connection is closed.
    pub keepalive_timeout: Duration,
    /// Close code and reason sent on expiry and drain.
    pub close_code: u16,
    pub close_reason: String,
    /// How long to wait for the close handshake after sending Close.
    pub close_grace: Duration,
}

impl Default for FrameOptions {
    fn default() -> Self {
        FrameOptions {
            client_max_message: None,
            origin_max_message: None,
            client_message_rate: None,
            keepalive_interval: None,
            keepalive_timeout: Duration::from_secs(10),
            close_code: 1001,
            close_reason: "going away".to_owned(),
            close_grace: Duration::from_secs(5),
        }
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Config::from_toml(&text, &file)
    }

    /// Validates TOML text; `file` names its source in error messages.
    pub fn from_toml(text: &str, file: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| syntax::error(text, file, &e))?;
        Validator { text, file }.config(raw)
    }

    /// Loads every file the TLS settings name: certificates and keys (checked to match), the
    /// listeners' client CA bundles, the routes' origin CA bundles (and the system trust
    /// store if a TLS route uses it), the broker's client certificate and key. `file` names
    /// the configuration in errors, which also name the setting and the file at fault.
    /// Parsing ([`Config::from_toml`]) reads none of these; `wsedge --check`, the
    /// dataplane's start and a reload run this.
    pub fn load_tls(&self, file: &str) -> Result<LoadedTls, ConfigError> {
        let fail = |message: String| ConfigError::Load {
            file: file.to_owned(),
            message,
        };
        let store = wsedge_tls::CertStore::load(&self.tls).map_err(|e| fail(e.to_string()))?;
        let origins = self.load_origin_tls(file)?;
        let broker = match &self.broker {
            Some(b) => b.load_identity().map_err(fail)?,
            None => None,
        };
        Ok(LoadedTls {
            store,
            origins,
            broker,
        })
    }

    /// Each TLS route's origin configuration, by route name (its CA files read; the system
    /// trust store read once if a route uses it). Part of [`Config::load_tls`], and what a
    /// pushed configuration needs besides a certificate reload.
    pub fn load_origin_tls(
        &self,
        file: &str,
    ) -> Result<Vec<(String, wsedge_tls::OriginTls)>, ConfigError> {
        let fail = |message: String| ConfigError::Load {
            file: file.to_owned(),
            message,
        };
        let needs_system = self
            .routes
            .iter()
            .any(|r| r.origin_tls.as_ref().is_some_and(|t| t.ca.is_none()));
        let system = needs_system.then(wsedge_tls::SystemRoots::load);
        let mut origins = Vec::new();
        for route in &self.routes {
            if let Some(spec) = &route.origin_tls {
                let built = wsedge_tls::OriginTls::build(&route.name, spec, system.as_ref());
                let tls = match built {
                    Ok(tls) => tls,
                    // A js route without origin_ca on a host with no system trust store:
                    // its scripts' ws:// sockets work, a wss:// one fails at connect with
                    // the reason logged (the route itself is fine).
                    Err(_)
                        if spec.ca.is_none()
                            && route.function.as_ref().map(|f| f.kind)
                                == Some(FunctionKind::Js) =>
                    {
                        continue;
                    }
                    Err(e) => return Err(fail(e.to_string())),
                };
                origins.push((route.name.clone(), tls));
            }
        }
        Ok(origins)
    }

    /// The worker count to start: the configured one, or the number of online CPUs.
    pub fn worker_count(&self) -> usize {
        self.dataplane.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }
}

/// Everything TLS of a configuration, loaded from its files ([`Config::load_tls`]).
#[derive(Debug)]
pub struct LoadedTls {
    /// Certificates and one rustls configuration per `[[tls_listener]]`.
    pub store: wsedge_tls::CertStore,
    /// Each TLS route's origin configuration, by route name.
    pub origins: Vec<(String, wsedge_tls::OriginTls)>,
    /// The client certificate presented to the broker (`[broker] tls_cert`/`tls_key`).
    pub broker: Option<wsedge_tls::ClientIdentity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    dataplane: RawDataplane,
    #[serde(default)]
    access_log: RawAccessLog,
    #[serde(default)]
    relay: RawRelay,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    http: RawHttp,
    #[serde(default, rename = "route")]
    routes: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    control: RawControl,
    #[serde(default)]
    functions: RawFunctions,
    #[serde(default, rename = "list")]
    lists: Vec<Spanned<crate::firewall::RawList>>,
    #[serde(default, rename = "rule")]
    rules: Vec<Spanned<crate::firewall::RawRule>>,
    #[serde(default)]
    fleet: Option<crate::fleet::RawFleet>,
    #[serde(default, rename = "certificate")]
    certificates: Vec<Spanned<crate::tls::RawCertificate>>,
    #[serde(default, rename = "tls_listener")]
    tls_listeners: Vec<Spanned<crate::tls::RawTlsListener>>,
    #[serde(default)]
    broker: Option<crate::broker::RawBroker>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFunctions {
    publish_listen: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    socket: Option<PathBuf>,
    socket_mode: Option<Spanned<String>>,
    socket_group: Option<String>,
    #[serde(default)]
    allowed_uids: Vec<u32>,
    daemon_socket: Option<PathBuf>,
    state_file: Option<PathBuf>,
    metrics_listen: Option<Spanned<String>>,
    status_listen: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDataplane {
    /// Absent: 127.0.0.1:8080, unless `[[tls_listener]]`s are given (then none). Each address
    /// keeps its own span, so a bad one is reported at its own line.
    listen: Option<Spanned<Vec<Spanned<String>>>>,
    workers: Spanned<RawWorkers>,
    drain_timeout: Option<Spanned<String>>,
    max_connections_per_worker: usize,
    pin_workers: bool,
    transparent_huge_pages: bool,
    steering: Steering,
    upgrade_drain_window: Option<Spanned<String>>,
    max_old_generations: usize,
    upgrade_ready_timeout: Option<Spanned<String>>,
}

impl Default for RawDataplane {
    fn default() -> Self {
        RawDataplane {
            listen: None,
            workers: Spanned::new(0..0, RawWorkers::Auto(AutoWord::Auto)),
            drain_timeout: None,
            max_connections_per_worker: 50_000,
            pin_workers: true,
            transparent_huge_pages: false,
            steering: Steering::ClientAddress,
            upgrade_drain_window: None,
            max_old_generations: 2,
            upgrade_ready_timeout: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawWorkers {
    Auto(AutoWord),
    Count(i64),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum AutoWord {
    Auto,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccessLog {
    target: String,
}

impl Default for RawAccessLog {
    fn default() -> Self {
        RawAccessLog {
            target: "stdout".to_owned(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRelay {
    buffer_size: Spanned<u64>,
    buffer_count: Spanned<u64>,
    max_in_flight: Spanned<u64>,
    pipe_pool: usize,
    pipe_size: Spanned<u64>,
}

impl Default for RawRelay {
    fn default() -> Self {
        RawRelay {
            buffer_size: Spanned::new(0..0, 32 * 1024),
            buffer_count: Spanned::new(0..0, 1024),
            max_in_flight: Spanned::new(0..0, 64 * 1024),
            // The kernel's default pipe size. 256 KiB pipes relayed unbounded 16 KiB floods
            // faster but let the host's TCP memory reach its pressure mark, where some
            // connections starved (docs/benchmarks.md, "Pipe size and TCP memory").
            pipe_pool: 256,
            pipe_size: Spanned::new(0..0, 64 * 1024),
        }
    }
}

/// Every limit is optional in the file: absent keys keep the default (or the `[limits]` value).
/// Durations stay text here so a bad one is reported with its own line.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_head_bytes: Option<Spanned<u64>>,
    max_headers: Option<Spanned<u64>>,
    handshake_timeout: Option<Spanned<String>>,
    origin_connect_timeout: Option<Spanned<String>>,
    origin_handshake_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    max_connection_time: Option<Spanned<String>>,
    max_connection_time_jitter: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    encoded_slashes: Option<RawEncodedSlashes>,
    trusted_proxies: Option<Spanned<Vec<String>>>,
    x_real_ip: Option<RawXRealIp>,
}

/// The limits a route may override (a subset of [`RawLimits`]).
#[derive(Debug)]
struct RouteOverrides {
    origin_connect_timeout: Option<Spanned<String>>,
    origin_handshake_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    max_connection_time: Option<Spanned<String>>,
    max_connection_time_jitter: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Spanned<String>,
    sni: Option<Spanned<String>>,
    host: Option<Spanned<String>>,
    path_prefix: Option<Spanned<String>>,
    /// Each address keeps its own span, so a bad one is reported at its own line.
    origins: Option<Spanned<Vec<Spanned<String>>>>,
    balance: Option<health::RawPolicy>,
    hash_key: Option<Spanned<String>>,
    weights: Option<Spanned<Vec<Spanned<u64>>>>,
    health: Option<Spanned<health::RawHealth>>,
    #[serde(default = "default_relay")]
    relay: RelayMode,
    origin_connect_timeout: Option<Spanned<String>>,
    origin_handshake_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    max_connection_time: Option<Spanned<String>>,
    max_connection_time_jitter: Option<Spanned<u64>>,
    client_max_message: Option<Spanned<u64>>,
    origin_max_message: Option<Spanned<u64>>,
    client_message_rate: Option<Spanned<u64>>,
    keepalive_interval: Option<Spanned<String>>,
    keepalive_timeout: Option<Spanned<String>>,
    close_code: Option<Spanned<u64>>,
    close_reason: Option<Spanned<String>>,
    close_grace: Option<Spanned<String>>,
    function: Option<Spanned<FunctionKind>>,
    bridge_url: Option<Spanned<String>>,
    script: Option<Spanned<String>>,
    cpu_budget: Option<Spanned<String>>,
    memory_limit: Option<Spanned<u64>>,
    publish: Option<bool>,
    echo_to_sender: Option<bool>,
    max_subscribers: Option<Spanned<u64>>,
    max_channels_per_client: Option<Spanned<u64>>,
    max_send_queue: Option<Spanned<u64>>,
    #[serde(default)]
    debug: bool,
    trusted_proxies: Option<Spanned<Vec<String>>>,
    x_real_ip: Option<RawXRealIp>,
    origin_tls: Option<Spanned<bool>>,
    origin_server_name: Option<Spanned<String>>,
    origin_ca: Option<Spanned<PathBuf>>,
}

fn default_relay() -> RelayMode {
    RelayMode::Auto
}

/// The function keys of one route, as written.
#[derive(Debug)]
struct RawFunction {
    kind: Option<Spanned<FunctionKind>>,
    bridge_url: Option<Spanned<String>>,
    script: Option<Spanned<String>>,
    cpu_budget: Option<Spanned<String>>,
    memory_limit: Option<Spanned<u64>>,
    publish: Option<bool>,
    echo_to_sender: Option<bool>,
    max_subscribers: Option<Spanned<u64>>,
    max_channels_per_client: Option<Spanned<u64>>,
    max_send_queue: Option<Spanned<u64>>,
}

/// The `frames` options of one route, as written.
#[derive(Debug)]
struct RawFrameOptions {
    client_max_message: Option<Spanned<u64>>,
    origin_max_message: Option<Spanned<u64>>,
    client_message_rate: Option<Spanned<u64>>,
    keepalive_interval: Option<Spanned<String>>,
    keepalive_timeout: Option<Spanned<String>>,
    close_code: Option<Spanned<u64>>,
    close_reason: Option<Spanned<String>>,
    close_grace: Option<Spanned<String>>,
}

/// Parses `ws://IP:port/path?query` (no name resolution: give an address).
fn parse_bridge_url(url: &str) -> Result<BridgeTarget, String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("{url:?} must start with ws:// (wss:// is not supported yet)"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .parse::<SocketAddr>()
        .map_err(|_| format!("{url:?}: {authority:?} is not an IP:port address"))?;
    if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!(
            "{url:?}: the path has spaces or control characters"
        ));
    }
    Ok(BridgeTarget {
        addr,
        host: authority.to_owned(),
        path: path.to_owned(),
    })
}

struct Validator<'a> {
    text: &'a str,
    file: &'a str,
}

impl Validator<'_> {
    /// A `js` route's `script`, `cpu_budget` and `memory_limit` (and their absence
    /// elsewhere). The script is resolved against the config file's directory and must exist.
    fn script(
        &self,
        index: usize,
        kind: FunctionKind,
        kind_span: Range<usize>,
        raw: &mut RawFunction,
    ) -> Result<Option<ScriptConfig>, ConfigError> {
        let field = |name: &str| format!("route[{index}].{name}");
        if kind != FunctionKind::Js {
            for (name, span) in [
                ("script", raw.script.as_ref().map(Spanned::span)),
                ("cpu_budget", raw.cpu_budget.as_ref().map(Spanned::span)),
                ("memory_limit", raw.memory_limit.as_ref().map(Spanned::span)),
            ] {
                if let Some(span) = span {
                    return Err(self.invalid(span, &field(name), "only for function = \"js\""));
                }
            }
            return Ok(None);
        }
        let Some(script) = raw.script.take() else {
            return Err(self.invalid(
                kind_span,
                &field("script"),
                "a js function needs script = \"path/to/handler.js\"",
            ));
        };
        let written = PathBuf::from(script.get_ref());
        let path = if written.is_absolute() {
            written
        } else {
            Path::new(self.file)
                .parent()
                .map_or_else(|| written.clone(), |dir| dir.join(&written))
        };
        if !path.is_file() {
            return Err(self.invalid(
                script.span(),
                &field("script"),
                format!("script file {} not found", path.display()),
            ));
        }
        let cpu_budget = self
            .duration(raw.cpu_budget.take(), &field("cpu_budget"))?
            .unwrap_or(Duration::from_millis(50));
        if cpu_budget.is_zero() || cpu_budget > Duration::from_secs(10) {
            let span = raw
                .cpu_budget
                .as_ref()
                .map_or(kind_span.clone(), Spanned::span);
            return Err(self.invalid(span, &field("cpu_budget"), "must be from 1ms to 10s"));
        }
        let memory_limit = match raw.memory_limit.take() {
            Some(v) if *v.get_ref() < 1 << 20 => {
                return Err(self.invalid(
                    v.span(),
                    &field("memory_limit"),
                    "must be at least 1048576 bytes (1 MiB)",
                ));
            }
            Some(v) => *v.get_ref() as usize,
            None => 64 << 20,
        };
        Ok(Some(ScriptConfig {
            path,
            cpu_budget,
            memory_limit,
        }))
    }

    fn invalid(&self, span: Range<usize>, field: &str, message: impl Into<String>) -> ConfigError {
        let line = self.text[..span.start.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1;
        ConfigError::Invalid {
            file: self.file.to_owned(),
            line,
            field: field.to_owned(),
            message: message.into(),
        }
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let dataplane = self.dataplane(raw.dataplane, !raw.tls_listeners.is_empty())?;
        let access_log = match raw.access_log.target.as_str() {
            "stdout" | "-" => AccessLogTarget::Stdout,
            "off" => AccessLogTarget::Off,
            path => AccessLogTarget::File(PathBuf::from(path)),
        };
        let relay = self.relay(raw.relay)?;
        let limits = self.limits(raw.limits)?;
        let http = HttpConfig {
            encoded_slashes: raw.http.encoded_slashes.map(Into::into).unwrap_or_default(),
            forwarding: Forwarding {
                trusted_proxies: self
                    .trusted_proxies(raw.http.trusted_proxies, "http.trusted_proxies")?
                    .unwrap_or_default(),
                x_real_ip: raw.http.x_real_ip.map(Into::into).unwrap_or_default(),
            },
        };
        let mut routes: Vec<Route> = Vec::with_capacity(raw.routes.len());
        let tls_listeners = !raw.tls_listeners.is_empty();
        for (index, spanned) in raw.routes.into_iter().enumerate() {
            let span = spanned.get_ref().name.span();
            let route = self.route(index, spanned.into_inner(), &limits, &http, tls_listeners)?;
            if routes.iter().any(|r| r.name == route.name) {
                return Err(self.invalid(
                    span,
                    &format!("route[{index}].name"),
                    format!("duplicate route name {:?}", route.name),
                ));
            }
            routes.push(route);
        }
        let control = self.control(raw.control)?;
        let functions = FunctionsConfig {
            publish_listen: match raw.functions.publish_listen {
                None => None,
                Some(a) => Some(a.get_ref().parse::<SocketAddr>().map_err(|_| {
                    self.invalid(
                        a.span(),
                        "functions.publish_listen",
                        format!("{:?} is not an IP:port address", a.get_ref()),
                    )
                })?),
            },
        };
        let route_names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
        let invalid = |span, field: &str, message: String| self.invalid(span, field, message);
        let firewall = crate::firewall::validate(raw.lists, raw.rules, &route_names, &invalid)?;
        let fleet = raw
            .fleet
            .map(|f| crate::fleet::validate(f, &invalid))
            .transpose()?;
        let broker = raw
            .broker
            .map(|b| crate::broker::validate(b, &invalid))
            .transpose()?;
        let tls = crate::tls::validate(
            raw.certificates,
            raw.tls_listeners,
            &dataplane.listen,
            &invalid,
        )?;
        Ok(Config {
            tls,
            dataplane,
            access_log,
            relay,
            limits,
            http,
            routes,
            control,
            firewall,
            functions,
            fleet,
            broker,
        })
    }

    fn control(&self, raw: RawControl) -> Result<ControlConfig, ConfigError> {
        let defaults = ControlConfig::default();
        let socket_mode = match raw.socket_mode {
            None => defaults.socket_mode,
            Some(m) => {
                let text = m.get_ref().trim_start_matches("0o");
                match u32::from_str_radix(text, 8) {
                    Ok(mode) if mode <= 0o777 => mode,
                    _ => {
                        return Err(self.invalid(
                            m.span(),
                            "control.socket_mode",
                            "must be octal permission bits such as \"0600\" or \"0660\"",
                        ));
                    }
                }
            }
        };
        let metrics_listen = match raw.metrics_listen {
            None => None,
            Some(a) => Some(a.get_ref().parse::<SocketAddr>().map_err(|_| {
                self.invalid(
                    a.span(),
                    "control.metrics_listen",
                    format!("{:?} is not an IP:port address", a.get_ref()),
                )
            })?),
        };
        let status_listen = match raw.status_listen {
            None => None,
            Some(a) => Some(a.get_ref().parse::<SocketAddr>().map_err(|_| {
                self.invalid(
                    a.span(),
                    "control.status_listen",
                    format!("{:?} is not an IP:port address", a.get_ref()),
                )
            })?),
        };
        Ok(ControlConfig {
            socket: raw.socket,
            socket_mode,
            socket_group: raw.socket_group,
            allowed_uids: raw.allowed_uids,
            daemon_socket: raw.daemon_socket.unwrap_or(defaults.daemon_socket),
            state_file: raw.state_file,
            metrics_listen,
            status_listen,
        })
    }

    fn dataplane(
        &self,
        raw: RawDataplane,
        tls_listeners: bool,
    ) -> Result<DataplaneConfig, ConfigError> {
        let (span, texts) = match raw.listen {
            Some(l) => (l.span(), l.into_inner()),
            None if tls_listeners => (0..0, Vec::new()),
            None => (0..0, vec![Spanned::new(0..0, "127.0.0.1:8080".to_owned())]),
        };
        let mut listen = Vec::new();
        for text in texts {
            let addr = text.get_ref().parse::<SocketAddr>().map_err(|_| {
                self.invalid(
                    text.span(),
                    "dataplane.listen",
                    format!("{:?} is not an IP:port address", text.get_ref()),
                )
            })?;
            // Listed twice, the second would be refused at start as an address in use.
            if addr.port() != 0 && listen.contains(&addr) {
                return Err(self.invalid(
                    text.span(),
                    "dataplane.listen",
                    format!("{addr} is listed twice"),
                ));
            }
            listen.push(addr);
        }
        if listen.is_empty() && !tls_listeners {
            return Err(self.invalid(
                span,
                "dataplane.listen",
                "needs at least one address (or a [[tls_listener]])",
            ));
        }
        let workers_span = raw.workers.span();
        let workers = match raw.workers.into_inner() {
            RawWorkers::Auto(AutoWord::Auto) => None,
            RawWorkers::Count(n) if (1..=1024).contains(&n) => Some(n as usize),
            RawWorkers::Count(n) => {
                return Err(self.invalid(
                    workers_span,
                    "dataplane.workers",
                    format!("{n} is out of range (1..=1024, or \"auto\")"),
                ));
            }
        };
        Ok(DataplaneConfig {
            listen,
            workers,
            drain_timeout: self
                .duration(raw.drain_timeout, "dataplane.drain_timeout")?
                .unwrap_or(Duration::from_secs(10)),
            max_connections_per_worker: raw.max_connections_per_worker.max(1),
            pin_workers: raw.pin_workers,
            transparent_huge_pages: raw.transparent_huge_pages,
            steering: raw.steering,
            upgrade_drain_window: self
                .duration(raw.upgrade_drain_window, "dataplane.upgrade_drain_window")?
                .unwrap_or(Duration::from_secs(60)),
            max_old_generations: raw.max_old_generations.max(1),
            upgrade_ready_timeout: self
                .duration(raw.upgrade_ready_timeout, "dataplane.upgrade_ready_timeout")?
                .unwrap_or(Duration::from_secs(30)),
        })
    }

    fn relay(&self, raw: RawRelay) -> Result<RelayConfig, ConfigError> {
        let size = *raw.buffer_size.get_ref();
        if !(1024..=1 << 20).contains(&size) || !size.is_power_of_two() {
            return Err(self.invalid(
                raw.buffer_size.span(),
                "relay.buffer_size",
                "must be a power of two from 1024 to 1048576",
            ));
        }
        let count = *raw.buffer_count.get_ref();
        if !(1..=32768).contains(&count) || !count.is_power_of_two() {
            return Err(self.invalid(
                raw.buffer_count.span(),
                "relay.buffer_count",
                "must be a power of two from 1 to 32768",
            ));
        }
        let in_flight = *raw.max_in_flight.get_ref();
        if !(1024..=64 << 20).contains(&in_flight) {
            return Err(self.invalid(
                raw.max_in_flight.span(),
                "relay.max_in_flight",
                "must be from 1024 to 67108864 bytes",
            ));
        }
        let pipe_size = *raw.pipe_size.get_ref();
        if !(4096..=1 << 20).contains(&pipe_size) {
            return Err(self.invalid(
                raw.pipe_size.span(),
                "relay.pipe_size",
                "must be from 4096 to 1048576 bytes (the kernel's pipe-max-size)",
            ));
        }
        Ok(RelayConfig {
            buffer_size: size as u32,
            buffer_count: count as u16,
            max_in_flight: in_flight as u32,
            pipe_pool: raw.pipe_pool,
            pipe_size: pipe_size as u32,
        })
    }

    fn limits(&self, raw: RawLimits) -> Result<Limits, ConfigError> {
        let mut limits = Limits::default();
        if let Some(v) = raw.max_head_bytes {
            if !(512..=1 << 20).contains(v.get_ref()) {
                return Err(self.invalid(
                    v.span(),
                    "limits.max_head_bytes",
                    "must be from 512 to 1048576",
                ));
            }
            limits.max_head_bytes = *v.get_ref() as usize;
        }
        if let Some(v) = raw.max_headers {
            if !(1..=MAX_HEADERS_CAP as u64).contains(v.get_ref()) {
                return Err(self.invalid(
                    v.span(),
                    "limits.max_headers",
                    format!("must be from 1 to {MAX_HEADERS_CAP}"),
                ));
            }
            limits.max_headers = *v.get_ref() as usize;
        }
        if let Some(d) = self.duration(raw.handshake_timeout, "limits.handshake_timeout")? {
            limits.handshake_timeout = d;
        }
        let overrides = RouteOverrides {
            origin_connect_timeout: raw.origin_connect_timeout,
            origin_handshake_timeout: raw.origin_handshake_timeout,
            idle_timeout: raw.idle_timeout,
            max_connection_time: raw.max_connection_time,
            max_connection_time_jitter: raw.max_connection_time_jitter,
        };
        self.apply_overrides(&mut limits, overrides, "limits")?;
        Ok(limits)
    }

    fn duration(
        &self,
        value: Option<Spanned<String>>,
        field: &str,
    ) -> Result<Option<Duration>, ConfigError> {
        value
            .map(|v| {
                crate::duration::parse_duration(v.get_ref())
                    .map_err(|message| self.invalid(v.span(), field, message))
            })
            .transpose()
    }

    fn apply_overrides(
        &self,
        limits: &mut Limits,
        raw: RouteOverrides,
        table: &str,
    ) -> Result<(), ConfigError> {
        let field = |name: &str| format!("{table}.{name}");
        if let Some(d) =
            self.duration(raw.origin_connect_timeout, &field("origin_connect_timeout"))?
        {
            limits.origin_connect_timeout = d;
        }
        if let Some(d) = self.duration(
            raw.origin_handshake_timeout,
            &field("origin_handshake_timeout"),
        )? {
            limits.origin_handshake_timeout = d;
        }
        if let Some(d) = self.duration(raw.idle_timeout, &field("idle_timeout"))? {
            limits.idle_timeout = d;
        }
        if let Some(d) = self.duration(raw.max_connection_time, &field("max_connection_time"))? {
            limits.max_connection_time = d;
        }
        if let Some(j) = raw.max_connection_time_jitter {
            if *j.get_ref() > 50 {
                return Err(self.invalid(
                    j.span(),
                    &field("max_connection_time_jitter"),
                    "must be a per cent from 0 to 50",
                ));
            }
            limits.max_connection_time_jitter = *j.get_ref() as u8;
        }
        Ok(())
    }

    fn function(
        &self,
        index: usize,
        raw: &mut RawFunction,
    ) -> Result<Option<FunctionConfig>, ConfigError> {
        let field = |name: &str| format!("route[{index}].{name}");
        let Some(kind) = raw.kind.take() else {
            if let Some(url) = &raw.bridge_url {
                return Err(self.invalid(
                    url.span(),
                    &field("bridge_url"),
                    "needs function = \"bridge\"",
                ));
            }
            if let Some(script) = &raw.script {
                return Err(self.invalid(
                    script.span(),
                    &field("script"),
                    "needs function = \"js\"",
                ));
            }
            return Ok(None);
        };
        let kind_span = kind.span();
        let kind = kind.into_inner();
        let bridge = match (kind, raw.bridge_url.take()) {
            (FunctionKind::Bridge, Some(url)) => Some(
                parse_bridge_url(url.get_ref())
                    .map_err(|message| self.invalid(url.span(), &field("bridge_url"), message))?,
            ),
            (FunctionKind::Bridge, None) => {
                return Err(self.invalid(
                    kind_span,
                    &field("bridge_url"),
                    "a bridge needs bridge_url = \"ws://IP:port/path\"",
                ));
            }
            (_, Some(url)) => {
                return Err(self.invalid(
                    url.span(),
                    &field("bridge_url"),
                    "only for function = \"bridge\"",
                ));
            }
            (_, None) => None,
        };
        let script = self.script(index, kind, kind_span, raw)?;
        let count =
            |v: &Option<Spanned<u64>>, name: &str, default: u64| -> Result<usize, ConfigError> {
                match v {
                    Some(v) if *v.get_ref() == 0 => {
                        Err(self.invalid(v.span(), &field(name), "must be at least 1"))
                    }
                    Some(v) => Ok(*v.get_ref() as usize),
                    None => Ok(default as usize),
                }
            };
        Ok(Some(FunctionConfig {
            kind,
            bridge,
            script,
            publish: raw.publish.unwrap_or(true),
            echo_to_sender: raw.echo_to_sender.unwrap_or(false),
            max_subscribers: count(&raw.max_subscribers, "max_subscribers", 100_000)?,
            max_channels_per_client: count(
                &raw.max_channels_per_client,
                "max_channels_per_client",
                16,
            )?,
            max_send_queue: count(&raw.max_send_queue, "max_send_queue", 1 << 20)?,
        }))
    }

    fn frame_options(
        &self,
        index: usize,
        raw: &mut RawFrameOptions,
    ) -> Result<FrameOptions, ConfigError> {
        let field = |name: &str| format!("route[{index}].{name}");
        let mut out = FrameOptions::default();
        let positive = |v: &Option<Spanned<u64>>, name: &str| -> Result<Option<u64>, ConfigError> {
            match v {
                Some(v) if *v.get_ref() == 0 => {
                    Err(self.invalid(v.span(), &field(name), "must be at least 1"))
                }
                Some(v) => Ok(Some(*v.get_ref())),
                None => Ok(None),
            }
        };
        out.client_max_message = positive(&raw.client_max_message, "client_max_message")?;
        out.origin_max_message = positive(&raw.origin_max_message, "origin_max_message")?;
        out.client_message_rate = positive(&raw.client_message_rate, "client_message_rate")?
            .map(|n| n.min(u64::from(u32::MAX)) as u32);
        out.keepalive_interval =
            self.duration(raw.keepalive_interval.take(), &field("keepalive_interval"))?;
        if let Some(d) = self.duration(raw.keepalive_timeout.take(), &field("keepalive_timeout"))? {
            out.keepalive_timeout = d;
        }
        if let Some(d) = self.duration(raw.close_grace.take(), &field("close_grace"))? {
            out.close_grace = d;
        }
        if let Some(code) = &raw.close_code {
            let c = *code.get_ref();
            if !(c == 1000 || c == 1001 || (3000..=4999).contains(&c)) {
                return Err(self.invalid(
                    code.span(),
                    &field("close_code"),
                    "must be 1000, 1001 or an application code from 3000 to 4999",
                ));
            }
            out.close_code = c as u16;
        }
        if let Some(reason) = raw.close_reason.take() {
            if reason.get_ref().len() > 123 {
                return Err(self.invalid(
                    reason.span(),
                    &field("close_reason"),
                    "must be at most 123 bytes (a Close frame carries 125)",
                ));
            }
            out.close_reason = reason.into_inner();
        }
        Ok(out)
    }

    /// A `trusted_proxies` list: each entry a CIDR or a bare address.
    fn trusted_proxies(
        &self,
        raw: Option<Spanned<Vec<String>>>,
        field: &str,
    ) -> Result<Option<Vec<Cidr>>, ConfigError> {
        let Some(raw) = raw else {
            return Ok(None);
        };
        let span = raw.span();
        raw.into_inner()
            .iter()
            .map(|text| {
                crate::firewall::parse_cidr(text)
                    .map_err(|message| self.invalid(span.clone(), field, message))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn route(
        &self,
        index: usize,
        raw: RawRoute,
        defaults: &Limits,
        http: &HttpConfig,
        tls_listeners: bool,
    ) -> Result<Route, ConfigError> {
        let field = |name: &str| format!("route[{index}].{name}");
        let mut raw_function = RawFunction {
            kind: raw.function,
            bridge_url: raw.bridge_url,
            script: raw.script,
            cpu_budget: raw.cpu_budget,
            memory_limit: raw.memory_limit,
            publish: raw.publish,
            echo_to_sender: raw.echo_to_sender,
            max_subscribers: raw.max_subscribers,
            max_channels_per_client: raw.max_channels_per_client,
            max_send_queue: raw.max_send_queue,
        };
        let mut raw_frames = RawFrameOptions {
            client_max_message: raw.client_max_message,
            origin_max_message: raw.origin_max_message,
            client_message_rate: raw.client_message_rate,
            keepalive_interval: raw.keepalive_interval,
            keepalive_timeout: raw.keepalive_timeout,
            close_code: raw.close_code,
            close_reason: raw.close_reason,
            close_grace: raw.close_grace,
        };
        let name_span = raw.name.span();
        let name = raw.name.into_inner();
        if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(self.invalid(
                name_span,
                &field("name"),
                "must be 1-64 printable characters without spaces",
            ));
        }
        let sni = match raw.sni {
            None => SniPattern::Any,
            Some(n) => {
                let span = n.span();
                let pattern = wsedge_tls::NamePattern::parse(n.get_ref())
                    .map_err(|e| self.invalid(span.clone(), &field("sni"), e))?;
                if !tls_listeners {
                    return Err(self.invalid(
                        span,
                        &field("sni"),
                        "no [[tls_listener]]: a route with sni matches only TLS connections \
                         whose client sent that name, so it could never match",
                    ));
                }
                match pattern {
                    wsedge_tls::NamePattern::Exact(name) => SniPattern::Exact(name),
                    wsedge_tls::NamePattern::Wildcard(parent) => SniPattern::Wildcard(parent),
                }
            }
        };
        let host = match raw.host {
            None => HostMatch::Any,
            Some(h) => {
                let span = h.span();
                let text = h.into_inner().to_ascii_lowercase();
                let valid = |s: &str| {
                    !s.is_empty()
                        && s.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                };
                if let Some(suffix) = text.strip_prefix("*.") {
                    if !valid(suffix) {
                        return Err(self.invalid(span, &field("host"), "invalid wildcard host"));
                    }
                    HostMatch::Suffix(format!(".{suffix}"))
                } else if valid(&text) {
                    HostMatch::Exact(text)
                } else {
                    return Err(self.invalid(
                        span,
                        &field("host"),
                        "must be a host name (without port) or \"*.suffix\"",
                    ));
                }
            }
        };
        let path_prefix = match raw.path_prefix {
            None => "/".to_owned(),
            Some(p) => match prefix_problem(p.get_ref(), http.encoded_slashes) {
                None => p.into_inner(),
                Some(message) => {
                    return Err(self.invalid(p.span(), &field("path_prefix"), message));
                }
            },
        };
        let forwarding = Forwarding {
            trusted_proxies: self
                .trusted_proxies(raw.trusted_proxies, &field("trusted_proxies"))?
                .unwrap_or_else(|| http.forwarding.trusted_proxies.clone()),
            x_real_ip: raw.x_real_ip.map_or(http.forwarding.x_real_ip, Into::into),
        };
        // An absent `origins` is reported at the route's name, a present one at its own line.
        let origins_span = raw.origins.as_ref().map(Spanned::span);
        let mut origins = Vec::new();
        let mut wss: Option<bool> = None;
        for text in raw.origins.map(Spanned::into_inner).unwrap_or_default() {
            let (addr, tls) = crate::tls::parse_origin(text.get_ref())
                .map_err(|message| self.invalid(text.span(), &field("origins"), message))?;
            if wss.is_some_and(|w| w != tls) {
                return Err(self.invalid(
                    text.span(),
                    &field("origins"),
                    "mixes wss:// and plain origins: a route's origins are all TLS or all plain",
                ));
            }
            wss = Some(tls);
            origins.push(addr);
        }
        let function = self.function(index, &mut raw_function)?;
        let origins_span = origins_span.unwrap_or(name_span);
        let invalid = |span, field: &str, message: String| self.invalid(span, field, message);
        let origin_tls = crate::tls::origin_tls(
            index,
            crate::tls::RawOriginTls {
                origin_tls: raw.origin_tls,
                origin_server_name: raw.origin_server_name,
                origin_ca: raw.origin_ca,
            },
            wss,
            origins_span.clone(),
            function.as_ref().map(|f| f.kind),
            &invalid,
        )?;
        match (&function, origins.is_empty()) {
            (None, true) => {
                return Err(self.invalid(
                    origins_span,
                    &field("origins"),
                    "a route needs at least one origin, or a function",
                ));
            }
            (Some(_), false) => {
                return Err(self.invalid(
                    origins_span,
                    &field("origins"),
                    "a route has either origins or a function, not both",
                ));
            }
            _ => {}
        }
        if origins.len() > wsedge_proto::balance::MAX_POOL {
            return Err(self.pool_too_big(origins_span, index, origins.len()));
        }
        let health = raw
            .health
            .map(|h| self.health(index, h, function.is_some()))
            .transpose()?;
        let balance: Policy = raw.balance.map(Into::into).unwrap_or_default();
        let hash_key = self.hash_key(index, balance, raw.hash_key)?;
        let weights = self.weights(index, raw.weights, origins.len())?;
        let mut limits = *defaults;
        let overrides = RouteOverrides {
            origin_connect_timeout: raw.origin_connect_timeout,
            origin_handshake_timeout: raw.origin_handshake_timeout,
            idle_timeout: raw.idle_timeout,
            max_connection_time: raw.max_connection_time,
            max_connection_time_jitter: raw.max_connection_time_jitter,
        };
        self.apply_overrides(&mut limits, overrides, &format!("route[{index}]"))?;
        let frames = self.frame_options(index, &mut raw_frames)?;
        Ok(Route {
            name,
            sni,
            host,
            path_prefix,
            origins,
            balance,
            hash_key,
            weights,
            health,
            relay: raw.relay,
            limits,
            frames,
            debug: raw.debug,
            function,
            forwarding,
            origin_tls,
        })
    }
}

/// Why `prefix` can never match a request path, if it cannot: request paths are matched in
/// their normal form (docs/configuration.md, "How paths are matched"), so a prefix must be in
/// that form too.
fn prefix_problem(prefix: &str, slashes: EncodedSlashes) -> Option<String> {
    let fail = |why: &str| Some(format!("{prefix:?} {why}"));
    if !prefix.starts_with('/') {
        return fail("must start with '/'");
    }
    let b = prefix.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'?' | b'#' => return fail("must not hold '?' or '#': only the path is matched"),
            b'\\' => return fail("must not hold '\\' (a request path never does once normalized)"),
            0..=0x20 | 0x7f => return fail("must not hold spaces or control characters"),
            b'%' => {
                let hex = |k: usize| b.get(k).copied().filter(u8::is_ascii_hexdigit);
                let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
                    return fail("has a '%' not followed by two hex digits");
                };
                if hi.is_ascii_lowercase() || lo.is_ascii_lowercase() {
                    return fail("must write percent-escapes in upper case (%2F, not %2f)");
                }
                let digit = |h: u8| (h as char).to_digit(16).unwrap_or(0) as u8;
                let v = digit(hi) << 4 | digit(lo);
                if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                    return Some(format!(
                        "{prefix:?} must write {:?} instead of %{}{}: request paths are matched decoded",
                        v as char, hi as char, lo as char
                    ));
                }
                if v < 0x20 || v == 0x7f {
                    return fail("must not hold an escaped control character");
                }
                if (v == b'/' || v == b'\\') && slashes != EncodedSlashes::Keep {
                    return fail(
                        "holds %2F or %5C, which only [http] encoded_slashes = \"keep\" leaves in a path",
                    );
                }
            }
            _ => {}
        }
    }
    let segments: Vec<&str> = prefix[1..].split('/').collect();
    for (k, seg) in segments.iter().enumerate() {
        let name = seg.split(';').next().unwrap_or("");
        if (seg.is_empty() && k + 1 < segments.len())
            || *seg == "."
            || *seg == ".."
            || (seg.contains(';') && matches!(name, "" | "." | ".."))
        {
            return fail(
                "is not a normalized path (no '//', no '.' or '..' segments): request paths are matched normalized",
            );
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../docs/examples/wsedge.toml");

    #[test]
    fn example_file_is_valid() {
        let config = Config::from_toml(EXAMPLE, "wsedge.toml").expect("example config");
        assert_eq!(config.routes.len(), 2);
        assert_eq!(
            config.routes[0].host,
            HostMatch::Exact("chat.example.com".into())
        );
        assert_eq!(config.routes[0].origins.len(), 2);
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.dataplane.workers, None);
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = Config::from_toml(
            "[[route]]\nname = \"a\"\norigins = [\"127.0.0.1:1\"]\n",
            "t",
        )
        .expect("valid");
        let route = &config.routes[0];
        assert_eq!(route.path_prefix, "/");
        assert_eq!(route.host, HostMatch::Any);
        assert_eq!(route.relay, RelayMode::Auto);
        assert_eq!(route.limits.max_connection_time, Duration::from_secs(900));
        assert_eq!(config.access_log, AccessLogTarget::Stdout);
        assert!(!route.debug);
        assert!(config.firewall.rules.is_empty());
        assert!(config.dataplane.pin_workers);
        assert_eq!(config.relay.buffer_size, 32 * 1024);
    }

    #[test]
    fn transparent_huge_pages_are_off_unless_asked_for() {
        let route = "[[route]]\nname = \"a\"\norigins = [\"127.0.0.1:1\"]\n";
        let config = Config::from_toml(route, "t").expect("valid");
        assert!(!config.dataplane.transparent_huge_pages);
        let text = format!("[dataplane]\ntransparent_huge_pages = true\n{route}");
        let config = Config::from_toml(&text, "t").expect("valid");
        assert!(config.dataplane.transparent_huge_pages);
    }

    #[test]
    fn steering_is_by_client_address_unless_asked_per_connection() {
        let route = "[[route]]\nname = \"a\"\norigins = [\"127.0.0.1:1\"]\n";
        let config = Config::from_toml(route, "t").expect("valid");
        assert_eq!(config.dataplane.steering, Steering::ClientAddress);
        let text = format!("[dataplane]\nsteering = \"connection\"\n{route}");
        let config = Config::from_toml(&text, "t").expect("valid");
        assert_eq!(config.dataplane.steering, Steering::Connection);
        let msg = error_of("[dataplane]\nsteering = \"random\"\n");
        assert!(
            msg.starts_with("edge.toml:2: dataplane.steering: unknown variant `random`"),
            "{msg}"
        );
    }

    #[test]
    fn worker_pinning_can_be_switched_off() {
        let text = "[dataplane]\npin_workers = false\n[[route]]\nname = \"a\"\norigins = [\"127.0.0.1:1\"]\n";
        let config = Config::from_toml(text, "t").expect("valid");
        assert!(!config.dataplane.pin_workers);
        let msg = error_of("[dataplane]\npin_workers = \"no\"\n");
        assert!(
            msg.starts_with("edge.toml:2: dataplane.pin_workers: invalid type"),
            "{msg}"
        );
    }

    #[test]
    fn upgrade_keys() {
        let route = "[[route]]\nname = \"a\"\norigins = [\"127.0.0.1:1\"]\n";
        let d = Config::from_toml(route, "t").expect("valid").dataplane;
        assert_eq!(d.upgrade_drain_window, Duration::from_secs(60));
        assert_eq!(d.max_old_generations, 2);
        assert_eq!(d.upgrade_ready_timeout, Duration::from_secs(30));
        let text = format!(
            "[dataplane]\nupgrade_drain_window = \"5s\"\nmax_old_generations = 1\nupgrade_ready_timeout = \"2s\"\n{route}"
        );
        let d = Config::from_toml(&text, "t").expect("valid").dataplane;
        assert_eq!(d.upgrade_drain_window, Duration::from_secs(5));
        assert_eq!(d.max_old_generations, 1);
        assert_eq!(d.upgrade_ready_timeout, Duration::from_secs(2));
        let msg = error_of("[dataplane]\nupgrade_drain_window = \"soon\"\n");
        assert!(
            msg.starts_with("edge.toml:2: dataplane.upgrade_drain_window"),
            "{msg}"
        );
    }

    #[test]
    fn route_debug_switch() {
        let text = "[[route]]\nname = \"a\"\norigins = [\"127.0.0.1:1\"]\ndebug = true\n";
        let config = Config::from_toml(text, "t").expect("valid");
        assert!(config.routes[0].debug);
        let msg = error_of("[[route]]\nname = \"a\"\norigins = [\"127.0.0.1:1\"]\ndebug = 1\n");
        assert!(msg.starts_with("edge.toml:4: route[0].debug:"), "{msg}");
    }

    #[test]
    fn route_overrides_defaults() {
        let text = "[limits]\nidle_timeout = \"1m\"\n[[route]]\nname = \"a\"\norigins = [\"127.0.0.1:1\"]\nmax_connection_time = \"1s\"\nrelay = \"splice\"\nhost = \"*.Example.com\"\n";
        let config = Config::from_toml(text, "t").expect("valid");
        let route = &config.routes[0];
        assert_eq!(route.limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(route.limits.max_connection_time, Duration::from_secs(1));
        assert_eq!(route.relay, RelayMode::Splice);
        assert_eq!(route.host, HostMatch::Suffix(".example.com".into()));
    }

    #[test]
    fn the_functions_example_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples/functions.toml");
        let config = Config::load(&path).expect("docs/examples/functions.toml is valid");
        let scripts: Vec<_> = config
            .routes
            .iter()
            .filter_map(|r| r.function.as_ref()?.script.as_ref())
            .collect();
        assert_eq!(scripts.len(), 6);
        assert!(scripts.iter().all(|s| s.path.is_file()));
    }

    #[test]
    fn js_routes_name_their_script_and_limits() {
        let dir = std::env::temp_dir().join(format!("wsedge-config-js-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("functions")).expect("dir");
        std::fs::write(dir.join("functions/chat.js"), "export default {};\n").expect("write");
        let file = dir.join("edge.toml");
        let file = file.to_str().expect("utf-8 path");
        let base = "[[route]]\nname = \"chat\"\nfunction = \"js\"\n";
        let config = Config::from_toml(
            &format!("{base}script = \"functions/chat.js\"\ncpu_budget = \"20ms\"\nmemory_limit = 8388608\n"),
            file,
        )
        .expect("valid");
        let f = config.routes[0].function.as_ref().expect("function");
        assert_eq!(f.kind, FunctionKind::Js);
        let script = f.script.as_ref().expect("script");
        assert_eq!(script.path, dir.join("functions/chat.js"));
        assert_eq!(script.cpu_budget, Duration::from_millis(20));
        assert_eq!(script.memory_limit, 8 << 20);
        let defaults = Config::from_toml(&format!("{base}script = \"functions/chat.js\"\n"), file)
            .expect("valid");
        let script = defaults.routes[0]
            .function
            .as_ref()
            .and_then(|f| f.script.clone());
        assert_eq!(
            script.map(|s| (s.cpu_budget, s.memory_limit)),
            Some((Duration::from_millis(50), 64 << 20))
        );
        let error = |text: &str| {
            Config::from_toml(text, file)
                .expect_err("invalid")
                .to_string()
        };
        let missing = error(&format!("{base}script = \"functions/nope.js\"\n"));
        assert!(missing.contains(":4: route[0].script"), "{missing}");
        assert!(missing.contains("functions/nope.js not found"), "{missing}");
        assert!(error(base).contains(":3: route[0].script: a js function needs script"));
        assert!(
            error(&format!(
                "{base}script = \"functions/chat.js\"\ncpu_budget = \"0ms\"\n"
            ))
            .contains("route[0].cpu_budget")
        );
        assert!(
            error(&format!(
                "{base}script = \"functions/chat.js\"\nmemory_limit = 1000\n"
            ))
            .contains(":5: route[0].memory_limit")
        );
        assert!(
            error("[[route]]\nname = \"e\"\nfunction = \"echo\"\nscript = \"functions/chat.js\"\n")
                .contains(":4: route[0].script: only for function = \"js\"")
        );
        assert!(
            error("[[route]]\nname = \"e\"\norigins = [\"127.0.0.1:1\"]\nscript = \"x.js\"\n")
                .contains("route[0].script: needs function = \"js\"")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn error_of(text: &str) -> String {
        Config::from_toml(text, "edge.toml")
            .expect_err("should be invalid")
            .to_string()
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let msg = error_of("[[route]]\nname = \"a\"\norigins = [\"nowhere\"]\n");
        assert_eq!(
            msg,
            "edge.toml:3: route[0].origins: \"nowhere\" is not an IP:port address (or wss://IP:port)"
        );
        let msg = error_of("[relay]\nbuffer_size = 1000\n");
        assert!(msg.starts_with("edge.toml:2: relay.buffer_size:"), "{msg}");
        let msg = error_of(
            "[[route]]\nname = \"a\"\norigins = [\"127.0.0.1:1\"]\n[[route]]\nname = \"a\"\norigins = [\"127.0.0.1:2\"]\n",
        );
        assert!(
            msg.starts_with("edge.toml:5: route[1].name: duplicate route name"),
            "{msg}"
        );
    }

    /// Each field is reported at its own line: an empty `origins` at the `origins` line, not
    /// the route's `name`; a bad address in a multi-line array at that address's line.
    #[test]
    fn errors_point_at_the_fields_own_line() {
        let text = "[dataplane]\nlisten = [\"127.0.0.1:0\"]\n\n[[route]]\nname = \"a\"\norigins = [\"127.0.0.1:1\"]\n\n[[route]]\nname = \"b\"\npath_prefix = \"/b\"\n\n# no origin yet\norigins = []\n";
        assert_eq!(
            error_of(text),
            "edge.toml:13: route[1].origins: a route needs at least one origin, or a function"
        );
        // Absent altogether: the route's name line is the best place.
        assert!(
            error_of("[[route]]\n\nname = \"a\"\n")
                .starts_with("edge.toml:3: route[0].origins: a route needs")
        );
        let msg = error_of(
            "[[route]]\nname = \"a\"\norigins = [\n  \"127.0.0.1:1\",\n  \"nowhere:80\",\n]\n",
        );
        assert!(
            msg.starts_with("edge.toml:5: route[0].origins: \"nowhere:80\""),
            "{msg}"
        );
        let msg = error_of("[dataplane]\nlisten = [\n  \"127.0.0.1:1\",\n  \"127.0.0.1:1\",\n]\n");
        assert_eq!(
            msg,
            "edge.toml:4: dataplane.listen: 127.0.0.1:1 is listed twice"
        );
        let msg = error_of("[dataplane]\nlisten = [\n  \"127.0.0.1:1\",\n  \"any:80\",\n]\n");
        assert!(
            msg.starts_with("edge.toml:4: dataplane.listen: \"any:80\""),
            "{msg}"
        );
        assert!(
            error_of(
                "[[route]]\nname = \"a\"\nfunction = \"echo\"\n\norigins = [\"127.0.0.1:1\"]\n"
            )
            .starts_with("edge.toml:5: route[0].origins: a route has either")
        );
    }

    /// Parser errors lead with the same `file:line: field: message` line as the others, then
    /// draw the place.
    #[test]
    fn syntax_errors_lead_with_file_line_and_field() {
        let msg = error_of("[dataplane]\nlisten = [\"127.0.0.1:1\"]\nbogus = 2\n");
        let (first, drawing) = msg.split_once('\n').expect("two parts");
        assert!(
            first.starts_with(
                "edge.toml:3: dataplane.bogus: unknown field `bogus`, expected one of"
            ),
            "{msg}"
        );
        assert_eq!(drawing, "  |\n3 | bogus = 2\n  | ^^^^^");
        let msg =
            error_of("[[route]]\nname = \"a\"\norigins = [\"127.0.0.1:1\"\nrelay = \"frames\"\n");
        let first = msg.lines().next().expect("line");
        assert!(first.starts_with("edge.toml:4: route[0].relay: "), "{msg}");
        assert!(msg.lines().count() == 4, "{msg}");
        let msg = error_of("[limits]\nidle_timeout = \"1s\n");
        assert!(
            msg.starts_with("edge.toml:2: limits.idle_timeout: "),
            "{msg}"
        );
        let msg = error_of("[[route]]\nname = \"a\"\norigins = [1]\n");
        assert!(
            msg.starts_with(
                "edge.toml:3: route[0].origins: invalid type: integer `1`, expected a string\n"
            ),
            "{msg}"
        );
    }

    #[test]
    fn syntax_and_unknown_keys_are_reported_with_position() {
        let msg = error_of("[limits]\nidle_timeout = \"10 minutes\"\n");
        assert!(
            msg.starts_with("edge.toml:2: limits.idle_timeout: invalid duration"),
            "{msg}"
        );
        let msg = error_of("[dataplane]\nlisten_on = []\n");
        assert!(
            msg.starts_with("edge.toml:2: dataplane.listen_on: unknown field `listen_on`"),
            "{msg}"
        );
        let msg =
            error_of("[[route]]\nname = \"a\"\norigins = [\"127.0.0.1:1\"]\nrelay = \"tunnel\"\n");
        assert!(msg.starts_with("edge.toml:4: route[0].relay:"), "{msg}");
    }

    #[test]
    fn frames_route_options() {
        let text = "[[route]]\nname = \"a\"\norigins = [\"127.0.0.1:1\"]\nrelay = \"frames\"\nclient_max_message = 1024\nclient_message_rate = 50\nkeepalive_interval = \"30s\"\nclose_code = 4000\nclose_reason = \"bye\"\n";
        let config = Config::from_toml(text, "t").expect("valid");
        let f = &config.routes[0].frames;
        assert_eq!(config.routes[0].relay, RelayMode::Frames);
        assert_eq!(f.client_max_message, Some(1024));
        assert_eq!(f.origin_max_message, None);
        assert_eq!(f.client_message_rate, Some(50));
        assert_eq!(f.keepalive_interval, Some(Duration::from_secs(30)));
        assert_eq!(f.keepalive_timeout, Duration::from_secs(10));
        assert_eq!((f.close_code, f.close_reason.as_str()), (4000, "bye"));
        let base = "[[route]]\nname = \"a\"\norigins = [\"127.0.0.1:1\"]\n";
        assert!(
            error_of(&format!("{base}close_code = 1006\n"))
                .starts_with("edge.toml:4: route[0].close_code")
        );
        assert!(
            error_of(&format!("{base}client_max_message = 0\n"))
                .contains("route[0].client_max_message")
        );
        assert!(
            error_of(&format!("{base}keepalive_interval = \"soon\"\n"))
                .starts_with("edge.toml:4: route[0].keepalive_interval")
        );
    }

    #[test]
    fn function_routes() {
        let text = "[functions]\npublish_listen = \"127.0.0.1:9200\"\n[[route]]\nname = \"e\"\nfunction = \"echo\"\n[[route]]\nname = \"b\"\nfunction = \"broadcast\"\npath_prefix = \"/ch/\"\npublish = false\nmax_send_queue = 4096\n[[route]]\nname = \"g\"\nfunction = \"bridge\"\nbridge_url = \"ws://127.0.0.1:9000/feed?x=1\"\n";
        let config = Config::from_toml(text, "t").expect("valid");
        assert!(config.functions.publish_listen.is_some());
        let echo = config.routes[0].function.as_ref().expect("function");
        assert_eq!(echo.kind, FunctionKind::Echo);
        assert!(config.routes[0].origins.is_empty());
        let b = config.routes[1].function.as_ref().expect("function");
        assert!(!b.publish && !b.echo_to_sender);
        assert_eq!(b.max_send_queue, 4096);
        let g = config.routes[2].function.as_ref().expect("function");
        let target = g.bridge.as_ref().expect("bridge");
        assert_eq!(target.path, "/feed?x=1");
        assert_eq!(target.host, "127.0.0.1:9000");
        let base = "[[route]]\nname = \"a\"\n";
        assert!(
            error_of(&format!("{base}function = \"bridge\"\n")).contains("route[0].bridge_url")
        );
        assert!(
            error_of(&format!(
                "{base}function = \"bridge\"\nbridge_url = \"ws://example.com/x\"\n"
            ))
            .starts_with("edge.toml:4: route[0].bridge_url")
        );
        assert!(
            error_of(&format!(
                "{base}function = \"echo\"\norigins = [\"127.0.0.1:1\"]\n"
            ))
            .contains("either origins or a function")
        );
        assert!(
            error_of(&format!("{base}function = \"telepathy\"\n"))
                .starts_with("edge.toml:3: route[0].function:")
        );
    }

    #[test]
    fn control_table() {
        let text = "[control]\nsocket = \"/tmp/dp.sock\"\nsocket_mode = \"0660\"\nallowed_uids = [1000]\nmetrics_listen = \"127.0.0.1:9100\"\n";
        let config = Config::from_toml(text, "t").expect("valid");
        assert_eq!(
            config.control.socket.as_deref(),
            Some(Path::new("/tmp/dp.sock"))
        );
        assert_eq!(config.control.socket_mode, 0o660);
        assert_eq!(config.control.allowed_uids, vec![1000]);
        assert!(config.control.metrics_listen.is_some());
        assert!(
            error_of("[control]\nsocket_mode = \"999\"\n")
                .starts_with("edge.toml:2: control.socket_mode")
        );
        assert!(
            error_of("[control]\nmetrics_listen = \"nope\"\n").contains("control.metrics_listen")
        );
    }

    #[test]
    fn http_table_and_route_forwarding_overrides() {
        let config = Config::from_toml(
            "[[route]]\nname = \"a\"\norigins = [\"127.0.0.1:1\"]\n",
            "t",
        )
        .expect("valid");
        assert_eq!(config.http, HttpConfig::default());
        assert_eq!(config.http.encoded_slashes, EncodedSlashes::Reject);
        assert_eq!(config.routes[0].forwarding, Forwarding::default());
        assert_eq!(config.routes[0].forwarding.x_real_ip, XRealIp::Set);

        let text = "[http]\nencoded_slashes = \"keep\"\ntrusted_proxies = [\"10.0.0.0/8\", \"2001:db8::1\"]\nx_real_ip = \"remove\"\n\
            [[route]]\nname = \"a\"\norigins = [\"127.0.0.1:1\"]\npath_prefix = \"/a%2Fb\"\n\
            [[route]]\nname = \"b\"\norigins = [\"127.0.0.1:1\"]\ntrusted_proxies = []\nx_real_ip = \"set\"\n";
        let config = Config::from_toml(text, "t").expect("valid");
        assert_eq!(config.http.encoded_slashes, EncodedSlashes::Keep);
        let ten: std::net::IpAddr = "10.0.0.0".parse().expect("ip");
        let v6: std::net::IpAddr = "2001:db8::1".parse().expect("ip");
        let inherited = &config.routes[0].forwarding;
        assert_eq!(
            inherited.trusted_proxies,
            vec![
                Cidr::new(ten, 8).expect("cidr"),
                Cidr::new(v6, 128).expect("cidr")
            ]
        );
        assert_eq!(inherited.x_real_ip, XRealIp::Remove);
        let own = &config.routes[1].forwarding;
        assert!(own.trusted_proxies.is_empty());
        assert_eq!(own.x_real_ip, XRealIp::Set);

        let base = "[[route]]\nname = \"a\"\norigins = [\"127.0.0.1:1\"]\n";
        assert_eq!(
            error_of(&format!("{base}trusted_proxies = [\"10.0.0.1/8\"]\n")),
            "edge.toml:4: route[0].trusted_proxies: \"10.0.0.1/8\": address has bits set after the prefix length"
        );
        assert!(
            error_of("[http]\ntrusted_proxies = [\"proxy.local\"]\n")
                .starts_with("edge.toml:2: http.trusted_proxies: \"proxy.local\" is not an IP")
        );
        assert!(
            error_of("[http]\nencoded_slashes = \"allow\"\n")
                .starts_with("edge.toml:2: http.encoded_slashes:"),
            "{}",
            error_of("[http]\nencoded_slashes = \"allow\"\n")
        );
        assert!(
            error_of(&format!("{base}x_real_ip = \"spoof\"\n")).starts_with("edge.toml:4:"),
            "{}",
            error_of(&format!("{base}x_real_ip = \"spoof\"\n"))
        );
        assert!(error_of("[http]\nmerge_slashes = false\n").contains("unknown field"));
    }

    #[test]
    fn path_prefixes_must_be_normalized() {
        let with = |prefix: &str| {
            format!(
                "[[route]]\nname = \"a\"\norigins = [\"127.0.0.1:1\"]\npath_prefix = {prefix:?}\n"
            )
        };
        for good in [
            "/",
            "/ws",
            "/ws/",
            "/a.b/..c/",
            "/caf%C3%A9",
            "/a;b",
            "/.well-known",
        ] {
            let config = Config::from_toml(&with(good), "t").expect(good);
            assert_eq!(config.routes[0].path_prefix, good);
        }
        for (bad, why) in [
            ("ws", "must start with '/'"),
            ("/a/../b", "not a normalized path"),
            ("/a/./b", "not a normalized path"),
            ("/a/.", "not a normalized path"),
            ("//a", "not a normalized path"),
            ("/a//", "not a normalized path"),
            ("/..;/a", "not a normalized path"),
            ("/%69nternal", "must write 'i' instead of %69"),
            ("/caf%c3%a9", "upper case"),
            ("/%2", "two hex digits"),
            ("/%00", "control"),
            ("/a%2Fb", "encoded_slashes = \"keep\""),
            ("/a\\b", "'\\'"),
            ("/a?x", "'?'"),
            ("/a b", "spaces"),
        ] {
            let msg = error_of(&with(bad));
            assert!(
                msg.starts_with("edge.toml:4: route[0].path_prefix:") && msg.contains(why),
                "{bad}: {msg}"
            );
        }
    }

    #[test]
    fn rejects_route_without_origins_and_bad_host() {
        assert!(error_of("[[route]]\nname = \"a\"\n").contains("at least one origin"));
        assert!(
            error_of("[[route]]\nname = \"a\"\norigins = [\"127.0.0.1:1\"]\nhost = \"a b\"\n")
                .contains("route[0].host")
        );
        assert!(error_of("[dataplane]\nworkers = 0\n").contains("dataplane.workers"));
        assert!(
            error_of("[dataplane]\nworkers = \"many\"\n")
                .starts_with("edge.toml:2: dataplane.workers:")
        );
    }
}
