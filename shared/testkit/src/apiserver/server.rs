//! Accepting connections (TLS, recording), applying faults, authenticating, and routing each
//! request to discovery, the object store, watches, logs or an upgrade.
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::body::{self, Body};
use super::discovery::{self, status};
use super::exec::Pod;
use super::faults::Fault;
use super::record::{ConnectionRecord, CountingTcp, RecordedRequest, RecordingIo, SharedConn};
use super::store::{table, Kind};
use super::watch::{self, WatchSpec};
use super::{exec_spdy, logs, portforward, spdy_session, websocket, State};

/// Largest request body the fake reads.
const MAX_BODY: usize = 16 << 20;

/// Per-connection switches the request handler can pull.
struct ConnCtl {
    index: usize,
    record: SharedConn,
    reset: Arc<AtomicBool>,
    kill: Notify,
}

pub(crate) async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let record: SharedConn = Arc::new(Mutex::new(ConnectionRecord::new(peer)));
        let index = {
            let mut conns = state.connections.lock().unwrap();
            conns.push(record.clone());
            conns.len() - 1
        };
        let task = tokio::spawn(serve_connection(state.clone(), tcp, index, record));
        state.track(task.abort_handle());
    }
}

async fn serve_connection(state: Arc<State>, tcp: tokio::net::TcpStream, index: usize, record: SharedConn) {
    let reset = Arc::new(AtomicBool::new(false));
    let tcp = CountingTcp { inner: tcp, record: record.clone(), reset_on_drop: reset.clone() };
    let wrong =
        state.options.wrong_ca || state.faults.lock().unwrap().iter().any(|r| r.fault == Fault::WrongCertificate);
    let acceptor = TlsAcceptor::from(if wrong { state.wrong_tls.clone() } else { state.good_tls.clone() });
    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            record.lock().unwrap().tls_error = Some(e.to_string());
            return;
        }
        Err(_) => {
            record.lock().unwrap().tls_error = Some("handshake timed out".into());
            return;
        }
    };
    record.lock().unwrap().tls_established = true;
    let io = TokioIo::new(RecordingIo { inner: tls, record: record.clone() });
    let ctl = Arc::new(ConnCtl { index, record, reset, kill: Notify::new() });
    let ctl2 = ctl.clone();
    let service = service_fn(move |req| {
        let (state, ctl) = (state.clone(), ctl2.clone());
        async move { Ok::<_, Infallible>(handle(state, ctl, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(io, service)
        .with_upgrades();
    tokio::select! {
        _ = conn => {}
        _ = ctl.kill.notified() => {}
    }
}

fn reply(code: u16, content_type: &str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if !content_type.is_empty() {
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_str(content_type).expect("content type"));
    }
    r
}

fn json_reply(code: u16, value: &Value) -> Response<Body> {
    reply(code, "application/json", body::json(value))
}

fn error(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_reply(code, &status(code, reason, message))
}

fn header_values(req: &Request<Incoming>, name: header::HeaderName) -> Vec<String> {
    req.headers().get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect()
}

fn has_token(values: &[String], token: &str) -> bool {
    values.iter().flat_map(|v| v.split(',')).any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Decodes `%XX` and `+` in a query component.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Query {
        Query(
            q.unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (unescape(k), unescape(v))
                })
                .collect(),
        )
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }
    fn all(&self, k: &str) -> Vec<String> {
        self.0.iter().filter(|(n, _)| n == k).map(|(_, v)| v.clone()).collect()
    }
    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }
}

