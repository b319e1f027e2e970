//! The benchmark report: reads the runs `wsedge-load --json-out` appended (one JSON object
//! per line, several runs per scenario), writes `results.json`, a Markdown report whose every
//! cell is the median of the runs with their spread (min–max) and names the generator that
//! produced it, the issue's target checks on those medians, and PNG charts (bars at the
//! median, whiskers from min to max) drawn with plotters. Also the CI regression check:
//! wsedge's unbounded-flood throughput against the direct run's, with a floor.
//!
//! Charts need a TrueType font for their text (plotters' `ab_glyph` backend, no fontconfig):
//! `$WSEDGE_FONT`, else the first `.ttf` found under `/usr/share/fonts`. Without one the
//! charts are skipped and the Markdown says so.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::{Value, json};

use crate::report_functions;

/// Scenario names used by scripts/bench.sh: the depth-limited 16 KiB flood (`throughput`).
pub const FLOOD_16K: &str = "flood-16k";
/// Depth-limited 64 B flood.
pub const FLOOD_64: &str = "flood-64";
/// Unbounded 16 KiB flood (`flood` mode, or tcpkali).
pub const UFLOOD_16K: &str = "uflood-16k";
/// Unbounded 64 B flood (`flood` mode, or tcpkali).
pub const UFLOOD_64: &str = "uflood-64";
/// Unbounded 64 B flood over 50 connections, with new-connection probes.
pub const UFLOOD_64_C50: &str = "uflood-64-c50";
/// 64 B at 10k msg/s.
pub const LAT_64: &str = "latency-64-10k";
/// 16 KiB at 10k msg/s (CPU per GB).
pub const CPU_16K: &str = "cpu-16k-10k";
/// Connect, upgrade, one echo, close.
pub const HANDSHAKES: &str = "handshakes";
/// Idle connections held.
pub const IDLE: &str = "idle";
/// 64 B at 1k msg/s over 20 connections while 2,000 other connections stay idle: what idle
/// connections cost the active ones (issue 12, defect 7: a steady 5-6 ms p99 once).
pub const LAT_IDLE: &str = "latency-64-idle2k";
/// The same beside connections that each send a heartbeat every second, on one schedule.
pub const LAT_HEARTBEAT: &str = "latency-64-hb2k";

/// Our generator's name in the records.
pub const OURS: &str = "wsedge-load";
/// The independent generator's.
pub const TCPKALI: &str = "tcpkali";

/// One figure over the runs of a scenario.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    /// Median of the runs that have the figure.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// Runs that have the figure.
    pub n: usize,
    /// Runs of the scenario without it (a failed ramp, a missing probe).
    pub missing: usize,
}

impl Stat {
    /// The statistics of `values` (None values count as missing); None if none has a value.
    pub fn of(values: impl IntoIterator<Item = Option<f64>>) -> Option<Self> {
        let mut v = Vec::new();
        let mut missing = 0;
        for x in values {
            match x {
                Some(x) if x.is_finite() => v.push(x),
                _ => missing += 1,
            }
        }
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: v[0],
            max: v[n - 1],
            n,
            missing,
        })
    }
}

/// All runs, indexed by (label, scenario, generator).
#[derive(Debug, Default)]
pub struct Runs {
    /// Labels in first-seen order.
    pub labels: Vec<String>,
    /// The run records, in the order they were written.
    pub by_key: BTreeMap<(String, String, String), Vec<Value>>,
}

impl Runs {
    /// Writes `results.json` (the host block and every run) and `results.md` (`markdown`'s
    /// report of these runs) into `out`: what the TLS and many-hosts reports write.
    pub fn write_report(
        &self,
        host: &str,
        out: &Path,
        markdown: impl FnOnce(&Runs, &str) -> String,
    ) -> anyhow::Result<()> {
        let all: Vec<&Value> = self.by_key.values().flatten().collect();
        std::fs::write(
            out.join("results.json"),
            serde_json::to_string_pretty(&json!({ "host": host, "runs": all }))?,
        )?;
        std::fs::write(out.join("results.md"), markdown(self, host))?;
        Ok(())
    }

    /// Parses JSON lines. Records without a `generator` (written before it existed) are ours.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut r = Self::default();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: Value =
                serde_json::from_str(line).with_context(|| format!("runs line {}", i + 1))?;
            let label = v["label"].as_str().unwrap_or("").to_owned();
            let scenario = v["scenario"].as_str().unwrap_or("").to_owned();
            let generator = v["generator"].as_str().unwrap_or(OURS).to_owned();
            if !r.labels.contains(&label) {
                r.labels.push(label.clone());
            }
            r.by_key
                .entry((label, scenario, generator))
                .or_default()
                .push(v);
        }
        Ok(r)
    }

    /// A figure over the runs of one generator: `results.<field>`, `results.<obj>.<field>`
    /// or `usage.<field>`.
    pub fn stat_of(
        &self,
        label: &str,
        scenario: &str,
        generator: &str,
        path: &str,
    ) -> Option<Stat> {
        let runs =
            self.by_key
                .get(&(label.to_owned(), scenario.to_owned(), generator.to_owned()))?;
        Stat::of(runs.iter().map(|v| {
            path.split('.')
                .try_fold(v, |v, k| v.get(k))
                .and_then(Value::as_f64)
        }))
    }

    /// A figure of our generator's runs.
    pub fn stat(&self, label: &str, scenario: &str, path: &str) -> Option<Stat> {
        self.stat_of(label, scenario, OURS, path)
    }

    /// The median of our generator's runs.
    pub fn get(&self, label: &str, scenario: &str, path: &str) -> Option<f64> {
        self.stat(label, scenario, path).map(|s| s.median)
    }

    /// Runs per scenario: the smallest and largest count over every key.
    pub fn run_counts(&self) -> (usize, usize) {
        let mut it = self.by_key.values().map(Vec::len);
        let first = it.next().unwrap_or(0);
        it.fold((first, first), |(a, b), n| (a.min(n), b.max(n)))
    }

    /// True when any run of `generator` is recorded.
    pub fn has_generator(&self, generator: &str) -> bool {
        self.by_key.keys().any(|k| k.2 == generator)
    }
}

