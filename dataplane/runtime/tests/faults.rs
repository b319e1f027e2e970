//! Fault injection against the real `wsedge` binary: broken, slow, vanishing and hostile
//! peers, and a process out of descriptors.
//!
//! Every test asserts the exact outcome of its fault, then that a WebSocket connection opened
//! before the fault still echoes, that the dataplane holds exactly as many descriptors as
//! before the fault (after a short settle) and that its RSS is within a generous margin of
//! what it was. Outcomes and figures are listed in docs/reliability.md.

mod common;
mod fault_support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use common::origins::{EchoOrigin, RawOrigin};
use common::raw::{
    Head, OP_BINARY, OP_TEXT, RawConn, TEST_KEY, client_frame, frame, http_exchange, server_frame,
    upgrade_head,
};
use common::{
    Config, Proxy, Route, Ws, assert_echo, binary_payload, dead_addr, within, ws_connect,
    ws_connect_req, ws_request,
};
use fault_support::{
    LoggedProxy, ProcStats, ScriptOrigin, assert_recovered, connect_from, free_below,
    limit_leaving, nofile, read_at_least, set_nofile, stable_fds,
};

const MIB: usize = 1 << 20;

/// A proxy with route `/live` to an echo origin and every other path to `fault_origin`,
/// plus a live connection on `/live` that has echoed (a 1 MiB message included, so the
/// buffers a big message needs are already touched), and the baseline taken after it.
struct Rig {
    proxy: Proxy,
    _echo: EchoOrigin,
    live: Ws,
    base: ProcStats,
}

async fn rig(config: Config, fault_origin: SocketAddr) -> Rig {
    let echo = EchoOrigin::start().await;
    let config = config
        .route(Route::new("live", &[echo.addr]).path("/live"))
        .route(Route::new("fault", &[fault_origin]));
    let proxy = Proxy::start(&config).await;
    let mut live = ws_connect(proxy.addr, "/live").await;
    assert_echo(&mut live, Message::text("hello before the fault")).await;
    assert_echo(&mut live, Message::binary(binary_payload(MIB))).await;
    let pid = proxy.pid();
    let fds = stable_fds(pid, Duration::from_millis(300)).await;
    let base = ProcStats::read(pid);
    assert_eq!(
        base.fds, fds,
        "descriptor count moved while taking the baseline"
    );
    Rig {
        proxy,
        _echo: echo,
        live,
        base,
    }
}

impl Rig {
    /// The end of every test: no crash, descriptors and RSS back, the live connection echoes.
    async fn recovered(&mut self) -> ProcStats {
        assert!(
            self.proxy.wait_exit(Duration::ZERO).await.is_none(),
            "the dataplane exited"
        );
        assert_recovered(self.proxy.pid(), &self.base, &mut self.live).await
    }
}

/// Reads a response head and asserts the connection then ends, within `limit`.
async fn head_then_close(c: &mut RawConn, limit: Duration) -> Head {
    let head = tokio::time::timeout(limit, c.read_head())
        .await
        .expect("no response head in time")
        .expect("response head");
    let rest = c.read_until_closed(limit).await;
    assert!(
        rest.is_some(),
        "connection still open after the response {}",
        head.text()
    );
    head
}

