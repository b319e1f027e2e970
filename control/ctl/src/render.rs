//! Human output of the CLI: aligned tables and short summaries. `--json` bypasses this module
//! and prints the wire responses as they are.

use std::fmt::Write as _;

use wsedge_command::wire::{
    Applied, CertInfo, ConfigText, Connection, FunctionRow, LimitsView, ListView, Percentiles,
    PoolHealth, RouteRow, StatsReport, Status, WorkerStats,
};

/// Left-aligned columns separated by two spaces; numbers are right-aligned.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let numeric: Vec<bool> = (0..headers.len())
        .map(|i| {
            !rows.is_empty()
                && rows.iter().all(|r| {
                    r.get(i).is_some_and(|c| {
                        c.chars().next().is_some_and(|ch| {
                            (ch.is_ascii_digit() && !c.contains([':', '/'])) || c == "n/a"
                        })
                    })
                })
        })
        .collect();
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = (usize, &str)>| {
        let mut text = String::new();
        for (i, cell) in cells {
            if i > 0 {
                text.push_str("  ");
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            if numeric[i] {
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            } else {
                text.push_str(cell);
                text.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied().enumerate());
    for row in rows {
        line(
            &mut row
                .iter()
                .map(String::as_str)
                .enumerate()
                .take(headers.len()),
        );
    }
    out
}

/// `1h02m`, `3m05s`, `12.3s`, `250ms`.
pub(crate) fn duration_ms(ms: u64) -> String {
    let s = ms / 1000;
    if ms < 1000 {
        format!("{ms}ms")
    } else if s < 60 {
        format!("{}.{}s", s, (ms % 1000) / 100)
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600)
    }
}

/// `512 B`, `1.5 KiB`, `3.2 MiB`, `1.0 GiB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

pub(crate) fn status(s: &Status) -> String {
    let mut out = String::new();
    if let Some(d) = &s.daemon {
        let _ = writeln!(
            out,
            "daemon     pid {}, up {}, desired config {} ({})",
            d.pid,
            duration_ms(d.uptime_ms),
            d.desired_hash,
            d.config_file
        );
        let _ = writeln!(
            out,
            "           dataplane socket {}: {}",
            d.dataplane_socket,
            match (d.dataplane_reachable, d.in_sync) {
                (true, true) => "reachable, in sync".to_owned(),
                (true, false) => "reachable, NOT in sync (pushing)".to_owned(),
                (false, _) => format!(
                    "UNREACHABLE{}",
                    d.last_error
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ),
            }
        );
        if let Some(f) = &d.fleet {
            out.push_str(&fleet(f));
        }
    }
    match &s.dataplane {
        None => {
            let _ = writeln!(out, "dataplane  not reachable");
        }
        Some(d) => {
            let live: u64 = d.workers.iter().map(|w| w.live).sum();
            let _ = writeln!(
                out,
                "dataplane  pid {}, wsedge {}, up {}, {} workers, {} live connections",
                d.pid,
                d.build,
                duration_ms(d.uptime_ms),
                d.workers.len(),
                live
            );
            let _ = writeln!(
                out,
                "           config version {} ({}) from {}",
                d.config_version, d.config_hash, d.config_source
            );
            out.push('\n');
            let rows: Vec<Vec<String>> = d
                .workers
                .iter()
                .map(|w| {
                    vec![
                        w.index.to_string(),
                        w.config_version.to_string(),
                        w.live.to_string(),
                        yes_no(w.accepting).to_owned(),
                    ]
                })
                .collect();
            out.push_str(&table(&["WORKER", "CONFIG", "LIVE", "ACCEPTING"], &rows));
            out.push_str(&generations(d));
        }
    }
    out
}

/// Connections per generation, when a binary upgrade left old ones draining.
fn generations(d: &wsedge_command::wire::DataplaneStatus) -> String {
    if d.old_generations.is_empty() {
        return String::new();
    }
    let live: u64 = d.workers.iter().map(|w| w.live).sum();
    let mut rows = vec![vec![
        d.generation.to_string(),
        d.pid.to_string(),
        d.build.clone(),
        live.to_string(),
        "serving".to_owned(),
    ]];
    rows.extend(d.old_generations.iter().map(|g| {
        vec![
            g.generation.to_string(),
            g.pid.to_string(),
            g.build.clone(),
            g.live.to_string(),
            "draining".to_owned(),
        ]
    }));
    let header = ["GENERATION", "PID", "BUILD", "LIVE", "STATE"];
    format!("\n{}", table(&header, &rows))
}

/// The answer to `wsedgectl upgrade`.
pub(crate) fn upgraded(u: &wsedge_command::wire::Upgraded) -> String {
    format!(
        "upgraded: generation {} (pid {}, wsedge {}) serves; generation {} (pid {}) stopped accepting and closes its {} connections over {}\n",
        u.generation,
        u.pid,
        u.build,
        u.old_generation,
        u.old_pid,
        u.old_live,
        duration_ms(u.drain_window_ms)
    )
}

fn percentile(p: Option<Percentiles>, pick: fn(&Percentiles) -> u64) -> String {
    match p {
        Some(p) if p.count > 0 => duration_us(pick(&p)),
        _ => "n/a".to_owned(),
    }
}

fn duration_us(us: u64) -> String {
    if us < 1000 {
        format!("{us}us")
    } else {
        format!("{:.1}ms", us as f64 / 1000.0)
    }
}

fn stats_row(label: String, w: &WorkerStats) -> Vec<String> {
    let rejected: u64 = w.rejected().map(|(_, n)| n).sum();
    vec![
        label,
        w.live.to_string(),
        w.accepted.to_string(),
        w.upgraded.to_string(),
        w.plain_http.to_string(),
        rejected.to_string(),
        bytes(w.bytes_from_clients),
        bytes(w.bytes_to_clients),
        percentile(w.handshake_latency, |p| p.p50_us),
        percentile(w.handshake_latency, |p| p.p90_us),
        percentile(w.handshake_latency, |p| p.p99_us),
    ]
}

pub(crate) fn stats(s: &StatsReport) -> String {
    let mut rows: Vec<Vec<String>> = s
        .workers
        .iter()
        .map(|w| stats_row(w.worker.map_or("?".into(), |i| i.to_string()), w))
        .collect();
    rows.push(stats_row("total".to_owned(), &s.total));
    let mut out = table(
        &[
            "WORKER",
            "LIVE",
            "ACCEPTED",
            "UPGRADED",
            "HTTP",
            "REJECTED",
            "FROM_CLIENTS",
            "TO_CLIENTS",
            "HS_P50",
            "HS_P90",
            "HS_P99",
        ],
        &rows,
    );
    let rejected: Vec<String> = s
        .total
        .rejected()
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    let ended: Vec<String> = s
        .total
        .closed
        .iter()
        .filter(|(r, _)| !wsedge_command::wire::is_rejection(r))
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    out.push('\n');
    let _ = writeln!(
        out,
        "rejected by reason: {}",
        if rejected.is_empty() {
            "none".to_owned()
        } else {
            rejected.join(", ")
        }
    );
    let _ = writeln!(
        out,
        "ended by reason:    {}",
        if ended.is_empty() {
            "none".to_owned()
        } else {
            ended.join(", ")
        }
    );
    let t = &s.total;
    let _ = writeln!(
        out,
        "read ring:          {} of {} buffers held, {} reads spilled, {} starved, {} rationed",
        t.ring_buffers_held, t.ring_buffers, t.reads_spilled, t.reads_starved, t.reads_rationed
    );
    out.push_str(&handshake_summary(s.total.handshake_latency));
    out
}

/// The line under the `stats` table: the handshake latency of every worker together, from
/// accept to the response head queued to the client (upgrades and plain HTTP answers).
fn handshake_summary(p: Option<Percentiles>) -> String {
    match p {
        Some(p) if p.count > 0 => format!(
            "handshake latency:  p50 {}, p90 {}, p99 {}, max {} over {} handshakes (accept to response head)\n",
            duration_us(p.p50_us),
            duration_us(p.p90_us),
            duration_us(p.p99_us),
            duration_us(p.max_us),
            p.count
        ),
        // Measured by every dataplane build; none has completed since it started.
        _ => "handshake latency:  no handshake completed yet\n".to_owned(),
    }
}

pub(crate) fn connections(list: &[Connection]) -> String {
    if list.is_empty() {
        return "no live connections\n".to_owned();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            vec![
                c.id.to_string(),
                c.worker.to_string(),
                c.client.clone(),
                c.route.clone().unwrap_or_else(|| "-".into()),
                c.origin.clone().unwrap_or_else(|| "-".into()),
                duration_ms(c.age_ms),
                bytes(c.bytes_from_client),
                bytes(c.bytes_to_client),
                c.state.clone(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "WORKER",
            "CLIENT",
            "ROUTE",
            "ORIGIN",
            "AGE",
            "FROM_CLIENT",
            "TO_CLIENT",
            "STATE",
        ],
        &rows,
    )
}

/// The routes; an SNI column only when some route selects on SNI.
pub(crate) fn routes(routes: &[RouteRow]) -> String {
    let with_sni = routes.iter().any(|r| r.sni.is_some());
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|r| {
            let mut row = vec![r.name.clone()];
            if with_sni {
                row.push(r.sni.clone().unwrap_or_else(|| "*".to_owned()));
            }
            row.extend([
                r.host.clone(),
                r.path_prefix.clone(),
                r.relay.clone(),
                r.origins.join(", "),
            ]);
            row
        })
        .collect();
    if with_sni {
        table(&["ROUTE", "SNI", "HOST", "PATH", "RELAY", "ORIGINS"], &rows)
    } else {
        table(&["ROUTE", "HOST", "PATH", "RELAY", "ORIGINS"], &rows)
    }
}

pub(crate) fn origins(routes: &[RouteRow]) -> String {
    let rows: Vec<Vec<String>> = routes
        .iter()
        .flat_map(|r| {
            r.origins
                .iter()
                .map(move |o| vec![r.name.clone(), o.clone()])
        })
        .collect();
    table(&["ROUTE", "ORIGIN"], &rows)
}

/// `wsedgectl origins`: one line per origin of every pool, with its health.
pub(crate) fn origin_health(pools: &[PoolHealth]) -> String {
    let rows: Vec<Vec<String>> = pools
        .iter()
        .flat_map(|p| {
            let check = if p.watched {
                p.check.clone().unwrap_or_else(|| "passive".to_owned())
            } else {
                "-".to_owned()
            };
            p.origins.iter().map(move |o| {
                vec![
                    p.route.clone(),
                    o.addr.clone(),
                    match o.slow_start_pct {
                        Some(pct) => format!("{} (slow start {pct}%)", o.state),
                        None => o.state.clone(),
                    },
                    o.why.clone(),
                    if p.watched {
                        duration_ms(o.since_ms)
                    } else {
                        "-".to_owned()
                    },
                    match (&o.last_check, o.last_check_ago_ms) {
                        (Some(r), Some(ago)) => format!("{r} {} ago", duration_ms(ago)),
                        (Some(r), None) => r.clone(),
                        _ => "-".to_owned(),
                    },
                    format!("{}/{}", o.checks_failed, o.checks),
                    o.ejections.to_string(),
                    p.balance.clone(),
                    check.clone(),
                ]
            })
        })
        .collect();
    table(
        &[
            "ROUTE",
            "ORIGIN",
            "STATE",
            "WHY",
            "SINCE",
            "LAST CHECK",
            "FAILED",
            "EJECTIONS",
            "BALANCE",
            "CHECK",
        ],
        &rows,
    )
}

pub(crate) fn limits(view: &LimitsView) -> String {
    let rows: Vec<Vec<String>> = view
        .limits
        .iter()
        .map(|(k, v)| vec![k.clone(), v.clone()])
        .collect();
    let mut out = match &view.route {
        Some(r) => format!("limits of route {r} ([limits] defaults with its overrides)\n"),
        None => "[limits] (defaults for every route)\n".to_owned(),
    };
    out.push_str(&table(&["LIMIT", "VALUE"], &rows));
    out
}

/// Network lists with each entry's expiry (`never`, or unix seconds and how far off).
pub(crate) fn lists(lists: &[ListView], unix_now: u64) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    for l in lists {
        if l.entries.is_empty() {
            rows.push(vec![l.name.clone(), "(empty)".to_owned(), String::new()]);
        }
        for e in &l.entries {
            let expires = match e.expires {
                None => "never".to_owned(),
                Some(at) => format!(
                    "{at} (in {})",
                    duration_ms(at.saturating_sub(unix_now).saturating_mul(1000))
                ),
            };
            rows.push(vec![l.name.clone(), e.cidr.clone(), expires]);
        }
    }
    table(&["LIST", "NETWORK", "EXPIRES"], &rows)
}

