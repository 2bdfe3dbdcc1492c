//! RBAC sync (issue 7, DESIGN §8): the six `bke-*` ClusterRoles and per-user bindings in every
//! Kubernetes cluster, from three sources of grants kept in the store (`rbac_grants`):
//!
//! | source | module | when |
//! |---|---|---|
//! | `rbac.data` of the config file (`turn_on_conf`) | [`conf`] | each time this instance becomes the leader |
//! | the permission subscription (`turn_on_auth`) | [`subscription`] | while leader |
//! | `POST/DELETE /rest/rbac/grants` | [`crate::rest::rbac`] | on request |
//!
//! The reconciler keeps one worker per cluster with credentials ([`reconcile`] does one pass
//! over one cluster, [`kube`] talks to the apiserver with the cluster's stored token and CA).
//! A worker runs on every grant change, when its cluster's credentials change, and every
//! `rbac.sync_interval_seconds` (default 300); after a failure it retries with backoff (1 s
//! doubling up to the interval). Workers are independent, so a cluster that is down or slow
//! never delays another. Everything runs only while this instance is the leader
//! ([`crate::rest::App::leader`]).
//!
//! Grants may be written through any instance. A writer calls [`grants_written`], which
//! announces the write to the other instances (ZooKeeper's change notice, as for snapshot
//! writes) and remembers what the grants looked like after it. The leader, on each notice from
//! another instance, reads the grants again and reconciles only if they differ from what it
//! last saw ([`Rbac::heard_of_writes`]): a token created elsewhere costs one read of the
//! grants, not a reconcile of every cluster.
pub mod conf;
pub mod kube;
pub mod reconcile;
pub mod subscription;
pub mod templates;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bcs_shared::config::Config;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::metrics::RbacMetrics;
use crate::rest::AppState;
use crate::shutdown::Shutdown;
use crate::store::model::Grant;
use crate::store::Store;

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);
/// One reconcile of one cluster may take this long at most.
pub const RECONCILE_TIMEOUT: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// How long [`Rbac::wait_applied`] waits out failures: the worker's first two retries (1 s,
/// then 2 s later) fit in it.
const FAILURE_GRACE: Duration = Duration::from_secs(4);
/// How often the leader flag is looked at.
const LEADER_POLL: Duration = Duration::from_millis(500);

/// What the config file says about RBAC sync.
pub struct Settings {
    /// `turn_on_conf` or `turn_on_auth`: only then does the reconciler run.
    pub enabled: bool,
    pub interval: Duration,
    /// The config file's grants (`turn_on_conf`); `None` when off (its old grants are removed).
    pub conf: Option<Vec<crate::store::model::NewGrant>>,
    pub subscription: Option<subscription::Settings>,
}

impl Settings {
    pub fn from_config(config: &Config) -> anyhow::Result<Settings> {
        let turn_on_conf = config.rbac.turn_on_conf.unwrap_or(false);
        let turn_on_auth = config.rbac.turn_on_auth.unwrap_or(false);
        Ok(Settings {
            enabled: turn_on_conf || turn_on_auth,
            interval: config.rbac.sync_interval_seconds.map_or(DEFAULT_INTERVAL, Duration::from_secs),
            conf: turn_on_conf.then(|| conf::grants(&config.rbac.data)),
            subscription: if turn_on_auth { Some(subscription::Settings::from_config(config)?) } else { None },
        })
    }

    /// Nothing on (tests and tools that build an [`crate::rest::App`] by hand).
    pub fn disabled() -> Settings {
        Settings { enabled: false, interval: DEFAULT_INTERVAL, conf: None, subscription: None }
    }
}

/// Sync state of one cluster, as `/rest/rbac/status` shows it. Counts add up since start.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterStatus {
    pub cluster_id: String,
    /// Unix seconds.
    pub last_attempt: Option<i64>,
    pub last_success: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
    /// Bindings the grants want in this cluster (at the last attempt).
    pub desired_bindings: usize,
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
    /// RoleBindings the cluster refused at the last attempt (403, 422 in their namespace).
    pub refused_bindings: u64,
    /// The grant generation the last success / failure started from.
    #[serde(skip)]
    success_generation: u64,
    #[serde(skip)]
    failure_generation: u64,
}

