//! One exchange with an upstream: send the request (head from [`crate::rewrite`], body streamed),
//! read the answer, stream it back. Nothing is buffered whole: every read is written on at
//! once, so watches and `logs -f` flow as they happen.
//!
//! Rules kept here:
//! - an upstream 3xx becomes 502 without `Location` (a redirect must never carry a token);
//! - an upgrade switches to a raw two-way copy only after the upstream's `101`; bytes the client
//!   sent after the request are held until then; any other answer is relayed and the client
//!   connection is closed, never switched;
//! - a response with ambiguous framing is 502 and its upstream connection is dropped;
//! - an idempotent, body-less request that failed on a reused pooled connection before any
//!   answer byte is retried once on a fresh connection;
//! - long-lived streams close when their token is revoked or expires ([`crate::streams`]).
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};

use crate::auth::Caller;
use crate::error::ProxyError;
use crate::http1::body::{encode_chunk, ChunkedDecoder, LAST_CHUNK};
use crate::http1::head::{parse_response_after, Framing, RequestHead, ResponseHead};
use crate::io::{read_more, write_all, write_from, Came, Conn, Readable, BUFFER};
use crate::low_water;
use crate::rewrite::{self, BodyFraming, ClusterIdentity};
use crate::streams;
use crate::tables::Upstream;
use crate::upstream::{self, Candidates, Endpoint, PoolKey};

/// The largest request body passed on (413 and close beyond it): kube-apiserver's own limit on
/// a request body, and more than any console or mesos-driver call carries. Streams (exec,
/// attach, port-forward) are upgrades, not bodies, and have none.
pub const MAX_BODY: u64 = 3 << 20;

/// How long an answer is waited for from an upstream that stopped taking the request body.
const EARLY_ANSWER: Duration = Duration::from_secs(1);

/// How long an upstream may take to start answering before its client is watched for hanging
/// up (most answers come sooner, and watching costs an operation).
const CLIENT_QUIET: Duration = Duration::from_secs(1);

/// How much of a Content-Length body may be held to make one larger write, and the read size
/// that counts as "more is flowing" (a TLS record is 16 KiB; a read of half that or more).
const GATHER: usize = 48 * 1024;
const FULL_READ: usize = 8 * 1024;

/// A flowing Content-Length body whose rest fits in this, with what is held, is read whole (its
/// read buffer sized for it) and written to the client at once: a 64 KiB list in one write
/// after two reads, where parts of at most [`GATHER`] took three writes and five reads, each
/// write a wake-up of the client.
const WHOLE: usize = 80 * 1024;

/// A Content-Length body larger than this is bulk: it is read into buffers of this size and
/// written to the client in parts of up to [`BULK_GATHER`] (nginx-proxy's `proxy_buffers 8 64k`
/// make about 128 KiB writes): fewer, larger system calls on both legs, and fewer wake-ups of
/// the client and the upstream.
const BULK: usize = 256 * 1024;
const BULK_GATHER: usize = 192 * 1024;

/// The first read of a response: its head and, often, all of a small body.
const HEAD_READ: usize = 16 * 1024;

/// Interim (1xx) answers skipped before an answer; more is an upstream that never answers
/// (a 100 Continue, a 103 Early Hints or two are what a real one sends).
const MAX_INTERIM: usize = 16;

/// How long a stream's upstream stays silent before its client is watched for hanging up.
const STREAM_QUIET: Duration = Duration::from_secs(1);

/// A client that leaves in the middle of a Content-Length body: up to this much of the body
/// still to come is read and dropped, within [`DRAIN_TIME`], so that the upstream connection
/// goes back to the pool. A new one would cost the apiserver a TLS handshake (0.6–0.8 ms of its
/// CPU on the benchmark's origin, more than reading a megabyte on loopback); a larger remainder
/// closes the connection.
const DRAIN_MAX: u64 = 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// Where the request goes.
pub enum Destination {
    Cluster {
        upstream: Arc<Upstream>,
        caller: Caller,
        impersonate: Option<String>,
    },
    Admin {
        address: Endpoint,
    },
    /// A mesos-driver (`addresses`: the live drivers, in the order to try) or a console proxy.
    Internal {
        addresses: Vec<Endpoint>,
        owner: String,
        /// The BCS cluster id (mesos), for the access log; empty for a console proxy.
        cluster: String,
        tls: Option<Arc<rustls::ClientConfig>>,
        caller: Caller,
    },
}

/// What became of the client connection.
pub enum Flow<C> {
    /// The exchange ended cleanly; the connection may carry another request.
    Next(C),
    /// The connection is finished (closed, or handed over to an upgrade that has ended).
    Done,
    /// The connection ends once what the client still sends has drained ([`crate::io::linger`]):
    /// the rest of a body not read, or a next request that will not be. Done after the
    /// request's log line, so the wait is not counted as the request's time.
    Linger(C),
}

/// An error before anything was written to the client. `in_sync`: the request was read
/// whole, so the connection could carry another request after the error answer.
pub struct Failed<'d, C> {
    pub client: C,
    pub error: ProxyError,
    pub in_sync: bool,
    /// The upstream address last tried (`host:port`, for the access log; empty: none was).
    pub upstream: &'d str,
}

/// An exchange that reached the client: what became of its connection, the status it was
/// answered with and the upstream address that answered (`host:port`, for the access log).
pub struct Answered<'d, C> {
    pub flow: Flow<C>,
    pub status: u16,
    pub upstream: &'d str,
}

struct Sent<'d> {
    conn: Conn,
    key: PoolKey<'d>,
    response: ResponseHead,
    /// The response bytes read so far; `head_len` of them are the head.
    buf: Vec<u8>,
    head_len: usize,
    /// The upstream answered before it took the whole request body: what is left of the body
    /// is unread on the client's connection, which must close after this answer.
    body_cut: bool,
}

fn idempotent(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE")
}

