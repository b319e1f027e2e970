//! Edits of a configuration's text that both the dataplane and the control process make
//! (today: `functions deploy`, which points a `js` route at new code), on the TOML document
//! itself with toml_edit so comments and layout survive. The result is text, validated by
//! [`crate::Config::from_toml`] like any other configuration.

use toml_edit::{DocumentMut, Item, value};

/// `text` with route `route`'s `script` set to `script` (an absolute path). Refused when the
/// text does not parse, there is no such route, or its function is not `js`.
pub fn set_script(text: &str, route: &str, script: &str) -> Result<String, String> {
    if !std::path::Path::new(script).is_absolute() {
        return Err(format!("{script:?}: give the script as an absolute path"));
    }
    let mut doc = text
        .parse::<DocumentMut>()
        .map_err(|e| format!("the configuration does not parse: {e}"))?;
    let table = doc
        .get_mut("route")
        .and_then(Item::as_array_of_tables_mut)
        .and_then(|routes| {
            routes
                .iter_mut()
                .find(|t| t.get("name").and_then(Item::as_str) == Some(route))
        })
        .ok_or_else(|| format!("no route named {route:?}"))?;
    if table.get("function").and_then(Item::as_str) != Some("js") {
        return Err(format!(
            "route {route:?} is not a JavaScript function (function = \"js\")"
        ));
    }
    table.insert("script", value(script));
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# the edge\n[dataplane]\nlisten = [\"127.0.0.1:0\"]\n\n[[route]]\nname = \"echo\"\npath_prefix = \"/e\"\nfunction = \"echo\"\n\n[[route]]\nname = \"chat\" # rooms\npath_prefix = \"/chat\"\nfunction = \"js\"\nscript = \"chat.js\"\n";

    #[test]
    fn sets_the_script_of_a_js_route_and_keeps_comments() {
        let out = set_script(TEXT, "chat", "/srv/fn/chat2.js").expect("edited");
        assert!(out.contains("script = \"/srv/fn/chat2.js\""), "{out}");
        assert!(
            out.contains("# the edge") && out.contains("# rooms"),
            "{out}"
        );
        assert!(!out.contains("\"chat.js\""), "{out}");
    }

    #[test]
    fn refuses_what_it_cannot_edit() {
        assert!(
            set_script(TEXT, "nope", "/x.js")
                .unwrap_err()
                .contains("no route")
        );
        assert!(
            set_script(TEXT, "echo", "/x.js")
                .unwrap_err()
                .contains("not a JavaScript")
        );
        assert!(
            set_script(TEXT, "chat", "x.js")
                .unwrap_err()
                .contains("absolute")
        );
        assert!(set_script("[[route", "chat", "/x.js").is_err());
    }
}