/// State of the permission subscription.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SubscriptionStatus {
    pub connected: bool,
    pub worker_id: Option<String>,
    pub last_error: Option<String>,
    pub acked: u64,
    pub rejected: u64,
}

/// The handle the rest of the admin holds ([`crate::rest::App::rbac`]).
pub struct Rbac {
    pub settings: Settings,
    /// Bumped after every grant change; a worker that starts after a bump sees the change.
    generation: watch::Sender<u64>,
    /// Bumped after every reconcile attempt, to wake [`Rbac::wait_applied`].
    progress: watch::Sender<u64>,
    /// [`fingerprint`] of the grants as last read after a bump (None: unknown). Held across
    /// the read and the bump, so the last read is always the one remembered.
    grants_seen: tokio::sync::Mutex<Option<u64>>,
    clusters: Mutex<BTreeMap<String, ClusterStatus>>,
    /// Which clusters each grant change concerned (a failing cluster's worker wakes early only
    /// for its own).
    touched: Mutex<Touched>,
    pub(crate) subscription: Mutex<SubscriptionStatus>,
    pub(crate) metrics: RbacMetrics,
}

/// The last generation that changed the grants of every cluster, and of each cluster.
#[derive(Default)]
struct Touched {
    all: u64,
    clusters: std::collections::HashMap<String, u64>,
}

impl Rbac {
    pub fn new(settings: Settings, metrics: RbacMetrics) -> Arc<Rbac> {
        Arc::new(Rbac {
            settings,
            generation: watch::channel(0).0,
            progress: watch::channel(0).0,
            grants_seen: tokio::sync::Mutex::new(None),
            clusters: Mutex::default(),
            touched: Mutex::default(),
            subscription: Mutex::default(),
            metrics,
        })
    }

    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    /// Grants changed here, of the cluster `scope` (None or `*`: of any): every cluster
    /// reconciles soon. Returns the new generation. The grants are read first, so that a notice
    /// of this same write from elsewhere reconciles nothing more (a failed read only forgets
    /// what was seen: the next notice reconciles).
    pub async fn written(&self, store: &Store, scope: Option<&str>) -> u64 {
        if !self.enabled() {
            return self.bump_for(scope);
        }
        let mut seen = self.grants_seen.lock().await;
        *seen = store.grants().await.ok().map(|grants| fingerprint(&grants));
        self.bump_for(scope)
    }

    /// Bumps the generation, recording which clusters' grants changed.
    fn bump_for(&self, scope: Option<&str>) -> u64 {
        // Held across the bump: a worker woken by it reads what it concerned.
        let mut touched = self.touched.lock().unwrap();
        let generation = self.bump();
        match scope {
            Some(id) if id != "*" => {
                touched.clusters.insert(id.to_owned(), generation);
            }
            _ => touched.all = generation,
        }
        generation
    }

    /// Whether the grants of `cluster_id` changed after `generation`.
    fn touched_since(&self, cluster_id: &str, generation: u64) -> bool {
        let touched = self.touched.lock().unwrap();
        touched.all > generation || touched.clusters.get(cluster_id).is_some_and(|&g| g > generation)
    }

    /// Another instance wrote to the store: every cluster reconciles soon if the grants differ
    /// from what was last seen (or cannot be read, to be safe).
    pub async fn heard_of_writes(&self, store: &Store) {
        let mut seen = self.grants_seen.lock().await;
        let now = store.grants().await.map(|grants| fingerprint(&grants));
        if let Ok(now) = now {
            if *seen == Some(now) {
                return;
            }
        }
        if let Err(e) = &now {
            tracing::warn!(error = %e, "cannot read the RBAC grants after another instance's write; reconciling");
        }
        *seen = now.ok();
        self.bump_for(None);
    }

    /// This instance just became the leader: what it saw of the grants before (notices from
    /// the others were not followed meanwhile) is no guide, so the next notice reconciles.
    pub async fn forget_seen_grants(&self) {
        *self.grants_seen.lock().await = None;
    }

    fn bump(&self) -> u64 {
        let mut now = 0;
        self.generation.send_modify(|g| {
            *g += 1;
            now = *g;
        });
        now
    }

