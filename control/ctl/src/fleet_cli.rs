//! `wsedgectl fleet`: the operator's side of the fleet configuration in etcd. It talks to etcd
//! directly (not through a daemon), so it works from any machine that reaches etcd:
//! - `fleet status`: every host's status key in one table, against the document's revision;
//! - `fleet show`: the document and its revision;
//! - `fleet apply FILE`: validates FILE (over this machine's configuration file when there is
//!   one, as each host will lay it over its own), then writes it with a compare-and-swap on
//!   the document's revision, so a concurrent writer makes it fail instead of being
//!   overwritten unseen.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use wsedge_command::Config;
use wsedge_command::fleet::FleetConfig;
use wsedge_command::wire::HostStatus;

use crate::daemon::{hash, overlay};
use crate::etcd::{Cas, Etcd, EtcdError};
use crate::render;

/// Where the fleet is: from the flags, else from the configuration file's `[fleet]`.
#[derive(Debug, Args)]
pub(crate) struct Target {
    /// etcd client URL (repeat for several); default: `[fleet] etcd` of --config.
    #[arg(long = "etcd", value_name = "URL", global = true)]
    etcd: Vec<String>,
    /// The cluster name; default: `[fleet] cluster` of --config.
    #[arg(long, value_name = "NAME", global = true)]
    cluster: Option<String>,
    /// The key prefix; default: `[fleet] prefix` of --config, else /wsedge.
    #[arg(long, value_name = "PREFIX", global = true)]
    prefix: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum FleetCmd {
    /// Every host's status: applied document revision, health, versions (one table).
    Status,
    /// The fleet document and its revision.
    Show,
    /// Validate FILE and write it as the fleet document (compare-and-swap on its revision).
    Apply {
        /// The document: wsedge configuration tables (TOML) that every host lays over its own
        /// file; it may not set `[control]` or `[fleet]`.
        file: PathBuf,
        /// Write only if the document is still at this revision (as shown by `fleet show`);
        /// default: the revision read just before writing.
        #[arg(long, value_name = "REV")]
        revision: Option<i64>,
        /// Then wait up to this long until every host reported the new revision applied (or
        /// refused it); exit 1 if one refused it or did not report in time.
        #[arg(long, value_name = "DURATION", value_parser = wsedge_command::duration::parse_duration)]
        wait_applied: Option<Duration>,
    },
}

/// A failed fleet command: its exit code and message.
pub(crate) type Failed = (u8, String);

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_UNREACHABLE: u8 = 3;

fn etcd_failed(e: EtcdError) -> Failed {
    match e {
        EtcdError::Unreachable { .. } => (EXIT_UNREACHABLE, e.to_string()),
        _ => (EXIT_FAILED, e.to_string()),
    }
}

/// Runs `fleet ACTION`; `config` is the global --config file.
pub(crate) fn run(
    config: &Path,
    target: &Target,
    action: &FleetCmd,
    json: bool,
) -> Result<(), Failed> {
    let local = Config::load(config).ok();
    let fleet = resolve(target, local.as_ref().and_then(|c| c.fleet.as_ref()))?;
    let etcd = Etcd::new(&fleet.etcd, Duration::from_secs(5));
    match action {
        FleetCmd::Status => {
            let (document, hosts) = read_status(&etcd, &fleet)?;
            if json {
                print_json(&serde_json::json!({
                    "key": fleet.config_key(),
                    "document": document.as_ref().map(|(rev, h)| serde_json::json!({"revision": rev, "hash": h})),
                    "hosts": hosts,
                }))
            } else {
                print!(
                    "{}",
                    render_status(&fleet.config_key(), document.as_ref(), &hosts)
                );
                Ok(())
            }
        }
        FleetCmd::Show => {
            let range = etcd.get(&fleet.config_key()).map_err(etcd_failed)?;
            let Some(kv) = range.kvs.into_iter().next() else {
                return Err((
                    EXIT_FAILED,
                    format!("no fleet document at {}", fleet.config_key()),
                ));
            };
            if json {
                return print_json(&serde_json::json!({
                    "key": kv.key,
                    "revision": kv.mod_revision,
                    "hash": hash(&kv.value),
                    "toml": String::from_utf8_lossy(&kv.value),
                }));
            }
            println!(
                "# {} at revision {} (hash {})",
                kv.key,
                kv.mod_revision,
                hash(&kv.value)
            );
            print!("{}", String::from_utf8_lossy(&kv.value));
            Ok(())
        }
        FleetCmd::Apply {
            file,
            revision,
            wait_applied,
        } => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| (EXIT_USAGE, format!("{}: cannot read: {e}", file.display())))?;
            validate(&text, file, config, local.is_some())?;
            let key = fleet.config_key();
            let current = etcd.get(&key).map_err(etcd_failed)?;
            let now = current.kvs.first();
            let now_rev = now.map_or(0, |kv| kv.mod_revision);
            let expected = revision.unwrap_or(now_rev);
            if now.is_some_and(|kv| kv.value == text.as_bytes()) && expected == now_rev {
                println!("{key} is already this document (revision {now_rev}); nothing written");
                return Ok(());
            }
            let written = match etcd
                .put_if_revision(&key, text.as_bytes(), expected)
                .map_err(etcd_failed)?
            {
                Cas::Written { revision } => revision,
                Cas::Conflict { current } => {
                    let found = current.map_or_else(
                        || "no document".to_owned(),
                        |kv| format!("revision {}", kv.mod_revision),
                    );
                    return Err((
                        EXIT_FAILED,
                        format!(
                            "conflict: {key} changed under you: expected revision {expected}, etcd has {found} \
                             (another writer applied a document meanwhile); nothing was written. \
                             Look at it with `wsedgectl fleet show`, then apply again (--revision to name the one you reviewed)"
                        ),
                    ));
                }
            };
            println!(
                "wrote {key} at revision {written} (hash {}); hosts apply it as their watch sees it (`wsedgectl fleet status`)",
                hash(text.as_bytes())
            );
            match wait_applied {
                Some(wait) => wait_for_hosts(&etcd, &fleet, written, *wait),
                None => Ok(()),
            }
        }
    }
}

