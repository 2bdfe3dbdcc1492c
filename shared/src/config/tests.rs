use super::*;

const SEED: &str = include_str!("../../fixtures/seed-bcs-api.yaml");
const DEPLOY: &str = include_str!("../../../deploy/bcs-api.yaml");
const DEV: &str = include_str!("../../../deploy/bcs-api.dev.yaml");

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("test.yaml"), text)
}

fn error_of(text: &str) -> String {
    parse(text).expect_err("config should be refused").to_string()
}

#[test]
fn the_seed_sample_loads_as_written() {
    let c = parse(SEED).unwrap();
    assert_eq!(c.edition.as_deref(), Some("ee"));
    assert_eq!(c.service_config.port, Some(8443));
    assert_eq!(c.service_config.insecure_port, Some(8080));
    assert_eq!(c.metric_config.metric_port, Some(8087));
    assert_eq!(non_empty(&c.zk_config.bcs_zookeeper), None);
    assert_eq!(non_empty(&c.cert_config.ca_file), None);
    assert_eq!(c.log_config.v, Some(0));
    assert_eq!(c.consoleproxy_port, Some(8080));
    assert_eq!(c.bkiam_auth.bkiam_auth_token_whitelist.len(), 1);
    assert_eq!(
        c.core_database.dsn.as_ref().unwrap().expose(),
        "root:xx@tcp(x.x.x.x:3306)/bke_core?charset=utf8mb4&parseTime=True&loc=Local"
    );
    assert_eq!(c.bootstrap_users.len(), 1);
    assert_eq!(c.bootstrap_users[0].name, "admin");
    assert_eq!(c.bootstrap_users[0].is_super_user, Some(true));
    assert_eq!(c.bootstrap_users[0].tokens.len(), 1);
    assert!(c.bootstrap_users[0].tokens[0].as_ref().unwrap().is_empty());
    assert!(!c.turn_on_rbac());
    // No certificate configured: clients are pointed at the plain listener.
    assert_eq!(c.external_url(), "http://127.0.0.1:8080");
}

#[test]
fn the_shipped_samples_load() {
    let deploy = parse(DEPLOY).unwrap();
    assert_eq!(deploy.admin_address(), "127.0.0.1:8090");
    let dev = parse(DEV).unwrap();
    assert!(dev.core_database.dsn.is_none() || dev.core_database.dsn.as_ref().unwrap().is_empty());
    // Loopback only, the metrics listener included.
    assert_eq!(dev.local_config.local_ip.as_deref(), Some("127.0.0.1"));
}

#[test]
fn an_empty_file_is_all_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.admin_address(), "127.0.0.1:8090");
    assert_eq!(c.data_dir(), PathBuf::from("./data"));
    assert_eq!(c.secret_key_file(), PathBuf::from("./data/secret.key"));
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let e = error_of("edition: ee\nservice_config:\n  port: 8443\n  prot: 1\n");
    assert!(e.contains("prot"), "{e}");
    assert!(e.contains("line 4"), "{e}");
    let e = error_of("admin_confg:\n  port: 1\n");
    assert!(e.contains("admin_confg"), "{e}");
    let e = error_of("bkiam_auth:\n  bkiam_auth_hots: x\n");
    assert!(e.contains("bkiam_auth_hots"), "{e}");
}

#[test]
fn a_wrong_type_is_named_with_its_key() {
    let e = error_of("service_config:\n  port: eighty\n");
    assert!(e.contains("service_config.port"), "{e}");
    assert!(e.contains("line 2"), "{e}");
    let e = error_of("rbac:\n  turn_on_rbac: maybe\n");
    assert!(e.contains("rbac.turn_on_rbac"), "{e}");
    let e = error_of("admin_config:\n  port: 70000\n");
    assert!(e.contains("admin_config.port"), "{e}");
}