impl Destination {
    fn addresses(&self) -> Candidates<'_> {
        match self {
            Destination::Cluster { upstream, .. } => upstream::candidates(&upstream.addresses),
            Destination::Admin { address } => Candidates::InOrder(std::slice::from_ref(address).iter()),
            Destination::Internal { addresses, .. } => upstream::candidates(addresses),
        }
    }

    /// The pool `endpoint`'s connections for this destination belong to.
    fn pool_key<'a>(&'a self, endpoint: &'a Endpoint) -> PoolKey<'a> {
        let authority = &endpoint.authority;
        match self {
            Destination::Cluster { upstream, .. } => {
                PoolKey { authority, owner: &upstream.cluster_id, version: upstream.version }
            }
            Destination::Admin { .. } => PoolKey { authority, owner: upstream::ADMIN_OWNER, version: 0 },
            Destination::Internal { owner, .. } => PoolKey { authority, owner, version: 0 },
        }
    }

    /// The caller's user name, for the access log (empty on admin's routes).
    pub fn user_name(&self) -> &str {
        match self {
            Destination::Cluster { caller, .. } | Destination::Internal { caller, .. } => &caller.user.name,
            Destination::Admin { .. } => "",
        }
    }

    /// The cluster's id, for the access log (empty on admin's routes and console proxies).
    pub fn cluster_name(&self) -> &str {
        match self {
            Destination::Cluster { upstream, .. } => &upstream.cluster_id,
            Destination::Internal { cluster, .. } => cluster,
            Destination::Admin { .. } => "",
        }
    }

    /// Whose upstream this is, for the metrics: the cluster's id, `admin` or `console`.
    fn whose(&self) -> &str {
        match self {
            Destination::Admin { .. } => upstream::ADMIN_OWNER,
            Destination::Internal { cluster, .. } if cluster.is_empty() => upstream::CONSOLE_OWNER,
            _ => self.cluster_name(),
        }
    }

    fn head(
        &self,
        head: &RequestHead,
        target: &str,
        authority: &str,
        client_ip: IpAddr,
    ) -> Result<Vec<u8>, ProxyError> {
        let body = BodyFraming::from(head.framing);
        match self {
            Destination::Cluster { upstream, impersonate, .. } => {
                let identity = ClusterIdentity { token: &upstream.token, impersonate: impersonate.as_deref() };
                rewrite::to_cluster(head, target, authority, &identity, client_ip, body)
            }
            Destination::Admin { .. } => rewrite::to_admin(head, authority, client_ip, body),
            Destination::Internal { .. } => rewrite::to_driver(head, target, authority, client_ip, body),
        }
    }

    fn tls(&self) -> upstream::Tls<'_> {
        match self {
            Destination::Cluster { upstream, .. } => upstream::Tls::Cluster(upstream),
            Destination::Admin { .. } => upstream::Tls::Internal(None),
            Destination::Internal { tls, .. } => upstream::Tls::Internal(tls.as_ref()),
        }
    }

    /// What keeps a long-lived stream open: the caller's token and, to a cluster, its
    /// credentials as they are now (None: admin's own routes).
    fn stream_owner(&self) -> Option<streams::Owner> {
        match self {
            Destination::Cluster { caller, upstream, .. } => {
                Some(streams::Owner { digest: caller.digest, cluster: Some(upstream.clone()) })
            }
            Destination::Internal { caller, .. } => Some(streams::Owner { digest: caller.digest, cluster: None }),
            Destination::Admin { .. } => None,
        }
    }
}

/// Runs one exchange for `head` (already parsed; `inbuf` holds the bytes after it).
pub async fn exchange<'d, C>(
    mut client: C,
    inbuf: &mut Vec<u8>,
    head: &RequestHead,
    target: &str,
    destination: &'d Destination,
    client_ip: IpAddr,
    body_timeout: Duration,
) -> Result<Answered<'d, C>, Failed<'d, C>>
where
    C: AsyncReadRent + AsyncWriteRent + Readable + Splitable,
    C::OwnedRead: AsyncReadRent + 'static,
    C::OwnedWrite: AsyncWriteRent + 'static,
{
    if head.upgrade.is_some() && head.framing != Framing::None {
        let error = ProxyError::BadRequest("an upgrade request must not have a body".into());
        return Err(Failed { client, error, in_sync: false, upstream: "" });
    }
    if let Destination::Cluster { upstream, impersonate: Some(user), .. } = destination {
        if let Some(review) = crate::guard::review(head, target) {
            // Boxed: only these upgrades pay for the review's future.
            if let Err(error) = Box::pin(crate::guard::ask(upstream, user, &review)).await {
                tracing::info!(user = %user, error = %error, "an upgrade into a pod or node was not allowed");
                return Err(Failed { client, error, in_sync: true, upstream: "" });
            }
        }
    }
    // Boxed: a stream's task keeps this future's largest state for hours, and sending is it.
    let sent = match Box::pin(send(&mut client, inbuf, head, target, destination, client_ip, body_timeout)).await {
        Ok(sent) => sent,
        Err((error, in_sync, upstream)) => return Err(Failed { client, error, in_sync, upstream }),
    };
    let Sent { conn, key, response, buf, head_len, body_cut } = sent;
    let upstream = key.authority;
    let answered = |flow, status| Ok(Answered { flow, status, upstream });

    // A redirect is not relayed (its Location could send a client with the gateway's answer
    // elsewhere); 304 Not Modified is an answer, not a redirect.
    if (300..400).contains(&response.status) && response.status != 304 {
        tracing::warn!(status = response.status, "upstream answered with a redirect; answering 502");
        return Err(Failed { client, error: ProxyError::UpstreamRedirect, in_sync: !body_cut, upstream });
    }
    if response.status == 101 {
        let Some(protocol) = head.upgrade.as_deref() else {
            return Err(Failed {
                client,
                error: ProxyError::BadUpstream("101 to a request that asked for no upgrade".into()),
                in_sync: !body_cut,
                upstream,
            });
        };
        let Some(owner) = destination.stream_owner() else {
            let error = ProxyError::BadUpstream("admin switched protocols".into());
            return Err(Failed { client, error, in_sync: !body_cut, upstream });
        };
        // Boxed, as the connect above: only an upgrade pays for the tunnel's future.
        Box::pin(tunnel(client, inbuf, conn, &response, buf, head_len, protocol, owner)).await;
        return answered(Flow::Done, 101);
    }

    // An upgrade the upstream refused: relay its answer, then close; never switch. Likewise an
    // answer that came before the body was all sent: the rest is unread on the client's side.
    // And while the proxy stops (drain.rs), every connection ends with its answer.
    let close = head.close || head.upgrade.is_some() || body_cut || crate::drain::draining();
    let streaming = matches!(response.framing, Framing::Chunked | Framing::UntilClose);
    let stream_owner = destination.stream_owner().filter(|_| streaming);
    if stream_owner.is_some() && inbuf.is_empty() {
        // A stream may idle for an hour: it keeps no request buffer (the next request gets one).
        *inbuf = Vec::new();
    }
    // After a refused upgrade the upstream connection is not reused: a backend that had half
    // switched would read the next caller's request (its credentials included) as tunnel data.
    // Nor after an early answer: the write to it failed.
    let pool = (head.upgrade.is_none() && !body_cut).then_some(key);
    match relay_response(&mut client, conn, pool, &response, buf, head_len, head.minor_version, close, stream_owner)
        .await
    {
        Ok(false) => answered(Flow::Next(client), response.status),
        // The rest of the request body is still coming, or the client sent more (its next
        // request, as the drain closed the connection): let it drain before the close.
        Ok(true) if body_cut || crate::io::sent_more(&mut client, inbuf) => {
            answered(Flow::Linger(client), response.status)
        }
        Ok(true) => {
            // A complete response on a connection that closes: end it cleanly (a TLS client
            // gets close_notify, which tells a body read until close from a cut one).
            let _ = client.shutdown().await;
            answered(Flow::Done, response.status)
        }
        Err(()) => answered(Flow::Done, response.status),
    }
}

