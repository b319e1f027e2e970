//! The ring's operations against the real kernel, on loopback sockets: what each operation
//! owns, what its completion hands back, and that bytes and provided buffers are neither lost
//! nor duplicated. Peers are plain std sockets on threads.
//!
//! Every kernel feature used here exists on the project's machines (Linux 6.x); where one is
//! missing the test fails with a message naming it (`need`), rather than passing.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::thread;
use std::time::{Duration, Instant};

use wsedge_ring::{
    BufId, Chunk, Completion, OpData, OpKind, Owner, Ring, RingConfig, SendQueue, SentChunks,
    Written, sys,
};

const WAIT: Duration = Duration::from_secs(10);

fn ring_with(buffer_count: u16, buffer_size: u32) -> Ring {
    Ring::new(RingConfig {
        entries: 64,
        buffer_count,
        buffer_size,
    })
    .unwrap_or_else(|e| {
        panic!("KERNEL FEATURE MISSING: io_uring with a provided-buffer ring (Linux 5.19+): {e}")
    })
}

fn ring() -> Ring {
    ring_with(16, 4096)
}

/// Fails loudly when a completion says the kernel does not know the operation.
fn need(c: &Completion, feature: &str) {
    assert!(
        c.result != -libc::EINVAL && c.result != -libc::EOPNOTSUPP,
        "KERNEL FEATURE MISSING: {feature} (completion {c:?})"
    );
}

/// Submits and drains until `done` says the completions collected so far are enough.
fn wait_for(
    ring: &mut Ring,
    out: &mut Vec<Completion>,
    what: &str,
    done: impl Fn(&[Completion]) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    while !done(out) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; got {out:?}"
        );
        ring.submit_and_wait(Some(Duration::from_millis(20)))
            .unwrap_or_else(|e| panic!("submit_and_wait: {e}"));
        ring.drain(out);
    }
}

/// The next completion.
fn next(ring: &mut Ring, what: &str) -> Completion {
    let mut out = Vec::new();
    wait_for(ring, &mut out, what, |c| !c.is_empty());
    assert_eq!(out.len(), 1, "expected one completion for {what}: {out:?}");
    out.remove(0)
}

/// Whatever completes within `wait` (for checks that something does *not* complete).
fn quiet(ring: &mut Ring, wait: Duration) -> Vec<Completion> {
    let mut out = Vec::new();
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        ring.submit_and_wait(Some(Duration::from_millis(10)))
            .unwrap_or_else(|e| panic!("submit_and_wait: {e}"));
        ring.drain(&mut out);
    }
    out
}

/// A listener on a free loopback port.
fn listener() -> (RawFd, SocketAddr) {
    let any: SocketAddr = "127.0.0.1:0"
        .parse()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    let fd = sys::reuseport_listener(&any, 64, sys::Group::Join)
        .unwrap_or_else(|e| panic!("listener: {e}"));
    let addr = sys::local_addr(fd).unwrap_or_else(|e| panic!("local_addr: {e}"));
    (fd, addr)
}

/// A connected pair: the peer (a blocking std socket) and our non-blocking end's fd.
fn pair() -> (TcpStream, RawFd) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = l.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"));
    let peer = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect: {e}"));
    let (ours, _) = l.accept().unwrap_or_else(|e| panic!("accept: {e}"));
    ours.set_nonblocking(true)
        .unwrap_or_else(|e| panic!("nonblocking: {e}"));
    peer.set_read_timeout(Some(WAIT))
        .unwrap_or_else(|e| panic!("timeout: {e}"));
    (peer, ours.into_raw_fd())
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn head(data: OpData) -> Vec<u8> {
    match data {
        OpData::Head(v) => v,
        other => panic!("expected a head buffer, got {other:?}"),
    }
}

fn sent(data: OpData) -> Box<SentChunks> {
    match data {
        OpData::Sent(s) => s,
        other => panic!("expected sent chunks, got {other:?}"),
    }
}

