//! Who is calling: the bearer token, looked up by its SHA-256 digest in the current tables,
//! expiry included, on every request. Pure (the connection keeps a [`TokenMemo`]).
use std::sync::Arc;

use crate::error::ProxyError;
use crate::http1::head::RequestHead;
use crate::tables::{digest, Tables, UserEntry};

pub use bcs_shared::secret::TOKEN_NOT_VALID as NOT_VALID;

#[derive(Debug, Clone)]
pub struct Caller {
    pub user: Arc<UserEntry>,
    /// Digest of the presented token: open streams are closed when it stops being valid.
    pub digest: [u8; 32],
}

/// The last token a connection presented, with its digest. A kept-alive client (kubectl, a
/// controller, a CI job) sends the same token on every request, and SHA-256 was about 8 % of
/// the proxy's user-space instructions per 1 KiB GET (callgrind; this CPU has no SHA
/// extensions). Only the hashing is skipped: every request still looks the digest up in the
/// tables current at that moment, so a revoked or expired token is refused on its next request
/// whatever connection it comes on. No `Debug`: it holds a token. The comparison is constant-time
/// (behind a front proxy that pools connections, one connection carries several clients), and
/// the token is kept at its own size, only up to [`MEMO_MAX`] bytes: a bogus 60 KiB token must
/// not stay with a connection that goes on to hold a watch.
#[derive(Default)]
pub struct TokenMemo {
    token: Box<[u8]>,
    digest: [u8; 32],
}

/// Longer tokens are hashed every time (a service-account JWT is about 1 KiB).
const MEMO_MAX: usize = 4096;

impl TokenMemo {
    fn digest(&mut self, token: &[u8]) -> [u8; 32] {
        if token.len() > MEMO_MAX {
            return digest(token);
        }
        if self.token.is_empty() || !bcs_shared::secret::ct_eq(&self.token, token) {
            self.digest = digest(token);
            self.token = token.into();
        }
        self.digest
    }
}

pub fn authenticate(head: &RequestHead, tables: &Tables, now: i64, memo: &mut TokenMemo) -> Result<Caller, ProxyError> {
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
    let digest = memo.digest(token.as_bytes());
    // One answer for a token that never was, was revoked or has expired: a caller holding an
    // old leaked token learns nothing from it.
    let entry = tables.token(&digest).filter(|e| e.expires_at > now).ok_or(ProxyError::Unauthorized(NOT_VALID))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memo_gives_each_tokens_own_digest_as_tokens_change() {
        let mut memo = TokenMemo::default();
        for token in ["alpha", "alpha", "beta", "alpha", "alphA", "alpha-longer", "alpha", "b"] {
            assert_eq!(memo.digest(token.as_bytes()), digest(token.as_bytes()), "{token}");
        }
    }

    #[test]
    fn the_memo_keeps_no_long_token_and_nothing_beyond_the_last_ones_size() {
        let mut memo = TokenMemo::default();
        let long = vec![b'x'; MEMO_MAX + 1];
        memo.digest(b"short-token");
        assert_eq!(memo.digest(&long), digest(&long));
        assert_eq!(&*memo.token, b"short-token", "a long token is hashed, not kept");
        let at_limit = vec![b'y'; MEMO_MAX];
        assert_eq!(memo.digest(&at_limit), digest(&at_limit));
        assert_eq!(memo.digest(b"short-token"), digest(b"short-token"));
        assert_eq!(memo.token.len(), "short-token".len(), "kept at the last token's own size");
    }
}
