//! JavaScript functions and the control plane, with real processes: `wsedgectl functions
//! deploy` replaces a function's code live (live sockets finish on the old version, new ones
//! get the new one, nothing is dropped; through the daemon the deploy is persisted and
//! survives a dataplane restart), `functions list` shows each function's version, sockets and
//! counters, and code that does not compile is refused with its line while the old code
//! serves. Needs the `wsedgectl` binary: run with `cargo test --workspace`.

mod common;
#[allow(dead_code)] // shared helpers; this file uses some of them
mod control_support;
mod functions_support;
mod js_support;

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use common::{Proxy, within, ws_connect};
use control_support::{ControlDir, Daemon, wait_status};
use functions_support::{config_toml, function_route};
use js_support::{Scripts, ask, close_of, js_route};

/// A function that answers every message with `<tag>:<message>`.
fn tagged(tag: &str) -> String {
    format!(
        "export default {{\n  fetch(request) {{\n    const {{ socket, response }} = upgradeWebSocket(request);\n    socket.onmessage = (e) => {{ if (e.data === \"throw\") throw new Error(\"boom\"); socket.send(\"{tag}:\" + e.data); }};\n    return response;\n  }},\n}};\n"
    )
}

/// `routes` with a `[control]` table pointing into `dir`.
fn control_toml(dir: &ControlDir, routes: &str) -> String {
    format!(
        "{}\n[control]\nsocket = {:?}\ndaemon_socket = {:?}\nstate_file = {:?}\n",
        config_toml(2, routes),
        dir.dataplane_socket.display().to_string(),
        dir.daemon_socket.display().to_string(),
        dir.state_file.display().to_string(),
    )
}

