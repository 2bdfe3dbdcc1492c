//! A fake kube-apiserver that the real `kubectl` accepts: TLS with its own CA, bearer-token
//! auth, discovery, namespaces/pods/configmaps with list, get, create, delete and watch, pod
//! logs (also followed), exec and attach (WebSocket channel protocol and SPDY), port-forward
//! (SPDY, plain or tunnelled in a WebSocket) to an echo service, and `kubectl cp` via `tar`.
//!
//! Everything it receives is recorded (requests with headers in wire order, and the decrypted
//! bytes of every connection), and faults can be switched on at run time ([`Fault`]).
//!
//! ```no_run
//! # async fn demo() {
//! use bcs_testkit::apiserver::{FakeApiserver, FakeOptions};
//! let fake = FakeApiserver::start(FakeOptions::with_token("t0ken")).await;
//! fake.add_pod("default", "web-0");
//! println!("{} trusts {}", fake.url(), fake.ca_pem());
//! # }
//! ```
mod body;
pub mod certs;
mod discovery;
pub mod endpoints;
pub mod exec;
mod exec_spdy;
pub mod faults;
pub mod kubectl;
mod logs;
mod portforward;
pub mod rbac;
pub mod record;
mod server;
pub mod spdy;
mod spdy_session;
pub mod store;
mod watch;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::task::AbortHandle;

pub use certs::CertPair;
pub use faults::{Fault, FaultRule};
pub use rbac::{RbacKind, REVIEWS};
pub use record::{ConnectionRecord, RecordedRequest};
pub use store::{Event, Kind};

/// How the fake behaves.
#[derive(Clone, Debug)]
pub struct FakeOptions {
    /// The bearer token every request must carry.
    pub token: String,
    /// Present a certificate from another CA than [`FakeApiserver::ca_pem`] from the start.
    pub wrong_ca: bool,
    /// Lines every pod's log starts with.
    pub log_lines: Vec<String>,
    /// With `follow=true`, one more line this often while the client stays connected.
    pub log_interval: Duration,
    /// Accept port-forward tunnelled in a WebSocket (kubectl 1.31+ tries it first). When
    /// false, that upgrade gets 400 and kubectl falls back to plain SPDY.
    pub portforward_websocket: bool,
    /// Accept exec/attach over WebSocket (kubectl 1.30+ tries it first). When false, that
    /// upgrade gets 400 and kubectl falls back to SPDY.
    pub exec_websocket: bool,
    /// Enforce the stored ClusterRoles and bindings for requests with `Impersonate-User`
    /// ([`rbac`]). When false, an impersonated user may do everything.
    pub enforce_rbac: bool,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            token: "fake-apiserver-token".into(),
            wrong_ca: false,
            log_lines: vec!["log line 1".into(), "log line 2".into(), "log line 3".into()],
            log_interval: Duration::from_millis(200),
            portforward_websocket: true,
            exec_websocket: true,
            enforce_rbac: false,
        }
    }
}

impl FakeOptions {
    pub fn with_token(token: &str) -> FakeOptions {
        FakeOptions { token: token.into(), ..FakeOptions::default() }
    }

    /// [`FakeOptions::with_token`] that enforces RBAC for impersonated users.
    pub fn enforcing_rbac(token: &str) -> FakeOptions {
        FakeOptions { enforce_rbac: true, ..FakeOptions::with_token(token) }
    }
}

/// Ends or aborts streaming responses (watch, logs) on demand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamControl {
    Open,
    /// End streams cleanly (final chunk).
    Close(u64),
    /// Abort streams mid-body (no final chunk; the connection is dropped).
    Abort(u64),
}

impl StreamControl {
    /// What a streaming response does when the control changed (`changed` is the result of
    /// `Receiver::changed`): true when it must end, after sending the abort error to `tx` if the
    /// test asked for an abort. `what` names the stream in that error.
    pub(crate) async fn ends_stream(
        changed: Result<(), tokio::sync::watch::error::RecvError>,
        control: &tokio::sync::watch::Receiver<StreamControl>,
        tx: &body::Chunks,
        what: &str,
    ) -> bool {
        if changed.is_err() {
            return true;
        }
        let now = *control.borrow();
        match now {
            StreamControl::Abort(_) => {
                let _ = tx.send(Err(std::io::Error::other(format!("{what} aborted by the test")))).await;
                true
            }
            StreamControl::Close(_) => true,
            StreamControl::Open => false,
        }
    }
}

