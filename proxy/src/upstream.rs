//! Reaching upstreams: clusters' apiservers over TLS that trusts only the cluster's CA and
//! verifies the name `kubernetes` (apiserver certificates carry it; IP SANs often miss
//! failover masters), and admin over plain HTTP. Per core: a keep-alive pool keyed by
//! (address, cluster, credential version), TLS configs per credential version, and passive
//! ejection of addresses that fail.
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bcs_shared::snapshot::Address;
use rustls::pki_types::ServerName;

use crate::error::ProxyError;
use crate::io::Conn;
use crate::tables::Upstream;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a host name's lookup may take, before and apart from [`CONNECT_TIMEOUT`]: a name
/// server slow to answer (or lookups queued behind silent ones) fails the request with
/// [`ProxyError::NameLookup`], which does not set the address aside as silent.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a write of a request body to an upstream may wait: `proxy_config.
/// send_timeout_seconds`, set once at start (clients' sockets get it as `TCP_USER_TIMEOUT`).
static BODY_WRITE_LIMIT_MS: AtomicU64 = AtomicU64::new(60_000);
/// How long an upstream may take to start answering (504 after it): `proxy_config.
/// response_head_timeout_seconds`, set once at start.
static RESPONSE_HEAD_LIMIT_MS: AtomicU64 = AtomicU64::new(120_000);

/// Sets what an upstream may take, once at start, for every core.
pub fn set_limits(body_write: Duration, response_head: Duration) {
    let ms = |limit: Duration| u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
    BODY_WRITE_LIMIT_MS.store(ms(body_write), Ordering::Relaxed);
    RESPONSE_HEAD_LIMIT_MS.store(ms(response_head), Ordering::Relaxed);
}

pub fn body_write_limit() -> Duration {
    Duration::from_millis(BODY_WRITE_LIMIT_MS.load(Ordering::Relaxed))
}

pub fn response_head_limit() -> Duration {
    Duration::from_millis(RESPONSE_HEAD_LIMIT_MS.load(Ordering::Relaxed))
}
/// Idle pooled connections older than this are closed (below apiservers' keep-alive).
pub const POOL_IDLE: Duration = Duration::from_secs(30);
/// A pooled connection idle this long is checked for an upstream close before reuse (one
/// non-blocking peek). Busy connections, reused within milliseconds, skip it; a close that
/// races a request is left to the idempotent retry (forward.rs).
const CHECK_AFTER: Duration = Duration::from_secs(1);
const POOL_MAX_PER_KEY: usize = 64;
/// How long a failed address is skipped.
const EJECTION: Duration = Duration::from_secs(10);

/// An upstream address with its `host:port` written once, where the tables and the settings
/// are made: a request's pool key and ejection check borrow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: Address,
    pub authority: String,
}

impl From<Address> for Endpoint {
    fn from(address: Address) -> Endpoint {
        Endpoint { authority: address.authority(), address }
    }
}

/// Which pool a connection belongs to, borrowed from the request's destination: a request
/// makes no key of its own (a pool's first connection stores a [`StoredKey`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolKey<'a> {
    pub authority: &'a str,
    /// Cluster id (or `admin`) and credential version: a new version never reuses old sockets.
    pub owner: &'a str,
    pub version: i64,
}

/// A [`PoolKey`] as the pool keeps it. Both derive `Hash` over the same fields in the same
/// order, and a `String` hashes as its `str`, so a borrowed key finds its stored one.
#[derive(Debug, PartialEq, Eq, Hash)]
struct StoredKey {
    authority: String,
    owner: String,
    version: i64,
}

impl hashbrown::Equivalent<StoredKey> for PoolKey<'_> {
    fn equivalent(&self, stored: &StoredKey) -> bool {
        self.version == stored.version && self.owner == stored.owner && self.authority == stored.authority
    }
}

