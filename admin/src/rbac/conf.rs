//! `rbac.data` of the config file (`turn_on_conf`): each entry gives a user roles at the
//! cluster scope of one cluster. The config's grants replace the store's `conf` grants each
//! time this instance becomes the leader (so removing an entry removes its bindings; with
//! `turn_on_conf` off, every `conf` grant goes). A user or cluster not in the store is kept
//! (the cluster may be registered later) and logged.
use bcs_shared::config::RbacData;

use crate::rest::AppState;
use crate::store::model::{grant_source, NewGrant};

pub fn grants(data: &[RbacData]) -> Vec<NewGrant> {
    data.iter()
        .flat_map(|entry| {
            entry.roles.iter().map(move |role| NewGrant {
                user_name: entry.user_name.trim().to_owned(),
                cluster_id: entry.cluster_id.trim().to_owned(),
                namespace: String::new(),
                role: role.clone(),
                source: grant_source::CONF.to_owned(),
            })
        })
        .collect()
}

/// Writes the config's grants to the store; false when the store failed (tried again later).
pub async fn apply(app: &AppState) -> bool {
    let wanted = app.rbac.settings.conf.clone().unwrap_or_default();
    for grant in &wanted {
        if let Ok(None) = app.store.user_by_name(&grant.user_name).await {
            tracing::warn!(user = %grant.user_name, "rbac.data names a user bcs-api does not know (yet)");
        }
        if grant.cluster_id != "*" {
            if let Ok(None) = app.store.cluster(&grant.cluster_id).await {
                tracing::warn!(cluster = %grant.cluster_id, "rbac.data names a cluster that is not registered (yet)");
            }
        }
    }
    match app.store.replace_grants(grant_source::CONF, wanted, crate::now()).await {
        Ok((added, removed)) => {
            tracing::info!(added, removed, "rbac.data applied to the grants");
            super::grants_written(app, None).await;
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot write rbac.data to the store; trying again");
            false
        }
    }
}
