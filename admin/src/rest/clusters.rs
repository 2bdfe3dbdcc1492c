//! `/rest/clusters/...`: creating, finding, listing and deleting clusters.
use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::Json;
use bcs_shared::secret::random_alphanumeric;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{required_field, Caller, JsonBody};
use super::validate;
use super::views::ClusterView;
use super::AppState;
use crate::store::model::{cluster_type, provider, BcsClusterInfo, Cluster};
use crate::store::StoreError;

const CLUSTER_ID_MAX: usize = 100;
const PROJECT_ID_MAX: usize = 64;

#[derive(Deserialize)]
pub struct CreatePlain {
    id: Option<String>,
}

/// `POST /rest/clusters/`: a plain cluster `plain-<id>`.
pub async fn create_plain(
    State(app): State<AppState>,
    caller: Caller,
    body: JsonBody<CreatePlain>,
) -> Result<Json<ClusterView>, ApiError> {
    let id = required_field("id", body.required()?.id)?;
    validate::id("id", &id, CLUSTER_ID_MAX)?;
    let cluster = new_cluster(format!("plain-{id}"), provider::PLAIN, cluster_type::K8S, &caller);
    let cluster = create(&app, &caller, cluster, None).await?;
    tracing::info!(cluster = %cluster.id, by = %caller.user.name, "created cluster");
    Ok(Json(cluster.into()))
}

#[derive(Deserialize)]
pub struct CreateBcs {
    id: Option<String>,
    project_id: Option<String>,
    cluster_type: Option<String>,
}

/// `POST /rest/clusters/bcs`: a cluster for a BCS (project, cluster id) pair,
/// `bcs-<id>-<8 random>`.
pub async fn create_bcs(
    State(app): State<AppState>,
    caller: Caller,
    body: JsonBody<CreateBcs>,
) -> Result<Json<ClusterView>, ApiError> {
    let body = body.required()?;
    let source_id = required_field("id", body.id)?;
    validate::id("id", &source_id, CLUSTER_ID_MAX)?;
    let project_id = required_field("project_id", body.project_id)?;
    validate::id("project_id", &project_id, PROJECT_ID_MAX)?;
    let kind = match body.cluster_type.as_deref().map(str::trim) {
        None | Some("") | Some("k8s") => cluster_type::K8S,
        Some("mesos") => cluster_type::MESOS,
        Some("tke") => cluster_type::TKE,
        Some(other) => {
            return Err(ApiError::bad_request(
                "CLUSTER_TYPE_INVALID",
                format_args!("cluster_type {other:?} is not one of k8s, mesos, tke"),
            ))
        }
    };
    let id = format!("bcs-{}-{}", source_id.to_lowercase(), random_alphanumeric(8));
    let cluster = new_cluster(id, provider::BCS, kind, &caller);
    let info = BcsClusterInfo { source_project_id: project_id, source_cluster_id: source_id };
    let cluster = create(&app, &caller, cluster, Some(info)).await?;
    tracing::info!(cluster = %cluster.id, by = %caller.user.name, "created bcs cluster");
    Ok(Json(cluster.into()))
}

/// `GET /rest/clusters/bcs/query_by_id/?project_id=&cluster_id=`.
pub async fn query_by_id(
    State(app): State<AppState>,
    _caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<ClusterView>, ApiError> {
    let project_id = required_field("project_id", q.get("project_id").cloned())?;
    let cluster_id = required_field("cluster_id", q.get("cluster_id").cloned())?;
    let cluster = app.store.bcs_cluster(Some(&project_id), &cluster_id).await?;
    found(cluster, &cluster_id)
}

/// `GET /rest/clusters/bcs/query_by_cluster_id/?cluster_id=` (a token is required, unlike the
/// original).
pub async fn query_by_cluster_id(
    State(app): State<AppState>,
    _caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<ClusterView>, ApiError> {
    let cluster_id = required_field("cluster_id", q.get("cluster_id").cloned())?;
    let cluster = app.store.bcs_cluster(None, &cluster_id).await?;
    found(cluster, &cluster_id)
}

/// `GET /rest/clusters`: every cluster.
pub async fn list(State(app): State<AppState>, _caller: Caller) -> Result<Json<Vec<ClusterView>>, ApiError> {
    Ok(Json(app.store.clusters().await?.into_iter().map(Into::into).collect()))
}

/// `GET /rest/clusters/{cluster_id}`.
pub async fn get(
    State(app): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ClusterView>, ApiError> {
    Ok(Json(load(&app, &id).await?.into()))
}

/// `DELETE /rest/clusters/{cluster_id}` (its creator or a super user): the cluster with its
/// register token and credentials.
pub async fn delete(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let cluster = load(&app, &id).await?;
    require_creator_or_super(&caller, &cluster)?;
    let change = app.snapshots.change();
    // This cluster only: not one that took its id after a delete since `load`.
    if !app.store.delete_cluster(&cluster.id, &cluster.identifier).await? {
        change.nothing();
        return Err(not_found(&id));
    }
    drop(change);
    tracing::info!(cluster = %cluster.id, by = %caller.user.name, "deleted cluster");
    Ok(Json(serde_json::json!({})))
}

/// The cluster `id`, or 404.
pub async fn load(app: &AppState, id: &str) -> Result<Cluster, ApiError> {
    app.store.cluster(id).await?.ok_or_else(|| not_found(id))
}

/// Register tokens and deletion belong to the cluster's creator and to super users.
pub fn require_creator_or_super(caller: &Caller, cluster: &Cluster) -> Result<(), ApiError> {
    if caller.is_super() || caller.user.id == cluster.creator_id {
        Ok(())
    } else {
        Err(ApiError::forbidden(format_args!("only the creator of cluster {} or a super user may do this", cluster.id)))
    }
}

pub fn not_found(id: &str) -> ApiError {
    ApiError::not_found("CLUSTER_NOT_FOUND", format_args!("cluster {id} not found"))
}

fn found(cluster: Option<Cluster>, id: &str) -> Result<Json<ClusterView>, ApiError> {
    cluster.map(|c| Json(c.into())).ok_or_else(|| not_found(id))
}

fn new_cluster(id: String, provider: i64, cluster_type: i64, caller: &Caller) -> Cluster {
    Cluster {
        identifier: format!("{}-{}", id.to_lowercase(), random_alphanumeric(16)),
        id,
        provider,
        cluster_type,
        creator_id: caller.user.id,
        created_at: crate::now(),
    }
}

/// Stores a new cluster within the caller's limit (`admin_config.max_clusters_per_user`; super
/// users have none).
async fn create(
    app: &AppState,
    caller: &Caller,
    cluster: Cluster,
    bcs: Option<BcsClusterInfo>,
) -> Result<Cluster, ApiError> {
    let most = if caller.user.is_super_user { None } else { app.max_clusters_per_user };
    let change = app.snapshots.change();
    change.settle(app.store.create_cluster_within(cluster, bcs, most).await).map_err(|e| match e {
        StoreError::Conflict(what) => ApiError::conflict("CLUSTER_ALREADY_EXISTS", what),
        StoreError::OverLimit(held) => ApiError::forbidden_as(
            "CLUSTER_QUOTA_EXCEEDED",
            format_args!(
                "user {} has created {held} clusters, the most admin_config.max_clusters_per_user allows: \
                 delete one or ask a super user",
                caller.user.name
            ),
        ),
        e => e.into(),
    })
}
