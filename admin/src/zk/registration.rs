//! This instance's ServerInfo under `/bcs/services/endpoints/apiserver/`, created as the
//! original does (a protected ephemeral sequential node named after `local_ip`) and created
//! again whenever it disappears. A new session registers anew.
use super::client::Session;
use super::{retrying, ServerInfo, Status, APISERVERS};

/// Returns only when the session ended.
pub async fn run(session: &Session, me: &ServerInfo, status: &Status) {
    let data = serde_json::to_vec(me).expect("ServerInfo serializes");
    loop {
        let Ok(path) = retrying("registering this instance", || {
            session.create_protected_ephemeral_sequential(APISERVERS, &me.ip, &data)
        })
        .await
        else {
            return;
        };
        tracing::info!(node = %path, "registered in ZooKeeper");
        status.update(|s| s.registered = path.clone());
        loop {
            let Ok((exists, watch)) = retrying("watching the registration", || session.exists(&path)).await else {
                return;
            };
            if !exists {
                tracing::warn!(node = %path, "this instance's registration disappeared; registering again");
                break;
            }
            if !watch.fired().await {
                return;
            }
        }
    }
}
