//! Passing open file descriptors between processes (`SCM_RIGHTS` over a Unix stream
//! socket), for the binary upgrade: the running dataplane hands its listening sockets to the
//! new one, which checks what each one is before it uses it ([`socket_facts`]).
//!
//! The kernel duplicates each descriptor into the receiver as part of `recvmsg`; the
//! receiver gets them close-on-exec (`MSG_CMSG_CLOEXEC`) and as [`OwnedFd`]s, so none leaks
//! into a later child and none is left open on an error. Control data cut short by the
//! kernel (`MSG_CTRUNC`: more descriptors than the buffer holds, or the receiver's
//! descriptor limit) is an error, never a silent loss.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use super::{RawSockAddr, check, empty_sockaddr};

/// Descriptors sent with one message at most (the kernel's `SCM_MAX_FD` is 253).
pub const MAX_FDS_PER_MESSAGE: usize = 200;

/// Room for the control message of [`MAX_FDS_PER_MESSAGE`] descriptors, aligned for
/// `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; 1024]);

fn cmsg_space(fds: usize) -> usize {
    // SAFETY: CMSG_SPACE is a pure size computation.
    unsafe { libc::CMSG_SPACE((fds * size_of::<RawFd>()) as u32) as usize }
}

/// Sends all of `bytes` on the connected Unix stream socket `sock`, with `fds` attached to
/// the first of them. The descriptors stay open here (the receiver gets duplicates).
pub fn send_with_fds(sock: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if bytes.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptors travel with at least one byte",
        ));
    }
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("at most {MAX_FDS_PER_MESSAGE} descriptors per message"),
        ));
    }
    let mut cbuf = CmsgBuf([0; 1024]);
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let space = cmsg_space(fds.len());
        msg.msg_control = cbuf.0.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `cbuf` (1024 bytes, aligned for cmsghdr), which holds
        // `space` bytes for `fds.len()` descriptors (200 * 4 + header < 1024); CMSG_FIRSTHDR
        // is therefore non-null and CMSG_DATA points inside `cbuf` with room for the copy.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                std::mem::size_of_val(fds),
            );
        }
    }
    // SAFETY: `msg` points at `iov` (over `bytes`) and `cbuf`, all alive for the call.
    let sent = check_len(unsafe { libc::sendmsg(sock, &raw const msg, libc::MSG_NOSIGNAL) })?;
    // The descriptors went with the first byte; the rest is plain data.
    let mut rest = &bytes[sent..];
    while !rest.is_empty() {
        // SAFETY: `rest` is a valid slice for the call.
        let n = check_len(unsafe {
            libc::send(sock, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL)
        })?;
        rest = &rest[n..];
    }
    Ok(())
}

/// Receives up to `buf.len()` bytes from the Unix stream socket `sock`, appending the
/// descriptors that came with them to `fds` (close-on-exec). `Ok(0)`: the peer closed.
pub fn recv_with_fds(sock: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut cbuf = CmsgBuf([0; 1024]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = cmsg_space(MAX_FDS_PER_MESSAGE + 50) as _;
    debug_assert!(cmsg_space(MAX_FDS_PER_MESSAGE + 50) <= cbuf.0.len());
    // SAFETY: `msg` points at `iov` (over `buf`) and `cbuf`, valid for writes of the lengths
    // given, all alive for the call.
    let n = check_len(unsafe { libc::recvmsg(sock, &raw mut msg, libc::MSG_CMSG_CLOEXEC) })?;
    let before = fds.len();
    // SAFETY: the kernel filled `msg_controllen` bytes of `cbuf` with well-formed cmsghdrs;
    // CMSG_FIRSTHDR/CMSG_NXTHDR walk them within that length. Each SCM_RIGHTS payload is an
    // array of descriptors the kernel has just installed in this process and that nothing
    // else owns, so each becomes an OwnedFd exactly once (read unaligned: CMSG_DATA need not
    // be aligned for RawFd).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                for i in 0..len / size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        // What did arrive is closed with the OwnedFds.
        fds.truncate(before);
        return Err(io::Error::other(
            "descriptors were cut short (MSG_CTRUNC): too many in one message, or the descriptor limit is reached",
        ));
    }
    Ok(n)
}

fn check_len(ret: isize) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// What a received descriptor is, as the kernel says: checked before it is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketFacts {
    /// `SO_DOMAIN`: `AF_INET`, `AF_INET6`, `AF_UNIX`...
    pub domain: i32,
    /// `SO_TYPE`: `SOCK_STREAM`, `SOCK_DGRAM`...
    pub sock_type: i32,
    /// `SO_ACCEPTCONN`: listening.
    pub listening: bool,
    /// The bound address (`getsockname`), for an IP socket.
    pub local: Option<SocketAddr>,
}

impl SocketFacts {
    /// A listening TCP socket (IPv4 or IPv6).
    pub fn is_tcp_listener(&self) -> bool {
        matches!(self.domain, libc::AF_INET | libc::AF_INET6)
            && self.sock_type == libc::SOCK_STREAM
            && self.listening
    }
}

