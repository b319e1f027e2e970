//! Where an HTTP/1.1 message body ends (RFC 9112 §6.3, §7.1), so the relay forwards exactly
//! one message each way and nothing that follows it.
//!
//! Used for plain requests (the client's body: bytes past it would be a pipelined request that
//! never reaches the origin unvalidated) and for responses that are not a 101 (the proxy ends
//! the exchange once the response is written, instead of waiting for a keep-alive origin to
//! close). Pure: the relay feeds the bytes it received and learns how many belong to the body.

use crate::handshake::BodyLength;

/// Bytes of the body still to come, as far as framing tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// Exactly this many bytes remain (`Content-Length`).
    Length(u64),
    /// A chunked body: the scanner finds its end.
    Chunked(ChunkedBody),
    /// Ends when the sender closes (a response with neither length nor chunked coding).
    UntilClose,
}

/// What feeding bytes to a [`BodyEnd`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fed {
    /// All of them belong to the body, which goes on.
    More,
    /// The body ended after the first `n` of them; what follows is not part of it.
    Done(usize),
}

/// A chunked body that breaks the grammar: the message cannot be relayed safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body")]
pub struct ChunkedError;

impl BodyEnd {
    /// The framing of a request body as the head declared it; `None` for no body.
    pub fn of_request(length: BodyLength) -> Option<BodyEnd> {
        match length {
            BodyLength::None | BodyLength::Length(0) => None,
            BodyLength::Length(n) => Some(BodyEnd::Length(n)),
            BodyLength::Chunked => Some(BodyEnd::Chunked(ChunkedBody::default())),
        }
    }

    /// Feeds the next bytes of the stream.
    pub fn feed(&mut self, data: &[u8]) -> Result<Fed, ChunkedError> {
        match self {
            BodyEnd::Length(left) => {
                let n = data.len() as u64;
                if n < *left {
                    *left -= n;
                    Ok(Fed::More)
                } else {
                    let end = *left as usize;
                    *left = 0;
                    Ok(Fed::Done(end))
                }
            }
            BodyEnd::Chunked(scanner) => scanner.feed(data),
            BodyEnd::UntilClose => Ok(Fed::More),
        }
    }
}

/// Where a chunked body's scanner stands (RFC 9112 §7.1: `chunk-size [ext] CRLF data CRLF`,
/// ..., `0 [ext] CRLF`, trailer fields, `CRLF`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Chunk {
    /// Reading the hex size; `digits` seen so far.
    #[default]
    Size,
    /// After the size: extensions or whitespace up to CR.
    Ext,
    /// Expecting the LF of the size line.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// Expecting the CR, then the LF, after chunk data.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// Expecting the LF of a trailer line.
    TrailerLf,
    /// Expecting the LF of the final empty line.
    EndLf,
}

/// Longest chunk-size line accepted (size digits plus extensions), against slow-drip lines.
const MAX_SIZE_LINE: u32 = 4096;
/// Longest trailer section accepted.
const MAX_TRAILERS: u32 = 16 * 1024;

/// A chunked-body scanner that never buffers: it only counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChunkedBody {
    state: Chunk,
    /// Chunk size being read, then data bytes left in the chunk.
    size: u64,
    digits: u32,
    /// Bytes of the current size line or of the trailers (caps).
    line: u32,
}