/// Connects (pooled, or new with failover across addresses), writes the request and reads
/// the response head. Errors carry whether the client is still in sync and the address last
/// tried.
async fn send<'d, C: AsyncReadRent + Readable>(
    client: &mut C,
    inbuf: &mut Vec<u8>,
    head: &RequestHead,
    target: &str,
    destination: &'d Destination,
    client_ip: IpAddr,
    body_timeout: Duration,
) -> Result<Sent<'d>, (ProxyError, bool, &'d str)> {
    let retryable = head.framing == Framing::None && idempotent(&head.method);
    let mut last_error = ProxyError::UpstreamConnect("the cluster has no address".into());
    let mut retried = false;
    // The address last dialled or sent to, for the access log (one skipped was not).
    let mut tried = "";
    for endpoint in destination.addresses() {
        if let Some(error) = upstream::set_aside_silent(endpoint) {
            last_error = error;
            continue;
        }
        let mut request_head =
            destination.head(head, target, &endpoint.authority, client_ip).map_err(|e| (e, false, tried))?;
        tried = &endpoint.authority;
        let key = destination.pool_key(endpoint);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (mut conn, reused) = match upstream::take_pooled(&key) {
                Some(conn) if attempts == 1 => (conn, true),
                // Boxed: a TLS handshake's future is large, and inline it would make every
                // connection's task that large for its whole life (an idle watch's too).
                _ => match Box::pin(upstream::connect(endpoint, destination.tls())).await {
                    Ok(conn) => (conn, false),
                    Err(e) => {
                        tracing::warn!(address = %endpoint.authority, error = %e, "upstream connect failed");
                        upstream::eject(endpoint, &e, destination.whose());
                        if matches!(e, ProxyError::UpstreamConfig(_)) {
                            // The gateway's own configuration: every address would fail alike.
                            return Err((e, head.framing == Framing::None, tried));
                        }
                        last_error = e;
                        break;
                    }
                },
            };
            tracing::debug!(address = %endpoint.authority, reused, attempt = attempts, "sending upstream");
            let (written, head_back) = conn.write_all(request_head).await;
            request_head = head_back;
            let body_result = match written {
                Ok(_) => send_body(client, inbuf, head.framing, &mut conn, body_timeout).await,
                Err(e) => Err(BodyError::Upstream(e.to_string())),
            };
            match body_result {
                Ok(()) => {}
                Err(BodyError::Client(e)) => return Err((e, false, tried)),
                Err(BodyError::Upstream(e)) if reused && retryable && !retried => {
                    tracing::debug!(error = %e, "stale pooled connection; retrying on a fresh one");
                    retried = true;
                    continue;
                }
                Err(BodyError::Upstream(e)) => {
                    // An apiserver that refuses a request (403, 413) without reading its body
                    // answers, then closes, and our write fails: its answer, if it came, is the
                    // client's, not a 502.
                    let early = crate::io::timeout(EARLY_ANSWER, receive_head(&mut conn, &head.method)).await;
                    if let Ok(Ok((response, buf, head_len))) = early {
                        tracing::debug!(status = response.status, error = %e, "the upstream answered before taking the whole body");
                        return Ok(Sent { conn, key, response, buf, head_len, body_cut: true });
                    }
                    let in_sync = head.framing == Framing::None;
                    return Err((ProxyError::UpstreamConnect(e), in_sync, tried));
                }
            }
            match read_response_head(&mut conn, &head.method, client).await {
                Ok((response, buf, head_len)) => {
                    return Ok(Sent { conn, key, response, buf, head_len, body_cut: false })
                }
                Err((e, nothing_received)) if nothing_received && reused && retryable && !retried => {
                    tracing::debug!(error = %e, "stale pooled connection; retrying on a fresh one");
                    retried = true;
                    continue;
                }
                Err((e, nothing_received)) => {
                    // An address that took a new connection and then closed it unanswered, or
                    // never answered, is as broken as one that refuses connections: the next
                    // requests try the others first, and this one, if it only reads (a GET or
                    // HEAD, not an upgrade: an exec may have started) and nothing came back,
                    // goes to the next address.
                    // One that timed out while it answered others (on this core) is not:
                    // the request was slow, and a user's slow request must not move everyone's
                    // traffic to another address.
                    let unanswered = nothing_received && !reused;
                    let hung = matches!(e, ProxyError::UpstreamTimeout) && !upstream::answered_lately(endpoint);
                    if unanswered || hung {
                        tracing::warn!(address = %endpoint.authority, error = %e, "the upstream took the request and did not answer");
                        upstream::eject_unanswered(endpoint);
                    }
                    let only_reads = matches!(head.method.as_ref(), "GET" | "HEAD") && head.upgrade.is_none();
                    if unanswered && retryable && only_reads {
                        last_error = e;
                        break;
                    }
                    return Err((e, true, tried));
                }
            }
        }
    }
    // No address took the request: its body, if it has one, is still unread on the client's
    // connection, and must never be read there as the next request.
    Err((last_error, head.framing == Framing::None, tried))
}