impl PoolKey<'_> {
    fn stored(&self) -> StoredKey {
        StoredKey { authority: self.authority.to_owned(), owner: self.owner.to_owned(), version: self.version }
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// One key's idle connections, and when an exchange on one of its connections last ended
/// cleanly: an address that answers others is not set aside for one slow request
/// ([`answered_lately`]).
struct Pooled {
    idle: Vec<Idle>,
    answered: Instant,
}

/// The owner of console proxies' connections (`conn.rs`): their addresses are clients' choice.
pub const CONSOLE_OWNER: &str = "console";
/// The owner of connections to admin's REST API.
pub const ADMIN_OWNER: &str = "admin";
/// Mesos-drivers' connections are owned by `mesos:<BCS cluster id>`.
pub const MESOS_OWNER_PREFIX: &str = "mesos:";

/// Idle connections by key, in two maps for the two kinds of key (by [`CONSOLE_OWNER`]).
#[derive(Default)]
struct Pools {
    /// foldhash: clusters', admin's and mesos-drivers' addresses come from the snapshot and
    /// the configuration, not from clients, and every pooled request hashes its key twice.
    ours: hashbrown::HashMap<StoredKey, Pooled>,
    /// SipHash (std's default): a webconsole request's address is the client's `host_ip`
    /// (within `webconsole_allowed_hosts`), so a client chooses these keys.
    clients: hashbrown::HashMap<StoredKey, Pooled, std::hash::RandomState>,
}

thread_local! {
    static POOL: RefCell<Pools> = RefCell::new(Pools::default());
    /// The credential version last seen per owner: a new one purges the owner's older sockets.
    /// foldhash: owners are the snapshot's cluster ids (`mesos:`-prefixed for drivers), `admin`
    /// and `console`, none a client's choice, and every pooled request looks its owner up.
    static VERSIONS: RefCell<foldhash::HashMap<String, i64>> = RefCell::new(foldhash::HashMap::default());
    static TLS_CONFIGS: RefCell<HashMap<(String, i64), Arc<rustls::ClientConfig>>> = RefCell::new(HashMap::new());
    /// The snapshot revision [`forget_gone`] last looked at.
    static SEEN_REVISION: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
    /// SipHash, as the pool: an unreachable `host_ip` is ejected here.
    static EJECTED: RefCell<HashMap<String, Ejected>> = RefCell::new(HashMap::new());
}

/// An idle pooled connection for `key`, if a fresh one is there. Connections of the same owner
/// with another credential version are closed on the way.
pub fn take_pooled(key: &PoolKey<'_>) -> Option<Conn> {
    let changed = VERSIONS.with(|v| {
        let mut v = v.borrow_mut();
        match v.get_mut(key.owner) {
            Some(version) if *version == key.version => false,
            Some(version) => {
                *version = key.version;
                true
            }
            None => {
                v.insert(key.owner.to_owned(), key.version);
                false
            }
        }
    });
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if key.owner == CONSOLE_OWNER {
            take_from(&mut pool.clients, key, changed)
        } else {
            take_from(&mut pool.ours, key, changed)
        }
    })
}

fn take_from<S: BuildHasher>(
    pool: &mut hashbrown::HashMap<StoredKey, Pooled, S>,
    key: &PoolKey<'_>,
    changed: bool,
) -> Option<Conn> {
    if changed {
        pool.retain(|k, _| k.owner != key.owner || k.version == key.version);
    }
    let idle = &mut pool.get_mut(key)?.idle;
    while let Some(mut entry) = idle.pop() {
        let idle_for = entry.since.elapsed();
        if idle_for >= POOL_IDLE {
            continue;
        }
        if idle_for >= CHECK_AFTER && !entry.conn.quiet() {
            tracing::debug!(owner = %key.owner, "the upstream closed a pooled connection; not reusing it");
            continue;
        }
        return Some(entry.conn);
    }
    None
}

