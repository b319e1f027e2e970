//! Recovery of missed channel messages (docs/broker.md, "Recovery"): the pure parts.
//!
//! A channel of a recoverable namespace keeps its recent messages in the broker (Redis
//! Streams), each at an *offset* (1, 2, 3, … per channel) within an *epoch* (a name for
//! one history: a history that was lost and started again has a new epoch). Every message of
//! such a channel carries its position in the `wsedge.v1` envelope. A client that comes back
//! asks for what it missed with `?since=<offset>:<epoch>`, the position of the last message
//! it got.
//!
//! - [`query_since`] reads `since` from the request's query (malformed: a 400 at the
//!   handshake);
//! - [`decide`] turns what the broker returned (the epoch, the top offset, the entries after
//!   `since`) into an [`Answer`]: the missed messages, only a position, or why they cannot
//!   be recovered;
//! - [`Merge`] is one subscriber's switch from history to live: live messages that arrive
//!   while its history is read are held, and released after the history with every offset
//!   already delivered dropped, so the client sees each offset once, in order, with no hole
//!   at the switch;
//! - the notices' envelopes ([`answer_notice`]) and the positioned message envelope
//!   ([`positioned_frame`]).
//!
//! Pure, like the rest of the crate: no I/O, no clock.

use std::sync::Arc;

use crate::channels::{Published, message_envelope};
use crate::endpoint::frame_message;
use crate::frame::OpCode;
use crate::function::Payload;

/// Longest epoch, in bytes.
pub const MAX_EPOCH_LEN: usize = 64;

/// Whether `epoch` is an epoch: 1 to 64 of `A-Z a-z 0-9 _ -` (needs no escaping anywhere).
pub fn is_valid_epoch(epoch: &str) -> bool {
    (1..=MAX_EPOCH_LEN).contains(&epoch.len())
        && epoch
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// Where a message sits in its channel's history.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    pub offset: u64,
    pub epoch: Arc<str>,
}

/// The position a client asks to recover from: the last message it received.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Since {
    pub offset: u64,
    pub epoch: String,
}

/// `<offset>:<epoch>`: what a client sends as `since`, and the head of a positioned record.
impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.offset, self.epoch)
    }
}

/// `<offset>:<epoch>`, which [`parse_since`] reads back.
impl std::fmt::Display for Since {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.offset, self.epoch)
    }
}

/// A `since` that is not `<offset>:<epoch>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[error("since must be <offset>:<epoch> (a decimal offset, an epoch of 1 to 64 A-Z a-z 0-9 _ -)")]
pub struct SinceError;

/// Reads `<offset>:<epoch>` (`:` may be written `%3A`, as `URLSearchParams` writes it).
pub fn parse_since(value: &str) -> Result<Since, SinceError> {
    let (offset, epoch) = if let Some(split) = value.split_once(':') {
        split
    } else {
        let at = value
            .find("%3A")
            .or_else(|| value.find("%3a"))
            .ok_or(SinceError)?;
        (&value[..at], &value[at + 3..])
    };
    let digits =
        !offset.is_empty() && offset.len() <= 20 && offset.bytes().all(|b| b.is_ascii_digit());
    if !digits || !is_valid_epoch(epoch) {
        return Err(SinceError);
    }
    Ok(Since {
        offset: offset.parse().map_err(|_| SinceError)?,
        epoch: epoch.to_owned(),
    })
}

/// The `since` parameter of a request target (`/ch/lobby?since=5:abc`): `Ok(None)` when
/// there is none; an error when it is malformed, empty or given twice.
pub fn query_since(target: &str) -> Result<Option<Since>, SinceError> {
    target
        .split_once('?')
        .map_or(Ok(None), |(_, query)| since_of_query(query))
}

/// The `since` parameter of a query string (what follows the `?`); see [`query_since`].
pub fn since_of_query(query: &str) -> Result<Option<Since>, SinceError> {
    let mut found = None;
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "since" {
            continue;
        }
        if found.is_some() {
            return Err(SinceError);
        }
        found = Some(parse_since(value)?);
    }
    Ok(found)
}

