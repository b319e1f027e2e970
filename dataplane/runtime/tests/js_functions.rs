//! JavaScript functions (`function = "js"`) through the real binary, with tokio-tungstenite
//! clients and real origins: a server through `upgradeWebSocket`, plain responses, message
//! types, close codes, exceptions (1011), timers, an outbound `new WebSocket` piped to an
//! origin, a client-less function, the memory cap, channel fan-out (with the publish API),
//! and scripts that do not compile, refused at start and at apply.

mod common;
mod functions_support;
mod js_support;

use std::path::Path;
use std::time::{Duration, Instant};

use common::origins::EchoOrigin;
use common::{Proxy, assert_echo, binary_payload, strip_ansi, text_payload, within};
use functions_support::{config_toml, function_route};
use futures_util::SinkExt;
use js_support::{Scripts, ask, close_of, free_port, http_get, js_route, next_msg, next_text};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Starts wsedge with one js route at `/fn` running `source`.
async fn start_one(scripts: &Scripts, workers: usize, source: &str, extra: &[&str]) -> Proxy {
    let path = scripts.write("handler.js", source);
    Proxy::start_toml(&config_toml(workers, &js_route("fn", "/fn", &path, extra))).await
}

const ECHO: &str = r#"
export default {
  fetch(request) {
    const { socket, response } = upgradeWebSocket(request);
    socket.onmessage = (event) => socket.send(event.data);
    return response;
  },
};
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_websocket_echoes_every_size() {
    within(90, async {
        let scripts = Scripts::new("echo");
        let proxy = start_one(&scripts, 2, ECHO, &[]).await;
        let mut ws = common::ws_connect(proxy.addr, "/fn").await;
        for n in [0, 125, 126, 65535, 65536, 1 << 20] {
            assert_echo(&mut ws, Message::text(text_payload(n))).await;
            assert_echo(&mut ws, Message::binary(binary_payload(n))).await;
        }
        ws.close(None).await.expect("close");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_upgrade_gets_the_function_response() {
    within(60, async {
        let scripts = Scripts::new("respond");
        let source = r#"
export default {
  fetch(request) {
    const url = new URL(request.url);
    if (url.pathname.endsWith("/hello")) {
      return new Response("hello " + request.method, { status: 200, headers: { "x-fn": "yes" } });
    }
    if (request.headers.get("upgrade") === "websocket") return new Response("no", { status: 403 });
    return Response.json({ path: url.pathname, q: url.searchParams.get("q") }, { status: 201 });
  },
};
"#;
        let mut proxy = start_one(&scripts, 1, source, &[]).await;
        let (status, body) = http_get(proxy.addr, "/fn/hello").await;
        assert_eq!((status, body.as_str()), (200, "hello GET"));
        let (status, body) = http_get(proxy.addr, "/fn/data?q=42").await;
        assert_eq!(status, 201);
        let json: Value = serde_json::from_str(&body).expect("JSON body");
        assert_eq!(json, serde_json::json!({"path": "/fn/data", "q": "42"}));
        // An upgrade answered with a Response is not upgraded.
        let url = proxy.ws_url("/fn/ws");
        match common::ws_connect_req(proxy.addr, common::ws_request(&url)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 403)
            }
            other => panic!("expected a 403, got {other:?}"),
        }
        proxy
            .wait_log_reason("not_upgraded", Duration::from_secs(5))
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_stays_text_and_binary_stays_binary() {
    within(60, async {
        let scripts = Scripts::new("types");
        let source = r#"
export default {
  fetch(request) {
    const { socket, response } = upgradeWebSocket(request);
    socket.onmessage = (event) => {
      if (typeof event.data === "string") return socket.send("text:" + event.data);
      if (!(event.data instanceof ArrayBuffer)) return socket.send("not an ArrayBuffer");
      const bytes = new Uint8Array(event.data).reverse();
      socket.send(bytes);                 // a typed array
      socket.send(bytes.buffer);          // an ArrayBuffer
    };
    return response;
  },
};
"#;
        let proxy = start_one(&scripts, 1, source, &[]).await;
        let mut ws = common::ws_connect(proxy.addr, "/fn").await;
        assert_eq!(ask(&mut ws, "héllo").await, "text:héllo");
        ws.send(Message::binary(vec![1u8, 2, 3, 255]))
            .await
            .expect("send");
        for _ in 0..2 {
            match next_msg(&mut ws).await {
                Message::Binary(b) => assert_eq!(&b[..], &[255, 3, 2, 1]),
                other => panic!("expected binary, got {other:?}"),
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_codes_go_both_ways() {
    within(60, async {
        let scripts = Scripts::new("close");
        let source = r#"
const closes = [];
export default {
  fetch(request) {
    const { socket, response } = upgradeWebSocket(request);
    socket.onmessage = (event) => {
      if (event.data === "bye") socket.close(4000, "see you");
      else if (event.data === "closes") socket.send(JSON.stringify(closes));
    };
    socket.onclose = (event) => closes.push([event.code, event.reason, event.wasClean]);
    return response;
  },
};
"#;
        // One worker: the module's `closes` is per worker.
        let proxy = start_one(&scripts, 1, source, &[]).await;
        let mut a = common::ws_connect(proxy.addr, "/fn").await;
        a.send(Message::text("bye")).await.expect("send");
        assert_eq!(close_of(&mut a).await, Some((4000, "see you".to_owned())));
        js_support::drain(&mut a).await;

        let mut b = common::ws_connect(proxy.addr, "/fn").await;
        b.close(Some(CloseFrame {
            code: CloseCode::from(4321),
            reason: "mine".into(),
        }))
        .await
        .expect("close");
        // The edge echoes the code (its reason is its own).
        assert_eq!(close_of(&mut b).await.map(|c| c.0), Some(4321));
        js_support::drain(&mut b).await;

        let mut c = common::ws_connect(proxy.addr, "/fn").await;
        let closes: Value = serde_json::from_str(&ask(&mut c, "closes").await).expect("JSON");
        let closes = closes.as_array().expect("an array");
        assert!(
            closes.contains(&serde_json::json!([4321, "mine", true])),
            "{closes:?}"
        );
        assert!(
            closes.iter().any(|c| c[0] == 4000 && c[1] == "see you"),
            "{closes:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exception_closes_its_socket_with_1011_and_is_counted() {
    within(60, async {
        let scripts = Scripts::new("throw");
        let source = r#"
export default {
  fetch(request) {
    const { socket, response } = upgradeWebSocket(request);
    socket.onmessage = (event) => {
      if (event.data === "throw") throw new Error("boom");
      socket.send(event.data);
    };
    return response;
  },
};
"#;
        let metrics = free_port();
        let path = scripts.write("handler.js", source);
        let toml = format!(
            "{}\n[control]\nmetrics_listen = \"127.0.0.1:{metrics}\"\n",
            config_toml(1, &js_route("fn", "/fn", &path, &[]))
        );
        let mut proxy = Proxy::start_toml(&toml).await;
        let mut other = common::ws_connect(proxy.addr, "/fn").await;
        let mut ws = common::ws_connect(proxy.addr, "/fn").await;
        assert_eq!(ask(&mut ws, "fine").await, "fine");
        ws.send(Message::text("throw")).await.expect("send");
        assert_eq!(close_of(&mut ws).await.map(|c| c.0), Some(1011));
        proxy
            .wait_log_reason("function_error", Duration::from_secs(5))
            .await;
        // Only that socket: another one of the same function goes on.
        assert_eq!(ask(&mut other, "still here").await, "still here");
        let addr = format!("127.0.0.1:{metrics}").parse().expect("addr");
        let (status, body) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200);
        let errors = metric(&body, "wsedge_function_errors_total{function=\"fn\"}");
        assert_eq!(errors, Some(1.0), "{body}");
        let invocations = metric(&body, "wsedge_function_invocations_total{function=\"fn\"}");
        assert!(invocations.is_some_and(|n| n >= 4.0), "{body}");
        assert_eq!(
            metric(&body, "wsedge_function_sockets{function=\"fn\"}"),
            Some(1.0),
            "{body}"
        );
    })
    .await;
}

/// The value of the sample `name{labels}` in a Prometheus text page.
fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_fire_on_the_worker_clock() {
    within(60, async {
        let scripts = Scripts::new("timers");
        let source = r#"
export default {
  fetch(request) {
    const { socket, response } = upgradeWebSocket(request);
    socket.onmessage = (event) => {
      if (event.data === "ticks") {
        let n = 0;
        const id = setInterval(() => {
          socket.send("tick " + ++n);
          if (n === 3) clearInterval(id);
        }, 30);
        return;
      }
      const cancelled = setTimeout(() => socket.send("never"), 50);
      clearTimeout(cancelled);
      setTimeout(() => socket.send("later " + event.data), 200);
    };
    return response;
  },
};
"#;
        let proxy = start_one(&scripts, 2, source, &[]).await;
        let mut ws = common::ws_connect(proxy.addr, "/fn").await;
        let t0 = Instant::now();
        assert_eq!(ask(&mut ws, "x").await, "later x");
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(190), "{took:?}");
        ws.send(Message::text("ticks")).await.expect("send");
        for n in 1..=3 {
            assert_eq!(next_text(&mut ws).await, format!("tick {n}"));
        }
        // Cleared: nothing more comes.
        let more = tokio::time::timeout(Duration::from_millis(300), next_msg(&mut ws)).await;
        assert!(more.is_err(), "{more:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_websocket_proxies_to_an_origin() {
    within(60, async {
        let origin = EchoOrigin::start().await;
        let scripts = Scripts::new("proxy");
        let source = r#"
export default {
  fetch(request) {
    const { socket, response } = upgradeWebSocket(request);
    const upstream = new WebSocket("ws://ORIGIN/up?from=js");
    const early = [];
    upstream.onopen = () => { for (const m of early) upstream.send(m); early.length = 0; };
    upstream.onmessage = (event) => socket.send(event.data);
    upstream.onclose = () => socket.close(1000, "origin closed");
    socket.onmessage = (event) =>
      upstream.readyState === WebSocket.OPEN ? upstream.send(event.data) : early.push(event.data);
    socket.onclose = () => upstream.close();
    return response;
  },
};
"#
        .replace("ORIGIN", &origin.addr.to_string());
        let proxy = start_one(&scripts, 2, &source, &[]).await;
        let mut ws = common::ws_connect(proxy.addr, "/fn").await;
        for n in [5, 70_000] {
            assert_echo(&mut ws, Message::text(text_payload(n))).await;
            assert_echo(&mut ws, Message::binary(binary_payload(n))).await;
        }
        assert_eq!(origin.accepted(), 1);
        let requests = origin.requests();
        assert_eq!(requests[0].path, "/up?from=js");
        ws.close(None).await.expect("close");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_runs_a_client_with_no_inbound_socket() {
    within(60, async {
        let origin = EchoOrigin::start().await;
        let scripts = Scripts::new("clientless");
        let source = r#"
export default {
  fetch(request) {
    const { socket, response } = upgradeWebSocket(request);
    socket.onopen = () => { socket.subscribe("news"); socket.send("subscribed"); };
    socket.onmessage = (event) => {
      // From a timer: a socket of no connection, with a connection of its own.
      setTimeout(() => {
        const ws = new WebSocket("ws://ORIGIN/feed");
        ws.onopen = () => ws.send("ping " + event.data);
        ws.onmessage = (m) => { channels.publish("news", "origin said " + m.data); ws.close(1000, "done"); };
      }, 0);
    };
    return response;
  },
};
"#
        .replace("ORIGIN", &origin.addr.to_string());
        let mut proxy = start_one(&scripts, 2, &source, &[]).await;
        let mut ws = common::ws_connect(proxy.addr, "/fn").await;
        assert_eq!(next_text(&mut ws).await, "subscribed");
        assert_eq!(ask(&mut ws, "x").await, "origin said ping x");
        assert_eq!(origin.accepted(), 1);
        assert_eq!(origin.requests()[0].path, "/feed");
        // The client-less connection is logged like any other, with no client address.
        let origin_addr = origin.addr.to_string();
        let line = proxy
            .wait_log("of the client-less socket", Duration::from_secs(5), |v| {
                v.get("origin").and_then(Value::as_str) == Some(origin_addr.as_str())
            })
            .await;
        assert_eq!(line["route"], "fn");
        assert_eq!(line["client"], "0.0.0.0:0");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_over_its_memory_cap_closes_only_its_sockets() {
    within(90, async {
        let scripts = Scripts::new("memory");
        let source = r#"
const hog = [];
export default {
  fetch(request) {
    const { socket, response } = upgradeWebSocket(request);
    socket.onmessage = (event) => {
      if (event.data === "grow") {
        for (;;) hog.push(new Array(65536).fill(hog.length + 0.5));
      }
      socket.send(event.data);
    };
    return response;
  },
};
"#;
        let path = scripts.write("handler.js", source);
        let routes = js_route(
            "fn",
            "/fn",
            &path,
            &["memory_limit = 16777216", "cpu_budget = \"10s\""],
        ) + &function_route("plain", "/plain", "echo", &[]);
        // One worker: every socket below shares the function's one runtime.
        let mut proxy = Proxy::start_toml(&config_toml(1, &routes)).await;
        let mut a = common::ws_connect(proxy.addr, "/fn").await;
        let mut b = common::ws_connect(proxy.addr, "/fn").await;
        let mut plain = common::ws_connect(proxy.addr, "/plain").await;
        assert_eq!(ask(&mut a, "ping").await, "ping");
        assert_eq!(ask(&mut b, "ping").await, "ping");
        a.send(Message::text("grow")).await.expect("send");
        assert_eq!(close_of(&mut a).await.map(|c| c.0), Some(1011));
        assert_eq!(close_of(&mut b).await.map(|c| c.0), Some(1011));
        proxy
            .wait_log_reason("function_error", Duration::from_secs(5))
            .await;
        // The worker's other connections are untouched, and the function serves again from
        // a new runtime.
        assert_eq!(ask(&mut plain, "still").await, "still");
        let mut c = common::ws_connect(proxy.addr, "/fn").await;
        assert_eq!(ask(&mut c, "again").await, "again");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_script_is_interrupted_while_the_worker_keeps_serving() {
    within(60, async {
        let scripts = Scripts::new("spin");
        let source = r#"
export default {
  fetch(request) {
    const { socket, response } = upgradeWebSocket(request);
    socket.onmessage = (event) => {
      if (event.data === "spin") for (;;) {}
      socket.send(event.data);
    };
    return response;
  },
};
"#;
        let metrics = free_port();
        let path = scripts.write("handler.js", source);
        let routes = js_route("fn", "/fn", &path, &["cpu_budget = \"200ms\""])
            + &function_route("plain", "/plain", "echo", &[]);
        // One worker: the spinning script and the other connections share its thread.
        let toml = format!(
            "{}\n[control]\nmetrics_listen = \"127.0.0.1:{metrics}\"\n",
            config_toml(1, &routes)
        );
        let proxy = Proxy::start_toml(&toml).await;
        let mut spinner = common::ws_connect(proxy.addr, "/fn").await;
        let mut plain = common::ws_connect(proxy.addr, "/plain").await;
        let mut js = common::ws_connect(proxy.addr, "/fn").await;
        assert_eq!(ask(&mut js, "warm").await, "warm");

        spinner.send(Message::text("spin")).await.expect("send");
        // The other connections wait at most about one budget.
        for i in 0..5 {
            let t0 = Instant::now();
            assert_eq!(ask(&mut plain, &format!("p{i}")).await, format!("p{i}"));
            assert_eq!(ask(&mut js, &format!("j{i}")).await, format!("j{i}"));
            let took = t0.elapsed();
            assert!(
                took < Duration::from_millis(1500),
                "round {i} took {took:?}"
            );
        }
        assert_eq!(close_of(&mut spinner).await.map(|c| c.0), Some(1011));
        let addr = format!("127.0.0.1:{metrics}").parse().expect("addr");
        let (_, body) = http_get(addr, "/metrics").await;
        let interrupts = metric(&body, "wsedge_function_interrupts_total{function=\"fn\"}");
        assert_eq!(interrupts, Some(1.0), "{body}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_reaches_every_subscriber_but_the_sender_and_the_publish_api_reaches_js() {
    within(60, async {
        let scripts = Scripts::new("fanout");
        let source = r#"
export default {
  fetch(request) {
    const { socket, response } = upgradeWebSocket(request);
    socket.onopen = () => { socket.subscribe("lobby"); socket.send("joined"); };
    socket.onmessage = (event) => socket.publish("lobby", event.data);
    return response;
  },
};
"#;
        let publish = free_port();
        let path = scripts.write("handler.js", source);
        let toml = format!(
            "{}\n[functions]\npublish_listen = \"127.0.0.1:{publish}\"\n",
            config_toml(2, &js_route("fn", "/fn", &path, &[]))
        );
        let proxy = Proxy::start_toml(&toml).await;
        let mut clients = Vec::new();
        for _ in 0..6 {
            let mut ws = common::ws_connect(proxy.addr, "/fn").await;
            assert_eq!(next_text(&mut ws).await, "joined");
            clients.push(ws);
        }
        clients[0]
            .send(Message::text("from the first"))
            .await
            .expect("send");
        for ws in &mut clients[1..] {
            assert_eq!(next_text(ws).await, "from the first");
        }
        // The publish API: every subscriber, the first one included (and it never got its
        // own message: this is the next thing it reads).
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", publish))
            .await
            .expect("connect to the publish API");
        let body = "announcement";
        tcp.write_all(
            format!(
                "POST /publish/lobby HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .expect("write");
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.expect("read");
        assert!(answer.contains("{\"delivered\":6}"), "{answer}");
        for ws in &mut clients {
            assert_eq!(next_text(ws).await, "announcement");
        }
    })
    .await;
}

const BROKEN: &str =
    "export default {\n  fetch(request) {\n    return new Response(\"x\";\n  },\n};\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_that_does_not_compile_is_refused_with_its_line() {
    within(60, async {
        let scripts = Scripts::new("broken");
        let bad = scripts.write("bad.js", BROKEN);
        // At start (and with --check): refused, naming the file and line.
        let config = scripts.dir.join("bad.toml");
        std::fs::write(&config, config_toml(1, &js_route("fn", "/fn", &bad, &[]))).expect("write");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsedge"))
            .arg("--check")
            .arg("--config")
            .arg(&config)
            .output()
            .expect("run wsedge --check");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("bad.js:3:"), "{stderr}");
        assert!(stderr.contains("Unexpected token"), "{stderr}");

        // At apply: refused, and the version that served keeps serving.
        let good = scripts.write("good.js", ECHO);
        let socket = scripts.dir.join("control.sock");
        let with_control = |script: &Path| {
            format!(
                "{}\n[control]\nsocket = {:?}\n",
                config_toml(1, &js_route("fn", "/fn", script, &[])),
                socket.display().to_string()
            )
        };
        let proxy = Proxy::start_toml(&with_control(&good)).await;
        let mut ws = common::ws_connect(proxy.addr, "/fn").await;
        assert_eq!(ask(&mut ws, "one").await, "one");
        let toml = with_control(&bad);
        let answer = tokio::task::spawn_blocking(move || {
            use wsedge_command::wire::{Client, Request};
            let mut client = Client::connect(&socket, Duration::from_secs(10)).expect("connect");
            client
                .call(&Request::ApplyConfig { toml, source: None })
                .expect("call")
        })
        .await
        .expect("join");
        let text = format!("{answer:?}");
        assert!(text.contains("InvalidConfig"), "{text}");
        assert!(text.contains("bad.js:3:"), "{text}");
        assert_eq!(ask(&mut ws, "two").await, "two");
        let mut fresh = common::ws_connect(proxy.addr, "/fn").await;
        assert_eq!(ask(&mut fresh, "three").await, "three");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_goes_to_the_dataplane_log_with_the_function_name() {
    within(60, async {
        let scripts = Scripts::new("console");
        let source = r#"
console.info("module loaded on worker", wsedge.worker);
export default {
  fetch(request) {
    const { socket, response } = upgradeWebSocket(request);
    socket.onmessage = (event) => {
      console.warn("got", event.data, { n: 1 });
      socket.send("logged");
    };
    return response;
  },
};
"#;
        let path = scripts.write("handler.js", source);
        let config = scripts.dir.join("console.toml");
        std::fs::write(
            &config,
            config_toml(1, &js_route("talky", "/fn", &path, &[])),
        )
        .expect("write config");
        // Spawned here (not through Proxy) to read its log on stderr.
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wsedge"))
            .arg("--config")
            .arg(&config)
            .env("WSEDGE_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn wsedge");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[wsedge stderr] {line}");
                // The log is coloured even into a pipe: compare the text without escapes.
                let _ = tx.send(strip_ansi(&line));
            }
        });
        let mut seen = Vec::new();
        wait_line(&mut lines, &mut seen, |l| l.starts_with("wsedge: ready")).await;
        let loaded = seen
            .iter()
            .find(|l| l.contains("module loaded on worker"))
            .cloned()
            .unwrap_or_else(|| panic!("no console line from the module: {seen:#?}"));
        assert!(loaded.contains("function=talky"), "{loaded}");
        assert!(loaded.contains("INFO"), "{loaded}");
        // Once per worker: the scratch runtime the script was checked in logs nothing.
        let count = seen.iter().filter(|l| l.contains("module loaded")).count();
        assert_eq!(count, 1, "{seen:#?}");
        let addr: std::net::SocketAddr = seen
            .iter()
            .find_map(|l| l.strip_prefix("wsedge: listening on "))
            .and_then(|a| a.split_whitespace().next()?.parse().ok())
            .expect("a listening line");
        let mut ws = common::ws_connect(addr, "/fn").await;
        assert_eq!(ask(&mut ws, "hello").await, "logged");
        let warned = wait_line(&mut lines, &mut seen, |l| l.contains("got hello")).await;
        assert!(warned.contains("WARN"), "{warned}");
        assert!(warned.contains("function=talky"), "{warned}");
        let _ = child.kill();
        let _ = child.wait();
    })
    .await;
}

/// The next line of `lines` that `pred` accepts; every line read is kept in `seen`.
async fn wait_line(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: &mut Vec<String>,
    pred: impl Fn(&str) -> bool,
) -> String {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.recv())
            .await
            .unwrap_or_else(|_| panic!("no such log line; seen: {seen:#?}"))
            .expect("wsedge exited");
        seen.push(line.clone());
        if pred(&line) {
            return line;
        }
    }
}
