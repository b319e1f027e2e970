//! Helpers for the fault-injection suite (`tests/faults.rs`), on top of `tests/common`:
//!
//! - [`ProcStats`]: a dataplane's descriptor count, RSS and CPU time from `/proc/PID`.
//! - [`ScriptOrigin`]: a raw-TCP origin that answers the upgrade with a valid 101 and then runs
//!   a per-connection script (reset, close mid-message, reply after EOF...).
//! - [`LoggedProxy`]: the real binary started like `common::Proxy`, but keeping its stderr
//!   (the fd-exhaustion tests look for the dataplane's warnings there).
//! - [`set_nofile`]: lowers or raises a running process's RLIMIT_NOFILE with `prlimit(1)`.
#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use crate::common::raw::{Head, accept_for, head_end};
use crate::common::{Config, Ws, assert_echo};
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------------

/// What a process holds, read from `/proc/PID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStats {
    pub(crate) fds: usize,
    pub(crate) rss_kib: u64,
    /// utime + stime, in clock ticks (USER_HZ, 100 per second on Linux).
    pub(crate) cpu_ticks: u64,
}

impl ProcStats {
    pub(crate) fn read(pid: u32) -> ProcStats {
        ProcStats {
            fds: fd_count(pid),
            rss_kib: rss_kib(pid),
            cpu_ticks: cpu_ticks(pid),
        }
    }
}

pub(crate) fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/fd: {e} (did the dataplane die?)"))
        .count()
}

pub(crate) fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// utime + stime of the whole process (all threads), fields 14 and 15 of `/proc/PID/stat`.
pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field N is fields[N - 3].
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    utime + stime
}

/// Waits until the process holds exactly `want` descriptors; returns the last count seen.
pub(crate) async fn settle_fds(pid: u32, want: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let n = fd_count(pid);
        if n == want || Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the descriptor count has not changed for `quiet`; returns it.
pub(crate) async fn stable_fds(pid: u32, quiet: Duration) -> usize {
    let mut last = fd_count(pid);
    let mut since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let n = fd_count(pid);
        if n != last {
            last = n;
            since = Instant::now();
        } else if since.elapsed() >= quiet || Instant::now() >= deadline {
            return n;
        }
    }
}

/// RSS growth allowed after a fault: the relay's buffer ring is touched lazily (up to
/// `buffer_count x buffer_size` per worker), so RSS may grow by what a burst needed once.
pub(crate) const RSS_MARGIN_KIB: u64 = 32 * 1024;

/// The checks every fault test ends with: the process is alive, its descriptor count is back
/// to `base.fds` exactly, its RSS is within [`RSS_MARGIN_KIB`] of `base`, and `live` (opened
/// before the fault) still echoes. Returns the stats after the fault.
pub(crate) async fn assert_recovered(pid: u32, base: &ProcStats, live: &mut Ws) -> ProcStats {
    let fds = settle_fds(pid, base.fds, Duration::from_secs(10)).await;
    assert_eq!(
        fds, base.fds,
        "descriptors not back to the baseline 10 s after the fault ({} before)",
        base.fds
    );
    let now = ProcStats::read(pid);
    assert!(
        now.rss_kib <= base.rss_kib + RSS_MARGIN_KIB,
        "RSS grew from {} KiB to {} KiB",
        base.rss_kib,
        now.rss_kib
    );
    assert_echo(live, Message::text("still alive after the fault")).await;
    assert_echo(live, Message::binary(vec![7u8; 70_000])).await;
    eprintln!(
        "[faults] recovered: fds {} -> {}, rss {} -> {} KiB",
        base.fds, now.fds, base.rss_kib, now.rss_kib
    );
    now
}

// ---------------------------------------------------------------------------------------------
// Clients from other loopback addresses
// ---------------------------------------------------------------------------------------------

/// A TCP connection to `addr` from `source` (any 127.0.0.0/8 address works without setup).
pub(crate) async fn connect_from(source: std::net::Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::from((source, 0)))
        .expect("bind source");
    sock.connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr} from {source}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Scripted origins
// ---------------------------------------------------------------------------------------------

type Script =
    Arc<dyn Fn(TcpStream, Head, Vec<u8>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A raw-TCP origin: reads the request head, answers a valid 101 and hands the socket, the
/// head and any bytes read after the head to its script.
#[derive(Debug)]
pub(crate) struct ScriptOrigin {
    pub(crate) addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for ScriptOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScriptOrigin {
    pub(crate) async fn start<F, Fut>(script: F) -> ScriptOrigin
    where
        F: Fn(TcpStream, Head, Vec<u8>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let script: Script = Arc::new(move |tcp, head, rest| Box::pin(script(tcp, head, rest)));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let script = script.clone();
                tokio::spawn(async move {
                    if let Some((tcp, head, rest)) = upgrade(tcp).await {
                        script(tcp, head, rest).await;
                    }
                });
            }
        });
        ScriptOrigin { addr, task }
    }
}

/// Reads a request head and answers it with a valid 101.
async fn upgrade(mut tcp: TcpStream) -> Option<(TcpStream, Head, Vec<u8>)> {
    use tokio::io::AsyncWriteExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let end = loop {
        if let Some(end) = head_end(&buf) {
            break end;
        }
        match tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    };
    let head = Head::parse(&buf[..end]);
    let rest = buf.split_off(end);
    let key = head.get("sec-websocket-key").unwrap_or("").to_string();
    let reply = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_for(&key)
    );
    tcp.write_all(reply.as_bytes()).await.ok()?;
    Some((tcp, head, rest))
}

