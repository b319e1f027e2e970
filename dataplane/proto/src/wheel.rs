//! Hierarchical timer wheel: every timer of one dataplane worker, driven by an integer tick.
//!
//! Each worker's ring loop in `wsedge` (dataplane/runtime) owns one [`TimerWheel`] holding the
//! timers of all its connections (handshake, origin connect, idle, max connection time). The
//! wheel never reads a clock: the loop passes `now` as a [`Tick`] (milliseconds since the worker
//! started), calls [`TimerWheel::advance`] when it wakes, and sleeps until
//! [`TimerWheel::next_expiration`]. Same inputs, same outputs, so it is tested without a kernel.
//!
//! # Layout
//!
//! [`LEVELS`] levels of 64 slots; a slot at level `k` spans `64^k` ticks, so the wheel places
//! deadlines up to `64^6` ms (about 2.2 years) ahead; later ones wait in an overflow list that is
//! revisited when time reaches the block of `64^6` ticks holding its earliest deadline; they never
//! fire early. A timer sits at the level of the highest
//! base-64 digit in which its deadline differs from `now`, in the slot named by the deadline's
//! digit at that level. When time reaches the start of a slot above level 0, its timers cascade:
//! they are placed again relative to the new `now`, always at a lower level, or fire.
//!
//! Timers live in a slab (a `Vec` with a free list); each slot is an intrusive doubly-linked list
//! of slab indices, so [`TimerWheel::cancel`] is O(1). A generation per slab entry makes a
//! [`TimerId`] stale once its timer fired or was cancelled. A `u64` bitmap per level marks the
//! occupied slots, so finding the next due slot costs a few `trailing_zeros`, whatever the gap:
//! `advance` costs O(timers fired + timers cascaded + occupied slots passed), not O(ticks).

use std::fmt;
use std::num::NonZeroU32;

/// A point in time: milliseconds since the worker started, supplied by the caller.
pub type Tick = u64;

/// A deadline that may be unset, in the size of a [`Tick`] (an `Option<Tick>` takes twice
/// that, and a session keeps several: issue 18's memory budget). `u64::MAX` means never: no
/// real deadline is that far.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Deadline(Tick);

impl Deadline {
    /// No deadline.
    pub const NEVER: Deadline = Deadline(Tick::MAX);

    /// A deadline at `t` (`Tick::MAX` is taken as never).
    pub fn at(t: Tick) -> Deadline {
        Deadline(t)
    }

    /// The tick, if set.
    pub fn get(self) -> Option<Tick> {
        (self.0 != Tick::MAX).then_some(self.0)
    }

    pub fn is_set(self) -> bool {
        self.0 != Tick::MAX
    }
}

impl std::fmt::Debug for Deadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

/// Number of wheel levels; level `k` has 64 slots of `64^k` ticks each.
pub const LEVELS: usize = 6;

/// log2 of the number of slots per level.
const SLOT_BITS: u32 = 6;
/// Slots per level.
const SLOTS: usize = 1 << SLOT_BITS;
/// Mask of one base-64 digit.
const SLOT_MASK: u64 = SLOTS as u64 - 1;
/// Ticks covered by the whole wheel: `64^LEVELS`. Deadlines that differ from `now` above these
/// low bits go to the overflow list.
const TOP_MASK: u64 = (1 << (SLOT_BITS * LEVELS as u32)) - 1;

/// List id of wheel slot `level * SLOTS + slot`; these ids are below `WHEEL_LISTS`.
const WHEEL_LISTS: usize = LEVELS * SLOTS;
/// List of timers whose deadline was already due when inserted; drained by the next `advance`.
const OVERDUE: u16 = WHEEL_LISTS as u16;
/// List of timers beyond the wheel's span; revisited at the start of the top-level block holding
/// the earliest of their deadlines.
const OVERFLOW: u16 = OVERDUE + 1;
/// Number of lists (heads).
const LISTS: usize = WHEEL_LISTS + 2;
/// `Entry::list` of a slab entry on the free list.
const FREE: u16 = u16::MAX;
/// "No entry" in intrusive links and list heads.
const NIL: u32 = u32::MAX;

