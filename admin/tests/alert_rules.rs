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
    assert!(checked.contains("SUCCESS: 20 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "bcs-api-alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// Series names, each with the labels a selector matches on or an exposition's samples carry,
/// each label with the values it must have or has (`job` aside).
type Series = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// The matchers of a selector's or a sample's `a="x",b=~"y|z"`: (label, operator, raw value).
fn matchers(text: &str) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(end) = rest.find(['=', '!']) {
        let label = rest[..end].trim().trim_start_matches(',').trim().to_owned();
        let Some(open) = rest[end..].find('"').map(|i| end + i + 1) else { break };
        let operator = rest[end..open - 1].trim().to_owned();
        let Some(close) = closing_quote(&rest[open..]) else { break };
        found.push((label, operator, rest[open..open + close].to_owned()));
        rest = &rest[open + close + 1..];
    }
    found
}

/// Where the quoted value that `value` starts with ends (its closing `"`; `\"` and `\\` are
/// escapes).
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

/// The values a matcher needs to find: `="x"` needs x, `=~"x|y"` of plain words needs each;
/// a pattern or a negative matcher needs only the label.
fn required_values(operator: &str, value: &str) -> BTreeSet<String> {
    let plain = |v: &str| v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match operator {
        "=" => BTreeSet::from([value.to_owned()]),
        "=~" if value.split('|').all(plain) => value.split('|').map(str::to_owned).collect(),
        _ => BTreeSet::new(),
    }
}

/// The labels an expression groups or matches on (`by (...)`, `on (...)`), `job` and
/// `instance` aside (the scrape adds them).
fn grouping_labels(expr: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    for keyword in ["by (", "on ("] {
        for (at, _) in expr.match_indices(keyword) {
            let list = &expr[at + keyword.len()..];
            let list = &list[..list.find(')').unwrap_or(list.len())];
            labels.extend(
                list.split(',').map(str::trim).filter(|l| !["job", "instance", ""].contains(l)).map(str::to_owned),
            );
        }
    }
    labels
}

/// A rule's name, the labels it groups or matches on, and the (job, series) it selects.
type Grouped = (String, BTreeSet<String>, Vec<(String, String)>);

/// Every `bcs_api_*` series the rules' expressions select, with the labels and values they
/// match on, by the job they select it from. Each must name its job: bcs-api and bcs-api-proxy
/// both export some of the same names. The labels a rule groups or matches on must be on
/// at least one of the series it selects (`$labels` and `on (...)` read them).
fn series_by_job() -> (BTreeMap<String, Series>, Vec<Grouped>) {
    let text = std::fs::read_to_string(rules_dir().join("bcs-api-alerts.yml")).unwrap();
    let rules: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let mut wanted: BTreeMap<String, Series> = BTreeMap::new();
    let mut grouped = Vec::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let alert = rule["alert"].as_str().unwrap().to_owned();
            let expr = rule["expr"].as_str().unwrap();
            let mut selected = Vec::new();
            for (at, _) in expr.match_indices("bcs_api_") {
                let rest = &expr[at..];
                let name_len = rest.find(|c: char| !(c.is_ascii_lowercase() || c == '_')).unwrap_or(rest.len());
                let (name, selector) = rest.split_at(name_len);
                let selector = selector.strip_prefix('{').map(|s| &s[..closing_brace(s)]).unwrap_or_default();
                let found = matchers(selector);
                let job = found
                    .iter()
                    .find(|(label, operator, _)| label == "job" && operator == "=")
                    .map(|(_, _, job)| job.clone())
                    .unwrap_or_else(|| panic!("{name} in {alert} names no job: {expr}"));
                let labels = wanted.entry(job.clone()).or_default().entry(name.to_owned()).or_default();
                for (label, operator, value) in found.into_iter().filter(|(label, _, _)| label != "job") {
                    labels.entry(label).or_default().extend(required_values(&operator, &value));
                }
                selected.push((job, name.to_owned()));
            }
            grouped.push((alert, grouping_labels(expr), selected));
        }
    }
    (wanted, grouped)
}

