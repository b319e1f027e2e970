//! Kernel TLS (kTLS) sockets: the two `setsockopt` steps that hand a finished TLS
//! connection's traffic keys to the kernel, and the run-time probe that says whether this
//! kernel can take them.
//!
//! It sits under the worker's TLS hand-off (`wsedge` `worker/ktls.rs`): `wsedge-tls`
//! extracts the keys from rustls (`KtlsHandoff`, with no I/O), the worker turns each
//! direction into a [`Crypto`] and calls [`install`] on the client's socket, which then
//! carries plaintext for user space (so the splice relay works again) while the kernel
//! seals and opens the records. The structs are libc's copies of `include/uapi/linux/tls.h`
//! (`tls12_crypto_info_aes_gcm_128` and friends), never a hand-written layout.
//!
//! After `TLS_RX`, a record that is not application data (an alert such as `close_notify`, or
//! a post-handshake message such as a TLS 1.3 `KeyUpdate`) makes `recv` fail with `EIO` and
//! `splice` with `EINVAL` (the kernel wants a control message for it): [`is_control_record`]
//! recognises those so the worker ends the connection cleanly instead of calling it a
//! socket error.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::OnceLock;

/// Where the kernel lists the TCP upper-layer protocols it has.
pub const AVAILABLE_ULP: &str = "/proc/sys/net/ipv4/tcp_available_ulp";

/// Whether a `tcp_available_ulp` text (space-separated names) lists `tls`.
pub fn ulp_list_has_tls(text: &str) -> bool {
    text.split_ascii_whitespace().any(|ulp| ulp == "tls")
}

/// Which way a key is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `TLS_TX`: records the kernel seals on send.
    Tx,
    /// `TLS_RX`: records the kernel opens on receive.
    Rx,
}

impl Direction {
    fn optname(self) -> libc::c_int {
        match self {
            Direction::Tx => libc::TLS_TX,
            Direction::Rx => libc::TLS_RX,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Direction::Tx => "TLS_TX",
            Direction::Rx => "TLS_RX",
        }
    }
}

/// One direction's keys in the kernel's own struct (`SOL_TLS` option value).
#[derive(Clone, Copy)]
pub enum Crypto {
    Aes128Gcm(libc::tls12_crypto_info_aes_gcm_128),
    Aes256Gcm(libc::tls12_crypto_info_aes_gcm_256),
    Chacha20Poly1305(libc::tls12_crypto_info_chacha20_poly1305),
}

impl std::fmt::Debug for Crypto {
    /// Keys are never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (name, info) = match self {
            Crypto::Aes128Gcm(c) => ("Aes128Gcm", c.info),
            Crypto::Aes256Gcm(c) => ("Aes256Gcm", c.info),
            Crypto::Chacha20Poly1305(c) => ("Chacha20Poly1305", c.info),
        };
        f.debug_struct(name)
            .field("version", &format_args!("{:#06x}", info.version))
            .finish_non_exhaustive()
    }
}

impl Crypto {
    /// Fills the struct for `cipher_type` (`TLS_CIPHER_*`) from the parts `wsedge-tls`
    /// extracts; a part of the wrong length for that cipher is refused (never truncated).
    pub fn new(
        version: u16,
        cipher_type: u16,
        iv: &[u8],
        key: &[u8],
        salt: &[u8],
        rec_seq: [u8; 8],
    ) -> Result<Crypto, String> {
        let info = libc::tls_crypto_info {
            version,
            cipher_type,
        };
        let wrong = |part: &str, len: usize| {
            format!("cipher {cipher_type}: {part} of {len} bytes does not fit linux/tls.h")
        };
        macro_rules! part {
            ($bytes:expr, $name:literal) => {
                $bytes.try_into().map_err(|_| wrong($name, $bytes.len()))?
            };
        }
        Ok(match cipher_type {
            libc::TLS_CIPHER_AES_GCM_128 => {
                Crypto::Aes128Gcm(libc::tls12_crypto_info_aes_gcm_128 {
                    info,
                    iv: part!(iv, "iv"),
                    key: part!(key, "key"),
                    salt: part!(salt, "salt"),
                    rec_seq,
                })
            }
            libc::TLS_CIPHER_AES_GCM_256 => {
                Crypto::Aes256Gcm(libc::tls12_crypto_info_aes_gcm_256 {
                    info,
                    iv: part!(iv, "iv"),
                    key: part!(key, "key"),
                    salt: part!(salt, "salt"),
                    rec_seq,
                })
            }
            libc::TLS_CIPHER_CHACHA20_POLY1305 => {
                Crypto::Chacha20Poly1305(libc::tls12_crypto_info_chacha20_poly1305 {
                    info,
                    iv: part!(iv, "iv"),
                    key: part!(key, "key"),
                    salt: part!(salt, "salt"),
                    rec_seq,
                })
            }
            other => return Err(format!("cipher {other} is not one kTLS is given here")),
        })
    }

