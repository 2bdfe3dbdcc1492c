//! One client connection: read a request head (with its limits and timeouts), pick the route,
//! authenticate, forward, and loop while the connection stays in sync. Every request ends in
//! one access-log line (method, path without query, user, cluster, upstream address, status,
//! time, and the error when the gateway answered itself: no secret).
use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use bcs_shared::snapshot::Address;
use monoio::io::{AsyncReadRent, AsyncWriteRent, Splitable};

use crate::allow::Cidr;
use crate::auth;
use crate::error::ProxyError;
use crate::forward::{self, Destination, Failed, Flow};
use crate::http1::head::{parse_request_after, Framing, RequestHead};
use crate::io::{read_more, write_all, Readable};
use crate::respond::{self, Shape};
use crate::route::{self, Route};
use crate::tables::{self, Tables};
use crate::upstream::Endpoint;

/// Per-core settings of the request path.
/// (What users may do comes from the snapshot; these are the fixed addresses and limits.)
pub struct Settings {
    pub admin: Endpoint,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// The longest a request body may go without a byte (408, then close).
    pub body_timeout: Duration,
    /// The longest data written to a client may stay unacknowledged (`TCP_USER_TIMEOUT`), and a
    /// write of a request body to an upstream may wait.
    pub send_timeout: Duration,
    /// The longest an upstream may take to start answering (504).
    pub response_head_timeout: Duration,
    /// TLS towards mesos-drivers and console proxies (`cert_config`); None: http only.
    pub internal_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// `consoleproxy_port` on the webconsole hosts.
    pub console_port: u16,
    /// `proxy_config.webconsole_allowed_hosts` (empty: the webconsole route is refused).
    pub console_allowed: Vec<Cidr>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            admin: bcs_shared::snapshot::parse_address("http://127.0.0.1:8090").expect("valid").into(),
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            body_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            response_head_timeout: Duration::from_secs(120),
            internal_tls: None,
            console_port: 8083,
            console_allowed: Vec::new(),
        }
    }
}

/// Serves one client connection to its end. `fd`: its socket's descriptor (the drain ends the
/// connection through it while it waits for a request).
pub async fn serve<C>(client: C, peer: SocketAddr, fd: RawFd, settings: std::sync::Arc<Settings>)
where
    C: AsyncReadRent + AsyncWriteRent + Readable + Splitable,
    C::OwnedRead: AsyncReadRent + 'static,
    C::OwnedWrite: AsyncWriteRent + 'static,
{
    let mut client = client;
    // Request heads are small; a body grows it (io::read_more). Small matters: a connection
    // holding an idle watch keeps it.
    let mut inbuf: Vec<u8> = Vec::with_capacity(IDLE_BUFFER);
    let mut memo = auth::TokenMemo::default();
    loop {
        let head = match read_head(&mut client, &mut inbuf, fd, &settings).await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(error) => {
                let _ = write_all(&mut client, respond::error(&error, Shape::Rest, true)).await;
                log_request("-", "-", "", "", "", error.status(), Duration::ZERO, Some(&error));
                crate::metrics::gateway_error("other", "-", &error, None);
                return;
            }
        };
        let started = Instant::now();
        let in_flight = crate::drain::InFlight::start(&head);
        match handle(client, &mut inbuf, &head, peer.ip(), &settings, &mut memo, started).await {
            // Stopping: a kept-alive connection ends with the request it served (lingering
            // if the client already sent its next one).
            Flow::Next(mut client) if crate::drain::draining() => {
                if crate::io::sent_more(&mut client, &inbuf) {
                    crate::io::linger(&mut client).await;
                }
                return;
            }
            Flow::Next(c) => client = c,
            // The drain waits for it: `in_flight` is held until the return.
            Flow::Linger(mut client) => {
                crate::io::linger(&mut client).await;
                return;
            }
            Flow::Done => return,
        }
        drop(in_flight);
        if inbuf.is_empty() && inbuf.capacity() > IDLE_BUFFER {
            // A large head or body grew it: an idle kept-alive connection goes back to a small
            // one (a TLS read waiting on it holds ciphertext room of the same size).
            inbuf = Vec::with_capacity(IDLE_BUFFER);
        }
    }
}

