//! The ring driver: the only place with io_uring and `unsafe`.
//!
//! Each worker thread runs one [`worker::Worker`]: its own io_uring ([`ring`]), SO_REUSEPORT
//! listeners, connection slab, timer wheel, provided-buffer ring ([`bufring`]) and pipe pool
//! ([`pipes`]). Completions become events for the pure connection state machine
//! (`wsedge_proto::conn`), whose decisions become submissions. A connection's slot is freed
//! only when none of its operations is in flight: the kernel may still be writing into its
//! buffers until the completion arrives.

pub(crate) mod bufring;
pub(crate) mod pipes;
pub(crate) mod ring;
pub(crate) mod sys;
pub(crate) mod token;
pub(crate) mod worker;
