//! `idle` mode: opens N WebSocket connections through the target and holds them; reports the
//! target's RSS before and after, and per connection.
//!
//! One process can hold about 19,900 client sockets (20,000 fds per process here), and one
//! source address about 28,000 ports per destination: spread connections over
//! `--source-addrs` and, beyond one process, run several `wsedge-load idle` processes with
//! `--processes P` (this process then starts P-1 copies of itself, each holding its share,
//! and sums what they opened).
//!
//! `--heartbeat SECONDS` makes the held connections less than idle, as application
//! heartbeats do (Socket.IO, Phoenix, STOMP and most chat clients send one every 15-30 s):
//! each connection sends a small text message every SECONDS, all of them on one schedule
//! (clients that connected together keep their phase), and reads the echoes. The `latency`
//! mode beside it then shows what a burst of thousands of small messages costs the active
//! connections' round trip.

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
pub async fn run_child(
    c: &Common,
    target: Target,
    src: Arc<SourceAddrs>,
    heartbeat: Duration,
) -> anyhow::Result<()> {
    let conns =
        super::open_many_tcp(&Arc::new(target), &src, c.connections, c.open_concurrency).await?;
    println!("opened {}", conns.len());
    let beats = Heartbeats::start(conns, heartbeat);
    let mut line = String::new();
    let _ = tokio::io::stdin().read_to_string(&mut line).await;
    drop(beats.stop().await);
    Ok(())
}

/// What the idle mode does besides opening `Common::connections`.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The target's URL and `--source-addrs` as given, for the helper processes.
    pub url: String,
    pub src_spec: Option<String>,
    /// Processes to spread the connections over (raised to fit [`PER_PROCESS_MAX`] each).
    pub processes: usize,
    /// How long the connections are held after opening.
    pub hold: Duration,
    /// Each connection sends a heartbeat this often, all on one schedule; zero = silent.
    pub heartbeat: Duration,
}

/// Runs the idle mode, spawning `processes - 1` helper processes for part of the connections.
pub async fn run(
    c: &Common,
    target: Target,
    src: Arc<SourceAddrs>,
    o: &Options,
) -> anyhow::Result<Outcome> {
    let (hold, heartbeat) = (o.hold, o.heartbeat);
    let processes = o
        .processes
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
        cmd.args(["idle", "--child", "--target", &o.url])
            .args(["--connections", &share.to_string()])
            .args(["--open-concurrency", &c.open_concurrency.to_string()])
            .args(["--heartbeat", &heartbeat.as_secs_f64().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        if let Some(s) = &o.src_spec {
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
    let beats = Heartbeats::start(mine_conns, heartbeat);
    tokio::time::sleep(settle).await;
    let rss1 = procstat::rss_sum(&c.pids);
    tokio::time::sleep(hold).await;
    let rss2 = procstat::rss_sum(&c.pids);
    let (mine_conns, beat_counts) = beats.stop().await;
    // A run beside heartbeats the target did not relay would measure something else.
    anyhow::ensure!(
        beat_counts.echoed as f64 >= 0.9 * beat_counts.sent as f64,
        "idle: {} heartbeats sent, only {} echoed",
        beat_counts.sent,
        beat_counts.echoed
    );

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
        "idle: {opened} connections opened in {open_s:.1} s by {processes} process(es); target RSS {:.1} MiB before, {:.1} MiB after ({:.1} after holding {:.0} s): {:.0} B per connection ({:.0} B after the hold); {alive}/{mine} of this process's connections answered a ping{}",
        rss0 as f64 / 1048576.0,
        rss1 as f64 / 1048576.0,
        rss2 as f64 / 1048576.0,
        hold.as_secs_f64(),
        per,
        per_held,
        if heartbeat.is_zero() {
            String::new()
        } else {
            format!(
                "; heartbeats every {:.1} s: {} sent, {} echoed (this process)",
                heartbeat.as_secs_f64(),
                beat_counts.sent,
                beat_counts.echoed
            )
        }
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
            "heartbeat_s": heartbeat.as_secs_f64(),
            "heartbeats_sent": beat_counts.sent,
            "heartbeats_echoed": beat_counts.echoed,
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

/// A held connection.
type Held = (tokio::net::TcpStream, Vec<u8>);

/// Heartbeats sent and echoes read back (frames counted by their 2-byte header: the echo of
/// a 9-byte text message is 11 bytes).
#[derive(Debug, Default, Clone, Copy)]
struct BeatCounts {
    sent: u64,
    echoed: u64,
}

/// The connections' heartbeat tasks (none when the interval is zero).
struct Heartbeats {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<(Held, BeatCounts)>>,
    /// The connections themselves when there are no heartbeats.
    held: Vec<Held>,
}

/// The heartbeat's payload, and the size of its echo (unmasked: 2-byte header).
const BEAT: &[u8] = b"heartbeat";
const ECHO_LEN: u64 = 2 + BEAT.len() as u64;

impl Heartbeats {
    /// Starts one task per connection, all ticking on one schedule from now + `every`.
    fn start(conns: Vec<Held>, every: Duration) -> Heartbeats {
        let (stop, rx) = tokio::sync::watch::channel(false);
        if every.is_zero() {
            return Heartbeats {
                stop,
                tasks: Vec::new(),
                held: conns,
            };
        }
        let mut frame = Vec::new();
        frame::write_client_frame(&mut frame, frame::OP_TEXT, BEAT, [9, 8, 7, 6]);
        let frame = Arc::new(frame);
        let first = tokio::time::Instant::now() + every;
        let tasks = conns
            .into_iter()
            .map(|(mut s, rest)| {
                let (frame, mut rx) = (frame.clone(), rx.clone());
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval_at(first, every);
                    // A late tick keeps the schedule (Delay would move a connection whose
                    // beat went out late off the common phase, spreading the burst).
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                    let mut counts = BeatCounts::default();
                    let (mut buf, mut read) = ([0u8; 512], 0u64);
                    loop {
                        tokio::select! {
                            _ = rx.changed() => break,
                            _ = tick.tick() => {
                                if s.write_all(&frame).await.is_err() {
                                    break;
                                }
                                counts.sent += 1;
                            }
                            r = s.read(&mut buf) => match r {
                                Ok(n) if n > 0 => read += n as u64,
                                _ => break,
                            },
                        }
                    }
                    counts.echoed = read / ECHO_LEN;
                    ((s, rest), counts)
                })
            })
            .collect();
        Heartbeats {
            stop,
            tasks,
            held: Vec::new(),
        }
    }

    /// Stops the heartbeats: the connections back, and what was sent and echoed.
    async fn stop(self) -> (Vec<Held>, BeatCounts) {
        let _ = self.stop.send(true);
        let (mut held, mut total) = (self.held, BeatCounts::default());
        for t in self.tasks {
            if let Ok((conn, counts)) = t.await {
                held.push(conn);
                total.sent += counts.sent;
                total.echoed += counts.echoed;
            }
        }
        (held, total)
    }
}
