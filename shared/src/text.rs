//! Numbers written as text without the formatting machinery, for paths that run per request.

/// Appends `n` in decimal (a status code, a Content-Length, a port).
pub fn decimal(out: &mut Vec<u8>, mut n: u64) {
    // An address's octet, a status code, a short length: written whole, with no length to copy.
    if n < 10 {
        out.push(b'0' + n as u8);
        return;
    }
    if n < 1000 {
        let (h, t, o) = (b'0' + (n / 100) as u8, b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8);
        match n {
            ..100 => out.extend_from_slice(&[t, o]),
            _ => out.extend_from_slice(&[h, t, o]),
        }
        return;
    }
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    #[test]
    fn decimals() {
        for n in (0..=100_000u64).chain([1_048_576, u64::MAX / 10, u64::MAX]) {
            let mut out = b"x".to_vec();
            super::decimal(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }
}
