//! The heads the gateway sends on: the request to a cluster or to admin, and the response to
//! the client. Pure.
//!
//! Order matters (Rancher CVE-2021-31999): hop-by-hop headers, including every header the
//! client named in `Connection`, are removed **first**; the gateway's own headers
//! (`Authorization`, `Impersonate-User`, framing, `X-Forwarded-For`) are added **after**, so a
//! client can never strip them.
use std::net::IpAddr;

use bcs_shared::secret::Secret;

use crate::error::ProxyError;
use crate::http1::head::{tokens, Fields, Framing, Header, RequestHead, ResponseHead};
use crate::http1::write::{bearer, content_length, decimal, field, header, is_token};

/// Removed from every message in both directions (RFC 9110 §7.6.1, plus the proxy ones).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Never forwarded to a cluster: the caller's credentials and what the gateway regenerates.
const NOT_TO_CLUSTERS: &[&str] = &["authorization", "cookie", "host", "content-length", "expect", "x-forwarded-for"];

/// Never forwarded to admin: what the gateway regenerates.
const NOT_TO_ADMIN: &[&str] = &["host", "content-length", "expect", "x-forwarded-for"];

/// Kubernetes accepts a bearer token inside `Sec-WebSocket-Protocol`; it must not pass.
const BEARER_PROTOCOL_PREFIX: &str = "base64url.bearer.authorization.k8s.io.";

/// How the body of the message being written is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

impl From<Framing> for BodyFraming {
    fn from(f: Framing) -> Self {
        match f {
            Framing::None => BodyFraming::None,
            Framing::Length(n) => BodyFraming::Length(n),
            Framing::Chunked | Framing::UntilClose => BodyFraming::Chunked,
        }
    }
}

/// What the gateway adds towards a cluster.
pub struct ClusterIdentity<'a> {
    pub token: &'a Secret,
    /// `Impersonate-User` value, for normal users when RBAC is on.
    pub impersonate: Option<&'a str>,
}

fn is_removed(h: &Header, named_in_connection: &[&str], extra: &[&str]) -> bool {
    HOP_BY_HOP.iter().chain(extra).any(|n| h.is(n))
        || named_in_connection.iter().any(|n| h.raw_name().eq_ignore_ascii_case(n.as_bytes()))
}

/// The header names a message's `Connection` lists, less those removed anyway: a head with
/// no `Connection`, or with the usual `keep-alive`, costs no allocation and no comparison per
/// header.
fn named_in_connection(fields: &Fields) -> Result<Vec<&str>, ProxyError> {
    if !fields.has_connection() {
        return Ok(Vec::new());
    }
    // Read as text, as `parse_request` reads `Connection` (http1::head::tokens).
    let named: Vec<&str> =
        tokens(fields, "connection").filter(|t| !HOP_BY_HOP.iter().any(|n| t.eq_ignore_ascii_case(n))).collect();
    // Each field is compared with each name: thousands of names in a 64 KiB head would make
    // every request cost milliseconds, unauthenticated ones on /rest included.
    if named.len() > MAX_CONNECTION_NAMES {
        return Err(ProxyError::BadRequest(format!("Connection names more than {MAX_CONNECTION_NAMES} fields")));
    }
    Ok(named)
}

/// Fields a `Connection` header may name (a real one names one or two).
const MAX_CONNECTION_NAMES: usize = 16;

/// The request line, in a buffer with room for `rest` bytes of headers after it.
fn start(method: &str, target: &str, rest: usize) -> Result<Vec<u8>, ProxyError> {
    // A method is a token (RFC 9110 §9.1), as the parser took it: `FOO1` passes, for the
    // upstream to refuse; only what could break the line (controls, spaces) is ours to refuse.
    if !target.bytes().all(|b| b.is_ascii_graphic()) || !is_token(method.as_bytes()) {
        return Err(ProxyError::Internal("refusing to write a request line with control characters".into()));
    }
    let mut out = Vec::with_capacity(method.len() + target.len() + 16 + rest);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    Ok(out)
}

