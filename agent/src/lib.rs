//! `bcs-kube-agent`: runs in (or next to) a Kubernetes cluster and reports the cluster's
//! apiserver addresses, CA and service-account token to bcs-api, at start and every period
//! (reference §4; DESIGN §1).
//!
//! | module | what |
//! |---|---|
//! | [`cli`] | the original's flags and environment, checked at start |
//! | [`kube`] | the apiserver, its CA and the token (re-read before every report); Endpoints |
//! | [`probe`] | which apiserver addresses answer a TLS handshake |
//! | [`sticky`] | which of them a report carries: one reported before, while listed, until it fails three reports in a row |
//! | [`report`] | the report loop: `PUT /rest/clusters/{id}/credentials`, retries, backoff |
//! | [`http`] | a small HTTP/1.1 client over rustls (ring) |
//! | [`metrics`] | `/metrics`, `/healthz`, `/readyz` on `--listen-addr` |
pub mod cli;
pub mod http;
pub mod kube;
pub mod metrics;
pub mod probe;
pub mod report;
pub mod sticky;

use std::process::ExitCode;

/// Starts the agent with checked `settings` and runs until SIGTERM or SIGINT (exit 0). Start-up
/// failures (a kubeconfig that cannot be read, the listen address is taken) exit 1. In a
/// cluster, a service-account directory not readable yet is waited for: the token Secret the
/// manifest mounts is filled by Kubernetes after it is created, perhaps after the pod starts.
pub async fn run(settings: cli::Settings) -> ExitCode {
    if let Err(e) = kube::load(&settings.source) {
        if let cli::Source::Kubeconfig(_) = settings.source {
            tracing::error!(error = %e, "cannot read the cluster's access; stopping");
            return ExitCode::from(1);
        }
        tracing::warn!(error = %e, "cannot read the service account's token and CA yet; retrying");
    }
    if settings.report_url.scheme() == "http" {
        tracing::warn!(url = %settings.report_url, "bcs-api is reached over plain http: the register token and the cluster's token travel unencrypted");
    }
    if settings.insecure_skip_verify {
        tracing::warn!("--insecureSkipVerify: bcs-api's certificate is not verified");
    }
    let metrics = metrics::Metrics::new();
    let listener = match tokio::net::TcpListener::bind(settings.listen_addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(address = %settings.listen_addr, error = %e, "cannot listen for /metrics; stopping");
            return ExitCode::from(1);
        }
    };
    let reporter = match report::Reporter::new(settings.clone(), metrics.clone()) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "stopping");
            return ExitCode::from(1);
        }
    };
    tracing::info!(
        cluster = %settings.cluster_id,
        report_to = %settings.report_url,
        period = ?settings.period,
        metrics = %settings.listen_addr,
        source = %match &settings.source {
            cli::Source::InCluster { host, port, .. } => format!("in cluster ({host}:{port})"),
            cli::Source::Kubeconfig(p) => format!("kubeconfig {}", p.display()),
        },
        "bcs-kube-agent started"
    );
    let server = tokio::spawn(metrics::serve(listener, metrics));
    let (mut term, mut int) = match (
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            tracing::error!("cannot install signal handlers; stopping");
            return ExitCode::from(1);
        }
    };
    tokio::select! {
        _ = reporter.run() => {}
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    server.abort();
    ExitCode::SUCCESS
}
