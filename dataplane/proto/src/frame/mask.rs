//! Payload masking (RFC 6455 §5.3): XOR with a 4-byte key, resumable at any payload offset.
//!
//! Pure and safe. The `frames` relay unmasks in place, in the recv buffer, only the payloads
//! it must read (close and control frames, text for a function endpoint); the built-in
//! functions mask the frames they send to an origin. A payload split across recv buffers is
//! unmasked piece by piece: pass each piece's position within the payload as `offset` (the
//! [`super::Event::Payload`] `offset`).
//!
//! [`apply_mask`] works a word at a time on unaligned `u64` loads (`from_ne_bytes` over
//! `chunks_exact_mut`, which the compiler turns into plain and often vector loads);
//! [`apply_mask_simple`] is the byte-at-a-time reference the tests compare it with.

/// XORs `buf` with `mask`, as the bytes at position `offset..offset + buf.len()` of a payload.
///
/// Byte `i` of `buf` is XORed with `mask[(offset + i) % 4]`; only `offset % 4` matters, so a
/// caller holding a `u64` payload position may pass `(pos % 4) as usize`. Masking and
/// unmasking are the same operation. Any length and alignment of `buf` is fine.
#[inline]
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    // Rotate the key so that key[0] applies to buf[0]; 8 and 32 are multiples of 4, so the
    // same rotated key applies at the start of every chunk below.
    let key = u32::from_le_bytes(mask)
        .rotate_right(8 * (offset % 4) as u32)
        .to_le_bytes();
    // The key twice, as a word: the same bytes in memory as any 8 payload bytes need.
    let mut pair = [0u8; 8];
    pair[..4].copy_from_slice(&key);
    pair[4..].copy_from_slice(&key);
    let k8 = u64::from_ne_bytes(pair);

    let mut blocks = buf.chunks_exact_mut(32);
    for block in &mut blocks {
        for word in block.chunks_exact_mut(8) {
            xor_word(word, k8);
        }
    }
    let rest = blocks.into_remainder();
    let mut words = rest.chunks_exact_mut(8);
    for word in &mut words {
        xor_word(word, k8);
    }
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// XORs one 8-byte chunk with `k8` (a chunk from `chunks_exact_mut(8)`).
#[inline(always)]
fn xor_word(word: &mut [u8], k8: u64) {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(word);
    let v = u64::from_ne_bytes(bytes) ^ k8;
    word.copy_from_slice(&v.to_ne_bytes());
}

/// Byte-at-a-time [`apply_mask`]: the reference implementation, same contract.
pub fn apply_mask_simple(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= mask[(offset + i) % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic xorshift64* stream for test data.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    #[test]
    fn rfc_example() {
        let mut buf = *b"Hello";
        apply_mask(&mut buf, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(buf, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    }

    #[test]
    fn differential_every_alignment_length_offset() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let backing = rng.bytes(16 + 300);
        for _ in 0..4 {
            let mask = (rng.next() as u32).to_ne_bytes();
            for start in 0..16 {
                for len in 0..300 {
                    for offset in 0..4 {
                        let mut fast = backing.clone();
                        let mut simple = backing.clone();
                        apply_mask(&mut fast[start..start + len], mask, offset);
                        apply_mask_simple(&mut simple[start..start + len], mask, offset);
                        assert_eq!(fast, simple, "start {start} len {len} offset {offset}");
                    }
                }
            }
        }
    }

    #[test]
    fn piecewise_equals_whole() {
        let mut rng = Rng(42);
        let payload = rng.bytes(1000);
        let mask = [0xde, 0xad, 0xbe, 0xef];
        let mut whole = payload.clone();
        apply_mask(&mut whole, mask, 0);
        for split in [1, 3, 4, 7, 8, 31, 33, 500, 999] {
            let mut pieces = payload.clone();
            let (a, b) = pieces.split_at_mut(split);
            apply_mask(a, mask, 0);
            apply_mask(b, mask, split);
            assert_eq!(pieces, whole, "split {split}");
        }
        // Offsets beyond 4 are taken modulo 4; masking twice is the identity.
        let mut twice = whole.clone();
        apply_mask(&mut twice, mask, 4_000_000);
        assert_eq!(twice, payload);
    }
}
