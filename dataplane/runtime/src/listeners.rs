//! The listening sockets, created by `main` before any worker starts: one `SO_REUSEPORT`
//! listener per worker and `listen` address, in a fixed order (worker 0 first), so the
//! reuseport steering program's index *i* is worker *i*, and port 0 is resolved once and
//! reused by every worker. [`steer`] then attaches that program, or takes it off for
//! `steering = "connection"` (not under `--takeover`: the group is the other process's).
//!
//! A second wsedge on an address already in use must not start: with `SO_REUSEPORT` on
//! every socket, the kernel would let it join the running one's group, print `ready` and
//! take a share of new connections. So each address's first listener is created without
//! `SO_REUSEPORT` (`sys::Group::Found`): the kernel refuses it if anything listens there,
//! and the error names the address and, when `/proc` shows it, the process holding it.
//! `--takeover` is the deliberate way in: every listener joins the group already there
//! (a binary upgrade hands the listening sockets themselves over instead: `crate::upgrade`).
//!
//! No `unsafe` here: the socket calls are `wsedge_ring::sys`'s; the rest reads `/proc`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::RawFd;

use wsedge_command::Steering;
use wsedge_ring::sys::{self, Group};

const BACKLOG: i32 = 4096;

/// Why the listeners could not be created.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ListenError {
    #[error(
        "cannot listen on {addr}: the address is in use by {holder}; stop it first, or start wsedge with --takeover to share its listening sockets (only a wsedge of the same user can be shared)"
    )]
    InUse { addr: SocketAddr, holder: String },
    #[error(
        "cannot listen on {addr} with --takeover: the address is held by {holder}, which does not share it (no SO_REUSEPORT, or another user)"
    )]
    TakeoverRefused { addr: SocketAddr, holder: String },
    #[error("cannot listen on {addr}: {source}")]
    Other {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The listeners of every worker (`[worker][address]`) and the addresses they are bound to
/// (port 0 resolved).
#[derive(Debug)]
pub(crate) struct Listeners {
    pub(crate) per_worker: Vec<Vec<RawFd>>,
    pub(crate) bound: Vec<SocketAddr>,
}

/// Creates `workers` listeners on each of `addrs`. Without `takeover`, an address that
/// anything else listens on is refused ([`ListenError::InUse`]); with it, the listeners
/// join the group already there.
pub(crate) fn open(
    addrs: &[SocketAddr],
    workers: usize,
    takeover: bool,
) -> Result<Listeners, ListenError> {
    let mut per_worker: Vec<Vec<RawFd>> = vec![Vec::new(); workers];
    let mut bound = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let mut at: SocketAddr = *addr;
        for (index, listeners) in per_worker.iter_mut().enumerate() {
            let group = if index == 0 && !takeover {
                Group::Found
            } else {
                Group::Join
            };
            let fd = sys::reuseport_listener(&at, BACKLOG, group).map_err(|source| {
                if source.raw_os_error() != Some(libc::EADDRINUSE) {
                    return ListenError::Other { addr: at, source };
                }
                let holder = describe(holder_of(at));
                if takeover {
                    ListenError::TakeoverRefused { addr: at, holder }
                } else {
                    ListenError::InUse { addr: at, holder }
                }
            })?;
            if at.port() == 0 {
                at = sys::local_addr(fd)
                    .map_err(|source| ListenError::Other { addr: at, source })?;
            }
            listeners.push(fd);
        }
        if takeover {
            tracing::warn!(addr = %at, "--takeover: joined the listeners already on this address; new connections are shared with their process until it stops listening");
        }
        bound.push(at);
    }
    Ok(Listeners { per_worker, bound })
}

