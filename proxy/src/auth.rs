//! Who is calling: the bearer token, looked up by its SHA-256 digest in the current tables,
//! expiry included, on every request. Pure.
use std::sync::Arc;

use crate::error::ProxyError;
use crate::http1::head::RequestHead;
use crate::tables::{digest, Tables, UserEntry};

#[derive(Debug, Clone)]
pub struct Caller {
    pub user: Arc<UserEntry>,
    /// Digest of the presented token: open streams are closed when it stops being valid.
    pub digest: [u8; 32],
}

pub fn authenticate(head: &RequestHead, tables: &Tables, now: i64) -> Result<Caller, ProxyError> {
    let mut values = head.headers_named("authorization");
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(ProxyError::Unauthorized("anonymous requests are forbidden, please provide a valid token"));
    };
    let value = value.value_str();
    let token = memchr::memchr(b' ', value.as_bytes())
        .map(|at| (&value[..at], &value[at + 1..]))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty())
        .ok_or(ProxyError::Unauthorized("only Authorization: Bearer <token> is accepted"))?;
    let digest = digest(token.as_bytes());
    let entry = tables.token(&digest).ok_or(ProxyError::Unauthorized("the token is not valid"))?;
    if entry.expires_at <= now {
        return Err(ProxyError::Unauthorized("the token has expired"));
    }
    Ok(Caller { user: entry.user.clone(), digest })
}

/// Client `Impersonate-*` headers: refused for normal users (403, nothing is forwarded);
/// passed on for super users (`kubectl --as`), who are logged.
pub fn check_impersonation(head: &RequestHead, caller: &Caller) -> Result<(), ProxyError> {
    let asked: Vec<&str> = head.headers.iter().filter(|h| h.is_impersonation()).map(|h| h.name()).collect();
    if asked.is_empty() {
        return Ok(());
    }
    if !caller.user.is_super_user {
        return Err(ProxyError::Forbidden(format!(
            "user {} may not send impersonation headers ({})",
            caller.user.name,
            asked.join(", ")
        )));
    }
    tracing::info!(user = %caller.user.name, headers = %asked.join(","), "super user impersonates");
    Ok(())
}