pub(crate) fn fmt_num(v: Option<f64>, digits: usize) -> String {
    match v {
        None => "n/a".into(),
        Some(x) if x.abs() >= 1e6 => format!("{:.2}M", x / 1e6),
        Some(x) if x.abs() >= 1e4 => format!("{:.1}k", x / 1e3),
        Some(x) => format!("{x:.digits$}"),
    }
}

/// "median (min–max)", the spread left out for a single run; runs without the figure noted.
pub(crate) fn fmt_stat(s: Option<Stat>, digits: usize) -> String {
    let Some(s) = s else {
        return "n/a".into();
    };
    let mut out = fmt_num(Some(s.median), digits);
    if s.n > 1 {
        out += &format!(
            " ({}–{})",
            fmt_num(Some(s.min), digits),
            fmt_num(Some(s.max), digits)
        );
    }
    if s.missing > 0 {
        out += &format!(" [{} of {} runs without]", s.missing, s.n + s.missing);
    }
    out
}

/// Writes a report's title and host block; returns how many runs each cell is the median
/// of (`3`, or `2 to 3` when targets ran unevenly). Shared by the TLS report.
pub(crate) fn head(s: &mut String, title: &str, r: &Runs, host: &str) -> String {
    let _ = writeln!(s, "{title}\n");
    let _ = writeln!(s, "```\n{}\n```\n", host.trim());
    let (rmin, rmax) = r.run_counts();
    if rmin == rmax {
        format!("{rmin}")
    } else {
        format!("{rmin} to {rmax}")
    }
}

/// The Markdown report; `fanout` holds the fan-out runs (scripts/bench.sh's fanout.jsonl),
/// when there are any, for the functions section.
pub fn markdown(r: &Runs, fanout: Option<&Runs>, host: &str, charts: bool) -> String {
    let mut s = String::new();
    let runs = head(&mut s, "# wsedge benchmark results", r, host);
    let _ = writeln!(
        s,
        "Every cell is the **median of {runs} runs, with the spread (min–max) in brackets**; \
         the targets below compare medians. The generator that produced each figure is named \
         in the column header: `wsedge-load` (ours, bench/src/load/) or `tcpkali` (a hand-built \
         independent generator, see docs/benchmarks.md). 100 connections unless noted. CPU is \
         the target's user+system time during the measured window; for `direct` the target is \
         the origin itself.\n"
    );
    let _ = writeln!(
        s,
        "- **depth-limited floods** (`wsedge-load throughput`): every connection keeps messages in \
         flight and sends one more per echo: 16 for 16 KiB (256 KiB), 256 for 64 B (17 KiB).\n\
         - **unbounded floods** (`wsedge-load flood`, `tcpkali`): every connection writes as fast \
         as the socket accepts, with no depth limit, and counts what comes back (tcpkali's \
         default shape). Delivered = echoed back to the client, sent = accepted by the client's \
         socket.\n\
         - Latency at 10k msg/s is measured from each message's scheduled send time \
         (coordinated omission accounted for).\n"
    );
    let _ = writeln!(
        s,
        "| target | 16 KiB flood msg/s [wsedge-load, depth 16] | 64 B flood msg/s [wsedge-load, depth 256] | 64 B @10k p50 / p99 / p99.9 ms [wsedge-load] | 16 KiB @10k: CPU % / CPU s per GB [wsedge-load] | sessions/s (hs p99 ms) [wsedge-load] | idle: B per conn (n) [wsedge-load] |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for l in &r.labels {
        let g = |sc: &str, f: &str| r.stat(l, sc, f);
        let _ = writeln!(
            s,
            "| {l} | {} | {} | {} / {} / {} | {} / {} | {} ({}) | {} ({}) |",
            fmt_stat(g(FLOOD_16K, "results.msgs_per_s"), 0),
            fmt_stat(g(FLOOD_64, "results.msgs_per_s"), 0),
            fmt_stat(g(LAT_64, "results.p50_ms"), 3),
            fmt_stat(g(LAT_64, "results.p99_ms"), 3),
            fmt_stat(g(LAT_64, "results.p999_ms"), 3),
            fmt_stat(g(CPU_16K, "usage.target_cpu_pct"), 1),
            fmt_stat(g(CPU_16K, "usage.target_cpu_s_per_gb"), 3),
            fmt_stat(g(HANDSHAKES, "results.sessions_per_s"), 0),
            fmt_stat(g(HANDSHAKES, "results.handshake_p99_ms"), 2),
            fmt_stat(g(IDLE, "results.rss_per_conn_bytes"), 0),
            fmt_num(g(IDLE, "results.opened").map(|x| x.median), 0),
        );
    }
    s += &idle_latency_table(r);
    s += &unbounded_tables(r);
    let _ = writeln!(
        s,
        "\nCPU during the floods, % of one core, generator / target / origin (medians; the \
         generator is one thread for wsedge-load, tcpkali its default of one worker thread per core):\n"
    );
    let mut cols = vec![
        (FLOOD_16K, OURS, "16 KiB depth-limited [wsedge-load]"),
        (FLOOD_64, OURS, "64 B depth-limited [wsedge-load]"),
        (UFLOOD_16K, OURS, "16 KiB unbounded [wsedge-load]"),
        (UFLOOD_64, OURS, "64 B unbounded [wsedge-load]"),
    ];
    if r.has_generator(TCPKALI) {
        cols.push((UFLOOD_16K, TCPKALI, "16 KiB unbounded [tcpkali]"));
        cols.push((UFLOOD_64, TCPKALI, "64 B unbounded [tcpkali]"));
    }
    let _ = writeln!(
        s,
        "| target | {} |\n|---|{}",
        cols.iter().map(|c| c.2).collect::<Vec<_>>().join(" | "),
        "---|".repeat(cols.len())
    );
    for l in &r.labels {
        let cells: Vec<String> = cols
            .iter()
            .map(|(sc, gen_, _)| {
                let pct = |f: &str| r.stat_of(l, sc, gen_, f).map(|x| x.median);
                format!(
                    "{} / {} / {}",
                    fmt_num(pct("usage.load_cpu_pct"), 0),
                    fmt_num(pct("usage.target_cpu_pct"), 0),
                    fmt_num(pct("usage.origin_cpu_pct"), 0)
                )
            })
            .collect();
        let _ = writeln!(s, "| {l} | {} |", cells.join(" | "));
    }
    s += &targets(r);
    s += &report_functions::section(r, fanout);
    if charts {
        let _ = writeln!(
            s,
            "\n## Charts\n\nBars are medians; whiskers span min to max.\n"
        );
        for (f, t) in CHARTS {
            let _ = writeln!(s, "![{t}]({f})\n");
        }
    } else {
        let _ = writeln!(s, "\n(No charts: no TrueType font found; set WSEDGE_FONT.)");
    }
    s
}

