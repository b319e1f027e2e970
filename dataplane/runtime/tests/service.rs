//! Running under systemd (`Type=notify`, `WatchdogSec=`), with the real binaries and a test
//! socket in the service manager's place: `wsedge` and `wsedgectl daemon` send `READY=1` once
//! they serve, `WATCHDOG=1` pings while healthy (the dataplane's only after every worker
//! answered a report), and `STOPPING=1` on SIGTERM; without `$NOTIFY_SOCKET` they send
//! nothing and start as usual (every other test).

mod common;
#[allow(dead_code)] // shared helpers; this file uses some of them
mod control_support;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Config, Route, dead_addr};
use control_support::{ControlDir, wsedgectl};

/// Kills the child on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The datagrams received within `within`, until `enough` says stop.
fn collect(
    socket: &UnixDatagram,
    within: Duration,
    enough: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !enough(&got) {
        socket
            .set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(10)),
            ))
            .expect("timeout");
        if let Ok(n) = socket.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    got
}

fn spawn(program: &Path, args: &[&str], notify: &Path, watchdog_usec: &str) -> Guard {
    let mut child = Command::new(program)
        .args(args)
        .env("NOTIFY_SOCKET", notify)
        .env("WATCHDOG_USEC", watchdog_usec)
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[child] {line}");
        }
    });
    Guard(child)
}

#[test]
fn both_services_notify_ready_ping_the_watchdog_and_say_stopping() {
    let dir = ControlDir::new("notify");
    let config = Config::new()
        .workers(2)
        .route(Route::new("main", &[dead_addr()]));
    let toml = dir.toml(&config, "");
    std::fs::write(&dir.daemon_config, &toml).expect("write config");
    let config_arg = dir.daemon_config.display().to_string();

    // The dataplane: READY=1, then pings every half interval (0.4 s here).
    let dp_notify = dir.dir.join("dp-notify.sock");
    let dp_socket = UnixDatagram::bind(&dp_notify).expect("bind");
    let mut dp = spawn(
        Path::new(env!("CARGO_BIN_EXE_wsedge")),
        &["--config", &config_arg],
        &dp_notify,
        "800000",
    );
    let got = collect(&dp_socket, Duration::from_secs(20), |g| {
        g.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3
    });
    assert!(
        got.first()
            .is_some_and(|m| m.starts_with("READY=1\nSTATUS=serving with 2 workers")),
        "READY=1 first: {got:?}"
    );
    assert!(
        got.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3,
        "{got:?}"
    );

    // The control process: READY=1 once it serves the CLI, then pings from its sync loop.
    let ctl_notify = dir.dir.join("ctl-notify.sock");
    let ctl_socket = UnixDatagram::bind(&ctl_notify).expect("bind");
    let _daemon = spawn(
        &wsedgectl(),
        &["daemon", "--config", &config_arg],
        &ctl_notify,
        "2000000",
    );
    let got = collect(&ctl_socket, Duration::from_secs(20), |g| {
        g.iter().any(|m| m == "WATCHDOG=1")
    });
    assert!(
        got.first().is_some_and(|m| m.starts_with("READY=1")),
        "READY=1 first: {got:?}"
    );
    assert!(got.iter().any(|m| m == "WATCHDOG=1"), "{got:?}");

    // SIGTERM: the dataplane says STOPPING=1 before it drains and exits.
    let pid = dp.0.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let got = collect(&dp_socket, Duration::from_secs(10), |g| {
        g.iter().any(|m| m == "STOPPING=1")
    });
    assert!(got.iter().any(|m| m == "STOPPING=1"), "{got:?}");
    let status = dp.0.wait().expect("wait");
    assert!(status.success(), "{status:?}");
}
