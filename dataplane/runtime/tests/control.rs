//! The control plane with real processes: `wsedge` with its control socket, `wsedgectl
//! daemon`, and the `wsedgectl` CLI, between tokio-tungstenite clients and echo origins.
//!
//! Live changes never drop a connection or lose a message, new connections follow the new
//! configuration, the dataplane outlives its control process and is re-synced by the next
//! one, invalid configurations are refused with the field named, foreign uids are refused,
//! and garbage on the socket costs nothing. Needs the `wsedgectl` binary: run with
//! `cargo test --workspace`.

mod common;
mod control_support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use common::origins::EchoOrigin;
use common::{Config, Route, Ws, assert_echo, within, ws_connect};
use control_support::{
    ControlDir, Daemon, frame, raw_exchange, run_ctl, wait_status, workers_version,
};

/// Opens one connection, checks it echoes, and returns which origin got it.
async fn new_connection_lands_on(
    proxy_addr: SocketAddr,
    origins: &[&EchoOrigin],
) -> Option<SocketAddr> {
    let before: Vec<usize> = origins.iter().map(|o| o.accepted()).collect();
    let mut ws = ws_connect(proxy_addr, "/").await;
    assert_echo(&mut ws, Message::text("probe")).await;
    let _ = ws.close(None).await;
    let grew: Vec<SocketAddr> = origins
        .iter()
        .zip(before)
        .filter(|(o, b)| o.accepted() > *b)
        .map(|(o, _)| o.addr)
        .collect();
    assert!(grew.len() <= 1, "one connection reached {grew:?}");
    grew.first().copied()
}

