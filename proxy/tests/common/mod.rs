//! Harness for the proxy's end-to-end tests: the real `bcs-api-proxy` binary, a fake admin
//! serving snapshots on the unix socket (so each test controls exactly what the proxy knows),
//! and a raw recording upstream that answers from a script and keeps every byte it received.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bcs_shared::secret::Secret;
use bcs_shared::snapshot::wire::{encode, Decoder, Message, PROTOCOL_MAJOR, PROTOCOL_MINOR};
use bcs_shared::snapshot::{Cluster, Credentials, Digest, Snapshot, Token, User};
use bcs_testkit::process::Process;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::watch;

pub const USER_TOKEN: &str = "userTokenAliceFixture0123456789ab";
pub const SUPER_TOKEN: &str = "superTokenAdminFixture0123456789a";
pub const CLUSTER_TOKEN: &str = "clusterServiceAccountTokenFixture";
pub const IDENTIFIER: &str = "bcs-k8s-001-abcdefgh-0123456789abcdef";

/// A snapshot with alice (normal), admin (super), and cluster `IDENTIFIER` at `upstream`.
pub fn snapshot(revision: u64, upstream: &str, ca_pem: &str) -> Snapshot {
    Snapshot {
        revision,
        generated_at: now(),
        turn_on_rbac: true,
        users: vec![
            User { id: 1, name: "admin".into(), is_super_user: true },
            User { id: 2, name: "plain:alice".into(), is_super_user: false },
        ],
        tokens: vec![
            Token { digest: Digest::of(SUPER_TOKEN), user_id: 1, expires_at: now() + 3600 },
            Token { digest: Digest::of(USER_TOKEN), user_id: 2, expires_at: now() + 3600 },
        ],
        clusters: vec![Cluster {
            id: "bcs-k8s-001-AbCdEfGh".into(),
            identifier: IDENTIFIER.into(),
            cluster_type: "k8s".into(),
            credentials: Some(Credentials {
                addresses: vec![upstream.into()],
                ca_pem: ca_pem.into(),
                token: Secret::new(CLUSTER_TOKEN),
                version: 1,
            }),
        }],
        mesos: vec![],
        mesos_pending: false,
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Admin's snapshot socket, played by the test: sends the current snapshot to every peer
/// and each new one on `publish`. Records the acks.
pub struct FakeAdmin {
    pub socket: PathBuf,
    sender: watch::Sender<Arc<Snapshot>>,
    pub acks: Arc<Mutex<Vec<u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeAdmin {
    pub async fn start(socket: &Path, first: Snapshot) -> FakeAdmin {
        std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket).unwrap();
        let (sender, receiver) = watch::channel(Arc::new(first));
        let acks: Arc<Mutex<Vec<u64>>> = Arc::default();
        let acks2 = acks.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let mut receiver = receiver.clone();
                let acks = acks2.clone();
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.into_split();
                    let mut decoder = Decoder::default();
                    let mut buf = vec![0u8; 65536];
                    // Hello first.
                    loop {
                        let n = read.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        decoder.push(&buf[..n]).unwrap();
                        if let Some(Message::Hello { .. }) = decoder.next_message().unwrap() {
                            break;
                        }
                    }
                    let hello = Message::Hello {
                        major: PROTOCOL_MAJOR,
                        minor: PROTOCOL_MINOR,
                        peer: "fake admin".into(),
                        revision: None,
                    };
                    if write.write_all(&encode(&hello)).await.is_err() {
                        return;
                    }
                    let reader = tokio::spawn(async move {
                        loop {
                            let n = read.read(&mut buf).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            decoder.push(&buf[..n]).unwrap();
                            while let Ok(Some(Message::Ack { revision })) = decoder.next_message() {
                                acks.lock().unwrap().push(revision);
                            }
                        }
                    });
                    loop {
                        let current = receiver.borrow_and_update().clone();
                        if write.write_all(&encode(&Message::Snapshot((*current).clone()))).await.is_err() {
                            break;
                        }
                        if receiver.changed().await.is_err() {
                            break;
                        }
                    }
                    reader.abort();
                });
            }
        });
        FakeAdmin { socket: socket.to_owned(), sender, acks, task }
    }

    pub fn publish(&self, snapshot: Snapshot) {
        self.sender.send_replace(Arc::new(snapshot));
    }

    /// Stops listening and drops every connection (admin is "down").
    pub fn stop(self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }

    pub async fn wait_ack(&self, revision: u64) {
        for _ in 0..200 {
            if self.acks.lock().unwrap().contains(&revision) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no ack for revision {revision}");
    }
}