pub(crate) struct State {
    pub options: FakeOptions,
    pub address: SocketAddr,
    pub certs: CertPair,
    pub good_tls: Arc<rustls::ServerConfig>,
    pub wrong_tls: Arc<rustls::ServerConfig>,
    pub store: Arc<Mutex<store::Store>>,
    pub requests: Mutex<Vec<RecordedRequest>>,
    pub connections: Mutex<Vec<record::SharedConn>>,
    pub faults: Mutex<Vec<FaultRule>>,
    pub streams: tokio::sync::watch::Sender<StreamControl>,
    pub tasks: Mutex<Vec<AbortHandle>>,
    pub forwarded_ports: Arc<Mutex<Vec<u16>>>,
    pub open_watches: Arc<std::sync::atomic::AtomicUsize>,
    /// The bearer token accepted now: `options.token` until [`FakeApiserver::set_token`].
    pub token: Mutex<String>,
    /// What Endpoints `default/kubernetes` lists: the fake's own address until
    /// [`FakeApiserver::set_endpoint_addresses`].
    pub endpoints: Mutex<Vec<SocketAddr>>,
    /// ClusterRoles and (Cluster)RoleBindings, enforced for impersonated users ([`rbac`]).
    pub rbac: Mutex<rbac::RbacStore>,
}

impl State {
    pub fn track(&self, handle: AbortHandle) {
        let mut tasks = self.tasks.lock().unwrap();
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle);
    }
}

/// The running fake; stops (closing every connection) when dropped.
pub struct FakeApiserver {
    state: Arc<State>,
    accept: AbortHandle,
}

impl FakeApiserver {
    /// Listens on 127.0.0.1 (ephemeral port) with fresh certificates.
    pub async fn start(options: FakeOptions) -> FakeApiserver {
        Self::start_on(0, options).await
    }