/// Why missed messages cannot be recovered: the client resyncs from the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// The channel's history is another one than the client's (it was lost, expired or
    /// deleted, and started again).
    Epoch,
    /// The offset is no longer kept (trimmed by the size or time bound), or past the top.
    Trimmed,
    /// The history could not be read (the broker is unreachable from this host).
    Unavailable,
}

impl Failure {
    /// The stable `reason` string of the `cannot_recover` notice.
    pub const fn as_str(self) -> &'static str {
        match self {
            Failure::Epoch => "epoch",
            Failure::Trimmed => "trimmed",
            Failure::Unavailable => "unavailable",
        }
    }
}

/// One message read back from a channel's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub offset: u64,
    /// The broadcast route it was published on (`None`: every route, the publish API).
    pub route: Option<Arc<str>>,
    pub payload: Arc<Payload>,
}

/// What a subscriber is told once its channel's history was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// No `since` was given: where the channel's history stands now.
    Position(Position),
    /// Every message after `since`, in order; `position` is the last one's (the top).
    Recovered {
        position: Position,
        missed: Vec<Recovered>,
    },
    /// Cannot recover; `position` is where the history stands now (if it could be read):
    /// the client resyncs and continues from there.
    Failed {
        failure: Failure,
        position: Option<Position>,
    },
}

impl Answer {
    /// The position after the answer, if known.
    pub fn position(&self) -> Option<&Position> {
        match self {
            Answer::Position(p) | Answer::Recovered { position: p, .. } => Some(p),
            Answer::Failed { position, .. } => position.as_ref(),
        }
    }
}

/// What the broker holds for a channel, read at one instant: its epoch, its top offset (the
/// last one given), and the entries after `since` (asked only when it may recover).
pub fn decide(
    since: Option<&Since>,
    epoch: &str,
    top: u64,
    entries: Vec<Recovered>,
    max_missed: u64,
) -> Answer {
    let position = Position {
        offset: top,
        epoch: Arc::from(epoch),
    };
    let Some(since) = since else {
        return Answer::Position(position);
    };
    let failed = |failure| Answer::Failed {
        failure,
        position: Some(position.clone()),
    };
    if since.epoch != epoch {
        return failed(Failure::Epoch);
    }
    if since.offset > top || top - since.offset > max_missed {
        return failed(Failure::Trimmed);
    }
    // Exactly since+1 ..= top, each once, in order: anything else lost some.
    let contiguous = entries.len() as u64 == top - since.offset
        && entries
            .iter()
            .zip(since.offset + 1..)
            .all(|(e, want)| e.offset == want);
    if !contiguous {
        return failed(Failure::Trimmed);
    }
    Answer::Recovered {
        position,
        missed: entries,
    }
}