    /// The option value: a pointer to the struct and its size.
    fn raw(&self) -> (*const libc::c_void, libc::socklen_t) {
        fn of<T>(s: &T) -> (*const libc::c_void, libc::socklen_t) {
            (
                (s as *const T).cast(),
                std::mem::size_of::<T>() as libc::socklen_t,
            )
        }
        match self {
            Crypto::Aes128Gcm(s) => of(s),
            Crypto::Aes256Gcm(s) => of(s),
            Crypto::Chacha20Poly1305(s) => of(s),
        }
    }
}

/// A step of the hand-off that the kernel refused.
#[derive(Debug)]
pub struct KtlsError {
    /// `setsockopt(TCP_ULP, "tls")`, `TLS_TX` or `TLS_RX`.
    pub step: &'static str,
    pub source: io::Error,
}

impl KtlsError {
    /// The kernel has no TLS upper-layer protocol at all (`CONFIG_TLS` unset or the module
    /// not loaded): nothing was changed on the socket, user-space TLS goes on.
    pub fn kernel_lacks_ktls(&self) -> bool {
        self.step == "TCP_ULP"
            && matches!(
                self.source.raw_os_error(),
                Some(libc::ENOENT | libc::EOPNOTSUPP)
            )
    }
}

impl std::fmt::Display for KtlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let step = match self.step {
            "TCP_ULP" => "setsockopt(SOL_TCP, TCP_ULP, \"tls\")",
            "TLS_TX" => "setsockopt(SOL_TLS, TLS_TX)",
            _ => "setsockopt(SOL_TLS, TLS_RX)",
        };
        write!(f, "{step}: {}", self.source)?;
        let hint = match (self.step, self.source.raw_os_error()) {
            ("TCP_ULP", Some(libc::ENOENT | libc::EOPNOTSUPP)) => {
                "the kernel lacks kTLS: no \"tls\" in /proc/sys/net/ipv4/tcp_available_ulp (`modprobe tls`, or a kernel built with CONFIG_TLS)"
            }
            ("TCP_ULP", Some(libc::EEXIST)) => "the socket already has an upper-layer protocol",
            (_, Some(libc::ENOTCONN)) => "the socket is not connected",
            (_, Some(libc::EOPNOTSUPP | libc::ENOPROTOOPT)) => {
                "this kernel's kTLS does not take this TLS version or cipher"
            }
            (_, Some(libc::EINVAL)) => "the kernel refused the key struct",
            _ => "",
        };
        if !hint.is_empty() {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for KtlsError {}

/// `setsockopt(fd, SOL_TCP, TCP_ULP, "tls")`: the socket gets the TLS layer, with no keys
/// yet (it still passes bytes unchanged until `TLS_TX`/`TLS_RX`). Needs an established TCP
/// connection.
pub fn set_ulp(fd: RawFd) -> Result<(), KtlsError> {
    const NAME: &[u8] = b"tls";
    // SAFETY: `NAME` is a static byte string whose length is passed; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_TCP,
            libc::TCP_ULP,
            NAME.as_ptr().cast(),
            NAME.len() as libc::socklen_t,
        )
    };
    check(rc, "TCP_ULP")
}

/// `setsockopt(fd, SOL_TLS, TLS_TX or TLS_RX, crypto)`: from now on the kernel seals (TX)
/// or opens (RX) the records of that direction. [`set_ulp`] first.
pub fn set_crypto(fd: RawFd, direction: Direction, crypto: &Crypto) -> Result<(), KtlsError> {
    let (ptr, len) = crypto.raw();
    // SAFETY: `ptr` points at the libc struct inside `crypto`, alive for the call, and `len`
    // is that struct's size; the kernel copies it and keeps no pointer.
    let rc = unsafe { libc::setsockopt(fd, libc::SOL_TLS, direction.optname(), ptr, len) };
    check(rc, direction.name())
}

/// The whole hand-off of one connection, in the kernel's order: the TLS layer, the send
/// keys, the receive keys.
pub fn install(fd: RawFd, tx: &Crypto, rx: &Crypto) -> Result<(), KtlsError> {
    set_ulp(fd)?;
    set_crypto(fd, Direction::Tx, tx)?;
    set_crypto(fd, Direction::Rx, rx)
}

fn check(rc: libc::c_int, step: &'static str) -> Result<(), KtlsError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(KtlsError {
            step,
            source: io::Error::last_os_error(),
        })
    }
}

