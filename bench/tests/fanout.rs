//! The `fanout` mode across hosts against real sockets: two "hosts" (listeners of one
//! in-test broadcast hub, tokio-tungstenite on the server side, so the frames are checked by
//! an independent implementation) each get half the subscribers, the publisher sits on the
//! first; every delivery is counted wherever it lands and every message completes at the
//! last subscriber. A stand-in Redis answers `INFO stats` with known counters, so the
//! broker's bytes per message are checked end to end, and the broker CPU is this process's.

use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;
use wsedge_bench::load::client::{SourceAddrs, Target};
use wsedge_bench::load::{Common, broker, fanout};

fn common(connections: usize, rate: f64) -> Common {
    Common {
        connections,
        size: 64,
        duration: Duration::from_millis(1000),
        warmup: Duration::from_millis(200),
        rate,
        open_concurrency: 16,
        pids: vec![std::process::id()],
        ..Common::default()
    }
}

/// A listener of the hub: every binary message any connection sends goes to every
/// connection of every listener (the publisher's copies are drained by the mode). Counts
/// its connections.
async fn host(hub: broadcast::Sender<Vec<u8>>, conns: Arc<AtomicU64>) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (hub, mut rx) = (hub.clone(), hub.subscribe());
            conns.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                let (mut tx, mut read) = ws.split();
                tokio::spawn(async move {
                    while let Ok(m) = rx.recv().await {
                        if tx.send(Message::Binary(m.into())).await.is_err() {
                            return;
                        }
                    }
                });
                while let Some(Ok(m)) = read.next().await {
                    if let Message::Binary(b) = m {
                        let _ = hub.send(b.to_vec());
                    }
                }
            });
        }
    });
    addr
}

/// A stand-in Redis on a thread: `+OK` to anything but `INFO`, whose n-th answer reports
/// n × 1,000 bytes in and n × 100,000 bytes out.
fn fake_redis() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut infos = 0u64;
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            let mut line = String::new();
            // One command: "*N" then N bulk strings ("$len", bytes).
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                let n: usize = line.trim().trim_start_matches('*').parse().unwrap_or(0);
                let mut args = Vec::new();
                for _ in 0..n {
                    line.clear();
                    r.read_line(&mut line).unwrap();
                    line.clear();
                    r.read_line(&mut line).unwrap();
                    args.push(line.trim().to_ascii_uppercase());
                }
                line.clear();
                let reply = if args.first().map(String::as_str) == Some("INFO") {
                    infos += 1;
                    let body = format!(
                        "# Stats\r\ntotal_connections_received:1\r\ntotal_net_input_bytes:{}\r\ntotal_net_output_bytes:{}\r\n",
                        infos * 1000,
                        infos * 100_000
                    );
                    format!("${}\r\n{body}\r\n", body.len())
                } else {
                    "+OK\r\n".to_owned()
                };
                if w.write_all(reply.as_bytes()).is_err() {
                    break;
                }
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_spread_over_targets_and_the_last_anywhere_completes() {
    let (hub, _) = broadcast::channel(4096);
    let (n1, n2) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let a1 = host(hub.clone(), n1.clone()).await;
    let a2 = host(hub.clone(), n2.clone()).await;
    let redis = fake_redis();
    let t = |a: std::net::SocketAddr| Target::parse(&format!("ws://{a}/ch/bench")).unwrap();
    let opts = fanout::Options {
        subscribe: vec![t(a1), t(a2)],
        broker: broker::Watch {
            pids: vec![std::process::id()],
            redis: Some(format!("redis://{redis}")),
        },
    };
    // 5 subscribers: 3 on the first host, 2 on the second; the publisher makes 4 on the first.
    let out = fanout::run(
        &common(5, 200.0),
        t(a1),
        Arc::new(SourceAddrs::default()),
        &opts,
    )
    .await
    .unwrap();
    let r = &out.results;
    assert_eq!(n1.load(Ordering::Relaxed), 4, "{}", out.human);
    assert_eq!(n2.load(Ordering::Relaxed), 2, "{}", out.human);
    assert_eq!(r["subscribe_targets"][0]["subscribers"], 3);
    assert_eq!(r["subscribe_targets"][1]["subscribers"], 2);
    assert_eq!(r["publish_target"], format!("ws://{a1}/ch/bench"));
    // Every message reached every subscriber on both hosts, and completed with a latency.
    let published = r["published"].as_u64().unwrap();
    assert!(published >= 200, "{}", out.human);
    assert_eq!(r["missing"], 0, "{}", out.human);
    assert_eq!(r["delivered"].as_u64().unwrap(), published * 5);
    assert_eq!(r["subscribers_short"], 0, "{}", out.human);
    assert!(r["recorded"].as_u64().unwrap() >= 150, "{}", out.human);
    // Broker bytes: the stand-in's counters moved 1,000 in and 100,000 out (less the first
    // INFO reply, which was the probe's own traffic) over the window's messages.
    let b = &r["broker"];
    assert_eq!(b["net_in_bytes"], 1000, "{b}");
    let net_out = b["net_out_bytes"].as_u64().unwrap();
    assert!((99_800..100_000).contains(&net_out), "{b}");
    let window_msgs = b["published"].as_f64().unwrap();
    assert!(window_msgs > 150.0, "{b}");
    assert!((b["in_bytes_per_msg"].as_f64().unwrap() - 1000.0 / window_msgs).abs() < 1e-9);
    assert!(b["cpu_s"].as_f64().unwrap() > 0.0, "{b}");
    assert!(out.human.contains("broker: CPU"), "{}", out.human);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_broker_fails_the_run() {
    let (hub, _) = broadcast::channel(64);
    let a = host(hub, Arc::new(AtomicU64::new(0))).await;
    // A port nothing listens on (bound, then released).
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let opts = fanout::Options {
        subscribe: vec![],
        broker: broker::Watch {
            pids: vec![],
            redis: Some(format!("redis://{dead}")),
        },
    };
    let t = Target::parse(&format!("ws://{a}/ch/x")).unwrap();
    let mut c = common(1, 50.0);
    c.duration = Duration::from_millis(300);
    let err = fanout::run(&c, t, Arc::new(SourceAddrs::default()), &opts)
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").to_lowercase().contains("refused"),
        "{err:#}"
    );
}