/// `X-Forwarded-For`: the client's entries, then its address. Written straight into the head,
/// not through [`header`]: the entries are parsed fields' values, trimmed (see
/// [`crate::http1::write::field`]), the address digits, dots and colons.
fn forwarded_for(value: &mut Vec<u8>, head: &RequestHead, client: IpAddr) {
    value.extend_from_slice(b"X-Forwarded-For: ");
    for prior in head.headers_named("x-forwarded-for").map(|h| h.value_str().trim()).filter(|v| !v.is_empty()) {
        value.extend_from_slice(prior.as_bytes());
        value.extend_from_slice(b", ");
    }
    match client {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    value.push(b'.');
                }
                decimal(value, octet.into());
            }
        }
        IpAddr::V6(v6) => value.extend_from_slice(v6.to_string().as_bytes()),
    }
    value.extend_from_slice(b"\r\n");
}

fn framing(out: &mut Vec<u8>, body: BodyFraming) -> Result<(), ProxyError> {
    match body {
        BodyFraming::None => Ok(()),
        BodyFraming::Length(n) => {
            content_length(out, n);
            Ok(())
        }
        BodyFraming::Chunked => header(out, "Transfer-Encoding", b"chunked"),
    }
}

fn upgrade_headers(out: &mut Vec<u8>, protocol: Option<&str>) -> Result<(), ProxyError> {
    if let Some(protocol) = protocol {
        header(out, "Connection", b"Upgrade")?;
        header(out, "Upgrade", protocol.as_bytes())?;
    }
    Ok(())
}

/// The start line, `Host`, then every client header that is not removed (hop-by-hop, named in
/// `Connection`, or listed in `removed`), each written by `forward` (which may rewrite or drop it).
/// `ours`: the length of what the caller adds before [`finish`].
fn begin(
    head: &RequestHead,
    target: &str,
    host: &str,
    removed: &[&str],
    ours: usize,
    forward: impl Fn(&mut Vec<u8>, &Header) -> Result<(), ProxyError>,
) -> Result<Vec<u8>, ProxyError> {
    let named = named_in_connection(&head.headers)?;
    // The client's fields, Host, ours, and what `finish` adds (X-Forwarded-For, framing).
    let mut out = start(&head.method, target, head.headers.byte_len() + host.len() + ours + 160)?;
    header(&mut out, "Host", host.as_bytes())?;
    for h in head.headers.iter().filter(|h| !is_removed(h, &named, removed)) {
        forward(&mut out, &h)?;
    }
    Ok(out)
}

/// The gateway's own last headers (after the client's, so none can be stripped): the
/// forwarding chain, our framing, the upgrade, then the blank line.
fn finish(
    mut out: Vec<u8>,
    head: &RequestHead,
    client: IpAddr,
    body: BodyFraming,
    upgrade: bool,
) -> Result<Vec<u8>, ProxyError> {
    forwarded_for(&mut out, head, client);
    framing(&mut out, body)?;
    if upgrade {
        upgrade_headers(&mut out, head.upgrade.as_deref())?;
    }
    out.extend_from_slice(b"\r\n");
    Ok(out)
}

/// The request to a cluster's apiserver at `host` (its `host:port`).
pub fn to_cluster(
    head: &RequestHead,
    target: &str,
    host: &str,
    identity: &ClusterIdentity,
    client: IpAddr,
    body: BodyFraming,
) -> Result<Vec<u8>, ProxyError> {
    let ours = identity.token.expose().len() + identity.impersonate.map_or(0, |u| u.len() + 20) + 24;
    let mut out = begin(head, target, host, NOT_TO_CLUSTERS, ours, without_bearer_protocol)?;
    bearer(&mut out, identity.token.expose().as_bytes())?;
    if let Some(user) = identity.impersonate {
        header(&mut out, "Impersonate-User", user.as_bytes())?;
    }
    finish(out, head, client, body, true)
}

