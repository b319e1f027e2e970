//! The `broadcast` function's logic: the client protocol and a worker's channel table.
//!
//! Pure, like the rest of `wsedge-proto`: no I/O, no clock, no `unsafe`. The dataplane's ring
//! driver calls it for connections of a `function = "broadcast"` route, after their
//! [`crate::endpoint::ServerEndpoint`] (in [`crate::endpoint::Mode::Messages`]) has assembled a
//! message:
//!
//! - at the handshake, [`select_subprotocol`] picks `wsedge.v1` if offered and
//!   [`path_channel`] names the channel the request path subscribes to;
//! - each client message goes through [`parse_client_message`] into a [`ClientOp`];
//! - a worker's [`Hub`] (one per broadcast route) maps channels to the connections subscribed
//!   on that worker, enforcing the route's limits;
//! - a publication ([`Published`]) is framed once per worker and flavour, [`raw_frame`] for
//!   raw subscribers and [`v1_frame`] for `wsedge.v1` ones, and those bytes are shared by
//!   every send on the worker. A publication travels to the other workers as (route, channel,
//!   opcode, bytes), and each frames it once.
//!
//! The protocol is documented for users in `docs/functions.md`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::Hash;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::endpoint::frame_message;
use crate::frame::OpCode;

/// The subprotocol of JSON envelopes (`Sec-WebSocket-Protocol: wsedge.v1`).
pub const SUBPROTOCOL: &str = "wsedge.v1";

/// Longest channel name, in bytes (= characters: names are ASCII).
pub const MAX_CHANNEL_LEN: usize = 128;

/// Whether `name` is a channel name: 1 to 128 characters of `[A-Za-z0-9._:-]`.
///
/// Names need no escaping in JSON, paths, logs or metric labels.
pub fn is_valid_channel(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CHANNEL_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The channel a request path subscribes to: what follows `prefix`, up to any `?query`.
///
/// `Ok(None)` when nothing follows the prefix (or the path does not start with it): the client
/// starts with no channel. `Err(ProtocolError::BadChannel)` when what follows is not a channel
/// name (answer 404 or 400 at the handshake).
pub fn path_channel<'a>(path: &'a str, prefix: &str) -> Result<Option<&'a str>, ProtocolError> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let Some(rest) = path.strip_prefix(prefix) else {
        return Ok(None);
    };
    if rest.is_empty() {
        return Ok(None);
    }
    if is_valid_channel(rest) {
        Ok(Some(rest))
    } else {
        Err(ProtocolError::BadChannel)
    }
}

/// The subprotocol to accept from the values of the client's `Sec-WebSocket-Protocol` headers
/// (each a comma-separated list): [`SUBPROTOCOL`] if offered, else `None` (raw mode; the
/// response then carries no `Sec-WebSocket-Protocol`).
pub fn select_subprotocol<'a>(offered: impl IntoIterator<Item = &'a str>) -> Option<&'static str> {
    offered
        .into_iter()
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL)
        .then_some(SUBPROTOCOL)
}

/// A client message that breaks the channel protocol. The connection stays open; the client
/// gets an [`error_envelope`] (v1) or nothing (raw).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ProtocolError {
    /// Not a JSON object with a string `type` (v1).
    #[error("the message is not a JSON envelope")]
    BadEnvelope,
    /// A `type` other than subscribe, unsubscribe, publish.
    #[error("unknown message type")]
    UnknownType,
    /// No `channel` string where one is needed.
    #[error("missing channel")]
    MissingChannel,
    /// A channel name outside 1-128 characters of `[A-Za-z0-9._:-]`.
    #[error("invalid channel name")]
    BadChannel,
    /// A publish without `data`.
    #[error("missing data")]
    MissingData,
    /// A publish on a route with `publish = false` (raised by the runtime).
    #[error("clients may not publish on this route")]
    PublishForbidden,
    /// A raw client publishes with no path channel (raised by the runtime).
    #[error("no channel to publish to")]
    NoChannel,
}

impl ProtocolError {
    /// The stable `error` string of the error envelope.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadEnvelope => "bad_envelope",
            Self::UnknownType => "unknown_type",
            Self::MissingChannel => "missing_channel",
            Self::BadChannel => "bad_channel",
            Self::MissingData => "missing_data",
            Self::PublishForbidden => "publish_forbidden",
            Self::NoChannel => "no_channel",
        }
    }
}

