//! `bootstrap_users`: users created at start if missing.
//!
//! A configured token is stored as its digest (and added again if it went missing). An empty
//! token means: generate one when the user is first created and print it once to stdout, the
//! only place it ever appears; the logs only say that a token was generated.
use std::io::Write;

use anyhow::{bail, Context};
use bcs_shared::config::BootstrapUser;
use bcs_shared::secret::{random_token, USER_TOKEN_LEN};

use crate::rest::users::DEFAULT_TOKEN_LIFETIME_SECS;
use crate::store::model::{token_type, NewUserToken, User};
use crate::store::{Store, StoreError};

pub async fn ensure_users(store: &Store, users: &[BootstrapUser], out: &mut dyn Write) -> anyhow::Result<()> {
    for entry in users {
        let wants_super = entry.is_super_user.unwrap_or(false);
        let (user, created) = match store.user_by_name(&entry.name).await? {
            Some(user) => (user, false),
            None => match store.create_user(&entry.name, wants_super, crate::now()).await {
                Ok(user) => (user, true),
                // Another instance created it at the same moment.
                Err(StoreError::Conflict(_)) => {
                    (store.user_by_name(&entry.name).await?.context("bootstrap user vanished")?, false)
                }
                Err(e) => return Err(e.into()),
            },
        };
        if created {
            tracing::info!(user = %user.name, is_super_user = wants_super, "created bootstrap user");
        } else if user.is_super_user != wants_super {
            tracing::warn!(user = %user.name, "bootstrap user exists with another is_super_user; it is not changed");
        }
        for token in &entry.tokens {
            match token {
                Some(token) if !token.is_empty() => ensure_token(store, &user, token.digest()).await?,
                _ if created => {
                    let value = random_token(USER_TOKEN_LEN);
                    ensure_token(store, &user, value.digest()).await?;
                    writeln!(
                        out,
                        "bcs-api: bootstrap user {} has the token {} (shown once: only its digest is stored)",
                        user.name,
                        value.expose()
                    )?;
                    out.flush()?;
                    tracing::info!(user = %user.name, "generated a token for the bootstrap user and printed it to stdout");
                }
                _ => {}
            }
        }
    }
    Ok(())
}

async fn ensure_token(store: &Store, user: &User, digest: String) -> anyhow::Result<()> {
    if let Some((_, owner)) = store.token_by_digest(&digest).await? {
        if owner.id != user.id {
            bail!("bootstrap_users: a token of {} is already the token of another user", user.name);
        }
        return Ok(());
    }
    let now = crate::now();
    let digest_again = digest.clone();
    let new = NewUserToken {
        user_id: user.id,
        kind: token_type::SESSION,
        digest,
        expires_at: now + DEFAULT_TOKEN_LIFETIME_SECS,
    };
    match store.create_user_token(new, now).await {
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
