//! The many-hosts benchmark report (`wsedge-report --hosts`, written by
//! scripts/bench-many-hosts.sh): `fanout` runs of the same subscribers spread over three
//! wsedge instances sharing a Redis (cross-host), all on one of them with the same broker
//! config (single-host), and optionally on one instance without a broker; a Markdown table
//! whose every cell is the median of the runs with their spread, the broker's CPU and bytes
//! per message, then issue 16's goals checked on the medians.

use std::fmt::Write as _;
use std::path::Path;

use crate::report::{Runs, fmt_stat};
use crate::report_tls::{fmt_ratio, ratio};

/// Subscribers spread round robin over the three instances, the publisher on the first.
pub const CROSS: &str = "cross-host";
/// The same subscribers and publisher on one instance, with the same `[broker]` table.
pub const SINGLE: &str = "single-host";
/// The same on one instance without a `[broker]` table (what the broker hop costs alone).
pub const SINGLE_NO_BROKER: &str = "single-host-nobroker";

/// Issue 16's goals: cross-host p99 at most single-host p99 + 2 ms, deliveries/s at least
/// 0.8× single-host's.
const GOAL_P99_EXTRA_MS: f64 = 2.0;
const GOAL_DELIVERIES: f64 = 0.8;

/// The Markdown report.
pub fn markdown(r: &Runs, host: &str) -> String {
    let mut s = String::new();
    let runs = crate::report::head(&mut s, "# wsedge many-hosts benchmark results", r, host);
    let _ = writeln!(
        s,
        "Every cell is the **median of {runs} runs, with the spread (min–max) in brackets**; \
         the checks compare medians. Generator: `wsedge-load fanout` (one process: one \
         publisher at a fixed rate, every subscriber; a message is complete when the last \
         subscriber anywhere has it). Shapes: `{CROSS}`, subscribers round robin over three \
         wsedge instances sharing one Redis, publisher on the first; `{SINGLE}`, the same \
         subscribers and publisher on the first instance, same `[broker]` table (every \
         message still goes through Redis and back); `{SINGLE_NO_BROKER}`, on one instance \
         without a broker. wsedge CPU is the three instances' together (% of one core). \
         Broker figures are over the measured window: redis-server's CPU, and its bytes in + \
         out (`INFO stats`) per published message and per delivery.\n"
    );
    let _ = writeln!(
        s,
        "| label | shape | published msg/s | deliveries/s | last subscriber p50 ms | p99 ms | p99.9 ms | wsedge CPU % | broker CPU % | broker CPU µs per msg | broker B in / out per msg | broker B per delivery | missing |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for l in &r.labels {
        for sc in [CROSS, SINGLE, SINGLE_NO_BROKER] {
            if !r.by_key.keys().any(|k| &k.0 == l && k.1 == sc) {
                continue;
            }
            let st = |p: &str, d: usize| fmt_stat(r.stat(l, sc, p), d);
            let _ = writeln!(
                s,
                "| {l} | {sc} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} |",
                st("results.published_msgs_per_s", 0),
                st("results.deliveries_per_s", 0),
                st("results.p50_ms", 2),
                st("results.p99_ms", 2),
                st("results.p999_ms", 2),
                st("usage.target_cpu_pct", 0),
                st("results.broker.cpu_pct", 0),
                st("results.broker.cpu_us_per_msg", 1),
                st("results.broker.in_bytes_per_msg", 0),
                st("results.broker.out_bytes_per_msg", 0),
                st("results.broker.bytes_per_delivery", 3),
                st("results.missing", 0),
            );
        }
    }
    s + &checks(r)
}