#[test]
fn invalid_values_are_named() {
    let e = error_of("admin_config:\n  port: 0\n");
    assert!(e.contains("admin_config.port"), "{e}");
    let e = error_of("admin_config:\n  address: localhost.example\n");
    assert!(e.contains("admin_config.address"), "{e}");
    let e = error_of("edition: enterprise\n");
    assert!(e.contains("edition"), "{e}");
    let e = error_of("proxy_config:\n  io_driver: kqueue\n");
    assert!(e.contains("proxy_config.io_driver"), "{e}");
    let e = error_of("log_config:\n  log_format: xml\n");
    assert!(e.contains("log_config.log_format"), "{e}");
    let e = error_of("admin_config:\n  external_url: gateway:8443\n");
    assert!(e.contains("admin_config.external_url"), "{e}");
    let e = error_of("bootstrap_users:\n  - name: a\n  - name: a\n");
    assert!(e.contains("listed twice"), "{e}");
}

#[test]
fn a_value_of_the_wrong_type_is_not_quoted_back() {
    // A token written where a list belongs, once plain and once with quotes to escape.
    for (text, secret) in [
        ("bootstrap_users:\n  - name: ops\n    tokens: s3cr3t-token-value\n", "s3cr3t-token-value"),
        ("bkiam_auth:\n  bkiam_auth_token_whitelist: \"tok\\\"en-xyz\"\n", "en-xyz"),
        ("bootstrap_users:\n  - name: ops\n    tokens: 98127364501\n", "98127364501"),
        ("bootstrap_users:\n  - name: ops\n    tokens: 981.27364501\n", "27364501"),
    ] {
        let e = error_of(text);
        assert!(!e.contains(secret), "{e}");
        assert!(e.contains("invalid type: a") && e.contains("expected a sequence"), "{e}");
    }
}

#[test]
fn bootstrap_tokens_never_print() {
    let c = parse("bootstrap_users:\n  - name: ops\n    tokens: [\"s3cr3t-token-value\"]\n").unwrap();
    let shown = format!("{c:?}");
    assert!(!shown.contains("s3cr3t-token-value"), "{shown}");
}

#[test]
fn external_url_prefers_the_configured_one_and_tls() {
    let c = parse("admin_config:\n  external_url: https://gw.example:443/\n").unwrap();
    assert_eq!(c.external_url(), "https://gw.example:443");
    let c = parse(
        "service_config:\n  address: 0.0.0.0\n  port: 9443\ncert_config:\n  server_cert_file: c.pem\n  server_key_file: k.pem\nlocal_config:\n  local_ip: 10.0.0.5\n",
    )
    .unwrap();
    assert_eq!(c.external_url(), "https://10.0.0.5:9443");
}

#[test]
fn rbac_data_loads_and_bad_entries_name_the_key() {
    let c = parse(
        "rbac:\n  turn_on_conf: true\n  sync_interval_seconds: 5\n  data:\n    - user_name: plain:alice\n      cluster_id: plain-k8s-1\n      roles: [cluster-readonly, services-view]\n",
    )
    .unwrap();
    assert_eq!(c.rbac.data.len(), 1);
    assert_eq!(c.rbac.data[0].user_name, "plain:alice");
    assert_eq!(c.rbac.data[0].roles, vec!["cluster-readonly", "services-view"]);
    assert_eq!(c.rbac.sync_interval_seconds, Some(5));
    let e = error_of("rbac:\n  data:\n    - user_name: a\n      cluster_id: c\n      roles: [cluster-admin]\n");
    assert!(e.contains("rbac.data.roles") && e.contains("cluster-admin"), "{e}");
    let e = error_of("rbac:\n  data:\n    - user_name: \"\"\n      cluster_id: c\n      roles: []\n");
    assert!(e.contains("rbac.data.user_name"), "{e}");
    let e = error_of("rbac:\n  data:\n    - user_name: a\n      cluster: c\n");
    assert!(e.contains("unknown field `cluster`"), "{e}");
    let e = error_of("rbac:\n  sync_interval_seconds: 0\n");
    assert!(e.contains("rbac.sync_interval_seconds"), "{e}");
}
