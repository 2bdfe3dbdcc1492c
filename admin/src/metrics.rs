//! Prometheus metrics of the admin and its access log.
//!
//! As the original: `bcs_api_request_count_total`, `bcs_api_request_err_count_total`,
//! `bcs_api_request_latency_seconds` and `bcs_api_request_error_latency_seconds` (exponential
//! buckets from 0.25 ms: the original's 16 to 8.192 s, and four more to 131 s), with `type="rest"`, plus the matched `route` and the `code`.
//!
//! Snapshots ([`SnapshotMetrics`]): `bcs_api_snapshot_revision`, `bcs_api_snapshot_peers`,
//! `bcs_api_snapshot_oldest_acked_revision`, `bcs_api_snapshot_build_seconds` and
//! `bcs_api_snapshot_builds_total{result}`. Revisions are milliseconds since the epoch, so
//! `revision - oldest_acked_revision` is roughly how far behind the slowest proxy is, in ms.
//!
//! The proxy it supervises ([`ProxyMetrics`]): `bcs_api_proxy_running`, `bcs_api_proxy_exits_total`.
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::rest::AppState;

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    errors: IntCounterVec,
    latency: HistogramVec,
    error_latency: HistogramVec,
    pub snapshot: SnapshotMetrics,
    pub rbac: RbacMetrics,
}

/// The snapshot publisher's and server's metrics (clones share the same series).
#[derive(Clone)]
pub struct SnapshotMetrics {
    /// Revision of the snapshot being served.
    pub revision: IntGauge,
    /// Connected proxies that completed the hello.
    pub peers: IntGauge,
    /// The lowest revision any connected proxy has acknowledged (0: none has, or no proxy).
    pub oldest_acked_revision: IntGauge,
    /// Time to read the store and build one snapshot.
    pub build_seconds: Histogram,
    /// Builds by `result`: `published`, `unchanged`, `invalid`, `failed`.
    pub builds: IntCounterVec,
}

/// `metric`, registered in `registry` (each name once per registry).
pub fn registered<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry.register(Box::new(metric.clone())).expect("registered once");
    metric
}

/// A gauge named `name`, registered in `registry`.
pub fn int_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    registered(registry, IntGauge::new(name, help).expect("valid metric"))
}

impl SnapshotMetrics {
    fn new(registry: &Registry) -> Self {
        let gauge = |name: &str, help: &str| int_gauge(registry, name, help);
        let revision = gauge("bcs_api_snapshot_revision", "Revision of the snapshot served to proxies");
        let peers = gauge("bcs_api_snapshot_peers", "Proxies connected to the snapshot socket");
        let oldest_acked_revision = gauge(
            "bcs_api_snapshot_oldest_acked_revision",
            "Lowest snapshot revision acknowledged by a connected proxy (0: none)",
        );
        let buckets = prometheus::exponential_buckets(0.0005, 2.0, 14).expect("valid buckets");
        let build_seconds = Histogram::with_opts(
            HistogramOpts::new("bcs_api_snapshot_build_seconds", "Time to read the store and build a snapshot")
                .buckets(buckets),
        )
        .expect("valid metric");
        let build_seconds = registered(registry, build_seconds);
        let builds =
            IntCounterVec::new(Opts::new("bcs_api_snapshot_builds_total", "Snapshot builds by result"), &["result"])
                .expect("valid metric");
        let builds = registered(registry, builds);
        // Each result from 0, so that a first failure is an increase an alert sees (a series
        // born at 1 has none).
        for result in ["published", "unchanged", "invalid", "failed"] {
            builds.with_label_values(&[result]);
        }
        SnapshotMetrics { revision, peers, oldest_acked_revision, build_seconds, builds }
    }
}

/// The proxy supervisor's metrics (registered whenever `admin_config.spawn_proxy` is on, binary
/// found or not).
#[derive(Clone)]
pub struct ProxyMetrics {
    /// 1 while the proxy bcs-api started runs.
    pub running: IntGauge,
    /// Proxies bcs-api started that exited while it ran, and starts that failed.
    pub exits: IntCounter,
}