/// `functions list`: one row per JavaScript function, summed over the workers.
pub(crate) fn functions(functions: &[FunctionRow]) -> String {
    if functions.is_empty() {
        return "no JavaScript functions (no route has function = \"js\")\n".to_owned();
    }
    let rows: Vec<Vec<String>> = functions
        .iter()
        .map(|f| {
            vec![
                f.name.clone(),
                f.version.to_string(),
                f.sockets.to_string(),
                f.invocations.to_string(),
                f.errors.to_string(),
                duration_ms(f.cpu_us / 1000),
                bytes(f.memory_bytes),
                f.restarts.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "FUNCTION",
            "VERSION",
            "SOCKETS",
            "INVOCATIONS",
            "ERRORS",
            "CPU",
            "MEMORY",
            "RESTARTS",
        ],
        &rows,
    )
}

pub(crate) fn applied(a: &Applied) -> String {
    let mut out = match a.version.filter(|_| a.pushed) {
        Some(version) => format!(
            "applied config version {version} ({}, {}); {} workers run it\n",
            a.hash, a.source, a.workers_confirmed
        ),
        None => format!(
            "accepted config {} ({}); the dataplane is unreachable, it is pushed when the dataplane is back\n",
            a.hash, a.source
        ),
    };
    if !a.restart_required.is_empty() {
        let _ = writeln!(
            out,
            "note: changed fields that take effect only after a dataplane restart: {}",
            a.restart_required.join(", ")
        );
    }
    out
}

/// `certs`: one row per certificate, with its expiry as a UTC date and how far off it is.
pub(crate) fn certs(certs: &[CertInfo], unix_now: u64) -> String {
    if certs.is_empty() {
        return "no certificates (no [[certificate]] in the configuration)\n".to_owned();
    }
    let now = i64::try_from(unix_now).unwrap_or(i64::MAX);
    let rows: Vec<Vec<String>> = certs
        .iter()
        .map(|c| {
            let mut names = c.names.join(",");
            if c.default {
                names.push_str(if names.is_empty() {
                    "(default)"
                } else {
                    " (default)"
                });
            }
            let left = c.not_after.saturating_sub(now);
            let expires = if left < 0 {
                format!("{} (EXPIRED)", utc_date(c.not_after))
            } else {
                format!(
                    "{} (in {})",
                    utc_date(c.not_after),
                    duration_ms(u64::try_from(left).unwrap_or(0).saturating_mul(1000))
                )
            };
            vec![
                c.id.clone(),
                names,
                c.key_type.clone(),
                c.issuer.clone(),
                expires,
            ]
        })
        .collect();
    table(&["ID", "NAMES", "KEY", "ISSUER", "EXPIRES"], &rows)
}

/// `2027-03-01 12:00:00Z` for Unix seconds (proleptic Gregorian, UTC).
pub(crate) fn utc_date(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// `config show`: a comment line naming the configuration, then its text.
pub(crate) fn config(c: &ConfigText) -> String {
    match c.version {
        Some(version) => format!(
            "# config version {version} ({}) from {}\n{}",
            c.hash, c.source, c.toml
        ),
        None => format!(
            "# config {} from {} (the dataplane does not run it yet)\n{}",
            c.hash, c.source, c.toml
        ),
    }
}

/// The daemon's fleet lines of `wsedgectl status`.
fn fleet(f: &wsedge_command::wire::FleetView) -> String {
    let mut out = String::new();
    let applied = match (f.applied_revision, &f.applied_hash) {
        (Some(r), Some(h)) => format!("applied revision {r} (hash {h})"),
        (Some(r), None) => format!("applied revision {r}"),
        _ => "no document applied".to_owned(),
    };
    let etcd = if f.etcd_reachable {
        "etcd reachable".to_owned()
    } else {
        format!(
            "etcd UNREACHABLE ({})",
            f.etcd_error.as_deref().unwrap_or("not reached yet")
        )
    };
    let _ = writeln!(
        out,
        "fleet      host {}, {} on {}",
        f.host,
        f.key,
        f.etcd.join(", ")
    );
    let _ = writeln!(out, "           {applied}; {etcd}");
    if let (Some(r), Some(e)) = (f.refused_revision, &f.refused_error) {
        let _ = writeln!(
            out,
            "           REFUSED revision {r}: {e} (the last good configuration serves)"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(
            &["ID", "NAME"],
            &[
                vec!["7".into(), "chat".into()],
                vec!["1234".into(), "x".into()],
            ],
        );
        assert_eq!(t, "  ID  NAME\n   7  chat\n1234  x\n");
    }

    #[test]
    fn routes_table_has_an_sni_column_only_when_a_route_has_sni() {
        let row = |name: &str, sni: Option<&str>| RouteRow {
            name: name.into(),
            sni: sni.map(Into::into),
            host: "*".into(),
            path_prefix: "/".into(),
            origins: vec!["127.0.0.1:9001".into()],
            relay: "buffered".into(),
        };
        assert_eq!(
            routes(&[row("chat", None)]),
            "ROUTE  HOST  PATH  RELAY     ORIGINS\nchat   *     /     buffered  127.0.0.1:9001\n"
        );
        assert_eq!(
            routes(&[row("api", Some("*.example.com")), row("chat", None)]),
            "ROUTE  SNI            HOST  PATH  RELAY     ORIGINS\n\
             api    *.example.com  *     /     buffered  127.0.0.1:9001\n\
             chat   *              *     /     buffered  127.0.0.1:9001\n"
        );
    }

    #[test]
    fn list_table() {
        use wsedge_command::wire::ListEntryView;
        let views = [
            ListView {
                name: "blocked".into(),
                entries: vec![
                    ListEntryView {
                        cidr: "10.0.0.0/8".into(),
                        expires: None,
                    },
                    ListEntryView {
                        cidr: "127.0.0.5/32".into(),
                        expires: Some(1_000_090),
                    },
                ],
            },
            ListView {
                name: "partners".into(),
                entries: Vec::new(),
            },
        ];
        assert_eq!(
            lists(&views, 1_000_000),
            "LIST      NETWORK       EXPIRES\nblocked   10.0.0.0/8    never\nblocked   127.0.0.5/32  1000090 (in 1m30s)\npartners  (empty)\n"
        );
    }

    #[test]
    fn handshake_latency_line() {
        let p = Percentiles {
            count: 11,
            p50_us: 950,
            p90_us: 1_400,
            p99_us: 2_150,
            max_us: 12_000,
        };
        assert_eq!(
            handshake_summary(Some(p)),
            "handshake latency:  p50 950us, p90 1.4ms, p99 2.1ms, max 12.0ms over 11 handshakes (accept to response head)\n"
        );
        assert_eq!(
            handshake_summary(None),
            "handshake latency:  no handshake completed yet\n"
        );
        let report = StatsReport {
            workers: vec![WorkerStats {
                worker: Some(0),
                handshake_latency: Some(p),
                ..WorkerStats::default()
            }],
            total: WorkerStats {
                handshake_latency: Some(p),
                ring_buffers: 1024,
                ring_buffers_held: 3,
                reads_spilled: 7,
                reads_starved: 2,
                reads_rationed: 5,
                ..WorkerStats::default()
            },
            functions: Vec::new(),
        };
        let text = stats(&report);
        assert!(text.contains("   950us   1.4ms   2.1ms\n"), "{text}");
        assert!(
            text.contains(
                "read ring:          3 of 1024 buffers held, 7 reads spilled, 2 starved, 5 rationed\n"
            ),
            "{text}"
        );
        assert!(!text.contains("not measured"), "{text}");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc_date(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00:00Z");
        assert_eq!(utc_date(1_798_761_599), "2026-12-31 23:59:59Z");
        assert_eq!(utc_date(-1), "1969-12-31 23:59:59Z");
    }

    #[test]
    fn units() {
        assert_eq!(duration_ms(250), "250ms");
        assert_eq!(duration_ms(12_345), "12.3s");
        assert_eq!(duration_ms(185_000), "3m05s");
        assert_eq!(duration_ms(3_720_000), "1h02m");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
    }
}
