//! `admin_config.spawn_proxy: true`: the real `bcs-api` starts `bcs-api-proxy` (here a shell
//! script named by `BCS_API_PROXY_BIN` that records its starts and stops), restarts it with a
//! growing delay when it exits, stops it with SIGTERM at shutdown, and keeps running without
//! it when there is no binary.
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Options;

/// `bcs-api` started with extra environment (the test kit's `Process` takes none).
struct Running {
    child: Option<Child>,
    dir: PathBuf,
    admin_port: u16,
}

impl Running {
    async fn start(dir: &Path, proxy_bin: &Path) -> Running {
        Running::start_with(dir, proxy_bin, &[]).await
    }

    /// [`Running::start`] with more arguments for bcs-api.
    async fn start_with(dir: &Path, proxy_bin: &Path, args: &[&str]) -> Running {
        let (admin_port, _) = common::write_config(dir, &Options { spawn_proxy: true, ..Options::default() });
        let child = Command::new(common::binary())
            .arg("--config=bcs-api.yaml")
            .args(args)
            .current_dir(dir)
            .env("BCS_API_PROXY_BIN", proxy_bin)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("bcs-api.stdout")).unwrap())
            .stderr(std::fs::File::create(dir.join("bcs-api.stderr")).unwrap())
            .spawn()
            .expect("start bcs-api");
        let running = Running { child: Some(child), dir: dir.to_owned(), admin_port };
        let url = format!("http://127.0.0.1:{admin_port}/healthz");
        wait_until(Duration::from_secs(30), || async { reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) })
            .await
            .unwrap_or_else(|| panic!("bcs-api not ready:\n{}", running.stderr()));
        running
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("bcs-api.stderr")).unwrap_or_default()
    }

    /// bcs-api's `/metrics`.
    async fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.admin_port);
        reqwest::get(&url).await.unwrap().text().await.unwrap()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGTERM; the exit code within `timeout`.
    fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        signal(self.pid(), "TERM");
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("bcs-api still running {timeout:?} after SIGTERM:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Running {
    /// SIGKILL: bcs-api cannot stop its proxy.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Running {
    /// SIGTERM, so that bcs-api stops the proxy it runs (SIGKILL left the stand-in proxies
    /// running after the tests, every one of them); SIGKILL if it has not stopped in 10 s.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        signal(child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Whether the metrics text has exactly this sample line.
fn has_line(metrics: &str, line: &str) -> bool {
    metrics.lines().any(|l| l == line)
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

fn alive(pid: u32) -> bool {
    Command::new("kill").arg("-0").arg(pid.to_string()).stderr(Stdio::null()).status().unwrap().success()
}

async fn wait_until<F, Fut>(timeout: Duration, mut condition: F) -> Option<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return Some(());
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes an executable script into `dir` that appends `start <pid> <args>` to `journal`,
/// then runs `body`.
fn script(dir: &Path, name: &str, journal: &Path, body: &str) -> PathBuf {
    let path = dir.join(name);
    let text = format!("#!/bin/sh\necho \"start $$ $*\" >> '{}'\n{body}\n", journal.display());
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A stand-in proxy that runs until SIGTERM and then appends `term <pid>` to `journal`.
fn stoppable_proxy(dir: &Path, journal: &Path) -> PathBuf {
    let body =
        format!("trap 'echo \"term $$\" >> \"{}\"; exit 0' TERM\nwhile :; do sleep 0.05; done", journal.display());
    script(dir, "fake-proxy", journal, &body)
}

/// The journal's `start` lines: (pid, arguments).
fn starts(journal: &Path) -> Vec<(u32, String)> {
    std::fs::read_to_string(journal)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("start "))
        .map(|l| {
            let (pid, args) = l.split_once(' ').unwrap_or((l, ""));
            (pid.parse().unwrap(), args.to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_proxy_is_started_restarted_and_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let proxy = stoppable_proxy(dir.path(), &journal);
    let mut admin = Running::start(dir.path(), &proxy).await;

    wait_until(Duration::from_secs(10), || async { starts(&journal).len() == 1 })
        .await
        .unwrap_or_else(|| panic!("the proxy was not started:\n{}", admin.stderr()));
    let (first, args) = starts(&journal)[0].clone();
    assert_eq!(args, "--config=bcs-api.yaml", "the config file bcs-api was given");

    // Killed: started again (after 1 s).
    signal(first, "KILL");
    wait_until(Duration::from_secs(10), || async { starts(&journal).len() == 2 })
        .await
        .unwrap_or_else(|| panic!("the proxy was not restarted:\n{}", admin.stderr()));
    let (second, _) = starts(&journal)[1];
    assert_ne!(first, second);
    assert!(alive(second));
    // An operator sees the restart without reading the log.
    let shown = |m: &str| has_line(m, "bcs_api_proxy_exits_total 1") && has_line(m, "bcs_api_proxy_running 1");
    if wait_until(Duration::from_secs(5), || async { shown(&admin.metrics().await) }).await.is_none() {
        panic!("no restart in the metrics:\n{}", admin.metrics().await);
    }

    // bcs-api's SIGTERM reaches the proxy, which stops before bcs-api exits.
    assert_eq!(admin.terminate(Duration::from_secs(20)), Some(0));
    let journal_text = std::fs::read_to_string(&journal).unwrap();
    assert!(journal_text.contains(&format!("term {second}")), "{journal_text}");
    assert!(!alive(second), "the proxy is gone");
    let stderr = admin.stderr();
    for needle in [
        format!("started bcs-api-proxy pid={first}"),
        format!("pid={first} status=signal: 9"),
        format!("started bcs-api-proxy pid={second}"),
        format!("bcs-api-proxy stopped pid={second} status=exit status: 0"),
    ] {
        assert!(stderr.contains(&needle), "{needle:?} not in\n{stderr}");
    }
    assert!(!stderr.contains("data plane yet"), "the old warning is gone");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_that_keeps_failing_is_restarted_with_growing_delays() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    // As the placeholder binary does.
    let proxy = script(dir.path(), "failing-proxy", &journal, "exit 70");
    let mut admin = Running::start(dir.path(), &proxy).await;
    let started = Instant::now();
    wait_until(Duration::from_secs(10), || async { starts(&journal).len() >= 3 })
        .await
        .unwrap_or_else(|| panic!("not restarted:\n{}", admin.stderr()));
    // Delays of 1 s then 2 s: the third start comes after about 3 s, not at once.
    assert!(started.elapsed() >= Duration::from_millis(2500), "{:?}", started.elapsed());
    assert!(admin.stderr().contains("status=exit status: 70"), "{}", admin.stderr());
    assert_eq!(admin.terminate(Duration::from_secs(20)), Some(0), "{}", admin.stderr());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_proxy_binary_the_control_plane_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let mut admin = Running::start(dir.path(), &dir.path().join("no-such-proxy")).await;
    let stderr = admin.stderr();
    assert!(stderr.contains("cannot find bcs-api-proxy"), "{stderr}");
    assert!(stderr.contains("no-such-proxy"), "{stderr}");
    let metrics = admin.metrics().await;
    assert!(has_line(&metrics, "bcs_api_proxy_running 0"), "a missing data plane shows:\n{metrics}");
    assert_eq!(admin.terminate(Duration::from_secs(20)), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_proxy_logs_in_the_format_bcs_api_was_given() {
    // Their lines share one stderr: a JSON log must not be interleaved with text lines.
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let proxy = script(dir.path(), "fake-proxy", &journal, "while :; do sleep 0.05; done");
    let admin = Running::start_with(dir.path(), &proxy, &["--log-format=json"]).await;
    wait_until(Duration::from_secs(10), || async { !starts(&journal).is_empty() })
        .await
        .unwrap_or_else(|| panic!("the proxy was not started:\n{}", admin.stderr()));
    assert_eq!(starts(&journal)[0].1, "--config=bcs-api.yaml --log-format=json");
    assert!(admin.stderr().lines().all(|l| l.starts_with('{')), "{}", admin.stderr());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_left_by_a_killed_bcs_api_is_stopped_once_its_successor_runs() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let proxy = stoppable_proxy(dir.path(), &journal);
    let mut first_admin = Running::start(dir.path(), &proxy).await;
    wait_until(Duration::from_secs(10), || async { starts(&journal).len() == 1 }).await.expect("started");
    let (old, _) = starts(&journal)[0].clone();
    first_admin.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(alive(old), "a killed bcs-api leaves its proxy serving");

    let second_admin = Running::start(dir.path(), &proxy).await;
    wait_until(Duration::from_secs(10), || async { starts(&journal).len() == 2 }).await.expect("a new proxy");
    let (new, _) = starts(&journal)[1].clone();
    let journal_text = || std::fs::read_to_string(&journal).unwrap_or_default();
    wait_until(Duration::from_secs(10), || async { journal_text().contains(&format!("term {old}")) })
        .await
        .unwrap_or_else(|| panic!("the old proxy was not stopped:\n{}\n{}", journal_text(), second_admin.stderr()));
    wait_until(Duration::from_secs(5), || async { !alive(old) }).await.expect("the old proxy exits");
    assert!(alive(new), "the new proxy runs on");
    assert!(!journal_text().contains(&format!("term {new}")));
    assert!(second_admin.stderr().contains("left running by an earlier bcs-api"), "{}", second_admin.stderr());
}
