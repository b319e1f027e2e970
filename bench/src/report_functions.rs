//! The functions section of `results.md` (issue 15), written by `report::markdown`: wsedge's
//! JavaScript echo (`wsedge-fnjs-wN`, docs/examples/functions/echo.js) against its built-in
//! echo function (`wsedge-fnecho-wN`) and a Node.js `ws` echo server (`node-ws`, one thread,
//! bench/node/echo.mjs), the issue's goals checked on medians, the idle memory a JS socket
//! adds (fresh processes: scenario `idle-fresh`), and fan-out deliveries/s from a JavaScript
//! publish (`wsedge-jsroom-wN`, bench/functions/room.js) beside the built-in broadcast
//! function (`wsedge-broadcast-wN`), from the fan-out runs.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::report::{
    Checks, FLOOD_16K, FLOOD_64, LAT_64, OURS, Runs, UFLOOD_16K, UFLOOD_64, fmt_num, fmt_stat,
    ratio,
};

/// Idle connections held by a freshly started target (no flood before it).
pub const IDLE_FRESH: &str = "idle-fresh";
/// The Node.js `ws` echo server's label.
pub const NODE_WS: &str = "node-ws";
/// Label prefixes: the built-in echo, the JS echo, the JS fan-out, the built-in broadcast.
const FN_ECHO: &str = "wsedge-fnecho-";
const FN_JS: &str = "wsedge-fnjs-";
const JS_ROOM: &str = "wsedge-jsroom-";
const BROADCAST: &str = "wsedge-broadcast-";
/// The goals: JS echo messages/s at least this share of the built-in echo's...
const VS_BUILTIN: f64 = 0.7;
/// ...and this multiple of Node `ws`'s; a JS socket at most this many bytes more when idle.
const VS_NODE: f64 = 2.0;
const IDLE_EXTRA_MAX: f64 = 2048.0;

/// True for the echo servers that answer themselves (no relay): these have the goals below,
/// not the relay targets.
pub fn is_function_label(l: &str) -> bool {
    l.starts_with("wsedge-fn") || l == NODE_WS
}

/// `w2` for `wsedge-fnjs-w2`: the worker suffixes of the labels with `prefix`, by number.
fn workers<'a>(labels: impl Iterator<Item = &'a String>, prefix: &str) -> Vec<String> {
    let set: BTreeSet<(u32, String)> = labels
        .filter_map(|l| l.strip_prefix(prefix))
        .map(|w| {
            (
                w.trim_start_matches('w').parse().unwrap_or(u32::MAX),
                w.into(),
            )
        })
        .collect();
    set.into_iter().map(|(_, w)| w).collect()
}

/// The section; empty when neither the function echoes nor any fan-out ran.
pub fn section(r: &Runs, fanout: Option<&Runs>) -> String {
    let mut s = String::new();
    let fn_labels: Vec<&String> = r.labels.iter().filter(|l| is_function_label(l)).collect();
    let fan_rows = fanout.map(fanout_table).unwrap_or_default();
    if fn_labels.is_empty() && fan_rows.is_empty() {
        return s;
    }
    let _ = writeln!(
        s,
        "\n## Functions: JavaScript echo vs built-in echo vs Node.js `ws`\n\n\
         wsedge answering itself with no origin: `wsedge-fnecho-wN` is the built-in `echo` \
         function, `wsedge-fnjs-wN` the JavaScript echo (docs/examples/functions/echo.js), both \
         with N workers; `node-ws` is a Node.js `ws` echo server, one process and so one thread \
         (bench/node/echo.mjs; versions under `node_ws` in the host block). The same scenarios \
         as above [wsedge-load]; \"fresh\" idle is measured in a newly started process, before \
         any flood.\n"
    );
    if !fn_labels.is_empty() {
        let _ = writeln!(
            s,
            "| target | 64 B msg/s [depth 256] | 16 KiB msg/s [depth 16] | 64 B unbounded \
             delivered msg/s | 16 KiB unbounded delivered msg/s | 64 B @10k p50 / p99 ms | 64 B \
             @10k CPU % | idle B per conn, fresh (n) |\n|---|---|---|---|---|---|---|---|"
        );
        for l in &fn_labels {
            let g = |sc: &str, f: &str| r.stat(l, sc, f);
            let _ = writeln!(
                s,
                "| {l} | {} | {} | {} | {} | {} / {} | {} | {} ({}) |",
                fmt_stat(g(FLOOD_64, "results.msgs_per_s"), 0),
                fmt_stat(g(FLOOD_16K, "results.msgs_per_s"), 0),
                fmt_stat(g(UFLOOD_64, "results.recv_msgs_per_s"), 0),
                fmt_stat(g(UFLOOD_16K, "results.recv_msgs_per_s"), 0),
                fmt_stat(g(LAT_64, "results.p50_ms"), 3),
                fmt_stat(g(LAT_64, "results.p99_ms"), 3),
                fmt_stat(g(LAT_64, "usage.target_cpu_pct"), 1),
                fmt_stat(g(IDLE_FRESH, "results.rss_per_conn_bytes"), 0),
                fmt_num(g(IDLE_FRESH, "results.opened").map(|x| x.max), 0),
            );
        }
        s += &goals(r);
    }
    if !fan_rows.is_empty() {
        let _ = writeln!(
            s,
            "\nFan-out from a JavaScript publish (`wsedge-jsroom-wN`: every socket of \
             bench/functions/room.js subscribes to its room, and what one sends goes to the \
             others with `socket.publish`) beside the built-in `broadcast` function \
             (`wsedge-broadcast-wN`), 64 B messages, one publisher; `fanout-N-rate-R`: N \
             subscribers, R msg/s published; `fanout-N-closed-d16`: a closed loop, 16 messages \
             outstanding. Deliveries/s are counted at the subscribers; latency is from the \
             (scheduled) send to the last subscriber [wsedge-load]. No goal in the issue beyond \
             reporting it.\n\n\
             | workers | scenario | JS publish deliveries/s | built-in deliveries/s | JS / \
             built-in | JS last subscriber p50 / p99 ms | built-in p50 / p99 ms | JS missing \
             (largest over runs) |\n|---|---|---|---|---|---|---|---|"
        );
        s += &fan_rows;
    }
    s
}

