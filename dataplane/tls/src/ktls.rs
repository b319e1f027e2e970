//! Kernel TLS (kTLS): after the handshake, the traffic keys can go to the kernel
//! (`setsockopt(TCP_ULP, "tls")`, then `SOL_TLS`/`TLS_TX` and `TLS_RX` with a
//! `tls12_crypto_info_*` struct), so the socket carries plaintext for user space and splice
//! works again. This module turns the keys rustls hands over into each direction's parts
//! ([`CryptoInfo`]: version, cipher, iv, key, salt, next sequence number); the kernel's
//! structs (libc's copies of `include/uapi/linux/tls.h`), the setsockopt calls and the
//! run-time probe belong to the ring crate (`wsedge_ring::ktls`: they need a raw fd and
//! `unsafe`).

use rustls::{ConnectionTrafficSecrets, ExtractedSecrets};

use crate::error::TlsError;
use crate::spec::TlsVersion;

/// `TLS_1_2_VERSION` / `TLS_1_3_VERSION` of `tls_crypto_info.version`.
pub const TLS_1_2_VERSION: u16 = 0x0303;
pub const TLS_1_3_VERSION: u16 = 0x0304;
/// `tls_crypto_info.cipher_type` values.
pub const TLS_CIPHER_AES_GCM_128: u16 = 51;
pub const TLS_CIPHER_AES_GCM_256: u16 = 52;
pub const TLS_CIPHER_CHACHA20_POLY1305: u16 = 54;

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

    /// Each part has the length linux/tls.h gives it for its cipher (the struct itself is
    /// libc's, filled and size-checked by `wsedge_ring::ktls::Crypto`).
    #[test]
    fn parts_have_the_kernel_lengths() {
        let iv = rustls::crypto::cipher::Iv::new([9; 12]);
        let gcm256 = crypto_info(
            TlsVersion::Tls13,
            5,
            ConnectionTrafficSecrets::Aes256Gcm {
                key: rustls::crypto::cipher::AeadKey::from([7u8; 32]),
                iv,
            },
            Direction::Rx,
        )
        .expect("aes-256");
        assert_eq!(
            (gcm256.version, gcm256.cipher_type),
            (TLS_1_3_VERSION, TLS_CIPHER_AES_GCM_256)
        );
        assert_eq!(
            (gcm256.iv.len(), gcm256.key.len(), gcm256.salt.len()),
            (8, 32, 4),
            "TLS_CIPHER_AES_GCM_256_{{IV,KEY,SALT}}_SIZE"
        );
        assert_eq!(gcm256.salt, [9; 4], "salt: the first 4 bytes of the iv");
        assert_eq!(gcm256.rec_seq, 5u64.to_be_bytes());
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
        assert_eq!(chacha.cipher_type, TLS_CIPHER_CHACHA20_POLY1305);
        assert_eq!(chacha.iv, [4; 12], "chacha: the whole 12-byte iv, no salt");
        assert!(chacha.salt.is_empty());
        assert_eq!(chacha.key.len(), 32);
        assert_eq!(chacha.rec_seq, 3u64.to_be_bytes());
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
