//! The real `bcs-kube-agent` against the test kit's fake apiserver and a fake bcs-api: what it
//! reports, when, how it retries, what it logs (never a token), its metrics and its exit.
mod common;

use std::time::{Duration, Instant};

use bcs_testkit::apiserver::{CertPair, FakeApiserver, FakeOptions};
use common::{get, metric, spawn_agent, terminate, wait_metric, FakeGateway, REGISTER_TOKEN};

const T: Duration = Duration::from_secs(20);
const SA_TOKEN: &str = "serviceAccountTokenOne";

/// A service-account directory (token, ca.crt) for `fake`.
fn service_account(dir: &std::path::Path, fake: &FakeApiserver) -> std::path::PathBuf {
    let sa = dir.join("sa");
    std::fs::create_dir_all(&sa).unwrap();
    std::fs::write(sa.join("token"), fake.token()).unwrap();
    std::fs::write(sa.join("ca.crt"), fake.ca_pem()).unwrap();
    sa
}

struct InCluster {
    dir: tempfile::TempDir,
    fake: FakeApiserver,
    gateway: FakeGateway,
    metrics_port: u16,
}

impl InCluster {
    async fn new() -> InCluster {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeApiserver::start(FakeOptions::with_token(SA_TOKEN)).await;
        service_account(dir.path(), &fake);
        InCluster { dir, fake, gateway: FakeGateway::start().await, metrics_port: bcs_testkit::free_port() }
    }

