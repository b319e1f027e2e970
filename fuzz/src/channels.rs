//! `channels`: the `broadcast` function's client protocol and channel table
//! (`wsedge_proto::channels`).
//!
//! Message inputs (first byte's bit 7 clear) check the parsers and the envelopes against
//! `serde_json::Value`, an independent reading of the same JSON:
//! - `parse_client_message` never panics; raw mode always publishes the message as it is;
//! - what `wsedge.v1` accepts is an object whose `type`, `channel` and (for publish) `data`
//!   are what the parse returned, and the parse is the same for that object re-encoded;
//!   each refusal names the first thing that is wrong (not JSON, unknown type, missing or
//!   invalid channel, missing data), as the object shows it;
//! - what is delivered re-encodes consistently: the v1 delivery envelope of a publication
//!   (JSON data verbatim, text as a string, bytes as `data_base64`) parses back to the
//!   same channel and data, the raw payload is the text, the bytes or the JSON string's
//!   value, and both framings are one unmasked, final server frame carrying exactly that;
//!   the answers (`subscribed`, `unsubscribed`, `error`) are JSON with the given fields for
//!   any string;
//! - `path_channel` and `select_subprotocol` agree with a direct reading of their rules.
//!
//! Hub inputs (bit 7 set) drive a `Hub` with subscribe, unsubscribe, remove, remote counts
//! and limit changes decoded from the rest, against a model made of sorted sets: every
//! answer, count, subscriber set and channel list must match it.

use std::collections::{BTreeMap, BTreeSet};

use arbitrary::{Arbitrary, Unstructured};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use wsedge_proto::channels::{
    ClientOp, Hub, HubError, HubLimits, MAX_CHANNEL_LEN, ProtocolError, Published, SUBPROTOCOL,
    error_envelope, is_valid_channel, message_envelope, parse_client_message, path_channel,
    raw_frame, raw_payload, select_subprotocol, subscribed_envelope, unsubscribed_envelope,
    v1_frame,
};
use wsedge_proto::frame::{OpCode, parse_header};

/// The channel protocol's checks (see the module doc). Input: `[selector, rest...]`.
pub fn channels(data: &[u8]) {
    let [selector, rest @ ..] = data else {
        return;
    };
    if selector & 0x80 != 0 {
        hub(rest);
        return;
    }
    check_client_message(rest);
    check_publications(rest);
    if let Ok(text) = std::str::from_utf8(rest) {
        check_path_and_subprotocol(text);
        check_answers(text);
    }
}