// ---------------------------------------------------------------------------------------------
// The origin fails
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_refuses_gives_502() {
    within(60, async {
        let mut rig = rig(Config::new(), dead_addr()).await;
        let req = upgrade_head("/app", "app.test", &[]);
        let (head, body) = http_exchange(rig.proxy.addr, req.as_bytes()).await;
        assert_eq!(head.status(), 502, "response: {}", head.text());
        assert_eq!(body, b"bad gateway\n");
        rig.proxy
            .wait_log_reason("origin_unreachable", Duration::from_secs(5))
            .await;
        rig.recovered().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_never_answers_handshake_gives_504_after_timeout() {
    within(60, async {
        let silent = RawOrigin::silent().await;
        let config = Config::new().duration("origin_handshake_timeout", "1s");
        let mut rig = rig(config, silent.addr).await;
        let start = Instant::now();
        let req = upgrade_head("/app", "app.test", &[]);
        let (head, _) = http_exchange(rig.proxy.addr, req.as_bytes()).await;
        let elapsed = start.elapsed();
        assert_eq!(head.status(), 504, "response: {}", head.text());
        assert!(
            elapsed >= Duration::from_millis(800) && elapsed < Duration::from_secs(6),
            "504 after {elapsed:?}, expected about 1 s"
        );
        assert_eq!(silent.accepted(), 1);
        assert_eq!(silent.heads().len(), 1, "the origin received the upgrade");
        rig.proxy
            .wait_log_reason("origin_handshake_timeout", Duration::from_secs(5))
            .await;
        rig.recovered().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_resets_mid_message_closes_the_client() {
    within(60, async {
        // The origin reads 64 KiB of the client's 1 MiB message, then resets (SO_LINGER 0).
        let origin = ScriptOrigin::start(|mut tcp, _head, rest| async move {
            let got = read_at_least(&mut tcp, rest.len(), 64 * 1024).await;
            assert!(got >= 64 * 1024, "origin got only {got} bytes");
            tcp.set_zero_linger().expect("SO_LINGER 0");
            drop(tcp);
        })
        .await;
        let mut rig = rig(Config::new(), origin.addr).await;
        let mut ws = ws_connect(rig.proxy.addr, "/app").await;
        // The send may or may not fail (the reset can arrive while it is being written).
        let _ = ws.send(Message::binary(binary_payload(MIB))).await;
        // The next thing the client sees is the end: no message, no echo of the half sent.
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {}
                Some(Ok(m)) => panic!("unexpected message after the reset: {m:?}"),
            }
        })
        .await;
        assert!(
            ended.is_ok(),
            "client connection not closed after the origin reset"
        );
        let line = rig
            .proxy
            .wait_log("for the reset connection", Duration::from_secs(5), |v| {
                v.get("route").and_then(|r| r.as_str()) == Some("fault")
            })
            .await;
        assert_eq!(line["reason"], "origin_reset", "access log: {line}");
        assert_eq!(line["status"], 101);
        drop(ws);
        rig.recovered().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_closes_half_way_through_a_1mib_message() {
    within(60, async {
        // The origin sends the header of a 1 MiB binary frame and half of its payload, then
        // closes (FIN).
        let origin = ScriptOrigin::start(|mut tcp, _head, _rest| async move {
            let full = frame(true, OP_BINARY, &binary_payload(MIB), None);
            let half = 10 + MIB / 2;
            let _ = tcp.write_all(&full[..half]).await;
            let _ = tcp.shutdown().await;
            // Hold the socket until the proxy closes its side.
            let mut sink = [0u8; 1024];
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut sink)).await
            {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        let mut rig = rig(Config::new(), origin.addr).await;
        let mut c = RawConn::connect(rig.proxy.addr).await;
        c.send(upgrade_head("/app", "app.test", &[]).as_bytes())
            .await
            .expect("send head");
        let head = c.read_head().await.expect("101");
        assert_eq!(head.status(), 101, "response: {}", head.text());
        // The client receives exactly what the origin sent, then the end of the stream.
        let got = c
            .read_until_closed(Duration::from_secs(10))
            .await
            .expect("client never saw the origin's close");
        assert_eq!(got.len(), 10 + MIB / 2, "bytes relayed before the close");
        assert_eq!(&got[..2], &[0x82, 127], "the 1 MiB frame header");
        // The client closes too; the proxy logs who closed first.
        drop(c);
        let line = rig
            .proxy
            .wait_log("for the half message", Duration::from_secs(5), |v| {
                v.get("route").and_then(|r| r.as_str()) == Some("fault")
            })
            .await;
        assert_eq!(line["reason"], "origin_closed", "access log: {line}");
        assert_eq!(
            line["bytes_to_client"].as_u64().map(|b| b > MIB as u64 / 2),
            Some(true)
        );
        rig.recovered().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_101_with_wrong_accept_gives_502() {
    within(60, async {
        let origin = RawOrigin::wrong_accept().await;
        let mut rig = rig(Config::new(), origin.addr).await;
        let mut c = RawConn::connect(rig.proxy.addr).await;
        c.send(upgrade_head("/app", "app.test", &[]).as_bytes())
            .await
            .expect("send head");
        let head = head_then_close(&mut c, Duration::from_secs(10)).await;
        assert_eq!(head.status(), 502, "response: {}", head.text());
        assert_eq!(origin.heads().len(), 1, "the upgrade reached the origin");
        rig.proxy
            .wait_log_reason("origin_bad_handshake", Duration::from_secs(5))
            .await;
        rig.recovered().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The client misbehaves
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_half_close_reaches_the_origin_and_the_reply_still_arrives() {
    within(60, async {
        // The origin reads until EOF, then answers with one frame and closes.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let origin = ScriptOrigin::start(move |mut tcp, _head, rest| {
            let tx = tx.clone();
            async move {
                let mut got = rest;
                let mut chunk = [0u8; 4096];
                loop {
                    match tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut chunk)).await
                    {
                        Ok(Ok(0)) => break,
                        Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                }
                let _ = tx.send(got);
                let _ = tcp
                    .write_all(&server_frame(OP_TEXT, b"reply after your EOF"))
                    .await;
                let _ = tcp.shutdown().await;
            }
        })
        .await;
        let mut rig = rig(Config::new(), origin.addr).await;
        let mut c = RawConn::connect(rig.proxy.addr).await;
        c.send(upgrade_head("/app", "app.test", &[]).as_bytes())
            .await
            .expect("send head");
        assert_eq!(c.read_head().await.expect("101").status(), 101);
        let sent = client_frame(OP_TEXT, b"last words", [1, 2, 3, 4]);
        c.send(&sent).await.expect("send frame");
        c.stream.shutdown().await.expect("shutdown(Write)");
        let origin_saw = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the origin never saw EOF")
            .expect("origin script");
        assert_eq!(origin_saw, sent, "the origin got the frame, then EOF");
        let reply = tokio::time::timeout(Duration::from_secs(10), c.read_frame())
            .await
            .expect("no reply within 10 s")
            .expect("reply frame");
        assert_eq!(reply.payload, b"reply after your EOF");
        let rest = c.read_until_closed(Duration::from_secs(10)).await;
        assert_eq!(rest, Some(Vec::new()), "end of stream after the reply");
        let line = rig
            .proxy
            .wait_log(
                "for the half-closed connection",
                Duration::from_secs(5),
                |v| v.get("route").and_then(|r| r.as_str()) == Some("fault"),
            )
            .await;
        assert_eq!(line["reason"], "client_closed", "access log: {line}");
        drop(c);
        rig.recovered().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_gets_408_at_handshake_timeout() {
    within(60, async {
        let origin = EchoOrigin::start().await;
        let config = Config::new().duration("handshake_timeout", "2s");
        let mut rig = rig(config, origin.addr).await;
        let mut c = RawConn::connect(rig.proxy.addr).await;
        let head = upgrade_head("/app", "app.test", &[]);
        let start = Instant::now();
        // One byte a second; the writer stops at the first failed write.
        let mut stream = c.stream;
        let (mut rd, mut wr) = stream.split();
        let slow = async {
            for b in head.as_bytes() {
                if wr.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        let read = async {
            let mut got = Vec::new();
            let mut chunk = [0u8; 1024];
            loop {
                match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
        };
        let got = tokio::select! {
            got = read => got,
            _ = slow => panic!("the whole head was sent one byte a second without a close"),
        };
        let elapsed = start.elapsed();
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(text.starts_with("HTTP/1.1 408 "), "answer: {text:?}");
        assert!(
            elapsed >= Duration::from_millis(1800) && elapsed < Duration::from_secs(6),
            "closed after {elapsed:?}, expected about 2 s"
        );
        assert_eq!(origin.accepted(), 0, "never forwarded");
        rig.proxy
            .wait_log_reason("handshake_timeout", Duration::from_secs(5))
            .await;
        c.stream = stream;
        drop(c);
        rig.recovered().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_abandoned_handshakes_from_several_addresses() {
    within(90, async {
        let origin = EchoOrigin::start().await;
        let mut rig = rig(Config::new(), origin.addr).await;
        let addr = rig.proxy.addr;
        let half = upgrade_head("/app", "app.test", &[]);
        let half = half.as_bytes()[..half.len() / 2].to_vec();
        const TOTAL: usize = 5000;
        const WAVE: usize = 1000;
        let sources: Vec<Ipv4Addr> = (2..=6).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
        let mut peak = 0;
        for wave in 0..TOTAL / WAVE {
            let mut set = JoinSet::new();
            for i in 0..WAVE {
                let source = sources[(wave * WAVE + i) % sources.len()];
                let half = half.clone();
                set.spawn(async move {
                    let mut tcp = connect_from(source, addr).await;
                    tcp.write_all(&half).await.expect("half a head");
                    tcp
                });
            }
            // Hold the whole wave open at once, then abandon it.
            let mut held = Vec::with_capacity(WAVE);
            while let Some(r) = set.join_next().await {
                held.push(r.expect("connect task"));
            }
            // Let the proxy accept (and read) them all before they go.
            let want = rig.base.fds + WAVE;
            let seen =
                fault_support::settle_fds(rig.proxy.pid(), want, Duration::from_secs(10)).await;
            peak = peak.max(seen);
            drop(held);
        }
        assert!(
            peak >= rig.base.fds + WAVE,
            "the proxy held {peak} descriptors at most, expected a whole wave of {WAVE} more"
        );
        assert_eq!(origin.accepted(), 0, "half heads are never forwarded");
        rig.proxy
            .wait_log_reason("client_gone", Duration::from_secs(5))
            .await;
        // New connections work, from every source address.
        for source in &sources {
            let tcp = connect_from(*source, addr).await;
            let req = ws_request(&format!("ws://{addr}/app"));
            let (mut ws, resp) =
                tokio_tungstenite::client_async_with_config(req, tcp, Some(common::ws_config()))
                    .await
                    .expect("handshake after the flood");
            assert_eq!(resp.status().as_u16(), 101);
            assert_echo(&mut ws, Message::text(format!("from {source}"))).await;
            let _ = ws.close(None).await;
        }
        rig.recovered().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_get_400_and_never_reach_the_origin() {
    within(60, async {
        let recording = RawOrigin::plain().await;
        let mut rig = rig(Config::new(), recording.addr).await;
        let ws = format!(
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {TEST_KEY}\r\n\
             Sec-WebSocket-Version: 13\r\n"
        );
        let cases: Vec<(&str, String, u16)> =
            vec![
            (
                "CL+TE",
                "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\
                 \r\n\r\n0\r\n\r\nG"
                    .to_string(),
                400,
            ),
            (
                "duplicate CL",
                "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n\
                 hello!"
                    .to_string(),
                400,
            ),
            (
                "CL list",
                "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello".to_string(),
                400,
            ),
            (
                "obs-fold",
                format!("GET /a HTTP/1.1\r\nHost: h\r\n{ws}X-Folded: a\r\n b\r\n\r\n"),
                400,
            ),
            (
                "obs-fold TE",
                "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n"
                    .to_string(),
                400,
            ),
            (
                "bare CR",
                format!("GET /a HTTP/1.1\r\nHost: h\rX-Injected: 1\r\n{ws}\r\n"),
                400,
            ),
            (
                "NUL",
                format!("GET /a HTTP/1.1\r\nHost: h\r\nX-Nul: a\0b\r\n{ws}\r\n"),
                400,
            ),
            // Over the 16 KiB head limit: 431 per the behaviour table.
            (
                "over-long request line",
                format!("GET /{} HTTP/1.1\r\nHost: h\r\n{ws}\r\n", "a".repeat(20_000)),
                431,
            ),
        ];
        for (what, req, status) in &cases {
            let (head, _) = http_exchange(rig.proxy.addr, req.as_bytes()).await;
            assert_eq!(head.status(), *status, "{what}: {}", head.text());
            assert!(
                head.has_token("connection", "close"),
                "{what}: {}",
                head.text()
            );
        }
        // Give a wrongly forwarded request time to arrive before checking none did.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            recording.accepted(),
            0,
            "the recording origin saw a connection"
        );
        rig.recovered().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sent_x_forwarded_for_is_replaced() {
    within(60, async {
        let origin = EchoOrigin::start().await;
        let mut rig = rig(Config::new(), origin.addr).await;
        let addr = rig.proxy.addr;
        let source = Ipv4Addr::new(127, 0, 0, 9);
        let mut req = ws_request(&format!("ws://{addr}/app"));
        let h = req.headers_mut();
        h.insert("x-forwarded-for", "6.6.6.6".parse().expect("value"));
        h.append("x-forwarded-for", "7.7.7.7".parse().expect("value"));
        h.insert("forwarded", "for=6.6.6.6".parse().expect("value"));
        h.insert("x-forwarded-proto", "https".parse().expect("value"));
        let tcp = connect_from(source, addr).await;
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(req, tcp, Some(common::ws_config()))
                .await
                .expect("handshake");
        assert_echo(&mut ws, Message::text("hi")).await;
        let seen = origin.requests();
        assert_eq!(seen.len(), 1);
        let r = &seen[0];
        assert_eq!(
            r.all("x-forwarded-for"),
            vec!["127.0.0.9"],
            "raw head:\n{}",
            r.raw
        );
        assert_eq!(
            r.all("x-forwarded-proto"),
            vec!["http"],
            "raw head:\n{}",
            r.raw
        );
        assert!(r.all("forwarded").is_empty(), "raw head:\n{}", r.raw);
        let _ = ws.close(None).await;
        drop(ws);
        rig.recovered().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Out of descriptors
// ---------------------------------------------------------------------------------------------

/// The CPU time (ticks of 10 ms) a process used over `window`.
async fn cpu_over(pid: u32, window: Duration) -> u64 {
    let before = fault_support::cpu_ticks(pid);
    tokio::time::sleep(window).await;
    fault_support::cpu_ticks(pid) - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_exhaustion_at_accept_pauses_accept_and_recovers() {
    within(90, async {
        let echo = EchoOrigin::start().await;
        let config = Config::new()
            .duration("handshake_timeout", "30s")
            .route(Route::new("live", &[echo.addr]));
        // The soft limit is set at spawn: an armed multishot accept keeps the limit it was
        // armed with, so lowering it from outside later would not reach accept.
        const LIMIT: usize = 64;
        let (_, hard) = nofile(std::process::id());
        let mut proxy = LoggedProxy::start_with_nofile(&config, Some((LIMIT, hard))).await;
        let pid = proxy.pid();
        let mut live = ws_connect(proxy.addr, "/live").await;
        assert_echo(&mut live, Message::text("before")).await;
        stable_fds(pid, Duration::from_millis(300)).await;
        let base = ProcStats::read(pid);
        let free = free_below(pid, LIMIT);
        assert!(
            free > 10,
            "only {free} descriptors free under {LIMIT} at the start"
        );

        // `free` idle clients are accepted; 12 more wait in the backlog.
        let mut idle = Vec::new();
        for _ in 0..free + 12 {
            idle.push(
                tokio::net::TcpStream::connect(proxy.addr)
                    .await
                    .expect("connect"),
            );
        }
        let line = proxy
            .wait_stderr("out of descriptors", Duration::from_secs(10))
            .await;
        assert!(line.contains("accept"), "warning: {line}");
        assert_eq!(free_below(pid, LIMIT), 0, "descriptors left at the limit");
        // No busy loop while accept keeps failing: under 0.3 s of CPU over 2 s.
        let ticks = cpu_over(pid, Duration::from_secs(2)).await;
        eprintln!("[faults] out of descriptors at accept: {ticks} CPU ticks in 2 s");
        assert!(
            ticks < 30,
            "{ticks} ticks of CPU in 2 s while out of descriptors"
        );
        assert!(proxy.alive(), "the dataplane exited");
        // A new client waits in the backlog while the limit holds...
        let waiting = tokio::spawn(ws_connect_req(
            proxy.addr,
            ws_request(&format!("ws://{}/live", proxy.addr)),
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !waiting.is_finished(),
            "a client was served beyond the limit"
        );
        // ...and is served once descriptors free up (the idle clients leave).
        drop(idle);
        let (mut ws, resp) = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("no handshake within 10 s after descriptors freed up")
            .expect("task")
            .expect("handshake");
        assert_eq!(resp.status().as_u16(), 101);
        assert_echo(&mut ws, Message::text("after")).await;
        let _ = ws.close(None).await;
        drop(ws);
        assert_recovered(pid, &base, &mut live).await;
        assert!(proxy.alive(), "the dataplane exited");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_exhaustion_at_origin_connect_gives_502_and_recovers() {
    within(90, async {
        let echo = EchoOrigin::start().await;
        // `auto`: the 1 MiB echo below goes bulk and has to fall back when no pipe fits.
        // 1 KiB relay buffers make "a recv filled a whole buffer" certain for it, whatever the
        // timing (with 32 KiB ones a busy host sometimes reads it in smaller pieces).
        let config = Config::new()
            .route(Route::new("live", &[echo.addr]).relay("auto"))
            .table("[relay]\nbuffer_size = 1024");
        let mut proxy = LoggedProxy::start(&config).await;
        let pid = proxy.pid();
        let (_, hard) = nofile(pid);
        let mut live = ws_connect(proxy.addr, "/live").await;
        assert_echo(&mut live, Message::text("before")).await;
        // A second connection whose two descriptors will be freed later.
        let mut spare = ws_connect(proxy.addr, "/live").await;
        assert_echo(&mut spare, Message::text("spare")).await;
        let base_fds = stable_fds(pid, Duration::from_millis(300)).await;

        // No descriptor left under the soft limit: the client is still accepted (the armed
        // multishot accept keeps the limit it was armed with), its origin socket is not.
        let limit = limit_leaving(pid, 0);
        set_nofile(pid, limit, hard);
        let mut c = RawConn::connect(proxy.addr).await;
        c.send(upgrade_head("/live", "app.test", &[]).as_bytes())
            .await
            .expect("send head");
        let head = head_then_close(&mut c, Duration::from_secs(10)).await;
        assert_eq!(head.status(), 502, "response: {}", head.text());
        let line = proxy
            .wait_reason("resource_exhausted", Duration::from_secs(5))
            .await;
        assert_eq!(line["status"], 502, "access log: {line}");
        let warning = proxy
            .wait_stderr("cannot create origin socket", Duration::from_secs(5))
            .await;
        assert!(
            warning.contains("Too many open files"),
            "warning names the error: {warning}"
        );
        drop(c);
        assert_eq!(
            fault_support::settle_fds(pid, base_fds, Duration::from_secs(10)).await,
            base_fds,
            "descriptors after the failed connection"
        );
        let ticks = cpu_over(pid, Duration::from_secs(1)).await;
        eprintln!("[faults] after EMFILE at origin connect: {ticks} CPU ticks in 1 s");
        assert!(ticks < 20, "{ticks} ticks of CPU in 1 s after the failure");

        // Descriptors free up (the spare connection ends): a new connection fits again.
        let _ = spare.close(None).await;
        drop(spare);
        assert_eq!(
            fault_support::settle_fds(pid, base_fds - 2, Duration::from_secs(10)).await,
            base_fds - 2,
            "descriptors after the spare connection ended"
        );
        assert_eq!(
            free_below(pid, limit),
            2,
            "fds: {:?}",
            fault_support::fd_numbers(pid)
        );
        let mut ws = ws_connect(proxy.addr, "/live").await;
        assert_echo(&mut ws, Message::binary(binary_payload(MIB))).await;
        // The 1 MiB message made the `auto` relay go bulk, and no descriptor was left for a
        // splice pipe: the direction stayed buffered instead of failing the connection.
        let fallback = proxy
            .wait_stderr("relaying this direction buffered", Duration::from_secs(5))
            .await;
        assert!(
            fallback.contains("Too many open files"),
            "warning names the error: {fallback}"
        );
        assert_echo(&mut live, Message::text("live still echoes")).await;
        let _ = ws.close(None).await;
        drop(ws);
        // Raise the limit only once the proxy has ended that connection: a direction still
        // going bulk could otherwise get its pipe after all, which the pool keeps (by design).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while proxy
            .access_log()
            .iter()
            .filter(|l| l["status"] == 101)
            .count()
            < 2
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the spare and the last connection were not logged as ended: {:?}",
                proxy.access_log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(proxy.alive(), "the dataplane exited");
        set_nofile(pid, hard, hard);
        assert_eq!(
            fault_support::settle_fds(pid, base_fds - 2, Duration::from_secs(10)).await,
            base_fds - 2
        );
    })
    .await;
}
