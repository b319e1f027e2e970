//! Support for the control-plane integration tests: a temp directory with the sockets and
//! state file, the `wsedgectl daemon` process, the `wsedgectl` CLI, and a raw client for the
//! wire protocol.
//!
//! `wsedgectl` is another package's binary: it is found next to `wsedge` in the target
//! directory, so run these tests with `cargo test --workspace` (or build `wsedgectl` first).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::common::{Config, Proxy};

/// The `wsedgectl` binary built beside `wsedge`.
pub(crate) fn wsedgectl() -> PathBuf {
    let wsedge = Path::new(env!("CARGO_BIN_EXE_wsedge"));
    let path = wsedge.with_file_name("wsedgectl");
    assert!(
        path.exists(),
        "{} is missing: run these tests with `cargo test --workspace`, or `cargo build -p wsedgectl` first",
        path.display()
    );
    path
}

/// A directory for one test's sockets, config files and state, removed on drop.
#[derive(Debug)]
pub(crate) struct ControlDir {
    pub(crate) dir: PathBuf,
    pub(crate) dataplane_socket: PathBuf,
    pub(crate) daemon_socket: PathBuf,
    pub(crate) state_file: PathBuf,
    pub(crate) daemon_config: PathBuf,
}

impl Drop for ControlDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl ControlDir {
    pub(crate) fn new(name: &str) -> ControlDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wsedge-ctl-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        ControlDir {
            dataplane_socket: dir.join("dataplane.sock"),
            daemon_socket: dir.join("control.sock"),
            state_file: dir.join("state").join("applied.toml"),
            daemon_config: dir.join("wsedge.toml"),
            dir,
        }
    }

    /// `config` with a `[control]` table pointing into this directory; `extra` lines are
    /// added to that table.
    pub(crate) fn toml(&self, config: &Config, extra: &str) -> String {
        format!("{}\n{}", config.to_toml(), self.control_table(extra))
    }

    /// The `[control]` table pointing into this directory, with `extra` lines (for a
    /// configuration not written by [`Config`]).
    pub(crate) fn control_table(&self, extra: &str) -> String {
        format!(
            "[control]\nsocket = {:?}\ndaemon_socket = {:?}\nstate_file = {:?}\n{extra}",
            self.dataplane_socket.display().to_string(),
            self.daemon_socket.display().to_string(),
            self.state_file.display().to_string(),
        )
    }

    /// Starts the dataplane with `toml` and writes the same text as the daemon's file.
    pub(crate) async fn start_dataplane(&self, toml: &str) -> Proxy {
        std::fs::write(&self.daemon_config, toml).expect("write daemon config");
        Proxy::start_toml(toml).await
    }

    /// Runs `wsedgectl` against the daemon socket.
    pub(crate) async fn ctl(&self, args: &[&str]) -> CtlOut {
        let mut full = vec![
            "--socket".to_owned(),
            self.daemon_socket.display().to_string(),
        ];
        full.extend(args.iter().map(|s| s.to_string()));
        run_ctl(&full, None).await
    }

    /// Runs `wsedgectl --dataplane SOCKET` (no daemon involved).
    pub(crate) async fn ctl_direct(&self, args: &[&str]) -> CtlOut {
        let mut full = vec![
            "--dataplane".to_owned(),
            self.dataplane_socket.display().to_string(),
        ];
        full.extend(args.iter().map(|s| s.to_string()));
        run_ctl(&full, None).await
    }
}

/// What a CLI run printed and how it exited.
#[derive(Debug)]
pub(crate) struct CtlOut {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl CtlOut {
    /// Asserts success and returns stdout.
    pub(crate) fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "wsedgectl failed: {self:#?}");
        &self.stdout
    }

    /// Asserts success and parses stdout as JSON.
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("not JSON ({e}): {self:#?}"))
    }
}

/// Runs the CLI with `args`, as `uid` when given.
pub(crate) async fn run_ctl(args: &[String], uid: Option<u32>) -> CtlOut {
    let mut cmd = tokio::process::Command::new(wsedgectl());
    cmd.args(args)
        .stdin(Stdio::null())
        .env("WSEDGECTL_LOG", "warn");
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("wsedgectl did not finish within 30 s")
        .expect("run wsedgectl");
    CtlOut {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A running `wsedgectl daemon`, killed on drop.
#[derive(Debug)]
pub(crate) struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Starts the daemon on `dir`'s config file and waits for `ready`.
    pub(crate) async fn start(dir: &ControlDir) -> Daemon {
        let mut child = Command::new(wsedgectl())
            .arg("daemon")
            .arg("--config")
            .arg(&dir.daemon_config)
            .env("WSEDGECTL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wsedgectl daemon");
        let (tx, mut lines) = mpsc::unbounded_channel();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[daemon] {line}");
                let _ = tx.send(line);
            }
        });
        let ready = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.recv().await {
                if line.contains("wsedgectl daemon: ready") {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(ready, Ok(true), "daemon not ready");
        Daemon { child }
    }

    /// SIGKILL: the control process dies without any cleanup.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `wsedgectl status --json` until `pred` holds; panics with the last status after
/// `timeout`.
pub(crate) async fn wait_status(
    dir: &ControlDir,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let out = dir.ctl(&["--json", "status"]).await;
        if out.code == 0
            && let Ok(v) = serde_json::from_str::<Value>(&out.stdout)
            && pred(&v)
        {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("status never showed {what} within {timeout:?}; last: {out:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The configuration version every worker of a status runs, if they agree.
pub(crate) fn workers_version(status: &Value) -> Option<u64> {
    let workers = status["dataplane"]["workers"].as_array()?;
    let first = workers.first()?["config_version"].as_u64()?;
    workers
        .iter()
        .all(|w| w["config_version"].as_u64() == Some(first))
        .then_some(first)
}

/// Writes raw bytes to a control socket and reads what comes back until EOF or `timeout`:
/// the decoded response bodies, and whether the server closed the connection.
pub(crate) fn raw_exchange(socket: &Path, bytes: &[u8], timeout: Duration) -> (Vec<Value>, bool) {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    stream.set_read_timeout(Some(timeout)).expect("timeout");
    stream.write_all(bytes).expect("write");
    let mut got = Vec::new();
    let mut closed = false;
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // Closing with our bytes unread makes the kernel reset instead of EOF.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                closed = true;
                break;
            }
            Err(_) => break,
        }
    }
    let mut responses = Vec::new();
    let mut rest = &got[..];
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if rest.len() < 4 + len {
            break;
        }
        let v: Value = serde_json::from_slice(&rest[4..4 + len]).expect("response is JSON");
        responses.push(v["body"].clone());
        rest = &rest[4 + len..];
    }
    (responses, closed)
}

/// One frame: length prefix and body.
pub(crate) fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}
