//! The bodies of the fuzz targets (fuzz/ runs them under libFuzzer; the ordinary test suite
//! replays every corpus file through them on stable Rust). Each one feeds arbitrary bytes to a
//! parser and checks the properties the gateway relies on; a violated property panics.

use crate::error::ProxyError;
use crate::http1::body::ChunkedDecoder;
use crate::http1::head::{parse_request, parse_request_after, parse_response, parse_response_after, Framing, Header};
use crate::http1::write;
use crate::route::{route, Route};

/// Request heads: never panics; an accepted head has sane framing and no control characters
/// in any header value; a refusal is one of the statuses the gateway answers with; a head that
/// arrives in pieces (as `conn::read_head` resumes it) gets the same answer as when whole.
pub fn request_head(data: &[u8]) {
    let whole = parse_request(data);
    match (outcome(&in_pieces(data, parse_request_after)), outcome(&whole)) {
        // A refusal may come earlier in pieces (a bare LF in the first bytes, before the
        // request line's 8 KiB are over), with another status: both refuse.
        (Err(_), Err(_)) => {}
        (pieces, whole) => assert_eq!(pieces, whole, "in pieces and whole differ"),
    }
    match whole {
        Ok(Some((head, used))) => {
            assert!(used <= data.len());
            assert!(data[..used].ends_with(b"\r\n\r\n"));
            for h in head.headers.iter() {
                assert!(
                    !h.value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0),
                    "control character in {}",
                    h.name()
                );
                passes_as_written(&h);
            }
            if head.framing == Framing::Chunked {
                assert!(head.header("content-length").is_none(), "CL and TE both accepted");
            }
            if let Some(protocol) = &head.upgrade {
                assert!(protocol.eq_ignore_ascii_case("websocket") || protocol.eq_ignore_ascii_case("SPDY/3.1"));
            }
        }
        Ok(None) => {}
        Err(e) => assert!(matches!(e.status(), 400 | 414 | 431), "unexpected status {}", e.status()),
    }
}

type Parsed<T> = Result<Option<(T, usize)>, ProxyError>;

/// `data` parsed as it would be if it arrived in pieces: cut at points the data itself picks,
/// each call resuming after the bytes the previous one found incomplete.
fn in_pieces<T>(data: &[u8], parse: impl Fn(&[u8], usize) -> Parsed<T>) -> Parsed<T> {
    let mut checked = 0;
    let mut cut = 0;
    let mut step = 1 + usize::from(data.first().copied().unwrap_or(0) % 7);
    while cut < data.len() {
        cut = (cut + step).min(data.len());
        step = step * 3 % 101 + 1;
        match parse(&data[..cut], checked) {
            Ok(None) => checked = cut,
            done => return done,
        }
    }
    Ok(None)
}

/// What a parse answered, to compare: the status of a refusal, or the length of the head.
fn outcome<T>(parsed: &Parsed<T>) -> Result<Option<usize>, u16> {
    match parsed {
        Ok(Some((_, used))) => Ok(Some(*used)),
        Ok(None) => Ok(None),
        Err(e) => Err(e.status()),
    }
}

/// A parsed field is one `write::field` may pass on unchecked: what `write::header` would
/// accept, with nothing but spaces and tabs between its colon and its value.
fn passes_as_written(h: &Header) {
    assert!(write::header(&mut Vec::new(), h.raw_name(), h.value).is_ok(), "{:?} would be refused", h.line());
    let line = h.line();
    let between = line
        .strip_prefix(h.raw_name())
        .and_then(|rest| rest.strip_prefix(b":"))
        .and_then(|rest| rest.strip_suffix(h.value))
        .unwrap_or_else(|| panic!("{line:?} is not name, colon, value"));
    assert!(between.iter().all(|&b| b == b' ' || b == b'\t'), "{line:?}");
}

