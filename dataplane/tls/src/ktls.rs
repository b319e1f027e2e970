//! Kernel TLS (kTLS): after the handshake, the traffic keys can go to the kernel
//! (`setsockopt(TCP_ULP, "tls")`, then `SOL_TLS`/`TLS_TX` and `TLS_RX` with a
//! `tls12_crypto_info_*` struct), so the socket carries plaintext for user space and splice
//! works again. This module detects support at run time and builds those structs from the
//! keys rustls hands over; the setsockopt calls belong to the ring crate (they need a raw fd).
//!
//! Layouts are `include/uapi/linux/tls.h`: a `tls_crypto_info { u16 version; u16
//! cipher_type; }` header (native byte order), then `iv`, `key`, `salt`, `rec_seq` as byte
//! arrays. [`CryptoInfo::to_bytes`] writes exactly that, so no `unsafe` cast is needed.

use rustls::{ConnectionTrafficSecrets, ExtractedSecrets};

use crate::error::TlsError;
use crate::spec::TlsVersion;

/// `SOL_TLS`: the socket option level of `TLS_TX`/`TLS_RX`.
pub const SOL_TLS: i32 = 282;
/// `TLS_TX`: the send keys.
pub const TLS_TX: i32 = 1;
/// `TLS_RX`: the receive keys.
pub const TLS_RX: i32 = 2;
/// `TCP_ULP` (at `SOL_TCP`), set to `"tls"` first.
pub const TCP_ULP: i32 = 31;
/// `TLS_1_2_VERSION` / `TLS_1_3_VERSION` of `tls_crypto_info.version`.
pub const TLS_1_2_VERSION: u16 = 0x0303;
pub const TLS_1_3_VERSION: u16 = 0x0304;
/// `tls_crypto_info.cipher_type` values.
pub const TLS_CIPHER_AES_GCM_128: u16 = 51;
pub const TLS_CIPHER_AES_GCM_256: u16 = 52;
pub const TLS_CIPHER_CHACHA20_POLY1305: u16 = 54;

/// Where the kernel lists its upper-layer protocols.
pub const AVAILABLE_ULP: &str = "/proc/sys/net/ipv4/tcp_available_ulp";

/// Whether this kernel offers kTLS: `tls` is among its TCP upper-layer protocols. (The
/// module may also load on first use on some systems; a failed `TCP_ULP` setsockopt is the
/// final word, and the worker must fall back to user-space TLS then.)
pub fn kernel_tls_available() -> bool {
    std::fs::read_to_string(AVAILABLE_ULP).is_ok_and(|text| ulp_list_has_tls(&text))
}

/// Whether a `tcp_available_ulp` text (space-separated names) lists `tls`.
pub fn ulp_list_has_tls(text: &str) -> bool {
    text.split_ascii_whitespace().any(|ulp| ulp == "tls")
}

/// The key material of one direction in the kernel's shape.
#[derive(Clone, PartialEq, Eq)]
pub struct CryptoInfo {
    /// `TLS_1_2_VERSION` or `TLS_1_3_VERSION`.
    pub version: u16,
    /// `TLS_CIPHER_*`.
    pub cipher_type: u16,
    /// The per-record part of the nonce (8 bytes for AES-GCM, 12 for ChaCha20-Poly1305).
    pub iv: Vec<u8>,
    pub key: Vec<u8>,
    /// The fixed part of the nonce (4 bytes for AES-GCM, none for ChaCha20-Poly1305).
    pub salt: Vec<u8>,
    /// The sequence number of the next record, big-endian.
    pub rec_seq: [u8; 8],
}

impl std::fmt::Debug for CryptoInfo {
    /// Keys are never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CryptoInfo")
            .field("version", &format_args!("{:#06x}", self.version))
            .field("cipher_type", &self.cipher_type)
            .field("key_len", &self.key.len())
            .field("rec_seq", &u64::from_be_bytes(self.rec_seq))
            .finish_non_exhaustive()
    }
}

