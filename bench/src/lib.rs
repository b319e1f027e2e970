//! wsedge benchmark tooling: a fast echo origin (also the demo origin), a load generator with
//! throughput, latency, handshake and idle-memory modes, and the report writer that turns
//! runs into a Markdown table and PNG charts.

pub mod frame;
pub mod load;
pub mod origin;
pub mod procstat;
pub mod report;
