//! Streaming UTF-8 validation of a text message that arrives in fragments and recv chunks.
//!
//! Pure. Used by the `frames` relay in front of a function endpoint and by the built-in
//! functions, which must reject invalid text with close code 1007. Fail fast (Autobahn cases
//! 6.x): a chunk is rejected as soon as its bytes cannot begin any valid continuation, not at
//! the end of the message; a message that ends inside a sequence is rejected by
//! [`Utf8Validator::finish`].
//!
//! The work is `std::str::from_utf8` on each chunk, plus a carry of at most 3 bytes for a
//! sequence cut at a chunk boundary. `from_utf8` tells "invalid" (`error_len() == Some`) from
//! "cut short" (`error_len() == None`, and then the cut bytes are a valid prefix: it checks
//! overlongs, surrogates and > U+10FFFF on the second byte already), which is exactly the
//! fail-fast split.

use super::FrameError;

/// Incremental UTF-8 validator for one message at a time.
///
/// Feed the unmasked payload bytes of a message in order ([`Utf8Validator::feed`]), across as
/// many frames and chunks as they come in, then call [`Utf8Validator::finish`] at the end of
/// the message (the [`super::Event::MessageEnd`] of a Text message). `finish` also resets it for
/// the next message. After an error the message is invalid; call [`Utf8Validator::reset`]
/// before reusing the validator (the connection is normally closed with 1007 instead).
#[derive(Debug, Clone, Default)]
pub struct Utf8Validator {
    /// Bytes of a sequence cut at the end of the previous chunk.
    /// INVARIANT: `carry[..carry_len]` is a valid, incomplete UTF-8 prefix; `carry_len <= 3`.
    carry: [u8; 4],
    carry_len: u8,
}