/// Handle of one timer, returned by [`TimerWheel::insert`] and accepted by
/// [`TimerWheel::cancel`].
///
/// A slab index plus the generation the entry had when the timer was inserted. Once the timer
/// fires or is cancelled the entry's generation moves on, so an old id is rejected even after its
/// slot is reused (up to 2^32 reuses of one slot). An id is only meaningful for the wheel that
/// issued it. `Option<TimerId>` is the same size as `TimerId`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerId {
    index: u32,
    generation: NonZeroU32,
}

/// One slab entry: a pending timer, or a free entry.
struct Entry<T> {
    /// The payload; `Some` exactly when `list != FREE`.
    value: Option<T>,
    /// The deadline given to `insert` (not clamped).
    deadline: Tick,
    /// Previous entry in the same list, or `NIL` at the head. Unused while free.
    prev: u32,
    /// Next entry in the same list (or on the free list), or `NIL` at the tail.
    next: u32,
    /// Bumped whenever the entry is freed; ids carrying an older generation are stale.
    generation: NonZeroU32,
    /// The list this entry is linked in: a wheel slot, `OVERDUE`, `OVERFLOW`, or `FREE`.
    list: u16,
}

/// A deterministic hierarchical timer wheel holding payloads of type `T`.
///
/// See the [module docs](self) for the layout. The runtime stores a `Copy` connection token in
/// `T`. All operations are O(1) except `advance`, which is proportional to the work it does
/// (timers fired or cascaded), never to the ticks elapsed.
pub struct TimerWheel<T> {
    /// Current time. Only moves forward.
    ///
    /// INVARIANT: a timer in wheel slot `s` of level `k` has a deadline that agrees with `now` in
    /// every base-64 digit above `k` and whose digit `k` is `s`, strictly greater than `now`'s
    /// (so the slot starts after `now`). A timer in `OVERFLOW` has a deadline in a later block of
    /// `64^LEVELS` ticks than `now`. A timer in `OVERDUE` has a deadline `<= now`.
    now: Tick,
    /// The slab. Entries are never removed, only put on the free list.
    entries: Vec<Entry<T>>,
    /// Head of the free list (linked through `Entry::next`), or `NIL`.
    free_head: u32,
    /// Number of pending timers (entries not on the free list).
    len: usize,
    /// Head of each list (wheel slots, then `OVERDUE`, then `OVERFLOW`), or `NIL` when empty.
    heads: [u32; LISTS],
    /// INVARIANT: bit `s` of `occupied[k]` is set exactly when wheel slot `s` of level `k` is
    /// non-empty.
    occupied: [u64; LEVELS],
    /// INVARIANT: `<=` the deadline of every timer in `OVERFLOW` (cancels leave it stale, which
    /// keeps it a lower bound); recomputed whenever the overflow list is revisited.
    overflow_min: Tick,
}

impl<T> TimerWheel<T> {
    /// Creates an empty wheel whose current time is `now`.
    pub fn new(now: Tick) -> Self {
        Self::with_capacity(now, 0)
    }

    /// Creates an empty wheel whose current time is `now`, with room for `capacity` timers
    /// before the slab reallocates.
    pub fn with_capacity(now: Tick, capacity: usize) -> Self {
        TimerWheel {
            now,
            entries: Vec::with_capacity(capacity),
            free_head: NIL,
            len: 0,
            heads: [NIL; LISTS],
            occupied: [0; LEVELS],
            overflow_min: Tick::MAX,
        }
    }