/// Round trips of a few active connections while many others stay idle.
fn idle_latency_table(r: &Runs) -> String {
    let beside = [
        (
            LAT_IDLE,
            "Latency beside idle connections",
            "stay open and silent",
        ),
        (
            LAT_HEARTBEAT,
            "Latency beside heartbeating connections",
            "stay open and each send a 9-byte text message every second, all on one schedule \
             (application heartbeats of clients that connected together: a burst each way \
             every second)",
        ),
    ];
    let mut s = String::new();
    for (scenario, title, what) in beside {
        if !r
            .labels
            .iter()
            .any(|l| r.stat(l, scenario, "results.p99_ms").is_some())
        {
            continue;
        }
        let _ = writeln!(
            s,
            "\n## {title}\n\n64 B at 1,000 msg/s over 20 connections while 2,000 other \
             connections (200 in `--smoke`) through the same target {what} [wsedge-load].\n\n\
             | target | p50 ms | p99 ms | p99.9 ms | max ms |\n|---|---|---|---|---|"
        );
        for l in &r.labels {
            let g = |f: &str| fmt_stat(r.stat(l, scenario, f), 3);
            let _ = writeln!(
                s,
                "| {l} | {} | {} | {} | {} |",
                g("results.p50_ms"),
                g("results.p99_ms"),
                g("results.p999_ms"),
                g("results.max_ms"),
            );
        }
    }
    s
}

