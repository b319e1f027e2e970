//! The startup probe: checks that the running kernel has every io_uring opcode and feature
//! the dataplane uses, naming what is missing and the Linux release that introduced it, so an
//! operator on an old kernel learns it at startup rather than from a failed first recv.

use std::io::{self, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _};
use std::time::Duration;

use io_uring::{IoUring, Probe, cqueue, opcode, types};

/// How a [`Requirement`] is detected on the running kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// `IORING_REGISTER_PROBE` answers (the opcode list can be read).
    OpcodeProbe,
    /// The kernel lists this opcode as supported.
    Opcode(u8),
    /// `IORING_FEAT_NODROP`: completions are kept, not dropped, when the queue overflows.
    NoDrop,
    /// `IORING_FEAT_EXT_ARG`: `io_uring_enter` takes a timeout (the loop's timed wait).
    ExtArg,
    /// A provided-buffer ring registers (`IORING_REGISTER_PBUF_RING`).
    BufRing,
    /// A multishot accept stays armed after its first connection.
    MultishotAccept,
    /// A multishot recv stays armed after its first data.
    MultishotRecv,
}

/// Something the dataplane needs from io_uring, and the Linux release that introduced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Requirement {
    /// What it is, as an operator can look it up.
    pub(crate) what: &'static str,
    /// The first Linux release with it, `major.minor`.
    pub(crate) since: &'static str,
    pub(crate) check: Check,
}

const fn op(what: &'static str, since: &'static str, code: u8) -> Requirement {
    Requirement {
        what,
        since,
        check: Check::Opcode(code),
    }
}

/// Everything the ring driver uses, in the order a missing item is reported. Flags the
/// driver only tries (SINGLE_ISSUER, DEFER_TASKRUN, SUBMIT_ALL in [`Ring::new`](crate::Ring::new)) fall back to
/// a plain ring and are not listed.
pub(crate) const REQUIREMENTS: &[Requirement] = &[
    Requirement {
        what: "the io_uring opcode probe (IORING_REGISTER_PROBE)",
        since: "5.6",
        check: Check::OpcodeProbe,
    },
    Requirement {
        what: "lossless completion queue (IORING_FEAT_NODROP)",
        since: "5.5",
        check: Check::NoDrop,
    },
    Requirement {
        what: "waits with a timeout (IORING_FEAT_EXT_ARG)",
        since: "5.11",
        check: Check::ExtArg,
    },
    op(
        "IORING_OP_POLL_ADD (splice relay)",
        "5.1",
        opcode::PollAdd::CODE,
    ),
    op(
        "IORING_OP_SENDMSG (batched sends)",
        "5.3",
        opcode::SendMsg::CODE,
    ),
    op(
        "IORING_OP_ACCEPT (accept)",
        "5.5",
        opcode::AcceptMulti::CODE,
    ),
    op(
        "IORING_OP_CONNECT (origin connections)",
        "5.5",
        opcode::Connect::CODE,
    ),
    op(
        "IORING_OP_ASYNC_CANCEL (cancel)",
        "5.5",
        opcode::AsyncCancel::CODE,
    ),
    op(
        "IORING_OP_READ (worker wake-ups)",
        "5.6",
        opcode::Read::CODE,
    ),
    op("IORING_OP_SEND (sends)", "5.6", opcode::Send::CODE),
    op("IORING_OP_RECV (receives)", "5.6", opcode::Recv::CODE),
    Requirement {
        what: "provided-buffer rings (IORING_REGISTER_PBUF_RING)",
        since: "5.19",
        check: Check::BufRing,
    },
    Requirement {
        what: "multishot accept (IORING_ACCEPT_MULTISHOT)",
        since: "5.19",
        check: Check::MultishotAccept,
    },
    Requirement {
        what: "multishot recv (IORING_RECV_MULTISHOT)",
        since: "6.0",
        check: Check::MultishotRecv,
    },
];