/// Appends `s` as a JSON string.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail, and a &str always serializes.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn push_position(out: &mut Vec<u8>, position: &Position) {
    out.extend_from_slice(br#","offset":"#);
    out.extend_from_slice(position.offset.to_string().as_bytes());
    out.extend_from_slice(br#","epoch":"#);
    push_json_str(out, &position.epoch);
}

/// The v1 message envelope with the message's position:
/// `{"type":"message","channel":"c","data":…,"offset":5,"epoch":"e"}`.
pub fn positioned_envelope(channel: &str, msg: Published<'_>, position: &Position) -> Vec<u8> {
    let mut out = message_envelope(channel, msg);
    out.pop();
    push_position(&mut out, position);
    out.push(b'}');
    out
}

/// [`positioned_envelope`] as one text frame (or the plain envelope's when `position` is
/// `None`).
pub fn positioned_frame(channel: &str, msg: Published<'_>, position: Option<&Position>) -> Vec<u8> {
    let envelope = match position {
        Some(p) => positioned_envelope(channel, msg, p),
        None => message_envelope(channel, msg),
    };
    let mut out = Vec::with_capacity(envelope.len() + 10);
    frame_message(OpCode::Text, &envelope, &mut out);
    out
}

/// The notice a subscriber gets before anything else of its channel once its history was
/// read (JSON text, unframed):
///
/// - `{"type":"position","channel":"c","offset":7,"epoch":"e"}` (no `since`);
/// - `{"type":"recovered","channel":"c","offset":9,"epoch":"e","missed":2}`, then the 2
///   missed messages;
/// - `{"type":"cannot_recover","channel":"c","reason":"trimmed","offset":9,"epoch":"e"}`
///   (no position when `reason` is `unavailable`).
pub fn answer_notice(channel: &str, answer: &Answer, missed: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + channel.len());
    let kind: &[u8] = match answer {
        Answer::Position(_) => b"position",
        Answer::Recovered { .. } => b"recovered",
        Answer::Failed { .. } => b"cannot_recover",
    };
    out.extend_from_slice(br#"{"type":""#);
    out.extend_from_slice(kind);
    out.extend_from_slice(br#"","channel":"#);
    push_json_str(&mut out, channel);
    if let Answer::Failed { failure, .. } = answer {
        out.extend_from_slice(br#","reason":""#);
        out.extend_from_slice(failure.as_str().as_bytes());
        out.push(b'"');
    }
    if let Some(position) = answer.position() {
        push_position(&mut out, position);
    }
    if let Answer::Recovered { .. } = answer {
        out.extend_from_slice(br#","missed":"#);
        out.extend_from_slice(missed.to_string().as_bytes());
    }
    out.push(b'}');
    out
}

/// A message for one subscriber, with its position if its channel has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub position: Option<Position>,
    pub payload: Arc<Payload>,
}

/// What to do with a live message ([`Merge::on_live`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Live {
    /// Send it.
    Deliver,
    /// Held until the history is read.
    Held,
    /// Already delivered (or before the position the client was given): not sent again.
    Duplicate,
    /// More held than the bound: the subscriber is too far behind (close it, 1013).
    Overflow,
}

/// What a subscriber is sent once its answer arrived, in order ([`Merge::on_answer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A notice (JSON text, unframed; see [`answer_notice`]).
    Notice(Vec<u8>),
    /// A message to send with its position.
    Message(Item),
}

#[derive(Debug)]
enum State {
    /// The history is being read: live messages are held (`bytes`: their payloads' size).
    Reading { held: Vec<Item>, bytes: usize },
    /// Live: each position after `last` is sent.
    Live,
}

/// One subscriber's channel position and its switch from history to live (see the module
/// docs). Offsets only grow within an epoch; a message of another epoch (the history
/// started again) is always sent, and becomes the position.
#[derive(Debug)]
pub struct Merge {
    state: State,
    /// The position of the last message sent (or told in the notice).
    last: Option<Position>,
    max_held: usize,
}

fn payload_len(payload: &Payload) -> usize {
    match payload {
        Payload::Text(t) | Payload::Json(t) => t.len(),
        Payload::Binary(b) => b.len(),
    }
}

impl Merge {
    /// A subscriber whose history is being read; at most `max_held` bytes of live messages
    /// are held meanwhile.
    pub fn reading(max_held: usize) -> Merge {
        Merge {
            state: State::Reading {
                held: Vec::new(),
                bytes: 0,
            },
            last: None,
            max_held,
        }
    }

    /// Whether the history is still being read.
    pub fn is_reading(&self) -> bool {
        matches!(self.state, State::Reading { .. })
    }

    /// The position of the last message sent.
    pub fn last(&self) -> Option<&Position> {
        self.last.as_ref()
    }

    /// Whether `position` comes after what was sent (and makes it the last if so).
    fn advance(&mut self, position: Option<&Position>) -> bool {
        let Some(p) = position else {
            return true;
        };
        if let Some(last) = &self.last
            && last.epoch == p.epoch
            && p.offset <= last.offset
        {
            return false;
        }
        self.last = Some(p.clone());
        true
    }

    /// A live message of the channel arrived.
    pub fn on_live(&mut self, item: &Item) -> Live {
        match &mut self.state {
            State::Reading { held, bytes } => {
                *bytes = bytes.saturating_add(payload_len(&item.payload));
                if *bytes > self.max_held {
                    return Live::Overflow;
                }
                held.push(item.clone());
                Live::Held
            }
            State::Live => {
                if self.advance(item.position.as_ref()) {
                    Live::Deliver
                } else {
                    Live::Duplicate
                }
            }
        }
    }

    /// The history was read: what to send now, in order. `route` is the subscriber's
    /// broadcast route (messages of another route's channel of that name are skipped).
    /// Afterwards the subscriber is live. An answer when already live changes nothing.
    pub fn on_answer(&mut self, channel: &str, route: &str, answer: &Answer) -> Vec<Step> {
        let held = match std::mem::replace(&mut self.state, State::Live) {
            State::Reading { held, .. } => held,
            State::Live => return Vec::new(),
        };
        let mut steps = Vec::new();
        let mut missed = Vec::new();
        if let Answer::Recovered { missed: m, .. } = answer {
            missed = m
                .iter()
                .filter(|r| r.route.as_deref().is_none_or(|r| r == route))
                .collect();
        }
        steps.push(Step::Notice(answer_notice(channel, answer, missed.len())));
        let known = answer.position().cloned();
        if let Answer::Recovered { position, .. } = answer {
            for r in missed {
                let p = Position {
                    offset: r.offset,
                    epoch: Arc::clone(&position.epoch),
                };
                steps.push(Step::Message(Item {
                    position: Some(p),
                    payload: Arc::clone(&r.payload),
                }));
            }
        }
        self.last = known.clone();
        for item in held {
            // Without a position, a held message was published here while the broker was
            // out of reach: when the answer has a position, the broker was reachable after
            // it, so it is in the history (at or before the position): not sent again.
            if item.position.is_none() && known.is_some() {
                continue;
            }
            if self.advance(item.position.as_ref()) {
                steps.push(Step::Message(item));
            }
        }
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(offset: u64, epoch: &str) -> Position {
        Position {
            offset,
            epoch: Arc::from(epoch),
        }
    }

    fn rec(offset: u64, text: &str) -> Recovered {
        Recovered {
            offset,
            route: None,
            payload: Arc::new(Payload::Text(text.into())),
        }
    }

    fn item(offset: Option<u64>, epoch: &str, text: &str) -> Item {
        Item {
            position: offset.map(|o| pos(o, epoch)),
            payload: Arc::new(Payload::Text(text.into())),
        }
    }

    fn since(offset: u64, epoch: &str) -> Since {
        Since {
            offset,
            epoch: epoch.into(),
        }
    }

    /// The steps as readable strings: notices' JSON, messages as `offset=text`.
    fn show(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match s {
                Step::Notice(n) => String::from_utf8(n.clone()).expect("utf-8"),
                Step::Message(i) => {
                    let text = match &*i.payload {
                        Payload::Text(t) => t.clone(),
                        other => format!("{other:?}"),
                    };
                    match &i.position {
                        Some(p) => format!("{}={text}", p.offset),
                        None => format!("-={text}"),
                    }
                }
            })
            .collect()
    }

    #[test]
    fn since_parses_and_refuses() {
        assert_eq!(parse_since("5:abc"), Ok(since(5, "abc")));
        assert_eq!(parse_since("0:A-b_9"), Ok(since(0, "A-b_9")));
        assert_eq!(parse_since("12%3Aef"), Ok(since(12, "ef")));
        assert_eq!(parse_since("12%3aef"), Ok(since(12, "ef")));
        // What Display writes reads back (a leading zero is read, never written).
        assert_eq!(parse_since("007:e"), Ok(since(7, "e")));
        assert_eq!(since(7, "e").to_string(), "7:e");
        let top = since(u64::MAX, "A-b_9");
        assert_eq!(parse_since(&top.to_string()), Ok(top));
        let long = "e".repeat(64);
        assert_eq!(parse_since(&format!("1:{long}")), Ok(since(1, &long)));
        for bad in [
            "",
            ":",
            "5",
            "5:",
            ":abc",
            "-1:abc",
            "+1:abc",
            "1.5:abc",
            " 1:abc",
            "1:a b",
            "1:a:b",
            "1:a%20",
            "18446744073709551616:abc",
            "99999999999999999999999:a",
            &format!("1:{long}e"),
            "1:é",
        ] {
            assert_eq!(parse_since(bad), Err(SinceError), "{bad:?}");
        }
        assert_eq!(
            parse_since("18446744073709551615:a").map(|s| s.offset),
            Ok(u64::MAX)
        );
    }

    #[test]
    fn since_is_found_in_the_query() {
        assert_eq!(query_since("/ch/lobby"), Ok(None));
        assert_eq!(query_since("/ch/lobby?"), Ok(None));
        assert_eq!(query_since("/ch/lobby?x=1&y"), Ok(None));
        assert_eq!(query_since("/ch/lobby?since=3:e"), Ok(Some(since(3, "e"))));
        assert_eq!(
            query_since("/ch/lobby?a=b&since=3%3Ae&c"),
            Ok(Some(since(3, "e")))
        );
        assert_eq!(query_since("/ch/lobby?sincex=1"), Ok(None));
        // What the handshake gives: the query alone (its path has none).
        assert_eq!(since_of_query("since=3:e&x"), Ok(Some(since(3, "e"))));
        assert_eq!(since_of_query(""), Ok(None));
        assert_eq!(since_of_query("since=3"), Err(SinceError));
        for bad in [
            "/c?since",
            "/c?since=",
            "/c?since=x",
            "/c?since=1:e&since=1:e",
            "/c?since=1:e#frag",
        ] {
            assert_eq!(query_since(bad), Err(SinceError), "{bad:?}");
        }
    }

    #[test]
    fn decide_recovers_only_a_whole_run() {
        let e = "ep";
        let all = || vec![rec(4, "d"), rec(5, "e"), rec(6, "f")];
        assert_eq!(decide(None, e, 6, vec![], 10), Answer::Position(pos(6, e)));
        assert_eq!(
            decide(Some(&since(3, e)), e, 6, all(), 10),
            Answer::Recovered {
                position: pos(6, e),
                missed: all()
            }
        );
        assert_eq!(
            decide(Some(&since(6, e)), e, 6, vec![], 10),
            Answer::Recovered {
                position: pos(6, e),
                missed: vec![]
            },
            "nothing missed is a recovery"
        );
        let failed = |failure| Answer::Failed {
            failure,
            position: Some(pos(6, e)),
        };
        assert_eq!(
            decide(Some(&since(3, "other")), e, 6, all(), 10),
            failed(Failure::Epoch)
        );
        assert_eq!(
            decide(Some(&since(7, e)), e, 6, vec![], 10),
            failed(Failure::Trimmed),
            "past the top"
        );
        assert_eq!(
            decide(Some(&since(3, e)), e, 6, all(), 2),
            failed(Failure::Trimmed),
            "more missed than kept"
        );
        // The first kept entry is after since+1: trimmed. A hole or a repeat: trimmed.
        assert_eq!(
            decide(Some(&since(2, e)), e, 6, all(), 10),
            failed(Failure::Trimmed)
        );
        assert_eq!(
            decide(Some(&since(3, e)), e, 6, vec![rec(4, "d"), rec(6, "f")], 10),
            failed(Failure::Trimmed)
        );
        assert_eq!(
            decide(
                Some(&since(3, e)),
                e,
                6,
                vec![rec(4, "d"), rec(4, "d"), rec(6, "f")],
                10
            ),
            failed(Failure::Trimmed)
        );
        assert_eq!(
            decide(Some(&since(3, e)), e, 6, vec![], 10),
            failed(Failure::Trimmed),
            "the history expired"
        );
    }

    #[test]
    fn the_switch_from_history_to_live_has_no_hole_and_no_repeat() {
        let e = "ep";
        let mut m = Merge::reading(1 << 20);
        // Live messages arrive while the history is read: 5 and 6 are also in it.
        for (o, t) in [(5, "e"), (6, "f"), (7, "g"), (8, "h")] {
            assert_eq!(m.on_live(&item(Some(o), e, t)), Live::Held);
        }
        let answer = decide(
            Some(&since(3, e)),
            e,
            6,
            vec![rec(4, "d"), rec(5, "e"), rec(6, "f")],
            100,
        );
        let steps = m.on_answer("c", "r", &answer);
        assert_eq!(
            show(&steps),
            [
                r#"{"type":"recovered","channel":"c","offset":6,"epoch":"ep","missed":3}"#,
                "4=d",
                "5=e",
                "6=f",
                "7=g",
                "8=h"
            ]
        );
        assert!(!m.is_reading());
        // Late live copies of what was sent (the subscriber link lags the reader): dropped.
        assert_eq!(m.on_live(&item(Some(6), e, "f")), Live::Duplicate);
        assert_eq!(m.on_live(&item(Some(8), e, "h")), Live::Duplicate);
        assert_eq!(m.on_live(&item(Some(9), e, "i")), Live::Deliver);
        assert_eq!(m.last(), Some(&pos(9, e)));
        // A new history: sent, and it is the position from now on.
        assert_eq!(m.on_live(&item(Some(1), "new", "z")), Live::Deliver);
        assert_eq!(m.on_live(&item(Some(1), "new", "z")), Live::Duplicate);
        // A message with no position (published while the broker was out of reach).
        assert_eq!(m.on_live(&item(None, e, "local")), Live::Deliver);
        assert!(m.on_answer("c", "r", &answer).is_empty(), "a second answer");
    }

    #[test]
    fn answers_without_recovery() {
        let e = "ep";
        // No since: the position, then the held messages past it.
        let mut m = Merge::reading(1 << 20);
        m.on_live(&item(Some(7), e, "g"));
        m.on_live(&item(None, e, "sent while pending"));
        m.on_live(&item(Some(8), e, "h"));
        let steps = m.on_answer("c", "r", &decide(None, e, 7, vec![], 100));
        assert_eq!(
            show(&steps),
            [
                r#"{"type":"position","channel":"c","offset":7,"epoch":"ep"}"#,
                "8=h"
            ]
        );
        // Cannot recover: the notice with the current position, then what follows it.
        let mut m = Merge::reading(1 << 20);
        m.on_live(&item(Some(8), e, "h"));
        let steps = m.on_answer("c", "r", &decide(Some(&since(1, "old")), e, 7, vec![], 100));
        assert_eq!(
            show(&steps),
            [
                r#"{"type":"cannot_recover","channel":"c","reason":"epoch","offset":7,"epoch":"ep"}"#,
                "8=h"
            ]
        );
        // Unavailable: no position; everything held is sent, in order.
        let mut m = Merge::reading(1 << 20);
        m.on_live(&item(None, e, "a"));
        m.on_live(&item(Some(3), e, "b"));
        let unavailable = Answer::Failed {
            failure: Failure::Unavailable,
            position: None,
        };
        assert_eq!(
            show(&m.on_answer("c", "r", &unavailable)),
            [
                r#"{"type":"cannot_recover","channel":"c","reason":"unavailable"}"#,
                "-=a",
                "3=b"
            ]
        );
    }

    #[test]
    fn other_routes_are_skipped_and_holding_is_bounded() {
        let e = "ep";
        let mut m = Merge::reading(1 << 20);
        let mut other = rec(5, "other route");
        other.route = Some(Arc::from("elsewhere"));
        let mut mine = rec(6, "mine");
        mine.route = Some(Arc::from("r"));
        let answer = decide(Some(&since(3, e)), e, 6, vec![rec(4, "d"), other, mine], 10);
        assert_eq!(
            show(&m.on_answer("c", "r", &answer)),
            [
                r#"{"type":"recovered","channel":"c","offset":6,"epoch":"ep","missed":2}"#,
                "4=d",
                "6=mine"
            ]
        );
        let mut m = Merge::reading(10);
        assert_eq!(m.on_live(&item(Some(1), e, "12345")), Live::Held);
        assert_eq!(m.on_live(&item(Some(2), e, "123456")), Live::Overflow);
    }

    #[test]
    fn positioned_envelopes() {
        let p = pos(42, "ep");
        assert_eq!(
            positioned_envelope("c", Published::Json("{\"a\":1}"), &p),
            br#"{"type":"message","channel":"c","data":{"a":1},"offset":42,"epoch":"ep"}"#
        );
        let frame = positioned_frame("c", Published::Text("x"), Some(&p));
        let text: serde_json::Value = serde_json::from_slice(&frame[2..]).expect("json");
        assert_eq!(text["offset"], 42);
        assert_eq!(text["data"], "x");
        assert_eq!(
            positioned_frame("c", Published::Text("x"), None),
            crate::channels::v1_frame("c", Published::Text("x"))
        );
    }
}
