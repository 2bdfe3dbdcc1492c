//! Lookup tables compiled from a snapshot, and the one global that holds the current ones.
//!
//! A request loads the tables once (`current()`) and uses that one version throughout, so it
//! never sees a mix of two snapshots; a new snapshot is swapped in whole for every core at once.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;
use bcs_shared::identity::kubernetes_user_name;
use bcs_shared::secret::Secret;
use bcs_shared::snapshot::{parse_address, DigestKeyed, Snapshot};

use crate::upstream::Endpoint;

static TABLES: ArcSwapOption<Tables> = ArcSwapOption::const_empty();

#[derive(Debug)]
pub struct UserEntry {
    pub id: i64,
    pub name: String,
    /// `plain:alice` -> `plain.alice`.
    pub kubernetes_name: String,
    pub is_super_user: bool,
}

#[derive(Debug)]
pub struct TokenEntry {
    pub user: Arc<UserEntry>,
    pub expires_at: i64,
}

#[derive(Debug)]
pub struct ClusterEntry {
    pub id: String,
    pub identifier: String,
    pub upstream: Option<Arc<Upstream>>,
}

/// Where and as whom the gateway reaches a cluster.
#[derive(Debug)]
pub struct Upstream {
    pub cluster_id: String,
    /// The cluster's identifier (the tunnel path's), by which the tables find it.
    pub identifier: String,
    pub addresses: Vec<Endpoint>,
    pub ca_pem: String,
    pub token: Secret,
    /// The credentials' identity: their version together with the cluster's identifier. A
    /// cluster deleted and registered again under its id starts again at version 1, but gets
    /// a new identifier, so it shares no cached TLS configuration (its predecessor's CA) and no
    /// pooled connection with the cluster it replaces.
    pub version: i64,
}

/// See [`Upstream::version`]. `DefaultHasher::new()` hashes alike on every core and install.
fn credential_identity(version: i64, identifier: &str) -> i64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (version, identifier).hash(&mut hasher);
    hasher.finish() as i64
}

#[derive(Debug)]
pub struct Tables {
    pub revision: u64,
    pub generated_at: i64,
    pub turn_on_rbac: bool,
    pub installed_at: Instant,
    tokens: HashMap<[u8; 32], TokenEntry, DigestKeyed>,
    /// foldhash (as the mesos map): every request looks a cluster up, and the keys come from the
    /// snapshot, not from clients.
    clusters: foldhash::HashMap<String, Arc<ClusterEntry>>,
    /// Live mesos-drivers by BCS cluster id.
    mesos: foldhash::HashMap<String, Arc<Vec<Endpoint>>>,
}

/// SHA-256 of a presented token: the lookup key.
pub fn digest(token: &[u8]) -> [u8; 32] {
    bcs_shared::snapshot::Digest::of_bytes(token).0
}

impl Tables {
    /// Compiles a snapshot that passed `Snapshot::validate`.
    pub fn compile(snapshot: &Snapshot) -> Tables {
        let users: foldhash::HashMap<i64, Arc<UserEntry>> = snapshot
            .users
            .iter()
            .map(|u| {
                let entry = UserEntry {
                    id: u.id,
                    name: u.name.clone(),
                    kubernetes_name: kubernetes_user_name(&u.name),
                    is_super_user: u.is_super_user,
                };
                (u.id, Arc::new(entry))
            })
            .collect();
        let mut tokens = HashMap::with_capacity_and_hasher(snapshot.tokens.len(), DigestKeyed);
        for t in &snapshot.tokens {
            let Some(user) = users.get(&t.user_id) else { continue };
            tokens.insert(t.digest.0, TokenEntry { user: user.clone(), expires_at: t.expires_at });
        }
        let clusters = snapshot
            .clusters
            .iter()
            .map(|c| {
                let upstream = c.credentials.as_ref().map(|cred| {
                    Arc::new(Upstream {
                        cluster_id: c.id.clone(),
                        identifier: c.identifier.clone(),
                        addresses: cred.addresses.iter().filter_map(|a| parse_address(a)).map(Endpoint::from).collect(),
                        ca_pem: cred.ca_pem.clone(),
                        token: cred.token.clone(),
                        version: credential_identity(cred.version, &c.identifier),
                    })
                });
                let entry = ClusterEntry { id: c.id.clone(), identifier: c.identifier.clone(), upstream };
                (c.identifier.clone(), Arc::new(entry))
            })
            .collect();
        let mesos = snapshot
            .mesos
            .iter()
            .map(|m| {
                let drivers = m.drivers.iter().filter_map(|d| d.address()).map(Endpoint::from).collect();
                (m.cluster_id.clone(), Arc::new(drivers))
            })
            .collect();
        Tables {
            mesos,
            revision: snapshot.revision,
            generated_at: snapshot.generated_at,
            turn_on_rbac: snapshot.turn_on_rbac,
            installed_at: Instant::now(),
            tokens,
            clusters,
        }
    }

    pub fn token(&self, digest: &[u8; 32]) -> Option<&TokenEntry> {
        self.tokens.get(digest)
    }

    /// True while the token exists in these tables and has not expired.
    pub fn token_valid(&self, digest: &[u8; 32], now: i64) -> bool {
        self.tokens.get(digest).is_some_and(|t| t.expires_at > now)
    }

    pub fn cluster(&self, identifier: &str) -> Option<&Arc<ClusterEntry>> {
        self.clusters.get(identifier)
    }

    /// The live drivers of a Mesos cluster (None: unknown or none live).
    pub fn mesos_drivers(&self, cluster_id: &str) -> Option<&Arc<Vec<Endpoint>>> {
        self.mesos.get(cluster_id).filter(|d| !d.is_empty())
    }

    /// Whether a stream opened with `upstream` may go on under these tables: its cluster (the
    /// same registration: identifier and id) is still there with the token and CA the stream's
    /// connection was made with. Only the addresses changed (an agent's report without one
    /// master that failed a probe, and with it again next time): the connection is to an
    /// apiserver the cluster's CA verified, with the cluster's token, and cutting every watch
    /// and exec of the cluster on each such report would gain nothing.
    pub fn serves(&self, upstream: &Upstream) -> bool {
        self.cluster(&upstream.identifier).and_then(|c| c.upstream.as_ref()).is_some_and(|now| {
            now.cluster_id == upstream.cluster_id
                && (now.version == upstream.version
                    || now.ca_pem == upstream.ca_pem && now.token.ct_eq(upstream.token.expose()))
        })
    }

    /// Every cluster's credentials.
    pub fn upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.clusters.values().filter_map(|c| c.upstream.as_ref())
    }

    pub fn cluster_count(&self) -> usize {
        self.clusters.len()
    }
}

/// The tables every request uses now; None until a first snapshot is installed.
pub fn current() -> Option<Arc<Tables>> {
    TABLES.load_full()
}

/// Runs `f` on the current tables without touching their reference count (the request path:
/// an `Arc` clone per request would bounce one cache line between all cores).
pub fn with_current<T>(f: impl FnOnce(Option<&Tables>) -> T) -> T {
    let guard = TABLES.load();
    f(guard.as_deref())
}

/// Swaps in new tables for every core at once.
pub fn install(tables: Tables) {
    TABLES.store(Some(Arc::new(tables)));
}

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}
