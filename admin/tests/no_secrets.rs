//! No token value appears in the data directory, the database, a log line at the most verbose
//! level, or an error body. The fixture tokens are grepped for everywhere they could leak.
mod common;

use std::path::Path;

use bcs_testkit::mysql::MysqlDatabase;
use common::{seed_flow, Admin, Options};
use reqwest::Method;
use serde_json::json;

const CLUSTER_TOKEN: &str = "clusterSAtokenFixtureMustNotLeak0001";
const BOGUS_BEARER: &str = "bogusBearerFixtureMustNotLeak0002";
const BOGUS_REGISTER: &str = "bogusRegisterFixtureMustNotLeak0003";

/// Every file under `dir`, as bytes.
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

const VERBOSE_FILE_LOG: &str = "  logtostderr: false\n  alsologtostderr: true\n  log_dir: ./logs\n  v: 9\n";

async fn nothing_leaks(options: Options) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let mut admin = Admin::start(dir.path(), &options).await;
    let seeded = seed_flow(&admin, "ivan", CLUSTER_TOKEN).await;

    // Failures that carry secrets in: their answers must not carry them out.
    let mut bodies = Vec::new();
    bodies.push(admin.call(Method::GET, "/rest/clusters", Some(BOGUS_BEARER), None).await);
    let report = json!({"register_token": BOGUS_REGISTER, "server_addresses": "https://10.0.0.1:6443",
        "cacert_data": common::CLUSTER_CA, "user_token": CLUSTER_TOKEN});
    bodies.push(
        admin.call(Method::PUT, &format!("/rest/clusters/{}/credentials", seeded.cluster_id), None, Some(report)).await,
    );
    let report = json!({"register_token": seeded.register_token, "server_addresses": "ftp://x", "cacert_data": "x", "user_token": CLUSTER_TOKEN});
    bodies.push(
        admin.call(Method::PUT, &format!("/rest/clusters/{}/credentials", seeded.cluster_id), None, Some(report)).await,
    );
    bodies.push(admin.call(Method::GET, "/rest/users/ivan", Some(&seeded.user_token), None).await);
    bodies.push(admin.call(Method::GET, "/metrics", None, None).await);
    let metrics = reqwest::get(format!("{}/metrics", admin.base)).await.unwrap().text().await.unwrap();
    admin.process.stop(); // flushes the log file

    let secrets = [
        admin.admin_token.as_str(),
        seeded.user_token.as_str(),
        seeded.register_token.as_str(),
        CLUSTER_TOKEN,
        BOGUS_BEARER,
        BOGUS_REGISTER,
    ];
    let stderr = admin.process.stderr();
    let log_file = std::fs::read_to_string(dir.path().join("logs/bcs-api.log")).unwrap();
    assert!(log_file.contains("request"), "the access log is written: {log_file}");
    assert!(log_file.contains("DEBUG") || log_file.contains("\"DEBUG\""), "v: 9 logs at debug and below");
    assert!(stderr.contains("request"), "alsologtostderr copies lines to stderr");
    for secret in secrets {
        assert!(!stderr.contains(secret), "stderr leaks a token");
        assert!(!log_file.contains(secret), "the log file leaks a token");
        assert!(!metrics.contains(secret), "metrics leak a token");
        for (status, body) in &bodies {
            assert!(!body.to_string().contains(secret), "a {status} answer leaks a token: {body}");
        }
        for (name, bytes) in files_under(&dir.path().join("data")) {
            assert!(!contains(&bytes, secret), "{name} holds a token value");
        }
    }
    // The generated admin token is printed once, to stdout, and nowhere else.
    assert_eq!(admin.process.stdout().matches(&admin.admin_token).count(), 1);
    let mut out: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
    out.push(stderr);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn no_token_leaks_on_sqlite_at_the_most_verbose_level() {
    nothing_leaks(Options { log_config: VERBOSE_FILE_LOG.into(), ..Options::default() }).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_token_leaks_on_mariadb_and_json_logs_are_json() {
    let db = MysqlDatabase::fresh("bcs_secrets");
    let log = format!("{VERBOSE_FILE_LOG}  log_format: json\n");
    let mut out = nothing_leaks(Options { dsn: db.go_dsn(), log_config: log, ..Options::default() }).await;
    let stderr = out.pop().unwrap();
    for line in stderr.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    // What MariaDB holds: digests and sealed values only.
    let stored = [
        db.query_strings("SELECT digest FROM user_tokens").await,
        db.query_strings("SELECT token_sealed FROM register_tokens").await,
        db.query_strings("SELECT user_token_sealed FROM cluster_credentials").await,
    ]
    .concat();
    assert_eq!(stored.len(), 4, "two user tokens, one register token, one credential: {stored:?}");
    for secret in &out {
        assert!(!stored.iter().any(|v| v.contains(secret.as_str())), "MariaDB holds a token value");
    }
    assert!(stored[2].starts_with("v1:") && stored[3].starts_with("v1:"), "sealed: {stored:?}");
}
