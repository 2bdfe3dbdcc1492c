//! Harness for the agent's tests: a fake bcs-api (TLS with its own CA, recording every
//! request, answering what the test says) and a way to run the real `bcs-kube-agent`.
#![allow(dead_code)]

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bcs_testkit::apiserver::CertPair;
use bcs_testkit::process::Process;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;

pub const REGISTER_TOKEN: &str = "registerTokenThatMustNeverBeLogged0123456789";

#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

struct Shared {
    received: Mutex<Vec<Received>>,
    answer: Mutex<(u16, String)>,
}

/// A fake bcs-api on 127.0.0.1 serving TLS with `certs`.
pub struct FakeGateway {
    pub certs: CertPair,
    pub port: u16,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeGateway {
    pub async fn start() -> FakeGateway {
        Self::start_on(0, CertPair::generate_for("fake-bcs-api-ca", &["127.0.0.1", "localhost"])).await
    }

    /// On a given port (0: any) with given certificates.
    pub async fn start_on(port: u16, certs: CertPair) -> FakeGateway {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind the fake gateway");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared { received: Mutex::default(), answer: Mutex::new((200, "{}".into())) });
        let acceptor = tokio_rustls::TlsAcceptor::from(certs.server_config());
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (acceptor, s) = (acceptor.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(5), acceptor.accept(tcp)).await else {
                        return;
                    };
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let s = s.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            s.received.lock().unwrap().push(Received {
                                method: parts.method.to_string(),
                                path: parts.uri.path().to_owned(),
                                headers: parts
                                    .headers
                                    .iter()
                                    .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                                    .collect(),
                                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                            });
                            let (status, text) = s.answer.lock().unwrap().clone();
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(text)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
                });
            }
        });
        FakeGateway { certs, port, shared, task }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn answer_with(&self, status: u16, body: &str) {
        *self.shared.answer.lock().unwrap() = (status, body.to_owned());
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Waits (bounded) until at least `n` requests arrived; returns them.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "{} of {n} reports after {timeout:?}", got.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for FakeGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn agent_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bcs-kube-agent"))
}

/// Runs the agent in `dir` with `args` and `env`.
pub fn spawn_agent(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Process {
    Process::spawn_env(&agent_binary(), args, env, dir, "agent")
}

/// Sends SIGTERM and returns the exit code (bounded wait).
pub fn terminate(agent: &mut Process) -> Option<i32> {
    let pid = agent.pid().expect("the agent runs");
    std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    agent.wait_exit(Duration::from_secs(10))
}

/// GET on the agent's metrics port (retried while it is not listening yet, bounded).
pub async fn get(port: u16, path: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}{path}"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            Ok(r) => return (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) if Instant::now() > deadline => panic!("the agent's HTTP server does not answer: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Polls `/metrics` until the series `prefix` reaches `at_least` (bounded); the text.
pub async fn wait_metric(port: u16, prefix: &str, at_least: f64, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let (_, text) = get(port, "/metrics").await;
        if metric(&text, prefix).unwrap_or(0.0) >= at_least {
            return text;
        }
        assert!(Instant::now() < deadline, "{prefix} < {at_least} after {timeout:?}:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of a metric line starting with `prefix` (name and labels).
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}
