//! The current snapshot, and when to build the next one.
//!
//! The snapshot being served sits in a `tokio::sync::watch`: each proxy connection waits on it
//! and, when it wakes, sends whatever is newest, so a slow proxy skips revisions instead of
//! queueing them (every message is a whole snapshot, so nothing is lost by skipping).
//!
//! Rebuilds are triggered three ways:
//! - [`Publisher::changed`], called when a REST handler's write that a proxy must see is over
//!   (through the guard [`Publisher::change`], so also when the handler is dropped mid-write). Calls coalesce: while a rebuild is pending, more calls add nothing, and a call
//!   made during a rebuild causes exactly one more (whose store read sees the write).
//! - Every [`PERIOD`]: catches writes made by another admin instance on the same MySQL. A
//!   rebuild whose content (everything but `revision` and `generated_at`) equals the current
//!   snapshot's publishes nothing.
//! - A proxy that holds a newer revision than ours ([`Publisher::peer_holds`]), for example
//!   after this host's clock went back across an admin restart: the next snapshot is numbered
//!   above it and published even if its content is unchanged (a proxy is never sent a revision
//!   older than the one it holds).
//!
//! - [`Publisher::set_mesos`]: ZooKeeper discovery found a different set of live mesos-drivers
//!   (`crate::zk`). The last sets stay in every later snapshot until discovery reports again,
//!   so a ZooKeeper outage never empties them.
//! - [`Publisher::changed_elsewhere`]: another admin instance announced a write through
//!   ZooKeeper. [`Publisher::changed`] also counts local writes ([`Publisher::local_writes`])
//!   so that they can be announced; [`Publisher::announce`] counts a write the snapshot does
//!   not hold (an RBAC grant) without a rebuild, and [`Publisher::elsewhere`] lets the RBAC
//!   sync hear of the other instances' writes.
//!
//! Revisions are `max(now in ms, last + 1)` (and above any revision a proxy reported), so they
//! keep increasing across admin restarts.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bcs_shared::snapshot::wire::{self, Message, MAX_FRAME};
use bcs_shared::snapshot::{MesosDrivers, Snapshot};
use tokio::sync::{watch, Notify};

use super::builder::{self, Stamp};
use crate::metrics::SnapshotMetrics;
use crate::sealer::Sealer;
use crate::shutdown::Shutdown;
use crate::store::{Store, StoreError};

/// How often the store is read even without a local change.
pub const PERIOD: Duration = Duration::from_secs(5);
/// How soon a rebuild is retried after the store failed to answer.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A published snapshot with its wire frame, encoded once for every proxy.
pub struct Published {
    pub snapshot: Snapshot,
    /// `Message::Snapshot` as one frame. It holds cluster tokens in clear: never log it.
    pub frame: Vec<u8>,
}

impl Published {
    pub fn revision(&self) -> u64 {
        self.snapshot.revision
    }
}

/// A write under way that a proxy must see ([`Publisher::change`]): a rebuild follows when
/// this is dropped, unless the store refused the write.
#[must_use = "the rebuild comes when the guard is dropped: hold it across the write"]
pub struct Change<'a>(Option<&'a Publisher>);

impl Change<'_> {
    /// Passes the write's result through and settles the guard: a write the store refused
    /// outright (a conflict, a limit) changed nothing and causes no rebuild; anything else does,
    /// now. That includes the store not answering in time, which may come after a commit.
    pub fn settle<T>(mut self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if matches!(result, Err(StoreError::Conflict(_) | StoreError::OverLimit(_))) {
            self.0 = None;
        }
        result
    }

    /// The write found nothing to change (a token that was not there): no rebuild.
    pub fn nothing(mut self) {
        self.0 = None;
    }
}

impl Drop for Change<'_> {
    fn drop(&mut self) {
        if let Some(publisher) = self.0.take() {
            publisher.changed();
        }
    }
}

