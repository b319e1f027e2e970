//! The benchmark report: reads the runs `wsedge-load --json-out` appended (one JSON object
//! per line), writes `results.json`, a Markdown table with the issue's target ratios, and PNG
//! charts drawn with plotters.
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

/// Scenario names used by scripts/bench.sh.
pub const FLOOD_16K: &str = "flood-16k";
/// 64 B flood.
pub const FLOOD_64: &str = "flood-64";
/// 64 B at 10k msg/s.
pub const LAT_64: &str = "latency-64-10k";
/// 16 KiB at 10k msg/s (CPU per GB).
pub const CPU_16K: &str = "cpu-16k-10k";
/// Connect, upgrade, one echo, close.
pub const HANDSHAKES: &str = "handshakes";
/// Idle connections held.
pub const IDLE: &str = "idle";

/// All runs, indexed by (label, scenario).
#[derive(Debug, Default)]
pub struct Runs {
    /// Labels in first-seen order.
    pub labels: Vec<String>,
    /// The run records.
    pub by_key: BTreeMap<(String, String), Value>,
}

impl Runs {
    /// Parses JSON lines.
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
            if !r.labels.contains(&label) {
                r.labels.push(label.clone());
            }
            r.by_key.insert((label, scenario), v);
        }
        Ok(r)
    }

    /// A figure of a run: `results.<field>` or `usage.<field>`.
    pub fn get(&self, label: &str, scenario: &str, path: &str) -> Option<f64> {
        let v = self.by_key.get(&(label.to_owned(), scenario.to_owned()))?;
        let (section, field) = path.split_once('.')?;
        v[section][field].as_f64()
    }
}

fn fmt_num(v: Option<f64>, digits: usize) -> String {
    match v {
        None => "n/a".into(),
        Some(x) if x.abs() >= 1e6 => format!("{:.2}M", x / 1e6),
        Some(x) if x.abs() >= 1e4 => format!("{:.1}k", x / 1e3),
        Some(x) => format!("{x:.digits$}"),
    }
}

/// The Markdown report.
pub fn markdown(r: &Runs, host: &str, charts: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# wsedge benchmark results\n");
    let _ = writeln!(s, "```\n{}\n```\n", host.trim());
    let _ = writeln!(
        s,
        "100 connections unless noted. Floods keep messages in flight on every connection: 16 for 16 KiB (256 KiB), 256 for 64 B (17 KiB). \
         Latency is measured from each message's scheduled send time (coordinated omission \
         accounted for). CPU is the target's user+system time during the measured window; for \
         `direct` the target is the origin itself.\n"
    );
    let _ = writeln!(
        s,
        "| target | 16 KiB flood msg/s | 64 B flood msg/s | 64 B @10k p50 / p99 / p99.9 ms | 16 KiB @10k: CPU % / CPU s per GB | sessions/s (hs p99 ms) | idle: B per conn (n) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for l in &r.labels {
        let g = |sc: &str, f: &str| r.get(l, sc, f);
        let _ = writeln!(
            s,
            "| {l} | {} | {} | {} / {} / {} | {} / {} | {} ({}) | {} ({}) |",
            fmt_num(g(FLOOD_16K, "results.msgs_per_s"), 0),
            fmt_num(g(FLOOD_64, "results.msgs_per_s"), 0),
            fmt_num(g(LAT_64, "results.p50_ms"), 3),
            fmt_num(g(LAT_64, "results.p99_ms"), 3),
            fmt_num(g(LAT_64, "results.p999_ms"), 3),
            fmt_num(g(CPU_16K, "usage.target_cpu_pct"), 1),
            fmt_num(g(CPU_16K, "usage.target_cpu_s_per_gb"), 3),
            fmt_num(g(HANDSHAKES, "results.sessions_per_s"), 0),
            fmt_num(g(HANDSHAKES, "results.handshake_p99_ms"), 2),
            fmt_num(g(IDLE, "results.rss_per_conn_bytes"), 0),
            fmt_num(g(IDLE, "results.opened"), 0),
        );
    }
    let _ = writeln!(
        s,
        "\nGenerator CPU during the floods (one thread; 100 % = one core):\n"
    );
    let _ = writeln!(
        s,
        "| target | 16 KiB flood: generator / target / origin CPU % | 64 B flood: generator / target / origin CPU % |"
    );
    let _ = writeln!(s, "|---|---|---|");
    for l in &r.labels {
        let cpu = |sc: &str| {
            let wall = r.get(l, sc, "usage.wall_s").unwrap_or(0.0).max(1e-9);
            let pct = |f: &str| r.get(l, sc, f).map(|x| 100.0 * x / wall);
            format!(
                "{} / {} / {}",
                fmt_num(pct("usage.load_cpu_s"), 0),
                fmt_num(pct("usage.target_cpu_s"), 0),
                fmt_num(pct("usage.origin_cpu_s"), 0)
            )
        };
        let _ = writeln!(s, "| {l} | {} | {} |", cpu(FLOOD_16K), cpu(FLOOD_64));
    }
    s += &targets(r);
    if charts {
        let _ = writeln!(s, "\n## Charts\n");
        for (f, t) in CHARTS {
            let _ = writeln!(s, "![{t}]({f})\n");
        }
    } else {
        let _ = writeln!(s, "\n(No charts: no TrueType font found; set WSEDGE_FONT.)");
    }
    s
}

