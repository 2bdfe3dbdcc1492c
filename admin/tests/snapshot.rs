//! The snapshot socket of the real `bcs-api` binary, seen from a test client that speaks the
//! protocol as a proxy would (`bcs_shared::snapshot::wire`): the hello, the first snapshot,
//! REST changes arriving within the product's 1 s bound, refusals, oversize frames, the
//! socket's mode, and revisions across a restart.
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bcs_shared::snapshot::wire::{encode, Decoder, Message, PROTOCOL_MAJOR, PROTOCOL_MINOR};
use bcs_shared::snapshot::{Digest, Snapshot};
use bcs_testkit::mysql::MysqlDatabase;
use bcs_testkit::process::Process;
use common::{Admin, Options};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, Mutex};

/// The product's contract (DESIGN §6): a REST change reaches every proxy within 1 s.
const BOUND: Duration = Duration::from_secs(1);
/// How long the client waits before calling something lost (longer than the bound, so a
/// slow change is reported with its latency instead of as a timeout).
const PATIENCE: Duration = Duration::from_secs(10);
const TRACE_LOG: &str = "  logtostderr: true\n  v: 9\n";

fn socket(dir: &Path) -> PathBuf {
    dir.join("run/bcs-api.sock")
}

/// What the client saw, stamped with when it arrived.
enum Event {
    Message(Instant, Message),
    Closed,
}

/// A stand-in proxy: reads frames in a task (acknowledging each snapshot) and hands them to
/// the test with their arrival time.
struct Client {
    events: mpsc::UnboundedReceiver<Event>,
    writer: Arc<Mutex<OwnedWriteHalf>>,
    /// Revision of the last snapshot received: each must be higher.
    last_revision: Option<u64>,
}

impl Client {
    async fn connect(path: &Path) -> Client {
        let stream = UnixStream::connect(path).await.unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        let (mut reader, writer) = stream.into_split();
        let writer = Arc::new(Mutex::new(writer));
        let (sender, events) = mpsc::unbounded_channel();
        let acks = writer.clone();
        tokio::spawn(async move {
            let mut decoder = Decoder::default();
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                match decoder.next_message() {
                    Ok(Some(message)) => {
                        if let Message::Snapshot(s) = &message {
                            let ack = encode(&Message::Ack { revision: s.revision });
                            let _ = acks.lock().await.write_all(&ack).await;
                        }
                        if sender.send(Event::Message(Instant::now(), message)).is_err() {
                            return;
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => panic!("admin sent a bad frame: {e}"),
                }
                match reader.read(&mut buffer).await {
                    Ok(0) | Err(_) => {
                        let _ = sender.send(Event::Closed);
                        return;
                    }
                    Ok(n) => decoder.push(&buffer[..n]).expect("admin's frames are within the limit"),
                }
            }
        });
        Client { events, writer, last_revision: None }
    }

    async fn send(&self, message: &Message) {
        self.send_raw(&encode(message)).await;
    }

    async fn send_raw(&self, bytes: &[u8]) {
        self.writer.lock().await.write_all(bytes).await.expect("write to the snapshot socket");
    }

    async fn next(&mut self) -> Event {
        match tokio::time::timeout(PATIENCE, self.events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => Event::Closed,
            Err(_) => panic!("nothing from admin within {PATIENCE:?}"),
        }
    }

    async fn next_message(&mut self) -> Message {
        match self.next().await {
            Event::Message(_, message) => message,
            Event::Closed => panic!("admin closed the connection"),
        }
    }

    /// Hello as a proxy of this protocol version; returns admin's hello and first snapshot.
    async fn handshake(path: &Path, holds: Option<u64>) -> (Client, Message, Snapshot) {
        let mut client = Client::connect(path).await;
        client.send(&hello(PROTOCOL_MAJOR, PROTOCOL_MINOR, holds)).await;
        let hello = client.next_message().await;
        assert!(matches!(hello, Message::Hello { major: PROTOCOL_MAJOR, .. }), "{hello:?}");
        let (_, first) = client.snapshot_where(|_| true).await;
        (client, hello, first)
    }

    /// The first snapshot matching `wanted`, and when it arrived.
    async fn snapshot_where(&mut self, wanted: impl Fn(&Snapshot) -> bool) -> (Instant, Snapshot) {
        loop {
            match self.next().await {
                Event::Message(at, Message::Snapshot(s)) => {
                    s.validate().unwrap_or_else(|e| panic!("revision {} is invalid: {e}", s.revision));
                    if let Some(last) = self.last_revision {
                        assert!(s.revision > last, "revision {} after {last}", s.revision);
                    }
                    self.last_revision = Some(s.revision);
                    if wanted(&s) {
                        return (at, s);
                    }
                }
                Event::Message(_, other) => panic!("expected a snapshot, got {other:?}"),
                Event::Closed => panic!("admin closed the connection"),
            }
        }
    }

    async fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline.into(), self.events.recv()).await {
                Ok(Some(Event::Closed)) | Ok(None) => return true,
                Ok(Some(Event::Message(..))) => continue,
                Err(_) => return false,
            }
        }
    }
}