/// The request buffer a connection waits for its next request with.
const IDLE_BUFFER: usize = 4 * 1024;

/// Reads one request head into `inbuf` and takes it off the front. Ok(None): the client went
/// away, stayed idle between requests past the idle timeout, or the proxy is stopping.
async fn read_head<C: AsyncReadRent>(
    client: &mut C,
    inbuf: &mut Vec<u8>,
    fd: RawFd,
    settings: &Settings,
) -> Result<Option<RequestHead>, ProxyError> {
    let mut deadline: Option<Instant> = None;
    // How much of `inbuf` is known to be an incomplete head: only what comes after is searched.
    let mut checked = 0;
    // A head split over reads is a request the drain waits for (a whole one costs nothing here).
    let mut _arriving = None;
    loop {
        if !inbuf.is_empty() {
            if let Some((head, used)) = parse_request_after(inbuf, checked)? {
                inbuf.drain(..used);
                return Ok(Some(head));
            }
            checked = inbuf.len();
            // The head's time runs from its first bytes (a head that came whole sets no deadline).
            if deadline.is_none() {
                deadline = Some(Instant::now() + settings.header_timeout);
                _arriving = Some(crate::drain::InFlight::arriving());
            }
        }
        let wait = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => settings.idle_timeout,
        };
        if inbuf.capacity() == 0 {
            // A stream gave its buffer up (forward.rs); a request head needs little.
            inbuf.reserve_exact(IDLE_BUFFER);
        }
        // Between requests (nothing of the next one here yet), the drain may end the wait.
        let waiting = match deadline {
            None => match crate::drain::Waiting::begin(fd) {
                None => return Ok(None),
                waiting => waiting,
            },
            Some(_) => None,
        };
        let read = crate::io::timeout(wait, read_more(client, std::mem::take(inbuf))).await;
        drop(waiting);
        match read {
            Ok((Ok(0), _)) | Ok((Err(_), _)) => return Ok(None),
            Ok((Ok(_), b)) => *inbuf = b,
            Err(_) if deadline.is_some() => return Err(ProxyError::HeaderTimeout),
            Err(_) => return Ok(None),
        }
    }
}

async fn handle<C>(
    client: C,
    inbuf: &mut Vec<u8>,
    head: &RequestHead,
    client_ip: IpAddr,
    settings: &Settings,
    memo: &mut auth::TokenMemo,
    started: Instant,
) -> Flow<C>
where
    C: AsyncReadRent + AsyncWriteRent + Readable + Splitable,
    C::OwnedRead: AsyncReadRent + 'static,
    C::OwnedWrite: AsyncWriteRent + 'static,
{
    let path = &head.target[..memchr::memchr(b'?', head.target.as_bytes()).unwrap_or(head.target.len())];
    let (kind, plan, refused_who) = match plan(head, settings, memo) {
        Ok(plan) => (plan.kind, Ok(plan), None),
        // Whom and which cluster a request the gateway refused was for, when that was known.
        Err(Refused { kind, error, who }) => (kind, Err(error), who),
    };
    // Who and where, for the access log: borrowed from the plan (no copy per request).
    let (user, cluster, outcome) = match plan {
        Err(error) => {
            let (user, cluster) = refused_who.as_deref().map_or(("", ""), |(u, c)| (u.as_str(), c.as_str()));
            (user, cluster, Err(Failed { client, error, in_sync: head.framing == Framing::None, upstream: "" }))
        }
        Ok(ref plan) => {
            let mut client = client;
            if head.expect_continue
                && write_all(&mut client, b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()).await.0.is_err()
            {
                return Flow::Done;
            }
            let destination = &plan.destination;
            let outcome =
                forward::exchange(client, inbuf, head, &plan.target, destination, client_ip, settings.body_timeout)
                    .await;
            (destination.user_name(), destination.cluster_name(), outcome)
        }
    };
    let shape = if kind == "k8s" { Shape::Kubernetes } else { Shape::Rest };
    match outcome {
        Ok(forward::Answered { flow, status, upstream }) => {
            let took = started.elapsed();
            log_request(&head.method, path, user, cluster, upstream, status, took, None);
            crate::metrics::request_done(kind, &head.method, status, Some(took.as_secs_f64()));
            flow
        }
        Err(Failed { mut client, error, in_sync, upstream }) => {
            // While the proxy stops (drain.rs) the connection ends after this answer, which
            // says so, as a served one does (RFC 9112 §9.6).
            let close = !in_sync
                || error.closes_connection()
                || head.close
                || head.upgrade.is_some()
                || crate::drain::draining();
            let written = match error {
                ProxyError::ClientGone => Err(()),
                _ => {
                    let mut answer = respond::error(&error, shape, close);
                    if head.method == "HEAD" {
                        answer = respond::head_only(answer);
                    }
                    write_all(&mut client, answer).await.0.map_err(|_| ())
                }
            };
            let took = started.elapsed();
            log_request(&head.method, path, user, cluster, upstream, error.status(), took, Some(&error));
            crate::metrics::gateway_error(kind, &head.method, &error, Some(took.as_secs_f64()));
            if written.is_ok() && (!in_sync || close && crate::io::sent_more(&mut client, inbuf)) {
                // What the client sends next is part of a request not read, or a request that
                // will not be: let it drain.
                Flow::Linger(client)
            } else if close || written.is_err() {
                Flow::Done
            } else {
                Flow::Next(client)
            }
        }
    }
}

