//! The only module that talks to the ZooKeeper client crate (`zookeeper-client`, see the
//! README's ZooKeeper section for why this one): a session with the few operations bcs-api
//! needs, and errors reduced to what the callers act on.
use std::time::Duration;

use zookeeper_client as zk;

/// What a caller does about a failed call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("no such node")]
    NoNode,
    /// The session is over (expired, closed, or authentication failed): every watch and
    /// ephemeral node of it is gone. Start a new session and read everything again.
    #[error("the ZooKeeper session ended: {0}")]
    Ended(String),
    /// The node's access list does not let this session do it (another client's node).
    #[error("not permitted by the node's access list")]
    Denied,
    /// Anything else (connection loss included): retry on the same session.
    #[error("{0}")]
    Transient(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<zk::Error> for Error {
    fn from(e: zk::Error) -> Self {
        match e {
            zk::Error::NoNode => Error::NoNode,
            zk::Error::NoAuth => Error::Denied,
            zk::Error::SessionExpired | zk::Error::ClientClosed | zk::Error::AuthFailed => Error::Ended(e.to_string()),
            other => Error::Transient(other.to_string()),
        }
    }
}

/// The connection state, as [`Session::state_changes`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Connected,
    /// The connection is lost; the session may still be alive (the client reconnects).
    Disconnected,
    /// Terminal: the session expired or was closed.
    Ended,
}

fn state(s: zk::SessionState) -> State {
    match s {
        zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => State::Connected,
        zk::SessionState::Disconnected => State::Disconnected,
        _ => State::Ended,
    }
}

/// A one-shot watch: fires once on a change of its node, or when the session ends.
pub struct Watch(zk::OneshotWatcher);

impl Watch {
    /// True for a change of the node; false when the session ended.
    pub async fn fired(self) -> bool {
        let event = self.0.changed().await;
        event.event_type != zk::EventType::Session
    }
}

/// Follows the session's state.
pub struct StateChanges(zk::StateWatcher);

impl StateChanges {
    pub async fn next(&mut self) -> State {
        state(self.0.changed().await)
    }
}

/// One ZooKeeper session. Dropping it closes the session (its ephemeral nodes go at once).
pub struct Session {
    client: zk::Client,
}

fn open_acl() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

impl Session {
    /// Connects to `servers` (`host:port,host:port`); fails after about `timeout` if no
    /// server answers.
    pub async fn connect(servers: &str, timeout: Duration) -> Result<Session> {
        let client = zk::Client::connector()
            .with_session_timeout(timeout)
            .with_connection_timeout(timeout.min(Duration::from_secs(5)))
            .connect(servers)
            .await?;
        Ok(Session { client })
    }

    pub fn id(&self) -> i64 {
        self.client.session_id().0
    }

    pub fn state(&self) -> State {
        state(self.client.state())
    }

    pub fn state_changes(&self) -> StateChanges {
        StateChanges(self.client.state_watcher())
    }

    /// Creates `path` and its missing parents as persistent nodes with empty data.
    pub async fn mkdir(&self, path: &str) -> Result<()> {
        Ok(self.client.mkdir(path, &open_acl()).await?)
    }

    /// Whether `path` exists, with a watch for its creation, deletion or change.
    pub async fn exists(&self, path: &str) -> Result<(bool, Watch)> {
        let (stat, watcher) = self.client.check_and_watch_stat(path).await?;
        Ok((stat.is_some(), Watch(watcher)))
    }

    /// The children's names, with a watch for a child added or removed (or `path` deleted).
    pub async fn children(&self, path: &str) -> Result<(Vec<String>, Watch)> {
        let (children, watcher) = self.client.list_and_watch_children(path).await?;
        Ok((children, Watch(watcher)))
    }

    pub async fn list(&self, path: &str) -> Result<Vec<String>> {
        Ok(self.client.list_children(path).await?)
    }

    pub async fn data(&self, path: &str) -> Result<Vec<u8>> {
        Ok(self.client.get_data(path).await?.0)
    }

    /// The data version, with a watch for a change of the data or the node's deletion.
    pub async fn version_watched(&self, path: &str) -> Result<(i32, Watch)> {
        let (_, stat, watcher) = self.client.get_and_watch_data(path).await?;
        Ok((stat.version, Watch(watcher)))
    }

    /// Sets the data; returns the node's new data version.
    pub async fn set_data(&self, path: &str, data: &[u8]) -> Result<i32> {
        Ok(self.client.set_data(path, data, None).await?.version)
    }

    /// go-zookeeper's `CreateProtectedEphemeralSequential`, as every BCS module registers:
    /// `<dir>/_c_<32 hex>-<name><10-digit sequence>`, parents created as needed. A connection
    /// lost during the create is resolved by looking for the GUID among `dir`'s children, so
    /// the node is never created twice. Returns the node's full path.
    pub async fn create_protected_ephemeral_sequential(&self, dir: &str, name: &str, data: &[u8]) -> Result<String> {
        let guid: String = (0..16).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
        let prefix = format!("_c_{guid}-");
        let path = format!("{dir}/{prefix}{name}");
        let options = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
        for _ in 0..5 {
            match self.client.create(&path, data, &options).await {
                Ok((_, sequence)) => return Ok(format!("{path}{sequence}")),
                Err(zk::Error::NoNode) => self.mkdir(dir).await?,
                Err(zk::Error::ConnectionLoss) => {
                    if let Ok(children) = self.client.list_children(dir).await {
                        if let Some(mine) = children.into_iter().find(|c| c.starts_with(&prefix)) {
                            return Ok(format!("{dir}/{mine}"));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Transient(format!("cannot create {path}")))
    }

    /// Waits until this session holds the lock `dir` (the ZooKeeper lock recipe, Curator's
    /// layout `<dir>/_c_<uuid>-latch-<sequence>`). Returns the lock node's path; the lock is
    /// held while that node exists, and released by [`Session::delete`] or the session's end.
    pub async fn lock(&self, dir: &str, data: &[u8]) -> Result<String> {
        let prefix = zk::LockPrefix::new_curator(dir, "latch-")?;
        let options = zk::LockOptions::new(zk::Acls::anyone_all()).with_ancestor_options(open_acl())?;
        let lock = self.client.lock(prefix, data, options).await?;
        let path = lock.lock_path().to_owned();
        // Keep the node: the caller releases it by path (or the session's end does).
        std::mem::forget(lock);
        Ok(path)
    }

    pub async fn delete(&self, path: &str) -> Result<()> {
        Ok(self.client.delete(path, None).await?)
    }
}
