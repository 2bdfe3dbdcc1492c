//! ZooKeeper with a real server (Debian's package, started per test) and the real `bcs-api`:
//! mesos-drivers registered as the real ones do appear in the proxies' snapshot and leave it
//! within their session timeout; a ZooKeeper outage keeps the last drivers and the REST API up,
//! and recovery re-reads and re-watches; two instances on one MariaDB and one ZooKeeper see each
//! other's writes within 1 s, and exactly one holds the leader lock, the other taking over when
//! the holder is killed; RBAC sync runs on the leader only, applies grants written through
//! either instance, and moves with the lock.
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bcs_shared::snapshot::wire::{encode, Decoder, Message, PROTOCOL_MAJOR, PROTOCOL_MINOR};
use bcs_shared::snapshot::{Digest, MesosDriver, Snapshot};
use bcs_testkit::apiserver::{FakeApiserver, FakeOptions, RbacKind};
use bcs_testkit::mesos_driver::{FakeMesosDriver, Options as DriverOptions, DRIVERS};
use bcs_testkit::mysql::MysqlDatabase;
use bcs_testkit::zookeeper::ZooKeeper;
use common::{binding_for, Admin, Options};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

const CLUSTER: &str = "BCS-MESOS-10001";
/// How long anything may take before the test calls it lost.
const PATIENCE: Duration = Duration::from_secs(20);
/// bcs-api's own session timeout (the original's).
const ADMIN_SESSION: Duration = Duration::from_secs(10);

fn options(zk: &ZooKeeper) -> Options {
    Options {
        extra_yaml: format!(
            "zk_config:\n  bcs_zookeeper: \"{}\"\nlocal_config:\n  local_ip: 127.0.0.1\n",
            zk.address()
        ),
        ..Options::default()
    }
}

/// A stand-in proxy on the snapshot socket: acknowledges every snapshot and hands it over
/// with its arrival time.
struct SnapshotClient {
    snapshots: mpsc::UnboundedReceiver<(Instant, Snapshot)>,
    latest: Option<Snapshot>,
}

impl SnapshotClient {
    async fn connect(dir: &Path) -> SnapshotClient {
        let path = dir.join("run/bcs-api.sock");
        let stream = UnixStream::connect(&path).await.unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        let (mut reader, mut writer) = stream.into_split();
        let hello =
            Message::Hello { major: PROTOCOL_MAJOR, minor: PROTOCOL_MINOR, peer: "zk test".into(), revision: None };
        writer.write_all(&encode(&hello)).await.unwrap();
        let (sender, snapshots) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut decoder = Decoder::default();
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                while let Ok(Some(message)) = decoder.next_message() {
                    if let Message::Snapshot(s) = message {
                        let _ = writer.write_all(&encode(&Message::Ack { revision: s.revision })).await;
                        if sender.send((Instant::now(), s)).is_err() {
                            return;
                        }
                    }
                }
                match reader.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => decoder.push(&buffer[..n]).expect("admin's frames are within the limit"),
                }
            }
        });
        SnapshotClient { snapshots, latest: None }
    }

    /// The first snapshot (the current one included) for which `wanted` holds, with its
    /// arrival time; panics after `patience`.
    async fn until(
        &mut self,
        patience: Duration,
        what: &str,
        wanted: impl Fn(&Snapshot) -> bool,
    ) -> (Instant, Snapshot) {
        if let Some(s) = self.latest.as_ref().filter(|s| wanted(s)) {
            return (Instant::now(), s.clone());
        }
        let deadline = Instant::now() + patience;
        loop {
            let next = tokio::time::timeout_at(deadline.into(), self.snapshots.recv()).await;
            let Ok(Some((at, s))) = next else {
                panic!(
                    "no snapshot with {what} within {patience:?}; the last: {:?}",
                    self.latest.as_ref().map(|s| &s.mesos)
                )
            };
            s.validate().unwrap_or_else(|e| panic!("revision {} is invalid: {e}", s.revision));
            self.latest = Some(s.clone());
            if wanted(&s) {
                return (at, s);
            }
        }
    }

    /// Every snapshot that arrives within `period` (the current one first).
    async fn during(&mut self, period: Duration) -> Vec<Snapshot> {
        let mut seen: Vec<Snapshot> = self.latest.iter().cloned().collect();
        let deadline = Instant::now() + period;
        while let Ok(Some((_, s))) = tokio::time::timeout_at(deadline.into(), self.snapshots.recv()).await {
            self.latest = Some(s.clone());
            seen.push(s);
        }
        seen
    }
}

