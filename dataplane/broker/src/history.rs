//! Channel histories in Redis Streams, for recovery (docs/broker.md, "Recovery"): the two
//! Lua scripts the Redis link runs, and the reading of a history read's reply.
//!
//! Keys of a channel `c` of a recoverable namespace (beside its pub/sub channel `<prefix>c`):
//! - `<prefix>history:c`, a stream: one entry per message, id `<offset>-0`, field `r` the
//!   plain record ([`crate::wire`]); trimmed to about `history_size` entries (`MAXLEN ~`),
//!   expires `history_ttl` after the last publication;
//! - `<prefix>history-meta:c`, a hash: `epoch` and `offset` (the last offset given), expires
//!   `meta_ttl` after the last publication.
//!
//! Both scripts run atomically in Redis, so an offset is given once, the stream and the
//! pub/sub record agree, and a read sees one instant. Where the meta is gone (never
//! published, expired, deleted) both start a new history: a new epoch (the link's
//! proposal), offset 0, and the old stream deleted. A client holding the old epoch is told
//! `cannot_recover` (`epoch`), never given messages of another history.
//!
//! Turning a reply into an answer is pure ([`read_reply`], then
//! [`wsedge_proto::recovery::decide`]); sending the scripts is the link's (`redis.rs`).

use std::sync::Arc;

use wsedge_proto::recovery::{Recovered, is_valid_epoch};

use crate::wire;

/// The lines both scripts start with: the channel's epoch, or, where its meta is gone, a new
/// history (the proposed epoch, offset 0, the old stream deleted, the meta's expiry set).
///
/// KEYS: meta, stream. ARGV\[1\]: proposed epoch, ARGV\[2\]: meta TTL (ms).
macro_rules! epoch_lines {
    () => {
        r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
"
    };
}

/// Publishes a record on a recoverable channel: gives it the next offset, appends it to the
/// stream, refreshes both expiries, and publishes it behind its position.
///
/// KEYS: meta, stream. ARGV: proposed epoch, meta TTL (ms), record, history size, history
/// TTL (ms), pub/sub channel. Returns the offset.
pub const PUBLISH_SCRIPT: &str = concat!(
    epoch_lines!(),
    r"local offset = string.format('%d', redis.call('HINCRBY', KEYS[1], 'offset', 1))
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], offset .. '-0', 'r', ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[6], 'W\2' .. offset .. ':' .. epoch .. '\n' .. ARGV[3])
return offset
"
);

/// Reads a channel's history: its epoch, its top offset, and (when the client's epoch is
/// the channel's and it is not too far behind) the entries from `first` on.
///
/// KEYS: meta, stream. ARGV: proposed epoch, meta TTL (ms), the client's epoch (or ``),
/// the first offset wanted (or ``), the most entries wanted. Returns
/// `{epoch, top, entries}` (entries as `XRANGE` gives them).
pub const READ_SCRIPT: &str = concat!(
    epoch_lines!(),
    r"local top = redis.call('HGET', KEYS[1], 'offset')
local entries = {}
if ARGV[4] ~= '' and epoch == ARGV[3] then
  local first = tonumber(ARGV[4])
  local last = tonumber(top)
  if first <= last and last - first < tonumber(ARGV[5]) then
    entries = redis.call('XRANGE', KEYS[2], ARGV[4] .. '-0', '+', 'COUNT', last - first + 1)
  end
end
return {epoch, top, entries}
"
);

/// A script as the link runs it: by its SHA1 (`EVALSHA`), loaded again (`SCRIPT LOAD`)
/// when Redis answers `NOSCRIPT` (a restarted or flushed Redis has no scripts), so the
/// script's text crosses the network once per connection rather than with every call.
#[derive(Debug, Clone)]
pub struct Script {
    pub code: &'static str,
    /// Lower-case hex, as Redis names scripts.
    pub sha: String,
}

impl Script {
    pub fn new(code: &'static str) -> Script {
        use sha1::Digest;
        use std::fmt::Write;
        let digest = sha1::Sha1::digest(code.as_bytes());
        let mut sha = String::with_capacity(40);
        for b in digest {
            let _ = write!(sha, "{b:02x}");
        }
        Script { code, sha }
    }

    /// `EVALSHA <sha> 2 <meta> <stream>`, for the arguments to follow.
    pub fn call(&self, meta: String, stream: String) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.sha).arg(2).arg(meta).arg(stream);
        cmd
    }

    /// `SCRIPT LOAD`.
    pub fn load(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("SCRIPT");
        cmd.arg("LOAD").arg(self.code);
        cmd
    }
}

/// The link's two scripts, named once per backend.
#[derive(Debug, Clone)]
pub struct Scripts {
    pub publish: Script,
    pub read: Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        Scripts {
            publish: Script::new(PUBLISH_SCRIPT),
            read: Script::new(READ_SCRIPT),
        }
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts::new()
    }
}

/// Whether Redis did not know a script (`NOSCRIPT`): load it and call again.
pub fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

/// The stream key of `channel`.
pub fn stream_key(prefix: &str, channel: &str) -> String {
    format!("{prefix}history:{channel}")
}

/// The meta key of `channel`.
pub fn meta_key(prefix: &str, channel: &str) -> String {
    format!("{prefix}history-meta:{channel}")
}

/// An epoch nobody had: the time (Unix microseconds) and some randomness, in hex.
pub fn propose_epoch(unix_us: u64, random: u64) -> String {
    format!("{unix_us:x}{:08x}", random as u32)
}