/// `major.minor` as numbers, for comparing releases (`0.0` if unreadable).
fn release_number(release: &str) -> (u32, u32) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The oldest Linux release with everything in [`REQUIREMENTS`].
pub(crate) fn minimum_release() -> &'static str {
    REQUIREMENTS
        .iter()
        .max_by_key(|r| release_number(r.since))
        .map_or("?", |r| r.since)
}

/// What the running kernel was found to support. `None` where a check could not run (its
/// prerequisite is missing, or the test sockets could not be made): such an item is not
/// reported, the missing prerequisite is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Support {
    /// The opcodes the kernel lists; `None` without IORING_REGISTER_PROBE.
    pub(crate) opcodes: Option<Vec<u8>>,
    pub(crate) nodrop: bool,
    pub(crate) ext_arg: bool,
    pub(crate) buf_ring: bool,
    pub(crate) multishot_accept: Option<bool>,
    pub(crate) multishot_recv: Option<bool>,
}

impl Support {
    /// Whether `check` passed (or could not be tried).
    pub(crate) fn has(&self, check: Check) -> bool {
        match check {
            Check::OpcodeProbe => self.opcodes.is_some(),
            Check::Opcode(code) => self.opcodes.as_ref().is_none_or(|ops| ops.contains(&code)),
            Check::NoDrop => self.nodrop,
            Check::ExtArg => self.ext_arg,
            Check::BufRing => self.buf_ring,
            Check::MultishotAccept => self.multishot_accept != Some(false),
            Check::MultishotRecv => self.multishot_recv != Some(false),
        }
    }

    /// The requirements this kernel lacks, in [`REQUIREMENTS`] order.
    pub(crate) fn missing(&self) -> Vec<&'static Requirement> {
        REQUIREMENTS.iter().filter(|r| !self.has(r.check)).collect()
    }
}

/// The startup error for a kernel that lacks `missing` (non-empty); `release` is the running
/// kernel's (`uname -r`).
pub(crate) fn unsupported_message(missing: &[&Requirement], release: &str) -> String {
    let items: Vec<String> = missing
        .iter()
        .map(|r| format!("{} (Linux {})", r.what, r.since))
        .collect();
    format!(
        "io_uring on this kernel (Linux {release}) lacks what wsedge uses: {}; wsedge needs \
         Linux {} or later",
        items.join(", "),
        minimum_release()
    )
}

/// Checks that io_uring can be set up here and has every opcode and feature the workers use,
/// with a message an operator can act on: what is missing and which Linux release brought
/// it, at startup rather than as a failed operation on the first connection.
pub fn probe() -> Result<(), String> {
    let mut ring = IoUring::new(8).map_err(|e| setup_error(&e))?;
    let support = detect(&mut ring);
    let missing = support.missing();
    if missing.is_empty() {
        return Ok(());
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |r| r.trim().to_owned());
    Err(unsupported_message(&missing, &release))
}

fn setup_error(e: &io::Error) -> String {
    let hint = match e.raw_os_error() {
        Some(libc::ENOSYS) => {
            "the kernel has no io_uring (CONFIG_IO_URING) or a seccomp filter blocks io_uring_setup"
        }
        Some(libc::EPERM) => {
            "io_uring is disabled: check `sysctl kernel.io_uring_disabled` (must be 0, or 1 with this user in kernel.io_uring_group) and any seccomp profile (containers often block io_uring)"
        }
        Some(libc::ENOMEM) => "the locked-memory limit is too low for a ring: raise `ulimit -l`",
        _ => "io_uring_setup failed",
    };
    format!("cannot set up io_uring: {e}: {hint}")
}

/// Buffer group of the probe's own buffer ring (on its own ring, so no clash with a worker's).
const PROBE_GROUP: u16 = 0;
/// `user_data` of the probe's operations.
const PROBE_RECV: u64 = 1;
const PROBE_ACCEPT: u64 = 2;
const PROBE_CANCEL: u64 = 3;

