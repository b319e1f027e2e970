//! `wsedge-report`: turns the runs scripts/bench.sh collected (JSON lines) into
//! results.json, results.md (medians and spreads, target checks, with `--fanout` the fan-out
//! runs in the functions section) and PNG charts; with
//! `--check-floor`, also the CI regression check (exit 1 on a gross regression); with `--tls`,
//! the report of scripts/bench-tls.sh (handshakes, CPU per handshake, 16 KiB over wss://);
//! with `--hosts`, that of scripts/bench-many-hosts.sh (fan-out across hosts through a broker).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Writes the benchmark report.
#[derive(Debug, Parser)]
#[command(name = "wsedge-report", version)]
struct Args {
    /// JSON lines written by `wsedge-load --json-out`.
    #[arg(long)]
    runs: PathBuf,
    /// The fan-out runs (scripts/bench.sh's fanout.jsonl), for the functions section.
    #[arg(long)]
    fanout: Option<PathBuf>,
    /// Free-text host description for the report header.
    #[arg(long)]
    host: Option<PathBuf>,
    /// Output directory (results.md, results.json, charts); without it, only the check runs.
    #[arg(long, required_unless_present = "check_floor")]
    out: Option<PathBuf>,
    /// Regression check: fail (exit 1) when --check-label delivers less than this fraction
    /// of `direct`'s messages/s in --check-scenario (medians).
    #[arg(long)]
    check_floor: Option<f64>,
    /// Regression check: the wsedge label compared with `direct`.
    #[arg(long, default_value = "wsedge-auto-w1")]
    check_label: String,
    /// Regression check: the scenario (an unbounded flood).
    #[arg(long, default_value = wsedge_bench::report::UFLOOD_64)]
    check_scenario: String,
    /// The runs are scripts/bench-tls.sh's: write the TLS report (no charts).
    #[arg(long, conflicts_with = "hosts")]
    tls: bool,
    /// The runs are scripts/bench-many-hosts.sh's: write the many-hosts report (no charts).
    #[arg(long)]
    hosts: bool,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let runs = std::fs::read_to_string(&a.runs)
        .with_context(|| format!("reading {}", a.runs.display()))?;
    let host = match &a.host {
        Some(p) => std::fs::read_to_string(p).unwrap_or_default(),
        None => String::new(),
    };
    let fanout = match &a.fanout {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => None,
    };
    if let Some(out) = &a.out {
        std::fs::create_dir_all(out)?;
        if a.tls {
            wsedge_bench::report_tls::write_all(&runs, &host, out)?;
        } else if a.hosts {
            wsedge_bench::report_hosts::write_all(&runs, &host, out)?;
        } else {
            wsedge_bench::report::write_all(&runs, fanout.as_deref(), &host, out)?;
        }
        eprintln!("wsedge-report: wrote {}", out.join("results.md").display());
    }
    if let Some(floor) = a.check_floor {
        let r = wsedge_bench::report::Runs::parse(&runs)?;
        let (line, ok) =
            wsedge_bench::report::regression_check(&r, &a.check_label, &a.check_scenario, floor)?;
        println!("{line}");
        if !ok {
            std::process::exit(1);
        }
    }
    Ok(())
}