enum BodyError {
    /// The client broke off or sent a malformed body: the connection is out of sync.
    Client(ProxyError),
    Upstream(String),
}

/// Streams the request body from `inbuf` and the client to the upstream, re-framed by us.
async fn send_body<C: AsyncReadRent>(
    client: &mut C,
    inbuf: &mut Vec<u8>,
    framing: Framing,
    conn: &mut Conn,
    timeout: Duration,
) -> Result<(), BodyError> {
    match framing {
        Framing::None | Framing::UntilClose => Ok(()),
        Framing::Length(total) => {
            let mut left = total;
            let mut out = Vec::with_capacity(BUFFER.min(total as usize));
            loop {
                let take = (left as usize).min(inbuf.len());
                out.extend_from_slice(&inbuf[..take]);
                inbuf.drain(..take);
                left -= take as u64;
                out = send_upstream(conn, out).await?;
                if left == 0 {
                    return Ok(());
                }
                more_body(client, inbuf, timeout).await?;
            }
        }
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::default();
            let mut data = Vec::with_capacity(BUFFER);
            let mut out = Vec::with_capacity(BUFFER + 32);
            let mut total = 0u64;
            loop {
                let used = decoder
                    .decode(inbuf, &mut data)
                    .map_err(|e| BodyError::Client(ProxyError::BadRequest(format!("request body: {e}"))))?;
                inbuf.drain(..used);
                total += data.len() as u64;
                if total > MAX_BODY {
                    // The upstream has a part of it: that connection is dropped, never pooled.
                    return Err(BodyError::Client(ProxyError::BodyTooLarge(MAX_BODY)));
                }
                encode_chunk(&data, &mut out);
                data.clear();
                if decoder.is_done() {
                    out.extend_from_slice(LAST_CHUNK);
                }
                out = send_upstream(conn, out).await?;
                if decoder.is_done() {
                    return Ok(());
                }
                more_body(client, inbuf, timeout).await?;
            }
        }
    }
}

/// Reads more of the request body from the client onto `inbuf`, waiting at most `timeout`.
async fn more_body<C: AsyncReadRent>(client: &mut C, inbuf: &mut Vec<u8>, timeout: Duration) -> Result<(), BodyError> {
    // On a timeout the read is dropped with `inbuf` in it; the connection closes anyway.
    let Ok((r, b)) = crate::io::timeout(timeout, read_more(client, std::mem::take(inbuf))).await else {
        return Err(BodyError::Client(ProxyError::BodyTimeout(timeout.as_secs())));
    };
    *inbuf = b;
    match r {
        Ok(n) if n > 0 => Ok(()),
        _ => Err(BodyError::Client(ProxyError::BadRequest("the request body ended early".into()))),
    }
}

/// Writes `out` (if anything) to the upstream and gives the cleared buffer back, within
/// `send_timeout_seconds` (nginx's `proxy_send_timeout`): an apiserver that stops reading a
/// body would otherwise hold the request, and its client, for ever (its kernel answers the
/// zero-window probes, so nothing else ends it). Bodies only: a head fits in the socket's
/// buffer, and an answer that never comes is the response timeout's.
async fn send_upstream(conn: &mut Conn, out: Vec<u8>) -> Result<Vec<u8>, BodyError> {
    if out.is_empty() {
        return Ok(out);
    }
    let limit = upstream::body_write_limit();
    let (r, out) = crate::io::timeout(limit, write_all(conn, out))
        .await
        .map_err(|()| BodyError::Upstream(format!("it took none of the body for {limit:?}")))?;
    r.map_err(|e| BodyError::Upstream(e.to_string()))?;
    Ok(out)
}

/// Reads a whole response head, as [`receive_head`], within [`upstream::response_head_limit`].
///
/// After [`CLIENT_QUIET`] the client is watched too. One that hangs up (or resets, or sends
/// close_notify) ends the wait with [`ProxyError::ClientGone`], and the upstream connection is
/// closed: an apiserver then cancels the request, as it does when nginx closes its connection
/// on a client's abort. One that sends bytes instead (a pipelined request, an upgrade's early
/// data) is not watched further; its bytes stay where the next read finds them.
async fn read_response_head<C: Readable>(
    conn: &mut Conn,
    method: &str,
    client: &mut C,
) -> Result<(ResponseHead, Vec<u8>, usize), (ProxyError, bool)> {
    let limit = upstream::response_head_limit();
    let work = receive_head(conn, method);
    let mut work = std::pin::pin!(work);
    if let Ok(result) = crate::io::timeout(CLIENT_QUIET.min(limit), &mut work).await {
        return result;
    }
    let watched = async {
        loop {
            monoio::select! {
                result = &mut work => return result,
                ready = client.readable() => match ready.map(|_| client.came()) {
                    Ok(Came::Nothing) => continue,
                    Ok(Came::Bytes) => return (&mut work).await,
                    Ok(Came::End) | Err(_) => {
                        tracing::debug!("the client left while the upstream had not answered; closing that connection");
                        return Err((ProxyError::ClientGone, false));
                    }
                },
            }
        }
    };
    // Boxed: inline, this rarer wait (the client's readiness future among it) would enlarge the
    // future of every exchange, which each request moves onto the heap whole.
    match crate::io::timeout(limit.saturating_sub(CLIENT_QUIET), Box::pin(watched)).await {
        Ok(result) => result,
        Err(_) => Err((ProxyError::UpstreamTimeout, false)),
    }
}