/// Sends a `close_notify` alert through the kernel's TLS (a record of type alert, 21, with
/// level warning and description close_notify), the orderly end of the TLS stream before
/// the write side is shut. Without blocking: a full socket buffer just skips it (the FIN
/// follows anyway).
pub fn send_close_notify(fd: RawFd) -> io::Result<()> {
    /// Aligned room for one control message of one byte.
    #[repr(C, align(8))]
    struct CmsgBuf([u8; 64]);
    const ALERT_RECORD: u8 = 21;
    let alert = [1u8, 0]; // warning, close_notify
    let mut cbuf = CmsgBuf([0; 64]);
    let mut iov = libc::iovec {
        iov_base: alert.as_ptr().cast_mut().cast(),
        iov_len: alert.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure size computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(1) } as _;
    // SAFETY: msg_control points at `cbuf` (64 bytes, aligned for cmsghdr), more than the
    // CMSG_SPACE(1) given as its length, so CMSG_FIRSTHDR is non-null and CMSG_DATA points
    // inside `cbuf` with room for the one byte written.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        (*cmsg).cmsg_level = libc::SOL_TLS;
        (*cmsg).cmsg_type = libc::TLS_SET_RECORD_TYPE;
        (*cmsg).cmsg_len = libc::CMSG_LEN(1) as _;
        *libc::CMSG_DATA(cmsg) = ALERT_RECORD;
    }
    // SAFETY: `msg` points at `iov` (over `alert`) and `cbuf`, all alive for the call.
    let rc = unsafe { libc::sendmsg(fd, &raw const msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether a failed `recv`/`splice` on a socket with kTLS RX means "the next record is not
/// application data" (an alert, `close_notify` included, or a post-handshake message): the
/// kernel will not hand it over without a control message, so that direction is over.
pub fn is_control_record(errno: i32) -> bool {
    matches!(errno, libc::EIO | libc::EINVAL)
}

/// Why this host cannot hand TLS to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    /// What `tcp_available_ulp` lists (trimmed), or why it could not be read.
    pub ulps: String,
    /// The trial `TCP_ULP` on a loopback connection, when it failed.
    pub trial: Option<String>,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Short, for log lines and errors; `trial` has the setsockopt's own error.
        write!(f, "no kTLS (tcp_available_ulp: {})", self.ulps)
    }
}

/// Whether this kernel takes TLS keys: `tls` in `tcp_available_ulp`, confirmed by setting
/// `TCP_ULP` on a connected loopback pair (the module may also load on that first use, so
/// the trial is made even when the list lacks `tls`). Probed once per process; later calls
/// return the first answer.
pub fn support() -> &'static Result<(), Unavailable> {
    static PROBED: OnceLock<Result<(), Unavailable>> = OnceLock::new();
    PROBED.get_or_init(probe)
}

fn probe() -> Result<(), Unavailable> {
    let ulps = match std::fs::read_to_string(AVAILABLE_ULP) {
        Ok(text) => text.split_ascii_whitespace().collect::<Vec<_>>().join(" "),
        Err(e) => format!("{AVAILABLE_ULP} unreadable: {e}"),
    };
    match try_loopback_ulp() {
        Ok(()) => Ok(()),
        Err(e) => Err(Unavailable {
            ulps,
            trial: Some(e.to_string()),
        }),
    }
}

