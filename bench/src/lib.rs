//! wsedge benchmark tooling: a fast echo origin (also the demo origin), a load generator with
//! throughput, latency, handshake and idle-memory modes (over `ws://`, and the handshake and
//! throughput ones over `wss://`), and the report writers that turn runs into Markdown tables
//! and PNG charts (plain, TLS, many hosts, and a section comparing JavaScript functions, the
//! built-in ones and a Node.js `ws` server).

pub mod frame;
pub mod load;
pub mod origin;
pub mod procstat;
pub mod report;
pub mod report_functions;
pub mod report_hosts;
pub mod report_tls;