    /// Schedules `value` to be returned by the first [`advance`](Self::advance) whose `now` is
    /// `>= deadline`.
    ///
    /// A `deadline <= self.now()` fires on the next `advance`, whatever its `now`. Any deadline
    /// is accepted, up to `Tick::MAX`; one beyond the current block of `64^6` ticks waits in an
    /// overflow list and still fires exactly on time. O(1), amortized over slab growth.
    ///
    /// Overflow timers (over 2.2 years ahead in ms) are not meant for the hot path: each time the
    /// earliest of them comes within the wheel's span, `advance` walks the whole overflow list.
    ///
    /// # Panics
    ///
    /// If more than `u32::MAX - 1` timers are pending at once.
    pub fn insert(&mut self, deadline: Tick, value: T) -> TimerId {
        let index = self.alloc(deadline, value);
        let list = self.list_for(deadline);
        self.link(index, list);
        self.len += 1;
        TimerId {
            index,
            generation: self.entries[index as usize].generation,
        }
    }

    /// Cancels the timer `id` and returns its payload.
    ///
    /// Returns `None`, and changes nothing, if the timer already fired (its payload was pushed by
    /// `advance`), was already cancelled, or `id` is otherwise stale. O(1).
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        let entry = self.entries.get(id.index as usize)?;
        if entry.generation != id.generation || entry.list == FREE {
            return None;
        }
        self.unlink(id.index);
        self.release(id.index)
    }

    /// The deadline timer `id` was inserted with, while it is pending (`None` once it fired,
    /// was cancelled, or `id` is otherwise stale). O(1). Its owner need not keep a copy.
    pub fn deadline(&self, id: TimerId) -> Option<Tick> {
        let entry = self.entries.get(id.index as usize)?;
        (entry.generation == id.generation && entry.list != FREE).then_some(entry.deadline)
    }

    /// Moves time forward to `now` and pushes the payload of every timer whose deadline is
    /// `<= now` onto `expired`.
    ///
    /// Never fires a timer early and never misses one: after the call, every pending timer has a
    /// deadline `> now`. Payloads are appended (`expired` is not cleared) in nondecreasing order
    /// of deadline; timers sharing a deadline come in no specified (but deterministic) order. A
    /// `now` earlier than [`self.now()`](Self::now) is treated as `self.now()`: time does not go
    /// back, but timers inserted already due still fire.
    ///
    /// Cost: O(timers fired, cascaded, and occupied slots passed), independent of how many ticks
    /// elapsed; each timer cascades at most [`LEVELS`] times in its life, plus once per overflow
    /// revisit while in overflow.
    pub fn advance(&mut self, now: Tick, expired: &mut Vec<T>) {
        let target = now.max(self.now);
        // Timers inserted already due have the earliest deadlines of all.
        let mut index = self.take_list(OVERDUE);
        while index != NIL {
            let next = self.entries[index as usize].next;
            expired.extend(self.release(index));
            index = next;
        }
        while let Some((list, start)) = self.next_event() {
            if start > target {
                break;
            }
            // Nothing is pending before `start`, so time may jump there. Every timer of the slot
            // has a deadline `>= start`: it fires now or goes to a strictly lower level.
            self.now = start;
            if list == OVERFLOW {
                self.overflow_min = Tick::MAX;
            }
            let mut index = self.take_list(list);
            while index != NIL {
                let entry = &self.entries[index as usize];
                let (next, deadline) = (entry.next, entry.deadline);
                if deadline <= start {
                    expired.extend(self.release(index));
                } else {
                    let list = self.list_for(deadline);
                    self.link(index, list);
                }
                index = next;
            }
        }
        // No slot starts in `(self.now, target]`, so `target` shares with `self.now` every digit
        // above each occupied slot's level, and the placement invariant still holds.
        self.now = target;
    }

    /// When the loop must next call [`advance`](Self::advance), or `None` if no timer is pending.
    ///
    /// Nothing fires before it: it is a lower bound of every pending deadline, except that it is
    /// `self.now()` if a timer inserted already due awaits the next `advance`. Otherwise it is
    /// `> self.now()`. It is exact when the earliest timer sits in level 0 (its deadline is in the
    /// current block of 64 ticks); otherwise it is the start of the earliest occupied slot, and
    /// advancing to it may fire nothing but cascade timers down, after which it is tighter. A lone
    /// timer is reached in at most `LEVELS + 1` such wake-ups (one per level, one more if it
    /// waited in overflow). O(`LEVELS`).
    pub fn next_expiration(&self) -> Option<Tick> {
        if self.heads[OVERDUE as usize] != NIL {
            return Some(self.now);
        }
        self.next_event().map(|(_, start)| start)
    }

    /// Number of pending timers (inserted, neither fired nor cancelled).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The wheel's current time: the largest `now` given to `new` or `advance`.
    pub fn now(&self) -> Tick {
        self.now
    }

    /// The list a timer with `deadline` belongs to, relative to `self.now`.
    fn list_for(&self, deadline: Tick) -> u16 {
        if deadline <= self.now {
            return OVERDUE;
        }
        // The highest digit in which the deadline differs from now; the deadline is later, so
        // its digit there is the greater one.
        let highest_bit = Tick::BITS - 1 - (deadline ^ self.now).leading_zeros();
        let level = highest_bit / SLOT_BITS;
        if level as usize >= LEVELS {
            return OVERFLOW;
        }
        let slot = (deadline >> (level * SLOT_BITS)) & SLOT_MASK;
        // Fits: below WHEEL_LISTS (384).
        (level as usize * SLOTS + slot as usize) as u16
    }

    /// The earliest thing `advance` must process: the list id and the tick it comes due.
    ///
    /// That is the occupied wheel slot with the earliest start or, with the wheel empty, the
    /// overflow list at the start of the next top-level block.
    fn next_event(&self) -> Option<(u16, Tick)> {
        let mut best: Option<(u16, Tick)> = None;
        for (level, &bits) in self.occupied.iter().enumerate() {
            if bits == 0 {
                continue;
            }
            // By the placement invariant every occupied slot is after now's digit at this level,
            // so the lowest one is the earliest.
            let slot = u64::from(bits.trailing_zeros());
            let shift = level as u32 * SLOT_BITS;
            let block_mask = (1u64 << (shift + SLOT_BITS)) - 1;
            let start = (self.now & !block_mask) + (slot << shift);
            if best.is_none_or(|(_, t)| start < t) {
                best = Some(((level * SLOTS) as u16 + slot as u16, start));
            }
        }
        if best.is_none() && self.heads[OVERFLOW as usize] != NIL {
            // The start of the top-level block holding the earliest overflow deadline: no overflow
            // timer is due before it. Overflow deadlines lie in a later block than now, so the
            // next block exists; if the addition saturated, Tick::MAX would still not be early.
            let next_block = (self.now | TOP_MASK).saturating_add(1);
            best = Some((OVERFLOW, next_block.max(self.overflow_min & !TOP_MASK)));
        }
        best
    }

    /// Takes a slab entry for a new timer, reusing a free one if any.
    fn alloc(&mut self, deadline: Tick, value: T) -> u32 {
        if self.free_head != NIL {
            let index = self.free_head;
            let entry = &mut self.entries[index as usize];
            self.free_head = entry.next;
            entry.value = Some(value);
            entry.deadline = deadline;
            return index;
        }
        let index = match u32::try_from(self.entries.len()) {
            Ok(index) if index != NIL => index,
            _ => panic!("TimerWheel: more than u32::MAX - 1 pending timers"),
        };
        self.entries.push(Entry {
            value: Some(value),
            deadline,
            prev: NIL,
            next: NIL,
            generation: NonZeroU32::MIN,
            list: FREE,
        });
        index
    }

    /// Returns entry `index` (already unlinked from its list) to the free list and its payload.
    fn release(&mut self, index: u32) -> Option<T> {
        let entry = &mut self.entries[index as usize];
        let value = entry.value.take();
        entry.generation = entry.generation.checked_add(1).unwrap_or(NonZeroU32::MIN);
        entry.list = FREE;
        entry.prev = NIL;
        entry.next = self.free_head;
        self.free_head = index;
        self.len -= 1;
        value
    }

    /// Pushes entry `index` at the head of `list`.
    fn link(&mut self, index: u32, list: u16) {
        let head = self.heads[list as usize];
        let entry = &mut self.entries[index as usize];
        entry.prev = NIL;
        entry.next = head;
        entry.list = list;
        if head != NIL {
            self.entries[head as usize].prev = index;
        }
        self.heads[list as usize] = index;
        if (list as usize) < WHEEL_LISTS {
            self.occupied[list as usize / SLOTS] |= 1 << (list as usize % SLOTS);
        } else if list == OVERFLOW {
            self.overflow_min = self.overflow_min.min(self.entries[index as usize].deadline);
        }
    }

    /// Removes entry `index` from the list it is linked in.
    fn unlink(&mut self, index: u32) {
        let entry = &self.entries[index as usize];
        let (prev, next, list) = (entry.prev, entry.next, entry.list);
        if prev != NIL {
            self.entries[prev as usize].next = next;
        } else {
            self.heads[list as usize] = next;
            if next == NIL && (list as usize) < WHEEL_LISTS {
                self.occupied[list as usize / SLOTS] &= !(1 << (list as usize % SLOTS));
            }
        }
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
    }

    /// Empties `list` and returns the head of its detached chain (follow `Entry::next`, reading it
    /// before relinking or releasing the entry).
    fn take_list(&mut self, list: u16) -> u32 {
        let head = std::mem::replace(&mut self.heads[list as usize], NIL);
        if (list as usize) < WHEEL_LISTS {
            self.occupied[list as usize / SLOTS] &= !(1 << (list as usize % SLOTS));
        }
        head
    }
}

