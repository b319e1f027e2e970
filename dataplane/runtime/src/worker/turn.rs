//! One turn's completions, and looks for new clients while a long turn runs.
//!
//! A turn of the loop dispatches what the ring handed back; a new client's accept (like each
//! later step of its handshake: head, connect, the origin's answer) reaches the worker only
//! when it next asks the kernel, which (with `DEFER_TASKRUN`) is also when the kernel runs
//! the work deferred for the ring. Under a flood a turn is every ready relay direction's work
//! (60 splice completions moving ~380 KB each made 11 ms turns), and a new client waited
//! about a turn (p50 10 ms) before its accept completion was even seen, then a turn per
//! step. Bounding a turn's relay work instead changed which direction was served when, and
//! connections whose socket buffer the kernel had not grown starved (docs/benchmarks.md,
//! "Turns of the loop and new clients"). So a turn keeps its relay work, and once it has run
//! [`LOOK_AFTER`], and then whenever [`LOOK_EVERY`] has passed since the worker last asked
//! the kernel, it asks again without
//! waiting or submitting (`Ring::reap`): accepts and the completions of connections still
//! handshaking are dispatched at once, and what handshake
//! work queued (a head read, a connect, an answer) is submitted then; relay completions wait
//! for the next turn, which dispatches them first (after its own handshake completions) and
//! does not sleep while any wait. Relay submissions stay queued until the turn's end, so
//! they still carry a whole turn's bytes.
//!
//! A turn's batch is dispatched handshake completions first: a step that completed as the
//! previous turn ended (what its last look submitted, which often completes inside that
//! submit) is drained with the batch, where no look sees it, and in its place it waited
//! behind a whole turn of relay work. That was a new client's p99 behind a 50-connection
//! flood: 38-42 ms, two steps of ~19 ms each; first, 7-14 ms (docs/benchmarks.md).
//!
//! Order per connection is kept: a relay completion taken early goes after every completion
//! of the turn's batch; those dispatched early belong to handshakes, whose operations are
//! one-shot (no later completion of the same operation can be pending). A waiting
//! completion still counts as an operation in flight of its connection (`Conn::ops`), so the
//! connection is not freed under it.

use std::time::{Duration, Instant};

use wsedge_ring::Completion;

use super::{OWNER_ACCEPT, OWNER_WAKE, Worker};
use crate::conn_id::ConnId;

/// How long relay work runs before the worker asks the kernel again (an `io_uring_enter` that
/// runs the kernel's deferred work, which the turn's end would run anyway). The kernel runs a
/// bounded batch of deferred work per call, so under a buffered flood a new client's
/// completions wait behind the relay's: in A/B runs, looks every 250 µs left new clients at
/// 28-32 ms there, every 10-20 µs at 8-16 ms (docs/benchmarks.md).
const LOOK_EVERY: Duration = Duration::from_micros(20);

/// How long a turn runs before its first look: a shorter turn's end (which submits and takes
/// what completed) comes soon anyway. Looking from the turn's start cost a handshake storm
/// 3.8 `io_uring_enter` calls per session instead of 0.26; from 200 µs on, in 4 interleaved
/// A/B pairs: sessions/s +3.6 %, CPU per session −8 %, a new client's p50 during a flood
/// unchanged (docs/benchmarks.md, "What bounds the missed targets").
const LOOK_AFTER: Duration = Duration::from_micros(200);

impl Worker {
    /// Dispatches what waited, then the turn's new `completions`, looking for new clients
    /// while relay work runs long.
    pub(super) fn dispatch_turn(
        &mut self,
        completions: &mut Vec<Completion>,
    ) -> std::io::Result<()> {
        let mut next_look = Instant::now() + LOOK_AFTER;
        // Handshake work dispatched since the last submission: what it queued (a head read, a
        // connect, an answer) is submitted at the next look, not at the turn's end.
        let mut handshake_queued = false;
        // The batch's handshake completions go first, ahead of the relay work the last turn's
        // looks held back and of the batch's own: a step that completed as the last turn
        // ended (a head read that finished when the look submitted it) is in this batch, not
        // in any look, and in its place it waited a whole turn (~19 ms under a 50-connection
        // flood, once per step). Classified before any is dispatched: a handshake that
        // finishes here leaves its connection's later completions in place.
        let mut first = std::mem::take(&mut self.early);
        first.extend(completions.extract_if(.., |c| !self.keeps_its_place(c)));
        for c in first.drain(..) {
            handshake_queued = true;
            self.dispatch(c);
        }
        self.early = first;
        // What is left keeps its place (relay work, the wake): a connection still handshaking
        // when its completion was classified had it taken early, and one does not go back
        // to handshaking. So the loop classifies nothing again and looks on time alone.
        let mut waited = std::mem::take(&mut self.waiting);
        for c in waited.drain(..).chain(completions.drain(..)) {
            self.dispatch(c);
            if Instant::now() >= next_look {
                self.look_for_new_clients(&mut handshake_queued)?;
                next_look = Instant::now() + LOOK_EVERY;
            }
        }
        if self.waiting.is_empty() {
            // Keep the emptied queue's allocation.
            self.waiting = waited;
        }
        Ok(())
    }

    /// Takes what completed, without waiting: handshake work now (and what handshake work
    /// queued is submitted), relay work at the next turn. Submitting at every look instead
    /// cost a buffered 16 KiB flood a quarter to a third more CPU per message (each send
    /// carried less).
    fn look_for_new_clients(&mut self, handshake_queued: &mut bool) -> std::io::Result<()> {
        self.ring.reap()?;
        let mut early = std::mem::take(&mut self.early);
        self.ring.drain(&mut early);
        for c in early.drain(..) {
            if self.keeps_its_place(&c) {
                self.waiting.push_back(c);
            } else {
                *handshake_queued = true;
                self.dispatch(c);
            }
        }
        self.early = early;
        if std::mem::take(handshake_queued) {
            self.ring.submit()?;
        }
        Ok(())
    }

    /// Completions wait for the next turn: it must not sleep.
    pub(super) fn work_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// A completion that keeps its place in the order: anything but an accept and the
    /// completions of connections still handshaking. The wake stays in order too: the bus
    /// deliveries it brings must not overtake the send completions before them (a
    /// subscriber's queue would look fuller than it is, and a reader keeping up could be cut
    /// off as a slow consumer).
    fn keeps_its_place(&self, c: &Completion) -> bool {
        let owner = c.owner.0;
        if owner == OWNER_WAKE {
            return true;
        }
        if is_accept(owner) {
            return false;
        }
        let (id, _) = ConnId::from_owner(owner);
        self.conns
            .get(id.slot as usize)
            .is_some_and(|conn| conn.id == id && !conn.handshaking)
    }
}

/// A completion of one of the worker's multishot accepts.
pub(super) fn is_accept(owner: u64) -> bool {
    owner & (0xff << 56) == OWNER_ACCEPT
}
