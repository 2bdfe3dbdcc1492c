//! ZooKeeper (DESIGN §7; reference §5): mesos-driver discovery, this instance's registration,
//! the leader lock for singleton jobs, and change notices between admin instances that share
//! one MySQL. Optional: with `zk_config.bcs_zookeeper` empty nothing here runs.
//!
//! | what | module | znodes |
//! |---|---|---|
//! | the client, behind a small interface | [`client`] | |
//! | ServerInfo JSON | [`server_info`] | |
//! | live mesos-drivers into the snapshot | [`discovery`] | `/bcs/services/endpoints/mesosdriver/<cluster>/_c_…` |
//! | this instance's ServerInfo | [`registration`] | `/bcs/services/endpoints/apiserver/_c_<guid>-<ip><seq>` |
//! | leader lock -> `App.leader` | [`leader`] | `/bcs/services/bcs-api/leader/_c_<uuid>-latch-<seq>` |
//! | "the store changed" between instances | [`changes`] | `/bcs/services/bcs-api/changes` |
//!
//! [`run`] keeps one session at a time. Every task runs on it and retries what fails while the
//! session lives (a lost connection included: the client reconnects and re-sets its watches).
//! When the session ends (expired, or ZooKeeper unreachable for the session timeout) the tasks
//! stop, the leader flag drops, and a new session re-reads, re-watches and re-registers
//! everything. While there is no session the snapshot keeps the last driver sets: an outage
//! never empties them.
pub mod changes;
pub mod client;
pub mod discovery;
pub mod leader;
pub mod registration;
pub mod server_info;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bcs_shared::config::{defaults, non_empty, Config};
use prometheus::IntGauge;

use crate::shutdown::Shutdown;
use crate::snapshot::Publisher;
use client::{Session, State};
pub use server_info::ServerInfo;

pub const ENDPOINTS: &str = "/bcs/services/endpoints";
pub const MESOS_DRIVERS: &str = "/bcs/services/endpoints/mesosdriver";
pub const APISERVERS: &str = "/bcs/services/endpoints/apiserver";
pub const LEADER_LOCK: &str = "/bcs/services/bcs-api/leader";
pub const CHANGES: &str = "/bcs/services/bcs-api/changes";
/// The original's session timeout.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before a failed call is tried again on the same session.
const RETRY: Duration = Duration::from_millis(500);

pub struct Settings {
    /// `zk_config.bcs_zookeeper`.
    pub servers: String,
    pub session_timeout: Duration,
    /// What this instance registers under [`APISERVERS`].
    pub me: ServerInfo,
}

impl Settings {
    /// None when `zk_config.bcs_zookeeper` is empty.
    pub fn from_config(config: &Config) -> Option<Settings> {
        let servers = non_empty(&config.zk_config.bcs_zookeeper)?.split(',').map(str::trim).collect::<Vec<_>>();
        let servers = servers.into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>().join(",");
        if servers.is_empty() {
            return None;
        }
        let (scheme, port) = if config.tls_configured() {
            ("https", config.service_config.port.unwrap_or(defaults::SERVICE_PORT))
        } else {
            ("http", config.service_config.insecure_port.unwrap_or(defaults::INSECURE_PORT))
        };
        let me = ServerInfo {
            ip: non_empty(&config.local_config.local_ip).unwrap_or("127.0.0.1").to_owned(),
            port: port.into(),
            metric_port: config.metric_config.metric_port.unwrap_or(defaults::METRIC_PORT).into(),
            scheme: scheme.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id().into(),
            ..ServerInfo::default()
        };
        Some(Settings { servers, session_timeout: SESSION_TIMEOUT, me })
    }
}

/// What `/healthz` and `/metrics` show about ZooKeeper.
pub struct Status {
    inner: Mutex<StatusInner>,
    connected: IntGauge,
    drivers: IntGauge,
}

#[derive(Clone, Default)]
struct StatusInner {
    state: &'static str,
    session_id: i64,
    registered: String,
    mesos_clusters: usize,
    mesos_drivers: usize,
    last_error: String,
}

impl Status {
    pub fn new(registry: &prometheus::Registry) -> Status {
        let gauge = |name: &str, help: &str| crate::metrics::int_gauge(registry, name, help);
        Status {
            inner: Mutex::new(StatusInner { state: "connecting", ..StatusInner::default() }),
            connected: gauge("bcs_api_zookeeper_connected", "1 while the ZooKeeper session is connected"),
            drivers: gauge("bcs_api_mesos_drivers", "Live mesos-drivers in the snapshot, all clusters"),
        }
    }

    fn update(&self, f: impl FnOnce(&mut StatusInner)) {
        let mut inner = self.inner.lock().expect("never poisoned");
        f(&mut inner);
        self.connected.set(i64::from(inner.state == "connected"));
        self.drivers.set(i64::try_from(inner.mesos_drivers).unwrap_or(i64::MAX));
    }

    fn set_state(&self, state: &'static str) {
        self.update(|s| s.state = state);
    }

    pub fn connected(&self) -> bool {
        self.inner.lock().expect("never poisoned").state == "connected"
    }

    /// `{"state": connected|disconnected|connecting|unreachable, ...}`.
    pub fn json(&self) -> serde_json::Value {
        let s = self.inner.lock().expect("never poisoned").clone();
        let mut v = serde_json::json!({
            "state": s.state,
            "session_id": format!("{:#x}", s.session_id),
            "registered": s.registered,
            "mesos_clusters": s.mesos_clusters,
            "mesos_drivers": s.mesos_drivers,
        });
        if !s.last_error.is_empty() {
            v["last_error"] = s.last_error.into();
        }
        v
    }
}

