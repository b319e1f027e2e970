//! The control process's status page in a real browser: headless Chromium (Debian's
//! `chromium`, installed by `.ci/run`) loads the page from `wsedgectl daemon`, driven over the
//! DevTools protocol with tokio-tungstenite. The test checks the live numbers appear (3 live
//! connections on route `main`, messages flowing), that they update in place when 2 more
//! clients connect (same document, more refreshes), and saves a screenshot as
//! `target/status-page.png`.
//!
//! Chromium is looked up as `chromium` on PATH (or `$WSEDGE_TEST_CHROMIUM`); a machine without
//! it fails this test with a message saying so.

mod common;
#[allow(dead_code)] // shared helpers; this file uses some of them
mod control_support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use common::origins::EchoOrigin;
use common::{Config, Route, Ws, within, ws_connect};
use control_support::{ControlDir, Daemon};

/// Kills the browser on drop and removes its profile.
struct Browser {
    child: Child,
    profile: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Starts headless Chromium with remote debugging; its browser-level DevTools URL.
fn start_browser(profile: PathBuf) -> (Browser, String) {
    let bin = std::env::var("WSEDGE_TEST_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
    let mut child = Command::new(&bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {bin:?} ({e}): this test needs Chromium (Debian: apt-get install chromium; .ci/run installs it)")
        });
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                let _ = tx.send(url.trim().to_owned());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("Chromium printed no DevTools URL within 30 s");
    (Browser { child, profile }, url)
}

/// A DevTools protocol session on one page (flattened target session).
struct Page {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    session: String,
    next_id: u64,
}

impl Page {
    async fn open(browser_url: &str, url: &str) -> Page {
        let (ws, _) = tokio_tungstenite::connect_async(browser_url)
            .await
            .expect("connect to DevTools");
        let mut page = Page {
            ws,
            session: String::new(),
            next_id: 1,
        };
        let target = page
            .call(None, "Target.createTarget", json!({ "url": url }))
            .await;
        let target_id = target["targetId"].as_str().expect("targetId").to_owned();
        let attached = page
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await;
        page.session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_owned();
        page
    }

    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            message["sessionId"] = Value::String(s.to_owned());
        }
        self.ws
            .send(Message::text(message.to_string()))
            .await
            .expect("send to DevTools");
        loop {
            let reply = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .expect("DevTools answer within 20 s")
                .expect("DevTools stream open")
                .expect("DevTools message");
            let Message::Text(text) = reply else { continue };
            let v: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page; its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let session = self.session.clone();
        let r = self
            .call(
                Some(&session),
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Polls `expression` until `pred` holds on its value.
    async fn wait_for(
        &mut self,
        what: &str,
        expression: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.eval(expression).await;
            if pred(&v) {
                return v;
            }
            if tokio::time::Instant::now() >= deadline {
                let body = self.eval("document.body.innerText").await;
                panic!(
                    "the page never showed {what}; last value {v}; page text:\n{}",
                    body.as_str().unwrap_or("")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Sends a message every 50 ms and reads its echo, until told to stop.
async fn chatter(mut ws: Ws, mut stop: watch::Receiver<bool>) {
    let mut n = 0u64;
    while !*stop.borrow() {
        if ws.send(Message::text(format!("m{n}"))).await.is_err() {
            return;
        }
        let _ = ws.next().await;
        n += 1;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = stop.changed() => {}
        }
    }
    let _ = ws.close(None).await;
}

fn number(v: &Value) -> f64 {
    v.as_str()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_page_shows_live_numbers_and_updates_in_place() {
    within(120, async {
        let origin = EchoOrigin::start().await;
        let dir = ControlDir::new("page");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        // A watched pool with a dead origin: the page shows it down, the live one up.
        let dead = common::dead_addr();
        let config = Config::new().workers(2).route(
            Route::new("main", &[origin.addr, dead])
                .relay("frames")
                .option(
                    "health",
                    "{ check = \"tcp\", interval = \"200ms\", timeout = \"100ms\", fall = 1 }",
                ),
        );
        let toml = dir.toml(&config, &format!("status_listen = \"127.0.0.1:{port}\""));
        let proxy = dir.start_dataplane(&toml).await;
        let _daemon = Daemon::start(&dir).await;

        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let ws = ws_connect(proxy.addr, "/").await;
            tasks.push(tokio::spawn(chatter(ws, stop_rx.clone())));
        }

        let (_browser, devtools) = start_browser(dir.dir.join("chromium-profile"));
        let mut page = Page::open(&devtools, &format!("http://127.0.0.1:{port}/?refresh=300")).await;

        // The live numbers appear: 3 connections, all on route main, messages flowing.
        page.wait_for("3 live connections", "document.getElementById('live-total').textContent", |v| number(v) == 3.0)
            .await;
        page.wait_for(
            "route main with 3 live",
            "[...document.querySelectorAll('#routes tbody tr')].map(r => r.children[0].textContent + '=' + r.children[1].textContent).join(',')",
            |v| v.as_str() == Some("main=3"),
        )
        .await;
        page.wait_for(
            "a message rate above 0",
            "document.getElementById('msg-rate').textContent",
            |v| v.as_str().and_then(|s| s.split(" / ").next()).and_then(|n| n.trim_end_matches(['k', 'M']).parse::<f64>().ok()).is_some_and(|n| n > 0.0),
        )
        .await;
        let text = page.eval("document.getElementById('dataplane').textContent").await;
        assert!(text.as_str().is_some_and(|t| t.contains("config version ")), "{text}");
        let history = page.eval("document.querySelector('#history tbody').innerText").await;
        assert!(
            history.as_str().is_some_and(|t| t.contains("desired at start")),
            "{history}"
        );
        page.wait_for(
            "the dead origin down",
            "document.getElementById('origin-health').textContent",
            |v| v.as_str() == Some("1 of 2 watched origins down"),
        )
        .await;
        let states = page
            .eval("[...document.querySelectorAll('#origins tbody tr')].map(r => r.children[1].textContent + '=' + r.children[2].textContent).join(',')")
            .await;
        assert_eq!(
            states.as_str(),
            Some(format!("{}=up,{dead}=down", origin.addr).as_str()),
            "{states}"
        );

        // Two more clients: the same document updates in place.
        page.eval("window.__sameDocument = 'yes'").await;
        let before = number(&page.eval("document.getElementById('refreshes').textContent").await);
        for _ in 0..2 {
            let ws = ws_connect(proxy.addr, "/").await;
            tasks.push(tokio::spawn(chatter(ws, stop_rx.clone())));
        }
        page.wait_for("5 live connections", "document.getElementById('live-total').textContent", |v| number(v) == 5.0)
            .await;
        page.wait_for(
            "route main with 5 live",
            "[...document.querySelectorAll('#routes tbody tr')].map(r => r.children[1].textContent).join(',')",
            |v| v.as_str() == Some("5"),
        )
        .await;
        assert_eq!(page.eval("window.__sameDocument").await, "yes", "the page was not reloaded");
        let after = number(&page.eval("document.getElementById('refreshes').textContent").await);
        assert!(after > before && before >= 1.0, "refreshes {before} -> {after}");

        // The screenshot, for a person to look at.
        let session = page.session.clone();
        let shot = page
            .call(Some(&session), "Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("png data"))
            .expect("base64");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .map(|t| t.join("status-page.png"))
            .expect("target dir");
        std::fs::write(&path, &png).expect("write screenshot");
        eprintln!("screenshot: {}", path.display());

        stop_tx.send(true).expect("stop");
        for t in tasks {
            let _ = t.await;
        }
    })
    .await;
}
