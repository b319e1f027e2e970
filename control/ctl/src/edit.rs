//! Live edits of the desired configuration (`origins add|remove`, `limits set`,
//! `lists add|remove`), made on the
//! TOML document itself with toml_edit so the operator's comments and layout survive. The
//! result is text: the daemon validates it with `Config::from_toml` like any other
//! configuration before it is persisted or pushed.

use std::net::SocketAddr;

use toml_edit::{ArrayOfTables, DocumentMut, InlineTable, Item, Table, Value, value};
use wsedge_command::firewall::{Cidr, parse_cidr};

/// Limits a route may override (the rest are `[limits]` only).
const ROUTE_KEYS: [&str; 5] = [
    "origin_connect_timeout",
    "origin_handshake_timeout",
    "idle_timeout",
    "max_connection_time",
    "max_connection_time_jitter",
];
/// Limits that are integers; the others are durations such as "30s".
const INTEGER_KEYS: [&str; 3] = [
    "max_head_bytes",
    "max_headers",
    "max_connection_time_jitter",
];
const GLOBAL_ONLY_KEYS: [&str; 3] = ["max_head_bytes", "max_headers", "handshake_timeout"];

/// Why an edit could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum EditError {
    #[error("the desired configuration does not parse: {0}")]
    Document(String),
    #[error("no route named {0:?}")]
    NoRoute(String),
    #[error("{addr} is not an origin of route {route:?}")]
    NoOrigin { route: String, addr: String },
    #[error("no network list named {0:?}")]
    NoList(String),
    #[error("{cidr} is not in network list {list:?}")]
    NoEntry { list: String, cidr: String },
    #[error("{0}")]
    Invalid(String),
}

fn parse(text: &str) -> Result<DocumentMut, EditError> {
    text.parse::<DocumentMut>()
        .map_err(|e| EditError::Document(e.to_string()))
}

fn route_table<'a>(doc: &'a mut DocumentMut, route: &str) -> Result<&'a mut Table, EditError> {
    doc.get_mut("route")
        .and_then(Item::as_array_of_tables_mut)
        .and_then(|routes| {
            routes
                .iter_mut()
                .find(|t| t.get("name").and_then(Item::as_str) == Some(route))
        })
        .ok_or_else(|| EditError::NoRoute(route.to_owned()))
}

fn check_addr(addr: &str) -> Result<SocketAddr, EditError> {
    addr.parse::<SocketAddr>()
        .map_err(|_| EditError::Invalid(format!("{addr:?} is not an IP:port address")))
}

/// Adds `addr` to the origins of `route`.
pub(crate) fn origin_add(text: &str, route: &str, addr: &str) -> Result<String, EditError> {
    let wanted = check_addr(addr)?;
    let mut doc = parse(text)?;
    let table = route_table(&mut doc, route)?;
    if table.get("origins").is_none() {
        table.insert("origins", value(toml_edit::Array::new()));
    }
    let origins = table
        .get_mut("origins")
        .and_then(Item::as_array_mut)
        .ok_or_else(|| EditError::Invalid(format!("route {route:?}: origins is not an array")))?;
    let present = origins
        .iter()
        .any(|v| v.as_str().and_then(|s| s.parse::<SocketAddr>().ok()) == Some(wanted));
    if present {
        return Err(EditError::Invalid(format!(
            "{addr} is already an origin of route {route:?}"
        )));
    }
    origins.push(wanted.to_string());
    Ok(doc.to_string())
}

/// Removes `addr` from the origins of `route`.
pub(crate) fn origin_remove(text: &str, route: &str, addr: &str) -> Result<String, EditError> {
    let wanted = check_addr(addr)?;
    let mut doc = parse(text)?;
    let table = route_table(&mut doc, route)?;
    let origins = table.get_mut("origins").and_then(Item::as_array_mut);
    let position = origins.as_ref().and_then(|o| {
        o.iter()
            .position(|v| v.as_str().and_then(|s| s.parse::<SocketAddr>().ok()) == Some(wanted))
    });
    match (origins, position) {
        (Some(origins), Some(i)) => {
            if origins.len() == 1 {
                return Err(EditError::Invalid(format!(
                    "{addr} is the last origin of route {route:?}; add another one first"
                )));
            }
            origins.remove(i);
            Ok(doc.to_string())
        }
        _ => Err(EditError::NoOrigin {
            route: route.to_owned(),
            addr: addr.to_owned(),
        }),
    }
}

