//! The Mesos half through the whole gateway: a real ZooKeeper, fake mesos-drivers registering
//! as the real ones do, bcs-api discovering them and starting its proxy, and clients calling
//! `/bcsapi/v4/scheduler/mesos/...` on the proxy's port.
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bcs_testkit::mesos_driver::{FakeMesosDriver, Options as DriverOptions};
use bcs_testkit::zookeeper::ZooKeeper;
use common::Admin;
use reqwest::Method;
use serde_json::json;

const CLUSTER: &str = "BCS-MESOS-20001";

struct Gateway {
    _dir: tempfile::TempDir,
    admin: Admin,
    user_token: String,
    metric_port: u16,
}

fn write_config(dir: &Path, zk: &str, dsn: &str, admin_token: &str, ports: (u16, u16, u16)) {
    let (admin_port, plain_port, metric_port) = ports;
    let yaml = format!(
        "service_config:\n  address: 127.0.0.1\n  port: {}\n  insecure_address: 127.0.0.1\n  insecure_port: {plain_port}\n\
         metric_config:\n  metric_port: {metric_port}\nlocal_config:\n  local_ip: 127.0.0.1\n\
         zk_config:\n  bcs_zookeeper: \"{zk}\"\ncore_database:\n  dsn: {dsn:?}\n\
         log_config:\n  logtostderr: true\n  v: 1\n\
         bootstrap_users:\n  - name: admin\n    is_super_user: true\n    tokens: [{admin_token:?}]\n\
         rbac:\n  turn_on_rbac: true\n\
         admin_config:\n  address: 127.0.0.1\n  port: {admin_port}\n  snapshot_socket: ./run/bcs-api.sock\n  spawn_proxy: true\n\
         proxy_config:\n  cores: 1\nstorage:\n  data_dir: ./data\n",
        bcs_testkit::free_port()
    );
    std::fs::write(dir.join("bcs-api.yaml"), yaml).unwrap();
}