fn path_text(p: &std::path::Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_is_live_keeps_live_sockets_and_outlives_a_restart() {
    within(90, async {
        let dir = ControlDir::new("jsdeploy");
        let scripts = Scripts::new("deploy");
        let v1 = scripts.write("v1.js", &tagged("v1"));
        let v2 = scripts.write("v2.js", &tagged("v2"));
        let toml = control_toml(&dir, &js_route("fn", "/fn", &v1, &[]));
        let proxy = dir.start_dataplane(&toml).await;
        let _daemon = Daemon::start(&dir).await;
        let mut old: Vec<_> = Vec::new();
        for _ in 0..4 {
            let mut ws = ws_connect(proxy.addr, "/fn").await;
            assert_eq!(ask(&mut ws, "a").await, "v1:a");
            old.push(ws);
        }

        let out = dir
            .ctl(&["functions", "deploy", "fn", &path_text(&v2)])
            .await;
        assert!(out.ok().contains("applied config version"), "{out:#?}");
        // Live sockets finish on the version they started on; new ones get the new code.
        for ws in &mut old {
            assert_eq!(ask(ws, "b").await, "v1:b");
        }
        let mut new = ws_connect(proxy.addr, "/fn").await;
        assert_eq!(ask(&mut new, "c").await, "v2:c");
        let list = dir.ctl(&["--json", "functions", "list"]).await.json();
        let row = &list["functions"][0];
        assert_eq!(row["name"], "fn", "{list:#}");
        assert_eq!(row["version"], 2, "{list:#}");
        assert_eq!(row["sockets"], 5, "{list:#}");
        // Persisted by the daemon: the route's script in its state file.
        let state = std::fs::read_to_string(&dir.state_file).expect("state file");
        assert!(state.contains(&path_text(&v2)), "{state}");
        for ws in &mut old {
            assert_eq!(ask(ws, "d").await, "v1:d");
            ws.close(None).await.expect("close");
        }

        // The dataplane restarts from its file (v1): the daemon pushes the deploy back.
        drop(old);
        drop(new);
        drop(proxy);
        let proxy = Proxy::start_toml(&toml).await;
        wait_status(&dir, "re-synced", Duration::from_secs(15), |s| {
            s["daemon"]["in_sync"] == Value::Bool(true)
                && s["dataplane"]["config_version"].as_u64() >= Some(1)
        })
        .await;
        let mut after = ws_connect(proxy.addr, "/fn").await;
        assert_eq!(ask(&mut after, "e").await, "v2:e");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_list_shows_versions_sockets_and_errors() {
    within(60, async {
        let dir = ControlDir::new("jslist");
        let scripts = Scripts::new("list");
        let a = scripts.write("a.js", &tagged("a"));
        let b = scripts.write("b.js", &tagged("b"));
        let routes = js_route("alpha", "/a", &a, &[])
            + &js_route("beta", "/b", &b, &[])
            + &function_route("plain", "/p", "echo", &[]);
        let proxy = Proxy::start_toml(&control_toml(&dir, &routes)).await;
        let mut sockets = Vec::new();
        for _ in 0..3 {
            let mut ws = ws_connect(proxy.addr, "/a").await;
            assert_eq!(ask(&mut ws, "x").await, "a:x");
            sockets.push(ws);
        }
        let mut failing = ws_connect(proxy.addr, "/b").await;
        failing.send(Message::text("throw")).await.expect("send");
        assert_eq!(close_of(&mut failing).await.map(|c| c.0), Some(1011));
        js_support::drain(&mut failing).await;

        let list = dir
            .ctl_direct(&["--json", "functions", "list"])
            .await
            .json();
        let rows = list["functions"].as_array().expect("rows");
        assert_eq!(rows.len(), 2, "{list:#}");
        let (alpha, beta) = (&rows[0], &rows[1]);
        assert_eq!(
            (alpha["name"].as_str(), beta["name"].as_str()),
            (Some("alpha"), Some("beta"))
        );
        assert_eq!(alpha["version"], 1);
        assert_eq!(alpha["sockets"], 3, "{list:#}");
        assert_eq!(alpha["errors"], 0, "{list:#}");
        assert!(alpha["invocations"].as_u64() >= Some(6), "{list:#}");
        assert!(alpha["memory_bytes"].as_u64() > Some(0), "{list:#}");
        assert_eq!(beta["errors"], 1, "{list:#}");
        assert_eq!(beta["sockets"], 0, "{list:#}");

        let table = dir.ctl_direct(&["functions", "list"]).await;
        let text = table.ok();
        assert!(text.starts_with("FUNCTION"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("alpha")), "{text}");
        // The same rows ride along with the stats.
        let stats = dir.ctl_direct(&["--json", "stats"]).await.json();
        assert_eq!(
            stats["functions"],
            list["functions"].clone().take_sockets_off(&stats)
        );
    })
    .await;
}

/// Helper so the stats comparison tolerates counters that moved between the two requests:
/// compares names and versions only.
trait NamesOnly {
    fn take_sockets_off(self, stats: &Value) -> Value;
}

impl NamesOnly for Value {
    fn take_sockets_off(self, stats: &Value) -> Value {
        let names = |v: &Value| -> Vec<(String, u64)> {
            v.as_array()
                .map(|rows| {
                    rows.iter()
                        .map(|r| {
                            (
                                r["name"].as_str().unwrap_or_default().to_owned(),
                                r["version"].as_u64().unwrap_or_default(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        if names(&self) == names(&stats["functions"]) {
            stats["functions"].clone()
        } else {
            self
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_that_does_not_compile_is_refused_and_the_old_code_serves() {
    within(60, async {
        let dir = ControlDir::new("jsbad");
        let scripts = Scripts::new("bad");
        let good = scripts.write("good.js", &tagged("good"));
        let bad = scripts.write(
            "bad.js",
            "export default {\n  fetch(request) {\n    return new Response(\"x\";\n  },\n};\n",
        );
        let routes =
            js_route("fn", "/fn", &good, &[]) + &function_route("plain", "/p", "echo", &[]);
        let proxy = Proxy::start_toml(&control_toml(&dir, &routes)).await;
        let mut live = ws_connect(proxy.addr, "/fn").await;
        assert_eq!(ask(&mut live, "1").await, "good:1");

        let out = dir
            .ctl_direct(&["functions", "deploy", "fn", &path_text(&bad)])
            .await;
        // An invalid configuration: exit code 2, the module's file and line.
        assert_eq!(out.code, 2, "{out:#?}");
        assert!(out.stderr.contains("bad.js:3:"), "{out:#?}");
        // Not a js route, no such route, no such file: refused too.
        let out = dir
            .ctl_direct(&["functions", "deploy", "plain", &path_text(&good)])
            .await;
        assert_eq!(out.code, 1, "{out:#?}");
        assert!(out.stderr.contains("not a JavaScript function"), "{out:#?}");
        let out = dir
            .ctl_direct(&["functions", "deploy", "nope", &path_text(&good)])
            .await;
        assert_eq!(out.code, 1, "{out:#?}");
        assert!(out.stderr.contains("no route"), "{out:#?}");
        let missing = scripts.dir.join("missing.js");
        let out = dir
            .ctl_direct(&["functions", "deploy", "fn", &path_text(&missing)])
            .await;
        assert_eq!(out.code, 2, "{out:#?}");

        // The old code serves the live socket and new ones, still as version 1.
        assert_eq!(ask(&mut live, "2").await, "good:2");
        let mut fresh = ws_connect(proxy.addr, "/fn").await;
        assert_eq!(ask(&mut fresh, "3").await, "good:3");
        let list = dir
            .ctl_direct(&["--json", "functions", "list"])
            .await
            .json();
        assert_eq!(list["functions"][0]["version"], 1, "{list:#}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wsedgectl_publish_and_presence_reach_js_subscribers() {
    within(60, async {
        let dir = ControlDir::new("jspublish");
        let scripts = Scripts::new("publish");
        let source = r#"
export default {
  fetch(request) {
    const { socket, response } = upgradeWebSocket(request);
    socket.onopen = () => { socket.subscribe("news"); socket.send("in"); };
    return response;
  },
};
"#;
        let path = scripts.write("news.js", source);
        let proxy =
            Proxy::start_toml(&control_toml(&dir, &js_route("fn", "/fn", &path, &[]))).await;
        let mut clients = Vec::new();
        for _ in 0..4 {
            let mut ws = ws_connect(proxy.addr, "/fn").await;
            assert_eq!(js_support::next_text(&mut ws).await, "in");
            clients.push(ws);
        }
        let presence = dir.ctl_direct(&["--json", "presence", "news"]).await.json();
        assert_eq!(presence["subscribers"], 4, "{presence:#}");
        let published = dir
            .ctl_direct(&["--json", "publish", "news", "extra! extra!"])
            .await
            .json();
        assert_eq!(published["delivered"], 4, "{published:#}");
        for ws in &mut clients {
            assert_eq!(js_support::next_text(ws).await, "extra! extra!");
        }
    })
    .await;
}