/// Returns a connection whose last exchange ended cleanly. A TLS session still holding
/// anything that came in after the answer (more data, close_notify) is not pooled: the next
/// request would read it as its own answer.
pub fn put_pooled(key: PoolKey<'_>, mut conn: Conn) {
    if !conn.drained() {
        tracing::debug!(owner = %key.owner, "the upstream sent more after its answer; not pooling the connection");
        return;
    }
    // The next read on it is a response head, which must wake at its first byte (low_water.rs).
    debug_assert_eq!(conn.wake_mark().ok(), Some(1), "a pooled connection keeps a receive low-water mark");
    fn put<S: BuildHasher>(pool: &mut hashbrown::HashMap<StoredKey, Pooled, S>, key: PoolKey<'_>, conn: Conn) {
        let now = Instant::now();
        let idle = Idle { conn, since: now };
        match pool.get_mut(&key) {
            Some(pooled) => {
                pooled.answered = now;
                if pooled.idle.len() < POOL_MAX_PER_KEY {
                    pooled.idle.push(idle);
                }
            }
            None => {
                pool.insert(key.stored(), Pooled { idle: vec![idle], answered: now });
            }
        }
    }
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if key.owner == CONSOLE_OWNER {
            put(&mut pool.clients, key, conn)
        } else {
            put(&mut pool.ours, key, conn)
        }
    })
}

/// Closes pooled connections idle for longer than [`POOL_IDLE`] (the housekeeping tick calls
/// it every second, so the request path never scans the pool). A key without idle connections
/// is forgotten once its last answer is older than an answer may take.
pub fn expire_idle() {
    fn expire<S>(pool: &mut hashbrown::HashMap<StoredKey, Pooled, S>) {
        let remembered = response_head_limit();
        pool.retain(|_, pooled| {
            pooled.idle.retain(|e| e.since.elapsed() < POOL_IDLE);
            !pooled.idle.is_empty() || pooled.answered.elapsed() < remembered
        });
    }
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        expire(&mut pool.ours);
        expire(&mut pool.clients);
    })
}

/// After a new snapshot: drops this core's TLS configurations (their CA roots and session
/// tickets, which count against the process's ticket budget) of the clusters the tables no
/// longer have with those credentials, and the credential versions and connect-error counts of
/// the clusters they no longer have at all. Without it, a deleted cluster's
/// stayed for the life of the process. The housekeeping tick calls it every second; it works
/// only when the revision changed.
pub fn forget_gone() {
    let Some(tables) = crate::tables::current() else { return };
    if SEEN_REVISION.get() == Some(tables.revision) {
        return;
    }
    SEEN_REVISION.set(Some(tables.revision));
    let live: std::collections::HashSet<(&str, i64)> =
        tables.upstreams().map(|u| (u.cluster_id.as_str(), u.version)).collect();
    let ids: std::collections::HashSet<&str> = live.iter().map(|(id, _)| *id).collect();
    TLS_CONFIGS.with(|c| c.borrow_mut().retain(|(id, version), _| live.contains(&(id.as_str(), *version))));
    // A deleted cluster's connect-error series go with it, as its RBAC series do in bcs-api.
    crate::metrics::forget_clusters(|whose| {
        whose == ADMIN_OWNER || whose == CONSOLE_OWNER || ids.contains(whose) || tables.mesos_drivers(whose).is_some()
    });
    VERSIONS.with(|v| {
        v.borrow_mut().retain(|owner, _| {
            owner == ADMIN_OWNER
                || owner == CONSOLE_OWNER
                || owner.starts_with(MESOS_OWNER_PREFIX)
                || ids.contains(owner.as_str())
        })
    });
}

/// Clusters' TLS configurations on this core, for the metrics.
pub fn tls_config_count() -> usize {
    TLS_CONFIGS.with(|c| c.borrow().len())
}

/// Idle connections on this core, for the metrics.
pub fn pooled_count() -> usize {
    POOL.with(|pool| {
        let pool = pool.borrow();
        pool.ours.values().chain(pool.clients.values()).map(|pooled| pooled.idle.len()).sum()
    })
}

