//! wsedge-ring: the dataplane's io_uring layer, and the only crate of the dataplane with
//! `unsafe`.
//!
//! It sits under the runtime (`wsedge`): each worker thread owns one [`Ring`] and starts
//! typed operations on it (multishot accept, eventfd wake, head recv into a `Vec`, multishot
//! recv into provided buffers, batched send, connect, poll, cancel), then drains
//! [`Completion`]s that name the [`Owner`] it gave. Above it, the runtime is safe code: it
//! decides *what* to do; this crate makes sure the kernel only ever touches memory that is
//! alive. Besides the ring it holds every libc wrapper the dataplane needs ([`sys`]) and the
//! splice relay's pipe pool ([`pipes`]), and the kernel TLS hand-off and probe ([`ktls`]). It depends only on `wsedge-proto` (for the
//! [`Chunk`]s a send takes).
//!
//! # The memory rule
//! The kernel only ever touches memory owned by an operation's record, or the provided-buffer
//! ring:
//! - a head recv owns its `Vec` (the kernel writes its spare capacity); a wake owns its 8
//!   bytes; a connect owns its boxed address; a send owns the chunks it took from the
//!   [`SendQueue`] and the boxed iovecs and message header that point at them;
//! - the [`BufRing`] lives as long as the [`Ring`], and tracks which buffers the kernel may
//!   fill, which the application holds, and which sends in flight read;
//! - a record lives in the op table from its submission until its final completion (the one
//!   with `more == false`) is drained; then its memory is handed back in
//!   [`Completion::data`]. Pointers go to heap memory the record owns, never into the table's
//!   own storage (which moves when it grows).
//!
//! So memory safety does not depend on what the caller does with its own state: a caller
//! may drop a connection with operations in flight, and their memory stays valid until the
//! completions arrive ([`Ring::recycle`] or [`Ring::discard`] then gives back the provided
//! buffers they held). Dropping the [`Ring`] cancels and reaps what is in flight, and leaks
//! (never frees) what the kernel does not give back in time.
//!
//! What the caller must still do: keep an operation's **file descriptor open** until its
//! final completion (a submission still in the backlog names the fd by number, and a
//! number closed and reused would make it act on another socket); give back every buffer a
//! completion names ([`BufRing::give_back`]); and hand a send's chunks back to their queue
//! ([`SendQueue::complete`] / [`SendQueue::fail`]) or to [`Ring::recycle`]. The worker keeps
//! the fd rule by counting its in-flight operations per connection: one increment per
//! operation started, one decrement per final completion.
//!
//! A full submission queue is a backlog, never a panic; a completion that names no operation
//! in flight (stale or unknown `user_data`) is ignored and counted, never a panic.

#![deny(unsafe_op_in_unsafe_fn)]

mod bufring;
pub mod ktls;
mod op;
pub mod pipes;
mod probe;
mod ring;
mod send;
pub mod sys;

pub use bufring::BufRing;
pub use op::{Completion, OpData, OpId, OpKind, Owner};
pub use probe::{probe, recv_limit};
pub use ring::{Ring, RingConfig};
pub use send::{SendQueue, SentChunks, Written};
pub use wsedge_proto::chunk::{BufId, Chunk};
