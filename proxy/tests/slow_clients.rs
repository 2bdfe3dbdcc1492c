//! Clients that stall, with `proxy_config.client_body_timeout_seconds` and
//! `send_timeout_seconds` at 1 s: a request body that stops arriving gets 408 and the connection
//! closes; a client that stops reading is cut once what was written to it has gone
//! unacknowledged that long (the kernel's `TCP_USER_TIMEOUT`), which frees the upstream
//! connection; so is an upstream that stops reading a request body (the client gets 502); an
//! idle keep-alive client is affected by neither. Upstreams slow to answer, with
//! `response_head_timeout_seconds` at 2 s: 504, and the address is set aside only if it
//! answered nothing else meanwhile.
mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Setup {
    _dir: tempfile::TempDir,
    _admin: FakeAdmin,
    upstream: RawUpstream,
    proxy: Proxy,
}

async fn setup(script: Script) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let upstream = RawUpstream::start(script).await;
    let options = ProxyOptions {
        proxy_config_extra: "  client_body_timeout_seconds: 1\n  send_timeout_seconds: 1\n".into(),
        ..ProxyOptions::default()
    };
    let mut proxy = Proxy::spawn(dir.path(), &options);
    let admin = FakeAdmin::start(&proxy.socket(), snapshot(1, &upstream.url(), "")).await;
    proxy.wait_ready().await;
    Setup { _dir: dir, _admin: admin, upstream, proxy }
}

fn json_ok() -> Script {
    Arc::new(|_| Reply::Bytes(ok_json(r#"{"kind":"PodList","items":[]}"#)))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_body_that_stops_arriving_gets_408_and_the_connection_closes() {
    let s = setup(json_ok()).await;
    let mut stream = s.proxy.connect().await;
    let sent = Instant::now();
    let request = format!(
        "POST /tunnels/clusters/{IDENTIFIER}/api/v1/namespaces HTTP/1.1\r\nHost: g\r\n\
         Authorization: Bearer {USER_TOKEN}\r\nContent-Length: 100\r\n\r\n{{\"kind\":"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let r = read_response(&mut stream).await;
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(r.text().contains("request body stopped arriving"), "{}", r.text());
    assert!(sent.elapsed() >= Duration::from_millis(900), "answered before the timeout: {:?}", sent.elapsed());
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert!(closed(&mut stream, Duration::from_secs(5)).await);
    assert!(s.upstream.requests().is_empty(), "no complete request reached the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_keep_alive_client_outlasts_both_timeouts() {
    let s = setup(json_ok()).await;
    let mut stream = s.proxy.connect().await;
    for round in 0..2 {
        stream.write_all(get("/api/v1/pods", USER_TOKEN, "").as_bytes()).await.unwrap();
        assert_eq!(read_response(&mut stream).await.status, 200, "round {round}");
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    assert_eq!(s.upstream.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_cut_and_its_upstream_connection_freed() {
    // An endless watch: 1 MiB chunks, far more than the sockets' buffers hold.
    let mut piece = b"100000\r\n".to_vec();
    piece.extend(patterned(1 << 20));
    piece.extend_from_slice(b"\r\n");
    let script: Script = Arc::new(move |_| {
        let head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        Reply::Stream(head, (0..48).map(|_| (Duration::from_millis(5), piece.clone())).collect())
    });
    let s = setup(script).await;
    let mut stream = s.proxy.connect().await;
    let request = get("/api/v1/pods?watch=true", USER_TOKEN, "");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut first = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut first)).await.unwrap().unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&first[..n]));
    // From here on the client reads nothing, and keeps its socket open.
    let started = Instant::now();
    while s.upstream.streams_closed.load(Ordering::SeqCst) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the proxy still holds the stream of a client that stopped reading"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("the upstream stream was closed {:?} after the client stopped reading", started.elapsed());
    drop(stream);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_metrics_port_holds_few_connections_and_none_for_long() {
    // Unauthenticated and on every interface by default: idle connections there must not
    // hold the process's descriptors. 64 at once; one more is closed at once; each has 10 s.
    let s = setup(json_ok()).await;
    let connect = || tokio::net::TcpStream::connect(("127.0.0.1", s.proxy.metric_port));
    let mut held = Vec::new();
    for _ in 0..64 {
        let mut idle = connect().await.unwrap();
        idle.write_all(b"GET /metr").await.unwrap();
        held.push(idle);
    }
    let started = Instant::now();
    let mut extra = connect().await.unwrap();
    assert!(closed(&mut extra, Duration::from_secs(5)).await, "the 65th connection was kept");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The held ones end within their 10 s, and the port answers again.
    for idle in &mut held {
        assert!(closed(idle, Duration::from_secs(15)).await, "an idle metrics connection was kept");
    }
    println!("64 idle metrics connections closed {:?} after the first was opened", started.elapsed());
    let mut probe = connect().await.unwrap();
    probe.write_all(b"GET /healthz HTTP/1.1\r\nHost: m\r\n\r\n").await.unwrap();
    let r = read_response(&mut probe).await;
    assert_eq!((r.status, r.text()), (200, "ok\n".to_owned()));
}

#[tokio::test(flavor = "multi_thread")]
async fn timeouts_fire_on_a_connection_that_follows_others() {
    // Timers set by earlier connections' requests must not stand in for a later connection's
    // (a timer kept for reuse by monoio wakes the task that first polled it: tried, and this
    // body timeout then never fired).
    let s = setup(json_ok()).await;
    for _ in 0..3 {
        let mut earlier = s.proxy.connect().await;
        for _ in 0..3 {
            earlier.write_all(get("/api", USER_TOKEN, "").as_bytes()).await.unwrap();
            assert_eq!(read_response(&mut earlier).await.status, 200);
        }
    }
    let mut stream = s.proxy.connect().await;
    let request = format!(
        "POST /tunnels/clusters/{IDENTIFIER}/api/v1/namespaces HTTP/1.1\r\nHost: g\r\n\
         Authorization: Bearer {USER_TOKEN}\r\nContent-Length: 100\r\n\r\n{{\"kind\":"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), read_response(&mut stream)).await;
    assert_eq!(r.expect("no answer within 10 s: the 1-s body timeout did not fire").status, 408);
}

/// An apiserver that takes a connection and never reads it: its receive window closes, and what
/// the proxy sends it stays unacknowledged.
async fn deaf_upstream() -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<tokio::net::TcpStream>>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let address = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok(Ok((stream, _))) = tokio::time::timeout(Duration::from_secs(30), listener.accept()).await {
            held.push(stream);
        }
        held
    });
    (address, held)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_stops_reading_a_request_body_is_cut_and_the_client_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (address, _held) = deaf_upstream().await;
    let options = ProxyOptions {
        proxy_config_extra: "  client_body_timeout_seconds: 1\n  send_timeout_seconds: 1\n".into(),
        ..ProxyOptions::default()
    };
    let mut proxy = Proxy::spawn(dir.path(), &options);
    let _admin = FakeAdmin::start(&proxy.socket(), snapshot(1, &format!("http://{address}"), "")).await;
    proxy.wait_ready().await;

    // A body larger than what the kernel's buffers on the way can hold, sent as fast as the
    // proxy takes it (a client that keeps sending is never idle for the body timeout).
    let body_len = 3 * 1024 * 1024 - 1;
    let stream = proxy.connect().await;
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /tunnels/clusters/{IDENTIFIER}/api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: g\r\n\
         Authorization: Bearer {USER_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {body_len}\r\n\r\n"
    );
    let sender = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        writer.write_all(&vec![b' '; body_len]).await
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), reader.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(read.is_ok(), "no answer while the upstream did not read: {answer:?}");
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    sender.abort();
}

