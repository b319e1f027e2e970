//! The old generation's side of starting the next one: a private Unix socket to meet it on,
//! the child process (`BINARY <same arguments> --upgrade-from SOCKET`), and waiting for it
//! to connect, with its exit watched all along so a binary that is missing or crashes is
//! reported at once rather than at the timeout.

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often a wait looks at the child again.
pub(super) const POLL: Duration = Duration::from_millis(20);

/// The arguments a new generation is started with: this process's own, without those that
/// only meant something to it.
pub(crate) fn child_args(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for arg in args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        let text = arg.to_string_lossy();
        if text == "--upgrade-from" {
            skip_value = true;
            continue;
        }
        if text.starts_with("--upgrade-from=") || text == "--takeover" || text == "--check" {
            continue;
        }
        out.push(arg);
    }
    out
}

/// A started child, connected.
#[derive(Debug)]
pub(super) struct Started {
    pub(super) child: Child,
    pub(super) stream: UnixStream,
}

/// Ends a child that will not be the next generation, and reaps it.
pub(super) fn abandon(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Why a child is gone, for the operator.
pub(super) fn exited(child: &mut Child) -> Option<String> {
    match child.try_wait() {
        Ok(Some(status)) => Some(format!(
            "the new binary exited ({status}) before it was ready"
        )),
        Ok(None) => None,
        Err(e) => Some(format!("cannot watch the new binary: {e}")),
    }
}

/// Starts `binary` with `args` and `--upgrade-from`, and waits until `deadline` for it to
/// connect (checking that the peer is that very process).
pub(super) fn start(
    binary: &Path,
    args: &[OsString],
    dir: &Path,
    deadline: Instant,
) -> Result<Started, String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = dir.join(format!(
        "wsedge-upgrade-{}-{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .map_err(|e| format!("cannot create the hand-off socket {}: {e}", path.display()))?;
    let _cleanup = Unlink(path.clone());
    let prepared = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| listener.set_nonblocking(true));
    prepared.map_err(|e| format!("hand-off socket {}: {e}", path.display()))?;
    let mut command = Command::new(binary);
    command
        .args(args)
        .arg("--upgrade-from")
        .arg(&path)
        .stdin(Stdio::null())
        // The watchdog is the new process's once it is the main one: it must not read
        // itself out of it (`WATCHDOG_PID` names this process).
        .env_remove("WATCHDOG_PID");
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let peer = wsedge_ring::sys::peer_pid(stream.as_raw_fd()).ok();
                if peer != Some(child.id()) {
                    // Only this user can reach the socket (mode 0600), but only the child
                    // is meant to.
                    tracing::warn!(
                        ?peer,
                        "hand-off socket: a process other than the new binary connected; ignored"
                    );
                    continue;
                }
                if let Err(e) = stream.set_nonblocking(false) {
                    abandon(child);
                    return Err(format!("hand-off socket: {e}"));
                }
                return Ok(Started { child, stream });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                abandon(child);
                return Err(format!("hand-off socket: {e}"));
            }
        }
        if let Some(why) = exited(&mut child) {
            return Err(why);
        }
        if Instant::now() >= deadline {
            abandon(child);
            return Err("the new binary did not connect in time".to_owned());
        }
        std::thread::sleep(POLL);
    }
}

/// Removes the hand-off socket's name once the child connected (or failed to).
struct Unlink(PathBuf);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_of_the_next_generation() {
        let args = [
            "--config",
            "/etc/w.toml",
            "--takeover",
            "--upgrade-from",
            "/tmp/x.sock",
            "--workers",
            "2",
            "--upgrade-from=/tmp/y",
        ]
        .map(OsString::from);
        let got = child_args(args.into_iter());
        assert_eq!(
            got,
            ["--config", "/etc/w.toml", "--workers", "2"].map(OsString::from)
        );
    }

    #[test]
    fn a_missing_binary_and_an_early_exit_are_reported() {
        let dir = std::env::temp_dir();
        let deadline = Instant::now() + Duration::from_secs(5);
        let err =
            start(Path::new("/nonexistent/wsedge"), &[], &dir, deadline).expect_err("missing");
        assert!(err.contains("cannot start /nonexistent/wsedge"), "{err}");
        let err = start(Path::new("/bin/false"), &[], &dir, deadline).expect_err("exits");
        assert!(err.contains("exited"), "{err}");
        let deadline = Instant::now() + Duration::from_millis(200);
        // `sh -c 'sleep 5' --upgrade-from PATH`: runs, never connects.
        let args = [OsString::from("-c"), OsString::from("sleep 5")];
        let err = start(Path::new("/bin/sh"), &args, &dir, deadline).expect_err("slow");
        assert!(err.contains("did not connect in time"), "{err}");
    }
}