/// Reads until a whole response head (skipping 100 Continue and other 1xx but 101). Errors say
/// whether no byte at all was received. Not generic over the client, unlike its caller: one
/// copy of the request path's head parsing, which the compiler then inlines here.
pub(crate) async fn receive_head(
    conn: &mut Conn,
    method: &str,
) -> Result<(ResponseHead, Vec<u8>, usize), (ProxyError, bool)> {
    // Room for the head and a small body; a large body grows it on its first read.
    let mut buf = Vec::with_capacity(HEAD_READ);
    let mut received_any = false;
    // How much of `buf` is known to hold no head end (a head trickling in is searched only
    // where new bytes came), and how many interim (1xx) heads came before this answer.
    let (mut checked, mut interim) = (0, 0);
    loop {
        match parse_response_after(&buf, checked, method) {
            Ok(Some((response, used))) if (100..200).contains(&response.status) && response.status != 101 => {
                interim += 1;
                if interim > MAX_INTERIM {
                    return Err((
                        ProxyError::BadUpstream(format!("more than {MAX_INTERIM} interim (1xx) answers")),
                        false,
                    ));
                }
                buf.drain(..used);
                checked = 0;
                continue;
            }
            Ok(Some((response, used))) => return Ok((response, buf, used)),
            Ok(None) => checked = buf.len(),
            Err(e) => return Err((e, false)),
        }
        let (r, b) = read_more(conn, std::mem::take(&mut buf)).await;
        buf = b;
        match r {
            Ok(0) => return Err((ProxyError::BadUpstream("the upstream closed the connection".into()), !received_any)),
            Ok(_) => received_any = true,
            Err(e) => return Err((ProxyError::BadUpstream(e.to_string()), !received_any)),
        }
    }
}

