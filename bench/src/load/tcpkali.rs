//! `tcpkali` mode: the same unbounded flood, produced by an independent generator, tcpkali
//! (<https://github.com/satori-com/tcpkali>), so our figures can be checked against a tool
//! we did not write. Nothing of tcpkali is in this repository: the binary is hand-built
//! (docs/benchmarks.md says how) and named with `--tcpkali PATH`.
//!
//! It runs `tcpkali --websocket --connections N --duration D --message <size bytes>` in its
//! default shape otherwise (connections opened at 100/s, each writing as fast as TCP lets
//! it, one worker thread per core), plus any `--tcpkali-arg`. tcpkali measures over
//! its steady state, after the ramp-up; this mode samples the CPU of the target, the origin
//! and tcpkali itself over the same span (from its "Ramped up" line to its exit) and turns
//! its byte counts into messages: tcpkali sends every message as one client frame (a 6, 8
//! or 14 byte header, masked), and the echo origin answers with one server frame each (2, 4
//! or 10 bytes of header). A ramp that tcpkali could not finish is a result, not an error
//! (`ramp_failed`): the "new connections starve while others flood" as tcpkali sees
//! it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tokio::io::AsyncReadExt;

use super::client::Target;
use super::{Common, Outcome};
use crate::procstat;

/// How to run tcpkali.
#[derive(Debug, Clone)]
pub struct Options {
    /// The binary.
    pub path: PathBuf,
    /// Extra arguments, appended before the destination.
    pub extra: Vec<String>,
}

/// tcpkali's end-of-run summary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Bytes written after the ramp-up.
    pub sent_bytes: u64,
    /// Bytes read after the ramp-up.
    pub recv_bytes: u64,
    /// Seconds of the steady state.
    pub duration_s: f64,
    /// Reads and writes per second ("Packet rate estimate"), if printed.
    pub reads_per_s: Option<f64>,
    /// Writes per second.
    pub writes_per_s: Option<f64>,
}

/// Parses tcpkali's summary lines ("Total data sent: ... (N bytes)", "Test duration: D s.").
pub fn parse_summary(out: &str) -> Option<Summary> {
    let bytes = |prefix: &str| -> Option<u64> {
        let l = out.lines().find(|l| l.trim_start().starts_with(prefix))?;
        let inner = l.rsplit_once('(')?.1;
        inner.split_whitespace().next()?.parse().ok()
    };
    let duration_s = out
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("Test duration:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // "Packet rate estimate: 1234.5↓, 678.9↑ (3↓, 44↑ TCP MSS/op)"
    let rates = out
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("Packet rate estimate:"))
        .map(|r| {
            let before = r.split('(').next().unwrap_or("");
            let mut it = before.split(',').map(|p| {
                p.trim()
                    .trim_end_matches(|c: char| !c.is_ascii_digit())
                    .parse::<f64>()
                    .ok()
            });
            (it.next().flatten(), it.next().flatten())
        });
    Some(Summary {
        sent_bytes: bytes("Total data sent:")?,
        recv_bytes: bytes("Total data received:")?,
        duration_s,
        reads_per_s: rates.and_then(|r| r.0),
        writes_per_s: rates.and_then(|r| r.1),
    })
}

/// Bytes of a WebSocket frame header for a `len`-byte payload (client frames add a mask).
pub fn header_len(len: usize, masked: bool) -> usize {
    let base = if len < 126 {
        2
    } else if len <= 0xffff {
        4
    } else {
        10
    };
    base + if masked { 4 } else { 0 }
}

