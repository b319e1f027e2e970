//! `s-time` mode: TLS handshakes per second measured by an independent tool, OpenSSL's
//! `openssl s_time` (<https://docs.openssl.org/3.0/man1/openssl-s_time/>), so our
//! handshake figures can be checked against code we did not write. No WebSocket: s_time
//! connects, completes the TLS handshake, closes, and again, one connection at a time.
//!
//! It runs `--concurrency` copies of `openssl s_time -connect HOST:PORT -new|-reuse -time S`
//! (`-new` without `--resume`, `-reuse` with it; `-tls1_2`/`-tls1_3` for `--tls-version`;
//! `-CAfile` for `--tls-ca`) side by side, adds up the connections they report ("N
//! connections in T s; ...") and divides by the wall time from their start to the last one's
//! exit, over which it samples the CPU of the target (and of the origin, idle here). s_time
//! prints one character per connection: `r` for a reused session, `*` (or the version's
//! letter) for a new one; the record counts them, so a "resumed" figure says how many were.
//! OpenSSL 3.0's s_time does not read the TLS 1.3 session tickets that arrive after the
//! handshake, so with TLS 1.3 `-reuse` resumes nothing (openssl/openssl#17964): resumption
//! is measured with `--tls-version 1.2`. s_time sends no SNI: the target must serve its
//! certificate by default.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use super::client::Target;
use super::tls::Version;
use super::{Common, Outcome};
use crate::procstat;

/// The generator name of this mode's records.
pub const GENERATOR: &str = "openssl-s_time";

/// How to run s_time.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `openssl` binary.
    pub openssl: PathBuf,
    /// `-reuse` instead of `-new`.
    pub resume: bool,
    /// The TLS version to force (`Any`: OpenSSL's default, TLS 1.3 with these targets).
    pub version: Version,
    /// `-CAfile`, if given.
    pub ca: Option<PathBuf>,
}

/// What one s_time run printed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Connections made in the timed loop.
    pub connections: u64,
    /// s_time's own user CPU seconds for them.
    pub user_s: f64,
    /// Connections marked as resumed (`r`), when the progress line was found.
    pub reused: Option<u64>,
    /// Connections marked as new (any other mark).
    pub new: Option<u64>,
}

/// Parses s_time's output: the first "N connections in T.TTs; ..." line, and the progress
/// marks (a line made only of `*`, `r`, `t` and `3`).
pub fn parse(out: &str) -> Option<Summary> {
    let line = out
        .lines()
        .find(|l| l.contains(" connections in ") && l.contains("connections/user sec"))?;
    let mut words = line.split_whitespace();
    let connections = words.next()?.parse().ok()?;
    let user_s = line
        .split(" connections in ")
        .nth(1)?
        .split("s;")
        .next()?
        .trim()
        .parse()
        .ok()?;
    let marks: String = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && l.chars().all(|c| matches!(c, '*' | 'r' | 't' | '3')))
        .collect();
    let (reused, new) = if marks.is_empty() {
        (None, None)
    } else {
        let r = marks.chars().filter(|c| *c == 'r').count() as u64;
        (Some(r), Some(marks.len() as u64 - r))
    };
    Some(Summary {
        connections,
        user_s,
        reused,
        new,
    })
}