    fn spawn(&self, extra: &[&str], register_token: &str) -> bcs_testkit::process::Process {
        let listen = format!("--listen-addr=127.0.0.1:{}", self.metrics_port);
        let bke = format!("--bke-address={}", self.gateway.url());
        let mut args = vec![bke.as_str(), "--cluster-id=bcs-k8s-001-AbCd1234", "--periodsync=1", listen.as_str()];
        args.extend_from_slice(extra);
        let sa = self.dir.path().join("sa");
        let port = self.fake.address().port().to_string();
        spawn_agent(
            self.dir.path(),
            &args,
            &[
                ("REGISTER_TOKEN", register_token),
                ("SERVER_CERT", &self.gateway.certs.ca_pem),
                ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
                ("KUBERNETES_SERVICE_PORT", &port),
                ("BCS_AGENT_SERVICE_ACCOUNT_DIR", sa.to_str().unwrap()),
            ],
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_cluster_it_reports_the_reachable_endpoints_sorted_and_a_rotated_token() {
    let env = InCluster::new().await;
    // Endpoints list the fake itself, a second apiserver, and an address where nothing
    // listens (refused three times, then dropped).
    let me = env.fake.address();
    let second = FakeApiserver::start(FakeOptions::with_token(SA_TOKEN)).await;
    let closed: std::net::SocketAddr = format!("127.0.0.1:{}", bcs_testkit::free_port()).parse().unwrap();
    env.fake.set_endpoint_addresses(&[second.address(), closed, me]);
    let started = Instant::now();
    let mut agent = env.spawn(&[], REGISTER_TOKEN);

    let first = env.gateway.wait_for(1, T).await.remove(0);
    println!("first report {:?} after start", started.elapsed());
    assert_eq!(first.method, "PUT");
    assert_eq!(first.path, "/rest/clusters/bcs-k8s-001-AbCd1234/credentials");
    assert_eq!(first.body["register_token"], REGISTER_TOKEN);
    assert_eq!(first.body["user_token"], SA_TOKEN);
    assert_eq!(first.body["cacert_data"], env.fake.ca_pem());
    // Sorted, joined by ';', the unreachable one left out.
    let mut expected = [env.fake.url(), second.url()];
    expected.sort();
    assert_eq!(first.body["server_addresses"], expected.join(";"));
    assert!(first.headers.iter().any(|(n, v)| n == "content-type" && v == "application/json"));
    assert!(!first.headers.iter().any(|(n, _)| n == "authorization"), "the register token is in the body only");
    // It read the Endpoints with its service-account token.
    let reads = env.fake.requests_matching("/api/v1/namespaces/default/endpoints/kubernetes");
    assert!(!reads.is_empty());
    assert_eq!(reads[0].header_all("authorization"), vec![format!("Bearer {SA_TOKEN}")]);

    // The token file is rotated (and the apiserver accepts only the new token): the next
    // report carries it, with no restart.
    std::fs::write(env.dir.path().join("sa/token"), "serviceAccountTokenTwo\n").unwrap();
    env.fake.set_token("serviceAccountTokenTwo");
    let deadline = Instant::now() + T;
    loop {
        if env.gateway.received().iter().any(|r| r.body["user_token"] == "serviceAccountTokenTwo") {
            break;
        }
        assert!(Instant::now() < deadline, "the rotated token was never reported; {}", agent.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The gateway may have answered before the agent counted it: wait for the count.
    let text = wait_metric(env.metrics_port, "bcs_kube_agent_reports_sent_total", 2.0, T).await;
    assert!(metric(&text, "bcs_kube_agent_last_success_timestamp_seconds").unwrap() > 1.6e9, "{text}");
    assert_eq!(metric(&text, "bcs_kube_agent_reported_addresses"), Some(2.0), "{text}");
    assert_eq!(metric(&text, "bcs_kube_agent_reports_failed_total{reason=\"rejected\"}"), Some(0.0), "{text}");
    assert_eq!(get(env.metrics_port, "/healthz").await.0, 200);
    assert_eq!(get(env.metrics_port, "/readyz").await.0, 200);

    assert_eq!(terminate(&mut agent), Some(0), "SIGTERM stops it cleanly; {}", agent.stderr());
    let logs = agent.stderr();
    for secret in [REGISTER_TOKEN, SA_TOKEN, "serviceAccountTokenTwo"] {
        assert!(!logs.contains(secret), "a token was logged:\n{logs}");
    }
    assert!(logs.contains("SIGTERM"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_report_is_logged_with_the_message_and_retried_every_period_without_exiting() {
    let env = InCluster::new().await;
    env.gateway.answer_with(
        401,
        r#"{"code_name":"UNAUTHORIZED","message":"errcode: 1405059, the register token of cluster bcs-k8s-001-AbCd1234 is not valid"}"#,
    );
    let mut agent = env.spawn(&[], "wrongRegisterTokenNeverLogged");
    let started = Instant::now();
    let text = wait_metric(env.metrics_port, "bcs_kube_agent_reports_failed_total{reason=\"rejected\"}", 3.0, T).await;
    // One per period (1 s), not a tight loop.
    let reports = env.gateway.received().len();
    assert!(reports <= 2 + started.elapsed().as_secs() as usize, "{reports} reports in {:?}", started.elapsed());
    assert_eq!(get(env.metrics_port, "/readyz").await.0, 503);
    assert_eq!(metric(&text, "bcs_kube_agent_reports_sent_total"), Some(0.0), "{text}");

    // It recovers when the gateway accepts again.
    env.gateway.answer_with(200, "{}");
    let deadline = Instant::now() + T;
    while get(env.metrics_port, "/readyz").await.0 != 200 {
        assert!(Instant::now() < deadline, "never accepted; {}", agent.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(terminate(&mut agent), Some(0));
    let logs = agent.stderr();
    assert!(logs.contains("UNAUTHORIZED") && logs.contains("is not valid"), "{logs}");
    assert!(!logs.contains("wrongRegisterTokenNeverLogged") && !logs.contains(SA_TOKEN), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_or_a_timeout_from_in_front_of_bcs_api_is_retried_not_a_refusal() {
    let env = InCluster::new().await;
    let mut agent = env.spawn(&[], REGISTER_TOKEN);
    env.gateway.wait_for(1, T).await;
    wait_metric(env.metrics_port, "bcs_kube_agent_reports_sent_total", 1.0, T).await;
    assert_eq!(get(env.metrics_port, "/readyz").await.0, 200);
    let counted = "bcs_kube_agent_reports_failed_total{reason=\"server_error\"}";
    let mut failed = 0.0;
    for status in [429, 408] {
        env.gateway.answer_with(status, "<html>slow down</html>");
        let text = wait_metric(env.metrics_port, counted, failed + 1.0, T).await;
        failed = metric(&text, counted).unwrap();
        assert_eq!(metric(&text, "bcs_kube_agent_reports_failed_total{reason=\"rejected\"}"), Some(0.0), "{text}");
        assert_eq!(get(env.metrics_port, "/readyz").await.0, 200, "{status} is not a refusal");
    }
    assert_eq!(terminate(&mut agent), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_errors_back_off_and_the_agent_reports_once_bcs_api_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeApiserver::start(FakeOptions::with_token(SA_TOKEN)).await;
    let sa = service_account(dir.path(), &fake);
    let certs = CertPair::generate_for("late-gateway-ca", &["127.0.0.1"]);
    let gateway_port = bcs_testkit::free_port();
    let metrics_port = bcs_testkit::free_port();
    let port = fake.address().port().to_string();
    let mut agent = spawn_agent(
        dir.path(),
        &[
            &format!("--bke-address=https://127.0.0.1:{gateway_port}"),
            "--cluster-id=c1",
            "--periodsync=60",
            &format!("--listen-addr=127.0.0.1:{metrics_port}"),
        ],
        &[
            ("REGISTER_TOKEN", REGISTER_TOKEN),
            ("SERVER_CERT", &certs.ca_pem),
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", &port),
            ("BCS_AGENT_SERVICE_ACCOUNT_DIR", sa.to_str().unwrap()),
        ],
    );
    // Nothing listens: retries after 1 s, 2 s, 4 s ... (not after the 60 s period).
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (_, text) = get(metrics_port, "/metrics").await;
    let failed = metric(&text, "bcs_kube_agent_reports_failed_total{reason=\"network\"}").unwrap();
    assert!((2.0..=4.0).contains(&failed), "3 attempts in 3.5 s with backoff 1, 2: {failed}\n{text}");
    let gateway = FakeGateway::start_on(gateway_port, certs).await;
    let got = gateway.wait_for(1, T).await;
    assert_eq!(got[0].body["user_token"], SA_TOKEN);
    assert_eq!(terminate(&mut agent), Some(0));
    assert!(!agent.stderr().contains(REGISTER_TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bcs_api_is_trusted_only_through_server_cert_unless_insecure_skip_verify() {
    let env = InCluster::new().await;
    // SERVER_CERT names another CA than the one that signed the gateway's certificate.
    let other = CertPair::generate("not-the-gateway-ca");
    let dir = env.dir.path();
    let port = env.fake.address().port().to_string();
    let sa = dir.join("sa");
    let base_env = |server_cert: &'static str| -> Vec<(&'static str, String)> {
        vec![
            ("REGISTER_TOKEN", REGISTER_TOKEN.to_owned()),
            ("SERVER_CERT", server_cert.to_owned()),
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1".to_owned()),
            ("KUBERNETES_SERVICE_PORT", port.clone()),
            ("BCS_AGENT_SERVICE_ACCOUNT_DIR", sa.to_str().unwrap().to_owned()),
        ]
    };
    let wrong_ca: &'static str = Box::leak(other.ca_pem.clone().into_boxed_str());
    let vars = base_env(wrong_ca);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let bke = format!("--bke-address={}", env.gateway.url());
    let listen = format!("--listen-addr=127.0.0.1:{}", env.metrics_port);
    let mut agent = spawn_agent(dir, &[&bke, "--cluster-id=c1", "--periodsync=1", &listen], &vars);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(env.gateway.received().is_empty(), "nothing reaches a gateway SERVER_CERT does not vouch for");
    let (_, text) = get(env.metrics_port, "/metrics").await;
    assert!(metric(&text, "bcs_kube_agent_reports_failed_total{reason=\"network\"}").unwrap() >= 1.0, "{text}");
    assert_eq!(terminate(&mut agent), Some(0));
    assert!(agent.stderr().contains("TLS handshake"), "{}", agent.stderr());

    // --insecureSkipVerify: accepted without checking.
    let mut agent =
        spawn_agent(dir, &[&bke, "--cluster-id=c1", "--periodsync=1", &listen, "--insecureSkipVerify"], &vars);
    env.gateway.wait_for(1, T).await;
    assert_eq!(terminate(&mut agent), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_proxy_addresses_are_reported_instead_of_the_endpoints() {
    let env = InCluster::new().await;
    let mut agent =
        env.spawn(&["--external-proxy-addresses=https://lb.example.com:443;https://10.1.1.1:6443"], REGISTER_TOKEN);
    let got = env.gateway.wait_for(1, T).await;
    assert_eq!(got[0].body["server_addresses"], "https://lb.example.com:443;https://10.1.1.1:6443");
    assert!(env.fake.requests_matching("/api/v1/namespaces/default/endpoints").is_empty());
    assert_eq!(terminate(&mut agent), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_apiserver_is_retried_and_nothing_is_reported() {
    let env = InCluster::new().await;
    // The Endpoints list only an address where nothing listens.
    let closed: std::net::SocketAddr = format!("127.0.0.1:{}", bcs_testkit::free_port()).parse().unwrap();
    env.fake.set_endpoint_addresses(&[closed]);
    let mut agent = env.spawn(&[], REGISTER_TOKEN);
    wait_metric(env.metrics_port, "bcs_kube_agent_reports_failed_total{reason=\"no_address\"}", 1.0, T).await;
    assert!(env.gateway.received().is_empty(), "an empty address list is never sent");
    // The apiserver comes back in the Endpoints: the next try reports it.
    env.fake.set_endpoint_addresses(&[env.fake.address()]);
    let got = env.gateway.wait_for(1, T).await;
    assert_eq!(got[0].body["server_addresses"], env.fake.url());
    assert_eq!(terminate(&mut agent), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_that_stops_answering_stays_reported_two_reports_and_one_the_endpoints_drop_goes_at_once() {
    // Each change of the reported addresses gives the cluster new credentials at bcs-api (and
    // a new version to every proxy): one lost handshake must not change them twice.
    let env = InCluster::new().await;
    let me = env.fake.address();
    let second = FakeApiserver::start(FakeOptions::with_token(SA_TOKEN)).await;
    let (second_address, second_url) = (second.address(), second.url());
    env.fake.set_endpoint_addresses(&[me, second_address]);
    let mut agent = env.spawn(&[], REGISTER_TOKEN);
    let mut both = [env.fake.url(), second_url.clone()];
    both.sort();
    let both = both.join(";");
    assert_eq!(env.gateway.wait_for(1, T).await[0].body["server_addresses"], both);

    // The second master stops answering (still listed): the two reports after the one that
    // saw it answer last still carry it, the third does not.
    drop(second);
    let answered_last = env.gateway.received().len();
    let reports = env.gateway.wait_for(answered_last + 3, Duration::from_secs(40)).await;
    let addresses: Vec<&str> = reports[answered_last..answered_last + 3]
        .iter()
        .map(|r| r.body["server_addresses"].as_str().unwrap())
        .collect();
    // A report already under way when it stopped may have seen it answer.
    let kept = addresses.iter().take_while(|a| **a == both).count();
    assert!((2..=3).contains(&kept), "kept in {kept} reports: {addresses:?}; {}", agent.stderr());
    let after = env.gateway.wait_for(answered_last + kept + 1, Duration::from_secs(20)).await;
    assert_eq!(after[answered_last + kept].body["server_addresses"], env.fake.url(), "then left out");

    // It answers again and is reported; then the Endpoints drop it: left out at once.
    let back = FakeApiserver::start_on(second_address.port(), FakeOptions::with_token(SA_TOKEN)).await;
    let deadline = Instant::now() + T;
    while env.gateway.received().last().unwrap().body["server_addresses"] != both {
        assert!(Instant::now() < deadline, "the master that answers again was not reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.fake.set_endpoint_addresses(&[me]);
    let seen = env.gateway.received().len();
    let next = env.gateway.wait_for(seen + 2, T).await;
    assert_eq!(next[seen + 1].body["server_addresses"], env.fake.url(), "no longer listed: not reported");
    drop(back);
    assert_eq!(terminate(&mut agent), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bcs_api_ca_rotated_in_the_server_cert_file_is_trusted_from_the_next_report_with_no_restart() {
    let env = InCluster::new().await;
    let ca_file = env.dir.path().join("bcs-api-ca.pem");
    std::fs::write(&ca_file, &env.gateway.certs.ca_pem).unwrap();
    let flag = format!("--server-cert-file={}", ca_file.display());
    let mut agent = env.spawn(&[&flag], REGISTER_TOKEN);
    env.gateway.wait_for(1, T).await;
    let InCluster { dir: _dir, fake: _fake, gateway, metrics_port } = env;

    // bcs-api's certificate is renewed under a new CA; the Secret's file follows.
    let port = gateway.port;
    drop(gateway);
    // The aborted accept task lets go of the port once the runtime gets to it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let renewed = CertPair::generate_for("renewed-bcs-api-ca", &["127.0.0.1", "localhost"]);
    std::fs::write(&ca_file, &renewed.ca_pem).unwrap();
    let gateway = FakeGateway::start_on(port, renewed).await;
    let got = gateway.wait_for(1, T).await;
    assert_eq!(got[0].body["register_token"], REGISTER_TOKEN, "reported to the renewed bcs-api");
    // A file that stops holding a certificate is a failure of its own, and the agent goes on.
    std::fs::write(&ca_file, "not a certificate").unwrap();
    wait_metric(metrics_port, "bcs_kube_agent_reports_failed_total{reason=\"server_cert\"}", 1.0, T).await;
    assert!(agent.running(), "{}", agent.stderr());
    assert_eq!(terminate(&mut agent), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_cluster_it_waits_for_a_service_account_token_not_there_yet() {
    // The manifest's token Secret is filled by Kubernetes after it is created: the pod may
    // start before its files exist.
    let env = InCluster::new().await;
    let sa = env.dir.path().join("sa");
    std::fs::rename(&sa, env.dir.path().join("sa-later")).unwrap();
    let mut agent = env.spawn(&[], REGISTER_TOKEN);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(agent.running(), "still running; {}", agent.stderr());
    assert!(env.gateway.received().is_empty());
    std::fs::rename(env.dir.path().join("sa-later"), &sa).unwrap();
    let first = env.gateway.wait_for(1, T).await.remove(0);
    assert_eq!(first.body["user_token"], SA_TOKEN);
    assert!(agent.stderr().contains("cannot read the service account's token and CA yet"), "{}", agent.stderr());
    assert_eq!(terminate(&mut agent), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_errors_exit_non_zero_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut p = spawn_agent(dir.path(), args, env);
        let code = p.wait_exit(Duration::from_secs(10));
        (code, p.stderr())
    };
    let base = ["--bke-address=https://127.0.0.1:1", "--cluster-id=c1", "--kubeconfig=missing.yaml"];
    let (code, err) = run(&base, &[("REGISTER_TOKEN", "")]);
    assert_eq!(code, Some(2));
    assert!(err.contains("REGISTER_TOKEN"), "{err}");
    let (code, err) = run(&base, &[("REGISTER_TOKEN", "x"), ("SERVER_CERT", "")]);
    assert_eq!(code, Some(2));
    assert!(err.contains("SERVER_CERT"), "{err}");
    let (code, err) = run(&[&base[..], &["--insecureSkipVerify"]].concat(), &[("REGISTER_TOKEN", "x")]);
    assert_eq!(code, Some(1), "the kubeconfig cannot be read");
    assert!(err.contains("missing.yaml"), "{err}");
    let (code, _) = run(&["--cluster-id=c1"], &[]);
    assert_eq!(code, Some(2), "--bke-address is required");
    let out = std::process::Command::new(common::agent_binary()).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("bcs-kube-agent "));
}
