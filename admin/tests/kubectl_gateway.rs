//! The whole gateway as a user meets it: `bcs-api` (which starts and supervises
//! `bcs-api-proxy`) serving TLS, a cluster registered through the REST API whose apiserver is
//! the test kit's fake, and the installed kubectl with a kubeconfig pointing at
//! `https://127.0.0.1:<tls port>/tunnels/clusters/<identifier>`.
mod common;

use std::time::Duration;

use bcs_testkit::apiserver::kubectl::Kubectl;
use bcs_testkit::apiserver::{CertPair, FakeApiserver, FakeOptions};
use bcs_testkit::process::Process;
use common::Admin;
use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(30);
const CLUSTER_TOKEN: &str = "fakeClusterServiceAccountToken42";

struct Gateway {
    dir: tempfile::TempDir,
    admin: Admin,
    fake: FakeApiserver,
    gateway_ca: String,
    server_address: String,
    user_token: String,
    tls_port: u16,
    metric_port: u16,
}

fn proxy_binary() -> std::path::PathBuf {
    let path = common::binary().with_file_name("bcs-api-proxy");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p bcs-proxy` (cargo test --workspace does)",
        path.display()
    );
    path
}

/// Creates BCS cluster `id` (project e2e) as the user; returns its cluster id and identifier.
async fn create_cluster(admin: &Admin, user_token: &str, id: &str) -> (String, String) {
    let cluster = admin
        .call(Method::POST, "/rest/clusters/bcs", Some(user_token), Some(json!({"id": id, "project_id": "e2e"})))
        .await;
    assert_eq!(cluster.0, 200, "{}", cluster.1);
    (cluster.1["id"].as_str().unwrap().to_owned(), cluster.1["identifier"].as_str().unwrap().to_owned())
}

/// Reports `server_addresses`, with `fake`'s CA and token, as the cluster's credentials.
async fn report(admin: &Admin, user_token: &str, cluster_id: &str, server_addresses: &str, fake: &FakeApiserver) {
    let rt =
        admin.call(Method::POST, &format!("/rest/clusters/{cluster_id}/register_tokens"), Some(user_token), None).await;
    let report = json!({
        "register_token": rt.1[0]["token"],
        "server_addresses": server_addresses,
        "cacert_data": fake.ca_pem(),
        "user_token": fake.token(),
    });
    let put = admin.call(Method::PUT, &format!("/rest/clusters/{cluster_id}/credentials"), None, Some(report)).await;
    assert_eq!(put.0, 200, "{}", put.1);
}

/// Registers a cluster reporting `fake` as its apiserver; returns its client_credentials.
async fn register(admin: &Admin, user_token: &str, id: &str, fake: &FakeApiserver) -> serde_json::Value {
    let (cluster_id, _) = create_cluster(admin, user_token, id).await;
    report(admin, user_token, &cluster_id, &fake.url(), fake).await;
    let client = admin
        .call(Method::GET, &format!("/rest/clusters/{cluster_id}/client_credentials"), Some(user_token), None)
        .await;
    assert_eq!(client.0, 200, "{}", client.1);
    client.1
}

async fn gateway(options: FakeOptions) -> Gateway {
    let _ = proxy_binary();
    let dir = tempfile::tempdir().unwrap();
    let certs = CertPair::generate_for("bcs-gateway-ca", &["127.0.0.1", "localhost"]);
    std::fs::write(dir.path().join("gateway.crt"), format!("{}{}", certs.cert_pem, certs.ca_pem)).unwrap();
    std::fs::write(dir.path().join("gateway.key"), &certs.key_pem).unwrap();
    let ports: Vec<u16> = (0..4).map(|_| bcs_testkit::free_port()).collect();
    let (admin_port, insecure_port, tls_port, metric_port) = (ports[0], ports[1], ports[2], ports[3]);
    common::write_gateway_config(dir.path(), [admin_port, insecure_port, tls_port, metric_port], "", "", "");
    let admin = Admin::start_existing(dir.path(), admin_port, insecure_port, String::new()).await;

    let fake = FakeApiserver::start(options).await;
    fake.add_pod("default", "web-0");
    let user = admin.call(Method::POST, "/rest/users/", admin.admin(), Some(json!({"user_name": "dev"}))).await;
    let token = admin.call(Method::POST, &format!("/rest/users/{}/tokens", user.1["ID"]), admin.admin(), None).await;
    let user_token = token.1["Value"].as_str().unwrap().to_owned();
    let client = register(&admin, &user_token, "k8s-e2e", &fake).await;
    let server_address = client["server_address"].as_str().unwrap().to_owned();
    // The gateway's CA comes with the answer: a kubeconfig needs nothing else (the test's
    // kubectl trusts this one).
    let gateway_ca = client["server_cacert_data"].as_str().unwrap().to_owned();
    assert_eq!(gateway_ca.trim(), certs.ca_pem.trim());
    assert_ne!(client["cacert_data"], client["server_cacert_data"], "cacert_data stays the cluster's CA");
    assert_eq!(
        server_address,
        format!(
            "https://127.0.0.1:{tls_port}/tunnels/clusters/{}",
            client["server_address_path"]
                .as_str()
                .unwrap()
                .trim_start_matches("/tunnels/clusters/")
                .trim_end_matches('/')
        )
    );

    let gw = Gateway { dir, admin, fake, gateway_ca, server_address, user_token, tls_port, metric_port };
    gw.wait_serving().await;
    gw
}

impl Gateway {
    fn kubectl(&self, token: &str) -> Kubectl {
        Kubectl::new(&self.server_address, &self.gateway_ca, token)
    }

    /// Waits until the proxy is ready and serves the cluster (the snapshot has arrived).
    async fn wait_serving(&self) {
        let k = self.kubectl(&self.user_token);
        for _ in 0..100 {
            let out =
                k.run_with(&["version", "-o", "json", "--request-timeout=2s"], None, Duration::from_secs(5)).await;
            if out.status.success() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the proxy never served the cluster; bcs-api stderr:\n{}", self.admin.process.stderr());
    }

    /// Every request the fake received came with the cluster token, exactly one
    /// `Impersonate-User: plain.dev` (but the gateway's own reviews before an exec, which
    /// name the user in their body), and never the caller's token.
    fn assert_identity(&self) {
        let requests = self.fake.requests();
        assert!(!requests.is_empty());
        for r in &requests {
            assert_eq!(r.header_all("authorization"), vec![format!("Bearer {}", self.fake.token())], "{}", r.target());
            if r.path == bcs_testkit::apiserver::REVIEWS {
                let review: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                assert_eq!(review["spec"]["user"], "plain.dev");
                assert!(r.header_all("impersonate-user").is_empty());
                continue;
            }
            assert_eq!(r.header_all("impersonate-user"), vec!["plain.dev".to_owned()], "{}", r.target());
        }
        for c in self.fake.connections() {
            assert!(
                !String::from_utf8_lossy(&c.plaintext).contains(&self.user_token),
                "the caller's token reached the cluster"
            );
        }
    }
}

fn fake_options() -> FakeOptions {
    FakeOptions::with_token(CLUSTER_TOKEN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_version_get_create_delete_through_the_gateway() {
    let gw = gateway(fake_options()).await;
    let k = gw.kubectl(&gw.user_token);
    let version = k.ok(&["version", "-o", "json"]).await;
    assert!(version.contains("serverVersion"), "{version}");
    let pods = k.ok(&["get", "pods"]).await;
    assert!(pods.contains("web-0"), "{pods}");
    std::fs::write(
        k.dir.path().join("cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  a: \"1\"\n",
    )
    .unwrap();
    k.ok(&["create", "-f", "cm.yaml"]).await;
    assert!(k.ok(&["get", "configmap", "settings"]).await.contains("settings"));
    k.ok(&["delete", "pod", "web-0"]).await;
    assert!(gw.fake.get(bcs_testkit::apiserver::Kind::Pod, "default", "web-0").is_none());
    gw.assert_identity();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_watch_and_logs_follow_stream_through_the_gateway() {
    let gw = gateway(FakeOptions {
        log_lines: vec!["line one".into(), "line two".into()],
        log_interval: Duration::from_millis(200),
        ..fake_options()
    })
    .await;
    let k = gw.kubectl(&gw.user_token);
    let mut watch = k.spawn(&["get", "pods", "-w"]);
    watch.wait_line("web-0", T).await.unwrap();
    gw.fake.add_pod("default", "web-1");
    watch.wait_line("web-1", T).await.expect("the new pod's event arrives while the watch runs");
    assert!(watch.running());
    watch.kill().await;

    let mut logs = k.spawn(&["logs", "-f", "web-0"]);
    logs.wait_line("line one", T).await.unwrap();
    logs.wait_line("line two", T).await.unwrap();
    assert!(logs.running(), "logs -f keeps following");
    logs.kill().await;
    gw.assert_identity();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_and_cp_through_the_gateway() {
    let gw = gateway(fake_options()).await;
    let k = gw.kubectl(&gw.user_token);
    assert_eq!(k.ok(&["exec", "web-0", "--", "echo", "hi"]).await, "hi\n");
    let out = k.run_with(&["exec", "-i", "web-0", "--", "cat"], Some(b"stdin through the gateway\n"), T).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "stdin through the gateway\n");
    std::fs::write(k.dir.path().join("up.txt"), b"copied up\n").unwrap();
    k.ok(&["cp", "up.txt", "default/web-0:/tmp/up.txt"]).await;
    assert_eq!(gw.fake.file("default", "web-0", "/tmp/up.txt").as_deref(), Some(&b"copied up\n"[..]));
    gw.fake.put_file("default", "web-0", "/data/down.txt", b"copied down\n");
    k.ok(&["cp", "default/web-0:/data/down.txt", "down.txt"]).await;
    assert_eq!(std::fs::read(k.dir.path().join("down.txt")).unwrap(), b"copied down\n");
    gw.assert_identity();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_attach_through_the_gateway() {
    let gw = gateway(fake_options()).await;
    let k = gw.kubectl(&gw.user_token);
    // The fake's attached process: without stdin it prints one line; with stdin it is `cat`.
    assert_eq!(k.ok(&["attach", "web-0"]).await, "attached to web-0\n");
    let out = k.run_with(&["attach", "-i", "web-0"], Some(b"stdin to the attached process\n"), T).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "stdin to the attached process\n");
    let attaches = gw.fake.requests().iter().filter(|r| r.path.ends_with("/pods/web-0/attach")).count();
    assert_eq!(attaches, 2, "both went to the pod's attach subresource");
    gw.assert_identity();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_over_spdy_through_the_gateway() {
    let gw = gateway(FakeOptions { exec_websocket: false, ..fake_options() }).await;
    let k = gw.kubectl(&gw.user_token);
    assert_eq!(k.ok(&["exec", "web-0", "--", "echo", "over", "spdy"]).await, "over spdy\n");
    let upgrades: Vec<String> = gw.fake.requests().iter().filter_map(|r| r.header("upgrade")).collect();
    assert!(upgrades.iter().any(|u| u == "SPDY/3.1"), "{upgrades:?}");
}

async fn port_forward_round_trip(k: &Kubectl) {
    let port = bcs_testkit::free_port();
    let mut pf = k.spawn(&["port-forward", "--address", "127.0.0.1", "pod/web-0", &format!("{port}:8080")]);
    pf.wait_line("Forwarding from", T).await.unwrap();
    for round in 0..2 {
        let mut s =
            tokio::time::timeout(T, tokio::net::TcpStream::connect(("127.0.0.1", port))).await.unwrap().unwrap();
        let msg = format!("ping {round} through the gateway");
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(T, s.read_exact(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no echo; {}", pf.stderr()))
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&buf), msg);
    }
    // Bulk, then a small message: the tunnel's buffers grow with full reads and shrink back.
    let s = tokio::time::timeout(T, tokio::net::TcpStream::connect(("127.0.0.1", port))).await.unwrap().unwrap();
    let (mut read, mut write) = s.into_split();
    let bulk: Vec<u8> = (0..2u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let sent = bulk.clone();
    let writer = tokio::spawn(async move {
        write.write_all(&sent).await.unwrap();
        write.write_all(b"small after bulk").await.unwrap();
        write
    });
    let mut back = vec![0u8; bulk.len() + b"small after bulk".len()];
    tokio::time::timeout(T, read.read_exact(&mut back))
        .await
        .unwrap_or_else(|_| panic!("the bulk did not come back; {}", pf.stderr()))
        .unwrap();
    assert!(back[..bulk.len()] == bulk[..], "the bulk came back byte for byte");
    assert_eq!(&back[bulk.len()..], b"small after bulk");
    drop(writer.await.unwrap());
    pf.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_port_forward_through_the_gateway_websocket_and_spdy() {
    let gw = gateway(fake_options()).await;
    port_forward_round_trip(&gw.kubectl(&gw.user_token)).await;
    let gw = gateway(FakeOptions { portforward_websocket: false, ..fake_options() }).await;
    port_forward_round_trip(&gw.kubectl(&gw.user_token)).await;
    gw.assert_identity();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_super_user_is_not_impersonated_and_a_wrong_upstream_ca_never_gets_the_token() {
    let gw = gateway(fake_options()).await;
    let admin_token = gw.admin.admin_token.clone();
    gw.kubectl(&admin_token).ok(&["get", "pods"]).await;
    let last = gw.fake.requests().pop().unwrap();
    assert!(last.header_all("impersonate-user").is_empty(), "no impersonation for a super user");
    assert_eq!(last.header_all("authorization"), vec![format!("Bearer {CLUSTER_TOKEN}")]);

    // A second cluster whose apiserver presents a certificate from another CA.
    let evil =
        FakeApiserver::start(FakeOptions { wrong_ca: true, ..FakeOptions::with_token("evilClusterTokenNeverSent") })
            .await;
    let client = register(&gw.admin, &gw.user_token, "k8s-wrong-ca", &evil).await;
    let k = Kubectl::new(client["server_address"].as_str().unwrap(), &gw.gateway_ca, &gw.user_token);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = k.run(&["get", "pods", "--request-timeout=5s"]).await;
    assert!(!out.status.success());
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", gw.admin.insecure_port)).await.unwrap();
    let request = format!(
        "GET {}/api HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {}\r\n\r\n",
        client["server_address_path"].as_str().unwrap().trim_end_matches('/'),
        gw.user_token
    );
    raw.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(T, raw.read(&mut answer)).await.unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 502 "),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    for c in evil.connections() {
        assert!(!c.tls_established, "the handshake with the wrong CA failed");
        assert!(c.plaintext.is_empty(), "no request, hence no token, reached it");
    }
}

/// The pid of the proxy bcs-api started, from its log line.
fn proxy_pid(admin_stderr: &str) -> Option<u32> {
    admin_stderr
        .lines()
        .rev()
        .find(|l| l.contains("started bcs-api-proxy"))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("pid=")).and_then(|p| p.parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_serves_when_admin_dies_and_restarts_from_its_persisted_snapshot() {
    let mut gw = gateway(fake_options()).await;
    let proxy = proxy_pid(&gw.admin.process.stderr()).expect("bcs-api logged the proxy's pid");
    // SIGKILL bcs-api: no chance to stop its proxy.
    std::process::Command::new("kill").args(["-KILL", &gw.admin.process.pid().unwrap().to_string()]).status().unwrap();
    gw.admin.process.wait_exit(Duration::from_secs(10));
    let k = gw.kubectl(&gw.user_token);
    assert!(k.ok(&["get", "pods"]).await.contains("web-0"), "admin is gone; the proxy still serves");

    // Restart the proxy alone while admin is still down: it serves from its persisted snapshot.
    std::process::Command::new("kill").args(["-TERM", &proxy.to_string()]).status().unwrap();
    // Gone (or a zombie nobody has reaped yet): the new proxy must not share its ports
    // (SO_REUSEPORT) with the old one, which would answer for it.
    let gone = || {
        std::fs::read_to_string(format!("/proc/{proxy}/status"))
            .map_or(true, |status| status.lines().any(|l| l.starts_with("State:") && l.contains('Z')))
    };
    for _ in 0..100 {
        if gone() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone(), "the old proxy is still running 5 s after SIGTERM");
    let mut alone = Process::spawn(&proxy_binary(), &["--config=bcs-api.yaml"], gw.dir.path(), "proxy-alone");
    alone.wait_ready(&format!("http://127.0.0.1:{}/readyz", gw.metric_port), T).await;
    assert!(k.ok(&["get", "pods"]).await.contains("web-0"), "restarted without admin, from the persisted snapshot");
    assert!(alone.wait_stderr(&["serving the persisted snapshot"], Duration::from_secs(5)), "{}", alone.stderr());
    let _ = gw.tls_port;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_calls_work_on_the_proxy_port_and_a_revoked_token_is_refused_within_a_second() {
    let gw = gateway(fake_options()).await;
    // The seed's REST calls on the gateway port (here the plain listener of the proxy).
    let proxy_rest = format!("http://127.0.0.1:{}", gw.admin.insecure_port);
    let me = reqwest::Client::new()
        .get(format!("{proxy_rest}/rest/users/dev"))
        .bearer_auth(&gw.admin.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    let user: serde_json::Value = me.json().await.unwrap();

    let k = gw.kubectl(&gw.user_token);
    let mut watch = k.spawn(&["get", "pods", "-w"]);
    watch.wait_line("web-0", T).await.unwrap();
    let tokens =
        gw.admin.call(Method::GET, &format!("/rest/users/{}/tokens", user["ID"]), gw.admin.admin(), None).await;
    let token_id = tokens.1[0]["ID"].as_i64().unwrap();
    let revoked_at = std::time::Instant::now();
    let r = gw
        .admin
        .call(Method::DELETE, &format!("/rest/users/{}/tokens/{token_id}", user["ID"]), gw.admin.admin(), None)
        .await;
    assert_eq!(r.0, 200);
    // The next request is refused within 1 s (polled with raw requests: a kubectl run alone
    // takes a good part of a second).
    let path = gw.server_address.trim_start_matches(&format!("https://127.0.0.1:{}", gw.tls_port)).to_owned();
    let mut refused_after = None;
    while revoked_at.elapsed() < Duration::from_secs(2) {
        let r = reqwest::Client::new()
            .get(format!("{proxy_rest}{path}/api"))
            .bearer_auth(&gw.user_token)
            .send()
            .await
            .unwrap();
        if r.status() == 401 {
            refused_after = Some(revoked_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused_after = refused_after.expect("the revoked token is refused");
    println!("revoked token refused {refused_after:?} after the REST answer");
    assert!(refused_after < Duration::from_secs(1), "refused within 1 s: {refused_after:?}");
    let out = k.run(&["get", "pods"]).await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must be logged in"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The open watch is closed within 5 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while watch.running() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!watch.running(), "the revoked token's watch was closed");
    println!("revoked token refused and its watch closed {:?} after the REST call", revoked_at.elapsed());
}

/// kubectl's stderr for `get pods` through the gateway at `server`, once it holds `needle`
/// (the snapshot with a new cluster reaches the proxy within milliseconds), or after 5 s.
async fn kubectl_stderr(gw: &Gateway, server: &str, needle: &str) -> String {
    let k = Kubectl::new(server, &gw.gateway_ca, &gw.user_token);
    let mut stderr = String::new();
    for _ in 0..50 {
        let out = k.run_with(&["get", "pods", "--request-timeout=10s"], None, Duration::from_secs(30)).await;
        assert!(!out.status.success());
        stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if stderr.contains(needle) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_says_why_the_gateway_cannot_serve_a_cluster() {
    let gw = gateway(fake_options()).await;
    let base = format!("https://127.0.0.1:{}/tunnels/clusters", gw.tls_port);

    // A cluster whose agent has not reported: kubectl's discovery step alone would print
    // "the server is currently unable to handle the request".
    let (silent_id, identifier) = create_cluster(&gw.admin, &gw.user_token, "k8s-silent").await;
    let stderr = kubectl_stderr(&gw, &format!("{base}/{identifier}"), "has no credentials yet").await;
    assert!(
        stderr.contains(&format!(
            "Warning: bcs-api: cluster {silent_id} has no credentials yet: its agent has not reported"
        )),
        "{stderr}"
    );

    // A cluster whose apiserver address answers nothing: "an error on the server (\"unknown\")"
    // without the warning.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("https://127.0.0.1:{}", closed.local_addr().unwrap().port());
    drop(closed);
    let (cluster_id, identifier) = create_cluster(&gw.admin, &gw.user_token, "k8s-dead").await;
    report(&gw.admin, &gw.user_token, &cluster_id, &dead, &gw.fake).await;
    let stderr = kubectl_stderr(&gw, &format!("{base}/{identifier}"), "cannot reach the upstream").await;
    assert!(stderr.contains("Warning: bcs-api: cannot reach the upstream (the gateway's log says why)"), "{stderr}");
    // The token travels in no warning.
    assert!(!stderr.contains(&gw.user_token) && !stderr.contains(&gw.fake.token()), "{stderr}");
}

/// The kubectl releases a gateway's users run: every one the Cloud SDK installed (1.27 to 1.33),
/// else the one the other tests use. They differ on the wire: exec speaks SPDY up to 1.29 and
/// WebSocket first from 1.30, port-forward WebSocket first from 1.31; discovery moved to the
/// aggregated form.
fn installed_kubectls() -> Vec<(u32, std::path::PathBuf)> {
    use bcs_testkit::apiserver::kubectl::{kubectl_binary, kubectl_minor};
    let sdk: Vec<_> = (27..=40).filter_map(|minor| kubectl_minor(minor).map(|p| (minor, p))).collect();
    if !sdk.is_empty() {
        return sdk;
    }
    let binary = kubectl_binary();
    let out = std::process::Command::new(&binary).args(["version", "--client", "-o", "json"]).output().unwrap();
    let version: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let minor = version["clientVersion"]["minor"].as_str().unwrap().trim_end_matches('+').parse().unwrap();
    vec![(minor, binary)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_installed_kubectl_release_gets_watches_execs_and_port_forwards_through_the_gateway() {
    let releases = installed_kubectls();
    let gw = gateway(fake_options()).await;
    let mut protocols = Vec::new();
    for (minor, binary) in releases {
        let k = gw.kubectl(&gw.user_token).with_binary(binary);
        let version = k.ok(&["version", "-o", "json"]).await;
        assert!(version.contains(&format!("\"minor\": \"{minor}")), "1.{minor}: {version}");
        assert!(k.ok(&["get", "pods"]).await.contains("web-0"), "1.{minor}");
        let mut watch = k.spawn(&["get", "pods", "-w"]);
        watch.wait_line("web-0", T).await.unwrap_or_else(|e| panic!("1.{minor} watch: {e}"));
        watch.kill().await;
        let before = gw.fake.requests().len();
        assert_eq!(k.ok(&["exec", "web-0", "--", "echo", "hi"]).await, "hi\n", "1.{minor}");
        let upgrades: Vec<String> = gw.fake.requests()[before..].iter().filter_map(|r| r.header("upgrade")).collect();
        println!("kubectl 1.{minor}: exec upgraded with {upgrades:?}");
        // Each release's own protocol went through, first time: both tunnels are exercised.
        let expected = if minor < 30 { "SPDY/3.1" } else { "websocket" };
        assert_eq!(upgrades, [expected], "1.{minor}");
        protocols.push(expected);
        port_forward_round_trip(&k).await;
    }
    gw.assert_identity();
    println!("exec protocols seen: {protocols:?}");
}
