//! deploy/prometheus/alertmanager.example.yml: its inhibition rules, given to a real
//! Alertmanager (Debian's prometheus-alertmanager, which scripts/test-all installs) with the
//! alerts of several outages at once, hide each outage's echoes on the host of its cause and
//! nothing else; and deploy/prometheus/prometheus.example.yml, which puts the `host` label the
//! rules compare on every target, loads.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bcs_testkit::process::Process;
use serde_json::{json, Value};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

fn checked(tool: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(tool).args(args).current_dir(deploy_dir()).output().unwrap_or_else(|e| {
        panic!("{tool} (Debian's prometheus and prometheus-alertmanager; scripts/test-all installs them): {e}")
    });
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{tool} {args:?}:\n{text}");
    text
}

#[test]
fn the_example_configurations_load() {
    let prometheus = checked("promtool", &["check", "config", "prometheus.example.yml"]);
    assert!(prometheus.contains("SUCCESS: 20 rules found"), "{prometheus}");
    let alertmanager = checked("amtool", &["check-config", "alertmanager.example.yml"]);
    assert!(alertmanager.contains("4 inhibit rules"), "{alertmanager}");
}

/// An alert as Prometheus sends it; Alertmanager has it fire from now for `resolve_timeout`.
fn alert(name: &str, job: &str, host: &str) -> Value {
    json!({"labels": {"alertname": name, "job": job, "host": host, "instance": format!("{host}:8080")}})
}

#[tokio::test]
async fn one_outage_pages_once_and_other_hosts_are_never_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let port = bcs_testkit::free_port();
    let config = deploy_dir().join("alertmanager.example.yml");
    let listen = format!("--web.listen-address=127.0.0.1:{port}");
    let storage = format!("--storage.path={}", dir.path().join("data").display());
    let config_arg = format!("--config.file={}", config.display());
    let _alertmanager = Process::spawn(
        Path::new("prometheus-alertmanager"),
        &[&config_arg, &listen, &storage, "--cluster.listen-address="],
        dir.path(),
        "alertmanager",
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let started = Instant::now();
    while !http.get(format!("{base}/-/ready")).send().await.is_ok_and(|r| r.status().is_success()) {
        assert!(started.elapsed() < Duration::from_secs(30), "Alertmanager never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // (alert, its job, its host, hidden by which alert on the same host, if any)
    let cases: &[(&str, &str, &str, Option<&str>)] = &[
        // bcs-api down on a: its proxy's cut-off is the echo.
        ("BcsApiDown", "bcs-api", "a", None),
        ("BcsApiProxyCutOffFromAdmin", "bcs-api-proxy", "a", Some("BcsApiDown")),
        // A proxy cut off on b, whose bcs-api is up: its own cause, paged.
        ("BcsApiProxyCutOffFromAdmin", "bcs-api-proxy", "b", None),
        // The proxy of c is not running: its down target, restarts and absence are the echoes;
        // bcs-api on c being down as well is not one.
        ("BcsApiProxyNotRunning", "bcs-api", "c", None),
        ("BcsApiDown", "bcs-api-proxy", "c", Some("BcsApiProxyNotRunning")),
        ("BcsApiProxyRestarting", "bcs-api", "c", Some("BcsApiProxyNotRunning")),
        ("BcsApiNoProxyConnected", "bcs-api", "c", Some("BcsApiProxyNotRunning")),
        ("BcsApiDown", "bcs-api", "c", None),
        // The proxy of d is down (not scraped): bcs-api seeing no proxy is the echo.
        ("BcsApiDown", "bcs-api-proxy", "d", None),
        ("BcsApiNoProxyConnected", "bcs-api", "d", Some("BcsApiDown")),
        // No proxy on e, for no reason another alert gives: paged.
        ("BcsApiNoProxyConnected", "bcs-api", "e", None),
        ("BcsApiProxyRestarting", "bcs-api", "e", None),
    ];
    let alerts: Vec<Value> = cases.iter().map(|(name, job, host, _)| alert(name, job, host)).collect();
    let posted = http.post(format!("{base}/api/v2/alerts")).json(&alerts).send().await.unwrap();
    assert!(posted.status().is_success(), "{}", posted.text().await.unwrap());

    // The inhibitor takes new alerts in asynchronously: ask until every alert is judged as
    // expected, or show the last answer.
    let key = |a: &Value, label: &str| a["labels"][label].as_str().unwrap_or_default().to_owned();
    let started = Instant::now();
    loop {
        let got: Vec<Value> = http.get(format!("{base}/api/v2/alerts")).send().await.unwrap().json().await.unwrap();
        let fingerprints: std::collections::HashMap<String, String> =
            got.iter().map(|a| (a["fingerprint"].as_str().unwrap().to_owned(), key(a, "alertname"))).collect();
        let last = cases
            .iter()
            .map(|(name, job, host, _)| {
                let found = got
                    .iter()
                    .find(|a| key(a, "alertname") == *name && key(a, "job") == *job && key(a, "host") == *host);
                let hidden_by = found
                    .and_then(|a| a["status"]["inhibitedBy"].as_array())
                    .map(|by| by.iter().filter_map(|f| fingerprints.get(f.as_str()?).cloned()).collect::<Vec<_>>());
                let state = found.map(|a| a["status"]["state"].as_str().unwrap_or_default().to_owned());
                (format!("{name}{{job={job},host={host}}}"), state, hidden_by)
            })
            .collect::<Vec<_>>();
        let as_expected = cases.iter().zip(&last).all(|((_, _, _, by), (_, state, hidden_by))| match by {
            None => state.as_deref() == Some("active"),
            Some(source) => {
                state.as_deref() == Some("suppressed") && hidden_by.as_deref() == Some(&[source.to_string()][..])
            }
        });
        if as_expected {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "expected {:#?}\ngot {last:#?}",
            cases.iter().map(|(n, j, h, by)| format!("{n}{{job={j},host={h}}}: {by:?}")).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
