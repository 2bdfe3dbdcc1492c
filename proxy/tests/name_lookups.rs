//! Apiservers given by name, through the real proxy: the name is looked up off the core, so a
//! silent name server holds up only the requests for that name, and every address the name has
//! is tried, each with its share of the connect budget; a lookup has a budget of its own, and
//! one that runs out does not set the name aside as silent. The proxy runs in a mount
//! namespace of its own whose /etc/resolv.conf names only a name server played by the test
//! (the test runs as root, as the suite does for apt).
mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bcs_shared::snapshot::Cluster;
use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::UdpSocket;

/// Loopback addresses no other test uses, one per test here (tests run at once); port 53, as
/// resolv.conf allows no other.
const NAME_SERVER: &str = "127.83.83.83";
const BUSY_NAME_SERVER: &str = "127.83.83.84";
const SLOW_NAME_SERVER: &str = "127.83.83.85";
const SPLIT_NAME_SERVER: &str = "127.83.83.86";
const NAME: &str = "apiserver.bcs-name-test";
const BY_IP: &str = "bcs-k8s-002-ipaddress-0123456789abcdef";

/// Starts the proxy with `/etc/resolv.conf` replaced, for it alone, by `conf`.
fn spawn_with_resolv_conf(dir: &Path, conf: &Path) -> Proxy {
    let source = CString::new(conf.as_os_str().as_bytes()).unwrap();
    Proxy::spawn_with(dir, &ProxyOptions { cores: 1, ..ProxyOptions::default() }, move |command| {
        // SAFETY: only system calls between fork and exec, on strings made before the fork.
        unsafe {
            command.pre_exec(move || {
                let fail = || Err(std::io::Error::last_os_error());
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return fail();
                }
                let (none, root) = (std::ptr::null(), c"/".as_ptr());
                if libc::mount(none, root, none, libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) != 0 {
                    return fail();
                }
                let target = c"/etc/resolv.conf".as_ptr();
                if libc::mount(source.as_ptr(), target, none, libc::MS_BIND, std::ptr::null()) != 0 {
                    return fail();
                }
                Ok(())
            });
        }
    })
}