fn hello(major: u16, minor: u16, revision: Option<u64>) -> Message {
    Message::Hello { major, minor, peer: "snapshot test client".into(), revision }
}

/// When a REST call was sent and when its answer was complete.
#[derive(Clone, Copy)]
struct Timing {
    sent: Instant,
    answered: Instant,
}

/// Calls the REST API, asserts a 200, and returns the answer with its [`Timing`].
async fn call(admin: &Admin, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> (Timing, Value) {
    let sent = Instant::now();
    let (status, body) = admin.call(method.clone(), path, token, body).await;
    let answered = Instant::now();
    assert_eq!(status, 200, "{method} {path}: {body}");
    (Timing { sent, answered }, body)
}

/// Latencies of the changes seen: from the REST answer (the contract) and from the request.
#[derive(Default)]
struct Latencies {
    from_answer: Vec<Duration>,
    from_request: Vec<Duration>,
}

impl Latencies {
    fn record(&mut self, timing: Timing, arrived: Instant) {
        self.from_answer.push(arrived.saturating_duration_since(timing.answered));
        self.from_request.push(arrived.saturating_duration_since(timing.sent));
    }

    /// Prints p50, p99 and max of both; returns the max after the answer.
    fn report(&mut self, label: &str) -> Duration {
        let mut line = format!("{label}: {} REST changes reached the proxy;", self.from_answer.len());
        for (name, list) in [("after the answer", &mut self.from_answer), ("after the request", &mut self.from_request)]
        {
            list.sort();
            let (p50, p99, max) = (percentile(list, 0.5), percentile(list, 0.99), *list.last().unwrap());
            line.push_str(&format!(" {name}: p50 {p50:?} p99 {p99:?} max {max:?};"));
        }
        println!("{line}");
        *self.from_answer.last().unwrap()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn rest_changes_reach_the_proxy_within_a_second(label: &str, options: Options) {
    let dir = tempfile::tempdir().unwrap();
    let mut admin = Admin::start(dir.path(), &Options { log_config: TRACE_LOG.into(), ..options }).await;
    let (mut proxy, hello, first) = Client::handshake(&socket(dir.path()), None).await;

    // The first snapshot: the bootstrap admin and its token.
    let Message::Hello { revision, .. } = hello else { unreachable!() };
    assert_eq!(revision, Some(first.revision), "admin's hello names the revision it serves");
    assert!(first.turn_on_rbac);
    let admin_user = first.users.iter().find(|u| u.name == "admin").expect("the bootstrap admin");
    assert!(admin_user.is_super_user);
    assert!(
        first.tokens.iter().any(|t| t.digest == Digest::of(&admin.admin_token) && t.user_id == admin_user.id),
        "the bootstrap token's digest"
    );

    let mut latencies = Latencies::default();
    let mut cluster_tokens = Vec::new();
    let admin_token = admin.admin_token.clone();
    let su = Some(admin_token.as_str());
    for i in 0..4 {
        let name = format!("snap{i}");
        let (at, user) = call(&admin, Method::POST, "/rest/users/", su, Some(json!({"user_name": name}))).await;
        let user_id = user["ID"].as_i64().unwrap();
        let (arrived, _) = proxy
            .snapshot_where(|s| s.users.iter().any(|u| u.id == user_id && u.name == format!("plain:{name}")))
            .await;
        latencies.record(at, arrived);

        let (at, token) = call(&admin, Method::POST, &format!("/rest/users/{user_id}/tokens"), su, None).await;
        let value = token["Value"].as_str().unwrap().to_owned();
        let digest = Digest::of(&value);
        let (arrived, _) =
            proxy.snapshot_where(|s| s.tokens.iter().any(|t| t.digest == digest && t.user_id == user_id)).await;
        latencies.record(at, arrived);

        let kind = ["k8s", "mesos", "tke"][i % 3];
        let body = json!({"id": format!("SNAP-{i}"), "project_id": "demo", "cluster_type": kind});
        let (at, cluster) = call(&admin, Method::POST, "/rest/clusters/bcs", Some(&value), Some(body)).await;
        let cluster_id = cluster["id"].as_str().unwrap().to_owned();
        let (arrived, s) = proxy.snapshot_where(|s| s.clusters.iter().any(|c| c.id == cluster_id)).await;
        latencies.record(at, arrived);
        let c = s.clusters.iter().find(|c| c.id == cluster_id).unwrap();
        assert_eq!((c.identifier.as_str(), c.cluster_type.as_str()), (cluster["identifier"].as_str().unwrap(), kind));
        assert_eq!(c.credentials, None, "no agent has reported yet");

        // The agent's report (register tokens themselves are not in the snapshot).
        let path = format!("/rest/clusters/{cluster_id}/register_tokens");
        let (_, register) = call(&admin, Method::POST, &path, Some(&value), None).await;
        let cluster_token = format!("clusterTokenMustNotBeLogged{i}x{}", rand_suffix());
        let report = json!({
            "register_token": register[0]["token"],
            "server_addresses": format!("https://10.0.{i}.1:6443;https://10.0.{i}.2:6443"),
            "cacert_data": common::CLUSTER_CA,
            "user_token": cluster_token,
        });
        let (at, _) =
            call(&admin, Method::PUT, &format!("/rest/clusters/{cluster_id}/credentials"), None, Some(report)).await;
        let (arrived, s) =
            proxy.snapshot_where(|s| s.clusters.iter().any(|c| c.id == cluster_id && c.credentials.is_some())).await;
        latencies.record(at, arrived);
        let credentials = s.clusters.iter().find(|c| c.id == cluster_id).unwrap().credentials.as_ref().unwrap();
        assert_eq!(credentials.addresses, vec![format!("https://10.0.{i}.1:6443"), format!("https://10.0.{i}.2:6443")]);
        assert_eq!(credentials.token.expose(), cluster_token, "the cluster token arrives in clear");
        assert_eq!(credentials.ca_pem, common::CLUSTER_CA);
        assert_eq!(credentials.version, 1);
        cluster_tokens.push(cluster_token);

        let token_id = token["ID"].as_i64().unwrap();
        let path = format!("/rest/users/{user_id}/tokens/{token_id}");
        let (at, _) = call(&admin, Method::DELETE, &path, su, None).await;
        let (arrived, _) = proxy.snapshot_where(|s| s.tokens.iter().all(|t| t.digest != digest)).await;
        latencies.record(at, arrived);

        let (at, _) = call(&admin, Method::DELETE, &format!("/rest/clusters/{cluster_id}"), su, None).await;
        let (arrived, s) = proxy.snapshot_where(|s| s.clusters.iter().all(|c| c.id != cluster_id)).await;
        latencies.record(at, arrived);
        assert!(s.users.iter().any(|u| u.id == user_id), "the user stays");
    }

    let max = latencies.report(label);
    assert!(max < BOUND, "a change took {max:?} after its REST answer to reach the proxy");

    // Acks are logged (at debug), cluster tokens never, even at the most verbose level.
    admin.process.stop();
    let stderr = admin.process.stderr();
    assert!(stderr.contains("proxy acknowledged a snapshot"), "{stderr}");
    for token in &cluster_tokens {
        assert!(!stderr.contains(token.as_str()), "a cluster token is in bcs-api's log");
    }
    assert!(!socket(dir.path()).exists(), "the socket is removed at shutdown");
}

fn rand_suffix() -> String {
    format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos())
}

#[tokio::test(flavor = "multi_thread")]
async fn rest_changes_reach_the_proxy_within_a_second_on_sqlite() {
    rest_changes_reach_the_proxy_within_a_second("sqlite", Options::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rest_changes_reach_the_proxy_within_a_second_on_mariadb() {
    let db = MysqlDatabase::fresh("bcs_snapshot");
    rest_changes_reach_the_proxy_within_a_second("mariadb", Options { dsn: db.go_dsn(), ..Options::default() }).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn another_major_version_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let _admin = Admin::start(dir.path(), &Options::default()).await;
    let mut client = Client::connect(&socket(dir.path())).await;
    client.send(&hello(PROTOCOL_MAJOR + 1, 3, None)).await;
    match client.next_message().await {
        Message::Refused { reason } => {
            assert!(reason.contains(&format!("{}.3", PROTOCOL_MAJOR + 1)), "{reason}");
            assert!(reason.contains(&format!("{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}")), "{reason}");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(client.closed_within(Duration::from_secs(5)).await, "then admin closes");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversize_frame_closes_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let admin = Admin::start(dir.path(), &Options::default()).await;
    let path = socket(dir.path());
    let (mut healthy, _, _) = Client::handshake(&path, None).await;

    // After the hello, and as the very first bytes.
    let (mut after_hello, _, _) = Client::handshake(&path, None).await;
    after_hello.send_raw(&u32::MAX.to_be_bytes()).await;
    let first = Client::connect(&path).await;
    first.send_raw(&[0xff, 0xff, 0xff, 0xff, b'{']).await;
    let mut first = first;
    // And one that connects and says nothing at all.
    let _silent = UnixStream::connect(&path).await.unwrap();

    assert!(after_hello.closed_within(Duration::from_secs(5)).await, "closed after an oversize frame");
    assert!(first.closed_within(Duration::from_secs(5)).await, "closed after an oversize first frame");

    let token = admin.admin_token.clone();
    let (at, user) =
        call(&admin, Method::POST, "/rest/users/", Some(&token), Some(json!({"user_name": "still-served"}))).await;
    let id = user["ID"].as_i64().unwrap();
    let (arrived, _) = healthy.snapshot_where(|s| s.users.iter().any(|u| u.id == id)).await;
    let latency = arrived.saturating_duration_since(at.answered);
    assert!(latency < BOUND, "{latency:?}");
    assert!(
        admin.process.wait_stderr(&["larger than the limit"], Duration::from_secs(5)),
        "{}",
        admin.process.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_socket_is_private_and_revisions_grow_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut admin = Admin::start(dir.path(), &Options::default()).await;
    let path = socket(dir.path());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);

    let (proxy, _, before) = Client::handshake(&path, None).await;
    let metrics = wait_for_metrics(
        &admin,
        &[
            format!("bcs_api_snapshot_revision {}", before.revision),
            "bcs_api_snapshot_peers 1".into(),
            format!("bcs_api_snapshot_oldest_acked_revision {}", before.revision),
        ],
    )
    .await;
    assert!(metrics.contains("bcs_api_snapshot_build_seconds_count"), "{metrics}");
    drop(proxy);

    admin.process.stop();
    assert!(!path.exists(), "removed at shutdown");
    // A socket file left by a killed admin is removed at start.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let port: u16 = admin.base.rsplit(':').next().unwrap().parse().unwrap();
    let admin = Admin::start_existing(dir.path(), port, admin.insecure_port, admin.admin_token.clone()).await;
    let (_proxy, _, after) = Client::handshake(&path, None).await;
    assert!(after.revision > before.revision, "{} then {}", before.revision, after.revision);
    assert_eq!(after.users, before.users);
    assert_eq!(after.tokens, before.tokens);
    assert!(
        admin.process.wait_stderr(&["removed a stale snapshot socket"], Duration::from_secs(5)),
        "{}",
        admin.process.stderr()
    );

    // A proxy that holds the current revision gets that one again, without a new revision.
    let (_same, _, again) = Client::handshake(&path, Some(after.revision)).await;
    assert_eq!(again.revision, after.revision);
    // A proxy that holds a newer revision (the clock went back) gets one above it.
    let ahead = after.revision + 60_000;
    let (_ahead, _, newest) = Client::handshake(&path, Some(ahead)).await;
    assert!(newest.revision > ahead, "{} should be above {ahead}", newest.revision);
    // One that holds a revision more than a day ahead of the clock (a clock that was wrong, a
    // copied file) is not waited for: it gets the current snapshot, which it takes over its own.
    let far = newest.revision + 48 * 3600 * 1000;
    let (_far, _, current) = Client::handshake(&path, Some(far)).await;
    assert!(current.revision < far, "{} was held back for {far}", current.revision);
    drop(admin);
}

/// Polls /metrics until every line in `wanted` is there; returns the page.
async fn wait_for_metrics(admin: &Admin, wanted: &[String]) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let page = reqwest::get(format!("{}/metrics", admin.base)).await.unwrap().text().await.unwrap();
        if wanted.iter().all(|w| page.lines().any(|l| l == w)) {
            return page;
        }
        assert!(Instant::now() < deadline, "{wanted:?} not in\n{page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_socket_in_use_stops_a_second_admin() {
    let dir = tempfile::tempdir().unwrap();
    let _admin = Admin::start(dir.path(), &Options::default()).await;
    let other = tempfile::tempdir().unwrap();
    let yaml = format!(
        "admin_config:\n  port: {}\n  spawn_proxy: false\n  snapshot_socket: {:?}\n",
        bcs_testkit::free_port(),
        socket(dir.path()).display().to_string()
    );
    std::fs::write(other.path().join("bcs-api.yaml"), yaml).unwrap();
    let mut second = Process::spawn(&common::binary(), &["--config=bcs-api.yaml"], other.path(), "bcs-api");
    assert_eq!(second.wait_exit(Duration::from_secs(30)), Some(1));
    assert!(second.stderr().contains("is in use by a running process"), "{}", second.stderr());
    assert!(socket(dir.path()).exists(), "the first admin's socket is left alone");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_through_another_admin_on_the_same_mariadb_arrives_within_the_period() {
    let db = MysqlDatabase::fresh("bcs_snapshot_two");
    let token = "sharedBootstrapTokenForTwoAdmins0123";
    let options = || Options { dsn: db.go_dsn(), admin_token: token.into(), ..Options::default() };
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let _first = Admin::start(one.path(), &options()).await;
    let second = Admin::start(two.path(), &options()).await;
    let (mut proxy, _, _) = Client::handshake(&socket(one.path()), None).await;

    let (at, user) =
        call(&second, Method::POST, "/rest/users/", Some(token), Some(json!({"user_name": "via-second"}))).await;
    let id = user["ID"].as_i64().unwrap();
    let (arrived, _) = proxy.snapshot_where(|s| s.users.iter().any(|u| u.id == id)).await;
    let latency = arrived.saturating_duration_since(at.answered);
    println!("a write through the other admin reached this admin's proxy after {latency:?}");
    assert!(latency < Duration::from_secs(7), "periodic rebuilds every 5 s: {latency:?}");
}