/// The issue's goals for every JS echo label, on medians.
fn goals(r: &Runs) -> String {
    let mut out = format!(
        "\nGoals (issue 15), on medians: JS echo ≥ {VS_BUILTIN}× the built-in echo's msg/s \
         (same workers), ≥ {VS_NODE}× Node `ws`'s (one worker against Node's one thread), \
         ≤ {IDLE_EXTRA_MAX:.0} B more per idle JS socket than per built-in echo socket (fresh \
         processes).\n\n| JS target | goal | measured | verdict |\n|---|---|---|---|\n"
    );
    let ge = |a: f64, b: f64| a >= b;
    let le = |a: f64, b: f64| a <= b;
    let scenarios = [
        (FLOOD_64, "results.msgs_per_s", "64 B msg/s (depth-limited)"),
        (
            FLOOD_16K,
            "results.msgs_per_s",
            "16 KiB msg/s (depth-limited)",
        ),
        (
            UFLOOD_64,
            "results.recv_msgs_per_s",
            "64 B delivered msg/s (unbounded)",
        ),
        (
            UFLOOD_16K,
            "results.recv_msgs_per_s",
            "16 KiB delivered msg/s (unbounded)",
        ),
    ];
    for w in workers(r.labels.iter(), FN_JS) {
        let js = format!("{FN_JS}{w}");
        let builtin = format!("{FN_ECHO}{w}");
        let mut c = Checks {
            s: String::new(),
            label: &js,
        };
        let g = |l: &str, sc: &str, f: &str| r.stat_of(l, sc, OURS, f).map(|x| x.median);
        let mut against = vec![(builtin.as_str(), VS_BUILTIN, "the built-in echo")];
        if w == "w1" {
            against.push((NODE_WS, VS_NODE, "Node `ws`"));
        }
        for (other, bound, name) in against {
            for (sc, f, what) in scenarios {
                let (a, b) = (g(&js, sc, f), g(other, sc, f));
                c.row_noted(
                    &format!("{what} ≥ {bound}× {name} [wsedge-load]"),
                    ratio(a, b).map(|x| (x, bound)),
                    ge,
                    "×",
                    &format!(" ({} / {})", fmt_num(a, 0), fmt_num(b, 0)),
                );
            }
        }
        let f = "results.rss_per_conn_bytes";
        let (a, b) = (g(&js, IDLE_FRESH, f), g(&builtin, IDLE_FRESH, f));
        c.row_noted(
            &format!("extra RSS per idle JS socket ≤ {IDLE_EXTRA_MAX:.0} B (fresh processes) [wsedge-load]"),
            a.zip(b).map(|(a, b)| (a - b, IDLE_EXTRA_MAX)),
            le,
            " B",
            &format!(" ({} − {} B per connection)", fmt_num(a, 0), fmt_num(b, 0)),
        );
        out += &c.s;
    }
    out
}