/// What a client message asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOp<'a> {
    /// v1 `{"type":"subscribe","channel":"c"}`.
    Subscribe {
        /// A valid channel name.
        channel: Cow<'a, str>,
    },
    /// v1 `{"type":"unsubscribe","channel":"c"}`.
    Unsubscribe {
        /// A valid channel name.
        channel: Cow<'a, str>,
    },
    /// v1 `{"type":"publish","channel":"c","data":<any JSON>}`.
    Publish {
        /// A valid channel name.
        channel: Cow<'a, str>,
        /// The JSON text of `data`, verbatim (deliver as [`Published::Json`]).
        data: &'a str,
    },
    /// Raw mode: the whole message is published, verbatim, to the connection's path channel.
    PublishRaw,
}

/// The envelope as it is on the wire; unknown fields are ignored.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    channel: Option<Cow<'a, str>>,
    /// `Some` for any value, `null` included.
    #[serde(default, borrow, deserialize_with = "present")]
    data: Option<&'a RawValue>,
}

/// Deserializes a field that is present (even `null`) as `Some`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

/// Reads a client message: in raw mode (`v1 == false`) every message is
/// [`ClientOp::PublishRaw`]; in `wsedge.v1` it is a JSON envelope (text or binary frame).
pub fn parse_client_message(text: &[u8], v1: bool) -> Result<ClientOp<'_>, ProtocolError> {
    if !v1 {
        return Ok(ClientOp::PublishRaw);
    }
    let envelope: Envelope<'_> =
        serde_json::from_slice(text).map_err(|_| ProtocolError::BadEnvelope)?;
    let channel = || -> Result<Cow<'_, str>, ProtocolError> {
        let channel = envelope
            .channel
            .clone()
            .ok_or(ProtocolError::MissingChannel)?;
        if is_valid_channel(&channel) {
            Ok(channel)
        } else {
            Err(ProtocolError::BadChannel)
        }
    };
    match envelope.kind.as_ref() {
        "subscribe" => Ok(ClientOp::Subscribe {
            channel: channel()?,
        }),
        "unsubscribe" => Ok(ClientOp::Unsubscribe {
            channel: channel()?,
        }),
        "publish" => {
            let channel = channel()?;
            let data = envelope.data.ok_or(ProtocolError::MissingData)?;
            Ok(ClientOp::Publish {
                channel,
                data: data.get(),
            })
        }
        _ => Err(ProtocolError::UnknownType),
    }
}

