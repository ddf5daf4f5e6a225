//! Chunked transfer coding (RFC 9112 §7.1) as a proxy needs it: find where a chunked body ends
//! while its bytes pass through unchanged, see its data and trailer section on the way (for a
//! body limit, a client that needs the body decoded, or the cache), and frame a body as chunks.
//!
//! The scanner is strict: every line ends with CRLF, sizes are at most 16 hex digits, and trailer
//! lines cannot be folded. A proxy that passes chunked bytes through must never accept a shape the
//! next hop could read differently. It is bounded too: a chunk line (size and extension) is at
//! most [`MAX_CHUNK_LINE`] bytes and the trailer section at most [`MAX_TRAILERS`], so a peer
//! cannot make a reader hold an endless line.

/// The longest chunk-size line, extension included.
pub const MAX_CHUNK_LINE: usize = 4096;
/// The largest trailer section.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// Where the scanner is inside a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hexadecimal size of the next chunk; `digits` seen so far.
    Size {
        digits: u8,
    },
    /// After the size: whitespace, before `;` or the CR.
    SizeWs,
    /// After `;`: a chunk extension up to the CR.
    Extension,
    /// Expecting the LF that ends the size line.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// Expecting the CRLF after chunk data.
    DataCr,
    DataLf,
    /// At the start of a trailer line (after the last chunk).
    TrailerStart,
    /// Inside a trailer field line.
    TrailerLine,
    /// Expecting the LF that ends a trailer line.
    TrailerLf,
    /// Expecting the LF of the empty line that ends the body.
    EndLf,
    Done,
}

/// The body is not valid chunked coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunked body")]
pub struct InvalidChunked;

/// Follows a chunked body byte by byte (chunk data in bulk) to find its end.
#[derive(Debug, Clone)]
pub struct ChunkedScanner {
    state: State,
    /// Bytes left in the current chunk (or its size while it is read).
    size: u64,
    /// Data bytes seen so far.
    data_len: u64,
    /// Bytes of the current chunk line, or of the trailer section, so far.
    line: usize,
    /// Inside a trailer line's name (no colon yet).
    in_name: bool,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        ChunkedScanner {
            state: State::Size { digits: 0 },
            size: 0,
            data_len: 0,
            line: 0,
            in_name: false,
        }
    }
}

impl ChunkedScanner {
    /// Whether the whole body has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Data bytes seen so far (the decoded length).
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// Feeds the next bytes of the body; returns how many of them belong to it (all of them,
    /// unless the body ends inside `bytes`).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, InvalidChunked> {
        self.feed_with(bytes, |_| {}, |_| {})
    }

    /// [`feed`](Self::feed), calling `data` with each run of chunk data and `trailer` with the
    /// bytes of the trailer section (field lines with their CRLFs, without the final empty line)
    /// as they are found.
    pub fn feed_with(
        &mut self,
        bytes: &[u8],
        mut data: impl FnMut(&[u8]),
        mut trailer: impl FnMut(&[u8]),
    ) -> Result<usize, InvalidChunked> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            self.state = match self.state {
                State::Done => return Ok(i),
                State::Data => {
                    let take =
                        (bytes.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    data(&bytes[i..i + take]);
                    self.size -= take as u64;
                    self.data_len += take as u64;
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
                    None => {
                        self.line = usize::from(digits);
                        match b {
                            b'\r' => State::SizeLf,
                            b';' => State::Extension,
                            b' ' | b'\t' => State::SizeWs,
                            _ => return Err(InvalidChunked),
                        }
                    }
                },
                State::SizeWs => {
                    self.line += 1;
                    match b {
                        _ if self.line > MAX_CHUNK_LINE => return Err(InvalidChunked),
                        b' ' | b'\t' => State::SizeWs,
                        b';' => State::Extension,
                        b'\r' => State::SizeLf,
                        _ => return Err(InvalidChunked),
                    }
                }
                State::Extension => {
                    let end = memchr::memchr2(b'\r', b'\n', &bytes[i..]);
                    self.line += end.unwrap_or(bytes.len() - i);
                    if self.line > MAX_CHUNK_LINE {
                        return Err(InvalidChunked);
                    }
                    let text = &bytes[i..end.map_or(bytes.len(), |at| i + at)];
                    if !text.iter().all(|&c| is_field_text(c)) {
                        return Err(InvalidChunked);
                    }
                    match end {
                        Some(at) if bytes[i + at] == b'\r' => {
                            i += at + 1;
                            self.state = State::SizeLf;
                            continue;
                        }
                        Some(_) => return Err(InvalidChunked),
                        None => return Ok(bytes.len()),
                    }
                }
                State::SizeLf if b == b'\n' => {
                    if self.size == 0 {
                        self.line = 0;
                        State::TrailerStart
                    } else {
                        State::Data
                    }
                }
                State::DataCr if b == b'\r' => State::DataLf,
                State::DataLf if b == b'\n' => State::Size { digits: 0 },
                State::TrailerStart => match b {
                    b'\r' => State::EndLf,
                    // A field line starts with its name: not with whitespace (obsolete line
                    // folding), nor anything but a token character.
                    _ if is_token(b) => {
                        self.in_name = true;
                        State::TrailerLine
                    }
                    _ => return Err(InvalidChunked),
                },
                State::TrailerLine => {
                    let end = memchr::memchr2(b'\r', b'\n', &bytes[i..]);
                    self.line += end.map_or(bytes.len() - i, |at| at + 2);
                    if self.line > MAX_TRAILERS {
                        return Err(InvalidChunked);
                    }
                    // `name: value`: token characters up to the colon, then field text.
                    for &c in &bytes[i..end.map_or(bytes.len(), |at| i + at)] {
                        let ok = match (self.in_name, c) {
                            (true, b':') => {
                                self.in_name = false;
                                true
                            }
                            (true, c) => is_token(c),
                            (false, c) => is_field_text(c),
                        };
                        if !ok {
                            return Err(InvalidChunked);
                        }
                    }
                    match end {
                        Some(_) if self.in_name => return Err(InvalidChunked),
                        Some(at) if bytes[i + at] == b'\r' => {
                            trailer(&bytes[i..=i + at]);
                            i += at + 1;
                            self.state = State::TrailerLf;
                            continue;
                        }
                        Some(_) => return Err(InvalidChunked),
                        None => {
                            trailer(&bytes[i..]);
                            return Ok(bytes.len());
                        }
                    }
                }
                State::TrailerLf if b == b'\n' => {
                    trailer(b"\n");
                    State::TrailerStart
                }
                State::EndLf if b == b'\n' => State::Done,
                State::SizeLf | State::DataCr | State::DataLf | State::TrailerLf | State::EndLf => {
                    return Err(InvalidChunked)
                }
            };
            if self.state == State::TrailerLine {
                // The first byte of a trailer line (a name's, checked above): hand it over with
                // the rest of the line.
                trailer(&bytes[i..=i]);
            }
            i += 1;
        }
        Ok(bytes.len())
    }
}

