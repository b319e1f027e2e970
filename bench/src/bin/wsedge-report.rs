//! `wsedge-report`: turns the runs scripts/bench.sh collected (JSON lines) into
//! results.json, results.md (table + target checks) and PNG charts.

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
    /// Free-text host description for the report header.
    #[arg(long)]
    host: Option<PathBuf>,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let runs = std::fs::read_to_string(&a.runs)
        .with_context(|| format!("reading {}", a.runs.display()))?;
    let host = match &a.host {
        Some(p) => std::fs::read_to_string(p).unwrap_or_default(),
        None => String::new(),
    };
    std::fs::create_dir_all(&a.out)?;
    wsedge_bench::report::write_all(&runs, &host, &a.out)?;
    eprintln!(
        "wsedge-report: wrote {}",
        a.out.join("results.md").display()
    );
    Ok(())
}