impl ProxyMetrics {
    pub fn new(registry: &Registry) -> Self {
        let running =
            int_gauge(registry, "bcs_api_proxy_running", "1 while the bcs-api-proxy that bcs-api started runs");
        let exits = IntCounter::new(
            "bcs_api_proxy_exits_total",
            "bcs-api-proxy processes that exited while bcs-api ran, and starts that failed (each is restarted)",
        )
        .expect("valid metric");
        ProxyMetrics { running, exits: registered(registry, exits) }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let labels = &["type", "route", "method", "code"];
        // The original's 16 buckets (0.25 ms to 8.192 s) and four more, to 131 s, as the proxy's.
        let buckets = prometheus::exponential_buckets(0.00025, 2.0, 20).expect("valid buckets");
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
        let (requests, errors) = (registered(&registry, requests), registered(&registry, errors));
        let (latency, error_latency) = (registered(&registry, latency), registered(&registry, error_latency));
        let snapshot = SnapshotMetrics::new(&registry);
        let rbac = RbacMetrics::new(&registry);
        Metrics { registry, requests, errors, latency, error_latency, snapshot, rbac }
    }
}

impl Metrics {
    /// For collectors registered by other modules (`crate::zk`).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

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

/// The method as a metric label: any name is a valid method, so the others share one label
/// rather than add series without end.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
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
    app.metrics.observe(&route, method_label(&method), status, elapsed.as_secs_f64());
    tracing::info!(target: "bcs_admin::access", %method, %path, status, millis = elapsed.as_secs_f64() * 1e3, "request");
    response
}

/// The RBAC sync's metrics (issue 7; clones share the same series).
#[derive(Clone)]
pub struct RbacMetrics {
    /// Reconciles by `cluster` and `result` (`ok`, `error`).
    pub reconciles: IntCounterVec,
    /// Objects changed in clusters, by `cluster` and `action` (`created`, `updated`, `deleted`).
    pub objects: IntCounterVec,
    /// Unix time of the last successful reconcile, by `cluster`.
    pub last_success: prometheus::IntGaugeVec,
    /// Subscription messages by `result`: `acked`, `rejected`, `ignored`.
    pub messages: IntCounterVec,
    /// 1 while the subscription is connected.
    pub connected: IntGauge,
    /// 1 while this instance should hold the subscription (it leads, and `rbac.turn_on_auth`),
    /// so that an alert tells a subscription that is down from one that is not run here.
    pub wanted: IntGauge,
}

impl RbacMetrics {
    fn new(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            registered(registry, IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
        };
        let reconciles =
            counter("bcs_api_rbac_reconciles_total", "RBAC reconciles of a cluster by result", &["cluster", "result"]);
        let objects = counter(
            "bcs_api_rbac_objects_total",
            "ClusterRoles and bindings the RBAC sync created, updated or deleted",
            &["cluster", "action"],
        );
        let messages = counter(
            "bcs_api_rbac_subscription_messages_total",
            "Permission subscription data messages by result",
            &["result"],
        );
        let last_success = prometheus::IntGaugeVec::new(
            Opts::new("bcs_api_rbac_last_success_timestamp_seconds", "Unix time of the last successful RBAC reconcile"),
            &["cluster"],
        )
        .expect("valid metric");
        let last_success = registered(registry, last_success);
        let connected = int_gauge(
            registry,
            "bcs_api_rbac_subscription_connected",
            "1 while the permission subscription is connected",
        );
        let wanted = int_gauge(
            registry,
            "bcs_api_rbac_subscription_wanted",
            "1 while this instance should hold the permission subscription (it leads, and rbac.turn_on_auth)",
        );
        RbacMetrics { reconciles, objects, last_success, messages, connected, wanted }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_usual_methods_get_their_own_label() {
        use axum::http::Method;
        assert_eq!(super::method_label(&Method::GET), "GET");
        assert_eq!(super::method_label(&Method::PATCH), "PATCH");
        for name in ["FOO1", "FOO2", "PROPFIND"] {
            assert_eq!(super::method_label(&Method::from_bytes(name.as_bytes()).unwrap()), "other");
        }
    }
}
