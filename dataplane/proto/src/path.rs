//! Request-path normalization: the one path that routing, the firewall and the origin see.
//!
//! Step 2 of a connection's life (docs/architecture.md): [`crate::handshake::parse_request`]
//! normalizes the path of the request-target once; [`crate::route::RouteTable::find`] and the
//! firewall's `path` criteria match the result, and
//! [`crate::handshake::rewrite_for_origin`] forwards it (query unchanged). Matching the raw
//! text while the origin normalizes would let `/x/../internal` or `/%69nternal` reach a route
//! the configuration closes; forwarding the normalized path means the origin is asked for
//! exactly what was matched. Pure: no I/O; allocates only when the path changes.
//!
//! The rules (RFC 3986 §6.2.2 plus the choices of nginx and Envoy), documented for operators
//! in docs/configuration.md ("How paths are matched"):
//! - percent-escapes of unreserved characters (`ALPHA DIGIT - . _ ~`) are decoded, other
//!   escapes are kept with upper-case hex (`%c3%a9` → `%C3%A9`); `%` without two hex digits
//!   is an error, and so is an escaped control character (`%00`-`%1F`, `%7F`);
//! - `%2F`, `%5C` and a literal `\` follow [`EncodedSlashes`];
//! - duplicate slashes are merged (`//a///b` → `/a/b`, as nginx's `merge_slashes`);
//! - dot-segments are removed (RFC 3986 §5.2.4, after decoding, so `%2e%2e` is `..`); a `..`
//!   that would climb above `/` is an error, not clamped;
//! - a segment that is `.`, `..` or empty followed by `;parameters` (`..;x`, `;x`) is an
//!   error: Java servlet containers read `/..;/` as `/../` and `/;x/` as `//`;
//! - `#` is an error (a request-target carries no fragment, RFC 9112 §3.2).
//!
//! Everything else, letters' case and non-ASCII bytes included, is kept as sent.

use std::borrow::Cow;

/// What `%2F`, `%5C` and a literal `\` in a path mean.
///
/// Some origins decode `%2F` (or treat `\` as `/`) before routing and others do not, so a
/// path holding them can name two different resources; the safe default refuses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum EncodedSlashes {
    /// 400 Bad Request (the default).
    #[default]
    Reject,
    /// Data, not a separator: matched and forwarded as `%2F` / `%5C` (a literal `\` becomes
    /// `%5C`). Only safe when the origins do not decode them either.
    Keep,
    /// Separators: decoded to `/` before duplicate slashes and dot-segments are resolved,
    /// and forwarded decoded.
    Decode,
}

/// Why a path cannot be normalized safely (the request gets 400 and is never forwarded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("path does not start with '/'")]
    NotAbsolute,
    /// `%` not followed by two hex digits.
    #[error("invalid percent-escape")]
    BadEscape,
    /// `%00`-`%1F` or `%7F`.
    #[error("percent-encoded control character")]
    EncodedControl,
    /// `%2F`, `%5C` or `\` with [`EncodedSlashes::Reject`].
    #[error("encoded slash or backslash")]
    EncodedSlash,
    /// A `..` segment above the root.
    #[error("dot-segment above the root")]
    AboveRoot,
    /// `.`, `..` or an empty segment followed by `;parameters`.
    #[error("path parameters on a dot or empty segment")]
    SegmentParams,
    /// A `#` in the request-target.
    #[error("fragment in the request-target")]
    Fragment,
}

impl PathError {
    /// A snake_case label for counters and the access log.
    pub fn reason(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "bad_request_path_not_absolute",
            PathError::BadEscape => "bad_request_path_bad_escape",
            PathError::EncodedControl => "bad_request_path_encoded_control",
            PathError::EncodedSlash => "bad_request_path_encoded_slash",
            PathError::AboveRoot => "bad_request_path_above_root",
            PathError::SegmentParams => "bad_request_path_segment_params",
            PathError::Fragment => "bad_request_fragment",
        }
    }
}

/// The normal form of `path` (the part of an origin-form target before `?`).
///
/// Borrowed when `path` is already normal (the common case costs one pass and no
/// allocation). The result starts with `/`, has no empty (except a trailing one), `.` or `..`
/// segment, no escaped unreserved character, only upper-case escapes, and is its own normal
/// form: `normalize(normalize(p)) == normalize(p)`.
pub fn normalize(path: &str, slashes: EncodedSlashes) -> Result<Cow<'_, str>, PathError> {
    if is_plainly_normal(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    let out = normalize_owned(path, slashes)?;
    Ok(if out == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(out)
    })
}

