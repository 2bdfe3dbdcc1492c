//! A real binary under test: stdout and stderr go to files (read them with [`Process::stdout`]
//! and [`Process::stderr`]); dropping the handle sends SIGTERM, then kills after 5 s.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Process {
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Process {
    /// Starts `binary` with `args` in `workdir`; output files are `<name>.stdout|stderr` there.
    pub fn spawn(binary: &Path, args: &[&str], workdir: &Path, name: &str) -> Process {
        Process::spawn_env(binary, args, &[], workdir, name)
    }

    /// [`Process::spawn`] with `env` added to the inherited environment.
    pub fn spawn_env(binary: &Path, args: &[&str], env: &[(&str, &str)], workdir: &Path, name: &str) -> Process {
        Process::spawn_with(binary, args, workdir, name, |c| {
            c.envs(env.iter().copied());
        })
    }

    /// [`Process::spawn`] with `configure` applied to the command first (for example
    /// [`crate::limits::refuse_large_io_uring_rings`]).
    pub fn spawn_with(
        binary: &Path,
        args: &[&str],
        workdir: &Path,
        name: &str,
        configure: impl FnOnce(&mut Command),
    ) -> Process {
        let stdout = workdir.join(format!("{name}.stdout"));
        let stderr = workdir.join(format!("{name}.stderr"));
        let mut command = Command::new(binary);
        configure(&mut command);
        let child = command
            .args(args)
            .current_dir(workdir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("create stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("create stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        Process { child: Some(child), stdout, stderr }
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Peak resident memory (VmHWM) in KiB, read from /proc.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Waits (bounded) until stderr holds every one of `needles`. Logs are written by a
    /// background thread, so a line can land a moment after the event it reports.
    pub fn wait_stderr(&self, needles: &[&str], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let stderr = self.stderr();
            if needles.iter().all(|n| stderr.contains(n)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Polls `url` until it answers 200; panics with the process's output after `timeout`
    /// or if the process exits.
    pub async fn wait_ready(&mut self, url: &str, timeout: Duration) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = client.get(url).timeout(Duration::from_secs(2)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "process exited with {status} before {url} was ready\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            if Instant::now() > deadline {
                panic!("{url} not ready after {timeout:?}\nstderr:\n{}", self.stderr());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the process has not exited (it is reaped if it has).
    pub fn running(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// Waits for the process to exit by itself (bounded by `timeout`) and returns its code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            if Instant::now() > deadline {
                panic!("process still running after {timeout:?}\nstderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within 5 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_and_reap(&mut child, "-TERM", Duration::from_secs(5));
        }
    }
}

/// Sends `signal` (as `kill` spells it) and waits up to `patience` for the child to exit, then
/// SIGKILLs it; the child is reaped either way.
pub fn signal_and_reap(child: &mut Child, signal: &str, patience: Duration) {
    let _ = Command::new("kill").arg(signal).arg(child.id().to_string()).status();
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}