/// The addresses to try, healthy ones first, in the reported order (failover, as the
/// original: the first healthy address takes the traffic, which keeps pools warm).
pub fn candidates(endpoints: &[Endpoint]) -> Candidates<'_> {
    EJECTED.with(|e| {
        let e = e.borrow();
        if e.is_empty() {
            // The usual case: no clock read, no list made.
            return Candidates::InOrder(endpoints.iter());
        }
        // Only this request's addresses are looked up: the map (pruned by the housekeeping
        // tick, `probe_ejected`) may hold many others, webconsole hosts among them.
        let now = Instant::now();
        let (healthy, ejected): (Vec<&Endpoint>, Vec<&Endpoint>) =
            endpoints.iter().partition(|a| e.get(&a.authority).is_none_or(|x| x.until <= now));
        Candidates::Sorted(healthy.into_iter().chain(ejected).collect::<Vec<_>>().into_iter())
    })
}

/// The endpoints [`candidates`] gives, in the order to try them.
pub enum Candidates<'a> {
    InOrder(std::slice::Iter<'a, Endpoint>),
    Sorted(std::vec::IntoIter<&'a Endpoint>),
}

impl<'a> Iterator for Candidates<'a> {
    type Item = &'a Endpoint;

    fn next(&mut self) -> Option<&'a Endpoint> {
        match self {
            Candidates::InOrder(endpoints) => endpoints.next(),
            Candidates::Sorted(endpoints) => endpoints.next(),
        }
    }
}

/// Active health check: tries a TCP connection to ejected addresses that refused a connection
/// or timed out (at most [`PROBES_AT_ONCE`] per call, each in its own task, 2 s at most; a
/// TCP connection says nothing of the others: [`Why::probe_tells`]) and takes back the ones that
/// answer, so a recovered apiserver gets traffic before its ejection runs out. Returns at once:
/// the caller's housekeeping (closing revoked streams) never waits on a silent address.
pub fn probe_ejected() {
    let ejected: Vec<String> = EJECTED.with(|e| {
        let mut e = e.borrow_mut();
        let now = Instant::now();
        e.retain(|_, ejected| ejected.until > now);
        e.iter()
            .filter(|(_, ejected)| ejected.why.probe_tells())
            .map(|(authority, _)| authority.clone())
            .take(PROBES_AT_ONCE)
            .collect()
    });
    for authority in ejected {
        monoio::spawn(async move {
            let within = Duration::from_secs(2);
            let probe = monoio::time::timeout(within, crate::resolve::connect(&authority, within)).await;
            if matches!(probe, Ok(Ok(_))) {
                // Unless it was set aside meanwhile for not answering, which a connect does not disprove.
                let taken_back = EJECTED.with(|e| {
                    let mut e = e.borrow_mut();
                    let probed = e.get(&authority).is_some_and(|ejected| ejected.why.probe_tells());
                    probed && e.remove(&authority).is_some()
                });
                if taken_back {
                    tracing::info!(address = %authority, "upstream address answers again");
                }
            }
        });
    }
}

/// Ejected addresses probed per housekeeping round (every 5 s): a bound on the connections a
/// round opens, whatever made many addresses fail (ejection itself lasts 10 s).
const PROBES_AT_ONCE: usize = 32;

/// Why an address was set aside ([`EJECTION`] long; others are tried first meanwhile).
#[derive(Clone, Copy, PartialEq)]
enum Why {
    /// It refused a connection: a probe that connects takes it back.
    Refused,
    /// No connection within [`CONNECT_TIMEOUT`] (a host that is down, a firewall that drops):
    /// not dialled at all unless a probe connects, so that each request meanwhile fails at once
    /// instead of holding its client for the whole timeout.
    TimedOut,
    /// TCP connected but the TLS handshake did not finish within [`CONNECT_TIMEOUT`]: not
    /// dialled, as [`Why::TimedOut`], and not probed (it accepts connections, so a probe that
    /// connects proves nothing).
    HandshakeHung,
    /// TCP connected and the TLS handshake failed (a certificate the cluster's CA does not
    /// sign): dialled, since it fails at once, but not probed (a TCP connection does not say
    /// the certificate changed); it is back when the set-aside time runs out.
    TlsFailed,
    /// It took a request and closed or timed out unanswered: it accepts connections, so a
    /// probe proves nothing.
    Unanswered,
}