/// What a scripted upstream does with each request it reads.
pub type Script = Arc<dyn Fn(&RecordedRequest) -> Reply + Send + Sync>;

pub enum Reply {
    /// Write these bytes and keep the connection for the next request.
    Bytes(Vec<u8>),
    /// Write these bytes, then after each delay the next piece; then keep the connection open
    /// until the client goes.
    Stream(Vec<u8>, Vec<(Duration, Vec<u8>)>),
    /// Write these bytes (a 101) and then echo every byte received, recording it.
    SwitchAndEcho(Vec<u8>, Duration),
    /// A 200 with a Content-Length body of `n` bytes, written in 64 KiB pieces.
    Large(usize),
    /// Write the first bytes, then after each delay the next piece; then keep the connection
    /// for the next request, as `Bytes`.
    Paused(Vec<u8>, Vec<(Duration, Vec<u8>)>),
    /// Write these bytes (a 101 and some tunnel data), wait, then end the connection: with a
    /// reset (RST, `true`) or a clean close (FIN, `false`).
    SwitchThenEnd(Vec<u8>, Duration, bool),
    /// Write these bytes, then close the connection if no next request starts within the
    /// duration (an apiserver's idle timeout).
    BytesThenIdleClose(Vec<u8>, Duration),
    /// Close without answering.
    Close,
}

#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub head: String,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// Values of header `name` (case-insensitive), in order.
    pub fn headers(&self, name: &str) -> Vec<String> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }

    pub fn request_line(&self) -> &str {
        self.head.split("\r\n").next().unwrap_or("")
    }
}

/// An HTTP upstream (plain, or TLS over TCP) recording every request and every raw byte per
/// connection.
pub struct RawUpstream {
    pub address: SocketAddr,
    /// The CA of a TLS upstream's certificate (for `kubernetes` and 127.0.0.1); empty if plain.
    pub ca_pem: String,
    pub requests: Arc<Mutex<Vec<RecordedRequest>>>,
    /// Raw bytes received, one entry per connection.
    pub raw: Arc<Mutex<Vec<Vec<u8>>>>,
    /// For each switch: the bytes that arrived after the upgrade request and before the 101.
    pub early: Arc<Mutex<Vec<Vec<u8>>>>,
    /// How many `Reply::Stream` connections the proxy closed while they were streaming.
    pub streams_closed: Arc<std::sync::atomic::AtomicUsize>,
    /// How many SubjectAccessReviews it answered (not among `requests`).
    pub reviews: Arc<std::sync::atomic::AtomicUsize>,
    /// What it answers a SubjectAccessReview with (default: 201, allowed).
    pub review_answer: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    pub async fn start(script: Script) -> RawUpstream {
        Self::start_with(script, None).await
    }

    /// As [`RawUpstream::start`], on this loopback port (an address that comes back).
    pub async fn start_on(port: u16, script: Script) -> RawUpstream {
        Self::start_at(script, None, port).await
    }

    /// As [`RawUpstream::start`], speaking TLS with a certificate from a fresh CA (`ca_pem`).
    pub async fn start_tls(script: Script) -> RawUpstream {
        Self::start_with(script, Some(bcs_testkit::apiserver::CertPair::generate("upstream-ca"))).await
    }

    async fn start_with(script: Script, certs: Option<bcs_testkit::apiserver::CertPair>) -> RawUpstream {
        Self::start_at(script, certs, 0).await
    }

    /// As [`RawUpstream::start`], on this address (one of loopback's other addresses).
    pub async fn start_on_address(address: SocketAddr, script: Script) -> RawUpstream {
        Self::start_bound(script, None, address).await
    }

    async fn start_at(script: Script, certs: Option<bcs_testkit::apiserver::CertPair>, port: u16) -> RawUpstream {
        Self::start_bound(script, certs, SocketAddr::from(([127, 0, 0, 1], port))).await
    }

