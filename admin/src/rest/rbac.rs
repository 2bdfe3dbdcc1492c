//! `/rest/rbac/...` (super users): the RBAC grants (list, add, remove) and the sync state per
//! cluster. Changes reach the clusters through [`crate::rbac`].
use axum::extract::{Path, Query, State};
use axum::Json;
use bcs_shared::identity::plain_user_name;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extract::{required_field, Caller, JsonBody};
use super::validate;
use super::AppState;
use crate::rbac::{subscription::valid_namespace, templates};
use crate::store::model::{grant_source, Grant, NewGrant};
use crate::store::StoreError;

#[derive(Serialize)]
pub struct GrantView {
    id: i64,
    user_name: String,
    cluster_id: String,
    /// Empty: the cluster scope.
    namespace: String,
    role: String,
    cluster_role: String,
    source: String,
    created_at: String,
}

impl From<Grant> for GrantView {
    fn from(g: Grant) -> Self {
        GrantView {
            id: g.id,
            cluster_role: templates::cluster_role_name(&g.role),
            user_name: g.user_name,
            cluster_id: g.cluster_id,
            namespace: g.namespace,
            role: g.role,
            source: g.source,
            created_at: super::views::time(g.created_at),
        }
    }
}

#[derive(Deserialize, Default)]
pub struct ListQuery {
    user_name: Option<String>,
    cluster_id: Option<String>,
}

/// `GET /rest/rbac/grants[?user_name=&cluster_id=]`: every grant, oldest first.
pub async fn list(
    State(app): State<AppState>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<GrantView>>, ApiError> {
    caller.require_super()?;
    let grants = app.store.grants().await?;
    Ok(Json(
        grants
            .into_iter()
            .filter(|g| {
                query.user_name.as_deref().is_none_or(|u| g.user_name == u || g.user_name == plain_user_name(u))
            })
            .filter(|g| query.cluster_id.as_deref().is_none_or(|c| g.cluster_id == c))
            .map(GrantView::from)
            .collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddGrant {
    user_name: Option<String>,
    cluster_id: Option<String>,
    role: Option<String>,
    namespace: Option<String>,
}

/// `POST /rest/rbac/grants`: `{"user_name", "cluster_id", "role", "namespace"?}`.
pub async fn add(
    State(app): State<AppState>,
    caller: Caller,
    body: JsonBody<AddGrant>,
) -> Result<Json<GrantView>, ApiError> {
    caller.require_super()?;
    let body = body.required()?;
    let user_name = required_field("user_name", body.user_name)?.trim().to_owned();
    let cluster_id = required_field("cluster_id", body.cluster_id)?.trim().to_owned();
    let role = required_field("role", body.role)?;
    let role = templates::parse_role(&role)
        .ok_or_else(|| ApiError::validation("role", format_args!("must be one of {}", templates::ROLES.join(", "))))?;
    let namespace = body.namespace.map(|n| n.trim().to_owned()).unwrap_or_default();
    if !namespace.is_empty() && !valid_namespace(&namespace) {
        return Err(ApiError::validation("namespace", "must be a Kubernetes namespace name (1 to 63 of [a-z0-9-])"));
    }
    // `bob` is `plain:bob` as in /rest/users/{user_name}; a name with ':' is taken as it is.
    let user = if user_name.contains(':') {
        app.store.user_by_name(&user_name).await?
    } else {
        validate::name("user_name", &user_name)?;
        match app.store.user_by_name(&plain_user_name(&user_name)).await? {
            Some(user) => Some(user),
            None => app.store.user_by_name(&user_name).await?,
        }
    };
    let user = user.ok_or_else(|| {
        ApiError::not_found("USER_NOT_FOUND", format_args!("user with user_name={user_name} not found"))
    })?;
    if cluster_id != "*" {
        validate::id("cluster_id", &cluster_id, 200)?;
    }
    let not_found = ApiError::not_found("CLUSTER_NOT_FOUND", format_args!("cluster {cluster_id} not found"));
    let new = NewGrant {
        user_name: user.name,
        cluster_id,
        namespace,
        role: role.to_owned(),
        source: grant_source::REST.to_owned(),
    };
    // A grant in one cluster is stored only in the transaction that finds the cluster there.
    let added = if new.cluster_id == "*" {
        app.store.add_grant(new, crate::now()).await.map(Some)
    } else {
        app.store.add_cluster_grant(new, crate::now()).await
    };
    let grant = added
        .map_err(|e| match e {
            StoreError::Conflict(what) => ApiError::conflict("GRANT_ALREADY_EXISTS", what),
            e => e.into(),
        })?
        .ok_or(not_found)?;
    crate::rbac::grants_written(&app, Some(&grant.cluster_id)).await;
    tracing::info!(grant = grant.id, user = %grant.user_name, cluster = %grant.cluster_id, role = %grant.role,
        by = %caller.user.name, "added an RBAC grant");
    Ok(Json(grant.into()))
}

/// `DELETE /rest/rbac/grants/{grant_id}`: removes a grant of any source (a `conf` grant comes
/// back when the config is applied again, a subscription grant when the service resends it).
pub async fn remove(
    State(app): State<AppState>,
    caller: Caller,
    Path(grant_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_super()?;
    let id: i64 = grant_id.parse().map_err(|_| {
        ApiError::bad_request("GRANT_ID_INVALID", format_args!("grant id {grant_id:?} is not an integer"))
    })?;
    if !app.store.remove_grant(id).await? {
        return Err(ApiError::not_found("GRANT_NOT_FOUND", format_args!("grant {id} not found")));
    }
    crate::rbac::grants_written(&app, None).await;
    tracing::info!(grant = id, by = %caller.user.name, "removed an RBAC grant");
    Ok(Json(serde_json::json!({})))
}

/// `GET /rest/rbac/status`: whether the sync runs here, and per cluster the last success, the
/// last error and the objects created, updated and deleted since start.
pub async fn status(State(app): State<AppState>, caller: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_super()?;
    let leader = app.leader.load(std::sync::atomic::Ordering::SeqCst);
    Ok(Json(app.rbac.status(leader)))
}