    /// As [`FakeApiserver::start`], on this port of 127.0.0.1 (an apiserver that comes back).
    pub async fn start_on(port: u16, options: FakeOptions) -> FakeApiserver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind the fake apiserver");
        let address = listener.local_addr().expect("local address");
        let certs = CertPair::generate("fake-apiserver-ca");
        let wrong = CertPair::generate("some-other-ca");
        let (streams, _) = tokio::sync::watch::channel(StreamControl::Open);
        let state = Arc::new(State {
            good_tls: certs.server_config(),
            wrong_tls: wrong.server_config(),
            options: options.clone(),
            address,
            certs,
            store: Arc::new(Mutex::new(store::Store::new())),
            requests: Mutex::default(),
            connections: Mutex::default(),
            faults: Mutex::default(),
            streams,
            tasks: Mutex::default(),
            forwarded_ports: Arc::default(),
            open_watches: Arc::default(),
            token: Mutex::new(options.token.clone()),
            endpoints: Mutex::new(vec![address]),
            rbac: Mutex::default(),
        });
        let accept = tokio::spawn(server::accept_loop(listener, state.clone())).abort_handle();
        FakeApiserver { state, accept }
    }

    pub fn address(&self) -> SocketAddr {
        self.state.address
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.state.address)
    }

    /// The CA a client should trust (the one that signed the normal certificate).
    pub fn ca_pem(&self) -> String {
        self.state.certs.ca_pem.clone()
    }

    /// The same CA, DER-encoded.
    pub fn ca_der(&self) -> Vec<u8> {
        self.state.certs.ca_der.clone()
    }

    /// The bearer token accepted now.
    pub fn token(&self) -> String {
        self.state.token.lock().unwrap().clone()
    }

    /// Rotates the accepted token (as a service-account token rotation): from now on only
    /// `token` is accepted, on new and on open connections.
    pub fn set_token(&self, token: &str) {
        *self.state.token.lock().unwrap() = token.to_owned();
    }

    /// Replaces the addresses Endpoints `default/kubernetes` lists (default: the fake itself).
    pub fn set_endpoint_addresses(&self, addresses: &[SocketAddr]) {
        *self.state.endpoints.lock().unwrap() = addresses.to_vec();
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Requests whose path starts with `path_prefix`.
    pub fn requests_matching(&self, path_prefix: &str) -> Vec<RecordedRequest> {
        self.requests().into_iter().filter(|r| r.path.starts_with(path_prefix)).collect()
    }

    pub fn clear_requests(&self) {
        self.state.requests.lock().unwrap().clear();
    }

    /// Every accepted TCP connection, in accept order.
    pub fn connections(&self) -> Vec<ConnectionRecord> {
        self.state.connections.lock().unwrap().iter().map(|c| c.lock().unwrap().clone()).collect()
    }

    pub fn connection_count(&self) -> usize {
        self.state.connections.lock().unwrap().len()
    }

    /// Applies `fault` to every request (and, for [`Fault::WrongCertificate`], to new
    /// connections), replacing any fault set before.
    pub fn set_fault(&self, fault: Fault) {
        *self.state.faults.lock().unwrap() = vec![FaultRule { fault, path_prefix: None }];
    }

    /// Adds `fault` for requests whose path starts with `path_prefix`.
    pub fn set_fault_on(&self, path_prefix: &str, fault: Fault) {
        self.state.faults.lock().unwrap().push(FaultRule { fault, path_prefix: Some(path_prefix.into()) });
    }

    pub fn clear_fault(&self) {
        self.state.faults.lock().unwrap().clear();
    }

    /// Adds a running pod with one container `main`; emits ADDED.
    pub fn add_pod(&self, namespace: &str, name: &str) -> Value {
        self.create(Kind::Pod, namespace, json!({"metadata": {"name": name, "labels": {"app": name}}}))
    }

    pub fn add_configmap(&self, namespace: &str, name: &str, data: &[(&str, &str)]) -> Value {
        let data: serde_json::Map<String, Value> = data.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        self.create(Kind::ConfigMap, namespace, json!({"metadata": {"name": name}, "data": data}))
    }

    pub fn add_namespace(&self, name: &str) -> Value {
        self.create(Kind::Namespace, "", json!({"metadata": {"name": name}}))
    }

    /// Stores any object (metadata is filled in); panics if it exists.
    pub fn create(&self, kind: Kind, namespace: &str, object: Value) -> Value {
        self.state.store.lock().unwrap().create(kind, namespace, object).expect("create object")
    }

    /// Changes an object in place and emits MODIFIED.
    pub fn modify(&self, kind: Kind, namespace: &str, name: &str, f: impl FnOnce(&mut Value)) -> Option<Value> {
        self.state.store.lock().unwrap().modify(kind, namespace, name, f)
    }

    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        self.state.store.lock().unwrap().delete(kind, namespace, name)
    }

    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        self.state.store.lock().unwrap().get(kind, namespace, name)
    }

    /// Sends an event to open watches without changing any object.
    pub fn emit_event(&self, kind: Kind, namespace: &str, event_type: &str, object: Value) {
        let store = self.state.store.lock().unwrap();
        let _ = store.events.send(Event {
            kind,
            namespace: namespace.into(),
            event_type: event_type.into(),
            object,
            resource_version: store.resource_version,
        });
    }

    /// Puts a file into a pod's file system (for `kubectl cp` and `cat <file>`).
    pub fn put_file(&self, namespace: &str, pod: &str, path: &str, content: &[u8]) {
        self.state.store.lock().unwrap().files(namespace, pod).insert(path.into(), content.to_vec());
    }

    pub fn file(&self, namespace: &str, pod: &str, path: &str) -> Option<Vec<u8>> {
        self.state.store.lock().unwrap().files(namespace, pod).get(path).cloned()
    }

    /// Ports asked for by port-forward data streams, in order.
    pub fn forwarded_ports(&self) -> Vec<u16> {
        self.state.forwarded_ports.lock().unwrap().clone()
    }

    /// Watches currently streaming.
    pub fn open_watches(&self) -> usize {
        self.state.open_watches.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits (polling, bounded by `timeout`) until at least `n` watches are streaming.
    pub async fn wait_for_watches(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.open_watches() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Ends every open watch and followed log cleanly.
    pub fn close_streams(&self) {
        let n = self.next_generation();
        let _ = self.state.streams.send(StreamControl::Close(n));
    }

    /// Cuts every open watch and followed log mid-body (the upstream "resets" during a watch).
    pub fn abort_streams(&self) {
        let n = self.next_generation();
        let _ = self.state.streams.send(StreamControl::Abort(n));
    }

    fn next_generation(&self) -> u64 {
        match *self.state.streams.borrow() {
            StreamControl::Open => 1,
            StreamControl::Close(n) | StreamControl::Abort(n) => n + 1,
        }
    }
}

impl Drop for FakeApiserver {
    fn drop(&mut self) {
        self.accept.abort();
        for t in self.state.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}