/// Asks the kernel what it supports: the opcode list and feature bits, and for what no list
/// shows (buffer rings, the multishot flags) a real registration and real operations on a
/// socket pair and a listener of this process.
fn detect(ring: &mut IoUring) -> Support {
    let mut probe = Probe::new();
    let opcodes = ring
        .submitter()
        .register_probe(&mut probe)
        .ok()
        .map(|()| (0..=u8::MAX).filter(|&c| probe.is_supported(c)).collect());
    let params = ring.params();
    let mut support = Support {
        opcodes,
        nodrop: params.is_feature_nodrop(),
        ext_arg: params.is_feature_ext_arg(),
        ..Support::default()
    };
    if let Some(buffers) = ProbeBuffers::register(ring) {
        support.buf_ring = true;
        if support.ext_arg {
            support.multishot_recv = multishot_recv(ring, 0, b"x");
        }
        buffers.release(ring);
    }
    if support.ext_arg {
        support.multishot_accept = multishot_accept(ring);
    }
    support
}

/// A two-entry provided-buffer ring with one 1 KiB buffer, registered on the probe's ring.
///
/// INVARIANT: `ptr` is a live page-aligned allocation of `layout`, registered as
/// [`PROBE_GROUP`] until [`ProbeBuffers::release`]; if that fails it is leaked, never freed
/// while the kernel may use it.
struct ProbeBuffers {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl ProbeBuffers {
    const ENTRIES: u16 = 2;
    const DATA_OFFSET: usize = 2048;
    const BUF_LEN: u32 = 1024;

    fn register(ring: &IoUring) -> Option<ProbeBuffers> {
        let layout = std::alloc::Layout::from_size_align(4096, 4096).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return None;
        }
        let entries = ptr.cast::<types::BufRingEntry>();
        // SAFETY: entry 0 (16 bytes) lies at the start of the 4 KiB allocation, which nothing
        // else refers to yet.
        let entry = unsafe { &mut *entries };
        entry.set_addr(ptr as u64 + Self::DATA_OFFSET as u64);
        entry.set_len(Self::BUF_LEN);
        entry.set_bid(0);
        // SAFETY: the tail field overlays entry 0 in our allocation; the ring is not
        // registered yet, so the kernel does not read it concurrently.
        unsafe { *types::BufRingEntry::tail(entries).cast_mut() = 1 };
        // SAFETY: page-aligned memory for ENTRIES entries (and the buffer they point at) that
        // stays allocated until it is unregistered (see the struct invariant).
        let registered = unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(ptr as u64, Self::ENTRIES, PROBE_GROUP, 0)
        };
        match registered {
            Ok(()) => Some(ProbeBuffers { ptr, layout }),
            Err(_) => {
                // SAFETY: never registered, so nothing but us refers to it.
                unsafe { std::alloc::dealloc(ptr, layout) };
                None
            }
        }
    }

    /// Unregisters the ring and frees its memory (leaks it if the kernel refuses).
    fn release(self, ring: &IoUring) {
        if ring.submitter().unregister_buf_ring(PROBE_GROUP).is_ok() {
            // SAFETY: unregistered, so the kernel no longer uses the memory; allocated in
            // `register` with this layout.
            unsafe { std::alloc::dealloc(self.ptr, self.layout) };
        }
    }
}

/// The next completion with `user_data` (others are dropped), waiting at most 2 s in all.
fn wait_for(ring: &mut IoUring, user_data: u64) -> Option<(i32, u32)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(cqe) = ring.completion().find(|c| c.user_data() == user_data) {
            return Some((cqe.result(), cqe.flags()));
        }
        let left = deadline.checked_duration_since(std::time::Instant::now())?;
        let ts = types::Timespec::from(left.min(Duration::from_millis(200)));
        let args = types::SubmitArgs::new().timespec(&ts);
        match ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
            Err(_) => return None,
        }
    }
}

