//! Harness for the admin's end-to-end tests: a real `bcs-api` process with its own config,
//! data directory and ports, and a small JSON client.
#![allow(dead_code)] // each test file uses a different part of the harness

use std::path::{Path, PathBuf};
use std::time::Duration;

use bcs_testkit::apiserver::{FakeApiserver, RbacKind};
use bcs_testkit::process::Process;
use reqwest::Method;
use serde_json::Value;

pub const CLUSTER_CA: &str = include_str!("../fixtures/cluster-ca.pem");

/// What a test may vary in the generated config.
pub struct Options {
    pub dsn: String,
    /// Extra YAML appended at the top level (whole sections).
    pub extra_yaml: String,
    /// `log_config` section body (indented by two spaces).
    pub log_config: String,
    /// `bootstrap_users` admin token: "" means generated and printed.
    pub admin_token: String,
    /// `admin_config.spawn_proxy` (false except in the supervision tests).
    pub spawn_proxy: bool,
    /// More of the `rbac` section (indented by two spaces), after `turn_on_rbac: true`.
    pub rbac_extra: String,
    /// More of the `admin_config` section (indented by two spaces).
    pub admin_extra: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dsn: String::new(),
            extra_yaml: String::new(),
            log_config: "  logtostderr: true\n  v: 0\n".into(),
            admin_token: String::new(),
            spawn_proxy: false,
            rbac_extra: String::new(),
            admin_extra: String::new(),
        }
    }
}

pub struct Admin {
    pub process: Process,
    pub dir: PathBuf,
    pub base: String,
    pub insecure_port: u16,
    /// The bootstrap super user's token.
    pub admin_token: String,
    client: reqwest::Client,
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bcs-api"))
}

/// Writes `<dir>/bcs-api.yaml` for `options` and returns its admin and insecure ports.
pub fn write_config(dir: &Path, options: &Options) -> (u16, u16) {
    let admin_port = bcs_testkit::free_port();
    let insecure_port = bcs_testkit::free_port();
    let yaml = format!(
        "service_config:\n  address: 127.0.0.1\n  port: 8443\n  insecure_address: 127.0.0.1\n  insecure_port: {insecure_port}\n\
         log_config:\n{log}\
         core_database:\n  dsn: {dsn:?}\n\
         bootstrap_users:\n  - name: admin\n    is_super_user: true\n    tokens: [{token:?}]\n\
         rbac:\n  turn_on_rbac: true\n{rbac_extra}\
         admin_config:\n  address: 127.0.0.1\n  port: {admin_port}\n  spawn_proxy: {spawn_proxy}\n{admin_extra}\
         storage:\n  data_dir: ./data\n{extra}",
        log = options.log_config,
        dsn = options.dsn,
        token = options.admin_token,
        spawn_proxy = options.spawn_proxy,
        rbac_extra = options.rbac_extra,
        admin_extra = options.admin_extra,
        extra = options.extra_yaml,
    );
    std::fs::write(dir.join("bcs-api.yaml"), yaml).unwrap();
    (admin_port, insecure_port)
}

/// Writes the config of a whole gateway into `dir/bcs-api.yaml`: TLS from `./gateway.crt` and
/// `./gateway.key`, bcs-api spawning its proxy (one core), RBAC impersonation on. `ports` are
/// admin, plain, TLS and metrics; `rbac_extra` goes into the `rbac` section, `cert_extra` into
/// `cert_config`, `extra` at the end.
pub fn write_gateway_config(dir: &Path, ports: [u16; 4], rbac_extra: &str, cert_extra: &str, extra: &str) {
    let [admin_port, insecure_port, tls_port, metric_port] = ports;
    let yaml = format!(
        "service_config:\n  address: 127.0.0.1\n  port: {tls_port}\n  insecure_address: 127.0.0.1\n  insecure_port: {insecure_port}\n\
         metric_config:\n  metric_port: {metric_port}\nlocal_config:\n  local_ip: 127.0.0.1\n\
         cert_config:\n  server_cert_file: ./gateway.crt\n  server_key_file: ./gateway.key\n{cert_extra}\
         log_config:\n  logtostderr: true\n  v: 1\n\
         bootstrap_users:\n  - name: admin\n    is_super_user: true\n    tokens: [\"\"]\n\
         rbac:\n  turn_on_rbac: true\n{rbac_extra}\
         admin_config:\n  address: 127.0.0.1\n  port: {admin_port}\n  snapshot_socket: ./run/bcs-api.sock\n  spawn_proxy: true\n\
         proxy_config:\n  cores: 1\nstorage:\n  data_dir: ./data\n{extra}"
    );
    std::fs::write(dir.join("bcs-api.yaml"), yaml).unwrap();
}