/// `None` until the first snapshot is built.
pub type Current = Option<Arc<Published>>;

/// What one rebuild did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Published(u64),
    Unchanged,
    /// The result could not be served (see the error log); the current snapshot stays.
    Invalid,
    /// The store did not answer; the current snapshot stays.
    Failed,
}

impl Outcome {
    /// How long to wait for a change before rebuilding anyway.
    pub fn next_wait(self) -> Duration {
        if self == Outcome::Failed {
            RETRY_AFTER
        } else {
            PERIOD
        }
    }

    fn label(self) -> &'static str {
        match self {
            Outcome::Published(_) => "published",
            Outcome::Unchanged => "unchanged",
            Outcome::Invalid => "invalid",
            Outcome::Failed => "failed",
        }
    }
}

pub struct Publisher {
    sender: watch::Sender<Current>,
    wake: Notify,
    /// Publish the next build even if its content is unchanged.
    force: AtomicBool,
    /// The highest revision a proxy reported holding: the next revision is above it.
    floor: AtomicU64,
    turn_on_rbac: bool,
    metrics: SnapshotMetrics,
    /// What the last build left out, so a lasting problem is logged once, not every period.
    left_out: Mutex<Vec<String>>,
    /// Whether the last store read failed, so an outage is logged when it starts and ends.
    failing: AtomicBool,
    /// The live mesos-driver sets last reported by ZooKeeper discovery; None until its first
    /// read when discovery is on ([`Publisher::await_discovery`]).
    mesos: Mutex<Option<Vec<MesosDrivers>>>,
    /// Counts [`Publisher::changed`] and [`Publisher::announce`] calls (local writes), for
    /// announcing them to other instances.
    local_writes: watch::Sender<u64>,
    /// Counts [`Publisher::changed_elsewhere`] calls (writes by other instances).
    elsewhere: watch::Sender<u64>,
}

impl Publisher {
    pub fn new(turn_on_rbac: bool, metrics: SnapshotMetrics) -> Self {
        Publisher {
            sender: watch::channel(None).0,
            wake: Notify::new(),
            force: AtomicBool::new(false),
            floor: AtomicU64::new(0),
            turn_on_rbac,
            metrics,
            left_out: Mutex::new(Vec::new()),
            failing: AtomicBool::new(false),
            mesos: Mutex::new(Some(Vec::new())),
            local_writes: watch::channel(0).0,
            elsewhere: watch::channel(0).0,
        }
    }

    /// Something a proxy must see was written: rebuild soon. Never waits.
    pub fn changed(&self) {
        self.announce();
        self.wake.notify_one();
    }