/// The unbounded-flood tables: throughput each way per generator, cost and fairness, and
/// new connections during the flood.
fn unbounded_tables(r: &Runs) -> String {
    let mut s = String::new();
    let kali = r.has_generator(TCPKALI);
    let _ = writeln!(
        s,
        "\n## Unbounded floods\n\nDelivered (echoed back) and sent msg/s, 100 connections.{}\n",
        if kali {
            ""
        } else {
            " No tcpkali runs in this set (tcpkali was not found)."
        }
    );
    let mut cols: Vec<(&str, &str, &str, &str)> = Vec::new();
    for (sc, size) in [(UFLOOD_16K, "16 KiB"), (UFLOOD_64, "64 B")] {
        cols.push((sc, OURS, "results.recv_msgs_per_s", size));
        cols.push((sc, OURS, "results.sent_msgs_per_s", size));
        if kali {
            cols.push((sc, TCPKALI, "results.recv_msgs_per_s", size));
            cols.push((sc, TCPKALI, "results.sent_msgs_per_s", size));
        }
    }
    let head: Vec<String> = cols
        .iter()
        .map(|(_, g, f, size)| {
            let what = if f.contains("recv") {
                "delivered"
            } else {
                "sent"
            };
            format!("{size} {what} [{g}]")
        })
        .collect();
    let _ = writeln!(
        s,
        "| target | {} |\n|---|{}",
        head.join(" | "),
        "---|".repeat(cols.len())
    );
    for l in &r.labels {
        let cells: Vec<String> = cols
            .iter()
            .map(|(sc, g, f, _)| fmt_stat(r.stat_of(l, sc, g, f), 0))
            .collect();
        let _ = writeln!(s, "| {l} | {} |", cells.join(" | "));
    }

    let _ = writeln!(
        s,
        "\nCost per delivered message (µs of CPU) and fairness between connections \
         (delivered msg/s of the slowest / median / fastest connection; connections that got \
         nothing in brackets), [wsedge-load] unless noted:\n"
    );
    let mut head = vec![
        "16 KiB: target / origin µs per msg".to_owned(),
        "16 KiB: per-connection min / median / max msg/s".to_owned(),
        "64 B: target / origin µs per msg".to_owned(),
        "64 B: per-connection min / median / max msg/s".to_owned(),
    ];
    if kali {
        head.push("16 KiB: target / origin µs per msg [tcpkali]".into());
        head.push("64 B: target / origin µs per msg [tcpkali]".into());
    }
    let _ = writeln!(
        s,
        "| target | {} |\n|---|{}",
        head.join(" | "),
        "---|".repeat(head.len())
    );
    for l in &r.labels {
        let cost = |sc: &str, g: &str| {
            format!(
                "{} / {}",
                fmt_stat(r.stat_of(l, sc, g, "results.target_cpu_us_per_msg"), 3),
                fmt_stat(r.stat_of(l, sc, g, "results.origin_cpu_us_per_msg"), 3)
            )
        };
        let fair = |sc: &str| {
            let m = |f: &str| r.get(l, sc, f);
            format!(
                "{} / {} / {} ({})",
                fmt_num(m("results.per_conn_min_msgs_per_s"), 0),
                fmt_num(m("results.per_conn_median_msgs_per_s"), 0),
                fmt_num(m("results.per_conn_max_msgs_per_s"), 0),
                fmt_num(m("results.per_conn_starved"), 0),
            )
        };
        let mut cells = vec![
            cost(UFLOOD_16K, OURS),
            fair(UFLOOD_16K),
            cost(UFLOOD_64, OURS),
            fair(UFLOOD_64),
        ];
        if kali {
            cells.push(cost(UFLOOD_16K, TCPKALI));
            cells.push(cost(UFLOOD_64, TCPKALI));
        }
        let _ = writeln!(s, "| {l} | {} |", cells.join(" | "));
    }

    let _ = writeln!(
        s,
        "\nNew connections while 50 connections flood 64 B messages [wsedge-load]: a fresh \
         connection every 100 ms, connect + upgrade time; the latency of the flood's own \
         messages (send to echo); connections the target still held established a moment \
         (`--settle`: 2 s in --full and --quick) after the generator closed its sockets.{}\n",
        if kali {
            " tcpkali: time to ramp up its 100 connections at 100/s (1 s when nothing starves), \
             failed ramps counted."
        } else {
            ""
        }
    );
    let mut head = vec![
        "new connection p50 / p99 / max ms",
        "probes failed (timeouts)",
        "flood message p50 / p99 ms",
        "left established",
    ];
    if kali {
        head.push("64 B ramp-up s [tcpkali]");
        head.push("left established [tcpkali]");
    }
    let _ = writeln!(
        s,
        "| target | {} |\n|---|{}",
        head.join(" | "),
        "---|".repeat(head.len())
    );
    for l in &r.labels {
        let g = |f: &str| r.stat(l, UFLOOD_64_C50, f);
        let mut cells = vec![
            format!(
                "{} / {} / {}",
                fmt_stat(g("results.probe.p50_ms"), 2),
                fmt_stat(g("results.probe.p99_ms"), 2),
                fmt_num(g("results.probe.max_ms").map(|x| x.max), 2),
            ),
            format!(
                "{} ({})",
                fmt_num(g("results.probe.failed").map(|x| x.max), 0),
                fmt_num(g("results.probe.timeouts").map(|x| x.max), 0),
            ),
            format!(
                "{} / {}",
                fmt_stat(g("results.p50_ms"), 1),
                fmt_stat(g("results.p99_ms"), 1)
            ),
            fmt_num(g("results.leftover_established").map(|x| x.max), 0),
        ];
        if kali {
            let k = |f: &str| r.stat_of(l, UFLOOD_64, TCPKALI, f);
            let failed_n = r
                .by_key
                .get(&(l.clone(), UFLOOD_64.into(), TCPKALI.into()))
                .map_or(0, |v| {
                    v.iter()
                        .filter(|x| x["results"]["ramp_failed"].as_bool() == Some(true))
                        .count()
                });
            cells.push(format!(
                "{}{}",
                fmt_stat(k("results.ramp_s"), 2),
                if failed_n > 0 {
                    format!(" ({failed_n} failed)")
                } else {
                    String::new()
                }
            ));
            cells.push(fmt_num(k("results.leftover_established").map(|x| x.max), 0));
        }
        let _ = writeln!(s, "| {l} | {} |", cells.join(" | "));
    }

    let _ = writeln!(
        s,
        "\nKernel TCP counters during the unbounded floods (host-wide, largest over the runs): \
         retransmitted segments / TCP memory-pressure events / receive-queue drops. On loopback \
         any of these means the host shaped the run (a receiver that did not get the CPU in \
         time, socket buffers over `net.ipv4.tcp_mem`), not only the target.\n"
    );
    let scs: Vec<(&str, &str)> = [
        (UFLOOD_16K, OURS),
        (UFLOOD_64, OURS),
        (UFLOOD_64_C50, OURS),
        (UFLOOD_16K, TCPKALI),
        (UFLOOD_64, TCPKALI),
    ]
    .into_iter()
    .filter(|(_, g)| *g == OURS || kali)
    .collect();
    let _ = writeln!(
        s,
        "| target | {} |\n|---|{}",
        scs.iter()
            .map(|(sc, g)| format!("{sc} [{g}]"))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(scs.len())
    );
    for l in &r.labels {
        let cells: Vec<String> = scs
            .iter()
            .map(|(sc, g)| {
                let k = |f: &str| {
                    r.stat_of(l, sc, g, &format!("results.kernel_tcp.{f}"))
                        .map(|x| x.max)
                };
                format!(
                    "{} / {} / {}",
                    fmt_num(k("RetransSegs"), 0),
                    fmt_num(k("TCPMemoryPressures"), 0),
                    fmt_num(k("TCPRcvQDrop"), 0)
                )
            })
            .collect();
        let _ = writeln!(s, "| {l} | {} |", cells.join(" | "));
    }
    s
}

