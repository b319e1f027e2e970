//! The control-socket server, written once for both ends of the control plane: the
//! dataplane's control socket (`wsedge`, `[control] socket`) and the control process's
//! (`wsedgectl daemon`, `[control] daemon_socket`). Only the request handler differs (sozu
//! keeps its command channel in its command crate the same way).
//!
//! - [`Server::bind`] creates the socket under a temporary name, gives it the configured mode
//!   and group, then renames it into place, so the socket is never reachable with the
//!   process's default permissions. A stale socket file (nobody answering) is replaced; a
//!   live one, or a path that is not a socket, is an error.
//! - [`Server::spawn`] accepts on its own thread and reads each peer's uid with
//!   `SO_PEERCRED`: root, the serving process's effective uid and `allowed_uids` get in;
//!   anyone else gets one `permission_denied` frame and is closed.
//! - Each admitted peer is served on a short-lived thread: one request at a time, answered
//!   in order by the handler, an error reply for what cannot be decoded.
//!
//! Hostile or broken peers cost a thread for a bounded time and nothing else: frames longer
//! than [`MAX_FRAME`] are refused before allocation (`frame_too_large`, then closed), reads
//! and writes have timeouts (a peer that never reads its replies is dropped when its write
//! times out), and at most [`MAX_PEERS`] are served at once (more get `busy`). No `unsafe`:
//! the peer's credentials and the group come through `nix`'s safe wrappers.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::framing::{MAX_FRAME, WireError, decode_request, read_frame, send};
use super::messages::{Envelope, ErrorKind, Request, Response};
use crate::config::ControlConfig;

/// Peers served at once; more get a `busy` reply.
pub const MAX_PEERS: usize = 16;
/// A connected peer that sends nothing for this long is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A reply that cannot be written within this is abandoned with its connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a refusal (`permission_denied`, `busy`, `frame_too_large`) may take to write.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(1);

/// A failed request, as it is answered: handlers build their answer as
/// `Result<Response, Failure>` and reply with [`Response::from`] on the error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: ErrorKind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
        }
    }
}

impl From<Failure> for Response {
    fn from(f: Failure) -> Response {
        Response::error(f.kind, f.message)
    }
}

/// Who may use a socket: root, the serving process's own effective uid, and the configured
/// uids.
#[derive(Debug, Clone)]
pub struct Allowed {
    own: u32,
    extra: Vec<u32>,
}

impl Allowed {
    /// Root, this process's effective uid, and `extra`.
    pub fn new(extra: Vec<u32>) -> Allowed {
        Allowed {
            own: nix::unistd::geteuid().as_raw(),
            extra,
        }
    }

    pub fn permits(&self, uid: u32) -> bool {
        uid == 0 || uid == self.own || self.extra.contains(&uid)
    }
}

/// The names of a server's threads (as `ps -L` and `top -H` show them; at most 15 bytes).
#[derive(Debug, Clone, Copy)]
pub struct Threads {
    /// The accept loop.
    pub accept: &'static str,
    /// Each peer's.
    pub peer: &'static str,
}

/// A bound control socket, not served yet.
#[derive(Debug)]
pub struct Server {
    listener: UnixListener,
    allowed: Allowed,
}

impl Server {
    /// Binds the socket at `path` with `control`'s `socket_mode` and `socket_group`, to admit
    /// `control.allowed_uids` besides root and this process's user.
    pub fn bind(path: &Path, control: &ControlConfig) -> io::Result<Server> {
        Server::bind_with(path, control, false)
    }

    /// As [`Server::bind`], but a live socket at `path` is replaced too (renamed over): the
    /// next generation of a binary upgrade takes the path over while the old one still
    /// serves the peers it has (its socket is no longer reachable by name).
    pub fn bind_replacing(path: &Path, control: &ControlConfig) -> io::Result<Server> {
        Server::bind_with(path, control, true)
    }

    fn bind_with(path: &Path, control: &ControlConfig, replace: bool) -> io::Result<Server> {
        let listener = bind(
            path,
            control.socket_mode,
            control.socket_group.as_deref(),
            replace,
        )?;
        Ok(Server {
            listener,
            allowed: Allowed::new(control.allowed_uids.clone()),
        })
    }

