//! `bootstrap_users`: users created at start if missing.
//!
//! A configured token is stored as its digest (and added again if it went missing). An empty
//! token means: generate one when the user is first created and print it once to stdout, the
//! only place it ever appears; the logs only say that a token was generated.
use std::io::Write;

use anyhow::bail;
use bcs_shared::config::BootstrapUser;
use bcs_shared::secret::{random_token, Secret, USER_TOKEN_LEN};

use crate::rest::users::DEFAULT_TOKEN_LIFETIME_SECS;
use crate::store::model::{token_type, NewUserToken, User};
use crate::store::{Store, StoreError};

pub async fn ensure_users(store: &Store, users: &[BootstrapUser], out: &mut dyn Write) -> anyhow::Result<()> {
    for entry in users {
        let wants_super = entry.is_super_user.unwrap_or(false);
        let mut configured: Vec<&Secret> = entry.tokens.iter().flatten().filter(|t| !t.is_empty()).collect();
        let listed = configured.len();
        let mut seen = std::collections::HashSet::new();
        configured.retain(|t| seen.insert(t.expose()));
        let to_generate = entry.tokens.len() - listed;
        let user = match store.user_by_name(&entry.name).await? {
            Some(user) => user,
            None => {
                // The user and all its tokens in one transaction: a failed start leaves no user
                // without the tokens it was configured with.
                let generated: Vec<Secret> = (0..to_generate).map(|_| random_token(USER_TOKEN_LEN)).collect();
                let digests = configured.iter().map(|t| t.digest()).chain(generated.iter().map(|t| t.digest()));
                let tokens = digests.map(new_token).collect();
                match store.create_user_with_tokens(&entry.name, wants_super, tokens, crate::now()).await {
                    Ok(user) => {
                        tracing::info!(user = %user.name, is_super_user = wants_super, "created bootstrap user");
                        print_generated(out, &user, &generated)?;
                        continue;
                    }
                    // Another instance created it at the same moment (then it is there now), or
                    // a configured token is another user's.
                    Err(StoreError::Conflict(why)) => match store.user_by_name(&entry.name).await? {
                        Some(user) => user,
                        None => {
                            for token in &configured {
                                already_stored(store, &entry.name, None, &token.digest()).await?;
                            }
                            bail!("bootstrap_users: cannot create {}: {why}", entry.name);
                        }
                    },
                    Err(e) => return Err(e.into()),
                }
            }
        };
        if user.is_super_user != wants_super {
            tracing::warn!(user = %user.name, "bootstrap user exists with another is_super_user; it is not changed");
        }
        // A user that never had a token (made before its tokens were stored with it, or through
        // REST) gets the generated ones; one whose tokens were all revoked does not.
        let never_had = to_generate > 0 && store.user_tokens(user.id).await?.is_empty();
        for token in &configured {
            ensure_token(store, &user, token.digest()).await?;
        }
        if never_had {
            for _ in 0..to_generate {
                // Each shown as soon as it is stored: none is ever stored unseen.
                let token = random_token(USER_TOKEN_LEN);
                ensure_token(store, &user, token.digest()).await?;
                print_generated(out, &user, std::slice::from_ref(&token))?;
            }
        }
    }
    Ok(())
}

fn new_token(digest: String) -> NewUserToken {
    NewUserToken {
        user_id: 0,
        kind: token_type::SESSION,
        digest,
        expires_at: crate::now() + DEFAULT_TOKEN_LIFETIME_SECS,
    }
}

/// Shows each generated token once, on stdout: only its digest is stored.
fn print_generated(out: &mut dyn Write, user: &User, generated: &[Secret]) -> anyhow::Result<()> {
    for value in generated {
        writeln!(
            out,
            "bcs-api: bootstrap user {} has the token {} (shown once: only its digest is stored)",
            user.name,
            value.expose()
        )?;
        out.flush()?;
        tracing::info!(user = %user.name, "generated a token for the bootstrap user and printed it to stdout");
    }
    Ok(())
}

/// Whether the token of `digest` is stored already: Ok(true) for `user`'s own (None: a user not
/// created yet, whose no token is), an error naming `name` for another user's.
async fn already_stored(store: &Store, name: &str, user: Option<&User>, digest: &str) -> anyhow::Result<bool> {
    match store.token_by_digest(digest).await? {
        Some((_, owner)) if user.is_some_and(|u| u.id == owner.id) => Ok(true),
        Some(_) => bail!("bootstrap_users: a token of {name} is already the token of another user"),
        None => Ok(false),
    }
}

async fn ensure_token(store: &Store, user: &User, digest: String) -> anyhow::Result<()> {
    if already_stored(store, &user.name, Some(user), &digest).await? {
        return Ok(());
    }
    let digest_again = digest.clone();
    match store.create_user_token(NewUserToken { user_id: user.id, ..new_token(digest) }, crate::now()).await {
        Ok(_) => Ok(()),
        // Another instance stored the same configured token at the same moment.
        Err(StoreError::Conflict(_))
            if store.token_by_digest(&digest_again).await?.is_some_and(|(_, owner)| owner.id == user.id) =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Dsn;

    async fn store(dir: &std::path::Path) -> Store {
        crate::store::open(&Dsn::parse("").unwrap(), dir).await.unwrap()
    }

    fn entry(name: &str, tokens: &[&str]) -> BootstrapUser {
        BootstrapUser {
            name: name.into(),
            is_super_user: Some(true),
            tokens: tokens.iter().map(|t| Some(Secret::new(*t))).collect(),
        }
    }

    fn printed(out: &[u8]) -> usize {
        String::from_utf8_lossy(out).matches("has the token").count()
    }

    #[tokio::test]
    async fn another_users_token_stops_the_start_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        let taken = Secret::new("somebody-elses-token-0123456789ab");
        store.create_user_with_tokens("other", false, vec![new_token(taken.digest())], crate::now()).await.unwrap();
        let mut out = Vec::new();
        let e = ensure_users(&store, &[entry("ops", &[taken.expose(), ""])], &mut out).await.unwrap_err();
        assert!(e.to_string().contains("already the token of another user"), "{e}");
        assert_eq!(store.user_by_name("ops").await.unwrap(), None);
        assert_eq!(printed(&out), 0);
    }

    #[tokio::test]
    async fn a_token_listed_twice_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        let mut out = Vec::new();
        let twice = entry("ops", &["the-same-token-twice-0123456789", "the-same-token-twice-0123456789"]);
        ensure_users(&store, &[twice], &mut out).await.unwrap();
        let user = store.user_by_name("ops").await.unwrap().unwrap();
        assert_eq!(store.user_tokens(user.id).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_user_without_tokens_listed_with_a_configured_and_a_generated_one_gets_both() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        let user = store.create_user("ops", true, crate::now()).await.unwrap();
        let mut out = Vec::new();
        ensure_users(&store, &[entry("ops", &["configured-token-0123456789abcdef", ""])], &mut out).await.unwrap();
        assert_eq!(printed(&out), 1, "{}", String::from_utf8_lossy(&out));
        assert_eq!(store.user_tokens(user.id).await.unwrap().len(), 2);
        // The next start: it has tokens now, nothing is generated again.
        let mut again = Vec::new();
        ensure_users(&store, &[entry("ops", &["configured-token-0123456789abcdef", ""])], &mut again).await.unwrap();
        assert_eq!(printed(&again), 0);
        assert_eq!(store.user_tokens(user.id).await.unwrap().len(), 2);
    }
}