    /// Waits (at most `timeout`) until every cluster of `clusters` (`None`: every cluster with
    /// credentials now) has reconciled successfully from `generation` or later. A failure of
    /// one of them from that generation ends the wait with its error once it has lasted
    /// [`FAILURE_GRACE`] since the wait first saw it, in which the cluster's worker retries
    /// (a passing error is waited out).
    pub async fn wait_applied(
        &self,
        clusters: Option<Vec<String>>,
        generation: u64,
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        // When a failure from this generation was first seen (none while every pass succeeds).
        let mut failing_since: Option<tokio::time::Instant> = None;
        let mut progress = self.progress.subscribe();
        loop {
            progress.borrow_and_update();
            let now = tokio::time::Instant::now();
            {
                let statuses = self.clusters.lock().unwrap();
                let wanted: Vec<String> = match &clusters {
                    Some(ids) => ids.clone(),
                    None => statuses.keys().cloned().collect(),
                };
                let mut pending = false;
                let mut failing = None;
                for id in &wanted {
                    // No worker: no credentials yet. Its first pass, once its agent reports,
                    // applies every grant stored by then.
                    let Some(status) = statuses.get(id) else { continue };
                    if status.success_generation >= generation {
                        continue;
                    }
                    if status.failure_generation >= generation {
                        failing.get_or_insert_with(|| {
                            format!("cluster {id}: {}", status.last_error.as_deref().unwrap_or("the reconcile failed"))
                        });
                    }
                    pending = true;
                }
                if !pending {
                    return Ok(());
                }
                match failing {
                    Some(error) if now >= *failing_since.get_or_insert(now) + FAILURE_GRACE => return Err(error),
                    Some(_) => {}
                    None => failing_since = None,
                }
            }
            let wake = failing_since.map_or(deadline, |since| (since + FAILURE_GRACE).min(deadline));
            if tokio::time::timeout_at(wake, progress.changed()).await.is_err() && wake == deadline {
                return Err(format!("not applied within {timeout:?}"));
            }
        }
    }

    /// `/rest/rbac/status`.
    pub fn status(&self, leader: bool) -> Value {
        let clusters: Vec<ClusterStatus> = self.clusters.lock().unwrap().values().cloned().collect();
        json!({
            "enabled": self.settings.enabled,
            "leader": leader,
            "sync_interval_seconds": self.settings.interval.as_secs(),
            "turn_on_conf": self.settings.conf.is_some(),
            "turn_on_auth": self.settings.subscription.is_some(),
            "clusters": clusters,
            "subscription": self.settings.subscription.as_ref().map(|_| self.subscription.lock().unwrap().clone()),
        })
    }

    fn record(
        &self,
        cluster_id: &str,
        generation: u64,
        desired: usize,
        outcome: &Result<reconcile::Counts, (reconcile::Counts, String)>,
    ) {
        let now = crate::now();
        let counts = match outcome {
            Ok(c) | Err((c, _)) => *c,
        };
        {
            let mut statuses = self.clusters.lock().unwrap();
            let status = statuses
                .entry(cluster_id.to_owned())
                .or_insert_with(|| ClusterStatus { cluster_id: cluster_id.to_owned(), ..Default::default() });
            status.last_attempt = Some(now);
            status.desired_bindings = desired;
            status.created += counts.created;
            status.updated += counts.updated;
            status.deleted += counts.deleted;
            status.refused_bindings = counts.refused;
            match outcome {
                Ok(_) => {
                    status.last_success = Some(now);
                    status.success_generation = generation;
                }
                Err((_, e)) => {
                    status.last_error = Some(e.clone());
                    status.last_error_at = Some(now);
                    status.failure_generation = generation;
                }
            }
        }
        let m = &self.metrics;
        let actions = [
            ("created", counts.created),
            ("updated", counts.updated),
            ("deleted", counts.deleted),
            ("refused", counts.refused),
        ];
        for (action, n) in actions {
            if n > 0 {
                m.objects.with_label_values(&[cluster_id, action]).inc_by(n);
            }
        }
        let result = if outcome.is_ok() { "ok" } else { "error" };
        m.reconciles.with_label_values(&[cluster_id, result]).inc();
        if outcome.is_ok() {
            m.last_success.with_label_values(&[cluster_id]).set(now);
        }
        self.progress.send_modify(|p| *p += 1);
    }

    fn track(&self, cluster_id: &str) {
        // Both results from 0: a cluster's first error is then an increase an alert sees.
        for result in ["ok", "error"] {
            self.metrics.reconciles.with_label_values(&[cluster_id, result]);
        }
        self.clusters
            .lock()
            .unwrap()
            .entry(cluster_id.to_owned())
            .or_insert_with(|| ClusterStatus { cluster_id: cluster_id.to_owned(), ..Default::default() });
    }

