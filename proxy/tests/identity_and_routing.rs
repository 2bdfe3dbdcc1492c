//! The request path through the real proxy: who the cluster sees, what the client gets back,
//! and which requests never leave the gateway.
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;

struct Setup {
    _dir: tempfile::TempDir,
    admin: FakeAdmin,
    upstream: RawUpstream,
    proxy: Proxy,
}

async fn setup(script: Script) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let upstream = RawUpstream::start(script).await;
    let mut proxy = Proxy::spawn(dir.path(), &ProxyOptions::default());
    let admin = FakeAdmin::start(&proxy.socket(), snapshot(1, &upstream.url(), "")).await;
    proxy.wait_ready().await;
    Setup { _dir: dir, admin, upstream, proxy }
}

fn json_ok() -> Script {
    Arc::new(|_| Reply::Bytes(ok_json(r#"{"kind":"PodList","items":[]}"#)))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_normal_user_reaches_the_cluster_as_itself_with_the_cluster_token() {
    let s = setup(json_ok()).await;
    let r =
        s.proxy.send(&get("/api/v1/namespaces/default/pods?limit=5", USER_TOKEN, "Accept: application/json\r\n")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["kind"], "PodList");
    let seen = s.upstream.requests();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.request_line(), "GET /api/v1/namespaces/default/pods?limit=5 HTTP/1.1");
    assert_eq!(req.headers("authorization"), vec![format!("Bearer {CLUSTER_TOKEN}")]);
    assert_eq!(req.headers("impersonate-user"), vec!["plain.alice".to_owned()]);
    assert_eq!(req.headers("host"), vec![s.upstream.address.to_string()]);
    assert_eq!(req.headers("x-forwarded-for"), vec!["127.0.0.1".to_owned()]);
    assert!(
        !String::from_utf8_lossy(&s.upstream.raw_bytes()).contains(USER_TOKEN),
        "the caller's token never reaches the cluster"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_super_user_is_not_impersonated_and_may_use_kubectl_as() {
    let s = setup(json_ok()).await;
    let r =
        s.proxy.send(&get("/api/v1/pods", SUPER_TOKEN, "Impersonate-User: bob\r\nImpersonate-Group: devs\r\n")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let req = &s.upstream.requests()[0];
    assert_eq!(req.headers("impersonate-user"), vec!["bob".to_owned()], "the super user's own --as passes");
    assert_eq!(req.headers("impersonate-group"), vec!["devs".to_owned()]);
    assert_eq!(req.headers("authorization"), vec![format!("Bearer {CLUSTER_TOKEN}")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_impersonation_from_a_normal_user_is_403_and_nothing_is_forwarded() {
    let s = setup(json_ok()).await;
    for header in [
        "Impersonate-Group: system:masters",
        "impersonate-user: admin",
        "IMPERSONATE-UID: 0",
        "Impersonate-Extra-Scopes: x",
    ] {
        let r = s.proxy.send(&get("/api/v1/secrets", USER_TOKEN, &format!("{header}\r\n"))).await;
        assert_eq!(r.status, 403, "{header}: {}", r.text());
        assert_eq!(r.json()["kind"], "Status");
        assert_eq!(r.json()["reason"], "Forbidden");
    }
    assert_eq!(s.upstream.connections(), 0, "no upstream connection was opened");
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_cannot_remove_the_gateways_impersonation() {
    let s = setup(json_ok()).await;
    let r = s
        .proxy
        .send(&get(
            "/api/v1/pods",
            USER_TOKEN,
            "Connection: Impersonate-User, Authorization, Keep-Alive\r\nKeep-Alive: 1\r\n",
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let req = &s.upstream.requests()[0];
    assert_eq!(req.headers("impersonate-user"), vec!["plain.alice".to_owned()]);
    assert_eq!(req.headers("authorization"), vec![format!("Bearer {CLUSTER_TOKEN}")]);
    assert!(req.headers("keep-alive").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tokens_are_401_status_objects() {
    let s = setup(json_ok()).await;
    for (request, message) in [
        (get("/api", "nope", ""), "not valid"),
        (format!("GET /tunnels/clusters/{IDENTIFIER}/api HTTP/1.1\r\nHost: g\r\n\r\n"), "anonymous"),
        (
            format!("GET /tunnels/clusters/{IDENTIFIER}/api HTTP/1.1\r\nHost: g\r\nAuthorization: Basic YTpi\r\n\r\n"),
            "Bearer",
        ),
    ] {
        let r = s.proxy.send(&request).await;
        assert_eq!(r.status, 401, "{}", r.text());
        let body = r.json();
        assert_eq!(
            (body["kind"].as_str(), body["apiVersion"].as_str(), body["code"].as_i64()),
            (Some("Status"), Some("v1"), Some(401))
        );
        assert!(body["message"].as_str().unwrap().contains(message), "{body}");
        assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer realm=\"bcs-api\""), "RFC 6750 §3");
    }
    // An expired token gets the very answer an unknown one does: an old leaked token is not
    // confirmed as once valid.
    let unknown = s.proxy.send(&get("/api", "never-a-token", "")).await;
    let mut snap = snapshot(2, &s.upstream.url(), "");
    snap.tokens[1].expires_at = now() - 1;
    s.admin.publish(snap);
    s.admin.wait_ack(2).await;
    let r = s.proxy.send(&get("/api", USER_TOKEN, "")).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.text(), unknown.text());
    assert_eq!(s.upstream.connections(), 0);
}

/// The connection remembers its last token's digest (auth::TokenMemo): on one kept-alive
/// connection, a revoked token must still be refused at once, another token must be its own
/// caller, and the first token, back again, refused again.
#[tokio::test(flavor = "multi_thread")]
async fn on_one_kept_alive_connection_each_request_is_judged_by_its_own_token_and_the_current_snapshot() {
    let s = setup(json_ok()).await;
    let mut stream = s.proxy.connect().await;
    let mut status_on_this_connection = async |token: &str| {
        stream.write_all(get("/api", token, "").as_bytes()).await.unwrap();
        read_response(&mut stream).await.status
    };
    assert_eq!(status_on_this_connection(USER_TOKEN).await, 200);
    assert_eq!(status_on_this_connection(USER_TOKEN).await, 200);
    let mut revoked = snapshot(2, &s.upstream.url(), "");
    revoked.tokens.retain(|t| t.user_id != 2);
    s.admin.publish(revoked);
    s.admin.wait_ack(2).await;
    assert_eq!(status_on_this_connection(USER_TOKEN).await, 401, "revoked, on the connection that used it");
    assert_eq!(status_on_this_connection(SUPER_TOKEN).await, 200, "another token on the same connection");
    assert_eq!(status_on_this_connection(USER_TOKEN).await, 401, "the revoked token again");
    assert_eq!(status_on_this_connection(&USER_TOKEN[..USER_TOKEN.len() - 1]).await, 401, "a prefix of it");
    let seen = s.upstream.requests();
    assert_eq!(seen.len(), 3, "two as alice, one as the super user");
    assert_eq!(seen[1].headers("impersonate-user"), vec!["plain.alice".to_owned()]);
    assert!(seen[2].headers("impersonate-user").is_empty(), "the super user is not impersonated");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_clusters_and_routes_are_404_and_ambiguous_paths_400() {
    let s = setup(json_ok()).await;
    let r = s
        .proxy
        .send(&format!(
            "GET /tunnels/clusters/nope/api HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {USER_TOKEN}\r\n\r\n"
        ))
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["kind"], "Status");
    let r = s.proxy.send("GET /nowhere HTTP/1.1\r\nHost: g\r\n\r\n").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["code_name"], "NOT_FOUND");
    for path in ["/api/../../x", "/api/%2e%2e/secrets", "/api%2Fv1/pods", "/./api", "/api%5c", "/api//v1"] {
        let r = s.proxy.send(&get(path, USER_TOKEN, "")).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
    }
    assert_eq!(s.upstream.connections(), 0, "nothing ambiguous was forwarded");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_redirect_is_502_without_location() {
    let s = setup(Arc::new(|_| {
        Reply::Bytes(
            b"HTTP/1.1 302 Found\r\nLocation: https://evil.example/steal\r\nContent-Length: 0\r\n\r\n".to_vec(),
        )
    }))
    .await;
    let r = s.proxy.send(&get("/api", USER_TOKEN, "")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.header("location").is_none());
    assert!(!r.text().contains("evil.example"));
}

#[tokio::test(flavor = "multi_thread")]
async fn ambiguous_framing_is_400_and_closes() {
    let s = setup(json_ok()).await;
    let base = format!("POST /tunnels/clusters/{IDENTIFIER}/api/v1/namespaces HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {USER_TOKEN}\r\n");
    for framing in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        "Content-Length: 5, 5\r\n\r\nhello",
        "Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        "Transfer-Encoding: chunked\r\n\r\nffffffffffffffff0\r\n",
        "Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    ] {
        let mut stream = s.proxy.connect().await;
        stream.write_all(format!("{base}{framing}").as_bytes()).await.unwrap();
        let r = read_response(&mut stream).await;
        assert_eq!(r.status, 400, "{framing:?}: {}", r.text());
        assert!(closed(&mut stream, Duration::from_secs(5)).await, "{framing:?}: the connection is closed");
    }
    // A valid chunked body is re-framed by the gateway.
    let mut stream = s.proxy.connect().await;
    stream
        .write_all(format!("{base}Transfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let r = read_response(&mut stream).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let forwarded = s.upstream.requests().pop().unwrap();
    assert_eq!(dechunk(&forwarded.body).unwrap(), b"abcde");
    assert!(!String::from_utf8_lossy(&forwarded.body).contains("x=1"), "chunk extensions are not copied");
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_heads_are_431_and_414() {
    let s = setup(json_ok()).await;
    let big = format!("X-Big: {}\r\n", "a".repeat(70 * 1024));
    assert_eq!(s.proxy.send(&get("/api", USER_TOKEN, &big)).await.status, 431);
    let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
    assert_eq!(s.proxy.send(&get("/api", USER_TOKEN, &many)).await.status, 431);
    let long = format!("/api?q={}", "a".repeat(9 * 1024));
    assert_eq!(s.proxy.send(&get(&long, USER_TOKEN, "")).await.status, 414);
    assert_eq!(s.upstream.connections(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_carries_several_requests_and_reuses_the_upstream_connection() {
    let s = setup(json_ok()).await;
    let mut stream = s.proxy.connect().await;
    for _ in 0..5 {
        stream.write_all(get("/api", USER_TOKEN, "").as_bytes()).await.unwrap();
        assert_eq!(read_response(&mut stream).await.status, 200);
    }
    assert_eq!(s.upstream.requests().len(), 5);
    assert_eq!(s.upstream.connections(), 1, "one pooled upstream connection served all five");
}

/// A POST creating a namespace: not idempotent, so the proxy never retries it.
fn post_namespace() -> String {
    format!(
        "POST /tunnels/clusters/{IDENTIFIER}/api/v1/namespaces HTTP/1.1\r\nHost: g\r\n\
         Authorization: Bearer {USER_TOKEN}\r\nContent-Length: 2\r\n\r\n{{}}"
    )
}

/// Two POSTs 1.5 s apart through `proxy` (its pool checks connections
/// idle for over a second). Both must succeed.
async fn two_posts_apart(proxy: &Proxy) {
    let r = proxy.send(&post_namespace()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A POST is not retried on a failed pooled connection: reusing a dead one would be a 502.
    let r = proxy.send(&post_namespace()).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pooled_connection_the_upstream_closed_is_not_reused_for_a_post() {
    let s = setup(Arc::new(|_| Reply::BytesThenIdleClose(ok_json("{}"), Duration::from_millis(200)))).await;
    two_posts_apart(&s.proxy).await;
    assert_eq!(s.upstream.requests().len(), 2);
    assert_eq!(s.upstream.connections(), 2, "the closed connection was left, a new one made");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pooled_connection_still_open_after_an_idle_spell_is_reused() {
    let s = setup(Arc::new(|_| Reply::Bytes(ok_json("{}")))).await;
    two_posts_apart(&s.proxy).await;
    assert_eq!(s.upstream.connections(), 1, "the check kept the healthy connection");
}

/// How the TLS upstream ends a connection left idle.
#[derive(Clone, Copy)]
enum IdleEnd {
    /// close_notify, with the TCP connection left open.
    CloseNotifyOnly,
    /// Never: the connection stays usable.
    Never,
}

/// An https apiserver for `kubernetes` that answers each request with `reply(its head)`; a
/// connection idle for 200 ms ends as `end` says. Returns its port and how many connections it
/// accepted.
async fn tls_upstream(
    certs: &bcs_testkit::apiserver::CertPair,
    end: IdleEnd,
    reply: fn(&str) -> Vec<u8>,
) -> (u16, Arc<std::sync::atomic::AtomicUsize>, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncReadExt;
    let acceptor = tokio_rustls::TlsAcceptor::from(certs.server_config());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut buf = vec![0u8; 65536];
                let mut seen = Vec::new();
                loop {
                    // A request: its head, then its Content-Length body.
                    let done = |seen: &[u8]| {
                        let end = seen.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
                        let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                        (seen.len() >= end + length).then_some(end + length)
                    };
                    while done(&seen).is_none() {
                        let read = tls.read(&mut buf);
                        let n = match (seen.is_empty(), end) {
                            (true, IdleEnd::CloseNotifyOnly) => {
                                match tokio::time::timeout(Duration::from_millis(200), read).await {
                                    Ok(r) => r.unwrap_or(0),
                                    Err(_) => {
                                        tls.get_mut().1.send_close_notify();
                                        let _ = tls.flush().await;
                                        // The TCP connection stays open: only the TLS layer says it ended.
                                        tokio::time::sleep(Duration::from_secs(60)).await;
                                        return;
                                    }
                                }
                            }
                            _ => read.await.unwrap_or(0),
                        };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                    }
                    let used = done(&seen).unwrap();
                    let head = String::from_utf8_lossy(&seen[..used]).into_owned();
                    seen.drain(..used);
                    if tls.write_all(&reply(&head)).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, accepted, task)
}

/// Two POSTs 1.5 s apart through the real proxy to a TLS upstream that ends idle connections
/// as `end` says; how many connections the upstream accepted.
/// (connections the TLS upstream accepted, the proxy's metrics after the two POSTs).
async fn tls_upstream_connections_for_two_posts(end: IdleEnd) -> (usize, String) {
    let certs = bcs_testkit::apiserver::CertPair::generate_for("cluster-ca", &["kubernetes"]);
    let (port, accepted, _task) = tls_upstream(&certs, end, |_| ok_json("{}")).await;
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = Proxy::spawn(dir.path(), &ProxyOptions::default());
    let upstream = format!("https://127.0.0.1:{port}");
    let _admin = FakeAdmin::start(&proxy.socket(), snapshot(1, &upstream, &certs.ca_pem)).await;
    proxy.wait_ready().await;
    two_posts_apart(&proxy).await;
    (accepted.load(std::sync::atomic::Ordering::SeqCst), proxy.metrics().await)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pooled_tls_connection_the_apiserver_ended_with_close_notify_alone_is_not_reused() {
    let (accepted, metrics) = tls_upstream_connections_for_two_posts(IdleEnd::CloseNotifyOnly).await;
    assert_eq!(accepted, 2, "the ended connection was left, a new one made");
    // The new connection resumed the first one's session from a ticket (no certificate check).
    for line in [
        "bcs_api_upstream_tls_handshakes_total{kind=\"full\"} 1",
        "bcs_api_upstream_tls_handshakes_total{kind=\"resumed\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pooled_tls_connection_still_open_after_an_idle_spell_is_reused() {
    let (accepted, _) = tls_upstream_connections_for_two_posts(IdleEnd::Never).await;
    assert_eq!(accepted, 1, "the check kept the healthy connection (session tickets and all)");
}

#[tokio::test(flavor = "multi_thread")]
async fn large_bodies_from_a_tls_apiserver_arrive_whole_and_the_connection_serves_small_ones_after() {
    // Bulk bodies (over 256 KiB) are read with a receive low-water mark (low_water.rs): each must
    // end without waiting for bytes that never come, whatever its size modulo the mark's steps
    // and TLS records, and the pooled connection must then read a small answer at once.
    const SIZES: [usize; 7] = [1024 * 1024, 1024, 300 * 1024, 5 * 1024 * 1024 + 7, 17, 2 * 1024 * 1024 - 1, 1024];
    let certs = bcs_testkit::apiserver::CertPair::generate_for("cluster-ca", &["kubernetes"]);
    let (port, accepted, _task) = tls_upstream(&certs, IdleEnd::Never, sized_reply).await;
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = Proxy::spawn(dir.path(), &ProxyOptions::default());
    let upstream = format!("https://127.0.0.1:{port}");
    let _admin = FakeAdmin::start(&proxy.socket(), snapshot(1, &upstream, &certs.ca_pem)).await;
    proxy.wait_ready().await;
    let mut stream = proxy.connect().await;
    get_sized_bodies(&mut stream, &SIZES).await;
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "one pooled connection served them all");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_token_reaches_the_logs_and_metrics_count_requests() {
    let s = setup(json_ok()).await;
    assert_eq!(s.proxy.send(&get("/api", USER_TOKEN, "")).await.status, 200);
    assert_eq!(s.proxy.send(&get("/api", SUPER_TOKEN, "")).await.status, 200);
    assert_eq!(s.proxy.send(&get("/api", "wrongTokenThatMustNotBeLogged01", "")).await.status, 401);
    assert_eq!(s.proxy.send(&get("/api", USER_TOKEN, "Impersonate-Group: x\r\n")).await.status, 403);
    let metrics = s.proxy.metrics().await;
    assert!(metrics.contains("bcs_api_request_count_total{type=\"k8s\",method=\"GET\",code=\"200\"} 2"), "{metrics}");
    assert!(
        metrics.contains("bcs_api_request_err_count_total{type=\"k8s\",method=\"GET\",code=\"401\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("bcs_api_snapshot_revision 1"), "{metrics}");
    assert!(metrics.contains("bcs_api_request_latency_seconds_count{type=\"k8s\"} 4"), "{metrics}");
    assert!(
        s.proxy.process.wait_stderr(&["status=401", "status=403"], Duration::from_secs(5)),
        "{}",
        s.proxy.process.stderr()
    );
    let logs = s.proxy.process.stderr();
    assert!(logs.contains("request") && logs.contains("status=401"), "the access log has a line per request: {logs}");
    assert!(logs.contains("DEBUG") || logs.contains("TRACE"), "v: 9 logs at the most verbose level");
    for secret in [USER_TOKEN, SUPER_TOKEN, CLUSTER_TOKEN, "wrongTokenThatMustNotBeLogged01"] {
        assert!(!logs.contains(secret), "a token reached the logs");
        assert!(!metrics.contains(secret), "a token reached the metrics");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_is_never_read_as_a_request_when_no_upstream_takes_it() {
    // The cluster's only address refuses connections: the request's body is never sent, and
    // the connection must close after the 502 rather than read that body as the next request.
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = Proxy::spawn(dir.path(), &ProxyOptions::default());
    let dead = format!("http://127.0.0.1:{}", bcs_testkit::free_port());
    let _admin = FakeAdmin::start(&proxy.socket(), snapshot(1, &dead, "")).await;
    proxy.wait_ready().await;
    let inner = format!(
        "GET /tunnels/clusters/{IDENTIFIER}/api/smuggled HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {USER_TOKEN}\r\n\r\n"
    );
    for expect in ["", "Expect: 100-continue\r\n"] {
        let mut stream = proxy.connect().await;
        let request = format!(
            "POST /tunnels/clusters/{IDENTIFIER}/api/v1/namespaces HTTP/1.1\r\nHost: g\r\n\
             Authorization: Bearer {USER_TOKEN}\r\n{expect}Content-Length: {}\r\n\r\n{inner}",
            inner.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        // Everything the proxy writes, up to its close: one 502, nothing for the body.
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut raw))
            .await
            .unwrap_or_else(|_| panic!("{expect:?}: still open; got {}", String::from_utf8_lossy(&raw)))
            .unwrap();
        let text = String::from_utf8_lossy(&raw).to_lowercase();
        assert_eq!(text.matches("http/1.1 502").count(), 1, "{expect:?}: {text}");
        assert_eq!(text.matches("http/1.1 ").count(), if expect.is_empty() { 1 } else { 2 }, "{expect:?}: {text}");
        assert!(text.contains("connection: close"), "{expect:?}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn not_modified_is_relayed_and_the_connection_stays_usable() {
    let s = setup(Arc::new(|_| Reply::Bytes(b"HTTP/1.1 304 Not Modified\r\nETag: \"v7\"\r\n\r\n".to_vec()))).await;
    let mut stream = s.proxy.connect().await;
    for _ in 0..2 {
        let request = get("/openapi/v3", USER_TOKEN, "If-None-Match: \"v7\"\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let r = read_response(&mut stream).await;
        assert_eq!(r.status, 304, "{}", r.text());
        assert_eq!(r.header("etag").as_deref(), Some("\"v7\""));
        assert!(r.body.is_empty());
    }
    assert_eq!(s.upstream.requests().len(), 2);
    assert_eq!(s.upstream.requests()[1].headers("if-none-match"), vec!["\"v7\"".to_owned()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_1_0_client_gets_a_chunked_answer_unframed_until_close() {
    let s = setup(Arc::new(|_| {
        Reply::Bytes(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec(),
        )
    }))
    .await;
    let mut stream = s.proxy.connect().await;
    let request = format!(
        "GET /tunnels/clusters/{IDENTIFIER}/api HTTP/1.0\r\nHost: g\r\nAuthorization: Bearer {USER_TOKEN}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut raw))
        .await
        .expect("the connection closes after the body")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).to_lowercase();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(body, "hello world");
    // An HTTP/1.1 client still gets it chunked.
    let r = s.proxy.send(&get("/api", USER_TOKEN, "")).await;
    assert_eq!(r.header("transfer-encoding").as_deref(), Some("chunked"));
    assert_eq!(r.text(), "hello world");
}

/// A proxy serving the test cluster at these apiserver addresses, in this order, with this CA.
async fn proxy_with_addresses(addresses: &[String], ca_pem: &str) -> (tempfile::TempDir, Proxy, FakeAdmin) {
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = Proxy::spawn(dir.path(), &ProxyOptions::default());
    let mut cluster = snapshot(1, &addresses[0], ca_pem);
    cluster.clusters[0].credentials.as_mut().unwrap().addresses = addresses.to_vec();
    let admin = FakeAdmin::start(&proxy.socket(), cluster).await;
    proxy.wait_ready().await;
    (dir, proxy, admin)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ejected_address_that_answers_again_is_taken_back_by_the_probe() {
    // The cluster's first address is down at first: requests fail over to the second, and the
    // first is ejected. Once it listens again, the proxy's probe (every 5 s) takes it back
    // before its 10-s ejection runs out, and the first address takes the traffic again.
    let second = RawUpstream::start(json_ok()).await;
    let first_port = bcs_testkit::free_port();
    let (_dir, proxy, _admin) =
        proxy_with_addresses(&[format!("http://127.0.0.1:{first_port}"), second.url()], "").await;
    assert_eq!(proxy.send(&get("/api", USER_TOKEN, "")).await.status, 200);
    assert_eq!(second.requests().len(), 1, "failed over to the second address");

    let first = RawUpstream::start_on(first_port, json_ok()).await;
    let started = std::time::Instant::now();
    while first.requests().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(9),
            "the first address was not taken back before its ejection ran out"
        );
        assert_eq!(proxy.send(&get("/api", USER_TOKEN, "")).await.status, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("the first address took traffic again {:?} after it came back", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_registered_again_under_its_id_is_reached_with_its_own_ca() {
    // Deleted and registered again: the same cluster id and credential version 1, but a new
    // identifier, a new apiserver and a new CA. The old CA must not verify the new apiserver.
    let old = RawUpstream::start_tls(json_ok()).await;
    let new = RawUpstream::start_tls(json_ok()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = Proxy::spawn(dir.path(), &ProxyOptions::default());
    let admin = FakeAdmin::start(&proxy.socket(), snapshot(1, &old.url(), &old.ca_pem)).await;
    proxy.wait_ready().await;
    assert_eq!(proxy.send(&get("/api", USER_TOKEN, "")).await.status, 200);

    let again = "bcs-k8s-001-zyxwvuts-fedcba9876543210";
    let mut replaced = snapshot(2, &new.url(), &new.ca_pem);
    replaced.clusters[0].identifier = again.into();
    admin.publish(replaced);
    admin.wait_ack(2).await;
    let request =
        format!("GET /tunnels/clusters/{again}/api HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {USER_TOKEN}\r\n\r\n");
    let r = proxy.send(&request).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(new.requests().len(), 1);
    assert_eq!(old.requests().len(), 1, "nothing more went to the old apiserver");
}

/// The kernel timers (`kind:expiry` of /proc/net/tcp) of established loopback sockets whose
/// local (`local`) or remote address has `port`.
fn tcp_timers(port: u16, local: bool) -> Vec<String> {
    let port = format!(":{port:04X}");
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    // Fields: sl, local, remote, state, queues, timer; established is 01.
    tcp.lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 5 && f[if local { 1 } else { 2 }].ends_with(&port) && f[3] == "01")
        .map(|f| f[5].to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_connections_keep_a_keepalive_timer() {
    // A peer that vanishes without a FIN is found by TCP keepalive: the proxy's pooled
    // upstream connection, idle after its answer, has the kernel's keepalive timer running.
    let s = setup(json_ok()).await;
    assert_eq!(s.proxy.send(&get("/api", USER_TOKEN, "")).await.status, 200);
    let timers = tcp_timers(s.upstream.address.port(), false);
    assert!(!timers.is_empty(), "no connection to the upstream");
    assert!(timers.iter().all(|t| t.starts_with("02:")), "timers {timers:?} (02 is keepalive)");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_connections_keep_a_keepalive_timer() {
    // An idle exec tunnel or watch whose client vanished (a laptop asleep, a NAT that forgot)
    // holds two sockets until something notices: keepalive does, on the client leg too.
    let s = setup(json_ok()).await;
    let idle = s.proxy.connect().await;
    // The kernel lists the connection as soon as it is established, before the proxy has
    // accepted it and set its options: wait for that (a second at most).
    let mut timers = Vec::new();
    for _ in 0..50 {
        timers = tcp_timers(s.proxy.plain_port, true);
        if !timers.is_empty() && timers.iter().all(|t| t.starts_with("02:")) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!timers.is_empty(), "the proxy's side of the connection is not there");
    assert!(timers.iter().all(|t| t.starts_with("02:")), "timers {timers:?} (02 is keepalive)");
    drop(idle);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateways_own_answer_to_head_has_no_body() {
    // A body after a HEAD answer would be read as the start of the next answer (RFC 9110
    // 9.3.2): pipelined HEAD then GET, the second answer must start right after the first head.
    use tokio::io::AsyncReadExt;
    let s = setup(json_ok()).await;
    let mut stream = s.proxy.connect().await;
    stream
        .write_all(b"HEAD /nope HTTP/1.1\r\nHost: g\r\n\r\nGET /nope HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut all)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&all);
    let (first, rest) = text.split_once("\r\n\r\n").unwrap();
    assert!(first.starts_with("HTTP/1.1 404 ") && first.contains("Content-Length: "), "{first}");
    assert!(rest.starts_with("HTTP/1.1 404 "), "the HEAD answer carried a body: {rest:?}");
    assert!(rest.contains("no route for /nope"), "{rest}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_only_sends_interim_answers_gets_502_at_once() {
    // A registered cluster's apiserver may be anyone's server: one that sends 1xx after 1xx
    // must not hold the request until the 120-s answer timeout. A few are skipped, as a real
    // apiserver's 100 Continue is; past 16, 502.
    let s = setup(Arc::new(|request: &RecordedRequest| {
        if request.request_line().contains("few") {
            let mut bytes = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n".to_vec();
            bytes.extend_from_slice(&ok_json(r#"{"kind":"PodList","items":[]}"#));
            Reply::Bytes(bytes)
        } else {
            Reply::Stream(b"HTTP/1.1 100 Continue\r\n\r\n".repeat(40), vec![(Duration::from_secs(60), Vec::new())])
        }
    }))
    .await;
    assert_eq!(s.proxy.send(&get("/api/v1/pods?few", USER_TOKEN, "")).await.status, 200);
    let started = std::time::Instant::now();
    let r = s.proxy.send(&get("/api/v1/pods?many", USER_TOKEN, "")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    // How the upstream failed is logged, not told to the client.
    assert!(!r.text().contains("interim"), "{}", r.text());
    assert!(s.proxy.process.wait_stderr(&["interim"], Duration::from_secs(5)), "{}", s.proxy.process.stderr());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_3_mib_is_413_and_closes_the_connection() {
    let s = setup(json_ok()).await;
    let post = |framing: &str| {
        format!(
            "POST /tunnels/clusters/{IDENTIFIER}/api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: g\r\n\
             Authorization: Bearer {USER_TOKEN}\r\nContent-Type: application/json\r\n{framing}\r\n"
        )
    };
    // Announced: refused before a byte of it is read, and nothing reaches the upstream.
    let mut stream = s.proxy.connect().await;
    stream.write_all(post("Content-Length: 4194304\r\n").as_bytes()).await.unwrap();
    let r = read_response(&mut stream).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.text().contains("larger than 3 MiB"), "{}", r.text());
    assert!(r.head.starts_with("HTTP/1.1 413 Content Too Large\r\n"), "{}", r.head);
    assert_eq!(r.json()["reason"], "RequestEntityTooLarge");
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert_eq!(s.upstream.connections(), 0);

    // Chunked: cut off once more than 3 MiB has come.
    let mut stream = s.proxy.connect().await;
    stream.write_all(post("Transfer-Encoding: chunked\r\n").as_bytes()).await.unwrap();
    let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
    for _ in 0..64 {
        // The proxy may answer and close before the last chunks: later writes can fail.
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let r = read_response(&mut stream).await;
    assert_eq!(r.status, 413, "{}", r.text());
    // A body of exactly 3 MiB still passes.
    let mut stream = s.proxy.connect().await;
    stream.write_all(post("Content-Length: 3145728\r\n").as_bytes()).await.unwrap();
    stream.write_all(&vec![b'x'; 3 << 20]).await.unwrap();
    assert_eq!(read_response(&mut stream).await.status, 200);
}

/// As kube-apiserver refuses a request it does not authorise: `answer`, then a close with the
/// body unread (a reset reaches the proxy mid-upload). Returns its port and how many request
/// heads it has read.
async fn early_answerer(answer: &'static str) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let heads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && socket.read(&mut byte).await.unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = socket.write_all(answer.as_bytes()).await;
            drop(socket);
        }
    });
    (port, heads)
}

/// Sends a POST with a 3 MiB body (`body`, padded) to a proxy whose cluster is at `port`, the
/// body going on while the answer comes, and returns everything the client reads.
async fn post_while_answered(port: u16, body: &[u8]) -> String {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = Proxy::spawn(dir.path(), &ProxyOptions::default());
    let _admin = FakeAdmin::start(&proxy.socket(), snapshot(1, &format!("http://127.0.0.1:{port}"), "")).await;
    proxy.wait_ready().await;
    let size = 3 << 20;
    let mut stream = proxy.connect().await;
    let head = format!(
        "POST /tunnels/clusters/{IDENTIFIER}/api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: g\r\n\
         Authorization: Bearer {USER_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut payload = body.to_vec();
    payload.resize(size, b'x');
    let (mut reader, mut writer) = stream.into_split();
    let sending = tokio::spawn(async move {
        for piece in payload.chunks(64 * 1024) {
            if writer.write_all(piece).await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), reader.read_to_end(&mut answer)).await;
    sending.abort();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_refuses_before_reading_the_body_is_heard_not_a_502() {
    let (port, _) = early_answerer(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: 49\r\n\r\n\
         {\"kind\":\"Status\",\"code\":403,\"reason\":\"Forbidden\"}",
    )
    .await;
    let answer = post_while_answered(port, b"{}").await;
    assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
    assert!(answer.contains("Connection: close") && answer.contains("\"Forbidden\""), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_early_answer_the_proxy_refuses_still_closes_so_the_rest_of_the_body_is_never_a_request() {
    // A redirect is answered 502, not relayed; the body's rest, crafted as a request, must
    // never be read as the client's next one.
    let (port, heads) =
        early_answerer("HTTP/1.1 302 Found\r\nLocation: https://elsewhere/\r\nContent-Length: 0\r\n\r\n").await;
    let smuggled = format!("GET /tunnels/clusters/{IDENTIFIER}/api/v1/secrets HTTP/1.1\r\nHost: g\r\n\r\n");
    let mut body = vec![b' '; 2 << 20];
    body.extend_from_slice(smuggled.as_bytes());
    let answer = post_while_answered(port, &body).await;
    assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
    assert!(answer.contains("Connection: close"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "one answer only: {answer}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(heads.load(std::sync::atomic::Ordering::SeqCst), 1, "the smuggled request reached the upstream");
}

/// A GET's status and how long its answer took, waiting up to `patience` (past the 10 s of
/// `Proxy::send`: a connect timeout is that long).
async fn status_within(proxy: &Proxy, patience: Duration) -> (String, Duration) {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut stream = proxy.connect().await;
    stream.write_all(get("/api", USER_TOKEN, "").as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(patience, stream.read(&mut chunk)).await.expect("an answer in time").unwrap();
        assert!(n > 0, "closed without an answer");
        head.extend_from_slice(&chunk[..n]);
    }
    (String::from_utf8_lossy(&head[9..12]).into_owned(), started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_address_that_times_out_fails_the_next_requests_at_once() {
    let (_listener, _filling, port) = blackhole();
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = Proxy::spawn(dir.path(), &ProxyOptions::default());
    let _admin = FakeAdmin::start(&proxy.socket(), snapshot(1, &format!("http://127.0.0.1:{port}"), "")).await;
    proxy.wait_ready().await;
    // The first request waits the connect timeout (10 s) and gets 502.
    let (status, took) = status_within(&proxy, Duration::from_secs(20)).await;
    assert_eq!(status, "502");
    assert!(took >= Duration::from_secs(9), "{took:?}");
    // The next ones, while the address is set aside, fail at once.
    for _ in 0..3 {
        let (status, took) = status_within(&proxy, Duration::from_secs(20)).await;
        assert_eq!(status, "502");
        assert!(took < Duration::from_secs(2), "a request to a silent address waited {took:?}");
    }
    // The requests that skipped it failed for its timeout, and say so; one connection failed.
    let metrics = proxy.metrics().await;
    for line in [
        "bcs_api_gateway_errors_total{type=\"k8s\",code=\"502\",reason=\"upstream_connect_timeout\"} 4",
        "bcs_api_upstream_connect_errors_total{cluster=\"bcs-k8s-001-AbCdEfGh\",reason=\"connect_timeout\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_address_whose_tls_handshake_hangs_is_set_aside_and_not_taken_back_by_a_tcp_probe() {
    // It accepts TCP (the kernel completes connections to a listener nobody serves) and never
    // answers the ClientHello. A TCP probe connects, which proves nothing here.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let ca = RawUpstream::start_tls(json_ok()).await.ca_pem.clone();
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = Proxy::spawn(dir.path(), &ProxyOptions::default());
    let _admin = FakeAdmin::start(&proxy.socket(), snapshot(1, &format!("https://127.0.0.1:{port}"), &ca)).await;
    proxy.wait_ready().await;
    let (status, took) = status_within(&proxy, Duration::from_secs(20)).await;
    assert_eq!(status, "502");
    assert!(took >= Duration::from_secs(9), "{took:?}");
    assert!(
        proxy.process.wait_stderr(&["TCP connected, but the TLS handshake did not finish"], Duration::from_secs(5)),
        "{}",
        proxy.process.stderr()
    );
    // Past a probe round (every 5 s) and within the 10-s ejection: still set aside, so the
    // request fails at once instead of waiting 10 s again.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (status, took) = status_within(&proxy, Duration::from_secs(20)).await;
    assert_eq!(status, "502");
    assert!(took < Duration::from_secs(2), "waited {took:?}");
    assert!(!proxy.process.stderr().contains("answers again"), "{}", proxy.process.stderr());
    let metrics = proxy.metrics().await;
    for line in [
        "bcs_api_gateway_errors_total{type=\"k8s\",code=\"502\",reason=\"upstream_tls_timeout\"} 2",
        "bcs_api_upstream_connect_errors_total{cluster=\"bcs-k8s-001-AbCdEfGh\",reason=\"tls_timeout\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
    drop(silent);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_without_credentials_is_503_and_the_access_log_names_user_and_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = RawUpstream::start(json_ok()).await;
    let mut proxy = Proxy::spawn(dir.path(), &ProxyOptions::default());
    let mut first = snapshot(1, &upstream.url(), "");
    first.clusters[0].credentials = None;
    let _admin = FakeAdmin::start(&proxy.socket(), first).await;
    proxy.wait_ready().await;
    let r = proxy.send(&get("/api", USER_TOKEN, "")).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("has no credentials yet"), "{}", r.text());
    // Known once the token and the identifier were: an operator sees whose request it was.
    assert!(
        proxy.process.wait_stderr(
            &["user=\"plain:alice\"", "cluster=\"bcs-k8s-001-AbCdEfGh\"", "status=503"],
            Duration::from_secs(5)
        ),
        "{}",
        proxy.process.stderr()
    );
    assert_eq!(upstream.connections(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_failures_are_counted_by_cluster_and_reason_and_the_access_log_names_the_upstream() {
    // The cluster's first address refuses connections, its second has a certificate the
    // cluster's CA did not sign, its third answers.
    let good = RawUpstream::start_tls(json_ok()).await;
    let wrong_ca = RawUpstream::start_tls(json_ok()).await;
    let refusing = format!("https://127.0.0.1:{}", bcs_testkit::free_port());
    let (_dir, proxy, admin) = proxy_with_addresses(&[refusing, wrong_ca.url(), good.url()], &good.ca_pem).await;
    assert_eq!(proxy.send(&get("/api", USER_TOKEN, "")).await.status, 200);
    assert_eq!(good.requests().len(), 1);
    let metrics = proxy.metrics().await;
    for line in [
        "bcs_api_upstream_connect_errors_total{cluster=\"bcs-k8s-001-AbCdEfGh\",reason=\"connect\"} 1",
        "bcs_api_upstream_connect_errors_total{cluster=\"bcs-k8s-001-AbCdEfGh\",reason=\"tls\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    // The answer came from the third address: the access line says which.
    let answered_by = format!("upstream=\"{}\"", good.address);
    assert!(
        proxy.process.wait_stderr(&[&answered_by, "status=200"], Duration::from_secs(5)),
        "{}",
        proxy.process.stderr()
    );
    // A TCP connection says nothing of a certificate: past a probe round (every 5 s) and within
    // the 10-s set-aside, the address with the wrong certificate has not been probed or tried
    // again (the upstream counts TCP connections, a probe's too).
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(proxy.send(&get("/api", USER_TOKEN, "")).await.status, 200);
    assert_eq!(wrong_ca.connections(), 1, "{}", proxy.process.stderr());
    assert!(!proxy.process.stderr().contains("answers again"), "{}", proxy.process.stderr());

    // The cluster is deleted: its series go with it (the housekeeping tick, every second).
    let mut gone = snapshot(2, &good.url(), &good.ca_pem);
    gone.clusters.clear();
    admin.publish(gone);
    admin.wait_ack(2).await;
    let started = std::time::Instant::now();
    while proxy.metrics().await.contains("bcs_api_upstream_connect_errors_total{cluster=\"bcs-k8s-001-AbCdEfGh\"") {
        assert!(started.elapsed() < Duration::from_secs(5), "a deleted cluster's connect errors stayed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateways_own_errors_are_counted_apart_from_the_upstreams() {
    let unavailable: Script =
        Arc::new(|_| Reply::Bytes(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n".to_vec()));
    let s = setup(unavailable).await;
    assert_eq!(s.proxy.send(&get("/api", USER_TOKEN, "")).await.status, 503);
    assert_eq!(s.proxy.send(&get("/api", "wrongToken", "")).await.status, 401);
    let big = format!("X-Big: {}\r\n", "a".repeat(70 * 1024));
    assert_eq!(s.proxy.send(&get("/api", USER_TOKEN, &big)).await.status, 431);
    let metrics = s.proxy.metrics().await;
    for line in [
        // Every request counts; a head the gateway could not read is of no route.
        "bcs_api_request_count_total{type=\"k8s\",method=\"GET\",code=\"503\"} 1",
        "bcs_api_request_count_total{type=\"k8s\",method=\"GET\",code=\"401\"} 1",
        "bcs_api_request_count_total{type=\"other\",method=\"OTHER\",code=\"431\"} 1",
        // Only the gateway's own answers count here: the 503 was the apiserver's.
        "bcs_api_gateway_errors_total{type=\"k8s\",code=\"401\",reason=\"unauthorized\"} 1",
        "bcs_api_gateway_errors_total{type=\"other\",code=\"431\",reason=\"headers_too_large\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    assert!(!metrics.contains("bcs_api_gateway_errors_total{type=\"k8s\",code=\"503\""), "{metrics}");
    assert_eq!(s.upstream.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_ca_that_does_not_parse_fails_at_the_first_address_and_sets_none_aside() {
    // Every address would fail alike: the next is not dialled, and no address is set aside.
    let first = RawUpstream::start_tls(json_ok()).await;
    let second = RawUpstream::start_tls(json_ok()).await;
    let broken_ca = "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n";
    let (_dir, proxy, _admin) = proxy_with_addresses(&[first.url(), second.url()], broken_ca).await;
    for _ in 0..2 {
        assert_eq!(proxy.send(&get("/api", USER_TOKEN, "")).await.status, 502);
    }
    assert_eq!(second.connections(), 0, "{}", proxy.process.stderr());
    let metrics = proxy.metrics().await;
    for line in [
        "bcs_api_gateway_errors_total{type=\"k8s\",code=\"502\",reason=\"upstream_config\"} 2",
        "bcs_api_upstream_connect_errors_total{cluster=\"bcs-k8s-001-AbCdEfGh\",reason=\"config\"} 2",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
    // The log is written by its own thread: waited for, not read at once.
    assert!(proxy.process.wait_stderr(&["the cluster CA"], Duration::from_secs(5)), "{}", proxy.process.stderr());
}
