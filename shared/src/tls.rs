//! Trust anchors and client TLS settings, written once for every process: the proxy (cluster
//! CAs, `cert_config.ca_file`), admin (RBAC sync, the permission subscription, the validation of
//! reported CAs) and the agent.
use std::fmt;
use std::sync::Arc;

use rustls::client::WantsClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, ConfigBuilder, RootCertStore};

/// Why a PEM bundle cannot serve as trust anchors. Its text completes a sentence whose subject
/// the caller names ("cacert_data holds no PEM certificate").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootsError {
    NotPem(String),
    BadCertificate(String),
    Empty,
}

impl fmt::Display for RootsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootsError::NotPem(e) => write!(f, "is not valid PEM: {e}"),
            RootsError::BadCertificate(e) => write!(f, "holds an invalid certificate: {e}"),
            RootsError::Empty => f.write_str("holds no PEM certificate"),
        }
    }
}

impl std::error::Error for RootsError {}

/// Every certificate of a PEM bundle, each one checked as a trust anchor; at least one.
pub fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore, RootsError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| RootsError::NotPem(e.to_string()))?;
        roots.add(cert).map_err(|e| RootsError::BadCertificate(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(RootsError::Empty);
    }
    Ok(roots)
}

/// Client TLS (ring, TLS 1.2 and 1.3) trusting only `roots`, up to the choice of a client
/// certificate.
pub fn client_trusting(roots: RootCertStore) -> ConfigBuilder<ClientConfig, WantsClientCert> {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
}

/// Client TLS to an HTTP/1.1 server (an apiserver) that must chain to `roots`, with no client
/// certificate.
pub fn http1_client(roots: RootCertStore) -> Arc<ClientConfig> {
    Arc::new(http1_client_config(roots))
}

/// [`http1_client`] before it is shared, for a caller that sets more (the proxy: its session
/// ticket store).
pub fn http1_client_config(roots: RootCertStore) -> ClientConfig {
    let mut config = client_trusting(roots).with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_without_certificates_is_refused() {
        assert_eq!(roots_from_pem(b"").unwrap_err(), RootsError::Empty);
        assert_eq!(roots_from_pem(b"no pem here").unwrap_err(), RootsError::Empty);
    }

    #[test]
    fn broken_pem_and_bad_certificates_say_which() {
        let broken = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(roots_from_pem(broken), Err(RootsError::NotPem(_))));
        let garbage = b"-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n";
        let e = roots_from_pem(garbage).unwrap_err();
        assert!(matches!(e, RootsError::BadCertificate(_)), "{e:?}");
        assert!(e.to_string().starts_with("holds an invalid certificate"));
    }
}
