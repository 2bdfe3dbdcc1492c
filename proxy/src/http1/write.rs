//! Writing heads. Every header the gateway writes goes through [`header`], which refuses CR,
//! LF, NUL and other control characters, so no value can split a request or a response.
use crate::error::ProxyError;

pub fn header(out: &mut Vec<u8>, name: &str, value: &[u8]) -> Result<(), ProxyError> {
    let name_ok =
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    let value_ok = value.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80);
    if !name_ok || !value_ok {
        return Err(ProxyError::Internal(format!("refusing to write header {name:?} with control characters")));
    }
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_never_reach_the_wire() {
        let mut out = Vec::new();
        super::header(&mut out, "Impersonate-User", b"plain.alice").unwrap();
        assert_eq!(out, b"Impersonate-User: plain.alice\r\n");
        for bad in [&b"a\r\nX-Evil: 1"[..], b"a\nb", b"a\0b", b"a\rb", b"\x7f"] {
            assert!(super::header(&mut Vec::new(), "X", bad).is_err());
        }
        assert!(super::header(&mut Vec::new(), "X Y", b"v").is_err());
        assert!(super::header(&mut Vec::new(), "X:Y", b"v").is_err());
    }
}
