//! The snapshot socket (`admin_config.snapshot_socket`): a unix socket of mode 0600 in a
//! directory of mode 0700, one task per connected proxy ([`super::peer`]).
//!
//! At start a socket file left by a previous run is removed, unless a live process still
//! answers on it (then this start fails: two admins must not share one socket). At shutdown
//! the file is removed if it is still ours.
use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use bcs_shared::snapshot::wire;
use tokio::net::UnixListener;
use tokio::task::JoinSet;

use super::peer;
use super::publisher::Publisher;
use crate::metrics::SnapshotMetrics;
use crate::shutdown::Shutdown;

/// Connections served at once; more are closed at once (a proxy is one process per host).
pub const MAX_PEERS: usize = 256;

pub struct SnapshotServer {
    listener: UnixListener,
    path: PathBuf,
    /// The socket file's inode, to remove only our own file at shutdown.
    inode: u64,
}

impl SnapshotServer {
    /// Creates the socket at `path` (and its directory, mode 0700).
    pub fn bind(path: &Path) -> anyhow::Result<SnapshotServer> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("admin_config.snapshot_socket: cannot create {}", dir.display()))?;
        let dir_meta = std::fs::metadata(dir)?;
        let dir_mode = dir_meta.permissions().mode();
        // Another user who may write there could put a socket of theirs in the path, which the
        // proxies would connect to (they check the peer's user too, `wire::peer_trusted`).
        if dir_mode & 0o022 != 0 || dir_meta.uid() != wire::own_uid() {
            bail!(
                "admin_config.snapshot_socket: {} must be a directory of this user ({}) that group and others \
                 cannot write (it is mode {:o}, owner {}); use one of mode 0700",
                dir.display(),
                wire::own_uid(),
                dir_mode & 0o777,
                dir_meta.uid()
            );
        }
        if dir_mode & 0o077 != 0 {
            tracing::warn!(dir = %dir.display(), mode = format!("{:o}", dir_mode & 0o777),
                "the snapshot socket's directory is open to group or others; chmod 700 it");
        }
        remove_stale(path)?;
        // Bound under another name, made 0600, then linked into place: never reachable with the
        // umask's mode in between. A link, unlike a rename, fails if another admin's socket got
        // to the path first.
        let unready = path.with_extension(format!("binding-{}", std::process::id()));
        let _ = std::fs::remove_file(&unready);
        let listener = std::os::unix::net::UnixListener::bind(&unready)
            .with_context(|| format!("admin_config.snapshot_socket: cannot listen on {}", unready.display()))?;
        let linked = std::fs::set_permissions(&unready, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::hard_link(&unready, path));
        let _ = std::fs::remove_file(&unready);
        linked.with_context(|| format!("admin_config.snapshot_socket: cannot make the socket {}", path.display()))?;
        let inode = std::fs::metadata(path)?.ino();
        listener.set_nonblocking(true)?;
        let listener = UnixListener::from_std(listener)?;
        tracing::info!(path = %path.display(), "snapshot socket listening");
        Ok(SnapshotServer { listener, path: path.to_owned(), inode })
    }

    /// Serves proxies until shutdown, then closes every connection and removes the socket.
    pub async fn serve(self, publisher: Arc<Publisher>, mut shutdown: Shutdown) {
        let peers = Arc::new(Peers::new(publisher.metrics().clone()));
        let mut tasks = JoinSet::new();
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) if tasks.len() >= MAX_PEERS => {
                        tracing::warn!(max = MAX_PEERS,
                            "too many connections on the snapshot socket; closing a new one");
                        drop(stream);
                    }
                    Ok((stream, _)) => {
                        tasks.spawn(peer::serve(stream, publisher.clone(), peers.clone()));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %e, "snapshot socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = shutdown.wait() => break,
            }
        }
        tasks.shutdown().await;
        tracing::info!("snapshot socket closed");
    }
}

impl Drop for SnapshotServer {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.inode);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the snapshot socket");
            }
        }
    }
}

/// Removes a socket file nobody answers on; refuses to touch a live socket or another file.
fn remove_stale(path: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "admin_config.snapshot_socket: {} is in use by a running process (another bcs-api?)",
                    path.display()
                );
            }
            std::fs::remove_file(path).with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
            tracing::info!(path = %path.display(), "removed a stale snapshot socket");
            Ok(())
        }
        Ok(_) => bail!("admin_config.snapshot_socket: {} exists and is not a socket", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("admin_config.snapshot_socket: {}", path.display())),
    }
}

/// The connected proxies and the last revision each acknowledged, for the metrics.
pub struct Peers {
    next_id: AtomicU64,
    acked: Mutex<HashMap<u64, Option<u64>>>,
    metrics: SnapshotMetrics,
}

impl Peers {
    fn new(metrics: SnapshotMetrics) -> Self {
        Peers { next_id: AtomicU64::new(1), acked: Mutex::new(HashMap::new()), metrics }
    }

    /// A proxy completed the hello; it counts until the returned entry is dropped.
    pub fn join(self: &Arc<Self>) -> PeerEntry {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.update(|acked| {
            acked.insert(id, None);
        });
        PeerEntry { id, peers: self.clone() }
    }

    fn update(&self, change: impl FnOnce(&mut HashMap<u64, Option<u64>>)) {
        let mut acked = self.acked.lock().expect("never poisoned: no panic while held");
        change(&mut acked);
        self.metrics.peers.set(acked.len() as i64);
        let oldest = acked.values().map(|a| a.unwrap_or(0)).min().unwrap_or(0);
        self.metrics.oldest_acked_revision.set(i64::try_from(oldest).unwrap_or(i64::MAX));
    }
}

pub struct PeerEntry {
    id: u64,
    peers: Arc<Peers>,
}

impl PeerEntry {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn acked(&self, revision: u64) {
        self.peers.update(|acked| {
            acked.insert(self.id, Some(revision));
        });
    }
}

impl Drop for PeerEntry {
    fn drop(&mut self) {
        self.peers.update(|acked| {
            acked.remove(&self.id);
        });
    }
}