impl ChunkedBody {
    /// Feeds the next bytes of the body.
    pub fn feed(&mut self, data: &[u8]) -> Result<Fed, ChunkedError> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                Chunk::Size => match hex(b) {
                    Some(d) => {
                        // 16 hex digits fill a u64; more is never a real chunk.
                        if self.digits >= 16 {
                            return Err(ChunkedError);
                        }
                        self.size = self.size << 4 | u64::from(d);
                        self.digits += 1;
                        self.bump_line()?;
                    }
                    None if self.digits == 0 => return Err(ChunkedError),
                    None => {
                        self.state = Chunk::Ext;
                        continue;
                    }
                },
                Chunk::Ext => {
                    match b {
                        b'\r' => self.state = Chunk::SizeLf,
                        // Extensions and BWS: visible characters, space, tab.
                        b'\t' | b' '..=b'~' => {}
                        _ => return Err(ChunkedError),
                    }
                    self.bump_line()?;
                }
                Chunk::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkedError);
                    }
                    self.line = 0;
                    self.digits = 0;
                    self.state = if self.size == 0 {
                        Chunk::TrailerStart
                    } else {
                        Chunk::Data
                    };
                }
                Chunk::Data => {
                    let take =
                        (data.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = Chunk::DataCr;
                    }
                    continue;
                }
                Chunk::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkedError);
                    }
                    self.state = Chunk::DataLf;
                }
                Chunk::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkedError);
                    }
                    self.state = Chunk::Size;
                }
                Chunk::TrailerStart => {
                    self.bump_trailers()?;
                    self.state = if b == b'\r' {
                        Chunk::EndLf
                    } else {
                        Chunk::Trailer
                    };
                }
                Chunk::Trailer => {
                    self.bump_trailers()?;
                    if b == b'\r' {
                        self.state = Chunk::TrailerLf;
                    } else if b == b'\n' || b == 0 {
                        return Err(ChunkedError);
                    }
                }
                Chunk::TrailerLf => {
                    self.bump_trailers()?;
                    if b != b'\n' {
                        return Err(ChunkedError);
                    }
                    self.state = Chunk::TrailerStart;
                }
                Chunk::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkedError);
                    }
                    *self = ChunkedBody::default();
                    return Ok(Fed::Done(i + 1));
                }
            }
            i += 1;
        }
        Ok(Fed::More)
    }

    fn bump_line(&mut self) -> Result<(), ChunkedError> {
        self.line += 1;
        if self.line > MAX_SIZE_LINE {
            return Err(ChunkedError);
        }
        Ok(())
    }

    fn bump_trailers(&mut self) -> Result<(), ChunkedError> {
        self.line += 1;
        if self.line > MAX_TRAILERS {
            return Err(ChunkedError);
        }
        Ok(())
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked() -> BodyEnd {
        BodyEnd::Chunked(ChunkedBody::default())
    }

    /// Feeds `input` whole, then byte by byte: both must agree on where the body ends.
    fn end_of(input: &[u8]) -> Result<Option<usize>, ChunkedError> {
        let mut whole = chunked();
        let at_once = match whole.feed(input)? {
            Fed::Done(n) => Some(n),
            Fed::More => None,
        };
        let mut bytes = chunked();
        let mut by_byte = None;
        for (i, b) in input.iter().enumerate() {
            if let Fed::Done(n) = bytes.feed(std::slice::from_ref(b))? {
                assert_eq!(n, 1);
                by_byte = Some(i + 1);
                break;
            }
        }
        assert_eq!(at_once, by_byte, "whole vs byte-by-byte for {input:?}");
        Ok(at_once)
    }

    #[test]
    fn content_length_ends_exactly() {
        let mut body = BodyEnd::Length(5);
        assert_eq!(body.feed(b"abc"), Ok(Fed::More));
        assert_eq!(body.feed(b"deGET /x"), Ok(Fed::Done(2)));
        assert_eq!(BodyEnd::Length(3).feed(b"abc"), Ok(Fed::Done(3)));
        assert_eq!(BodyEnd::of_request(BodyLength::Length(0)), None);
        assert_eq!(BodyEnd::of_request(BodyLength::None), None);
    }

    #[test]
    fn until_close_never_ends() {
        assert_eq!(BodyEnd::UntilClose.feed(b"anything"), Ok(Fed::More));
    }

    #[test]
    fn chunked_bodies_end_after_the_last_chunk_and_trailers() {
        let body = b"5\r\nhello\r\n0\r\n\r\n";
        assert_eq!(end_of(body), Ok(Some(body.len())));
        let mut smuggled = body.to_vec();
        smuggled.extend_from_slice(b"GET /internal HTTP/1.1\r\n\r\n");
        assert_eq!(end_of(&smuggled), Ok(Some(body.len())));
        let with_ext =
            b"A;name=\"v\" \r\n0123456789\r\n0;last\r\nTrailer: x\r\nOther: y\r\n\r\nrest";
        assert_eq!(end_of(with_ext), Ok(Some(with_ext.len() - 4)));
        assert_eq!(end_of(b"5\r\nhel"), Ok(None));
        assert_eq!(end_of(b"0\r\n"), Ok(None));
        assert_eq!(end_of(b"0\r\n\r\n"), Ok(Some(5)));
    }

    #[test]
    fn chunked_grammar_errors_are_refused() {
        for bad in [
            &b"\r\n"[..],
            b"g\r\n",
            b"5\r\nhelloXX",
            b"5\nhello",
            b"5\r\nhello\r\n0\r\nbad\nline\r\n\r\n",
            b"11111111111111111\r\n",
            b"5\r\nhello\r\n0\r\n\rX",
        ] {
            assert_eq!(end_of(bad), Err(ChunkedError), "{bad:?}");
        }
    }

    #[test]
    fn chunk_data_may_contain_anything() {
        let body = b"5\r\n0\r\n\r\n\r\n0\r\n\r\n";
        assert_eq!(end_of(body), Ok(Some(body.len())));
    }
}