/// A proxy with `response_head_timeout_seconds: 2` serving the test cluster at two apiserver
/// addresses: the first delays `delayed` requests (all when `None`) 5 s, the second answers.
async fn two_addresses(delayed: Option<&'static str>) -> (Setup, RawUpstream) {
    let dir = tempfile::tempdir().unwrap();
    let first = RawUpstream::start(Arc::new(move |request: &RecordedRequest| {
        let ok = ok_json(r#"{"kind":"PodList","items":[]}"#);
        if delayed.is_none_or(|path| request.request_line().contains(path)) {
            Reply::Paused(Vec::new(), vec![(Duration::from_secs(5), ok)])
        } else {
            Reply::Bytes(ok)
        }
    }))
    .await;
    let second = RawUpstream::start(json_ok()).await;
    let options =
        ProxyOptions { proxy_config_extra: "  response_head_timeout_seconds: 2\n".into(), ..ProxyOptions::default() };
    let mut proxy = Proxy::spawn(dir.path(), &options);
    let mut cluster = snapshot(1, &first.url(), "");
    cluster.clusters[0].credentials.as_mut().unwrap().addresses = vec![first.url(), second.url()];
    let admin = FakeAdmin::start(&proxy.socket(), cluster).await;
    proxy.wait_ready().await;
    (Setup { _dir: dir, _admin: admin, upstream: first, proxy }, second)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_request_to_an_address_that_answers_others_is_504_and_does_not_set_it_aside() {
    // One user's slow call (a service proxied through the apiserver) times out while the same
    // address answers everyone else: the address keeps the traffic.
    let (s, second) = two_addresses(Some("/slow")).await;
    let proxy = Arc::new(s.proxy);
    let slow = tokio::spawn({
        let proxy = proxy.clone();
        async move {
            let started = Instant::now();
            let status = proxy.send(&get("/api/v1/namespaces/a/services/b:80/proxy/slow", USER_TOKEN, "")).await.status;
            (status, started.elapsed())
        }
    });
    while !slow.is_finished() {
        assert_eq!(proxy.send(&get("/api", USER_TOKEN, "")).await.status, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, took) = slow.await.unwrap();
    assert_eq!(status, 504, "the slow request times out");
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_secs(5), "after the 2-s limit: {took:?}");
    for _ in 0..3 {
        assert_eq!(proxy.send(&get("/api", USER_TOKEN, "")).await.status, 200);
    }
    assert!(s.upstream.requests().len() >= 5, "the first address took the others' requests");
    assert_eq!(second.requests().len(), 0, "the first address was not set aside for one slow request");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_timed_out_by_an_address_that_answers_nothing_sets_it_aside() {
    let (s, second) = two_addresses(None).await;
    let started = Instant::now();
    assert_eq!(s.proxy.send(&get("/api", USER_TOKEN, "")).await.status, 504);
    assert!(started.elapsed() >= Duration::from_millis(1900), "after the 2-s limit: {:?}", started.elapsed());
    assert_eq!(second.requests().len(), 0, "a request the first address took is not sent again");
    // The next requests go to the second address first, at once.
    let started = Instant::now();
    assert_eq!(s.proxy.send(&get("/api", USER_TOKEN, "")).await.status, 200);
    assert!(started.elapsed() < Duration::from_secs(1), "not delayed by the hung address");
    assert_eq!(second.requests().len(), 1, "the hung address was set aside");
    assert_eq!(s.upstream.requests().len(), 1);
}