/// Receives provided buffers until `count` are held; returns each with the bytes it holds.
fn hold_buffers(ring: &mut Ring, count: usize) -> Vec<(BufId, Vec<u8>)> {
    let (mut peer, fd) = pair();
    let size = ring.buffers().size() as usize;
    peer.write_all(&pattern(count * size, 99))
        .unwrap_or_else(|e| panic!("write: {e}"));
    let op = ring.recv_multi(Owner(900), fd, 0);
    let mut held = Vec::new();
    let mut out = Vec::new();
    wait_for(ring, &mut out, "buffers to fill", |c| {
        c.iter().filter(|c| c.buf.is_some()).count() >= count
    });
    ring.cancel(op);
    wait_for(ring, &mut out, "the recv to end", |c| {
        c.iter().any(|c| !c.more)
    });
    for c in out {
        need(
            &c,
            "multishot recv with a provided-buffer ring (Linux 6.0+)",
        );
        if let Some(id) = c.buf {
            let bytes = ring.buffers().bytes(id, c.result as usize).to_vec();
            held.push((id, bytes));
        }
    }
    sys::close(fd);
    held
}

/// Reads everything until EOF on a thread, `pace` bytes at a time with a pause between reads.
fn read_all(mut peer: TcpStream, pace: usize, pause: Duration) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = vec![0; pace];
        loop {
            match peer.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!("peer read after {} bytes: {e}", got.len()),
            }
            if !pause.is_zero() {
                thread::sleep(pause);
            }
        }
    })
}

/// The flags of an open file, from /proc (no unsafe fcntl here).
fn fd_flags(fd: RawFd) -> u32 {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .unwrap_or_else(|e| panic!("fdinfo: {e}"));
    let line = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .unwrap_or_else(|| panic!("no flags in {info}"));
    u32::from_str_radix(line.trim(), 8).unwrap_or_else(|e| panic!("flags {line}: {e}"))
}

#[test]
fn accept_multi_accepts_several_connections() {
    let mut ring = ring();
    let (lfd, addr) = listener();
    let op = ring.accept_multi(Owner(7), lfd);
    let clients: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect: {e}")))
        .collect();
    let mut out = Vec::new();
    wait_for(&mut ring, &mut out, "three accepts", |c| c.len() >= 3);
    let mut peers = Vec::new();
    for c in &out {
        need(c, "multishot accept (Linux 5.19+)");
        assert_eq!((c.owner, c.op, c.kind), (Owner(7), op, OpKind::Accept));
        assert!(c.more, "multishot accept ended early: {c:?}");
        assert!(c.result >= 0, "{c:?}");
        let flags = fd_flags(c.result);
        assert_ne!(
            flags & libc::O_NONBLOCK as u32,
            0,
            "accepted socket is blocking"
        );
        assert_ne!(
            flags & libc::O_CLOEXEC as u32,
            0,
            "accepted socket lacks CLOEXEC"
        );
        peers.push(sys::peer_addr(c.result).unwrap_or_else(|e| panic!("peer: {e}")));
        sys::close(c.result);
    }
    let mut expected: Vec<SocketAddr> = clients
        .iter()
        .map(|s| s.local_addr().unwrap_or_else(|e| panic!("{e}")))
        .collect();
    peers.sort();
    expected.sort();
    assert_eq!(peers, expected);
    assert!(ring.is_live(op));

    ring.cancel(op);
    let c = next(&mut ring, "the accept to end");
    assert_eq!((c.op, c.result, c.more), (op, -libc::ECANCELED, false));
    assert_eq!(ring.in_flight(), 0);
    sys::close(lfd);
}