/// Writes the response head and streams the body. Ok(close): the response ended cleanly, and
/// whether the client connection must close now. Err: the client or the upstream broke off
/// mid-response (the client connection must close). Returns the upstream connection to the
/// pool when the response ended cleanly, or when the client left and the rest of the body was
/// small enough to read and drop ([`salvage`]).
#[allow(clippy::too_many_arguments)]
async fn relay_response<C: AsyncReadRent + AsyncWriteRent + Readable>(
    client: &mut C,
    mut conn: Conn,
    pool: Option<PoolKey<'_>>,
    response: &ResponseHead,
    mut buf: Vec<u8>,
    head_len: usize,
    client_minor: u8,
    close: bool,
    stream_owner: Option<streams::Owner>,
) -> Result<bool, ()> {
    // HTTP/1.0 clients cannot read chunked: they get the body until close, whether the
    // upstream chunked it or ended it by closing.
    let unframed = client_minor == 0 && matches!(response.framing, Framing::Chunked | Framing::UntilClose);
    let out_framing = if unframed { BodyFraming::None } else { BodyFraming::from(response.framing) };
    let close = close || unframed;
    // Room for the body bytes already read, which follow the head in one write (and a
    // chunk's framing); for a body that may come whole, room for all of it (its later reads go
    // straight after the head: `onto_out` below).
    let room = match response.framing {
        Framing::Length(n) if n <= WHOLE as u64 => n as usize,
        _ => (buf.len() - head_len).min(GATHER),
    } + 16;
    let mut out = rewrite::to_client(response, out_framing, close, None, room).map_err(|_| ())?;
    buf.drain(..head_len);
    let (_registration, mut revoked) = match stream_owner {
        Some(owner) => {
            let (r, v) = streams::register(owner);
            (Some(r), Some(v))
        }
        None => (None, None),
    };
    let mut decoder = ChunkedDecoder::default();
    let mut left = match response.framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let bulk = matches!(response.framing, Framing::Length(n) if n > BULK as u64);
    let gather_limit = match response.framing {
        Framing::Length(_) if bulk => BULK_GATHER,
        Framing::Length(_) => GATHER,
        _ => 0,
    };
    let mut data = Vec::new();
    let mut clean = false;
    // A Content-Length body whose rest, with the `held` bytes not yet written, fits in WHOLE.
    let fits_whole = |held: usize, left: u64| {
        !bulk && matches!(response.framing, Framing::Length(_)) && held as u64 + left <= WHOLE as u64
    };
    // For a body that can come whole, the head's read counts as the last: a full one says the
    // body is flowing. Anything else writes its head and first part at once, as a stream must.
    let mut last_read = if fits_whole(out.len(), left) { buf.len() + head_len } else { 0 };
    let mut wake = 1usize;
    // Where the last read's bytes start in `out`, when it read onto `out` instead of `buf`.
    let mut onto_out: Option<usize> = None;
    loop {
        // Turn what arrived into what the client gets.
        match response.framing {
            Framing::None => {
                clean = buf.is_empty();
                buf.clear();
            }
            Framing::Length(_) => {
                // What the last read brought: onto `out` (from `from` on), or into `buf`. Bytes
                // past the body's length are dropped, and the connection is not clean.
                let got = onto_out.map_or(buf.len(), |from| out.len() - from);
                let take = (left as usize).min(got);
                left -= take as u64;
                clean = left == 0 && got == take;
                match onto_out.take() {
                    Some(from) => out.truncate(from + take),
                    None if out.is_empty() => {
                        // Nothing else to send first: write the read buffer itself, no copy.
                        std::mem::swap(&mut out, &mut buf);
                        out.truncate(take);
                    }
                    None => out.extend_from_slice(&buf[..take]),
                }
                buf.clear();
            }
            Framing::Chunked => {
                let used =
                    decoder.decode(&buf, &mut data).map_err(|e| tracing::warn!(error = e, "bad chunked response"))?;
                clean = decoder.is_done() && used == buf.len();
                buf.clear();
                if out_framing == BodyFraming::Chunked {
                    encode_chunk(&data, &mut out);
                    if decoder.is_done() {
                        out.extend_from_slice(LAST_CHUNK);
                    }
                } else {
                    out.extend_from_slice(&data);
                }
                data.clear();
            }
            Framing::UntilClose => {
                if out_framing == BodyFraming::Chunked {
                    encode_chunk(&buf, &mut out);
                } else {
                    out.extend_from_slice(&buf);
                }
                buf.clear();
            }
        }
        let finished = match response.framing {
            Framing::None => true,
            Framing::Length(_) => left == 0,
            Framing::Chunked => decoder.is_done(),
            Framing::UntilClose => false,
        };
        // A Content-Length body still arriving in full reads is gathered into fewer, larger
        // writes (at most GATHER bytes held); streams (chunked, until close) are written as
        // they arrive, so a watch event is never held back.
        let whole = fits_whole(out.len(), left);
        let gather = !finished && last_read >= FULL_READ && (out.len() < gather_limit || whole);
        if bulk && !finished {
            let want = low_water::for_body(left, conn.held());
            if want != wake {
                // A mark the kernel kept higher than asked could outlast the body's bytes: if
                // setting it fails, back to 1, or give the connection up.
                wake = match conn.wake_at(want) {
                    Ok(()) => want,
                    Err(_) if conn.wake_at(1).is_ok() => 1,
                    Err(_) => return Err(()),
                };
            }
        }
        let (r, b) = if !out.is_empty() && !gather && !finished && revoked.is_none() {
            // A body still coming: write this part while the next is read, so that neither
            // leg waits for the other (io_uring runs both operations at once).
            if bulk {
                crate::io::make_room(&mut buf, BULK);
            }
            // Boxed: the relay's future, which an idle stream keeps, need not hold this state.
            let drain = !response.close && matches!(response.framing, Framing::Length(_)) && left <= DRAIN_MAX;
            let ((w, o), read, deadline) = Box::pin(write_while_reading(client, out, &mut conn, buf, drain)).await?;
            out = o;
            if w.is_err() {
                if !drain {
                    return Err(());
                }
                let deadline = deadline.unwrap_or_else(|| Instant::now() + DRAIN_TIME);
                // Boxed, as the write above: inline, the drain's state made every idle watch's
                // relay about 2 KiB larger (15.9 against 13.9 KiB of RSS per stream).
                return Box::pin(salvage(conn, pool, response, left, Some(read), wake, deadline)).await;
            }
            read
        } else {
            if !out.is_empty() && !gather {
                let (r, o) = match revoked.as_mut() {
                    None => write_all(client, out).await,
                    // A stream's client may read slowly, or not at all, for long: its token's
                    // revocation must not wait for the write.
                    Some(revoked) => monoio::select! {
                        written = write_all(client, out) => written,
                        _ = &mut *revoked => {
                            stream_revoked();
                            return Err(());
                        }
                    },
                };
                out = o;
                if r.is_err() {
                    // A body still coming was written above, while reading; here the response
                    // has ended, and its upstream connection is still good if it ended cleanly.
                    if !(finished && clean) {
                        return Err(());
                    }
                    return Box::pin(salvage(conn, pool, response, 0, None, wake, Instant::now() + DRAIN_TIME)).await;
                }
            }
            if finished {
                break;
            }
            match revoked.as_mut() {
                // The rest of a body that comes whole is read straight after what `out` holds,
                // not into `buf` and copied over (a 64 KiB list: 48 KiB fewer bytes moved).
                None if gather && whole => {
                    let from = out.len();
                    crate::io::make_room(&mut out, left as usize);
                    let (r, o) = crate::io::read_into_spare(&mut conn, out).await;
                    out = o;
                    onto_out = Some(from);
                    (r, buf)
                }
                None => read_more(&mut conn, buf).await,
                Some(revoked) => {
                    drop(buf);
                    let flowing = last_read >= FULL_READ;
                    if !flowing {
                        // About to wait, perhaps for an hour: hold no buffer meanwhile.
                        out.shrink_to(0);
                        data.shrink_to(0);
                    }
                    match next_stream_read(&mut conn, client, revoked, flowing).await {
                        Some(read) => read,
                        None => return Err(()),
                    }
                }
            }
        };
        buf = b;
        match r {
            Ok(0) if response.framing == Framing::UntilClose => {
                return end_until_close(client, out_framing, close).await
            }
            Ok(0) | Err(_) => {
                // The upstream broke off: what was gathered still goes to the client, then the
                // connection ends (the caller closes it), so the client sees the body cut short.
                if !out.is_empty() {
                    let _ = write_all(client, out).await;
                }
                return Err(());
            }
            Ok(n) => last_read = n,
        }
    }
    // A pooled connection reads response heads next: back to the default low-water mark.
    if let Some(key) = pool.filter(|_| clean && !response.close) {
        if wake == 1 || conn.wake_at(1).is_ok() {
            upstream::put_pooled(key, conn);
        }
    }
    Ok(close)
}

/// A write's result and its buffer; a read's.
type Written = (std::io::Result<()>, Vec<u8>);
type Read = (std::io::Result<usize>, Vec<u8>);