    /// For a REST handler about to write what a proxy must see: the guard calls
    /// [`Publisher::changed`] when it is dropped, however the handler ends. Calling `changed`
    /// after the write's `.await` instead would skip it when the handler is dropped in that
    /// await (hyper drops a handler whose client went away) or when the store's timeout fires
    /// after COMMIT was sent: the write may have landed, and the proxies would then hear of it
    /// only at the next [`PERIOD`]ic rebuild, a revoked token working until then.
    pub fn change(&self) -> Change<'_> {
        Change(Some(self))
    }

    /// Something other instances must hear of, but no proxy, was written: announce it only.
    pub fn announce(&self) {
        self.local_writes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Another admin instance wrote to the shared store: rebuild soon (not announced again).
    pub fn changed_elsewhere(&self) {
        self.elsewhere.send_modify(|n| *n = n.wrapping_add(1));
        self.wake.notify_one();
    }

    /// Ticks on every [`Publisher::changed`] and [`Publisher::announce`].
    pub fn local_writes(&self) -> watch::Receiver<u64> {
        self.local_writes.subscribe()
    }

    /// Ticks on every [`Publisher::changed_elsewhere`].
    pub fn elsewhere(&self) -> watch::Receiver<u64> {
        self.elsewhere.subscribe()
    }

    /// ZooKeeper discovery is on: until its first read ([`Publisher::set_mesos`]) snapshots
    /// say the driver sets are not known yet, so proxies keep theirs. Call before the first
    /// build.
    pub fn await_discovery(&self) {
        *self.mesos.lock().expect("never poisoned: no panic while held") = None;
    }

    /// The live mesos-drivers per cluster; rebuilds soon if they differ from the last sets.
    pub fn set_mesos(&self, mut sets: Vec<MesosDrivers>) {
        sets.sort_by(|a, b| a.cluster_id.cmp(&b.cluster_id));
        let mut mesos = self.mesos.lock().expect("never poisoned: no panic while held");
        if mesos.as_ref() != Some(&sets) {
            *mesos = Some(sets);
            self.wake.notify_one();
        }
    }

    /// The driver sets last given to [`Publisher::set_mesos`] (None before the first read).
    pub fn mesos_sets(&self) -> Option<Vec<MesosDrivers>> {
        self.mesos.lock().expect("never poisoned: no panic while held").clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Current> {
        self.sender.subscribe()
    }

    pub fn current(&self) -> Current {
        self.sender.borrow().clone()
    }

    pub fn metrics(&self) -> &SnapshotMetrics {
        &self.metrics
    }

    /// A proxy said it holds `revision`. If that is newer than ours, the next snapshot is
    /// numbered above it and published whatever its content.
    pub fn peer_holds(&self, revision: u64) {
        if !bcs_shared::snapshot::revision_trusted(revision) {
            tracing::warn!(revision, "a proxy holds a snapshot revision far in the future; not numbering after it");
            return;
        }
        let ours = self.current().map_or(0, |c| c.revision());
        if revision > ours {
            tracing::info!(revision, ours, "a proxy holds a newer revision than ours; republishing above it");
            self.floor.fetch_max(revision, Ordering::SeqCst);
            self.force.store(true, Ordering::SeqCst);
            self.wake.notify_one();
        }
    }

    /// Reads the store, builds a snapshot and publishes it if it differs from the current one.
    pub async fn rebuild(&self, store: &Store, sealer: &Sealer) -> Outcome {
        let started = Instant::now();
        // Read `force` before `floor`: [`Publisher::peer_holds`] writes them the other way round.
        let force = self.force.swap(false, Ordering::SeqCst);
        let outcome = self.rebuild_once(store, sealer, force).await;
        if force && matches!(outcome, Outcome::Failed | Outcome::Invalid) {
            self.force.store(true, Ordering::SeqCst);
        }
        self.metrics.build_seconds.observe(started.elapsed().as_secs_f64());
        self.metrics.builds.with_label_values(&[outcome.label()]).inc();
        outcome
    }

    async fn rebuild_once(&self, store: &Store, sealer: &Sealer, force: bool) -> Outcome {
        let rows = match store.snapshot_rows().await {
            Ok(rows) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("the store answers again; snapshots are built again");
                }
                rows
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "cannot read the store for a snapshot; proxies keep the current one");
                } else {
                    tracing::debug!(error = %e, "the store still does not answer");
                }
                return Outcome::Failed;
            }
        };
        let current = self.current();
        let last = current.as_ref().map_or(0, |c| c.revision());
        let revision = next_revision(last, self.floor.load(Ordering::SeqCst), now_ms());
        let stamp = Stamp { revision, generated_at: crate::now(), turn_on_rbac: self.turn_on_rbac };
        let mesos = self.mesos.lock().expect("never poisoned: no panic while held").clone();
        let built = match builder::build_with_mesos(rows, sealer, stamp, mesos) {
            Ok(built) => built,
            Err(invalid) => {
                tracing::error!(%invalid, "the store's data makes an invalid snapshot; proxies keep the current one");
                return Outcome::Invalid;
            }
        };
        self.report_left_out(built.left_out);
        let snapshot = built.snapshot;
        if !force && current.as_ref().is_some_and(|c| same_content(&c.snapshot, &snapshot)) {
            return Outcome::Unchanged;
        }
        let message = Message::Snapshot(snapshot);
        let frame = wire::encode(&message);
        let Message::Snapshot(snapshot) = message else { unreachable!("built as a snapshot") };
        if frame.len() - 4 > MAX_FRAME {
            tracing::error!(
                bytes = frame.len(),
                max = MAX_FRAME,
                "the snapshot is larger than a frame may be; proxies keep the current one"
            );
            return Outcome::Invalid;
        }
        let counts = (snapshot.users.len(), snapshot.tokens.len(), snapshot.clusters.len());
        let drivers: usize = snapshot.mesos.iter().map(|m| m.drivers.len()).sum();
        let mesos_pending = snapshot.mesos_pending;
        self.sender.send_replace(Some(Arc::new(Published { snapshot, frame })));
        self.metrics.revision.set(i64::try_from(revision).unwrap_or(i64::MAX));
        tracing::info!(
            revision,
            users = counts.0,
            tokens = counts.1,
            clusters = counts.2,
            mesos_drivers = drivers,
            mesos_pending,
            "published a snapshot"
        );
        Outcome::Published(revision)
    }

    fn report_left_out(&self, left_out: Vec<String>) {
        let mut last = self.left_out.lock().expect("never poisoned: no panic while held");
        if *last != left_out {
            for why in &left_out {
                tracing::error!(reason = %why, "left out of the snapshot");
            }
            *last = left_out;
        }
    }

    /// Rebuilds on every [`Publisher::changed`] and every [`PERIOD`] until shutdown; waits
    /// `first_wait` before the first rebuild (the caller built the first snapshot).
    pub async fn run(&self, store: &Store, sealer: &Sealer, first_wait: Duration, mut shutdown: Shutdown) {
        let mut wait = first_wait;
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait() => return,
            }
            wait = self.rebuild(store, sealer).await.next_wait();
        }
    }
}