/// A check's verdict line.
pub(crate) struct Checks<'a> {
    pub(crate) s: String,
    pub(crate) label: &'a str,
}

impl Checks<'_> {
    /// `measured` is (value, bound); `pass` compares them.
    fn row(
        &mut self,
        check: &str,
        measured: Option<(f64, f64)>,
        pass: fn(f64, f64) -> bool,
        unit: &str,
    ) {
        self.row_noted(check, measured, pass, unit, "");
    }

    /// As `row`, with `note` (e.g. the figures a ratio came from) after the measured value.
    pub(crate) fn row_noted(
        &mut self,
        check: &str,
        measured: Option<(f64, f64)>,
        pass: fn(f64, f64) -> bool,
        unit: &str,
        note: &str,
    ) {
        let (m, v) = match measured {
            Some((a, b)) => (
                format!("{a:.3}{unit} vs {b:.3}{unit}{note}"),
                if pass(a, b) { "met" } else { "NOT met" },
            ),
            None => ("not measured".into(), "-"),
        };
        let _ = writeln!(self.s, "| {} | {check} | {m} | {v} |", self.label);
    }
}

pub(crate) fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    a.zip(b).filter(|(_, b)| *b > 0.0).map(|(a, b)| a / b)
}

/// The targets (issue 18's, and the earlier depth-limited ones), checked on medians for
/// every wsedge relay label against the HAProxy label with the same worker count and
/// `direct` (the function echo servers have their own goals: `report_functions`).
fn targets(r: &Runs) -> String {
    let mut out = String::from(
        "\n## Targets\n\nOn medians. `[gen]` names the generator of the figures compared.\n\n\
         | wsedge target | check | measured | verdict |\n|---|---|---|---|\n",
    );
    let ge = |a: f64, b: f64| a >= b;
    let le = |a: f64, b: f64| a <= b;
    for l in r
        .labels
        .iter()
        .filter(|l| l.starts_with("wsedge") && !report_functions::is_function_label(l))
    {
        let w = l.rsplit('-').next().unwrap_or("w1");
        let hap = format!("haproxy-{w}");
        let g = |lab: &str, sc: &str, gen_: &str, f: &str| {
            r.stat_of(lab, sc, gen_, f).map(|x| x.median)
        };
        let mut c = Checks {
            s: String::new(),
            label: l,
        };
        let vs = |sc: &str, gen_: &str, f: &str, other: &str, bound: f64| {
            ratio(g(l, sc, gen_, f), g(other, sc, gen_, f)).map(|x| (x, bound))
        };
        for gen_ in [OURS, TCPKALI] {
            if gen_ == TCPKALI && !r.has_generator(TCPKALI) {
                continue;
            }
            c.row(
                &format!("unbounded 64 B delivered ≥ 1.3× HAProxy [{gen_}]"),
                vs(UFLOOD_64, gen_, "results.recv_msgs_per_s", &hap, 1.3),
                ge,
                "×",
            );
            c.row(
                &format!("unbounded 16 KiB delivered ≥ 2× HAProxy [{gen_}]"),
                vs(UFLOOD_16K, gen_, "results.recv_msgs_per_s", &hap, 2.0),
                ge,
                "×",
            );
        }
        c.row(
            "unbounded 64 B origin CPU per message ≤ HAProxy's [wsedge-load]",
            vs(UFLOOD_64, OURS, "results.origin_cpu_us_per_msg", &hap, 1.0),
            le,
            "×",
        );
        for (p, name) in [("p50", "p50"), ("p99", "p99")] {
            let f = format!("results.probe.{p}_ms");
            c.row(
                &format!(
                    "new-client handshake during a 50-conn flood, {name} ≤ HAProxy's [wsedge-load]"
                ),
                g(l, UFLOOD_64_C50, OURS, &f).zip(g(&hap, UFLOOD_64_C50, OURS, &f)),
                le,
                " ms",
            );
        }
        c.row(
            "64 B @10k p99 ≤ direct p99 + 0.1 ms [wsedge-load]",
            g(l, LAT_64, OURS, "results.p99_ms")
                .zip(g("direct", LAT_64, OURS, "results.p99_ms").map(|d| d + 0.1)),
            le,
            " ms",
        );
        c.row(
            "64 B p99 beside 2,000 idle connections ≤ HAProxy's [wsedge-load]",
            g(l, LAT_IDLE, OURS, "results.p99_ms").zip(g(&hap, LAT_IDLE, OURS, "results.p99_ms")),
            le,
            " ms",
        );
        c.row(
            "64 B p99 beside 2,000 heartbeating connections ≤ HAProxy's [wsedge-load]",
            g(l, LAT_HEARTBEAT, OURS, "results.p99_ms").zip(g(
                &hap,
                LAT_HEARTBEAT,
                OURS,
                "results.p99_ms",
            )),
            le,
            " ms",
        );
        c.row(
            "16 KiB @10k CPU s per GB ≤ 0.6× HAProxy [wsedge-load]",
            vs(CPU_16K, OURS, "usage.target_cpu_s_per_gb", &hap, 0.6),
            le,
            "×",
        );
        c.row(
            "sessions/s ≥ 1.3× HAProxy [wsedge-load]",
            vs(HANDSHAKES, OURS, "results.sessions_per_s", &hap, 1.3),
            ge,
            "×",
        );
        c.row(
            "sessions/s ≥ 0.8× direct [wsedge-load]",
            vs(HANDSHAKES, OURS, "results.sessions_per_s", "direct", 0.8),
            ge,
            "×",
        );
        c.row(
            "idle RSS ≤ 512 B per connection [wsedge-load]",
            g(l, IDLE, OURS, "results.rss_per_conn_bytes").map(|x| (x, 512.0)),
            le,
            " B",
        );
        c.row(
            "depth-limited 16 KiB flood ≥ 2× HAProxy [wsedge-load]",
            vs(FLOOD_16K, OURS, "results.msgs_per_s", &hap, 2.0),
            ge,
            "×",
        );
        c.row(
            "depth-limited 16 KiB flood ≥ 0.6× direct [wsedge-load]",
            vs(FLOOD_16K, OURS, "results.msgs_per_s", "direct", 0.6),
            ge,
            "×",
        );
        c.row(
            "depth-limited 64 B flood ≥ 1.2× HAProxy [wsedge-load]",
            vs(FLOOD_64, OURS, "results.msgs_per_s", &hap, 1.2),
            ge,
            "×",
        );
        out += &c.s;
    }
    out
}

