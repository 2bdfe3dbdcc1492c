//! Running the real kubectl against a server: a kubeconfig in a temporary directory (its own
//! HOME and discovery cache), bounded runs, and long-running commands whose output lines can be
//! awaited. Children are killed when their handles drop.
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::FakeApiserver;

const SDK_BIN: &str = "/usr/lib/google-cloud-sdk/bin";

/// The kubectl to use: `$BCS_KUBECTL`, else kubectl 1.33 from the Cloud SDK, else `kubectl`.
pub fn kubectl_binary() -> PathBuf {
    if let Ok(p) = std::env::var("BCS_KUBECTL") {
        return PathBuf::from(p);
    }
    kubectl_minor(33).unwrap_or_else(|| PathBuf::from("kubectl"))
}

/// `kubectl.1.<minor>` from the Cloud SDK, if installed.
pub fn kubectl_minor(minor: u32) -> Option<PathBuf> {
    let p = Path::new(SDK_BIN).join(format!("kubectl.1.{minor}"));
    p.exists().then_some(p)
}

pub struct Kubectl {
    pub binary: PathBuf,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
}

impl Kubectl {
    /// A kubeconfig for `server` trusting `ca_pem`, authenticating with `token`.
    pub fn new(server: &str, ca_pem: &str, token: &str) -> Kubectl {
        let dir = tempfile::tempdir().expect("temporary directory");
        let kubeconfig = dir.path().join("kubeconfig");
        let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {server}\n    \
             certificate-authority-data: {ca}\nusers:\n- name: tester\n  user:\n    token: {token}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: tester\n    namespace: default\n\
             current-context: fake\n"
        );
        std::fs::write(&kubeconfig, config).expect("write kubeconfig");
        Kubectl { binary: kubectl_binary(), dir, kubeconfig }
    }

    pub fn for_fake(fake: &FakeApiserver) -> Kubectl {
        Kubectl::new(&fake.url(), &fake.ca_pem(), &fake.token())
    }

    pub fn with_binary(mut self, binary: PathBuf) -> Kubectl {
        self.binary = binary;
        self
    }

    /// A command with the kubeconfig, a private cache and HOME, killed on drop.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args)
            .current_dir(self.dir.path())
            .env("HOME", self.dir.path())
            .env_remove("KUBECONFIG")
            .kill_on_drop(true);
        c
    }

    /// Runs to completion with `stdin`; panics after `timeout`.
    pub async fn run_with(&self, args: &[&str], stdin: Option<&[u8]>, timeout: Duration) -> Output {
        let mut c = self.command(args);
        c.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            let input = input.to_vec();
            tokio::spawn(async move {
                let _ = pipe.write_all(&input).await;
                let _ = pipe.shutdown().await;
            });
        }
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(out) => out.expect("kubectl output"),
            Err(_) => panic!("kubectl {args:?} did not finish within {timeout:?}"),
        }
    }

    /// Runs to completion (30 s at most).
    pub async fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, None, Duration::from_secs(30)).await
    }

    /// Runs and asserts success; returns stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts a long-running command; its stdout arrives line by line.
    pub fn spawn(&self, args: &[&str]) -> Running {
        let mut c = self.command(args);
        c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().expect("stdout");
        tokio::spawn(async move {
            let mut r = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = r.next_line().await {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let stderr_text = Arc::new(Mutex::new(String::new()));
        let sink = stderr_text.clone();
        let stderr = child.stderr.take().expect("stderr");
        tokio::spawn(async move {
            let mut r = BufReader::new(stderr).lines();
            while let Ok(Some(l)) = r.next_line().await {
                let mut s = sink.lock().unwrap();
                s.push_str(&l);
                s.push('\n');
            }
        });
        Running { child, lines, stderr: stderr_text, seen: Vec::new() }
    }
}

/// A kubectl still running.
pub struct Running {
    pub child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
    /// Every stdout line read so far.
    pub seen: Vec<String>,
}

impl Running {
    /// Waits (bounded) for a stdout line containing `needle`.
    pub async fn wait_line(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(l)) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return Ok(l);
                    }
                }
                Ok(None) => return Err(format!("stdout ended without {needle:?}; {}", self.describe())),
                Err(_) => return Err(format!("no line with {needle:?} within {timeout:?}; {}", self.describe())),
            }
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn describe(&self) -> String {
        format!("stdout so far: {:?}; stderr: {}", self.seen, self.stderr())
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}
