//! A fake permission service (the bkiam "subserver" of reference §6.3): a WebSocket server on
//! loopback (plain, or TLS with its own CA) at `/subscribers/bcs-api/sub` that requires HTTP
//! basic auth `app_code:app_secret`, greets each subscriber with `hi`, and lets a test push
//! `ping` and `data` messages and wait for the subscriber's `ack`s.
//!
//! ```no_run
//! # async fn demo() {
//! use bcs_testkit::permission_service::{Grant, PermissionService};
//! let svc = PermissionService::start("bcs-app", "s3cret", false).await;
//! svc.wait_subscribers(1, std::time::Duration::from_secs(10)).await;
//! let id = svc.send_data(&Grant::cluster("add", "plain", "dev", "cluster-readonly", "K8S-001"));
//! svc.wait_ack(&id, std::time::Duration::from_secs(10)).await.expect("acked");
//! # }
//! ```
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::Message;

use crate::apiserver::CertPair;

pub const PATH: &str = "/subscribers/bcs-api/sub";

/// One `data` message's content (reference §6.3), serialised into the `data` string.
#[derive(Clone, Debug)]
pub struct Grant {
    pub operation: String,
    pub principal_type: String,
    pub principal_id: String,
    pub action: String,
    /// `cluster` or `namespace`.
    pub resource_type: String,
    pub cluster: String,
    pub namespace: String,
    /// `common` or `pattern_policy`.
    pub policy_from: String,
}

impl Grant {
    /// A cluster-scoped grant with `policy_from: common`.
    pub fn cluster(operation: &str, principal_type: &str, principal_id: &str, action: &str, cluster: &str) -> Grant {
        Grant {
            operation: operation.into(),
            principal_type: principal_type.into(),
            principal_id: principal_id.into(),
            action: action.into(),
            resource_type: "cluster".into(),
            cluster: cluster.into(),
            namespace: String::new(),
            policy_from: "common".into(),
        }
    }

    /// A namespace-scoped grant with `policy_from: common`.
    pub fn namespace(
        operation: &str,
        principal_type: &str,
        principal_id: &str,
        action: &str,
        cluster: &str,
        namespace: &str,
    ) -> Grant {
        Grant {
            resource_type: "namespace".into(),
            namespace: namespace.into(),
            ..Grant::cluster(operation, principal_type, principal_id, action, cluster)
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "operation": self.operation,
            "principal": {"principal_type": self.principal_type, "principal_id": self.principal_id},
            "scope_type": "project", "scope_instance": "fake-project", "service": "bcs",
            "action": self.action,
            "resource_type": self.resource_type,
            "resource_instance": {"cluster": self.cluster, "namespace": self.namespace},
            "policy_from": self.policy_from,
        })
    }
}

/// An `ack` a subscriber sent.
#[derive(Clone, Debug)]
pub struct Ack {
    pub data_id: String,
    pub worker_id: String,
    pub app_code: String,
    pub at: Instant,
}

struct Subscriber {
    id: u64,
    worker_id: String,
    outgoing: mpsc::UnboundedSender<Message>,
}

struct Shared {
    app_code: String,
    authorization: String,
    subscribers: Mutex<Vec<Subscriber>>,
    acks: Mutex<Vec<Ack>>,
    /// Every text frame a subscriber sent, in order.
    received: Mutex<Vec<String>>,
    changed: Notify,
    refused: AtomicUsize,
    accepted: AtomicUsize,
    next: AtomicU64,
    tasks: Mutex<Vec<AbortHandle>>,
}

/// The running fake service; stops (closing every connection) when dropped.
pub struct PermissionService {
    shared: Arc<Shared>,
    address: std::net::SocketAddr,
    certs: Option<CertPair>,
    accept: AbortHandle,
}

impl PermissionService {
    /// Listens on 127.0.0.1 (ephemeral port); `tls`: serve `wss` with a fresh CA
    /// ([`PermissionService::ca_pem`]) and a certificate for 127.0.0.1 and `localhost`.
    pub async fn start(app_code: &str, app_secret: &str, tls: bool) -> PermissionService {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the permission service");
        let address = listener.local_addr().expect("local address");
        let certs = tls.then(|| CertPair::generate_for("fake-permission-service-ca", &["127.0.0.1", "localhost"]));
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{app_code}:{app_secret}"));
        let shared = Arc::new(Shared {
            app_code: app_code.into(),
            authorization: format!("Basic {credentials}"),
            subscribers: Mutex::default(),
            acks: Mutex::default(),
            received: Mutex::default(),
            changed: Notify::new(),
            refused: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            next: AtomicU64::new(1),
            tasks: Mutex::default(),
        });
        let tls_config = certs.as_ref().map(|c| {
            let mut config = (*c.server_config()).clone();
            config.alpn_protocols.clear();
            Arc::new(config)
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone(), tls_config)).abort_handle();
        PermissionService { shared, address, certs, accept }
    }

    /// `127.0.0.1:<port>`: the value of `bkiam_auth.bkiam_auth_sub_server` for plain `ws`.
    pub fn host_port(&self) -> String {
        self.address.to_string()
    }

