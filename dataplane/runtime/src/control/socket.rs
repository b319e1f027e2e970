//! The dataplane's Unix control socket: bind with the configured mode and group, accept,
//! check each peer's uid (SO_PEERCRED), and serve its requests on a short-lived thread.
//!
//! Hostile or broken peers cost a thread for a bounded time and nothing else: frames longer
//! than [`MAX_FRAME`] are refused before allocation, undecodable ones get an error reply,
//! reads and writes have timeouts (a peer that never reads its replies is dropped when its
//! write times out), and at most [`MAX_PEERS`] are served at once.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use wsedge_command::ControlConfig;
use wsedge_command::wire::{
    self, Envelope, ErrorKind, MAX_FRAME, Response, WireError, decode_request,
};

use super::Shared;
use crate::driver::sys;

/// Peers served at once; more get a `busy` reply.
const MAX_PEERS: usize = 16;
/// A connected peer that sends nothing for this long is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A reply that cannot be written within this is abandoned with its connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Who may use the socket: root, the dataplane's own user, and the configured uids.
#[derive(Debug, Clone)]
struct Allowed {
    own: u32,
    extra: Vec<u32>,
}

impl Allowed {
    fn permits(&self, uid: u32) -> bool {
        uid == 0 || uid == self.own || self.extra.contains(&uid)
    }
}

/// Binds the socket and starts the accept thread.
pub(super) fn start(path: &Path, control: &ControlConfig, shared: Arc<Shared>) -> io::Result<()> {
    let listener = bind(path, control.socket_mode, control.socket_group.as_deref())?;
    let allowed = Allowed {
        own: sys::effective_uid(),
        extra: control.allowed_uids.clone(),
    };
    std::thread::Builder::new()
        .name("wsedge-control".to_owned())
        .spawn(move || accept_loop(listener, allowed, shared))?;
    Ok(())
}

/// Binds under a temporary name, sets mode and group, then renames into place, so the socket
/// is never reachable with the process's default permissions. A stale socket file (nobody
/// answering) is replaced; a live one, or a path that is not a socket, is an error.
fn bind(path: &Path, mode: u32, group: Option<&str>) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is serving this socket",
                ));
            }
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    let prepared = (|| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        if let Some(name) = group {
            let gid = sys::group_gid(name)?;
            std::os::unix::fs::chown(&tmp, None, Some(gid))?;
        }
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = prepared {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

fn accept_loop(listener: UnixListener, allowed: Allowed, shared: Arc<Shared>) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "control socket accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let uid = match sys::peer_uid(stream.as_raw_fd()) {
            Ok(uid) => uid,
            Err(e) => {
                tracing::warn!(error = %e, "control peer credentials unavailable; refused");
                continue;
            }
        };
        if !allowed.permits(uid) {
            tracing::warn!(uid, "control peer refused: uid not allowed");
            refuse(
                stream,
                ErrorKind::PermissionDenied,
                &format!("uid {uid} may not use this control socket"),
            );
            continue;
        }
        if active.load(Ordering::Acquire) >= MAX_PEERS {
            refuse(
                stream,
                ErrorKind::Busy,
                "too many control connections at once",
            );
            continue;
        }
        active.fetch_add(1, Ordering::AcqRel);
        let (shared, active_peer) = (shared.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("wsedge-ctl-peer".to_owned())
            .spawn(move || {
                serve_peer(stream, uid, &shared);
                active_peer.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(error = %e, "cannot spawn a control peer thread");
        }
    }
}

/// Sends one error reply (best effort, short timeout) and closes.
fn refuse(mut stream: UnixStream, kind: ErrorKind, message: &str) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = wire::send(
        &mut stream,
        &Envelope::new(0, Response::error(kind, message)),
    );
}

/// Serves requests until the peer closes, idles out, or breaks the framing.
fn serve_peer(mut stream: UnixStream, uid: u32, shared: &Shared) {
    if stream.set_read_timeout(Some(IDLE_TIMEOUT)).is_err() {
        return;
    }
    loop {
        let body = match wire::read_frame(&mut stream, MAX_FRAME) {
            Ok(body) => body,
            Err(WireError::Closed) => return,
            Err(e @ WireError::TooLarge { .. }) => {
                tracing::warn!(uid, error = %e, "control peer sent an oversized frame; closing");
                refuse(stream, ErrorKind::FrameTooLarge, &e.to_string());
                return;
            }
            Err(e) => {
                tracing::debug!(uid, error = %e, "control peer dropped");
                return;
            }
        };
        let (id, response) = match decode_request(&body) {
            Ok(envelope) => {
                tracing::debug!(uid, request = envelope.body.kind(), "control request");
                (envelope.id, shared.handle(envelope.body))
            }
            Err(e) => {
                tracing::warn!(uid, error = %e.message, "undecodable control request");
                (e.id.unwrap_or(0), Response::error(e.kind, e.message))
            }
        };
        if let Err(e) = wire::send(&mut stream, &Envelope::new(id, response)) {
            tracing::debug!(uid, error = %e, "control reply not delivered; closing");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_uids() {
        let allowed = Allowed {
            own: 998,
            extra: vec![1000],
        };
        assert!(allowed.permits(0));
        assert!(allowed.permits(998));
        assert!(allowed.permits(1000));
        assert!(!allowed.permits(65534));
    }

    #[test]
    fn bind_sets_mode_and_replaces_only_stale_sockets() {
        let dir = std::env::temp_dir().join(format!("wsedge-ctl-bind-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("dp.sock");
        let first = bind(&path, 0o600, None).expect("bind");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A live socket is not taken over.
        assert!(bind(&path, 0o600, None).is_err());
        drop(first);
        // A stale one is.
        let _second = bind(&path, 0o660, None).expect("rebind over a stale socket");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o660);
        // A regular file is never removed.
        let file = dir.join("file");
        std::fs::write(&file, "x").expect("write");
        assert!(bind(&file, 0o600, None).is_err());
        assert!(file.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
