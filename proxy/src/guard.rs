//! Upgrades into pods and nodes are asked for `create` first.
//!
//! Before Kubernetes 1.35 an apiserver authorises a WebSocket exec, attach or port-forward (a
//! GET upgrade) as `get` on `pods/exec`, `pods/attach` or `pods/portforward`, and a GET upgrade
//! through a node's proxy (the kubelet's own exec) as `get` on `nodes/proxy`, so a role that
//! only reads `*` opens a shell in every pod (kubernetes/kubernetes#78741; 1.35 also asks for
//! `create`). The gateway asks the cluster itself, on the impersonated user's behalf, whether
//! `create` is allowed (a SubjectAccessReview with the cluster's token), before such an upgrade
//! (any method but POST) goes upstream; on any cluster version, an impersonated user then needs
//! what SPDY (a POST) always needed. A super user (not impersonated) is not asked about, and a POST is not: the
//! apiserver asks for `create` there itself.
//!
//! `review` is pure; `ask` is the one round trip, on a pooled connection when there is one.
use std::borrow::Cow;

use serde_json::json;

use crate::error::ProxyError;
use crate::http1::body::ChunkedDecoder;
use crate::http1::head::{Framing, RequestHead};
use crate::io::{read_more, Conn};
use crate::tables::Upstream;
use crate::upstream::{self, Endpoint, PoolKey};

/// What an upgrade asks to do, as a SubjectAccessReview's `resourceAttributes`.
#[derive(Debug, PartialEq, Eq)]
pub struct Review {
    pub namespace: Option<String>,
    pub resource: &'static str,
    pub subresource: &'static str,
    pub name: String,
}

/// The review a request needs, if any: an upgrade to a pod's exec, attach or port-forward, or
/// through a node's proxy, unless it is a POST (SPDY; the apiserver asks for `create` itself).
/// A GET is what WebSocket sends; any other method (a HEAD, say) is reviewed too, since an
/// apiserver would authorise it as a read as well. `target` is the upstream target (route.rs checked its path:
/// no dot segment, no encoded slash, well-formed escapes).
pub fn review(head: &RequestHead, target: &str) -> Option<Review> {
    if head.upgrade.is_none() || head.method == "POST" {
        return None;
    }
    let path = &target[..memchr::memchr(b'?', target.as_bytes()).unwrap_or(target.len())];
    // As the apiserver reads a path: decoded, without its leading and trailing slashes.
    let segments: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(|s| {
            let decoded = crate::route::percent_decode_check(s.as_bytes()).unwrap_or(Cow::Borrowed(s.as_bytes()));
            String::from_utf8_lossy(&decoded).into_owned()
        })
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match segments.as_slice() {
        ["api", "v1", "namespaces", namespace, "pods", name, subresource] => {
            let subresource = match *subresource {
                "exec" => "exec",
                "attach" => "attach",
                "portforward" => "portforward",
                _ => return None,
            };
            Some(Review {
                namespace: Some((*namespace).to_owned()),
                resource: "pods",
                subresource,
                name: (*name).to_owned(),
            })
        }
        ["api", "v1", "nodes", name, "proxy", ..] => {
            Some(Review { namespace: None, resource: "nodes", subresource: "proxy", name: (*name).to_owned() })
        }
        _ => None,
    }
}

impl Review {
    fn body(&self, user: &str) -> Vec<u8> {
        let mut attributes = json!({
            "verb": "create",
            "group": "",
            "resource": self.resource,
            "subresource": self.subresource,
            "name": self.name,
        });
        if let Some(namespace) = &self.namespace {
            attributes["namespace"] = json!(namespace);
        }
        json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            // The groups an impersonated user has when the gateway names no group.
            "spec": {"user": user, "groups": ["system:authenticated"], "resourceAttributes": attributes},
        })
        .to_string()
        .into_bytes()
    }

    fn refusal(&self, user: &str) -> String {
        let scope = match &self.namespace {
            Some(namespace) => format!(" in the namespace \"{namespace}\""),
            None => String::new(),
        };
        format!(
            "User \"{user}\" cannot create resource \"{}/{}\"{scope} (the gateway asks for create before a \
             WebSocket exec, attach, port-forward or node proxy)",
            self.resource, self.subresource
        )
    }
}

/// Largest review answer read (a SubjectAccessReview is a few hundred bytes).
const MAX_ANSWER: usize = 64 * 1024;

const PATH: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";

