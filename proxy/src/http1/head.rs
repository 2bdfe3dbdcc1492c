//! Parsing request and response heads, with the limits and the framing rules.
use std::borrow::Cow;
use std::sync::LazyLock;

use memchr::memmem::Finder;

use crate::error::ProxyError;

/// Longest request line (414 past it).
pub const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Largest header section (431 past it).
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields (431 past it).
pub const MAX_HEADERS: usize = 100;

/// The header fields of a head: one copy of the head's bytes and where each field lies in
/// it, so parsing a head allocates twice, not twice per field.
#[derive(Debug, Clone, Default)]
pub struct Fields {
    raw: Vec<u8>,
    spans: Vec<Span>,
    /// Whether a field is named `Connection` (most heads have none).
    connection: bool,
}

#[derive(Debug, Clone, Copy)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
    /// Where the field's line ends: its value's end (for an empty value, just after the colon).
    line_end: u32,
}

impl Fields {
    /// The fields httparse found in `head` (which it parsed), as spans of a copy of `head`.
    fn from_parsed(head: &[u8], parsed: &[httparse::Header<'_>]) -> Fields {
        let span = |s: &[u8]| span_in(head, s);
        let spans = parsed
            .iter()
            .map(|h| {
                let name = span(h.name.as_bytes());
                // httparse ends a name at its colon (its default configuration, which the tests
                // pin: no space before the colon, no obs-fold); an empty value's slice may lie
                // anywhere.
                debug_assert_eq!(head.get(name.1 as usize), Some(&b':'));
                let value = if h.value.is_empty() { (name.1 + 1, name.1 + 1) } else { span(h.value) };
                Span { name, value, line_end: value.1 }
            })
            .collect();
        let connection = parsed.iter().any(|h| h.name.eq_ignore_ascii_case("connection"));
        Fields { raw: head.to_vec(), spans, connection }
    }

    /// Whether a field is named `Connection`.
    pub fn has_connection(&self) -> bool {
        self.connection
    }

    /// The head's length in bytes, start line and line endings included.
    pub fn byte_len(&self) -> usize {
        self.raw.len()
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Header<'_>> + Clone + '_ {
        self.spans.iter().map(|s| Header {
            name: &self.raw[s.name.0 as usize..s.name.1 as usize],
            value: &self.raw[s.value.0 as usize..s.value.1 as usize],
            line: &self.raw[s.name.0 as usize..s.line_end as usize],
        })
    }
}

/// One header field, borrowed from its head's [`Fields`].
#[derive(Debug, Clone, Copy)]
pub struct Header<'a> {
    /// A token (httparse checked it): ASCII.
    name: &'a [u8],
    pub value: &'a [u8],
    /// The field as it came: the name, the colon, any spaces or tabs, the value.
    line: &'a [u8],
}

impl<'a> Header<'a> {
    pub fn name(&self) -> &'a str {
        std::str::from_utf8(self.name).unwrap_or("")
    }

    /// The name's bytes, as received (writing a head needs no UTF-8 check).
    pub fn raw_name(&self) -> &'a [u8] {
        self.name
    }

    /// The field's line as received, without its line ending: `name:` (spaces or tabs) value.
    /// Every byte of it passed httparse's checks, which are [`crate::http1::write::header`]'s
    /// (the fuzz targets assert it for every field they parse).
    pub fn line(&self) -> &'a [u8] {
        self.line
    }

    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }

    /// `Impersonate-User`, `-Group`, `-Uid`, `-Extra-*`, in any case.
    pub fn is_impersonation(&self) -> bool {
        self.name.len() >= 12 && self.name[..12].eq_ignore_ascii_case(b"impersonate-")
    }

    pub fn value_str(&self) -> &'a str {
        std::str::from_utf8(self.value).unwrap_or("")
    }
}

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Responses only: the body ends when the connection closes.
    UntilClose,
}

#[derive(Debug, Clone)]
pub struct RequestHead {
    /// A method of RFC 9110 is static text (no copy per request); an extension one is owned.
    pub method: Cow<'static, str>,
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Fields,
    pub framing: Framing,
    /// `Upgrade` protocol when the request asks to switch (`websocket` or `SPDY/3.1`).
    pub upgrade: Option<String>,
    /// The client wants the connection closed after this exchange.
    pub close: bool,
    pub expect_continue: bool,
}