/// A DNS answer to `query`: `v4` for an A question, `v6` for AAAA, none for any other.
fn answer(query: &[u8], v4: &[[u8; 4]], v6: &[[u8; 16]]) -> Vec<u8> {
    let question_end = 12 + query[12..].iter().position(|&b| b == 0).expect("a question name") + 1 + 4;
    let records: Vec<&[u8]> = match u16::from_be_bytes([query[question_end - 4], query[question_end - 3]]) {
        1 => v4.iter().map(|a| &a[..]).collect(),
        28 => v6.iter().map(|a| &a[..]).collect(),
        _ => vec![],
    };
    let mut out = Vec::new();
    out.extend_from_slice(&query[..2]); // the query's id
    out.extend_from_slice(&[0x81, 0x80, 0, 1, 0, records.len() as u8, 0, 0, 0, 0]);
    out.extend_from_slice(&query[12..question_end]);
    for address in records {
        // The name by pointer to the question, the question's type, IN, TTL 0, the length.
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&query[question_end - 4..question_end - 2]);
        out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, address.len() as u8]);
        out.extend_from_slice(address);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_name_server_holds_up_only_the_requests_for_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let ok: Script = Arc::new(|_| Reply::Bytes(ok_json(r#"{"kind":"PodList","items":[]}"#)));
    let (named, by_ip) = (RawUpstream::start(ok.clone()).await, RawUpstream::start(ok).await);
    let name_server = UdpSocket::bind((NAME_SERVER, 53)).await.expect("port 53 on a loopback address (root)");
    let conf = dir.path().join("resolv.conf");
    std::fs::write(&conf, format!("nameserver {NAME_SERVER}\noptions timeout:30 attempts:1\n")).unwrap();

    let mut snapshot = snapshot(1, &format!("http://{NAME}:{}", named.address.port()), "");
    let mut second: Cluster = snapshot.clusters[0].clone();
    second.id = "bcs-k8s-002-IpAddres".into();
    second.identifier = BY_IP.into();
    second.credentials.as_mut().unwrap().addresses = vec![by_ip.url()];
    snapshot.clusters.push(second);
    let mut proxy = spawn_with_resolv_conf(dir.path(), &conf);
    let _admin = FakeAdmin::start(&proxy.socket(), snapshot).await;
    proxy.wait_ready().await;

    // A request for the named cluster: its lookup reaches the name server, which says nothing.
    let mut waiting = proxy.connect().await;
    waiting.write_all(get("/api/v1/pods", USER_TOKEN, "").as_bytes()).await.unwrap();
    let mut queries = Vec::new();
    let mut buf = [0u8; 512];
    let (n, asker) = tokio::time::timeout(Duration::from_secs(10), name_server.recv_from(&mut buf))
        .await
        .expect("the proxy asked the name server")
        .unwrap();
    queries.push((buf[..n].to_vec(), asker));
    assert!(
        String::from_utf8_lossy(&buf[..n]).contains("bcs-name-test"),
        "the question names the apiserver: {:?}",
        &buf[..n]
    );

    // Meanwhile the proxy's one core serves another cluster, given by IP.
    let other = format!(
        "GET /tunnels/clusters/{BY_IP}/api/v1/pods HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {USER_TOKEN}\r\n\r\n"
    );
    let served = tokio::time::timeout(Duration::from_secs(10), proxy.send(&other))
        .await
        .expect("the core answered another cluster while a name lookup waited");
    assert_eq!(served.status, 200, "{}", served.text());
    assert_eq!(by_ip.requests().len(), 1);
    assert!(named.requests().is_empty());

    // The name server answers with two addresses: ::1, which getaddrinfo puts first (RFC 6724's
    // default precedence) and where the apiserver does not listen, and 127.0.0.1, where it does.
    // The request that waited goes on, to the second.
    let (v4, v6) = ([[127, 0, 0, 1]], [std::net::Ipv6Addr::LOCALHOST.octets()]);
    while let Ok(Ok((n, from))) =
        tokio::time::timeout(Duration::from_millis(200), name_server.recv_from(&mut buf)).await
    {
        queries.push((buf[..n].to_vec(), from));
    }
    for (query, from) in &queries {
        name_server.send_to(&answer(query, &v4, &v6), from).await.unwrap();
    }
    let answered = tokio::time::timeout(Duration::from_secs(10), read_response(&mut waiting))
        .await
        .expect("the request for the named cluster was answered once its name was");
    assert_eq!(answered.status, 200, "{}", answered.text());
    assert_eq!(named.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_requests_for_a_name_asks_the_name_server_once() {
    let dir = tempfile::tempdir().unwrap();
    // Each answer closes its connection: every request needs a new one, so a connect (and the
    // name's addresses) per request.
    let body = r#"{"kind":"PodList","items":[]}"#;
    let closing = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let named = RawUpstream::start(Arc::new(move |_| Reply::Bytes(closing.clone().into_bytes()))).await;
    let name_server = Arc::new(UdpSocket::bind((BUSY_NAME_SERVER, 53)).await.expect("port 53 (root)"));
    let conf = dir.path().join("resolv.conf");
    std::fs::write(&conf, format!("nameserver {BUSY_NAME_SERVER}\noptions timeout:30 attempts:1\n")).unwrap();
    // Answers at once, and counts the A questions (one per lookup; AAAA ones get no record).
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (server, counted) = (name_server.clone(), asked.clone());
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = server.recv_from(&mut buf).await {
            let end = 12 + buf[12..n].iter().position(|&b| b == 0).unwrap() + 1;
            if buf[end..end + 2] == [0, 1] {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            let _ = server.send_to(&answer(&buf[..n], &[[127, 0, 0, 1]], &[]), from).await;
        }
    });

    let snapshot = snapshot(1, &format!("http://{NAME}:{}", named.address.port()), "");
    let mut proxy = spawn_with_resolv_conf(dir.path(), &conf);
    let _admin = FakeAdmin::start(&proxy.socket(), snapshot).await;
    proxy.wait_ready().await;

    // 100 requests at once on 100 connections, each needing a connection to the named
    // apiserver: more than the 64 lookups that may wait at once.
    for burst in 1..=2 {
        let mut clients = Vec::new();
        for _ in 0..100 {
            let mut stream = proxy.connect().await;
            stream.write_all(get("/api/v1/pods", USER_TOKEN, "Connection: close\r\n").as_bytes()).await.unwrap();
            clients.push(stream);
        }
        for mut stream in clients {
            let r = tokio::time::timeout(Duration::from_secs(20), read_response(&mut stream)).await.expect("answered");
            assert_eq!(r.status, 200, "burst {burst}: {}", r.text());
        }
        assert_eq!(named.connections(), 100 * burst, "a connection, so a connect, per request");
        let lookups = asked.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(lookups, 1, "burst {burst}: one lookup for the name, kept for the next burst");
    }
}

/// A name server on `ip`:53 for the proxy alone (its resolv.conf in `dir`, glibc waiting 30 s
/// for an answer), and the named cluster's snapshot at `port`.
async fn name_server_for(dir: &Path, ip: &str, port: u16) -> (UdpSocket, Proxy, FakeAdmin) {
    let name_server = UdpSocket::bind((ip, 53)).await.expect("port 53 on a loopback address (root)");
    let conf = dir.join("resolv.conf");
    std::fs::write(&conf, format!("nameserver {ip}\noptions timeout:30 attempts:1\n")).unwrap();
    let mut proxy = spawn_with_resolv_conf(dir, &conf);
    let admin = FakeAdmin::start(&proxy.socket(), snapshot(1, &format!("http://{NAME}:{port}"), "")).await;
    proxy.wait_ready().await;
    (name_server, proxy, admin)
}

/// The queries that reach `name_server` until it has been quiet for 300 ms (glibc asks A and
/// AAAA at once), at least one.
async fn queries(name_server: &UdpSocket, first_within: Duration) -> Vec<(Vec<u8>, std::net::SocketAddr)> {
    let mut queries = Vec::new();
    let mut buf = [0u8; 512];
    let mut patience = first_within;
    while let Ok(Ok((n, from))) = tokio::time::timeout(patience, name_server.recv_from(&mut buf)).await {
        queries.push((buf[..n].to_vec(), from));
        patience = Duration::from_millis(300);
    }
    assert!(!queries.is_empty(), "the proxy asked the name server");
    queries
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lookup_slower_than_its_budget_fails_its_request_without_silencing_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let named = RawUpstream::start(Arc::new(|_| Reply::Bytes(ok_json(r#"{"kind":"PodList","items":[]}"#)))).await;
    let (name_server, proxy, _admin) = name_server_for(dir.path(), SLOW_NAME_SERVER, named.address.port()).await;

    // The name server says nothing for longer than the lookup's 10 s: 502, and the log and the
    // metrics say it was the name.
    let asked = tokio::spawn({
        let request = get("/api/v1/pods", USER_TOKEN, "");
        let mut stream = proxy.connect().await;
        async move {
            let started = std::time::Instant::now();
            stream.write_all(request.as_bytes()).await.unwrap();
            (read_response_within(&mut stream, Duration::from_secs(20)).await, started.elapsed())
        }
    });
    let pending = queries(&name_server, Duration::from_secs(10)).await;
    let (response, took) = asked.await.unwrap();
    assert_eq!(response.status, 502, "{}", response.text());
    assert!(took >= Duration::from_secs(9) && took < Duration::from_secs(15), "after the lookup's budget: {took:?}");
    let metrics = proxy.metrics().await;
    let line = "bcs_api_upstream_connect_errors_total{cluster=\"bcs-k8s-001-AbCdEfGh\",reason=\"name_lookup\"} 1";
    assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    assert!(proxy.process.stderr().contains("no answer from the name servers"), "the log says why");

    // The answer comes late; the lookup, still under way, keeps it. The name was not set aside
    // as silent (which fails requests at once for 10 s): the next request is served at once.
    for (query, from) in &pending {
        name_server.send_to(&answer(query, &[[127, 0, 0, 1]], &[]), from).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let served = tokio::time::timeout(Duration::from_secs(5), proxy.send(&get("/api/v1/pods", USER_TOKEN, "")))
        .await
        .expect("answered");
    assert_eq!(served.status, 200, "{}", served.text());
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(named.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_whose_first_address_drops_connections_is_reached_at_its_second_within_the_budget() {
    // 127.0.0.1:port drops every SYN; 127.0.0.2:port (loopback too) answers. The name has both,
    // the dropping one first (first in the answer, and the longest prefix match with the
    // source address 127.0.0.1 for glibc's sort).
    let (_listener, _filling, port) = blackhole();
    let answering = std::net::SocketAddr::from(([127, 0, 0, 2], port));
    let named = RawUpstream::start_on_address(
        answering,
        Arc::new(|_| Reply::Bytes(ok_json(r#"{"kind":"PodList","items":[]}"#))),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (name_server, proxy, _admin) = name_server_for(dir.path(), SPLIT_NAME_SERVER, port).await;
    let name_server = Arc::new(name_server);
    let server = name_server.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = server.recv_from(&mut buf).await {
            let _ = server.send_to(&answer(&buf[..n], &[[127, 0, 0, 1], [127, 0, 0, 2]], &[]), from).await;
        }
    });

    // The first address gets half of the 10-s connect budget, the second the rest.
    let started = std::time::Instant::now();
    let mut stream = proxy.connect().await;
    stream.write_all(get("/api/v1/pods", USER_TOKEN, "").as_bytes()).await.unwrap();
    let response = read_response_within(&mut stream, Duration::from_secs(20)).await;
    let took = started.elapsed();
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(9),
        "after the first address's share: {took:?}"
    );
    assert_eq!(named.requests().len(), 1);
}
