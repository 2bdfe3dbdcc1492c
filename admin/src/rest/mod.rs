//! The admin REST API (DESIGN §4): routes, shared state, and the fallbacks that keep every
//! answer in the original's error shape.
//!
//! | stage | module |
//! |---|---|
//! | body and caller | [`extract`] |
//! | field checks | [`validate`] |
//! | handlers | [`users`], [`clusters`], [`register_tokens`], [`credentials`], [`onboarding`], [`rbac`], [`ops`] |
//! | answer shapes | [`views`] |
//! | error -> status | [`error`] |
pub mod clusters;
pub mod credentials;
pub mod error;
pub mod extract;
pub mod listener;
pub mod onboarding;
pub mod ops;
pub mod rbac;
pub mod register_tokens;
pub mod users;
pub mod validate;
pub mod views;

use std::sync::Arc;

use axum::http::{Method, Uri};
use axum::routing::{get, post};
use axum::Router;

use crate::metrics::Metrics;
use crate::sealer::Sealer;
use crate::snapshot::Publisher;
use crate::store::Store;
use error::ApiError;

pub struct App {
    pub store: Store,
    pub sealer: Sealer,
    pub metrics: Metrics,
    /// Base URL of the gateway's routes, for `client_credentials.server_address`.
    pub external_url: String,
    /// PEM of the CA agents must trust to reach the gateway, for `agent.yaml`
    /// ([`onboarding::gateway_ca`]); None without TLS.
    pub gateway_ca: Option<String>,
    /// The proxies' snapshot: a handler that writes what a proxy must see (users, user
    /// tokens, clusters, credentials) holds `snapshots.change()` across the write, which asks
    /// for a rebuild when the write is over, even if the handler is dropped during it.
    pub snapshots: Arc<Publisher>,
    /// True while this instance may run the singleton jobs (RBAC sync). Without ZooKeeper the
    /// only instance is the leader; with it, the ZooKeeper leader lock sets it.
    pub leader: Arc<std::sync::atomic::AtomicBool>,
    /// ZooKeeper's state for `/healthz`; None when `zk_config.bcs_zookeeper` is empty.
    pub zookeeper: Option<Arc<crate::zk::Status>>,
    /// RBAC sync: grants changed (`rbac::grants_written`), sync state per cluster.
    pub rbac: Arc<crate::rbac::Rbac>,
    /// `admin_config.max_clusters_per_user`; None: no limit.
    pub max_clusters_per_user: Option<u64>,
}

pub type AppState = Arc<App>;

/// Every route of the admin listener. Trailing slashes are trimmed before routing (see
/// [`crate::server`]), so `/rest/users/` and `/rest/users` are one route, as in the original.
pub fn router(app: AppState) -> Router {
    let rest = Router::new()
        .route("/users", post(users::create))
        .route("/users/{user_name}", get(users::get))
        .route("/users/{user_id}/tokens", post(users::create_token).get(users::list_tokens))
        .route("/users/{user_id}/tokens/{token_id}", axum::routing::delete(users::revoke_token))
        .route("/clusters", post(clusters::create_plain).get(clusters::list))
        .route("/clusters/bcs", post(clusters::create_bcs))
        .route("/clusters/bcs/query_by_id", get(clusters::query_by_id))
        .route("/clusters/bcs/query_by_cluster_id", get(clusters::query_by_cluster_id))
        .route("/clusters/{cluster_id}", get(clusters::get).delete(clusters::delete))
        .route("/clusters/{cluster_id}/register_tokens", get(register_tokens::get).post(register_tokens::create))
        .route("/clusters/{cluster_id}/register_tokens/rotate", post(register_tokens::rotate))
        .route("/clusters/{cluster_id}/credentials", get(credentials::get).put(credentials::put))
        .route("/clusters/{cluster_id}/client_credentials", get(credentials::client))
        .route("/clusters/{cluster_id}/agent.yaml", get(onboarding::agent_yaml))
        .route("/rbac/grants", get(rbac::list).post(rbac::add))
        .route("/rbac/grants/{grant_id}", axum::routing::delete(rbac::remove))
        .route("/rbac/status", get(rbac::status));
    Router::new()
        .nest("/rest", rest)
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(ops::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(error::json_rejections))
        // Every answer, the fallbacks' 404 and 405 included (a layer on the nested routes
        // misses those).
        .layer(axum::middleware::map_response(no_store))
        .layer(axum::middleware::from_fn_with_state(app.clone(), crate::metrics::track))
        .with_state(app)
}

/// REST answers carry tokens (new user tokens, register tokens, a cluster's token) and what
/// only their caller may see: no cache keeps them.
async fn no_store(mut response: axum::response::Response) -> axum::response::Response {
    response.headers_mut().insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    response
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found("NOT_FOUND", format_args!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError {
        status: axum::http::StatusCode::METHOD_NOT_ALLOWED,
        code_name: "METHOD_NOT_ALLOWED",
        message: format!("errcode: 1405061, {method} is not allowed on {}", uri.path()),
    }
}