    async fn start_bound(
        script: Script,
        certs: Option<bcs_testkit::apiserver::CertPair>,
        address: SocketAddr,
    ) -> RawUpstream {
        let listener = TcpListener::bind(address).await.unwrap();
        let address = listener.local_addr().unwrap();
        let acceptor = certs.as_ref().map(|c| tokio_rustls::TlsAcceptor::from(c.server_config()));
        let records = Records {
            script,
            requests: Arc::default(),
            raw: Arc::default(),
            early: Arc::default(),
            streams_closed: Arc::default(),
            reviews: Arc::default(),
            review_answer: Arc::new(Mutex::new(review_reply(
                201,
                r#"{"kind":"SubjectAccessReview","status":{"allowed":true}}"#,
            ))),
        };
        let shared = records.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                // Counted per TCP connection, before any TLS handshake.
                let index = {
                    let mut raw = shared.raw.lock().unwrap();
                    raw.push(Vec::new());
                    raw.len() - 1
                };
                let (records, acceptor) = (shared.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor {
                        None => serve_upstream(stream, records, index).await,
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                serve_upstream(tls, records, index).await;
                            }
                        }
                    }
                });
            }
        });
        let Records { requests, raw, early, streams_closed, reviews, review_answer, .. } = records;
        let ca_pem = certs.map(|c| c.ca_pem).unwrap_or_default();
        RawUpstream { address, ca_pem, requests, raw, early, streams_closed, reviews, review_answer, task }
    }

    pub fn url(&self) -> String {
        let scheme = if self.ca_pem.is_empty() { "http" } else { "https" };
        format!("{scheme}://{}", self.address)
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.lock().unwrap().clone()
    }

    pub fn connections(&self) -> usize {
        self.raw.lock().unwrap().len()
    }

    pub fn raw_bytes(&self) -> Vec<u8> {
        self.raw.lock().unwrap().concat()
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A SubjectAccessReview's answer: `status` with a JSON `body`.
pub fn review_reply(status: u16, body: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        .into_bytes()
}

/// What a [`RawUpstream`]'s connections share: its script and its records.
#[derive(Clone)]
struct Records {
    script: Script,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    raw: Arc<Mutex<Vec<Vec<u8>>>>,
    early: Arc<Mutex<Vec<Vec<u8>>>>,
    streams_closed: Arc<std::sync::atomic::AtomicUsize>,
    reviews: Arc<std::sync::atomic::AtomicUsize>,
    review_answer: Arc<Mutex<Vec<u8>>>,
}

/// A connection a [`RawUpstream`] serves: plain TCP, or TLS over it.
trait Transport: AsyncRead + AsyncWrite + Unpin + Send {
    fn tcp(&self) -> &TcpStream;
}

impl Transport for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Writes `bytes` and flushes them (TLS may hold the last of a write until then); false if the
/// proxy went.
async fn send<S: Transport>(stream: &mut S, bytes: &[u8]) -> bool {
    stream.write_all(bytes).await.is_ok() && stream.flush().await.is_ok()
}

async fn serve_upstream<S: Transport>(mut stream: S, records: Records, index: usize) {
    let Records { script, requests, raw, early, streams_closed, reviews, review_answer } = records;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 65536];
    let mut idle_close: Option<Duration> = None;
    loop {
        // One request: head, then a Content-Length or chunked body.
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let read = stream.read(&mut chunk);
            let n = match idle_close.filter(|_| buf.is_empty()) {
                Some(limit) => match tokio::time::timeout(limit, read).await {
                    Ok(read) => read.unwrap_or(0),
                    Err(_) => return,
                },
                None => read.await.unwrap_or(0),
            };
            if n == 0 {
                return;
            }
            raw.lock().unwrap()[index].extend_from_slice(&chunk[..n]);
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut request = RecordedRequest { head, body: Vec::new() };
        buf.drain(..head_end);
        let length: usize = request.headers("content-length").first().and_then(|v| v.parse().ok()).unwrap_or(0);
        let chunked = request.headers("transfer-encoding").iter().any(|v| v.eq_ignore_ascii_case("chunked"));
        loop {
            let complete = if chunked { buf.windows(5).any(|w| w == b"0\r\n\r\n") } else { buf.len() >= length };
            if complete {
                break;
            }
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            raw.lock().unwrap()[index].extend_from_slice(&chunk[..n]);
            buf.extend_from_slice(&chunk[..n]);
        }
        let body_len = if chunked { buf.windows(5).position(|w| w == b"0\r\n\r\n").unwrap() + 5 } else { length };
        request.body = buf.drain(..body_len).collect();
        if request.request_line().starts_with("POST /apis/authorization.k8s.io/v1/subjectaccessreviews ") {
            // As the apiserver it stands for, when it lets every user do everything (unless a
            // test set another answer): the proxy's review before an impersonated WebSocket
            // exec is allowed, counted apart from the requests; the connection goes on.
            reviews.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let answer = review_answer.lock().unwrap().clone();
            if !send(&mut stream, &answer).await {
                return;
            }
            continue;
        }
        requests.lock().unwrap().push(request.clone());
        match script(&request) {
            Reply::Bytes(bytes) => {
                if !send(&mut stream, &bytes).await {
                    return;
                }
            }
            Reply::Paused(first, pieces) => {
                if !send(&mut stream, &first).await {
                    return;
                }
                for (pause, piece) in pieces {
                    tokio::time::sleep(pause).await;
                    if !send(&mut stream, &piece).await {
                        return;
                    }
                }
            }
            Reply::Stream(first, rest) => {
                send(&mut stream, &first).await;
                let closed = || streams_closed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                for (delay, piece) in rest {
                    // The proxy closing the stream meanwhile shows as a read of 0 (or an error).
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stream.read(&mut chunk) => {
                            closed();
                            return;
                        }
                    }
                    if !send(&mut stream, &piece).await {
                        closed();
                        return;
                    }
                }
                // Hold the stream open until the client goes.
                let _ = stream.read(&mut chunk).await;
                closed();
                return;
            }
            Reply::SwitchAndEcho(switch, hold) => {
                // Keep reading for `hold` before the 101: whatever arrives was sent too early.
                let deadline = tokio::time::Instant::now() + hold;
                while let Ok(read) = tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
                    match read {
                        Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        _ => break,
                    }
                }
                early.lock().unwrap().push(buf.clone());
                if !send(&mut stream, &switch).await {
                    return;
                }
                if !buf.is_empty() {
                    send(&mut stream, &buf).await;
                }
                loop {
                    let n = stream.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    raw.lock().unwrap()[index].extend_from_slice(&chunk[..n]);
                    if !send(&mut stream, &chunk[..n]).await {
                        return;
                    }
                }
            }
            Reply::Large(total) => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {total}\r\n\r\n"
                );
                if !send(&mut stream, head.as_bytes()).await {
                    return;
                }
                let piece = vec![b'x'; 65536];
                let mut left = total;
                while left > 0 {
                    let n = left.min(piece.len());
                    if !send(&mut stream, &piece[..n]).await {
                        return;
                    }
                    left -= n;
                }
            }
            Reply::SwitchThenEnd(bytes, wait, reset) => {
                send(&mut stream, &bytes).await;
                tokio::time::sleep(wait).await;
                if reset {
                    // Linger 0: close sends RST, not FIN.
                    let _ = stream.tcp().set_zero_linger();
                }
                return;
            }
            Reply::BytesThenIdleClose(bytes, limit) => {
                if !send(&mut stream, &bytes).await {
                    return;
                }
                idle_close = Some(limit);
            }
            Reply::Close => return,
        }
    }
}