/// Sets how the kernel spreads each address's new connections over the workers' listeners
/// (`[dataplane] steering`, `per_worker` and `bound` as in [`Listeners`]): a program hashing
/// the client address (one address, one worker, so per-address firewall state is exact), or
/// none (the kernel's hash of the four-tuple). `main` applies it to listeners it opened, and
/// to inherited ones once the new generation is ready (so a binary upgrade into the other
/// setting takes effect, and a failed one changes nothing); not to a group joined with
/// `--takeover`, whose steering is the other process's.
pub(crate) fn steer(per_worker: &[Vec<RawFd>], bound: &[SocketAddr], steering: Steering) {
    let workers = per_worker.len();
    let Some(first) = per_worker.first() else {
        return;
    };
    for (fd, at) in first.iter().zip(bound) {
        match steering {
            Steering::ClientAddress if workers > 1 => {
                if let Err(e) = sys::steer_by_client_address(*fd, workers) {
                    tracing::warn!(bound = %at, error = %e, "cannot attach the reuseport steering program; per-address limits become per worker");
                }
            }
            Steering::ClientAddress => {}
            Steering::Connection => {
                if let Err(e) = sys::steer_by_connection(*fd) {
                    tracing::warn!(bound = %at, error = %e, "cannot detach the reuseport steering program; each client address stays on one worker");
                }
            }
        }
    }
}

/// A process holding a listening socket, as `/proc` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holder {
    pid: u32,
    command: String,
}

fn describe(holder: Option<Holder>) -> String {
    match holder {
        Some(h) => format!("pid {} ({})", h.pid, h.command),
        None => "another process (not visible in /proc to this user)".to_owned(),
    }
}

/// The process (other than this one) with a listening socket that conflicts with `addr`:
/// the socket's inode from `/proc/net/tcp{,6}`, then the process whose `/proc/PID/fd` has
/// it. `None` when it cannot be seen (another user's process, no `/proc`).
fn holder_of(addr: SocketAddr) -> Option<Holder> {
    let mut inodes = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        if let Ok(text) = std::fs::read_to_string(file) {
            inodes.extend(
                parse_listening(&text, v6)
                    .into_iter()
                    .filter(|(theirs, _)| conflicts(addr, *theirs))
                    .map(|(_, inode)| inode),
            );
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let own = std::process::id();
    let targets: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        // Another user's fds are not readable: skipped.
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|link| targets.iter().any(|t| link.as_os_str() == t.as_str()))
        });
        if holds {
            return Some(Holder {
                pid,
                command: command_of(pid),
            });
        }
    }
    None
}

/// A process's command line (arguments joined by spaces), or its name.
fn command_of(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if !args.is_empty() {
        // One line, and not a whole script's worth of it (`python3 -c '...'`).
        let line: String = args
            .join(" ")
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        return match line.char_indices().nth(160) {
            Some((cut, _)) => format!("{}...", &line[..cut]),
            None => line,
        };
    }
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

/// The listening sockets of a `/proc/net/tcp` (or `tcp6`) table: local address and inode.
/// Addresses are written as the kernel's 32-bit words in host byte order; state `0A` is
/// LISTEN.
fn parse_listening(text: &str, v6: bool) -> Vec<(SocketAddr, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) != Some(&"0A") {
                return None;
            }
            let (ip_hex, port_hex) = fields.get(1)?.split_once(':')?;
            let port = u16::from_str_radix(port_hex, 16).ok()?;
            let inode = fields.get(9)?.parse::<u64>().ok()?;
            let ip = if v6 {
                if ip_hex.len() != 32 {
                    return None;
                }
                let mut bytes = [0u8; 16];
                for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                    let word = u32::from_str_radix(ip_hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
                    chunk.copy_from_slice(&word.to_ne_bytes());
                }
                IpAddr::V6(Ipv6Addr::from(bytes))
            } else {
                if ip_hex.len() != 8 {
                    return None;
                }
                let word = u32::from_str_radix(ip_hex, 16).ok()?;
                IpAddr::V4(Ipv4Addr::from(word.to_ne_bytes()))
            };
            Some((SocketAddr::new(ip, port), inode))
        })
        .collect()
}