fn check_client_message(text: &[u8]) {
    assert_eq!(parse_client_message(text, false), Ok(ClientOp::PublishRaw));
    let parsed = parse_client_message(text, true);
    // serde skips the fields the envelope ignores without checking their UTF-8, so such a
    // message is read as its lossy UTF-8 form (the fields it uses are checked).
    let Ok(value) = serde_json::from_slice::<Value>(text)
        .or_else(|_| serde_json::from_str::<Value>(&String::from_utf8_lossy(text)))
    else {
        assert_eq!(
            parsed,
            Err(ProtocolError::BadEnvelope),
            "not JSON yet {parsed:?}"
        );
        return;
    };
    let kind = value.get("type").and_then(Value::as_str);
    let channel = value.get("channel");
    match &parsed {
        Ok(op) => {
            let (want, channel_name) = match op {
                ClientOp::Subscribe { channel } => ("subscribe", channel),
                ClientOp::Unsubscribe { channel } => ("unsubscribe", channel),
                ClientOp::Publish { channel, data } => {
                    let data_value: Value =
                        serde_json::from_str(data).expect("publish data is JSON text");
                    assert_eq!(Some(&data_value), value.get("data"), "publish data");
                    ("publish", channel)
                }
                ClientOp::PublishRaw => panic!("v1 parsed as raw"),
            };
            assert_eq!(kind, Some(want), "type");
            assert!(
                is_valid_channel(channel_name),
                "accepted channel {channel_name:?}"
            );
            assert_eq!(
                channel.and_then(Value::as_str),
                Some(&**channel_name),
                "channel"
            );
            // The same request, re-encoded, parses the same.
            let mut again = json!({ "type": want, "channel": &**channel_name });
            if let ClientOp::Publish { data, .. } = op {
                again["data"] = serde_json::from_str(data).expect("data");
            }
            let again = serde_json::to_vec(&again).expect("encode");
            let reparsed = parse_client_message(&again, true).expect("re-encoded request");
            match (op, &reparsed) {
                (
                    ClientOp::Publish {
                        channel: a,
                        data: x,
                    },
                    ClientOp::Publish {
                        channel: b,
                        data: y,
                    },
                ) => {
                    assert_eq!(a, b);
                    assert_eq!(
                        serde_json::from_str::<Value>(x).ok(),
                        serde_json::from_str::<Value>(y).ok()
                    );
                }
                _ => assert_eq!(op, &reparsed, "re-encoded request parses differently"),
            }
            if let ClientOp::Publish { channel, data } = op {
                check_delivery(channel, Published::Json(data));
            }
        }
        Err(ProtocolError::BadEnvelope) => {}
        Err(ProtocolError::UnknownType) => {
            let kind = kind.expect("unknown type: type is a string");
            assert!(!["subscribe", "unsubscribe", "publish"].contains(&kind));
        }
        Err(ProtocolError::MissingChannel) => {
            assert!(matches!(
                kind,
                Some("subscribe" | "unsubscribe" | "publish")
            ));
            assert!(channel.is_none_or(Value::is_null), "channel was there");
        }
        Err(ProtocolError::BadChannel) => {
            let name = channel
                .and_then(Value::as_str)
                .expect("bad channel is a string");
            assert!(!is_valid_channel(name), "{name:?} is valid");
        }
        Err(ProtocolError::MissingData) => {
            assert_eq!(kind, Some("publish"));
            assert!(value.get("data").is_none(), "data was there");
        }
        Err(e) => panic!("the parser raised {e:?}, which only the runtime raises"),
    }
}

/// The bytes as a raw client's message and as an HTTP publish body, delivered on a channel
/// named after them.
fn check_publications(bytes: &[u8]) {
    let channel: String = bytes
        .iter()
        .map(|&b| char::from(b))
        .filter(|c| c.is_ascii_alphanumeric() || "._:-".contains(*c))
        .take(MAX_CHANNEL_LEN)
        .collect();
    let channel = if channel.is_empty() { "c" } else { &channel };
    assert!(is_valid_channel(channel));
    let text = std::str::from_utf8(bytes).ok();
    for msg in [
        Published::from_message(OpCode::Text, bytes),
        Published::from_message(OpCode::Binary, bytes),
        Published::from_body(bytes),
    ] {
        match msg {
            Published::Text(t) => assert_eq!(Some(t), text),
            Published::Binary(b) => assert_eq!(b, bytes),
            Published::Json(_) => panic!("a message or body is never JSON data"),
        }
        check_delivery(channel, msg);
    }
    if let Some(text) = text {
        // Anything UTF-8 may arrive as v1 `data` text only if it is JSON; when it is, it is
        // delivered verbatim.
        if serde_json::from_str::<Value>(text).is_ok() {
            check_delivery(channel, Published::Json(text));
        }
    }
}

/// One unmasked final frame: its opcode and payload.
fn one_frame(bytes: &[u8]) -> (OpCode, &[u8]) {
    let (h, n) = parse_header(bytes)
        .expect("valid frame")
        .expect("whole header");
    assert!(h.fin && h.mask.is_none() && h.rsv == 0, "{h:?}");
    assert_eq!(
        bytes.len() - n,
        h.payload_len as usize,
        "one frame, nothing after it"
    );
    (h.opcode, &bytes[n..])
}

