//! The byte pump shared by [`crate::TlsServer`] and [`crate::TlsClient`]: ciphertext in,
//! plaintext out, plaintext in, ciphertext out, over any rustls connection, with the
//! memory bounds and the record-boundary tracking both need.

use std::io::{Read as _, Write as _};

use rustls::ConnectionCommon;

use crate::error::{Peer, TlsError};

/// Memory bounds of one TLS connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsLimits {
    /// Decrypted bytes waiting for `take_plaintext` before `feed` stops consuming
    /// ciphertext (it then reports fewer bytes consumed: backpressure). rustls itself stops
    /// at 16 KiB, so larger values act as 16 KiB; at most one more read's worth of records
    /// (< 18 KiB) is decrypted past the limit.
    pub max_plaintext: usize,
    /// Plaintext sealed but not yet taken as ciphertext; a `seal` that would go past it
    /// while something is already held fails with `SendQueueFull` and queues nothing (one
    /// write alone is always taken: a message bigger than the bound is still sent).
    pub max_unsent: usize,
}

impl Default for TlsLimits {
    fn default() -> Self {
        TlsLimits {
            max_plaintext: 16 * 1024,
            max_unsent: 256 * 1024,
        }
    }
}

/// What one `feed` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Bytes of the input taken. Less than its length only when decrypted bytes are waiting
    /// (take them with `take_plaintext`, then feed the rest again) or after the peer's
    /// `close_notify` (what follows it is ignored and counted as consumed).
    pub consumed: usize,
    /// This call finished the handshake: the facts are there now.
    pub handshake_done: bool,
    /// Decrypted bytes waiting for `take_plaintext`.
    pub plaintext: usize,
    /// The peer sent `close_notify`: no more plaintext will come.
    pub peer_closed: bool,
}

/// Where the stream of records fed so far stands: inside a record header, inside a record
/// body, or at a boundary. kTLS hand-off needs a boundary (the kernel cannot take half a
/// record that user space already read).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RecordScan {
    header: [u8; 5],
    header_have: usize,
    body_left: usize,
    pub(crate) records: u64,
}

impl RecordScan {
    pub(crate) fn scan(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
                if self.body_left == 0 {
                    self.records += 1;
                }
                continue;
            }
            let n = (5 - self.header_have).min(bytes.len());
            self.header[self.header_have..self.header_have + n].copy_from_slice(&bytes[..n]);
            self.header_have += n;
            bytes = &bytes[n..];
            if self.header_have == 5 {
                self.header_have = 0;
                self.body_left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                if self.body_left == 0 {
                    self.records += 1;
                }
            }
        }
    }

    pub(crate) fn at_boundary(&self) -> bool {
        self.header_have == 0 && self.body_left == 0
    }
}

/// Per-connection state around a rustls connection.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) limits: TlsLimits,
    pub(crate) records: RecordScan,
    plaintext_pending: usize,
    unsent: usize,
    pub(crate) peer_closed: bool,
    pub(crate) closing: bool,
    pub(crate) failed: Option<TlsError>,
}

impl Core {
    pub(crate) fn new(limits: TlsLimits) -> Core {
        Core {
            limits,
            records: RecordScan::default(),
            plaintext_pending: 0,
            unsent: 0,
            peer_closed: false,
            closing: false,
            failed: None,
        }
    }

    pub(crate) fn plaintext_pending(&self) -> usize {
        self.plaintext_pending
    }

    pub(crate) fn fail(&mut self, e: TlsError) -> TlsError {
        self.failed = Some(e.clone());
        e
    }

