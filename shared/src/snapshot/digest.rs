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
}

impl std::str::FromStr for Digest {
    type Err = NotADigest;

    /// Exactly 64 lower-case hex digits (what admin stores and `Display` writes).
    fn from_str(hex: &str) -> Result<Digest, NotADigest> {
        fn nibble(c: u8) -> Result<u8, NotADigest> {
            match c {
                b'0'..=b'9' => Ok(c - b'0'),
                b'a'..=b'f' => Ok(c - b'a' + 10),
                _ => Err(NotADigest),
            }
        }
        let hex = hex.as_bytes();
        if hex.len() != 64 {
            return Err(NotADigest);
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
        }
        Ok(Digest(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut hex = [0u8; 64];
        hex::encode_to_slice(self.0, &mut hex).expect("64 bytes hold 32 in hex");
        f.write_str(std::str::from_utf8(&hex).expect("hex is ASCII"))
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
        s.collect_str(self)
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