/// A `200 OK` with a JSON body.
pub fn ok_json(body: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        .into_bytes()
}

/// A body whose bytes differ by position, so that a reordered, repeated or lost piece shows.
pub fn patterned(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ (i / 251 % 7) as u8).collect()
}

/// 200 with `Content-Length: N` of [`patterned`] bytes, N from `?size=N` in the request line or head.
pub fn sized_reply(request: &str) -> Vec<u8> {
    let len: usize = request.split("size=").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    let mut reply =
        format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n")
            .into_bytes();
    reply.extend(patterned(len));
    reply
}

/// GETs `?size=N` for each size in turn on one connection (an upstream answering with
/// [`sized_reply`]) and checks each body byte for byte; a response that does not end within
/// 10 s fails the test (read_response).
pub async fn get_sized_bodies(stream: &mut TcpStream, sizes: &[usize]) {
    for &size in sizes {
        stream.write_all(get(&format!("/api/v1/pods?size={size}"), USER_TOKEN, "").as_bytes()).await.unwrap();
        let response = read_response(stream).await;
        assert_eq!(response.status, 200, "size {size}");
        assert_eq!(response.body.len(), size);
        assert!(response.body == patterned(size), "the {size}-byte body differs from what the upstream sent");
    }
}

/// A certificate for the proxy's TLS listener (127.0.0.1, from a fresh CA), written into `dir`:
/// the `cert_config` section that names it, and the CA's PEM for clients.
pub fn proxy_certificate(dir: &Path) -> (String, String) {
    let certs = bcs_testkit::apiserver::CertPair::generate_for("proxy-ca", &["127.0.0.1"]);
    std::fs::write(dir.join("server.pem"), &certs.cert_pem).unwrap();
    std::fs::write(dir.join("server.key"), &certs.key_pem).unwrap();
    ("  server_cert_file: ./server.pem\n  server_key_file: ./server.key\n".to_owned(), certs.ca_pem)
}

