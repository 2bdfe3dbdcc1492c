//! Change notices between admin instances on one MySQL: after a local REST write that the
//! snapshot depends on ([`Publisher::changed`]), this instance writes `/bcs/services/bcs-api/changes`;
//! every instance watches that node and, when its data version moves, rebuilds its snapshot
//! from the store (the data itself always comes from MySQL). The node's data names the
//! writer, for people reading it with zkCli only.
//!
//! No notice is lost:
//! - between a watch firing and the next one being set: the version read with each new watch is
//!   compared with the last one seen, and a write of ours that did not move the version by
//!   exactly one means someone else wrote too;
//! - before this session's first watch was set (at start, or while ZooKeeper was away): the
//!   store is read again once that watch is in place, so a write either fires it or is read;
//! - of our own writes made while no session was up: `local` lives across sessions and is
//!   created marked, so they are announced as soon as a session is.
use super::client::{Error, Session};
use super::{retrying, CHANGES};
use crate::snapshot::Publisher;
use tokio::sync::watch;

/// Returns only when the session ended. `local` comes from [`Publisher::local_writes`].
pub async fn run(session: &Session, publisher: &Publisher, local: &mut watch::Receiver<u64>) {
    let me = format!("pid {} session {:#x}", std::process::id(), session.id());
    let mut written = 0u64;
    let mut seen: Option<i32> = None;
    loop {
        let watched = retrying("watching the change notices", || async {
            match session.version_watched(CHANGES).await {
                Err(Error::NoNode) => {
                    session.mkdir(CHANGES).await?;
                    session.version_watched(CHANGES).await
                }
                other => other,
            }
        })
        .await;
        let Ok((version, watch)) = watched else { return };
        // The first watch of the session: whatever was written before it was set, read now.
        if seen.is_none_or(|seen| seen != version) {
            publisher.changed_elsewhere();
        }
        seen = Some(version);
        tokio::select! {
            changed = watch.fired() => {
                if !changed {
                    return;
                }
            }
            Ok(()) = local.changed() => {
                written += 1;
                let data = format!("{me} write {written}");
                let Ok(new) = retrying("announcing a change", || session.set_data(CHANGES, data.as_bytes())).await
                else {
                    return;
                };
                if new != version.wrapping_add(1) {
                    publisher.changed_elsewhere();
                }
                seen = Some(new);
            }
        }
    }
}
