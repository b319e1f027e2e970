//! Minimal WebSocket (RFC 6455) frame codec shared by the echo origin and the load generator.
//!
//! Only what the two tools need: parse a frame header out of a byte slice, write server
//! (unmasked) and client (masked) frame headers, XOR masking, and the handshake accept key.
//! Allocation-free; the callers own their buffers.

use base64::Engine;
use sha1::{Digest, Sha1};

/// Continuation frame opcode.
pub const OP_CONT: u8 = 0x0;
/// Text frame opcode.
pub const OP_TEXT: u8 = 0x1;
/// Binary frame opcode.
pub const OP_BINARY: u8 = 0x2;
/// Close frame opcode.
pub const OP_CLOSE: u8 = 0x8;
/// Ping frame opcode.
pub const OP_PING: u8 = 0x9;
/// Pong frame opcode.
pub const OP_PONG: u8 = 0xA;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// FIN bit.
    pub fin: bool,
    /// RSV1..3 bits (must be zero without extensions).
    pub rsv: u8,
    /// Opcode (low 4 bits of the first byte).
    pub opcode: u8,
    /// Masking key, when the MASK bit was set.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes.
    pub len: u64,
    /// Header length in bytes (2 to 14).
    pub header_len: usize,
}

/// Parses a frame header from the start of `buf`; `None` when more bytes are needed.
pub fn parse_header(buf: &[u8]) -> Option<Header> {
    if buf.len() < 2 {
        return None;
    }
    let b0 = buf[0];
    let b1 = buf[1];
    let masked = b1 & 0x80 != 0;
    let (len, mut pos) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (u64::from(n), 2),
    };
    let mask = if masked {
        if buf.len() < pos + 4 {
            return None;
        }
        let mut m = [0u8; 4];
        m.copy_from_slice(&buf[pos..pos + 4]);
        pos += 4;
        Some(m)
    } else {
        None
    };
    Some(Header {
        fin: b0 & 0x80 != 0,
        rsv: (b0 >> 4) & 0x7,
        opcode: b0 & 0x0f,
        mask,
        len,
        header_len: pos,
    })
}

/// Appends a frame header (FIN set) for `len` payload bytes to `out`, masked with `mask` if given.
pub fn write_header(out: &mut Vec<u8>, opcode: u8, len: usize, mask: Option<[u8; 4]>) {
    write_header_fin(out, true, opcode, len, mask);
}

/// Appends a frame header with an explicit FIN bit.
pub fn write_header_fin(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: u8,
    len: usize,
    mask: Option<[u8; 4]>,
) {
    out.push(if fin { 0x80 } else { 0 } | (opcode & 0x0f));
    let mbit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(mbit | len as u8);
    } else if len <= 0xffff {
        out.push(mbit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mbit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if let Some(m) = mask {
        out.extend_from_slice(&m);
    }
}

/// Appends a whole client frame (masked with `mask`) carrying `payload`.
pub fn write_client_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    write_header(out, opcode, payload.len(), Some(mask));
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask, 0);
}

/// XORs `data` with `mask`, as if `data` started at byte `offset` of the payload.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut m = [0u8; 4];
    for (i, b) in m.iter_mut().enumerate() {
        *b = mask[(offset + i) % 4];
    }
    let word = u32::from_ne_bytes(m);
    let wide = u64::from(word) | (u64::from(word) << 32);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) ^ wide;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[i % 4];
    }
}

/// The `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Index just past the `\r\n\r\n` ending an HTTP head, if present.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// One data message put together from its frames, as far as the load generator's readers
/// need it: a message may arrive in fragments (RFC 6455 §5.4; wsedge's built-in echo
/// function forwards what it has of a frame as a fragment), and what identifies it (a
/// marker, a send time) is in its first `K` payload bytes, wherever the fragments split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<const K: usize> {
    /// The first frame's opcode.
    pub opcode: u8,
    /// Payload bytes over all its frames.
    pub len: u64,
    /// Its first `K` payload bytes (zero beyond `len`).
    pub head: [u8; K],
    /// Frames it came in.
    pub frames: u32,
    /// Broken framing: a continuation with no message open, a data frame that opened a
    /// new message before the last one's FIN, or a masked frame from the server.
    pub broken: bool,
}