impl RequestHead {
    pub fn header(&self, name: &str) -> Option<Header<'_>> {
        self.headers.iter().find(|h| h.is(name))
    }

    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = Header<'a>> + 'a {
        self.headers.iter().filter(move |h| h.is(name))
    }
}

#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: u16,
    /// Where the reason phrase lies in the head's bytes (see [`ResponseHead::reason`]).
    reason: (u32, u32),
    pub headers: Fields,
    pub framing: Framing,
    pub close: bool,
}

impl ResponseHead {
    /// The reason phrase as it came (httparse allows obs-text in it).
    pub fn reason(&self) -> &[u8] {
        &self.headers.raw[self.reason.0 as usize..self.reason.1 as usize]
    }

    pub fn header(&self, name: &str) -> Option<Header<'_>> {
        self.headers.iter().find(|h| h.is(name))
    }
}

/// Parses a request head at the start of `buf`. `Ok(None)`: more bytes are needed.
/// On success, also returns how many bytes the head took.
pub fn parse_request(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, ProxyError> {
    parse_request_after(buf, 0)
}

/// [`parse_request`] for a head still arriving: the first `checked` bytes of `buf` are what an
/// earlier call answered `Ok(None)` for, so they hold no head end and no bad line ending, and
/// only what came after them is searched. A head that arrives a byte at a time then costs
/// time in proportion to its length, not to its length squared.
pub fn parse_request_after(buf: &[u8], checked: usize) -> Result<Option<(RequestHead, usize)>, ProxyError> {
    // The request line's end is looked for again each time, within its 8 KiB limit only.
    let line_end = CRLF.find(&buf[..buf.len().min(MAX_REQUEST_LINE + 2)]);
    match line_end {
        None if buf.len() > MAX_REQUEST_LINE => return Err(ProxyError::UriTooLong),
        Some(end) if end > MAX_REQUEST_LINE => return Err(ProxyError::UriTooLong),
        _ => {}
    }
    let checked = checked.min(buf.len());
    // A head end may begin in the last 3 bytes already searched.
    let from = checked.saturating_sub(3);
    let Some(head_len) = HEAD_END.find(&buf[from..]).map(|p| from + p + 4) else {
        // Refuse a bare LF or CR as soon as it is seen, rather than wait for a CRLF CRLF. The
        // new bytes are checked, from the CR that ended the checked ones if one did (the LF
        // that may follow it is then not bare).
        let new = if checked > 0 && buf[checked - 1] == b'\r' { checked - 1 } else { checked };
        let new = &buf[new..];
        check_line_endings(new.strip_suffix(b"\r").unwrap_or(new))?;
        if buf.len() > MAX_HEAD {
            return Err(ProxyError::HeadersTooLarge);
        }
        return Ok(None);
    };
    if head_len > MAX_HEAD {
        return Err(ProxyError::HeadersTooLarge);
    }
    check_line_endings(&buf[..head_len])?;
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut slots);
    let status = request.parse(&buf[..head_len]).map_err(|e| match e {
        httparse::Error::TooManyHeaders => ProxyError::HeadersTooLarge,
        e => ProxyError::BadRequest(format!("malformed request head: {e}")),
    })?;
    if status.is_partial() {
        return Err(ProxyError::BadRequest("malformed request head".into()));
    }
    let method = method_text(request.method.unwrap_or_default());
    let target = request.path.unwrap_or_default().to_owned();
    let minor_version = request.version.unwrap_or(1);
    let headers = Fields::from_parsed(&buf[..head_len], request.headers);

    let framing = request_framing(&headers, minor_version)?;
    let hosts = headers.iter().filter(|h| h.is("host")).count();
    if hosts > 1 || (minor_version == 1 && hosts == 0) {
        return Err(ProxyError::BadRequest("a request needs exactly one Host header".into()));
    }
    // One pass over the Connection tokens for the three that matter here.
    let (mut close, mut keep_alive, mut asks_upgrade) = (false, false, false);
    for token in tokens(&headers, "connection") {
        close |= token.eq_ignore_ascii_case("close");
        keep_alive |= token.eq_ignore_ascii_case("keep-alive");
        asks_upgrade |= token.eq_ignore_ascii_case("upgrade");
    }
    let close = close || (minor_version == 0 && !keep_alive);
    let upgrade = if asks_upgrade {
        match count(&headers, "upgrade") {
            Count::Zero => None,
            Count::One(one) => Some(allowed_upgrade(one.value_str())?),
            Count::Many => return Err(ProxyError::BadRequest("more than one Upgrade header".into())),
        }
    } else {
        None
    };
    if upgrade.is_some() && minor_version == 0 {
        return Err(ProxyError::BadRequest("upgrades need HTTP/1.1".into()));
    }
    // An HTTP/1.0 client must not get a 100 (RFC 9110 §15.2): its expectation is ignored.
    let expect_continue = minor_version == 1
        && headers.iter().any(|h| h.is("expect") && h.value_str().trim().eq_ignore_ascii_case("100-continue"));
    Ok(Some((
        RequestHead { method, target, minor_version, headers, framing, upgrade, close, expect_continue },
        head_len,
    )))
}