    /// Serves the socket on a new thread for the rest of the process's life; `handle` answers
    /// each request, on the peer's thread (it may block for a few seconds, never forever).
    pub fn spawn<H>(self, threads: Threads, handle: H) -> io::Result<()>
    where
        H: Fn(Request) -> Response + Send + Sync + 'static,
    {
        let Server { listener, allowed } = self;
        let handle = Arc::new(handle);
        std::thread::Builder::new()
            .name(threads.accept.to_owned())
            .spawn(move || accept_loop(&listener, &allowed, threads.peer, &handle))?;
        Ok(())
    }
}

/// Binds under a temporary name, sets mode and group, then renames into place, so the socket
/// is never reachable with the process's default permissions. A stale socket file (nobody
/// answering) is replaced; a live one, or a path that is not a socket, is an error.
fn bind(path: &Path, mode: u32, group: Option<&str>, replace: bool) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if !replace && UnixStream::connect(path).is_ok() {
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
            let gid = group_gid(name)?;
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

/// The gid of a group name, from the system's group database.
fn group_gid(name: &str) -> io::Result<u32> {
    nix::unistd::Group::from_name(name)
        .map_err(io::Error::from)?
        .map(|g| g.gid.as_raw())
        .ok_or_else(|| io::Error::other(format!("no group named {name:?}")))
}

fn accept_loop<H>(listener: &UnixListener, allowed: &Allowed, peer_thread: &str, handle: &Arc<H>)
where
    H: Fn(Request) -> Response + Send + Sync + 'static,
{
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
        let uid = match getsockopt(&stream, PeerCredentials) {
            Ok(credentials) => credentials.uid(),
            Err(e) => {
                tracing::warn!(error = %e, "control peer credentials unavailable; refused");
                refuse(
                    stream,
                    ErrorKind::PermissionDenied,
                    &format!("peer credentials unavailable: {e}"),
                );
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
            tracing::warn!(
                uid,
                "control peer refused: {MAX_PEERS} peers already served"
            );
            refuse(
                stream,
                ErrorKind::Busy,
                "too many control connections at once",
            );
            continue;
        }
        active.fetch_add(1, Ordering::AcqRel);
        let (handle, active_peer) = (Arc::clone(handle), Arc::clone(&active));
        let spawned = std::thread::Builder::new()
            .name(peer_thread.to_owned())
            .spawn(move || {
                serve_peer(stream, uid, &*handle);
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
    let _ = stream.set_write_timeout(Some(REFUSE_TIMEOUT));
    let _ = send(
        &mut stream,
        &Envelope::new(0, Response::error(kind, message)),
    );
}

/// Serves requests until the peer closes, idles out, or breaks the framing.
fn serve_peer(stream: UnixStream, uid: u32, handle: &impl Fn(Request) -> Response) {
    if stream.set_read_timeout(Some(IDLE_TIMEOUT)).is_err() {
        return;
    }
    serve_requests(stream, uid, handle);
}

/// Serves requests on an already connected stream until the peer closes it, with no idle
/// limit: the link from the next generation of a binary upgrade to the one it replaced
/// (a process this one started and checked itself).
pub fn serve_stream(stream: UnixStream, handle: &impl Fn(Request) -> Response) {
    if stream.set_read_timeout(None).is_err() {
        return;
    }
    serve_requests(stream, nix::unistd::geteuid().as_raw(), handle);
}

fn serve_requests(mut stream: UnixStream, uid: u32, handle: &impl Fn(Request) -> Response) {
    loop {
        let body = match read_frame(&mut stream, MAX_FRAME) {
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
                (envelope.id, handle(envelope.body))
            }
            Err(e) => {
                tracing::warn!(uid, error = %e.message, "undecodable control request");
                (e.id.unwrap_or(0), Response::error(e.kind, e.message))
            }
        };
        if let Err(e) = send(&mut stream, &Envelope::new(id, response)) {
            tracing::debug!(uid, error = %e, "control reply not delivered; closing");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Client;
    use std::io::{Read, Write};

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
    #[cfg_attr(miri, ignore = "Miri has no AF_UNIX sockets (run by cargo test)")]
    fn bind_sets_mode_and_replaces_only_stale_sockets() {
        let dir = std::env::temp_dir().join(format!("wsedge-ctl-bind-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("dp.sock");
        let first = bind(&path, 0o600, None, false).expect("bind");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A live socket is not taken over...
        assert!(bind(&path, 0o600, None, false).is_err());
        // ...unless asked to (the next generation of a binary upgrade): renamed over it.
        let taken = bind(&path, 0o600, None, true).expect("replace a live socket");
        drop(first);
        drop(taken);
        // A stale one is.
        let _second = bind(&path, 0o660, None, false).expect("rebind over a stale socket");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o660);
        // A regular file is never removed.
        let file = dir.join("file");
        std::fs::write(&file, "x").expect("write");
        assert!(bind(&file, 0o600, None, false).is_err());
        assert!(bind(&file, 0o600, None, true).is_err());
        assert!(file.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A served socket in its own directory, answering `presence` with the channel's length
    /// and everything else with a `Failure`.
    fn served(name: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("wsedge-srv-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("s.sock");
        let server = Server::bind(&path, &ControlConfig::default()).expect("bind");
        let threads = Threads {
            accept: "test-accept",
            peer: "test-peer",
        };
        server
            .spawn(threads, |request| match request {
                Request::Presence { channel } => Response::Presence {
                    subscribers: channel.len() as u64,
                    channel,
                    hosts: Vec::new(),
                },
                other => Failure::new(ErrorKind::NotSupported, other.kind()).into(),
            })
            .expect("spawn");
        (dir, path)
    }

    fn raw_reply(stream: &mut UnixStream) -> Envelope<Response> {
        let body = read_frame(stream, MAX_FRAME).expect("reply frame");
        crate::wire::decode_response(&body).expect("reply")
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri has no AF_UNIX sockets (run by cargo test)")]
    fn serves_requests_in_order_and_answers_failures() {
        let (dir, path) = served("order");
        let mut client = Client::connect(&path, Duration::from_secs(5)).expect("connect");
        let presence = |channel: &str| Request::Presence {
            channel: channel.to_owned(),
        };
        assert_eq!(
            client.call(&presence("news")).expect("call"),
            Response::Presence {
                channel: "news".into(),
                subscribers: 4,
                hosts: Vec::new(),
            }
        );
        assert_eq!(
            client.call(&Request::Reload).expect("call"),
            Response::error(ErrorKind::NotSupported, "reload")
        );
        // The same connection goes on serving after a failure.
        assert_eq!(
            client.call(&presence("ab")).expect("call"),
            Response::Presence {
                channel: "ab".into(),
                subscribers: 2,
                hosts: Vec::new(),
            }
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri has no AF_UNIX sockets (run by cargo test)")]
    fn undecodable_and_oversized_frames() {
        let (dir, path) = served("frames");
        let mut stream = UnixStream::connect(&path).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        // Garbage with a readable id: a bad_request carrying that id; the connection stays.
        crate::wire::write_frame(&mut stream, br#"{"version":2,"id":7,"body":{"type":"x"}}"#)
            .expect("write");
        let reply = raw_reply(&mut stream);
        assert_eq!(reply.id, 7);
        assert!(
            matches!(
                &reply.body,
                Response::Error {
                    kind: ErrorKind::BadRequest,
                    ..
                }
            ),
            "{reply:?}"
        );
        // A length over MAX_FRAME: frame_too_large, then the server closes.
        stream
            .write_all(&(MAX_FRAME as u32 + 1).to_be_bytes())
            .expect("write");
        let reply = raw_reply(&mut stream);
        assert!(
            matches!(
                &reply.body,
                Response::Error {
                    kind: ErrorKind::FrameTooLarge,
                    ..
                }
            ),
            "{reply:?}"
        );
        let mut rest = Vec::new();
        assert_eq!(stream.read_to_end(&mut rest).expect("eof"), 0, "closed");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri has no AF_UNIX sockets (run by cargo test)")]
    fn peers_over_the_limit_are_busy() {
        let (dir, path) = served("busy");
        // Served peers stay until they close: the accept loop takes them in order.
        let mut held = Vec::new();
        for _ in 0..MAX_PEERS {
            let mut client = Client::connect(&path, Duration::from_secs(5)).expect("connect");
            client.call(&Request::Status).expect("served");
            held.push(client);
        }
        let mut extra = Client::connect(&path, Duration::from_secs(5)).expect("connect");
        match extra.call(&Request::Status) {
            Ok(Response::Error { kind, .. }) => assert_eq!(kind, ErrorKind::Busy),
            other => panic!("expected busy, got {other:?}"),
        }
        drop(held);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
