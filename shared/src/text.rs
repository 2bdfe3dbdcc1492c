//! Numbers written as text without the formatting machinery, for paths that run per request.

/// Appends `n` in decimal (a status code, a Content-Length, a port).
pub fn decimal(out: &mut Vec<u8>, mut n: u64) {
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
        for n in [0u64, 7, 9, 10, 99, 100, 200, 443, 6443, 65535, 1_048_576, u64::MAX] {
            let mut out = b"x".to_vec();
            super::decimal(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }
}
