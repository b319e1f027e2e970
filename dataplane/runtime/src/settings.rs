//! A worker's copy of the configuration, in the shape its event loop uses: the route table
//! and one [`Route`] record per route (origins with their balancer and shared health,
//! relay, timers in milliseconds, frame limits, function, forwarding policy), head limits
//! (with the path rules), the firewall, the relay resources and the JavaScript functions' code.
//!
//! Built from a validated `wsedge_command::Config`; each worker owns one and changes it only
//! by messages (no sharing on the per-connection path).

use std::sync::Arc;
use std::time::Duration;

use wsedge_command::{Config, FunctionKind, HostMatch, RelayConfig};
use wsedge_js::{Limits, Script};
use wsedge_proto::balance::{Balancer, PoolView};
use wsedge_proto::channels::HubLimits;
use wsedge_proto::firewall::Firewall;
use wsedge_proto::function::{BridgeSpec, BroadcastSpec, FunctionSpec, ScriptSpec};
use wsedge_proto::handshake::HeadLimits;
use wsedge_proto::route::{HostPattern, RouteTable};
use wsedge_proto::session::{FrameLimits, LINGER_MS, RelayMode, Route, RouteTimers, SessionConfig};
use wsedge_tls::{CertStore, OriginTls, ServerTls};

use crate::health::Registry;

#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Firewall rules and network lists (each worker edits its copy's lists live).
    pub(crate) firewall: Firewall,
    /// Worker count (global firewall limits are shared out between workers).
    pub(crate) workers: usize,
    pub(crate) session: SessionConfig,
    /// Host and path prefix -> index into `routes`.
    pub(crate) table: RouteTable,
    pub(crate) routes: Vec<Route>,
    pub(crate) relay: RelayConfig,
    pub(crate) max_connections: usize,
    pub(crate) drain_timeout: Duration,
    /// Each `[[tls_listener]]`'s TLS, in file order: one rustls configuration (and one
    /// ticketer) shared by every worker. Empty until [`Settings::with_tls`].
    pub(crate) tls: Vec<ServerTls>,
    /// Each `function = "js"` route's module, loaded and checked (run once in a scratch
    /// runtime) here, off the workers; every worker compiles the same bytes.
    pub(crate) scripts: Vec<ScriptRoute>,
    /// Each TLS route's origin configuration, by route name (one rustls client config per
    /// route, shared by every worker). Empty until [`Settings::with_origins`].
    pub(crate) origin_tls: Vec<(String, OriginTls)>,
}

/// A `js` route's code and limits, as a worker deploys it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ScriptRoute {
    pub(crate) route: String,
    pub(crate) script: Script,
    pub(crate) limits: Limits,
}