/// Parses an upstream response head. Ambiguous framing is an error (the caller answers 502 and
/// drops the connection). `request_method` decides whether a body may follow.
pub fn parse_response(buf: &[u8], request_method: &str) -> Result<Option<(ResponseHead, usize)>, ProxyError> {
    parse_response_after(buf, 0, request_method)
}

/// [`parse_response`] for a head still arriving: the first `checked` bytes of `buf` are what an
/// earlier call answered `Ok(None)` for, so only what came after them is searched for the head's
/// end (an upstream that trickles its head costs time in proportion to its length, not to its
/// length squared).
pub fn parse_response_after(
    buf: &[u8],
    checked: usize,
    request_method: &str,
) -> Result<Option<(ResponseHead, usize)>, ProxyError> {
    // A head end may begin in the last 3 bytes already searched.
    let from = checked.min(buf.len()).saturating_sub(3);
    let Some(head_len) = HEAD_END.find(&buf[from..]).map(|p| from + p + 4) else {
        if buf.len() > MAX_HEAD {
            return Err(ProxyError::BadUpstream("response head too large".into()));
        }
        return Ok(None);
    };
    // A head end found in the read that went past the limit: still too large.
    if head_len > MAX_HEAD {
        return Err(ProxyError::BadUpstream("response head too large".into()));
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    let status = response
        .parse(&buf[..head_len])
        .map_err(|e| ProxyError::BadUpstream(format!("malformed response head: {e}")))?;
    // httparse also ends a response head at a bare LF LF: it must end where CRLF CRLF did, or
    // the bytes between would be neither head nor body.
    if status != httparse::Status::Complete(head_len) {
        return Err(ProxyError::BadUpstream("malformed response head (a line not ended by CRLF)".into()));
    }
    let code = response.code.unwrap_or(0);
    let reason = match response.reason {
        Some(reason) if !reason.is_empty() => span_in(&buf[..head_len], reason.as_bytes()),
        _ => (0, 0),
    };
    let headers = Fields::from_parsed(&buf[..head_len], response.headers);
    let bodiless = request_method == "HEAD" || (100..200).contains(&code) || code == 204 || code == 304;
    let framing = if bodiless {
        Framing::None
    } else {
        match (count(&headers, "transfer-encoding"), count(&headers, "content-length")) {
            (Count::Zero, Count::Zero) => Framing::UntilClose,
            (Count::Zero, Count::One(one)) => Framing::Length(
                parse_length(one.value_str())
                    .ok_or_else(|| ProxyError::BadUpstream("invalid Content-Length".into()))?,
            ),
            (Count::One(one), Count::Zero) if is_chunked(one) => Framing::Chunked,
            _ => return Err(ProxyError::BadUpstream("ambiguous response framing".into())),
        }
    };
    let close =
        has_token(&headers, "connection", "close") || response.version == Some(0) || framing == Framing::UntilClose;
    Ok(Some((ResponseHead { status: code, reason, headers, framing, close }, head_len)))
}

/// The methods of RFC 9110 (and PATCH) as static text; any other is copied.
fn method_text(method: &str) -> Cow<'static, str> {
    const KNOWN: [&str; 9] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "CONNECT", "TRACE"];
    match KNOWN.iter().find(|known| **known == method) {
        Some(known) => Cow::Borrowed(known),
        None => Cow::Owned(method.to_owned()),
    }
}

