//! A client that hangs up while the upstream has not answered yet, on the plain and the TLS
//! port: the proxy closes the upstream connection (an apiserver then cancels the request), and
//! a client that sends more instead (a pipelined request) is still answered, in order.
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long the upstream thinks before it answers: longer than forward.rs' CLIENT_QUIET (1 s),
/// after which the proxy watches the client, with room for the client to act in between.
const THINKING: Duration = Duration::from_millis(3500);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Setup {
    _dir: tempfile::TempDir,
    _admin: FakeAdmin,
    upstream: RawUpstream,
    proxy: Proxy,
    ca_pem: String,
}

/// The proxy with a TLS listener (a certificate from a fresh CA) in front of `script`.
async fn setup(script: Script) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (cert_config, ca_pem) = proxy_certificate(dir.path());
    let upstream = RawUpstream::start(script).await;
    let mut proxy =
        Proxy::spawn(dir.path(), &ProxyOptions { cores: 1, cert_config: Some(cert_config), ..ProxyOptions::default() });
    let admin = FakeAdmin::start(&proxy.socket(), snapshot(1, &upstream.url(), "")).await;
    proxy.wait_ready().await;
    Setup { _dir: dir, _admin: admin, upstream, proxy, ca_pem }
}

/// A client connection to the plain port, or a TLS one to the TLS port.
async fn client(s: &Setup, tls: bool) -> Box<dyn Io> {
    if !tls {
        return Box::new(s.proxy.connect().await);
    }
    Box::new(connect_tls(s.proxy.tls_port, &s.ca_pem).await)
}

/// Waits (up to 5 s) until the upstream has received `n` requests.
async fn requests_reaching(s: &Setup, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.upstream.requests().len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.upstream.requests().len(), n, "the requests reached the upstream");
}

/// A whole chunked body at the start of `bytes` (no extensions, no trailers): the payload and
/// the bytes it took; None while incomplete.
fn dechunk(bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
    let (mut body, mut at) = (Vec::new(), 0);
    loop {
        let line = bytes[at..].windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&bytes[at..at + line]).unwrap(), 16).unwrap();
        at += line + 2;
        if bytes.len() < at + size + 2 {
            return None;
        }
        body.extend_from_slice(&bytes[at..at + size]);
        at += size + 2;
        if size == 0 {
            return Some((body, at));
        }
    }
}

/// One response with a Content-Length or chunked body, from `held` (bytes already read) and the
/// stream.
async fn read_one(stream: &mut Box<dyn Io>, held: &mut Vec<u8>) -> (u16, Vec<u8>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if let Some(end) = held.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&held[..end]).into_owned();
            let status = head[9..12].parse().unwrap();
            let length: usize = head
                .lines()
                .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("content-length")))
                .map(|(_, v)| v.trim().parse().unwrap())
                .unwrap_or(0);
            let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
            if chunked {
                if let Some((body, used)) = dechunk(&held[end + 4..]) {
                    held.drain(..end + 4 + used);
                    return (status, body);
                }
            } else if held.len() >= end + 4 + length {
                let body = held[end + 4..end + 4 + length].to_vec();
                held.drain(..end + 4 + length);
                return (status, body);
            }
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await.expect("a response in time").unwrap();
        assert!(n > 0, "the connection ended before a whole response: {:?}", String::from_utf8_lossy(held));
        held.extend_from_slice(&buf[..n]);
    }
}