/// One row per worker count and fan-out scenario: the JS room beside the built-in broadcast.
fn fanout_table(f: &Runs) -> String {
    let mut rows: BTreeSet<(u32, String, u64, String)> = BTreeSet::new();
    for (label, scenario, _) in f.by_key.keys() {
        let Some(w) = label
            .strip_prefix(JS_ROOM)
            .or_else(|| label.strip_prefix(BROADCAST))
        else {
            continue;
        };
        let wn = w.trim_start_matches('w').parse().unwrap_or(u32::MAX);
        let n = scenario
            .split('-')
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(u64::MAX);
        rows.insert((wn, w.to_owned(), n, scenario.clone()));
    }
    let mut s = String::new();
    for (_, w, _, sc) in rows {
        let (js, builtin) = (format!("{JS_ROOM}{w}"), format!("{BROADCAST}{w}"));
        let g = |l: &str, p: &str| f.stat(l, &sc, p);
        let dps = "results.deliveries_per_s";
        let lat = |l: &str| {
            format!(
                "{} / {}",
                fmt_stat(g(l, "results.p50_ms"), 2),
                fmt_stat(g(l, "results.p99_ms"), 2)
            )
        };
        let missing = match (
            g(&js, "results.missing"),
            g(&js, "results.expected_deliveries"),
        ) {
            (Some(m), Some(e)) => {
                format!("{} of {}", fmt_num(Some(m.max), 0), fmt_num(Some(e.max), 0))
            }
            _ => "n/a".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {sc} | {} | {} | {} | {} | {} | {missing} |",
            w.trim_start_matches('w'),
            fmt_stat(g(&js, dps), 0),
            fmt_stat(g(&builtin, dps), 0),
            ratio(
                g(&js, dps).map(|x| x.median),
                g(&builtin, dps).map(|x| x.median)
            )
            .map_or("n/a".into(), |x| format!("{x:.2}×")),
            lat(&js),
            lat(&builtin),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{IDLE, markdown};

    fn rec(label: &str, scenario: &str, results: &str) -> String {
        format!(
            r#"{{"label":"{label}","scenario":"{scenario}","generator":"wsedge-load","results":{results},"usage":{{"wall_s":1.0,"target_cpu_pct":50.0}}}}"#
        )
    }

    /// Runs of the three echo servers: msg/s per scenario, and bytes per idle connection
    /// after the floods and in a fresh process.
    fn echo_runs() -> Runs {
        let mut lines = Vec::new();
        for (l, m64, m16k, idle, fresh) in [
            ("wsedge-fnecho-w1", 1000.0, 100.0, 900.0, 500.0),
            ("wsedge-fnjs-w1", 800.0, 60.0, 3000.0, 2000.0),
            ("node-ws", 300.0, 40.0, 9000.0, 8000.0),
            ("wsedge-fnecho-w2", 1500.0, 150.0, 800.0, 400.0),
            ("wsedge-fnjs-w2", 900.0, 140.0, 2000.0, 1000.0),
        ] {
            for k in [0.9, 1.0, 1.2] {
                lines.push(rec(
                    l,
                    FLOOD_64,
                    &format!(r#"{{"msgs_per_s":{}}}"#, m64 * k),
                ));
                lines.push(rec(
                    l,
                    UFLOOD_64,
                    &format!(r#"{{"recv_msgs_per_s":{}}}"#, m64 * k),
                ));
            }
            lines.push(rec(l, FLOOD_16K, &format!(r#"{{"msgs_per_s":{m16k}}}"#)));
            lines.push(rec(
                l,
                UFLOOD_16K,
                &format!(r#"{{"recv_msgs_per_s":{m16k}}}"#),
            ));
            lines.push(rec(l, LAT_64, r#"{"p50_ms":0.1,"p99_ms":0.5}"#));
            lines.push(rec(
                l,
                IDLE,
                &format!(r#"{{"rss_per_conn_bytes":{idle},"opened":9000}}"#),
            ));
            lines.push(rec(
                l,
                IDLE_FRESH,
                &format!(r#"{{"rss_per_conn_bytes":{fresh},"opened":9000}}"#),
            ));
        }
        Runs::parse(&lines.join("\n")).unwrap()
    }

    #[test]
    fn js_goals_compare_medians_with_builtin_per_worker_count_and_node_at_one_worker() {
        let r = echo_runs();
        let md = markdown(&r, None, "host", false);
        // The table: medians with their spread, fresh idle beside it.
        assert!(
            md.contains("| wsedge-fnjs-w1 | 800 (720–960) | 60 | 800 (720–960) | 60 | 0.100 / 0.500 | 50.0 | 2000 (9000) |"),
            "{md}"
        );
        assert!(md.contains("| node-ws | 300 (270–360) |"), "{md}");
        // 800 / 1000 = 0.8 ≥ 0.7; 60 / 100 = 0.6 < 0.7.
        assert!(
            md.contains("| wsedge-fnjs-w1 | 64 B msg/s (depth-limited) ≥ 0.7× the built-in echo [wsedge-load] | 0.800× vs 0.700× (800 / 1000) | met |"),
            "{md}"
        );
        assert!(
            md.contains("| wsedge-fnjs-w1 | 16 KiB delivered msg/s (unbounded) ≥ 0.7× the built-in echo [wsedge-load] | 0.600× vs 0.700× (60 / 100) | NOT met |"),
            "{md}"
        );
        // Against Node: 800 / 300 ≥ 2; 60 / 40 = 1.5 < 2; only for one worker.
        assert!(
            md.contains("| wsedge-fnjs-w1 | 64 B msg/s (depth-limited) ≥ 2× Node `ws` [wsedge-load] | 2.667× vs 2.000× (800 / 300) | met |"),
            "{md}"
        );
        assert!(
            md.contains("| wsedge-fnjs-w1 | 16 KiB msg/s (depth-limited) ≥ 2× Node `ws` [wsedge-load] | 1.500× vs 2.000× (60 / 40) | NOT met |"),
            "{md}"
        );
        assert!(
            !md.contains("| wsedge-fnjs-w2 | 64 B msg/s (depth-limited) ≥ 2× Node"),
            "{md}"
        );
        assert!(
            md.contains("| wsedge-fnjs-w2 | 16 KiB msg/s (depth-limited) ≥ 0.7× the built-in echo [wsedge-load] | 0.933× vs 0.700× (140 / 150) | met |"),
            "{md}"
        );
        // Idle: fresh processes, JS minus built-in (2000 − 500, not 3000 − 900).
        assert!(
            md.contains("| wsedge-fnjs-w1 | extra RSS per idle JS socket ≤ 2048 B (fresh processes) [wsedge-load] | 1500.000 B vs 2048.000 B (2000 − 500 B per connection) | met |"),
            "{md}"
        );
        // The relay targets leave the echo servers out (no HAProxy to compare them with).
        assert!(!md.contains("| wsedge-fnjs-w1 | sessions/s"), "{md}");
        assert!(!md.contains("| wsedge-fnecho-w1 | idle RSS"), "{md}");
    }

    #[test]
    fn fanout_rows_pair_the_js_room_with_the_builtin_broadcast() {
        let f = |l: &str, sc: &str, d: f64, missing: u64| {
            rec(
                l,
                sc,
                &format!(
                    r#"{{"deliveries_per_s":{d},"p50_ms":1.5,"p99_ms":4.0,"missing":{missing},"expected_deliveries":90000}}"#
                ),
            )
        };
        let fan = Runs::parse(
            &[
                f(
                    "wsedge-broadcast-w1",
                    "fanout-1000-closed-d16",
                    1_000_000.0,
                    0,
                ),
                f("wsedge-jsroom-w1", "fanout-1000-closed-d16", 800_000.0, 0),
                f("wsedge-jsroom-w1", "fanout-1000-closed-d16", 600_000.0, 3),
                f("wsedge-broadcast-w1", "fanout-100-rate-1000", 100_000.0, 0),
                f("wsedge-jsroom-w1", "fanout-100-rate-1000", 100_000.0, 0),
                f("wsedge-broadcast-w2", "fanout-100-rate-1000", 100_000.0, 0),
            ]
            .join("\n"),
        )
        .unwrap();
        let md = markdown(&Runs::default(), Some(&fan), "host", false);
        assert!(md.contains("## Functions"), "{md}");
        // Ordered by workers, then subscribers (100 before 1000).
        let a = md
            .find("| 1 | fanout-100-rate-1000 | 100.0k | 100.0k | 1.00× |")
            .expect(&md);
        let b = md
            .find("| 1 | fanout-1000-closed-d16 | 700.0k (600.0k–800.0k) | 1.00M | 0.70× | 1.50 (1.50–1.50) / 4.00 (4.00–4.00) | 1.50 / 4.00 | 3 of 90.0k |")
            .expect(&md);
        assert!(a < b, "{md}");
        assert!(
            md.contains("| 2 | fanout-100-rate-1000 | n/a | 100.0k | n/a |"),
            "{md}"
        );
        // No echo runs: no echo table, no goals.
        assert!(!md.contains("| JS target |"), "{md}");
    }

    #[test]
    fn no_function_runs_no_section() {
        let r = Runs::parse(&rec("direct", FLOOD_64, r#"{"msgs_per_s":1.0}"#)).unwrap();
        assert!(!markdown(&r, None, "host", false).contains("## Functions"));
        assert_eq!(
            workers(
                ["wsedge-fnjs-w10".to_owned(), "wsedge-fnjs-w2".to_owned()].iter(),
                FN_JS
            ),
            ["w2", "w10"]
        );
    }
}