/// True if `path` is normal without looking closer: it starts with `/` and has no `%`, `\`
/// or `#`, no empty segment but the last, and no dot-like segment.
fn is_plainly_normal(p: &[u8]) -> bool {
    if p.first() != Some(&b'/') {
        return false;
    }
    let mut seg_start = 1;
    for i in 1..=p.len() {
        let b = p.get(i).copied().unwrap_or(b'/');
        match b {
            b'%' | b'\\' | b'#' => return false,
            b'/' => {
                let seg = &p[seg_start..i];
                if (seg.is_empty() && i < p.len()) || is_dot_like(seg) {
                    return false;
                }
                seg_start = i + 1;
            }
            _ => {}
        }
    }
    true
}

/// `.` or `..`, or a segment whose part before `;` is empty, `.` or `..`.
fn is_dot_like(seg: &[u8]) -> bool {
    let name = match seg.iter().position(|&b| b == b';') {
        Some(i) => &seg[..i],
        None => return seg == b"." || seg == b"..",
    };
    matches!(name, b"" | b"." | b"..")
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The full algorithm: decode, then resolve segments.
fn normalize_owned(path: &str, slashes: EncodedSlashes) -> Result<String, PathError> {
    let p = path.as_bytes();
    if p.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // 1. Escapes and backslashes. After this, `/` is the only separator and every escape
    //    left is canonical and stands for data.
    let mut decoded: Vec<u8> = Vec::with_capacity(p.len());
    let separator = |decoded: &mut Vec<u8>, escaped: &[u8; 3]| match slashes {
        EncodedSlashes::Reject => Err(PathError::EncodedSlash),
        EncodedSlashes::Keep => {
            decoded.extend_from_slice(escaped);
            Ok(())
        }
        EncodedSlashes::Decode => {
            decoded.push(b'/');
            Ok(())
        }
    };
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    p.get(i + 1).copied().and_then(hex_value),
                    p.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let v = hi << 4 | lo;
                if is_unreserved(v) {
                    decoded.push(v);
                } else if v < 0x20 || v == 0x7f {
                    return Err(PathError::EncodedControl);
                } else if v == b'/' {
                    separator(&mut decoded, b"%2F")?;
                } else if v == b'\\' {
                    separator(&mut decoded, b"%5C")?;
                } else {
                    decoded.extend_from_slice(&[b'%', HEX[usize::from(hi)], HEX[usize::from(lo)]]);
                }
                i += 3;
            }
            b'\\' => {
                separator(&mut decoded, b"%5C")?;
                i += 1;
            }
            b'#' => return Err(PathError::Fragment),
            b => {
                decoded.push(b);
                i += 1;
            }
        }
    }

    // 2. Segments: merge empty ones, resolve dot-segments (RFC 3986 §5.2.4).
    let mut kept: Vec<&[u8]> = Vec::new();
    // Whether the path ends with a slash (a trailing empty, `.` or `..` segment).
    let mut trailing = false;
    for seg in decoded[1..].split(|&b| b == b'/') {
        trailing = true;
        match seg {
            b"" | b"." => {}
            b".." => {
                kept.pop().ok_or(PathError::AboveRoot)?;
            }
            _ if is_dot_like(seg) => return Err(PathError::SegmentParams),
            _ => {
                kept.push(seg);
                trailing = false;
            }
        }
    }
    let mut out = Vec::with_capacity(decoded.len());
    for seg in &kept {
        out.push(b'/');
        out.extend_from_slice(seg);
    }
    if trailing || kept.is_empty() {
        out.push(b'/');
    }
    // Only ASCII bytes were added or replaced, whole, so this is still UTF-8.
    String::from_utf8(out).map_err(|_| PathError::BadEscape)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODES: [EncodedSlashes; 3] = [
        EncodedSlashes::Reject,
        EncodedSlashes::Keep,
        EncodedSlashes::Decode,
    ];

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p, EncodedSlashes::Reject).map(Cow::into_owned)
    }

    fn norm_in(p: &str, mode: EncodedSlashes) -> Result<String, PathError> {
        normalize(p, mode).map(Cow::into_owned)
    }

    #[test]
    fn attacker_paths_normalize_to_the_closed_path() {
        for p in [
            "/x/../internal",
            "/%69nternal",
            "/x/%2E%2E/internal",
            "/%2E/internal",
            "//internal",
            "///internal",
            "/./internal",
            "/internal/.",
            "/a/b/../../internal",
            "/%69%6E%74%65%72%6e%61%6c",
            "/x/%2e%2e/internal",
            "/x/.%2e/internal",
        ] {
            let n = norm(p).unwrap_or_else(|e| panic!("{p}: {e}"));
            assert!(
                n == "/internal" || n == "/internal/",
                "{p} normalized to {n}"
            );
        }
        assert_eq!(norm("/internal/./").as_deref(), Ok("/internal/"));
        assert_eq!(norm("/internal//x").as_deref(), Ok("/internal/x"));
    }

    #[test]
    fn unsafe_paths_are_errors() {
        let cases = [
            ("/..", PathError::AboveRoot),
            ("/../internal", PathError::AboveRoot),
            ("/%2e%2e/internal", PathError::AboveRoot),
            ("/a/../../internal", PathError::AboveRoot),
            ("//..", PathError::AboveRoot),
            ("/%2Finternal", PathError::EncodedSlash),
            ("/%2finternal", PathError::EncodedSlash),
            ("/x%5C..%5Cinternal", PathError::EncodedSlash),
            ("/x\\..\\internal", PathError::EncodedSlash),
            ("/%", PathError::BadEscape),
            ("/%4", PathError::BadEscape),
            ("/%zz", PathError::BadEscape),
            ("/%g0", PathError::BadEscape),
            ("/a%2", PathError::BadEscape),
            ("/%%41", PathError::BadEscape),
            ("/%00", PathError::EncodedControl),
            ("/a%0Ab", PathError::EncodedControl),
            ("/a%0d%0aX-Injected:1", PathError::EncodedControl),
            ("/%1F", PathError::EncodedControl),
            ("/%7f", PathError::EncodedControl),
            ("/x/..;/internal", PathError::SegmentParams),
            ("/x/.;a/internal", PathError::SegmentParams),
            ("/;x/internal", PathError::SegmentParams),
            ("/%2e%2e;x/internal", PathError::SegmentParams),
            ("/a#/../internal", PathError::Fragment),
            ("/a#", PathError::Fragment),
            ("", PathError::NotAbsolute),
            ("internal", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
        ];
        for (p, want) in cases {
            assert_eq!(norm(p), Err(want), "{p:?}");
        }
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in [
            "/",
            "/ws",
            "/ws/",
            "/ws/chat",
            "/a.b/c..d/.e/..f/",
            "/a;b=c/d;e",
            "/%20x",
            "/caf%C3%A9",
            "/ümlaut/",
            "/a:b@c!$&'()*+,=",
            "/.well-known/x",
        ] {
            for mode in MODES {
                assert!(
                    matches!(normalize(p, mode), Ok(Cow::Borrowed(b)) if b == p),
                    "{p} in {mode:?}: {:?}",
                    normalize(p, mode)
                );
            }
        }
    }

    #[test]
    fn escapes_are_decoded_or_made_upper_case() {
        assert_eq!(norm("/%41%7a%30%2D%2e%5F%7E").as_deref(), Ok("/Az0-._~"));
        assert_eq!(norm("/caf%c3%a9").as_deref(), Ok("/caf%C3%A9"));
        assert_eq!(norm("/a%20b%3fc%25").as_deref(), Ok("/a%20b%3Fc%25"));
        // An escaped '%' is not decoded into a new escape.
        assert_eq!(norm("/%2541").as_deref(), Ok("/%2541"));
        assert_eq!(norm("/%25%32%65").as_deref(), Ok("/%252e"));
        // Mixed-case hex of an unreserved character.
        assert_eq!(norm("/%6E%6f").as_deref(), Ok("/no"));
    }

    #[test]
    fn dot_segments_and_slashes() {
        let cases = [
            ("/a/b/c/./../../g", "/a/g"),
            ("/mid/content=5/../6", "/mid/6"),
            ("/a/.", "/a/"),
            ("/a/..", "/"),
            ("/a/b/..", "/a/"),
            ("/a/b/../", "/a/"),
            ("/./", "/"),
            ("/.", "/"),
            ("//", "/"),
            ("/a//", "/a/"),
            ("/a//b///c", "/a/b/c"),
            ("/ws/./chat", "/ws/chat"),
            ("/a/./b/.", "/a/b/"),
            ("/a/.../b", "/a/.../b"),
        ];
        for (p, want) in cases {
            assert_eq!(norm(p).as_deref(), Ok(want), "{p}");
        }
    }

    #[test]
    fn encoded_slash_modes() {
        let keep = EncodedSlashes::Keep;
        let decode = EncodedSlashes::Decode;
        assert_eq!(norm_in("/%2Finternal", keep).as_deref(), Ok("/%2Finternal"));
        assert_eq!(norm_in("/%2finternal", keep).as_deref(), Ok("/%2Finternal"));
        assert_eq!(norm_in("/a\\b", keep).as_deref(), Ok("/a%5Cb"));
        assert_eq!(norm_in("/a%5cb", keep).as_deref(), Ok("/a%5Cb"));
        // Kept escapes are data: not a separator, so no dot-segment forms around them.
        assert_eq!(
            norm_in("/x/..%2Finternal", keep).as_deref(),
            Ok("/x/..%2Finternal")
        );
        assert_eq!(norm_in("/%2Finternal", decode).as_deref(), Ok("/internal"));
        assert_eq!(
            norm_in("/x%2F..%2Finternal", decode).as_deref(),
            Ok("/internal")
        );
        assert_eq!(
            norm_in("/x\\..\\internal", decode).as_deref(),
            Ok("/internal")
        );
        assert_eq!(norm_in("/a%5C%5Cb", decode).as_deref(), Ok("/a/b"));
        assert_eq!(norm_in("/%2F..", decode), Err(PathError::AboveRoot));
        for mode in MODES {
            // The other rules do not depend on the mode.
            assert_eq!(norm_in("/%00", mode), Err(PathError::EncodedControl));
            assert_eq!(norm_in("/%G1", mode), Err(PathError::BadEscape));
            assert_eq!(norm_in("/x/../internal", mode).as_deref(), Ok("/internal"));
        }
    }

    #[test]
    fn reason_labels_are_distinct_snake_case() {
        let all = [
            PathError::NotAbsolute,
            PathError::BadEscape,
            PathError::EncodedControl,
            PathError::EncodedSlash,
            PathError::AboveRoot,
            PathError::SegmentParams,
            PathError::Fragment,
        ];
        let mut labels: Vec<&str> = all.iter().map(|e| e.reason()).collect();
        for l in &labels {
            assert!(
                l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{l}"
            );
        }
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), all.len());
    }

    /// Invariants of a normalized path.
    fn assert_normal(p: &str, n: &str, mode: EncodedSlashes) {
        assert!(n.starts_with('/'), "{p:?} -> {n:?}");
        let segs: Vec<&str> = n[1..].split('/').collect();
        for (k, s) in segs.iter().enumerate() {
            assert!(
                !s.is_empty() || k + 1 == segs.len(),
                "{p:?} -> {n:?}: empty segment"
            );
            assert!(*s != "." && *s != "..", "{p:?} -> {n:?}: dot segment");
            assert!(!is_dot_like(s.as_bytes()), "{p:?} -> {n:?}: {s:?}");
        }
        assert!(!n.contains('\\') && !n.contains('#'), "{p:?} -> {n:?}");
        let b = n.as_bytes();
        for (k, _) in n.match_indices('%') {
            let (hi, lo) = (b[k + 1], b[k + 2]);
            assert!(
                (hi.is_ascii_digit() || hi.is_ascii_uppercase())
                    && (lo.is_ascii_digit() || lo.is_ascii_uppercase()),
                "{p:?} -> {n:?}: escape not upper-case"
            );
            let v = hex_value(hi).unwrap_or(0) << 4 | hex_value(lo).unwrap_or(0);
            assert!(
                !is_unreserved(v) && v >= 0x20 && v != 0x7f,
                "{p:?} -> {n:?}"
            );
            if v == b'/' || v == b'\\' {
                assert_eq!(mode, EncodedSlashes::Keep, "{p:?} -> {n:?}");
            }
        }
    }

    /// Property test: random paths from an alphabet rich in what the rules care about.
    /// Whatever is accepted is normal and its own normal form (returned borrowed), and the
    /// fast check never calls a path normal that the full algorithm would change.
    #[test]
    fn normalization_is_idempotent_and_stays_under_the_root() {
        let alphabet: &[&str] = &[
            "/", "/", "/", ".", ".", "..", "%", "%2e", "%2E", "%2f", "%2F", "%5c", "\\", "%41",
            "%6e", "%c3", "%00", "%25", "%g", ";", "a", "b", "internal", "~", "-", "#", "é", "4",
            "E", "f",
        ];
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut accepted = 0;
        for _ in 0..30_000 {
            let len = (next() % 12) as usize;
            let mut p = String::from(if next() % 8 == 0 { "" } else { "/" });
            for _ in 0..len {
                p.push_str(alphabet[(next() % alphabet.len() as u64) as usize]);
            }
            for mode in MODES {
                let fast = is_plainly_normal(p.as_bytes());
                let slow = normalize_owned(&p, mode);
                if fast {
                    assert_eq!(slow.as_deref(), Ok(p.as_str()), "fast path on {p:?}");
                }
                let Ok(n) = normalize(&p, mode) else {
                    continue;
                };
                accepted += 1;
                assert_eq!(slow.as_deref(), Ok(&*n));
                assert_normal(&p, &n, mode);
                match normalize(&n, mode) {
                    Ok(Cow::Borrowed(again)) => assert_eq!(again, &*n, "{p:?}"),
                    other => panic!("{p:?} -> {n:?} -> {other:?}: not its own normal form"),
                }
            }
        }
        assert!(accepted > 10_000, "only {accepted} accepted: a weak test");
    }
}
