//! Pure protocol logic of the wsedge dataplane.
//!
//! Everything here takes bytes, events and a tick and returns decisions; nothing here opens a
//! socket, reads a clock or uses `unsafe`. The ring driver in `wsedge` (dataplane/runtime)
//! feeds it completions and turns its outputs into io_uring submissions. Being pure, every
//! piece is unit-tested and fuzzed without a kernel.
#![forbid(unsafe_code)]

pub mod accept;
pub mod balance;
pub mod body;
pub mod channels;
pub mod chunk;
pub mod endpoint;
pub mod firewall;
pub mod forwarding;
pub mod frame;
pub mod function;
pub mod handshake;
pub mod health;
pub mod path;
pub mod recovery;
pub mod response;
pub mod route;
pub mod session;
pub mod upgrade;
pub mod wheel;