    /// `ws://127.0.0.1:<port>` or `wss://...`.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.certs.is_some() { "wss" } else { "ws" }, self.address)
    }

    /// The CA of the `wss` certificate (`None` for plain `ws`).
    pub fn ca_pem(&self) -> Option<String> {
        self.certs.as_ref().map(|c| c.ca_pem.clone())
    }

    pub fn app_code(&self) -> String {
        self.shared.app_code.clone()
    }

    /// Subscribers connected now.
    pub fn subscribers(&self) -> usize {
        self.shared.subscribers.lock().unwrap().len()
    }

    /// Connections refused for a wrong path or wrong credentials.
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Subscriptions accepted so far (reconnects included).
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until at least `n` subscribers are connected.
    pub async fn wait_subscribers(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, || self.subscribers() >= n).await
    }

    /// Waits (bounded) until `accepted()` reaches `n`.
    pub async fn wait_accepted(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, || self.accepted() >= n).await
    }

    async fn wait_until(&self, timeout: Duration, done: impl Fn() -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.shared.changed.notified();
            if done() {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return done();
            }
        }
    }

    /// Sends a `data` message carrying `grant` to every subscriber; returns its `data_id`.
    pub fn send_data(&self, grant: &Grant) -> String {
        self.send_data_as(&self.shared.app_code.clone(), grant)
    }

    /// [`PermissionService::send_data`] with another `app_code` in the envelope.
    pub fn send_data_as(&self, app_code: &str, grant: &Grant) -> String {
        let data_id = format!("data-{}", self.shared.next.fetch_add(1, Ordering::SeqCst));
        self.send_envelope(app_code, "data", &data_id, &grant.to_json().to_string());
        data_id
    }

    /// Sends the same `data_id` again (a redelivery of an unacknowledged message).
    pub fn redeliver(&self, data_id: &str, grant: &Grant) {
        self.send_envelope(&self.shared.app_code.clone(), "data", data_id, &grant.to_json().to_string());
    }

    pub fn send_ping(&self) {
        self.send_envelope(&self.shared.app_code.clone(), "ping", "", "");
    }

    /// Sends any text frame to every subscriber.
    pub fn send_raw(&self, text: &str) {
        for s in self.shared.subscribers.lock().unwrap().iter() {
            let _ = s.outgoing.send(Message::text(text.to_owned()));
        }
    }

    fn send_envelope(&self, app_code: &str, kind: &str, data_id: &str, data: &str) {
        for s in self.shared.subscribers.lock().unwrap().iter() {
            let envelope =
                json!({"app_code": app_code, "type": kind, "worker_id": s.worker_id, "data_id": data_id, "data": data});
            let _ = s.outgoing.send(Message::text(envelope.to_string()));
        }
    }

    /// Every ack received so far.
    pub fn acks(&self) -> Vec<Ack> {
        self.shared.acks.lock().unwrap().clone()
    }

    pub fn acked(&self, data_id: &str) -> bool {
        self.shared.acks.lock().unwrap().iter().any(|a| a.data_id == data_id)
    }

    /// Every text frame subscribers sent.
    pub fn received(&self) -> Vec<String> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Waits (bounded) for the ack of `data_id`.
    pub async fn wait_ack(&self, data_id: &str, timeout: Duration) -> Option<Ack> {
        self.wait_until(timeout, || self.acked(data_id)).await;
        self.shared.acks.lock().unwrap().iter().find(|a| a.data_id == data_id).cloned()
    }

    /// Closes every subscriber's connection (the subscriber should reconnect).
    pub fn disconnect_all(&self) {
        self.shared.subscribers.lock().unwrap().clear();
        self.shared.changed.notify_waiters();
    }
}

impl Drop for PermissionService {
    fn drop(&mut self) {
        self.accept.abort();
        for t in self.shared.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>, tls: Option<Arc<rustls::ServerConfig>>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let shared2 = shared.clone();
        let tls = tls.clone();
        let task = tokio::spawn(async move {
            match tls {
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        serve(stream, shared2).await;
                    }
                }
                None => serve(tcp, shared2).await,
            }
        });
        let mut tasks = shared.tasks.lock().unwrap();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task.abort_handle());
    }
}

async fn serve<S>(stream: S, shared: Arc<Shared>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let expected = shared.authorization.clone();
    #[allow(clippy::result_large_err)] // the callback's type is tungstenite's
    let check = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        let authorized =
            request.headers().get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str());
        if request.uri().path() != PATH || !authorized {
            let status = if request.uri().path() != PATH { 404 } else { 401 };
            let mut refusal = ErrorResponse::new(Some("refused".into()));
            *refusal.status_mut() = http::StatusCode::from_u16(status).expect("status");
            return Err(refusal);
        }
        Ok(response)
    };
    let ws =
        match tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::accept_hdr_async(stream, check)).await {
            Ok(Ok(ws)) => ws,
            _ => {
                shared.refused.fetch_add(1, Ordering::SeqCst);
                shared.changed.notify_waiters();
                return;
            }
        };
    let id = shared.next.fetch_add(1, Ordering::SeqCst);
    let worker_id = format!("worker-{id}");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let hi = json!({"app_code": shared.app_code, "type": "hi", "worker_id": worker_id, "data_id": "", "data": ""});
    let _ = tx.send(Message::text(hi.to_string()));
    shared.subscribers.lock().unwrap().push(Subscriber { id, worker_id, outgoing: tx });
    shared.accepted.fetch_add(1, Ordering::SeqCst);
    shared.changed.notify_waiters();
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(message) => {
                    if sink.send(message).await.is_err() {
                        break;
                    }
                }
                None => {
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                }
            },
            incoming = stream.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let text = text.to_string();
                    shared.received.lock().unwrap().push(text.clone());
                    if let Ok(v) = serde_json::from_str::<Value>(&text) {
                        if v["type"] == "ack" {
                            let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                            shared.acks.lock().unwrap().push(Ack {
                                data_id: field("data_id"),
                                worker_id: field("worker_id"),
                                app_code: field("app_code"),
                                at: Instant::now(),
                            });
                        }
                    }
                    shared.changed.notify_waiters();
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    shared.subscribers.lock().unwrap().retain(|s| s.id != id);
    shared.changed.notify_waiters();
}