async fn handle(state: Arc<State>, ctl: Arc<ConnCtl>, mut req: Request<Incoming>) -> Response<Body> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let target = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| path.clone());
    let connection_values = header_values(&req, header::CONNECTION);
    let upgrade =
        header_values(&req, header::UPGRADE).first().cloned().filter(|_| has_token(&connection_values, "upgrade"));
    let on_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let headers = ctl.record.lock().unwrap().take_head(&method, &target).unwrap_or_else(|| {
        req.headers().iter().map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec())).collect()
    });
    let (parts, incoming) = req.into_parts();
    let body = match Limited::new(incoming, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => {
            let r = RecordedRequest {
                connection: ctl.index,
                method,
                path,
                query,
                headers,
                body: Vec::new(),
                at: std::time::Instant::now(),
            };
            state.requests.lock().unwrap().push(r);
            return error(413, "RequestEntityTooLarge", "request body too large or broken");
        }
    };
    let recorded =
        RecordedRequest { connection: ctl.index, method, path, query, headers, body, at: std::time::Instant::now() };
    state.requests.lock().unwrap().push(recorded.clone());

    let rules: Vec<Fault> =
        state.faults.lock().unwrap().iter().filter(|r| r.matches(&recorded.path)).map(|r| r.fault.clone()).collect();
    for fault in rules {
        match fault {
            Fault::Delay(d) => tokio::time::sleep(d).await,
            Fault::Reset => {
                ctl.reset.store(true, Ordering::SeqCst);
                ctl.kill.notify_one();
                std::future::pending::<()>().await;
            }
            Fault::Redirect { status, location } => {
                let mut r = error(status, "Redirect", "moved");
                r.headers_mut().insert(header::LOCATION, HeaderValue::from_str(&location).expect("location"));
                return r;
            }
            Fault::RefuseUpgrade { status: code } if upgrade.is_some() => {
                return error(code, "UpgradeRefused", "upgrade refused by fault injection");
            }
            Fault::Status { status: code, message } => return error(code, "Injected", message),
            _ => {}
        }
    }

    let expected = format!("Bearer {}", state.token.lock().unwrap());
    let auth = recorded.header_all("authorization");
    if auth.len() != 1 || auth[0] != expected {
        let mut r = error(401, "Unauthorized", "Unauthorized");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let watching = Query::parse(recorded.query.as_deref()).flag("watch");
    let (user, groups) = (recorded.header_all("impersonate-user"), recorded.header_all("impersonate-group"));
    let denied =
        super::rbac::check(&state.rbac.lock().unwrap(), &user, &groups, &recorded.method, &recorded.path, watching);
    if let Some(forbidden) = denied.filter(|_| state.options.enforce_rbac) {
        return json_reply(403, &forbidden);
    }
    let accept = parts.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let ws_protocols = parts
        .headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect::<Vec<_>>();
    let ctx = Ctx {
        state: &state,
        method: recorded.method.as_str(),
        query: Query::parse(recorded.query.as_deref()),
        accept: &accept,
        body: &recorded.body,
    };
    if let (Some(proto), Some(on_upgrade)) = (upgrade, on_upgrade) {
        return upgrade_route(&ctx, &recorded, &parts.headers, &proto, ws_protocols, on_upgrade);
    }
    route(&ctx, &recorded.path)
}

struct Ctx<'a> {
    state: &'a Arc<State>,
    method: &'a str,
    query: Query,
    accept: &'a str,
    body: &'a [u8],
}

fn route(ctx: &Ctx, path: &str) -> Response<Body> {
    let state = ctx.state;
    match path {
        "/version" | "/version/" => return json_reply(200, &discovery::version()),
        "/api" | "/api/" => return json_reply(200, &discovery::api_versions(&state.address.to_string())),
        "/apis" | "/apis/" => return json_reply(200, &discovery::api_groups()),
        "/api/v1" | "/api/v1/" => return json_reply(200, &discovery::core_v1()),
        "/openapi/v3" | "/openapi/v3/" => return json_reply(200, &discovery::openapi_v3_root()),
        "/openapi/v3/api/v1" => return json_reply(200, &discovery::openapi_v3_core()),
        "/healthz" | "/readyz" | "/livez" => return reply(200, "text/plain", body::full("ok")),
        _ => {}
    }
    // As a real apiserver: a RoleBinding is created only in a namespace that exists.
    if ctx.method == "POST" {
        let prefix = format!("{}namespaces/", super::rbac::PREFIX);
        if let Some(ns) = path.strip_prefix(prefix.as_str()).and_then(|rest| rest.split('/').next()) {
            if state.store.lock().unwrap().get(Kind::Namespace, "", ns).is_none() {
                return error(404, "NotFound", &format!("namespaces \"{ns}\" not found"));
            }
        }
    }
    if path == super::rbac::REVIEWS && ctx.method == "POST" {
        let (code, answer) = super::rbac::review(&state.rbac.lock().unwrap(), ctx.body, state.options.enforce_rbac);
        return json_reply(code, &answer);
    }
    let rbac =
        super::rbac::serve(&mut state.rbac.lock().unwrap(), ctx.method, path, ctx.query.get("labelSelector"), ctx.body);
    if let Some((code, body)) = rbac {
        return json_reply(code, &body);
    }
    let Some(rest) = path.strip_prefix("/api/v1/") else {
        return error(404, "NotFound", "the server could not find the requested resource");
    };
    let segs: Vec<&str> = rest.split('/').collect();
    match segs.as_slice() {
        ["namespaces"] => collection(ctx, Kind::Namespace, None),
        ["namespaces", ns] => item(ctx, Kind::Namespace, "", ns),
        ["namespaces", ns, res] => match Kind::from_resource(res) {
            Some(k) => collection(ctx, k, Some(ns)),
            None => error(404, "NotFound", "the server could not find the requested resource"),
        },
        ["namespaces", "default", "endpoints", "kubernetes"] if ctx.method == "GET" => {
            let addresses = state.endpoints.lock().unwrap().clone();
            let rv = state.store.lock().unwrap().resource_version;
            json_reply(200, &super::endpoints::kubernetes(&addresses, rv))
        }
        ["namespaces", ns, res, name] => match Kind::from_resource(res) {
            Some(k) => item(ctx, k, ns, name),
            None => error(404, "NotFound", "the server could not find the requested resource"),
        },
        ["namespaces", ns, "pods", name, "log"] => {
            if state.store.lock().unwrap().get(Kind::Pod, ns, name).is_none() {
                return error(404, "NotFound", &format!("pods \"{name}\" not found"));
            }
            reply(200, "text/plain", logs::start(state, name, ctx.query.flag("follow")))
        }
        ["namespaces", _, "pods", _, "exec" | "attach" | "portforward"] => {
            error(400, "BadRequest", "Upgrade request required")
        }
        [res] => match Kind::from_resource(res) {
            Some(k) if k.namespaced() => collection(ctx, k, None),
            _ => error(404, "NotFound", "the server could not find the requested resource"),
        },
        _ => error(404, "NotFound", "the server could not find the requested resource"),
    }
}

