//! `user_data` encoding: what a completion is about, and for which connection incarnation.
//!
//! A token packs `kind | generation | slot` into a non-zero u64 (plain arithmetic, no
//! pointers). The generation rejects a stale completion that arrives after its slot was
//! freed and reused; loop-internal operations use kinds with no slot.

/// What an operation was for. `Side`-specific kinds carry the side in the low bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// Multishot accept; the slot field is the listener index.
    Accept = 1,
    /// Read on the worker's eventfd (mailbox wake-up).
    Wake = 2,
    /// An AsyncCancel; its completion is ignored.
    Cancel = 3,
    /// Single-shot recv of the client's head into the connection's own buffer.
    ClientHead = 4,
    /// Single-shot recv of the origin's response head.
    OriginHead = 5,
    Connect = 6,
    /// Multishot recv from a side into the provided-buffer ring.
    RecvClient = 8,
    RecvOrigin = 9,
    /// Send to a side.
    SendClient = 10,
    SendOrigin = 11,
    /// Splice relay of bytes coming from a side: wait until the side is readable, or until
    /// the other side can take what the pipe still holds (the splices themselves are
    /// synchronous syscalls on the worker).
    PollInClient = 12,
    PollInOrigin = 13,
    PollOutClient = 16,
    PollOutOrigin = 17,
    /// A poll for the client's close (FIN or reset) while the origin handshake is pending.
    WatchClient = 18,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Accept,
            2 => Kind::Wake,
            3 => Kind::Cancel,
            4 => Kind::ClientHead,
            5 => Kind::OriginHead,
            6 => Kind::Connect,
            8 => Kind::RecvClient,
            9 => Kind::RecvOrigin,
            10 => Kind::SendClient,
            11 => Kind::SendOrigin,
            12 => Kind::PollInClient,
            13 => Kind::PollInOrigin,
            16 => Kind::PollOutClient,
            17 => Kind::PollOutOrigin,
            18 => Kind::WatchClient,
            _ => return None,
        })
    }
}

/// A decoded `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) kind: Kind,
    /// 24 bits used.
    pub(crate) generation: u32,
    pub(crate) slot: u32,
}

const GEN_MASK: u32 = 0x00ff_ffff;

impl Token {
    pub(crate) fn new(kind: Kind, generation: u32, slot: u32) -> Token {
        Token {
            kind,
            generation: generation & GEN_MASK,
            slot,
        }
    }

    pub(crate) fn encode(self) -> u64 {
        (u64::from(self.kind as u8) << 56)
            | (u64::from(self.generation) << 32)
            | u64::from(self.slot)
    }

    pub(crate) fn decode(user_data: u64) -> Option<Token> {
        let kind = Kind::from_u8((user_data >> 56) as u8)?;
        Some(Token {
            kind,
            generation: ((user_data >> 32) as u32) & GEN_MASK,
            slot: user_data as u32,
        })
    }
}

/// Advances a 24-bit generation, skipping nothing: 16M reuses of one slot before a wrap.
pub(crate) fn next_generation(g: u32) -> u32 {
    g.wrapping_add(1) & GEN_MASK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_is_non_zero() {
        for kind in [
            Kind::Accept,
            Kind::Wake,
            Kind::PollOutOrigin,
            Kind::RecvClient,
        ] {
            for (generation, slot) in [(0, 0), (GEN_MASK, u32::MAX), (77, 12345)] {
                let t = Token::new(kind, generation, slot);
                let ud = t.encode();
                assert_ne!(ud, 0);
                assert_eq!(Token::decode(ud), Some(t));
            }
        }
        assert_eq!(Token::decode(0), None);
        assert_eq!(Token::decode(7 << 56), None);
    }

    #[test]
    fn generation_wraps_in_24_bits() {
        assert_eq!(next_generation(GEN_MASK), 0);
        assert_eq!(Token::new(Kind::Connect, GEN_MASK + 5, 1).generation, 4);
    }
}