/// Runs tcpkali against `target` and reports its figures in our record format.
pub async fn run(c: &Common, target: &Target, opts: &Options) -> anyhow::Result<Outcome> {
    let dest = format!("{}{}", target.host, target.path);
    let dur = c.duration.as_secs_f64();
    let mut cmd = tokio::process::Command::new(&opts.path);
    cmd.arg("--websocket")
        .args(["--connections", &c.connections.to_string()])
        .args(["--duration", &format!("{dur}s")])
        .arg("--message")
        .arg("x".repeat(c.size))
        .args(&opts.extra)
        .arg(&dest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let shown = format!(
        "{} --websocket --connections {} --duration {dur}s --message <{} x> {}{dest}",
        opts.path.display(),
        c.connections,
        c.size,
        opts.extra
            .iter()
            .map(|a| format!("{a} "))
            .collect::<String>()
    );
    let t0 = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", opts.path.display()))?;
    let pid = child.id().context("tcpkali exited at once")?;
    let mut stdout = child.stdout.take().context("tcpkali stdout")?;
    let mut stderr = child.stderr.take().context("tcpkali stderr")?;
    let out_task = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s).await;
        s
    });
    // Read stderr until "Ramped up to N connections." (or the end): the steady state starts.
    let (ramp_tx, ramp_rx) = tokio::sync::oneshot::channel::<()>();
    let err_task = tokio::spawn(async move {
        let mut all = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut tx = Some(ramp_tx);
        while let Ok(n) = stderr.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&chunk[..n]);
            if tx.is_some() && String::from_utf8_lossy(&all).contains("Ramped up to") {
                let _ = tx.take().map(|t| t.send(()));
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    let limit = c.duration * 2 + Duration::from_secs(30);
    let ramped = tokio::time::timeout(limit, ramp_rx)
        .await
        .is_ok_and(|r| r.is_ok());
    let ramp_s = t0.elapsed().as_secs_f64();
    let probe = c.probe();
    let tcp0 = procstat::tcp_counters();
    let kali_cpu0 = procstat::cpu_seconds(pid).unwrap_or(0.0);
    let children0 = procstat::self_children_cpu_seconds();
    let status = match tokio::time::timeout(limit, child.wait()).await {
        Ok(s) => s?,
        Err(_) => {
            child.kill().await?;
            anyhow::bail!("tcpkali did not finish within {limit:?}");
        }
    };
    let mut usage = probe.finish();
    let kernel = procstat::tcp_counters_since(&tcp0);
    // tcpkali's own CPU over the span: it is reaped, so its total is in our children's time.
    usage.load_cpu_s = (procstat::self_children_cpu_seconds() - children0 - kali_cpu0).max(0.0);
    let stdout = out_task.await?;
    let stderr = err_task.await?;
    let leftover = if c.settle.is_zero() {
        None
    } else {
        tokio::time::sleep(c.settle).await;
        procstat::established_on_port(target.addr.port())
    };

    let summary = parse_summary(&stdout);
    let ramp_failed = !ramped || summary.is_none();
    if ramp_failed && !stderr.contains("Could not create") {
        anyhow::bail!(
            "tcpkali ({status}) printed no summary; ran: {shown}\nstdout: {stdout}\nstderr: {}",
            stderr.trim()
        );
    }
    let up_frame = (c.size + header_len(c.size, true)) as f64;
    let down_frame = (c.size + header_len(c.size, false)) as f64;
    let (sent, recv, dur_s) = summary.map_or((None, None, None), |s| {
        let d = s.duration_s.max(1e-9);
        (
            Some(s.sent_bytes as f64 / up_frame / d),
            Some(s.recv_bytes as f64 / down_frame / d),
            Some(s.duration_s),
        )
    });
    let per_msg = |cpu: Option<f64>| {
        let r = recv.filter(|r| *r > 0.0)?;
        Some(1e6 * cpu? / usage.wall_s.max(1e-9) / r)
    };
    let mut human = match (sent, recv) {
        (Some(s), Some(r)) => format!(
            "tcpkali: {} conns, {} B, unbounded: sent {s:.0} msg/s ({:.1} MB/s), delivered {r:.0} msg/s ({:.1} MB/s) over {:.1} s after a {ramp_s:.2} s ramp-up",
            c.connections,
            c.size,
            s * c.size as f64 / 1e6,
            r * c.size as f64 / 1e6,
            dur_s.unwrap_or(0.0),
        ),
        _ => format!(
            "tcpkali: {} conns, {} B: could not open its connections (ramp-up failed after {ramp_s:.2} s)",
            c.connections, c.size
        ),
    };
    human += &format!(
        "\ntcpkali: CPU µs per delivered message: tcpkali {:.3}{}{}\ntcpkali: ran {shown}",
        per_msg(Some(usage.load_cpu_s)).unwrap_or(0.0),
        per_msg(usage.target_cpu_s)
            .map(|x| format!(", target {x:.3}"))
            .unwrap_or_default(),
        per_msg(usage.origin_cpu_s)
            .map(|x| format!(", origin {x:.3}"))
            .unwrap_or_default(),
    );
    human += &format!("\ntcpkali: {}", super::kernel_line(&kernel));
    if let Some(l) = leftover {
        human += &format!(
            "\ntcpkali: {l} connections still established on port {} {:.1} s after tcpkali exited",
            target.addr.port(),
            c.settle.as_secs_f64()
        );
    }
    let window = dur_s.unwrap_or(0.0);
    Ok(Outcome {
        human,
        results: json!({
            "sent_msgs_per_s": sent,
            "recv_msgs_per_s": recv,
            "msgs_per_s": recv,
            "sent_bytes_per_s": sent.map(|s| s * c.size as f64),
            "recv_bytes_per_s": recv.map(|r| r * c.size as f64),
            "ramp_s": ramp_s,
            "ramp_failed": ramp_failed,
            "tcpkali_duration_s": dur_s,
            "tcpkali_reads_per_s": summary.and_then(|s| s.reads_per_s),
            "tcpkali_writes_per_s": summary.and_then(|s| s.writes_per_s),
            "target_cpu_us_per_msg": per_msg(usage.target_cpu_s),
            "origin_cpu_us_per_msg": per_msg(usage.origin_cpu_s),
            "load_cpu_us_per_msg": per_msg(Some(usage.load_cpu_s)),
            "leftover_established": leftover,
            "kernel_tcp": kernel,
            "command": shown,
            "exit": status.code(),
        }),
        usage,
        relayed_bytes: window * (sent.unwrap_or(0.0) + recv.unwrap_or(0.0)) * c.size as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_tcpkali_summary() {
        let out = "Total data sent:     1234.5 MiB (1294467072 bytes)\n\
                   Total data received: 1200.0 MiB (1258291200 bytes)\n\
                   Bandwidth per channel: 25.3⇅ Mbps (3162.5 kBps)\n\
                   Aggregate bandwidth: 1258.3↓, 1294.4↑ Mbps\n\
                   Packet rate estimate: 108963.4↓, 112110.2↑ (3↓, 44↑ TCP MSS/op)\n\
                   Test duration: 8.00015 s.\n";
        let s = parse_summary(out).unwrap();
        assert_eq!(s.sent_bytes, 1_294_467_072);
        assert_eq!(s.recv_bytes, 1_258_291_200);
        assert!((s.duration_s - 8.00015).abs() < 1e-9);
        assert_eq!(s.reads_per_s, Some(108_963.4));
        assert_eq!(s.writes_per_s, Some(112_110.2));
        assert!(parse_summary("Could not create 100 connections in allotted time (8s)").is_none());
    }

    #[test]
    fn frame_header_sizes() {
        assert_eq!(header_len(64, true), 6);
        assert_eq!(header_len(64, false), 2);
        assert_eq!(header_len(16384, true), 8);
        assert_eq!(header_len(16384, false), 4);
        assert_eq!(header_len(70_000, false), 10);
    }
}
