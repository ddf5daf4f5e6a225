//! Chunked transfer coding (RFC 9112 §7.1) as a proxy needs it: find where a chunked body ends
//! while its bytes pass through unchanged, and frame a body of unknown length as chunks.

/// Where the scanner is inside a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hexadecimal size of the next chunk; `digits` seen so far.
    Size {
        digits: u8,
    },
    /// After the size: skipping a chunk extension up to the line end.
    Extension,
    /// Expecting the `\n` that ends the size line.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// Expecting the `\r\n` after chunk data.
    DataCr,
    DataLf,
    /// At the start of a trailer line (after the last chunk).
    TrailerStart,
    /// Inside a trailer field line.
    TrailerLine,
    /// Expecting the `\n` of the empty line that ends the body.
    EndLf,
    Done,
}

/// The body is not valid chunked coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunked body")]
pub struct InvalidChunked;

/// Follows a chunked body byte by byte (skipping chunk data in bulk) to find its end.
#[derive(Debug, Clone)]
pub struct ChunkedScanner {
    state: State,
    size: u64,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        ChunkedScanner { state: State::Size { digits: 0 }, size: 0 }
    }
}

impl ChunkedScanner {
    /// Whether the whole body has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds the next bytes of the body; returns how many of them belong to it (all of them,
    /// unless the body ends inside `bytes`).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, InvalidChunked> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            self.state = match self.state {
                State::Done => return Ok(i),
                State::Data => {
                    let take =
                        (bytes.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::Size { digits } => match hex_value(b) {
                    Some(v) if digits < 16 => {
                        self.size = self.size << 4 | u64::from(v);
                        State::Size { digits: digits + 1 }
                    }
                    Some(_) => return Err(InvalidChunked),
                    None if digits == 0 => return Err(InvalidChunked),
                    None => match b {
                        b'\r' => State::SizeLf,
                        b'\n' => self.after_size_line(),
                        b';' | b' ' | b'\t' => State::Extension,
                        _ => return Err(InvalidChunked),
                    },
                },
                State::Extension => match memchr::memchr(b'\n', &bytes[i..]) {
                    Some(at) => {
                        i += at + 1;
                        self.state = self.after_size_line();
                        continue;
                    }
                    None => return Ok(bytes.len()),
                },
                State::SizeLf if b == b'\n' => self.after_size_line(),
                State::DataCr if b == b'\r' => State::DataLf,
                State::DataCr | State::DataLf if b == b'\n' => State::Size { digits: 0 },
                State::TrailerStart => match b {
                    b'\r' => State::EndLf,
                    b'\n' => State::Done,
                    _ => State::TrailerLine,
                },
                State::TrailerLine => match memchr::memchr(b'\n', &bytes[i..]) {
                    Some(at) => {
                        i += at + 1;
                        self.state = State::TrailerStart;
                        continue;
                    }
                    None => return Ok(bytes.len()),
                },
                State::EndLf if b == b'\n' => State::Done,
                State::SizeLf | State::DataCr | State::DataLf | State::EndLf => {
                    return Err(InvalidChunked)
                }
            };
            i += 1;
        }
        Ok(bytes.len())
    }

    fn after_size_line(&mut self) -> State {
        if self.size == 0 {
            State::TrailerStart
        } else {
            State::Data
        }
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Writes the line that starts a chunk of `len` bytes into `out`.
pub fn chunk_start(out: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1);
    for shift in (0..digits).rev() {
        out.push(HEX[(len >> (shift * 4)) & 0xf]);
    }
    out.extend_from_slice(b"\r\n");
}

/// What ends a chunk's data.
pub const CHUNK_END: &[u8] = b"\r\n";
/// The last chunk and the empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn end_of(body: &[u8], step: usize) -> Result<Option<usize>, InvalidChunked> {
        let mut scanner = ChunkedScanner::default();
        let mut seen = 0;
        for piece in body.chunks(step) {
            let used = scanner.feed(piece)?;
            seen += used;
            if scanner.is_done() {
                return Ok(Some(seen));
            }
        }
        Ok(None)
    }

    #[test]
    fn finds_the_end_whatever_the_read_sizes() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 100] {
            assert_eq!(end_of(body, step), Ok(Some(body.len() - 4)), "step {step}");
        }
        assert_eq!(end_of(b"0\r\n\r\n", 1), Ok(Some(5)));
        assert_eq!(end_of(b"0\n\n", 1), Ok(Some(3)));
        assert_eq!(end_of(b"5\r\nhel", 2), Ok(None));
    }

    #[test]
    fn refuses_what_is_not_chunked() {
        assert_eq!(end_of(b"zz\r\n", 1), Err(InvalidChunked));
        assert_eq!(end_of(b"\r\n", 1), Err(InvalidChunked));
        assert_eq!(end_of(b"3\r\nabcX\r\n", 100), Err(InvalidChunked));
        assert_eq!(end_of(b"11111111111111111\r\n", 100), Err(InvalidChunked));
    }

    #[test]
    fn chunk_lines() {
        for (len, text) in [(0, "0\r\n"), (5, "5\r\n"), (255, "ff\r\n"), (4096, "1000\r\n")] {
            let mut out = Vec::new();
            chunk_start(&mut out, len);
            assert_eq!(out, text.as_bytes());
        }
    }
}
