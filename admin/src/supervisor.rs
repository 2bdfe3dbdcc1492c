//! Supervision of `bcs-api-proxy` (`admin_config.spawn_proxy`, default true), so that
//! `bcs-api --config=<file>` alone runs the whole gateway, as the original did.
//!
//! The proxy is started as `bcs-api-proxy --config=<the file bcs-api was given>`, in the same
//! working directory, with its own process group (a terminal's Ctrl-C reaches bcs-api, which
//! then stops the proxy in order). When it exits it is started again after a delay that
//! doubles from [`FIRST_DELAY`] to [`MAX_DELAY`], and starts over once a proxy has run for
//! [`STABLE_AFTER`]. At shutdown it gets SIGTERM, and SIGKILL after [`STOP_GRACE`].
//!
//! A missing binary is logged and the control plane keeps running without a data plane.
//!
//! The running proxy's pid is kept in `bcs-api-proxy.pid` next to the snapshot socket. A
//! bcs-api that was killed (SIGKILL, a crash) leaves its proxy running, serving its last
//! snapshot: the next bcs-api finds it there and, once its own proxy has run for
//! [`HANDOVER`], stops the old one with SIGTERM (it drains), so that two proxies, perhaps of
//! two versions, do not share the listeners for good.
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::shutdown::Shutdown;

pub const PROXY_BINARY: &str = "bcs-api-proxy";
/// Names the proxy binary to run instead of looking for it.
pub const BINARY_ENV: &str = "BCS_API_PROXY_BIN";
pub const FIRST_DELAY: Duration = Duration::from_secs(1);
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// A proxy that ran this long was healthy: the next restart waits [`FIRST_DELAY`] again.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);
/// How long a proxy has to stop after SIGTERM.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long the new proxy runs before a predecessor left by an earlier bcs-api is stopped
/// (time to bind its listeners and take its first snapshot).
pub const HANDOVER: Duration = Duration::from_secs(2);
/// The pid file's name, in the snapshot socket's directory.
pub const PID_FILE: &str = "bcs-api-proxy.pid";

/// What the supervisor starts, and where it keeps the running proxy's pid.
pub struct ProxyCommand {
    pub binary: PathBuf,
    /// The config file bcs-api was given.
    pub config: PathBuf,
    /// `--log-format` when bcs-api was given one.
    pub log_format: Option<String>,
    pub pid_file: PathBuf,
    pub metrics: crate::metrics::ProxyMetrics,
}