/// One publication, as it arrived (a raw client's message, a v1 `data`, an HTTP body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published<'a> {
    /// Text (a raw text message, a UTF-8 publish body).
    Text(&'a str),
    /// Bytes (a raw binary message, a non-UTF-8 publish body).
    Binary(&'a [u8]),
    /// The JSON text of a v1 publish's `data`.
    Json(&'a str),
}

impl<'a> Published<'a> {
    /// A raw client's message: text for a Text message (UTF-8, as the endpoint checked),
    /// bytes for a Binary one.
    pub fn from_message(opcode: OpCode, payload: &'a [u8]) -> Self {
        match (opcode, std::str::from_utf8(payload)) {
            (OpCode::Text, Ok(text)) => Self::Text(text),
            _ => Self::Binary(payload),
        }
    }

    /// An HTTP publish body (`POST /publish/<channel>`, `wsedgectl publish`): text if UTF-8.
    pub fn from_body(body: &'a [u8]) -> Self {
        match std::str::from_utf8(body) {
            Ok(text) => Self::Text(text),
            Err(_) => Self::Binary(body),
        }
    }
}

/// What a raw subscriber receives for `msg`: text as text, bytes as binary; JSON `data` that
/// is a string as that string's text, any other JSON value as its JSON text.
pub fn raw_payload<'a>(msg: Published<'a>) -> (OpCode, Cow<'a, [u8]>) {
    match msg {
        Published::Text(text) => (OpCode::Text, Cow::Borrowed(text.as_bytes())),
        Published::Binary(bytes) => (OpCode::Binary, Cow::Borrowed(bytes)),
        Published::Json(json) => match serde_json::from_str::<String>(json) {
            Ok(s) => (OpCode::Text, Cow::Owned(s.into_bytes())),
            Err(_) => (OpCode::Text, Cow::Borrowed(json.as_bytes())),
        },
    }
}

/// Appends `s` as a JSON string.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail, and a &str always serializes.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// The v1 delivery envelope of `msg` on `channel` (JSON text, unframed):
/// `{"type":"message","channel":"c","data":...}`; text becomes a JSON string, JSON `data` is
/// copied verbatim, bytes become `"data_base64":"..."`.
pub fn message_envelope(channel: &str, msg: Published<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + channel.len() + published_len(msg));
    out.extend_from_slice(br#"{"type":"message","channel":"#);
    push_json_str(&mut out, channel);
    match msg {
        Published::Text(text) => {
            out.extend_from_slice(br#","data":"#);
            push_json_str(&mut out, text);
        }
        Published::Json(json) => {
            out.extend_from_slice(br#","data":"#);
            out.extend_from_slice(json.as_bytes());
        }
        Published::Binary(bytes) => {
            out.extend_from_slice(br#","data_base64":""#);
            out.extend_from_slice(STANDARD.encode(bytes).as_bytes());
            out.push(b'"');
        }
    }
    out.push(b'}');
    out
}

fn published_len(msg: Published<'_>) -> usize {
    match msg {
        Published::Text(t) | Published::Json(t) => t.len(),
        Published::Binary(b) => b.len().div_ceil(3) * 4,
    }
}

/// `msg` framed for raw subscribers (one unmasked server frame, see [`raw_payload`]). Build it
/// once per publication and worker; share the bytes among all raw subscribers.
pub fn raw_frame(msg: Published<'_>) -> Vec<u8> {
    let (opcode, payload) = raw_payload(msg);
    let mut out = Vec::with_capacity(payload.len() + 10);
    frame_message(opcode, &payload, &mut out);
    out
}

/// `msg` on `channel` framed for `wsedge.v1` subscribers (a text frame holding
/// [`message_envelope`]). Build it once per publication and worker; share the bytes.
pub fn v1_frame(channel: &str, msg: Published<'_>) -> Vec<u8> {
    let envelope = message_envelope(channel, msg);
    let mut out = Vec::with_capacity(envelope.len() + 10);
    frame_message(OpCode::Text, &envelope, &mut out);
    out
}

/// `{"type":"gap","channel":"c"}` framed for `wsedge.v1` subscribers: messages of the channel
/// may have been lost here (the broker link was down, or a queue overflowed); a client that
/// needs every message resyncs (or reconnects with `since`, where recovery is on).
pub fn gap_frame(channel: &str) -> Vec<u8> {
    let mut envelope = Vec::with_capacity(32 + channel.len());
    envelope.extend_from_slice(br#"{"type":"gap","channel":"#);
    push_json_str(&mut envelope, channel);
    envelope.push(b'}');
    let mut out = Vec::with_capacity(envelope.len() + 10);
    frame_message(OpCode::Text, &envelope, &mut out);
    out
}

/// `{"type":"subscribed","channel":"c","subscribers":N}`: the answer to a subscribe, with
/// the channel's presence.
pub fn subscribed_envelope(channel: &str, subscribers: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + channel.len());
    out.extend_from_slice(br#"{"type":"subscribed","channel":"#);
    push_json_str(&mut out, channel);
    out.extend_from_slice(br#","subscribers":"#);
    out.extend_from_slice(subscribers.to_string().as_bytes());
    out.push(b'}');
    out
}

/// `{"type":"unsubscribed","channel":"c"}`: the answer to an unsubscribe.
pub fn unsubscribed_envelope(channel: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(40 + channel.len());
    out.extend_from_slice(br#"{"type":"unsubscribed","channel":"#);
    push_json_str(&mut out, channel);
    out.push(b'}');
    out
}

/// `{"type":"error","error":"...","channel":"c"}` (`channel` only when the error concerns
/// one); `error` is a stable string ([`ProtocolError::as_str`], [`HubError::as_str`]).
pub fn error_envelope(error: &str, channel: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + error.len());
    out.extend_from_slice(br#"{"type":"error","error":"#);
    push_json_str(&mut out, error);
    if let Some(channel) = channel {
        out.extend_from_slice(br#","channel":"#);
        push_json_str(&mut out, channel);
    }
    out.push(b'}');
    out
}

/// The limits of a broadcast route, as a [`Hub`] enforces them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HubLimits {
    /// Most subscribers of one channel, counted as this worker's subscribers plus the other
    /// workers' last reported count ([`Hub::set_remote_count`]). `usize::MAX`: no limit.
    pub max_subscribers: usize,
    /// Most channels one connection may be subscribed to. `usize::MAX`: no limit.
    pub max_channels_per_client: usize,
}

impl Default for HubLimits {
    fn default() -> Self {
        Self {
            max_subscribers: usize::MAX,
            max_channels_per_client: usize::MAX,
        }
    }
}

/// A subscribe the limits refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum HubError {
    /// The channel is at `max_subscribers`.
    #[error("channel is full")]
    ChannelFull,
    /// The connection is at `max_channels_per_client`.
    #[error("too many channels for this client")]
    TooManyChannels,
}

impl HubError {
    /// The stable `error` string of the error envelope.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ChannelFull => "channel_full",
            Self::TooManyChannels => "too_many_channels",
        }
    }

    /// The status to refuse a path subscription with at the handshake (the connection is not
    /// upgraded): 503 for a full channel, 429 for too many channels.
    pub const fn http_status(self) -> u16 {
        match self {
            Self::ChannelFull => 503,
            Self::TooManyChannels => 429,
        }
    }
}

/// One channel's subscribers on this worker.
#[derive(Debug, Clone)]
struct Members<K> {
    /// INVARIANT: no duplicates; `index[&list[i]] == i` for every `i`, and `index` has no
    /// other keys.
    list: Vec<K>,
    index: HashMap<K, usize>,
    /// Subscribers on the other workers, as last reported.
    remote: usize,
}

impl<K: Copy + Eq + Hash> Members<K> {
    fn new() -> Self {
        Self {
            list: Vec::new(),
            index: HashMap::new(),
            remote: 0,
        }
    }

    fn total(&self) -> usize {
        self.list.len().saturating_add(self.remote)
    }

    fn is_unused(&self) -> bool {
        self.list.is_empty() && self.remote == 0
    }

    /// Removes `conn`; whether it was there. O(1): the last member takes its place.
    fn remove(&mut self, conn: K) -> bool {
        let Some(i) = self.index.remove(&conn) else {
            return false;
        };
        self.list.swap_remove(i);
        if let Some(&moved) = self.list.get(i) {
            self.index.insert(moved, i);
        }
        true
    }
}

/// A worker's channel table for one broadcast route: which of its connections are subscribed
/// to which channels.
///
/// `K` is the runtime's connection key (a slab id with its generation). Subscribe,
/// unsubscribe and lookups are O(1) (plus O(channels of the connection), bounded by
/// `max_channels_per_client`); [`Hub::remove_conn`] is O(its channels); [`Hub::subscribers`]
/// is O(subscribers). A channel's entry disappears when its last local subscriber leaves and
/// no remote count is held for it.
///
/// Limits: `max_channels_per_client` is exact (a connection lives on one worker).
/// `max_subscribers` counts local subscribers exactly plus the remote count the runtime
/// reports from the other workers ([`Hub::set_remote_count`]): exact on one worker, host-wide
/// as current as that report (two workers may admit the last free place at once, so a channel
/// may exceed the limit by at most workers − 1 between reports). Without reports, the limit
/// holds per worker.
#[derive(Debug, Clone)]
pub struct Hub<K> {
    limits: HubLimits,
    channels: HashMap<Box<str>, Members<K>>,
    /// INVARIANT: `conns[k]` lists exactly the channels whose members contain `k`, without
    /// duplicates; connections with no channel have no entry.
    conns: HashMap<K, Vec<Box<str>>>,
}

impl<K: Copy + Eq + Hash> Hub<K> {
    /// An empty table.
    pub fn new(limits: HubLimits) -> Self {
        Self {
            limits,
            channels: HashMap::new(),
            conns: HashMap::new(),
        }
    }

    /// The limits in force.
    pub const fn limits(&self) -> HubLimits {
        self.limits
    }

    /// Changes the limits (a config change); existing subscriptions are kept even above them.
    pub fn set_limits(&mut self, limits: HubLimits) {
        self.limits = limits;
    }

    /// Subscribes `conn` to `channel` (a valid name, see [`is_valid_channel`]); returns the
    /// channel's subscriber count ([`Hub::count`]) afterwards. Subscribing again is a no-op
    /// that succeeds.
    pub fn subscribe(&mut self, conn: K, channel: &str) -> Result<usize, HubError> {
        let subscribed = self.conns.get(&conn).map_or(0, Vec::len);
        if let Some(members) = self.channels.get(channel) {
            if members.index.contains_key(&conn) {
                return Ok(members.total());
            }
            if members.total() >= self.limits.max_subscribers {
                return Err(HubError::ChannelFull);
            }
        } else if self.limits.max_subscribers == 0 {
            return Err(HubError::ChannelFull);
        }
        if subscribed >= self.limits.max_channels_per_client {
            return Err(HubError::TooManyChannels);
        }
        let members = self
            .channels
            .entry(Box::from(channel))
            .or_insert_with(Members::new);
        members.index.insert(conn, members.list.len());
        members.list.push(conn);
        let total = members.total();
        self.conns.entry(conn).or_default().push(Box::from(channel));
        Ok(total)
    }

    /// Unsubscribes `conn` from `channel`; returns the channel's count afterwards, or `None`
    /// if `conn` was not subscribed to it.
    pub fn unsubscribe(&mut self, conn: K, channel: &str) -> Option<usize> {
        let members = self.channels.get_mut(channel)?;
        if !members.remove(conn) {
            return None;
        }
        let total = members.total();
        if members.is_unused() {
            self.channels.remove(channel);
        }
        if let Some(list) = self.conns.get_mut(&conn) {
            if let Some(i) = list.iter().position(|c| &**c == channel) {
                list.swap_remove(i);
            }
            if list.is_empty() {
                self.conns.remove(&conn);
            }
        }
        Some(total)
    }

    /// Forgets a closed connection; returns how many channels it was subscribed to.
    pub fn remove_conn(&mut self, conn: K) -> usize {
        let Some(list) = self.conns.remove(&conn) else {
            return 0;
        };
        for channel in &list {
            if let Some(members) = self.channels.get_mut(channel) {
                members.remove(conn);
                if members.is_unused() {
                    self.channels.remove(channel);
                }
            }
        }
        list.len()
    }

    /// This worker's subscribers of `channel`, in no particular order.
    pub fn subscribers(&self, channel: &str) -> impl Iterator<Item = K> + '_ {
        self.channels
            .get(channel)
            .into_iter()
            .flat_map(|m| m.list.iter().copied())
    }

    /// How many of this worker's connections are subscribed to `channel`.
    pub fn local_count(&self, channel: &str) -> usize {
        self.channels.get(channel).map_or(0, |m| m.list.len())
    }

    /// Presence: subscribers of `channel` on this worker plus the other workers' reported
    /// count.
    pub fn count(&self, channel: &str) -> usize {
        self.channels.get(channel).map_or(0, Members::total)
    }

    /// Records how many subscribers `channel` has on the other workers (from their reports).
    pub fn set_remote_count(&mut self, channel: &str, remote: usize) {
        if let Some(members) = self.channels.get_mut(channel) {
            members.remote = remote;
            if members.is_unused() {
                self.channels.remove(channel);
            }
        } else if remote > 0 {
            let mut members = Members::new();
            members.remote = remote;
            self.channels.insert(Box::from(channel), members);
        }
    }

    /// Whether `conn` is subscribed to `channel`.
    pub fn is_subscribed(&self, conn: K, channel: &str) -> bool {
        self.channels
            .get(channel)
            .is_some_and(|m| m.index.contains_key(&conn))
    }

    /// The channels `conn` is subscribed to.
    pub fn channels_of(&self, conn: K) -> impl Iterator<Item = &str> + '_ {
        self.conns
            .get(&conn)
            .into_iter()
            .flat_map(|l| l.iter().map(|c| &**c))
    }

    /// Channels with a local subscriber or a remote count.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Channels with local subscribers and their local counts (for the presence report to
    /// the other workers and for metrics).
    pub fn local_counts(&self) -> impl Iterator<Item = (&str, usize)> + '_ {
        self.channels
            .iter()
            .filter(|(_, m)| !m.list.is_empty())
            .map(|(c, m)| (&**c, m.list.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1(text: &str) -> Result<ClientOp<'_>, ProtocolError> {
        parse_client_message(text.as_bytes(), true)
    }

    fn ch(name: &str) -> Cow<'_, str> {
        Cow::Borrowed(name)
    }

    #[test]
    fn channel_names() {
        for ok in ["a", "room-1", "news.eu:fr", "A_b.C-d:9", &"x".repeat(128)] {
            assert!(is_valid_channel(ok), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "a/b",
            "é",
            "a\"b",
            "a\\b",
            "a?",
            &"x".repeat(129),
        ] {
            assert!(!is_valid_channel(bad), "{bad}");
        }
        assert_eq!(path_channel("/ch/lobby", "/ch/"), Ok(Some("lobby")));
        assert_eq!(path_channel("/ch/lobby?token=1", "/ch/"), Ok(Some("lobby")));
        assert_eq!(path_channel("/ch/", "/ch/"), Ok(None));
        assert_eq!(path_channel("/ch/?x", "/ch/"), Ok(None));
        assert_eq!(path_channel("/other", "/ch/"), Ok(None));
        assert_eq!(
            path_channel("/ch/a/b", "/ch/"),
            Err(ProtocolError::BadChannel)
        );
        assert_eq!(
            path_channel("/ch/%20", "/ch/"),
            Err(ProtocolError::BadChannel)
        );
    }

    #[test]
    fn subprotocol() {
        assert_eq!(select_subprotocol(["wsedge.v1"]), Some(SUBPROTOCOL));
        assert_eq!(select_subprotocol(["chat, wsedge.v1 "]), Some(SUBPROTOCOL));
        assert_eq!(
            select_subprotocol(["chat", "x,wsedge.v1"]),
            Some(SUBPROTOCOL)
        );
        assert_eq!(select_subprotocol(["chat", "wsedge.v2"]), None);
        assert_eq!(select_subprotocol([]), None);
    }

    #[test]
    fn parse_valid_envelopes() {
        assert_eq!(
            v1(r#"{"type":"subscribe","channel":"lobby"}"#),
            Ok(ClientOp::Subscribe {
                channel: ch("lobby")
            })
        );
        assert_eq!(
            v1(r#" { "channel" : "a.b", "type" : "unsubscribe", "extra": [1,2] } "#),
            Ok(ClientOp::Unsubscribe { channel: ch("a.b") })
        );
        // Escapes in the name decode to the same valid name.
        assert_eq!(
            v1(r#"{"type":"subscribe","channel":"\u0061b"}"#),
            Ok(ClientOp::Subscribe { channel: ch("ab") })
        );
        for data in [
            r#"{"text":"hi","n":[1,2.5,null]}"#,
            r#""hello""#,
            "42",
            "null",
            "true",
            "[]",
        ] {
            let msg = format!(r#"{{"type":"publish","channel":"c","data":{data}}}"#);
            assert_eq!(
                v1(&msg),
                Ok(ClientOp::Publish {
                    channel: ch("c"),
                    data
                }),
                "{data}"
            );
        }
        // Raw mode never looks at the bytes.
        assert_eq!(
            parse_client_message(b"\xff not json", false),
            Ok(ClientOp::PublishRaw)
        );
    }

    #[test]
    fn parse_invalid_envelopes() {
        let cases = [
            ("", ProtocolError::BadEnvelope),
            ("hello", ProtocolError::BadEnvelope),
            ("[1]", ProtocolError::BadEnvelope),
            (r#"{"channel":"c"}"#, ProtocolError::BadEnvelope),
            (r#"{"type":1,"channel":"c"}"#, ProtocolError::BadEnvelope),
            (
                r#"{"type":"subscribe","channel":"c"} trailing"#,
                ProtocolError::BadEnvelope,
            ),
            (
                r#"{"type":"subscribe","type":"publish","channel":"c"}"#,
                ProtocolError::BadEnvelope,
            ),
            (
                r#"{"type":"publish","channel":"c","data":}"#,
                ProtocolError::BadEnvelope,
            ),
            (
                r#"{"type":"publish","channel":"c","data":[1,}"#,
                ProtocolError::BadEnvelope,
            ),
            (
                r#"{"type":"subscribe","channel":7}"#,
                ProtocolError::BadEnvelope,
            ),
            (
                r#"{"type":"join","channel":"c"}"#,
                ProtocolError::UnknownType,
            ),
            (r#"{"type":"subscribe"}"#, ProtocolError::MissingChannel),
            (
                r#"{"type":"subscribe","channel":null}"#,
                ProtocolError::MissingChannel,
            ),
            (
                r#"{"type":"subscribe","channel":""}"#,
                ProtocolError::BadChannel,
            ),
            (
                r#"{"type":"unsubscribe","channel":"a b"}"#,
                ProtocolError::BadChannel,
            ),
            (
                r#"{"type":"publish","channel":"c"}"#,
                ProtocolError::MissingData,
            ),
            (
                r#"{"type":"publish","data":1}"#,
                ProtocolError::MissingChannel,
            ),
        ];
        for (text, err) in cases {
            assert_eq!(v1(text), Err(err), "{text}");
        }
        assert_eq!(
            parse_client_message(b"{\"type\":\"subscribe\",\"channel\":\"\xff\"}", true),
            Err(ProtocolError::BadEnvelope)
        );
        assert_eq!(ProtocolError::BadChannel.as_str(), "bad_channel");
    }

    fn json(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).expect("valid JSON")
    }

    #[test]
    fn envelopes() {
        assert_eq!(
            message_envelope("c", Published::Text("hi \"there\"\n")),
            br#"{"type":"message","channel":"c","data":"hi \"there\"\n"}"#
        );
        assert_eq!(
            message_envelope("c", Published::Json(r#"{"a":[1,2]}"#)),
            br#"{"type":"message","channel":"c","data":{"a":[1,2]}}"#
        );
        assert_eq!(
            message_envelope("c", Published::Binary(&[0, 1, 2, 255])),
            br#"{"type":"message","channel":"c","data_base64":"AAEC/w=="}"#
        );
        assert_eq!(
            subscribed_envelope("lobby", 3),
            br#"{"type":"subscribed","channel":"lobby","subscribers":3}"#
        );
        assert_eq!(
            unsubscribed_envelope("lobby"),
            br#"{"type":"unsubscribed","channel":"lobby"}"#
        );
        assert_eq!(
            error_envelope(HubError::ChannelFull.as_str(), Some("lobby")),
            br#"{"type":"error","error":"channel_full","channel":"lobby"}"#
        );
        assert_eq!(
            error_envelope("bad_envelope", None),
            br#"{"type":"error","error":"bad_envelope"}"#
        );
        // Every envelope is JSON, whatever the text.
        let text = "quote \" backslash \\ control \u{1} emoji 😀";
        let v = json(&message_envelope("c", Published::Text(text)));
        assert_eq!(v["data"], text);
    }

    #[test]
    fn frames_for_both_flavours() {
        // A v1 publish of a string reaches raw subscribers as its text.
        let (op, bytes) = raw_payload(Published::Json(r#""caf\u00e9""#));
        assert_eq!((op, &*bytes), (OpCode::Text, "café".as_bytes()));
        let (op, bytes) = raw_payload(Published::Json(r#"{"n":1}"#));
        assert_eq!((op, &*bytes), (OpCode::Text, &br#"{"n":1}"#[..]));
        let (op, bytes) = raw_payload(Published::Binary(&[1, 2]));
        assert_eq!((op, &*bytes), (OpCode::Binary, &[1u8, 2][..]));
        assert_eq!(raw_frame(Published::Text("hi")), [0x81, 0x02, b'h', b'i']);
        assert_eq!(raw_frame(Published::Binary(&[7])), [0x82, 0x01, 7]);
        let frame = v1_frame("c", Published::Text("hi"));
        let envelope = message_envelope("c", Published::Text("hi"));
        assert_eq!(frame[0], 0x81);
        assert_eq!(usize::from(frame[1]), envelope.len());
        assert_eq!(&frame[2..], &envelope[..]);
        assert_eq!(Published::from_body(b"text"), Published::Text("text"));
        assert_eq!(Published::from_body(&[0xff]), Published::Binary(&[0xff]));
        assert_eq!(
            Published::from_message(OpCode::Binary, b"x"),
            Published::Binary(b"x")
        );
        assert_eq!(
            Published::from_message(OpCode::Text, b"x"),
            Published::Text("x")
        );
    }

    /// Checks the hub's invariants against a plain model.
    fn check<K: Copy + Eq + Hash + Ord + std::fmt::Debug>(hub: &Hub<K>, model: &[(K, &str)]) {
        let mut from_hub: Vec<(K, String)> = hub
            .channels
            .iter()
            .flat_map(|(c, m)| m.list.iter().map(move |k| (*k, c.to_string())))
            .collect();
        let mut from_conns: Vec<(K, String)> = hub
            .conns
            .iter()
            .flat_map(|(k, l)| l.iter().map(move |c| (*k, c.to_string())))
            .collect();
        let mut want: Vec<(K, String)> = model.iter().map(|(k, c)| (*k, c.to_string())).collect();
        from_hub.sort();
        from_conns.sort();
        want.sort();
        assert_eq!(from_hub, want);
        assert_eq!(from_conns, want);
        for (name, m) in &hub.channels {
            assert!(!m.is_unused(), "{name} kept while unused");
            assert_eq!(m.index.len(), m.list.len());
            for (i, k) in m.list.iter().enumerate() {
                assert_eq!(m.index.get(k), Some(&i));
            }
        }
        assert!(hub.conns.values().all(|l| !l.is_empty()));
    }

    #[test]
    fn hub_bookkeeping() {
        let mut hub: Hub<u32> = Hub::new(HubLimits::default());
        assert_eq!(hub.subscribe(1, "a"), Ok(1));
        assert_eq!(hub.subscribe(2, "a"), Ok(2));
        assert_eq!(hub.subscribe(3, "a"), Ok(3));
        assert_eq!(hub.subscribe(2, "a"), Ok(3), "idempotent");
        assert_eq!(hub.subscribe(2, "b"), Ok(1));
        check(&hub, &[(1, "a"), (2, "a"), (3, "a"), (2, "b")]);
        let mut subs: Vec<u32> = hub.subscribers("a").collect();
        subs.sort_unstable();
        assert_eq!(subs, [1, 2, 3]);
        assert_eq!(hub.subscribers("none").count(), 0);
        assert!(hub.is_subscribed(2, "b"));
        assert!(!hub.is_subscribed(1, "b"));
        // Removing the first member moves the last into its place.
        assert_eq!(hub.unsubscribe(1, "a"), Some(2));
        assert_eq!(hub.unsubscribe(1, "a"), None);
        assert_eq!(hub.unsubscribe(1, "zzz"), None);
        check(&hub, &[(2, "a"), (3, "a"), (2, "b")]);
        let mut mine: Vec<&str> = hub.channels_of(2).collect();
        mine.sort_unstable();
        assert_eq!(mine, ["a", "b"]);
        assert_eq!(hub.remove_conn(2), 2);
        assert_eq!(hub.remove_conn(2), 0);
        check(&hub, &[(3, "a")]);
        assert_eq!(hub.channel_count(), 1, "b is gone with its last subscriber");
        assert_eq!(hub.unsubscribe(3, "a"), Some(0));
        check(&hub, &[]);
        assert_eq!(hub.channel_count(), 0);
        assert_eq!(hub.local_count("a"), 0);
    }

    #[test]
    fn hub_limits() {
        let mut hub: Hub<u32> = Hub::new(HubLimits {
            max_subscribers: 2,
            max_channels_per_client: 2,
        });
        assert_eq!(hub.subscribe(1, "a"), Ok(1));
        assert_eq!(hub.subscribe(2, "a"), Ok(2));
        assert_eq!(hub.subscribe(3, "a"), Err(HubError::ChannelFull));
        assert_eq!(hub.subscribe(1, "a"), Ok(2), "already in: not refused");
        assert_eq!(hub.subscribe(1, "b"), Ok(1));
        assert_eq!(hub.subscribe(1, "c"), Err(HubError::TooManyChannels));
        check(&hub, &[(1, "a"), (2, "a"), (1, "b")]);
        assert_eq!(hub.unsubscribe(2, "a"), Some(1));
        assert_eq!(hub.subscribe(3, "a"), Ok(2));
        assert_eq!(hub.unsubscribe(1, "b"), Some(0));
        assert_eq!(hub.subscribe(1, "c"), Ok(1));
        check(&hub, &[(1, "a"), (3, "a"), (1, "c")]);
        // Remote counts take places and add to presence; an unused channel is dropped.
        hub.set_remote_count("c", 1);
        assert_eq!((hub.local_count("c"), hub.count("c")), (1, 2));
        assert_eq!(hub.subscribe(2, "c"), Err(HubError::ChannelFull));
        hub.set_remote_count("d", 2);
        assert_eq!(hub.count("d"), 2);
        assert_eq!(hub.subscribe(2, "d"), Err(HubError::ChannelFull));
        hub.set_remote_count("d", 0);
        assert_eq!(hub.channel_count(), 2);
        hub.set_remote_count("c", 0);
        assert_eq!(hub.subscribe(2, "c"), Ok(2));
        let mut counts: Vec<(&str, usize)> = hub.local_counts().collect();
        counts.sort_unstable();
        assert_eq!(counts, [("a", 2), ("c", 2)]);
        // Zero places: nothing is admitted; limits change live.
        hub.set_limits(HubLimits {
            max_subscribers: 0,
            ..hub.limits()
        });
        assert_eq!(hub.subscribe(9, "new"), Err(HubError::ChannelFull));
        assert_eq!(HubError::TooManyChannels.http_status(), 429);
    }

    #[test]
    fn hub_model_check() {
        // A deterministic walk of subscribes, unsubscribes and removals against a model.
        let names = ["a", "b", "c", "d"];
        let mut hub: Hub<u8> = Hub::new(HubLimits {
            max_subscribers: 5,
            max_channels_per_client: 3,
        });
        let mut model: Vec<(u8, &str)> = Vec::new();
        let mut x: u32 = 12345;
        for _ in 0..5000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let conn = ((x >> 8) % 8) as u8;
            let name = names[((x >> 16) % 4) as usize];
            match (x >> 24) % 5 {
                0 | 1 => {
                    let have = model.contains(&(conn, name));
                    let in_channel = model.iter().filter(|(_, c)| *c == name).count();
                    let of_conn = model.iter().filter(|(k, _)| *k == conn).count();
                    let got = hub.subscribe(conn, name);
                    if have {
                        assert_eq!(got, Ok(in_channel));
                    } else if in_channel >= 5 {
                        assert_eq!(got, Err(HubError::ChannelFull));
                    } else if of_conn >= 3 {
                        assert_eq!(got, Err(HubError::TooManyChannels));
                    } else {
                        assert_eq!(got, Ok(in_channel + 1));
                        model.push((conn, name));
                    }
                }
                2 | 3 => {
                    let had = model.iter().position(|e| *e == (conn, name));
                    let got = hub.unsubscribe(conn, name);
                    match had {
                        Some(i) => {
                            model.swap_remove(i);
                            let left = model.iter().filter(|(_, c)| *c == name).count();
                            assert_eq!(got, Some(left));
                        }
                        None => assert_eq!(got, None),
                    }
                }
                _ => {
                    let n = model.iter().filter(|(k, _)| *k == conn).count();
                    assert_eq!(hub.remove_conn(conn), n);
                    model.retain(|(k, _)| *k != conn);
                }
            }
            check(&hub, &model);
            for name in names {
                let n = model.iter().filter(|(_, c)| *c == name).count();
                assert_eq!(hub.local_count(name), n);
                assert_eq!(hub.subscribers(name).count(), n);
            }
        }
    }
}