fn wants_table(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| first.contains("as=Table"))
}

const TABLE_TYPE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

fn collection(ctx: &Ctx, kind: Kind, namespace: Option<&str>) -> Response<Body> {
    let state = ctx.state;
    let include = ctx.query.get("includeObject").unwrap_or("Metadata").to_string();
    let name = ctx.query.get("fieldSelector").and_then(|s| s.strip_prefix("metadata.name=")).map(str::to_string);
    match ctx.method {
        "GET" if ctx.query.flag("watch") => {
            let spec = WatchSpec {
                kind,
                namespace: namespace.map(str::to_string),
                name,
                since: ctx.query.get("resourceVersion").and_then(|v| v.parse().ok()),
                table: wants_table(ctx.accept).then_some(include),
                timeout: Duration::from_secs(
                    ctx.query.get("timeoutSeconds").and_then(|t| t.parse().ok()).unwrap_or(1800).min(1800),
                ),
            };
            let content_type = if spec.table.is_some() { TABLE_TYPE } else { "application/json" };
            reply(200, content_type, watch::start(state, spec))
        }
        "GET" => {
            let store = state.store.lock().unwrap();
            let items = store.list(kind, namespace, name.as_deref());
            let rv = store.resource_version;
            if wants_table(ctx.accept) {
                return reply(200, TABLE_TYPE, body::json(&table(kind, &items, rv, &include)));
            }
            json_reply(
                200,
                &json!({
                    "kind": format!("{}List", kind.name()), "apiVersion": "v1",
                    "metadata": {"resourceVersion": rv.to_string()}, "items": items,
                }),
            )
        }
        "POST" => {
            let Ok(object) = serde_json::from_slice::<Value>(ctx.body) else {
                return error(400, "BadRequest", "the body is not JSON");
            };
            if object["kind"].as_str().is_some_and(|k| k != kind.name()) {
                return error(400, "BadRequest", "the kind does not match the resource");
            }
            if let Some(ns) = namespace {
                if kind.namespaced() && state.store.lock().unwrap().get(Kind::Namespace, "", ns).is_none() {
                    return error(404, "NotFound", &format!("namespaces \"{ns}\" not found"));
                }
            }
            let created = state.store.lock().unwrap().create(kind, namespace.unwrap_or(""), object);
            match created {
                Ok(o) => json_reply(201, &o),
                Err((409, m)) => error(409, "AlreadyExists", &m),
                Err((code, m)) => error(code, "Invalid", &m),
            }
        }
        _ => error(405, "MethodNotAllowed", "method not allowed"),
    }
}

fn item(ctx: &Ctx, kind: Kind, namespace: &str, name: &str) -> Response<Body> {
    let mut store = ctx.state.store.lock().unwrap();
    let not_found = || error(404, "NotFound", &format!("{}s \"{name}\" not found", kind.name().to_lowercase()));
    match ctx.method {
        "GET" => match store.get(kind, namespace, name) {
            Some(o) if wants_table(ctx.accept) => {
                let include = ctx.query.get("includeObject").unwrap_or("Metadata");
                reply(200, TABLE_TYPE, body::json(&table(kind, &[o], store.resource_version, include)))
            }
            Some(o) => json_reply(200, &o),
            None => not_found(),
        },
        "DELETE" => match store.delete(kind, namespace, name) {
            Some(o) => json_reply(200, &o),
            None => not_found(),
        },
        _ => error(405, "MethodNotAllowed", "method not allowed"),
    }
}

fn switching(headers: &[(&str, String)]) -> Response<Body> {
    let mut r = reply(101, "", body::empty());
    for (n, v) in headers {
        r.headers_mut().append(
            header::HeaderName::from_bytes(n.as_bytes()).expect("header name"),
            HeaderValue::from_str(v).expect("header value"),
        );
    }
    r
}