async fn hanging_up_closes_the_upstream_connection(tls: bool) {
    // The upstream answers after THINKING, and counts the proxy closing the connection before
    // that (Reply::Stream notices a read of 0 while it waits).
    let s = setup(Arc::new(|_| Reply::Stream(Vec::new(), vec![(THINKING, sized_reply("size=1024"))]))).await;
    let mut stream = client(&s, tls).await;
    stream.write_all(get("/api/v1/pods", USER_TOKEN, "").as_bytes()).await.unwrap();
    requests_reaching(&s, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // FIN on plain; close_notify and then FIN on TLS.
    stream.shutdown().await.unwrap();
    let left = Instant::now();
    while s.upstream.streams_closed.load(std::sync::atomic::Ordering::SeqCst) == 0
        && left.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = left.elapsed();
    assert_eq!(
        s.upstream.streams_closed.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the proxy closed the upstream connection of a request whose client had gone"
    );
    assert!(took < Duration::from_millis(2500), "closed {took:?} after the client left, before the answer came");
    // Nothing is written to a client that has gone: its connection just ends.
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await.expect("the end");
    assert!(rest.is_empty(), "the client got {:?}", String::from_utf8_lossy(&rest));
    drop(end);
    // Counted as nginx counts a client's abort (the metrics are gathered every second).
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut metrics = s.proxy.metrics().await;
    while !metrics.contains("code=\"499\"") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        metrics = s.proxy.metrics().await;
    }
    assert!(metrics.contains("bcs_api_request_count_total{type=\"k8s\",method=\"GET\",code=\"499\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_hangs_up_before_the_answer_gets_its_upstream_connection_closed() {
    hanging_up_closes_the_upstream_connection(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_client_that_hangs_up_before_the_answer_gets_its_upstream_connection_closed() {
    hanging_up_closes_the_upstream_connection(true).await;
}

async fn sending_more_is_not_hanging_up(tls: bool) {
    // `?slow` is answered after THINKING, anything else at once; one upstream connection.
    let s = setup(Arc::new(|request| {
        if request.request_line().contains("slow") {
            Reply::Paused(Vec::new(), vec![(THINKING, sized_reply("size=1024"))])
        } else {
            Reply::Bytes(sized_reply("size=2048"))
        }
    }))
    .await;
    let mut stream = client(&s, tls).await;
    stream.write_all(get("/api/v1/pods?slow", USER_TOKEN, "").as_bytes()).await.unwrap();
    requests_reaching(&s, 1).await;
    // Past CLIENT_QUIET, while the proxy watches this client: the next request, pipelined.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stream.write_all(get("/api/v1/pods", USER_TOKEN, "").as_bytes()).await.unwrap();
    let mut held = Vec::new();
    let (status, body) = read_one(&mut stream, &mut held).await;
    assert_eq!((status, body.len()), (200, 1024), "the slow answer first");
    assert!(body == patterned(1024));
    let (status, body) = read_one(&mut stream, &mut held).await;
    assert_eq!((status, body.len()), (200, 2048), "then the pipelined request's");
    assert!(body == patterned(2048));
    assert_eq!(s.upstream.connections(), 1, "one upstream connection, kept, served both");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_pipelined_while_the_upstream_thinks_is_answered_after_it() {
    sending_more_is_not_hanging_up(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_pipelined_over_tls_while_the_upstream_thinks_is_answered_after_it() {
    sending_more_is_not_hanging_up(true).await;
}

async fn a_quiet_chunked_answer_is_not_cut_by_a_pipelined_request(tls: bool) {
    // A finite chunked answer (a large list, `logs` without `-f`) whose upstream pauses 2 s
    // after its first chunk, while the client has already sent its next request: both are
    // answered, in order (the client's bytes are not taken for a hang-up).
    let s = setup(Arc::new(|request| {
        if request.request_line().contains("quiet") {
            let first = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n".to_vec();
            Reply::Paused(first, vec![(Duration::from_secs(2), b"4\r\nlast\r\n0\r\n\r\n".to_vec())])
        } else {
            Reply::Bytes(sized_reply("size=2048"))
        }
    }))
    .await;
    let mut stream = client(&s, tls).await;
    stream.write_all(get("/api/v1/pods?quiet", USER_TOKEN, "").as_bytes()).await.unwrap();
    requests_reaching(&s, 1).await;
    stream.write_all(get("/api/v1/pods", USER_TOKEN, "").as_bytes()).await.unwrap();
    let mut held = Vec::new();
    let (status, body) = read_one(&mut stream, &mut held).await;
    assert_eq!((status, String::from_utf8_lossy(&body).into_owned()), (200, "firstlast".to_owned()));
    let (status, body) = read_one(&mut stream, &mut held).await;
    assert_eq!((status, body.len()), (200, 2048), "then the pipelined request's");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_chunked_answer_is_finished_before_a_pipelined_request() {
    a_quiet_chunked_answer_is_not_cut_by_a_pipelined_request(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_chunked_answer_over_tls_is_finished_before_a_pipelined_request() {
    a_quiet_chunked_answer_is_not_cut_by_a_pipelined_request(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_a_tls_client_sends_before_a_slow_101_reach_the_tunnel_after_it() {
    // The upstream reads for 2.5 s before its 101 (recording what arrives meanwhile), then
    // echoes. The client's early bytes come 1.5 s in, while the proxy watches it: they are read
    // into its TLS session, not taken for a hang-up, held until the 101, then sent through.
    let switch = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".to_vec();
    let s = setup(Arc::new(move |_| Reply::SwitchAndEcho(switch.clone(), Duration::from_millis(2500)))).await;
    let mut stream = client(&s, true).await;
    let upgrade = get(
        "/api/v1/namespaces/default/pods/p/exec?command=cat&stdin=true",
        USER_TOKEN,
        "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
    );
    stream.write_all(upgrade.as_bytes()).await.unwrap();
    requests_reaching(&s, 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stream.write_all(b"EARLY-BYTES").await.unwrap();
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.ends_with(b"EARLY-BYTES") {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await.expect("the 101 and the echo").unwrap();
        assert!(n > 0, "ended early: {:?}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(seen.starts_with(b"HTTP/1.1 101 "), "{:?}", String::from_utf8_lossy(&seen));
    assert_eq!(s.upstream.early.lock().unwrap().clone(), vec![Vec::<u8>::new()], "nothing before the 101");
}