/// The proxy binary: `$BCS_API_PROXY_BIN`, else next to this executable, else on `PATH`.
pub fn find_binary() -> Result<PathBuf, String> {
    if let Some(named) = std::env::var_os(BINARY_ENV).filter(|v| !v.is_empty()) {
        let named = PathBuf::from(named);
        return if is_executable(&named) {
            Ok(named)
        } else {
            Err(format!("{BINARY_ENV}={} is not an executable file", named.display()))
        };
    }
    let beside = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|dir| dir.join(PROXY_BINARY)));
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|dir| dir.join(PROXY_BINARY)).collect::<Vec<_>>())
        .unwrap_or_default();
    beside
        .into_iter()
        .chain(on_path)
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| format!("{PROXY_BINARY} is neither next to bcs-api nor on PATH (or set {BINARY_ENV})"))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Keeps the proxy running until shutdown, then stops it.
pub async fn run(proxy: ProxyCommand, mut shutdown: Shutdown) {
    let ProxyCommand { binary, config, log_format, pid_file, metrics } = proxy;
    let mut predecessor = left_running(&pid_file, &binary);
    let mut delay = FIRST_DELAY;
    loop {
        let started = Instant::now();
        match start(&binary, &config, log_format.as_deref()) {
            Ok(mut child) => {
                let pid = child.id();
                metrics.running.set(1);
                tracing::info!(pid, binary = %binary.display(), config = %config.display(), "started bcs-api-proxy");
                if let Some(pid) = pid {
                    if let Err(e) = std::fs::write(&pid_file, format!("{pid}\n")) {
                        tracing::warn!(file = %pid_file.display(), error = %e, "cannot write the proxy's pid file");
                    }
                }
                // Once the new proxy has run for HANDOVER, a predecessor left running is stopped;
                // if the new one dies first, the old one keeps serving until the next start.
                let handover = tokio::time::sleep(HANDOVER);
                tokio::pin!(handover);
                let status = loop {
                    tokio::select! {
                        status = child.wait() => break status,
                        _ = shutdown.wait() => {
                            stop(child).await;
                            metrics.running.set(0);
                            let _ = std::fs::remove_file(&pid_file);
                            return;
                        }
                        _ = &mut handover, if predecessor.is_some() => {
                            let old = predecessor.take().expect("guarded");
                            tracing::warn!(pid = old,
                                "a bcs-api-proxy left running by an earlier bcs-api (killed before it could stop it): \
                                 stopping it (SIGTERM) now that its successor runs");
                            // Checked again: the pid could have been reused since the start.
                            if is_proxy(old, &binary) {
                                if let Err(e) = sigterm(old) {
                                    tracing::warn!(pid = old, error = %e, "cannot stop it");
                                }
                            }
                        }
                    }
                };
                metrics.running.set(0);
                metrics.exits.inc();
                if started.elapsed() >= STABLE_AFTER {
                    delay = FIRST_DELAY;
                }
                let status = status.map_or_else(|e| format!("unknown ({e})"), |s| s.to_string());
                tracing::warn!(pid, %status, ran_for = ?started.elapsed(), restart_in = ?delay,
                    "bcs-api-proxy exited");
            }
            Err(e) => {
                metrics.exits.inc();
                tracing::error!(binary = %binary.display(), error = %e, restart_in = ?delay,
                    "cannot start bcs-api-proxy");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait() => return,
        }
        delay = (delay * 2).min(MAX_DELAY);
    }
}

/// The proxy an earlier bcs-api started and did not stop, if its pid file names one that still
/// runs `binary`.
fn left_running(pid_file: &Path, binary: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    let running = pid != std::process::id() && is_proxy(pid, binary);
    if running {
        tracing::warn!(pid, file = %pid_file.display(), "a bcs-api-proxy started by an earlier bcs-api still runs");
    }
    running.then_some(pid)
}

/// Whether process `pid` runs `binary`: its command line's first word, or its second (a script
/// runs as `sh <script>`), is that path. A pid reused by another program does not match.
fn is_proxy(pid: u32, binary: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let binary = binary.as_os_str().as_encoded_bytes();
    cmdline.split(|&b| b == 0).take(2).any(|word| word == binary)
}

fn start(binary: &Path, config: &Path, log_format: Option<&str>) -> std::io::Result<Child> {
    let mut config_arg = std::ffi::OsString::from("--config=");
    config_arg.push(config);
    Command::new(binary)
        .arg(config_arg)
        .args(log_format.map(|f| format!("--log-format={f}")))
        .stdin(Stdio::null())
        .process_group(0)
        // If bcs-api itself fails before it can stop the proxy in order.
        .kill_on_drop(true)
        .spawn()
}

/// SIGTERM, then SIGKILL if the proxy has not exited within [`STOP_GRACE`].
async fn stop(mut child: Child) {
    let Some(pid) = child.id() else { return };
    tracing::info!(pid, "stopping bcs-api-proxy (SIGTERM)");
    // A pid we started and have not reaped yet (so it is still ours).
    if let Err(e) = sigterm(pid) {
        tracing::warn!(pid, error = %e, "cannot send SIGTERM to bcs-api-proxy");
    }
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(status) => log_stopped(pid, status),
        Err(_) => {
            tracing::warn!(pid, grace = ?STOP_GRACE, "bcs-api-proxy did not stop after SIGTERM; sending SIGKILL");
            let _ = child.start_kill();
            log_stopped(pid, child.wait().await);
        }
    }
}

/// kill(2) with SIGTERM; the caller knows `pid` is a proxy (its child, or checked by [`is_proxy`]).
fn sigterm(pid: u32) -> std::io::Result<()> {
    // SAFETY: kill(2) takes no pointers; the pid is the caller's to signal.
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn log_stopped(pid: u32, status: std::io::Result<ExitStatus>) {
    match status {
        Ok(status) => tracing::info!(pid, %status, "bcs-api-proxy stopped"),
        Err(e) => tracing::warn!(pid, error = %e, "cannot wait for bcs-api-proxy"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_executable_files_count() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("proxy");
        std::fs::write(&file, "#!/bin/sh\n").unwrap();
        assert!(!is_executable(&file), "not executable yet");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(is_executable(&file));
        assert!(!is_executable(dir.path()), "a directory");
        assert!(!is_executable(&dir.path().join("missing")));
    }
}