/// A TLS connection to the proxy's TLS listener on `port`, trusting only `ca_pem`.
pub async fn connect_tls(port: u16, ca_pem: &str) -> tokio_rustls::client::TlsStream<TcpStream> {
    tls_over(TcpStream::connect(("127.0.0.1", port)).await.unwrap(), ca_pem).await
}

/// TLS to the proxy over `tcp` (a socket set up by the caller), trusting only `ca_pem`.
pub async fn tls_over(tcp: TcpStream, ca_pem: &str) -> tokio_rustls::client::TlsStream<TcpStream> {
    let roots = bcs_shared::tls::roots_from_pem(ca_pem.as_bytes()).unwrap();
    let connector = tokio_rustls::TlsConnector::from(bcs_shared::tls::http1_client(roots));
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    connector.connect(name, tcp).await.expect("TLS to the proxy")
}

/// The real proxy with its own config, data dir and ports.
pub struct Proxy {
    pub process: Process,
    pub dir: PathBuf,
    pub plain_port: u16,
    pub tls_port: u16,
    pub metric_port: u16,
}

pub struct ProxyOptions {
    pub cores: u16,
    /// `cert_config` section body, if TLS is wanted.
    pub cert_config: Option<String>,
    pub admin_port: u16,
    pub max_connections: u32,
    /// `consoleproxy_port` and `proxy_config.webconsole_allowed_hosts`.
    pub console_port: u16,
    pub console_allowed: Vec<String>,
    /// `log_config.access_log` and `proxy_config.io_driver`.
    pub access_log: bool,
    pub io_driver: &'static str,
    /// More of the `proxy_config` section (indented by two spaces).
    pub proxy_config_extra: String,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            cores: 1,
            cert_config: None,
            admin_port: 1,
            max_connections: 1000,
            console_port: 8083,
            console_allowed: vec![],
            access_log: true,
            io_driver: "auto",
            proxy_config_extra: String::new(),
        }
    }
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bcs-api-proxy"))
}

impl Proxy {
    /// Writes the config into `dir` (snapshot socket `dir/run/bcs-api.sock`) and starts the
    /// proxy; does not wait for readiness.
    pub fn spawn(dir: &Path, options: &ProxyOptions) -> Proxy {
        Proxy::spawn_with(dir, options, |_| {})
    }

    /// [`Proxy::spawn`] with `configure` applied to the command (a limit on the process).
    pub fn spawn_with(dir: &Path, options: &ProxyOptions, configure: impl FnOnce(&mut std::process::Command)) -> Proxy {
        let (plain_port, tls_port, metric_port) =
            (bcs_testkit::free_port(), bcs_testkit::free_port(), bcs_testkit::free_port());
        let cert = options.cert_config.as_deref().map(|c| format!("cert_config:\n{c}")).unwrap_or_default();
        let yaml = format!(
            "service_config:\n  address: 127.0.0.1\n  port: {tls_port}\n  insecure_address: 127.0.0.1\n  insecure_port: {plain_port}\n\
             metric_config:\n  metric_port: {metric_port}\nlocal_config:\n  local_ip: 127.0.0.1\n{cert}\
             log_config:\n  logtostderr: true\n  v: 9\n  access_log: {}\n\
             admin_config:\n  address: 127.0.0.1\n  port: {}\n  snapshot_socket: ./run/bcs-api.sock\n\
             proxy_config:\n  cores: {}\n  max_connections: {}\n  io_driver: {}\n  webconsole_allowed_hosts: {:?}\n{}consoleproxy_port: {}\nstorage:\n  data_dir: ./data\n",
            options.access_log,
            options.admin_port,
            options.cores,
            options.max_connections,
            options.io_driver,
            options.console_allowed,
            options.proxy_config_extra,
            options.console_port
        );
        std::fs::write(dir.join("bcs-api.yaml"), yaml).unwrap();
        let process = Process::spawn_with(&binary(), &["--config=bcs-api.yaml"], dir, "bcs-api-proxy", configure);
        Proxy { process, dir: dir.to_owned(), plain_port, tls_port, metric_port }
    }

