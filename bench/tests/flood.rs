//! The unbounded `flood` mode and the `tcpkali` wrapper against real sockets: the flood
//! counts and checks every echo from the real echo origin and times new connections during
//! it; a peer that loses a message is caught; the tcpkali wrapper runs its binary with the
//! flood's shape and reads its summary (a stand-in script plays tcpkali, which CI lacks).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wsedge_bench::frame;
use wsedge_bench::load::client::{SourceAddrs, Target};
use wsedge_bench::load::{Common, flood, tcpkali};

fn common(connections: usize, size: usize) -> Common {
    Common {
        connections,
        size,
        depth: 1,
        duration: Duration::from_millis(1000),
        warmup: Duration::from_millis(200),
        rate: 0.0,
        concurrency: 1,
        open_concurrency: 16,
        pids: vec![std::process::id()],
        origin_pids: vec![std::process::id()],
        sender_threads: 1,
        write_bytes: 64 * 1024,
        connect_rate: 0.0,
        probe_interval: Duration::from_millis(100),
        settle: Duration::ZERO,
    }
}

async fn origin() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(wsedge_bench::origin::serve_listener(l));
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_counts_every_connection_and_times_new_ones() {
    let addr = origin().await;
    let mut c = common(4, 64);
    // Ramp mode: connections open at 50/s, each flooding as soon as it is open.
    c.connect_rate = 50.0;
    let t = Target::parse(&format!("ws://{addr}/ws")).unwrap();
    let out = flood::run(&c, t, Arc::new(SourceAddrs::default()))
        .await
        .unwrap();
    let r = &out.results;
    assert!(r["problem"].is_null(), "{}", out.human);
    assert_eq!(r["connections_opened"], 4, "{}", out.human);
    assert_eq!(r["seq_errors"], 0);
    assert!(
        r["recv_msgs_per_s"].as_f64().unwrap() > 0.0,
        "{}",
        out.human
    );
    assert!(
        r["sent_msgs_per_s"].as_f64().unwrap() > 0.0,
        "{}",
        out.human
    );
    // Every connection had echoes counted in the window.
    assert_eq!(r["per_conn_starved"], 0, "{}", out.human);
    assert!(r["per_conn_min_msgs_per_s"].as_f64().unwrap() > 0.0);
    assert!(r["recorded"].as_u64().unwrap() > 0, "latency recorded");
    // At least one probe went through connect + upgrade during the 1 s window.
    assert!(r["probe"]["ok"].as_u64().unwrap() >= 1, "{}", out.human);
    assert!(r["probe_p50_ms"].as_f64().unwrap() > 0.0);
    assert!(r["origin_cpu_us_per_msg"].as_f64().unwrap() > 0.0);
}

/// An echo server that answers the upgrade and echoes every client frame as a server frame,
/// except that it drops message number `drop_at` of each connection.
async fn lossy_origin(drop_at: u64) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 64 * 1024];
                let end = loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(e) = frame::head_end(&buf) {
                        break e;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let key = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                    .unwrap_or("")
                    .trim()
                    .to_owned();
                let resp = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    frame::accept_key(key.as_bytes())
                );
                if s.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
                buf.drain(..end);
                let mut seen = 0u64;
                loop {
                    let mut out = Vec::new();
                    let mut p = 0;
                    while let Some(h) = frame::parse_header(&buf[p..]) {
                        let total = h.header_len + h.len as usize;
                        if buf.len() - p < total {
                            break;
                        }
                        let mut body = buf[p + h.header_len..p + total].to_vec();
                        frame::apply_mask(&mut body, h.mask.unwrap_or([0; 4]), 0);
                        if seen != drop_at {
                            frame::write_header(&mut out, h.opcode, body.len(), None);
                            out.extend_from_slice(&body);
                        }
                        seen += 1;
                        p += total;
                    }
                    buf.drain(..p);
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_message_is_a_problem() {
    let addr = lossy_origin(100).await;
    let mut c = common(2, 32);
    c.probe_interval = Duration::ZERO;
    let t = Target::parse(&format!("ws://{addr}/ws")).unwrap();
    let out = flood::run(&c, t, Arc::new(SourceAddrs::default()))
        .await
        .unwrap();
    let r = &out.results;
    // One loss per connection, each counted once (the reader resynchronises).
    assert_eq!(r["seq_errors"], 2, "{}", out.human);
    assert!(r["problem"].is_string(), "{}", out.human);
    assert!(out.human.contains("PROBLEM"), "{}", out.human);
}

#[tokio::test]
async fn tcpkali_wrapper_runs_the_flood_shape_and_reads_the_summary() {
    let dir = std::env::temp_dir().join(format!("wsedge-fake-tcpkali-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let args_file = dir.join("args");
    let script = dir.join("tcpkali");
    // 8 s of 64 B messages: 70-byte client frames and 66-byte server frames.
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\n\
             echo 'Destination: [127.0.0.1]:1' >&2\n\
             echo 'Ramped up to 7 connections.' >&2\n\
             sleep 0.3\n\
             echo 'Total data sent:     53.4 MiB (56000000 bytes)'\n\
             echo 'Total data received: 50.4 MiB (52800000 bytes)'\n\
             echo 'Packet rate estimate: 1000.0↓, 2000.0↑ (1↓, 2↑ TCP MSS/op)'\n\
             echo 'Test duration: 8 s.'\n",
            args_file.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    let c = common(7, 64);
    let t = Target::parse("ws://127.0.0.1:19999/ws").unwrap();
    let opts = tcpkali::Options {
        path: script,
        extra: vec!["--workers=1".into()],
    };
    let out = tcpkali::run(&c, &t, &opts).await.unwrap();
    let args = std::fs::read_to_string(&args_file).unwrap();
    let args: Vec<&str> = args.lines().collect();
    assert_eq!(
        args,
        [
            "--websocket",
            "--connections",
            "7",
            "--duration",
            "1s",
            "--message",
            &"x".repeat(64),
            "--workers=1",
            "127.0.0.1:19999/ws"
        ]
    );
    let r = &out.results;
    assert_eq!(r["sent_msgs_per_s"], 100_000.0);
    assert_eq!(r["recv_msgs_per_s"], 100_000.0);
    assert_eq!(r["ramp_failed"], false);
    assert_eq!(r["tcpkali_reads_per_s"], 1000.0);
    let _ = std::fs::remove_dir_all(&dir);
}
