//! Secrets: a string that never prints itself, CSPRNG tokens, SHA-256 digests and
//! constant-time comparison.
//!
//! Every secret the gateway handles (user tokens, register tokens, cluster tokens) travels as
//! [`Secret`], whose `Debug` prints `Secret(***)`; there is no `Display`, so a secret cannot end up
//! in a log line or an error message by accident: reading it takes an explicit [`Secret::expose`].
use rand::distr::{Alphanumeric, SampleString};
use rand::TryRngCore;
use subtle::ConstantTimeEq;

/// Length of a user token (the original used 32 alphanumerics).
/// The answer to a bearer token that is not (or no longer) one, at admin and at the proxy: one
/// text for unknown, revoked and expired, so an old leaked token is not confirmed as once valid.
pub const TOKEN_NOT_VALID: &str = "the token is not valid: unknown, revoked or expired";

/// The `WWW-Authenticate` value of a 401 (RFC 6750 §3).
pub const BEARER_CHALLENGE: &str = "Bearer realm=\"bcs-api\"";

pub const USER_TOKEN_LEN: usize = 32;
/// Length of a register token (as the original).
pub const REGISTER_TOKEN_LEN: usize = 128;

#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret's value. Call it only where the value is sent to its one rightful reader.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Hex SHA-256 of the value: how user tokens are stored and looked up.
    pub fn digest(&self) -> String {
        digest_hex(&self.0)
    }

    /// Constant-time equality with another secret's value.
    pub fn ct_eq(&self, other: &str) -> bool {
        ct_eq(self.0.as_bytes(), other.as_bytes())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// `len` alphanumerics (`[A-Za-z0-9]`) from the operating system's CSPRNG.
pub fn random_alphanumeric(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rngs::OsRng.unwrap_err(), len)
}

/// A fresh random token of `len` alphanumerics.
pub fn random_token(len: usize) -> Secret {
    Secret(random_alphanumeric(len))
}

/// Lower-case hex SHA-256 of `value`.
pub fn digest_hex(value: &str) -> String {
    crate::snapshot::Digest::of(value).to_string()
}

/// Constant-time comparison of two byte strings (lengths are not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{:?}", Some(vec![s])), "Some([Secret(***)])");
    }

    #[test]
    fn tokens_are_alphanumeric_and_distinct() {
        let a = random_token(USER_TOKEN_LEN);
        let b = random_token(USER_TOKEN_LEN);
        assert_eq!(a.expose().len(), 32);
        assert!(a.expose().chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn digest_is_sha256_hex() {
        assert_eq!(digest_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn ct_eq_compares_values() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
        assert!(Secret::new("x").ct_eq("x"));
    }
}
