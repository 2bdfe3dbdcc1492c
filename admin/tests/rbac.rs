//! RBAC sync end to end (issue 7): `bcs-api` (with its `bcs-api-proxy`) in front of fake
//! apiservers that enforce RBAC for impersonated users, the real kubectl as a normal user, and
//! grants from the three sources: the config file, the REST API and the permission
//! subscription (the test kit's fake permission service).
mod common;

use std::time::{Duration, Instant};

use bcs_testkit::apiserver::kubectl::Kubectl;
use bcs_testkit::apiserver::{FakeApiserver, FakeOptions, Fault, RbacKind};
use bcs_testkit::permission_service::{Grant, PermissionService};
use common::{binding_for, owned_bindings, Admin};
use reqwest::Method;
use serde_json::{json, Value};

/// Bound for "within one reconcile" when the reconcile runs on change.
const ON_CHANGE: Duration = Duration::from_secs(15);
const APP_CODE: &str = "bcs-api-e2e";
const APP_SECRET: &str = "subscriptionSecret42";

struct Gateway {
    _dir: tempfile::TempDir,
    admin: Admin,
    gateway_ca: String,
    user_token: String,
}

/// Starts bcs-api (and its proxy) with this `rbac` section body and extra sections, and
/// creates the normal user `dev` (`plain:dev`, `Impersonate-User: plain.dev`) with a token.
async fn gateway(rbac: &str, extra: &str) -> Gateway {
    gateway_trusting(rbac, extra, None).await
}

/// [`gateway`], with `cert_config.ca_file` holding `ca_pem` when given.
async fn gateway_trusting(rbac: &str, extra: &str, ca_pem: Option<&str>) -> Gateway {
    let proxy = common::binary().with_file_name("bcs-api-proxy");
    assert!(proxy.exists(), "{} is missing: build it with `cargo build -p bcs-proxy`", proxy.display());
    let dir = tempfile::tempdir().unwrap();
    let certs = bcs_testkit::apiserver::CertPair::generate_for("bcs-gateway-ca", &["127.0.0.1", "localhost"]);
    std::fs::write(dir.path().join("gateway.crt"), format!("{}{}", certs.cert_pem, certs.ca_pem)).unwrap();
    std::fs::write(dir.path().join("gateway.key"), &certs.key_pem).unwrap();
    let ports: Vec<u16> = (0..4).map(|_| bcs_testkit::free_port()).collect();
    let cert_extra = match ca_pem {
        Some(pem) => {
            std::fs::write(dir.path().join("ca.pem"), pem).unwrap();
            "  ca_file: ./ca.pem\n"
        }
        None => "",
    };
    common::write_gateway_config(dir.path(), [ports[0], ports[1], ports[2], ports[3]], rbac, cert_extra, extra);
    let admin = Admin::start_existing(dir.path(), ports[0], ports[1], String::new()).await;
    let user = admin.call(Method::POST, "/rest/users/", admin.admin(), Some(json!({"user_name": "dev"}))).await;
    assert_eq!(user.0, 200, "{}", user.1);
    let token = admin.call(Method::POST, &format!("/rest/users/{}/tokens", user.1["ID"]), admin.admin(), None).await;
    let user_token = token.1["Value"].as_str().unwrap().to_owned();
    Gateway { _dir: dir, admin, gateway_ca: certs.ca_pem, user_token }
}

/// A registered cluster: its bcs-api id and the kubeconfig server URL.
struct Registered {
    id: String,
    server: String,
}

impl Gateway {
    /// Registers a cluster (`bcs` with this project, or plain) whose apiserver is at `url`
    /// with this CA and token, as the agent would report it.
    async fn register(&self, id: &str, bcs_project: Option<&str>, url: &str, ca: &str, token: &str) -> Registered {
        let a = &self.admin;
        let cluster = match bcs_project {
            Some(project) => {
                a.call(Method::POST, "/rest/clusters/bcs", a.admin(), Some(json!({"id": id, "project_id": project})))
                    .await
            }
            None => a.call(Method::POST, "/rest/clusters", a.admin(), Some(json!({"id": id}))).await,
        };
        assert_eq!(cluster.0, 200, "{}", cluster.1);
        let cluster_id = cluster.1["id"].as_str().unwrap().to_owned();
        let rt = a.call(Method::POST, &format!("/rest/clusters/{cluster_id}/register_tokens"), a.admin(), None).await;
        assert_eq!(rt.0, 200, "{}", rt.1);
        let report = json!({"register_token": rt.1[0]["token"], "server_addresses": url, "cacert_data": ca, "user_token": token});
        let put = a.call(Method::PUT, &format!("/rest/clusters/{cluster_id}/credentials"), None, Some(report)).await;
        assert_eq!(put.0, 200, "{}", put.1);
        let client = a
            .call(Method::GET, &format!("/rest/clusters/{cluster_id}/client_credentials"), Some(&self.user_token), None)
            .await;
        assert_eq!(client.0, 200, "{}", client.1);
        Registered { id: cluster_id, server: client.1["server_address"].as_str().unwrap().to_owned() }
    }

    async fn register_fake(&self, id: &str, bcs_project: Option<&str>, fake: &FakeApiserver) -> Registered {
        self.register(id, bcs_project, &fake.url(), &fake.ca_pem(), &fake.token()).await
    }

    fn kubectl(&self, cluster: &Registered) -> Kubectl {
        Kubectl::new(&cluster.server, &self.gateway_ca, &self.user_token)
    }

    fn stderr(&self) -> String {
        self.admin.process.stderr()
    }