    fn forget(&self, cluster_id: &str) {
        self.clusters.lock().unwrap().remove(cluster_id);
        self.touched.lock().unwrap().clusters.remove(cluster_id);
        // A deleted cluster's series go with it: clusters come and go, and each left six.
        let m = &self.metrics;
        let _ = m.last_success.remove_label_values(&[cluster_id]);
        for result in ["ok", "error"] {
            let _ = m.reconciles.remove_label_values(&[cluster_id, result]);
        }
        for action in ["created", "updated", "deleted", "refused"] {
            let _ = m.objects.remove_label_values(&[cluster_id, action]);
        }
        self.progress.send_modify(|p| *p += 1);
    }

    /// The clusters with a worker now.
    pub fn cluster_ids(&self) -> Vec<String> {
        self.clusters.lock().unwrap().keys().cloned().collect()
    }
}

struct Worker {
    target: watch::Sender<Arc<kube::Target>>,
    /// The credentials' version and the cluster's identifier: a cluster deleted and registered
    /// again under its id starts at version 1 again, with a new identifier.
    credentials: (i64, String),
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Grants were written through this instance: reconcile (when leading) and tell the others.
/// Returns the grant generation a reconcile must start from to include the write.
pub async fn grants_written(app: &AppState, scope: Option<&str>) -> u64 {
    app.snapshots.announce();
    app.rbac.written(&app.store, scope).await
}

/// Identifies a set of grants: equal sets (in id order) give equal values. A grant removed
/// and added again has a new id and so differs, which costs only a reconcile.
fn fingerprint(grants: &[Grant]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for g in grants {
        (g.id, &g.user_name, &g.cluster_id, &g.namespace, &g.role, &g.source).hash(&mut hasher);
    }
    hasher.finish()
}

/// The reconciler: runs until shutdown; idle unless enabled and leader.
pub async fn run(app: AppState, mut shutdown: Shutdown) {
    let rbac = app.rbac.clone();
    if !rbac.enabled() {
        return;
    }
    let mut snapshots = app.snapshots.subscribe();
    let mut elsewhere = app.snapshots.elsewhere();
    let mut workers: HashMap<String, Worker> = HashMap::new();
    let mut subscription: Option<tokio::task::JoinHandle<()>> = None;
    let mut leading = false;
    let mut conf_applied = false;
    loop {
        let leader = app.leader.load(Ordering::SeqCst);
        if leader && !leading {
            leading = true;
            conf_applied = false;
            rbac.forget_seen_grants().await;
            tracing::info!("this instance leads: RBAC sync starts");
            if let Some(settings) = &rbac.settings.subscription {
                rbac.metrics.wanted.set(1);
                subscription = Some(tokio::spawn(subscription::run(app.clone(), settings.clone())));
            }
        } else if !leader && leading {
            leading = false;
            workers.clear();
            if let Some(task) = subscription.take() {
                task.abort();
            }
            rbac.subscription.lock().unwrap().connected = false;
            rbac.metrics.connected.set(0);
            rbac.metrics.wanted.set(0);
            tracing::info!("this instance no longer leads: RBAC sync stops");
        }
        if leading {
            if !conf_applied {
                conf_applied = conf::apply(&app).await;
            }
            refresh_workers(&app, &mut workers);
        }
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = snapshots.changed() => {}
            Ok(()) = elsewhere.changed() => {
                if leading {
                    rbac.heard_of_writes(&app.store).await;
                }
            }
            _ = tokio::time::sleep(LEADER_POLL) => {}
        }
    }
    drop(workers);
    if let Some(task) = subscription {
        task.abort();
    }
}

