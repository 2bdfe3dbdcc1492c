//! The permission subscription (`turn_on_auth`, reference §6.3): a WebSocket to
//! `<bkiam_auth_sub_server>/subscribers/bcs-api/sub` with HTTP basic auth
//! `bkiam_auth_app_code:bkiam_auth_app_secret`.
//!
//! Messages are JSON `{"app_code","type","worker_id","data_id","data"}`, handled only when
//! `app_code` is ours: `hi` (remember `worker_id`), `ping` (logged), `data` (a grant added or
//! deleted; `data` is a JSON string). A `data` message is acknowledged only after the change is
//! in the store and every cluster it concerns has reconciled from it, so after the binding
//! exists (or is gone); one that cannot be applied is logged with its reason and not
//! acknowledged. Changes are stored in the order they come; each message then waits for its
//! clusters on its own (at most [`MAX_WAITING`] at once), so a slow or failing cluster holds
//! back no message for another, and acknowledgements may come out of order. Differences from the original: cluster ids are matched exactly (the bcs-api
//! cluster id, or a BCS cluster id through the BCS cluster info), never by substring; `wss`
//! works (trusting `cert_config.ca_file`). Reconnects back off from 1 s to 30 s.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bcs_shared::config::{non_empty, Config};
use bcs_shared::secret::Secret;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::templates;
use crate::rest::AppState;
use crate::store::model::{grant_source, NewGrant};
use crate::store::StoreError;

pub const PATH: &str = "/subscribers/bcs-api/sub";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Without any message for this long the connection is taken as dead and reopened.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long an acknowledgement may take to be written.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a `data` message may wait for its clusters to reconcile before it is left
/// unacknowledged.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Settings {
    /// `ws://host:port/subscribers/bcs-api/sub` or `wss://...`.
    pub url: String,
    pub host: String,
    pub port: u16,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub app_code: String,
    /// `Basic base64(app_code:app_secret)`.
    pub authorization: Secret,
}

