//! `idle` mode: opens N WebSocket connections through the target and holds them; reports the
//! target's RSS before and after, and per connection.
//!
//! One process can hold about 19,900 client sockets (20,000 fds per process here), and one
//! source address about 28,000 ports per destination: spread connections over
//! `--source-addrs` and, beyond one process, run several `wsedge-load idle` processes with
//! `--processes P` (this process then starts P-1 copies of itself, each holding its share,
//! and sums what they opened).

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::client::{SourceAddrs, Target};
use super::{Common, Outcome};
use crate::{frame, procstat};

/// Most client connections one process opens.
pub const PER_PROCESS_MAX: usize = 19_000;

/// Opens `n` connections and holds them; as a child (`--child`), prints `opened N` when they
/// are open and holds until its stdin closes.
pub async fn run_child(c: &Common, target: Target, src: Arc<SourceAddrs>) -> anyhow::Result<()> {
    let conns =
        super::open_many_tcp(&Arc::new(target), &src, c.connections, c.open_concurrency).await?;
    println!("opened {}", conns.len());
    let mut line = String::new();
    let _ = tokio::io::stdin().read_to_string(&mut line).await;
    drop(conns);
    Ok(())
}

/// Runs the idle mode, spawning `processes - 1` helper processes for part of the connections.
pub async fn run(
    c: &Common,
    target: Target,
    src: Arc<SourceAddrs>,
    url: &str,
    src_spec: Option<&str>,
    processes: usize,
    hold: Duration,
) -> anyhow::Result<Outcome> {
    let processes = processes
        .max(c.connections.div_ceil(PER_PROCESS_MAX))
        .max(1);
    let share = c.connections.div_ceil(processes);
    let mine = c.connections - share * (processes - 1);
    let settle = Duration::from_secs(1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss0 = procstat::rss_sum(&c.pids);
    let t0 = std::time::Instant::now();

    let mut children = Vec::new();
    for _ in 1..processes {
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        cmd.args(["idle", "--child", "--target", url])
            .args(["--connections", &share.to_string()])
            .args(["--open-concurrency", &c.open_concurrency.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        if let Some(s) = src_spec {
            cmd.args(["--source-addrs", s]);
        }
        children.push(cmd.spawn()?);
    }
    let mine_conns =
        super::open_many_tcp(&Arc::new(target), &src, mine, c.open_concurrency).await?;
    let mut opened = mine_conns.len();
    for ch in &mut children {
        let out = ch
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no child stdout"))?;
        let mut lines = BufReader::new(out).lines();
        let line = lines.next_line().await?.unwrap_or_default();
        let n: usize = line
            .strip_prefix("opened ")
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("helper process failed: {line:?}"))?;
        opened += n;
    }
    let open_s = t0.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    let rss1 = procstat::rss_sum(&c.pids);
    tokio::time::sleep(hold).await;
    let rss2 = procstat::rss_sum(&c.pids);

    // Check the held connections still relay: one ping each on this process's share.
    let alive = check_alive(mine_conns).await;
    for mut ch in children {
        drop(ch.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(10), ch.wait()).await;
    }
    // Per connection: the larger of the two readings (growth while holding is charged), and
    // the reading after the hold alone (what a target that gives memory back once quiet,
    // like wsedge's trim, holds for idle connections).
    let per_conn = |rss: u64| {
        if opened > 0 {
            (rss as f64 - rss0 as f64) / opened as f64
        } else {
            0.0
        }
    };
    let (per, per_held) = (per_conn(rss2.max(rss1)), per_conn(rss2));
    let human = format!(
        "idle: {opened} connections opened in {open_s:.1} s by {processes} process(es); target RSS {:.1} MiB before, {:.1} MiB after ({:.1} after holding {:.0} s): {:.0} B per connection ({:.0} B after the hold); {alive}/{mine} of this process's connections answered a ping",
        rss0 as f64 / 1048576.0,
        rss1 as f64 / 1048576.0,
        rss2 as f64 / 1048576.0,
        hold.as_secs_f64(),
        per,
        per_held
    );
    Ok(Outcome {
        human,
        results: json!({
            "opened": opened,
            "processes": processes,
            "open_s": open_s,
            "rss_before_bytes": rss0,
            "rss_after_bytes": rss1,
            "rss_held_bytes": rss2,
            "rss_per_conn_bytes": per,
            "rss_per_conn_held_bytes": per_held,
            "alive_checked": mine,
            "alive": alive,
        }),
        usage: super::Usage {
            wall_s: open_s,
            ..Default::default()
        },
        relayed_bytes: 0.0,
    })
}

async fn check_alive(conns: Vec<(tokio::net::TcpStream, Vec<u8>)>) -> usize {
    let mut ping = Vec::new();
    frame::write_client_frame(&mut ping, frame::OP_PING, b"p", [4, 3, 2, 1]);
    let ping = Arc::new(ping);
    let sem = Arc::new(tokio::sync::Semaphore::new(512));
    let mut tasks = Vec::new();
    for (mut s, _) in conns {
        let (ping, sem) = (ping.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(_permit) = sem.acquire_owned().await else {
                return false;
            };
            if s.write_all(&ping).await.is_err() {
                return false;
            }
            // Any bytes back (the pong) mean the connection still relays.
            let mut buf = [0u8; 64];
            let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
            matches!(r, Ok(Ok(n)) if n > 0)
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if let Ok(true) = t.await {
            ok += 1;
        }
    }
    ok
}