#[test]
fn recv_head_returns_the_vec_with_the_bytes() {
    let mut ring = ring();
    let (mut peer, fd) = pair();
    peer.write_all(b"GET / HTTP/1.1\r\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let op = ring.recv_head(Owner(1), fd, Vec::new(), 8192);
    let c = next(&mut ring, "the head recv");
    assert_eq!(
        (c.owner, c.op, c.kind, c.more),
        (Owner(1), op, OpKind::RecvHead, false)
    );
    assert_eq!(c.result, 16);
    let buf = head(c.data);
    assert_eq!(buf, b"GET / HTTP/1.1\r\n");
    assert_eq!(buf.capacity(), 1024, "first capacity is HEAD_BUF_START");

    // The returned Vec goes on receiving after what it holds.
    peer.write_all(b"Host: x\r\n\r\n")
        .unwrap_or_else(|e| panic!("{e}"));
    ring.recv_head(Owner(1), fd, buf, 8192);
    let buf = head(next(&mut ring, "the second recv").data);
    assert_eq!(buf, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");

    // EOF: result 0, the Vec comes back unchanged.
    peer.shutdown(Shutdown::Write)
        .unwrap_or_else(|e| panic!("{e}"));
    ring.recv_head(Owner(1), fd, buf, 8192);
    let c = next(&mut ring, "EOF");
    assert_eq!(c.result, 0);
    assert_eq!(head(c.data), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(ring.in_flight(), 0);
    sys::close(fd);
}

#[test]
fn recv_head_never_reads_past_max_len_plus_one() {
    let mut ring = ring();
    let max = 100;
    // A Vec that must grow to the limit, and one with room past it.
    for start in [Vec::new(), Vec::with_capacity(4096)] {
        let (mut peer, fd) = pair();
        let sent = pattern(300, 1);
        peer.write_all(&sent).unwrap_or_else(|e| panic!("{e}"));
        let room = start.capacity();
        let mut buf = start;
        let mut recvs = 0;
        while buf.len() <= max {
            ring.recv_head(Owner(2), fd, buf, max);
            let c = next(&mut ring, "a head recv");
            assert!(c.result > 0, "{c:?}");
            buf = head(c.data);
            assert!(
                buf.capacity() <= (max + 1).max(room),
                "capacity {}",
                buf.capacity()
            );
            recvs += 1;
        }
        assert_eq!(buf.len(), max + 1, "one byte over the limit, never more");
        assert_eq!(buf, sent[..max + 1]);
        assert!(recvs <= 2, "{recvs} recvs");

        // The rest is still in the socket.
        ring.recv_head(Owner(2), fd, Vec::new(), 4096);
        let rest = head(next(&mut ring, "the rest").data);
        assert_eq!(rest, sent[max + 1..]);
        sys::close(fd);
    }
}

#[test]
fn recv_multi_with_a_limit_ends_once_the_limit_is_reached() {
    if !wsedge_ring::recv_limit() {
        eprintln!(
            "SKIPPING recv_multi_with_a_limit: this kernel ignores multishot recv limits \
             (IORING_RECV_MSHOT_LIM, Linux 6.16+); wsedge relays without them there"
        );
        return;
    }
    let size = 64;
    let mut ring = ring_with(16, size);
    let (mut peer, fd) = pair();
    // Ten buffers' worth waiting; a limit of 2.5 buffers: the recv ends with the third.
    let stream = pattern(10 * size as usize, 3);
    peer.write_all(&stream).unwrap_or_else(|e| panic!("{e}"));
    let recv = ring.recv_multi(Owner(4), fd, 160);
    let mut out = Vec::new();
    wait_for(&mut ring, &mut out, "the limited recv to end", |c| {
        c.iter().any(|c| !c.more)
    });
    let bytes: usize = out.iter().map(|c| c.result.max(0) as usize).sum();
    let last = out.last().unwrap_or_else(|| panic!("no completion"));
    assert_eq!((last.op, last.kind), (recv, OpKind::RecvMulti));
    assert!(last.result > 0, "ended by its limit, with data: {out:?}");
    assert_eq!(
        bytes,
        3 * size as usize,
        "up to the completion reaching 160: {out:?}"
    );
    assert!(!ring.is_live(recv));
    for c in out {
        ring.discard(c);
    }
    ring.buffers().publish();
    sys::close(fd);
}

#[test]
fn recv_one_takes_one_buffer_and_leaves_the_rest_in_the_socket() {
    let size = 64;
    let mut ring = ring_with(16, size);
    let (mut peer, fd) = pair();
    let stream = pattern(4 * size as usize, 5);
    peer.write_all(&stream).unwrap_or_else(|e| panic!("{e}"));
    let mut got = Vec::new();
    for turn in 0..4 {
        let recv = ring.recv_one(Owner(5), fd);
        let c = next(&mut ring, "a one-shot recv");
        need(&c, "recv with a provided buffer (Linux 5.19+)");
        assert_eq!((c.op, c.kind, c.more), (recv, OpKind::RecvOne, false));
        assert_eq!(c.result, size as i32, "turn {turn}: one buffer's worth");
        let id = c
            .buf
            .unwrap_or_else(|| panic!("data without a buffer: {c:?}"));
        assert_eq!(ring.buffers().held(), 1);
        got.extend_from_slice(ring.buffers().bytes(id, size as usize));
        ring.buffers().give_back(id);
        ring.buffers().publish();
    }
    assert_eq!(got, stream, "bytes lost, duplicated or reordered");
    peer.shutdown(Shutdown::Write)
        .unwrap_or_else(|e| panic!("{e}"));
    ring.recv_one(Owner(5), fd);
    let eof = next(&mut ring, "EOF");
    assert_eq!((eof.result, eof.buf), (0, None));
    sys::close(fd);
}

#[test]
fn recv_multi_fills_provided_buffers_until_enobufs_then_rearms() {
    let size = 64;
    let mut ring = ring_with(4, size);
    let (mut peer, fd) = pair();
    let stream = pattern(10 * size as usize, 7);
    peer.write_all(&stream).unwrap_or_else(|e| panic!("{e}"));

    let mut got = Vec::new();
    let mut enobufs = 0;
    let mut op = None;
    while got.len() < stream.len() {
        assert!(enobufs < 10, "no progress: {} bytes", got.len());
        let recv = *op.get_or_insert_with(|| ring.recv_multi(Owner(3), fd, 0));
        let mut out = Vec::new();
        let before = got.len();
        wait_for(&mut ring, &mut out, "the recv to end or all bytes", |c| {
            let bytes: usize = c.iter().map(|c| c.result.max(0) as usize).sum();
            c.iter().any(|c| !c.more) || before + bytes >= stream.len()
        });
        let mut ids = Vec::new();
        for c in &out {
            need(c, "multishot recv with a provided-buffer ring (Linux 6.0+)");
            assert_eq!((c.owner, c.op, c.kind), (Owner(3), recv, OpKind::RecvMulti));
            if c.result > 0 {
                let id = c
                    .buf
                    .unwrap_or_else(|| panic!("data without a buffer: {c:?}"));
                got.extend_from_slice(ring.buffers().bytes(id, c.result as usize));
                ids.push(id);
            }
        }
        assert!(ring.buffers().held() <= 4);
        if let Some(last) = out.last()
            && !last.more
        {
            // Every buffer taken, data left: the kernel ends the recv with ENOBUFS.
            assert_eq!(last.result, -libc::ENOBUFS, "{out:?}");
            assert_eq!(ring.buffers().held(), 4);
            assert!(!ring.is_live(recv));
            enobufs += 1;
            op = None;
        }
        for id in ids {
            ring.buffers().give_back(id);
        }
        ring.buffers().publish();
        assert_eq!(ring.buffers().held(), 0);
    }
    assert_eq!(got, stream, "bytes lost, duplicated or reordered");
    assert_eq!(
        enobufs, 2,
        "4 buffers of 64 bytes for 640 bytes: two ENOBUFS"
    );

    // EOF ends the recv (still armed for the last bytes) with 0.
    let recv = op.unwrap_or_else(|| panic!("the last recv ended early"));
    drop(peer);
    let c = next(&mut ring, "EOF");
    assert_eq!((c.op, c.result, c.more, c.buf), (recv, 0, false, None));
    assert_eq!(ring.buffers().misuses(), 0);
    assert_eq!(ring.in_flight(), 0);
    sys::close(fd);
}

#[test]
fn send_of_one_chunk() {
    let mut ring = ring();
    let (mut peer, fd) = pair();
    let mut queue = SendQueue::new();
    assert!(ring.send(Owner(4), fd, &mut queue).is_none(), "empty queue");
    queue.push(Chunk::own(b"hello".to_vec()));
    assert_eq!(queue.queued(), 5);
    let op = ring
        .send(Owner(4), fd, &mut queue)
        .unwrap_or_else(|| panic!("no send"));
    assert!(queue.sending());
    assert!(!queue.is_empty());
    queue.push(Chunk::relayed(b" world".to_vec()));
    assert!(
        ring.send(Owner(4), fd, &mut queue).is_none(),
        "a second send of a queue while one is in flight"
    );
    let c = next(&mut ring, "the send");
    assert_eq!(
        (c.owner, c.op, c.kind, c.more, c.result),
        (Owner(4), op, OpKind::Send, false, 5)
    );
    let s = sent(c.data);
    assert_eq!((s.count(), s.bytes()), (1, 5));
    let w = queue.complete(s, 5, ring.buffers());
    assert_eq!(w, Written { relayed: 0, own: 5 });
    assert!(!queue.sending());
    assert_eq!(queue.queued(), 6);

    ring.send(Owner(4), fd, &mut queue)
        .unwrap_or_else(|| panic!("no send"));
    let c = next(&mut ring, "the second send");
    let w = queue.complete(sent(c.data), c.result as usize, ring.buffers());
    assert_eq!(w, Written { relayed: 6, own: 0 });
    assert!(queue.is_empty());
    assert_eq!(queue.queued(), 0);
    queue.shrink();

    let mut got = [0; 11];
    peer.read_exact(&mut got).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&got, b"hello world");
    assert_eq!(ring.in_flight(), 0);
    sys::close(fd);
}

#[test]
fn send_of_more_than_16_chunks_is_batched() {
    let mut ring = ring();
    let (peer, fd) = pair();
    let reader = read_all(peer, 65536, Duration::ZERO);
    let shared: Rc<[u8]> = Rc::from(&b"<shared frame>"[..]);
    let mut queue = SendQueue::new();
    let mut expected = Vec::new();
    let (mut relayed, mut own) = (0, 0);
    for i in 0..40u8 {
        let chunk = match i % 3 {
            0 => Chunk::relayed(pattern(100 + usize::from(i), i)),
            1 => Chunk::Static {
                data: b"<static>",
                off: 0,
            },
            _ => Chunk::Shared {
                data: shared.clone(),
                off: 0,
            },
        };
        match &chunk {
            Chunk::Owned { data, .. } => {
                expected.extend_from_slice(data);
                relayed += data.len();
            }
            Chunk::Static { data, .. } => {
                expected.extend_from_slice(data);
                own += data.len();
            }
            Chunk::Shared { data, .. } => {
                expected.extend_from_slice(data);
                own += data.len();
            }
            Chunk::Buf { .. } => unreachable!(),
        }
        queue.push(chunk);
    }
    let mut counts = Vec::new();
    let mut written = Written::default();
    while let Some(op) = ring.send(Owner(5), fd, &mut queue) {
        let c = next(&mut ring, "a batched send");
        assert_eq!(c.op, op);
        let s = sent(c.data);
        counts.push(s.count());
        assert_eq!(
            c.result as usize,
            s.bytes(),
            "small batches are written whole"
        );
        let w = queue.complete(s, c.result as usize, ring.buffers());
        written.relayed += w.relayed;
        written.own += w.own;
    }
    assert_eq!(counts, [16, 16, 8]);
    assert_eq!(written, Written { relayed, own });
    assert!(queue.is_empty());
    sys::shutdown(fd, libc::SHUT_WR);
    let got = reader.join().unwrap_or_else(|_| panic!("reader panicked"));
    assert_eq!(got, expected);
    sys::close(fd);
}

#[test]
fn partial_writes_keep_order_and_give_buffers_back_once() {
    let mut ring = ring();
    let bufs = hold_buffers(&mut ring, 6);
    assert_eq!(ring.buffers().held(), bufs.len());

    let (peer, fd) = pair();
    sys::set_send_buffer(fd, 4096).unwrap_or_else(|e| panic!("{e}"));
    sys::set_recv_buffer(peer.as_raw_fd(), 4096).unwrap_or_else(|e| panic!("{e}"));
    // A slow reader: 4 KiB at a time, with a pause.
    let reader = read_all(peer, 4096, Duration::from_millis(1));

    let mut queue = SendQueue::new();
    let mut expected = Vec::new();
    let push = |queue: &mut SendQueue, expected: &mut Vec<u8>, i: usize| match i % 4 {
        0 => {
            let data = pattern(20_000 + i, i as u8);
            expected.extend_from_slice(&data);
            queue.push(Chunk::relayed(data));
        }
        1 => {
            expected.extend_from_slice(b"<own bytes>");
            queue.push(Chunk::Static {
                data: b"<own bytes>",
                off: 0,
            });
        }
        2 => {
            let data = pattern(9_000, 200 + i as u8);
            expected.extend_from_slice(&data);
            queue.push(Chunk::own(data));
        }
        _ => {
            let data: Rc<[u8]> = pattern(3_000, i as u8).into();
            expected.extend_from_slice(&data);
            queue.push(Chunk::Shared { data, off: 0 });
        }
    };
    let mut i = 0;
    // 24 chunks, the provided buffers among them (one split in two, as the frames relay
    // does: only the second part releases it).
    for (n, (id, bytes)) in bufs.iter().enumerate() {
        for _ in 0..3 {
            push(&mut queue, &mut expected, i);
            i += 1;
        }
        let len = bytes.len() as u32;
        if n == 0 {
            let half = len / 2;
            queue.push(Chunk::Buf {
                buf: *id,
                off: 0,
                len: half,
                release: false,
            });
            queue.push(Chunk::Buf {
                buf: *id,
                off: half,
                len,
                release: true,
            });
        } else {
            queue.push(Chunk::Buf {
                buf: *id,
                off: 0,
                len,
                release: true,
            });
        }
        expected.extend_from_slice(bytes);
    }

    let mut partial = 0;
    let mut sends = 0;
    let mut pushed_in_flight = false;
    let mut written = 0;
    while let Some(op) = ring.send(Owner(6), fd, &mut queue) {
        if !pushed_in_flight {
            // Pushed while the first send is in flight: must stay after what it returns.
            for _ in 0..4 {
                push(&mut queue, &mut expected, i);
                i += 1;
            }
            pushed_in_flight = true;
        }
        let c = next(&mut ring, "a send");
        assert_eq!(c.op, op);
        assert!(c.result > 0, "{c:?}");
        let s = sent(c.data);
        let n = c.result as usize;
        assert!(n <= s.bytes());
        if n < s.bytes() {
            partial += 1;
        }
        let w = queue.complete(s, n, ring.buffers());
        assert_eq!(w.relayed + w.own, n);
        written += n;
        sends += 1;
    }
    assert!(queue.is_empty());
    assert_eq!(queue.queued(), 0);
    assert_eq!(written, expected.len());
    assert!(
        partial > 0,
        "no partial write in {sends} sends: the test proves nothing"
    );
    assert_eq!(ring.buffers().held(), 0, "every buffer given back");
    assert_eq!(ring.buffers().misuses(), 0, "no buffer given back twice");

    sys::shutdown(fd, libc::SHUT_WR);
    let got = reader.join().unwrap_or_else(|_| panic!("reader panicked"));
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "bytes reordered, lost or duplicated");
    assert_eq!(ring.in_flight(), 0);
    sys::close(fd);
}

#[test]
fn clear_and_fail_give_buffers_back_exactly_once() {
    let mut ring = ring();
    let bufs = hold_buffers(&mut ring, 4);
    let chunk = |id: BufId| Chunk::Buf {
        buf: id,
        off: 0,
        len: 10,
        release: true,
    };

    // clear(): pending chunks dropped, their buffers back.
    let mut queue = SendQueue::new();
    queue.push(chunk(bufs[0].0));
    queue.push(chunk(bufs[1].0));
    queue.clear(ring.buffers());
    assert!(queue.is_empty());
    assert_eq!(queue.queued(), 0);
    assert_eq!(ring.buffers().held(), 2);

    // fail(): a send that fails (not a socket) drops its chunks and what is pending.
    let efd = sys::eventfd().unwrap_or_else(|e| panic!("{e}"));
    queue.push(chunk(bufs[2].0));
    queue.push(Chunk::own(b"x".to_vec()));
    ring.send(Owner(8), efd, &mut queue)
        .unwrap_or_else(|| panic!("no send"));
    queue.push(chunk(bufs[3].0));
    let c = next(&mut ring, "the failing send");
    assert_eq!(c.result, -libc::ENOTSOCK);
    queue.fail(sent(c.data), ring.buffers());
    assert!(queue.is_empty());
    assert_eq!(queue.queued(), 0);
    assert_eq!(ring.buffers().held(), 0);
    assert_eq!(ring.buffers().misuses(), 0);

    // A second give-back of the same buffer is refused and counted, not given twice.
    ring.buffers().give_back(bufs[0].0);
    assert_eq!(ring.buffers().misuses(), 1);
    assert_eq!(ring.buffers().held(), 0);
    sys::close(efd);
}

#[test]
fn connect_to_a_live_and_a_dead_port() {
    let mut ring = ring();
    let (lfd, live) = listener();
    let fd = sys::tcp_socket(&live).unwrap_or_else(|e| panic!("{e}"));
    let op = ring.connect(Owner(10), fd, live);
    let c = next(&mut ring, "the connect");
    assert_eq!(
        (c.owner, c.op, c.kind, c.result),
        (Owner(10), op, OpKind::Connect, 0)
    );
    assert_eq!(sys::peer_addr(fd).unwrap_or_else(|e| panic!("{e}")), live);
    sys::close(fd);

    let (dead_fd, dead) = listener();
    sys::close(dead_fd);
    let fd = sys::tcp_socket(&dead).unwrap_or_else(|e| panic!("{e}"));
    ring.connect(Owner(11), fd, dead);
    let c = next(&mut ring, "the refused connect");
    assert_eq!((c.owner, c.result), (Owner(11), -libc::ECONNREFUSED));
    sys::close(fd);
    sys::close(lfd);
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn poll_rdhup_completes_when_the_peer_closes_not_when_it_sends() {
    let mut ring = ring();
    let (mut peer, fd) = pair();
    let op = ring.poll(Owner(12), fd, libc::POLLRDHUP as u32);
    peer.write_all(b"early bytes")
        .unwrap_or_else(|e| panic!("{e}"));
    let early = quiet(&mut ring, Duration::from_millis(200));
    assert!(early.is_empty(), "POLLRDHUP fired on data: {early:?}");
    assert!(ring.is_live(op));

    peer.shutdown(Shutdown::Write)
        .unwrap_or_else(|e| panic!("{e}"));
    let c = next(&mut ring, "POLLRDHUP");
    assert_eq!(
        (c.owner, c.op, c.kind, c.more),
        (Owner(12), op, OpKind::Poll, false)
    );
    assert_ne!(
        c.result & libc::POLLRDHUP as i32,
        0,
        "events {:#x}",
        c.result
    );
    sys::close(fd);
}

#[test]
fn cancel_ends_a_multishot_recv_and_a_pending_poll() {
    let mut ring = ring();
    let (mut peer, fd) = pair();
    let recv = ring.recv_multi(Owner(13), fd, 0);
    peer.write_all(b"one").unwrap_or_else(|e| panic!("{e}"));
    let c = next(&mut ring, "data");
    need(
        &c,
        "multishot recv with a provided-buffer ring (Linux 6.0+)",
    );
    assert!(c.more && c.result == 3, "{c:?}");
    let id = c.buf.unwrap_or_else(|| panic!("no buffer"));
    ring.buffers().give_back(id);

    ring.cancel(recv);
    let c = next(&mut ring, "the cancelled recv");
    assert_eq!((c.op, c.result, c.more), (recv, -libc::ECANCELED, false));
    assert!(!ring.is_live(recv));

    let poll = ring.poll(Owner(14), fd, libc::POLLIN as u32);
    assert!(quiet(&mut ring, Duration::from_millis(50)).is_empty());
    ring.cancel(poll);
    let c = next(&mut ring, "the cancelled poll");
    assert_eq!(
        (c.owner, c.op, c.result, c.more),
        (Owner(14), poll, -libc::ECANCELED, false)
    );
    assert_eq!(ring.in_flight(), 0);
    assert_eq!(ring.buffers().held(), 0);
    sys::close(fd);
}

#[test]
fn read_wake_completes_when_the_eventfd_is_signalled() {
    let mut ring = ring();
    let efd = sys::eventfd().unwrap_or_else(|e| panic!("{e}"));
    let op = ring.read_wake(Owner(15), efd);
    assert!(quiet(&mut ring, Duration::from_millis(50)).is_empty());
    sys::eventfd_signal(efd);
    let c = next(&mut ring, "the wake");
    assert_eq!(
        (c.owner, c.op, c.kind, c.result, c.more),
        (Owner(15), op, OpKind::Wake, 8, false)
    );
    // Re-armed, it waits for the next signal.
    ring.read_wake(Owner(15), efd);
    assert!(quiet(&mut ring, Duration::from_millis(50)).is_empty());
    sys::eventfd_signal(efd);
    assert_eq!(next(&mut ring, "the second wake").result, 8);
    sys::close(efd);
}

#[test]
fn an_owner_may_drop_everything_while_its_send_is_in_flight() {
    let mut ring = ring();
    let bufs = hold_buffers(&mut ring, 2);
    let (peer, fd) = pair();
    sys::set_send_buffer(fd, 4096).unwrap_or_else(|e| panic!("{e}"));
    sys::set_recv_buffer(peer.as_raw_fd(), 4096).unwrap_or_else(|e| panic!("{e}"));

    let mut queue = SendQueue::new();
    let mut expected = pattern(1 << 20, 3);
    queue.push(Chunk::relayed(expected.clone()));
    for (id, bytes) in &bufs {
        queue.push(Chunk::Buf {
            buf: *id,
            off: 0,
            len: bytes.len() as u32,
            release: true,
        });
        expected.extend_from_slice(bytes);
    }
    // Send until a send stays in flight (the peer does not read).
    let mut written = 0;
    let in_flight = loop {
        let op = ring
            .send(Owner(16), fd, &mut queue)
            .unwrap_or_else(|| panic!("no send"));
        let mut out = quiet(&mut ring, Duration::from_millis(200));
        match out.pop() {
            Some(c) => {
                assert!(c.result > 0, "{c:?}");
                written += c.result as usize;
                queue.complete(sent(c.data), c.result as usize, ring.buffers());
            }
            None => break op,
        }
        assert!(
            written < expected.len(),
            "everything was written: nothing in flight"
        );
    };
    assert_eq!(
        ring.buffers().held(),
        2,
        "the in-flight send holds both buffers"
    );
    // The owner goes away: its queue (and everything it had) is dropped.
    drop(queue);

    let reader = read_all(peer, 65536, Duration::ZERO);
    let c = next(&mut ring, "the orphaned send");
    assert_eq!((c.owner, c.op), (Owner(16), in_flight));
    assert!(c.result > 0, "{c:?}");
    let n = c.result as usize;
    match &c.data {
        OpData::Sent(s) => {
            assert_eq!(s.count(), 3, "the rest of the big chunk and both buffers");
            assert!(n <= s.bytes());
        }
        other => panic!("{other:?}"),
    }
    ring.recycle(c.data);
    assert_eq!(ring.buffers().held(), 0, "recycle gave both buffers back");
    assert_eq!(ring.buffers().misuses(), 0);

    sys::shutdown(fd, libc::SHUT_WR);
    let got = reader.join().unwrap_or_else(|_| panic!("reader panicked"));
    assert_eq!(got.len(), written + n);
    assert!(
        got == expected[..written + n],
        "bytes of the in-flight send were corrupted"
    );
    assert_eq!(ring.in_flight(), 0);
    sys::close(fd);
}

#[test]
fn dropping_a_ring_with_operations_in_flight_reaps_them() {
    let mut ring = ring();
    let (peer, fd) = pair();
    let (lfd, _) = listener();
    let efd = sys::eventfd().unwrap_or_else(|e| panic!("{e}"));
    sys::set_send_buffer(fd, 4096).unwrap_or_else(|e| panic!("{e}"));
    ring.accept_multi(Owner(1), lfd);
    ring.recv_multi(Owner(2), fd, 0);
    ring.read_wake(Owner(3), efd);
    ring.recv_head(Owner(4), efd, Vec::new(), 100);
    let mut queue = SendQueue::new();
    queue.push(Chunk::own(vec![0; 4 << 20]));
    ring.send(Owner(5), fd, &mut queue);
    ring.submit_and_wait(Some(Duration::from_millis(10)))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ring.in_flight() >= 4);
    let start = Instant::now();
    drop(ring);
    // Leaking (when reaping fails) waits two seconds first.
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "drop took {:?}: operations were not reaped",
        start.elapsed()
    );
    drop(peer);
    for fd in [fd, lfd, efd] {
        sys::close(fd);
    }
}

