//! The new generation's side of a binary upgrade (`wsedge --upgrade-from SOCKET`): connect
//! to the old generation, take its offer (configuration and listening sockets), check every
//! descriptor before using it, and report `Ready` or `Failed`.
//!
//! A descriptor is used only if the kernel says it is a listening TCP socket bound to the
//! address the configuration listens on (its port, or any port for a configured port 0);
//! anything else refuses the upgrade with a message naming the descriptor, and the old
//! generation keeps serving.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use wsedge_ring::sys::handoff::socket_facts;

use super::handoff::{self, Message, Reader};
use crate::listeners::Listeners;

/// How long the old generation may take to send its offer.
const OFFER_TIMEOUT: Duration = Duration::from_secs(10);

/// A hand-off in progress, from the new generation's side.
#[derive(Debug)]
pub(crate) struct Inherited {
    stream: UnixStream,
    reader: Reader,
    pub(crate) generation: u64,
    pub(crate) old_pid: u32,
    pub(crate) old_build: String,
    pub(crate) config_toml: String,
    pub(crate) config_source: String,
    addresses: Vec<SocketAddr>,
    workers: usize,
}

impl Inherited {
    /// Connects to the old generation at `path` and reads its offer with every descriptor.
    pub(crate) fn connect(path: &Path) -> Result<Inherited, String> {
        let stream = UnixStream::connect(path)
            .map_err(|e| format!("cannot connect to {}: {e}", path.display()))?;
        stream
            .set_read_timeout(Some(OFFER_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut reader = Reader::new();
        let read_err = |e: std::io::Error| format!("reading the hand-off: {e}");
        let Some(Message::Offer {
            generation,
            old_pid,
            old_build,
            config_toml,
            config_source,
            addresses,
            workers,
            fds,
        }) = reader.next(&stream).map_err(read_err)?
        else {
            return Err("the old generation sent no offer".to_owned());
        };
        // Every `Fds` frame is read (its descriptors may have arrived before its bytes were
        // parsed), so nothing of the hand-off is left behind the link's first request.
        let mut announced = 0;
        while announced < fds {
            match reader.next(&stream).map_err(read_err)? {
                Some(Message::Fds { count }) if count > 0 => announced += count,
                other => return Err(format!("expected listening sockets, got {other:?}")),
            }
        }
        if reader.fds.len() != fds || fds != addresses.len() * workers {
            return Err(format!(
                "the offer announced {fds} sockets ({} addresses x {workers} workers) but {} arrived",
                addresses.len(),
                reader.fds.len()
            ));
        }
        Ok(Inherited {
            stream,
            reader,
            generation,
            old_pid,
            old_build,
            config_toml,
            config_source,
            addresses,
            workers,
        })
    }

    /// The worker count the inherited sockets are made for (one per worker and address: the
    /// reuseport steering program sends each client address to listener `i` = worker `i`).
    pub(crate) fn workers(&self) -> usize {
        self.workers
    }

    /// Checks every inherited descriptor against `wanted` (the configuration's addresses,
    /// plain then TLS, in the order `main` serves them) and returns them as the listeners.
    pub(crate) fn take_listeners(&mut self, wanted: &[SocketAddr]) -> Result<Listeners, String> {
        let fds = std::mem::take(&mut self.reader.fds);
        let listeners = arrange(&self.addresses, self.workers, fds, wanted)?;
        Ok(listeners)
    }

    /// Tells the old generation this one serves; the stream becomes the link to it.
    pub(crate) fn ready(self) -> Result<UnixStream, String> {
        let message = Message::Ready {
            pid: std::process::id(),
            build: env!("CARGO_PKG_VERSION").to_owned(),
        };
        handoff::send(&self.stream, &message, &[]).map_err(|e| e.to_string())?;
        debug_assert!(self.reader.is_drained());
        Ok(self.stream)
    }

    /// Tells the old generation this one cannot start, and why.
    pub(crate) fn fail(&self, reason: &str) {
        let message = Message::Failed {
            reason: reason.to_owned(),
        };
        let _ = handoff::send(&self.stream, &message, &[]);
    }
}

/// Whether a socket bound to `bound` serves the configured address `want` (a configured
/// port 0 was resolved by the first generation: any port on the same IP).
fn serves(want: SocketAddr, bound: SocketAddr) -> bool {
    want.ip() == bound.ip() && (want.port() == 0 || want.port() == bound.port())
}

/// Checks the descriptors (ordered by offered address, then worker) and lays them out as
/// `[worker][wanted address]`.
fn arrange(
    offered: &[SocketAddr],
    workers: usize,
    fds: Vec<OwnedFd>,
    wanted: &[SocketAddr],
) -> Result<Listeners, String> {
    let mut groups: Vec<Vec<OwnedFd>> = Vec::with_capacity(offered.len());
    let mut fds = fds.into_iter();
    for (index, addr) in offered.iter().enumerate() {
        let mut group = Vec::with_capacity(workers);
        for worker in 0..workers {
            let fd = fds
                .next()
                .ok_or_else(|| format!("socket {index}/{worker} is missing"))?;
            check_listener(&fd, *addr, index * workers + worker)?;
            group.push(fd);
        }
        groups.push(group);
    }
    for addr in offered {
        if !wanted.iter().any(|w| serves(*w, *addr)) {
            return Err(format!(
                "the running generation listens on {addr}, which the configuration no longer names; changing listen addresses needs a restart"
            ));
        }
    }
    let mut per_worker: Vec<Vec<RawFd>> = vec![Vec::with_capacity(wanted.len()); workers];
    let mut bound = Vec::with_capacity(wanted.len());
    let mut taken = vec![false; groups.len()];
    let mut groups: Vec<Option<Vec<OwnedFd>>> = groups.into_iter().map(Some).collect();
    for want in wanted {
        let Some(index) = (0..offered.len()).find(|&i| !taken[i] && serves(*want, offered[i]))
        else {
            return Err(format!(
                "the configuration listens on {want}, which the running generation does not; changing listen addresses needs a restart"
            ));
        };
        taken[index] = true;
        bound.push(offered[index]);
        for (worker, fd) in groups[index]
            .take()
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            per_worker[worker].push(fd.into_raw_fd());
        }
    }
    Ok(Listeners { per_worker, bound })
}

/// The kernel's word on descriptor `n`: a listening TCP socket bound to `addr`.
fn check_listener(fd: &OwnedFd, addr: SocketAddr, n: usize) -> Result<(), String> {
    let facts = socket_facts(fd.as_raw_fd())
        .map_err(|e| format!("inherited descriptor {n} is not a socket: {e}"))?;
    if !facts.is_tcp_listener() {
        return Err(format!(
            "inherited descriptor {n} is not a listening TCP socket (domain {}, type {}, listening {})",
            facts.domain, facts.sock_type, facts.listening
        ));
    }
    if facts.local != Some(addr) {
        return Err(format!(
            "inherited descriptor {n} is bound to {} but was offered as {addr}",
            facts
                .local
                .map_or_else(|| "no address".to_owned(), |a| a.to_string())
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, UdpSocket};

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect(s)
    }

    #[test]
    fn listeners_are_laid_out_per_worker_in_configured_order() {
        let a: Vec<TcpListener> = (0..2)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let b: Vec<TcpListener> = (0..2)
            .map(|_| TcpListener::bind("127.0.0.2:0").expect("bind"))
            .collect();
        // Two workers; for the test each "worker" socket is its own port, so offer them as
        // two addresses of one worker each would not fit: use one worker.
        let offered = vec![a[0].local_addr().expect("a"), b[0].local_addr().expect("b")];
        let fds: Vec<OwnedFd> = vec![
            OwnedFd::from(a[0].try_clone().expect("dup")),
            OwnedFd::from(b[0].try_clone().expect("dup")),
        ];
        // The configuration names them the other way round, one with port 0.
        let wanted = vec![addr("127.0.0.2:0"), offered[0]];
        let got = arrange(&offered, 1, fds, &wanted).expect("arranged");
        assert_eq!(got.bound, vec![offered[1], offered[0]]);
        assert_eq!(got.per_worker.len(), 1);
        let facts: Vec<_> = got.per_worker[0]
            .iter()
            .map(|fd| socket_facts(*fd).expect("facts").local)
            .collect();
        assert_eq!(facts, vec![Some(offered[1]), Some(offered[0])]);
        for fd in got.per_worker.into_iter().flatten() {
            wsedge_ring::sys::close(fd);
        }
    }

    #[test]
    fn wrong_descriptors_and_addresses_are_refused() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let bound = l.local_addr().expect("addr");
        let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
        let err = arrange(
            &[bound],
            1,
            vec![OwnedFd::from(udp.try_clone().expect("dup"))],
            &[bound],
        )
        .expect_err("udp");
        assert!(err.contains("not a listening TCP socket"), "{err}");
        let file = std::fs::File::open("/proc/self/stat").expect("file");
        let err = arrange(&[bound], 1, vec![OwnedFd::from(file)], &[bound]).expect_err("file");
        assert!(err.contains("not a socket"), "{err}");
        let other = TcpListener::bind("127.0.0.1:0").expect("bind");
        let err = arrange(
            &[bound],
            1,
            vec![OwnedFd::from(other.try_clone().expect("dup"))],
            &[bound],
        )
        .expect_err("other address");
        assert!(err.contains("is bound to"), "{err}");
        let fd = || vec![OwnedFd::from(l.try_clone().expect("dup"))];
        let err = arrange(&[bound], 1, fd(), &[addr("127.0.0.3:9")]).expect_err("moved");
        assert!(err.contains("no longer names"), "{err}");
        let err = arrange(&[bound], 1, fd(), &[bound, addr("127.0.0.3:9")]).expect_err("added");
        assert!(err.contains("does not"), "{err}");
        let err = arrange(&[bound], 2, fd(), &[bound]).expect_err("missing");
        assert!(err.contains("missing"), "{err}");
    }
}
