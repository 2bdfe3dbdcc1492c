//! A minimal Kubernetes API client for the reconciler: one HTTP/1.1 keep-alive connection to
//! a cluster's apiserver with the cluster's stored token, TLS that trusts only the cluster's
//! CA and verifies the name `kubernetes` (as the proxy does), every step bounded in time.
use std::sync::Arc;
use std::time::Duration;

use bcs_shared::secret::Secret;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BODY: usize = 32 << 20;

/// Where and how to reach one cluster.
pub struct Target {
    /// `https://host:port` (or `http://`), tried in order.
    pub addresses: Vec<String>,
    pub ca_pem: String,
    pub token: Secret,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct Kube {
    sender: SendRequest<Full<Bytes>>,
    authority: String,
    token: Secret,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Kube {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

fn tls_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = bcs_shared::tls::roots_from_pem(ca_pem.as_bytes()).map_err(|e| format!("the cluster CA {e}"))?;
    Ok(bcs_shared::tls::http1_client(roots))
}

impl Kube {
    /// Connects to the first address that answers (TCP and TLS within [`CONNECT_TIMEOUT`]),
    /// trying them in order from the `start`th (modulo their number) round to the one before.
    pub async fn connect(target: &Target, start: usize) -> Result<Kube, String> {
        if target.addresses.is_empty() {
            return Err("the cluster reported no apiserver address".into());
        }
        let mut errors = Vec::new();
        let first = start % target.addresses.len();
        for address in target.addresses[first..].iter().chain(&target.addresses[..first]) {
            match tokio::time::timeout(CONNECT_TIMEOUT, Self::connect_one(address, target)).await {
                Ok(Ok(kube)) => return Ok(kube),
                Ok(Err(e)) => errors.push(format!("{address}: {e}")),
                Err(_) => errors.push(format!("{address}: no connection within {CONNECT_TIMEOUT:?}")),
            }
        }
        Err(errors.join("; "))
    }

    async fn connect_one(address: &str, target: &Target) -> Result<Kube, String> {
        let url = url::Url::parse(address).map_err(|e| format!("bad address: {e}"))?;
        let tls = match url.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(format!("unsupported scheme {other}")),
        };
        let host = url.host_str().ok_or("no host")?.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = url.port_or_known_default().ok_or("no port")?;
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = if tls {
            let connector = tokio_rustls::TlsConnector::from(tls_config(&target.ca_pem)?);
            let name = ServerName::try_from("kubernetes").expect("a valid DNS name");
            Box::new(connector.connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?)
        } else {
            Box::new(tcp)
        };
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| e.to_string())?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let authority = url[url::Position::BeforeHost..url::Position::AfterPort].to_owned();
        Ok(Kube { sender, authority, token: target.token.clone(), driver })
    }

    /// Sends one request (JSON body if given); the status and the JSON answer (`Null` when
    /// empty or not JSON). Bounded by [`REQUEST_TIMEOUT`].
    pub async fn request(&mut self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value), String> {
        let work = async {
            self.sender.ready().await.map_err(|e| format!("connection lost: {e}"))?;
            let bytes = body.map(|b| Bytes::from(serde_json::to_vec(b).expect("JSON"))).unwrap_or_default();
            let mut request = http::Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, &self.authority)
                .header(http::header::AUTHORIZATION, format!("Bearer {}", self.token.expose()))
                .header(http::header::ACCEPT, "application/json")
                .header(http::header::USER_AGENT, "bcs-api-rbac");
            if body.is_some() {
                request = request.header(http::header::CONTENT_TYPE, "application/json");
            }
            let request = request.body(Full::new(bytes)).map_err(|e| e.to_string())?;
            let response = self.sender.send_request(request).await.map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let bytes = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, work).await {
            Ok(result) => result.map_err(|e: String| format!("{method} {path}: {e}")),
            Err(_) => Err(format!("{method} {path}: no answer within {REQUEST_TIMEOUT:?}")),
        }
    }
}

/// The message of a Kubernetes `Status` answer, or the status code.
pub fn describe(status: u16, body: &Value) -> String {
    match body["message"].as_str() {
        Some(message) => format!("{status}: {message}"),
        None => format!("status {status}"),
    }
}
