//! The Mesos routes: `/bcsapi/v4/scheduler/mesos/...` to a live mesos-driver of the cluster
//! named by `BCS-ClusterID`, and the webconsole to allowed hosts only, both authenticated.
mod common;

use std::sync::Arc;
use std::time::Duration;

use bcs_shared::snapshot::{MesosDriver, MesosDrivers, Snapshot};
use common::*;
use tokio::io::AsyncWriteExt;

const MESOS: &str = "BCS-MESOS-10001";

fn with_drivers(mut snap: Snapshot, drivers: &[&RawUpstream]) -> Snapshot {
    snap.mesos = vec![MesosDrivers {
        cluster_id: MESOS.into(),
        drivers: drivers
            .iter()
            .map(|d| MesosDriver { scheme: "http".into(), ip: d.address.ip().to_string(), port: d.address.port() })
            .collect(),
    }];
    snap
}

fn mesos_get(path: &str, token: Option<&str>, cluster: Option<&str>, extra: &str) -> String {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let cluster = cluster.map(|c| format!("BCS-ClusterID: {c}\r\n")).unwrap_or_default();
    format!("GET /bcsapi/v4/scheduler/mesos{path} HTTP/1.1\r\nHost: g\r\n{auth}{cluster}{extra}\r\n")
}

struct Setup {
    _dir: tempfile::TempDir,
    admin: FakeAdmin,
    proxy: Proxy,
}

