//! A worker's copy of the configuration, in the shape its event loop uses: the route table,
//! per-route origins, timers in milliseconds and forwarding policy, head limits (with the
//! path rules) and relay resources.
//!
//! Built from a validated `wsedge_command::Config`; each worker owns one and changes it only
//! by messages (no sharing on the per-connection path).

use std::net::SocketAddr;
use std::time::Duration;

use wsedge_command::{
    Config, FrameOptions, FunctionConfig, FunctionKind, HostMatch, RelayConfig, RelayMode,
};
use wsedge_proto::conn::RouteTimers;
use wsedge_proto::firewall::Firewall;
use wsedge_proto::forwarding::Forwarding;
use wsedge_proto::handshake::HeadLimits;
use wsedge_proto::route::{HostPattern, RouteTable};

/// One route as a worker needs it.
#[derive(Debug, Clone)]
pub(crate) struct RouteInfo {
    pub(crate) name: String,
    pub(crate) path_prefix: String,
    pub(crate) origins: Vec<SocketAddr>,
    pub(crate) relay: RelayMode,
    pub(crate) timers: RouteTimers,
    pub(crate) frames: FrameOptions,
    /// A built-in function answering the route (a `bridge` also has its target as origin).
    pub(crate) function: Option<FunctionConfig>,
}

#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Firewall rules and network lists (each worker edits its copy's lists live).
    pub(crate) firewall: Firewall,
    /// Route names and debug switches, by route index (what the firewall gate needs).
    pub(crate) route_names: Vec<String>,
    pub(crate) route_debug: Vec<bool>,
    /// Forwarding-header policy by route index (what the head decision needs).
    pub(crate) forwarding: Vec<Forwarding>,
    /// Worker count (global firewall limits are shared out between workers).
    pub(crate) workers: usize,
    pub(crate) head_limits: HeadLimits,
    pub(crate) handshake_ms: u64,
    pub(crate) routes: RouteTable,
    pub(crate) route_info: Vec<RouteInfo>,
    pub(crate) relay: RelayConfig,
    pub(crate) max_connections: usize,
    pub(crate) drain_timeout: Duration,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Settings {
    /// The worker settings for `config`, run by `workers` workers. Fails only if the firewall
    /// engine refuses what validation accepted (a bug, reported like an invalid config).
    pub(crate) fn from_config(config: &Config, workers: usize) -> Result<Settings, String> {
        // wsedge-tls and the schema are there; the worker's Transport seam is not yet.
        if let Some(l) = config.tls.listeners.first() {
            return Err(format!(
                "[[tls_listener]] on {:?}: TLS termination is validated (wsedge --check loads the certificates) but not served yet; it waits for the worker integration (issue 14)",
                l.listen
            ));
        }
        if let Some(r) = config.routes.iter().find(|r| r.origin_tls.is_some()) {
            return Err(format!(
                "route {:?}: TLS to origins is validated but not served yet; it waits for the worker integration (issue 14)",
                r.name
            ));
        }
        let firewall = config
            .firewall
            .build()
            .map_err(|e| format!("firewall: {e}"))?;
        let routes = RouteTable::new(config.routes.iter().map(|r| {
            let host = match &r.host {
                HostMatch::Any => HostPattern::Any,
                HostMatch::Exact(h) => HostPattern::Exact(h.clone()),
                HostMatch::Suffix(s) => HostPattern::Suffix(s.clone()),
            };
            (host, r.path_prefix.clone())
        }));
        let route_info = config
            .routes
            .iter()
            .map(|r| RouteInfo {
                name: r.name.clone(),
                path_prefix: r.path_prefix.clone(),
                origins: match r.function.as_ref().and_then(|f| f.bridge.as_ref()) {
                    Some(bridge) => vec![bridge.addr],
                    None => r.origins.clone(),
                },
                // A bridge relays frames between the client and its own client connection.
                relay: match r.function.as_ref().map(|f| f.kind) {
                    Some(FunctionKind::Bridge) => RelayMode::Frames,
                    _ => r.relay,
                },
                timers: RouteTimers {
                    connect_ms: ms(r.limits.origin_connect_timeout),
                    origin_handshake_ms: ms(r.limits.origin_handshake_timeout),
                    idle_ms: ms(r.limits.idle_timeout),
                    max_connection_ms: ms(r.limits.max_connection_time),
                    jitter_pct: r.limits.max_connection_time_jitter,
                },
                frames: r.frames.clone(),
                function: r.function.clone(),
            })
            .collect();
        Ok(Settings {
            firewall,
            route_names: config.routes.iter().map(|r| r.name.clone()).collect(),
            route_debug: config.routes.iter().map(|r| r.debug).collect(),
            forwarding: config.routes.iter().map(|r| r.forwarding.clone()).collect(),
            workers,
            head_limits: HeadLimits {
                max_head_bytes: config.limits.max_head_bytes,
                max_headers: config.limits.max_headers,
                encoded_slashes: config.http.encoded_slashes,
            },
            handshake_ms: ms(config.limits.handshake_timeout),
            routes,
            route_info,
            relay: config.relay,
            max_connections: config.dataplane.max_connections_per_worker,
            drain_timeout: config.dataplane.drain_timeout,
        })
    }
}