/// The issue's targets, checked for every wsedge label against the matching HAProxy label.
fn targets(r: &Runs) -> String {
    let mut s = String::from(
        "\n## Targets\n\n| wsedge target | check | measured | verdict |\n|---|---|---|---|\n",
    );
    for l in r.labels.iter().filter(|l| l.starts_with("wsedge")) {
        let w = l.rsplit('-').next().unwrap_or("w1");
        let hap = format!("haproxy-{w}");
        let g = |lab: &str, sc: &str, f: &str| r.get(lab, sc, f);
        let mut row =
            |check: &str, measured: Option<(f64, f64)>, pass: fn(f64, f64) -> bool, unit: &str| {
                let (m, v) = match measured {
                    Some((a, b)) => (
                        format!("{a:.3}{unit} vs {b:.3}{unit}"),
                        if pass(a, b) { "met" } else { "NOT met" },
                    ),
                    None => ("not measured".into(), "-"),
                };
                let _ = writeln!(s, "| {l} | {check} | {m} | {v} |");
            };
        let pair = |a: Option<f64>, b: Option<f64>| a.zip(b);
        let ratio = |a: Option<f64>, b: Option<f64>| pair(a, b).map(|(a, b)| (a / b, 1.0));
        row(
            "16 KiB flood ≥ 2× HAProxy",
            ratio(
                g(l, FLOOD_16K, "results.msgs_per_s"),
                g(&hap, FLOOD_16K, "results.msgs_per_s"),
            )
            .map(|(x, _)| (x, 2.0)),
            |a, b| a >= b,
            "×",
        );
        row(
            "16 KiB flood ≥ 0.6× direct",
            ratio(
                g(l, FLOOD_16K, "results.msgs_per_s"),
                g("direct", FLOOD_16K, "results.msgs_per_s"),
            )
            .map(|(x, _)| (x, 0.6)),
            |a, b| a >= b,
            "×",
        );
        row(
            "64 B flood ≥ 1.2× HAProxy",
            ratio(
                g(l, FLOOD_64, "results.msgs_per_s"),
                g(&hap, FLOOD_64, "results.msgs_per_s"),
            )
            .map(|(x, _)| (x, 1.2)),
            |a, b| a >= b,
            "×",
        );
        row(
            "64 B @10k p99 ≤ direct p99 + 0.1 ms",
            pair(
                g(l, LAT_64, "results.p99_ms"),
                g("direct", LAT_64, "results.p99_ms").map(|d| d + 0.1),
            ),
            |a, b| a <= b,
            " ms",
        );
        row(
            "16 KiB @10k CPU s ≤ 0.5× HAProxy",
            ratio(
                g(l, CPU_16K, "usage.target_cpu_s"),
                g(&hap, CPU_16K, "usage.target_cpu_s"),
            )
            .map(|(x, _)| (x, 0.5)),
            |a, b| a <= b,
            "×",
        );
        row(
            "sessions/s ≥ 1.5× HAProxy",
            ratio(
                g(l, HANDSHAKES, "results.sessions_per_s"),
                g(&hap, HANDSHAKES, "results.sessions_per_s"),
            )
            .map(|(x, _)| (x, 1.5)),
            |a, b| a >= b,
            "×",
        );
        row(
            "sessions/s ≥ 0.8× direct",
            ratio(
                g(l, HANDSHAKES, "results.sessions_per_s"),
                g("direct", HANDSHAKES, "results.sessions_per_s"),
            )
            .map(|(x, _)| (x, 0.8)),
            |a, b| a >= b,
            "×",
        );
        row(
            "idle RSS ≤ 1 KiB per connection",
            g(l, IDLE, "results.rss_per_conn_bytes").map(|x| (x, 1024.0)),
            |a, b| a <= b,
            " B",
        );
    }
    s
}