fn check_delivery(channel: &str, msg: Published<'_>) {
    // v1: a text frame holding the envelope.
    let envelope = message_envelope(channel, msg);
    let framed = v1_frame(channel, msg);
    assert_eq!(one_frame(&framed), (OpCode::Text, &envelope[..]));
    let value: Value = serde_json::from_slice(&envelope).expect("the envelope is JSON");
    assert_eq!(value["type"], "message");
    assert_eq!(value["channel"], channel);
    match msg {
        Published::Text(t) => assert_eq!(value["data"], t),
        Published::Json(j) => {
            let data: Value = serde_json::from_str(j).expect("data");
            assert_eq!(value["data"], data);
        }
        Published::Binary(b) => {
            let text = value["data_base64"].as_str().expect("data_base64");
            assert_eq!(STANDARD.decode(text).expect("base64"), b);
            assert!(value.get("data").is_none());
        }
    }
    // Raw: the payload as it was, JSON strings as their text.
    let (raw_opcode, raw) = raw_payload(msg);
    let framed = raw_frame(msg);
    assert_eq!(one_frame(&framed), (raw_opcode, &raw[..]));
    match msg {
        Published::Text(t) => assert_eq!((raw_opcode, &raw[..]), (OpCode::Text, t.as_bytes())),
        Published::Binary(b) => assert_eq!((raw_opcode, &raw[..]), (OpCode::Binary, b)),
        Published::Json(j) => {
            assert_eq!(raw_opcode, OpCode::Text);
            match serde_json::from_str::<Value>(j).expect("data") {
                Value::String(s) => assert_eq!(&raw[..], s.as_bytes()),
                _ => assert_eq!(&raw[..], j.as_bytes()),
            }
        }
    }
}

fn check_path_and_subprotocol(text: &str) {
    // Prefix and path from the text: `prefix \0 path`, or a fixed prefix.
    let (prefix, path) = text.split_once('\0').unwrap_or(("/ch/", text));
    let got = path_channel(path, prefix);
    let before_query = path.split('?').next().unwrap_or("");
    let want = match before_query.strip_prefix(prefix) {
        None | Some("") => Ok(None),
        Some(rest) if is_valid_channel(rest) => Ok(Some(rest)),
        Some(_) => Err(ProtocolError::BadChannel),
    };
    assert_eq!(got, want, "path_channel({path:?}, {prefix:?})");
    let offered: Vec<&str> = text.split('\n').collect();
    let listed = offered
        .iter()
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL);
    assert_eq!(
        select_subprotocol(offered.iter().copied()).is_some(),
        listed
    );
}

fn check_answers(text: &str) {
    let v: Value = serde_json::from_slice(&subscribed_envelope(text, text.len())).expect("json");
    assert_eq!(
        v,
        json!({"type": "subscribed", "channel": text, "subscribers": text.len()})
    );
    let v: Value = serde_json::from_slice(&unsubscribed_envelope(text)).expect("json");
    assert_eq!(v, json!({"type": "unsubscribed", "channel": text}));
    let v: Value = serde_json::from_slice(&error_envelope(text, Some(text))).expect("json");
    assert_eq!(v, json!({"type": "error", "error": text, "channel": text}));
    let v: Value = serde_json::from_slice(&error_envelope(text, None)).expect("json");
    assert_eq!(v, json!({"type": "error", "error": text}));
}

// ---------------------------------------------------------------------------------------------
// Hub
// ---------------------------------------------------------------------------------------------

const CHANNELS: [&str; 4] = ["a", "b", "lobby", "news.eu"];

#[derive(Debug, Arbitrary)]
enum HubOp {
    Subscribe(u8, u8),
    Unsubscribe(u8, u8),
    RemoveConn(u8),
    SetRemote(u8, u8),
    SetLimits(u8, u8),
}

/// The model: which connections are subscribed where, and the other workers' counts.
#[derive(Default)]
struct Model {
    members: BTreeMap<&'static str, BTreeSet<u8>>,
    remote: BTreeMap<&'static str, usize>,
    limits: HubLimits,
}

impl Model {
    fn local(&self, ch: &str) -> usize {
        self.members.get(ch).map_or(0, BTreeSet::len)
    }

    fn count(&self, ch: &str) -> usize {
        self.local(ch) + self.remote.get(ch).copied().unwrap_or(0)
    }

    fn channels_of(&self, conn: u8) -> BTreeSet<&'static str> {
        self.members
            .iter()
            .filter(|(_, m)| m.contains(&conn))
            .map(|(c, _)| *c)
            .collect()
    }
}

