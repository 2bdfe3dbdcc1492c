//! The agent's HTTP server on `--listen-addr`: `/metrics` (Prometheus text), `/healthz` (the
//! process runs) and `/readyz` (a report was accepted, and bcs-api has not refused one since:
//! a refusal means the agent's register token or cluster id is wrong, which only its
//! configuration can mend; an unreachable or failing bcs-api leaves it ready).
use std::convert::Infallible;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, Gauge, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};

/// Why a report failed: the `reason` label of `bcs_kube_agent_reports_failed_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The kubeconfig, token or CA file could not be read.
    KubeAccess,
    /// The register token file could not be read, or holds no valid token.
    RegisterToken,
    /// Endpoints `default/kubernetes` could not be read.
    Endpoints,
    /// No apiserver address answered the probe.
    NoAddress,
    /// bcs-api could not be reached, or did not answer in time.
    Network,
    /// bcs-api refused the report (4xx).
    Rejected,
    /// bcs-api failed (5xx), or asked for a retry (408, 429).
    ServerError,
    /// `--server-cert-file` could not be read, or holds no certificate.
    ServerCert,
}

impl Failure {
    pub const ALL: [Failure; 8] = [
        Failure::KubeAccess,
        Failure::RegisterToken,
        Failure::Endpoints,
        Failure::NoAddress,
        Failure::Network,
        Failure::Rejected,
        Failure::ServerError,
        Failure::ServerCert,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Failure::KubeAccess => "kube_access",
            Failure::RegisterToken => "register_token",
            Failure::Endpoints => "endpoints",
            Failure::NoAddress => "no_address",
            Failure::Network => "network",
            Failure::Rejected => "rejected",
            Failure::ServerError => "server_error",
            Failure::ServerCert => "server_cert",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub sent: IntCounter,
    pub failed: IntCounterVec,
    pub last_success: Gauge,
    pub addresses: Gauge,
    /// What the last answer of bcs-api said: [`NONE_YET`], [`ACCEPTED`] or [`REFUSED`].
    verdict: AtomicU8,
}

const NONE_YET: u8 = 0;
const ACCEPTED: u8 = 1;
const REFUSED: u8 = 2;

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let sent = IntCounter::new("bcs_kube_agent_reports_sent_total", "Reports bcs-api accepted").expect("metric");
        let failed = IntCounterVec::new(
            Opts::new("bcs_kube_agent_reports_failed_total", "Reports that failed, by reason"),
            &["reason"],
        )
        .expect("metric");
        let last_success = Gauge::new(
            "bcs_kube_agent_last_success_timestamp_seconds",
            "Unix time of the last report bcs-api accepted (0: none yet)",
        )
        .expect("metric");
        let addresses =
            Gauge::new("bcs_kube_agent_reported_addresses", "Apiserver addresses in the last report").expect("metric");
        for f in Failure::ALL {
            failed.with_label_values(&[f.label()]);
        }
        registry.register(Box::new(sent.clone())).expect("register");
        registry.register(Box::new(failed.clone())).expect("register");
        registry.register(Box::new(last_success.clone())).expect("register");
        registry.register(Box::new(addresses.clone())).expect("register");
        Arc::new(Metrics { registry, sent, failed, last_success, addresses, verdict: AtomicU8::new(NONE_YET) })
    }

    pub fn failure(&self, reason: Failure) {
        self.failed.with_label_values(&[reason.label()]).inc();
    }

    pub fn success(&self, addresses: usize) {
        self.sent.inc();
        self.addresses.set(addresses as f64);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.last_success.set(now.as_secs() as f64);
        self.verdict.store(ACCEPTED, Ordering::Relaxed);
    }

    /// bcs-api refused a report (4xx): not ready until one is accepted.
    pub fn refused(&self) {
        self.verdict.store(REFUSED, Ordering::Relaxed);
    }

    pub fn ready(&self) -> bool {
        self.verdict.load(Ordering::Relaxed) == ACCEPTED
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Serves until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(answer(&metrics, req.method(), req.uri().path())) }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(60), conn).await;
        });
    }
}

fn answer(metrics: &Metrics, method: &hyper::Method, path: &str) -> hyper::Response<Full<Bytes>> {
    let (status, content_type, body) = match (method.as_str(), path) {
        ("GET" | "HEAD", "/metrics") => (200, "text/plain; version=0.0.4", metrics.render()),
        ("GET" | "HEAD", "/healthz") => (200, "text/plain", "ok\n".to_owned()),
        ("GET" | "HEAD", "/readyz") => match metrics.verdict.load(Ordering::Relaxed) {
            ACCEPTED => (200, "text/plain", "ok\n".to_owned()),
            REFUSED => (503, "text/plain", "bcs-api refused the last report (see the log)\n".to_owned()),
            _ => (503, "text/plain", "no report accepted yet\n".to_owned()),
        },
        _ => (404, "text/plain", "not found\n".to_owned()),
    };
    hyper::Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("response")
}