impl CryptoInfo {
    /// The struct's bytes as `setsockopt(SOL_TLS, TLS_TX/TLS_RX)` takes them:
    /// `tls12_crypto_info_aes_gcm_128` (40 bytes), `_aes_gcm_256` (56) or
    /// `_chacha20_poly1305` (56).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(56);
        out.extend_from_slice(&self.version.to_ne_bytes());
        out.extend_from_slice(&self.cipher_type.to_ne_bytes());
        out.extend_from_slice(&self.iv);
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.rec_seq);
        out
    }

    /// The nonce of the record with sequence number `seq` under these keys, as the kernel
    /// computes it: TLS 1.3 and ChaCha20 XOR `seq` into `salt || iv`; TLS 1.2 AES-GCM sends
    /// `iv + (seq - rec_seq)` as its explicit nonce.
    pub fn nonce_for(&self, seq: u64) -> [u8; 12] {
        let mut nonce = [0u8; 12];
        let fixed = self.salt.len();
        nonce[..fixed].copy_from_slice(&self.salt);
        nonce[fixed..].copy_from_slice(&self.iv);
        if self.version == TLS_1_2_VERSION && self.cipher_type != TLS_CIPHER_CHACHA20_POLY1305 {
            let start = u64::from_be_bytes(nonce[4..].try_into().unwrap_or_default());
            let first_seq = u64::from_be_bytes(self.rec_seq);
            let explicit = start.wrapping_add(seq.wrapping_sub(first_seq));
            nonce[4..].copy_from_slice(&explicit.to_be_bytes());
        } else {
            for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
                *n ^= s;
            }
        }
        nonce
    }
}

/// Both directions' keys of a connection, ready for the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KtlsHandoff {
    pub version: TlsVersion,
    /// For `TLS_TX`.
    pub tx: CryptoInfo,
    /// For `TLS_RX`.
    pub rx: CryptoInfo,
}

/// Builds both directions from rustls's extracted secrets.
pub(crate) fn handoff(
    version: TlsVersion,
    secrets: ExtractedSecrets,
) -> Result<KtlsHandoff, TlsError> {
    let (tx_seq, tx) = secrets.tx;
    let (rx_seq, rx) = secrets.rx;
    Ok(KtlsHandoff {
        version,
        tx: crypto_info(version, tx_seq, tx, Direction::Tx)?,
        rx: crypto_info(version, rx_seq, rx, Direction::Rx)?,
    })
}

/// Which way the keys are used: it matters for TLS 1.2 AES-GCM only (below).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Tx,
    Rx,
}

