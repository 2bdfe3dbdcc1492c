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
pub async fn run(binary: PathBuf, config: PathBuf, log_format: Option<String>, mut shutdown: Shutdown) {
    let mut delay = FIRST_DELAY;
    loop {
        let started = Instant::now();
        match start(&binary, &config, log_format.as_deref()) {
            Ok(mut child) => {
                let pid = child.id();
                tracing::info!(pid, binary = %binary.display(), config = %config.display(), "started bcs-api-proxy");
                tokio::select! {
                    status = child.wait() => {
                        if started.elapsed() >= STABLE_AFTER {
                            delay = FIRST_DELAY;
                        }
                        let status = status.map_or_else(|e| format!("unknown ({e})"), |s| s.to_string());
                        tracing::warn!(pid, %status, ran_for = ?started.elapsed(), restart_in = ?delay,
                            "bcs-api-proxy exited");
                    }
                    _ = shutdown.wait() => {
                        stop(child).await;
                        return;
                    }
                }
            }
            Err(e) => {
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
    // SAFETY: kill(2) with a pid we started and have not reaped yet (so it is still ours).
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) } != 0 {
        tracing::warn!(pid, error = %std::io::Error::last_os_error(), "cannot send SIGTERM to bcs-api-proxy");
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
