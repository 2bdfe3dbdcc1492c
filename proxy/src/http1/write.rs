//! Writing heads. Every header the gateway writes goes through [`header`], which refuses CR,
//! LF, NUL and other control characters, so no value can split a request or a response; or
//! through [`field`], a field passed on as the parser accepted it (the same rules, checked
//! there); or [`content_length`], digits by construction.
use crate::error::ProxyError;
use crate::http1::head::Header;

/// RFC 9110 `tchar`: the bytes a field name may have.
static TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(c, b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+')
            || matches!(c, b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~');
        b += 1;
    }
    table
};

/// A field value: tab, visible ASCII, space and obs-text (0x80 and up); no other control byte.
/// Eight bytes at a time while all are space to `~` (the usual value; a token is hundreds of
/// bytes), byte by byte from the first word that is not.
fn value_ok(value: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES * 0x80;
    let mut at = 0;
    while let Some(word) = value.get(at..at + 8) {
        let x = u64::from_ne_bytes(word.try_into().expect("8 bytes"));
        // Some byte below 0x20; some byte 0x7f or above (DEL, or obs-text: decided bytewise).
        let below = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        let above = (x.wrapping_add(ONES) | x) & HIGH;
        if below | above != 0 {
            break;
        }
        at += 8;
    }
    value[at..].iter().all(|&b| (b >= b' ' && b != 0x7f) || b == b'\t')
}

/// A token (RFC 9110 §5.6.2): a field name or a method.
pub fn is_token(text: &[u8]) -> bool {
    !text.is_empty() && text.iter().all(|&b| TOKEN[b as usize])
}

pub fn header(out: &mut Vec<u8>, name: impl AsRef<[u8]>, value: &[u8]) -> Result<(), ProxyError> {
    let name = name.as_ref();
    let name_ok = is_token(name);
    if !name_ok || !value_ok(value) {
        let name = String::from_utf8_lossy(name);
        return Err(ProxyError::Internal(format!("refusing to write header {name:?} with control characters")));
    }
    out.reserve(name.len() + value.len() + 4);
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// `Authorization: Bearer <token>`, the token checked as [`header`] checks a value (written in
/// place: no `Bearer ` value put together first).
pub fn bearer(out: &mut Vec<u8>, token: &[u8]) -> Result<(), ProxyError> {
    if !value_ok(token) {
        return Err(ProxyError::Internal("refusing to write a bearer token with control characters".into()));
    }
    out.reserve(token.len() + 24);
    out.extend_from_slice(b"Authorization: Bearer ");
    out.extend_from_slice(token);
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// A field passed on unchanged: its line as received, in one copy. httparse refused every
/// byte [`header`] would refuse (a name of `tchar`s; in the value, no control byte but tab),
/// and a [`Header`] comes only from its parse; `fuzzing.rs` checks the two rules agree.
pub fn field(out: &mut Vec<u8>, h: &Header) {
    out.reserve(h.line().len() + 2);
    out.extend_from_slice(h.line());
    out.extend_from_slice(b"\r\n");
}

/// `Content-Length: n`.
pub fn content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"Content-Length: ");
    decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal (a status code, a Content-Length) without the formatting machinery.
pub use bcs_shared::text::decimal;

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_never_reach_the_wire() {
        let mut out = Vec::new();
        super::header(&mut out, "Impersonate-User", b"plain.alice").unwrap();
        assert_eq!(out, b"Impersonate-User: plain.alice\r\n");
        let mut auth = Vec::new();
        super::bearer(&mut auth, b"abc.def").unwrap();
        assert_eq!(auth, b"Authorization: Bearer abc.def\r\n");
        assert!(super::bearer(&mut Vec::new(), b"abc\r\nX-Evil: 1").is_err());
        for bad in [&b"a\r\nX-Evil: 1"[..], b"a\nb", b"a\0b", b"a\rb", b"\x7f"] {
            assert!(super::header(&mut Vec::new(), "X", bad).is_err());
        }
        assert!(super::header(&mut Vec::new(), "X Y", b"v").is_err());
        assert!(super::header(&mut Vec::new(), "X:Y", b"v").is_err());
        assert!(super::header(&mut Vec::new(), "", b"v").is_err());
        // Tab and obs-text pass, as httparse lets them in.
        super::header(&mut out, "X", b"a\tb \x80\xff~").unwrap();
    }

    #[test]
    fn the_tables_agree_with_the_rules() {
        for b in 0..=255u8 {
            let token = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            assert_eq!(super::header(&mut Vec::new(), [b], b"v").is_ok(), token, "name byte {b:#x}");
            let value = b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80;
            assert_eq!(super::header(&mut Vec::new(), "X", &[b'a', b, b'z']).is_ok(), value, "value byte {b:#x}");
            // In a long value, in every lane of the word-at-a-time check and in the tail.
            for at in [0, 3, 7, 8, 12, 15, 16, 20] {
                let mut long = [b'v'; 21];
                long[at] = b;
                assert_eq!(super::header(&mut Vec::new(), "X", &long).is_ok(), value, "byte {b:#x} at {at}");
            }
        }
    }
}