/// `App.leader` is `holding && connected`: a leader that lost its connection stops acting as
/// one at once (it may be expired by now and another may hold the lock), and resumes if the
/// same session reconnects.
pub struct Leadership {
    flag: Arc<AtomicBool>,
    holding: AtomicBool,
    connected: AtomicBool,
    gauge: IntGauge,
}

impl Leadership {
    pub fn new(flag: Arc<AtomicBool>, registry: &prometheus::Registry) -> Leadership {
        let gauge = crate::metrics::int_gauge(
            registry,
            "bcs_api_leader",
            "1 while this instance holds the ZooKeeper leader lock",
        );
        flag.store(false, Ordering::SeqCst);
        Leadership { flag, holding: AtomicBool::new(false), connected: AtomicBool::new(false), gauge }
    }

    fn set_holding(&self, holding: bool) {
        self.holding.store(holding, Ordering::SeqCst);
        self.refresh();
    }

    fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::SeqCst);
        self.refresh();
    }

    fn refresh(&self) {
        let leader = self.holding.load(Ordering::SeqCst) && self.connected.load(Ordering::SeqCst);
        let was = self.flag.swap(leader, Ordering::SeqCst);
        self.gauge.set(i64::from(leader));
        if was != leader {
            tracing::info!(leader, "leadership changed");
        }
    }
}

/// Clears the leader flag when dropped.
struct NotLeadingOnExit(Arc<Leadership>);

impl Drop for NotLeadingOnExit {
    fn drop(&mut self) {
        self.0.set_holding(false);
        self.0.set_connected(false);
    }
}

/// Keeps a session and runs every ZooKeeper task on it until shutdown.
pub async fn run(
    settings: Settings,
    publisher: Arc<Publisher>,
    leadership: Arc<Leadership>,
    status: Arc<Status>,
    mut shutdown: Shutdown,
) {
    // However this task ends, a panic in a ZooKeeper task included, this instance stops leading.
    let _not_leading = NotLeadingOnExit(leadership.clone());
    let mut backoff = Duration::from_millis(200);
    // Our writes still to announce; marked so the first session announces the ones made before it.
    let mut local = publisher.local_writes();
    local.mark_changed();
    loop {
        status.set_state("connecting");
        let connected = tokio::select! {
            c = Session::connect(&settings.servers, settings.session_timeout) => c,
            _ = shutdown.wait() => return,
        };
        let session = match connected {
            Ok(session) => session,
            Err(e) => {
                tracing::warn!(servers = %settings.servers, error = %e,
                    "cannot reach ZooKeeper; proxies keep the last known mesos-drivers");
                status.update(|s| {
                    s.state = "unreachable";
                    s.last_error = e.to_string();
                });
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        let id = session.id();
        tracing::info!(session = format_args!("{id:#x}"), servers = %settings.servers, "ZooKeeper session established");
        status.update(|s| {
            s.state = "connected";
            s.session_id = id;
            s.last_error.clear();
        });
        leadership.set_connected(true);
        let ended = tokio::select! {
            _ = follow_state(&session, &status, &leadership) => "the session ended",
            _ = discovery::run(&session, &publisher, &status) => "discovery stopped",
            _ = registration::run(&session, &settings.me, &status) => "registration stopped",
            _ = leader::run(&session, &leadership) => "the leader task stopped",
            _ = changes::run(&session, &publisher, &mut local) => "change notices stopped",
            _ = shutdown.wait() => "",
        };
        leadership.set_holding(false);
        leadership.set_connected(false);
        if ended.is_empty() {
            // Dropping the session closes it: the registration and the lock go at once.
            drop(session);
            return;
        }
        tracing::warn!(
            session = format_args!("{id:#x}"),
            why = ended,
            "ZooKeeper session over; reconnecting (proxies keep the last known mesos-drivers)"
        );
        status.update(|s| s.registered.clear());
    }
}

/// Mirrors the session's state into the status and the leader flag; returns when it ends.
async fn follow_state(session: &Session, status: &Status, leadership: &Leadership) {
    let mut changes = session.state_changes();
    loop {
        let state = changes.next().await;
        match state {
            State::Connected => {
                tracing::info!("ZooKeeper connection restored");
                status.set_state("connected");
                leadership.set_connected(true);
            }
            State::Disconnected => {
                tracing::warn!("ZooKeeper connection lost; the session may still recover");
                status.set_state("disconnected");
                leadership.set_connected(false);
            }
            State::Ended => return,
        }
    }
}

/// Runs `step` until it succeeds or the session ends; a transient failure is logged and
/// retried after [`RETRY`].
pub(crate) async fn retrying<T, F, Fut>(what: &str, mut step: F) -> Result<T, client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = client::Result<T>>,
{
    let mut logged = false;
    loop {
        match step().await {
            Ok(value) => return Ok(value),
            Err(e @ client::Error::Ended(_)) => return Err(e),
            Err(e) => {
                if !logged {
                    tracing::warn!(error = %e, "ZooKeeper: {what} failed; retrying");
                    logged = true;
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_flag_falls_when_the_zookeeper_task_ends_however_it_ends() {
        let flag = Arc::new(AtomicBool::new(false));
        let leadership = Arc::new(Leadership::new(flag.clone(), &prometheus::Registry::new()));
        leadership.set_connected(true);
        leadership.set_holding(true);
        assert!(flag.load(Ordering::SeqCst));
        let guard = NotLeadingOnExit(leadership.clone());
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _guard = guard;
            panic!("a ZooKeeper task panicked");
        }));
        assert!(unwound.is_err());
        assert!(!flag.load(Ordering::SeqCst), "no longer the leader");
    }
}