/// Response heads from upstreams: never panics; a body-less status never gets a body framing;
/// a head that arrives in pieces (as `forward::receive_head` resumes it) gets the same answer.
pub fn response_head(data: &[u8]) {
    for method in ["GET", "HEAD"] {
        let whole = parse_response(data, method);
        let pieces = in_pieces(data, |buf, checked| parse_response_after(buf, checked, method));
        assert_eq!(outcome(&pieces), outcome(&whole), "in pieces and whole differ");
        if let Ok(Some((head, used))) = whole {
            assert!(used <= data.len());
            head.headers.iter().for_each(|h| passes_as_written(&h));
            if method == "HEAD" || head.status == 204 || head.status == 304 || (100..200).contains(&head.status) {
                assert_eq!(head.framing, Framing::None);
            }
        }
    }
}

/// The chunked decoder: never panics, consumes no more than it was given, and decodes the same
/// payload whether the input arrives whole or byte by byte.
pub fn chunked(data: &[u8]) {
    let mut whole = ChunkedDecoder::default();
    let mut out_whole = Vec::new();
    let result_whole = whole.decode(data, &mut out_whole);
    if let Ok(used) = result_whole {
        assert!(used <= data.len());
    }
    let mut split = ChunkedDecoder::default();
    let mut out_split = Vec::new();
    let mut result_split = Ok(0);
    for (i, b) in data.iter().enumerate() {
        match split.decode(std::slice::from_ref(b), &mut out_split) {
            Ok(_) if split.is_done() => {
                result_split = Ok(i + 1);
                break;
            }
            Ok(_) => result_split = Ok(i + 1),
            Err(e) => {
                result_split = Err(e);
                break;
            }
        }
    }
    assert_eq!(result_whole.is_ok(), result_split.is_ok(), "whole and byte-by-byte disagree on validity");
    if result_whole.is_ok() {
        assert_eq!(out_whole, out_split, "whole and byte-by-byte decode differently");
        assert_eq!(whole.is_done(), split.is_done());
    }
}

/// Routing: never panics; an accepted kubernetes route names a canonical identifier and an
/// upstream path with no dot segment and no encoded slash, that is the exact suffix of the input.
pub fn route_match(data: &[u8]) {
    let Ok(target) = std::str::from_utf8(data) else { return };
    match route(target) {
        Ok(Route::Kubernetes { identifier, upstream_target }) => {
            assert!(!identifier.is_empty() && !identifier.contains('/'));
            let path = upstream_target.split('?').next().unwrap_or_default();
            for segment in path.split('/') {
                let lower = segment.to_ascii_lowercase();
                assert!(segment != "." && segment != "..", "dot segment forwarded: {upstream_target}");
                assert!(
                    !lower.contains("%2f") && !lower.contains("%5c") && !lower.contains("%00"),
                    "encoded separator: {upstream_target}"
                );
                assert!(
                    lower != "%2e" && lower != "%2e%2e" && lower != ".%2e" && lower != "%2e.",
                    "encoded dot segment: {upstream_target}"
                );
            }
            assert!(
                target.ends_with(upstream_target.trim_start_matches('/')) || upstream_target == "/",
                "not the exact suffix: {target} -> {upstream_target}"
            );
        }
        Ok(_) => {}
        Err(ProxyError::BadRequest(_) | ProxyError::NotFound(_)) => {}
        Err(other) => panic!("route answered {}", other.status()),
    }
}

/// Snapshot frames from the unix socket: never panics and never allocates past the limit; a
/// decoded snapshot that validates re-encodes to a frame that decodes to the same message.
pub fn snapshot_frame(data: &[u8]) {
    use bcs_shared::snapshot::wire::{encode, Decoder, Message};
    let mut decoder = Decoder::with_limit(1 << 20);
    if decoder.push(data).is_err() {
        return;
    }
    while let Ok(Some(message)) = decoder.next_message() {
        if let Message::Snapshot(snapshot) = &message {
            let _ = snapshot.validate();
        }
        let again = encode(&message);
        let mut d = Decoder::default();
        d.push(&again).unwrap();
        assert_eq!(d.next_message().unwrap(), Some(message), "a message does not survive a round trip");
    }
}
