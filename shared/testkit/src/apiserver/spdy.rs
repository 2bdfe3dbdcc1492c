//! SPDY/3.1 frames, the small subset Kubernetes uses (draft-mbelshe-httpbis-spdy-00): control
//! frames SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE and
//! DATA frames. Header blocks are zlib streams primed with the SPDY/3 dictionary, one compression
//! context per direction for the whole connection.
use anyhow::{bail, Context};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

pub const SYN_STREAM: u16 = 1;
pub const SYN_REPLY: u16 = 2;
pub const RST_STREAM: u16 = 3;
pub const SETTINGS: u16 = 4;
pub const PING: u16 = 6;
pub const GOAWAY: u16 = 7;
pub const HEADERS: u16 = 8;
pub const WINDOW_UPDATE: u16 = 9;
pub const FLAG_FIN: u8 = 0x01;
/// Largest frame we accept: SPDY allows 16 MiB, we cap lower to bound memory.
pub const MAX_FRAME: usize = 1 << 20;

/// Header name/value pairs; a value with several entries carries them NUL-separated.
pub type Headers = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Vec<u8>,
    },
    /// A control frame of a type we do not know; ignored, as the spec asks.
    Unknown {
        kind: u16,
    },
}

impl Frame {
    pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
        headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// The SPDY/3 header dictionary (section 2.6.10.1): length-prefixed words, then a literal tail.
pub fn dictionary() -> Vec<u8> {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = "100101201202205206300302303304305306307402405406407408409410411412413414415416417\
502504505203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request\
401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented\
503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 \
Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,\
application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=\
gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";
    let mut d = Vec::with_capacity(1423);
    for w in WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(TAIL.as_bytes());
    d
}

/// Writes frames; owns the sending direction's header compression context.
pub struct Encoder {
    z: Compress,
}

impl Default for Encoder {
    fn default() -> Self {
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(&dictionary()).expect("set the SPDY dictionary");
        Encoder { z }
    }
}

impl Encoder {
    fn header_block(&mut self, headers: &Headers) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (n, v) in headers {
            let n = n.to_ascii_lowercase();
            raw.extend_from_slice(&(n.len() as u32).to_be_bytes());
            raw.extend_from_slice(n.as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let start = self.z.total_in();
        // Bounded: each round either consumes input or grows the output buffer.
        for _ in 0..64 {
            let consumed = (self.z.total_in() - start) as usize;
            out.reserve(raw.len() + 64);
            let before_out = self.z.total_out();
            self.z.compress_vec(&raw[consumed..], &mut out, FlushCompress::Sync).expect("deflate");
            let done = (self.z.total_in() - start) as usize == raw.len();
            // A sync flush is complete once it leaves spare room in the output buffer.
            if done && out.len() < out.capacity() && self.z.total_out() >= before_out {
                break;
            }
        }
        out
    }

    pub fn encode(&mut self, frame: &Frame) -> Vec<u8> {
        let (kind, flags, body): (u16, u8, Vec<u8>) = match frame {
            Frame::Data { stream_id, flags, data } => {
                let mut out = Vec::with_capacity(8 + data.len());
                out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                out.push(*flags);
                out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                out.extend_from_slice(data);
                return out;
            }
            Frame::SynStream { stream_id, associated, priority, flags, headers } => {
                let mut b = Vec::new();
                b.extend_from_slice(&stream_id.to_be_bytes());
                b.extend_from_slice(&associated.to_be_bytes());
                b.push(priority << 5);
                b.push(0);
                b.extend(self.header_block(headers));
                (SYN_STREAM, *flags, b)
            }
            Frame::SynReply { stream_id, flags, headers } => {
                let mut b = stream_id.to_be_bytes().to_vec();
                b.extend(self.header_block(headers));
                (SYN_REPLY, *flags, b)
            }
            Frame::Headers { stream_id, flags, headers } => {
                let mut b = stream_id.to_be_bytes().to_vec();
                b.extend(self.header_block(headers));
                (HEADERS, *flags, b)
            }
            Frame::RstStream { stream_id, status } => {
                (RST_STREAM, 0, [stream_id.to_be_bytes(), status.to_be_bytes()].concat())
            }
            Frame::Settings { flags, entries } => {
                let mut b = (entries.len() as u32).to_be_bytes().to_vec();
                for (f, id, v) in entries {
                    b.push(*f);
                    b.extend_from_slice(&id.to_be_bytes()[1..]);
                    b.extend_from_slice(&v.to_be_bytes());
                }
                (SETTINGS, *flags, b)
            }
            Frame::Ping { id } => (PING, 0, id.to_be_bytes().to_vec()),
            Frame::GoAway { last_stream_id, status } => {
                (GOAWAY, 0, [last_stream_id.to_be_bytes(), status.to_be_bytes()].concat())
            }
            Frame::WindowUpdate { stream_id, delta } => {
                (WINDOW_UPDATE, 0, [stream_id.to_be_bytes(), delta.to_be_bytes()].concat())
            }
            Frame::Unknown { kind } => (*kind, 0, Vec::new()),
        };
        let mut out = Vec::with_capacity(8 + body.len());
        out.extend_from_slice(&(0x8000u16 | 3).to_be_bytes());
        out.extend_from_slice(&kind.to_be_bytes());
        out.push(flags);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        out.extend(body);
        out
    }
}

/// Reads frames; owns the receiving direction's header decompression context.
pub struct Decoder {
    z: Decompress,
    dictionary: Vec<u8>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder { z: Decompress::new(true), dictionary: dictionary() }
    }
}

fn u32_at(b: &[u8], at: usize) -> anyhow::Result<u32> {
    let s = b.get(at..at + 4).context("frame too short")?;
    Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

impl Decoder {
    fn header_block(&mut self, block: &[u8]) -> anyhow::Result<Headers> {
        let mut raw = Vec::with_capacity(block.len() * 4 + 64);
        let start = self.z.total_in();
        for _ in 0..256 {
            let consumed = (self.z.total_in() - start) as usize;
            if consumed == block.len() && raw.len() < raw.capacity() {
                break;
            }
            if raw.len() == raw.capacity() {
                raw.reserve(raw.capacity().max(256));
            }
            match self.z.decompress_vec(&block[consumed..], &mut raw, FlushDecompress::Sync) {
                Ok(Status::StreamEnd) => break,
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z.set_dictionary(&self.dictionary).context("set the SPDY dictionary")?;
                }
                Err(e) => bail!("header block: {e}"),
            }
            if raw.len() > MAX_FRAME {
                bail!("header block too large");
            }
        }
        let count = u32_at(&raw, 0)? as usize;
        let mut at = 4;
        let mut headers = Vec::new();
        for _ in 0..count.min(1024) {
            let n = u32_at(&raw, at)? as usize;
            let name = raw.get(at + 4..at + 4 + n).context("short header name")?;
            at += 4 + n;
            let v = u32_at(&raw, at)? as usize;
            let value = raw.get(at + 4..at + 4 + v).context("short header value")?;
            at += 4 + v;
            headers.push((String::from_utf8_lossy(name).into_owned(), String::from_utf8_lossy(value).into_owned()));
        }
        Ok(headers)
    }

    /// Takes one whole frame off the front of `buf`, or `None` if more bytes are needed.
    pub fn decode(&mut self, buf: &mut Vec<u8>) -> anyhow::Result<Option<Frame>> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        if len > MAX_FRAME {
            bail!("frame of {len} bytes is over the limit");
        }
        if buf.len() < 8 + len {
            return Ok(None);
        }
        let frame: Vec<u8> = buf.drain(..8 + len).collect();
        let flags = frame[4];
        let body = &frame[8..];
        if frame[0] & 0x80 == 0 {
            let stream_id = u32_at(&frame, 0)? & 0x7fff_ffff;
            return Ok(Some(Frame::Data { stream_id, flags, data: body.to_vec() }));
        }
        let version = u16::from_be_bytes([frame[0], frame[1]]) & 0x7fff;
        if version != 3 {
            bail!("unsupported SPDY version {version}");
        }
        let kind = u16::from_be_bytes([frame[2], frame[3]]);
        let id = |at| u32_at(body, at).map(|v| v & 0x7fff_ffff);
        Ok(Some(match kind {
            SYN_STREAM => Frame::SynStream {
                stream_id: id(0)?,
                associated: id(4)?,
                priority: body.get(8).context("short SYN_STREAM")? >> 5,
                flags,
                headers: self.header_block(body.get(10..).context("short SYN_STREAM")?)?,
            },
            SYN_REPLY => Frame::SynReply { stream_id: id(0)?, flags, headers: self.header_block(&body[4..])? },
            HEADERS => Frame::Headers { stream_id: id(0)?, flags, headers: self.header_block(&body[4..])? },
            RST_STREAM => Frame::RstStream { stream_id: id(0)?, status: u32_at(body, 4)? },
            SETTINGS => {
                let n = u32_at(body, 0)? as usize;
                let mut entries = Vec::new();
                for i in 0..n.min(64) {
                    let at = 4 + i * 8;
                    let e = u32_at(body, at)?;
                    entries.push(((e >> 24) as u8, e & 0x00ff_ffff, u32_at(body, at + 4)?));
                }
                Frame::Settings { flags, entries }
            }
            PING => Frame::Ping { id: u32_at(body, 0)? },
            GOAWAY => Frame::GoAway { last_stream_id: id(0)?, status: u32_at(body, 4).unwrap_or(0) },
            WINDOW_UPDATE => Frame::WindowUpdate { stream_id: id(0)?, delta: id(4)? },
            kind => Frame::Unknown { kind },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_has_the_spec_length() {
        assert_eq!(dictionary().len(), 1423);
        assert!(dictionary().starts_with(b"\0\0\0\x07options\0\0\0\x04head"));
        assert!(dictionary().ends_with(b"utf-,*,enq=0."));
    }

    #[test]
    fn frames_round_trip_with_shared_compression_contexts() {
        let mut enc = Encoder::default();
        let mut dec = Decoder::default();
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated: 0,
                priority: 0,
                flags: 0,
                headers: vec![("streamtype".into(), "error".into()), ("port".into(), "80".into())],
            },
            // The second header block reuses the compression context of the first.
            Frame::SynStream {
                stream_id: 3,
                associated: 0,
                priority: 0,
                flags: 0,
                headers: vec![("streamtype".into(), "data".into()), ("requestid".into(), "0".into())],
            },
            Frame::SynReply { stream_id: 3, flags: 0, headers: vec![] },
            Frame::Data { stream_id: 3, flags: FLAG_FIN, data: b"hello".to_vec() },
            Frame::Ping { id: 7 },
            Frame::Settings { flags: 0, entries: vec![(0, 7, 65536)] },
            Frame::WindowUpdate { stream_id: 3, delta: 100 },
            Frame::RstStream { stream_id: 3, status: 5 },
            Frame::GoAway { last_stream_id: 3, status: 0 },
        ];
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend(enc.encode(f));
        }
        // Decode from a buffer fed in small pieces, as a socket would.
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for chunk in wire.chunks(5) {
            buf.extend_from_slice(chunk);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn oversized_frame_is_refused() {
        let mut buf = vec![0x80, 3, 0, 1, 0, 0xff, 0xff, 0xff];
        assert!(Decoder::default().decode(&mut buf).is_err());
    }
}