impl<T> fmt::Debug for TimerWheel<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerWheel")
            .field("now", &self.now)
            .field("len", &self.len)
            .field("next_expiration", &self.next_expiration())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Ticks covered by the wheel before the overflow list.
    const SPAN: Tick = TOP_MASK + 1;
    const HOUR: Tick = 3_600_000;

    /// xorshift64*: a small deterministic PRNG for the differential test.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        /// A delta whose magnitude is drawn from a random scale, from 0 to 2^40.
        fn delta(&mut self) -> u64 {
            let scale = [
                2,
                64,
                65,
                4096,
                4100,
                1 << 18,
                1 << 24,
                1 << 30,
                SPAN + 10,
                1 << 40,
            ];
            let i = self.below(scale.len() as u64) as usize;
            self.below(scale[i])
        }
    }

    fn drain(wheel: &mut TimerWheel<u64>, now: Tick) -> Vec<u64> {
        let mut out = Vec::new();
        wheel.advance(now, &mut out);
        out
    }

    /// Deadlines around level boundaries and common timeouts.
    fn interesting_deltas() -> Vec<Tick> {
        let mut deltas = vec![1, 2, 15 * 60 * 1000, HOUR, 10 * HOUR, 3 * 365 * 24 * HOUR];
        for level in 1..=LEVELS as u32 + 1 {
            let b = 1u64 << (SLOT_BITS * level);
            deltas.extend([b - 1, b, b + 1]);
        }
        deltas
    }

    #[test]
    fn fires_exactly_at_deadline_not_before() {
        for start in [0, 1, 63, 64, 4095, 12_345, SPAN - 1, SPAN + 7] {
            for delta in interesting_deltas() {
                let deadline = start + delta;
                let mut wheel = TimerWheel::new(start);
                wheel.insert(deadline, 7);
                assert_eq!(
                    drain(&mut wheel, deadline - 1),
                    Vec::<u64>::new(),
                    "{start} + {delta}"
                );
                assert_eq!(wheel.len(), 1);
                assert_eq!(drain(&mut wheel, deadline), [7], "{start} + {delta}");
                assert!(wheel.is_empty());
                assert_eq!(wheel.next_expiration(), None);
            }
        }
    }

    #[test]
    fn fires_exactly_at_deadline_in_one_ms_steps() {
        for delta in [1, 63, 64, 65, 127, 128, 4095, 4096, 4097, 5000] {
            let mut wheel = TimerWheel::new(10);
            wheel.insert(10 + delta, ());
            let mut out = Vec::new();
            for now in 11..10 + delta {
                wheel.advance(now, &mut out);
                assert!(out.is_empty(), "fired at {now}, deadline {}", 10 + delta);
            }
            wheel.advance(10 + delta, &mut out);
            assert_eq!(out.len(), 1);
        }
    }

    #[test]
    fn runtime_loop_sleeping_until_next_expiration() {
        // The ring loop's pattern: sleep until next_expiration, advance, repeat.
        for start in [0, 5, 4000, SPAN - 3] {
            for delta in interesting_deltas() {
                let deadline = start + delta;
                let mut wheel = TimerWheel::new(start);
                wheel.insert(deadline, 1u8);
                let mut wakeups = 0;
                let mut out = Vec::new();
                while out.is_empty() {
                    let next = wheel.next_expiration().expect("timer pending");
                    assert!(next > wheel.now() && next <= deadline, "{start} + {delta}");
                    wheel.advance(next, &mut out);
                    wakeups += 1;
                }
                assert_eq!(wheel.now(), deadline);
                // One wake-up per level, plus one if it waited in overflow.
                assert!(wakeups <= LEVELS as u64 + 1, "{wakeups} wake-ups");
            }
        }
    }

    #[test]
    fn next_expiration_is_exact_in_level_zero() {
        let mut wheel = TimerWheel::new(100);
        wheel.insert(120, ());
        wheel.insert(110, ());
        assert_eq!(wheel.next_expiration(), Some(110));
        let mut wheel = TimerWheel::new(0);
        wheel.insert(200, ());
        assert_eq!(wheel.next_expiration(), Some(192)); // start of level-1 slot 3
        wheel.advance(192, &mut Vec::new());
        assert_eq!(wheel.next_expiration(), Some(200));
    }

    #[test]
    fn due_deadline_fires_on_next_advance() {
        let mut wheel = TimerWheel::new(1000);
        wheel.insert(1000, 1);
        wheel.insert(3, 2);
        assert_eq!(wheel.next_expiration(), Some(1000));
        let mut fired = drain(&mut wheel, 1000);
        fired.sort_unstable();
        assert_eq!(fired, [1, 2]);
        // Time never goes back, but a due timer still fires on a stale `now`.
        wheel.insert(900, 3);
        assert_eq!(drain(&mut wheel, 500), [3]);
        assert_eq!(wheel.now(), 1000);
    }

    #[test]
    fn cancel_before_and_after_fire() {
        let mut wheel = TimerWheel::new(0);
        let a = wheel.insert(100, 1);
        let b = wheel.insert(100, 2);
        let c = wheel.insert(5000, 3);
        assert_eq!(wheel.cancel(a), Some(1));
        assert_eq!(wheel.cancel(a), None);
        assert_eq!(wheel.len(), 2);
        assert_eq!(drain(&mut wheel, 100), [2]);
        assert_eq!(wheel.cancel(b), None);
        assert_eq!(wheel.cancel(c), Some(3));
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_expiration(), None);
        assert_eq!(drain(&mut wheel, 10_000), Vec::<u64>::new());
    }

    #[test]
    fn cancel_clears_slot_and_next_expiration() {
        let mut wheel = TimerWheel::new(0);
        let a = wheel.insert(10, 1);
        wheel.insert(20, 2);
        assert_eq!(wheel.next_expiration(), Some(10));
        wheel.cancel(a);
        assert_eq!(wheel.next_expiration(), Some(20));
        assert_eq!(wheel.occupied[0].count_ones(), 1);
    }

    #[test]
    fn stale_id_after_slot_reuse() {
        let mut wheel = TimerWheel::new(0);
        let old = wheel.insert(10, 1);
        assert_eq!(wheel.cancel(old), Some(1));
        let new = wheel.insert(10, 2);
        assert_eq!(new.index, old.index, "slab entry reused");
        assert_ne!(new, old);
        assert_eq!(wheel.cancel(old), None);
        assert_eq!(drain(&mut wheel, 10), [2]);
        let newer = wheel.insert(20, 3);
        assert_eq!(wheel.cancel(new), None);
        assert_eq!(wheel.cancel(old), None);
        assert_eq!(wheel.cancel(newer), Some(3));
        // An id from another wheel with an out-of-range index.
        let mut big = TimerWheel::new(0);
        let far = (0..5).map(|i| big.insert(1, i)).last().unwrap();
        assert_eq!(wheel.cancel(far), None);
    }

    /// Every connection keeps one entry (issue 18's memory budget per idle connection): with
    /// an 8-byte payload that has a niche (the worker's packed key), an entry is 32 bytes.
    #[test]
    fn an_entry_with_an_eight_byte_payload_is_32_bytes() {
        assert_eq!(size_of::<Entry<std::num::NonZeroU64>>(), 32);
    }

    #[test]
    fn deadline_is_known_while_pending_only() {
        let mut wheel = TimerWheel::new(0);
        let id = wheel.insert(70, 1);
        assert_eq!(wheel.deadline(id), Some(70));
        assert_eq!(drain(&mut wheel, 70), [1]);
        assert_eq!(wheel.deadline(id), None, "fired");
        let id = wheel.insert(80, 2);
        wheel.cancel(id);
        assert_eq!(wheel.deadline(id), None, "cancelled");
    }

    #[test]
    fn option_timer_id_is_niche_packed() {
        assert_eq!(size_of::<Option<TimerId>>(), size_of::<TimerId>());
    }

    #[test]
    fn huge_jump_fires_everything_in_order() {
        let mut wheel = TimerWheel::new(0);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for i in 0..10_000u64 {
            wheel.insert(1 + rng.below(10 * HOUR), i);
        }
        wheel.insert(Tick::MAX, u64::MAX);
        let mut out = Vec::new();
        wheel.advance(10 * HOUR, &mut out);
        assert_eq!(out.len(), 10_000);
        assert_eq!(wheel.len(), 1);
        // Ticks elapsed do not matter: this jump is 2^64 ms.
        wheel.advance(Tick::MAX - 1, &mut out);
        assert_eq!(out.len(), 10_000);
        wheel.advance(Tick::MAX, &mut out);
        assert_eq!(out.last(), Some(&u64::MAX));
        assert!(wheel.is_empty());
    }

    #[test]
    fn far_future_timers_fire_on_time_in_few_wakeups() {
        let deadlines = [
            3 * SPAN + 5,
            3 * SPAN + 5,
            1 << 50,
            1 << 63,
            Tick::MAX - 1,
            Tick::MAX,
        ];
        let mut wheel = TimerWheel::new(7);
        for (i, &d) in deadlines.iter().enumerate() {
            wheel.insert(d, i);
        }
        let cancelled = wheel.insert(1 << 45, usize::MAX);
        assert_eq!(wheel.cancel(cancelled), Some(usize::MAX));
        let mut out = Vec::new();
        let mut wakeups = 0;
        while let Some(next) = wheel.next_expiration() {
            wheel.advance(next, &mut out);
            wakeups += 1;
            for &i in &out {
                assert_eq!(deadlines[i], wheel.now());
            }
            out.clear();
        }
        // One stale overflow bound, then at most LEVELS + 1 wake-ups per distinct deadline.
        assert!(wakeups <= 1 + 5 * (LEVELS + 1), "{wakeups} wake-ups");
        assert_eq!(wheel.now(), Tick::MAX);
    }

    #[test]
    fn fire_order_follows_deadlines() {
        let mut wheel = TimerWheel::new(0);
        let mut rng = Rng(42);
        let mut deadlines = BTreeMap::new();
        for i in 0..2000u64 {
            let d = 1 + rng.below(1 << 20);
            deadlines.insert(i, d);
            wheel.insert(d, i);
        }
        let out = drain(&mut wheel, 1 << 20);
        assert_eq!(out.len(), 2000);
        assert!(out.windows(2).all(|w| deadlines[&w[0]] <= deadlines[&w[1]]));
    }

    /// Differential test against a BTreeMap model: random inserts, cancels (live and stale) and
    /// advances; the exact set fired at each advance must match.
    #[test]
    fn differential_against_btreemap() {
        for seed in 1..=24u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let start = match seed % 4 {
                0 => 0,
                1 => rng.below(1 << 20),
                2 => SPAN - rng.below(5000), // cross the top-level block boundary
                _ => Tick::MAX - (1 << 41),  // saturating deadlines near the end of time
            };
            let mut wheel = TimerWheel::new(start);
            // value -> (deadline, id)
            let mut model: BTreeMap<u64, (Tick, TimerId)> = BTreeMap::new();
            let mut stale: Vec<TimerId> = Vec::new();
            let mut next_value = 0u64;
            for step in 0..6000 {
                let now = wheel.now();
                match rng.below(10) {
                    0..=4 => {
                        let deadline = if rng.below(20) == 0 {
                            now.saturating_sub(rng.below(100))
                        } else {
                            now.saturating_add(rng.delta())
                        };
                        let id = wheel.insert(deadline, next_value);
                        model.insert(next_value, (deadline, id));
                        next_value += 1;
                    }
                    5 | 6 => {
                        if !model.is_empty() && rng.below(4) != 0 {
                            let nth = rng.below(model.len() as u64) as usize;
                            let value = *model.keys().nth(nth).unwrap();
                            let (_, id) = model.remove(&value).unwrap();
                            assert_eq!(wheel.cancel(id), Some(value), "seed {seed} step {step}");
                            stale.push(id);
                        } else if !stale.is_empty() {
                            let id = stale[rng.below(stale.len() as u64) as usize];
                            assert_eq!(wheel.cancel(id), None, "seed {seed} step {step}");
                        }
                    }
                    _ => {
                        let to = if rng.below(3) == 0 {
                            // Wake up as the runtime does.
                            wheel.next_expiration().unwrap_or(now)
                        } else {
                            now.saturating_add(rng.delta() / (1 + rng.below(64)))
                        };
                        let mut fired = drain(&mut wheel, to);
                        fired.sort_unstable();
                        let expected: Vec<u64> = model
                            .iter()
                            .filter(|(_, (deadline, _))| *deadline <= to)
                            .map(|(value, _)| *value)
                            .collect();
                        for value in &expected {
                            stale.push(model.remove(value).unwrap().1);
                        }
                        assert_eq!(fired, expected, "seed {seed} step {step} advance to {to}");
                        assert_eq!(wheel.now(), to.max(now));
                    }
                }
                if stale.len() > 256 {
                    stale.drain(..128);
                }
                assert_eq!(wheel.len(), model.len());
                let earliest = model.values().map(|(deadline, _)| *deadline).min();
                match (wheel.next_expiration(), earliest) {
                    (None, None) => {}
                    (Some(next), Some(earliest)) => {
                        let now = wheel.now();
                        if earliest > now {
                            let ok = now < next && next <= earliest;
                            assert!(ok, "seed {seed} step {step}: {now} {next} {earliest}");
                        } else {
                            // A timer inserted already due: fire on the next advance.
                            assert_eq!(next, now, "seed {seed} step {step}");
                        }
                    }
                    (next, earliest) => panic!("seed {seed} step {step}: {next:?} vs {earliest:?}"),
                }
            }
        }
    }
}