/// The `[[list]]` array of tables, created when `create` and absent.
fn lists(doc: &mut DocumentMut, create: bool) -> Result<Option<&mut ArrayOfTables>, EditError> {
    if doc.get("list").is_none() {
        if !create {
            return Ok(None);
        }
        doc.insert("list", Item::ArrayOfTables(ArrayOfTables::new()));
    }
    doc.get_mut("list")
        .and_then(Item::as_array_of_tables_mut)
        .map(Some)
        .ok_or_else(|| {
            EditError::Invalid("list is not written as [[list]] tables; edit the file".to_owned())
        })
}

/// The network of one `entries` element (a string, or an inline table's `cidr`).
fn entry_network(v: &Value) -> Option<Cidr> {
    let text = match v {
        Value::String(s) => s.value().as_str(),
        Value::InlineTable(t) => t.get("cidr")?.as_str()?,
        _ => return None,
    };
    parse_cidr(text).ok()
}

/// Adds `cidr` to list `name` (the list is created if absent), with an expiry in unix
/// seconds; an entry for the same network is replaced (so this also changes an expiry).
pub(crate) fn list_add(
    text: &str,
    name: &str,
    cidr: &str,
    expires: Option<u64>,
) -> Result<String, EditError> {
    let network = parse_cidr(cidr).map_err(EditError::Invalid)?;
    let normal = network.to_string();
    let mut doc = parse(text)?;
    let tables = lists(&mut doc, true)?.ok_or_else(|| EditError::NoList(name.to_owned()))?;
    let position = tables
        .iter()
        .position(|t| t.get("name").and_then(Item::as_str) == Some(name));
    let table = match position {
        Some(i) => tables
            .get_mut(i)
            .ok_or_else(|| EditError::NoList(name.to_owned()))?,
        None => {
            let mut t = Table::new();
            t.insert("name", value(name));
            tables.push(t);
            let last = tables.len() - 1;
            tables
                .get_mut(last)
                .ok_or_else(|| EditError::NoList(name.to_owned()))?
        }
    };
    if table.get("entries").is_none() {
        table.insert("entries", value(toml_edit::Array::new()));
    }
    let entries = table
        .get_mut("entries")
        .and_then(Item::as_array_mut)
        .ok_or_else(|| EditError::Invalid(format!("list {name:?}: entries is not an array")))?;
    entries.retain(|v| entry_network(v) != Some(network));
    match expires {
        None => entries.push(normal),
        Some(at) => {
            let at = i64::try_from(at)
                .map_err(|_| EditError::Invalid(format!("expiry {at} is out of range")))?;
            let mut entry = InlineTable::new();
            entry.insert("cidr", normal.into());
            entry.insert("expires", at.into());
            entries.push(entry);
        }
    }
    Ok(doc.to_string())
}

/// Removes the entry for `cidr` from list `name` (the list stays, possibly empty: rules may
/// name it).
pub(crate) fn list_remove(text: &str, name: &str, cidr: &str) -> Result<String, EditError> {
    let network = parse_cidr(cidr).map_err(EditError::Invalid)?;
    let mut doc = parse(text)?;
    let table = lists(&mut doc, false)?
        .and_then(|tables| {
            tables
                .iter_mut()
                .find(|t| t.get("name").and_then(Item::as_str) == Some(name))
        })
        .ok_or_else(|| EditError::NoList(name.to_owned()))?;
    let no_entry = || EditError::NoEntry {
        list: name.to_owned(),
        cidr: cidr.to_owned(),
    };
    let entries = table
        .get_mut("entries")
        .and_then(Item::as_array_mut)
        .ok_or_else(no_entry)?;
    let before = entries.len();
    entries.retain(|v| entry_network(v) != Some(network));
    if entries.len() == before {
        return Err(no_entry());
    }
    Ok(doc.to_string())
}