/// Loads every `js` route's script: a syntax error, a failing import or a module that
/// throws is refused with its `file:line:column`, and the configuration with it.
fn load_scripts(config: &Config) -> Result<Vec<ScriptRoute>, String> {
    let mut out = Vec::new();
    for r in &config.routes {
        let Some(f) = r.function.as_ref().filter(|f| f.kind == FunctionKind::Js) else {
            continue;
        };
        let Some(s) = &f.script else {
            return Err(format!("route {:?}: a js function needs a script", r.name));
        };
        let script = Script::load(&s.path).map_err(|e| {
            format!(
                "route {:?}: script {} does not load: {e}",
                r.name,
                s.path.display()
            )
        })?;
        out.push(ScriptRoute {
            route: r.name.clone(),
            script,
            limits: Limits {
                cpu_budget: s.cpu_budget,
                memory_limit: s.memory_limit,
                max_send_queue: f.max_send_queue,
                ..Limits::default()
            },
        });
    }
    Ok(out)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Settings {
    /// The worker settings for `config`, run by `workers` workers, each route's pool
    /// watched by its shared health from `health` (which keeps the state of pools whose
    /// origins did not change). Fails only if the firewall engine refuses what validation
    /// accepted (a bug, reported like an invalid config).
    pub(crate) fn from_config(
        config: &Config,
        workers: usize,
        health: &Registry,
    ) -> Result<Settings, String> {
        // `ktls = "require"` needs a kernel that takes TLS keys (probed once per process),
        // at start, by `wsedge --check` and on a pushed configuration alike.
        let kernel = wsedge_ring::ktls::support().as_ref();
        config
            .tls
            .check_ktls(kernel.copied().map_err(|why| why as &dyn std::fmt::Display))?;
        let firewall = config
            .firewall
            .build()
            .map_err(|e| format!("firewall: {e}"))?;
        let scripts = load_scripts(config)?;
        let table = RouteTable::with_sni(config.routes.iter().map(|r| {
            let host = match &r.host {
                HostMatch::Any => HostPattern::Any,
                HostMatch::Exact(h) => HostPattern::Exact(h.clone()),
                HostMatch::Suffix(s) => HostPattern::Suffix(s.clone()),
            };
            (r.sni.clone(), host, r.path_prefix.clone())
        }));
        let pools = health.pools_for(config);
        let routes = config
            .routes
            .iter()
            .zip(pools)
            .map(|(r, pool)| {
                let view = pool.map(|p| p as Arc<dyn PoolView>);
                let mut balance = Balancer::new(r.balance, r.origins.len(), view)
                    .with_origins(&r.origins)
                    .with_weights(r.weights.clone());
                if let Some(key) = &r.hash_key {
                    balance = balance.with_hash_key(key.clone());
                }
                route(r).with_balance(balance)
            })
            .collect();
        Ok(Settings {
            firewall,
            workers,
            session: SessionConfig {
                head_limits: HeadLimits {
                    max_head_bytes: config.limits.max_head_bytes,
                    max_headers: config.limits.max_headers,
                    encoded_slashes: config.http.encoded_slashes,
                },
                handshake_ms: ms(config.limits.handshake_timeout),
                max_in_flight: u64::from(config.relay.max_in_flight),
                buffer_size: config.relay.buffer_size,
                linger_ms: LINGER_MS,
            },
            table,
            routes,
            relay: config.relay,
            max_connections: config.dataplane.max_connections_per_worker,
            drain_timeout: config.dataplane.drain_timeout,
            tls: Vec::new(),
            scripts,
            origin_tls: Vec::new(),
        })
    }

    /// The same settings serving the TLS listeners of `store` (loaded from the files the
    /// configuration names; a reload hands a new store to new connections).
    pub(crate) fn with_tls(mut self, store: &CertStore) -> Settings {
        self.tls = store.listeners().to_vec();
        self
    }

    /// The same settings with the TLS routes' origin configurations
    /// (`Config::load_origin_tls`).
    pub(crate) fn with_origins(mut self, origins: Vec<(String, OriginTls)>) -> Settings {
        self.origin_tls = origins;
        self
    }

    /// The origin TLS of route `name`, if it is a TLS route.
    pub(crate) fn origin_tls(&self, name: &str) -> Option<&OriginTls> {
        self.origin_tls
            .iter()
            .find(|(route, _)| route == name)
            .map(|(_, tls)| tls)
    }
}

/// One route as the session holds it.
fn route(r: &wsedge_command::Route) -> Route {
    let relay = match r.relay {
        wsedge_command::RelayMode::Buffered => RelayMode::Buffered,
        wsedge_command::RelayMode::Splice => RelayMode::Splice,
        wsedge_command::RelayMode::Frames => RelayMode::Frames,
        wsedge_command::RelayMode::Auto => RelayMode::Auto,
    };
    let f = &r.frames;
    let frames = FrameLimits {
        client_max_message: f.client_max_message.unwrap_or(u64::MAX),
        origin_max_message: f.origin_max_message.unwrap_or(u64::MAX),
        client_message_rate: f.client_message_rate,
        keepalive_ms: f.keepalive_interval.map(ms),
        keepalive_timeout_ms: ms(f.keepalive_timeout),
        close_code: f.close_code,
        close_reason: f.close_reason.clone(),
        close_grace_ms: ms(f.close_grace),
    };
    let function = r.function.as_ref().map(|f| match f.kind {
        FunctionKind::Echo => FunctionSpec::Echo,
        FunctionKind::Broadcast => FunctionSpec::Broadcast(BroadcastSpec {
            publish: f.publish,
            echo_to_sender: f.echo_to_sender,
            limits: HubLimits {
                max_subscribers: f.max_subscribers,
                max_channels_per_client: f.max_channels_per_client,
            },
            max_send_queue: f.max_send_queue,
        }),
        // The code itself is in `Settings::scripts` (the worker's JsHost serves it).
        FunctionKind::Js => FunctionSpec::Script(ScriptSpec {
            path: f
                .script
                .as_ref()
                .map(|s| s.path.clone())
                .unwrap_or_default(),
            cpu_budget_ms: f.script.as_ref().map_or(50, |s| ms(s.cpu_budget)),
            memory_limit: f.script.as_ref().map_or(64 << 20, |s| s.memory_limit),
            max_send_queue: f.max_send_queue,
        }),
        FunctionKind::Bridge => match &f.bridge {
            Some(b) => FunctionSpec::Bridge(BridgeSpec {
                addr: b.addr,
                host: b.host.clone(),
                path: b.path.clone(),
            }),
            // Validation requires a bridge_url for a bridge.
            None => FunctionSpec::Echo,
        },
    });
    Route::new(
        r.name.clone(),
        r.path_prefix.clone(),
        r.origins.clone(),
        relay,
        RouteTimers {
            connect_ms: ms(r.limits.origin_connect_timeout),
            origin_handshake_ms: ms(r.limits.origin_handshake_timeout),
            idle_ms: ms(r.limits.idle_timeout),
            max_connection_ms: ms(r.limits.max_connection_time),
            jitter_pct: r.limits.max_connection_time_jitter,
        },
        frames,
        function,
        r.debug,
        r.forwarding.clone(),
    )
}