async fn gateway(zk: &ZooKeeper, dsn: &str, admin_token: &str) -> Gateway {
    assert!(
        common::binary().with_file_name("bcs-api-proxy").exists(),
        "build bcs-api-proxy first (cargo test --workspace does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let ports = (bcs_testkit::free_port(), bcs_testkit::free_port(), bcs_testkit::free_port());
    write_config(dir.path(), &zk.address(), dsn, admin_token, ports);
    let mut admin = Admin::start_existing(dir.path(), ports.0, ports.1, admin_token.to_owned()).await;
    admin.process.wait_ready(&format!("http://127.0.0.1:{}/readyz", ports.2), Duration::from_secs(30)).await;
    let user = admin
        .call(Method::POST, "/rest/users/", admin.admin(), Some(json!({"user_name": format!("ops{}", ports.0)})))
        .await;
    assert_eq!(user.0, 200, "{}", user.1);
    let token = admin.call(Method::POST, &format!("/rest/users/{}/tokens", user.1["ID"]), admin.admin(), None).await;
    Gateway { _dir: dir, user_token: token.1["Value"].as_str().unwrap().to_owned(), admin, metric_port: ports.2 }
}

impl Gateway {
    /// A call on the proxy's plain port: (status, body).
    async fn mesos(&self, path: &str, token: Option<&str>, cluster: Option<&str>) -> (u16, String) {
        let mut request = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/bcsapi/v4/scheduler/mesos{path}", self.admin.insecure_port));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(cluster) = cluster {
            request = request.header("BCS-ClusterID", cluster);
        }
        let response = request.timeout(Duration::from_secs(10)).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// The revision of the snapshot the proxy serves (its metrics port), 0 before it has one.
    async fn proxy_revision(&self) -> u64 {
        let url = format!("http://127.0.0.1:{}/metrics", self.metric_port);
        let Ok(response) = reqwest::get(url).await else { return 0 };
        let text = response.text().await.unwrap_or_default();
        let line = text.lines().find(|l| l.starts_with("bcs_api_snapshot_revision "));
        line.and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse::<f64>().ok()).map_or(0, |v| v as u64)
    }

    /// Waits until `n` calls in a row answer `status`.
    async fn until_status(&self, status: u16, patience: Duration) -> Duration {
        let started = Instant::now();
        while started.elapsed() < patience {
            if self.mesos("/apps", Some(&self.user_token), Some(CLUSTER)).await.0 == status {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no {status} within {patience:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesos_route_through_zookeeper_discovery() {
    let mut zk = ZooKeeper::start();
    let a = FakeMesosDriver::start(&zk.address(), CLUSTER).await;
    let mut b = FakeMesosDriver::start_with(&zk.address(), DriverOptions::new(CLUSTER)).await;
    let mut gw = gateway(&zk, "", "mesosGatewayAdminToken0123456789").await;
    gw.until_status(200, Duration::from_secs(20)).await;

    // Both live drivers get traffic; they see the cluster id and never the caller's token.
    for _ in 0..30 {
        let (status, body) =
            gw.mesos("/namespaces/ns/applications?kind=app", Some(&gw.user_token), Some(CLUSTER)).await;
        assert_eq!(status, 200, "{body}");
    }
    let (ra, rb) = (a.requests(), b.requests());
    assert!(!ra.is_empty() && !rb.is_empty(), "both drivers get traffic: {} and {}", ra.len(), rb.len());
    for r in ra.iter().chain(rb.iter()).filter(|r| r.uri.contains("applications")) {
        assert_eq!(r.uri, "/mesosdriver/v4/namespaces/ns/applications?kind=app");
        assert_eq!(r.header("bcs-clusterid"), Some(CLUSTER));
        assert!(r.header("authorization").is_none());
    }

    // Clear answers for bad calls.
    assert_eq!(gw.mesos("/apps", None, Some(CLUSTER)).await.0, 401);
    assert_eq!(gw.mesos("/apps", Some(&gw.user_token), None).await.0, 400);
    assert_eq!(gw.mesos("/apps", Some(&gw.user_token), Some("BCS-MESOS-404")).await.0, 503);
    a.reply_with(500, "driver failed");
    b.reply_with(500, "driver failed");
    assert_eq!(gw.mesos("/apps", Some(&gw.user_token), Some(CLUSTER)).await, (500, "driver failed".to_owned()));
    a.reply_with(200, "{}");
    b.reply_with(200, "{}");

    // A killed driver (its session expires after 2 s) stops getting traffic.
    b.kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = b.requests().len();
    for _ in 0..10 {
        assert_eq!(gw.mesos("/apps", Some(&gw.user_token), Some(CLUSTER)).await.0, 200);
    }
    assert_eq!(b.requests().len(), before, "the killed driver got no traffic after its session expired");

    // ZooKeeper killed: the route keeps serving with the last known drivers.
    zk.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..5 {
        assert_eq!(gw.mesos("/apps", Some(&gw.user_token), Some(CLUSTER)).await.0, 200);
    }

    // bcs-api restarted while ZooKeeper is still down (its proxy with it): the new instance has
    // no driver list, and its snapshots say so, so the proxy keeps the persisted drivers.
    let before = gw.proxy_revision().await;
    assert!(before > 0, "the proxy reports its snapshot revision");
    gw.admin = gw.admin.restart().await;
    let metrics = format!("http://127.0.0.1:{}/readyz", gw.metric_port);
    gw.admin.process.wait_ready(&metrics, Duration::from_secs(30)).await;
    let started = Instant::now();
    while gw.proxy_revision().await <= before {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the restarted bcs-api's snapshot never reached the proxy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        let (status, body) = gw.mesos("/apps", Some(&gw.user_token), Some(CLUSTER)).await;
        assert_eq!(status, 200, "the drivers were lost with the restart: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_tokens_within_a_second_and_one_leads() {
    let zk = ZooKeeper::start();
    let db = bcs_testkit::mysql::MysqlDatabase::fresh("bcs_two_gw");
    let _driver = FakeMesosDriver::start(&zk.address(), CLUSTER).await;
    let admin_token = "sharedAdminTokenForTwoGateways0123";
    let one = gateway(&zk, &db.go_dsn(), admin_token).await;
    let two = gateway(&zk, &db.go_dsn(), admin_token).await;
    two.until_status(200, Duration::from_secs(20)).await;

    // A user and token created through instance one.
    let user =
        one.admin.call(Method::POST, "/rest/users/", one.admin.admin(), Some(json!({"user_name": "crossover"}))).await;
    let created =
        one.admin.call(Method::POST, &format!("/rest/users/{}/tokens", user.1["ID"]), one.admin.admin(), None).await;
    let answered = Instant::now();
    let token = created.1["Value"].as_str().unwrap().to_owned();
    let mut works_after = None;
    while answered.elapsed() < Duration::from_secs(3) {
        if two.mesos("/apps", Some(&token), Some(CLUSTER)).await.0 == 200 {
            works_after = Some(answered.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let works_after = works_after.expect("the token works on the other instance's proxy");
    println!("a token created on instance one worked on instance two's proxy after {works_after:?}");
    assert!(works_after < Duration::from_secs(1));

    let leaders = [&one, &two].iter().filter(|g| is_leader(g)).count();
    assert_eq!(leaders, 1, "exactly one instance holds the leader lock");
}

/// Whether the instance's /healthz says it holds the leader lock (blocking, off the runtime).
fn is_leader(g: &Gateway) -> bool {
    let url = format!("{}/healthz", g.admin.base);
    let body: serde_json::Value = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async { reqwest::get(url).await.unwrap().json().await.unwrap() })
    })
    .join()
    .unwrap();
    body["leader"] == true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mysql_down_rest_is_503_and_the_proxy_keeps_serving() {
    let zk = ZooKeeper::start();
    let db = bcs_testkit::mysql::MysqlDatabase::fresh("bcs_gw_down");
    let forwarder = bcs_testkit::forward::Forwarder::start(db.server_address()).await;
    let _driver = FakeMesosDriver::start(&zk.address(), CLUSTER).await;
    let gw = gateway(&zk, &db.go_dsn_via("127.0.0.1", forwarder.port()), "mysqlDownAdminToken0123456789abc").await;
    gw.until_status(200, Duration::from_secs(20)).await;

    forwarder.cut();
    let rest =
        gw.admin.call(Method::POST, "/rest/users/", gw.admin.admin(), Some(json!({"user_name": "during"}))).await;
    assert_eq!(rest.0, 503, "{}", rest.1);
    assert_eq!(gw.admin.call(Method::GET, "/healthz", None, None).await.0, 503);
    for _ in 0..10 {
        assert_eq!(
            gw.mesos("/apps", Some(&gw.user_token), Some(CLUSTER)).await.0,
            200,
            "the proxy serves without MySQL"
        );
    }
    forwarder.restore();
}
