//! Configuration schema and control protocol shared by the wsedge dataplane and the control
//! process (the role sozu's `command` crate plays there).
//!
//! The dataplane (dataplane/runtime) validates its bootstrap file with [`config::Config`];
//! the control process validates the same schema before pushing it. Validation turns the
//! TOML text into types that cannot hold an invalid state, and every error names the file,
//! the line and the field.

pub mod config;
pub mod duration;
pub mod firewall;
pub mod wire;

pub use config::{
    AccessLogTarget, BridgeTarget, Config, ConfigError, ControlConfig, DataplaneConfig,
    EncodedSlashes, Forwarding, FrameOptions, FunctionConfig, FunctionKind, FunctionsConfig,
    HostMatch, HttpConfig, Limits, RelayConfig, RelayMode, Route, XRealIp,
};