/// Reassembles data messages frame by frame without copying payloads (the first `K` bytes
/// aside): `start` with each data frame's header (opcode below 8; control frames may come
/// between fragments and are not given to it), `payload` with its bytes in any pieces,
/// `end` when the frame is complete.
#[derive(Debug, Default)]
pub struct Reassembly<const K: usize> {
    cur: Option<Message<K>>,
    have: usize,
}

impl<const K: usize> Reassembly<K> {
    /// A data frame begins.
    pub fn start(&mut self, h: &Header) {
        let masked = h.mask.is_some();
        match self.cur.as_mut() {
            Some(m) if h.opcode == OP_CONT => {
                m.frames += 1;
                m.broken |= masked;
            }
            open => {
                // A continuation with nothing open, or a new message inside one: broken.
                let broken = masked || open.is_some() || h.opcode == OP_CONT;
                self.cur = Some(Message {
                    opcode: h.opcode,
                    len: 0,
                    head: [0; K],
                    frames: 1,
                    broken,
                });
                self.have = 0;
            }
        }
    }

    /// Payload bytes of the current data frame.
    pub fn payload(&mut self, data: &[u8]) {
        if let Some(m) = self.cur.as_mut() {
            let k = data.len().min(K - self.have);
            m.head[self.have..self.have + k].copy_from_slice(&data[..k]);
            self.have += k;
            m.len += data.len() as u64;
        }
    }

    /// The current data frame is complete: the message, when that frame had FIN.
    pub fn end(&mut self, fin: bool) -> Option<Message<K>> {
        if fin { self.cur.take() } else { None }
    }

    /// A whole data frame at once.
    pub fn frame(&mut self, h: &Header, payload: &[u8]) -> Option<Message<K>> {
        self.start(h);
        self.payload(payload);
        self.end(h.fin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_lengths_and_mask() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 100_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = Vec::new();
            write_client_frame(&mut out, OP_BINARY, &payload, [1, 2, 3, 4]);
            let h = parse_header(&out).unwrap();
            assert_eq!(h.len as usize, len);
            assert!(h.fin);
            assert_eq!(h.opcode, OP_BINARY);
            let mut body = out[h.header_len..].to_vec();
            // Unmask in two pieces to exercise the offset.
            let split = len / 3;
            let (a, b) = body.split_at_mut(split);
            apply_mask(a, h.mask.unwrap(), 0);
            apply_mask(b, h.mask.unwrap(), split);
            assert_eq!(body, payload);
            assert!(parse_header(&out[..h.header_len - 1]).is_none());
        }
    }

    #[test]
    fn reassembly_joins_fragments_and_flags_broken_framing() {
        let h = |fin: bool, opcode: u8, len: usize| {
            let mut b = Vec::new();
            write_header_fin(&mut b, fin, opcode, len, None);
            parse_header(&b).unwrap()
        };
        let mut r = Reassembly::<4>::default();
        // One byte, then three (a ping between them is not given), then the rest with FIN.
        assert_eq!(r.frame(&h(false, OP_BINARY, 1), &[1]), None);
        assert_eq!(r.frame(&h(false, OP_CONT, 3), &[2, 3, 4]), None);
        r.start(&h(true, OP_CONT, 10));
        r.payload(&[5; 4]);
        r.payload(&[6; 6]);
        let m = r.end(true).unwrap();
        assert_eq!(
            (m.opcode, m.len, m.head, m.frames, m.broken),
            (OP_BINARY, 14, [1, 2, 3, 4], 3, false)
        );
        // Unfragmented; shorter than K.
        let m = r.frame(&h(true, OP_TEXT, 2), &[9, 9]).unwrap();
        assert_eq!(
            (m.len, m.head, m.frames, m.broken),
            (2, [9, 9, 0, 0], 1, false)
        );
        // A continuation with nothing open; a new message before the last one's FIN.
        assert!(r.frame(&h(true, OP_CONT, 1), &[0]).unwrap().broken);
        assert_eq!(r.frame(&h(false, OP_BINARY, 1), &[0]), None);
        let m = r.frame(&h(true, OP_BINARY, 1), &[7]).unwrap();
        assert!(m.broken && m.head[0] == 7, "{m:?}");
        // A masked frame.
        let mut b = Vec::new();
        write_header(&mut b, OP_BINARY, 1, Some([1, 2, 3, 4]));
        assert!(r.frame(&parse_header(&b).unwrap(), &[0]).unwrap().broken);
    }

    #[test]
    fn rfc_accept_key() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