/// Asks the cluster whether `user` may `create` what `review` names. Ok(()) only on an answer
/// that says `allowed: true`; a refusal is 403, and an answer that cannot be had or read is 502
/// (never an allowance).
pub async fn ask(upstream: &Upstream, user: &str, review: &Review) -> Result<(), ProxyError> {
    let body = review.body(user);
    let mut last = ProxyError::UpstreamConnect("the cluster has no address".into());
    for endpoint in upstream::candidates(&upstream.addresses) {
        match ask_at(upstream, endpoint, &body).await {
            Ok(allowed) if allowed => return Ok(()),
            Ok(_) => return Err(ProxyError::Forbidden(review.refusal(user))),
            Err(
                e @ (ProxyError::UpstreamConnect(_)
                | ProxyError::ConnectTimeout(_)
                | ProxyError::HandshakeTimeout(_)
                | ProxyError::UpstreamTls(_)),
            ) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// One review at one address: whether it allowed. A pooled connection the apiserver closed
/// meanwhile fails before any byte of an answer: the review is then asked again once on a new
/// connection, as `forward::send` retries an idempotent request.
async fn ask_at(upstream: &Upstream, endpoint: &Endpoint, body: &[u8]) -> Result<bool, ProxyError> {
    let key = PoolKey { authority: &endpoint.authority, owner: &upstream.cluster_id, version: upstream.version };
    let request = review_request(upstream, endpoint, body)?;
    if let Some(conn) = upstream::take_pooled(&key) {
        match ask_on(conn, key, request.clone()).await {
            Err((e, true)) => tracing::debug!(error = %e, "stale pooled connection; asking on a fresh one"),
            done => return done.map_err(|(e, _)| e),
        }
    }
    let conn = match Box::pin(upstream::connect(endpoint, upstream::Tls::Cluster(upstream))).await {
        Ok(conn) => conn,
        Err(e) => {
            // Set aside and counted as a request's failed connection is (forward.rs).
            upstream::eject(endpoint, &e, &upstream.cluster_id);
            return Err(e);
        }
    };
    ask_on(conn, key, request).await.map_err(|(e, _)| e)
}

/// The review's request: the cluster's token, no impersonation (the user is in the body).
fn review_request(upstream: &Upstream, endpoint: &Endpoint, body: &[u8]) -> Result<Vec<u8>, ProxyError> {
    let mut request = Vec::with_capacity(body.len() + upstream.token.expose().len() + 256);
    request.extend_from_slice(b"POST ");
    request.extend_from_slice(PATH.as_bytes());
    request.extend_from_slice(b" HTTP/1.1\r\n");
    crate::http1::write::header(&mut request, "Host", endpoint.authority.as_bytes())?;
    crate::http1::write::bearer(&mut request, upstream.token.expose().as_bytes())?;
    crate::http1::write::header(&mut request, "Content-Type", b"application/json")?;
    crate::http1::write::header(&mut request, "Accept", b"application/json")?;
    crate::http1::write::content_length(&mut request, body.len() as u64);
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(body);
    Ok(request)
}

/// Sends the review on `conn` and reads the answer; the connection goes back to the pool when
/// the answer was read whole and kept it alive. Errors say whether nothing at all came back.
async fn ask_on(mut conn: Conn, key: PoolKey<'_>, request: Vec<u8>) -> Result<bool, (ProxyError, bool)> {
    let work = async {
        let (written, _) = monoio::io::AsyncWriteRentExt::write_all(&mut conn, request).await;
        written.map_err(|e| (ProxyError::UpstreamConnect(format!("{}: {e}", key.authority)), true))?;
        answer(&mut conn).await
    };
    let (allowed, reusable) = match crate::io::timeout(ANSWER_TIME, work).await {
        Ok(answer) => answer?,
        Err(()) => return Err((ProxyError::UpstreamTimeout, false)),
    };
    // The exec's own request takes it from the pool next.
    if reusable {
        upstream::put_pooled(key, conn);
    }
    Ok(allowed)
}

/// How long a review may take.
const ANSWER_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads the review's answer: whether it allowed, and whether the connection may be pooled
/// (the answer was framed, read whole, and did not close).
async fn answer(conn: &mut Conn) -> Result<(bool, bool), (ProxyError, bool)> {
    let (response, mut buf, head_len) = crate::forward::receive_head(conn, "POST").await?;
    answer_body(conn, response, &mut buf, head_len).await.map_err(|e| (e, false))
}

/// The rest of [`answer`], once a head came.
async fn answer_body(
    conn: &mut Conn,
    response: crate::http1::head::ResponseHead,
    buf: &mut Vec<u8>,
    head_len: usize,
) -> Result<(bool, bool), ProxyError> {
    if response.status != 201 && response.status != 200 {
        tracing::warn!(status = response.status, "the cluster refused a SubjectAccessReview");
        return Err(ProxyError::BadUpstream(format!(
            "the cluster answered {} to a SubjectAccessReview (the gateway's cluster token must be allowed to create them)",
            response.status
        )));
    }
    let mut body = Vec::new();
    let mut decoder = ChunkedDecoder::default();
    let mut at = head_len;
    loop {
        let done = match response.framing {
            Framing::Length(n) => buf.len() - head_len >= n as usize,
            Framing::Chunked => {
                at += decoder
                    .decode(&buf[at..], &mut body)
                    .map_err(|e| ProxyError::BadUpstream(format!("a SubjectAccessReview answer: {e}")))?;
                decoder.is_done()
            }
            _ => false,
        };
        if done {
            break;
        }
        if buf.len() > MAX_ANSWER {
            return Err(ProxyError::BadUpstream("a SubjectAccessReview answer too large".into()));
        }
        let (r, b) = read_more(conn, std::mem::take(buf)).await;
        *buf = b;
        match r {
            Ok(0) if response.framing == Framing::UntilClose => break,
            Ok(0) => return Err(ProxyError::BadUpstream("a SubjectAccessReview answer ended early".into())),
            Ok(_) => {}
            Err(e) => return Err(ProxyError::BadUpstream(e.to_string())),
        }
    }
    let json = match response.framing {
        Framing::Chunked => &body[..],
        Framing::Length(n) => &buf[head_len..head_len + n as usize],
        _ => &buf[head_len..],
    };
    let review: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| ProxyError::BadUpstream(format!("a SubjectAccessReview answer is not JSON: {e}")))?;
    let whole = match response.framing {
        Framing::Length(n) => buf.len() - head_len == n as usize,
        Framing::Chunked => at == buf.len(),
        _ => false,
    };
    Ok((review["status"]["allowed"] == serde_json::Value::Bool(true), whole && !response.close))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::head::parse_request;

    fn head(method: &str, upgrade: bool) -> RequestHead {
        let extra = if upgrade { "Connection: Upgrade\r\nUpgrade: websocket\r\n" } else { "" };
        let text = format!("{method} /x HTTP/1.1\r\nHost: h\r\n{extra}\r\n");
        parse_request(text.as_bytes()).unwrap().unwrap().0
    }

    #[test]
    fn only_get_upgrades_into_pods_and_nodes_are_reviewed() {
        let get = head("GET", true);
        let exec = review(&get, "/api/v1/namespaces/default/pods/web-0/exec?command=sh&stdin=true").unwrap();
        assert_eq!(
            exec,
            Review { namespace: Some("default".into()), resource: "pods", subresource: "exec", name: "web-0".into() }
        );
        for sub in ["attach", "portforward"] {
            let r = review(&get, &format!("/api/v1/namespaces/ns/pods/p/{sub}")).unwrap();
            assert_eq!(r.subresource, sub);
        }
        // As the apiserver reads the path: escapes decoded, a trailing slash ignored.
        assert_eq!(review(&get, "/api/v1/namespaces/default/pods/web-0/ex%65c/").unwrap().subresource, "exec");
        let node = review(&get, "/api/v1/nodes/n1/proxy/exec/default/web-0/c?command=sh").unwrap();
        assert_eq!((node.resource, node.subresource, node.namespace), ("nodes", "proxy", None));
        // A HEAD upgrade through a node's proxy is authorised as a read too.
        assert!(review(&head("HEAD", true), "/api/v1/nodes/n1/proxy/exec/default/web-0/c").is_some());
        // Not reviewed: a POST (SPDY; the apiserver asks for create), no upgrade, other paths.
        assert_eq!(review(&head("POST", true), "/api/v1/namespaces/default/pods/web-0/exec"), None);
        assert_eq!(review(&head("GET", false), "/api/v1/namespaces/default/pods/web-0/exec"), None);
        assert_eq!(review(&get, "/api/v1/namespaces/default/pods/web-0/log"), None);
        assert_eq!(review(&get, "/api/v1/namespaces/default/pods/web-0"), None);
        assert_eq!(review(&get, "/apis/apps/v1/namespaces/default/pods/web-0/exec"), None);
    }

    #[test]
    fn the_review_asks_for_create_as_the_user() {
        let r =
            Review { namespace: Some("default".into()), resource: "pods", subresource: "exec", name: "web-0".into() };
        let body: serde_json::Value = serde_json::from_slice(&r.body("plain.dev")).unwrap();
        assert_eq!(body["kind"], "SubjectAccessReview");
        assert_eq!(body["spec"]["user"], "plain.dev");
        assert_eq!(
            body["spec"]["resourceAttributes"],
            json!({"verb": "create", "group": "", "resource": "pods", "subresource": "exec", "name": "web-0", "namespace": "default"})
        );
        assert!(r.refusal("plain.dev").contains("cannot create resource \"pods/exec\" in the namespace \"default\""));
    }
}
