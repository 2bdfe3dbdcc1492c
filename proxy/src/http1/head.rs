//! Parsing request and response heads, with the limits and the framing rules.
use crate::error::ProxyError;

/// Longest request line (414 past it).
pub const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Largest header section (431 past it).
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields (431 past it).
pub const MAX_HEADERS: usize = 100;

#[derive(Debug, Clone)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

impl Header {
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }

    /// `Impersonate-User`, `-Group`, `-Uid`, `-Extra-*`, in any case.
    pub fn is_impersonation(&self) -> bool {
        self.name.len() >= 12 && self.name.as_bytes()[..12].eq_ignore_ascii_case(b"impersonate-")
    }

    pub fn value_str(&self) -> &str {
        std::str::from_utf8(&self.value).unwrap_or("")
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
    pub method: String,
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Vec<Header>,
    pub framing: Framing,
    /// `Upgrade` protocol when the request asks to switch (`websocket` or `SPDY/3.1`).
    pub upgrade: Option<String>,
    /// The client wants the connection closed after this exchange.
    pub close: bool,
    pub expect_continue: bool,
}

impl RequestHead {
    pub fn header(&self, name: &str) -> Option<&Header> {
        self.headers.iter().find(|h| h.is(name))
    }

    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Header> + 'a {
        self.headers.iter().filter(move |h| h.is(name))
    }
}

#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<Header>,
    pub framing: Framing,
    pub close: bool,
}

impl ResponseHead {
    pub fn header(&self, name: &str) -> Option<&Header> {
        self.headers.iter().find(|h| h.is(name))
    }
}

