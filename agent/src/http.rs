//! A small HTTP/1.1 client over rustls (ring provider): one connection per request, every step
//! bounded by a deadline. The agent makes one request to the apiserver and one to bcs-api per
//! period, so no pool; and TLS is configured per peer: the cluster's CA for the apiserver,
//! `SERVER_CERT` alone for bcs-api.
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Largest answer body read.
const MAX_BODY: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("TLS handshake with {0} failed: {1}")]
    Tls(String, std::io::Error),
    #[error("request to {0} failed: {1}")]
    Request(String, String),
    #[error("no answer from {0} within {1:?}")]
    Timeout(String, Duration),
    #[error("{0}")]
    Url(String),
}

pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

/// The certificates of a PEM bundle as a root store; an error if it holds none or one does
/// not parse.
pub fn roots_from_pem(pem: &str) -> Result<rustls::RootCertStore, String> {
    bcs_shared::tls::roots_from_pem(pem.as_bytes()).map_err(|e| e.to_string())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Client TLS trusting only the certificates in `ca_pem`.
pub fn tls_trusting(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    Ok(bcs_shared::tls::http1_client(roots_from_pem(ca_pem)?))
}

/// Client TLS that accepts any certificate (`--insecureSkipVerify`, and the reachability probe,
/// which sends nothing).
pub fn tls_insecure() -> Arc<rustls::ClientConfig> {
    let provider = provider();
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `host:port` of a URL (IPv6 in brackets) and the TLS server name for its host.
fn authority(url: &url::Url) -> Result<(String, String, u16), HttpError> {
    let host = url.host_str().ok_or_else(|| HttpError::Url(format!("{url} has no host")))?.to_owned();
    let port = url.port_or_known_default().ok_or_else(|| HttpError::Url(format!("{url} has no port")))?;
    Ok((host, format!("{}:{port}", url.host_str().unwrap_or_default()), port))
}

fn server_name(host: &str) -> Result<ServerName<'static>, HttpError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_owned()).map_err(|e| HttpError::Url(format!("{host}: {e}")))
}

/// Opens TCP (and TLS when `tls` is given) to `host:port`, bounded by `timeout`.
pub async fn connect(
    host: &str,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<Box<dyn Io>, HttpError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let target = if bare.contains(':') { format!("[{bare}]:{port}") } else { format!("{bare}:{port}") };
    let work = async {
        let tcp = TcpStream::connect((bare, port)).await.map_err(|e| HttpError::Connect(target.clone(), e))?;
        let _ = tcp.set_nodelay(true);
        match tls {
            None => Ok(Box::new(tcp) as Box<dyn Io>),
            Some(config) => {
                let name = server_name(host)?;
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| HttpError::Tls(target.clone(), e))?;
                Ok(Box::new(stream) as Box<dyn Io>)
            }
        }
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| HttpError::Timeout(target.clone(), timeout))?
}

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One request: `headers` are added to `Host` (and `Content-Length` for a body). `tls` is used
/// for `https` URLs (required there).
pub async fn request(
    method: http::Method,
    url: &url::Url,
    headers: &[(&str, String)],
    body: Option<Vec<u8>>,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<Answer, HttpError> {
    let (host, host_header, port) = authority(url)?;
    let shown = format!("{}://{host_header}", url.scheme());
    let tls = match url.scheme() {
        "https" => Some(tls.ok_or_else(|| HttpError::Url(format!("{shown}: no TLS configuration")))?),
        "http" => None,
        other => return Err(HttpError::Url(format!("unsupported scheme {other}"))),
    };
    let work = async {
        let io = connect(&host, port, tls, timeout).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| HttpError::Request(shown.clone(), e.to_string()))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let mut builder = http::Request::builder().method(method).uri(path).header(http::header::HOST, &host_header);
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| HttpError::Request(shown.clone(), e.to_string()))?;
        let result = async {
            let response =
                sender.send_request(request).await.map_err(|e| HttpError::Request(shown.clone(), e.to_string()))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| HttpError::Request(shown.clone(), format!("reading the answer: {e}")))?
                .to_bytes();
            Ok(Answer { status, body })
        }
        .await;
        driver.abort();
        result
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| HttpError::Timeout(shown.clone(), timeout))?
}