    /// Feeds `input` to `conn` until it is all consumed or the plaintext bound is reached.
    /// `peer` names the peer in certificate errors. Returns the bytes consumed.
    pub(crate) fn feed<D>(
        &mut self,
        conn: &mut ConnectionCommon<D>,
        input: &[u8],
        peer: Option<&Peer>,
    ) -> Result<usize, TlsError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.closing {
            // Our close_notify is sent: what the peer still sends is dropped unread (the
            // connection is ending). rustls counts close_notify as our last alert, and would
            // trip its own assertion sending a fatal one for a bad record after it.
            return Ok(input.len());
        }
        let mut consumed = 0;
        while consumed < input.len() {
            if self.peer_closed {
                // Nothing after close_notify is read (RFC 8446 §6.1).
                return Ok(input.len());
            }
            if self.plaintext_pending >= self.limits.max_plaintext {
                break;
            }
            let mut rest = &input[consumed..];
            let n = match conn.read_tls(&mut rest) {
                Ok(0) => {
                    // rustls reads nothing after close_notify.
                    self.peer_closed = true;
                    return Ok(input.len());
                }
                Ok(n) => n,
                // "received plaintext buffer full": backpressure.
                Err(_) => break,
            };
            self.records.scan(&input[consumed..consumed + n]);
            consumed += n;
            match conn.process_new_packets() {
                Ok(state) => {
                    self.plaintext_pending = state.plaintext_bytes_to_read();
                    self.peer_closed |= state.peer_has_closed();
                }
                Err(e) => return Err(self.fail(TlsError::from_rustls(e, peer))),
            }
        }
        Ok(consumed)
    }

    /// Appends every decrypted byte to `out`; returns how many.
    pub(crate) fn take_plaintext<D>(
        &mut self,
        conn: &mut ConnectionCommon<D>,
        out: &mut Vec<u8>,
    ) -> usize {
        let start = out.len();
        loop {
            let want = self.plaintext_pending.max(4096);
            let at = out.len();
            out.resize(at + want, 0);
            match conn.reader().read(&mut out[at..]) {
                Ok(0) | Err(_) => {
                    out.truncate(at);
                    break;
                }
                Ok(n) => {
                    out.truncate(at + n);
                    self.plaintext_pending = self.plaintext_pending.saturating_sub(n);
                }
            }
        }
        self.plaintext_pending = 0;
        out.len() - start
    }

    pub(crate) fn seal<D>(
        &mut self,
        conn: &mut ConnectionCommon<D>,
        plaintext: &[u8],
    ) -> Result<(), TlsError> {
        if self.failed.is_some() || self.closing {
            return Err(TlsError::Closed);
        }
        if self.unsent > 0 && self.unsent + plaintext.len() > self.limits.max_unsent {
            return Err(TlsError::SendQueueFull {
                queued: self.unsent,
                limit: self.limits.max_unsent,
            });
        }
        // The rustls buffer limit is off (set at creation): the write takes everything.
        conn.writer()
            .write_all(plaintext)
            .map_err(|e| TlsError::Internal {
                detail: format!("queueing plaintext: {e}"),
            })?;
        self.unsent += plaintext.len();
        Ok(())
    }

    pub(crate) fn take_ciphertext<D>(
        &mut self,
        conn: &mut ConnectionCommon<D>,
        out: &mut Vec<u8>,
    ) -> usize {
        let start = out.len();
        while conn.wants_write() {
            match conn.write_tls(out) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if !conn.is_handshaking() {
            // Everything sealed has been encrypted and handed out.
            self.unsent = 0;
        }
        out.len() - start
    }

    pub(crate) fn close_notify<D>(&mut self, conn: &mut ConnectionCommon<D>) {
        if !self.closing && self.failed.is_none() {
            self.closing = true;
            conn.send_close_notify();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_scan_tracks_boundaries_across_any_split() {
        // Three records: 3-byte body, empty body, 300-byte body.
        let mut stream = vec![
            0x17, 3, 3, 0, 3, 1, 2, 3, 0x15, 3, 3, 0, 0, 0x17, 3, 3, 1, 44,
        ];
        stream.extend(std::iter::repeat_n(7u8, 300));
        let ends = [8usize, 13, stream.len()];
        for split in 0..=stream.len() {
            let mut scan = RecordScan::default();
            scan.scan(&stream[..split]);
            assert_eq!(
                scan.at_boundary(),
                split == 0 || ends.contains(&split),
                "split {split}"
            );
            scan.scan(&stream[split..]);
            assert!(scan.at_boundary());
            assert_eq!(scan.records, 3);
        }
    }
}
