//! Encryption at rest for register tokens and cluster tokens: AES-256-GCM under a 32-byte key
//! kept in a key file (hex), created with mode 0600 on first start.
//!
//! A sealed value is `v1:` + base64(nonce ‖ ciphertext ‖ tag). Each value is sealed for a
//! purpose (for example `register_token:<cluster id>`), passed as associated data, so a sealed
//! value copied into another row does not open there.
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::secret::Secret;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use rand::TryRngCore;

const PREFIX: &str = "v1:";
const NONCE_LEN: usize = 12;

pub struct Sealer {
    cipher: Aes256Gcm,
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("stored secret cannot be decrypted (is storage.secret_key_file the key it was written with?)")]
    Open,
}

impl Sealer {
    /// Reads the key file, or creates it (mode 0600, parent directories 0700) if it is missing.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Sealer> {
        use anyhow::Context;
        let key = match std::fs::read_to_string(path) {
            Ok(text) => {
                let mode = std::fs::metadata(path)?.permissions().mode();
                if mode & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), mode = format!("{mode:o}"),
                        "secret key file is readable by group or others; chmod 600 it");
                }
                let key = hex::decode(text.trim())
                    .ok()
                    .filter(|k| k.len() == 32)
                    .with_context(|| format!("{}: the key file must hold 64 hex digits", path.display()))?;
                key
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = vec![0u8; 32];
                rand::rngs::OsRng.try_fill_bytes(&mut key)?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                }
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .with_context(|| format!("cannot create key file {}", path.display()))?;
                file.write_all(hex::encode(&key).as_bytes())?;
                file.sync_all()?;
                tracing::info!(path = %path.display(), "created the secret key file");
                key
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read key file {}", path.display())),
        };
        Ok(Sealer::from_key(&key))
    }

    pub fn from_key(key: &[u8]) -> Sealer {
        Sealer { cipher: Aes256Gcm::new_from_slice(key).expect("the key is 32 bytes") }
    }

    pub fn seal(&self, purpose: &str, secret: &Secret) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.try_fill_bytes(&mut nonce).expect("the operating system's random source works");
        let payload = Payload { msg: secret.expose().as_bytes(), aad: purpose.as_bytes() };
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), payload)
            .expect("AES-GCM encryption of a short value cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!("{PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(out))
    }

    pub fn open(&self, purpose: &str, sealed: &str) -> Result<Secret, SealError> {
        let raw = sealed
            .strip_prefix(PREFIX)
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .filter(|raw| raw.len() > NONCE_LEN)
            .ok_or(SealError::Open)?;
        let (nonce, ciphertext) = raw.split_at(NONCE_LEN);
        let payload = Payload { msg: ciphertext, aad: purpose.as_bytes() };
        let plain = self.cipher.decrypt(Nonce::from_slice(nonce), payload).map_err(|_| SealError::Open)?;
        String::from_utf8(plain).map(Secret::new).map_err(|_| SealError::Open)
    }
}

/// Purposes: what a sealed value is, and whose.
pub fn register_token_purpose(cluster_id: &str) -> String {
    format!("register_token:{cluster_id}")
}

pub fn cluster_token_purpose(cluster_id: &str) -> String {
    format!("cluster_token:{cluster_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_for_the_same_purpose_only() {
        let sealer = Sealer::from_key(&[7u8; 32]);
        let secret = Secret::new("the-register-token");
        let sealed = sealer.seal("register_token:a", &secret);
        assert!(sealed.starts_with("v1:"));
        assert!(!sealed.contains("the-register-token"));
        assert_eq!(sealer.open("register_token:a", &sealed).unwrap(), secret);
        assert!(sealer.open("register_token:b", &sealed).is_err());
        assert!(Sealer::from_key(&[8u8; 32]).open("register_token:a", &sealed).is_err());
        assert_ne!(sealed, sealer.seal("register_token:a", &secret), "nonces differ");
        assert!(sealer.open("register_token:a", "v1:!!").is_err());
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/secret.key");
        let a = Sealer::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let sealed = a.seal("p", &Secret::new("x"));
        let b = Sealer::load_or_create(&path).unwrap();
        assert_eq!(b.open("p", &sealed).unwrap().expose(), "x");
        std::fs::write(&path, "not hex").unwrap();
        assert!(Sealer::load_or_create(&path).is_err());
    }
}
