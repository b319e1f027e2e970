//! Configuration schema and control protocol shared by the wsedge dataplane and the control
//! process (the role sozu's `command` crate plays there).
//!
//! The dataplane (dataplane/runtime) validates its bootstrap file with [`config::Config`];
//! the control process validates the same schema before pushing it. Validation turns the
//! TOML text into types that cannot hold an invalid state, and every error names the file,
//! the line and the field. The firewall part validates straight into the engine's own types
//! (`wsedge_proto::firewall`), so the model is defined once. [`wire`] is the control protocol:
//! its messages, framing, the blocking client and the control-socket server both processes
//! serve with.

#![forbid(unsafe_code)]

pub mod broker;
pub mod config;
pub mod connection_id;
pub mod duration;
pub mod edit;
pub mod error;
pub mod firewall;
pub mod fleet;
pub mod notify;
pub mod tls;
pub mod wire;

pub use config::{
    AccessLogTarget, ActiveCheck, BridgeTarget, CheckKind, Config, ControlConfig, DataplaneConfig,
    EncodedSlashes, Forwarding, FrameOptions, FunctionConfig, FunctionKind, FunctionsConfig,
    HashKey, HealthConfig, HostMatch, HttpConfig, Limits, LoadedTls, Policy, RelayConfig,
    RelayMode, Route, ScriptConfig, SniPattern, Steering, XRealIp,
};
pub use connection_id::ConnectionId;
pub use error::ConfigError;

/// Seconds since the Unix epoch (0 if the clock is before it): the wall clock network-list
/// entries expire by, read by the dataplane's workers and the control views alike.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