/// Reads until `total` bytes (counting `already`) have arrived or the peer closes; returns
/// how many arrived.
pub(crate) async fn read_at_least(tcp: &mut TcpStream, already: usize, total: usize) -> usize {
    let mut got = already;
    let mut chunk = vec![0u8; 65536];
    while got < total {
        match tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => got += n,
            _ => break,
        }
    }
    got
}

// ---------------------------------------------------------------------------------------------
// A proxy whose stderr the test can read
// ---------------------------------------------------------------------------------------------

/// The real `wsedge`, started like `common::Proxy`, keeping every stderr line and access-log
/// line for the test. Killed on drop.
#[derive(Debug)]
pub(crate) struct LoggedProxy {
    child: Child,
    config_path: PathBuf,
    pub(crate) addr: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
    access: Arc<Mutex<Vec<Value>>>,
}

impl Drop for LoggedProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config_path);
    }
}

impl LoggedProxy {
    pub(crate) async fn start(config: &Config) -> LoggedProxy {
        Self::start_with_nofile(config, None).await
    }

    /// Starts the binary under `prlimit --nofile=SOFT:HARD` when `nofile` is given, so the
    /// limit holds from the first descriptor on (io_uring's multishot accept takes the limit
    /// when it is armed, so lowering it later does not reach an armed accept).
    pub(crate) async fn start_with_nofile(
        config: &Config,
        nofile: Option<(usize, usize)>,
    ) -> LoggedProxy {
        let config_path = std::env::temp_dir().join(format!(
            "wsedge-faults-{}-{}.toml",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::write(&config_path, config.to_toml()).expect("write config");
        let mut command = match nofile {
            Some((soft, hard)) => {
                let mut c = Command::new(prlimit());
                c.arg(format!("--nofile={soft}:{hard}"))
                    .arg("--")
                    .arg(env!("CARGO_BIN_EXE_wsedge"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_wsedge")),
        };
        let mut child = command
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wsedge");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let access = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().expect("stderr");
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                eprintln!("[wsedge stderr] {line}");
                lines.lock().expect("lock").push(line);
            }
        });
        let out = child.stdout.take().expect("stdout");
        let log = access.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    log.lock().expect("lock").push(v);
                }
            }
        });
        let mut proxy = LoggedProxy {
            child,
            config_path,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            stderr,
            access,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let lines = proxy.stderr_lines();
            if lines.iter().any(|l| l.starts_with("wsedge: ready")) {
                let addr = lines
                    .iter()
                    .find_map(|l| l.strip_prefix("wsedge: listening on "))
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|a| a.parse().ok())
                    .expect("a `listening on` line before ready");
                proxy.addr = addr;
                return proxy;
            }
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!(
                    "wsedge exited ({status}) before ready:\n{}",
                    lines.join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "wsedge not ready:\n{}",
                lines.join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().expect("lock").clone()
    }

    pub(crate) fn access_log(&self) -> Vec<Value> {
        self.access.lock().expect("lock").clone()
    }

    /// Whether the process is still running.
    pub(crate) fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for a stderr line containing `needle`; panics with all lines otherwise.
    pub(crate) async fn wait_stderr(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.stderr_lines();
            if let Some(l) = lines.iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no stderr line with {needle:?} within {timeout:?}; stderr:\n{}",
                lines.join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for an access-log line whose `reason` is `reason`.
    pub(crate) async fn wait_reason(&self, reason: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.access_log();
            if let Some(v) = log
                .iter()
                .find(|v| v.get("reason").and_then(Value::as_str) == Some(reason))
            {
                return v.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no access-log line with reason {reason:?} within {timeout:?}: {log:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Sets RLIMIT_NOFILE (soft and hard) of a running process with `prlimit(1)`. Lowering is
/// always allowed; raising back needs CAP_SYS_RESOURCE or a hard limit that was not lowered,
/// so the tests only lower the soft limit when they need to raise it again.
pub(crate) fn set_nofile(pid: u32, soft: usize, hard: usize) {
    let status = Command::new(prlimit())
        .arg("--pid")
        .arg(pid.to_string())
        .arg(format!("--nofile={soft}:{hard}"))
        .status()
        .expect("run prlimit");
    assert!(
        status.success(),
        "prlimit --nofile={soft}:{hard} failed: {status}"
    );
}

/// The descriptor numbers a process has open, sorted.
pub(crate) fn fd_numbers(pid: u32) -> Vec<usize> {
    let mut v: Vec<usize> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

/// How many descriptor numbers below `limit` are free: what the process can still open
/// under a soft limit of `limit` (new descriptors take the lowest free number, and must be
/// below the limit; descriptors inherited above it do not count).
pub(crate) fn free_below(pid: u32, limit: usize) -> usize {
    limit - fd_numbers(pid).iter().filter(|&&n| n < limit).count()
}

/// The soft limit that leaves exactly `free` descriptor numbers for the process.
pub(crate) fn limit_leaving(pid: u32, free: usize) -> usize {
    let used = fd_numbers(pid);
    // The (free + 1)-th unused number: exactly `free` unused numbers lie below it.
    (0..)
        .filter(|n| used.binary_search(n).is_err())
        .nth(free)
        .expect("a limit")
}

/// The current (soft, hard) RLIMIT_NOFILE of a process, from `/proc/PID/limits`.
pub(crate) fn nofile(pid: u32) -> (usize, usize) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let nums: Vec<usize> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

fn prlimit() -> &'static str {
    ["/usr/bin/prlimit", "/bin/prlimit"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("prlimit(1) (util-linux) is needed for the fd-exhaustion tests")
}