impl Admin {
    /// Writes a config into `dir` and starts bcs-api there; waits for /healthz.
    pub async fn start(dir: &Path, options: &Options) -> Admin {
        let (admin_port, insecure_port) = write_config(dir, options);
        Admin::start_existing(dir, admin_port, insecure_port, options.admin_token.clone()).await
    }

    /// Starts bcs-api on the config already in `dir`.
    pub async fn start_existing(dir: &Path, admin_port: u16, insecure_port: u16, admin_token: String) -> Admin {
        let mut process = Process::spawn(&binary(), &["--config=bcs-api.yaml"], dir, "bcs-api");
        let base = format!("http://127.0.0.1:{admin_port}");
        process.wait_ready(&format!("{base}/healthz"), Duration::from_secs(30)).await;
        let admin_token =
            if admin_token.is_empty() { printed_token(&process.stdout()).unwrap_or_default() } else { admin_token };
        Admin { process, dir: dir.to_owned(), base, insecure_port, admin_token, client: reqwest::Client::new() }
    }

    /// Stops this process and starts a new one on the same config and data.
    pub async fn restart(mut self) -> Admin {
        self.process.stop();
        let port: u16 = self.base.rsplit(':').next().unwrap().parse().unwrap();
        let (dir, insecure, token) = (self.dir.clone(), self.insecure_port, self.admin_token.clone());
        drop(self);
        Admin::start_existing(&dir, port, insecure, token).await
    }

    /// Sends a request; `body` is sent as JSON. Returns the status and the JSON answer
    /// (`Value::Null` when the answer is not JSON).
    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        answer(request).await
    }

    /// Sends raw bytes with the given content type.
    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let mut request =
            self.client.request(method, format!("{}{path}", self.base)).header("content-type", content_type).body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        answer(request).await
    }

    pub fn admin(&self) -> Option<&str> {
        Some(self.admin_token.as_str())
    }
}

