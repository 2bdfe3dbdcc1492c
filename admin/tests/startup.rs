//! Start-up errors of the real binary: each names the key or the address at fault, exits
//! non-zero, and shows no password; and instances that start at once on a fresh MySQL
//! database all come up.
mod common;

use std::time::Duration;

use bcs_testkit::process::Process;

/// Runs bcs-api on `yaml` and returns (exit code, stderr).
fn start_with(yaml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bcs-api.yaml"), yaml).unwrap();
    let mut process = Process::spawn(&common::binary(), &["--config=bcs-api.yaml"], dir.path(), "bcs-api");
    let code = process.wait_exit(Duration::from_secs(30));
    (code, process.stderr())
}

#[test]
fn an_unknown_key_stops_the_start_naming_key_and_line() {
    let (code, stderr) = start_with("edition: ee\nadmin_config:\n  port: 8090\n  prot: 1\n");
    assert_eq!(code, Some(2));
    assert!(stderr.contains("prot") && stderr.contains("line 4"), "{stderr}");
}

#[test]
fn a_wrong_type_and_an_invalid_value_are_named() {
    let (code, stderr) = start_with("service_config:\n  insecure_port: eighty\n");
    assert_eq!(code, Some(2));
    assert!(stderr.contains("service_config.insecure_port"), "{stderr}");
    let (code, stderr) = start_with("admin_config:\n  address: not-an-ip\n");
    assert_eq!(code, Some(2));
    assert!(stderr.contains("admin_config.address"), "{stderr}");
}

#[test]
fn a_missing_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut process = Process::spawn(&common::binary(), &["--config=nowhere.yaml"], dir.path(), "bcs-api");
    assert_eq!(process.wait_exit(Duration::from_secs(30)), Some(2));
    assert!(process.stderr().contains("nowhere.yaml"), "{}", process.stderr());
}

#[test]
fn a_bad_dsn_is_named_without_its_password() {
    let (code, stderr) = start_with("core_database:\n  dsn: \"root:topsecretpw@tcp(127.0.0.1:99999)/db\"\n");
    assert_eq!(code, Some(1));
    assert!(stderr.contains("core_database.dsn"), "{stderr}");
    assert!(!stderr.contains("topsecretpw"), "{stderr}");
}

#[test]
fn an_unreachable_database_stops_the_start_without_its_password() {
    let port = bcs_testkit::free_port();
    let yaml = format!(
        "core_database:\n  dsn: \"root:topsecretpw@tcp(127.0.0.1:{port})/bke_core\"\nadmin_config:\n  port: {}\n",
        bcs_testkit::free_port()
    );
    let (code, stderr) = start_with(&yaml);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("cannot open the store"), "{stderr}");
    assert!(!stderr.contains("topsecretpw"), "{stderr}");
}

#[test]
fn a_taken_admin_port_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (code, stderr) = start_with(&format!("admin_config:\n  port: {port}\n  spawn_proxy: false\n"));
    assert_eq!(code, Some(1));
    assert!(stderr.contains(&format!("admin_config 127.0.0.1:{port}")), "{stderr}");
}

#[test]
fn a_snapshot_socket_directory_others_may_write_stops_the_start() {
    // Another user could put a socket of theirs at the path and hand the proxies its tables.
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared-run");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let yaml = format!(
        "admin_config:\n  port: {}\n  spawn_proxy: false\n  snapshot_socket: ./shared-run/bcs-api.sock\n",
        bcs_testkit::free_port()
    );
    std::fs::write(dir.path().join("bcs-api.yaml"), yaml).unwrap();
    let mut process = Process::spawn(&common::binary(), &["--config=bcs-api.yaml"], dir.path(), "bcs-api");
    assert_eq!(process.wait_exit(Duration::from_secs(30)), Some(1));
    let stderr = process.stderr();
    assert!(stderr.contains("admin_config.snapshot_socket") && stderr.contains("mode 777"), "{stderr}");
    assert!(!shared.join("bcs-api.sock").exists(), "no socket was made there");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_file_that_opens_none_of_the_stored_tokens_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let admin = common::Admin::start(dir.path(), &common::Options::default()).await;
    common::seed_flow(&admin, "kai", "sa-kai").await;
    drop(admin);
    // The host lost its key file: a start would make a new one and drop every cluster's token.
    let key = dir.path().join("data/secret.key");
    std::fs::remove_file(&key).unwrap();
    let mut process = Process::spawn(&common::binary(), &["--config=bcs-api.yaml"], dir.path(), "bcs-api");
    assert_eq!(process.wait_exit(Duration::from_secs(30)), Some(1));
    let stderr = process.stderr();
    assert!(stderr.contains("storage.secret_key_file") && stderr.contains("opens none"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_starting_at_once_on_a_fresh_mysql_database_all_come_up() {
    // On MySQL each DDL statement commits by itself: both instances run the first migration,
    // and the second's CREATE TABLE fails on the first's table; it must wait for the other
    // to record the migration, and then both store the same bootstrap token once.
    let token = "sharedBootstrapTokenStartingAtOnce12";
    for round in 0..3 {
        let db = bcs_testkit::mysql::MysqlDatabase::fresh("bcs_start_at_once");
        let options = || common::Options { dsn: db.go_dsn(), admin_token: token.into(), ..Default::default() };
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (first, second) = (options(), options());
        let (a, b) = tokio::join!(common::Admin::start(one.path(), &first), common::Admin::start(two.path(), &second));
        for admin in [&a, &b] {
            let (status, user) = admin.call(reqwest::Method::GET, "/rest/users/admin", Some(token), None).await;
            assert_eq!(status, 200, "round {round}: {user}\n{}", admin.process.stderr());
            assert_eq!(user["Name"], "admin", "round {round}: {user}");
        }
    }
}
