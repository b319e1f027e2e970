//! `since`: a recovering client's position, `?since=<offset>:<epoch>`
//! (`wsedge_proto::recovery`: `parse_since`, `since_of_query`, `query_since`, and the
//! `Display` of `Since` and `Position`).
//!
//! Text inputs (first byte even; the rest read as UTF-8, lossily) check the parsers against
//! a direct reading of the documented grammar: a value is `<offset>:<epoch>` split at the
//! first `:` (or, with none, at the first `%3A` / `%3a`), the offset 1 to 20 decimal digits
//! that fit a `u64`, the epoch 1 to 64 of `A-Z a-z 0-9 _ -`; a query holds at most one
//! `since` pair. What is accepted formats (`Display`) to text that parses back to the same
//! value, with `:` or with `%3A`, alone or inside a query; a request target's `since` is its
//! query's. Nothing panics on any input.
//!
//! Structured inputs (first byte odd) build a position with `arbitrary` (any `u64`, an epoch
//! of the allowed bytes) and a query around it: formatting then parsing gives the same value,
//! for `Since` and `Position` alike.

use arbitrary::{Arbitrary, Unstructured};
use wsedge_proto::recovery::{
    MAX_EPOCH_LEN, Position, Since, SinceError, is_valid_epoch, parse_since, query_since,
    since_of_query,
};

/// The `since` checks (see the module doc). Input: `[selector, rest...]`.
pub fn since(data: &[u8]) {
    let [selector, rest @ ..] = data else {
        return;
    };
    if selector & 1 == 0 {
        check_text(&String::from_utf8_lossy(rest));
    } else {
        let _ = check_built(&mut Unstructured::new(rest));
    }
}

/// The grammar, read directly: `Some((offset, epoch))` when `value` is a valid `since`.
fn model(value: &str) -> Option<(u64, &str)> {
    let (offset, epoch) = match value.find(':') {
        Some(i) => (&value[..i], &value[i + 1..]),
        None => {
            let i = value.to_ascii_lowercase().find("%3a")?;
            (&value[..i], &value[i + 3..])
        }
    };
    let offset_ok = (1..=20).contains(&offset.len()) && offset.chars().all(|c| c.is_ascii_digit());
    let epoch_ok = (1..=MAX_EPOCH_LEN).contains(&epoch.len())
        && epoch
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !offset_ok || !epoch_ok {
        return None;
    }
    Some((offset.parse().ok()?, epoch))
}

/// The query's `since`, read directly: `Err` for two, `Ok(None)` for none.
fn query_model(query: &str) -> Result<Option<(u64, &str)>, SinceError> {
    let values: Vec<&str> = query
        .split('&')
        .filter_map(|pair| match pair.split_once('=') {
            Some(("since", value)) => Some(value),
            None if pair == "since" => Some(""),
            _ => None,
        })
        .collect();
    match values[..] {
        [] => Ok(None),
        [value] => model(value).map(Some).ok_or(SinceError),
        _ => Err(SinceError),
    }
}

fn check_text(text: &str) {
    let parsed = parse_since(text);
    let want = model(text);
    assert_eq!(
        parsed.as_ref().ok().map(|s| (s.offset, s.epoch.as_str())),
        want,
        "parse_since({text:?}) = {parsed:?}"
    );
    if let Ok(since) = &parsed {
        assert!(is_valid_epoch(&since.epoch));
        round_trip(since);
    }
    let query = since_of_query(text);
    let want = query_model(text);
    assert_eq!(
        query
            .as_ref()
            .map(|s| s.as_ref().map(|s| (s.offset, s.epoch.as_str())))
            .map_err(|e| *e),
        want,
        "since_of_query({text:?}) = {query:?}"
    );
    // A target's `since` is its query's: everything after its first `?`.
    assert_eq!(query_since(&format!("/ch/x?{text}")), query);
    if !text.contains('?') {
        assert_eq!(query_since(text), Ok(None), "no query in {text:?}");
    }
}

/// What `Display` writes parses back to the same value, in each of the forms a client
/// may send, alone and in a query.
fn round_trip(since: &Since) {
    let text = since.to_string();
    assert_eq!(parse_since(&text).as_ref(), Ok(since), "{text:?}");
    let escaped = text.replacen(':', "%3A", 1);
    assert_eq!(parse_since(&escaped).as_ref(), Ok(since), "{escaped:?}");
    let target = format!("/ch/c?a=1&since={escaped}&b");
    assert_eq!(query_since(&target), Ok(Some(since.clone())), "{target:?}");
    let position = Position {
        offset: since.offset,
        epoch: since.epoch.as_str().into(),
    };
    assert_eq!(
        position.to_string(),
        text,
        "Position and Since format alike"
    );
}

const EPOCH_BYTES: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

fn check_built(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let offset = u64::arbitrary(u)?;
    let len = u.int_in_range(1..=MAX_EPOCH_LEN)?;
    let mut epoch = String::with_capacity(len);
    for _ in 0..len {
        epoch.push(char::from(*u.choose(EPOCH_BYTES)?));
    }
    let since = Since { offset, epoch };
    round_trip(&since);
    // Around other pairs, and given twice: refused.
    let other = String::arbitrary(u)?.replace(['&', '='], "");
    let query = format!("{other}=x&since={since}");
    if other != "since" {
        assert_eq!(since_of_query(&query), Ok(Some(since.clone())), "{query:?}");
    }
    let twice = format!("since={since}&since={since}");
    assert_eq!(since_of_query(&twice), Err(SinceError));
    Ok(())
}