/// Where the selector that `s` starts inside of ends (its `}` outside quotes).
fn closing_brace(s: &str) -> usize {
    let mut rest = 0;
    loop {
        let next = s[rest..].find(['"', '}']).map(|i| rest + i).unwrap_or(s.len());
        if next == s.len() || s.as_bytes()[next] == b'}' {
            return next;
        }
        rest = next + 1 + closing_quote(&s[next + 1..]).unwrap_or(s.len() - next - 1) + 1;
    }
}

/// The series in a Prometheus text exposition, with every label and value their samples carry.
fn exported(text: &str) -> Series {
    let mut series = Series::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = line[name_end..].strip_prefix('{').and_then(|l| l.rsplit_once('}')).map_or("", |(l, _)| l);
        let entry = series.entry(line[..name_end].to_owned()).or_default();
        for (label, _, value) in matchers(labels) {
            entry.entry(label).or_default().insert(value);
        }
    }
    series
}

/// What `wanted` selects that `got` does not export: a name, a label, or a label's value.
fn missing(wanted: &Series, got: &Series) -> Vec<String> {
    let mut missing = Vec::new();
    for (name, labels) in wanted {
        let Some(have) = got.get(name) else {
            missing.push(name.clone());
            continue;
        };
        for (label, values) in labels {
            match have.get(label) {
                None => missing.push(format!("{name}{{{label}}}")),
                Some(seen) => missing.extend(values.difference(seen).map(|v| format!("{name}{{{label}=\"{v}\"}}"))),
            }
        }
    }
    missing
}

#[test]
fn selectors_and_samples_are_read_for_their_labels_and_values() {
    assert_eq!(
        matchers(r#"job="bcs-api-proxy",cluster!~"admin|console", code=~"5..""#),
        [
            ("job".to_owned(), "=".to_owned(), "bcs-api-proxy".to_owned()),
            ("cluster".to_owned(), "!~".to_owned(), "admin|console".to_owned()),
            ("code".to_owned(), "=~".to_owned(), "5..".to_owned()),
        ]
    );
    assert_eq!(required_values("=~", "failed|invalid"), BTreeSet::from(["failed".to_owned(), "invalid".to_owned()]));
    assert!(required_values("=~", "5..").is_empty() && required_values("!~", "admin").is_empty());
    assert_eq!(closing_brace(r#"a="}",b="c"} > 0"#), 11);
    assert_eq!(
        grouping_labels("sum by (job, cluster) (x) and on (job, instance, cluster) y"),
        BTreeSet::from(["cluster".to_owned()])
    );
    let got = exported("# HELP x y\nbcs_api_a{cluster=\"c,=\\\"\",reason=\"tls\"} 1\nbcs_api_b 2\n");
    assert_eq!(got["bcs_api_a"]["reason"], BTreeSet::from(["tls".to_owned()]));
    assert!(got["bcs_api_b"].is_empty());
    let wanted = Series::from([(
        "bcs_api_a".to_owned(),
        BTreeMap::from([
            ("reasons".to_owned(), BTreeSet::new()),
            ("reason".to_owned(), BTreeSet::from(["connect".to_owned()])),
        ]),
    )]);
    assert_eq!(missing(&wanted, &got), ["bcs_api_a{reason=\"connect\"}", "bcs_api_a{reasons}"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_the_alert_rules_name_is_exported_by_the_real_binaries() {
    let (wanted, grouped) = series_by_job();
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
    // No permission subscription is configured here: not wanted, so its alert stays quiet.
    let admin_text = scrape(ports[0]).await;
    assert!(admin_text.lines().any(|l| l == "bcs_api_rbac_subscription_wanted 0"), "{admin_text}");
    // The labels each rule groups or matches on are on a series it selects.
    for (alert, labels, selected) in grouped {
        for label in labels {
            let carried = selected.iter().any(|(job, name)| {
                let got = if job == "bcs-api" { &admin_series } else { &proxy_series };
                got.get(name).is_some_and(|have| have.contains_key(&label))
            });
            assert!(carried, "{alert} groups or matches on {label}, which none of {selected:?} carries");
        }
    }
    println!("bcs-api exports {:?}; bcs-api-proxy exports {:?}", wanted["bcs-api"], wanted["bcs-api-proxy"]);
}