/// Waits for the completion that ends a multishot operation (no MORE flag); `close` is
/// called on every completion that carries a new descriptor (an accept's).
fn wait_until_done(ring: &mut IoUring, user_data: u64, close: bool) {
    while let Some((res, flags)) = wait_for(ring, user_data) {
        if close && res >= 0 {
            // SAFETY: a successful accept completion hands us a new descriptor we own.
            drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(res) });
        }
        if !cqueue::more(flags) {
            return;
        }
    }
}

/// Whether the kernel ends a multishot recv at a byte limit (IORING_RECV_MSHOT_LIM, Linux
/// 6.16; older kernels ignore the limit and keep the recv armed). Asked once per process,
/// on a ring of its own.
pub fn recv_limit() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let Ok(mut ring) = IoUring::new(8) else {
            return false;
        };
        let Some(buffers) = ProbeBuffers::register(&ring) else {
            return false;
        };
        // Two bytes waiting, a limit of one: the first completion reaches it.
        let ended = multishot_recv(&mut ring, 1, b"xy") == Some(false);
        buffers.release(&ring);
        ended
    })
}

/// Whether a multishot recv with a byte `limit` (0: none) stays armed after its first
/// completion, `data` waiting (`None`: could not tell).
fn multishot_recv(ring: &mut IoUring, limit: u32, data: &[u8]) -> Option<bool> {
    let (writer, reader) = std::os::unix::net::UnixStream::pair().ok()?;
    (&writer).write_all(data).ok()?;
    let entry = crate::op::with_optlen(
        opcode::RecvMulti::new(types::Fd(reader.as_raw_fd()), PROBE_GROUP).build(),
        limit,
    )
    .user_data(PROBE_RECV);
    // SAFETY: the recv refers to no memory of ours but the probe buffer ring, which stays
    // registered until after this function returns, and to `reader`, which outlives it (the
    // kernel holds its own reference to the file in any case).
    unsafe { ring.submission().push(&entry) }.ok()?;
    let (res, flags) = wait_for(ring, PROBE_RECV)?;
    let armed = cqueue::more(flags);
    if armed {
        // End it: EOF completes the multishot recv without MORE.
        let _ = reader.shutdown(std::net::Shutdown::Both);
        wait_until_done(ring, PROBE_RECV, false);
    }
    match res {
        n if n > 0 => Some(armed),
        e if e == -libc::EINVAL => Some(false),
        _ => None,
    }
}

