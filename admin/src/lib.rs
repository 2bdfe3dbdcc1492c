//! bcs-api's control plane: the REST API, the store, and start-up.
//!
//! | module | what |
//! |---|---|
//! | [`server`] | start-up and shutdown |
//! | [`rest`] | the REST API, one module per resource |
//! | [`store`] | users, tokens, clusters, credentials on SQLite or MySQL |
//! | [`sealer`] | encryption at rest for register tokens and cluster tokens |
//! | [`bootstrap`] | `bootstrap_users` |
//! | [`snapshot`] | snapshots for the proxies: building, publishing, the unix socket |
//! | [`supervisor`] | starting and restarting `bcs-api-proxy` |
//! | [`shutdown`] | one shutdown signal for every task |
//! | [`rbac`] | RBAC sync: role templates, grants, the reconciler, the permission subscription |
//! | [`metrics`] | observability (logging is `bcs_shared::logging`) |
//! | [`zk`] | ZooKeeper: mesos-driver discovery, registration, leader lock, change notices |
pub mod bootstrap;
pub mod metrics;
pub mod rbac;
pub mod rest;
/// Encryption at rest (shared with the proxy, which seals its persisted snapshot).
pub use bcs_shared::sealer;
pub mod server;
pub mod shutdown;
pub mod snapshot;
pub mod store;
pub mod supervisor;
pub mod zk;

/// Now, in Unix seconds: the store's time unit.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}