fn print_json(value: &serde_json::Value) -> Result<(), Failed> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| (EXIT_FAILED, format!("cannot encode JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

/// The fleet from the flags, completed by the file's `[fleet]`.
fn resolve(target: &Target, file: Option<&FleetConfig>) -> Result<FleetConfig, Failed> {
    let etcd = if target.etcd.is_empty() {
        file.map(|f| f.etcd.clone()).unwrap_or_default()
    } else {
        target.etcd.clone()
    };
    if etcd.is_empty() {
        return Err((
            EXIT_USAGE,
            "no etcd endpoint: give --etcd URL, or a --config file with a [fleet] table".into(),
        ));
    }
    for url in &etcd {
        wsedge_command::fleet::check_url(url).map_err(|e| (EXIT_USAGE, format!("{url}: {e}")))?;
    }
    let cluster = target
        .cluster
        .clone()
        .or_else(|| file.map(|f| f.cluster.clone()))
        .ok_or_else(|| {
            (
                EXIT_USAGE,
                "no cluster: give --cluster NAME, or a --config file with a [fleet] table"
                    .to_owned(),
            )
        })?;
    if !wsedge_command::fleet::is_valid_name(&cluster) {
        return Err((EXIT_USAGE, format!("{cluster:?} is not a cluster name")));
    }
    let prefix = target
        .prefix
        .clone()
        .map(|p| p.trim_end_matches('/').to_owned())
        .or_else(|| file.map(|f| f.prefix.clone()))
        .unwrap_or_else(|| "/wsedge".to_owned());
    Ok(FleetConfig {
        etcd,
        prefix,
        cluster,
        host: file.map(|f| f.host.clone()).unwrap_or_default(),
        lease_ttl: Duration::from_secs(10),
    })
}

/// Validates a document as the hosts will: laid over a configuration file (this machine's,
/// when it has one), by the same validator.
fn validate(text: &str, file: &Path, config: &Path, have_local: bool) -> Result<(), Failed> {
    let source = file.display().to_string();
    let merged = if have_local {
        let base = std::fs::read_to_string(config).unwrap_or_default();
        overlay(text, &base, &config.display().to_string())
    } else {
        overlay(text, "", "(no local file)")
    }
    .map_err(|e| (EXIT_USAGE, format!("invalid document: {source}: {e}")))?;
    Config::from_toml(&merged, &source)
        .map_err(|e| (EXIT_USAGE, format!("invalid document: {e}")))?;
    Ok(())
}

type Document = (i64, String);

fn read_status(
    etcd: &Etcd,
    fleet: &FleetConfig,
) -> Result<(Option<Document>, Vec<HostStatus>), Failed> {
    let doc = etcd.get(&fleet.config_key()).map_err(etcd_failed)?;
    let document = doc.kvs.first().map(|kv| (kv.mod_revision, hash(&kv.value)));
    let hosts = etcd
        .get_prefix(&fleet.hosts_prefix())
        .map_err(etcd_failed)?
        .kvs
        .into_iter()
        .map(|kv| {
            serde_json::from_slice::<HostStatus>(&kv.value).unwrap_or_else(|e| HostStatus {
                host: kv.key.rsplit('/').next().unwrap_or("?").to_owned(),
                health: format!("unreadable status: {e}"),
                ..HostStatus::default()
            })
        })
        .collect();
    Ok((document, hosts))
}

fn render_status(key: &str, document: Option<&Document>, hosts: &[HostStatus]) -> String {
    let mut out = match document {
        Some((rev, h)) => format!("document {key}: revision {rev}, hash {h}\n"),
        None => format!("document {key}: none\n"),
    };
    if hosts.is_empty() {
        out.push_str("no host reports (is any wsedgectl daemon configured with this [fleet]?)\n");
        return out;
    }
    let now = wsedge_command::unix_now();
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            let applied = h
                .applied_revision
                .map_or_else(|| "-".to_owned(), |r| r.to_string());
            let current = match (document, h.applied_revision) {
                (Some((rev, _)), Some(a)) if *rev == a => "current".to_owned(),
                (Some(_), _) if h.refused_revision.is_some() => "old".to_owned(),
                (Some(_), _) => "behind".to_owned(),
                (None, _) => "-".to_owned(),
            };
            let note = match (&h.refused_revision, &h.refused_error) {
                (Some(r), Some(e)) => format!("revision {r} refused: {e}"),
                _ => String::new(),
            };
            vec![
                h.host.clone(),
                h.health.clone(),
                applied,
                current,
                h.applied_hash.clone().unwrap_or_else(|| "-".into()),
                h.desired_hash.clone(),
                h.dataplane_config_version
                    .map_or_else(|| "-".into(), |v| v.to_string()),
                h.wsedge_build.clone().unwrap_or_else(|| "-".into()),
                h.live.map_or_else(|| "-".into(), |v| v.to_string()),
                render::duration_ms(now.saturating_sub(h.since).saturating_mul(1000)),
                note,
            ]
        })
        .collect();
    out.push_str(&render::table(
        &[
            "HOST", "HEALTH", "APPLIED", "DOCUMENT", "HASH", "CONFIG", "RUNNING", "WSEDGE", "LIVE",
            "SINCE", "NOTE",
        ],
        &rows,
    ));
    out
}