fn int_opt(fd: RawFd, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid out-parameters of the stated size.
    check(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&raw mut value).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

/// The kind, state and address of socket `fd`; an error if `fd` is not a socket (`ENOTSOCK`)
/// or not open (`EBADF`).
pub fn socket_facts(fd: RawFd) -> io::Result<SocketFacts> {
    let domain = int_opt(fd, libc::SO_DOMAIN)?;
    let sock_type = int_opt(fd, libc::SO_TYPE)?;
    let listening = int_opt(fd, libc::SO_ACCEPTCONN)? != 0;
    let local = if matches!(domain, libc::AF_INET | libc::AF_INET6) {
        let mut raw: RawSockAddr = empty_sockaddr();
        // SAFETY: storage and len are valid out-parameters of the stated size.
        check(unsafe { libc::getsockname(fd, (&raw mut raw.storage).cast(), &mut raw.len) })?;
        raw.to_std()
    } else {
        None
    };
    Ok(SocketFacts {
        domain,
        sock_type,
        listening,
        local,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn listeners_cross_a_unix_socket_and_keep_accepting() {
        let (a, b) = UnixStream::pair().expect("pair");
        let l1 = TcpListener::bind("127.0.0.1:0").expect("bind");
        let l2 = TcpListener::bind("127.0.0.1:0").expect("bind");
        let (addr1, addr2) = (l1.local_addr().expect("a"), l2.local_addr().expect("a"));
        let payload = vec![7u8; 100_000]; // more than one socket buffer: sent in pieces
        let sender = std::thread::spawn({
            let payload = payload.clone();
            let fds = [l1.as_raw_fd(), l2.as_raw_fd()];
            move || send_with_fds(a.as_raw_fd(), &payload, &fds).map(|()| a)
        });
        let mut got = Vec::new();
        let mut fds = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        while got.len() < payload.len() {
            let n = recv_with_fds(b.as_raw_fd(), &mut buf, &mut fds).expect("recv");
            assert!(n > 0, "closed early");
            got.extend_from_slice(&buf[..n]);
        }
        let _a = sender.join().expect("join").expect("send");
        assert_eq!(got, payload);
        assert_eq!(fds.len(), 2);
        // Close-on-exec, as MSG_CMSG_CLOEXEC promises.
        for fd in &fds {
            // SAFETY: fcntl F_GETFD on an open descriptor we own.
            let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
            assert!(flags & libc::FD_CLOEXEC != 0);
        }
        // The very same sockets: facts match, and a connection to the original address is
        // accepted through the received descriptor.
        let facts = socket_facts(fds[0].as_raw_fd()).expect("facts");
        assert!(facts.is_tcp_listener(), "{facts:?}");
        assert_eq!(facts.local, Some(addr1));
        assert_eq!(
            socket_facts(fds[1].as_raw_fd()).expect("facts").local,
            Some(addr2)
        );
        drop(l1);
        let received = TcpListener::from(fds.remove(0));
        let _client = std::net::TcpStream::connect(addr1).expect("connect");
        let (_conn, peer) = received.accept().expect("accept via the received fd");
        assert!(peer.ip().is_loopback());
    }

    #[test]
    fn facts_tell_other_descriptors_apart() {
        let (a, _b) = UnixStream::pair().expect("pair");
        let unix = socket_facts(a.as_raw_fd()).expect("facts");
        assert_eq!(unix.domain, libc::AF_UNIX);
        assert!(!unix.is_tcp_listener());
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let facts = socket_facts(udp.as_raw_fd()).expect("facts");
        assert_eq!(facts.sock_type, libc::SOCK_DGRAM);
        assert!(!facts.is_tcp_listener());
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let conn = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("c");
        let facts = socket_facts(conn.as_raw_fd()).expect("facts");
        assert!(!facts.listening && !facts.is_tcp_listener());
        let file = std::fs::File::open("/proc/self/stat").expect("file");
        let err = socket_facts(file.as_raw_fd()).expect_err("not a socket");
        assert_eq!(err.raw_os_error(), Some(libc::ENOTSOCK));
    }

    #[test]
    fn refuses_too_many_descriptors_and_empty_messages() {
        let (a, _b) = UnixStream::pair().expect("pair");
        let many = vec![a.as_raw_fd(); MAX_FDS_PER_MESSAGE + 1];
        assert!(send_with_fds(a.as_raw_fd(), b"x", &many).is_err());
        assert!(send_with_fds(a.as_raw_fd(), b"", &[a.as_raw_fd()]).is_err());
    }

    #[test]
    fn a_closed_peer_reads_zero() {
        let (a, b) = UnixStream::pair().expect("pair");
        drop(a);
        let mut fds = Vec::new();
        let mut buf = [0u8; 8];
        assert_eq!(
            recv_with_fds(b.as_raw_fd(), &mut buf, &mut fds).expect("recv"),
            0
        );
        assert!(fds.is_empty());
    }
}