fn upgrade_route(
    ctx: &Ctx,
    req: &RecordedRequest,
    headers: &http::HeaderMap,
    proto: &str,
    ws_protocols: Vec<String>,
    on_upgrade: hyper::upgrade::OnUpgrade,
) -> Response<Body> {
    let state = ctx.state.clone();
    let segs: Vec<&str> = req.path.trim_start_matches("/api/v1/").split('/').collect();
    let (ns, pod, sub) = match segs.as_slice() {
        ["namespaces", ns, "pods", pod, "exec"] => (*ns, *pod, "exec"),
        ["namespaces", ns, "pods", pod, "attach"] => (*ns, *pod, "attach"),
        ["namespaces", ns, "pods", pod, "portforward"] => (*ns, *pod, "portforward"),
        _ => return error(400, "BadRequest", "upgrade not supported on this path"),
    };
    if state.store.lock().unwrap().get(Kind::Pod, ns, pod).is_none() {
        return error(404, "NotFound", &format!("pods \"{pod}\" not found"));
    }
    let q = &ctx.query;
    let argv = match sub {
        "exec" => q.all("command"),
        "attach" if q.flag("stdin") => vec!["cat".to_string()],
        _ => vec!["echo".to_string(), format!("attached to {pod}")],
    };
    let pod = Pod { namespace: ns.to_string(), name: pod.to_string(), store: state.store.clone() };
    let want_stdin = q.flag("stdin");
    if proto.eq_ignore_ascii_case("websocket") {
        let key = headers.get(header::SEC_WEBSOCKET_KEY).map(|k| derive_accept_key(k.as_bytes()));
        let Some(accept) = key else { return error(400, "BadRequest", "missing Sec-WebSocket-Key") };
        let (supported, allowed): (&[&str], bool) = if sub == "portforward" {
            (&[websocket::TUNNEL_PROTOCOL], state.options.portforward_websocket)
        } else {
            (websocket::CHANNEL_PROTOCOLS, state.options.exec_websocket)
        };
        let Some(chosen) = websocket::select_protocol(&ws_protocols, supported).filter(|_| allowed) else {
            return error(400, "BadRequest", "unable to upgrade: no supported websocket subprotocol");
        };
        let st = state.clone();
        let task = tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else { return };
            let ws = websocket::accept(upgraded).await;
            if sub == "portforward" {
                portforward::serve(spdy_session::start(websocket::tunnel(ws)), st.forwarded_ports.clone()).await;
            } else {
                websocket::serve_exec(ws, argv, want_stdin, pod).await;
            }
        });
        state.track(task.abort_handle());
        return switching(&[
            ("upgrade", "websocket".into()),
            ("connection", "Upgrade".into()),
            ("sec-websocket-accept", accept),
            ("sec-websocket-protocol", chosen.into()),
        ]);
    }
    if !proto.eq_ignore_ascii_case("SPDY/3.1") {
        return error(400, "BadRequest", &format!("unsupported upgrade {proto}"));
    }
    let offered: Vec<String> = headers
        .get_all("x-stream-protocol-version")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(',').map(|s| s.trim().to_string()).collect::<Vec<_>>())
        .collect();
    let supported: &[&str] = if sub == "portforward" { &["portforward.k8s.io"] } else { &["v4.channel.k8s.io"] };
    let Some(chosen) = supported.iter().find(|s| offered.iter().any(|o| o == *s)) else {
        return error(403, "Forbidden", "unable to negotiate a stream protocol");
    };
    let st = state.clone();
    let wanted = exec_spdy::Wanted {
        stdin: want_stdin,
        stdout: sub == "exec" && q.flag("stdout") || sub == "attach" && q.flag("stdout"),
        stderr: q.flag("stderr"),
        tty: q.flag("tty"),
    };
    let task = tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        let streams = spdy_session::start(TokioIo::new(upgraded));
        if sub == "portforward" {
            portforward::serve(streams, st.forwarded_ports.clone()).await;
        } else {
            exec_spdy::serve(streams, argv, wanted, pod).await;
        }
    });
    state.track(task.abort_handle());
    switching(&[
        ("connection", "Upgrade".into()),
        ("upgrade", "SPDY/3.1".into()),
        ("x-stream-protocol-version", chosen.to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_components_are_unescaped() {
        let q = Query::parse(Some("fieldSelector=metadata.name%3Dweb-0&watch=1&command=echo&command=a+b"));
        assert_eq!(q.get("fieldSelector"), Some("metadata.name=web-0"));
        assert!(q.flag("watch"));
        assert_eq!(q.all("command"), vec!["echo", "a b"]);
        assert_eq!(unescape("%zz%4"), "%zz%4");
    }
}