    /// Polls `check` every 100 ms until it is true; fails with `what` and bcs-api's log after
    /// `within`.
    async fn until<F: std::future::Future<Output = bool>>(
        &self,
        what: &str,
        within: Duration,
        mut check: impl FnMut() -> F,
    ) {
        let deadline = Instant::now() + within;
        while !check().await {
            assert!(Instant::now() < deadline, "{what}: {}", self.stderr());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `bcs_api_rbac_reconciles_total` of a cluster and result (`ok`, `error`) on /metrics.
    async fn reconciles(&self, cluster_id: &str, result: &str) -> u64 {
        let text = reqwest::get(format!("{}/metrics", self.admin.base)).await.unwrap().text().await.unwrap();
        let line = format!("bcs_api_rbac_reconciles_total{{cluster=\"{cluster_id}\",result=\"{result}\"}}");
        text.lines().find(|l| l.starts_with(&line)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0)
    }

    /// Grants `dev` `role` in `cluster_id` (or `*`) through the REST API, as the super user.
    async fn grant_dev(&self, cluster_id: &str, role: &str) {
        let body = json!({"user_name": "dev", "cluster_id": cluster_id, "role": role});
        let added = self.admin.call(Method::POST, "/rest/rbac/grants", self.admin.admin(), Some(body)).await;
        assert_eq!(added.0, 200, "{}", added.1);
    }

    async fn rbac_status(&self) -> Value {
        let status = self.admin.call(Method::GET, "/rest/rbac/status", self.admin.admin(), None).await;
        assert_eq!(status.0, 200, "{}", status.1);
        status.1
    }

    async fn cluster_status(&self, cluster_id: &str) -> Value {
        let status = self.rbac_status().await;
        status["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["cluster_id"] == cluster_id)
            .cloned()
            .unwrap_or(Value::Null)
    }
}

/// Runs `kubectl get pods` until it succeeds (`want_ok`) or is refused as Forbidden, within
/// `within`; returns how long that took.
async fn until_get_pods(gw: &Gateway, k: &Kubectl, want_ok: bool, within: Duration) -> Duration {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < within {
        let out = k.run(&["get", "pods", "--request-timeout=5s"]).await;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if want_ok && out.status.success() {
            return started.elapsed();
        }
        if !want_ok && !out.status.success() && stderr.contains("Forbidden") {
            assert!(stderr.contains("User \"plain.dev\" cannot list resource \"pods\""), "{stderr}");
            return started.elapsed();
        }
        last = format!("status {:?}: {stderr}{}", out.status.code(), String::from_utf8_lossy(&out.stdout));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "kubectl get pods was not {} within {within:?}; last: {last}\nbcs-api stderr:\n{}",
        if want_ok { "allowed" } else { "forbidden" },
        gw.stderr()
    );
}

/// Waits until the proxy serves the cluster (the snapshot has arrived): discovery is open to
/// every authenticated user.
async fn wait_serving(gw: &Gateway, k: &Kubectl) {
    for _ in 0..100 {
        let out = k.run_with(&["version", "-o", "json", "--request-timeout=2s"], None, Duration::from_secs(5)).await;
        if out.status.success() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the proxy never served the cluster; bcs-api stderr:\n{}", gw.stderr());
}

async fn create_configmap_is_forbidden(k: &Kubectl) {
    let out = k.run(&["create", "configmap", "made-by-dev", "--from-literal=a=1"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "create must stay forbidden");
    assert!(
        stderr.contains("forbidden") && stderr.contains("User \"plain.dev\" cannot create resource \"configmaps\""),
        "{stderr}"
    );
}

const SIX_ROLES: [&str; 6] = [
    "bke-cluster-manage",
    "bke-cluster-readonly",
    "bke-services-view",
    "bke-services-manage",
    "bke-workloads-view",
    "bke-workloads-manage",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_from_the_config_file_gives_read_access_and_leaves_foreign_bindings_alone() {
    // The cluster is registered after start: its grant waits in the store until it appears.
    let rbac = "  turn_on_conf: true\n  sync_interval_seconds: 3\n  data:\n    - user_name: plain:dev\n      cluster_id: plain-k8s-conf\n      roles: [cluster-readonly]\n";
    let gw = gateway(rbac, "").await;
    let granted = FakeApiserver::start(FakeOptions::enforcing_rbac("confClusterToken")).await;
    granted.add_pod("default", "web-0");
    let other = FakeApiserver::start(FakeOptions::enforcing_rbac("otherClusterToken")).await;
    other.add_pod("default", "web-1");

    // In the granted cluster beforehand: a binding someone else owns, a stale binding the
    // gateway owns (no grant wants it), and a bke-* role whose rules drifted.
    let foreign = granted.rbac_create(
        RbacKind::ClusterRoleBinding,
        "",
        json!({"metadata": {"name": "someone-elses", "labels": {"team": "ops"}},
               "roleRef": {"kind": "ClusterRole", "name": "bke-cluster-manage"},
               "subjects": [{"kind": "User", "name": "plain.ops"}]}),
    );
    let foreign_rb = granted.rbac_create(
        RbacKind::RoleBinding,
        "default",
        json!({"metadata": {"name": "ops-in-default"},
               "roleRef": {"kind": "ClusterRole", "name": "bke-cluster-manage"},
               "subjects": [{"kind": "User", "name": "plain.ops"}]}),
    );
    granted.rbac_create(
        RbacKind::ClusterRoleBinding,
        "",
        json!({"metadata": {"name": "bcs-api-stale", "labels": {"app.kubernetes.io/managed-by": "bcs-api"}},
               "roleRef": {"kind": "ClusterRole", "name": "bke-cluster-manage"},
               "subjects": [{"kind": "User", "name": "plain.ghost"}]}),
    );
    granted.rbac_create(
        RbacKind::ClusterRole,
        "",
        json!({"metadata": {"name": "bke-cluster-readonly"},
               "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}),
    );

    let conf = gw.register_fake("k8s-conf", None, &granted).await;
    assert_eq!(conf.id, "plain-k8s-conf");
    let elsewhere = gw.register_fake("k8s-other", None, &other).await;
    let k = gw.kubectl(&conf);
    wait_serving(&gw, &k).await;

    let took = until_get_pods(&gw, &k, true, ON_CHANGE).await;
    println!("config-file grant effective {took:?} after the cluster was registered");
    assert!(k.ok(&["get", "pods"]).await.contains("web-0"));
    create_configmap_is_forbidden(&k).await;
    // No grant in the other cluster: refused there.
    let k_other = gw.kubectl(&elsewhere);
    until_get_pods(&gw, &k_other, false, ON_CHANGE).await;

    // What the gateway did in the granted cluster.
    let binding = binding_for(&granted, RbacKind::ClusterRoleBinding, "plain.dev", "bke-cluster-readonly")
        .expect("the gateway's binding");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "plain.dev"}])
    );
    for role in SIX_ROLES {
        let r = granted.rbac_get(RbacKind::ClusterRole, "", role).unwrap_or_else(|| panic!("{role} exists"));
        assert!(r["rules"].as_array().is_some_and(|r| !r.is_empty()), "{r}");
    }
    let readonly = granted.rbac_get(RbacKind::ClusterRole, "", "bke-cluster-readonly").unwrap();
    assert_eq!(readonly["rules"], json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list", "watch"]}]));
    let view = granted.rbac_get(RbacKind::ClusterRole, "", "bke-workloads-view").unwrap();
    for rule in view["rules"].as_array().unwrap() {
        assert_eq!(rule["verbs"], json!(["get", "list", "watch"]), "no create on pods/exec for a view role");
        // Not even get: before Kubernetes 1.35 that is a WebSocket exec.
        for into_pods in ["pods/exec", "pods/attach", "pods/portforward", "pods/proxy"] {
            assert!(!rule["resources"].as_array().unwrap().contains(&json!(into_pods)), "{into_pods} in {rule}");
        }
    }
    assert!(
        granted.rbac_get(RbacKind::ClusterRoleBinding, "", "bcs-api-stale").is_none(),
        "stale owned binding deleted"
    );
    assert_eq!(granted.rbac_get(RbacKind::ClusterRoleBinding, "", "someone-elses"), Some(foreign), "untouched");
    assert_eq!(granted.rbac_get(RbacKind::RoleBinding, "default", "ops-in-default"), Some(foreign_rb), "untouched");
    assert!(owned_bindings(&other, RbacKind::ClusterRoleBinding).is_empty());
    assert!(other.rbac_get(RbacKind::ClusterRole, "", "bke-cluster-readonly").is_some(), "roles ensured everywhere");

    // Drift is repaired by the periodic reconcile (3 s here): a changed subject comes back.
    let name = binding["metadata"]["name"].as_str().unwrap().to_owned();
    granted.rbac_modify(RbacKind::ClusterRoleBinding, "", &name, |b| {
        b["subjects"] = json!([{"kind": "User", "name": "plain.intruder"}]);
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let b = granted.rbac_get(RbacKind::ClusterRoleBinding, "", &name).unwrap();
        if b["subjects"][0]["name"] == "plain.dev" {
            break;
        }
        assert!(Instant::now() < deadline, "drift not repaired: {b}\n{}", gw.stderr());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        granted.rbac_get(RbacKind::ClusterRoleBinding, "", "someone-elses").unwrap()["subjects"][0]["name"],
        "plain.ops"
    );

    let grants = gw.admin.call(Method::GET, "/rest/rbac/grants", gw.admin.admin(), None).await;
    assert_eq!(grants.0, 200);
    assert_eq!(grants.1.as_array().unwrap().len(), 1, "{}", grants.1);
    assert_eq!(grants.1[0]["source"], "conf");
    assert_eq!(grants.1[0]["cluster_role"], "bke-cluster-readonly");
    let status = gw.cluster_status(&conf.id).await;
    assert!(status["last_success"].is_i64(), "{status}");
    // Five roles and the binding created; the drifted role and the drifted binding updated.
    assert!(status["created"].as_u64().unwrap() >= 6, "{status}");
    assert!(status["updated"].as_u64().unwrap() >= 2, "{status}");
    assert!(status["deleted"].as_u64().unwrap() >= 1, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_grant_gives_access_on_change_and_its_removal_takes_it_away() {
    // The periodic reconcile is far away: what happens here happens on change.
    let gw = gateway("  turn_on_conf: true\n  sync_interval_seconds: 300\n", "").await;
    let fake = FakeApiserver::start(FakeOptions::enforcing_rbac("restClusterToken")).await;
    fake.add_pod("default", "web-0");
    let cluster = gw.register_fake("k8s-rest", Some("e2e"), &fake).await;
    let k = gw.kubectl(&cluster);
    wait_serving(&gw, &k).await;
    until_get_pods(&gw, &k, false, ON_CHANGE).await;

    let a = &gw.admin;
    let grant = |body: Value| async move { a.call(Method::POST, "/rest/rbac/grants", a.admin(), Some(body)).await };
    let refused = a
        .call(
            Method::POST,
            "/rest/rbac/grants",
            Some(&gw.user_token),
            Some(json!({"user_name": "dev", "cluster_id": cluster.id, "role": "cluster-manage"})),
        )
        .await;
    common::assert_error(&refused, 403, "FORBIDDEN", "super users");
    let bad = grant(json!({"user_name": "dev", "cluster_id": cluster.id, "role": "cluster-admin"})).await;
    common::assert_error(&bad, 400, "VALIDATION_ERROR", "role");
    let nobody = grant(json!({"user_name": "nobody", "cluster_id": cluster.id, "role": "cluster-readonly"})).await;
    common::assert_error(&nobody, 404, "USER_NOT_FOUND", "nobody");
    let nowhere = grant(json!({"user_name": "dev", "cluster_id": "plain-nowhere", "role": "cluster-readonly"})).await;
    common::assert_error(&nowhere, 404, "CLUSTER_NOT_FOUND", "plain-nowhere");
    let missing = grant(json!({"user_name": "dev", "role": "cluster-readonly"})).await;
    common::assert_error(&missing, 400, "VALIDATION_ERROR", "cluster_id");

    let added = grant(json!({"user_name": "dev", "cluster_id": cluster.id, "role": "cluster-readonly"})).await;
    assert_eq!(added.0, 200, "{}", added.1);
    assert_eq!(added.1["user_name"], "plain:dev");
    assert_eq!(added.1["source"], "rest");
    assert_eq!(added.1["namespace"], "");
    let took = until_get_pods(&gw, &k, true, ON_CHANGE).await;
    println!("REST grant effective after {took:?}");
    create_configmap_is_forbidden(&k).await;
    let again =
        grant(json!({"user_name": "plain:dev", "cluster_id": cluster.id, "role": "bke-cluster-readonly"})).await;
    common::assert_error(&again, 409, "GRANT_ALREADY_EXISTS", "plain:dev");
    let listed = a
        .call(Method::GET, &format!("/rest/rbac/grants?user_name=dev&cluster_id={}", cluster.id), a.admin(), None)
        .await;
    assert_eq!(listed.1.as_array().unwrap().len(), 1, "{}", listed.1);

    let id = added.1["id"].as_i64().unwrap();
    let removed = a.call(Method::DELETE, &format!("/rest/rbac/grants/{id}"), a.admin(), None).await;
    assert_eq!(removed, (200, json!({})));
    let took = until_get_pods(&gw, &k, false, ON_CHANGE).await;
    println!("REST grant removal effective after {took:?}");
    assert!(binding_for(&fake, RbacKind::ClusterRoleBinding, "plain.dev", "bke-cluster-readonly").is_none());
    let gone = a.call(Method::DELETE, &format!("/rest/rbac/grants/{id}"), a.admin(), None).await;
    common::assert_error(&gone, 404, "GRANT_NOT_FOUND", &id.to_string());

    let status = gw.rbac_status().await;
    assert_eq!(status["enabled"], true);
    assert_eq!(status["leader"], true);
    let cluster_status = gw.cluster_status(&cluster.id).await;
    assert!(cluster_status["last_success"].is_i64(), "{status}");
    assert!(cluster_status["last_error"].is_null(), "{status}");
    assert!(cluster_status["deleted"].as_u64().unwrap() >= 1, "{status}");
    let metrics = reqwest::get(format!("{}/metrics", a.base)).await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(&format!("bcs_api_rbac_reconciles_total{{cluster=\"{}\",result=\"ok\"}}", cluster.id)),
        "{metrics}"
    );
    assert!(metrics.contains("bcs_api_rbac_objects_total"), "{metrics}");

    // Deleting the cluster takes its series away (clusters come and go; each left six).
    let deleted = a.call(Method::DELETE, &format!("/rest/clusters/{}", cluster.id), a.admin(), None).await;
    assert_eq!(deleted.0, 200, "{}", deleted.1);
    let named = format!("cluster=\"{}\"", cluster.id);
    let started = Instant::now();
    loop {
        let metrics = reqwest::get(format!("{}/metrics", a.base)).await.unwrap().text().await.unwrap();
        if !metrics.lines().any(|l| l.starts_with("bcs_api_rbac") && l.contains(&named)) {
            break;
        }
        assert!(started.elapsed() < ON_CHANGE, "the deleted cluster's RBAC series stay:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A role that reads `*` gives no shell: kubectl 1.30+ execs over WebSocket (a GET), which an
/// apiserver before 1.35 authorises as `get` on `pods/exec` (the fake does the same). The proxy
/// asks the cluster for `create` first (a SubjectAccessReview), and refuses; a role that manages
/// workloads still gets its shell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_everything_opens_no_shell_and_managing_workloads_does() {
    let gw = gateway("  turn_on_conf: true\n  sync_interval_seconds: 300\n", "").await;
    let fake = FakeApiserver::start(FakeOptions::enforcing_rbac("execClusterToken")).await;
    fake.add_pod("default", "web-0");
    let cluster = gw.register_fake("k8s-exec", None, &fake).await;
    let k = gw.kubectl(&cluster);
    wait_serving(&gw, &k).await;
    let a = &gw.admin;
    let grant = |role: &'static str| {
        let body = json!({"user_name": "dev", "cluster_id": cluster.id, "role": role});
        async move { a.call(Method::POST, "/rest/rbac/grants", a.admin(), Some(body)).await }
    };
    let readonly = grant("cluster-readonly").await;
    assert_eq!(readonly.0, 200, "{}", readonly.1);
    until_get_pods(&gw, &k, true, ON_CHANGE).await;

    let reviews_before = fake.requests_matching(bcs_testkit::apiserver::REVIEWS).len();
    let out = k.run(&["exec", "web-0", "--", "echo", "hi"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a read-only user got a shell: {}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr.contains("cannot create") || stderr.contains("Forbidden"), "{stderr}");
    let reviews = fake.requests_matching(bcs_testkit::apiserver::REVIEWS);
    assert!(reviews.len() > reviews_before, "the gateway asked the cluster");
    let asked: Value = serde_json::from_slice(&reviews.last().unwrap().body).unwrap();
    assert_eq!(asked["spec"]["user"], "plain.dev");
    assert_eq!(asked["spec"]["resourceAttributes"]["verb"], "create");
    assert_eq!(asked["spec"]["resourceAttributes"]["subresource"], "exec");
    // Nothing reached the pod over the WebSocket.
    assert!(
        !fake.requests().iter().any(|r| r.path.ends_with("/exec") && r.method == "GET"),
        "the WebSocket exec went upstream"
    );

    let manage = grant("workloads-manage").await;
    assert_eq!(manage.0, 200, "{}", manage.1);
    let started = Instant::now();
    loop {
        let out = k.run(&["exec", "web-0", "--", "echo", "hi"]).await;
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
            break;
        }
        assert!(
            started.elapsed() < ON_CHANGE,
            "no shell with workloads-manage: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The run that first succeeded may have gone over SPDY: kubectl falls back to it when its
    // WebSocket try is refused, and the grant can land between the two tries. Once the grant
    // is in place, an exec goes over WebSocket.
    let out = k.run(&["exec", "web-0", "--", "echo", "hi"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(fake.requests().iter().any(|r| r.path.ends_with("/exec") && r.method == "GET"), "over WebSocket");
}

/// The `rbac` section body of a gateway that takes grants from the permission subscription
/// (its periodic reconcile far away: what happens, happens on change).
const SUBSCRIBING: &str = "  turn_on_auth: true\n  sync_interval_seconds: 300\n";

/// The `bkiam_auth` section for a permission service at `server` (`host:port` or a URL).
fn subscription_config(server: &str) -> String {
    format!(
        "bkiam_auth:\n  bkiam_auth_app_code: {APP_CODE}\n  bkiam_auth_app_secret: {APP_SECRET}\n  bkiam_auth_sub_server: {server}\n"
    )
}

/// A BCS cluster `id` in project `e2e` whose apiserver (enforcing RBAC, cluster token `token`)
/// holds the pod `web-0`: registered in `gw` and served, `svc` has a subscriber, and `dev` may
/// not list pods yet.
async fn subscribed_cluster(
    gw: &Gateway,
    svc: &PermissionService,
    id: &str,
    token: &str,
) -> (FakeApiserver, Registered, Kubectl) {
    let fake = FakeApiserver::start(FakeOptions::enforcing_rbac(token)).await;
    fake.add_pod("default", "web-0");
    let cluster = gw.register_fake(id, Some("e2e"), &fake).await;
    let k = gw.kubectl(&cluster);
    wait_serving(gw, &k).await;
    assert!(svc.wait_subscribers(1, Duration::from_secs(15)).await, "no subscriber; {}", gw.stderr());
    until_get_pods(gw, &k, false, ON_CHANGE).await;
    (fake, cluster, k)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_add_is_acknowledged_only_once_the_binding_exists_and_delete_takes_it_away() {
    let svc = PermissionService::start(APP_CODE, APP_SECRET, false).await;
    let gw = gateway(SUBSCRIBING, &subscription_config(&svc.host_port())).await;
    let (fake, cluster, k) = subscribed_cluster(&gw, &svc, "K8S-SUB-001", "subClusterToken").await;
    assert_eq!(svc.refused(), 0, "the basic auth was right");
    // Held here and wanted here: an alert tells this from a subscription that is down.
    gw.until("the subscription's gauges", Duration::from_secs(10), || async {
        let text = reqwest::get(format!("{}/metrics", gw.admin.base)).await.unwrap().text().await.unwrap();
        let has = |line: &str| text.lines().any(|l| l == line);
        has("bcs_api_rbac_subscription_wanted 1") && has("bcs_api_rbac_subscription_connected 1")
    })
    .await;

    // Slow binding writes: an ack sent before the binding exists would be seen.
    fake.set_fault_on(
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        Fault::Delay(Duration::from_millis(1500)),
    );
    let add = Grant::cluster("add", "plain", "dev", "cluster-readonly", "K8S-SUB-001");
    let sent = Instant::now();
    let data_id = svc.send_data(&add);
    let mut acked_at = None;
    while sent.elapsed() < Duration::from_secs(30) {
        // The ack first, then the binding: an ack seen means the binding must be there already
        // (read the other way round, a binding made between the two reads looked like a fault).
        if svc.acked(&data_id) {
            let exists =
                binding_for(&fake, RbacKind::ClusterRoleBinding, "plain.dev", "bke-cluster-readonly").is_some();
            assert!(exists, "acknowledged before the binding existed");
            acked_at = Some(sent.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let acked_at = acked_at.unwrap_or_else(|| panic!("no ack; bcs-api stderr:\n{}", gw.stderr()));
    println!("subscription add acknowledged {acked_at:?} after it was sent");
    assert!(acked_at >= Duration::from_millis(1500), "the ack waited for the slow binding write");
    let ack = svc.acks().into_iter().find(|a| a.data_id == data_id).unwrap();
    assert_eq!((ack.app_code.as_str(), ack.worker_id.starts_with("worker-")), (APP_CODE, true));
    fake.clear_fault();
    // Access right after the ack: kubectl works at once.
    assert!(k.ok(&["get", "pods"]).await.contains("web-0"));
    create_configmap_is_forbidden(&k).await;

    // Not applicable: a cluster id that only contains a known one (matched exactly, never by
    // substring), an unknown action, another app's message. None is acknowledged.
    let partial = svc.send_data(&Grant::cluster("add", "plain", "dev", "cluster-manage", "K8S-SUB"));
    let unknown = svc.send_data(&Grant::cluster("add", "plain", "dev", "cluster-admin", "K8S-SUB-001"));
    let foreign =
        svc.send_data_as("another-app", &Grant::cluster("add", "plain", "dev", "cluster-manage", "K8S-SUB-001"));
    // A later message is acknowledged, so the earlier ones were handled (in order) by then.
    let ns_grant = Grant::namespace("add", "plain", "dev", "workloads-view", &cluster.id, "default");
    let ns_id = svc.send_data(&ns_grant);
    assert!(svc.wait_ack(&ns_id, Duration::from_secs(30)).await.is_some(), "{}", gw.stderr());
    for id in [&partial, &unknown, &foreign] {
        assert!(!svc.acked(id), "{id} must not be acknowledged");
    }
    assert!(binding_for(&fake, RbacKind::ClusterRoleBinding, "plain.dev", "bke-cluster-manage").is_none());
    let rb = binding_for(&fake, RbacKind::RoleBinding, "plain.dev", "bke-workloads-view").expect("a RoleBinding");
    assert_eq!(rb["metadata"]["namespace"], "default");
    let stderr = gw.stderr();
    assert!(stderr.contains("not acknowledged") && stderr.contains("K8S-SUB"), "the reason is logged");

    // Delete: acknowledged once the binding is gone; the access goes with it.
    let delete = Grant::cluster("delete", "plain", "dev", "cluster-readonly", "K8S-SUB-001");
    let del_id = svc.send_data(&delete);
    assert!(svc.wait_ack(&del_id, Duration::from_secs(30)).await.is_some(), "{}", gw.stderr());
    assert!(binding_for(&fake, RbacKind::ClusterRoleBinding, "plain.dev", "bke-cluster-readonly").is_none());
    // The namespace grant (workloads-view) still lets dev list pods in default only.
    assert!(k.ok(&["get", "pods"]).await.contains("web-0"));
    let out = k.run(&["get", "pods", "--all-namespaces"]).await;
    assert!(!out.status.success(), "cluster-wide list is gone");
    let del_ns = svc.send_data(&Grant::namespace("delete", "plain", "dev", "workloads-view", &cluster.id, "default"));
    assert!(svc.wait_ack(&del_ns, Duration::from_secs(30)).await.is_some());
    until_get_pods(&gw, &k, false, Duration::from_secs(5)).await;

    // The connection drops: bcs-api reconnects and goes on.
    svc.disconnect_all();
    assert!(svc.wait_accepted(2, Duration::from_secs(15)).await, "reconnected; {}", gw.stderr());
    assert!(svc.wait_subscribers(1, Duration::from_secs(5)).await);
    let again = svc.send_data(&add);
    assert!(svc.wait_ack(&again, Duration::from_secs(30)).await.is_some(), "{}", gw.stderr());
    until_get_pods(&gw, &k, true, Duration::from_secs(5)).await;
    let status = gw.rbac_status().await;
    assert_eq!(status["subscription"]["connected"], true, "{status}");
    assert!(status["subscription"]["acked"].as_u64().unwrap() >= 4, "{status}");
    assert!(status["subscription"]["rejected"].as_u64().unwrap() >= 2, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_the_cluster_cannot_take_yet_holds_back_no_other() {
    let svc = PermissionService::start(APP_CODE, APP_SECRET, false).await;
    let gw = gateway(SUBSCRIBING, &subscription_config(&svc.host_port())).await;
    let (fake, cluster, k) = subscribed_cluster(&gw, &svc, "K8S-SUB-002", "ghostClusterToken").await;

    // A namespace the cluster does not have (yet): its binding cannot be created, which is
    // not a failure of the pass, so this and every later message is applied and acknowledged.
    let ghost = Grant::namespace("add", "plain", "dev", "workloads-view", &cluster.id, "ghost");
    let ghost_id = svc.send_data(&ghost);
    assert!(svc.wait_ack(&ghost_id, Duration::from_secs(30)).await.is_some(), "{}", gw.stderr());
    let add = svc.send_data(&Grant::cluster("add", "plain", "dev", "cluster-readonly", "K8S-SUB-002"));
    assert!(svc.wait_ack(&add, Duration::from_secs(30)).await.is_some(), "{}", gw.stderr());
    assert!(k.ok(&["get", "pods"]).await.contains("web-0"));
    assert!(gw.stderr().contains("the namespace does not exist"), "{}", gw.stderr());
    assert!(gw.cluster_status(&cluster.id).await["last_error"].is_null());

    // Once the namespace exists, the next pass creates its binding.
    fake.add_namespace("ghost");
    let removed = svc.send_data(&Grant::cluster("delete", "plain", "dev", "cluster-readonly", "K8S-SUB-002"));
    assert!(svc.wait_ack(&removed, Duration::from_secs(30)).await.is_some(), "{}", gw.stderr());
    let rb = binding_for(&fake, RbacKind::RoleBinding, "plain.dev", "bke-workloads-view").expect("its RoleBinding");
    assert_eq!(rb["metadata"]["namespace"], "ghost");
}

/// What Kubernetes says when a namespace is being deleted.
const TERMINATING: &str = "rolebindings.rbac.authorization.k8s.io \"x\" is forbidden: unable to create new content \
     in namespace locked because it is being terminated";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_its_namespace_refuses_holds_back_no_other_and_a_delete_for_an_unknown_cluster_is_acknowledged() {
    let svc = PermissionService::start(APP_CODE, APP_SECRET, false).await;
    let gw = gateway(SUBSCRIBING, &subscription_config(&svc.host_port())).await;
    let (fake, cluster, k) = subscribed_cluster(&gw, &svc, "K8S-SUB-003", "lockedClusterToken").await;

    // A namespace whose RoleBindings the cluster refuses (here: it is being deleted).
    fake.add_namespace("locked");
    fake.set_fault_on(
        "/apis/rbac.authorization.k8s.io/v1/namespaces/locked/rolebindings",
        Fault::Status { status: 403, message: TERMINATING },
    );
    let locked = svc.send_data(&Grant::namespace("add", "plain", "dev", "workloads-view", &cluster.id, "locked"));
    assert!(svc.wait_ack(&locked, Duration::from_secs(30)).await.is_some(), "{}", gw.stderr());
    let add = svc.send_data(&Grant::cluster("add", "plain", "dev", "cluster-readonly", "K8S-SUB-003"));
    assert!(svc.wait_ack(&add, Duration::from_secs(30)).await.is_some(), "{}", gw.stderr());
    assert!(k.ok(&["get", "pods"]).await.contains("web-0"));
    let status = gw.cluster_status(&cluster.id).await;
    assert!(status["last_error"].is_null(), "{status}");
    assert_eq!(status["refused_bindings"], 1, "{status}");
    assert!(gw.stderr().contains("refused the binding in its namespace"), "{}", gw.stderr());

    // Once the namespace takes it, the next pass creates it.
    fake.clear_fault();
    let removed = svc.send_data(&Grant::cluster("delete", "plain", "dev", "cluster-readonly", "K8S-SUB-003"));
    assert!(svc.wait_ack(&removed, Duration::from_secs(30)).await.is_some(), "{}", gw.stderr());
    let rb = binding_for(&fake, RbacKind::RoleBinding, "plain.dev", "bke-workloads-view").expect("its RoleBinding");
    assert_eq!(rb["metadata"]["namespace"], "locked");
    assert_eq!(gw.cluster_status(&cluster.id).await["refused_bindings"], 0);

    // A delete naming a cluster that is not (or no longer) registered has nothing to remove: it
    // is acknowledged, not sent again at every reconnect. An add for it is not.
    let gone = svc.send_data(&Grant::cluster("delete", "plain", "dev", "cluster-readonly", "K8S-SUB-GONE"));
    assert!(svc.wait_ack(&gone, Duration::from_secs(30)).await.is_some(), "{}", gw.stderr());
    let unknown_add = svc.send_data(&Grant::cluster("add", "plain", "dev", "cluster-readonly", "K8S-SUB-GONE"));
    let later = svc.send_data(&Grant::cluster("add", "plain", "dev", "cluster-readonly", "K8S-SUB-003"));
    assert!(svc.wait_ack(&later, Duration::from_secs(30)).await.is_some(), "{}", gw.stderr());
    assert!(!svc.acked(&unknown_add), "an add for an unknown cluster is not acknowledged");
    // An add not applied, then a delete of the same grant that is: the delete decides, and the
    // add is acknowledged with it (sent again after a reconnect, it would give the access back).
    let early_add = svc.send_data(&Grant::cluster("add", "plain", "ops", "cluster-manage", "K8S-SUB-LATER"));
    let late_delete = svc.send_data(&Grant::cluster("delete", "plain", "ops", "cluster-manage", "K8S-SUB-LATER"));
    assert!(svc.wait_ack(&late_delete, Duration::from_secs(30)).await.is_some(), "{}", gw.stderr());
    assert!(svc.wait_ack(&early_add, Duration::from_secs(5)).await.is_some(), "superseded: {}", gw.stderr());

    // A 403 that is the apiserver's own RBAC (the cluster's token may not write bindings there)
    // is a failure of the pass: the message is not acknowledged.
    fake.add_namespace("denied");
    fake.set_fault_on(
        "/apis/rbac.authorization.k8s.io/v1/namespaces/denied/rolebindings",
        Fault::Status {
            status: 403,
            message: "rolebindings.rbac.authorization.k8s.io is forbidden: User \"system:serviceaccount:kube-system:bcs\" \
                      cannot create resource \"rolebindings\" in API group \"rbac.authorization.k8s.io\" in the namespace \"denied\"",
        },
    );
    let denied = svc.send_data(&Grant::namespace("add", "plain", "dev", "workloads-view", &cluster.id, "denied"));
    gw.until("the pass fails", Duration::from_secs(20), || async {
        gw.cluster_status(&cluster.id).await["last_error"].as_str().is_some_and(|e| e.contains("cannot create"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!svc.acked(&denied), "not acknowledged while its binding cannot be made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_every_cluster_of_a_bcs_id_registered_in_two_projects() {
    let svc = PermissionService::start(APP_CODE, APP_SECRET, false).await;
    let gw = gateway(SUBSCRIBING, &subscription_config(&svc.host_port())).await;
    let (fake, _, k) = subscribed_cluster(&gw, &svc, "K8S-SQ-001", "realClusterToken").await;
    let add = svc.send_data(&Grant::cluster("add", "plain", "dev", "cluster-readonly", "K8S-SQ-001"));
    assert!(svc.wait_ack(&add, Duration::from_secs(30)).await.is_some(), "{}", gw.stderr());
    until_get_pods(&gw, &k, true, ON_CHANGE).await;

    // Someone registers the same BCS cluster id in another project.
    let squatter = FakeApiserver::start(FakeOptions::enforcing_rbac("squatClusterToken")).await;
    gw.register_fake("K8S-SQ-001", Some("elsewhere"), &squatter).await;
    // A grant naming the id is not given now; a revocation is carried out in both clusters.
    let refused = svc.send_data(&Grant::cluster("add", "plain", "dev", "cluster-manage", "K8S-SQ-001"));
    let revoked = svc.send_data(&Grant::cluster("delete", "plain", "dev", "cluster-readonly", "K8S-SQ-001"));
    assert!(svc.wait_ack(&revoked, Duration::from_secs(30)).await.is_some(), "{}", gw.stderr());
    assert!(binding_for(&fake, RbacKind::ClusterRoleBinding, "plain.dev", "bke-cluster-readonly").is_none());
    until_get_pods(&gw, &k, false, Duration::from_secs(5)).await;
    assert!(!svc.acked(&refused), "a grant for an id registered twice is not given");
    assert!(binding_for(&squatter, RbacKind::ClusterRoleBinding, "plain.dev", "bke-cluster-manage").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_cluster_holds_back_no_subscription_message_for_another() {
    let svc = PermissionService::start(APP_CODE, APP_SECRET, false).await;
    let gw = gateway(SUBSCRIBING, &subscription_config(&svc.host_port())).await;
    let (_fast, _, k) = subscribed_cluster(&gw, &svc, "K8S-SUB-FAST", "fastClusterToken").await;
    let slow = FakeApiserver::start(FakeOptions::enforcing_rbac("slowClusterToken")).await;
    let slow_cluster = gw.register_fake("K8S-SUB-SLOW", Some("e2e"), &slow).await;
    gw.until("the slow cluster's first pass", Duration::from_secs(20), || async {
        gw.cluster_status(&slow_cluster.id).await["last_success"].is_i64()
    })
    .await;

    // The slow cluster's binding writes take 8 s each; the message for the other cluster,
    // sent after, is applied and acknowledged meanwhile.
    slow.set_fault_on("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", Fault::Delay(Duration::from_secs(8)));
    let slow_id = svc.send_data(&Grant::cluster("add", "plain", "dev", "cluster-readonly", "K8S-SUB-SLOW"));
    let fast_id = svc.send_data(&Grant::cluster("add", "plain", "dev", "cluster-readonly", "K8S-SUB-FAST"));
    assert!(svc.wait_ack(&fast_id, Duration::from_secs(30)).await.is_some(), "{}", gw.stderr());
    assert!(!svc.acked(&slow_id), "acknowledged while the slow cluster still worked");
    assert!(k.ok(&["get", "pods"]).await.contains("web-0"));
    // The slow one is acknowledged once its binding exists.
    assert!(svc.wait_ack(&slow_id, Duration::from_secs(40)).await.is_some(), "{}", gw.stderr());
    assert!(binding_for(&slow, RbacKind::ClusterRoleBinding, "plain.dev", "bke-cluster-readonly").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cluster_ids_of_one_cluster_keep_to_their_own_bindings() {
    let gw = gateway("  turn_on_conf: true\n  sync_interval_seconds: 300\n", "").await;
    // One apiserver registered twice (a re-registration under a new id, say).
    let fake = FakeApiserver::start(FakeOptions::enforcing_rbac("twinClusterToken")).await;
    let first = gw.register_fake("k8s-twin-a", None, &fake).await;
    let second = gw.register_fake("k8s-twin-b", None, &fake).await;
    let admin = gw.admin.admin();
    gw.grant_dev(&first.id, "cluster-readonly").await;
    let readonly = || binding_for(&fake, RbacKind::ClusterRoleBinding, "plain.dev", "bke-cluster-readonly");
    gw.until("the first id's binding", Duration::from_secs(20), || async { readonly().is_some() }).await;
    let made = readonly().unwrap();
    // Another bcs-api deployment's binding in the same cluster.
    fake.rbac_create(
        RbacKind::ClusterRoleBinding,
        "",
        json!({"metadata": {"name": "bcs-api-elsewhere", "labels": {"app.kubernetes.io/managed-by": "bcs-api"},
                            "annotations": {"bcs-api.bk-bcs/cluster-id": "bcs-k8s-elsewhere-1234"}},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "bke-cluster-manage"},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "plain.elsewhere"}]}),
    );
    assert_eq!(made["metadata"]["annotations"]["bcs-api.bk-bcs/cluster-id"], first.id.as_str());

    // The second id, which wants nothing, runs passes after the binding exists and leaves it.
    let before = gw.reconciles(&second.id, "ok").await;
    gw.grant_dev(&first.id, "workloads-view").await;
    gw.until("the second id's pass", Duration::from_secs(20), || async {
        gw.reconciles(&second.id, "ok").await > before
    })
    .await;
    assert!(readonly().is_some());
    assert_eq!(gw.cluster_status(&second.id).await["deleted"], 0, "{}", gw.stderr());

    // The first id is deleted (the cluster now lives under the second): its bindings are the
    // second id's to remove, or the access they give would outlive every grant.
    let deleted = gw.admin.call(Method::DELETE, &format!("/rest/clusters/{}", first.id), admin, None).await;
    assert_eq!(deleted.0, 200, "{}", deleted.1);
    gw.grant_dev(&second.id, "services-view").await;
    gw.until("the deleted id's binding goes", Duration::from_secs(20), || async { readonly().is_none() }).await;
    let kept = binding_for(&fake, RbacKind::ClusterRoleBinding, "plain.dev", "bke-services-view").expect("its own");
    assert_eq!(kept["metadata"]["annotations"]["bcs-api.bk-bcs/cluster-id"], second.id.as_str());
    // A binding of an id this bcs-api never knew (another deployment's) is left alone.
    assert!(binding_for(&fake, RbacKind::ClusterRoleBinding, "plain.elsewhere", "bke-cluster-manage").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_that_failed_on_one_apiserver_address_starts_at_the_next() {
    let gw = gateway("  turn_on_conf: true\n  sync_interval_seconds: 300\n", "").await;
    // The first address takes connections and TLS but fails every request; the second works.
    let failing = FakeApiserver::start(FakeOptions::enforcing_rbac("twoAddressToken")).await;
    failing.set_fault(Fault::Status { status: 500, message: "etcdserver: request timed out" });
    let working = FakeApiserver::start(FakeOptions::enforcing_rbac("twoAddressToken")).await;
    working.add_pod("default", "web-0");
    let addresses = format!("{};{}", failing.url(), working.url());
    let ca = format!("{}{}", failing.ca_pem(), working.ca_pem());
    let cluster = gw.register("k8s-two-addresses", None, &addresses, &ca, "twoAddressToken").await;
    gw.grant_dev(&cluster.id, "cluster-readonly").await;
    gw.until("synced past the failing address", Duration::from_secs(20), || async {
        binding_for(&working, RbacKind::ClusterRoleBinding, "plain.dev", "bke-cluster-readonly").is_some()
    })
    .await;
    let status = gw.cluster_status(&cluster.id).await;
    assert!(status["last_success"].is_i64(), "{status}");
    assert!(!failing.requests().is_empty(), "the failing address was tried first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_over_wss_trusts_only_the_configured_ca() {
    let svc = PermissionService::start(APP_CODE, APP_SECRET, true).await;
    let other = PermissionService::start(APP_CODE, APP_SECRET, true).await;
    let extra = subscription_config(&svc.url());
    let rbac = SUBSCRIBING;

    // A CA that did not sign the service's certificate: no subscription, and the status says why.
    let refused = gateway_trusting(rbac, &extra, other.ca_pem().as_deref()).await;
    let started = Instant::now();
    let error = loop {
        let status = refused.rbac_status().await;
        if let Some(error) = status["subscription"]["last_error"].as_str() {
            break error.to_owned();
        }
        assert!(started.elapsed() < ON_CHANGE, "no subscription error: {status}\n{}", refused.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("with another CA in cert_config.ca_file: {error}");
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    assert_eq!(svc.subscribers(), 0, "subscribed through an untrusted certificate");
    assert!(!svc.wait_subscribers(1, Duration::from_secs(2)).await, "subscribed through an untrusted certificate");
    drop(refused);

    // The service's own CA: subscribed over TLS, and a grant works end to end.
    let gw = gateway_trusting(rbac, &extra, svc.ca_pem().as_deref()).await;
    let (fake, _, k) = subscribed_cluster(&gw, &svc, "K8S-WSS-001", "wssClusterToken").await;
    let data_id = svc.send_data(&Grant::cluster("add", "plain", "dev", "cluster-readonly", "K8S-WSS-001"));
    assert!(svc.wait_ack(&data_id, Duration::from_secs(30)).await.is_some(), "{}", gw.stderr());
    assert!(binding_for(&fake, RbacKind::ClusterRoleBinding, "plain.dev", "bke-cluster-readonly").is_some());
    assert!(k.ok(&["get", "pods"]).await.contains("web-0"));
    let status = gw.rbac_status().await;
    assert_eq!(status["subscription"]["connected"], true, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_is_down_does_not_stop_the_others() {
    let gw = gateway("  turn_on_conf: true\n  sync_interval_seconds: 300\n", "").await;
    // Down in two ways: a port that accepts TCP but never answers TLS, and a port nobody
    // listens on.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole = format!("https://{}", blackhole.local_addr().unwrap());
    let refused = format!("https://127.0.0.1:{}", bcs_testkit::free_port());
    let ca = common::CLUSTER_CA;
    let silent = gw.register("k8s-silent", None, &hole, ca, "silentToken").await;
    let gone = gw.register("k8s-gone", None, &refused, ca, "goneToken").await;
    let fake = FakeApiserver::start(FakeOptions::enforcing_rbac("upClusterToken")).await;
    fake.add_pod("default", "web-0");
    let up = gw.register_fake("k8s-up", None, &fake).await;
    let k = gw.kubectl(&up);
    wait_serving(&gw, &k).await;

    // One grant for every cluster.
    gw.grant_dev("*", "cluster-readonly").await;
    let took = until_get_pods(&gw, &k, true, Duration::from_secs(8)).await;
    println!("the reachable cluster got its binding {took:?} after the grant, with two clusters down");
    assert!(took < Duration::from_secs(5), "not held up by the silent cluster's 5 s connect timeout: {took:?}");

    // The down clusters are reported, and retried with backoff.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = gw.cluster_status(&silent.id).await;
        let g = gw.cluster_status(&gone.id).await;
        if s["last_error"].is_string() && g["last_error"].is_string() {
            assert!(s["last_success"].is_null() && g["last_success"].is_null());
            assert!(g["last_error"].as_str().unwrap().contains(&refused), "{g}");
            break;
        }
        assert!(Instant::now() < deadline, "{s} {g}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    gw.until("the refused cluster is retried", Duration::from_secs(10), || async {
        gw.reconciles(&gone.id, "error").await >= 3
    })
    .await;
    let up_status = gw.cluster_status(&up.id).await;
    assert!(up_status["last_success"].is_i64() && up_status["last_error"].is_null(), "{up_status}");
    drop(blackhole);
}