/// `reap` takes what completed without submitting what is queued: a poll that became ready
/// is taken, a poll only queued stays unsubmitted (though its socket is readable) until
/// `submit`.
#[test]
fn reap_takes_completions_without_submitting_what_is_queued() {
    let mut ring = ring();
    let (mut ready_peer, ready_fd) = pair();
    let (mut queued_peer, queued_fd) = pair();
    let armed = ring.poll(Owner(1), ready_fd, libc::POLLIN as u32);
    ring.submit().unwrap_or_else(|e| panic!("submit: {e}"));
    queued_peer
        .write_all(b"x")
        .unwrap_or_else(|e| panic!("{e}"));
    let queued = ring.poll(Owner(2), queued_fd, libc::POLLIN as u32);
    ready_peer.write_all(b"y").unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    let deadline = Instant::now() + WAIT;
    while out.is_empty() {
        assert!(Instant::now() < deadline, "reap never took the ready poll");
        thread::sleep(Duration::from_millis(5));
        ring.reap().unwrap_or_else(|e| panic!("reap: {e}"));
        ring.drain(&mut out);
    }
    assert_eq!(
        out.iter().map(|c| c.op).collect::<Vec<_>>(),
        vec![armed],
        "only the submitted poll: {out:?}"
    );
    assert!(out[0].result > 0, "{:?}", out[0]);
    // Still queued: nothing of it after another reap.
    thread::sleep(Duration::from_millis(20));
    ring.reap().unwrap_or_else(|e| panic!("reap: {e}"));
    out.clear();
    ring.drain(&mut out);
    assert!(
        out.is_empty(),
        "a queued poll completed unsubmitted: {out:?}"
    );
    ring.submit().unwrap_or_else(|e| panic!("submit: {e}"));
    let c = next(&mut ring, "the queued poll, once submitted");
    assert_eq!(c.op, queued);
    assert_eq!(ring.in_flight(), 0);
    sys::close(ready_fd);
    sys::close(queued_fd);
}