/// Sets one limit in `[limits]`, or in route `route`.
pub(crate) fn limits_set(
    text: &str,
    key: &str,
    raw: &str,
    route: Option<&str>,
) -> Result<String, EditError> {
    let known = ROUTE_KEYS.contains(&key) || GLOBAL_ONLY_KEYS.contains(&key);
    if !known {
        let mut all: Vec<&str> = GLOBAL_ONLY_KEYS
            .iter()
            .chain(&ROUTE_KEYS)
            .copied()
            .collect();
        all.sort_unstable();
        return Err(EditError::Invalid(format!(
            "unknown limit {key:?}; known: {}",
            all.join(", ")
        )));
    }
    if route.is_some() && !ROUTE_KEYS.contains(&key) {
        return Err(EditError::Invalid(format!(
            "{key} is set in [limits] only; a route may override {}",
            ROUTE_KEYS.join(", ")
        )));
    }
    let item = if INTEGER_KEYS.contains(&key) {
        let n: i64 = raw
            .parse()
            .map_err(|_| EditError::Invalid(format!("{key} takes an integer, not {raw:?}")))?;
        value(n)
    } else {
        value(raw)
    };
    let mut doc = parse(text)?;
    let table = match route {
        Some(name) => route_table(&mut doc, name)?,
        None => {
            if doc.get("limits").is_none() {
                doc.insert("limits", Item::Table(Table::new()));
            }
            doc.get_mut("limits")
                .and_then(Item::as_table_mut)
                .ok_or_else(|| EditError::Invalid("limits is not a table".to_owned()))?
        }
    };
    table.insert(key, item);
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsedge_command::Config;

    const BASE: &str = "# edge\n[limits]\nidle_timeout = \"1m\" # short\n\n[[route]]\nname = \"chat\"\norigins = [\"127.0.0.1:9001\"]\n\n[[route]]\nname = \"news\"\norigins = [\"127.0.0.1:9002\", \"127.0.0.1:9003\"]\n";

    fn valid(text: &str) -> Config {
        Config::from_toml(text, "edited").expect("edited config validates")
    }

    #[test]
    fn add_and_remove_origins_keep_comments() {
        let text = origin_add(BASE, "chat", "127.0.0.1:9010").expect("add");
        assert!(
            text.contains("# edge") && text.contains("# short"),
            "{text}"
        );
        let config = valid(&text);
        assert_eq!(config.routes[0].origins.len(), 2);
        let text = origin_remove(&text, "chat", "127.0.0.1:9001").expect("remove");
        let config = valid(&text);
        assert_eq!(
            config.routes[0].origins,
            vec!["127.0.0.1:9010".parse::<SocketAddr>().expect("addr")]
        );
        assert_eq!(config.routes[1].origins.len(), 2);
    }

    #[test]
    fn origin_errors() {
        assert_eq!(
            origin_add(BASE, "nope", "127.0.0.1:1"),
            Err(EditError::NoRoute("nope".into()))
        );
        assert!(matches!(
            origin_add(BASE, "chat", "localhost"),
            Err(EditError::Invalid(_))
        ));
        assert!(matches!(
            origin_add(BASE, "chat", "127.0.0.1:9001"),
            Err(EditError::Invalid(_))
        ));
        assert!(matches!(
            origin_remove(BASE, "chat", "127.0.0.1:9999"),
            Err(EditError::NoOrigin { .. })
        ));
        assert!(matches!(
            origin_remove(BASE, "chat", "127.0.0.1:9001"),
            Err(EditError::Invalid(m)) if m.contains("last origin")
        ));
    }

    #[test]
    fn edit_lists() {
        let base = format!(
            "{BASE}\n# the bad ones\n[[list]]\nname = \"blocked\"\nentries = [\"10.0.0.0/8\"] # keep\n\n[[rule]]\nname = \"deny\"\nwhen = {{ client_in = \"blocked\" }}\naction = \"deny\"\n"
        );
        let text = list_add(&base, "blocked", "127.0.0.5", Some(1_900_000_000)).expect("add");
        assert!(
            text.contains("# the bad ones") && text.contains("# keep"),
            "{text}"
        );
        assert!(
            text.contains("{ cidr = \"127.0.0.5/32\", expires = 1900000000 }"),
            "{text}"
        );
        let lists = &valid(&text).firewall.lists;
        assert_eq!(lists[0].entries.len(), 2);
        assert_eq!(lists[0].entries[1].expires, Some(1_900_000_000));
        // The same network again replaces the entry (here: no expiry any more).
        let text = list_add(&text, "blocked", "127.0.0.5/32", None).expect("replace");
        let lists = &valid(&text).firewall.lists;
        assert_eq!(lists[0].entries.len(), 2);
        assert_eq!(lists[0].entries[1].expires, None);
        // A new list is created.
        let text = list_add(&text, "partners", "2001:db8::/32", None).expect("new list");
        let lists = &valid(&text).firewall.lists;
        assert_eq!(lists[1].name, "partners");
        let text = list_remove(&text, "blocked", "10.0.0.0/8").expect("remove");
        let text = list_remove(&text, "blocked", "127.0.0.5").expect("remove host");
        let lists = &valid(&text).firewall.lists;
        assert!(lists[0].entries.is_empty(), "the list stays for its rule");
        assert_eq!(
            list_remove(&text, "blocked", "10.0.0.0/8"),
            Err(EditError::NoEntry {
                list: "blocked".into(),
                cidr: "10.0.0.0/8".into()
            })
        );
        assert_eq!(
            list_remove(BASE, "nope", "10.0.0.0/8"),
            Err(EditError::NoList("nope".into()))
        );
        assert!(matches!(
            list_add(BASE, "x", "10.0.0.1/8", None),
            Err(EditError::Invalid(m)) if m.contains("bits set")
        ));
        assert!(matches!(
            list_add(BASE, "x", "nonsense", None),
            Err(EditError::Invalid(_))
        ));
        // No [[list]] yet: created.
        let text = list_add(BASE, "first", "192.0.2.0/24", Some(5)).expect("first list");
        assert_eq!(valid(&text).firewall.lists[0].entries[0].expires, Some(5));
    }

    #[test]
    fn set_limits() {
        let text = limits_set(BASE, "idle_timeout", "5m", None).expect("global");
        assert_eq!(
            valid(&text).limits.idle_timeout,
            std::time::Duration::from_secs(300)
        );
        let text = limits_set(&text, "max_headers", "32", None).expect("integer");
        assert_eq!(valid(&text).limits.max_headers, 32);
        let text = limits_set(&text, "idle_timeout", "30s", Some("news")).expect("route");
        let config = valid(&text);
        assert_eq!(
            config.routes[1].limits.idle_timeout,
            std::time::Duration::from_secs(30)
        );
        assert_eq!(
            config.routes[0].limits.idle_timeout,
            std::time::Duration::from_secs(300)
        );
        assert!(limits_set(BASE, "max_headers", "many", None).is_err());
        assert!(limits_set(BASE, "max_headers", "8", Some("chat")).is_err());
        assert!(limits_set(BASE, "speed", "8", None).is_err());
        // Values are checked by validation, which names the field.
        let text = limits_set(BASE, "idle_timeout", "soon", None).expect("edit");
        let err = Config::from_toml(&text, "edited").expect_err("invalid");
        assert!(err.to_string().contains("limits.idle_timeout"), "{err}");
        // No [limits] table yet.
        let bare = "[[route]]\nname = \"a\"\norigins = [\"127.0.0.1:1\"]\n";
        let text = limits_set(bare, "handshake_timeout", "3s", None).expect("new table");
        assert_eq!(
            valid(&text).limits.handshake_timeout,
            std::time::Duration::from_secs(3)
        );
    }
}