async fn setup(drivers: &[&RawUpstream], options: ProxyOptions) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = Proxy::spawn(dir.path(), &options);
    let admin = FakeAdmin::start(&proxy.socket(), with_drivers(snapshot(1, "http://127.0.0.1:1", ""), drivers)).await;
    proxy.wait_ready().await;
    Setup { _dir: dir, admin, proxy }
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_reach_both_live_drivers_with_the_path_rewritten_and_no_credentials() {
    let reply = |name: &'static str| -> Script {
        Arc::new(move |_| Reply::Bytes(ok_json(&format!("{{\"driver\":\"{name}\"}}"))))
    };
    let (a, b) = (RawUpstream::start(reply("a")).await, RawUpstream::start(reply("b")).await);
    let s = setup(&[&a, &b], ProxyOptions::default()).await;
    for _ in 0..30 {
        let r = s
            .proxy
            .send(&mesos_get(
                "/namespaces/ns1/applications?kind=x",
                Some(USER_TOKEN),
                Some(MESOS),
                "Impersonate-User: x\r\nCookie: c=1\r\n",
            ))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let (ra, rb) = (a.requests(), b.requests());
    assert!(!ra.is_empty() && !rb.is_empty(), "both drivers get traffic: {} and {}", ra.len(), rb.len());
    assert_eq!(ra.len() + rb.len(), 30);
    for r in ra.iter().chain(rb.iter()) {
        assert_eq!(r.request_line(), "GET /mesosdriver/v4/namespaces/ns1/applications?kind=x HTTP/1.1");
        assert_eq!(r.headers("bcs-clusterid"), vec![MESOS.to_owned()]);
        assert!(
            r.headers("authorization").is_empty()
                && r.headers("impersonate-user").is_empty()
                && r.headers("cookie").is_empty(),
            "{}",
            r.head
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_mesos_requests_get_clear_answers() {
    let driver = RawUpstream::start(Arc::new(|_| {
        Reply::Bytes(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 12\r\n\r\ndriver broke".to_vec())
    }))
    .await;
    let s = setup(&[&driver], ProxyOptions::default()).await;
    let r = s.proxy.send(&mesos_get("/apps", None, Some(MESOS), "")).await;
    assert_eq!(r.status, 401);
    let r = s.proxy.send(&mesos_get("/apps", Some(USER_TOKEN), None, "")).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("BCS-ClusterID"), "{}", r.text());
    let r = s.proxy.send(&mesos_get("/apps", Some(USER_TOKEN), Some("BCS-MESOS-404"), "")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    assert!(r.text().contains("BCS-MESOS-404"), "{}", r.text());
    let r = s.proxy.send(&mesos_get("/apps", Some(USER_TOKEN), Some(MESOS), "")).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (500, "driver broke"),
        "the driver's status and body come back as they are"
    );
    assert_eq!(driver.requests().len(), 1, "only the complete request reached the driver");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_driver_that_closes_unanswered_is_passed_over_and_set_aside() {
    let live = RawUpstream::start(Arc::new(|_| Reply::Bytes(ok_json("{}")))).await;
    let mute = RawUpstream::start(Arc::new(|_| Reply::Close)).await;
    let s = setup(&[&live, &mute], ProxyOptions::default()).await;
    let get = mesos_get("/apps", Some(USER_TOKEN), Some(MESOS), "");
    // Each request starts at a driver picked at random: until one starts at the mute driver.
    for _ in 0..40 {
        let r = s.proxy.send(&get).await;
        assert_eq!(r.status, 200, "a GET the mute driver dropped goes to the live one: {}", r.text());
        if !mute.requests().is_empty() {
            break;
        }
    }
    assert_eq!(mute.requests().len(), 1);
    // Set aside for 10 s, and not taken back by the probe that connects to ejected addresses
    // every 5 s (it accepts connections; it does not answer).
    for _ in 0..30 {
        assert_eq!(s.proxy.send(&get).await.status, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(mute.requests().len(), 1, "the mute driver got requests again within its 10 s");

    // What changes something is never sent twice, a bodiless DELETE included: the one that
    // starts at the mute driver is answered 502.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let delete = format!(
        "DELETE /bcsapi/v4/scheduler/mesos/apps/a HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {USER_TOKEN}\r\n\
         BCS-ClusterID: {MESOS}\r\n\r\n"
    );
    let mut statuses = Vec::new();
    while mute.requests().len() < 2 && statuses.len() < 40 {
        statuses.push(s.proxy.send(&delete).await.status);
    }
    assert_eq!(mute.requests().len(), 2, "{statuses:?}");
    assert_eq!(statuses.last(), Some(&502), "{statuses:?}");
    assert!(statuses[..statuses.len() - 1].iter().all(|&s| s == 200), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bearer_token_in_the_websocket_subprotocol_never_reaches_a_driver() {
    let driver = RawUpstream::start(Arc::new(|_| Reply::Bytes(ok_json("{}")))).await;
    let s = setup(&[&driver], ProxyOptions::default()).await;
    let upgrade = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                   Sec-WebSocket-Protocol: base64url.bearer.authorization.k8s.io.c2VjcmV0LXRva2Vu, v4.channel.k8s.io\r\n";
    let r = s.proxy.send(&mesos_get("/apps/exec", Some(USER_TOKEN), Some(MESOS), upgrade)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let requests = driver.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].headers("sec-websocket-protocol"),
        vec!["v4.channel.k8s.io".to_owned()],
        "{}",
        requests[0].head
    );
    assert!(!requests[0].head.contains("c2VjcmV0"), "{}", requests[0].head);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_driver_is_skipped_and_an_emptied_set_is_503() {
    let live = RawUpstream::start(Arc::new(|_| Reply::Bytes(ok_json("{}")))).await;
    let dead = RawUpstream::start(Arc::new(|_| Reply::Bytes(ok_json("{}")))).await;
    let s = setup(&[&live, &dead], ProxyOptions::default()).await;
    drop(dead);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..10 {
        let r = s.proxy.send(&mesos_get("/apps", Some(USER_TOKEN), Some(MESOS), "")).await;
        assert_eq!(r.status, 200, "the live driver answers even when the dead one was picked first");
    }
    assert_eq!(live.requests().len(), 10);
    s.admin.publish(with_drivers(snapshot(2, "http://127.0.0.1:1", ""), &[]));
    s.admin.wait_ack(2).await;
    assert_eq!(s.proxy.send(&mesos_get("/apps", Some(USER_TOKEN), Some(MESOS), "")).await.status, 503);
}

#[tokio::test(flavor = "multi_thread")]
async fn drivers_not_yet_known_to_admin_keep_those_in_use_through_a_restart() {
    let driver = RawUpstream::start(Arc::new(|_| Reply::Bytes(ok_json("{}")))).await;
    let mut s = setup(&[&driver], ProxyOptions::default()).await;
    let get = mesos_get("/apps", Some(USER_TOKEN), Some(MESOS), "");
    assert_eq!(s.proxy.send(&get).await.status, 200);

    // Admin restarted and has not read ZooKeeper: no sets, and it says so.
    let mut pending = snapshot(2, "http://127.0.0.1:1", "");
    pending.mesos_pending = true;
    s.admin.publish(pending.clone());
    s.admin.wait_ack(2).await;
    assert_eq!(s.proxy.send(&get).await.status, 200, "the drivers in use stay");

    // The proxy restarted too: the persisted snapshot carries them, and admin's still pending one keeps them.
    s.proxy.respawn();
    s.proxy.wait_ready().await;
    pending.revision = 3;
    s.admin.publish(pending);
    s.admin.wait_ack(3).await;
    assert_eq!(s.proxy.send(&get).await.status, 200, "the drivers survive the proxy's restart");
    assert_eq!(driver.requests().len(), 3);

    // Once admin has read ZooKeeper, its sets count, empty ones too.
    s.admin.publish(snapshot(4, "http://127.0.0.1:1", ""));
    s.admin.wait_ack(4).await;
    assert_eq!(s.proxy.send(&get).await.status, 503);
}

fn console_get(query: &str, token: Option<&str>) -> String {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    format!("GET /bcsapi/v1/webconsole/start_exec{query} HTTP/1.1\r\nHost: g\r\n{auth}\r\n")
}

/// A console proxy answering 200 to everything, and a proxy that allows it (127.0.0.0/8).
async fn console_setup() -> (RawUpstream, Setup) {
    console_setup_allowing("127.0.0.0/8").await
}

/// A console proxy answering 200 to everything, and a proxy that allows `allowed`.
async fn console_setup_allowing(allowed: &str) -> (RawUpstream, Setup) {
    let console = RawUpstream::start(Arc::new(|_| Reply::Bytes(ok_json("{\"console\":true}")))).await;
    let options = ProxyOptions {
        console_port: console.address.port(),
        console_allowed: vec![allowed.into()],
        ..ProxyOptions::default()
    };
    let s = setup(&[], options).await;
    (console, s)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_webconsole_needs_a_token_and_an_allowed_host() {
    let (console, s) = console_setup().await;
    assert_eq!(s.proxy.send(&console_get("?host_ip=127.0.0.1", None)).await.status, 401);
    let r = s.proxy.send(&console_get("", Some(USER_TOKEN))).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("host_ip"), "{}", r.text());
    let r = s.proxy.send(&console_get("?host_ip=10.0.0.5", Some(USER_TOKEN))).await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("webconsole_allowed_hosts"), "{}", r.text());
    assert_eq!(s.proxy.send(&console_get("?host_ip=not-an-ip", Some(USER_TOKEN))).await.status, 400);
    assert_eq!(console.connections(), 0);
    let r = s.proxy.send(&console_get("?host_ip=127.0.0.1&container_id=c1", Some(USER_TOKEN))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = console.requests();
    assert_eq!(
        seen[0].request_line(),
        "GET /bcsapi/v1/consoleproxy/start_exec?host_ip=127.0.0.1&container_id=c1 HTTP/1.1"
    );
    assert!(seen[0].headers("authorization").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn console_connections_are_pooled() {
    let (console, s) = console_setup().await;
    // One client connection, so one core: its pool of console connections (the map keyed by
    // clients' host_ip) serves all three requests.
    let mut stream = s.proxy.connect().await;
    for _ in 0..3 {
        stream.write_all(console_get("?host_ip=127.0.0.1", Some(USER_TOKEN)).as_bytes()).await.unwrap();
        assert_eq!(read_response(&mut stream).await.status, 200);
    }
    assert_eq!(console.requests().len(), 3);
    assert_eq!(console.connections(), 1, "one pooled console connection served all three");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ipv6_allow_list_does_not_let_an_ipv4_mapped_address_through() {
    let (console, s) = console_setup_allowing("::/0").await;
    // `::ffff:127.0.0.1` reaches 127.0.0.1 on a dual-stack socket: it is judged as that.
    let r = s.proxy.send(&console_get("?host_ip=::ffff:127.0.0.1", Some(USER_TOKEN))).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("127.0.0.1"), "{}", r.text());
    assert_eq!(console.connections(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_allowed_hosts_the_webconsole_is_refused() {
    let console = RawUpstream::start(Arc::new(|_| Reply::Bytes(ok_json("{}")))).await;
    let s = setup(&[], ProxyOptions { console_port: console.address.port(), ..ProxyOptions::default() }).await;
    assert_eq!(s.proxy.send(&console_get("?host_ip=127.0.0.1", Some(USER_TOKEN))).await.status, 403);
    assert_eq!(console.connections(), 0);
}

/// An https mesos-driver requiring a client certificate from `client_ca`: answers 200 with
/// whether the peer presented one. Returns its port and a handle to stop it.
async fn tls_driver(
    server: &bcs_testkit::apiserver::CertPair,
    client_ca: &bcs_testkit::apiserver::CertPair,
) -> (u16, tokio::task::JoinHandle<()>) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(client_ca.ca_der.clone())).unwrap();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(server.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server.key_der.clone())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let client_cert = tls.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
                let mut buf = vec![0u8; 65536];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = tls.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                }
                let body = format!("{{\"client_cert\":{client_cert}}}");
                let answer =
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn https_drivers_get_the_client_certificate_and_are_verified_against_ca_file() {
    use bcs_testkit::apiserver::CertPair;
    let driver_certs = CertPair::generate_for("mesos-ca", &["127.0.0.1"]);
    let client_certs = CertPair::generate_for("bcs-client-ca", &["bcs-api"]);
    let impostor_certs = CertPair::generate_for("other-ca", &["127.0.0.1"]);
    let (port, _driver) = tls_driver(&driver_certs, &client_certs).await;
    let (impostor_port, _impostor) = tls_driver(&impostor_certs, &client_certs).await;

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &driver_certs.ca_pem).unwrap();
    std::fs::write(dir.path().join("client.pem"), &client_certs.cert_pem).unwrap();
    std::fs::write(dir.path().join("client.key"), &client_certs.key_pem).unwrap();
    let cert_config =
        "  ca_file: ./ca.pem\n  client_cert_file: ./client.pem\n  client_key_file: ./client.key\n".to_owned();
    let mut proxy =
        Proxy::spawn(dir.path(), &ProxyOptions { cert_config: Some(cert_config), ..ProxyOptions::default() });
    let mut snap = snapshot(1, "http://127.0.0.1:1", "");
    snap.mesos = vec![
        MesosDrivers {
            cluster_id: MESOS.into(),
            drivers: vec![MesosDriver { scheme: "https".into(), ip: "127.0.0.1".into(), port }],
        },
        MesosDrivers {
            cluster_id: "BCS-MESOS-IMPOSTOR".into(),
            drivers: vec![MesosDriver { scheme: "https".into(), ip: "127.0.0.1".into(), port: impostor_port }],
        },
    ];
    let _admin = FakeAdmin::start(&proxy.socket(), snap).await;
    proxy.wait_ready().await;

    let r = proxy.send(&mesos_get("/apps", Some(USER_TOKEN), Some(MESOS), "")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["client_cert"], true, "the driver saw the gateway's client certificate");
    let r = proxy.send(&mesos_get("/apps", Some(USER_TOKEN), Some("BCS-MESOS-IMPOSTOR"), "")).await;
    assert_eq!(r.status, 502, "a driver whose certificate ca_file does not vouch for is refused: {}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_client_certificate_the_webconsole_is_reached_over_tls_as_the_original_did() {
    use bcs_testkit::apiserver::CertPair;
    let console_certs = CertPair::generate_for("console-ca", &["127.0.0.1"]);
    let client_certs = CertPair::generate_for("bcs-client-ca", &["bcs-api"]);
    let (port, _console) = tls_driver(&console_certs, &client_certs).await;

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &console_certs.ca_pem).unwrap();
    std::fs::write(dir.path().join("client.pem"), &client_certs.cert_pem).unwrap();
    std::fs::write(dir.path().join("client.key"), &client_certs.key_pem).unwrap();
    let options = ProxyOptions {
        cert_config: Some(
            "  ca_file: ./ca.pem\n  client_cert_file: ./client.pem\n  client_key_file: ./client.key\n".into(),
        ),
        console_port: port,
        console_allowed: vec!["127.0.0.0/8".into()],
        ..ProxyOptions::default()
    };
    let mut proxy = Proxy::spawn(dir.path(), &options);
    let _admin = FakeAdmin::start(&proxy.socket(), snapshot(1, "http://127.0.0.1:1", "")).await;
    proxy.wait_ready().await;

    let r = proxy.send(&console_get("?host_ip=127.0.0.1&container_id=c1", Some(USER_TOKEN))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["client_cert"], true, "the console proxy saw the gateway's client certificate");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_without_its_key_stops_the_start_naming_both() {
    // Half a client identity for mesos-drivers is a mistake: the proxy used to present no
    // certificate at all, silently. Now it does not start, and says which half is missing.
    let dir = tempfile::tempdir().unwrap();
    let certs = bcs_testkit::apiserver::CertPair::generate_for("internal-ca", &["127.0.0.1"]);
    std::fs::write(dir.path().join("ca.pem"), &certs.ca_pem).unwrap();
    std::fs::write(dir.path().join("client.pem"), &certs.cert_pem).unwrap();
    let options = ProxyOptions {
        cert_config: Some("  ca_file: ./ca.pem\n  client_cert_file: ./client.pem\n".into()),
        ..ProxyOptions::default()
    };
    let mut proxy = Proxy::spawn(dir.path(), &options);
    let code = proxy.process.wait_exit(std::time::Duration::from_secs(20));
    assert_ne!(code, Some(0));
    let stderr = proxy.process.stderr();
    assert!(stderr.contains("client_cert_file is set but client_key_file is not"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_started_first_makes_its_data_directory_private() {
    // The proxy may start before admin (its own unit, or a restart): the data directory it
    // creates holds the persisted snapshot and, later, admin's store, so 0700 as admin makes it.
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = Proxy::spawn(dir.path(), &ProxyOptions::default());
    let data = dir.path().join("data");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !data.exists() {
        assert!(std::time::Instant::now() < deadline, "no data directory: {}", proxy.process.stderr());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "data directory mode {mode:o}");
    proxy.process.stop();
}