/// Sends numbered messages until told to stop; every one must come back, in order.
async fn chatter(
    mut ws: Ws,
    index: usize,
    mut stop: watch::Receiver<bool>,
) -> Result<(Ws, u64), String> {
    let mut n = 0u64;
    loop {
        if *stop.borrow() {
            return Ok((ws, n));
        }
        let text = format!("conn {index} message {n}");
        ws.send(Message::text(text.clone()))
            .await
            .map_err(|e| format!("conn {index}: send {n}: {e}"))?;
        loop {
            match tokio::time::timeout(Duration::from_secs(15), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if t.as_str() == text => break,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                other => return Err(format!("conn {index}: message {n}: got {other:?}")),
            }
        }
        n += 1;
        let pause = Duration::from_millis(100 + (index as u64 * 7) % 100);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_changes_keep_500_connections_and_steer_new_ones() {
    within(150, async {
        let a = EchoOrigin::start().await;
        let b = EchoOrigin::start().await;
        let dir = ControlDir::new("live");
        let config = Config::new()
            .workers(2)
            .route(Route::new("main", &[a.addr]));
        let toml = dir.toml(&config, "");
        let proxy = dir.start_dataplane(&toml).await;
        let _daemon = Daemon::start(&dir).await;
        // The daemon's configuration is the file the dataplane started with (version 0): in
        // sync without a push.
        wait_status(&dir, "in sync at version 0", Duration::from_secs(10), |s| {
            workers_version(s) == Some(0) && s["daemon"]["in_sync"] == Value::Bool(true)
        })
        .await;

        // 500 live connections, all established on origin A, all talking.
        let mut connecting = JoinSet::new();
        for _ in 0..500 {
            let addr = proxy.addr;
            connecting.spawn(async move { ws_connect(addr, "/").await });
        }
        let mut conns = Vec::new();
        while let Some(ws) = connecting.join_next().await {
            conns.push(ws.expect("connect task"));
        }
        assert_eq!(a.accepted(), 500);
        let clients: HashSet<String> = conns
            .iter()
            .map(|ws| ws.get_ref().local_addr().expect("local addr").to_string())
            .collect();
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut talking = JoinSet::new();
        for (i, ws) in conns.into_iter().enumerate() {
            talking.spawn(chatter(ws, i, stop_rx.clone()));
        }

        // 20 changes: the route's origin moves A -> B -> A ... with limit changes between.
        let (mut current, mut other) = (a.addr.to_string(), b.addr.to_string());
        let mut changes: Vec<Vec<String>> = Vec::new();
        for cycle in 0..7 {
            changes.push(vec![
                "origins".into(),
                "add".into(),
                "main".into(),
                other.clone(),
            ]);
            changes.push(vec![
                "origins".into(),
                "remove".into(),
                "main".into(),
                current.clone(),
            ]);
            std::mem::swap(&mut current, &mut other);
            if cycle < 6 {
                let key = if cycle % 2 == 0 {
                    "idle_timeout"
                } else {
                    "handshake_timeout"
                };
                changes.push(vec![
                    "limits".into(),
                    "set".into(),
                    key.into(),
                    format!("{}s", 61 + cycle),
                ]);
            }
        }
        assert_eq!(changes.len(), 20);
        let mut expected_origin = a.addr;
        for (i, change) in changes.iter().enumerate() {
            let args: Vec<&str> = change.iter().map(String::as_str).collect();
            let out = dir.ctl(&args).await;
            let text = out.ok();
            // The dataplane numbers what it runs: the file was 0, each change is the next.
            assert!(
                text.starts_with(&format!("applied config version {} (", i + 1)),
                "change {i} ({args:?}): {text}"
            );
            if change[1] == "remove" {
                expected_origin = if change[3] == a.addr.to_string() {
                    b.addr
                } else {
                    a.addr
                };
                // New connections follow the new configuration at once.
                let landed = new_connection_lands_on(proxy.addr, &[&a, &b]).await;
                assert_eq!(landed, Some(expected_origin), "after change {i} ({args:?})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(expected_origin, b.addr);

        let status = wait_status(
            &dir,
            "version 20 everywhere",
            Duration::from_secs(10),
            |s| workers_version(s) == Some(20),
        )
        .await;
        assert_eq!(status["daemon"]["in_sync"], Value::Bool(true), "{status:#}");

        // The 500 old connections are still there, still on origin A.
        let list = dir
            .ctl(&["--json", "connections", "--limit", "2000"])
            .await
            .json();
        let rows = list["connections"].as_array().expect("connections");
        let ours: Vec<&Value> = rows
            .iter()
            .filter(|c| c["client"].as_str().is_some_and(|cl| clients.contains(cl)))
            .collect();
        assert_eq!(ours.len(), 500, "live connections listed");
        let a_text = a.addr.to_string();
        assert!(
            ours.iter()
                .all(|c| c["origin"].as_str() == Some(a_text.as_str())
                    && c["route"].as_str() == Some("main")),
            "old connections keep their origin"
        );

        // Every connection kept talking through all changes, without a lost message.
        stop_tx.send(true).expect("stop");
        let mut total = 0;
        let mut survivors = Vec::new();
        while let Some(result) = talking.join_next().await {
            match result.expect("chatter task") {
                Ok((ws, n)) => {
                    assert!(n >= 3, "a connection exchanged only {n} messages");
                    total += n;
                    survivors.push(ws);
                }
                Err(e) => panic!("connection broken during live changes: {e}"),
            }
        }
        assert_eq!(survivors.len(), 500);
        eprintln!("500 connections exchanged {total} messages across 20 changes");
        for mut ws in survivors {
            let _ = ws.close(None).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataplane_outlives_the_daemon_and_is_resynced() {
    within(90, async {
        let a = EchoOrigin::start().await;
        let b = EchoOrigin::start().await;
        let dir = ControlDir::new("resync");
        let config = Config::new()
            .workers(2)
            .route(Route::new("main", &[a.addr]));
        let toml = dir.toml(&config, "");
        let proxy = dir.start_dataplane(&toml).await;
        let mut daemon = Daemon::start(&dir).await;
        let b_text = b.addr.to_string();
        let a_text = a.addr.to_string();
        dir.ctl(&["origins", "add", "main", &b_text]).await.ok();
        dir.ctl(&["origins", "remove", "main", &a_text]).await.ok();
        let status = wait_status(&dir, "version 2", Duration::from_secs(10), |s| {
            workers_version(s) == Some(2)
        })
        .await;
        let desired = status["daemon"]["desired_hash"].clone();
        assert_eq!(status["dataplane"]["config_hash"], desired, "{status:#}");
        let mut old = ws_connect(proxy.addr, "/").await;
        assert_echo(&mut old, Message::text("before")).await;

        // The control process dies: the dataplane serves on with its last configuration.
        daemon.kill();
        assert_echo(&mut old, Message::text("daemon gone")).await;
        assert_eq!(
            new_connection_lands_on(proxy.addr, &[&a, &b]).await,
            Some(b.addr)
        );
        let direct = dir.ctl_direct(&["--json", "status"]).await.json();
        assert_eq!(workers_version(&direct), Some(2));
        assert_eq!(dir.ctl(&["status"]).await.code, 3, "no daemon: exit code 3");

        // Meanwhile someone pushes another configuration straight to the dataplane.
        let drift = dir.dir.join("drift.toml");
        std::fs::write(&drift, &toml).expect("write");
        dir.ctl_direct(&["apply", drift.to_str().expect("path")])
            .await
            .ok();
        assert_eq!(
            new_connection_lands_on(proxy.addr, &[&a, &b]).await,
            Some(a.addr)
        );

        // A new control process restores its persisted state and pushes it back, as the
        // dataplane's next version (the direct apply was 3).
        let _daemon = Daemon::start(&dir).await;
        let status = wait_status(&dir, "re-sync as version 4", Duration::from_secs(10), |s| {
            workers_version(s) == Some(4) && s["daemon"]["in_sync"] == Value::Bool(true)
        })
        .await;
        assert_eq!(status["daemon"]["desired_hash"], desired);
        assert_eq!(status["dataplane"]["config_hash"], desired);
        assert_eq!(
            new_connection_lands_on(proxy.addr, &[&a, &b]).await,
            Some(b.addr)
        );
        assert_echo(&mut old, Message::text("after resync")).await;
        let shown = dir.ctl(&["config", "show"]).await;
        assert!(shown.ok().contains(&b_text) && !shown.stdout.contains(&format!("\"{a_text}\"")));

        // The dataplane restarts: the daemon pushes the desired state to the new one.
        drop(old);
        drop(proxy);
        let proxy = dir.start_dataplane(&toml).await;
        // A new dataplane process numbers from 0 (its file): the push is its version 1, and
        // the hash says it is the same configuration as before.
        wait_status(
            &dir,
            "new dataplane at version 1",
            Duration::from_secs(10),
            |s| {
                workers_version(s) == Some(1)
                    && s["daemon"]["in_sync"] == Value::Bool(true)
                    && s["dataplane"]["config_hash"] == desired
            },
        )
        .await;
        assert_eq!(
            new_connection_lands_on(proxy.addr, &[&a, &b]).await,
            Some(b.addr)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configurations_are_refused_and_the_old_one_serves() {
    within(60, async {
        let a = EchoOrigin::start().await;
        let dir = ControlDir::new("invalid");
        let config = Config::new().workers(2).route(Route::new("main", &[a.addr]));
        let toml = dir.toml(&config, "");
        let proxy = dir.start_dataplane(&toml).await;
        let _daemon = Daemon::start(&dir).await;
        let synced = wait_status(&dir, "in sync", Duration::from_secs(10), |s| {
            workers_version(s) == Some(0) && s["daemon"]["in_sync"] == Value::Bool(true)
        })
        .await;
        let mut ws = ws_connect(proxy.addr, "/").await;

        // A file with a bad origin: refused before it leaves the CLI, naming file, line, field.
        let bad = dir.dir.join("bad.toml");
        std::fs::write(&bad, toml.replace(&a.addr.to_string(), "origin-a:80")).expect("write");
        let out = dir.ctl(&["apply", bad.to_str().expect("path")]).await;
        assert_eq!(out.code, 2, "{out:#?}");
        assert!(
            out.stderr.contains("bad.toml:") && out.stderr.contains("route[0].origins"),
            "{out:#?}"
        );

        // The same through the wire, past the CLI: the daemon refuses it too.
        let body = serde_json::json!({"version": 2, "id": 77, "body": {
            "type": "apply_config", "toml": "[limits]\nidle_timeout = \"forever\"\n", "source": "pushed.toml"}});
        let (replies, _) = raw_exchange(
            &dir.daemon_socket,
            &frame(body.to_string().as_bytes()),
            Duration::from_millis(500),
        );
        assert_eq!(replies[0]["kind"], "invalid_config", "{replies:?}");
        let message = replies[0]["message"].as_str().expect("message");
        assert!(message.starts_with("pushed.toml:2: limits.idle_timeout:"), "{message}");
        // And the dataplane itself, asked directly.
        let (replies, _) = raw_exchange(
            &dir.dataplane_socket,
            &frame(body.to_string().as_bytes()),
            Duration::from_millis(500),
        );
        assert_eq!(replies[0]["kind"], "invalid_config", "{replies:?}");

        // A live edit with a bad value.
        let out = dir.ctl(&["limits", "set", "idle_timeout", "soon"]).await;
        assert_eq!(out.code, 2, "{out:#?}");
        assert!(out.stderr.contains("limits.idle_timeout"), "{out:#?}");
        let out = dir.ctl(&["origins", "add", "nope", "127.0.0.1:1"]).await;
        assert_eq!(out.code, 1, "{out:#?}");
        assert!(out.stderr.contains("not_found"), "{out:#?}");

        // Nothing changed: version 0 runs, the old connection and new ones work.
        let status = dir.ctl(&["--json", "status"]).await.json();
        assert_eq!(workers_version(&status), Some(0));
        assert_eq!(
            status["daemon"]["desired_hash"],
            synced["daemon"]["desired_hash"]
        );
        assert_echo(&mut ws, Message::text("still here")).await;
        let mut fresh = ws_connect(proxy.addr, "/").await;
        assert_echo(&mut fresh, Message::text("new")).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_other_uids_are_refused() {
    within(60, async {
        let a = EchoOrigin::start().await;
        let dir = ControlDir::new("uid");
        // Mode 0666 lets anyone connect, so the refusal comes from the SO_PEERCRED check.
        let config = Config::new()
            .workers(1)
            .route(Route::new("main", &[a.addr]));
        let toml = dir.toml(&config, "socket_mode = \"0666\"\n");
        let proxy = dir.start_dataplane(&toml).await;
        let socket = dir.dataplane_socket.display().to_string();
        let args = vec![
            "--dataplane".to_owned(),
            socket.clone(),
            "status".to_owned(),
        ];

        let nobody = run_ctl(&args, Some(65534)).await;
        assert_eq!(nobody.code, 1, "{nobody:#?}");
        assert!(nobody.stderr.contains("permission_denied"), "{nobody:#?}");
        let root = run_ctl(&args, None).await;
        assert_eq!(root.code, 0, "{root:#?}");

        // The default mode 0600 keeps other users from connecting at all.
        drop(proxy);
        let toml = dir.toml(&config, "");
        let _proxy = dir.start_dataplane(&toml).await;
        let nobody = run_ctl(&args, Some(65534)).await;
        assert_eq!(nobody.code, 3, "{nobody:#?}");
        assert!(nobody.stderr.contains("ermission denied"), "{nobody:#?}");

        // A uid listed in allowed_uids is let in.
        drop(_proxy);
        let toml = dir.toml(&config, "socket_mode = \"0666\"\nallowed_uids = [65534]\n");
        let _proxy = dir.start_dataplane(&toml).await;
        let nobody = run_ctl(&args, Some(65534)).await;
        assert_eq!(nobody.code, 0, "{nobody:#?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_control_socket_is_answered_or_closed() {
    within(60, async {
        let a = EchoOrigin::start().await;
        let dir = ControlDir::new("garbage");
        let config = Config::new().workers(2).route(Route::new("main", &[a.addr]));
        let toml = dir.toml(&config, "");
        let proxy = dir.start_dataplane(&toml).await;
        let mut ws = ws_connect(proxy.addr, "/").await;
        let sock = dir.dataplane_socket.clone();
        let wait = Duration::from_millis(500);

        // An HTTP request: its first bytes read as a 1.2 GB length. Refused, then closed.
        let (replies, closed) = raw_exchange(&sock, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", wait);
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0]["kind"], "frame_too_large");
        assert!(closed);
        // The largest length.
        let (replies, closed) = raw_exchange(&sock, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3], wait);
        assert_eq!(replies[0]["kind"], "frame_too_large");
        assert!(closed);

        // Garbage bodies, an unknown type and a wrong version get error replies, and the
        // connection stays usable for a good request.
        let mut bytes = frame(b"\x00\x01\x02 not json");
        bytes.extend(frame(br#"{"version":2,"id":5,"body":{"type":"format_disk"}}"#));
        bytes.extend(frame(br#"{"version":1,"id":6,"body":{"type":"status"}}"#));
        bytes.extend(frame(br#"{"version":2,"id":7,"body":{"type":"kill","id":"x"}}"#));
        bytes.extend(frame(br#"{"version":2,"id":8,"body":{"type":"origin_add","route":"main","addr":"127.0.0.1:1"}}"#));
        bytes.extend(frame(br#"{"version":2,"id":9,"body":{"type":"status"}}"#));
        let (replies, _) = raw_exchange(&sock, &bytes, wait);
        let kinds: Vec<&str> = replies
            .iter()
            .map(|r| r["kind"].as_str().unwrap_or(r["type"].as_str().unwrap_or("?")))
            .collect();
        assert_eq!(
            kinds,
            ["bad_request", "bad_request", "unsupported_version", "bad_request", "not_supported", "status"]
        );

        // A truncated frame, and a peer that connects and says nothing: dropped, harmless.
        let (replies, _) = raw_exchange(&sock, &[0, 0, 0, 50, b'{'], wait);
        assert!(replies.is_empty());
        let _silent = std::os::unix::net::UnixStream::connect(&sock).expect("connect");

        // A peer that floods requests and never reads its replies: its thread gives up on a
        // write timeout; nobody else waits for it.
        let flood_sock = sock.clone();
        let flood = std::thread::spawn(move || {
            use std::io::Write;
            let mut s = std::os::unix::net::UnixStream::connect(&flood_sock).expect("connect");
            s.set_write_timeout(Some(Duration::from_secs(3))).expect("timeout");
            let one = frame(br#"{"version":2,"id":1,"body":{"type":"config_show"}}"#);
            let mut sent = 0;
            while sent < 100_000 && s.write_all(&one).is_ok() {
                sent += 1;
            }
            sent
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        for _ in 0..3 {
            let out = dir.ctl_direct(&["--json", "status"]).await;
            assert_eq!(workers_version(&out.json()), Some(0));
        }
        assert_echo(&mut ws, Message::text("unaffected")).await;
        let sent = tokio::task::spawn_blocking(move || flood.join().expect("flood thread"))
            .await
            .expect("join");
        assert!(sent < 100_000, "the server should stop reading a peer that never reads");

        // Still serving, still answering.
        let mut fresh = ws_connect(proxy.addr, "/").await;
        assert_echo(&mut fresh, Message::text("fresh")).await;
        dir.ctl_direct(&["stats"]).await.ok();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_connections_kill_and_drain() {
    within(60, async {
        let a = EchoOrigin::start().await;
        let dir = ControlDir::new("drain");
        let metrics = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let config = Config::new()
            .workers(2)
            .route(Route::new("main", &[a.addr]));
        let toml = dir.toml(&config, &format!("metrics_listen = \"{metrics}\"\n"));
        let proxy = dir.start_dataplane(&toml).await;
        let mut first = ws_connect(proxy.addr, "/").await;
        let mut second = ws_connect(proxy.addr, "/").await;
        assert_echo(&mut first, Message::text("one")).await;
        assert_echo(&mut second, Message::text("two")).await;

        // Prometheus text format.
        let body = {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut tcp = tokio::net::TcpStream::connect(metrics)
                .await
                .expect("metrics");
            tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("write");
            let mut out = String::new();
            tcp.read_to_string(&mut out).await.expect("read");
            out
        };
        assert!(body.starts_with("HTTP/1.1 200 OK\r\n"), "{body}");
        assert!(
            body.contains("# TYPE wsedge_connections_accepted_total counter"),
            "{body}"
        );
        let live: u64 = body
            .lines()
            .filter(|l| l.starts_with("wsedge_connections_live{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert_eq!(live, 2, "{body}");

        // Kill one connection by id.
        let list = dir.ctl_direct(&["--json", "connections"]).await.json();
        let rows = list["connections"].as_array().expect("rows");
        assert_eq!(rows.len(), 2);
        let mine = first.get_ref().local_addr().expect("addr").to_string();
        let id = rows
            .iter()
            .find(|r| r["client"] == mine.as_str())
            .and_then(|r| r["id"].as_str())
            .expect("first connection listed");
        let out = dir.ctl_direct(&["kill", id]).await;
        assert!(out.ok().contains("closed"), "{out:#?}");
        common::wait_ws_end(&mut first, Duration::from_secs(5)).await;
        assert_eq!(dir.ctl_direct(&["kill", id]).await.code, 1);

        // Drain: stops accepting at once, waits for the last connection to end.
        let drain_dir_socket = dir.dataplane_socket.display().to_string();
        let drain = tokio::spawn(async move {
            run_ctl(
                &[
                    "--dataplane".to_owned(),
                    drain_dir_socket,
                    "drain".to_owned(),
                    "--timeout".to_owned(),
                    "20s".to_owned(),
                ],
                None,
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(
            tokio::net::TcpStream::connect(proxy.addr).await.is_err(),
            "a drained host refuses new connections"
        );
        assert_echo(&mut second, Message::text("still served while draining")).await;
        let _ = second.close(None).await;
        let out = drain.await.expect("drain task");
        let text = out.ok();
        assert!(text.contains("drained: no live connections"), "{text}");
        let status = dir.ctl_direct(&["--json", "status"]).await.json();
        assert!(
            status["dataplane"]["workers"]
                .as_array()
                .expect("workers")
                .iter()
                .all(|w| w["accepting"] == Value::Bool(false)),
            "{status:#}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_with_a_timeout_ends_frames_connections_with_close_1001() {
    within(60, async {
        let origin = EchoOrigin::start().await;
        let dir = ControlDir::new("drain-frames");
        let config = Config::new().route(
            Route::new("f", &[origin.addr])
                .relay("frames")
                .duration("close_grace", "1s"),
        );
        let proxy = dir.start_dataplane(&dir.toml(&config, "")).await;
        let mut ws = ws_connect(proxy.addr, "/").await;
        assert_echo(&mut ws, Message::text("alive")).await;
        let start = std::time::Instant::now();
        let socket = dir.dataplane_socket.display().to_string();
        let drain = tokio::spawn(async move {
            let args = ["--dataplane", &socket, "drain", "--timeout", "3s"];
            run_ctl(&args.map(str::to_owned), None).await
        });
        let code = loop {
            match tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .expect("a Close within the drain")
            {
                Some(Ok(Message::Close(Some(frame)))) => break u16::from(frame.code),
                Some(Ok(Message::Close(None))) => panic!("Close without a code"),
                Some(Ok(_)) => continue,
                other => panic!("connection ended without a Close frame: {other:?}"),
            }
        };
        let closed_after = start.elapsed();
        // Reading on lets tungstenite answer the Close; the proxy then ends the connection,
        // and the drain, before the deadline.
        while let Some(Ok(_)) = ws.next().await {}
        let out = drain.await.expect("drain task");
        assert!(
            out.ok().contains("drained: no live connections"),
            "{out:#?}"
        );
        assert!(
            start.elapsed() < Duration::from_millis(2900),
            "drained after {:?}: the close handshake should end it before the 3 s deadline",
            start.elapsed()
        );
        assert_eq!(code, 1001);
        assert!(
            closed_after >= Duration::from_millis(1500)
                && closed_after < Duration::from_millis(2900),
            "Close after {closed_after:?} (deadline 3 s, grace 1 s)"
        );
    })
    .await;
}
