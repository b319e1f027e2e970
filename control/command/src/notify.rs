//! systemd's notification protocol (`sd_notify(3)`) without libsystemd, for both binaries:
//! `READY=1` once serving, `STOPPING=1` on shutdown, `WATCHDOG=1` pings while healthy.
//!
//! The protocol is one datagram of `KEY=VALUE` lines to the Unix socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace). Outside systemd the
//! variable is unset and every call is a no-op. The watchdog interval is `$WATCHDOG_USEC`,
//! meant for us only when `$WATCHDOG_PID` is unset or our pid.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends `state` (newline-separated `KEY=VALUE` assignments) to the service manager.
/// `Ok(false)`: not running under a manager that listens (no `$NOTIFY_SOCKET`).
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let target = target.to_string_lossy().into_owned();
    send_to(&target, state)?;
    Ok(true)
}

/// `READY=1` with a status line; logs (never fails) when it cannot be sent.
pub fn ready(status: &str) {
    let line = format!("READY=1\nSTATUS={}", status.replace('\n', " "));
    if let Err(e) = notify(&line) {
        tracing::warn!(error = %e, "cannot notify the service manager (READY=1)");
    }
}

/// `STOPPING=1`; best effort.
pub fn stopping() {
    let _ = notify("STOPPING=1");
}

/// The interval at which the manager expects `WATCHDOG=1`, if it watches this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    Some(Duration::from_micros(usec))
}

/// How often to ping: half the manager's interval, as sd_watchdog_enabled(3) advises.
pub fn watchdog_period() -> Option<Duration> {
    watchdog_interval().map(|d| d / 2)
}

/// One `WATCHDOG=1` ping; best effort (a missed ping is what the watchdog is for).
pub fn watchdog_ping() {
    if let Err(e) = notify("WATCHDOG=1") {
        tracing::warn!(error = %e, "cannot send WATCHDOG=1");
    }
}

fn send_to(target: &str, state: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    let addr = if let Some(name) = target.strip_prefix('@') {
        abstract_addr(name.as_bytes())?
    } else if target.starts_with('/') {
        SocketAddr::from_pathname(target)?
    } else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NOTIFY_SOCKET={target:?} is neither a path nor @abstract"),
        ));
    };
    let sent = socket.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "notification truncated",
        ));
    }
    Ok(())
}

fn abstract_addr(name: &[u8]) -> io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore = "Miri has no AF_UNIX sockets (run by cargo test)")]
    fn sends_datagrams_to_a_path_and_to_an_abstract_socket() {
        let dir = std::env::temp_dir().join(format!("wsedge-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("notify.sock");
        let listener = UnixDatagram::bind(&path).expect("bind");
        send_to(&path.display().to_string(), "READY=1\nSTATUS=up").expect("send");
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=up");

        let name = format!("wsedge-notify-test-{}", std::process::id());
        let addr = abstract_addr(name.as_bytes()).expect("addr");
        let listener = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        send_to(&format!("@{name}"), "WATCHDOG=1").expect("send");
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"WATCHDOG=1");

        assert!(send_to("relative", "X=1").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