async fn answer(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.timeout(Duration::from_secs(20)).send().await.expect("request sent");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The token bcs-api printed for the bootstrap user on first start.
pub fn printed_token(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .find_map(|l| l.split("has the token ").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap_or("").to_owned())
}

/// Asserts an error answer: status, code_name and a message containing `needle`.
#[track_caller]
pub fn assert_error(answer: &(u16, Value), status: u16, code_name: &str, needle: &str) {
    let (got, body) = answer;
    assert_eq!(*got, status, "status of {body}");
    assert_eq!(body["code_name"], code_name, "code_name of {body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "message {message:?} should contain {needle:?}");
}

/// Everything the seed flow created, for later assertions.
pub struct Seeded {
    pub user_id: i64,
    pub user_token: String,
    pub cluster_id: String,
    pub identifier: String,
    pub register_token: String,
    pub cluster_token: String,
}

/// The original's documented flow: user, user id, user token, bcs cluster, register token,
/// credentials report, client credentials. Asserts every answer on the way.
pub async fn seed_flow(admin: &Admin, user_name: &str, cluster_token: &str) -> Seeded {
    let created = admin
        .call(Method::POST, "/rest/users/", admin.admin(), Some(serde_json::json!({"user_name": user_name})))
        .await;
    assert_eq!(created.0, 200, "{}", created.1);
    assert_eq!(created.1["Name"], format!("plain:{user_name}"));
    assert_eq!(created.1["IsSuperUser"], false);

    let fetched = admin.call(Method::GET, &format!("/rest/users/{user_name}"), admin.admin(), None).await;
    assert_eq!(fetched.0, 200, "{}", fetched.1);
    let user_id = fetched.1["ID"].as_i64().unwrap();
    assert_eq!(user_id, created.1["ID"].as_i64().unwrap());

    let token = admin.call(Method::POST, &format!("/rest/users/{user_id}/tokens"), admin.admin(), None).await;
    assert_eq!(token.0, 200, "{}", token.1);
    assert_eq!(token.1["UserId"], user_id);
    assert_eq!(token.1["Type"], 3);
    let user_token = token.1["Value"].as_str().unwrap().to_owned();
    assert_eq!(user_token.len(), 32);
    assert!(user_token.chars().all(|c| c.is_ascii_alphanumeric()));

    let cluster = admin
        .call(
            Method::POST,
            "/rest/clusters/bcs",
            Some(&user_token),
            Some(serde_json::json!({"id": "K8S-001", "project_id": "demo"})),
        )
        .await;
    assert_eq!(cluster.0, 200, "{}", cluster.1);
    let cluster_id = cluster.1["id"].as_str().unwrap().to_owned();
    let identifier = cluster.1["identifier"].as_str().unwrap().to_owned();
    assert!(cluster_id.starts_with("bcs-k8s-001-") && cluster_id.len() == "bcs-k8s-001-".len() + 8, "{cluster_id}");
    assert!(identifier.starts_with(&format!("{}-", cluster_id.to_lowercase())), "{identifier}");
    assert_eq!(cluster.1["provider"], 2);
    assert_eq!(cluster.1["creator_id"], user_id);

    let path = format!("/rest/clusters/{cluster_id}/register_tokens");
    let created = admin.call(Method::POST, &path, Some(&user_token), None).await;
    assert_eq!(created.0, 200, "{}", created.1);
    let register_token = created.1[0]["token"].as_str().unwrap().to_owned();
    assert_eq!(register_token.len(), 128);
    let read = admin.call(Method::GET, &path, Some(&user_token), None).await;
    assert_eq!(read.0, 200, "{}", read.1);
    assert_eq!(read.1[0]["token"], register_token.as_str());
    assert_eq!(read.1[0]["cluster_id"], cluster_id.as_str());

    let report = serde_json::json!({
        "register_token": register_token,
        "server_addresses": "https://127.0.0.1:6443;https://127.0.0.2:6443",
        "cacert_data": CLUSTER_CA,
        "user_token": cluster_token,
    });
    let put = admin.call(Method::PUT, &format!("/rest/clusters/{cluster_id}/credentials"), None, Some(report)).await;
    assert_eq!(put, (200, serde_json::json!({})));

    let client = admin
        .call(Method::GET, &format!("/rest/clusters/{cluster_id}/client_credentials"), Some(&user_token), None)
        .await;
    assert_eq!(client.0, 200, "{}", client.1);
    assert_eq!(client.1["cluster_id"], cluster_id.as_str());
    assert_eq!(client.1["server_address_path"], format!("/tunnels/clusters/{identifier}/"));
    assert_eq!(
        client.1["server_address"],
        format!("http://127.0.0.1:{}/tunnels/clusters/{identifier}", admin.insecure_port)
    );
    assert_eq!(client.1["user_token"], user_token.as_str());
    assert_eq!(client.1["cacert_data"], CLUSTER_CA);

    Seeded { user_id, user_token, cluster_id, identifier, register_token, cluster_token: cluster_token.to_owned() }
}

/// The bindings of this kind in `fake` that bcs-api owns (its `managed-by` label).
pub fn owned_bindings(fake: &FakeApiserver, kind: RbacKind) -> Vec<Value> {
    fake.rbac_list(kind)
        .into_iter()
        .filter(|b| b["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "bcs-api")
        .collect()
}

/// bcs-api's binding of `cluster_role` to `subject` in `fake`, if there is one.
pub fn binding_for(fake: &FakeApiserver, kind: RbacKind, subject: &str, cluster_role: &str) -> Option<Value> {
    owned_bindings(fake, kind)
        .into_iter()
        .find(|b| b["subjects"][0]["name"] == subject && b["roleRef"]["name"] == cluster_role)
}
