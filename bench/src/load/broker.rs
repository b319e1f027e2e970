//! What a message broker (Redis) costs during a `fanout` window: the CPU of its processes
//! (`--broker-pid`, from /proc like the target's) and the bytes it moved (`--broker-redis`:
//! `total_net_input_bytes` / `total_net_output_bytes` of Redis's `INFO stats`, read before
//! and after the window), reported per published message and per delivery.

use std::time::Instant;

use serde_json::{Value, json};

use crate::procstat;

/// Which broker to watch.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    /// Broker processes whose CPU is sampled.
    pub pids: Vec<u32>,
    /// `redis://HOST:PORT` whose `INFO stats` byte counters are read.
    pub redis: Option<String>,
}

/// Redis's network byte counters at one moment.
#[derive(Debug, Clone, Copy)]
struct NetBytes {
    input: u64,
    output: u64,
    /// Bytes of the `INFO` reply that read these counters: Redis counts it in the *next*
    /// reading's output, which subtracts it (the probe's own traffic is not the broker's cost).
    reply: u64,
}

/// `INFO stats` from the Redis at `url`, through the redis crate's blocking client (the one
/// the broker itself uses).
fn net_bytes(url: &str) -> anyhow::Result<NetBytes> {
    let client = redis::Client::open(url)?;
    let timeout = std::time::Duration::from_secs(2);
    let mut con = client.get_connection_with_timeout(timeout)?;
    con.set_read_timeout(Some(timeout))?;
    let text: String = redis::cmd("INFO").arg("stats").query(&mut con)?;
    let field = |name: &str| -> anyhow::Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("INFO stats from {url} has no {name}"))
    };
    Ok(NetBytes {
        input: field("total_net_input_bytes")?,
        output: field("total_net_output_bytes")?,
        // The bulk string's header ("$<len>\r\n") and trailer ("\r\n").
        reply: text.len() as u64 + text.len().to_string().len() as u64 + 5,
    })
}

/// The broker's counters at the start of a window.
#[derive(Debug)]
pub struct Start {
    watch: Watch,
    t0: Instant,
    cpu: f64,
    net: Option<NetBytes>,
}

/// Starts a window (None when nothing is watched). Fails when the Redis cannot be read: a
/// run asked for the broker's cost must not silently report none.
pub async fn start(w: &Watch) -> anyhow::Result<Option<Start>> {
    if w.pids.is_empty() && w.redis.is_none() {
        return Ok(None);
    }
    let net = read(w.redis.clone()).await?;
    Ok(Some(Start {
        watch: w.clone(),
        t0: Instant::now(),
        cpu: procstat::cpu_sum(&w.pids),
        net,
    }))
}

async fn read(url: Option<String>) -> anyhow::Result<Option<NetBytes>> {
    match url {
        // Off the runtime's threads: the subscribers keep reading meanwhile.
        Some(u) => Ok(Some(
            tokio::task::spawn_blocking(move || net_bytes(&u)).await??,
        )),
        None => Ok(None),
    }
}

impl Start {
    /// Ends the window: the broker's CPU and bytes, per message published and per delivery
    /// counted in the same window.
    pub async fn finish(self, published: u64, deliveries: u64) -> anyhow::Result<Value> {
        let cpu =
            (!self.watch.pids.is_empty()).then(|| procstat::cpu_sum(&self.watch.pids) - self.cpu);
        let wall = self.t0.elapsed().as_secs_f64();
        let end = read(self.watch.redis.clone()).await?;
        let net = self.net.zip(end).map(|(a, b)| {
            // This reading's own INFO command (a few dozen bytes) is in its input; negligible.
            (
                b.input.saturating_sub(a.input),
                b.output.saturating_sub(a.output).saturating_sub(a.reply),
            )
        });
        Ok(figures(cpu, wall, net, published, deliveries))
    }
}

/// The JSON figures of a window (None where a count is 0 or a figure was not measured).
fn figures(
    cpu_s: Option<f64>,
    wall_s: f64,
    net: Option<(u64, u64)>,
    published: u64,
    deliveries: u64,
) -> Value {
    let per = |x: f64, n: u64| (n > 0).then(|| x / n as f64);
    let (net_in, net_out) = (net.map(|n| n.0), net.map(|n| n.1));
    let total = net.map(|(i, o)| (i + o) as f64);
    json!({
        "cpu_s": cpu_s,
        "cpu_pct": cpu_s.map(|c| 100.0 * c / wall_s.max(1e-9)),
        "cpu_us_per_msg": cpu_s.and_then(|c| per(c * 1e6, published)),
        "cpu_us_per_delivery": cpu_s.and_then(|c| per(c * 1e6, deliveries)),
        "net_in_bytes": net_in,
        "net_out_bytes": net_out,
        "in_bytes_per_msg": net_in.and_then(|b| per(b as f64, published)),
        "out_bytes_per_msg": net_out.and_then(|b| per(b as f64, published)),
        "bytes_per_msg": total.and_then(|b| per(b, published)),
        "bytes_per_delivery": total.and_then(|b| per(b, deliveries)),
        "published": published,
        "deliveries": deliveries,
    })
}

/// A human line about the broker's cost (empty when nothing was watched).
pub fn line(b: &Value) -> String {
    if b.is_null() {
        return String::new();
    }
    let f = |k: &str| b[k].as_f64();
    let mut parts = Vec::new();
    if let (Some(pct), Some(us)) = (f("cpu_pct"), f("cpu_us_per_msg")) {
        parts.push(format!("CPU {pct:.0}% ({us:.1} µs per message)"));
    }
    if let (Some(i), Some(o), Some(d)) = (
        f("in_bytes_per_msg"),
        f("out_bytes_per_msg"),
        f("bytes_per_delivery"),
    ) {
        parts.push(format!(
            "{i:.0} B in + {o:.0} B out per message ({d:.2} B per delivery)"
        ));
    }
    format!("\nbroker: {}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_per_message_and_per_delivery() {
        // 2 s of broker CPU over 4 s, 1,000 messages to 3,000 subscribers in all.
        let v = figures(Some(2.0), 4.0, Some((100_000, 300_000)), 1000, 3_000_000);
        assert_eq!(v["cpu_pct"], 50.0);
        assert_eq!(v["cpu_us_per_msg"], 2000.0);
        assert_eq!(v["in_bytes_per_msg"], 100.0);
        assert_eq!(v["out_bytes_per_msg"], 300.0);
        assert_eq!(v["bytes_per_msg"], 400.0);
        assert!((v["bytes_per_delivery"].as_f64().unwrap() - 400_000.0 / 3e6).abs() < 1e-12);
        assert!(
            line(&v).contains("100 B in + 300 B out per message"),
            "{}",
            line(&v)
        );
        // Nothing published: no per-message figure rather than a division by zero.
        let v = figures(None, 1.0, Some((10, 20)), 0, 0);
        assert!(v["cpu_s"].is_null() && v["bytes_per_msg"].is_null());
        assert_eq!(v["net_out_bytes"], 20);
    }
}