/// Issue 16's goals on medians, per label.
fn checks(r: &Runs) -> String {
    let mut s = format!(
        "\n## Against one host (issue 16's goals)\n\nGoals: cross-host p99 ≤ single-host p99 + \
         {GOAL_P99_EXTRA_MS} ms, cross-host deliveries/s ≥ {GOAL_DELIVERIES}× single-host's \
         (both with the broker). A shape whose runs lost deliveries (`missing` > 0) or fell \
         behind the publish rate measured a backlog, not a latency: read its row first.\n\n\
         | label | p99, cross − single | deliveries/s, cross / single | vs no broker: p99 cross − bare, deliveries/s cross / bare | verdict |\n\
         |---|---|---|---|---|\n"
    );
    for l in &r.labels {
        let q = |sc: &str, p: &str| r.stat(l, sc, p);
        let (cross, single, bare) = (
            q(CROSS, "results.p99_ms"),
            q(SINGLE, "results.p99_ms"),
            q(SINGLE_NO_BROKER, "results.p99_ms"),
        );
        if cross.is_none() || single.is_none() {
            continue;
        }
        let extra = |b: Option<crate::report::Stat>| {
            cross
                .zip(b)
                .map(|(c, b)| c.median - b.median)
                .map_or_else(|| "n/a".into(), |x| format!("{x:+.2} ms"))
        };
        let d = "results.deliveries_per_s";
        let dr = ratio(q(CROSS, d), q(SINGLE, d));
        let p99_ok = cross
            .zip(single)
            .map(|(c, s)| c.median <= s.median + GOAL_P99_EXTRA_MS);
        let verdict = |ok: Option<bool>| match ok {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        };
        let _ = writeln!(
            s,
            "| {l} | {} | {} | {}, {} | p99: {}; deliveries/s: {} |",
            extra(single),
            fmt_ratio(dr),
            extra(bare),
            fmt_ratio(ratio(q(CROSS, d), q(SINGLE_NO_BROKER, d))),
            verdict(p99_ok),
            verdict(dr.map(|x| x >= GOAL_DELIVERIES)),
        );
    }
    s
}

/// Writes results.json and results.md into `out`.
pub fn write_all(runs_text: &str, host: &str, out: &Path) -> anyhow::Result<()> {
    Runs::parse(runs_text)?.write_report(host, out, markdown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::OURS;
    use serde_json::{Value, json};

    fn run(scenario: &str, dps: f64, p99: f64, broker: bool) -> String {
        json!({
            "label": "wsedge-w1", "scenario": scenario, "generator": OURS,
            "results": {
                "published_msgs_per_s": 1000.0, "deliveries_per_s": dps,
                "p50_ms": 1.0, "p99_ms": p99, "p999_ms": p99 + 1.0, "missing": 0,
                "broker": if broker {
                    json!({"cpu_pct": 20.0, "cpu_us_per_msg": 200.0, "in_bytes_per_msg": 120.0,
                           "out_bytes_per_msg": 360.0, "bytes_per_delivery": 0.16})
                } else { Value::Null },
            },
            "usage": {"wall_s": 1.0, "target_cpu_pct": 90.0},
        })
        .to_string()
    }

    #[test]
    fn medians_and_the_goals() {
        let mut lines = Vec::new();
        for (c, sgl) in [(3.0, 1.5), (4.0, 1.0), (3.5, 2.0)] {
            lines.push(run(CROSS, 2.7e6, c, true));
            lines.push(run(SINGLE, 3.0e6, sgl, true));
            lines.push(run(SINGLE_NO_BROKER, 3.6e6, 1.0, false));
        }
        let md = markdown(&Runs::parse(&lines.join("\n")).unwrap(), "host: test");
        assert!(
            md.contains("| wsedge-w1 | cross-host | 1000 (1000–1000) | 2.70M (2.70M–2.70M) | 1.00 (1.00–1.00) | 3.50 (3.00–4.00) |"),
            "{md}"
        );
        assert!(
            md.contains("| 200.0 (200.0–200.0) | 120 (120–120) / 360 (360–360) | 0.160 (0.160–0.160) | 0 (0–0) |"),
            "{md}"
        );
        // No broker: its broker cells say so rather than show zeros.
        assert!(
            md.contains("| wsedge-w1 | single-host-nobroker |")
                && md.contains("| n/a | n/a / n/a | n/a |"),
            "{md}"
        );
        // p99 3.5 vs 1.5 (+2.00: met, the bound is inclusive); 2.7M / 3.0M = 0.90 (met).
        assert!(
            md.contains(
                "| wsedge-w1 | +2.00 ms | 0.90× | +2.50 ms, 0.75× | p99: met; deliveries/s: met |"
            ),
            "{md}"
        );
        // A cross-host p99 past the bound is not met.
        let lines: Vec<String> = vec![run(CROSS, 2.0e6, 5.0, true), run(SINGLE, 3.0e6, 1.0, true)];
        let md = markdown(&Runs::parse(&lines.join("\n")).unwrap(), "");
        assert!(md.contains("p99: NOT met; deliveries/s: NOT met"), "{md}");
    }
}
