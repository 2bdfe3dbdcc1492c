//! Body framing. The chunked decoder is sans-io: it takes bytes as they arrive and yields the
//! payload, so the same code frames request bodies, response bodies and fuzz inputs. The
//! gateway re-encodes every chunked body with its own chunk sizes: the framing it forwards is
//! always its own, never a copy of what it received.

/// Longest chunk-size line (with extensions) and trailer section accepted.
const MAX_SIZE_LINE: usize = 4096;
const MAX_TRAILERS: usize = 8192;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Size { line: Vec<u8> },
    Data { left: u64 },
    DataCr,
    DataLf,
    Trailers { line: usize, total: usize, saw_cr: bool },
    Done,
}

#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder { state: State::Size { line: Vec::new() } }
    }
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input`, appending payload bytes to `out`. Returns how many bytes of
    /// `input` were consumed: all of them, unless the body ended inside `input` (the rest
    /// belongs to the next message).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, &'static str> {
        let mut i = 0;
        while i < input.len() {
            match &mut self.state {
                State::Size { line } => {
                    let b = input[i];
                    i += 1;
                    if b == b'\n' {
                        if line.last() != Some(&b'\r') {
                            return Err("bare LF in a chunk size line");
                        }
                        line.pop();
                        let size = parse_size(line)?;
                        self.state = if size == 0 {
                            State::Trailers { line: 0, total: 0, saw_cr: false }
                        } else {
                            State::Data { left: size }
                        };
                    } else {
                        if line.last() == Some(&b'\r') {
                            return Err("bare CR in a chunk size line");
                        }
                        line.push(b);
                        if line.len() > MAX_SIZE_LINE {
                            return Err("chunk size line too long");
                        }
                    }
                }
                State::Data { left } => {
                    let take = (*left).min((input.len() - i) as u64) as usize;
                    out.extend_from_slice(&input[i..i + take]);
                    i += take;
                    *left -= take as u64;
                    if *left == 0 {
                        self.state = State::DataCr;
                    }
                }
                State::DataCr => {
                    if input[i] != b'\r' {
                        return Err("chunk data not followed by CRLF");
                    }
                    i += 1;
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if input[i] != b'\n' {
                        return Err("chunk data not followed by CRLF");
                    }
                    i += 1;
                    self.state = State::Size { line: Vec::new() };
                }
                State::Trailers { line, total, saw_cr } => {
                    let b = input[i];
                    i += 1;
                    *total += 1;
                    if *total > MAX_TRAILERS {
                        return Err("trailers too large");
                    }
                    match b {
                        b'\r' if !*saw_cr => *saw_cr = true,
                        b'\n' if *saw_cr => {
                            if *line == 0 {
                                self.state = State::Done;
                                return Ok(i);
                            }
                            *line = 0;
                            *saw_cr = false;
                        }
                        b'\n' | b'\r' | 0 => return Err("bare CR, LF or NUL in trailers"),
                        _ if *saw_cr => return Err("bare CR in trailers"),
                        _ => *line += 1,
                    }
                }
                State::Done => return Ok(i),
            }
        }
        Ok(i)
    }
}

/// `1*HEXDIG [ ";" extensions ]`, at most 16 hex digits, no sign, no `0x`, no spaces before
/// the extension.
fn parse_size(line: &[u8]) -> Result<u64, &'static str> {
    let digits_end = line.iter().position(|b| !b.is_ascii_hexdigit()).unwrap_or(line.len());
    let (digits, rest) = line.split_at(digits_end);
    if digits.is_empty() || digits.len() > 16 {
        return Err("invalid chunk size");
    }
    match rest.first() {
        None => {}
        Some(b';') if rest.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b)) => {}
        Some(b' ' | b'\t') if rest.iter().all(|&b| b == b' ' || b == b'\t') => {}
        _ => return Err("invalid chunk size"),
    }
    let text = std::str::from_utf8(digits).map_err(|_| "invalid chunk size")?;
    u64::from_str_radix(text, 16).map_err(|_| "invalid chunk size")
}

/// Appends one chunk holding `data` (nothing for empty data: that would end the body).
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize, bool), &'static str> {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let used = d.decode(input, &mut out)?;
        Ok((out, used, d.is_done()))
    }

    #[test]
    fn decodes_chunks_extensions_and_trailers() {
        let (out, used, done) = decode_all(b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT").unwrap();
        assert_eq!(out, b"hello world");
        assert!(done);
        assert_eq!(used, 40, "stops at the end of the body");
    }

    #[test]
    fn decodes_byte_by_byte() {
        let input = b"a\r\n0123456789\r\n0\r\n\r\n";
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        for b in input.iter() {
            d.decode(std::slice::from_ref(b), &mut out).unwrap();
        }
        assert!(d.is_done());
        assert_eq!(out, b"0123456789");
    }

    #[test]
    fn refuses_bad_sizes_and_line_endings() {
        for bad in [
            &b"ffffffffffffffff0\r\n"[..],
            b"1_0\r\n",
            b"+1\r\n",
            b"0x1\r\n",
            b"\r\n",
            b"-1\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloXX",
            b"5;a\rb\r\nhello\r\n",
            b"0\r\nX: 1\n\r\n",
        ] {
            assert!(decode_all(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // 16 hex digits fit in a u64 and are read (the body is then just incomplete).
        assert!(decode_all(b"ffffffffffffffff\r\n").is_ok());
    }

    #[test]
    fn encodes_chunks() {
        let mut out = Vec::new();
        encode_chunk(b"hello", &mut out);
        encode_chunk(b"", &mut out);
        out.extend_from_slice(LAST_CHUNK);
        assert_eq!(out, b"5\r\nhello\r\n0\r\n\r\n");
    }
}
