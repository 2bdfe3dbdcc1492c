//! deploy/prometheus/bcs-api-alerts.yml: it loads, its unit tests pass (promtool, from Debian's
//! prometheus package, which scripts/test-all installs), and every bcs_api_* series it names is
//! one the real binaries export, in the scrape job it names, with the labels its selector
//! matches on: a renamed metric or a label that never appears would leave an alert that can
//! never fire.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bcs_testkit::apiserver::{FakeApiserver, FakeOptions};
use bcs_testkit::zookeeper::ZooKeeper;
use common::Admin;
use reqwest::Method;
use serde_json::json;

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

fn promtool(args: &[&str]) -> String {
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(rules_dir())
        .output()
        .expect("promtool (Debian's prometheus package; scripts/test-all installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_alert_rules_load_and_each_fires_as_its_unit_test_says() {
    let checked = promtool(&["check", "rules", "bcs-api-alerts.yml"]);
    assert!(checked.contains("SUCCESS: 13 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "bcs-api-alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// A series name and the labels a selector or an exposition gives it (`job` aside).
type Series = BTreeMap<String, BTreeSet<String>>;

/// The label names of a selector's or a sample's `a="x",b=~"y"` (`job` left out).
fn label_names(matchers: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = matchers;
    while let Some(end) = rest.find(['=', '!']) {
        let name = rest[..end].trim().trim_start_matches(',').trim();
        if !name.is_empty() && name != "job" {
            names.insert(name.to_owned());
        }
        // Past the quoted value, whose `\"` and `\\` are escapes.
        let open = rest[end..].find('"').map_or(rest.len(), |i| end + i + 1);
        rest = closing_quote(&rest[open..]).map_or("", |close| &rest[open + close + 1..]);
    }
    names
}

/// Where the quoted value that `value` starts with ends (its closing `"`).
fn closing_quote(value: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i),
            _ => {}
        }
    }
    None
}

/// Every `bcs_api_*` series the rules' expressions select, with the labels they match on, by
/// the job they select it from. Each must name its job: bcs-api and bcs-api-proxy both export
/// some of the same names.
fn series_by_job() -> BTreeMap<String, Series> {
    let text = std::fs::read_to_string(rules_dir().join("bcs-api-alerts.yml")).unwrap();
    let rules: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let mut wanted: BTreeMap<String, Series> = BTreeMap::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let expr = rule["expr"].as_str().unwrap();
            for (at, _) in expr.match_indices("bcs_api_") {
                let rest = &expr[at..];
                let name_len = rest.find(|c: char| !(c.is_ascii_lowercase() || c == '_')).unwrap_or(rest.len());
                let (name, selector) = rest.split_at(name_len);
                let selector = selector.strip_prefix('{').and_then(|s| s.split_once('}')).map(|(s, _)| s);
                let job = selector
                    .and_then(|s| s.split(',').find_map(|m| m.trim().strip_prefix("job=\"")))
                    .and_then(|j| j.strip_suffix('"'))
                    .unwrap_or_else(|| panic!("{name} in {} names no job: {expr}", rule["alert"].as_str().unwrap()));
                let labels = label_names(selector.unwrap_or_default());
                wanted.entry(job.to_owned()).or_default().entry(name.to_owned()).or_default().extend(labels);
            }
        }
    }
    wanted
}

/// The series in a Prometheus text exposition, with every label name their samples carry.
fn exported(text: &str) -> Series {
    let mut series = Series::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = line[name_end..].strip_prefix('{').and_then(|l| l.rsplit_once('}')).map_or("", |(l, _)| l);
        series.entry(line[..name_end].to_owned()).or_default().extend(label_names(labels));
    }
    series
}

/// What `wanted` selects that `got` does not export: a name, or a label of a name.
fn missing(wanted: &Series, got: &Series) -> Vec<String> {
    let mut missing = Vec::new();
    for (name, labels) in wanted {
        match got.get(name) {
            None => missing.push(name.clone()),
            Some(have) => missing.extend(labels.difference(have).map(|l| format!("{name}{{{l}}}"))),
        }
    }
    missing
}

