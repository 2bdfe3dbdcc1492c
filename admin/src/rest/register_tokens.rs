//! `/rest/clusters/{cluster_id}/register_tokens`: the secret an agent presents to report the
//! cluster's credentials. For the cluster's creator and super users; stored sealed.
use axum::extract::{Path, State};
use axum::Json;
use bcs_shared::secret::{random_token, Secret, REGISTER_TOKEN_LEN};

use super::clusters::{load, not_found, require_creator_or_super};
use super::error::ApiError;
use super::extract::Caller;
use super::views::RegisterTokenView;
use super::AppState;
use crate::sealer::register_token_purpose;
use crate::store::model::RegisterToken;
use crate::store::StoreError;

/// `GET`: an array with the cluster's one token.
pub async fn get(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Vec<RegisterTokenView>>, ApiError> {
    let cluster = load(&app, &id).await?;
    require_creator_or_super(&caller, &cluster)?;
    // Of this cluster only: not of one that took its id after a delete since `load`.
    let token = app.store.register_token_of(&cluster.id, &cluster.identifier).await?.ok_or_else(|| {
        ApiError::not_found("RTOKEN_NOT_FOUND", format_args!("cluster {} has no register token", cluster.id))
    })?;
    Ok(Json(vec![view(&app, token)?]))
}

/// `POST`: creates the cluster's token; 409 if it has one (rotate it instead).
pub async fn create(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Vec<RegisterTokenView>>, ApiError> {
    issue(app, caller, id, false).await
}

/// `POST .../register_tokens/rotate`: replaces the token; the old one stops working at once.
pub async fn rotate(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Vec<RegisterTokenView>>, ApiError> {
    issue(app, caller, id, true).await
}

/// A new random token for the cluster, stored sealed: the first one, or one replacing it.
async fn issue(
    app: AppState,
    caller: Caller,
    id: String,
    rotate: bool,
) -> Result<Json<Vec<RegisterTokenView>>, ApiError> {
    let cluster = load(&app, &id).await?;
    require_creator_or_super(&caller, &cluster)?;
    let value = random_token(REGISTER_TOKEN_LEN);
    let sealed = app.sealer.seal(&register_token_purpose(&cluster.id), &value);
    // Written only while the cluster of this id is still the one loaded (and checked) above:
    // a plain cluster's id may have been deleted and taken by another user's cluster since.
    let (id, identifier) = (&cluster.id, &cluster.identifier);
    let token = if rotate {
        app.store.rotate_register_token(id, identifier, sealed, crate::now()).await
    } else {
        app.store.create_register_token(id, identifier, sealed, crate::now()).await
    };
    let token = token
        .map_err(|e| match e {
            // A rotation's conflict is its insert meeting the cluster's delete (a foreign key):
            // the cluster is gone. The store's own words (schema, constraint) are not passed on.
            StoreError::Conflict(_) if rotate => not_found(id),
            StoreError::Conflict(_) => {
                ApiError::conflict("RTOKEN_ALREADY_EXISTS", format_args!("cluster {id} already has a register token"))
            }
            e => e.into(),
        })?
        .ok_or_else(|| not_found(id))?;
    record_digest(&app, &token, &value).await;
    tracing::info!(cluster = %cluster.id, by = %caller.user.name, rotate, "issued a register token");
    Ok(Json(vec![RegisterTokenView::new(token, value.expose().to_owned())]))
}

/// Stores the new token's digest, by which a report presenting it for another cluster is told
/// apart (403). On failure the token still works; its digest is recorded at its first report.
async fn record_digest(app: &AppState, token: &RegisterToken, value: &Secret) {
    if let Err(e) = app.store.set_register_token_digest(&token.cluster_id, &token.token_sealed, &value.digest()).await {
        tracing::warn!(cluster = %token.cluster_id, error = %e, "cannot record the register token's digest yet");
    }
}

fn view(app: &AppState, token: RegisterToken) -> Result<RegisterTokenView, ApiError> {
    let value = app.sealer.open(&register_token_purpose(&token.cluster_id), &token.token_sealed)?;
    Ok(RegisterTokenView::new(token, value.expose().to_owned()))
}
