//! Thin, checked wrappers over the syscalls the dataplane makes outside io_uring: sockets
//! and listeners (with the SO_REUSEPORT steering program), splice and pipes, eventfd,
//! signals, CPU affinity, anonymous mappings and peer credentials; `handoff` passes
//! descriptors between processes (`SCM_RIGHTS`) for the binary upgrade; `alloc` asks the
//! allocator (mimalloc) to give freed memory back.
//!
//! Each wrapper returns `io::Result` (or ignores an error the caller has no use for) and
//! keeps its `unsafe` to one FFI call with its `// SAFETY:` argument, so callers (the
//! worker, the control thread, `main`) stay safe code.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

pub mod alloc;
pub mod handoff;

pub(crate) fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A socket address in the kernel's layout, kept at a stable heap address while a connect
/// referring to it is in flight.
#[derive(Clone, Copy)]
pub struct RawSockAddr {
    pub storage: libc::sockaddr_storage,
    pub len: libc::socklen_t,
}

impl std::fmt::Debug for RawSockAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawSockAddr({:?})", self.to_std())
    }
}

impl RawSockAddr {
    /// The kernel's layout of `addr`.
    pub fn from_std(addr: SocketAddr) -> RawSockAddr {
        // SAFETY: sockaddr_storage is plain old data; all-zero is a valid (AF_UNSPEC) value.
        let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe { std::ptr::write((&raw mut storage).cast::<libc::sockaddr_in>(), sin) };
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                unsafe { std::ptr::write((&raw mut storage).cast::<libc::sockaddr_in6>(), sin6) };
                size_of::<libc::sockaddr_in6>()
            }
        };
        RawSockAddr {
            storage,
            len: len as libc::socklen_t,
        }
    }

    /// Back to a std address; `None` for a family other than IPv4 and IPv6.
    pub fn to_std(self) -> Option<SocketAddr> {
        match self.storage.ss_family as libc::c_int {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a sockaddr_in.
                let sin: libc::sockaddr_in =
                    unsafe { std::ptr::read((&raw const self.storage).cast()) };
                let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
                Some(SocketAddr::V4(SocketAddrV4::new(
                    ip,
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says the storage holds a sockaddr_in6.
                let sin6: libc::sockaddr_in6 =
                    unsafe { std::ptr::read((&raw const self.storage).cast()) };
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                Some(SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    /// The address as the kernel reads it (valid for `len` bytes while `self` lives).
    pub fn as_ptr(&self) -> *const libc::sockaddr {
        (&raw const self.storage).cast()
    }
}

fn family(addr: &SocketAddr) -> libc::c_int {
    match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    }
}

/// A non-blocking, close-on-exec TCP socket for `addr`'s family.
pub fn tcp_socket(addr: &SocketAddr) -> io::Result<RawFd> {
    // SAFETY: plain syscall with constant arguments; the result is checked.
    check(unsafe {
        libc::socket(
            family(addr),
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })
}

fn set_int_opt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` lives for the call and its size is passed.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// TCP_NODELAY: small writes go out at once (WebSocket frames are latency-bound).
pub fn set_nodelay(fd: RawFd) -> io::Result<()> {
    set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)
}

/// SO_SNDBUF: the socket's send buffer, in bytes (the kernel doubles it and applies a floor).
pub fn set_send_buffer(fd: RawFd, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, value)
}

/// SO_RCVBUF: the socket's receive buffer, in bytes (the kernel doubles it and applies a
/// floor).
pub fn set_recv_buffer(fd: RawFd, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, value)
}

/// How a listener enters the SO_REUSEPORT group of its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// The first listener of an address: bound and listening *without* SO_REUSEPORT, so the
    /// kernel refuses it (EADDRINUSE) if any other socket listens on the address, a running
    /// wsedge's reuseport listeners included (with SO_REUSEPORT they would be joined
    /// silently). A process that bound the address at the same moment is refused at its
    /// listen or at ours. SO_REUSEADDR is set, so connections in TIME_WAIT do not count. Once
    /// it listens, SO_REUSEPORT is set: the kernel then lets the other workers' listeners
    /// join it, and it becomes the first member of their group.
    Found,
    /// SO_REUSEPORT before the bind: joins the group listening on the address (the other
    /// workers' listeners; with `wsedge --takeover`, another process's group, which must
    /// belong to the same user).
    Join,
}

/// One worker's listener on `addr`; SO_REUSEPORT lets every worker own one on the same
/// address (see [`Group`] for how the first one makes sure it is alone).
pub fn reuseport_listener(addr: &SocketAddr, backlog: i32, group: Group) -> io::Result<RawFd> {
    let fd = tcp_socket(addr)?;
    let setup = || -> io::Result<()> {
        set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        if group == Group::Join {
            set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        }
        // Accepted sockets inherit TCP_NODELAY from their listener (Linux copies it into
        // the child): one setsockopt here instead of one per connection.
        set_nodelay(fd)?;
        if addr.is_ipv6() {
            set_int_opt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
        }
        let raw = RawSockAddr::from_std(*addr);
        // SAFETY: `raw` is a valid sockaddr of `raw.len` bytes for the call.
        check(unsafe { libc::bind(fd, raw.as_ptr(), raw.len) })?;
        // SAFETY: plain syscall on a socket we own.
        check(unsafe { libc::listen(fd, backlog) })?;
        if group == Group::Found {
            set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        }
        Ok(())
    };
    match setup() {
        Ok(()) => Ok(fd),
        Err(e) => {
            close(fd);
            Err(e)
        }
    }
}

/// A blocking `std` listener on `addr` for a service thread (metrics, publish API), made
/// like a worker's ([`reuseport_listener`] with `group`): a binary upgrade's next generation
/// joins the old one's address instead of failing on it.
pub fn service_listener(addr: &SocketAddr, group: Group) -> io::Result<std::net::TcpListener> {
    use std::os::fd::FromRawFd;
    let fd = reuseport_listener(addr, 128, group)?;
    // SAFETY: `fd` was just created by `reuseport_listener`, is open, and is owned by nothing
    // else: the listener takes it over (and closes it when dropped).
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    listener.set_nonblocking(false)?;
    Ok(listener)
}

pub(crate) fn empty_sockaddr() -> RawSockAddr {
    RawSockAddr {
        // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
        storage: unsafe { zeroed() },
        len: size_of::<libc::sockaddr_storage>() as libc::socklen_t,
    }
}

/// The address a socket is bound to (`getsockname`).
pub fn local_addr(fd: RawFd) -> io::Result<SocketAddr> {
    let mut raw = empty_sockaddr();
    // SAFETY: storage and len are valid out-parameters of the stated size.
    check(unsafe { libc::getsockname(fd, (&raw mut raw.storage).cast(), &mut raw.len) })?;
    raw.to_std()
        .ok_or_else(|| io::Error::other("unknown address family"))
}

/// The address of a connected socket's peer (`getpeername`).
pub fn peer_addr(fd: RawFd) -> io::Result<SocketAddr> {
    let mut raw = empty_sockaddr();
    // SAFETY: storage and len are valid out-parameters of the stated size.
    check(unsafe { libc::getpeername(fd, (&raw mut raw.storage).cast(), &mut raw.len) })?;
    raw.to_std()
        .ok_or_else(|| io::Error::other("unknown address family"))
}

/// `shutdown(2)`; errors (e.g. ENOTCONN after a reset) are of no use to the caller.
pub fn shutdown(fd: RawFd, how: libc::c_int) {
    if fd >= 0 {
        // SAFETY: plain syscall; a stale or closed fd only yields an error.
        unsafe { libc::shutdown(fd, how) };
    }
}

/// `close(2)`; the caller owns `fd` and never uses it again. Errors are of no use here.
pub fn close(fd: RawFd) {
    if fd >= 0 {
        // SAFETY: the caller owns `fd` and never uses it again.
        unsafe { libc::close(fd) };
    }
}

/// A non-blocking pipe for the splice relay, asked to hold `size` bytes: `(read end, write
/// end, the capacity the kernel gave)`, which may be less than asked (see [`crate::pipes`]).
pub fn pipe(size: u32) -> io::Result<(RawFd, RawFd, u32)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two ints.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
    // SAFETY: plain fcntl on a pipe we own. It returns the capacity the kernel set (it rounds
    // up to pages); it fails (EPERM) for a user past `fs.pipe-user-pages-soft` without
    // CAP_SYS_RESOURCE, and the pipe keeps the size it was made with.
    let set = unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, size as libc::c_int) };
    let capacity = if set > 0 {
        set
    } else {
        // SAFETY: plain fcntl on a pipe we own.
        unsafe { libc::fcntl(fds[1], libc::F_GETPIPE_SZ) }
    };
    if capacity <= 0 {
        let e = io::Error::last_os_error();
        close(fds[0]);
        close(fds[1]);
        return Err(e);
    }
    Ok((fds[0], fds[1], capacity as u32))
}

/// One non-blocking `splice(2)` of up to `len` bytes from `from` to `to` (one of them a
/// pipe). Runs on the worker thread: an io_uring splice would be handed to a kernel worker
/// thread (`iou-wrk`) on every call. Both fds must be `O_NONBLOCK` (sockets ignore
/// `SPLICE_F_NONBLOCK`).
pub fn splice(from: RawFd, to: RawFd, len: u32) -> io::Result<usize> {
    // SAFETY: plain syscall on fds the caller owns; null offsets mean "current position".
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len as usize,
            libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A non-blocking eventfd that wakes a worker's ring.
pub fn eventfd() -> io::Result<RawFd> {
    // SAFETY: plain syscall with constant flags.
    check(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })
}

/// Adds one to an eventfd's counter (wakes a ring waiting on it).
pub fn eventfd_signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to an eventfd.
    unsafe { libc::write(fd, (&raw const one).cast(), 8) };
}

/// Whether the kernel may back this process's memory with transparent huge pages
/// (`prctl(PR_SET_THP_DISABLE)`: it covers every thread, later faults only, and survives
/// `execve`, so a binary upgrade sets it again from its own config). mimalloc asks for huge
/// pages on its arenas (`madvise(MADV_HUGEPAGE)`), so with them a worker's heap grows in 2 MiB
/// steps: 12 MB more resident per process at start, and idle connections' memory rounded up
/// to whole huge pages (docs/benchmarks.md, "Idle memory").
pub fn set_transparent_huge_pages(enabled: bool) -> io::Result<()> {
    let disable = libc::c_ulong::from(!enabled);
    // SAFETY: PR_SET_THP_DISABLE takes an integer flag and three zero arguments; no pointers.
    check(unsafe {
        libc::prctl(
            libc::PR_SET_THP_DISABLE,
            disable,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })
    .map(drop)
}

/// Pins the calling thread to `cpu` (best effort: an error is logged by the caller).
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain old data; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = zeroed();
        libc::CPU_SET(cpu, &mut set);
        check(libc::sched_setaffinity(
            0,
            size_of::<libc::cpu_set_t>(),
            &set,
        ))
        .map(drop)
    }
}

/// Blocks the shutdown signals (and SIGHUP, and SIGUSR2: binary upgrade) in the calling thread (threads spawned later inherit the mask)
/// and ignores SIGPIPE, so a write to a closed socket is an error, not a death.
pub fn block_shutdown_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is filled by sigemptyset/sigaddset before use; signal() with SIG_IGN
    // installs no handler code.
    unsafe {
        let mut set: libc::sigset_t = zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR2] {
            libc::sigaddset(&mut set, sig);
        }
        check(libc::pthread_sigmask(
            libc::SIG_BLOCK,
            &set,
            std::ptr::null_mut(),
        ))?;
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        Ok(set)
    }
}