/// Writes `h`, but a `Sec-WebSocket-Protocol` without the bearer token Kubernetes clients may
/// put there (gone whole when nothing else is left).
fn without_bearer_protocol(out: &mut Vec<u8>, h: &Header) -> Result<(), ProxyError> {
    if !h.is("sec-websocket-protocol") {
        field(out, h);
        return Ok(());
    }
    let kept: Vec<&str> =
        h.value_str().split(',').map(str::trim).filter(|p| !p.starts_with(BEARER_PROTOCOL_PREFIX)).collect();
    if kept.is_empty() {
        return Ok(());
    }
    header(out, h.name(), kept.join(", ").as_bytes())
}

/// Never forwarded to a mesos-driver or a console proxy: the caller's credentials, any
/// impersonation (a driver has no use for it), and what the gateway regenerates.
const NOT_TO_DRIVERS: &[&str] = &["authorization", "cookie", "host", "content-length", "expect", "x-forwarded-for"];

/// The request to a mesos-driver or a console proxy at `host`. `BCS-ClusterID` passes; a bearer
/// token in `Sec-WebSocket-Protocol` does not, as towards clusters.
pub fn to_driver(
    head: &RequestHead,
    target: &str,
    host: &str,
    client: IpAddr,
    body: BodyFraming,
) -> Result<Vec<u8>, ProxyError> {
    let out = begin(head, target, host, NOT_TO_DRIVERS, 0, |out, h| {
        if h.is_impersonation() {
            return Ok(());
        }
        without_bearer_protocol(out, h)
    })?;
    finish(out, head, client, body, true)
}

/// The request to admin's REST API: the caller's `Authorization` stays (admin authenticates).
pub fn to_admin(head: &RequestHead, host: &str, client: IpAddr, body: BodyFraming) -> Result<Vec<u8>, ProxyError> {
    let out = begin(head, &head.target, host, NOT_TO_ADMIN, 0, |out, h| {
        field(out, h);
        Ok(())
    })?;
    finish(out, head, client, body, false)
}

/// The response head to the client. `upgrade`: the 101 of an upgrade the client asked for.
/// `room`: body bytes the caller will append (reserved now, so they need no second allocation).
pub fn to_client(
    response: &ResponseHead,
    body: BodyFraming,
    close: bool,
    upgrade: Option<&str>,
    room: usize,
) -> Result<Vec<u8>, ProxyError> {
    let named =
        named_in_connection(&response.headers).map_err(|e| ProxyError::BadUpstream(format!("its answer's {e}")))?;
    let mut out = Vec::with_capacity(response.headers.byte_len() + 128 + room);
    out.extend_from_slice(b"HTTP/1.1 ");
    decimal(&mut out, response.status.into());
    out.push(b' ');
    out.extend(response.reason().iter().copied().filter(|&b| b.is_ascii_graphic() || b == b' '));
    out.extend_from_slice(b"\r\n");
    for h in response.headers.iter() {
        // Set-Cookie from one cluster would land on the gateway's origin, shared by all clusters.
        if is_removed(&h, &named, &["content-length", "set-cookie"]) {
            continue;
        }
        field(&mut out, &h);
    }
    match (body, response.framing) {
        // A HEAD answer or a 304 tells the length of a body it does not carry; a 1xx or a 204
        // must not carry one (RFC 9110 §8.6), so an upstream's is not passed on.
        (BodyFraming::None, Framing::None) if response.status == 204 || response.status < 200 => {}
        (BodyFraming::None, Framing::None) => {
            if let Some(cl) = response
                .header("content-length")
                .filter(|h| !h.value.is_empty() && h.value.iter().all(u8::is_ascii_digit))
            {
                field(&mut out, &cl);
            }
        }
        (b, _) => framing(&mut out, b)?,
    }
    upgrade_headers(&mut out, upgrade)?;
    if close && upgrade.is_none() {
        header(&mut out, "Connection", b"close")?;
    }
    out.extend_from_slice(b"\r\n");
    Ok(out)
}

#[cfg(test)]
mod tests;