/// Writes `out` to the client while the next part is read into `buf`, both at once. A failed
/// write ends the exchange without waiting for the read (an upstream that stalls mid-body must
/// not keep a connection whose client has gone), unless the caller will `drain` the rest: then
/// the read may finish within [`DRAIN_TIME`] of the failure, and that deadline is returned for
/// the rest of the drain.
async fn write_while_reading<C: AsyncWriteRent>(
    client: &mut C,
    out: Vec<u8>,
    conn: &mut Conn,
    buf: Vec<u8>,
    drain: bool,
) -> Result<(Written, Read, Option<Instant>), ()> {
    let mut write = std::pin::pin!(write_all(client, out));
    let mut read = std::pin::pin!(read_more(conn, buf));
    monoio::select! {
        written = &mut write => {
            if written.0.is_err() {
                if !drain {
                    return Err(());
                }
                let deadline = Instant::now() + DRAIN_TIME;
                let read = crate::io::timeout(DRAIN_TIME, read).await?;
                return Ok((written, read, Some(deadline)));
            }
            Ok((written, read.await, None))
        }
        read = &mut read => Ok((write.await, read, None)),
    }
}

/// The client went away during `response`, whose upstream connection is clean once the `left`
/// bytes of its Content-Length body not yet read are (0: it ended cleanly; `read`: a read that
/// finished after the last count, its bytes all new). Reads and drops them when they are at
/// most [`DRAIN_MAX`] and come by `deadline`, then pools the connection; else drops it.
/// Always `Err`: the client connection ends.
async fn salvage(
    mut conn: Conn,
    pool: Option<PoolKey<'_>>,
    response: &ResponseHead,
    left: u64,
    read: Option<Read>,
    wake: usize,
    deadline: Instant,
) -> Result<bool, ()> {
    let Some(key) = pool.filter(|_| !response.close && left <= DRAIN_MAX) else {
        tracing::debug!(left, "the client left mid-response; closing the upstream connection");
        return Err(());
    };
    let budget = deadline.saturating_duration_since(Instant::now());
    let drained = matches!(crate::io::timeout(budget, drain(&mut conn, left, read, wake)).await, Ok(true));
    tracing::debug!(left, drained, "the client left mid-response; the rest of the body read and dropped");
    if drained {
        upstream::put_pooled(key, conn);
    }
    Err(())
}

/// Reads and drops the `left` bytes of a body still to come (after `read`, if given); true when
/// exactly they came and the connection is back at the default low-water mark.
async fn drain(conn: &mut Conn, mut left: u64, mut read: Option<Read>, mut wake: usize) -> bool {
    let mut buf = Vec::new();
    loop {
        if let Some((result, mut b)) = read.take() {
            match result {
                Ok(n) if n > 0 && n as u64 <= left => left -= n as u64,
                // The upstream ended, failed, or sent more than the body: not reusable.
                _ => return false,
            }
            b.clear();
            buf = b;
        }
        if left == 0 {
            return wake == 1 || conn.wake_at(1).is_ok();
        }
        let want = low_water::for_body(left, conn.held());
        if want != wake {
            if conn.wake_at(want).is_err() {
                return false;
            }
            wake = want;
        }
        read = Some(read_more(conn, std::mem::take(&mut buf)).await);
    }
}

/// The upstream ended a body framed by its close: end the client's copy (its last chunk).
async fn end_until_close<C: AsyncWriteRent>(client: &mut C, out_framing: BodyFraming, close: bool) -> Result<bool, ()> {
    if out_framing == BodyFraming::Chunked {
        let (r, _) = write_from(client, LAST_CHUNK.to_vec(), 0).await;
        r.map_err(|_| ())?;
    }
    Ok(close)
}

/// The sweep ([`streams`]) ended a stream: its token or its cluster's credentials are gone.
fn stream_revoked() {
    tracing::info!("token revoked or expired, or the cluster deleted or given new credentials: closing its stream");
}

/// The next read of a stream's upstream, while watching its token and, once the stream has been
/// quiet for [`STREAM_QUIET`], its client: a client that hung up ends the stream at once instead
/// of at the next event, which on an idle watch may be an hour away. A client that sent bytes
/// instead (a request pipelined behind a finite chunked answer) is not watched further during
/// this read: its request waits its turn, and a hang-up after it is seen at the next write.
/// None: end the stream.
///
/// Unless more is flowing (`flowing`: the last read was a full one), it first waits for the
/// upstream to be readable and only then takes a buffer, so an idle stream holds none; the
/// client is watched the same way, so watching it never takes its bytes.
async fn next_stream_read<C: Readable>(
    conn: &mut Conn,
    client: &mut C,
    revoked: &mut streams::Revoked,
    flowing: bool,
) -> Option<(std::io::Result<usize>, Vec<u8>)> {
    if flowing {
        // Boxed, so that this rarer case does not size the wait of every idle stream.
        return Box::pin(watched(read_more(conn, Vec::with_capacity(BUFFER)), client, revoked)).await;
    }
    // A readiness error is left for the read to report.
    let _ = watched(conn.readable(), client, revoked).await?;
    Some(read_more(conn, Vec::with_capacity(BUFFER)).await)
}

/// Runs `work` unless the token is revoked or, after [`STREAM_QUIET`], the client leaves.
async fn watched<F: std::future::Future, C: Readable>(
    work: F,
    client: &mut C,
    revoked: &mut streams::Revoked,
) -> Option<F::Output> {
    let mut work = std::pin::pin!(work);
    monoio::select! {
        out = &mut work => return Some(out),
        _ = &mut *revoked => {
            stream_revoked();
            return None;
        }
        // Boxed: see io::timeout.
        _ = Box::pin(monoio::time::sleep(STREAM_QUIET)) => {}
    }
    loop {
        monoio::select! {
            out = &mut work => return Some(out),
            _ = &mut *revoked => {
                stream_revoked();
                return None;
            }
            ready = client.readable() => match ready.map(|_| client.came()) {
                Ok(Came::Nothing) => continue,
                // A pipelined request: answered after this response, so the wait goes on
                // without watching the client (its bytes stay for the next read).
                Ok(Came::Bytes) => break,
                Ok(Came::End) | Err(_) => {
                    tracing::debug!("the client left its stream; closing it");
                    return None;
                }
            },
        }
    }
    monoio::select! {
        out = &mut work => Some(out),
        _ = &mut *revoked => {
            stream_revoked();
            None
        }
    }
}