impl Settings {
    pub fn from_config(config: &Config) -> anyhow::Result<Settings> {
        let auth = &config.bkiam_auth;
        let server = non_empty(&auth.bkiam_auth_sub_server)
            .ok_or_else(|| anyhow::anyhow!("rbac.turn_on_auth needs bkiam_auth.bkiam_auth_sub_server"))?;
        let app_code = non_empty(&auth.bkiam_auth_app_code)
            .ok_or_else(|| anyhow::anyhow!("rbac.turn_on_auth needs bkiam_auth.bkiam_auth_app_code"))?;
        let secret = auth.bkiam_auth_app_secret.as_ref().map(|s| s.expose().to_owned()).unwrap_or_default();
        let base = if server.contains("://") { server.to_owned() } else { format!("ws://{server}") };
        let url = url::Url::parse(&base).map_err(|e| anyhow::anyhow!("bkiam_auth.bkiam_auth_sub_server: {e}"))?;
        let tls = match url.scheme() {
            "ws" => None,
            "wss" => {
                let ca_file = non_empty(&config.cert_config.ca_file).ok_or_else(|| {
                    anyhow::anyhow!("bkiam_auth.bkiam_auth_sub_server: wss needs cert_config.ca_file")
                })?;
                let pem = std::fs::read(ca_file).map_err(|e| anyhow::anyhow!("cert_config.ca_file {ca_file}: {e}"))?;
                let roots = bcs_shared::tls::roots_from_pem(&pem)
                    .map_err(|e| anyhow::anyhow!("cert_config.ca_file {ca_file} {e}"))?;
                Some(Arc::new(bcs_shared::tls::client_trusting(roots).with_no_client_auth()))
            }
            other => anyhow::bail!("bkiam_auth.bkiam_auth_sub_server: scheme {other} is not ws or wss"),
        };
        let host = url
            .host_str()
            .ok_or_else(|| anyhow::anyhow!("bkiam_auth.bkiam_auth_sub_server has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let authority = &url[url::Position::BeforeHost..url::Position::AfterPort];
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{app_code}:{secret}"));
        Ok(Settings {
            url: format!("{}://{authority}{PATH}", url.scheme()),
            host,
            port,
            tls,
            app_code: app_code.to_owned(),
            authorization: Secret::new(format!("Basic {credentials}")),
        })
    }
}

/// Subscribes until aborted (when leadership is lost or at shutdown), reconnecting.
pub async fn run(app: AppState, settings: Settings) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let outcome = session(&app, &settings, &mut backoff).await;
        {
            let mut status = app.rbac.subscription.lock().unwrap();
            status.connected = false;
            if let Err(e) = &outcome {
                status.last_error = Some(e.clone());
            }
        }
        app.rbac.metrics.connected.set(0);
        match outcome {
            Ok(()) => {
                tracing::info!(url = %settings.url, retry_in = ?backoff, "permission subscription closed; reconnecting")
            }
            Err(e) => {
                tracing::warn!(url = %settings.url, error = %e, retry_in = ?backoff, "permission subscription failed")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

async fn connect(settings: &Settings) -> Result<tokio_tungstenite::WebSocketStream<Box<dyn Io>>, String> {
    let tcp =
        tokio::net::TcpStream::connect((settings.host.as_str(), settings.port)).await.map_err(|e| e.to_string())?;
    let io: Box<dyn Io> = match &settings.tls {
        Some(config) => {
            let name = ServerName::try_from(settings.host.clone()).map_err(|e| format!("server name: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            Box::new(tls)
        }
        None => Box::new(tcp),
    };
    let mut request = settings.url.as_str().into_client_request().map_err(|e| e.to_string())?;
    let authorization = http::HeaderValue::from_str(settings.authorization.expose()).map_err(|e| e.to_string())?;
    request.headers_mut().insert(http::header::AUTHORIZATION, authorization);
    let (ws, _) = tokio_tungstenite::client_async(request, io).await.map_err(|e| e.to_string())?;
    Ok(ws)
}

async fn session(app: &AppState, settings: &Settings, backoff: &mut Duration) -> Result<(), String> {
    let ws = match tokio::time::timeout(CONNECT_TIMEOUT, connect(settings)).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return Err(format!("connect: {e}")),
        Err(_) => return Err(format!("connect: no connection within {CONNECT_TIMEOUT:?}")),
    };
    tracing::info!(url = %settings.url, "permission subscription connected");
    {
        let mut status = app.rbac.subscription.lock().unwrap();
        status.connected = true;
        status.last_error = None;
    }
    app.rbac.metrics.connected.set(1);
    let (mut sink, mut stream) = ws.split();
    let mut worker_id = String::new();
    // Messages are stored in the order they come; each waits for its clusters in a task of its
    // own, so that a slow or failing cluster holds back no other message. Dropped (aborted)
    // with the session: the service sends unacknowledged messages again after a reconnect.
    let mut waiting: tokio::task::JoinSet<Waited> = tokio::task::JoinSet::new();
    let mut ledger = Ledger::default();
    let mut arrived = 0u64;
    let mut idle_since = tokio::time::Instant::now();
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout_at(idle_since + IDLE_TIMEOUT, stream.next()) => next,
            Some(waited) = waiting.join_next(), if !waiting.is_empty() => {
                if let Ok(waited) = waited {
                    conclude(app, settings, &mut sink, &mut ledger, waited).await?;
                }
                continue;
            }
        };
        idle_since = tokio::time::Instant::now();
        let message = match next {
            Err(_) => return Err(format!("nothing received for {IDLE_TIMEOUT:?}")),
            Ok(None) => return Ok(()),
            Ok(Some(Err(e))) => return Err(format!("read: {e}")),
            Ok(Some(Ok(message))) => message,
        };
        let text = match message {
            Message::Text(text) => text.to_string(),
            Message::Binary(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Message::Close(_) => return Ok(()),
            _ => continue,
        };
        let Ok(envelope) = serde_json::from_str::<Value>(&text) else {
            tracing::warn!("permission subscription: a message that is not JSON; ignored");
            continue;
        };
        let field = |k: &str| envelope[k].as_str().unwrap_or_default().to_owned();
        if field("app_code") != settings.app_code {
            tracing::debug!(app_code = %field("app_code"), "permission subscription: message for another app_code; ignored");
            continue;
        }
        match field("type").as_str() {
            "hi" => {
                worker_id = field("worker_id");
                *backoff = Duration::from_secs(1);
                app.rbac.subscription.lock().unwrap().worker_id = Some(worker_id.clone());
                tracing::info!(%worker_id, "permission subscription: hi");
            }
            "ping" => tracing::debug!("permission subscription: ping"),
            "data" => {
                let data_id = field("data_id");
                let data = match &envelope["data"] {
                    Value::String(s) => serde_json::from_str::<Value>(s).unwrap_or(Value::Null),
                    other => other.clone(),
                };
                let worker = if field("worker_id").is_empty() { worker_id.clone() } else { field("worker_id") };
                arrived += 1;
                let (keys, stored) = record(app, &data).await;
                let message = Unapplied { seq: arrived, data_id, worker, keys };
                if waiting.len() >= MAX_WAITING {
                    // Bounded: the oldest wait ends within APPLY_TIMEOUT.
                    if let Some(Ok(waited)) = waiting.join_next().await {
                        conclude(app, settings, &mut sink, &mut ledger, waited).await?;
                    }
                }
                let app = app.clone();
                waiting.spawn(async move {
                    let outcome = match stored {
                        Ok(Stored::Done(what)) => Ok(what),
                        Ok(Stored::Waiting { what, clusters, generation }) => {
                            app.rbac.wait_applied(clusters, generation, APPLY_TIMEOUT).await.map(|()| what)
                        }
                        Err(reason) => Err(reason),
                    };
                    Waited { message, outcome }
                });
            }
            other => {
                app.rbac.metrics.messages.with_label_values(&["ignored"]).inc();
                tracing::debug!(kind = %other, "permission subscription: unknown message type; ignored");
            }
        }
    }
}

/// Messages waiting for their clusters at once, at most.
const MAX_WAITING: usize = 256;

/// A `data` message, once its clusters reconciled (or could not).
struct Waited {
    message: Unapplied<NewGrant>,
    /// What was applied, or why it was not.
    outcome: Result<String, String>,
}

/// Per grant ([`Unapplied::keys`]), what this session applied and what it could not.
struct Ledger<K> {
    /// The latest message applied (its arrival number).
    applied: HashMap<K, u64>,
    /// Messages not applied, under each of their keys.
    unapplied: HashMap<K, Vec<Unapplied<K>>>,
}

impl<K> Default for Ledger<K> {
    fn default() -> Self {
        Ledger { applied: HashMap::new(), unapplied: HashMap::new() }
    }
}

/// A `data` message (until it is applied, one not applied yet).
#[derive(Clone, Debug, PartialEq)]
struct Unapplied<K> {
    /// Its place in the session's arrivals.
    seq: u64,
    data_id: String,
    worker: String,
    /// The grant it changes ([`record`]), under each name it may have: a later message for
    /// the same grant decides its state, so an earlier one that was not applied is acknowledged
    /// with it. (Otherwise the service sends the earlier one again after a reconnect, and an
    /// `add` rejected before an applied `delete` would give the access back.)
    keys: Vec<K>,
}

/// Grants a [`Ledger`] holds at most; past it, it starts again (earlier messages are then sent
/// again after a reconnect, as without it).
const LEDGER_MAX: usize = 10_000;

impl<K: Clone + Eq + std::hash::Hash> Ledger<K> {
    /// Message `seq` was applied: the earlier ones for any of its grants that were not, now to
    /// acknowledge (each once).
    fn applied(&mut self, seq: u64, keys: &[K]) -> Vec<Unapplied<K>> {
        self.bound();
        let mut earlier: Vec<Unapplied<K>> = Vec::new();
        for key in keys {
            let latest = self.applied.entry(key.clone()).or_default();
            *latest = (*latest).max(seq);
            let Some(pending) = self.unapplied.remove(key) else { continue };
            let (before, after): (Vec<_>, Vec<_>) = pending.into_iter().partition(|p| p.seq < seq);
            if !after.is_empty() {
                self.unapplied.insert(key.clone(), after);
            }
            for message in before {
                if !earlier.iter().any(|e| e.data_id == message.data_id) {
                    earlier.push(message);
                }
            }
        }
        // Gone from their other keys' lists too.
        for done in &earlier {
            for key in done.keys.iter().filter(|k| !keys.contains(k)) {
                if let Some(pending) = self.unapplied.get_mut(key) {
                    pending.retain(|p| p.data_id != done.data_id);
                    if pending.is_empty() {
                        self.unapplied.remove(key);
                    }
                }
            }
        }
        earlier
    }

    /// A message was not applied. True: a later message for one of its grants was (acknowledge
    /// it); false: it is kept, for a later one to acknowledge.
    fn not_applied(&mut self, message: Unapplied<K>) -> bool {
        self.bound();
        if message.keys.iter().any(|k| self.applied.get(k).is_some_and(|&latest| latest > message.seq)) {
            return true;
        }
        for key in &message.keys {
            self.unapplied.entry(key.clone()).or_default().push(message.clone());
        }
        false
    }

    fn bound(&mut self) {
        if self.applied.len() > LEDGER_MAX {
            // What was applied is forgotten first: the messages not applied still wait for theirs.
            self.applied.clear();
        }
        if self.unapplied.len() > LEDGER_MAX {
            self.unapplied.clear();
        }
    }
}

/// Acknowledges an applied message, and the earlier ones for the same grant that were not; or
/// logs why it is not acknowledged.
async fn conclude<S>(
    app: &AppState,
    settings: &Settings,
    sink: &mut S,
    ledger: &mut Ledger<NewGrant>,
    waited: Waited,
) -> Result<(), String>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    let Waited { message, outcome } = waited;
    let (data_id, worker) = (message.data_id.clone(), message.worker.clone());
    match outcome {
        Ok(what) => {
            acknowledge(app, settings, sink, &data_id, &worker).await?;
            tracing::info!(%data_id, %what, "permission subscription: applied and acknowledged");
            for earlier in ledger.applied(message.seq, &message.keys) {
                acknowledge(app, settings, sink, &earlier.data_id, &earlier.worker).await?;
                tracing::info!(data_id = %earlier.data_id, by = %data_id, "permission subscription: not applied, but a later message for the same grant was; acknowledged");
            }
        }
        Err(reason) => {
            if ledger.not_applied(message) {
                acknowledge(app, settings, sink, &data_id, &worker).await?;
                tracing::info!(%data_id, %reason, "permission subscription: not applied, but a later message for the same grant was; acknowledged");
                return Ok(());
            }
            app.rbac.subscription.lock().unwrap().rejected += 1;
            app.rbac.metrics.messages.with_label_values(&["rejected"]).inc();
            tracing::warn!(%data_id, %reason, "permission subscription: not applied, not acknowledged");
        }
    }
    Ok(())
}

async fn acknowledge<S>(
    app: &AppState,
    settings: &Settings,
    sink: &mut S,
    data_id: &str,
    worker: &str,
) -> Result<(), String>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    let ack = json!({"app_code": settings.app_code, "type": "ack", "worker_id": worker, "data_id": data_id});
    // Bounded: a service that stops reading must not hold the subscription (the reconnect
    // that follows sends the next messages again).
    tokio::time::timeout(SEND_TIMEOUT, sink.send(Message::text(ack.to_string())))
        .await
        .map_err(|_| format!("send ack: not sent within {SEND_TIMEOUT:?}"))?
        .map_err(|e| format!("send ack: {e}"))?;
    app.rbac.subscription.lock().unwrap().acked += 1;
    app.rbac.metrics.messages.with_label_values(&["acked"]).inc();
    Ok(())
}

/// What storing a `data` message came to.
enum Stored {
    /// Nothing to wait for (a skipped policy, nothing to remove).
    Done(String),
    /// Stored as grant generation `generation`: applied once `clusters` (None: all) reconciled.
    Waiting { what: String, clusters: Option<Vec<String>>, generation: u64 },
}

/// Stores one `data` message's grant change (or finds nothing to do); Err: why it cannot be
/// applied. With the grant it changes, whether it adds or deletes it, under each name it may
/// have: the same user, role, scope and source, and the cluster as given (a bcs-api or BCS
/// cluster id) and, when it names one, as the bcs-api cluster id it resolves to.
async fn record(app: &AppState, data: &Value) -> (Vec<NewGrant>, Result<Stored, String>) {
    let change = match parse(data) {
        Ok(Parsed::Change(change)) => change,
        Ok(Parsed::Skipped(what)) => return (Vec::new(), Ok(Stored::Done(what))),
        Err(e) => return (Vec::new(), Err(e)),
    };
    let key = |cluster: &str| NewGrant { cluster_id: cluster.to_owned(), ..change.grant.clone() };
    let cluster_id = match resolve_cluster(app, &change.cluster).await {
        Ok(id) => id,
        // Deleting a cluster deletes the grants that name it: nothing is left to remove, and a
        // message that can never succeed would come back at every reconnect.
        Err(Unresolved::Unknown(why)) if change.operation == "delete" => {
            return (vec![key(&change.cluster)], Ok(Stored::Done(format!("nothing to remove: {why}"))))
        }
        // A BCS id registered in more than one project: a grant is not given (the first to
        // register an id must not receive the real cluster's grants), but a revocation is
        // carried out in every cluster of that id, or registering the id again elsewhere would
        // keep access in place.
        Err(Unresolved::Ambiguous(ids, _)) if change.operation == "delete" => {
            let mut keys = vec![key(&change.cluster)];
            keys.extend(ids.iter().map(|id| key(id)));
            return (keys, store_change(app, change, ids).await);
        }
        Err(Unresolved::Unknown(why) | Unresolved::Store(why) | Unresolved::Ambiguous(_, why)) => {
            return (vec![key(&change.cluster)], Err(why))
        }
    };
    let mut keys = vec![key(&change.cluster)];
    if cluster_id != change.cluster {
        keys.push(key(&cluster_id));
    }
    (keys, store_change(app, change, vec![cluster_id]).await)
}

/// A `data` message, read.
enum Parsed {
    Change(Change),
    /// Nothing to do (a namespace pattern policy).
    Skipped(String),
}

struct Change {
    operation: String,
    /// As given: a bcs-api or BCS cluster id, or `*`.
    cluster: String,
    /// The grant, but for its cluster id.
    grant: NewGrant,
}

fn parse(data: &Value) -> Result<Parsed, String> {
    let text = |v: &Value, what: &str| -> Result<String, String> {
        v.as_str().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).ok_or(format!("no {what}"))
    };
    let operation = text(&data["operation"], "operation")?;
    if operation != "add" && operation != "delete" {
        return Err(format!("unknown operation {operation:?}"));
    }
    let principal_type = text(&data["principal"]["principal_type"], "principal.principal_type")?;
    let principal_id = text(&data["principal"]["principal_id"], "principal.principal_id")?;
    let action = text(&data["action"], "action")?;
    let role = templates::parse_role(&action).ok_or(format!("unknown action {action:?}"))?;
    let resource_type = text(&data["resource_type"], "resource_type")?;
    let cluster = text(&data["resource_instance"]["cluster"], "resource_instance.cluster")?;
    let namespace = data["resource_instance"]["namespace"].as_str().unwrap_or_default().trim().to_owned();
    let policy_from = data["policy_from"].as_str().unwrap_or_default();

    let (namespace, from) = match resource_type.as_str() {
        "cluster" if cluster == "*" => (String::new(), "any-cluster"),
        "cluster" => match policy_from {
            "common" => (String::new(), "common"),
            "pattern_policy" => (String::new(), "any-cluster"),
            other => return Err(format!("unknown policy_from {other:?}")),
        },
        "namespace" if namespace == "*" => (String::new(), "any-namespaces"),
        "namespace" if namespace.is_empty() => return Err("no resource_instance.namespace".into()),
        "namespace" => match policy_from {
            "common" => {
                if !valid_namespace(&namespace) {
                    return Err(format!("namespace {namespace:?} is not a valid name"));
                }
                (namespace, "common")
            }
            // As the original: namespace pattern policies are not applied.
            "pattern_policy" => {
                return Ok(Parsed::Skipped(format!("skipped a namespace pattern policy for {namespace}")))
            }
            other => return Err(format!("unknown policy_from {other:?}")),
        },
        other => return Err(format!("unknown resource_type {other:?}")),
    };
    let grant = NewGrant {
        user_name: format!("{principal_type}:{principal_id}"),
        cluster_id: String::new(),
        namespace,
        role: role.to_owned(),
        source: format!("{}{from}", grant_source::AUTH_PREFIX),
    };
    Ok(Parsed::Change(Change { operation, cluster, grant }))
}

/// Stores a change of the grant in each of `cluster_ids` (one, or for a `delete`, every
/// cluster of a BCS id registered in several projects).
async fn store_change(app: &AppState, change: Change, cluster_ids: Vec<String>) -> Result<Stored, String> {
    let Change { operation, grant, .. } = change;
    let description = format!(
        "{operation} {} for {} in {}{}",
        grant.role,
        grant.user_name,
        cluster_ids.join(", "),
        if grant.namespace.is_empty() { String::new() } else { format!("/{}", grant.namespace) }
    );
    for id in &cluster_ids {
        let grant = NewGrant { cluster_id: id.clone(), ..grant.clone() };
        if operation == "add" {
            // In one cluster, only while the cluster is there (Store::add_cluster_grant).
            let added = if id == "*" {
                app.store.add_grant(grant, crate::now()).await.map(Some)
            } else {
                app.store.add_cluster_grant(grant, crate::now()).await
            };
            match added {
                Ok(Some(_)) | Err(StoreError::Conflict(_)) => {}
                Ok(None) => tracing::info!(cluster = %id, "a permission for a cluster deleted meanwhile; not stored"),
                Err(e) => return Err(format!("store: {e}")),
            }
        } else {
            app.store.remove_grant_matching(grant).await.map_err(|e| format!("store: {e}"))?;
        }
    }
    let scope = match cluster_ids.as_slice() {
        [one] => Some(one.as_str()),
        _ => None,
    };
    let generation = super::grants_written(app, scope).await;
    let clusters = (scope != Some("*")).then_some(cluster_ids);
    Ok(Stored::Waiting { what: description, clusters, generation })
}

/// The bcs-api cluster id for a cluster id from the permission service: `*`, the exact
/// bcs-api cluster id, or the exact BCS cluster id of a registered BCS cluster.
async fn resolve_cluster(app: &AppState, cluster: &str) -> Result<String, Unresolved> {
    if cluster == "*" {
        return Ok(cluster.to_owned());
    }
    let store = |e| Unresolved::Store(format!("store: {e}"));
    if let Some(found) = app.store.cluster(cluster).await.map_err(store)? {
        return Ok(found.id);
    }
    match app.store.bcs_cluster(None, cluster).await {
        Ok(Some(found)) => Ok(found.id),
        Ok(None) => Err(Unresolved::Unknown(format!("no cluster has the id or BCS cluster id {cluster:?}"))),
        Err(StoreError::Conflict(why)) => {
            Err(Unresolved::Ambiguous(app.store.bcs_cluster_ids(cluster).await.map_err(store)?, why))
        }
        Err(e) => Err(store(e)),
    }
}

/// Why a cluster id from the permission service names no one cluster.
enum Unresolved {
    Unknown(String),
    /// A BCS cluster id registered in more than one project: these clusters, and why.
    Ambiguous(Vec<String>, String),
    /// The store failed: try again later.
    Store(String),
}

/// A Kubernetes namespace name (DNS label).
pub fn valid_namespace(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64, keys: &[&str]) -> Unapplied<String> {
        Unapplied {
            seq,
            data_id: format!("d{seq}"),
            worker: "w".into(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
        }
    }

    fn keys(names: &[&str]) -> Vec<String> {
        names.iter().map(|k| k.to_string()).collect()
    }

    fn ids(done: Vec<Unapplied<String>>) -> Vec<String> {
        done.into_iter().map(|m| m.data_id).collect()
    }

    #[test]
    fn a_message_applied_acknowledges_the_earlier_ones_for_its_grant_once() {
        let mut ledger: Ledger<String> = Ledger::default();
        // Given as a BCS id "X" (resolved to "A") and as "A" itself; another grant "B".
        assert!(!ledger.not_applied(message(1, &["X", "A"])));
        assert!(!ledger.not_applied(message(2, &["A"])));
        assert!(!ledger.not_applied(message(3, &["B"])));
        assert!(!ledger.not_applied(message(6, &["X"])));
        // Message 5 for "X" resolved to "A": 1 and 2 are earlier; 6 is later; 3 is another grant.
        assert_eq!(ids(ledger.applied(5, &keys(&["X", "A"]))), ["d1", "d2"]);
        assert_eq!(ids(ledger.applied(7, &keys(&["A"]))), Vec::<String>::new(), "each acknowledged once");
        assert_eq!(ids(ledger.applied(8, &keys(&["X"]))), ["d6"]);
        assert_eq!(ids(ledger.applied(9, &keys(&["B"]))), ["d3"]);
        assert!(ledger.unapplied.is_empty(), "{:?}", ledger.unapplied.keys());
    }

    #[test]
    fn a_message_not_applied_after_a_later_one_was_is_acknowledged_at_once() {
        let mut ledger: Ledger<String> = Ledger::default();
        assert!(ledger.applied(5, &keys(&["X", "A"])).is_empty());
        // An earlier message that ends later (its wait ran longer), under either name.
        assert!(ledger.not_applied(message(3, &["A"])));
        assert!(ledger.not_applied(message(4, &["X"])));
        // A later one is not: it is kept for a later message to decide.
        assert!(!ledger.not_applied(message(6, &["A"])));
        // A message without a grant (it could not be read) is never acknowledged by another.
        assert!(!ledger.not_applied(message(1, &[])));
        assert_eq!(ids(ledger.applied(10, &[])), Vec::<String>::new());
    }
}