impl Why {
    /// Whether a TCP connection to the address says it is back: not for one that accepts
    /// connections and then fails (unanswered, a TLS handshake that hangs or fails).
    fn probe_tells(self) -> bool {
        !matches!(self, Why::Unanswered | Why::HandshakeHung | Why::TlsFailed)
    }

    /// Whether the address is not dialled at all while set aside (its failures took the whole
    /// connect timeout).
    fn silent(self) -> bool {
        matches!(self, Why::TimedOut | Why::HandshakeHung)
    }
}

struct Ejected {
    until: Instant,
    why: Why,
}

/// `endpoint` could not be connected to (`error`), for `whose` requests (the `cluster` label of
/// `bcs_api_upstream_connect_errors_total`: a cluster id, `admin` or `console`).
pub fn eject(endpoint: &Endpoint, error: &ProxyError, whose: &str) {
    // `connect`, `connect_timeout`, `name_lookup`, `tls`, `tls_timeout`, `config`: the metric
    // says "upstream".
    crate::metrics::upstream_connect_error(whose, error.reason().trim_start_matches("upstream_"));
    let why = match error {
        ProxyError::ConnectTimeout(_) => Why::TimedOut,
        ProxyError::HandshakeTimeout(_) => Why::HandshakeHung,
        ProxyError::UpstreamTls(_) => Why::TlsFailed,
        // The gateway's own configuration, not the address: every address would fail alike.
        ProxyError::UpstreamConfig(_) => return,
        _ => Why::Refused,
    };
    set_aside(endpoint, why);
}

/// `endpoint` took a request and closed or timed out unanswered.
pub fn eject_unanswered(endpoint: &Endpoint) {
    set_aside(endpoint, Why::Unanswered);
}

/// Whether an exchange with `endpoint` (for any cluster) ended cleanly on this core within the
/// last [`response_head_limit`]: a request that waited that long for its answer then met an
/// address that answers others, so the request was slow (a `…/proxy/…` call to a slow
/// service, a long list), not the address. Looked up only when a request timed out.
pub fn answered_lately(endpoint: &Endpoint) -> bool {
    fn answered<S>(pool: &hashbrown::HashMap<StoredKey, Pooled, S>, authority: &str, within: Duration) -> bool {
        pool.iter().any(|(key, pooled)| key.authority == authority && pooled.answered.elapsed() < within)
    }
    let within = response_head_limit();
    POOL.with(|pool| {
        let pool = pool.borrow();
        answered(&pool.ours, &endpoint.authority, within) || answered(&pool.clients, &endpoint.authority, within)
    })
}

fn set_aside(endpoint: &Endpoint, why: Why) {
    let ejected = Ejected { until: Instant::now() + EJECTION, why };
    EJECTED.with(|e| e.borrow_mut().insert(endpoint.authority.clone(), ejected));
}

/// When `endpoint` is not to be dialled now (its connection or TLS handshake timed out), the
/// error a request skipping it gets: the same reason, for the metrics.
pub fn set_aside_silent(endpoint: &Endpoint) -> Option<ProxyError> {
    let why = EJECTED.with(|e| {
        let e = e.borrow();
        if e.is_empty() {
            return None;
        }
        e.get(&endpoint.authority).filter(|x| x.why.silent() && x.until > Instant::now()).map(|x| x.why)
    })?;
    let authority = &endpoint.authority;
    Some(match why {
        Why::HandshakeHung => {
            ProxyError::HandshakeTimeout(format!("{authority}: set aside after a TLS handshake that hung"))
        }
        _ => ProxyError::ConnectTimeout(format!("{authority}: set aside after a connect timeout")),
    })
}

