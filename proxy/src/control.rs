//! The proxy's side of the snapshot protocol, on a thread of its own (blocking I/O on the unix
//! socket; the request path never waits on it).
//!
//! A snapshot is applied whole or not at all: it must decode, pass `Snapshot::validate`, and
//! not be older than the one in use. Each applied snapshot is persisted (sealed with the key
//! file, written to a temporary file, fsynced, renamed), so a proxy restarted while admin is
//! down serves from the last good one. Admin being down never stops the proxy: it keeps its
//! tables and reconnects with backoff. A snapshot whose mesos-driver sets admin does not know yet
//! (`mesos_pending`: admin restarted and has not read ZooKeeper) keeps the sets in use.
use std::cell::RefCell;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};
use bcs_shared::sealer::Sealer;
use bcs_shared::snapshot::wire::{
    encode, own_uid, peer_trusted, read_hint, Decoder, Message, PROTOCOL_MAJOR, PROTOCOL_MINOR,
};
use bcs_shared::snapshot::{MesosDrivers, Snapshot};

use crate::tables::{self, Tables};

const PERSISTED: &str = "proxy-snapshot.sealed";
const PURPOSE: &str = "proxy_snapshot";

/// When the link to admin was lost (Unix seconds), 0 while connected, -1 before the first
/// connection. Read by `/readyz` and the metrics: a proxy serving its last snapshot while admin
/// is away looks healthy otherwise.
static ADMIN_LOST_AT: AtomicI64 = AtomicI64::new(-1);

/// Seconds since the link to admin was lost: None while connected (or before the first try
/// ended).
pub fn admin_gone_for() -> Option<i64> {
    match ADMIN_LOST_AT.load(Ordering::Relaxed) {
        at if at > 0 => Some((tables::now() - at).max(0)),
        _ => None,
    }
}

/// Whether admin's snapshot socket is connected.
pub fn admin_connected() -> bool {
    ADMIN_LOST_AT.load(Ordering::Relaxed) == 0
}

pub struct Control {
    socket: PathBuf,
    data_dir: PathBuf,
    sealer: Sealer,
    /// The mesos-driver sets of the snapshot in use, for one that comes without them.
    mesos: RefCell<Vec<MesosDrivers>>,
}

impl Control {
    pub fn new(socket: PathBuf, data_dir: PathBuf, sealer: Sealer) -> Control {
        Control { socket, data_dir, sealer, mesos: RefCell::default() }
    }

