//! Errors the TOML parser (or serde, on a key or type the schema does not take) reports,
//! turned into the `file:line: field: message` first line every configuration error has,
//! followed by a caret drawing of the place.
//!
//! The parser gives a byte span and a message; the field is recovered from the text: the
//! table header in force at that line (`[[route]]` tables are numbered `route[0]`,
//! `route[1]`... as the validator names them) and the key of the line, or of the line that
//! opened a multi-line value.

use std::collections::HashMap;
use std::ops::Range;

use super::ConfigError;

/// A `ConfigError::Syntax` for `error`, raised while parsing `text` (from `file`).
pub(super) fn error(text: &str, file: &str, error: &toml::de::Error) -> ConfigError {
    // The parser's message may end with a newline; keep its first line whole.
    let message = error.message().trim().replace('\n', "; ");
    match error.span() {
        Some(span) => {
            let start = floor_boundary(text, span.start);
            let line = text[..start].bytes().filter(|b| *b == b'\n').count() + 1;
            ConfigError::Syntax {
                file: file.to_owned(),
                line,
                field: field_at(text, start),
                message,
                excerpt: excerpt(text, span),
            }
        }
        None => ConfigError::Syntax {
            file: file.to_owned(),
            line: 1,
            field: "(file)".to_owned(),
            message,
            excerpt: String::new(),
        },
    }
}

/// The largest char boundary of `text` at or before `i` (the parser's spans are on char
/// boundaries; this keeps a surprise from becoming a panic).
fn floor_boundary(text: &str, i: usize) -> usize {
    let mut i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// A table header line: `[name]` or `[[name]]` (a trailing comment allowed), with its name
/// and whether it is an array-of-tables header.
fn header(line: &str) -> Option<(&str, bool)> {
    let line = line.split('#').next().unwrap_or_default().trim();
    let (inner, array) = match line.strip_prefix("[[") {
        Some(rest) => (rest.strip_suffix("]]")?, true),
        None => (line.strip_prefix('[')?.strip_suffix(']')?, false),
    };
    let inner = inner.trim();
    let key_like = !inner.is_empty()
        && inner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b' '));
    key_like.then_some((inner, array))
}

/// The key a `key = value` line sets (quotes around a key removed).
fn key_of(line: &str) -> Option<String> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let valid = !key.is_empty()
        && key.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'"' | b'\'' | b' ')
        });
    valid.then(|| key.replace(['"', '\''], ""))
}

/// The dotted field path at byte `pos` of `text`, as the validator names fields.
fn field_at(text: &str, pos: usize) -> String {
    let mut table = String::new();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    // The key of the last `key = ...` line in the current table: a multi-line value's
    // continuation lines belong to it.
    let mut key: Option<String> = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let here = offset <= pos && pos < offset + line.len().max(1);
        offset += line.len();
        if let Some((name, array)) = header(line) {
            table = if array {
                let n = counts.entry(name).or_insert(0);
                *n += 1;
                format!("{name}[{}]", *n - 1)
            } else {
                name.to_owned()
            };
            key = None;
            if here {
                return table;
            }
            continue;
        }
        if let Some(k) = key_of(line) {
            key = Some(k);
        }
        if here {
            break;
        }
    }
    match (table.is_empty(), key) {
        (true, Some(k)) => k,
        (false, Some(k)) => format!("{table}.{k}"),
        (false, None) => table,
        (true, None) => "(top level)".to_owned(),
    }
}

/// The offending line with carets under `span` (on its first line), in the parser's style:
///
/// ```text
///   |
/// 3 | bogus = 2
///   | ^^^^^
/// ```
fn excerpt(text: &str, span: Range<usize>) -> String {
    let start = floor_boundary(text, span.start);
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line_text = text[line_start..line_end].trim_end_matches('\r');
    let number = text[..start].bytes().filter(|b| *b == b'\n').count() + 1;
    let column = text[line_start..start].chars().count();
    let end = floor_boundary(text, span.end.clamp(start, line_end));
    let width = text[start..end].chars().count().max(1);
    let gutter = " ".repeat(number.to_string().len());
    format!(
        "\n{gutter} |\n{number} | {line_text}\n{gutter} | {}{}",
        " ".repeat(column),
        "^".repeat(width)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_follow_tables_and_multiline_values() {
        let text = "top = 1\n[dataplane]\nlisten = [\n  \"a\",\n  1,\n]\n[[route]]\nname = \"a\"\n[[route]] # second\n\"name\" = \"b\"\n[limits]\n";
        let at = |needle: &str| field_at(text, text.find(needle).expect(needle));
        assert_eq!(at("top"), "top");
        assert_eq!(at("[dataplane]"), "dataplane");
        assert_eq!(at("1,"), "dataplane.listen");
        assert_eq!(at("\"a\","), "dataplane.listen");
        assert_eq!(at("name = \"a\""), "route[0].name");
        assert_eq!(at("\"name\" = \"b\""), "route[1].name");
        assert_eq!(at("[[route]] #"), "route[1]");
        assert_eq!(at("[limits]"), "limits");
        assert_eq!(field_at("", 0), "(top level)");
    }

    #[test]
    fn headers_are_not_array_values() {
        assert_eq!(header("[[route]]"), Some(("route", true)));
        assert_eq!(header(" [limits] # x"), Some(("limits", false)));
        assert_eq!(header("  [\"a\", \"b\"],"), None);
        assert_eq!(header("[1, 2]"), None);
    }

    /// Every prefix of a file (most of them broken somewhere) gives an error that leads with
    /// `file:line: field: message`, and never a panic.
    #[test]
    fn every_truncation_is_reported_in_the_documented_form() {
        let text = "[dataplane]\nlisten = [\n  \"127.0.0.1:0\",\n]\nworkers = 2\n\n[[route]] # é\nname = \"ü\"\norigins = [\"127.0.0.1:1\"]\nrelay = \"frames\"\nclose_reason = \"ça va\"\n[[list]]\nname = \"x\"\nentries = [{ cidr = \"10.0.0.0/8\", expires = 5 }]\n";
        for cut in (0..text.len()).filter(|i| text.is_char_boundary(*i)) {
            let part = &text[..cut];
            if let Err(e) = crate::Config::from_toml(part, "f.toml") {
                let msg = e.to_string();
                let first = msg.lines().next().unwrap_or_default();
                let mut fields = first.splitn(4, ": ");
                let place = fields.next().unwrap_or_default();
                assert!(
                    place.starts_with("f.toml:")
                        && place["f.toml:".len()..].parse::<usize>().is_ok()
                        && fields.next().is_some_and(|f| !f.is_empty())
                        && fields.next().is_some(),
                    "cut {cut}: {msg}"
                );
            }
        }
    }

    #[test]
    fn excerpt_points_at_the_span() {
        let text = "[dataplane]\nbogus = 2\n";
        let start = text.find("bogus").expect("bogus");
        assert_eq!(
            excerpt(text, start..start + 5),
            "\n  |\n2 | bogus = 2\n  | ^^^^^"
        );
        let long = format!("{}x = é1\n", "\n".repeat(9));
        let at = long.find('1').expect("1");
        assert_eq!(excerpt(&long, at..at), "\n   |\n10 | x = é1\n   |      ^");
    }
}