/// The charts written, with their titles.
pub const CHARTS: [(&str, &str); 6] = [
    ("throughput-16k.png", "16 KiB flood, messages/s"),
    ("throughput-64.png", "64 B flood, messages/s"),
    (
        "latency.png",
        "64 B at 10k msg/s, round-trip percentiles (ms)",
    ),
    ("sessions.png", "Handshakes: sessions/s"),
    ("memory.png", "Idle connections: RSS bytes per connection"),
    (
        "cpu-per-gb.png",
        "16 KiB at 10k msg/s: proxy CPU seconds per GB relayed",
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

/// A bar chart, one bar per label.
/// Each bar is (label, value, colour index).
pub fn bar_chart(path: &Path, title: &str, bars: &[(String, f64, usize)]) -> anyhow::Result<()> {
    let width = (150 * bars.len() as u32).max(960);
    let root = BitMapBackend::new(path, (width, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = bars.iter().map(|b| b.1).fold(0.0f64, f64::max).max(1e-9) * 1.15;
    let n = bars.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
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
            color(b.2).filled(),
        );
        r.set_margin(0, 0, 12, 12);
        r
    }))?;
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        let style = ("sans-serif", 14)
            .into_font()
            .into_text_style(&root)
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        Text::new(
            fmt_num(Some(b.1), 2),
            (SegmentValue::CenterOf(i), b.1 + max * 0.01),
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

/// Writes results.json, results.md and the charts into `out`.
pub fn write_all(runs_text: &str, host: &str, out: &Path) -> anyhow::Result<()> {
    let r = Runs::parse(runs_text)?;
    let all: Vec<&Value> = r.by_key.values().collect();
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&json!({ "host": host, "runs": all }))?,
    )?;
    let charts = load_font();
    if charts {
        let bars = |sc: &str, f: &str, skip_direct: bool| -> Vec<(String, f64, usize)> {
            r.labels
                .iter()
                .enumerate()
                .filter(|(_, l)| !(skip_direct && *l == "direct"))
                .filter_map(|(i, l)| r.get(l, sc, f).map(|v| (l.clone(), v, i)))
                .collect()
        };
        bar_chart(
            &out.join(CHARTS[0].0),
            CHARTS[0].1,
            &bars(FLOOD_16K, "results.msgs_per_s", false),
        )?;
        bar_chart(
            &out.join(CHARTS[1].0),
            CHARTS[1].1,
            &bars(FLOOD_64, "results.msgs_per_s", false),
        )?;
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
        latency_chart(&out.join(CHARTS[2].0), CHARTS[2].1, &lat)?;
        bar_chart(
            &out.join(CHARTS[3].0),
            CHARTS[3].1,
            &bars(HANDSHAKES, "results.sessions_per_s", false),
        )?;
        bar_chart(
            &out.join(CHARTS[4].0),
            CHARTS[4].1,
            &bars(IDLE, "results.rss_per_conn_bytes", true),
        )?;
        bar_chart(
            &out.join(CHARTS[5].0),
            CHARTS[5].1,
            &bars(CPU_16K, "usage.target_cpu_s_per_gb", true),
        )?;
    }
    std::fs::write(out.join("results.md"), markdown(&r, host, charts))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_targets_from_runs() {
        let runs = [
            r#"{"label":"direct","scenario":"flood-64","results":{"msgs_per_s":100.0},"usage":{"wall_s":1.0}}"#,
            r#"{"label":"haproxy-w1","scenario":"flood-64","results":{"msgs_per_s":50.0},"usage":{"wall_s":1.0}}"#,
            r#"{"label":"wsedge-buffered-w1","scenario":"flood-64","results":{"msgs_per_s":70.0},"usage":{"wall_s":1.0}}"#,
        ]
        .join("\n");
        let r = Runs::parse(&runs).unwrap();
        assert_eq!(r.labels.len(), 3);
        let md = markdown(&r, "host", false);
        assert!(
            md.contains(
                "| wsedge-buffered-w1 | 64 B flood ≥ 1.2× HAProxy | 1.400× vs 1.200× | met |"
            ),
            "{md}"
        );
        assert!(md.contains("not measured"));
    }
}