/// Waits up to `timeout` for one of the blocked signals; `None` on timeout.
pub fn wait_signal(set: &libc::sigset_t, timeout: std::time::Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` and `ts` are valid for the call; no siginfo is requested.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

/// An anonymous private mapping of `len` bytes: pages cost memory only once touched.
pub(crate) fn map_anonymous(len: usize) -> io::Result<*mut u8> {
    // SAFETY: anonymous mapping, no file; the result is checked against MAP_FAILED.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(ptr.cast())
    }
}

/// # Safety
/// `ptr` and `len` must come from one [`map_anonymous`] call, and nothing may use the
/// mapping afterwards (including in-flight kernel operations).
pub(crate) unsafe fn unmap(ptr: *mut u8, len: usize) {
    // SAFETY: guaranteed by the caller.
    unsafe { libc::munmap(ptr.cast(), len) };
}

/// The uid of the process on the other end of a Unix socket (SO_PEERCRED).
pub fn peer_uid(fd: RawFd) -> io::Result<u32> {
    peer_cred(fd).map(|c| c.uid)
}

/// The pid of the process on the other end of a Unix socket (SO_PEERCRED): who connected.
pub fn peer_pid(fd: RawFd) -> io::Result<u32> {
    peer_cred(fd).map(|c| c.pid as u32)
}

fn peer_cred(fd: RawFd) -> io::Result<libc::ucred> {
    // SAFETY: ucred is plain old data; all-zero is valid.
    let mut cred: libc::ucred = unsafe { zeroed() };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid out-parameters of the stated size.
    check(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    })?;
    Ok(cred)
}

/// This process's effective uid.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The gid of a group name, from the system's group database.
pub fn group_gid(name: &str) -> io::Result<u32> {
    let cname =
        std::ffi::CString::new(name).map_err(|_| io::Error::other("group name has a NUL byte"))?;
    // SAFETY: `cname` is a valid C string; getgrnam's result is read at once, before any other
    // call could reuse its static storage (only the control thread calls this, at start).
    let group = unsafe { libc::getgrnam(cname.as_ptr()) };
    if group.is_null() {
        return Err(io::Error::other(format!("no group named {name:?}")));
    }
    // SAFETY: non-null pointer to the group entry returned just above.
    Ok(unsafe { (*group).gr_gid })
}

/// Takes a steering program off a SO_REUSEPORT group (`fd`: any socket of it), so the kernel
/// spreads new connections by its own hash of the four-tuple. A group without one is fine.
pub fn steer_by_connection(fd: RawFd) -> io::Result<()> {
    // The kernel reads an int for every SOL_SOCKET option; this one ignores it.
    match set_int_opt(fd, libc::SOL_SOCKET, libc::SO_DETACH_REUSEPORT_BPF, 0) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

/// Steers every connection from one client address to the same listener of a SO_REUSEPORT
/// group of `workers` listeners (those that called `listen()` on this address, in that
/// order), so per-address state (firewall rate limits and caps) stays in one worker.
///
/// A classic BPF program, attached once to any socket of the group: it hashes the IPv4
/// source address, or the XOR of the four words of the IPv6 one, and returns the hash modulo
/// `workers`.
pub fn steer_by_client_address(fd: RawFd, workers: usize) -> io::Result<()> {
    const NET: u32 = 0xfff0_0000; // SKF_NET_OFF: offsets relative to the network header
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let (ld, ldb, w, b, abs) = (
        libc::BPF_LD,
        libc::BPF_LD,
        libc::BPF_W,
        libc::BPF_B,
        libc::BPF_ABS,
    );
    let alu = libc::BPF_ALU;
    let program = [
        op(ldb | b | abs, 0, 0, NET), // 0: A = first byte of the IP header
        op(alu | libc::BPF_RSH | libc::BPF_K, 0, 0, 4), // 1: A = IP version
        op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 2, 0, 6), // 2: v6 -> 5
        op(ld | w | abs, 0, 0, NET + 12), // 3: A = IPv4 source
        op(libc::BPF_JMP | libc::BPF_JA, 0, 0, 11), // 4: -> 16
        op(ld | w | abs, 0, 0, NET + 8), // 5: A = IPv6 source, word 0
        op(libc::BPF_MISC | libc::BPF_TAX, 0, 0, 0), // 6: X = A
        op(ld | w | abs, 0, 0, NET + 12), // 7
        op(alu | libc::BPF_XOR | libc::BPF_X, 0, 0, 0), // 8: A ^= X
        op(libc::BPF_MISC | libc::BPF_TAX, 0, 0, 0), // 9
        op(ld | w | abs, 0, 0, NET + 16), // 10
        op(alu | libc::BPF_XOR | libc::BPF_X, 0, 0, 0), // 11
        op(libc::BPF_MISC | libc::BPF_TAX, 0, 0, 0), // 12
        op(ld | w | abs, 0, 0, NET + 20), // 13
        op(alu | libc::BPF_XOR | libc::BPF_X, 0, 0, 0), // 14
        op(libc::BPF_JMP | libc::BPF_JA, 0, 0, 0), // 15: -> 16
        op(alu | libc::BPF_MUL | libc::BPF_K, 0, 0, 0x9E37_79B1), // 16: spread the bits
        op(alu | libc::BPF_RSH | libc::BPF_K, 0, 0, 16), // 17
        op(alu | libc::BPF_MOD | libc::BPF_K, 0, 0, workers as u32), // 18: listener index
        op(libc::BPF_RET | libc::BPF_A, 0, 0, 0), // 19
    ];
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at `program`, both alive for the call; the kernel copies the
    // program during setsockopt.
    check(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&raw const prog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    })
    .map(drop)
}
