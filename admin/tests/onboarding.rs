//! One-step cluster onboarding, end to end: `bcs-api` (with `bcs-api-proxy`, TLS), a cluster
//! and its register token created through the proxy's TLS port, the agent manifest rendered by
//! `GET .../agent.yaml`, the real `bcs-kube-agent` run with the manifest's flags and secret and
//! `--kubeconfig` pointing at the test kit's fake apiserver (which serves Endpoints
//! `default/kubernetes` pointing at itself). Then: credentials stored within one period,
//! kubectl through the gateway, a service-account token rotation and a register token rotation
//! picked up with no restart, and an agent with a wrong register token that keeps retrying, is
//! not ready, and never logs it.
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bcs_testkit::apiserver::kubectl::Kubectl;
use bcs_testkit::apiserver::{CertPair, FakeApiserver, FakeOptions, RbacKind};
use bcs_testkit::process::Process;
use common::Admin;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);
/// The agents' `--periodsync`.
const PERIOD: Duration = Duration::from_secs(3);
const FIRST_SA_TOKEN: &str = "saTokenBeforeRotation0001";
const SECOND_SA_TOKEN: &str = "saTokenAfterRotation0002";
const THIRD_SA_TOKEN: &str = "saTokenAfterRegisterRotation0003";

fn sibling(name: &str) -> PathBuf {
    let path = common::binary().with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p bcs-proxy -p bcs-agent` (cargo test --workspace does)",
        path.display()
    );
    path
}

/// The gateway over TLS: what a user (and the agent) reach.
struct Tls {
    base: url::Url,
    config: Arc<rustls::ClientConfig>,
}

impl Tls {
    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, String) {
        let mut headers = vec![("content-type", "application/json".to_owned())];
        if let Some(t) = token {
            headers.push(("authorization", format!("Bearer {t}")));
        }
        let url = self.base.join(path).unwrap();
        let answer = bcs_agent::http::request(
            method.parse().unwrap(),
            &url,
            &headers,
            body.map(|b| b.to_string().into_bytes()),
            Some(self.config.clone()),
            Duration::from_secs(20),
        )
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        (answer.status, String::from_utf8_lossy(&answer.body).into_owned())
    }

    async fn json(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Value {
        let (status, text) = self.call(method, path, token, body).await;
        assert_eq!(status, 200, "{method} {path}: {text}");
        serde_json::from_str(&text).unwrap()
    }
}

/// What the rendered manifest says the agent runs with.
struct Rendered {
    bke_address: String,
    cluster_id: String,
    register_token: String,
    server_cert: String,
}

fn parse_manifest(text: &str) -> Rendered {
    let docs: Vec<serde_yaml_ng::Value> = serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).expect("the rendered manifest is YAML"))
        .collect();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["ServiceAccount", "Secret", "ClusterRoleBinding", "Secret", "Deployment"]);
    let secret = docs.iter().find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == "bke-info").unwrap();
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let args: Vec<&str> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let flag = |name: &str| args.iter().find_map(|a| a.strip_prefix(&format!("--{name}="))).unwrap().to_owned();
    Rendered {
        bke_address: flag("bke-address"),
        cluster_id: flag("cluster-id"),
        register_token: secret["stringData"]["token"].as_str().unwrap().to_owned(),
        server_cert: secret["stringData"]["bke-cert"].as_str().unwrap().to_owned(),
    }
}

/// A kubeconfig for the agent: the fake's address and CA, its token in a file (rotatable).
fn agent_kubeconfig(dir: &Path, fake: &FakeApiserver) -> PathBuf {
    use base64::Engine;
    std::fs::write(dir.join("sa-token"), fake.token()).unwrap();
    let ca = base64::engine::general_purpose::STANDARD.encode(fake.ca_pem());
    let path = dir.join("agent.kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: c\n  cluster:\n    server: {}\n    \
             certificate-authority-data: {ca}\nusers:\n- name: agent\n  user:\n    tokenFile: sa-token\n\
             contexts:\n- name: c\n  context:\n    cluster: c\n    user: agent\n",
            fake.url()
        ),
    )
    .unwrap();
    path
}

/// The agent, its register token in `<name>-register-token` as the manifest mounts it.
fn spawn_agent(dir: &Path, name: &str, m: &Rendered, register_token: &str, kubeconfig: &Path) -> (Process, u16) {
    let metrics_port = bcs_testkit::free_port();
    let token_file = dir.join(format!("{name}-register-token"));
    std::fs::write(&token_file, format!("{register_token}\n")).unwrap();
    let args = [
        format!("--bke-address={}", m.bke_address),
        format!("--cluster-id={}", m.cluster_id),
        format!("--periodsync={}", PERIOD.as_secs()),
        format!("--listen-addr=127.0.0.1:{metrics_port}"),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--register-token-file={}", token_file.display()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = [("SERVER_CERT", m.server_cert.as_str()), ("BCS_LOG", "debug")];
    (Process::spawn_env(&sibling("bcs-kube-agent"), &args, &env, dir, name), metrics_port)
}

async fn metrics(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.unwrap().text().await.unwrap()
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Polls `check` every 50 ms until it is true; panics with `what` after `timeout`.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> F,
) -> Duration {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < timeout, "{what}: not after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_onboarded_with_the_rendered_manifest_is_reachable_and_follows_token_rotation() {
    let _ = sibling("bcs-api-proxy");
    let _ = sibling("bcs-kube-agent");
    let dir = tempfile::tempdir().unwrap();
    let certs = CertPair::generate_for("bcs-gateway-ca", &["127.0.0.1", "localhost"]);
    std::fs::write(dir.path().join("gateway.crt"), format!("{}{}", certs.cert_pem, certs.ca_pem)).unwrap();
    std::fs::write(dir.path().join("gateway.key"), &certs.key_pem).unwrap();
    let ports = [0; 4].map(|_| bcs_testkit::free_port());
    common::write_gateway_config(dir.path(), ports, "", "", "");
    let admin = Admin::start_existing(dir.path(), ports[0], ports[1], String::new()).await;
    let tls = Tls {
        base: url::Url::parse(&format!("https://127.0.0.1:{}/", ports[2])).unwrap(),
        config: bcs_agent::http::tls_trusting(&certs.ca_pem).unwrap(),
    };
    let fake = FakeApiserver::start(FakeOptions::with_token(FIRST_SA_TOKEN)).await;
    fake.add_pod("default", "web-0");
    // What RBAC sync would create: `plain.ops` may read pods (the fake enforces RBAC for
    // impersonated users).
    fake.rbac_create(
        RbacKind::ClusterRole,
        "",
        json!({"metadata": {"name": "pod-reader"},
               "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]}),
    );
    fake.rbac_create(
        RbacKind::ClusterRoleBinding,
        "",
        json!({"metadata": {"name": "ops-pod-reader"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "pod-reader"},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "plain.ops"}]}),
    );

    // The seed's steps, through the proxy's TLS port.
    eventually("the proxy's TLS port serves /rest", T, || async {
        bcs_agent::http::request(
            "GET".parse().unwrap(),
            &tls.base.join("/rest/users/admin").unwrap(),
            &[("authorization", format!("Bearer {}", admin.admin_token))],
            None,
            Some(tls.config.clone()),
            Duration::from_secs(2),
        )
        .await
        .is_ok_and(|a| a.status == 200)
    })
    .await;
    let a = Some(admin.admin_token.as_str());
    let user = tls.json("POST", "/rest/users/", a, Some(json!({"user_name": "ops"}))).await;
    let token = tls.json("POST", &format!("/rest/users/{}/tokens", user["ID"]), a, None).await;
    let user_token = token["Value"].as_str().unwrap().to_owned();
    let u = Some(user_token.as_str());
    let cluster =
        tls.json("POST", "/rest/clusters/bcs", u, Some(json!({"id": "k8s-onboard", "project_id": "e2e"}))).await;
    let cluster_id = cluster["id"].as_str().unwrap().to_owned();
    let created = tls.json("POST", &format!("/rest/clusters/{cluster_id}/register_tokens"), u, None).await;
    let register_token = created[0]["token"].as_str().unwrap().to_owned();

    // The manifest, for the creator (and super users) only.
    let manifest_path = format!("/rest/clusters/{cluster_id}/agent.yaml");
    let (status, manifest) = tls.call("GET", &manifest_path, u, None).await;
    assert_eq!(status, 200, "{manifest}");
    let stranger = tls.json("POST", "/rest/users/", a, Some(json!({"user_name": "stranger"}))).await;
    let stranger = tls.json("POST", &format!("/rest/users/{}/tokens", stranger["ID"]), a, None).await;
    assert_eq!(tls.call("GET", &manifest_path, stranger["Value"].as_str(), None).await.0, 403);
    assert_eq!(tls.call("GET", &manifest_path, a, None).await.0, 200);
    let rendered = parse_manifest(&manifest);
    assert_eq!(rendered.bke_address, format!("https://127.0.0.1:{}", ports[2]));
    assert_eq!(rendered.cluster_id, cluster_id);
    assert_eq!(rendered.register_token, register_token);
    assert_eq!(rendered.server_cert.trim(), certs.ca_pem.trim(), "the gateway's CA, the chain's last certificate");

    // The agent, with the manifest's flags and secret, out of cluster with a kubeconfig.
    let kubeconfig = agent_kubeconfig(dir.path(), &fake);
    let started = Instant::now();
    let (agent, agent_metrics) = spawn_agent(dir.path(), "agent", &rendered, &rendered.register_token, &kubeconfig);
    let credentials_path = format!("/rest/clusters/{cluster_id}/credentials");
    let stored = || async {
        let (status, text) = tls.call("GET", &credentials_path, a, None).await;
        (status == 200).then(|| serde_json::from_str::<Value>(&text).unwrap())
    };
    eventually("credentials stored", T, || async { stored().await.is_some() }).await;
    let first_report = started.elapsed();
    println!("credentials stored {first_report:?} after the agent started");
    assert!(first_report < PERIOD, "stored within one period: {first_report:?}\n{}", agent.stderr());
    let credentials = stored().await.unwrap();
    assert_eq!(credentials["ServerAddresses"], fake.url(), "Endpoints default/kubernetes, probed");
    assert_eq!(credentials["CaCertData"], fake.ca_pem());
    assert_eq!(credentials["UserToken"], FIRST_SA_TOKEN);
    assert_eq!(credentials["Version"], 1);

    // kubectl through the gateway, with the user's token.
    let client = tls.json("GET", &format!("/rest/clusters/{cluster_id}/client_credentials"), u, None).await;
    let k = Kubectl::new(client["server_address"].as_str().unwrap(), &certs.ca_pem, &user_token);
    let kubectl_works = || async {
        k.run_with(&["get", "pods", "--request-timeout=3s"], None, Duration::from_secs(10)).await.status.success()
    };
    if tokio::time::timeout(T, async {
        while !kubectl_works().await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .is_err()
    {
        let out = k.run(&["get", "pods", "-v=6"]).await;
        panic!("kubectl never worked: {}\nbcs-api:\n{}", String::from_utf8_lossy(&out.stderr), admin.process.stderr());
    }
    assert!(k.ok(&["get", "pods"]).await.contains("web-0"));
    let last = fake.requests().pop().unwrap();
    assert_eq!(last.header_all("authorization"), vec![format!("Bearer {FIRST_SA_TOKEN}")]);
    assert_eq!(last.header_all("impersonate-user"), vec!["plain.ops".to_owned()]);

    // The service-account token rotates: the fake accepts only the new one, the token file
    // changes. The agent reports it, the version goes up, the proxy follows, and kubectl works
    // again, with no restart of anything.
    let proxy_pid =
        admin.process.stderr().lines().rev().find(|l| l.contains("started bcs-api-proxy")).map(str::to_owned);
    fake.set_token(SECOND_SA_TOKEN);
    std::fs::write(dir.path().join("sa-token"), SECOND_SA_TOKEN).unwrap();
    let rotated_at = Instant::now();
    eventually("the rotated token reported", PERIOD * 2 + Duration::from_secs(5), || async {
        stored().await.is_some_and(|c| c["UserToken"] == SECOND_SA_TOKEN)
    })
    .await;
    assert_eq!(stored().await.unwrap()["Version"], 2, "a changed token bumps the credential version");
    let recovered = eventually("kubectl after the rotation", T, kubectl_works).await;
    println!("kubectl works again {:?} after the rotation", rotated_at.elapsed());
    let _ = recovered;
    let last = fake.requests().pop().unwrap();
    assert_eq!(last.header_all("authorization"), vec![format!("Bearer {SECOND_SA_TOKEN}")]);
    assert!(agent.pid().is_some() && std::path::Path::new(&format!("/proc/{}", agent.pid().unwrap())).exists());
    let proxy_pid_now =
        admin.process.stderr().lines().rev().find(|l| l.contains("started bcs-api-proxy")).map(str::to_owned);
    assert_eq!(proxy_pid, proxy_pid_now, "the proxy was not restarted");
    eventually("the agent counted two accepted reports", T, || async {
        metric(&metrics(agent_metrics).await, "bcs_kube_agent_reports_sent_total") >= 2.0
    })
    .await;

    // The register token is rotated: the agent's reports are refused (and it is not ready)
    // until the mounted Secret's file holds the new one, then accepted, with no restart.
    let rotated = tls.json("POST", &format!("/rest/clusters/{cluster_id}/register_tokens/rotate"), u, None).await;
    let new_register_token = rotated[0]["token"].as_str().unwrap().to_owned();
    fake.set_token(THIRD_SA_TOKEN);
    std::fs::write(dir.path().join("sa-token"), THIRD_SA_TOKEN).unwrap();
    let readyz = format!("http://127.0.0.1:{agent_metrics}/readyz");
    eventually("the old register token refused, the agent not ready", PERIOD * 2 + Duration::from_secs(10), || async {
        reqwest::get(&readyz).await.is_ok_and(|r| r.status() == 503)
    })
    .await;
    assert_eq!(stored().await.unwrap()["UserToken"], SECOND_SA_TOKEN, "nothing stored with the old register token");
    std::fs::write(dir.path().join("agent-register-token"), format!("{new_register_token}\n")).unwrap();
    eventually("reported with the new register token", PERIOD * 2 + Duration::from_secs(10), || async {
        stored().await.is_some_and(|c| c["UserToken"] == THIRD_SA_TOKEN)
    })
    .await;
    eventually("ready again", T, || async { reqwest::get(&readyz).await.is_ok_and(|r| r.status() == 200) }).await;

    // An agent with a wrong register token: refused (401) at every period, keeps running, and
    // never logs the token. Stored credentials do not change.
    let wrong = "wrongRegisterToken".repeat(7);
    let (bad, bad_metrics) = spawn_agent(dir.path(), "bad-agent", &rendered, &wrong, &kubeconfig);
    eventually("two refused reports", PERIOD * 2 + Duration::from_secs(10), || async {
        reqwest::get(format!("http://127.0.0.1:{bad_metrics}/metrics")).await.is_ok()
            && metric(&metrics(bad_metrics).await, "bcs_kube_agent_reports_failed_total{reason=\"rejected\"}") >= 2.0
    })
    .await;
    assert!(bad.pid().is_some_and(|p| Path::new(&format!("/proc/{p}")).exists()), "still running");
    let bad_logs = bad.stderr();
    assert!(bad_logs.contains("UNAUTHORIZED") && bad_logs.contains("refused the report"), "{bad_logs}");
    assert_eq!(stored().await.unwrap()["Version"], 3);
    let not_ready = reqwest::get(format!("http://127.0.0.1:{bad_metrics}/readyz")).await.unwrap();
    assert_eq!(not_ready.status(), 503, "an agent whose reports are refused is not ready");

    for mut p in [bad, agent] {
        let pid = p.pid().unwrap();
        std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
        assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0), "SIGTERM stops the agent cleanly");
    }
    let mut logs = String::new();
    for file in
        ["agent.stderr", "agent.stdout", "bad-agent.stderr", "bad-agent.stdout", "bcs-api.stderr", "bcs-api.stdout"]
    {
        logs.push_str(&std::fs::read_to_string(dir.path().join(file)).unwrap_or_default());
    }
    for secret in
        [wrong.as_str(), register_token.as_str(), &new_register_token, FIRST_SA_TOKEN, SECOND_SA_TOKEN, THIRD_SA_TOKEN]
    {
        assert!(!logs.contains(secret), "a token was logged");
    }
}