/// One worker per Kubernetes cluster with credentials in the current snapshot; a worker whose
/// credentials changed gets the new ones (and reconciles at once).
fn refresh_workers(app: &AppState, workers: &mut HashMap<String, Worker>) {
    let Some(published) = app.snapshots.current() else { return };
    let mut seen = std::collections::HashSet::new();
    for cluster in &published.snapshot.clusters {
        if cluster.cluster_type == "mesos" {
            continue;
        }
        let Some(credentials) = &cluster.credentials else { continue };
        seen.insert(cluster.id.clone());
        let target = || {
            Arc::new(kube::Target {
                addresses: credentials.addresses.clone(),
                ca_pem: credentials.ca_pem.clone(),
                token: credentials.token.clone(),
            })
        };
        match workers.get_mut(&cluster.id) {
            Some(worker)
                if worker.credentials.0 == credentials.version && worker.credentials.1 == cluster.identifier => {}
            Some(worker) => {
                worker.credentials = (credentials.version, cluster.identifier.clone());
                worker.target.send_replace(target());
            }
            None => {
                app.rbac.track(&cluster.id);
                let (sender, receiver) = watch::channel(target());
                let task = tokio::spawn(work(app.clone(), cluster.id.clone(), receiver));
                let credentials = (credentials.version, cluster.identifier.clone());
                workers.insert(cluster.id.clone(), Worker { target: sender, credentials, task });
            }
        }
    }
    workers.retain(|id, _| {
        let keep = seen.contains(id);
        if !keep {
            app.rbac.forget(id);
        }
        keep
    });
}

async fn work(app: AppState, cluster_id: String, mut target: watch::Receiver<Arc<kube::Target>>) {
    let rbac = app.rbac.clone();
    let mut generation = rbac.generation.subscribe();
    let mut backoff = FIRST_BACKOFF;
    // Passes failed in a row: each starts at the next apiserver address, so one that connects
    // but hangs or fails does not take every pass.
    let mut failed = 0usize;
    loop {
        let started_generation = *generation.borrow_and_update();
        let current = target.borrow_and_update().clone();
        let (desired, outcome) =
            match tokio::time::timeout(RECONCILE_TIMEOUT, attempt(&app, &cluster_id, &current, failed)).await {
                Ok(done) => done,
                Err(_) => {
                    (0, Err((reconcile::Counts::default(), format!("no reconcile within {RECONCILE_TIMEOUT:?}"))))
                }
            };
        let wait = match &outcome {
            Ok(counts) => {
                backoff = FIRST_BACKOFF;
                failed = 0;
                if *counts != reconcile::Counts::default() {
                    tracing::info!(cluster = %cluster_id, ?counts, "RBAC reconciled");
                } else {
                    tracing::debug!(cluster = %cluster_id, "RBAC in sync");
                }
                rbac.settings.interval
            }
            Err((_, error)) => {
                tracing::warn!(cluster = %cluster_id, %error, retry_in = ?backoff, "RBAC reconcile failed");
                failed += 1;
                let wait = backoff;
                backoff = (backoff * 2).min(rbac.settings.interval);
                wait
            }
        };
        rbac.record(&cluster_id, started_generation, desired, &outcome);
        // A grant change starts the next pass at once, unless the cluster is failing: then
        // within GRANT_WAKE_WHILE_FAILING (or its backoff, if sooner), so that a burst of
        // changes sends a failing or overloaded apiserver one pass, not one per change, and a
        // cluster that has recovered still follows a change within seconds. New credentials
        // end the wait.
        let failing = outcome.is_err();
        let mut until = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                changed = generation.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if !failing {
                        break;
                    }
                    // Only for a change of this cluster's grants: other clusters' changes do
                    // not cut its backoff.
                    if rbac.touched_since(&cluster_id, started_generation) {
                        until = until.min(tokio::time::Instant::now() + GRANT_WAKE_WHILE_FAILING);
                    }
                }
                changed = target.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                _ = tokio::time::sleep_until(until) => break,
            }
        }
    }
}

/// The longest a grant change waits for the next pass of a failing cluster.
const GRANT_WAKE_WHILE_FAILING: Duration = Duration::from_secs(2);

type Attempt = (usize, Result<reconcile::Counts, (reconcile::Counts, String)>);