/// A request the gateway answers itself: its route type for the metrics, the error, and whom
/// and which cluster it was for once known (for the access log; boxed: errors only).
struct Refused {
    kind: &'static str,
    error: ProxyError,
    who: Option<Box<(String, String)>>,
}

impl Refused {
    /// Once the caller is known: the error with the user's and the cluster's names.
    fn for_whom(kind: &'static str, error: ProxyError, user: &str, cluster: &str) -> Refused {
        Refused { kind, error, who: Some(Box::new((user.to_owned(), cluster.to_owned()))) }
    }
}

struct Plan<'a> {
    kind: &'static str,
    /// The request target upstream: mostly a slice of the client's.
    target: Cow<'a, str>,
    destination: Destination,
}

/// Route, authenticate and authorise: everything decided before a byte goes upstream.
fn plan<'h>(head: &'h RequestHead, settings: &Settings, memo: &mut auth::TokenMemo) -> Result<Plan<'h>, Refused> {
    tables::with_current(|tables| plan_with(head, settings, tables, memo))
}

fn plan_with<'h>(
    head: &'h RequestHead,
    settings: &Settings,
    tables: Option<&Tables>,
    memo: &mut auth::TokenMemo,
) -> Result<Plan<'h>, Refused> {
    let route = route::route(&head.target).map_err(|error| Refused { kind: "other", error, who: None })?;
    let kind = route.kind();
    let fail = |error| Refused { kind, error, who: None };
    if let Framing::Length(n) = head.framing {
        if n > forward::MAX_BODY {
            return Err(fail(ProxyError::BodyTooLarge(forward::MAX_BODY)));
        }
    }
    match route {
        Route::Rest => Ok(Plan {
            kind,
            target: Cow::Borrowed(&head.target),
            destination: Destination::Admin { address: settings.admin.clone() },
        }),
        Route::Kubernetes { identifier, upstream_target } => {
            let tables = tables.ok_or(ProxyError::NotReady).map_err(fail)?;
            let caller = auth::authenticate(head, tables, tables::now(), memo).map_err(fail)?;
            let refuse = |cluster: &str, e| Refused::for_whom(kind, e, &caller.user.name, cluster);
            auth::check_impersonation(head, &caller).map_err(|e| refuse("", e))?;
            let cluster = tables.cluster(identifier).ok_or_else(|| {
                refuse("", ProxyError::NotFound("no cluster can be found using given cluster identifier".into()))
            })?;
            let upstream = cluster
                .upstream
                .clone()
                .ok_or_else(|| refuse(&cluster.id, ProxyError::NoCredentials(cluster.id.clone())))?;
            let impersonate =
                (tables.turn_on_rbac && !caller.user.is_super_user).then(|| caller.user.kubernetes_name.clone());
            tracing::debug!(user = %caller.user.name, cluster = %cluster.id, revision = tables.revision, impersonate = ?impersonate, "routed to a cluster");
            Ok(Plan {
                kind,
                target: upstream_target,
                destination: Destination::Cluster { upstream, caller, impersonate },
            })
        }
        Route::Mesos { upstream_target } => {
            let tables = tables.ok_or(ProxyError::NotReady).map_err(fail)?;
            let caller = auth::authenticate(head, tables, tables::now(), memo).map_err(fail)?;
            let mut ids = head.headers_named("bcs-clusterid").map(|h| h.value_str().trim().to_owned());
            let cluster_id = match (ids.next(), ids.next()) {
                (Some(id), None) if !id.is_empty() => id,
                _ => return Err(fail(ProxyError::BadRequest("exactly one BCS-ClusterID header is required".into()))),
            };
            let drivers = tables.mesos_drivers(&cluster_id).ok_or_else(|| {
                Refused::for_whom(kind, ProxyError::NoDrivers(cluster_id.clone()), &caller.user.name, &cluster_id)
            })?;
            // A driver per request, at random (as the original), the others after it.
            let mut addresses: Vec<Endpoint> = drivers.as_ref().clone();
            let first = random_index(addresses.len());
            addresses.rotate_left(first);
            tracing::debug!(user = %caller.user.name, cluster = %cluster_id, first = %addresses[0].authority, "routed to a mesos-driver");
            Ok(Plan {
                kind,
                target: Cow::Owned(upstream_target),
                destination: Destination::Internal {
                    addresses,
                    owner: format!("{}{cluster_id}", crate::upstream::MESOS_OWNER_PREFIX),
                    cluster: cluster_id,
                    tls: settings.internal_tls.clone(),
                    caller,
                },
            })
        }
        Route::Webconsole { host_ip, upstream_target } => {
            let tables = tables.ok_or(ProxyError::NotReady).map_err(fail)?;
            let caller = auth::authenticate(head, tables, tables::now(), memo).map_err(fail)?;
            let host_ip = host_ip
                .ok_or_else(|| fail(ProxyError::BadRequest("the host_ip query parameter is required".into())))?;
            let ip: std::net::IpAddr = host_ip
                .parse()
                .map_err(|_| fail(ProxyError::BadRequest(format!("host_ip {host_ip:?} is not an IP address"))))?;
            let Some(ip) = crate::allow::allowed(&settings.console_allowed, ip) else {
                return Err(fail(ProxyError::Forbidden(format!(
                    "host_ip {ip} is not in proxy_config.webconsole_allowed_hosts"
                ))));
            };
            // As the original: TLS, verified against ca_file and the host's IP, with the client
            // certificate, when cert_config has one; plain otherwise.
            let tls = settings.internal_tls.clone().filter(|c| c.client_auth_cert_resolver.has_certs());
            let address = Address { tls: tls.is_some(), host: ip.to_string(), port: settings.console_port };
            Ok(Plan {
                kind,
                target: Cow::Owned(upstream_target),
                destination: Destination::Internal {
                    addresses: vec![Endpoint::from(address)],
                    owner: crate::upstream::CONSOLE_OWNER.into(),
                    cluster: String::new(),
                    tls,
                    caller,
                },
            })
        }
    }
}

/// A cheap per-thread pseudo-random index in `0..n` (xorshift; not for secrets).
fn random_index(n: usize) -> usize {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1) | 1,
        );
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x % n.max(1) as u64) as usize
    })
}

/// The access line. `upstream`: the `host:port` that answered, or the last one the request was
/// sent to or dialled for (empty when the request was not forwarded).
#[allow(clippy::too_many_arguments)]
fn log_request(
    method: &str,
    path: &str,
    user: &str,
    cluster: &str,
    upstream: &str,
    status: u16,
    took: Duration,
    error: Option<&ProxyError>,
) {
    let millis = took.as_secs_f64() * 1e3;
    match error {
        None => {
            tracing::info!(target: "bcs_proxy::access", method, path, user, cluster, upstream, status, millis, "request")
        }
        Some(e) => tracing::info!(
            target: "bcs_proxy::access", method, path, user, cluster, upstream, status, millis, error = %e, "request"
        ),
    }
}