fn tls_config(upstream: &Upstream) -> Result<Arc<rustls::ClientConfig>, ProxyError> {
    let key = (upstream.cluster_id.clone(), upstream.version);
    if let Some(config) = TLS_CONFIGS.with(|c| c.borrow().get(&key).cloned()) {
        return Ok(config);
    }
    let roots = bcs_shared::tls::roots_from_pem(upstream.ca_pem.as_bytes())
        .map_err(|e| ProxyError::UpstreamConfig(format!("the cluster CA {e}")))?;
    let mut config = bcs_shared::tls::http1_client_config(roots);
    config.resumption = crate::tickets::resumption();
    let config = Arc::new(config);
    TLS_CONFIGS.with(|c| {
        let mut c = c.borrow_mut();
        c.retain(|(id, _), _| id != &upstream.cluster_id);
        c.insert(key, config.clone());
    });
    Ok(config)
}

/// How to speak TLS to an `https://` upstream.
#[derive(Clone, Copy)]
pub enum Tls<'a> {
    /// A cluster's apiserver: only its CA, name `kubernetes`.
    Cluster(&'a Upstream),
    /// Internal services (mesos-drivers, console proxies): `cert_config.ca_file` and the client
    /// certificate, verified against the address's IP. None: not configured.
    Internal(Option<&'a Arc<rustls::ClientConfig>>),
}

/// A new connection to `endpoint` (TLS when `https://`).
pub async fn connect(endpoint: &Endpoint, tls: Tls<'_>) -> Result<Conn, ProxyError> {
    let (address, authority) = (&endpoint.address, &endpoint.authority);
    let addresses = lookup(authority).await?;
    // TCP and the TLS handshake within one budget; the TCP part bounds itself (each of a
    // name's addresses gets its share), the handshake gets what is left.
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let tcp = crate::resolve::connect_any(&addresses, CONNECT_TIMEOUT).await.map_err(|e| {
        let error = format!("{authority}: {e}");
        match e.kind() {
            std::io::ErrorKind::TimedOut => ProxyError::ConnectTimeout(error),
            _ => ProxyError::UpstreamConnect(error),
        }
    })?;
    let _ = tcp.set_nodelay(true);
    crate::io::keep_alive(&tcp, "upstream", None);
    if !address.tls {
        return Ok(Conn::Plain(tcp));
    }
    let (config, name) = match tls {
        Tls::Cluster(upstream) => {
            (tls_config(upstream)?, ServerName::try_from("kubernetes").expect("a valid DNS name"))
        }
        Tls::Internal(Some(config)) => {
            let ip: std::net::IpAddr = address.host.parse().map_err(|_| {
                ProxyError::UpstreamConfig(format!("{authority}: an internal https address must be an IP"))
            })?;
            (config.clone(), ServerName::IpAddress(ip.into()))
        }
        Tls::Internal(None) => {
            return Err(ProxyError::UpstreamConfig(format!("{authority}: https needs cert_config.ca_file")));
        }
    };
    // A hang here is the handshake's (the address accepts connections, so a TCP probe would
    // prove nothing): HandshakeTimeout, not ConnectTimeout.
    let left = deadline.saturating_duration_since(Instant::now());
    match crate::io::timeout(left, crate::tls::connect(tcp, config, name)).await {
        Ok(Ok(tls)) => Ok(Conn::Tls(tls)),
        Ok(Err(e)) => Err(ProxyError::UpstreamTls(format!("{authority}: TLS: {e}"))),
        Err(()) => Err(ProxyError::HandshakeTimeout(format!(
            "{authority}: TCP connected, but the TLS handshake did not finish within {CONNECT_TIMEOUT:?}"
        ))),
    }
}

/// `authority`'s addresses: an IP's at once, a name's within [`LOOKUP_TIMEOUT`].
async fn lookup(authority: &str) -> Result<std::rc::Rc<[std::net::SocketAddr]>, ProxyError> {
    crate::resolve::addresses(authority, LOOKUP_TIMEOUT)
        .await
        .map_err(|e| ProxyError::NameLookup(format!("{authority}: name lookup: {e}")))
}
