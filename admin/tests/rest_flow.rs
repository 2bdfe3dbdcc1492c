//! The original's documented flow through the real `bcs-api` binary, once on the embedded
//! SQLite store and once on the real MariaDB through the original's Go-style DSN; then a
//! restart, after which everything is still there.
mod common;

use bcs_testkit::mysql::MysqlDatabase;
use common::{seed_flow, Admin, Options};
use reqwest::Method;
use serde_json::json;

async fn flow_survives_restart(options: Options) {
    let dir = tempfile::tempdir().unwrap();
    let admin = Admin::start(dir.path(), &options).await;
    assert_eq!(
        admin.admin_token.len(),
        32,
        "the generated bootstrap token is printed once: {}",
        admin.process.stdout()
    );
    let seeded = seed_flow(&admin, "bryanhe", "cluster-sa-token-fixture-1").await;

    // Lookups of the seed's other endpoints.
    let found = by_id(&admin, "demo", &seeded.user_token).await;
    assert_eq!(found.0, 200, "{}", found.1);
    assert_eq!(found.1["id"], seeded.cluster_id.as_str());
    let by_cluster = admin
        .call(Method::GET, "/rest/clusters/bcs/query_by_cluster_id/?cluster_id=K8S-001", Some(&seeded.user_token), None)
        .await;
    assert_eq!(by_cluster.1["identifier"], seeded.identifier.as_str());
    // Anyone may register a BCS cluster: the same BCS id under another project makes the
    // project-less lookup a conflict (it never picks one), and each project finds its own.
    let squat = register_k8s_001(&admin, "elsewhere", &seeded.user_token).await;
    assert_eq!(squat.0, 200, "{}", squat.1);
    let ambiguous = admin
        .call(Method::GET, "/rest/clusters/bcs/query_by_cluster_id/?cluster_id=K8S-001", Some(&seeded.user_token), None)
        .await;
    common::assert_error(&ambiguous, 409, "CONFLICT", "more than one project (demo, elsewhere)");
    let ours = by_id(&admin, "demo", &seeded.user_token).await;
    assert_eq!(ours.1["id"], seeded.cluster_id.as_str());
    let theirs = by_id(&admin, "elsewhere", &seeded.user_token).await;
    assert_eq!(theirs.1["id"], squat.1["id"]);
    let removed = admin
        .call(Method::DELETE, &format!("/rest/clusters/{}", squat.1["id"].as_str().unwrap()), admin.admin(), None)
        .await;
    assert_eq!(removed.0, 200, "{}", removed.1);
    let stored = admin
        .call(Method::GET, &format!("/rest/clusters/{}/credentials", seeded.cluster_id), admin.admin(), None)
        .await;
    assert_eq!(stored.0, 200, "{}", stored.1);
    assert_eq!(stored.1["UserToken"], "cluster-sa-token-fixture-1");
    assert_eq!(stored.1["ServerAddresses"], "https://127.0.0.1:6443;https://127.0.0.2:6443");
    assert_eq!(stored.1["Version"], 1);

    let admin = admin.restart().await;
    assert!(common::printed_token(&admin.process.stdout()).is_none(), "a restart prints no new token");

    // Everything is still there, and the old tokens still work.
    let user = admin.call(Method::GET, "/rest/users/bryanhe", admin.admin(), None).await;
    assert_eq!(user.1["ID"], seeded.user_id);
    let client = admin
        .call(
            Method::GET,
            &format!("/rest/clusters/{}/client_credentials", seeded.cluster_id),
            Some(&seeded.user_token),
            None,
        )
        .await;
    assert_eq!(client.0, 200, "{}", client.1);
    assert_eq!(client.1["server_address_path"], format!("/tunnels/clusters/{}/", seeded.identifier));
    // Plain HTTP: no gateway CA to trust.
    assert_eq!(client.1["server_cacert_data"], "");
    let register = admin
        .call(
            Method::GET,
            &format!("/rest/clusters/{}/register_tokens", seeded.cluster_id),
            Some(&seeded.user_token),
            None,
        )
        .await;
    assert_eq!(register.1[0]["token"], seeded.register_token.as_str());

    // A second report with a new token bumps the credential version.
    let report = json!({
        "register_token": seeded.register_token,
        "server_addresses": "https://127.0.0.1:6443",
        "cacert_data": common::CLUSTER_CA,
        "user_token": "cluster-sa-token-fixture-2",
    });
    let put =
        admin.call(Method::PUT, &format!("/rest/clusters/{}/credentials", seeded.cluster_id), None, Some(report)).await;
    assert_eq!(put.0, 200, "{}", put.1);
    let stored = admin
        .call(Method::GET, &format!("/rest/clusters/{}/credentials", seeded.cluster_id), admin.admin(), None)
        .await;
    assert_eq!(stored.1["UserToken"], "cluster-sa-token-fixture-2");
    assert_eq!(stored.1["Version"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_flow_on_sqlite_survives_restart() {
    flow_survives_restart(Options::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_flow_on_mariadb_with_go_dsn_survives_restart() {
    let db = MysqlDatabase::fresh("bcs_flow");
    flow_survives_restart(Options { dsn: db.go_dsn(), ..Options::default() }).await;
    // The data really is in MariaDB.
    let names = db.query_strings("SELECT name FROM users ORDER BY id").await;
    assert_eq!(names, vec!["admin".to_owned(), "plain:bryanhe".to_owned()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configured_bootstrap_token_is_accepted_and_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let token = "configured-admin-token-0123456789abcdef";
    let admin = Admin::start(dir.path(), &Options { admin_token: token.into(), ..Options::default() }).await;
    let me = admin.call(Method::GET, "/rest/users/admin", Some(token), None).await;
    assert_eq!(me.0, 200, "{}", me.1);
    assert_eq!(me.1["IsSuperUser"], true);
    assert!(!admin.process.stdout().contains(token));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bootstrap_user_that_never_had_a_token_gets_one_at_start_and_a_revoked_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default();
    let admin = Admin::start(dir.path(), &options).await;
    let ops = admin.call(Method::POST, "/rest/users/", admin.admin(), Some(json!({"user_name": "ops"}))).await;
    assert_eq!(ops.0, 200, "{}", ops.1);
    let port: u16 = admin.base.rsplit(':').next().unwrap().parse().unwrap();
    let (insecure, token) = (admin.insecure_port, admin.admin_token.clone());
    drop(admin);
    // `ops` becomes a bootstrap user whose token is generated: it has none yet, so it gets one.
    let yaml = std::fs::read_to_string(dir.path().join("bcs-api.yaml")).unwrap();
    let yaml = yaml.replace("bootstrap_users:\n", "bootstrap_users:\n  - name: plain:ops\n    tokens: [\"\"]\n");
    std::fs::write(dir.path().join("bcs-api.yaml"), &yaml).unwrap();
    let admin = Admin::start_existing(dir.path(), port, insecure, token.clone()).await;
    let stdout = admin.process.stdout();
    let line = stdout
        .lines()
        .find(|l| l.contains("bootstrap user plain:ops has the token"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let generated = line.split_whitespace().nth(7).unwrap().to_owned();
    let own = admin.call(Method::GET, &format!("/rest/users/{}/tokens", ops.1["ID"]), Some(&generated), None).await;
    assert_eq!(own.0, 200, "the printed token works: {}", own.1);
    // Revoked: the next start does not bring a token back.
    let tokens = admin.call(Method::GET, &format!("/rest/users/{}/tokens", ops.1["ID"]), admin.admin(), None).await;
    let id = tokens.1[0]["ID"].as_i64().unwrap();
    let revoked =
        admin.call(Method::DELETE, &format!("/rest/users/{}/tokens/{id}", ops.1["ID"]), admin.admin(), None).await;
    assert_eq!(revoked.0, 200, "{}", revoked.1);
    drop(admin);
    let admin = Admin::start_existing(dir.path(), port, insecure, token).await;
    assert!(!admin.process.stdout().contains("plain:ops has the token"), "{}", admin.process.stdout());
}

#[tokio::test(flavor = "multi_thread")]
async fn rest_answers_are_never_cached() {
    let dir = tempfile::tempdir().unwrap();
    let admin = Admin::start(dir.path(), &Options::default()).await;
    let seeded = seed_flow(&admin, "ivy", "sa-ivy").await;
    let client = reqwest::Client::new();
    // A new token's value, a register token, a cluster's token, and a refusal.
    for (method, path) in [
        (Method::POST, format!("/rest/users/{}/tokens", seeded.user_id)),
        (Method::GET, format!("/rest/clusters/{}/register_tokens", seeded.cluster_id)),
        (Method::GET, format!("/rest/clusters/{}/credentials", seeded.cluster_id)),
        (Method::GET, format!("/rest/clusters/{}/agent.yaml", seeded.cluster_id)),
        (Method::GET, "/rest/users/999999".to_owned()),
        // The fallbacks: no route (404), a route without this method (405).
        (Method::GET, "/rest/nothing".to_owned()),
        (Method::PUT, "/rest/users".to_owned()),
    ] {
        let response = client
            .request(method, format!("{}{path}", admin.base))
            .bearer_auth(&admin.admin_token)
            .send()
            .await
            .unwrap();
        let cache = response.headers().get("cache-control").map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(cache.as_deref(), Some("no-store"), "{path}: {}", response.status());
    }
    // A 401 names the scheme to authenticate with (RFC 6750 §3).
    let refused = client.get(format!("{}/rest/clusters", admin.base)).bearer_auth("nope").send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let scheme = refused.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(scheme.as_deref(), Some("Bearer realm=\"bcs-api\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_listed_without_values_and_revocation_is_immediate() {
    let dir = tempfile::tempdir().unwrap();
    let admin = Admin::start(dir.path(), &Options::default()).await;
    let seeded = seed_flow(&admin, "carol", "sa-token-carol").await;
    let second = admin.call(Method::POST, &format!("/rest/users/{}/tokens", seeded.user_id), admin.admin(), None).await;
    let second_value = second.1["Value"].as_str().unwrap().to_owned();
    assert_ne!(second_value, seeded.user_token, "each POST creates a new token");

    // The user lists its own tokens: no values.
    let list = admin
        .call(Method::GET, &format!("/rest/users/{}/tokens", seeded.user_id), Some(&seeded.user_token), None)
        .await;
    assert_eq!(list.0, 200, "{}", list.1);
    let tokens = list.1.as_array().unwrap();
    assert_eq!(tokens.len(), 2);
    assert!(tokens.iter().all(|t| t.get("Value").is_none()), "{}", list.1);

    // Revoke the second token: it stops working at once; the first still works.
    let second_id = second.1["ID"].as_i64().unwrap();
    let revoked = admin
        .call(
            Method::DELETE,
            &format!("/rest/users/{}/tokens/{second_id}", seeded.user_id),
            Some(&seeded.user_token),
            None,
        )
        .await;
    assert_eq!(revoked, (200, json!({})));
    let denied = admin.call(Method::GET, "/rest/clusters", Some(&second_value), None).await;
    common::assert_error(&denied, 401, "UNAUTHORIZED", "unknown, revoked or expired");
    let list = admin.call(Method::GET, "/rest/clusters", Some(&seeded.user_token), None).await;
    assert_eq!(list.0, 200);
    assert_eq!(list.1.as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn register_token_rotation_and_cluster_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let admin = Admin::start(dir.path(), &Options::default()).await;
    let seeded = seed_flow(&admin, "dave", "sa-token-dave").await;
    let path = format!("/rest/clusters/{}/register_tokens", seeded.cluster_id);

    let rotated = admin.call(Method::POST, &format!("{path}/rotate"), Some(&seeded.user_token), None).await;
    assert_eq!(rotated.0, 200, "{}", rotated.1);
    let new_token = rotated.1[0]["token"].as_str().unwrap().to_owned();
    assert_ne!(new_token, seeded.register_token);
    let report = |token: &str| json!({"register_token": token, "server_addresses": "https://10.0.0.1:6443", "cacert_data": common::CLUSTER_CA, "user_token": "sa"});
    let credentials = format!("/rest/clusters/{}/credentials", seeded.cluster_id);
    let old = admin.call(Method::PUT, &credentials, None, Some(report(&seeded.register_token))).await;
    common::assert_error(&old, 401, "UNAUTHORIZED", "register token");
    let new = admin.call(Method::PUT, &credentials, None, Some(report(&new_token))).await;
    assert_eq!(new.0, 200, "{}", new.1);

    let deleted = admin
        .call(Method::DELETE, &format!("/rest/clusters/{}", seeded.cluster_id), Some(&seeded.user_token), None)
        .await;
    assert_eq!(deleted, (200, json!({})));
    let gone =
        admin.call(Method::GET, &format!("/rest/clusters/{}", seeded.cluster_id), Some(&seeded.user_token), None).await;
    common::assert_error(&gone, 404, "CLUSTER_NOT_FOUND", &seeded.cluster_id);
    // The (project, cluster id) pair is free again.
    let again = register_k8s_001(&admin, "demo", &seeded.user_token).await;
    assert_eq!(again.0, 200, "{}", again.1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_past_max_clusters_per_user_is_refused_and_a_super_user_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options { admin_extra: "  max_clusters_per_user: 2\n".into(), ..Options::default() };
    let admin = Admin::start(dir.path(), &options).await;
    let said = admin.process.wait_stderr(&["max_clusters_per_user", "most=2"], std::time::Duration::from_secs(5));
    assert!(said, "the limit is logged at start: {}", admin.process.stderr());
    let seeded = seed_flow(&admin, "erin", "sa-token-erin").await; // erin's first cluster
    let create = |id: &str| json!({"id": id});
    let second = admin.call(Method::POST, "/rest/clusters/", Some(&seeded.user_token), Some(create("second"))).await;
    assert_eq!(second.0, 200, "{}", second.1);
    let third = admin.call(Method::POST, "/rest/clusters/", Some(&seeded.user_token), Some(create("third"))).await;
    common::assert_error(&third, 403, "CLUSTER_QUOTA_EXCEEDED", "has created 2 clusters");
    let bcs = register_k8s_001(&admin, "other-project", &seeded.user_token).await;
    common::assert_error(&bcs, 403, "CLUSTER_QUOTA_EXCEEDED", "max_clusters_per_user");
    let listed = admin.call(Method::GET, "/rest/clusters", Some(&seeded.user_token), None).await;
    assert_eq!(listed.1.as_array().map(Vec::len), Some(2), "nothing stored for the refused ones: {}", listed.1);

    // Super users have no limit.
    for id in ["s1", "s2", "s3"] {
        let created = admin.call(Method::POST, "/rest/clusters/", admin.admin(), Some(create(id))).await;
        assert_eq!(created.0, 200, "{}", created.1);
    }
    // A deleted cluster frees its place.
    let deleted = admin.call(Method::DELETE, "/rest/clusters/plain-second", Some(&seeded.user_token), None).await;
    assert_eq!(deleted, (200, json!({})));
    let again = admin.call(Method::POST, "/rest/clusters/", Some(&seeded.user_token), Some(create("third"))).await;
    assert_eq!(again.0, 200, "{}", again.1);
}

/// `query_by_id` for the BCS cluster id K8S-001 in `project`, as `token`.
async fn by_id(admin: &Admin, project: &str, token: &str) -> (u16, serde_json::Value) {
    let path = format!("/rest/clusters/bcs/query_by_id/?project_id={project}&cluster_id=K8S-001");
    admin.call(Method::GET, &path, Some(token), None).await
}

/// Registers the BCS cluster id K8S-001 in `project`, as `token`.
async fn register_k8s_001(admin: &Admin, project: &str, token: &str) -> (u16, serde_json::Value) {
    admin
        .call(Method::POST, "/rest/clusters/bcs", Some(token), Some(json!({"id": "K8S-001", "project_id": project})))
        .await
}