/// After an upstream 101: hand the 101 to the client, release the held bytes, and copy both
/// ways until either side ends or the token is revoked.
#[allow(clippy::too_many_arguments)]
async fn tunnel<C>(
    mut client: C,
    inbuf: &mut Vec<u8>,
    mut conn: Conn,
    response: &ResponseHead,
    buf: Vec<u8>,
    head_len: usize,
    protocol: &str,
    owner: streams::Owner,
) where
    C: AsyncReadRent + AsyncWriteRent + Splitable,
    C::OwnedRead: AsyncReadRent + 'static,
    C::OwnedWrite: AsyncWriteRent + 'static,
{
    let Ok(mut out) = rewrite::to_client(response, BodyFraming::None, false, Some(protocol), 0) else { return };
    out.extend_from_slice(&buf[head_len..]);
    if write_all(&mut client, out).await.0.is_err() {
        return;
    }
    if !inbuf.is_empty() && write_all(&mut conn, std::mem::take(inbuf)).await.0.is_err() {
        return;
    }
    let (_registration, revoked) = streams::register(owner);
    let (client_read, client_write) = client.into_split();
    let (conn_read, conn_write) = conn.into_split();
    let mut up = std::pin::pin!(copy(client_read, conn_write));
    let mut down = std::pin::pin!(copy(conn_read, client_write));
    let mut revoked = std::pin::pin!(revoked);
    monoio::select! {
        _ = &mut down => {}
        clean = &mut up => {
            // The client finished sending: let the upstream finish answering. A client that
            // broke off ends the tunnel.
            if clean {
                monoio::select! {
                    _ = &mut down => {}
                    _ = &mut revoked => tracing::info!("token revoked or expired: closing its stream"),
                }
            }
        }
        _ = &mut revoked => tracing::info!("token revoked or expired: closing its stream"),
    }
}

/// Copies until end of stream, then shuts the writer down (for TLS: close_notify). A read that
/// fails (a TLS stream cut without close_notify, a reset) is not passed on as a clean end: the
/// writer is dropped unclosed, so the other side sees the cut too. True: a clean end.
///
/// The read buffer follows the traffic ([`tunnel_buffer`]): a shell's keystrokes and output
/// need little, and an idle exec session holds its buffers, one per direction, for hours.
async fn copy<R: AsyncReadRent, W: AsyncWriteRent>(mut from: R, mut to: W) -> bool {
    let mut buf = Vec::with_capacity(TUNNEL_SMALL);
    let mut small_reads = 0u32;
    loop {
        buf.clear();
        let (r, b) = from.read(buf).await;
        buf = b;
        match r {
            Ok(0) => break,
            Err(_) => return false,
            Ok(n) => {
                let (r, b) = to.write_all(buf).await;
                buf = b;
                if r.is_err() {
                    return false;
                }
                let size = tunnel_buffer(buf.capacity(), n, &mut small_reads);
                if size != buf.capacity() {
                    buf = Vec::with_capacity(size);
                }
            }
        }
    }
    to.shutdown().await.is_ok()
}

/// A tunnel's read buffer starts at this size, and comes back to it when reads are small.
const TUNNEL_SMALL: usize = 4 * 1024;

/// A tunnel's read buffer size after a read of `n` bytes into `capacity`: a full read says
/// more is flowing (a port-forward's bulk: [`BUFFER`]); [`SMALL_READS`] small ones in a row,
/// counted in `small_reads`, that it has stopped (a shell's traffic: [`TUNNEL_SMALL`]). One
/// small read is often a burst's last.
fn tunnel_buffer(capacity: usize, n: usize, small_reads: &mut u32) -> usize {
    if n >= capacity {
        *small_reads = 0;
        return BUFFER.max(capacity);
    }
    if n > TUNNEL_SMALL / 2 {
        *small_reads = 0;
        return capacity;
    }
    *small_reads = small_reads.saturating_add(1);
    if *small_reads >= SMALL_READS {
        TUNNEL_SMALL
    } else {
        capacity
    }
}

/// Small reads in a row that take a tunnel's buffer back to [`TUNNEL_SMALL`].
const SMALL_READS: u32 = 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tunnel_buffer_grows_with_full_reads_and_shrinks_after_small_ones_in_a_row() {
        let mut small = 0;
        // Keystrokes: stays small.
        assert_eq!(tunnel_buffer(TUNNEL_SMALL, 1, &mut small), TUNNEL_SMALL);
        // A full small buffer: bulk is flowing.
        assert_eq!(tunnel_buffer(TUNNEL_SMALL, TUNNEL_SMALL, &mut small), BUFFER);
        assert_eq!(tunnel_buffer(BUFFER, BUFFER, &mut small), BUFFER);
        // Partly full: kept as it is.
        assert_eq!(tunnel_buffer(BUFFER, BUFFER / 2, &mut small), BUFFER);
        // A burst's small last read keeps it; small reads in a row take it back.
        for _ in 1..SMALL_READS {
            assert_eq!(tunnel_buffer(BUFFER, 100, &mut small), BUFFER);
        }
        assert_eq!(tunnel_buffer(BUFFER, 100, &mut small), TUNNEL_SMALL);
        // A larger read in between starts the count again.
        let mut small = SMALL_READS - 1;
        assert_eq!(tunnel_buffer(BUFFER, BUFFER / 2, &mut small), BUFFER);
        assert_eq!(tunnel_buffer(BUFFER, 100, &mut small), BUFFER);
    }
}
