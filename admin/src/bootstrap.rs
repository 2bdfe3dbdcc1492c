//! `bootstrap_users`: users created at start if missing.
//!
//! A configured token is stored as its digest (and added again if it went missing). An empty
//! token means: generate one when the user is first created and print it once to stdout, the
//! only place it ever appears; the logs only say that a token was generated.
use std::io::Write;

use anyhow::{bail, Context};
use bcs_shared::config::BootstrapUser;
use bcs_shared::secret::{random_token, Secret, USER_TOKEN_LEN};

use crate::rest::users::DEFAULT_TOKEN_LIFETIME_SECS;
use crate::store::model::{token_type, NewUserToken, User};
use crate::store::{Store, StoreError};

pub async fn ensure_users(store: &Store, users: &[BootstrapUser], out: &mut dyn Write) -> anyhow::Result<()> {
    for entry in users {
        let wants_super = entry.is_super_user.unwrap_or(false);
        let configured: Vec<&Secret> = entry.tokens.iter().flatten().filter(|t| !t.is_empty()).collect();
        let to_generate = entry.tokens.len() - configured.len();
        let user = match store.user_by_name(&entry.name).await? {
            Some(user) => user,
            None => {
                // The user and all its tokens in one transaction: a failed start leaves no user
                // without the tokens it was configured with.
                for token in &configured {
                    refuse_if_taken(store, &entry.name, token.digest()).await?;
                }
                let generated: Vec<Secret> = (0..to_generate).map(|_| random_token(USER_TOKEN_LEN)).collect();
                let digests = configured.iter().map(|t| t.digest()).chain(generated.iter().map(|t| t.digest()));
                let tokens = digests.map(new_token).collect();
                match store.create_user_with_tokens(&entry.name, wants_super, tokens, crate::now()).await {
                    Ok(user) => {
                        tracing::info!(user = %user.name, is_super_user = wants_super, "created bootstrap user");
                        print_generated(out, &user, &generated)?;
                        continue;
                    }
                    // Another instance created it at the same moment.
                    Err(StoreError::Conflict(_)) => {
                        store.user_by_name(&entry.name).await?.context("bootstrap user vanished")?
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        if user.is_super_user != wants_super {
            tracing::warn!(user = %user.name, "bootstrap user exists with another is_super_user; it is not changed");
        }
        for token in &configured {
            ensure_token(store, &user, token.digest()).await?;
        }
        // A user that never had a token (made before its tokens were stored with it, or through
        // REST) gets the generated ones; one whose tokens were all revoked does not.
        if to_generate > 0 && store.user_tokens(user.id).await?.is_empty() {
            let generated: Vec<Secret> = (0..to_generate).map(|_| random_token(USER_TOKEN_LEN)).collect();
            for token in &generated {
                ensure_token(store, &user, token.digest()).await?;
            }
            print_generated(out, &user, &generated)?;
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

async fn refuse_if_taken(store: &Store, name: &str, digest: String) -> anyhow::Result<()> {
    if store.token_by_digest(&digest).await?.is_some() {
        bail!("bootstrap_users: a token of {name} is already the token of another user");
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