/// Where `part` (a slice of `head`) lies in `head`.
fn span_in(head: &[u8], part: &[u8]) -> (u32, u32) {
    let start = (part.as_ptr() as usize).saturating_sub(head.as_ptr() as usize).min(head.len());
    (start as u32, (start + part.len()).min(head.len()) as u32)
}

/// Searchers built once: `memmem::find` builds one per call, which cost more than the search
/// itself on a head of a few hundred bytes.
static CRLF: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\r\n"));
static HEAD_END: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\r\n\r\n"));

/// Every line of a head ends in CRLF: a bare LF or CR is a smuggling vector (RFC 9112 §2.2).
fn check_line_endings(head: &[u8]) -> Result<(), ProxyError> {
    let bare = |i: usize| match head[i] {
        b'\n' => i == 0 || head[i - 1] != b'\r',
        _ => head.get(i + 1) != Some(&b'\n'),
    };
    if memchr::memchr(0, head).is_some() || memchr::memchr2_iter(b'\r', b'\n', head).any(bare) {
        return Err(ProxyError::BadRequest("bare CR, bare LF or NUL in the request head".into()));
    }
    Ok(())
}

fn request_framing(headers: &Fields, minor_version: u8) -> Result<Framing, ProxyError> {
    match (count(headers, "transfer-encoding"), count(headers, "content-length")) {
        (Count::Zero, Count::Zero) => Ok(Framing::None),
        (Count::Zero, Count::One(one)) => parse_length(one.value_str())
            .map(|n| if n == 0 { Framing::None } else { Framing::Length(n) })
            .ok_or_else(|| ProxyError::BadRequest("invalid Content-Length".into())),
        (Count::Zero, Count::Many) => Err(ProxyError::BadRequest("more than one Content-Length".into())),
        (Count::One(_), Count::One(_) | Count::Many) | (Count::Many, _) => {
            Err(ProxyError::BadRequest("Transfer-Encoding with Content-Length, or repeated".into()))
        }
        (Count::One(_), Count::Zero) if minor_version == 0 => {
            Err(ProxyError::BadRequest("Transfer-Encoding in HTTP/1.0".into()))
        }
        (Count::One(one), Count::Zero) if is_chunked(one) => Ok(Framing::Chunked),
        (Count::One(_), Count::Zero) => Err(ProxyError::BadRequest("unsupported Transfer-Encoding".into())),
    }
}

/// `Transfer-Encoding: chunked`, with only the spaces and tabs RFC 9110 allows around it (a
/// Unicode space, say a no-break space, makes another coding: 400, as any other coding).
fn is_chunked(field: Header<'_>) -> bool {
    field.value_str().trim_matches([' ', '\t']).eq_ignore_ascii_case("chunked")
}

/// How many fields a head has of one name, keeping the only one (framing rules need no more).
enum Count<'a> {
    Zero,
    One(Header<'a>),
    Many,
}

fn count<'a>(headers: &'a Fields, name: &str) -> Count<'a> {
    let mut named = headers.iter().filter(|h| h.is(name));
    match (named.next(), named.next()) {
        (None, _) => Count::Zero,
        (Some(one), None) => Count::One(one),
        (Some(_), Some(_)) => Count::Many,
    }
}

/// `^[0-9]+$`, fitting in u64: no sign, no hex, no spaces, no list.
fn parse_length(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// The comma-separated tokens of every header `name`, trimmed, empty ones skipped, in the case
/// they came in (compare them with `eq_ignore_ascii_case`). Borrowed: nothing is allocated. A
/// value that is not UTF-8 lists no token (as `Header::value_str` reads it).
pub fn tokens<'a>(headers: &'a Fields, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |h| h.is(name))
        .flat_map(|h| h.value_str().split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Whether a header `name` lists `token` (in any case).
pub fn has_token(headers: &Fields, name: &str, token: &str) -> bool {
    tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// Only the protocols Kubernetes uses may be upgraded to (h2c and others are refused).
fn allowed_upgrade(value: &str) -> Result<String, ProxyError> {
    let value = value.trim();
    if value.eq_ignore_ascii_case("websocket") || value.eq_ignore_ascii_case("SPDY/3.1") {
        Ok(value.to_owned())
    } else {
        Err(ProxyError::BadRequest(format!("upgrade to {value:?} is not allowed")))
    }
}

#[cfg(test)]
mod tests;