/// The CI regression check: `label`'s delivered msg/s over `direct`'s in `scenario` (our
/// generator), pair by pair in the order the runs were written (scripts/bench.sh interleaves
/// them: direct, wsedge, direct, wsedge, ...). It passes when the **best** pair reaches
/// `floor`: noise on a shared host only ever pushes single runs down, so a gross regression
/// is one that no pair escapes. Returns the line to print and the verdict; an error when
/// either side has no run.
pub fn regression_check(
    r: &Runs,
    label: &str,
    scenario: &str,
    floor: f64,
) -> anyhow::Result<(String, bool)> {
    let values = |l: &str| -> Vec<f64> {
        r.by_key
            .get(&(l.to_owned(), scenario.to_owned(), OURS.to_owned()))
            .into_iter()
            .flatten()
            .filter_map(|v| v["results"]["recv_msgs_per_s"].as_f64())
            .collect()
    };
    let (w, d) = (values(label), values("direct"));
    anyhow::ensure!(!w.is_empty(), "no {scenario} run of {label}");
    anyhow::ensure!(!d.is_empty(), "no {scenario} run of direct");
    let pairs: Vec<(f64, f64, f64)> = w
        .iter()
        .zip(&d)
        .filter(|(_, d)| **d > 0.0)
        .map(|(w, d)| (w / d, *w, *d))
        .collect();
    anyhow::ensure!(!pairs.is_empty(), "direct delivered nothing in {scenario}");
    let best = pairs.iter().map(|p| p.0).fold(f64::MIN, f64::max);
    let ok = best >= floor;
    let list: Vec<String> = pairs
        .iter()
        .map(|(x, w, d)| {
            format!(
                "{x:.2}× ({} / {})",
                fmt_num(Some(*w), 0),
                fmt_num(Some(*d), 0)
            )
        })
        .collect();
    Ok((
        format!(
            "regression check, {scenario} delivered msg/s, {label} / direct per pair: {}; best {best:.2}× (floor {floor:.2}×): {}",
            list.join(", "),
            if ok { "ok" } else { "below the floor" }
        ),
        ok,
    ))
}

/// The charts written, with their titles.
pub const CHARTS: [(&str, &str); 8] = [
    (
        "throughput-16k.png",
        "16 KiB depth-limited flood, msg/s [wsedge-load]",
    ),
    (
        "throughput-64.png",
        "64 B depth-limited flood, msg/s [wsedge-load]",
    ),
    (
        "unbounded-16k.png",
        "16 KiB unbounded flood, delivered msg/s [wsedge-load]",
    ),
    (
        "unbounded-64.png",
        "64 B unbounded flood, delivered msg/s [wsedge-load]",
    ),
    (
        "latency.png",
        "64 B at 10k msg/s, round-trip percentiles (ms, medians) [wsedge-load]",
    ),
    ("sessions.png", "Handshakes: sessions/s [wsedge-load]"),
    (
        "memory.png",
        "Idle connections: RSS bytes per connection [wsedge-load]",
    ),
    (
        "cpu-per-gb.png",
        "16 KiB at 10k msg/s: proxy CPU seconds per GB relayed [wsedge-load]",
    ),
];

/// Finds and registers a TrueType font for chart text; false if none.
pub fn load_font() -> bool {
    let mut candidates: Vec<PathBuf> = std::env::var_os("WSEDGE_FONT")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    candidates.push("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".into());
    candidates.push("/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf".into());
    find_ttf(Path::new("/usr/share/fonts"), &mut candidates, 3);
    for p in candidates {
        if let Ok(bytes) = std::fs::read(&p) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

fn find_ttf(dir: &Path, out: &mut Vec<PathBuf>, depth: u32) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() && depth > 0 {
            find_ttf(&p, out, depth - 1);
        } else if p.extension().is_some_and(|x| x.eq_ignore_ascii_case("ttf")) {
            out.push(p);
        }
    }
}

fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 10] = [
        RGBColor(90, 90, 90),
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(23, 190, 207),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(188, 189, 34),
    ];
    C[i % C.len()]
}

/// One bar: label, median, min, max, colour index.
pub type Bar = (String, f64, f64, f64, usize);

