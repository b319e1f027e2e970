//! The `[fleet]` table: where a host's control process finds the fleet's shared configuration
//! document in etcd, and under which name it reports itself there. Only `wsedgectl daemon`
//! and `wsedgectl fleet` read it; the dataplane validates it with the rest of the file and
//! ignores it.
//!
//! Keys in etcd, for `prefix = "/wsedge"` and `cluster = "prod"`:
//! - `/wsedge/prod/config`: the document (TOML), laid over each host's file;
//! - `/wsedge/prod/hosts/<host>`: each host's status (JSON), under a lease its daemon keeps
//!   alive, so a host whose daemon is gone disappears after `lease_ttl`.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// The validated `[fleet]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// etcd client URLs (`http://host:port`), tried in order.
    pub etcd: Vec<String>,
    /// The first part of every key (default `/wsedge`).
    pub prefix: String,
    /// The fleet's name: hosts of one cluster share one document.
    pub cluster: String,
    /// This host's name in the fleet (default: the kernel's host name).
    pub host: String,
    /// TTL of the lease the host's status key lives under.
    pub lease_ttl: Duration,
}

impl FleetConfig {
    /// The key of the fleet's configuration document.
    pub fn config_key(&self) -> String {
        format!("{}/{}/config", self.prefix, self.cluster)
    }

    /// The prefix of every host's status key.
    pub fn hosts_prefix(&self) -> String {
        format!("{}/{}/hosts/", self.prefix, self.cluster)
    }

    /// This host's status key.
    pub fn host_key(&self) -> String {
        format!("{}{}", self.hosts_prefix(), self.host)
    }
}

/// The `[fleet]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFleet {
    etcd: Spanned<Vec<String>>,
    #[serde(default)]
    prefix: Option<Spanned<String>>,
    cluster: Spanned<String>,
    #[serde(default)]
    host: Option<Spanned<String>>,
    #[serde(default)]
    lease_ttl: Option<Spanned<String>>,
}

/// A name usable as one etcd key segment: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && name != "."
        && name != ".."
}

/// The kernel's host name, as `hostname` prints it.
pub fn kernel_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Validates `raw`; `invalid(span, field, message)` builds the error naming file and line.
pub(crate) fn validate<E>(
    raw: RawFleet,
    invalid: &dyn Fn(std::ops::Range<usize>, &str, String) -> E,
) -> Result<FleetConfig, E> {
    let span = raw.etcd.span();
    let etcd = raw.etcd.into_inner();
    if etcd.is_empty() {
        return Err(invalid(span, "fleet.etcd", "needs at least one URL".into()));
    }
    for url in &etcd {
        if let Err(e) = check_url(url) {
            return Err(invalid(span, "fleet.etcd", format!("{url:?}: {e}")));
        }
    }
    let prefix = match raw.prefix {
        None => "/wsedge".to_owned(),
        Some(p) => {
            let text = p.get_ref().trim_end_matches('/').to_owned();
            if !text.starts_with('/') || text.contains(char::is_whitespace) {
                return Err(invalid(
                    p.span(),
                    "fleet.prefix",
                    "must start with / and contain no spaces, e.g. \"/wsedge\"".into(),
                ));
            }
            text
        }
    };
    let cluster = raw.cluster.get_ref().clone();
    if !is_valid_name(&cluster) {
        return Err(invalid(
            raw.cluster.span(),
            "fleet.cluster",
            format!("{cluster:?} is not a name (1 to 64 of A-Z a-z 0-9 . _ -)"),
        ));
    }
    let host = match raw.host {
        Some(h) => {
            if !is_valid_name(h.get_ref()) {
                return Err(invalid(
                    h.span(),
                    "fleet.host",
                    format!(
                        "{:?} is not a name (1 to 64 of A-Z a-z 0-9 . _ -)",
                        h.get_ref()
                    ),
                ));
            }
            h.into_inner()
        }
        None => kernel_hostname()
            .filter(|h| is_valid_name(h))
            .unwrap_or_else(|| "localhost".to_owned()),
    };
    let lease_ttl = match raw.lease_ttl {
        None => Duration::from_secs(10),
        Some(t) => {
            let d = crate::duration::parse_duration(t.get_ref())
                .map_err(|m| invalid(t.span(), "fleet.lease_ttl", m))?;
            if !(Duration::from_secs(2)..=Duration::from_secs(3600)).contains(&d) {
                return Err(invalid(
                    t.span(),
                    "fleet.lease_ttl",
                    "must be from 2s to 1h".into(),
                ));
            }
            d
        }
    };
    Ok(FleetConfig {
        etcd,
        prefix,
        cluster,
        host,
        lease_ttl,
    })
}

/// Checks an etcd URL is `http://host:port` (TLS is not spoken: see docs/operations.md).
pub fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with("https://") {
        return Err(
            "https is not supported: reach etcd over http on a private network or \
             through a local TLS proxy (docs/operations.md, fleet configuration)"
                .into(),
        );
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| "must start with http://".to_owned())?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err("must be http://host:port with no path".into());
    }
    let port = authority
        .rsplit_once(':')
        .map(|(_, p)| p)
        .ok_or_else(|| "needs a port, e.g. http://127.0.0.1:2379".to_owned())?;
    port.parse::<u16>()
        .map_err(|_| format!("{port:?} is not a port"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn with_fleet(table: &str) -> Result<Config, crate::ConfigError> {
        Config::from_toml(&format!("[fleet]\n{table}\n"), "f.toml")
    }

    #[test]
    fn fleet_table_validates() {
        let c = with_fleet(
            "etcd = [\"http://127.0.0.1:2379\", \"http://10.0.0.2:2379/\"]\ncluster = \"prod\"\nhost = \"edge-1\"\nlease_ttl = \"5s\"",
        )
        .expect("valid");
        let f = c.fleet.expect("fleet");
        assert_eq!(f.config_key(), "/wsedge/prod/config");
        assert_eq!(f.host_key(), "/wsedge/prod/hosts/edge-1");
        assert_eq!(f.lease_ttl, Duration::from_secs(5));
        let c = with_fleet("etcd = [\"http://e:2379\"]\ncluster = \"c\"\nprefix = \"/x/y/\"")
            .expect("valid");
        let f = c.fleet.expect("fleet");
        assert_eq!(f.config_key(), "/x/y/c/config");
        assert!(is_valid_name(&f.host), "{}", f.host);
        assert_eq!(Config::from_toml("", "f").expect("valid").fleet, None);
    }

    #[test]
    fn fleet_errors_name_the_field() {
        for (table, field) in [
            ("etcd = []\ncluster = \"c\"", "fleet.etcd"),
            ("etcd = [\"https://e:2379\"]\ncluster = \"c\"", "fleet.etcd"),
            ("etcd = [\"http://e\"]\ncluster = \"c\"", "fleet.etcd"),
            (
                "etcd = [\"http://e:1\"]\ncluster = \"a/b\"",
                "fleet.cluster",
            ),
            (
                "etcd = [\"http://e:1\"]\ncluster = \"c\"\nhost = \"\"",
                "fleet.host",
            ),
            (
                "etcd = [\"http://e:1\"]\ncluster = \"c\"\nlease_ttl = \"1s\"",
                "fleet.lease_ttl",
            ),
        ] {
            let e = with_fleet(table).expect_err(table).to_string();
            assert!(e.contains(field), "{table}: {e}");
        }
    }
}
