//! `/rest/users/...`: users and their tokens.
use axum::extract::{Path, State};
use axum::Json;
use bcs_shared::identity::plain_user_name;
use bcs_shared::secret::{random_token, USER_TOKEN_LEN};
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{required_field, Caller, JsonBody};
use super::validate;
use super::views::{UserTokenView, UserView};
use super::AppState;
use crate::store::model::{token_type, NewUserToken, User};
use crate::store::StoreError;

/// Default lifetime of a user token: 10 years, as the original.
pub const DEFAULT_TOKEN_LIFETIME_SECS: i64 = 10 * 365 * 24 * 3600;

#[derive(Deserialize)]
pub struct CreateUser {
    user_name: Option<String>,
}

/// `POST /rest/users/` (super user): creates `plain:<user_name>`.
pub async fn create(
    State(app): State<AppState>,
    caller: Caller,
    body: JsonBody<CreateUser>,
) -> Result<Json<UserView>, ApiError> {
    caller.require_super()?;
    let name = required_field("user_name", body.required()?.user_name)?;
    validate::name("user_name", &name)?;
    let change = app.snapshots.change();
    let user = change.settle(app.store.create_user(&plain_user_name(&name), false, crate::now()).await).map_err(
        |e| match e {
            StoreError::Conflict(_) => {
                ApiError::conflict("USER_ALREADY_EXISTS", format_args!("user {name} already exists"))
            }
            e => e.into(),
        },
    )?;
    tracing::info!(user = %user.name, by = %caller.user.name, "created user");
    Ok(Json(user.into()))
}

/// `GET /rest/users/{user_name}` (super user): `plain:<user_name>`, else a bootstrap user of
/// exactly that name.
pub async fn get(
    State(app): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    caller.require_super()?;
    let user = match app.store.user_by_name(&plain_user_name(&name)).await? {
        Some(user) => Some(user),
        None => app.store.user_by_name(&name).await?,
    };
    let user = user
        .ok_or_else(|| ApiError::not_found("USER_NOT_FOUND", format_args!("user with user_name={name} not found")))?;
    Ok(Json(user.into()))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Lifetime in seconds; default 10 years.
    expires_in: Option<i64>,
}

/// `POST /rest/users/{user_id}/tokens` (super user): a new token each call; its value is in
/// this answer only.
pub async fn create_token(
    State(app): State<AppState>,
    caller: Caller,
    Path(user_id): Path<String>,
    body: JsonBody<CreateToken>,
) -> Result<Json<UserTokenView>, ApiError> {
    caller.require_super()?;
    let user = user_by_id(&app, &user_id).await?;
    let lifetime = body.0.unwrap_or_default().expires_in.unwrap_or(DEFAULT_TOKEN_LIFETIME_SECS);
    if !(1..=DEFAULT_TOKEN_LIFETIME_SECS).contains(&lifetime) {
        return Err(ApiError::validation(
            "expires_in",
            format_args!("must be between 1 and {DEFAULT_TOKEN_LIFETIME_SECS} seconds"),
        ));
    }
    let value = random_token(USER_TOKEN_LEN);
    let now = crate::now();
    let change = app.snapshots.change();
    let token = change.settle(
        app.store
            .create_user_token(
                NewUserToken {
                    user_id: user.id,
                    kind: token_type::KUBECONFIG_PLAIN,
                    digest: value.digest(),
                    expires_at: now + lifetime,
                },
                now,
            )
            .await,
    )?;
    tracing::info!(user = %user.name, token_id = token.id, by = %caller.user.name, "created user token");
    Ok(Json(UserTokenView::new(token, Some(value.expose().to_owned()))))
}

/// `GET /rest/users/{user_id}/tokens` (super user, or the user itself): the tokens without values.
pub async fn list_tokens(
    State(app): State<AppState>,
    caller: Caller,
    Path(user_id): Path<String>,
) -> Result<Json<Vec<UserTokenView>>, ApiError> {
    let user = self_or_super(&app, &caller, &user_id).await?;
    let tokens = app.store.user_tokens(user.id).await?;
    Ok(Json(tokens.into_iter().map(|t| UserTokenView::new(t, None)).collect()))
}

/// `DELETE /rest/users/{user_id}/tokens/{token_id}` (super user, or the user itself): revokes
/// the token; every later request with it is 401.
pub async fn revoke_token(
    State(app): State<AppState>,
    caller: Caller,
    Path((user_id, token_id)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let user = self_or_super(&app, &caller, &user_id).await?;
    let token_id: i64 = token_id.parse().map_err(|_| {
        ApiError::bad_request("TOKEN_ID_INVALID", format_args!("token id {token_id:?} is not an integer"))
    })?;
    let change = app.snapshots.change();
    if !app.store.revoke_user_token(user.id, token_id, crate::now()).await? {
        change.nothing();
        return Err(ApiError::not_found("TOKEN_NOT_FOUND", format_args!("user {} has no token {token_id}", user.id)));
    }
    drop(change);
    tracing::info!(user = %user.name, token_id, by = %caller.user.name, "revoked user token");
    Ok(Json(serde_json::json!({})))
}

async fn user_by_id(app: &AppState, user_id: &str) -> Result<User, ApiError> {
    let id: i64 = user_id
        .parse()
        .map_err(|_| ApiError::bad_request("USER_ID_INVALID", format_args!("user id {user_id:?} is not an integer")))?;
    app.store
        .user_by_id(id)
        .await?
        .ok_or_else(|| ApiError::not_found("USER_NOT_FOUND", format_args!("user with id={id} not found")))
}

/// The user `user_id` names, for the user itself or a super user; anyone else gets 403 before
/// the lookup, whether the id exists or not (a 404 would tell which ids do).
async fn self_or_super(app: &AppState, caller: &Caller, user_id: &str) -> Result<User, ApiError> {
    let own = user_id.parse::<i64>().is_ok_and(|id| id == caller.user.id);
    if !caller.is_super() && !own {
        return Err(ApiError::forbidden("only the user itself or a super user may do this"));
    }
    user_by_id(app, user_id).await
}
