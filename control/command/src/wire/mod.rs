//! The control wire protocol, shared by the dataplane's control socket, the control process
//! (`wsedgectl daemon`) and the CLI: typed requests and responses, their framing, the
//! blocking client, and the server both sockets run.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of JSON. The length is
//! checked against [`MAX_FRAME`] before anything is allocated. The JSON is an [`Envelope`]:
//! the protocol version, a request id chosen by the client (echoed in the response) and the
//! body, a [`Request`] or a [`Response`] tagged by its `type` field. Configurations travel as
//! TOML text and are validated by [`crate::Config::from_toml`] on both sides.
//! docs/control-protocol.md is the reference.
//!
//! By job: `messages` (envelope, requests, responses, error kinds), `views` (the answers'
//! bodies, and how routes, limits and lists are read off a configuration), `framing`
//! (length-checked frames, the envelope codec), `client` (blocking [`Client`]) and
//! [`server`] (bind, peer credentials, serving, [`server::Failure`]).

mod client;
mod fleet;
mod framing;
mod health;
mod messages;
pub mod server;
mod views;

pub use crate::connection_id::ConnectionId;
pub use crate::unix_now;
pub use client::Client;
pub use fleet::{FleetView, HostStatus};
pub use framing::{
    DecodeError, MAX_FRAME, WireError, decode_request, decode_response, read_frame, send,
    write_frame,
};
pub use health::{OriginHealth, PoolHealth};
pub use messages::{
    Envelope, ErrorKind, HostPresence, MAX_CHANNEL_LEN, MAX_PUBLISH, PROTOCOL_VERSION, Request,
    Response, check_channel, is_valid_channel,
};
pub use views::{
    Applied, CertInfo, ConfigText, Connection, DaemonStatus, DataplaneStatus, FunctionRow,
    GenerationStatus, LimitsView, ListEntryView, ListView, Percentiles, RouteRow, StatsReport,
    Status, Upgraded, WorkerStats, WorkerStatus, config_hash, is_rejection, limits_view,
    list_views, route_rows,
};