/// Whether a socket listening on `theirs` keeps one from listening on `ours`: the same port
/// and the same address, or a wildcard on either side (an IPv6 wildcard may accept IPv4
/// too, and a v4-mapped IPv6 address is the IPv4 one).
fn conflicts(ours: SocketAddr, theirs: SocketAddr) -> bool {
    if ours.port() != theirs.port() {
        return false;
    }
    match (ours.ip(), theirs.ip()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => a == b || a.is_unspecified() || b.is_unspecified(),
        (IpAddr::V6(a), IpAddr::V6(b)) => a == b || a.is_unspecified() || b.is_unspecified(),
        (IpAddr::V4(a), IpAddr::V6(b)) => {
            b.is_unspecified()
                || b.to_ipv4_mapped()
                    .is_some_and(|m| m == a || a.is_unspecified())
        }
        // Our IPv6 listeners are V6ONLY: an IPv4 socket does not hold them back.
        (IpAddr::V6(_), IpAddr::V4(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `/proc/net/tcp` local address for `ip` as the kernel writes it on this host.
    fn hex4(ip: Ipv4Addr) -> String {
        format!("{:08X}", u32::from_ne_bytes(ip.octets()))
    }

    fn hex6(ip: Ipv6Addr) -> String {
        ip.octets()
            .chunks(4)
            .map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
            .collect()
    }

    #[test]
    fn parses_listening_sockets_only() {
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
        let lo = hex4(Ipv4Addr::LOCALHOST);
        let text = format!(
            "{header}   0: {lo}:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n   1: {lo}:1F90 {lo}:D3A2 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1\n   2: {}:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1\n   3: garbage\n",
            hex4(Ipv4Addr::UNSPECIFIED)
        );
        assert_eq!(
            parse_listening(&text, false),
            vec![
                ("127.0.0.1:8080".parse().expect("addr"), 4242),
                ("0.0.0.0:80".parse().expect("addr"), 99)
            ]
        );
        let v6 = format!(
            "{header}   0: {}:1F90 {}:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 777 1\n",
            hex6(Ipv6Addr::LOCALHOST),
            hex6(Ipv6Addr::UNSPECIFIED)
        );
        assert_eq!(
            parse_listening(&v6, true),
            vec![("[::1]:8080".parse().expect("addr"), 777)]
        );
    }

    #[test]
    fn conflicting_addresses() {
        let a = |s: &str| s.parse::<SocketAddr>().expect(s);
        assert!(conflicts(a("127.0.0.1:80"), a("127.0.0.1:80")));
        assert!(conflicts(a("127.0.0.1:80"), a("0.0.0.0:80")));
        assert!(conflicts(a("0.0.0.0:80"), a("127.0.0.1:80")));
        assert!(!conflicts(a("127.0.0.1:80"), a("127.0.0.2:80")));
        assert!(!conflicts(a("127.0.0.1:80"), a("127.0.0.1:81")));
        assert!(conflicts(a("127.0.0.1:80"), a("[::]:80")));
        assert!(conflicts(a("127.0.0.1:80"), a("[::ffff:127.0.0.1]:80")));
        assert!(!conflicts(a("127.0.0.1:80"), a("[::1]:80")));
        assert!(conflicts(a("[::1]:80"), a("[::]:80")));
        assert!(!conflicts(a("[::1]:80"), a("0.0.0.0:80")));
    }

    /// The kernel behaviour the first listener relies on: a live reuseport listener of this
    /// same user makes it fail, a connection left in TIME_WAIT does not, and the other
    /// workers' listeners still join it. (The binary-level check is the integration test
    /// `operations::second_instance_on_a_port_in_use_is_refused`.)
    #[test]
    fn first_listener_detects_a_live_group_but_not_time_wait() {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};

        let any = "127.0.0.1:0".parse().expect("addr");
        let running = open(&[any], 2, false).expect("first instance");
        let addr = running.bound[0];
        match open(&[addr], 1, false) {
            Err(ListenError::InUse { addr: a, holder }) => {
                assert_eq!(a, addr);
                // This process is skipped in the /proc scan: the holder is not visible.
                assert!(holder.contains("another process"), "{holder}");
            }
            other => panic!("expected InUse, got {other:?}"),
        }
        // --takeover joins the group.
        let joined = open(&[addr], 1, true).expect("takeover");
        for fd in running
            .per_worker
            .iter()
            .chain(&joined.per_worker)
            .flatten()
        {
            sys::close(*fd);
        }

        // A connection closed by the server side first stays in TIME_WAIT on its port.
        let server = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port_addr = server.local_addr().expect("addr");
        let mut client = TcpStream::connect(port_addr).expect("connect");
        let (accepted, _) = server.accept().expect("accept");
        drop(accepted);
        let _ = client.write_all(b"x");
        let mut sink = [0u8; 8];
        let _ = client.read(&mut sink);
        drop(client);
        drop(server);
        let again = open(&[port_addr], 2, false).expect("TIME_WAIT does not count");
        for fd in again.per_worker.iter().flatten() {
            sys::close(*fd);
        }
    }
}