/// Limits from a byte: 255 = none, else small.
fn limit(b: u8) -> usize {
    if b == 255 {
        usize::MAX
    } else {
        usize::from(b % 4)
    }
}

fn hub(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut hub: Hub<u8> = Hub::new(HubLimits::default());
    let mut model = Model::default();
    while !u.is_empty() {
        let Ok(op) = HubOp::arbitrary(&mut u) else {
            break;
        };
        match op {
            HubOp::Subscribe(conn, ch) => {
                let (conn, ch) = (conn % 6, CHANNELS[usize::from(ch) % 4]);
                let got = hub.subscribe(conn, ch);
                let subscribed = model.local(ch) > 0 && model.members[ch].contains(&conn);
                let want = if subscribed {
                    Ok(model.count(ch))
                } else if model.count(ch) >= model.limits.max_subscribers {
                    Err(HubError::ChannelFull)
                } else if model.channels_of(conn).len() >= model.limits.max_channels_per_client {
                    Err(HubError::TooManyChannels)
                } else {
                    model.members.entry(ch).or_default().insert(conn);
                    Ok(model.count(ch))
                };
                assert_eq!(got, want, "subscribe({conn}, {ch})");
            }
            HubOp::Unsubscribe(conn, ch) => {
                let (conn, ch) = (conn % 6, CHANNELS[usize::from(ch) % 4]);
                let removed = model.members.get_mut(ch).is_some_and(|m| m.remove(&conn));
                let want = removed.then(|| model.count(ch));
                assert_eq!(hub.unsubscribe(conn, ch), want, "unsubscribe({conn}, {ch})");
            }
            HubOp::RemoveConn(conn) => {
                let conn = conn % 6;
                let mut n = 0;
                for m in model.members.values_mut() {
                    n += usize::from(m.remove(&conn));
                }
                assert_eq!(hub.remove_conn(conn), n, "remove_conn({conn})");
            }
            HubOp::SetRemote(ch, n) => {
                let (ch, n) = (CHANNELS[usize::from(ch) % 4], usize::from(n % 5));
                hub.set_remote_count(ch, n);
                model.remote.insert(ch, n);
            }
            HubOp::SetLimits(subs, per_client) => {
                model.limits = HubLimits {
                    max_subscribers: limit(subs),
                    max_channels_per_client: limit(per_client),
                };
                hub.set_limits(model.limits);
            }
        }
        model.members.retain(|_, m| !m.is_empty());
        compare(&hub, &model);
    }
}

fn compare(hub: &Hub<u8>, model: &Model) {
    assert_eq!(hub.limits(), model.limits);
    for ch in CHANNELS {
        assert_eq!(hub.count(ch), model.count(ch), "count({ch})");
        assert_eq!(hub.local_count(ch), model.local(ch), "local_count({ch})");
        let subs: BTreeSet<u8> = hub.subscribers(ch).collect();
        assert_eq!(
            subs.len(),
            hub.local_count(ch),
            "duplicate subscribers of {ch}"
        );
        assert_eq!(
            Some(&subs),
            model.members.get(ch).or(Some(&BTreeSet::new()))
        );
    }
    for conn in 0..6 {
        let mine: Vec<&str> = hub.channels_of(conn).collect();
        let set: BTreeSet<&str> = mine.iter().copied().collect();
        assert_eq!(set.len(), mine.len(), "duplicate channels of {conn}");
        assert_eq!(set, model.channels_of(conn), "channels_of({conn})");
        for ch in CHANNELS {
            assert_eq!(hub.is_subscribed(conn, ch), set.contains(ch));
        }
    }
    let live = CHANNELS.iter().filter(|c| model.count(c) > 0).count();
    assert_eq!(hub.channel_count(), live, "channel_count");
    let local: BTreeMap<&str, usize> = hub.local_counts().collect();
    let want: BTreeMap<&str, usize> = model.members.iter().map(|(c, m)| (*c, m.len())).collect();
    assert_eq!(local, want, "local_counts");
}
