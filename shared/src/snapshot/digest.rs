//! A user token's SHA-256 digest as the snapshot carries it: 32 bytes in memory, 64 lower-case
//! hex digits on the wire (the protocol's form since version 1.0, unchanged).
//!
//! Why a type of its own: a snapshot holds up to a million of them. As `String`s they cost a
//! million allocations and 64 MiB of fresh memory per apply, were checked for hex by `validate`
//! and parsed again by the proxy's compile. Now the decoder parses each once, straight from the
//! frame, and a malformed one fails the decode.
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde::{Serialize, Serializer};
use sha2::Sha256;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("a token digest is not 64 lower-case hex digits")]
pub struct NotADigest;

impl Digest {
    /// The digest of a token's value.
    pub fn of(value: &str) -> Digest {
        Digest::of_bytes(value.as_bytes())
    }

    /// The digest of a token as presented (the proxy's lookup key).
    pub fn of_bytes(value: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest(Sha256::digest(value).into())
    }

    /// From exactly 64 lower-case hex digits. Without a branch per digit: digits and letters
    /// come in random order in a digest, and a branch on each mispredicted often enough to
    /// cost more than the rest of decoding a million tokens. (The `hex` crate's decoder takes
    /// upper case too, and branches per digit.)
    pub fn from_hex(hex: &[u8]) -> Option<Digest> {
        let hex: &[u8; 64] = hex.try_into().ok()?;
        let (mut out, mut bad) = ([0u8; 32], 0u8);
        for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            let (high, low) = (NIBBLE[pair[0] as usize], NIBBLE[pair[1] as usize]);
            bad |= high | low;
            *byte = high << 4 | low;
        }
        (bad & 0xf0 == 0).then_some(Digest(out))
    }

    /// The 64 lower-case hex digits, on the stack.
    fn hex(&self) -> [u8; 64] {
        let mut hex = [0u8; 64];
        hex::encode_to_slice(self.0, &mut hex).expect("64 bytes hold 32 in hex");
        hex
    }
}

impl std::str::FromStr for Digest {
    type Err = NotADigest;

    /// Exactly 64 lower-case hex digits (what admin stores and `Display` writes).
    fn from_str(hex: &str) -> Result<Digest, NotADigest> {
        Digest::from_hex(hex.as_bytes()).ok_or(NotADigest)
    }
}

/// Each byte's value as a lower-case hex digit, or 0xff.
const NIBBLE: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut c = 0;
    while c < 10 {
        table[b'0' as usize + c] = c as u8;
        c += 1;
    }
    while c < 16 {
        table[b'a' as usize + c - 10] = c as u8;
        c += 1;
    }
    table
};

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.hex()).expect("hex is ASCII"))
    }
}

/// Digests are not secret (a proxy can check a token with one, never make one), so `Debug` shows
/// the hex like `Display`.
impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // As a string, not through `Display`: admin writes a million of them per snapshot.
        s.serialize_str(std::str::from_utf8(&self.hex()).expect("hex is ASCII"))
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        struct Hex;
        impl Visitor<'_> for Hex {
            type Value = Digest;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 lower-case hex digits")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Digest, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Hex)
    }
}

/// Hashes a digest-keyed map or set by the digest's first 8 bytes: a SHA-256 digest is already
/// uniformly spread, so hashing it again (SipHash, per request and per token at apply) buys
/// nothing. No flooding either: only admin puts keys in these maps (digests of tokens it made at
/// random), and a lookup's probe length depends on the map's keys, not on the key looked up.
#[derive(Clone, Copy, Default)]
pub struct DigestKeyed;

impl std::hash::BuildHasher for DigestKeyed {
    type Hasher = DigestHasher;
    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(0)
    }
}

pub struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    /// A `[u8; 32]` hashes as its length, then its bytes: each write's first 8 bytes are
    /// XORed in (a constant, then the digest's start).
    fn write(&mut self, bytes: &[u8]) {
        let mut first = [0u8; 8];
        let n = bytes.len().min(8);
        first[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(first);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_prints_and_nothing_else() {
        let d = Digest::of("abc");
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(d.to_string(), hex);
        assert_eq!(hex.parse::<Digest>(), Ok(d));
        assert_eq!(hex.to_uppercase().parse::<Digest>(), Err(NotADigest));
        assert_eq!(hex[..62].parse::<Digest>(), Err(NotADigest));
        assert_eq!(format!("{hex}0").parse::<Digest>(), Err(NotADigest));
        assert_eq!(format!("{}g", &hex[..63]).parse::<Digest>(), Err(NotADigest));
        assert_eq!(format!("{}é", &hex[..62]).parse::<Digest>(), Err(NotADigest));
    }

    /// Every byte value, in a high and in a low position: only 0-9 and a-f are digits.
    #[test]
    fn the_digit_table_takes_lower_case_hex_only() {
        for b in 0..=255u8 {
            let value = match b {
                b'0'..=b'9' => Some(b - b'0'),
                b'a'..=b'f' => Some(b - b'a' + 10),
                _ => None,
            };
            let mut hex = [b'0'; 64];
            hex[4] = b;
            hex[7] = b;
            let mut expected = [0u8; 32];
            expected[2] = value.unwrap_or(0) << 4;
            expected[3] = value.unwrap_or(0);
            assert_eq!(Digest::from_hex(&hex), value.map(|_| Digest(expected)), "byte {b:#04x}");
        }
        assert_eq!(Digest::from_hex(&[b'0'; 63]), None);
        assert_eq!(Digest::from_hex(&[b'0'; 65]), None);
    }

    #[test]
    fn travels_as_a_hex_string() {
        let d = Digest::of("abc");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{d}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        let err = serde_json::from_str::<Digest>("\"NOT-HEX\"").unwrap_err().to_string();
        assert!(err.contains("not 64 lower-case hex digits"), "{err}");
        assert!(serde_json::from_str::<Digest>("17").is_err());
    }
}
