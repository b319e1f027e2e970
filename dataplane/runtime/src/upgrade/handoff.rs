//! The hand-off protocol between two generations, over the Unix stream socket the old one
//! names with `--upgrade-from`: frames of a 4-byte big-endian length and a JSON
//! [`Message`]; the listening sockets travel as `SCM_RIGHTS` with [`Message::Fds`] frames
//! (`wsedge_ring::sys::handoff`, at most 200 per frame).
//!
//! ```text
//! old ── Offer {generation, configuration, addresses, workers, fds} ──► new
//! old ── Fds {count} + descriptors (as many frames as needed) ───────► new
//! old ◄── Ready {pid, build} | Failed {reason} ─────────────────────── new
//! ```
//! After `Ready` the same socket carries control requests from the new generation to the
//! old one (`wsedge_command::wire` frames: its status, for `wsedgectl status`).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use serde::{Deserialize, Serialize};
use wsedge_ring::sys::handoff::{MAX_FDS_PER_MESSAGE, recv_with_fds, send_with_fds};

/// A hand-off frame is small: the configuration text is the largest part.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// One frame of the hand-off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Message {
    /// What the old generation hands over; `fds` descriptors follow in [`Message::Fds`]
    /// frames, ordered by address, then worker (`addresses[0]`'s `workers` listeners first).
    Offer {
        /// The new process's generation number.
        generation: u64,
        /// The old generation's process and build.
        old_pid: u32,
        old_build: String,
        /// The configuration in force in the old generation (its text and where it came
        /// from): the new one starts with it, so an upgrade never changes the configuration.
        config_toml: String,
        config_source: String,
        /// The bound address of each listening address (plain ones, then TLS ones).
        addresses: Vec<SocketAddr>,
        workers: usize,
        fds: usize,
    },
    /// `count` descriptors are attached to this frame.
    Fds { count: usize },
    /// The new generation serves (its workers run, its control socket is bound).
    Ready { pid: u32, build: String },
    /// The new generation cannot start; it exits after sending this.
    Failed { reason: String },
}

/// Writes one frame (with `fds` attached when there are any).
pub(crate) fn send(stream: &UnixStream, message: &Message, fds: &[RawFd]) -> io::Result<()> {
    let body = serde_json::to_vec(message).map_err(io::Error::other)?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    send_with_fds(stream.as_raw_fd(), &frame, fds)
}

/// Sends `fds` in [`Message::Fds`] frames of at most 200 descriptors.
pub(crate) fn send_fds(stream: &UnixStream, fds: &[RawFd]) -> io::Result<()> {
    for batch in fds.chunks(MAX_FDS_PER_MESSAGE) {
        send(stream, &Message::Fds { count: batch.len() }, batch)?;
    }
    Ok(())
}

/// Reads frames, keeping the descriptors that come with them in order.
#[derive(Debug)]
pub(crate) struct Reader {
    pending: Vec<u8>,
    /// Descriptors received and not yet taken.
    pub(crate) fds: Vec<OwnedFd>,
}

impl Reader {
    pub(crate) fn new() -> Reader {
        Reader {
            pending: Vec::new(),
            fds: Vec::new(),
        }
    }

    /// The next frame; `Ok(None)` when the peer closed. Honours the stream's read timeout
    /// (a `WouldBlock`/`TimedOut` error, after which reading may go on).
    pub(crate) fn next(&mut self, stream: &UnixStream) -> io::Result<Option<Message>> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if self.pending.len() >= 4 {
                let len = u32::from_be_bytes([
                    self.pending[0],
                    self.pending[1],
                    self.pending[2],
                    self.pending[3],
                ]) as usize;
                if len > MAX_MESSAGE {
                    return Err(io::Error::other(format!(
                        "hand-off frame of {len} bytes is too large"
                    )));
                }
                if self.pending.len() >= 4 + len {
                    let message = serde_json::from_slice(&self.pending[4..4 + len])
                        .map_err(|e| io::Error::other(format!("bad hand-off frame: {e}")))?;
                    self.pending.drain(..4 + len);
                    return Ok(Some(message));
                }
            }
            let n = recv_with_fds(stream.as_raw_fd(), &mut buf, &mut self.fds)?;
            if n == 0 {
                return if self.pending.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "hand-off frame cut short",
                    ))
                };
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    /// Bytes read past the last frame (none in this protocol: the old side speaks only when
    /// spoken to once `Ready` is sent).
    pub(crate) fn is_drained(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn offer_and_listeners_round_trip() {
        let (a, b) = UnixStream::pair().expect("pair");
        // More listeners than one frame carries.
        let listeners: Vec<TcpListener> = (0..250)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let fds: Vec<RawFd> = listeners.iter().map(|l| l.as_raw_fd()).collect();
        let offer = Message::Offer {
            generation: 2,
            old_pid: 1,
            old_build: "0.1.0".to_owned(),
            config_toml: "[dataplane]\n".to_owned(),
            config_source: "x.toml".to_owned(),
            addresses: vec!["127.0.0.1:1".parse().expect("addr")],
            workers: 250,
            fds: fds.len(),
        };
        send(&a, &offer, &[]).expect("offer");
        send_fds(&a, &fds).expect("fds");
        send(&a, &Message::Failed { reason: "x".into() }, &[]).expect("last");
        let mut reader = Reader::new();
        assert_eq!(reader.next(&b).expect("read"), Some(offer));
        let mut got = 0;
        while got < fds.len() {
            match reader.next(&b).expect("read") {
                Some(Message::Fds { count }) => got += count,
                other => panic!("expected fds, got {other:?}"),
            }
        }
        assert_eq!(got, 250);
        assert_eq!(reader.fds.len(), 250);
        for (fd, l) in reader.fds.iter().zip(&listeners) {
            let facts = wsedge_ring::sys::handoff::socket_facts(fd.as_raw_fd()).expect("facts");
            assert_eq!(facts.local, Some(l.local_addr().expect("addr")));
        }
        assert!(matches!(
            reader.next(&b).expect("read"),
            Some(Message::Failed { .. })
        ));
        drop(a);
        assert_eq!(reader.next(&b).expect("eof"), None);
        assert!(reader.is_drained());
    }
}