/// Sets `TCP_ULP` to `tls` on one end of a fresh loopback connection (then dropped).
fn try_loopback_ulp() -> Result<(), KtlsError> {
    let io_err = |source: io::Error| KtlsError {
        step: "TCP_ULP",
        source,
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io_err)?;
    let addr = listener.local_addr().map_err(io_err)?;
    let client = std::net::TcpStream::connect(addr).map_err(io_err)?;
    let (_server, _) = listener.accept().map_err(io_err)?;
    set_ulp(client.as_raw_fd())
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn ulp_list_parsing() {
        assert!(!ulp_list_has_tls("mptcp\n"));
        assert!(ulp_list_has_tls("mptcp tls\n"));
        assert!(ulp_list_has_tls("tls"));
        assert!(!ulp_list_has_tls("tlsx espintcp"));
        assert!(!ulp_list_has_tls(""));
    }

    /// The structs handed to the kernel have linux/tls.h's sizes and offsets (the
    /// `tls_crypto_info` header of two u16, then iv, key, salt, rec_seq, unpadded).
    #[test]
    fn crypto_structs_match_linux_tls_h() {
        use libc::{
            tls12_crypto_info_aes_gcm_128 as G128, tls12_crypto_info_aes_gcm_256 as G256,
            tls12_crypto_info_chacha20_poly1305 as Cha,
        };
        assert_eq!(size_of::<libc::tls_crypto_info>(), 4);
        assert_eq!(size_of::<G128>(), 40);
        assert_eq!(
            [
                offset_of!(G128, iv),
                offset_of!(G128, key),
                offset_of!(G128, salt),
                offset_of!(G128, rec_seq)
            ],
            [4, 12, 28, 32]
        );
        assert_eq!(size_of::<G256>(), 56);
        assert_eq!(
            [
                offset_of!(G256, iv),
                offset_of!(G256, key),
                offset_of!(G256, salt),
                offset_of!(G256, rec_seq)
            ],
            [4, 12, 44, 48]
        );
        assert_eq!(size_of::<Cha>(), 56);
        assert_eq!(
            [
                offset_of!(Cha, iv),
                offset_of!(Cha, key),
                offset_of!(Cha, rec_seq)
            ],
            [4, 16, 48]
        );
        assert_eq!(libc::SOL_TLS, 282);
        assert_eq!((libc::TLS_TX, libc::TLS_RX, libc::TCP_ULP), (1, 2, 31));
    }

    #[test]
    fn crypto_is_filled_from_parts_and_wrong_lengths_are_refused() {
        let seq = 7u64.to_be_bytes();
        let c = Crypto::new(0x0304, 51, &[1; 8], &[2; 16], &[3; 4], seq).expect("aes-128");
        let Crypto::Aes128Gcm(s) = c else {
            panic!("{c:?}")
        };
        assert_eq!((s.info.version, s.info.cipher_type), (0x0304, 51));
        assert_eq!(
            (s.iv, s.key, s.salt, s.rec_seq),
            ([1; 8], [2; 16], [3; 4], seq)
        );
        assert_eq!(c.raw().1, 40);
        let c = Crypto::new(0x0303, 52, &[1; 8], &[2; 32], &[3; 4], seq).expect("aes-256");
        assert!(matches!(c, Crypto::Aes256Gcm(s) if s.key == [2; 32]));
        assert_eq!(c.raw().1, 56);
        let c = Crypto::new(0x0304, 54, &[1; 12], &[0xee; 32], &[], seq).expect("chacha");
        assert!(matches!(c, Crypto::Chacha20Poly1305(s) if s.iv == [1; 12]));
        assert_eq!(c.raw().1, 56);
        let e = Crypto::new(0x0304, 51, &[1; 8], &[2; 32], &[3; 4], seq).expect_err("long key");
        assert!(e.contains("key of 32 bytes"), "{e}");
        assert!(
            Crypto::new(0x0304, 53, &[], &[], &[], seq).is_err(),
            "AES-CCM"
        );
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("238") && !shown.contains("ee"),
            "key bytes in {shown}"
        );
    }

    #[test]
    fn errors_name_the_kernel_setting() {
        let e = KtlsError {
            step: "TCP_ULP",
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert!(e.kernel_lacks_ktls());
        let text = e.to_string();
        assert!(
            text.starts_with("setsockopt(SOL_TCP, TCP_ULP, \"tls\"): "),
            "{text}"
        );
        assert!(
            text.contains("tcp_available_ulp") && text.contains("modprobe tls"),
            "{text}"
        );
        let e = KtlsError {
            step: "TLS_RX",
            source: io::Error::from_raw_os_error(libc::EOPNOTSUPP),
        };
        assert!(!e.kernel_lacks_ktls());
        assert!(
            e.to_string()
                .contains("does not take this TLS version or cipher")
        );
        assert!(is_control_record(libc::EIO) && !is_control_record(libc::EAGAIN));
    }

    /// The alert's `sendmsg` is well formed: on a socket without kTLS the kernel ignores the
    /// `SOL_TLS` control message and the two alert bytes arrive as they are (under kTLS they
    /// would travel as an alert record instead).
    #[test]
    fn close_notify_sendmsg_is_well_formed() {
        use std::io::Read as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        send_close_notify(client.as_raw_fd()).expect("sendmsg");
        let mut got = [0u8; 2];
        server.read_exact(&mut got).expect("read");
        assert_eq!(got, [1, 0], "warning, close_notify");
    }

    /// The probe agrees with the kernel's list, and on a kernel without kTLS says so with
    /// the list's contents; a plain socket without a connection is refused by TCP_ULP.
    #[test]
    fn probe_reports_this_kernel() {
        let listed = std::fs::read_to_string(AVAILABLE_ULP).is_ok_and(|t| ulp_list_has_tls(&t));
        match support() {
            Ok(()) => eprintln!("kTLS available here (tcp_available_ulp lists tls: {listed})"),
            Err(why) => {
                assert!(!listed, "listed yet the trial failed: {why}");
                let text = why.to_string();
                assert!(text.starts_with("no kTLS (tcp_available_ulp: "), "{text}");
                let trial = why.trial.as_deref().unwrap_or("");
                assert!(trial.contains("TCP_ULP"), "{trial}");
                eprintln!("SKIPPING kernel part of the probe test: {text}: {trial}");
            }
        }
    }
}
