//! `/healthz` and `/metrics` of the admin listener.
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;

use super::AppState;

/// 200 while the store answers; 503 with the reason when it does not. ZooKeeper does not
/// change the status (admin serves REST without it; proxies keep the last drivers): its state
/// is reported in `zookeeper` (`{"state": "disabled"}` without ZooKeeper), and `leader` says
/// whether this instance runs the singleton jobs.
pub async fn healthz(State(app): State<AppState>) -> impl IntoResponse {
    let (status, mut body) = match app.store.ping().await {
        Ok(()) => (StatusCode::OK, serde_json::json!({"healthy": true, "store": app.store.describe()})),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"healthy": false, "store": app.store.describe(), "message": e.to_string()}),
        ),
    };
    body["zookeeper"] = app.zookeeper.as_ref().map_or_else(|| serde_json::json!({"state": "disabled"}), |z| z.json());
    body["leader"] = app.leader.load(std::sync::atomic::Ordering::SeqCst).into();
    (status, Json(body))
}

/// Prometheus text format.
pub async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.metrics.render())
}
