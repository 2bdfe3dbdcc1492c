use super::*;
use crate::error::ProxyError;

fn req(text: &str) -> Result<Option<(RequestHead, usize)>, ProxyError> {
    parse_request(text.as_bytes())
}

fn status_of(text: &str) -> u16 {
    req(text).expect_err(text).status()
}

#[test]
fn parses_a_simple_get() {
    let (head, used) = req("GET /api/v1/pods?watch=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\nrest").unwrap().unwrap();
    assert_eq!(head.method, "GET");
    assert_eq!(head.target, "/api/v1/pods?watch=1");
    assert_eq!(head.framing, Framing::None);
    assert_eq!(used, "GET /api/v1/pods?watch=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n".len());
    assert!(!head.close);
    assert!(req("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none(), "partial head");
}

#[test]
fn framing_rules() {
    let (h, _) = req("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 010\r\n\r\n").unwrap().unwrap();
    assert_eq!(h.framing, Framing::Length(10));
    let (h, _) = req("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap().unwrap();
    assert_eq!(h.framing, Framing::Chunked);
    for bad in [
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3,2\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x10\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET / HTTP/1.1\nHost: x\n\n",
        "GET / HTTP/1.1\r\nHost: x\r\nX: a\nY: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nX: a\rY: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nX\0: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n folded\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: TLS/1.2\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket2\r\n\r\n",
        // Unicode spaces are not the SP and HTAB RFC 9110 allows: another coding.
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\u{a0}\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \u{3000}chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\u{85}\r\n\r\n",
    ] {
        assert_eq!(status_of(bad), 400, "{bad:?}");
    }
    let (h, _) = req("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \t chunked \r\n\r\n").unwrap().unwrap();
    assert_eq!(h.framing, Framing::Chunked);
    assert!(parse_response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\u{a0}\r\n\r\n".as_bytes(), "GET").is_err());
}

#[test]
fn only_http_1_1_clients_are_sent_100_continue() {
    let expect = |version: &str| {
        let text = format!("POST / HTTP/1.{version}\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
        req(&text).unwrap().unwrap().0.expect_continue
    };
    assert!(expect("1"));
    assert!(!expect("0"), "RFC 9110 15.2: no 1xx to an HTTP/1.0 client");
}

#[test]
fn limits() {
    let long_line = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(MAX_REQUEST_LINE));
    assert_eq!(status_of(&long_line), 414);
    let unterminated = format!("GET /{}", "a".repeat(MAX_REQUEST_LINE + 10));
    assert_eq!(status_of(&unterminated), 414);
    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
    assert_eq!(status_of(&big), 431);
    let many: String = (0..MAX_HEADERS + 1).map(|i| format!("X-{i}: v\r\n")).collect();
    assert_eq!(status_of(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")), 431);
}

#[test]
fn upgrades_and_connection_tokens() {
    let (h, _) = req("GET /x HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(h.upgrade.as_deref(), Some("websocket"));
    let (h, _) =
        req("POST /x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n").unwrap().unwrap();
    assert_eq!(h.upgrade.as_deref(), Some("SPDY/3.1"));
    let (h, _) = req("GET /x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n").unwrap().unwrap();
    assert_eq!(h.upgrade, None, "Upgrade without Connection: upgrade is not an upgrade");
    let (h, _) = req("GET /x HTTP/1.0\r\n\r\n").unwrap().unwrap();
    assert!(h.close);
}

/// Connection tokens are read as text: a value that is not UTF-8 lists none (httparse lets
/// bytes 0x80-0xFF into values), and Unicode spaces around a token are trimmed.
#[test]
fn connection_tokens_are_text() {
    let raw = |value: &[u8]| {
        let mut head = b"GET /x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: ".to_vec();
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n\r\n");
        parse_request(&head).unwrap().unwrap().0
    };
    let h = raw(b"close, upgrade, \xff");
    assert!(!h.close && h.upgrade.is_none(), "a non-UTF-8 value lists no token");
    let h = raw("close\u{a0}, upgrade".as_bytes());
    assert!(h.close && h.upgrade.is_some(), "U+00A0 is trimmed");
    let h = raw(b"CLOSE , Upgrade");
    assert!(h.close && h.upgrade.is_some(), "in any case, spaces trimmed");
    let (r, _) = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close, \x80\r\n\r\n", "GET")
        .unwrap()
        .unwrap();
    assert!(!r.close, "a non-UTF-8 value lists no token");
}

#[test]
fn responses() {
    let (r, used) = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "GET").unwrap().unwrap();
    assert_eq!((r.status, r.framing, used), (200, Framing::Length(5), 38));
    let (r, _) = parse_response(b"HTTP/1.1 200 OK\r\n\r\n", "GET").unwrap().unwrap();
    assert_eq!(r.framing, Framing::UntilClose);
    assert!(r.close);
    let (r, _) = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "HEAD").unwrap().unwrap();
    assert_eq!(r.framing, Framing::None);
    let (r, _) =
        parse_response(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", "GET").unwrap().unwrap();
    assert_eq!(r.framing, Framing::None);
    assert!(
        parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", "GET").is_err()
    );
    assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "GET").is_err());
    assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "GET").is_err());
    // A head whose end came in the read that went past the limit is still too large.
    let big = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
    assert!(parse_response(big.as_bytes(), "GET").is_err());
}

/// What `write::field` relies on when it passes a field on as received (httparse's default
/// configuration and version): every accepted field is `name:` SP/HTAB value on one line.
#[test]
fn fields_are_one_line_each_or_the_head_is_refused() {
    let bad: [&[u8]; 5] = [
        b"HTTP/1.1 200 OK\r\nX : v\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 0\r\n\r\n",
        // A head that ends at a bare LF LF before its CRLF CRLF: the bytes between would be lost.
        b"HTTP/1.1 200 OK\nX: a\n\nY: b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n",
    ];
    for head in bad {
        assert!(parse_response(head, "GET").is_err(), "{:?}", String::from_utf8_lossy(head));
    }
    assert_eq!(status_of("GET / HTTP/1.1\r\nHost: x\r\nX : v\r\n\r\n"), 400);
    assert_eq!(status_of("GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n"), 400);
    let (r, _) = parse_response(b"HTTP/1.1 204 No Content\r\nX:\r\nY: \t\r\nZ:\tz \r\n\r\n", "GET").unwrap().unwrap();
    let lines: Vec<&[u8]> = r.headers.iter().map(|h| h.line()).collect();
    assert_eq!(lines, [&b"X:"[..], b"Y:", b"Z:\tz"]);
}

/// Envoy's property: corrupting any one byte of a header name or value into NUL, CR or LF
/// gives a protocol error, never a different valid request.
#[test]
fn single_byte_corruption_is_always_an_error() {
    let valid = "GET /api HTTP/1.1\r\nHost: example\r\nAccept: application/json\r\nX-Name: value\r\n\r\n";
    let header_start = valid.find("Host").unwrap();
    let header_end = valid.len() - 4;
    for i in header_start..header_end {
        if valid.as_bytes()[i] == b'\r' || valid.as_bytes()[i] == b'\n' {
            continue;
        }
        for bad in [0u8, b'\r', b'\n'] {
            let mut bytes = valid.as_bytes().to_vec();
            bytes[i] = bad;
            assert!(parse_request(&bytes).is_err(), "byte {i} -> {bad}");
        }
    }
}
