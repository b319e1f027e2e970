//! Configuration schema and control protocol shared by the wsedge dataplane and the control
//! process (the role sozu's `command` crate plays there).
//!
//! The dataplane (dataplane/runtime) validates its bootstrap file with [`config::Config`];
//! the control process validates the same schema before pushing it. Validation turns the
//! TOML text into types that cannot hold an invalid state, and every error names the file,
//! the line and the field.

pub mod config;
pub mod connection_id;
pub mod duration;
pub mod firewall;
pub mod wire;

pub use config::{
    AccessLogTarget, BridgeTarget, Config, ConfigError, ControlConfig, DataplaneConfig,
    FrameOptions, FunctionConfig, FunctionKind, FunctionsConfig, HostMatch, Limits, RelayConfig,
    RelayMode, Route,
};
pub use connection_id::ConnectionId;