/// Whether a multishot accept stays armed after its first connection (`None`: could not
/// tell). Uses a listener on an abstract Unix address of this process: no file, no port.
fn multishot_accept(ring: &mut IoUring) -> Option<bool> {
    use std::os::linux::net::SocketAddrExt as _;
    use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};

    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!("wsedge-probe-{}-{nanos:x}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).ok()?;
    let listener = UnixListener::bind_addr(&addr).ok()?;
    let _client = UnixStream::connect_addr(&addr).ok()?;
    let entry = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
        .flags(libc::SOCK_CLOEXEC)
        .build()
        .user_data(PROBE_ACCEPT);
    // SAFETY: the accept refers to no memory, only to `listener`, which outlives it (the
    // kernel holds its own reference to the file in any case).
    unsafe { ring.submission().push(&entry) }.ok()?;
    let (res, flags) = wait_for(ring, PROBE_ACCEPT)?;
    if res >= 0 {
        // SAFETY: a successful accept completion hands us a new descriptor we own.
        drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(res) });
    }
    let armed = cqueue::more(flags);
    if armed {
        let cancel = opcode::AsyncCancel::new(PROBE_ACCEPT)
            .build()
            .user_data(PROBE_CANCEL);
        // SAFETY: a cancel refers to no memory.
        if unsafe { ring.submission().push(&cancel) }.is_ok() {
            wait_until_done(ring, PROBE_ACCEPT, true);
        }
    }
    match res {
        n if n >= 0 => Some(armed),
        e if e == -libc::EINVAL => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn everything() -> Support {
        Support {
            opcodes: Some((0..=u8::MAX).collect()),
            nodrop: true,
            ext_arg: true,
            buf_ring: true,
            multishot_accept: Some(true),
            multishot_recv: Some(true),
        }
    }

    #[test]
    fn a_kernel_with_everything_lacks_nothing() {
        assert!(everything().missing().is_empty());
    }

    #[test]
    fn the_minimum_release_is_the_newest_requirement() {
        assert_eq!(minimum_release(), "6.0");
        assert_eq!(release_number("6.18.44-fc-v1272"), (6, 18));
        assert!(release_number("5.19") < release_number("6.0"));
        assert!(release_number("5.6") < release_number("5.11"));
    }

    #[test]
    fn a_5_19_kernel_is_told_multishot_recv_needs_6_0() {
        let support = Support {
            multishot_recv: Some(false),
            ..everything()
        };
        let missing = support.missing();
        assert_eq!(missing.len(), 1);
        assert_eq!(
            unsupported_message(&missing, "5.19.17"),
            "io_uring on this kernel (Linux 5.19.17) lacks what wsedge uses: multishot recv \
             (IORING_RECV_MULTISHOT) (Linux 6.0); wsedge needs Linux 6.0 or later"
        );
    }

    #[test]
    fn every_missing_item_is_named_with_its_release_in_table_order() {
        let mut opcodes: Vec<u8> = (0..=u8::MAX).collect();
        opcodes.retain(|&c| c != opcode::SendMsg::CODE && c != opcode::Recv::CODE);
        let support = Support {
            opcodes: Some(opcodes),
            ext_arg: false,
            buf_ring: false,
            multishot_accept: None,
            multishot_recv: None,
            ..everything()
        };
        let message = unsupported_message(&support.missing(), "5.4.0-150-generic");
        let expected = [
            "waits with a timeout (IORING_FEAT_EXT_ARG) (Linux 5.11)",
            "IORING_OP_SENDMSG (batched sends) (Linux 5.3)",
            "IORING_OP_RECV (receives) (Linux 5.6)",
            "provided-buffer rings (IORING_REGISTER_PBUF_RING) (Linux 5.19)",
        ];
        let mut at = 0;
        for item in expected {
            let found = message[at..]
                .find(item)
                .unwrap_or_else(|| panic!("{item} in {message}"));
            at += found + item.len();
        }
        assert!(message.starts_with("io_uring on this kernel (Linux 5.4.0-150-generic)"));
        assert!(message.ends_with("wsedge needs Linux 6.0 or later"));
        // Checks that could not run are not reported as missing.
        assert!(!message.contains("multishot"), "{message}");
    }

    #[test]
    fn without_the_opcode_probe_only_the_probe_is_reported() {
        let support = Support {
            opcodes: None,
            ..everything()
        };
        let missing = support.missing();
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].check, Check::OpcodeProbe);
        assert_eq!(missing[0].since, "5.6");
    }

    /// The real detection on this machine: everything the running kernel's release should
    /// have is found (skipped, with a message, where io_uring cannot be set up at all).
    #[test]
    fn detection_finds_what_this_kernel_has() {
        let mut ring = match IoUring::new(8) {
            Ok(ring) => ring,
            Err(e) => {
                eprintln!("skipped: no io_uring here ({e})");
                return;
            }
        };
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let running = release_number(&release);
        let support = detect(&mut ring);
        for r in REQUIREMENTS {
            if release_number(r.since) <= running {
                assert!(
                    support.has(r.check),
                    "Linux {} should have {} (since {}): {support:?}",
                    release.trim(),
                    r.what,
                    r.since
                );
            }
        }
        if running >= (6, 0) {
            assert_eq!(support.multishot_recv, Some(true), "the check really ran");
            assert_eq!(support.multishot_accept, Some(true), "the check really ran");
            assert!(probe().is_ok());
        }
        // The probe leaves nothing behind: the ring has no completion pending.
        assert!(ring.completion().is_empty());
    }
}