/// Above the last revision, above any revision a proxy holds, and the current time in ms
/// when that is higher (so a restarted admin starts above its predecessor).
pub fn next_revision(last: u64, floor: u64, now_ms: u64) -> u64 {
    now_ms.max(last.saturating_add(1)).max(floor.saturating_add(1))
}

/// Equal apart from `revision` and `generated_at`.
pub fn same_content(a: &Snapshot, b: &Snapshot) -> bool {
    a.turn_on_rbac == b.turn_on_rbac
        && a.users == b.users
        && a.tokens == b.tokens
        && a.clusters == b.clusters
        && a.mesos == b.mesos
        && a.mesos_pending == b.mesos_pending
}

fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(revision: u64, users: usize) -> Snapshot {
        Snapshot {
            revision,
            generated_at: revision as i64,
            turn_on_rbac: true,
            users: (0..users as i64)
                .map(|id| bcs_shared::snapshot::User { id, name: format!("u{id}"), is_super_user: false })
                .collect(),
            tokens: vec![],
            clusters: vec![],
            mesos: vec![],
            mesos_pending: false,
        }
    }

    #[test]
    fn revisions_follow_the_clock_and_never_repeat() {
        assert_eq!(next_revision(0, 0, 1_000), 1_000);
        assert_eq!(next_revision(1_000, 0, 1_000), 1_001, "two builds in one millisecond");
        assert_eq!(next_revision(5_000, 0, 1_000), 5_001, "the clock went back");
        assert_eq!(next_revision(5_000, 9_000, 1_000), 9_001, "a proxy holds a newer revision");
        assert_eq!(next_revision(u64::MAX, 0, 1), u64::MAX);
    }

    #[test]
    fn content_ignores_revision_and_time() {
        assert!(same_content(&snapshot(1, 2), &snapshot(2, 2)));
        assert!(!same_content(&snapshot(1, 2), &snapshot(1, 3)));
        let mut other = snapshot(1, 2);
        other.turn_on_rbac = false;
        assert!(!same_content(&snapshot(1, 2), &other));
    }

    #[tokio::test]
    async fn mesos_sets_are_content_and_a_new_set_wakes_the_rebuild() {
        let mut other = snapshot(1, 2);
        other.mesos = vec![MesosDrivers { cluster_id: "c".into(), drivers: vec![] }];
        assert!(!same_content(&snapshot(1, 2), &other));

        let publisher = Publisher::new(true, crate::metrics::Metrics::default().snapshot.clone());
        let local = publisher.local_writes();
        publisher.set_mesos(other.mesos.clone());
        tokio::time::timeout(Duration::from_millis(100), publisher.wake.notified()).await.unwrap();
        publisher.set_mesos(other.mesos.clone());
        assert!(
            tokio::time::timeout(Duration::from_millis(50), publisher.wake.notified()).await.is_err(),
            "the same sets again wake nothing"
        );
        let elsewhere = publisher.elsewhere();
        publisher.changed_elsewhere();
        assert!(!local.has_changed().unwrap(), "a change elsewhere is not announced again");
        assert!(elsewhere.has_changed().unwrap(), "a change elsewhere is heard");
        publisher.changed();
        assert!(local.has_changed().unwrap(), "a local write is announced");
        assert!(
            tokio::time::timeout(Duration::from_millis(100), publisher.wake.notified()).await.is_ok(),
            "a local write wakes the rebuild"
        );
        let mut local = publisher.local_writes();
        publisher.announce();
        assert!(local.has_changed().unwrap(), "a write only announced is announced");
        local.borrow_and_update();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), publisher.wake.notified()).await.is_err(),
            "a write only announced rebuilds nothing"
        );
    }

    #[tokio::test]
    async fn changes_coalesce_into_one_pending_rebuild() {
        let publisher = Publisher::new(true, crate::metrics::Metrics::default().snapshot.clone());
        for _ in 0..10 {
            publisher.changed();
        }
        // One stored wake-up...
        tokio::time::timeout(Duration::from_millis(100), publisher.wake.notified()).await.unwrap();
        // ...and no second one.
        assert!(tokio::time::timeout(Duration::from_millis(50), publisher.wake.notified()).await.is_err());
    }

    #[tokio::test]
    async fn a_write_under_way_asks_for_a_rebuild_however_its_handler_ends() {
        let publisher = Publisher::new(true, crate::metrics::Metrics::default().snapshot.clone());
        let mut local = publisher.local_writes();
        let mut rebuilds = || {
            let asked = local.has_changed().unwrap();
            local.borrow_and_update();
            asked
        };
        // A handler dropped in the middle of its write's await (its client went away, or the
        // store's timeout fired after COMMIT was sent): the write may have landed.
        let handler = async {
            let _change = publisher.change();
            std::future::pending::<()>().await;
        };
        assert!(tokio::time::timeout(Duration::from_millis(10), handler).await.is_err());
        assert!(rebuilds(), "a handler dropped mid-write");

        let ok: Result<u8, StoreError> = publisher.change().settle(Ok(1));
        assert_eq!(ok.unwrap(), 1);
        assert!(rebuilds(), "a write that landed");
        let _ = publisher.change().settle::<()>(Err(StoreError::Unavailable("no answer within 5s".into())));
        assert!(rebuilds(), "the store did not answer in time: the commit may have landed");
        let _ = publisher.change().settle::<()>(Err(StoreError::Conflict("users.name".into())));
        assert!(!rebuilds(), "a conflict changed nothing");
        let _ = publisher.change().settle::<()>(Err(StoreError::OverLimit(3)));
        assert!(!rebuilds(), "a limit changed nothing");
        publisher.change().nothing();
        assert!(!rebuilds(), "nothing to change");
    }
}
