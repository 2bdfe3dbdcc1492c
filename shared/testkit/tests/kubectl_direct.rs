//! The real kubectl straight at the fake apiserver (no proxy): proves the fake is good enough
//! for the end-to-end tests that will put our proxy in between.
use std::time::Duration;

use bcs_testkit::apiserver::kubectl::{kubectl_minor, Kubectl};
use bcs_testkit::apiserver::{FakeApiserver, FakeOptions, Fault, Kind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(20);

async fn fake() -> (FakeApiserver, Kubectl) {
    let fake = FakeApiserver::start(FakeOptions::with_token("s3cret-token")).await;
    fake.add_pod("default", "web-0");
    let k = Kubectl::for_fake(&fake);
    (fake, k)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_reports_the_fake_server() {
    let (fake, k) = fake().await;
    let out = k.ok(&["version", "-o", "json"]).await;
    assert!(out.contains("v1.33.0-fake"), "{out}");
    let r = &fake.requests_matching("/version")[0];
    assert_eq!(r.header("authorization").as_deref(), Some("Bearer s3cret-token"));
    assert!(r.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("user-agent")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_pods_lists_a_preloaded_pod() {
    let (fake, k) = fake().await;
    let out = k.ok(&["get", "pods"]).await;
    assert!(out.contains("NAME") && out.contains("READY"), "{out}");
    let line = out.lines().find(|l| l.starts_with("web-0")).unwrap_or_else(|| panic!("no web-0 in {out}"));
    assert!(line.contains("1/1") && line.contains("Running"), "{line}");
    assert!(!fake.requests_matching("/api/v1/namespaces/default/pods").is_empty());
    let one = k.ok(&["get", "pod", "web-0", "-o", "jsonpath={.status.phase}"]).await;
    assert_eq!(one, "Running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_pods_watch_sees_a_new_pod_while_running() {
    let (fake, k) = fake().await;
    let mut watch = k.spawn(&["get", "pods", "-w"]);
    watch.wait_line("web-0", T).await.unwrap();
    fake.add_pod("default", "web-1");
    let line = watch.wait_line("web-1", T).await.unwrap();
    assert!(line.contains("Running"), "{line}");
    assert!(watch.running(), "kubectl get -w should still be running");
    fake.delete(Kind::Pod, "default", "web-0");
    watch.wait_line("web-0", T).await.unwrap();
    watch.kill().await;
    let watches = fake.requests_matching("/api/v1/namespaces/default/pods");
    assert!(watches.iter().any(|r| r.query.as_deref().unwrap_or("").contains("watch=true")), "{watches:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_single_pod_watch_uses_a_field_selector() {
    let (fake, k) = fake().await;
    let mut watch = k.spawn(&["get", "pod", "web-0", "-w"]);
    watch.wait_line("web-0", T).await.unwrap();
    // kubectl hides the synthetic ADDED a single-object watch starts with: change the pod only
    // once the watch is streaming.
    assert!(fake.wait_for_watches(1, T).await, "no watch opened");
    fake.modify(Kind::Pod, "default", "web-0", |p| p["status"]["phase"] = "Succeeded".into());
    watch.wait_line("Succeeded", T).await.unwrap();
    watch.kill().await;
    assert!(fake.requests().iter().any(|r| r
        .query
        .as_deref()
        .unwrap_or("")
        .contains("fieldSelector=metadata.name%3Dweb-0")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_configmap_from_yaml_then_get_it() {
    let (fake, k) = fake().await;
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: fast\n  level: \"3\"\n";
    std::fs::write(k.dir.path().join("cm.yaml"), yaml).unwrap();
    let out = k.ok(&["create", "-f", "cm.yaml"]).await;
    assert!(out.contains("configmap/settings created"), "{out}");
    let post = fake.requests().into_iter().find(|r| r.method == "POST").expect("a POST");
    assert!(post.query.as_deref().unwrap_or("").contains("fieldValidation=Strict"), "{:?}", post.query);
    let cm = fake.get(Kind::ConfigMap, "default", "settings").expect("stored");
    assert_eq!(cm["data"]["mode"], "fast");
    let out = k.ok(&["get", "configmap"]).await;
    let line = out.lines().find(|l| l.starts_with("settings")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains(" 2 "), "{line}");
    let again = k.run(&["create", "-f", "cm.yaml"]).await;
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("already exists"), "{}", text(&again.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_pod_removes_it() {
    let (fake, k) = fake().await;
    let out = k.ok(&["delete", "pod", "web-0"]).await;
    assert!(out.contains("pod \"web-0\" deleted"), "{out}");
    assert!(fake.get(Kind::Pod, "default", "web-0").is_none());
    let missing = k.run(&["get", "pod", "web-0"]).await;
    assert!(!missing.status.success());
    assert!(text(&missing.stderr).contains("not found"), "{}", text(&missing.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_streams_while_running() {
    let (fake, k) = fake().await;
    let mut logs = k.spawn(&["logs", "-f", "web-0"]);
    logs.wait_line("log line 1", T).await.unwrap();
    logs.wait_line("web-0 tick 2", T).await.unwrap();
    assert!(logs.running(), "kubectl logs -f should still be running");
    logs.kill().await;
    let r = &fake.requests_matching("/api/v1/namespaces/default/pods/web-0/log")[0];
    assert!(r.query.as_deref().unwrap_or("").contains("follow=true"));
    let out = k.ok(&["logs", "web-0"]).await;
    assert_eq!(out, "log line 1\nlog line 2\nlog line 3\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_echo_prints_stdout() {
    let (fake, k) = fake().await;
    assert_eq!(k.ok(&["exec", "web-0", "--", "echo", "hi"]).await, "hi\n");
    let r = &fake.requests_matching("/api/v1/namespaces/default/pods/web-0/exec")[0];
    assert_eq!(r.header("upgrade").as_deref(), Some("websocket"));
    let failed = k.run(&["exec", "web-0", "--", "test", "-d", "/nope"]).await;
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_stdin_cat_echoes_input() {
    let (_fake, k) = fake().await;
    let out = k.run_with(&["exec", "-i", "web-0", "--", "cat"], Some(b"hello\nworld\n"), T).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello\nworld\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_falls_back_to_spdy_when_websocket_is_refused() {
    let options = FakeOptions { exec_websocket: false, ..FakeOptions::with_token("tok") };
    let fake = FakeApiserver::start(options).await;
    fake.add_pod("default", "web-0");
    let k = Kubectl::for_fake(&fake);
    assert_eq!(k.ok(&["exec", "web-0", "--", "echo", "over", "spdy"]).await, "over spdy\n");
    let out = k.run_with(&["exec", "-i", "web-0", "--", "cat"], Some(b"spdy stdin\n"), T).await;
    assert_eq!(text(&out.stdout), "spdy stdin\n", "{}", text(&out.stderr));
    let upgrades: Vec<String> = fake
        .requests_matching("/api/v1/namespaces/default/pods/web-0/exec")
        .iter()
        .filter_map(|r| r.header("upgrade"))
        .collect();
    assert!(upgrades.iter().any(|u| u == "SPDY/3.1"), "{upgrades:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_kubectl_exec_uses_spdy() {
    let Some(old) = kubectl_minor(27) else {
        eprintln!("kubectl 1.27 not installed; skipping");
        return;
    };
    let (fake, k) = fake().await;
    let k = k.with_binary(old);
    assert_eq!(k.ok(&["exec", "web-0", "--", "echo", "old"]).await, "old\n");
    let r = &fake.requests_matching("/api/v1/namespaces/default/pods/web-0/exec")[0];
    assert_eq!(r.header("upgrade").as_deref(), Some("SPDY/3.1"));
}

async fn port_forward_round_trip(k: &Kubectl) {
    let port = bcs_testkit::free_port();
    let mut pf = k.spawn(&["port-forward", "--address", "127.0.0.1", "pod/web-0", &format!("{port}:8080")]);
    pf.wait_line("Forwarding from", T).await.unwrap();
    for round in 0..2 {
        let mut s = tokio::time::timeout(T, tokio::net::TcpStream::connect(("127.0.0.1", port)))
            .await
            .expect("connect in time")
            .expect("connect");
        let msg = format!("ping {round} through the tunnel");
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(T, s.read_exact(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no echo; stderr: {}", pf.stderr()))
            .unwrap();
        assert_eq!(text(&buf), msg);
    }
    assert!(pf.running(), "port-forward exited: {}", pf.stderr());
    pf.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_over_websocket_tunnel_echoes() {
    let (fake, k) = fake().await;
    port_forward_round_trip(&k).await;
    assert!(fake.forwarded_ports().contains(&8080));
    let r = &fake.requests_matching("/api/v1/namespaces/default/pods/web-0/portforward")[0];
    assert_eq!(r.header("upgrade").as_deref(), Some("websocket"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_falls_back_to_spdy() {
    let options = FakeOptions { portforward_websocket: false, ..FakeOptions::with_token("tok") };
    let fake = FakeApiserver::start(options).await;
    fake.add_pod("default", "web-0");
    let k = Kubectl::for_fake(&fake);
    port_forward_round_trip(&k).await;
    let upgrades: Vec<String> = fake
        .requests_matching("/api/v1/namespaces/default/pods/web-0/portforward")
        .iter()
        .filter_map(|r| r.header("upgrade"))
        .collect();
    assert!(upgrades.iter().any(|u| u == "SPDY/3.1"), "{upgrades:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp_to_and_from_a_pod() {
    let (fake, k) = fake().await;
    std::fs::write(k.dir.path().join("local.txt"), b"copied up\n").unwrap();
    k.ok(&["cp", "local.txt", "default/web-0:/tmp/remote.txt"]).await;
    assert_eq!(fake.file("default", "web-0", "/tmp/remote.txt").as_deref(), Some(&b"copied up\n"[..]));

    fake.put_file("default", "web-0", "/data/report.txt", b"copied down\n");
    k.ok(&["cp", "default/web-0:/data/report.txt", "down.txt"]).await;
    assert_eq!(std::fs::read(k.dir.path().join("down.txt")).unwrap(), b"copied down\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_is_unauthorized() {
    let (fake, _) = fake().await;
    let k = Kubectl::new(&fake.url(), &fake.ca_pem(), "wrong");
    let out = k.run(&["get", "pods"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("Unauthorized") || text(&out.stderr).contains("provide credentials"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_fails_the_handshake_and_no_request_arrives() {
    let (fake, k) = fake().await;
    fake.set_fault(Fault::WrongCertificate);
    let out = k.run(&["get", "pods"]).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("certificate"), "{}", text(&out.stderr));
    assert!(fake.requests().is_empty());
    let conns = fake.connections();
    assert!(!conns.is_empty());
    assert!(conns.iter().all(|c| !c.tls_established && c.plaintext.is_empty()), "{conns:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_redirect_reset_refuse_and_delay() {
    let (fake, k) = fake().await;
    // kubectl follows redirects: point it at a closed loopback port, never at a real host.
    let nowhere = format!("https://127.0.0.1:{}/evil", bcs_testkit::free_port());
    fake.set_fault_on("/api/v1/namespaces/default/pods", Fault::Redirect { status: 302, location: nowhere });
    let out = k.run(&["get", "pods", "--request-timeout=5s"]).await;
    assert!(!out.status.success(), "{}", text(&out.stdout));
    fake.clear_fault();

    fake.set_fault_on("/api/v1/namespaces/default/pods", Fault::Reset);
    let out = k.run(&["get", "pods", "--request-timeout=5s"]).await;
    assert!(!out.status.success(), "{}", text(&out.stdout));
    fake.clear_fault();

    fake.set_fault(Fault::RefuseUpgrade { status: 403 });
    let out = k.run(&["exec", "web-0", "--", "echo", "hi"]).await;
    assert!(!out.status.success());
    assert!(!text(&out.stdout).contains("hi"));
    fake.clear_fault();

    fake.set_fault(Fault::Delay(Duration::from_millis(300)));
    let started = std::time::Instant::now();
    k.ok(&["get", "pod", "web-0"]).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
}

/// One request written byte for byte over TLS; returns everything the fake answered.
async fn raw_https(fake: &FakeApiserver, request: &[u8]) -> String {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(fake.ca_der())).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(fake.address()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("kubernetes").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(T, tls.read_to_end(&mut out)).await.expect("the fake closes the connection");
    text(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_headers_in_wire_order_and_answers_401_without_a_token() {
    let (fake, _) = fake().await;
    let answer = raw_https(
        &fake,
        b"GET /api/v1/namespaces/default/pods?x=%2F HTTP/1.1\r\nHost: kubernetes\r\nX-B: 1\r\nImpersonate-Group: a\r\n\
          X-A: 2\r\nImpersonate-Group: b\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("www-authenticate: bearer"), "{answer}");
    assert!(answer.contains("\"reason\":\"Unauthorized\""), "{answer}");
    let r = &fake.requests()[0];
    assert_eq!(r.query.as_deref(), Some("x=%2F"));
    let names: Vec<&str> = r.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["Host", "X-B", "Impersonate-Group", "X-A", "Impersonate-Group", "Connection"]);
    assert_eq!(r.header_all("impersonate-group"), ["a", "b"]);
    let conn = &fake.connections()[r.connection];
    assert!(conn.tls_established && conn.plaintext.starts_with(b"GET /api/v1/namespaces/default/pods"));

    fake.set_fault(Fault::redirect_to_evil());
    let answer = raw_https(&fake, b"GET /version HTTP/1.1\r\nHost: kubernetes\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 302"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("location: https://evil.example/"), "{answer}");
}