/// One pass; `failed`: passes failed before it in a row (which address to try first).
async fn attempt(app: &AppState, cluster_id: &str, target: &kube::Target, failed: usize) -> Attempt {
    let grants = match app.store.grants_for_cluster(cluster_id).await {
        Ok(grants) => grants,
        Err(e) => return (0, Err((reconcile::Counts::default(), format!("reading the grants: {e}")))),
    };
    let desired = reconcile::desired(&grants, cluster_id);
    let mut kube = match kube::Kube::connect(target, failed).await {
        Ok(kube) => kube,
        Err(e) => return (desired.len(), Err((reconcile::Counts::default(), e))),
    };
    (desired.len(), reconcile::run(&mut kube, &app.store, cluster_id, &desired).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::model::{grant_source, NewGrant};

    fn readonly(user: &str) -> NewGrant {
        NewGrant {
            user_name: user.into(),
            cluster_id: "*".into(),
            namespace: String::new(),
            role: "cluster-readonly".into(),
            source: grant_source::REST.into(),
        }
    }

    #[test]
    fn a_grant_change_concerns_its_own_cluster_or_every_one() {
        let rbac = Rbac::new(Settings::disabled(), crate::metrics::Metrics::default().rbac.clone());
        let start = rbac.bump();
        rbac.bump_for(Some("a"));
        assert!(rbac.touched_since("a", start));
        assert!(!rbac.touched_since("b", start), "another cluster's change");
        let later = rbac.bump_for(Some("*"));
        assert!(rbac.touched_since("b", start), "a change of every cluster's grants");
        assert!(!rbac.touched_since("a", later) && !rbac.touched_since("b", later));
        rbac.bump_for(None);
        assert!(rbac.touched_since("b", later));
    }

    /// On tokio's paused clock: the waits below are virtual time, not the wall clock.
    #[tokio::test(start_paused = true)]
    async fn a_passing_failure_is_waited_out_and_a_lasting_one_ends_the_wait() {
        let rbac = Rbac::new(Settings::disabled(), crate::metrics::Metrics::default().rbac.clone());
        rbac.track("c");
        let failed = Err((reconcile::Counts::default(), "apiserver said 500".to_owned()));
        let generation = rbac.bump();
        let waiting = {
            let rbac = rbac.clone();
            tokio::spawn(
                async move { rbac.wait_applied(Some(vec!["c".into()]), generation, Duration::from_secs(20)).await },
            )
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        rbac.record("c", generation, 1, &failed);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "a failure the worker retries does not end the wait at once");
        rbac.record("c", generation, 1, &Ok(reconcile::Counts::default()));
        assert_eq!(waiting.await.unwrap(), Ok(()), "the retry succeeded");

        let generation = rbac.bump();
        rbac.record("c", generation, 1, &failed);
        let started = tokio::time::Instant::now();
        let outcome = rbac.wait_applied(Some(vec!["c".into()]), generation, Duration::from_secs(20)).await;
        assert!(outcome.unwrap_err().contains("apiserver said 500"));
        assert!(started.elapsed() >= FAILURE_GRACE - Duration::from_millis(100), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_write_elsewhere_reconciles_only_when_the_grants_differ_from_the_last_seen() {
        let dir = tempfile::tempdir().unwrap();
        let dsn = crate::store::Dsn::Sqlite(dir.path().join("grants.db"));
        let store = crate::store::open(&dsn, dir.path()).await.unwrap();
        let settings = Settings { enabled: true, ..Settings::disabled() };
        let rbac = Rbac::new(settings, crate::metrics::Metrics::default().rbac.clone());
        let generation = || *rbac.generation.borrow();

        store.add_grant(readonly("plain:a"), 0).await.unwrap();
        assert_eq!(rbac.written(&store, None).await, 1, "a write here always reconciles");
        rbac.heard_of_writes(&store).await;
        assert_eq!(generation(), 1, "the notice of the same write from elsewhere adds nothing");

        let other = store.add_grant(readonly("plain:b"), 0).await.unwrap();
        rbac.heard_of_writes(&store).await;
        assert_eq!(generation(), 2, "a grant added elsewhere");
        rbac.heard_of_writes(&store).await;
        assert_eq!(generation(), 2, "a write elsewhere that is not a grant (a token, say)");

        assert!(store.remove_grant(other.id).await.unwrap());
        store.add_grant(readonly("plain:b"), 0).await.unwrap();
        rbac.heard_of_writes(&store).await;
        assert_eq!(generation(), 3, "removed and added again elsewhere");

        // Leading again after a spell as a follower: the grants may have changed and changed
        // back meanwhile, unseen, so the first notice reconciles whatever it reads.
        rbac.forget_seen_grants().await;
        rbac.heard_of_writes(&store).await;
        assert_eq!(generation(), 4, "the first notice after becoming the leader");
        rbac.heard_of_writes(&store).await;
        assert_eq!(generation(), 4);
    }
}