/// A token character (RFC 9110 §5.6.2), as field names are made of.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A byte a field value or chunk extension may hold: anything but control characters, tab
/// aside.
fn is_field_text(b: u8) -> bool {
    (b >= 0x20 && b != 0x7f) || b == b'\t'
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The line that starts a chunk of `len` bytes, written into `buf`.
pub fn chunk_line(len: usize, buf: &mut [u8; 18]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, shift) in (0..digits).rev().enumerate() {
        buf[i] = HEX[(len >> (shift * 4)) & 0xf];
    }
    buf[digits] = b'\r';
    buf[digits + 1] = b'\n';
    &buf[..digits + 2]
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
        assert_eq!(end_of(b"1 ;a=b \r\nz\r\n0  \r\n\r\n", 1), Ok(Some(19)), "whitespace before ;");
        assert_eq!(end_of(b"5\r\nhel", 2), Ok(None));
    }

    #[test]
    fn refuses_what_is_not_strict_chunked() {
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"3\r\nabcX\r\n",
            b"11111111111111111\r\n",
            b"0\n\n",
            b"3\nabc\r\n",
            b"3\r\nabc\n0\r\n\r\n",
            b"0\r\nx: 1\n\r\n",
            b"0\r\nx: 1\r\n folded\r\n\r\n",
            b"1;ext\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"5;a\x00b\r\nhello\r\n0\r\n\r\n",
            b"0\r\nno colon\r\n\r\n",
            b"0\r\n:empty name\r\n\r\n",
            b"0\r\nx: bad\x01\r\n\r\n",
        ] {
            assert_eq!(end_of(bad, 100), Err(InvalidChunked), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn data_and_trailers_are_seen_whatever_the_read_sizes() {
        let body = b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nx-sum: 1\r\nx-b: 2\r\n\r\n";
        for step in [1, 2, 5, 100] {
            let mut scanner = ChunkedScanner::default();
            let (mut data, mut trailer) = (Vec::new(), Vec::new());
            for piece in body.chunks(step) {
                scanner
                    .feed_with(
                        piece,
                        |d| data.extend_from_slice(d),
                        |t| trailer.extend_from_slice(t),
                    )
                    .unwrap();
            }
            assert!(scanner.is_done());
            assert_eq!(data, b"hello world", "step {step}");
            assert_eq!(scanner.data_len(), 11);
            assert_eq!(
                String::from_utf8(trailer).unwrap(),
                "x-sum: 1\r\nx-b: 2\r\n",
                "step {step}"
            );
        }
    }

    #[test]
    fn endless_lines_are_refused() {
        let mut long_ext = b"1;x=".to_vec();
        long_ext.extend(std::iter::repeat_n(b'a', MAX_CHUNK_LINE));
        assert_eq!(end_of(&long_ext, 1000), Err(InvalidChunked));
        let mut ok_ext = b"1;x=".to_vec();
        ok_ext.extend(std::iter::repeat_n(b'a', 100));
        ok_ext.extend_from_slice(b"\r\nz\r\n0\r\n\r\n");
        assert_eq!(end_of(&ok_ext, 7), Ok(Some(ok_ext.len())));
        let mut long_trailer = b"0\r\nx-t: ".to_vec();
        long_trailer.extend(std::iter::repeat_n(b'a', MAX_TRAILERS));
        assert_eq!(end_of(&long_trailer, 1000), Err(InvalidChunked));
        let many: String = (0..2000).map(|i| format!("x-{i}: v\r\n")).collect();
        let many_trailers = format!("0\r\n{many}\r\n");
        assert_eq!(end_of(many_trailers.as_bytes(), 100), Err(InvalidChunked));
    }

    #[test]
    fn chunk_lines() {
        for (len, text) in [(0, "0\r\n"), (5, "5\r\n"), (255, "ff\r\n"), (4096, "1000\r\n")] {
            assert_eq!(chunk_line(len, &mut [0u8; 18]), text.as_bytes());
        }
    }
}