    /// Restarts the proxy on the same config and data.
    pub fn respawn(&mut self) {
        self.process.stop();
        self.process = Process::spawn(&binary(), &["--config=bcs-api.yaml"], &self.dir, "bcs-api-proxy");
    }

    pub async fn wait_ready(&mut self) {
        let url = format!("http://127.0.0.1:{}/readyz", self.metric_port);
        self.process.wait_ready(&url, Duration::from_secs(20)).await;
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("run/bcs-api.sock")
    }

    /// Opens a raw client connection to the plain listener.
    pub async fn connect(&self) -> TcpStream {
        TcpStream::connect(("127.0.0.1", self.plain_port)).await.unwrap()
    }

    /// The text of `/metrics` on the metric port.
    pub async fn metrics(&self) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.metric_port)).await.unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        read_response(&mut stream).await.text()
    }

    /// Sends `request` on a new connection and reads one whole response.
    pub async fn send(&self, request: &str) -> Response {
        let mut stream = self.connect().await;
        stream.write_all(request.as_bytes()).await.unwrap();
        read_response(&mut stream).await
    }
}

/// A GET on the cluster's tunnel with `token`.
pub fn get(path: &str, token: &str, extra_headers: &str) -> String {
    format!("GET /tunnels/clusters/{IDENTIFIER}{path} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {token}\r\n{extra_headers}\r\n")
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response (Content-Length, chunked, or until close); 10 s at most.
pub async fn read_response(stream: &mut TcpStream) -> Response {
    read_response_within(stream, Duration::from_secs(10)).await
}

/// [`read_response`] with more (or less) patience.
pub async fn read_response_within(stream: &mut TcpStream, patience: Duration) -> Response {
    tokio::time::timeout(patience, read_response_inner(stream)).await.expect("a response in time")
}

async fn read_response_inner(stream: &mut TcpStream) -> Response {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 65536];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        assert!(n > 0, "connection closed before a response head; got {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut response = Response { status, head, body: Vec::new() };
    let mut rest: Vec<u8> = buf[head_end..].to_vec();
    if status == 101 || status == 204 || status == 304 {
        response.body = rest;
        return response;
    }
    if let Some(len) = response.header("content-length") {
        let len: usize = len.parse().unwrap();
        while rest.len() < len {
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            assert!(n > 0, "body ended early");
            rest.extend_from_slice(&chunk[..n]);
        }
        response.body = rest[..len].to_vec();
    } else if response.header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        loop {
            if let Some(body) = dechunk(&rest) {
                response.body = body;
                break;
            }
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            assert!(n > 0, "chunked body ended early");
            rest.extend_from_slice(&chunk[..n]);
        }
    } else {
        loop {
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        response.body = rest;
    }
    response
}

/// The payload of a complete chunked body, or None if it is not complete yet.
pub fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&data[..line_end]).ok()?.split(';').next()?, 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return data.starts_with(b"\r\n").then_some(out);
        }
        if data.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// True if the peer closed the connection (reads EOF within `within`).
pub async fn closed(stream: &mut TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 1024];
    loop {
        match tokio::time::timeout(within, stream.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// A loopback address that never completes a connection: a listener whose one-place accept
/// queue is full, so the kernel drops every further SYN (a host that is down, or a firewall
/// that drops, without leaving loopback).
pub fn blackhole() -> (std::net::TcpListener, Vec<std::net::TcpStream>, u16) {
    use std::os::fd::FromRawFd;
    // SAFETY: a fresh socket, bound, listening with a backlog of 0, then owned by the listener.
    let listener = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let mut address: libc::sockaddr_in = std::mem::zeroed();
        address.sin_family = libc::AF_INET as libc::sa_family_t;
        address.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let size = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(libc::bind(fd, (&address as *const libc::sockaddr_in).cast(), size), 0);
        assert_eq!(libc::listen(fd, 0), 0);
        std::net::TcpListener::from_raw_fd(fd)
    };
    let port = listener.local_addr().unwrap().port();
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut filling = Vec::new();
    while let Ok(stream) = std::net::TcpStream::connect_timeout(&target, Duration::from_millis(300)) {
        filling.push(stream);
        assert!(filling.len() < 16, "the accept queue never filled");
    }
    (listener, filling, port)
}