#[test]
fn selectors_and_samples_are_read_for_their_label_names() {
    assert_eq!(
        label_names(r#"job="bcs-api-proxy",cluster!~"admin|console", code=~"5..""#),
        BTreeSet::from(["cluster".to_owned(), "code".to_owned()])
    );
    let got = exported("# HELP x y\nbcs_api_a{cluster=\"c,=\\\"\",reason=\"tls\"} 1\nbcs_api_b 2\n");
    assert_eq!(got["bcs_api_a"], BTreeSet::from(["cluster".to_owned(), "reason".to_owned()]));
    assert!(got["bcs_api_b"].is_empty());
    let wanted = Series::from([("bcs_api_a".to_owned(), BTreeSet::from(["reasons".to_owned()]))]);
    assert_eq!(missing(&wanted, &got), ["bcs_api_a{reasons}"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_the_alert_rules_name_is_exported_by_the_real_binaries() {
    let wanted = series_by_job();
    assert_eq!(wanted.keys().map(String::as_str).collect::<Vec<_>>(), ["bcs-api", "bcs-api-proxy"]);
    let proxy = common::binary().with_file_name("bcs-api-proxy");
    assert!(proxy.exists(), "{} is missing: build it with `cargo build -p bcs-proxy`", proxy.display());

    // Everything the rules watch switched on: ZooKeeper, the RBAC sync, a supervised proxy, a
    // cluster that answers and one that refuses connections.
    let zk = ZooKeeper::start();
    let dir = tempfile::tempdir().unwrap();
    let certs = bcs_testkit::apiserver::CertPair::generate_for("bcs-gateway-ca", &["127.0.0.1"]);
    std::fs::write(dir.path().join("gateway.crt"), format!("{}{}", certs.cert_pem, certs.ca_pem)).unwrap();
    std::fs::write(dir.path().join("gateway.key"), &certs.key_pem).unwrap();
    let ports: Vec<u16> = (0..4).map(|_| bcs_testkit::free_port()).collect();
    let zk_config = format!("zk_config:\n  bcs_zookeeper: \"{}\"\n", zk.address());
    common::write_gateway_config(
        dir.path(),
        [ports[0], ports[1], ports[2], ports[3]],
        "  turn_on_conf: true\n  sync_interval_seconds: 3\n",
        "",
        &zk_config,
    );
    let admin = Admin::start_existing(dir.path(), ports[0], ports[1], String::new()).await;
    let user = admin.call(Method::POST, "/rest/users/", admin.admin(), Some(json!({"user_name": "dev"}))).await;
    let token = admin.call(Method::POST, &format!("/rest/users/{}/tokens", user.1["ID"]), admin.admin(), None).await;
    let user_token = token.1["Value"].as_str().unwrap().to_owned();
    let fake = FakeApiserver::start(FakeOptions::enforcing_rbac("alertClusterToken")).await;
    let refused = format!("https://127.0.0.1:{}", bcs_testkit::free_port());
    let mut paths = Vec::new();
    for (id, url, ca, cluster_token) in [
        ("k8s-up", fake.url(), fake.ca_pem(), fake.token()),
        ("k8s-gone", refused, common::CLUSTER_CA.into(), "t".into()),
    ] {
        let cluster = admin.call(Method::POST, "/rest/clusters", admin.admin(), Some(json!({"id": id}))).await;
        assert_eq!(cluster.0, 200, "{}", cluster.1);
        let cluster_id = cluster.1["id"].as_str().unwrap().to_owned();
        let rt = admin
            .call(Method::POST, &format!("/rest/clusters/{cluster_id}/register_tokens"), admin.admin(), None)
            .await;
        let report = json!({"register_token": rt.1[0]["token"], "server_addresses": url, "cacert_data": ca, "user_token": cluster_token});
        let put =
            admin.call(Method::PUT, &format!("/rest/clusters/{cluster_id}/credentials"), None, Some(report)).await;
        assert_eq!(put.0, 200, "{}", put.1);
        let client = admin
            .call(Method::GET, &format!("/rest/clusters/{cluster_id}/client_credentials"), Some(&user_token), None)
            .await;
        paths.push(client.1["server_address_path"].as_str().unwrap().trim_end_matches('/').to_owned());
    }
    let grant = json!({"user_name": "dev", "cluster_id": "*", "role": "cluster-readonly"});
    assert_eq!(admin.call(Method::POST, "/rest/rbac/grants", admin.admin(), Some(grant)).await.0, 200);

    let scrape = |port: u16| async move {
        match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut admin_series, mut proxy_series);
    loop {
        // A request to each cluster through the proxy's plain port: the refused one fails to connect.
        for path in &paths {
            let _ = client
                .get(format!("http://127.0.0.1:{}{path}/api", ports[1]))
                .bearer_auth(&user_token)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
        }
        admin_series = exported(&scrape(ports[0]).await);
        proxy_series = exported(&scrape(ports[3]).await);
        let missing: Vec<String> = missing(&wanted["bcs-api"], &admin_series)
            .into_iter()
            .chain(missing(&wanted["bcs-api-proxy"], &proxy_series))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "series (or labels) the alert rules select that the binaries do not export: {missing:?}\n{}",
            admin.process.stderr()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("bcs-api exports {:?}; bcs-api-proxy exports {:?}", wanted["bcs-api"], wanted["bcs-api-proxy"]);
}
