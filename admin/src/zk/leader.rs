//! The leader lock (ZooKeeper's lock recipe, Curator's node layout): every instance queues an
//! ephemeral sequential node under `/bcs/services/bcs-api/leader`; the lowest holds the lock.
//! The holder's node goes when its session ends (a killed instance: after the session
//! timeout), and the next in line takes over.
use super::client::Session;
use super::{retrying, Leadership, LEADER_LOCK};

/// Returns only when the session ended.
pub async fn run(session: &Session, leadership: &Leadership) {
    let data = format!("pid {}", std::process::id());
    loop {
        let Ok(path) = retrying("contending for the leader lock", || session.lock(LEADER_LOCK, data.as_bytes())).await
        else {
            return;
        };
        tracing::info!(node = %path, "holding the leader lock");
        leadership.set_holding(true);
        loop {
            let Ok((exists, watch)) = retrying("watching the leader lock", || session.exists(&path)).await else {
                return;
            };
            if !exists {
                tracing::warn!(node = %path, "the leader lock node was deleted; contending again");
                break;
            }
            if !watch.fired().await {
                return;
            }
        }
        leadership.set_holding(false);
    }
}
