//! What the worker's timer wheel holds: a connection's one timer, or one of the loop's. The
//! wheel stores it packed in a non-zero `u64`, so that a wheel entry (`Option` of it, a
//! deadline and its links) is 32 bytes: every connection keeps one, idle ones too (issue 18's
//! memory budget per connection).

use std::num::NonZeroU64;

use crate::conn_id::ConnId;

/// A timer's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TimerKey {
    Conn(ConnId),
    /// Accepting resumes after running out of descriptors.
    AcceptResume,
    /// A drain's deadline: what is left is closed.
    DrainDeadline,
    /// The JavaScript functions' next timer (one entry for the whole host).
    Functions,
    /// The memory trim's tick (trim.rs).
    Trim,
}

/// A [`TimerKey`] as the wheel holds it: its kind in the top byte (never zero), a
/// connection's generation and slot below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PackedKey(NonZeroU64);

const CONN: u64 = 1;
const ACCEPT_RESUME: u64 = 2;
const DRAIN_DEADLINE: u64 = 3;
const FUNCTIONS: u64 = 4;
const TRIM: u64 = 5;

impl TimerKey {
    pub(super) fn pack(self) -> PackedKey {
        let raw = match self {
            TimerKey::Conn(id) => CONN << 56 | u64::from(id.generation) << 32 | u64::from(id.slot),
            TimerKey::AcceptResume => ACCEPT_RESUME << 56,
            TimerKey::DrainDeadline => DRAIN_DEADLINE << 56,
            TimerKey::Functions => FUNCTIONS << 56,
            TimerKey::Trim => TRIM << 56,
        };
        PackedKey(NonZeroU64::new(raw).expect("a kind in the top byte"))
    }
}

impl PackedKey {
    pub(super) fn unpack(self) -> TimerKey {
        let raw = self.0.get();
        match raw >> 56 {
            CONN => TimerKey::Conn(ConnId::new(
                raw as u32 as usize,
                (raw >> 32) as u32 & 0xff_ffff,
            )),
            ACCEPT_RESUME => TimerKey::AcceptResume,
            DRAIN_DEADLINE => TimerKey::DrainDeadline,
            FUNCTIONS => TimerKey::Functions,
            _ => TimerKey::Trim,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_back_as_packed_in_eight_bytes() {
        let keys = [
            TimerKey::Conn(ConnId::new(0, 0)),
            TimerKey::Conn(ConnId::new(u32::MAX as usize, 0xff_ffff)),
            TimerKey::Conn(ConnId::new(49_999, 12_345)),
            TimerKey::AcceptResume,
            TimerKey::DrainDeadline,
            TimerKey::Functions,
            TimerKey::Trim,
        ];
        for key in keys {
            assert_eq!(key.pack().unpack(), key);
        }
        assert_eq!(std::mem::size_of::<Option<PackedKey>>(), 8);
    }
}