/// Polls the hosts' status until each applied `revision` or refused it.
fn wait_for_hosts(
    etcd: &Etcd,
    fleet: &FleetConfig,
    revision: i64,
    wait: Duration,
) -> Result<(), Failed> {
    let deadline = Instant::now() + wait;
    loop {
        let (_, hosts) = read_status(etcd, fleet)?;
        let refused: Vec<&HostStatus> = hosts
            .iter()
            .filter(|h| h.refused_revision == Some(revision))
            .collect();
        let pending: Vec<&str> = hosts
            .iter()
            .filter(|h| {
                h.refused_revision != Some(revision)
                    && (h.applied_revision.is_none_or(|a| a < revision) || h.health != "ok")
            })
            .map(|h| h.host.as_str())
            .collect();
        if pending.is_empty() {
            if let Some(h) = refused.first() {
                return Err((
                    EXIT_FAILED,
                    format!(
                        "{} of {} hosts refused revision {revision} (the last good configuration serves there); {}: {}",
                        refused.len(),
                        hosts.len(),
                        h.host,
                        h.refused_error.as_deref().unwrap_or("?")
                    ),
                ));
            }
            println!("applied by all {} hosts", hosts.len());
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err((
                EXIT_FAILED,
                format!(
                    "after {}: not applied yet on {}",
                    wsedge_command::duration::format_duration(wait),
                    pending.join(", ")
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
