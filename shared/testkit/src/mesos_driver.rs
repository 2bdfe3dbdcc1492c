//! A fake bcs-mesos-driver: registers in ZooKeeper exactly as the real one does (reference
//! §5.1: a protected ephemeral sequential node `_c_<32 hex>-<ip><10-digit sequence>` under
//! `/bcs/services/endpoints/mesosdriver/<cluster id>/`, parents created persistent and empty,
//! the ServerInfo JSON as data) and serves `/mesosdriver/v4/...` over HTTP, recording every
//! request and answering with a status and body the test sets.
//!
//! [`FakeMesosDriver::stop`] closes its session (the node goes at once, as at a clean exit);
//! [`FakeMesosDriver::kill`] cuts its connection to ZooKeeper and its HTTP listener without
//! closing anything (the node goes when the server expires the session, as after a crash).
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::task::AbortHandle;
use zookeeper_client as zk;

use crate::forward::Forwarder;

pub const DRIVERS: &str = "/bcs/services/endpoints/mesosdriver";

/// One request as the driver received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, as sent.
    pub uri: String,
    /// Names in lower case, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

pub struct Options {
    pub cluster_id: String,
    /// This driver's ZooKeeper session timeout.
    pub session_timeout: Duration,
    /// `scheme` in the ServerInfo (the server itself always speaks plain HTTP).
    pub scheme: String,
    /// Replaces the ServerInfo JSON (to register a malformed node); the HTTP server still runs.
    pub data: Option<Vec<u8>>,
}

impl Options {
    pub fn new(cluster_id: &str) -> Options {
        Options {
            cluster_id: cluster_id.into(),
            session_timeout: Duration::from_secs(2),
            scheme: "http".into(),
            data: None,
        }
    }
}

struct Reply {
    status: u16,
    body: String,
}

pub struct FakeMesosDriver {
    pub cluster_id: String,
    pub ip: String,
    /// The HTTP port (also the ServerInfo `port`).
    pub port: u16,
    /// The full path of its ZooKeeper node.
    pub node: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    reply: Arc<Mutex<Reply>>,
    http: AbortHandle,
    client: Option<zk::Client>,
    link: Forwarder,
}

impl FakeMesosDriver {
    /// A driver of `cluster_id` with a 2 s session, registered at `zk_servers`.
    pub async fn start(zk_servers: &str, cluster_id: &str) -> FakeMesosDriver {
        FakeMesosDriver::start_with(zk_servers, Options::new(cluster_id)).await
    }

    pub async fn start_with(zk_servers: &str, options: Options) -> FakeMesosDriver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fake driver");
        let port = listener.local_addr().expect("local address").port();
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let reply = Arc::new(Mutex::new(Reply { status: 200, body: r#"{"result":true,"code":0,"data":{}}"#.into() }));
        let http = tokio::spawn(serve(listener, requests.clone(), reply.clone())).abort_handle();

        // Through a forwarder, so that kill() can take the connection away without closing.
        let link = Forwarder::start(zk_servers.split(',').next().expect("a server").trim().to_owned()).await;
        let client = zk::Client::connector()
            .with_session_timeout(options.session_timeout)
            .with_connection_timeout(Duration::from_secs(5))
            .connect(&format!("127.0.0.1:{}", link.port()))
            .await
            .expect("the fake driver connects to ZooKeeper");
        let ip = "127.0.0.1".to_owned();
        let info = serde_json::json!({
            "ip": ip, "port": port, "metric_port": 0, "hostname": "fake-mesos-driver",
            "scheme": options.scheme, "version": "fake", "cluster": options.cluster_id,
            "pid": std::process::id(),
        });
        let data = options.data.clone().unwrap_or_else(|| serde_json::to_vec(&info).expect("json"));
        let dir = format!("{DRIVERS}/{}", options.cluster_id);
        let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        client.mkdir(&dir, &persistent).await.expect("create the driver's parents");
        let guid: String = (0..16).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
        let path = format!("{dir}/_c_{guid}-{ip}");
        let ephemeral = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
        let (_, sequence) = client.create(&path, &data, &ephemeral).await.expect("register the fake driver");
        FakeMesosDriver {
            cluster_id: options.cluster_id,
            ip,
            port,
            node: format!("{path}{sequence}"),
            requests,
            reply,
            http,
            client: Some(client),
            link,
        }
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// Answers every later `/mesosdriver/v4/...` request with `status` and `body` (JSON).
    pub fn reply_with(&self, status: u16, body: &str) {
        *self.reply.lock().unwrap() = Reply { status, body: body.into() };
    }

    /// Closes the session (the node goes at once) and stops serving.
    pub fn stop(&mut self) {
        self.client.take();
        self.http.abort();
    }

    /// Stops serving and cuts the connection to ZooKeeper without closing the session: the
    /// node goes only when the server expires the session.
    pub fn kill(&mut self) {
        self.link.cut();
        self.http.abort();
        // The client's own session task finds the connection gone; nothing is closed.
        std::mem::forget(self.client.take());
    }
}

impl Drop for FakeMesosDriver {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(listener: tokio::net::TcpListener, requests: Arc<Mutex<Vec<Recorded>>>, reply: Arc<Mutex<Reply>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (requests, reply) = (requests.clone(), reply.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let (requests, reply) = (requests.clone(), reply.clone());
                async move { Ok::<_, Infallible>(answer(request, &requests, &reply).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    requests: &Mutex<Vec<Recorded>>,
    reply: &Mutex<Reply>,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
    let uri = parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    let headers = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let known = parts.uri.path().starts_with("/mesosdriver/v4/");
    requests.lock().unwrap().push(Recorded { method: parts.method.to_string(), uri, headers, body });
    let (status, body) = if known {
        let reply = reply.lock().unwrap();
        (reply.status, reply.body.clone())
    } else {
        (404, r#"{"result":false,"code":404,"message":"not a mesos-driver route"}"#.to_owned())
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}