/// The drivers of `cluster` in `s`, as (ip, port) sorted.
fn drivers(s: &Snapshot, cluster: &str) -> Vec<(String, u16)> {
    let mut out: Vec<_> = s
        .mesos
        .iter()
        .filter(|m| m.cluster_id == cluster)
        .flat_map(|m| m.drivers.iter().map(|d| (d.ip.clone(), d.port)))
        .collect();
    out.sort();
    out
}

fn of(list: &[&FakeMesosDriver]) -> Vec<(String, u16)> {
    let mut out: Vec<_> = list.iter().map(|d| (d.ip.clone(), d.port)).collect();
    out.sort();
    out
}

async fn healthz(admin: &Admin) -> Value {
    let (status, body) = admin.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls /healthz until `wanted` holds; returns the body and how long it took.
async fn healthz_until(admin: &Admin, patience: Duration, wanted: impl Fn(&Value) -> bool) -> (Value, Duration) {
    let started = Instant::now();
    loop {
        let body = healthz(admin).await;
        if wanted(&body) {
            return (body, started.elapsed());
        }
        assert!(started.elapsed() < patience, "/healthz still {body} after {patience:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn zk_client(zk: &ZooKeeper) -> zookeeper_client::Client {
    zookeeper_client::Client::connect(&zk.address()).await.expect("test client connects")
}

#[tokio::test(flavor = "multi_thread")]
async fn drivers_appear_and_leave_within_the_session_timeout() {
    let zk = ZooKeeper::start();
    let dir = tempfile::tempdir().unwrap();
    let admin = Admin::start(dir.path(), &options(&zk)).await;
    let mut proxy = SnapshotClient::connect(dir.path()).await;

    // Two drivers, plus nodes to ignore: malformed JSON, an unusable address, a short name.
    let mut one = FakeMesosDriver::start(&zk.address(), CLUSTER).await;
    let mut two = FakeMesosDriver::start(&zk.address(), CLUSTER).await;
    let bad = FakeMesosDriver::start_with(
        &zk.address(),
        DriverOptions { data: Some(b"{not json".to_vec()), ..DriverOptions::new(CLUSTER) },
    )
    .await;
    let hostname = FakeMesosDriver::start_with(
        &zk.address(),
        DriverOptions {
            data: Some(br#"{"ip":"driver.example","port":8090,"scheme":"http"}"#.to_vec()),
            ..DriverOptions::new(CLUSTER)
        },
    )
    .await;
    let test = zk_client(&zk).await;
    let persistent = zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all());
    test.create(&format!("{DRIVERS}/{CLUSTER}/short"), b"{}", &persistent).await.unwrap();

    let (_, s) = proxy.until(PATIENCE, "both drivers", |s| drivers(s, CLUSTER) == of(&[&one, &two])).await;
    let set = s.mesos.iter().find(|m| m.cluster_id == CLUSTER).unwrap();
    assert_eq!(
        set.drivers[0],
        MesosDriver { scheme: "http".into(), ip: "127.0.0.1".into(), port: one.port },
        "ordered by sequence"
    );
    for node in [&bad.node, &hostname.node] {
        let warned =
            admin.process.wait_stderr(&[node.as_str(), "leaving out a mesos-driver node"], Duration::from_secs(5));
        assert!(warned, "{node} warned about:\n{}", admin.process.stderr());
    }
    // The leader lock is taken by its own task, which a loaded machine may run after the
    // drivers' watch: wait for it rather than read it once.
    let (health, _) = healthz_until(&admin, PATIENCE, |h| h["leader"] == true).await;
    assert_eq!(health["zookeeper"]["state"], "connected", "{health}");
    assert_eq!(health["zookeeper"]["mesos_drivers"], 2, "{health}");

    // This instance registered itself as the original does.
    let registered = health["zookeeper"]["registered"].as_str().unwrap().to_owned();
    let name = registered.strip_prefix("/bcs/services/endpoints/apiserver/").expect(&registered);
    assert!(name.starts_with("_c_") && name[3..35].bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
    assert!(name[35..].starts_with("-127.0.0.1") && name.len() == 35 + "-127.0.0.1".len() + 10, "{name}");
    let (data, _) = test.get_data(&registered).await.unwrap();
    let info: Value = serde_json::from_slice(&data).unwrap();
    assert_eq!(
        (info["ip"].as_str(), info["port"].as_u64(), info["scheme"].as_str()),
        (Some("127.0.0.1"), Some(admin.insecure_port as u64), Some("http"))
    );
    assert_eq!(info["pid"], admin.process.pid().unwrap());

    // A clean exit: its node goes at once.
    let stopped = Instant::now();
    one.stop();
    let (at, _) = proxy.until(PATIENCE, "the stopped driver gone", |s| drivers(s, CLUSTER) == of(&[&two])).await;
    println!("a stopped driver left the snapshot after {:?}", at - stopped);
    assert!(at - stopped < Duration::from_secs(1), "{:?}", at - stopped);

    // A crash: its node goes when its 2 s session expires.
    let killed = Instant::now();
    two.kill();
    let (at, s) = proxy.until(PATIENCE, "the killed driver gone", |s| drivers(s, CLUSTER).is_empty()).await;
    println!("a killed driver (2 s session) left the snapshot after {:?}", at - killed);
    assert!(at - killed < Duration::from_secs(2) + Duration::from_millis(1500), "{:?}", at - killed);
    assert!(s.mesos.iter().any(|m| m.cluster_id == CLUSTER), "the cluster stays known, with no driver");

    // A registration removed behind its back is made again.
    test.delete(&registered, None).await.unwrap();
    let (health, _) = healthz_until(&admin, PATIENCE, |h| {
        h["zookeeper"]["registered"].as_str().is_some_and(|r| !r.is_empty() && r != registered)
    })
    .await;
    let again = health["zookeeper"]["registered"].as_str().unwrap();
    assert!(test.check_stat(again).await.unwrap().is_some(), "{again}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_node_bcs_api_may_not_read_is_left_out_and_the_others_still_follow() {
    use zookeeper_client::{Acl, Acls, AuthId, CreateMode, Permission};
    let mut zk = ZooKeeper::start();
    let test = zk_client(&zk).await;
    // Another client's cluster node whose access list allows anything but reading.
    test.mkdir(DRIVERS, &CreateMode::Persistent.with_acls(Acls::anyone_all())).await.unwrap();
    let locked =
        [Acl::new(Permission::WRITE | Permission::CREATE | Permission::DELETE | Permission::ADMIN, AuthId::anyone())];
    let path = format!("{DRIVERS}/BCS-MESOS-LOCKED");
    test.create(&path, b"", &CreateMode::Persistent.with_acls(Acls::new(&locked))).await.unwrap();
    assert!(test.list_children(&path).await.is_err(), "the node cannot be read");

    let dir = tempfile::tempdir().unwrap();
    let admin = Admin::start(dir.path(), &options(&zk)).await;
    let mut proxy = SnapshotClient::connect(dir.path()).await;
    const KEPT: &str = "BCS-MESOS-KEPT";
    let kept = FakeMesosDriver::start(&zk.address(), KEPT).await;
    proxy.until(PATIENCE, "the readable cluster's driver", |s| drivers(s, KEPT) == of(&[&kept])).await;
    assert!(
        admin.process.wait_stderr(&["BCS-MESOS-LOCKED", "access list"], PATIENCE),
        "the unreadable node is named: {}",
        admin.process.stderr()
    );

    // A cluster whose node stops being readable keeps its last known drivers through the next read.
    test.set_acl(&format!("{DRIVERS}/{KEPT}"), &locked, None).await.unwrap();
    let driver = FakeMesosDriver::start(&zk.address(), CLUSTER).await;
    let (_, s) = proxy.until(PATIENCE, "a new cluster's driver", |s| drivers(s, CLUSTER) == of(&[&driver])).await;
    assert_eq!(drivers(&s, KEPT), of(&[&kept]), "the unreadable cluster's drivers were dropped");

    // And through a new session: ZooKeeper is away past bcs-api's session timeout, and the new
    // session still cannot read the node.
    zk.kill();
    healthz_until(&admin, ADMIN_SESSION + PATIENCE, |h| {
        matches!(h["zookeeper"]["state"].as_str(), Some("connecting" | "unreachable"))
    })
    .await;
    zk.restart();
    healthz_until(&admin, PATIENCE, |h| h["zookeeper"]["state"] == "connected").await;
    const LATE: &str = "BCS-MESOS-LATE";
    let late = FakeMesosDriver::start(&zk.address(), LATE).await;
    let (_, s) = proxy.until(PATIENCE, "a driver after the new session", |s| drivers(s, LATE) == of(&[&late])).await;
    assert_eq!(drivers(&s, KEPT), of(&[&kept]), "a new session dropped the unreadable cluster's drivers");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_zookeeper_outage_keeps_the_last_drivers_and_recovery_rewatches() {
    let mut zk = ZooKeeper::start();
    let dir = tempfile::tempdir().unwrap();
    let admin = Admin::start(dir.path(), &options(&zk)).await;
    let token = admin.admin_token.clone();
    let mut proxy = SnapshotClient::connect(dir.path()).await;
    // A long session: this driver outlives the outage.
    let survivor = FakeMesosDriver::start_with(
        &zk.address(),
        DriverOptions { session_timeout: Duration::from_secs(60), ..DriverOptions::new(CLUSTER) },
    )
    .await;
    proxy.until(PATIENCE, "the driver", |s| drivers(s, CLUSTER) == of(&[&survivor])).await;

    zk.kill();
    let (health, after) = healthz_until(&admin, PATIENCE, |h| h["zookeeper"]["state"] != "connected").await;
    println!("/healthz reported ZooKeeper {} {after:?} after the kill", health["zookeeper"]["state"]);
    assert_eq!(health["healthy"], true, "the store is fine: {health}");
    assert_eq!(health["leader"], false, "no leader without ZooKeeper: {health}");

    // The REST API works, and its writes reach the proxy with the last drivers still in.
    let (status, user) =
        admin.call(Method::POST, "/rest/users/", Some(&token), Some(json!({"user_name": "during-outage"}))).await;
    assert_eq!(status, 200, "{user}");
    let id = user["ID"].as_i64().unwrap();
    let (_, s) = proxy.until(PATIENCE, "the new user", |s| s.users.iter().any(|u| u.id == id)).await;
    assert_eq!(drivers(&s, CLUSTER), of(&[&survivor]), "the last drivers stay through the outage");

    // Past bcs-api's session timeout: its session is over, and still nothing is emptied.
    let (health, _) = healthz_until(&admin, ADMIN_SESSION + PATIENCE, |h| {
        matches!(h["zookeeper"]["state"].as_str(), Some("connecting" | "unreachable"))
    })
    .await;
    println!("after the session timeout /healthz says {}", health["zookeeper"]);
    for s in proxy.during(Duration::from_secs(1)).await {
        assert_eq!(drivers(&s, CLUSTER), of(&[&survivor]), "revision {} lost the drivers", s.revision);
    }

    // Recovery: a new session reads everything again and watches again.
    let restarted = Instant::now();
    zk.restart();
    let (_, took) = healthz_until(&admin, PATIENCE, |h| h["zookeeper"]["state"] == "connected").await;
    println!("reconnected {took:?} after ZooKeeper answered again");
    let newcomer = FakeMesosDriver::start(&zk.address(), CLUSTER).await;
    let (at, _) = proxy
        .until(PATIENCE, "the driver registered after recovery", |s| drivers(s, CLUSTER) == of(&[&survivor, &newcomer]))
        .await;
    println!("a driver registered after recovery appeared {:?} after the restart", at - restarted);
    let (health, _) = healthz_until(&admin, PATIENCE, |h| {
        h["leader"] == true && h["zookeeper"]["registered"].as_str().is_some_and(|r| !r.is_empty())
    })
    .await;
    let test = zk_client(&zk).await;
    let registered = health["zookeeper"]["registered"].as_str().unwrap();
    assert!(test.check_stat(registered).await.unwrap().is_some(), "registered again: {registered}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_see_each_others_writes_within_a_second_and_one_leads() {
    let zk = ZooKeeper::start();
    let db = MysqlDatabase::fresh("bcs_zk_two");
    let token = "sharedBootstrapTokenForTwoAdmins0123";
    let options = || Options { dsn: db.go_dsn(), admin_token: token.into(), ..options(&zk) };
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Admin::start(one.path(), &options()).await;
    let mut b = Admin::start(two.path(), &options()).await;
    let mut b_proxy = SnapshotClient::connect(two.path()).await;
    let mut a_proxy = SnapshotClient::connect(one.path()).await;

    let (status, user) = a.call(Method::POST, "/rest/users/", Some(token), Some(json!({"user_name": "via-a"}))).await;
    assert_eq!(status, 200, "{user}");
    let user_id = user["ID"].as_i64().unwrap();
    let mut latencies = Vec::new();
    for round in 0..10 {
        // Alternate: tokens created through A must reach B's proxy, and the other way round.
        let (writer, reader) = if round % 2 == 0 { (&a, &mut b_proxy) } else { (&b, &mut a_proxy) };
        let (status, created) =
            writer.call(Method::POST, &format!("/rest/users/{user_id}/tokens"), Some(token), None).await;
        let answered = Instant::now();
        assert_eq!(status, 200, "{created}");
        let digest = Digest::of(created["Value"].as_str().unwrap());
        let (at, _) =
            reader.until(PATIENCE, "the other instance's token", |s| s.tokens.iter().any(|t| t.digest == digest)).await;
        latencies.push(at.saturating_duration_since(answered));
    }
    latencies.sort();
    println!(
        "a token created through one instance reached the other's proxy after: p50 {:?}, max {:?} ({} writes)",
        latencies[latencies.len() / 2],
        latencies.last().unwrap(),
        latencies.len()
    );
    assert!(*latencies.last().unwrap() < Duration::from_secs(1), "{latencies:?}");

    // Exactly one leader.
    let started = Instant::now();
    let leaders = loop {
        let (ha, hb) = (healthz(&a).await, healthz(&b).await);
        let leaders = [&ha, &hb].iter().filter(|h| h["leader"] == true).count();
        if leaders == 1 || started.elapsed() > PATIENCE {
            break (leaders, ha["leader"] == true);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(leaders.0, 1, "exactly one instance holds the leader lock");
    for _ in 0..5 {
        let (ha, hb) = (healthz(&a).await, healthz(&b).await);
        assert_ne!(ha["leader"], hb["leader"], "{ha} {hb}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = reqwest::get(format!("{}/metrics", a.base)).await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == format!("bcs_api_leader {}", i32::from(leaders.1))), "{metrics}");

    // Kill the leader outright: the other takes over once the killed session expires.
    let (leader, follower) = if leaders.1 { (&mut a, &b) } else { (&mut b, &a) };
    let pid = leader.process.pid().unwrap();
    let killed = Instant::now();
    std::process::Command::new("kill").arg("-KILL").arg(pid.to_string()).status().unwrap();
    let (_, took) = healthz_until(follower, ADMIN_SESSION + PATIENCE, |h| h["leader"] == true).await;
    println!("the other instance took the leader lock {took:?} after the leader was killed (session timeout {ADMIN_SESSION:?})");
    assert!(killed.elapsed() < ADMIN_SESSION + Duration::from_secs(5), "{:?}", killed.elapsed());
    leader.process.stop();
}

/// Which of two instances holds the leader lock once exactly one does: true for `a`.
async fn the_leader_is_a(a: &Admin, b: &Admin) -> bool {
    let started = Instant::now();
    loop {
        let (ha, hb) = (healthz(a).await, healthz(b).await);
        if (ha["leader"] == true) != (hb["leader"] == true) {
            return ha["leader"] == true;
        }
        assert!(started.elapsed() < PATIENCE, "not exactly one leader: {ha} {hb}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Registers a plain cluster through `admin` whose apiserver is `fake`, as its agent would;
/// returns its bcs-api id.
async fn register_fake(admin: &Admin, id: &str, fake: &FakeApiserver) -> String {
    let created = admin.call(Method::POST, "/rest/clusters", admin.admin(), Some(json!({"id": id}))).await;
    assert_eq!(created.0, 200, "{}", created.1);
    let id = created.1["id"].as_str().unwrap();
    let path = format!("/rest/clusters/{id}/register_tokens");
    let rt = admin.call(Method::POST, &path, admin.admin(), None).await;
    assert_eq!(rt.0, 200, "{}", rt.1);
    let report = json!({"register_token": rt.1[0]["token"], "server_addresses": fake.url(),
        "cacert_data": fake.ca_pem(), "user_token": fake.token()});
    let put = admin.call(Method::PUT, &format!("/rest/clusters/{id}/credentials"), None, Some(report)).await;
    assert_eq!(put.0, 200, "{}", put.1);
    id.to_owned()
}

/// Grants `plain:dev` this role in `cluster` through `admin`; returns the grant's id.
async fn grant(admin: &Admin, token: &str, cluster: &str, role: &str) -> i64 {
    let body = json!({"user_name": "dev", "cluster_id": cluster, "role": role});
    let (status, grant) = admin.call(Method::POST, "/rest/rbac/grants", Some(token), Some(body)).await;
    assert_eq!(status, 200, "{grant}");
    grant["id"].as_i64().unwrap()
}

/// Waits until bcs-api's binding of `role` to `plain.dev` exists (`wanted`) or is gone; returns
/// how long that took. `admins` are the instances whose logs a failure shows.
async fn until_binding(fake: &FakeApiserver, role: &str, wanted: bool, what: &str, admins: &[&Admin]) -> Duration {
    let started = Instant::now();
    while binding_for(fake, RbacKind::ClusterRoleBinding, "plain.dev", role).is_some() != wanted {
        if started.elapsed() > PATIENCE {
            let logs: Vec<String> = admins.iter().map(|a| a.process.stderr()).collect();
            panic!(
                "{what}: the binding to {role} still {} after {PATIENCE:?}; the instances' logs:\n{}",
                if wanted { "missing" } else { "there" },
                logs.join("\n----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn rbac_sync_runs_on_the_leader_and_applies_grants_written_through_either_instance() {
    let zk = ZooKeeper::start();
    let db = MysqlDatabase::fresh("bcs_zk_rbac");
    let token = "sharedBootstrapTokenForRbacAdmins012";
    // The periodic reconcile is far away: a grant must reach the leader as a change notice.
    let options = || Options {
        dsn: db.go_dsn(),
        admin_token: token.into(),
        rbac_extra: "  turn_on_conf: true\n  sync_interval_seconds: 300\n".into(),
        ..options(&zk)
    };
    let fake = FakeApiserver::start(FakeOptions::enforcing_rbac("haClusterToken")).await;
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Admin::start(one.path(), &options()).await;
    // Instances on one MySQL share the key that seals the cluster credentials.
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(two.path().join("data"))
        .unwrap();
    std::fs::copy(one.path().join("data/secret.key"), two.path().join("data/secret.key")).unwrap();
    let b = Admin::start(two.path(), &options()).await;
    let (leader, follower) = if the_leader_is_a(&a, &b).await { (a, b) } else { (b, a) };

    let user = follower.call(Method::POST, "/rest/users/", Some(token), Some(json!({"user_name": "dev"}))).await;
    assert_eq!(user.0, 200, "{}", user.1);
    let cluster = register_fake(&follower, "k8s-ha", &fake).await;
    // Written through the follower, applied by the leader.
    let readonly = grant(&follower, token, &cluster, "cluster-readonly").await;
    let took =
        until_binding(&fake, "bke-cluster-readonly", true, "a grant through the follower", &[&leader, &follower]).await;
    println!("a grant written through the follower was applied by the leader after {took:?}");
    let status = follower.call(Method::GET, "/rest/rbac/status", Some(token), None).await.1;
    assert_eq!(status["leader"], false, "{status}");
    assert_eq!(status["clusters"], json!([]), "the follower reconciles nothing: {status}");
    let status = leader.call(Method::GET, "/rest/rbac/status", Some(token), None).await.1;
    assert_eq!(status["leader"], true, "{status}");
    assert_eq!(status["clusters"][0]["cluster_id"], cluster, "{status}");
    assert!(status["clusters"][0]["created"].as_u64().unwrap() >= 1, "{status}");

    // The leader dies: the follower takes the lock and the sync with it.
    let pid = leader.process.pid().unwrap();
    std::process::Command::new("kill").arg("-KILL").arg(pid.to_string()).status().unwrap();
    let (_, took) = healthz_until(&follower, ADMIN_SESSION + PATIENCE, |h| h["leader"] == true).await;
    println!("the follower led {took:?} after the leader was killed");
    let removed = follower.call(Method::DELETE, &format!("/rest/rbac/grants/{readonly}"), Some(token), None).await;
    assert_eq!(removed, (200, json!({})));
    let took =
        until_binding(&fake, "bke-cluster-readonly", false, "a removal through the new leader", &[&follower]).await;
    println!("a removal through the new leader was applied after {took:?}");

    // The old leader comes back as a follower; a grant through it reaches the new leader.
    let old = leader.restart().await;
    assert!(!the_leader_is_a(&old, &follower).await, "the new leader keeps the lock");
    grant(&old, token, &cluster, "cluster-manage").await;
    let took =
        until_binding(&fake, "bke-cluster-manage", true, "a grant through the old leader", &[&old, &follower]).await;
    println!("a grant written through the restarted instance was applied by the new leader after {took:?}");
    let status = old.call(Method::GET, "/rest/rbac/status", Some(token), None).await.1;
    assert_eq!(status["clusters"], json!([]), "the restarted follower reconciles nothing: {status}");
}
