//! Request extractors: the JSON body (with its content type, size limit and error messages)
//! and the authenticated caller.
use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use base64::Engine;
use bcs_shared::secret::Secret;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::AppState;
use crate::store::model::{User, UserToken};

use bcs_shared::secret::TOKEN_NOT_VALID as NOT_VALID;

/// Largest request body the REST API reads.
pub const BODY_LIMIT: usize = 1024 * 1024;
/// How long a request body may take to arrive, whole (408 after): a client that trickles one
/// must not hold a connection, and a task, for good.
pub const BODY_TIME: std::time::Duration = std::time::Duration::from_secs(30);

/// A JSON request body. Non-JSON content types are 415, bodies over [`BODY_LIMIT`] 413, a body
/// still arriving after [`BODY_TIME`] 408, malformed JSON 400, a field of the wrong type 400
/// naming the field. An empty body is `None`, so endpoints whose body is optional accept a bare
/// POST.
pub struct JsonBody<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let content_type = req.headers().get(CONTENT_TYPE).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let bytes: Bytes = tokio::time::timeout(BODY_TIME, axum::body::to_bytes(req.into_body(), BODY_LIMIT))
            .await
            .map_err(|_| ApiError::request_timeout(BODY_TIME))?
            .map_err(|_| ApiError::payload_too_large(BODY_LIMIT))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody(None));
        }
        let is_json = content_type.as_deref().is_some_and(|ct| {
            let essence = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
            essence == "application/json" || essence.ends_with("+json")
        });
        if !is_json {
            return Err(ApiError::unsupported_media_type(content_type.as_deref().unwrap_or("")));
        }
        // serde would read a struct from an array too; the API takes objects only.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::bad_request("BAD_JSON", "the body must be a JSON object"));
        }
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            match inner.classify() {
                serde_json::error::Category::Data => {
                    let text = strip_position(&inner);
                    // "unknown field `expire_in`, expected `expires_in`" (or "expected one of ...",
                    // "there are no fields"): a misspelt field, not a value of the wrong type. The
                    // name is quoted unescaped, so the split is at the last "`, " (the expected
                    // names hold none).
                    match text.strip_prefix("unknown field `").and_then(|rest| rest.rsplit_once("`, ")) {
                        Some((_, expected)) => {
                            ApiError::validation(&path, format_args!("is not known here: {expected}"))
                        }
                        None => ApiError::validation(&path, format_args!("has the wrong type: {text}")),
                    }
                }
                _ => ApiError::bad_request("BAD_JSON", format_args!("malformed JSON body: {inner}")),
            }
        })?;
        de.end().map_err(|e| ApiError::bad_request("BAD_JSON", format_args!("malformed JSON body: {e}")))?;
        Ok(JsonBody(Some(value)))
    }
}

/// serde_json's message without " at line 1 column 9" (the path names the field already).
fn strip_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

impl<T> JsonBody<T> {
    /// The body, or 400 if there was none.
    pub fn required(self) -> Result<T, ApiError> {
        self.0.ok_or_else(|| ApiError::bad_request("VALIDATION_ERROR", "a JSON request body is required"))
    }
}

/// A required, non-blank string field of a request, kept exactly as sent.
pub fn required_field(field: &str, value: Option<String>) -> Result<String, ApiError> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(ApiError::required(field)),
    }
}

/// The authenticated caller: the user behind a valid `Authorization: Bearer <token>` (or the
/// password of HTTP Basic auth, as the original accepted), checked against the store by digest
/// on every request, expiry and revocation included.
pub struct Caller {
    pub user: User,
    pub token: UserToken,
    /// The token as presented, to hand back in `client_credentials`.
    pub presented: Secret,
}

impl Caller {
    pub fn is_super(&self) -> bool {
        self.user.is_super_user
    }

    /// 403 unless the caller is a super user.
    pub fn require_super(&self) -> Result<(), ApiError> {
        if self.is_super() {
            Ok(())
        } else {
            Err(ApiError::forbidden("this operation is for super users only"))
        }
    }
}

impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let app = AppState::from_ref(state);
        let presented = match presented_token(&parts.headers) {
            Some(presented) => presented,
            // A header was sent: saying it was anonymous would send its author looking elsewhere.
            None if parts.headers.contains_key(AUTHORIZATION) => {
                return Err(ApiError::unauthorized(
                    "the Authorization header must be 'Bearer <token>' (or Basic with the token as its password)",
                ))
            }
            None => {
                return Err(ApiError::unauthorized("anonymous requests is forbidden, please provide a valid token"))
            }
        };
        // One answer for a token that never was, was revoked or has expired (the log tells
        // which): a caller holding an old leaked token learns nothing from it.
        let Some((token, user)) = app.store.token_by_digest(&presented.digest()).await? else {
            tracing::debug!("rejected an unknown token");
            return Err(ApiError::unauthorized(NOT_VALID));
        };
        if token.revoked_at.is_some() {
            tracing::debug!(user = %user.name, token_id = token.id, "rejected a revoked token");
            return Err(ApiError::unauthorized(NOT_VALID));
        }
        if token.expires_at <= crate::now() {
            tracing::debug!(user = %user.name, token_id = token.id, "rejected an expired token");
            return Err(ApiError::unauthorized(NOT_VALID));
        }
        tracing::debug!(user = %user.name, token_id = token.id, is_super_user = user.is_super_user, "authenticated");
        Ok(Caller { user, token, presented })
    }
}

fn presented_token(headers: &HeaderMap) -> Option<Secret> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.split_once(' ')?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(Secret::new(credentials)).filter(|s| !s.is_empty());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(credentials).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (_, password) = decoded.split_once(':')?;
        return Some(Secret::new(password)).filter(|s| !s.is_empty());
    }
    None
}