    /// Installs the persisted snapshot, if there is a good one.
    pub fn load_persisted(&self) {
        let path = self.data_dir.join(PERSISTED);
        match self.read_persisted(&path) {
            Ok(Some(snapshot)) => {
                tracing::info!(revision = snapshot.revision, path = %path.display(), "serving the persisted snapshot until admin answers");
                tables::install(Tables::compile(&snapshot));
                *self.mesos.borrow_mut() = snapshot.mesos;
            }
            Ok(None) => tracing::info!("no persisted snapshot: not ready until admin sends one"),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), path = %path.display(), "ignoring the persisted snapshot")
            }
        }
    }

    fn read_persisted(&self, path: &Path) -> anyhow::Result<Option<Snapshot>> {
        let sealed = match std::fs::read_to_string(path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let json = self.sealer.open(PURPOSE, sealed.trim()).context("checksum or key mismatch")?;
        let snapshot: Snapshot = serde_json::from_str(json.expose()).context("not a snapshot")?;
        snapshot.validate().context("invalid snapshot")?;
        Ok(Some(snapshot))
    }

    fn persist(&self, snapshot: &Snapshot) -> anyhow::Result<()> {
        let json = bcs_shared::secret::Secret::new(serde_json::to_string(snapshot)?);
        let sealed = self.sealer.seal(PURPOSE, &json);
        let path = self.data_dir.join(PERSISTED);
        let tmp = self.data_dir.join(format!("{PERSISTED}.tmp"));
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        file.write_all(sealed.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        if let Ok(dir) = std::fs::File::open(&self.data_dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// Talks to admin forever: connect, hello, apply snapshots; reconnect with backoff.
    pub fn run(self) {
        const FIRST_BACKOFF: Duration = Duration::from_millis(200);
        let mut backoff = FIRST_BACKOFF;
        let mut warned = false;
        loop {
            let mut delivered = false;
            let outcome = self.session(&mut delivered);
            // Lost now (or never connected yet); a loss already recorded keeps its time. This
            // thread is the only writer.
            if ADMIN_LOST_AT.load(Ordering::Relaxed) <= 0 {
                ADMIN_LOST_AT.store(tables::now(), Ordering::Relaxed);
            }
            if delivered {
                // A session that worked: the next outage is news again, and retried quickly.
                backoff = FIRST_BACKOFF;
                warned = false;
            }
            match outcome {
                Ok(()) => tracing::info!("admin closed the snapshot connection"),
                Err(e) if !warned => {
                    tracing::warn!(socket = %self.socket.display(), error = %format!("{e:#}"), "snapshot connection to admin failed; retrying");
                    warned = true;
                }
                Err(e) => tracing::debug!(error = %format!("{e:#}"), "snapshot connection to admin failed"),
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// One connection to admin, until it ends; `delivered` is set once a snapshot came.
    fn session(&self, delivered: &mut bool) -> anyhow::Result<()> {
        let mut stream =
            UnixStream::connect(&self.socket).with_context(|| format!("connect {}", self.socket.display()))?;
        let (peer, own) = (peer_uid(&stream).context("the snapshot socket's peer")?, own_uid());
        if !peer_trusted(peer, own) {
            bail!(
                "{} is served by a process of uid {peer}, not of this user ({own}) or root: not taking snapshots from it",
                self.socket.display()
            );
        }
        let held = tables::current().map(|t| t.revision);
        let hello = Message::Hello {
            major: PROTOCOL_MAJOR,
            minor: PROTOCOL_MINOR,
            peer: format!("bcs-api-proxy pid {}", std::process::id()),
            revision: held,
        };
        stream.write_all(&encode(&hello))?;
        let mut decoder = Decoder::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            while let Some(message) = decoder.next_message()? {
                match message {
                    Message::Hello { major, minor, .. } => {
                        ADMIN_LOST_AT.store(0, Ordering::Relaxed);
                        tracing::info!(major, minor, "connected to admin's snapshot socket");
                    }
                    Message::Refused { reason } => bail!("admin refused the connection: {reason}"),
                    Message::Snapshot(snapshot) => {
                        self.apply(snapshot);
                        *delivered = true;
                        // The revision in use: a refused snapshot is not reported as held.
                        if let Some(revision) = tables::current().map(|t| t.revision) {
                            stream.write_all(&encode(&Message::Ack { revision }))?;
                        }
                    }
                    Message::Ack { .. } => {}
                }
            }
            let want = read_hint(&decoder).min(buf.len());
            let n = stream.read(&mut buf[..want])?;
            if n == 0 {
                return Ok(());
            }
            decoder.push(&buf[..n])?;
        }
    }

    fn apply(&self, mut snapshot: Snapshot) {
        if let Err(e) = snapshot.validate() {
            tracing::error!(revision = snapshot.revision, error = %e, "refusing an invalid snapshot; keeping the last good one");
            return;
        }
        if let Some(current) = tables::current() {
            if snapshot.revision < current.revision {
                if bcs_shared::snapshot::revision_trusted(current.revision) {
                    tracing::warn!(
                        revision = snapshot.revision,
                        current = current.revision,
                        "ignoring an older snapshot"
                    );
                    return;
                }
                tracing::warn!(
                    revision = snapshot.revision,
                    current = current.revision,
                    "the snapshot in use is numbered more than a day ahead of this host's clock (a clock that was \
                     wrong, or a copied file): taking admin's"
                );
            }
        }
        if snapshot.mesos_pending {
            // Admin has not read ZooKeeper yet: the drivers in use stay, and are persisted with it.
            snapshot.mesos = self.mesos.borrow().clone();
            snapshot.mesos_pending = false;
            tracing::info!(revision = snapshot.revision, "admin has not read ZooKeeper yet; keeping the mesos-drivers");
        }
        tables::install(Tables::compile(&snapshot));
        *self.mesos.borrow_mut() = snapshot.mesos.clone();
        tracing::info!(
            revision = snapshot.revision,
            clusters = snapshot.clusters.len(),
            tokens = snapshot.tokens.len(),
            "applied snapshot"
        );
        if let Err(e) = self.persist(&snapshot) {
            tracing::warn!(error = %e, "cannot persist the snapshot");
        }
    }
}

/// The user of the process at the other end of `stream` (`SO_PEERCRED`: as it was at connect).
fn peer_uid(stream: &UnixStream) -> std::io::Result<u32> {
    let mut credentials = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `credentials`, a ucred of that size.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut credentials as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(credentials.uid)
}