/// A reply that is not what [`READ_SCRIPT`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadReply(pub &'static str);

fn bytes(v: &redis::Value) -> Option<&[u8]> {
    match v {
        redis::Value::BulkString(b) => Some(b),
        redis::Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn text(v: &redis::Value) -> Option<&str> {
    bytes(v).and_then(|b| std::str::from_utf8(b).ok())
}

fn array(v: &redis::Value) -> Option<&[redis::Value]> {
    match v {
        redis::Value::Array(a) => Some(a),
        _ => None,
    }
}

/// What a history read returned: the epoch, the top offset, and the entries (each decoded
/// as the channel's record; an entry that does not decode is left out, which the decision
/// sees as a hole: `trimmed`).
pub fn read_reply(
    channel: &Arc<str>,
    reply: &redis::Value,
) -> Result<(String, u64, Vec<Recovered>), BadReply> {
    let [epoch, top, entries] = array(reply).ok_or(BadReply("not an array"))? else {
        return Err(BadReply("not three items"));
    };
    let epoch = text(epoch)
        .filter(|e| is_valid_epoch(e))
        .ok_or(BadReply("epoch"))?;
    let top: u64 = match top {
        redis::Value::Int(n) => u64::try_from(*n).ok(),
        other => text(other).and_then(|t| t.parse().ok()),
    }
    .ok_or(BadReply("offset"))?;
    let mut out = Vec::new();
    for entry in array(entries).ok_or(BadReply("entries"))? {
        let Some([id, fields]) = array(entry) else {
            return Err(BadReply("entry"));
        };
        let offset = text(id)
            .and_then(|id| id.strip_suffix("-0"))
            .and_then(|o| o.parse::<u64>().ok())
            .ok_or(BadReply("entry id"))?;
        let record = array(fields)
            .and_then(|f| {
                f.chunks(2)
                    .find(|kv| kv.len() == 2 && bytes(&kv[0]) == Some(b"r"))
            })
            .and_then(|kv| bytes(&kv[1]));
        let Some(Ok((message, _, _))) = record.map(|r| wire::decode_at(channel, r)) else {
            continue;
        };
        out.push(Recovered {
            offset,
            route: message.route,
            payload: message.payload,
        });
    }
    Ok((epoch.to_owned(), top, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;
    use redis::Value;
    use wsedge_proto::function::Payload;

    fn bulk(b: &[u8]) -> Value {
        Value::BulkString(b.to_vec())
    }

    fn record(text: &str) -> Vec<u8> {
        let m = Message {
            route: None,
            channel: Arc::from("chat:a"),
            payload: Arc::new(Payload::Text(text.into())),
            skip: None,
            host: 1,
            position: None,
        };
        wire::encode_at(&m, 1, None)
    }

    fn entry(id: &str, rec: &[u8]) -> Value {
        Value::Array(vec![
            bulk(id.as_bytes()),
            Value::Array(vec![bulk(b"r"), bulk(rec)]),
        ])
    }

    #[test]
    fn a_read_reply_is_read_and_broken_ones_are_refused() {
        let channel: Arc<str> = Arc::from("chat:a");
        let reply = Value::Array(vec![
            bulk(b"ep-1"),
            bulk(b"7"),
            Value::Array(vec![
                entry("6-0", &record("six")),
                entry("7-0", b"not a record"),
            ]),
        ]);
        let (epoch, top, entries) = read_reply(&channel, &reply).expect("reads");
        assert_eq!((epoch.as_str(), top), ("ep-1", 7));
        assert_eq!(entries.len(), 1, "the broken entry is left out");
        assert_eq!(entries[0].offset, 6);
        assert_eq!(*entries[0].payload, Payload::Text("six".into()));
        let empty = Value::Array(vec![bulk(b"e"), Value::Int(0), Value::Array(vec![])]);
        assert_eq!(read_reply(&channel, &empty).expect("reads").1, 0);
        for bad in [
            Value::Nil,
            Value::Array(vec![bulk(b"e"), bulk(b"1")]),
            Value::Array(vec![bulk(b"bad epoch"), bulk(b"1"), Value::Array(vec![])]),
            Value::Array(vec![bulk(b"e"), bulk(b"-1"), Value::Array(vec![])]),
            Value::Array(vec![bulk(b"e"), bulk(b"1"), Value::Array(vec![bulk(b"x")])]),
            Value::Array(vec![
                bulk(b"e"),
                bulk(b"1"),
                Value::Array(vec![entry("1-1", &record("x"))]),
            ]),
        ] {
            assert!(read_reply(&channel, &bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn scripts_are_named_by_their_sha1_and_share_their_epoch_lines() {
        // SHA1("") and SHA1("abc"), FIPS 180 test vectors.
        assert_eq!(
            Script::new("").sha,
            "da39a3ee5e6b4b0d3255bfef95601890afd80709"
        );
        assert_eq!(
            Script::new("abc").sha,
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        let prologue = epoch_lines!();
        assert!(PUBLISH_SCRIPT.starts_with(prologue) && READ_SCRIPT.starts_with(prologue));
        assert_ne!(
            Script::new(PUBLISH_SCRIPT).sha,
            Script::new(READ_SCRIPT).sha
        );
    }

    #[test]
    fn proposed_epochs_are_epochs() {
        let e = propose_epoch(1_765_000_000_000_000, u64::MAX);
        assert!(is_valid_epoch(&e), "{e}");
        assert_ne!(e, propose_epoch(1_765_000_000_000_000, 1));
    }
}
