//! The one place where an error becomes a status code.
//!
//! Every failure of the REST API is an [`ApiError`]; its body keeps the original's shape,
//! `{"code_name": "...", "message": "errcode: <n>, ..."}`. Messages name the problem (the field,
//! the id) and never contain a secret.
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::sealer::SealError;
use crate::store::StoreError;

/// The original's numeric error codes (base 1405000).
mod errcode {
    pub const INTERNAL: u32 = 1405050;
    pub const UNAUTHORIZED: u32 = 1405059;
    pub const NO_AUTHORITY: u32 = 1405058;
    pub const NOT_FOUND: u32 = 1405060;
    pub const BAD_REQUEST: u32 = 1405061;
    pub const DB_ERROR: u32 = 1405062;
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code_name: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, code_name: &'static str, errcode: u32, message: impl std::fmt::Display) -> Self {
        ApiError { status, code_name, message: format!("errcode: {errcode}, {message}") }
    }

    /// 400 for a missing or invalid field, naming it.
    pub fn validation(field: &str, problem: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            errcode::BAD_REQUEST,
            format_args!("field '{field}' {problem}"),
        )
    }

    pub fn required(field: &str) -> Self {
        Self::validation(field, "is required")
    }

    pub fn bad_request(code_name: &'static str, message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code_name, errcode::BAD_REQUEST, message)
    }

    pub fn unauthorized(message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", errcode::UNAUTHORIZED, message)
    }

    pub fn forbidden(message: impl std::fmt::Display) -> Self {
        Self::forbidden_as("FORBIDDEN", message)
    }

    pub fn forbidden_as(code_name: &'static str, message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::FORBIDDEN, code_name, errcode::NO_AUTHORITY, message)
    }

    pub fn not_found(code_name: &'static str, message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::NOT_FOUND, code_name, errcode::NOT_FOUND, message)
    }

    pub fn conflict(code_name: &'static str, message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::CONFLICT, code_name, errcode::BAD_REQUEST, message)
    }

    pub fn unsupported_media_type(found: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            errcode::BAD_REQUEST,
            format_args!("Content-Type must be application/json, not {found:?}"),
        )
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            errcode::BAD_REQUEST,
            format_args!("request body is larger than {limit} bytes"),
        )
    }

    pub fn request_timeout(limit: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "REQUEST_TIMEOUT",
            errcode::BAD_REQUEST,
            format_args!("the request body did not arrive within {} s", limit.as_secs()),
        )
    }

    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", errcode::INTERNAL, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => ApiError::conflict("CONFLICT", what),
            StoreError::Unavailable(why) => {
                tracing::warn!(error = %why, "store unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "STORE_UNAVAILABLE",
                    errcode::DB_ERROR,
                    "the store is unavailable, try again later",
                )
            }
            StoreError::OverLimit(held) => ApiError::forbidden(format_args!("a limit is reached ({held} held)")),
            StoreError::Internal(why) | StoreError::InSchema(why) => {
                tracing::error!(error = %why, "store error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "DB_ERROR",
                    errcode::DB_ERROR,
                    "the store failed; see the server log",
                )
            }
        }
    }
}

impl From<SealError> for ApiError {
    fn from(e: SealError) -> Self {
        tracing::error!(error = %e, "cannot open a sealed secret");
        ApiError::internal(e)
    }
}

#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    code_name: &'a str,
    message: &'a str,
}

/// Gives axum's own refusals (a path segment or query string its extractors cannot decode,
/// which they answer in plain text) the API's error body, keeping their status and message.
pub async fn json_rejections(response: Response) -> Response {
    let plain = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"text/plain"));
    if !plain || !response.status().is_client_error() {
        return response;
    }
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 4096).await.unwrap_or_default();
    let message = String::from_utf8_lossy(&body).trim().to_owned();
    let code_name = if status == StatusCode::BAD_REQUEST { "BAD_REQUEST" } else { "INVALID_REQUEST" };
    ApiError::new(status, code_name, errcode::BAD_REQUEST, message).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { code_name: self.code_name, message: &self.message };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6750 §3: which scheme to authenticate with.
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static(bcs_shared::secret::BEARER_CHALLENGE),
            );
        }
        response
    }
}