/// Runs the s-time mode.
pub async fn run(c: &Common, target: &Target, opts: &Options) -> anyhow::Result<Outcome> {
    anyhow::ensure!(target.wss, "s-time mode needs a wss:// target");
    let secs = c.duration.as_secs_f64().round().max(1.0) as u64;
    let mut args = vec![
        "s_time".to_owned(),
        "-connect".to_owned(),
        target.addr.to_string(),
        if opts.resume { "-reuse" } else { "-new" }.to_owned(),
        "-time".to_owned(),
        secs.to_string(),
    ];
    match opts.version {
        Version::Any => {}
        Version::Tls12 => args.push("-tls1_2".into()),
        Version::Tls13 => args.push("-tls1_3".into()),
    }
    if let Some(ca) = &opts.ca {
        args.push("-CAfile".into());
        args.push(ca.display().to_string());
    }
    let shown = format!("{} {}", opts.openssl.display(), args.join(" "));
    let copies = c.concurrency.max(1);

    let probe = c.probe();
    let children0 = procstat::self_children_cpu_seconds();
    let t0 = Instant::now();
    let mut children = Vec::with_capacity(copies);
    for _ in 0..copies {
        let child = tokio::process::Command::new(&opts.openssl)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", opts.openssl.display()))?;
        children.push(child);
    }
    let limit = Duration::from_secs(secs * 2 + 30);
    let mut outs = Vec::with_capacity(copies);
    for child in children {
        let out = tokio::time::timeout(limit, child.wait_with_output())
            .await
            .with_context(|| format!("s_time did not finish within {limit:?}"))??;
        outs.push(out);
    }
    let wall = t0.elapsed().as_secs_f64();
    let mut usage = probe.finish();
    // s_time's CPU: its copies are reaped, so their time is in our children's.
    usage.load_cpu_s = (procstat::self_children_cpu_seconds() - children0).max(0.0);

    let (mut conns, mut user_s) = (0u64, 0.0f64);
    let (mut reused, mut new, mut marked) = (0u64, 0u64, true);
    for o in &outs {
        let stdout = String::from_utf8_lossy(&o.stdout);
        let Some(s) = parse(&stdout) else {
            anyhow::bail!(
                "s_time ({}) printed no summary; ran: {shown}\nstdout: {}\nstderr: {}",
                o.status,
                stdout.trim(),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        };
        conns += s.connections;
        user_s += s.user_s;
        match (s.reused, s.new) {
            (Some(r), Some(n)) => {
                reused += r;
                new += n;
            }
            _ => marked = false,
        }
    }
    let rate = conns as f64 / wall.max(1e-9);
    let fraction = (marked && reused + new > 0).then(|| reused as f64 / (reused + new) as f64);
    let cpu_per_1k = usage
        .target_cpu_s
        .filter(|_| conns > 0)
        .map(|s| 1000.0 * s / conns as f64);
    let mut human = format!(
        "s_time: {copies} x `{shown}`: {conns} TLS handshakes in {wall:.2} s = {rate:.0}/s"
    );
    match fraction {
        Some(f) => human += &format!(" ({:.1} % resumed)", 100.0 * f),
        None => human += " (resumption not reported)",
    }
    if let Some(x) = cpu_per_1k {
        human += &format!("; target CPU {x:.3} s per 1,000 handshakes");
    }
    Ok(Outcome {
        human,
        results: json!({
            "handshakes_per_s": rate,
            "connections": conns,
            "copies": copies,
            "s_time_user_s": user_s,
            "wall_s": wall,
            "target_cpu_s_per_1k_handshakes": cpu_per_1k,
            "tls": {
                "mode": if opts.resume { "resume" } else { "full" },
                "version": opts.version.as_str(),
                "full": marked.then_some(new),
                "resumed": marked.then_some(reused),
                "resumed_fraction": fraction,
            },
            "command": shown,
        }),
        usage,
        relayed_bytes: 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_new_and_reuse_output() {
        let new = "Collecting connection statistics for 1 seconds\n\
                   *****\n\n\
                   5 connections in 0.01s; 500.00 connections/user sec, bytes read 0\n\
                   5 connections in 2 real seconds, 0 bytes read per connection\n";
        let s = parse(new).unwrap();
        assert_eq!(s.connections, 5);
        assert!((s.user_s - 0.01).abs() < 1e-12);
        assert_eq!((s.reused, s.new), (Some(0), Some(5)));
        let reuse = "\n\nNow timing with session id reuse.\nstarting\nrrrr*rr\n\n\
                     7 connections in 0.02s; 350.00 connections/user sec, bytes read 0\n\
                     7 connections in 1 real seconds, 0 bytes read per connection\n";
        let s = parse(reuse).unwrap();
        assert_eq!(s.connections, 7);
        assert_eq!((s.reused, s.new), (Some(6), Some(1)));
        assert!(parse("unable to connect").is_none());
    }
}
