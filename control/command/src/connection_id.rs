//! The public id of a live connection, shared by the dataplane (which hands ids out, logs
//! them and kills by them) and the CLI (which prints them and reads them back): this is the
//! only place that encodes or decodes one.
//!
//! An id names the worker, the connection's slot in that worker and the slot's generation
//! (its incarnation: a slot is reused, the generation is not, so a stale id never names the
//! next connection in the same slot). It is written `WORKER-SLOT-GENERATION`, e.g. `1-42-7`:
//! short, typeable, and readable (`1-…` is on worker 1). The wire, the access log and
//! `wsedgectl` all use that text. The 64-bit integer earlier builds printed
//! (`worker << 56 | generation << 32 | slot`) is still accepted when parsing.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A connection: worker, slot and generation. `Display` and `FromStr` are inverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId {
    worker: u32,
    slot: u32,
    generation: u32,
}

impl ConnectionId {
    /// Bits of the generation (the dataplane's tokens carry 24).
    pub const GENERATION_BITS: u32 = 24;
    const GENERATION_MASK: u32 = (1 << Self::GENERATION_BITS) - 1;

    /// The id of the connection in `slot` of `worker`, incarnation `generation` (its low 24
    /// bits). Worker indices and slab slots are far below 2^32.
    pub fn new(worker: usize, slot: usize, generation: u32) -> ConnectionId {
        debug_assert!(u32::try_from(worker).is_ok() && u32::try_from(slot).is_ok());
        ConnectionId {
            worker: worker as u32,
            slot: slot as u32,
            generation: generation & Self::GENERATION_MASK,
        }
    }

    pub fn worker(self) -> usize {
        self.worker as usize
    }

    pub fn slot(self) -> usize {
        self.slot as usize
    }

    pub fn generation(self) -> u32 {
        self.generation
    }

    /// The 64-bit form of earlier builds: `worker << 56 | generation << 32 | slot`. It holds
    /// worker indices below 256 only; the dataplane also uses it as a compact map key.
    pub fn to_raw(self) -> u64 {
        (u64::from(self.worker & 0xff) << 56)
            | (u64::from(self.generation) << 32)
            | u64::from(self.slot)
    }

    /// Decodes the 64-bit form (see [`ConnectionId::to_raw`]).
    pub fn from_raw(raw: u64) -> ConnectionId {
        ConnectionId {
            worker: (raw >> 56) as u32,
            slot: raw as u32,
            generation: ((raw >> 32) as u32) & Self::GENERATION_MASK,
        }
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.worker, self.slot, self.generation)
    }
}

/// Why a text is not a connection id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a connection id (WORKER-SLOT-GENERATION as `wsedgectl connections` prints it, e.g. 1-42-7)"
)]
pub struct ParseConnectionIdError {
    text: String,
}

impl FromStr for ConnectionId {
    type Err = ParseConnectionIdError;

    fn from_str(text: &str) -> Result<ConnectionId, ParseConnectionIdError> {
        let err = || ParseConnectionIdError {
            text: text.to_owned(),
        };
        // Digits only: `u32::from_str` would also take a leading `+`.
        let number = |part: &str| -> Result<u32, ParseConnectionIdError> {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            part.parse().map_err(|_| err())
        };
        let mut parts = text.split('-');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(w), Some(s), Some(g), None) => {
                let generation = number(g)?;
                if generation > Self::GENERATION_MASK {
                    return Err(err());
                }
                Ok(ConnectionId {
                    worker: number(w)?,
                    slot: number(s)?,
                    generation,
                })
            }
            (Some(raw), None, None, None)
                if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) =>
            {
                raw.parse::<u64>()
                    .map(ConnectionId::from_raw)
                    .map_err(|_| err())
            }
            _ => Err(err()),
        }
    }
}

impl Serialize for ConnectionId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ConnectionId {
    /// The text form, or the 64-bit integer of earlier builds.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ConnectionId, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Raw(u64),
        }
        match Repr::deserialize(d)? {
            Repr::Text(text) => text.parse().map_err(serde::de::Error::custom),
            Repr::Raw(raw) => Ok(ConnectionId::from_raw(raw)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip() {
        for (w, s, g) in [
            (0, 0, 0),
            (1, 42, 7),
            (1023, u32::MAX as usize, (1 << 24) - 1),
        ] {
            let id = ConnectionId::new(w, s, g);
            let text = id.to_string();
            assert_eq!(text.parse::<ConnectionId>(), Ok(id), "{text}");
            assert_eq!((id.worker(), id.slot(), id.generation()), (w, s, g));
        }
        assert_eq!(ConnectionId::new(1, 42, 7).to_string(), "1-42-7");
    }

    #[test]
    fn generation_keeps_24_bits() {
        assert_eq!(ConnectionId::new(0, 1, (1 << 24) + 5).generation(), 5);
    }

    #[test]
    fn raw_form_of_earlier_builds_is_accepted() {
        let id = ConnectionId::new(1, 42, 7);
        let raw = (1u64 << 56) | (7 << 32) | 42;
        assert_eq!(id.to_raw(), raw);
        assert_eq!(ConnectionId::from_raw(raw), id);
        assert_eq!(raw.to_string().parse::<ConnectionId>(), Ok(id));
        // The ids of the docs' first session: worker 0, slots 0.., generations 1...
        assert_eq!(
            "4294967296".parse::<ConnectionId>().map(|i| i.to_string()),
            Ok("0-0-1".to_owned())
        );
    }

    #[test]
    fn rejects_what_is_not_an_id() {
        for bad in [
            "",
            "-",
            "1-2",
            "1-2-3-4",
            "1--3",
            "a-2-3",
            "+1-2-3",
            "1-2-16777216",
            "1-2- 3",
            "4294967296-0-0",
            "18446744073709551616",
            "-5",
            "1.2.3",
            " 1-2-3",
        ] {
            let e = bad.parse::<ConnectionId>().expect_err(bad);
            assert!(e.to_string().contains("1-42-7"), "{e}");
        }
    }

    #[test]
    fn json_is_the_text_and_reads_either_form() {
        let id = ConnectionId::new(2, 9, 3);
        assert_eq!(serde_json::to_string(&id).expect("json"), "\"2-9-3\"");
        assert_eq!(
            serde_json::from_str::<ConnectionId>("\"2-9-3\"").expect("text"),
            id
        );
        let raw = id.to_raw().to_string();
        assert_eq!(serde_json::from_str::<ConnectionId>(&raw).expect("raw"), id);
        assert!(serde_json::from_str::<ConnectionId>("\"x\"").is_err());
        assert!(serde_json::from_str::<ConnectionId>("-1").is_err());
    }
}
