//! JavaScript functions for wsedge: a route whose function is a script (`function = "js"`)
//! runs an ES module on QuickJS-ng (rquickjs), in the API of docs/functions.md ("JavaScript
//! functions"): `export default { fetch }`, `upgradeWebSocket`, `new WebSocket`, channels.
//!
//! Where it sits: beside `wsedge-proto`'s built-in functions, behind the same seam.
//! [`JsHost`] is a worker's `FunctionHost` (one per worker, on its thread: one QuickJS
//! runtime per function and version, no threads, no tokio); [`JsSession`] is a connection's
//! `FunctionSession`, driven by the session exactly like `echo` or `bridge`. What runs
//! outside connection events (timers, promise jobs, one connection's code sending on
//! another's socket, client-less outbound sockets) reaches the worker through the host's
//! optional hooks (`poll_timeout`/`on_timeout`, `poll_wake`, `poll_outbound`).
//!
//! Modules: `script` (loading a module graph, refusing one that does not start), `engine`
//! (a runtime, budgets and faults; its `bindings`/`conn_bindings` are the native side of the
//! API, `prelude.js` the JavaScript side), `state` (what the bindings change), `session` (a
//! connection: `reads` for its sockets' messages, `outbox` for what its script asked), `host`,
//! and `endpoint` (the WebSocket framing of both sides, over proto's frame tracker).

// rquickjs 0.14 has no safe way to read a typed array's or a buffer's bytes:
// `engine::bindings::copy_bytes` is the only `unsafe` here (allowed there alone, with its SAFETY argument).
#![deny(unsafe_code)]

mod endpoint;
mod engine;
mod host;
mod script;
mod session;
mod state;

pub use engine::Limits;
pub use host::JsHost;
pub use script::{Script, ScriptError};
pub use session::JsSession;
pub use state::FunctionStats;

#[cfg(test)]
mod tests;
