//! How a channel message travels through the broker: one binary record per publication,
//! the broker's payload on the channel's subject.
//!
//! ```text
//! 0      'W' (0x57), then the format version (1)
//! 2      u64 LE  origin host id
//! 10     u64 LE  the origin's sequence number (per host, increasing)
//! 18     u8      flags: bit 0 a route follows, bit 1 a skip key follows, bit 2 a time
//! 19     u8      payload kind: 0 text, 1 binary, 2 JSON
//! 20     [u16 LE length, route bytes]   if bit 0
//!        [u64 LE skip key]              if bit 1
//!        [u64 LE publication time]      if bit 2 (Unix microseconds, the origin's clock)
//!        payload bytes, to the end
//! ```
//!
//! The channel is not in the record: it is the subject the record arrives on. Anything else
//! on a subject of ours (another program publishing there, a newer format) is refused by
//! [`decode`] and counted; it never reaches a subscriber.
//!
//! A channel of a recoverable namespace (docs/broker.md, "Recovery") is published by a Redis
//! script that gives the message its offset in the channel's history and publishes the
//! record behind its position, in ASCII (Lua builds it):
//!
//! ```text
//! 0      'W' (0x57), then 2 (a positioned record)
//! 2      <offset, decimal> ':' <epoch> '\n'
//!        the record above
//! ```
//!
//! The history itself (a Redis stream) keeps the plain record; the entry's id is the offset.

use std::sync::Arc;

use wsedge_proto::function::Payload;
use wsedge_proto::recovery::{MAX_EPOCH_LEN, Position, is_valid_epoch};

use crate::Message;

const MAGIC: u8 = b'W';
const VERSION: u8 = 1;
/// The second byte of a positioned record.
pub const POSITIONED: u8 = 2;
const HEADER: usize = 20;
const FLAG_ROUTE: u8 = 1;
const FLAG_SKIP: u8 = 2;
const FLAG_TIME: u8 = 4;

/// Why a record was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecodeError {
    /// Shorter than its header or than a length it announces.
    Truncated,
    /// Not a wsedge record, or a format version this build does not read.
    Foreign,
    /// A text, JSON or route field that is not UTF-8, or an unknown payload kind.
    Malformed,
}

/// Encodes `message` (its channel excepted) as the record the broker carries.
pub fn encode(message: &Message, seq: u64) -> Vec<u8> {
    encode_at(message, seq, None)
}