/// Length of the sequence led by `b`, for a lead byte that `from_utf8` reported as cut short
/// (so 0xC2..=0xF4).
#[inline]
fn sequence_len(b: u8) -> usize {
    match b {
        0x00..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

impl Utf8Validator {
    /// A validator at the start of a message.
    pub const fn new() -> Self {
        Self {
            carry: [0; 4],
            carry_len: 0,
        }
    }

    /// Validates the next bytes of the message.
    ///
    /// `Ok(())` if everything so far is UTF-8 or a valid prefix of it; a sequence cut at the end
    /// of `chunk` is kept (at most 3 bytes) and completed by the next call.
    /// `Err(FrameError::InvalidUtf8)` as soon as the bytes seen cannot be valid.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), FrameError> {
        if self.carry_len > 0 {
            let have = usize::from(self.carry_len);
            let need = sequence_len(self.carry[0]) - have;
            let take = need.min(chunk.len());
            let mut seq = self.carry;
            seq[have..have + take].copy_from_slice(&chunk[..take]);
            match std::str::from_utf8(&seq[..have + take]) {
                Ok(_) => self.carry_len = 0,
                Err(e) if e.error_len().is_none() => {
                    // Still cut short (the chunk was shorter than the rest of the sequence).
                    self.carry = seq;
                    self.carry_len = (have + take) as u8;
                    return Ok(());
                }
                Err(_) => return Err(FrameError::InvalidUtf8),
            }
            chunk = &chunk[take..];
        }
        match std::str::from_utf8(chunk) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &chunk[e.valid_up_to()..];
                // A cut sequence is at most 3 bytes (a 4th would complete it).
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carry_len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(FrameError::InvalidUtf8),
        }
    }

    /// Ends the message: `Ok(())` if it was complete UTF-8, `Err(FrameError::InvalidUtf8)` if
    /// it ended inside a sequence. Either way the validator is reset for the next message.
    pub fn finish(&mut self) -> Result<(), FrameError> {
        let complete = self.carry_len == 0;
        self.reset();
        if complete {
            Ok(())
        } else {
            Err(FrameError::InvalidUtf8)
        }
    }

    /// Forgets any partial sequence: the next `feed` starts a new message.
    pub fn reset(&mut self) {
        self.carry_len = 0;
    }

    /// Whether the bytes fed so far end inside a multi-byte sequence.
    pub const fn is_incomplete(&self) -> bool {
        self.carry_len > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Validates `bytes` in one go, as the reference answer: `Ok` iff valid UTF-8.
    fn whole(bytes: &[u8]) -> Result<(), FrameError> {
        let mut v = Utf8Validator::new();
        v.feed(bytes)?;
        v.finish()
    }

    /// How many bytes a fail-fast validator must have seen when it fails: the shortest prefix
    /// that is neither UTF-8 nor a valid prefix of it; `None` if there is none.
    fn fail_point(bytes: &[u8]) -> Option<usize> {
        (1..=bytes.len())
            .find(|&n| std::str::from_utf8(&bytes[..n]).is_err_and(|e| e.error_len().is_some()))
    }

    /// Every split into two and three pieces gives the whole-buffer answer, and a fed error
    /// shows up in the piece holding the failing byte (fail fast), never later.
    fn check_all_splits(bytes: &[u8]) {
        let expected = whole(bytes);
        assert_eq!(
            expected.is_ok(),
            std::str::from_utf8(bytes).is_ok(),
            "{bytes:x?}"
        );
        let fail_at = fail_point(bytes);
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let mut v = Utf8Validator::new();
                let pieces = [&bytes[..i], &bytes[i..j], &bytes[j..]];
                let mut fed = 0;
                let mut got = Ok(());
                for p in pieces {
                    fed += p.len();
                    got = v.feed(p);
                    if got.is_err() {
                        let f = fail_at.unwrap_or(usize::MAX);
                        assert!(fed >= f, "{bytes:x?} split {i},{j}: failed before byte {f}");
                        break;
                    }
                    if let Some(f) = fail_at {
                        assert!(fed < f, "{bytes:x?} split {i},{j}: passed byte {f}");
                    }
                }
                if got.is_ok() {
                    got = v.finish();
                }
                assert_eq!(got, expected, "{bytes:x?} split {i},{j}");
            }
        }
    }

    #[test]
    fn valid_sequences_at_every_split() {
        for s in [
            "",
            "a",
            "Hello-µ@ßöäüàá-UTF-8!!",
            "κόσμε",
            "\u{7F}\u{80}\u{7FF}\u{800}\u{FFFF}\u{10000}\u{10FFFF}",
            "\u{D7FF}\u{E000}\u{FFFD}",
            "😀 mixed ascii 😀😀",
        ] {
            check_all_splits(s.as_bytes());
        }
    }

    #[test]
    fn invalid_sequences_at_every_split() {
        let cases: &[&[u8]] = &[
            // Overlong encodings of '/' and of the largest overlongs.
            &[0xC0, 0xAF],
            &[0xE0, 0x80, 0xAF],
            &[0xF0, 0x80, 0x80, 0xAF],
            &[0xC1, 0xBF],
            &[0xE0, 0x9F, 0xBF],
            &[0xF0, 0x8F, 0xBF, 0xBF],
            // Surrogates U+D800, U+DBFF, U+DFFF, and a surrogate pair.
            &[0xED, 0xA0, 0x80],
            &[0xED, 0xAF, 0xBF],
            &[0xED, 0xBF, 0xBF],
            &[0xED, 0xA0, 0x80, 0xED, 0xB0, 0x80],
            // Above U+10FFFF.
            &[0xF4, 0x90, 0x80, 0x80],
            &[0xF5, 0x80, 0x80, 0x80],
            &[0xF7, 0xBF, 0xBF, 0xBF],
            &[0xFF],
            &[0xFE],
            // Lone continuation bytes, a lead byte followed by ASCII.
            &[0x80],
            &[0xBF],
            &[0xC2, 0x41],
            &[0xE2, 0x82, 0x41],
            // Truncated sequences at the end of the message.
            &[0xC2],
            &[0xE2, 0x82],
            &[0xF0, 0x9F, 0x98],
            // Autobahn 6.3.1 style: valid text, a surrogate, more text.
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64",
            // Valid text then a truncated emoji.
            b"hello \xF0\x9F\x98",
        ];
        for c in cases {
            assert!(whole(c).is_err(), "{c:x?}");
            check_all_splits(c);
        }
    }

    #[test]
    fn fails_fast_on_first_impossible_byte() {
        // 0xF4 0x90 can never be valid: reject after two bytes, before the message ends.
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"ok \xF4"), Ok(()));
        assert!(v.is_incomplete());
        assert_eq!(v.feed(&[0x90]), Err(FrameError::InvalidUtf8));
        // Surrogate lead: ED then A0 fails at A0.
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&[0xED]), Ok(()));
        assert_eq!(v.feed(&[0xA0]), Err(FrameError::InvalidUtf8));
    }

    #[test]
    fn byte_at_a_time_and_reuse() {
        let text = "añ€😀".repeat(10);
        let mut v = Utf8Validator::new();
        for b in text.as_bytes() {
            v.feed(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(v.finish(), Ok(()));
        // finish resets: a truncated message, then a fresh valid one.
        assert_eq!(v.feed(&[0xE2]), Ok(()));
        assert_eq!(v.finish(), Err(FrameError::InvalidUtf8));
        assert_eq!(v.feed(b"fresh"), Ok(()));
        assert_eq!(v.finish(), Ok(()));
    }

    #[test]
    fn exhaustive_short_sequences_match_std() {
        // Every 1- and 2-byte input, and 3-byte inputs over interesting bytes, split everywhere.
        let interesting = [
            0x00u8, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0,
            0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF,
        ];
        for a in 0..=255u8 {
            check_all_splits(&[a]);
            for b in 0..=255u8 {
                let bytes = [a, b];
                let mut v = Utf8Validator::new();
                let split = v
                    .feed(&[a])
                    .and_then(|()| v.feed(&[b]))
                    .and_then(|()| v.finish());
                assert_eq!(
                    split.is_ok(),
                    std::str::from_utf8(&bytes).is_ok(),
                    "{bytes:x?}"
                );
            }
        }
        for &a in &interesting {
            for &b in &interesting {
                for &c in &interesting {
                    for &d in &[0x80u8, 0xBF, 0x41] {
                        check_all_splits(&[a, b, c, d]);
                    }
                }
            }
        }
    }
}