/// The kernel struct for one direction whose next record has sequence number `seq`.
///
/// TLS 1.2 AES-GCM needs care when sending: rustls makes record `n`'s explicit nonce
/// `E XOR n` (E from the key block), the kernel sends `iv, iv + 1, iv + 2, ...`. Handing
/// over `E XOR seq` could repeat a nonce rustls already used under the same key (GCM's one
/// fatal mistake), so the kernel starts above the whole aligned block of values rustls's
/// first `seq` records can have used: `(E | mask) + 1` with `mask = next_power_of_two(seq)
/// - 1`. Explicit nonces only need to be unique; receivers read them off the wire.
pub fn crypto_info(
    version: TlsVersion,
    seq: u64,
    secrets: ConnectionTrafficSecrets,
    direction: Direction,
) -> Result<CryptoInfo, TlsError> {
    let kernel_version = match version {
        TlsVersion::Tls12 => TLS_1_2_VERSION,
        TlsVersion::Tls13 => TLS_1_3_VERSION,
    };
    let rec_seq = seq.to_be_bytes();
    let gcm = |cipher_type: u16, key: &[u8], iv: &[u8]| -> CryptoInfo {
        let salt = iv[..4].to_vec();
        let mut explicit: [u8; 8] = iv[4..12].try_into().unwrap_or_default();
        if version == TlsVersion::Tls12 && direction == Direction::Tx {
            let e = u64::from_be_bytes(explicit);
            let mask = seq.checked_next_power_of_two().map_or(u64::MAX, |p| p - 1);
            explicit = ((e | mask).wrapping_add(1)).to_be_bytes();
        }
        CryptoInfo {
            version: kernel_version,
            cipher_type,
            iv: explicit.to_vec(),
            key: key.to_vec(),
            salt,
            rec_seq,
        }
    };
    match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
            Ok(gcm(TLS_CIPHER_AES_GCM_128, key.as_ref(), iv.as_ref()))
        }
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
            Ok(gcm(TLS_CIPHER_AES_GCM_256, key.as_ref(), iv.as_ref()))
        }
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => Ok(CryptoInfo {
            version: kernel_version,
            cipher_type: TLS_CIPHER_CHACHA20_POLY1305,
            iv: iv.as_ref().to_vec(),
            key: key.as_ref().to_vec(),
            salt: Vec::new(),
            rec_seq,
        }),
        _ => Err(TlsError::Internal {
            detail: "cipher not supported by kernel TLS".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulp_list_parsing() {
        assert!(!ulp_list_has_tls("mptcp\n"));
        assert!(ulp_list_has_tls("mptcp tls\n"));
        assert!(ulp_list_has_tls("tls"));
        assert!(!ulp_list_has_tls("tlsx espintcp"));
        assert!(!ulp_list_has_tls(""));
    }

    #[test]
    fn struct_layouts_match_linux_tls_h() {
        let key16 = rustls::crypto::cipher::AeadKey::from([7u8; 32]);
        // AeadKey::from makes a 32-byte key; build a 16-byte one through the struct instead.
        let info = CryptoInfo {
            version: TLS_1_3_VERSION,
            cipher_type: TLS_CIPHER_AES_GCM_128,
            iv: vec![1; 8],
            key: vec![2; 16],
            salt: vec![3; 4],
            rec_seq: 5u64.to_be_bytes(),
        };
        let bytes = info.to_bytes();
        assert_eq!(
            bytes.len(),
            40,
            "sizeof(struct tls12_crypto_info_aes_gcm_128)"
        );
        assert_eq!(&bytes[..2], &0x0304u16.to_ne_bytes());
        assert_eq!(&bytes[2..4], &51u16.to_ne_bytes());
        assert_eq!(&bytes[4..12], &[1; 8]);
        assert_eq!(&bytes[12..28], &[2; 16]);
        assert_eq!(&bytes[28..32], &[3; 4]);
        assert_eq!(&bytes[32..40], &[0, 0, 0, 0, 0, 0, 0, 5]);

        let iv = rustls::crypto::cipher::Iv::new([9; 12]);
        let gcm256 = crypto_info(
            TlsVersion::Tls13,
            0,
            ConnectionTrafficSecrets::Aes256Gcm { key: key16, iv },
            Direction::Rx,
        )
        .expect("aes-256");
        assert_eq!(gcm256.to_bytes().len(), 56, "sizeof(..._aes_gcm_256)");
        let chacha = crypto_info(
            TlsVersion::Tls12,
            3,
            ConnectionTrafficSecrets::Chacha20Poly1305 {
                key: rustls::crypto::cipher::AeadKey::from([1u8; 32]),
                iv: rustls::crypto::cipher::Iv::new([4; 12]),
            },
            Direction::Tx,
        )
        .expect("chacha");
        let bytes = chacha.to_bytes();
        assert_eq!(bytes.len(), 56, "sizeof(..._chacha20_poly1305)");
        assert_eq!(&bytes[2..4], &54u16.to_ne_bytes());
        assert_eq!(
            &bytes[4..16],
            &[4; 12],
            "chacha: the whole 12-byte iv, no salt"
        );
        assert_eq!(&bytes[48..56], &3u64.to_be_bytes());
    }

    /// TLS 1.2 AES-GCM send keys: the kernel's explicit nonces never repeat one that rustls
    /// used for the records before the hand-off, whatever E and seq.
    #[test]
    fn tls12_tx_nonces_never_repeat_rustls_ones() {
        for e in [
            0u64,
            1,
            3,
            0x7f,
            0xff,
            0x1234_5678_9abc_def0,
            u64::MAX - 2,
            u64::MAX,
        ] {
            for seq in [0u64, 1, 2, 3, 4, 5, 17, 64, 1000] {
                let mut iv = [0u8; 12];
                iv[..4].copy_from_slice(&[0xaa; 4]);
                iv[4..].copy_from_slice(&e.to_be_bytes());
                let info = crypto_info(
                    TlsVersion::Tls12,
                    seq,
                    ConnectionTrafficSecrets::Aes128Gcm {
                        key: rustls::crypto::cipher::AeadKey::from([0u8; 32]),
                        iv: rustls::crypto::cipher::Iv::new(iv),
                    },
                    Direction::Tx,
                )
                .expect("gcm");
                let used: std::collections::HashSet<u64> = (0..seq).map(|n| e ^ n).collect();
                for k in 0..2048u64 {
                    let nonce = info.nonce_for(seq + k);
                    assert_eq!(&nonce[..4], &[0xaa; 4]);
                    let explicit = u64::from_be_bytes(nonce[4..].try_into().expect("8"));
                    assert!(
                        !used.contains(&explicit),
                        "e={e:#x} seq={seq} k={k}: nonce reused"
                    );
                }
            }
        }
    }
}