/// [`encode`] with the publication time (Unix microseconds), from which receivers measure
/// the lag.
pub fn encode_at(message: &Message, seq: u64, published_us: Option<u64>) -> Vec<u8> {
    let (kind, body): (u8, &[u8]) = match &*message.payload {
        Payload::Text(t) => (0, t.as_bytes()),
        Payload::Binary(b) => (1, b),
        Payload::Json(j) => (2, j.as_bytes()),
    };
    let route = message.route.as_deref().map(str::as_bytes);
    let mut out = Vec::with_capacity(HEADER + 10 + route.map_or(0, |r| r.len() + 2) + body.len());
    out.push(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&message.host.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    let mut flags = 0;
    if route.is_some() {
        flags |= FLAG_ROUTE;
    }
    if message.skip.is_some() {
        flags |= FLAG_SKIP;
    }
    if published_us.is_some() {
        flags |= FLAG_TIME;
    }
    out.push(flags);
    out.push(kind);
    if let Some(route) = route {
        // Route names are short (the config limits them); a longer one is cut, never wraps.
        let len = route.len().min(usize::from(u16::MAX));
        out.extend_from_slice(&(len as u16).to_le_bytes());
        out.extend_from_slice(&route[..len]);
    }
    if let Some(skip) = message.skip {
        out.extend_from_slice(&skip.to_le_bytes());
    }
    if let Some(t) = published_us {
        out.extend_from_slice(&t.to_le_bytes());
    }
    out.extend_from_slice(body);
    out
}

/// Reads a record that arrived on `channel`: the message and its origin's sequence number.
pub fn decode(channel: &Arc<str>, bytes: &[u8]) -> Result<(Message, u64), DecodeError> {
    decode_at(channel, bytes).map(|(m, seq, _)| (m, seq))
}

/// [`decode`], with the publication time if the record has one.
pub fn decode_at(
    channel: &Arc<str>,
    bytes: &[u8],
) -> Result<(Message, u64, Option<u64>), DecodeError> {
    if bytes.len() < 2 || bytes[0] != MAGIC || bytes[1] != VERSION {
        return Err(DecodeError::Foreign);
    }
    if bytes.len() < HEADER {
        return Err(DecodeError::Truncated);
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let host = u64_at(2);
    let seq = u64_at(10);
    let flags = bytes[18];
    let kind = bytes[19];
    let mut at = HEADER;
    let route = if flags & FLAG_ROUTE != 0 {
        let len_end = at + 2;
        let len = bytes
            .get(at..len_end)
            .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
            .ok_or(DecodeError::Truncated)?;
        let text = bytes
            .get(len_end..len_end + len)
            .ok_or(DecodeError::Truncated)?;
        at = len_end + len;
        Some(Arc::from(
            std::str::from_utf8(text).map_err(|_| DecodeError::Malformed)?,
        ))
    } else {
        None
    };
    // An optional u64 field, present when its flag is set.
    let field = |flag: u8, at: &mut usize| -> Result<Option<u64>, DecodeError> {
        if flags & flag == 0 {
            return Ok(None);
        }
        if bytes.len() < *at + 8 {
            return Err(DecodeError::Truncated);
        }
        let value = u64_at(*at);
        *at += 8;
        Ok(Some(value))
    };
    let skip = field(FLAG_SKIP, &mut at)?;
    let published_us = field(FLAG_TIME, &mut at)?;
    let body = &bytes[at..];
    let text = || {
        std::str::from_utf8(body)
            .map(str::to_owned)
            .map_err(|_| DecodeError::Malformed)
    };
    let payload = match kind {
        0 => Payload::Text(text()?),
        1 => Payload::Binary(body.to_vec()),
        2 => Payload::Json(text()?),
        _ => return Err(DecodeError::Malformed),
    };
    Ok((
        Message {
            route,
            channel: Arc::clone(channel),
            payload: Arc::new(payload),
            skip,
            host,
            position: None,
        },
        seq,
        published_us,
    ))
}

/// Reads a record that arrived on `channel`, positioned or not: the message (with its
/// position, if it has one), its origin's sequence number and its publication time.
pub fn decode_any(
    channel: &Arc<str>,
    bytes: &[u8],
) -> Result<(Message, u64, Option<u64>), DecodeError> {
    if bytes.len() < 2 || bytes[0] != MAGIC || bytes[1] != POSITIONED {
        return decode_at(channel, bytes);
    }
    let rest = &bytes[2..];
    let end = rest
        .iter()
        .take(20 + 1 + MAX_EPOCH_LEN + 1)
        .position(|&b| b == b'\n')
        .ok_or(DecodeError::Truncated)?;
    let head = std::str::from_utf8(&rest[..end]).map_err(|_| DecodeError::Malformed)?;
    let (offset, epoch) = head.split_once(':').ok_or(DecodeError::Malformed)?;
    let offset: u64 = offset.parse().map_err(|_| DecodeError::Malformed)?;
    if !offset.to_string().eq(offset_text(head)) || !is_valid_epoch(epoch) {
        return Err(DecodeError::Malformed);
    }
    let (mut message, seq, time) = decode_at(channel, &rest[end + 1..])?;
    message.position = Some(Position {
        offset,
        epoch: Arc::from(epoch),
    });
    Ok((message, seq, time))
}

/// The offset part of `<offset>:<epoch>` (digits only: no sign, no leading zero).
fn offset_text(head: &str) -> &str {
    head.split_once(':').map_or(head, |(o, _)| o)
}

/// A positioned record, as the Redis script builds it (for tests and tools).
pub fn encode_positioned(record: &[u8], position: &Position) -> Vec<u8> {
    let mut out = vec![MAGIC, POSITIONED];
    out.extend_from_slice(format!("{position}\n").as_bytes());
    out.extend_from_slice(record);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(route: Option<&str>, skip: Option<u64>, payload: Payload) -> Message {
        Message {
            route: route.map(Arc::from),
            channel: Arc::from("news"),
            payload: Arc::new(payload),
            skip,
            host: 0x0102_0304_0506_0708,
            position: None,
        }
    }

    #[test]
    fn positioned_records_round_trip_and_refuse_bad_heads() {
        let channel: Arc<str> = Arc::from("chat:1");
        let m = message(Some("r"), None, Payload::Text("hi".into()));
        let record = encode_at(&m, 5, Some(77));
        let position = Position {
            offset: 12,
            epoch: Arc::from("Ab-9"),
        };
        let bytes = encode_positioned(&record, &position);
        assert!(bytes.starts_with(b"W\x0212:Ab-9\n"));
        let (back, seq, t) = decode_any(&channel, &bytes).expect("decodes");
        assert_eq!((seq, t), (5, Some(77)));
        assert_eq!(back.position, Some(position));
        assert_eq!(back.payload, m.payload);
        // A plain record passes through with no position.
        assert_eq!(
            decode_any(&channel, &record).expect("plain").0.position,
            None
        );
        for bad in [
            &b"W\x02"[..],
            b"W\x0212:Ab-9",
            b"W\x0212Ab\n",
            b"W\x02:e\n",
            b"W\x02012:e\n",
            b"W\x02+12:e\n",
            b"W\x0212:e e\n",
            b"W\x0212:\n",
            b"W\x0299999999999999999999:e\n",
        ] {
            let mut b = bad.to_vec();
            b.extend_from_slice(&record);
            assert!(
                decode_any(&channel, &b).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Cut anywhere: refused, never a panic.
        for len in 0..bytes.len() - 3 {
            assert!(decode_any(&channel, &bytes[..len]).is_err(), "cut at {len}");
        }
    }

    #[test]
    fn records_round_trip() {
        let channel: Arc<str> = Arc::from("news");
        for m in [
            message(None, None, Payload::Text("héllo".into())),
            message(Some("live"), Some(77), Payload::Binary(vec![0, 255, 3])),
            message(Some(""), None, Payload::Json("{\"a\":[1]}".into())),
            message(None, Some(u64::MAX), Payload::Text(String::new())),
        ] {
            let bytes = encode(&m, 42);
            let (back, seq) = decode(&channel, &bytes).expect("decodes");
            assert_eq!(seq, 42);
            assert_eq!(back.route, m.route);
            assert_eq!(back.skip, m.skip);
            assert_eq!(back.host, m.host);
            assert_eq!(back.payload, m.payload);
            assert_eq!(&*back.channel, "news");
        }
    }

    #[test]
    fn the_publication_time_round_trips() {
        let channel: Arc<str> = Arc::from("news");
        let m = message(Some("r"), Some(3), Payload::Text("x".into()));
        let bytes = encode_at(&m, 9, Some(1_700_000_000_123_456));
        let (back, seq, t) = decode_at(&channel, &bytes).expect("decodes");
        assert_eq!((seq, t), (9, Some(1_700_000_000_123_456)));
        assert_eq!(back.payload, m.payload);
        assert_eq!(back.skip, Some(3));
        assert_eq!(
            decode_at(&channel, &encode(&m, 9)).expect("decodes").2,
            None
        );
        for len in 0..bytes.len() - 1 {
            assert!(decode_at(&channel, &bytes[..len]).is_err(), "cut at {len}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_record() {
        let channel: Arc<str> = Arc::from("c");
        assert_eq!(decode(&channel, b"").err(), Some(DecodeError::Foreign));
        assert_eq!(decode(&channel, b"hello").err(), Some(DecodeError::Foreign));
        assert_eq!(
            decode(&channel, b"W\x02rest").err(),
            Some(DecodeError::Foreign)
        );
        assert_eq!(
            decode(&channel, b"W\x01short").err(),
            Some(DecodeError::Truncated)
        );
        let good = encode(
            &message(Some("route"), Some(1), Payload::Text("x".into())),
            1,
        );
        // Every cut inside the header and the route/skip fields is refused, never a panic.
        for len in 0..HEADER + 2 + 5 + 8 {
            assert!(decode(&channel, &good[..len]).is_err(), "cut at {len}");
        }
        let mut bad_kind = good.clone();
        bad_kind[19] = 9;
        assert_eq!(
            decode(&channel, &bad_kind).err(),
            Some(DecodeError::Malformed)
        );
        let mut bad_text = encode(&message(None, None, Payload::Text("x".into())), 1);
        *bad_text.last_mut().expect("payload") = 0xff;
        assert_eq!(
            decode(&channel, &bad_text).err(),
            Some(DecodeError::Malformed)
        );
        // Arbitrary bytes after a valid header never panic.
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for len in 0..400usize {
            let mut bytes = vec![MAGIC, VERSION];
            bytes.extend((0..len).map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            }));
            let _ = decode(&channel, &bytes);
        }
    }
}