/// A bar chart, one bar per label at the median, with a whisker from min to max.
pub fn bar_chart(path: &Path, title: &str, bars: &[Bar]) -> anyhow::Result<()> {
    let width = (150 * bars.len() as u32).max(960);
    let root = BitMapBackend::new(path, (width, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = bars
        .iter()
        .map(|b| b.1.max(b.3))
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.15;
    let n = bars.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(90)
        .y_label_area_size(80)
        .build_cartesian_2d((0..n - 1).into_segmented(), 0.0..max)?;
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_style(("sans-serif", 13))
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .y_label_formatter(&|v| fmt_num(Some(*v), 2))
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        let mut r = Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), b.1),
            ],
            color(b.4).filled(),
        );
        r.set_margin(0, 0, 12, 12);
        r
    }))?;
    chart.draw_series(
        bars.iter()
            .enumerate()
            .filter(|(_, b)| b.3 > b.2)
            .map(|(i, b)| {
                PathElement::new(
                    vec![
                        (SegmentValue::CenterOf(i), b.2),
                        (SegmentValue::CenterOf(i), b.3),
                    ],
                    BLACK.stroke_width(2),
                )
            }),
    )?;
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        let style = ("sans-serif", 14)
            .into_font()
            .into_text_style(&root)
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        Text::new(
            fmt_num(Some(b.1), 2),
            (SegmentValue::CenterOf(i), b.1.max(b.3) + max * 0.01),
            style,
        )
    }))?;
    root.present()?;
    Ok(())
}

