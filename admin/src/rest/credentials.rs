//! `/rest/clusters/{cluster_id}/credentials` and `client_credentials`: what agents report and
//! what clients receive.
use axum::extract::{Path, State};
use axum::Json;
use bcs_shared::secret::{digest_hex, Secret};
use serde::Deserialize;

use super::clusters::load;
use super::error::ApiError;
use super::extract::{required_field, Caller, JsonBody};
use super::validate;
use super::views::{ClientCredentialsView, CredentialsView};
use super::AppState;
use crate::sealer::{cluster_token_purpose, register_token_purpose};
use crate::store::model::{Cluster, Credentials, NewCredentials};

#[derive(Deserialize)]
pub struct Report {
    register_token: Option<Secret>,
    server_addresses: Option<String>,
    cacert_data: Option<String>,
    user_token: Option<Secret>,
}

/// `PUT`: the agent's report, authenticated by the cluster's register token in the body.
pub async fn put(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: JsonBody<Report>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let report = body.required()?;
    let presented =
        report.register_token.filter(|t| !t.is_empty()).ok_or_else(|| ApiError::required("register_token"))?;
    let addresses = validate::server_addresses(&required_field("server_addresses", report.server_addresses)?)?;
    let ca = required_field("cacert_data", report.cacert_data)?;
    validate::ca_certificates(&ca)?;
    let cluster_token = report.user_token.filter(|t| !t.is_empty()).ok_or_else(|| ApiError::required("user_token"))?;
    validate::bearer_token("user_token", cluster_token.expose())?;

    let cluster = load(&app, &id).await?;
    let stored = app.store.register_token(&cluster.id).await?.ok_or_else(|| {
        ApiError::not_found("RTOKEN_NOT_FOUND", format_args!("cluster {} has no register token", cluster.id))
    })?;
    let expected = app.sealer.open(&register_token_purpose(&cluster.id), &stored.token_sealed)?;
    if !expected.ct_eq(presented.expose()) {
        // Another cluster's token (an agent deployed with the wrong Secret) is 403; any other
        // value 401. Only digests are compared; the presented value is never logged.
        if let Some(owner) = app.store.register_token_owner(&presented.digest()).await? {
            if owner != cluster.id {
                tracing::warn!(cluster = %cluster.id, token_of = %owner, "credentials report with another cluster's register token");
                return Err(ApiError::forbidden(format_args!(
                    "the register token presented for cluster {} belongs to another cluster",
                    cluster.id
                )));
            }
        }
        tracing::warn!(cluster = %cluster.id, "credentials report with a wrong register token");
        return Err(register_token_not_valid(&cluster));
    }
    // Tokens created before the digest column existed get theirs now (a no-op otherwise).
    app.store.set_register_token_digest(&cluster.id, &stored.token_sealed, &expected.digest()).await?;

    let server_addresses = addresses.join(";");
    let fingerprint = digest_hex(&format!("{server_addresses}\n{ca}\n{}", cluster_token.expose()));
    let new = NewCredentials {
        cluster_id: cluster.id.clone(),
        server_addresses,
        ca_cert_data: ca,
        user_token_sealed: app.sealer.seal(&cluster_token_purpose(&cluster.id), &cluster_token),
        fingerprint,
    };
    let change = app.snapshots.change();
    let Some(saved) = app.store.upsert_credentials(new, &stored.token_sealed, crate::now()).await? else {
        // Rotated or deleted since the check above: the token presented is no longer valid.
        change.nothing();
        tracing::warn!(cluster = %cluster.id, "credentials report with a register token replaced while it was checked");
        return Err(register_token_not_valid(&cluster));
    };
    drop(change);
    tracing::info!(cluster = %cluster.id, version = saved.version, addresses = %saved.server_addresses, "stored cluster credentials");
    Ok(Json(serde_json::json!({})))
}

fn register_token_not_valid(cluster: &Cluster) -> ApiError {
    ApiError::unauthorized(format_args!("the register token of cluster {} is not valid", cluster.id))
}

/// `GET` (super users only): the stored credentials, the cluster's token included.
pub async fn get(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CredentialsView>, ApiError> {
    caller.require_super()?;
    let cluster = load(&app, &id).await?;
    let credentials = stored(&app, &cluster).await?;
    let token = app.sealer.open(&cluster_token_purpose(&cluster.id), &credentials.user_token_sealed)?;
    Ok(Json(CredentialsView::new(credentials, token.expose().to_owned())))
}

/// `GET .../client_credentials`: where and how the caller reaches the cluster through the
/// gateway. `user_token` is the token the caller authenticated with (only digests are stored,
/// so no other value can be shown).
pub async fn client(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ClientCredentialsView>, ApiError> {
    let cluster = load(&app, &id).await?;
    let credentials = stored(&app, &cluster).await?;
    let path = format!("/tunnels/clusters/{}", cluster.identifier);
    let server_cacert_data = match &app.gateway_ca {
        Some(ca) if app.external_url.starts_with("https://") => ca.clone(),
        _ => String::new(),
    };
    Ok(Json(ClientCredentialsView {
        cluster_id: cluster.id,
        server_address_path: format!("{path}/"),
        server_address: format!("{}{path}", app.external_url),
        user_token: caller.presented.expose().to_owned(),
        cacert_data: credentials.ca_cert_data,
        server_cacert_data,
    }))
}

async fn stored(app: &AppState, cluster: &Cluster) -> Result<Credentials, ApiError> {
    app.store.credentials(&cluster.id).await?.ok_or_else(|| {
        ApiError::not_found("CREDENTIALS_NOT_FOUND", format_args!("cluster {} has no credentials yet", cluster.id))
    })
}
