//! Prometheus metrics of the admin and its access log.
//!
//! As the original: `bcs_api_request_count_total`, `bcs_api_request_err_count_total`,
//! `bcs_api_request_latency_seconds` and `bcs_api_request_error_latency_seconds` (16 exponential
//! buckets from 0.25 ms), with `type="rest"`, plus the matched `route` and the `code`.
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};

use crate::rest::AppState;

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    errors: IntCounterVec,
    latency: HistogramVec,
    error_latency: HistogramVec,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let labels = &["type", "route", "method", "code"];
        let buckets = prometheus::exponential_buckets(0.00025, 2.0, 16).expect("valid buckets");
        let requests =
            IntCounterVec::new(Opts::new("bcs_api_request_count_total", "Requests answered by the admin API"), labels)
                .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new("bcs_api_request_err_count_total", "Requests answered with a 4xx or 5xx status"),
            labels,
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new("bcs_api_request_latency_seconds", "Time to answer a request").buckets(buckets.clone()),
            labels,
        )
        .expect("valid metric");
        let error_latency = HistogramVec::new(
            HistogramOpts::new("bcs_api_request_error_latency_seconds", "Time to answer a failed request")
                .buckets(buckets),
            labels,
        )
        .expect("valid metric");
        for c in [&requests, &errors] {
            registry.register(Box::new(c.clone())).expect("registered once");
        }
        for h in [&latency, &error_latency] {
            registry.register(Box::new(h.clone())).expect("registered once");
        }
        Metrics { registry, requests, errors, latency, error_latency }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    fn observe(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let code = status.to_string();
        let labels = ["rest", route, method, code.as_str()];
        self.requests.with_label_values(&labels).inc();
        self.latency.with_label_values(&labels).observe(seconds);
        if status >= 400 {
            self.errors.with_label_values(&labels).inc();
            self.error_latency.with_label_values(&labels).observe(seconds);
        }
    }
}

/// Counts and times every request and writes one access-log line (method, path, status,
/// duration: never a header or a body, so never a token).
pub async fn track(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |m| m.as_str()).to_owned();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    app.metrics.observe(&route, method.as_str(), status, elapsed.as_secs_f64());
    tracing::info!(target: "bcs_admin::access", %method, %path, status, millis = elapsed.as_secs_f64() * 1e3, "request");
    response
}