/// Latency percentiles, one line per label.
pub fn latency_chart(
    path: &Path,
    title: &str,
    series: &[(String, [f64; 4])],
) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = series
        .iter()
        .flat_map(|s| s.1)
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.1;
    let names = ["p50", "p90", "p99", "p99.9"];
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..3.2f64, 0.0..max)?;
    chart
        .configure_mesh()
        .x_labels(4)
        .x_label_formatter(&|x| {
            let i = x.round() as usize;
            if (x - i as f64).abs() < 0.01 {
                names.get(i).map(|s| (*s).to_owned()).unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("ms")
        .draw()?;
    for (i, (label, v)) in series.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(
                v.iter().enumerate().map(|(k, y)| (k as f64, *y)),
                c.stroke_width(3),
            ))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}

/// Writes results.json, results.md and the charts into `out`; `fanout_text`: the fan-out
/// runs' JSON lines, if any (into results.json's `fanout` and the functions section).
pub fn write_all(
    runs_text: &str,
    fanout_text: Option<&str>,
    host: &str,
    out: &Path,
) -> anyhow::Result<()> {
    let r = Runs::parse(runs_text)?;
    let fan = fanout_text
        .map(|t| Runs::parse(t).context("the fan-out runs"))
        .transpose()?;
    let all: Vec<&Value> = r.by_key.values().flatten().collect();
    let mut doc = json!({ "host": host, "runs": all });
    if let Some(f) = &fan {
        doc["fanout"] = json!(f.by_key.values().flatten().collect::<Vec<_>>());
    }
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&doc)?,
    )?;
    let charts = load_font();
    if charts {
        let bars = |sc: &str, f: &str, skip_direct: bool| -> Vec<Bar> {
            r.labels
                .iter()
                .enumerate()
                .filter(|(_, l)| !(skip_direct && *l == "direct"))
                .filter_map(|(i, l)| {
                    r.stat(l, sc, f)
                        .map(|s| (l.clone(), s.median, s.min, s.max, i))
                })
                .collect()
        };
        let m = "results.msgs_per_s";
        let specs: [(&str, &str, bool); 8] = [
            (FLOOD_16K, m, false),
            (FLOOD_64, m, false),
            (UFLOOD_16K, "results.recv_msgs_per_s", false),
            (UFLOOD_64, "results.recv_msgs_per_s", false),
            (LAT_64, "", false),
            (HANDSHAKES, "results.sessions_per_s", false),
            (IDLE, "results.rss_per_conn_bytes", true),
            (CPU_16K, "usage.target_cpu_s_per_gb", true),
        ];
        for ((file, title), (sc, f, skip)) in CHARTS.iter().zip(specs) {
            if sc == LAT_64 {
                let lat: Vec<(String, [f64; 4])> = r
                    .labels
                    .iter()
                    .filter_map(|l| {
                        let g = |f: &str| r.get(l, LAT_64, f);
                        Some((
                            l.clone(),
                            [
                                g("results.p50_ms")?,
                                g("results.p90_ms")?,
                                g("results.p99_ms")?,
                                g("results.p999_ms")?,
                            ],
                        ))
                    })
                    .collect();
                latency_chart(&out.join(file), title, &lat)?;
            } else {
                bar_chart(&out.join(file), title, &bars(sc, f, skip))?;
            }
        }
    }
    std::fs::write(
        out.join("results.md"),
        markdown(&r, fan.as_ref(), host, charts),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(label: &str, scenario: &str, generator: &str, results: &str) -> String {
        format!(
            r#"{{"label":"{label}","scenario":"{scenario}","generator":"{generator}","results":{results},"usage":{{"wall_s":1.0}}}}"#
        )
    }

    #[test]
    fn cells_are_medians_with_their_spread_and_targets_compare_medians() {
        let mut lines = vec![
            // A record from before `generator` existed counts as ours.
            r#"{"label":"direct","scenario":"flood-64","results":{"msgs_per_s":100.0},"usage":{"wall_s":1.0}}"#.to_owned(),
        ];
        for v in [50.0, 55.0, 45.0] {
            lines.push(rec(
                "haproxy-w1",
                "flood-64",
                OURS,
                &format!(r#"{{"msgs_per_s":{v}}}"#),
            ));
        }
        for v in [90.0, 70.0, 60.0] {
            lines.push(rec(
                "wsedge-buffered-w1",
                "flood-64",
                OURS,
                &format!(r#"{{"msgs_per_s":{v}}}"#),
            ));
        }
        let r = Runs::parse(&lines.join("\n")).unwrap();
        assert_eq!(r.labels.len(), 3);
        assert_eq!(r.run_counts(), (1, 3));
        let md = markdown(&r, None, "host", false);
        assert!(
            md.contains("| wsedge-buffered-w1 | n/a | 70 (60–90) |"),
            "{md}"
        );
        assert!(md.contains("| direct | n/a | 100 |"), "{md}");
        // 70 / 50 on medians.
        assert!(
            md.contains("| wsedge-buffered-w1 | depth-limited 64 B flood ≥ 1.2× HAProxy [wsedge-load] | 1.400× vs 1.200× | met |"),
            "{md}"
        );
        assert!(md.contains("not measured"));
        assert!(md.contains("median of 1 to 3 runs"), "{md}");
    }

    #[test]
    fn generators_stay_apart_and_both_are_named() {
        let lines = [
            rec(
                "haproxy-w1",
                UFLOOD_64,
                OURS,
                r#"{"recv_msgs_per_s":100.0}"#,
            ),
            rec(
                "haproxy-w1",
                UFLOOD_64,
                TCPKALI,
                r#"{"recv_msgs_per_s":400.0,"ramp_s":1.0}"#,
            ),
            rec(
                "wsedge-auto-w1",
                UFLOOD_64,
                OURS,
                r#"{"recv_msgs_per_s":120.0}"#,
            ),
            rec(
                "wsedge-auto-w1",
                UFLOOD_64,
                TCPKALI,
                r#"{"recv_msgs_per_s":600.0,"ramp_s":1.2}"#,
            ),
            rec(
                "wsedge-auto-w1",
                UFLOOD_64,
                TCPKALI,
                r#"{"recv_msgs_per_s":null,"ramp_failed":true,"ramp_s":8.0}"#,
            ),
        ]
        .join("\n");
        let r = Runs::parse(&lines).unwrap();
        assert_eq!(
            r.get("wsedge-auto-w1", UFLOOD_64, "results.recv_msgs_per_s"),
            Some(120.0)
        );
        let k = r
            .stat_of(
                "wsedge-auto-w1",
                UFLOOD_64,
                TCPKALI,
                "results.recv_msgs_per_s",
            )
            .unwrap();
        assert_eq!((k.median, k.n, k.missing), (600.0, 1, 1));
        let md = markdown(&r, None, "host", false);
        assert!(md.contains("64 B delivered [tcpkali]"), "{md}");
        assert!(md.contains("600 [1 of 2 runs without]"), "{md}");
        assert!(md.contains("(1 failed)"), "{md}");
        // 1.2× with ours, 1.5× with tcpkali: the same target judged per generator.
        assert!(md.contains("unbounded 64 B delivered ≥ 1.3× HAProxy [wsedge-load] | 1.200× vs 1.300× | NOT met |"), "{md}");
        assert!(
            md.contains(
                "unbounded 64 B delivered ≥ 1.3× HAProxy [tcpkali] | 1.500× vs 1.300× | met |"
            ),
            "{md}"
        );
    }

    #[test]
    fn stat_of_odd_even_and_missing() {
        let s = Stat::of([Some(3.0), None, Some(1.0), Some(2.0), Some(10.0)]).unwrap();
        assert_eq!(
            (s.median, s.min, s.max, s.n, s.missing),
            (2.5, 1.0, 10.0, 4, 1)
        );
        assert_eq!(Stat::of([None, Some(f64::NAN)]), None);
    }

    #[test]
    fn regression_check_pairs_runs_in_order_and_takes_the_best_pair() {
        // Interleaved as bench.sh writes them: direct, wsedge, direct, wsedge, ...
        let mut lines = Vec::new();
        for (d, w) in [(1000.0, 250.0), (2000.0, 500.0), (800.0, 280.0)] {
            lines.push(rec(
                "direct",
                UFLOOD_64,
                OURS,
                &format!(r#"{{"recv_msgs_per_s":{d}}}"#),
            ));
            lines.push(rec(
                "wsedge-auto-w1",
                UFLOOD_64,
                OURS,
                &format!(r#"{{"recv_msgs_per_s":{w}}}"#),
            ));
        }
        let r = Runs::parse(&lines.join("\n")).unwrap();
        // Pairs 0.25, 0.25, 0.35: the ratio of medians would be 280 / 1000 = 0.28.
        let (line, ok) = regression_check(&r, "wsedge-auto-w1", UFLOOD_64, 0.3).unwrap();
        assert!(ok, "{line}");
        assert!(
            line.contains("0.25× (250 / 1000), 0.25× (500 / 2000), 0.35× (280 / 800); best 0.35×"),
            "{line}"
        );
        let (line, ok) = regression_check(&r, "wsedge-auto-w1", UFLOOD_64, 0.4).unwrap();
        assert!(!ok && line.contains("below the floor"), "{line}");
        assert!(regression_check(&r, "wsedge-splice-w1", UFLOOD_64, 0.3).is_err());
        assert!(regression_check(&r, "wsedge-auto-w1", UFLOOD_16K, 0.3).is_err());
    }
}