/// Parses a request head at the start of `buf`. `Ok(None)`: more bytes are needed.
/// On success, also returns how many bytes the head took.
pub fn parse_request(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, ProxyError> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n");
    match line_end {
        None if buf.len() > MAX_REQUEST_LINE => return Err(ProxyError::UriTooLong),
        Some(end) if end > MAX_REQUEST_LINE => return Err(ProxyError::UriTooLong),
        _ => {}
    }
    let Some(head_len) = find_head_end(buf) else {
        // Refuse a bare LF or CR as soon as it is seen, rather than wait for a CRLF CRLF.
        check_line_endings(buf.strip_suffix(b"\r").unwrap_or(buf))?;
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
    let method = request.method.unwrap_or_default().to_owned();
    let target = request.path.unwrap_or_default().to_owned();
    let minor_version = request.version.unwrap_or(1);
    let headers: Vec<Header> =
        request.headers.iter().map(|h| Header { name: h.name.to_owned(), value: h.value.to_vec() }).collect();

    let framing = request_framing(&headers, minor_version)?;
    let hosts = headers.iter().filter(|h| h.is("host")).count();
    if hosts > 1 || (minor_version == 1 && hosts == 0) {
        return Err(ProxyError::BadRequest("a request needs exactly one Host header".into()));
    }
    let connection = tokens(&headers, "connection");
    let close = connection.iter().any(|t| t == "close")
        || (minor_version == 0 && !connection.iter().any(|t| t == "keep-alive"));
    let upgrade = if connection.iter().any(|t| t == "upgrade") {
        let protocols: Vec<&Header> = headers.iter().filter(|h| h.is("upgrade")).collect();
        match protocols.as_slice() {
            [] => None,
            [one] => Some(allowed_upgrade(one.value_str())?),
            _ => return Err(ProxyError::BadRequest("more than one Upgrade header".into())),
        }
    } else {
        None
    };
    if upgrade.is_some() && minor_version == 0 {
        return Err(ProxyError::BadRequest("upgrades need HTTP/1.1".into()));
    }
    let expect_continue =
        headers.iter().any(|h| h.is("expect") && h.value_str().trim().eq_ignore_ascii_case("100-continue"));
    Ok(Some((
        RequestHead { method, target, minor_version, headers, framing, upgrade, close, expect_continue },
        head_len,
    )))
}

/// Parses an upstream response head. Ambiguous framing is an error (the caller answers 502 and
/// drops the connection). `request_method` decides whether a body may follow.
pub fn parse_response(buf: &[u8], request_method: &str) -> Result<Option<(ResponseHead, usize)>, ProxyError> {
    let Some(head_len) = find_head_end(buf) else {
        if buf.len() > MAX_HEAD {
            return Err(ProxyError::BadUpstream("response head too large".into()));
        }
        return Ok(None);
    };
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    let status = response
        .parse(&buf[..head_len])
        .map_err(|e| ProxyError::BadUpstream(format!("malformed response head: {e}")))?;
    if status.is_partial() {
        return Err(ProxyError::BadUpstream("malformed response head".into()));
    }
    let code = response.code.unwrap_or(0);
    let reason = response.reason.unwrap_or("").to_owned();
    let headers: Vec<Header> =
        response.headers.iter().map(|h| Header { name: h.name.to_owned(), value: h.value.to_vec() }).collect();
    let te: Vec<&Header> = headers.iter().filter(|h| h.is("transfer-encoding")).collect();
    let lengths: Vec<&Header> = headers.iter().filter(|h| h.is("content-length")).collect();
    let bodiless = request_method == "HEAD" || (100..200).contains(&code) || code == 204 || code == 304;
    let framing = if bodiless {
        Framing::None
    } else {
        match (te.as_slice(), lengths.as_slice()) {
            ([], []) => Framing::UntilClose,
            ([], [one]) => Framing::Length(
                parse_length(one.value_str())
                    .ok_or_else(|| ProxyError::BadUpstream("invalid Content-Length".into()))?,
            ),
            ([one], []) if one.value_str().trim().eq_ignore_ascii_case("chunked") => Framing::Chunked,
            _ => return Err(ProxyError::BadUpstream("ambiguous response framing".into())),
        }
    };
    let close = tokens(&headers, "connection").iter().any(|t| t == "close")
        || response.version == Some(0)
        || framing == Framing::UntilClose;
    Ok(Some((ResponseHead { status: code, reason, headers, framing, close }, head_len)))
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Every line of a head ends in CRLF: a bare LF or CR is a smuggling vector (RFC 9112 §2.2).
fn check_line_endings(head: &[u8]) -> Result<(), ProxyError> {
    for (i, b) in head.iter().enumerate() {
        let bad = match b {
            b'\n' => i == 0 || head[i - 1] != b'\r',
            b'\r' => head.get(i + 1) != Some(&b'\n'),
            0 => true,
            _ => false,
        };
        if bad {
            return Err(ProxyError::BadRequest("bare CR, bare LF or NUL in the request head".into()));
        }
    }
    Ok(())
}

fn request_framing(headers: &[Header], minor_version: u8) -> Result<Framing, ProxyError> {
    let te: Vec<&Header> = headers.iter().filter(|h| h.is("transfer-encoding")).collect();
    let lengths: Vec<&Header> = headers.iter().filter(|h| h.is("content-length")).collect();
    match (te.as_slice(), lengths.as_slice()) {
        ([], []) => Ok(Framing::None),
        ([], [one]) => parse_length(one.value_str())
            .map(|n| if n == 0 { Framing::None } else { Framing::Length(n) })
            .ok_or_else(|| ProxyError::BadRequest("invalid Content-Length".into())),
        ([], _) => Err(ProxyError::BadRequest("more than one Content-Length".into())),
        ([_], [_, ..]) | ([_, _, ..], _) => {
            Err(ProxyError::BadRequest("Transfer-Encoding with Content-Length, or repeated".into()))
        }
        ([_], []) if minor_version == 0 => Err(ProxyError::BadRequest("Transfer-Encoding in HTTP/1.0".into())),
        ([one], []) if one.value_str().trim().eq_ignore_ascii_case("chunked") => Ok(Framing::Chunked),
        ([_], []) => Err(ProxyError::BadRequest("unsupported Transfer-Encoding".into())),
    }
}

/// `^[0-9]+$`, fitting in u64: no sign, no hex, no spaces, no list.
fn parse_length(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// Lower-cased comma-separated tokens of every header `name`.
pub fn tokens(headers: &[Header], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|h| h.is(name))
        .flat_map(|h| h.value_str().split(',').map(|t| t.trim().to_ascii_lowercase()).collect::<Vec<_>>())
        .filter(|t| !t.is_empty())
        .collect()
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
