//! Every query of the admin, written once for both engines. Each public method is one
//! transaction, bounded by [`super::OPERATION_TIMEOUT`].
use std::collections::HashMap;
use std::future::Future;

use super::backend::{Backend, Dialect, Row, StoreError, Tx, Value};
use super::model::*;
use super::OPERATION_TIMEOUT;

pub struct Store {
    backend: Box<dyn Backend>,
}

const USER_COLUMNS: &str = "id, name, is_super_user, created_at";
const TOKEN_COLUMNS: &str = "id, user_id, type, digest, expires_at, revoked_at, created_at";
const CLUSTER_COLUMNS: &str = "id, provider, cluster_type, creator_id, identifier, created_at";
const CREDENTIAL_COLUMNS: &str = "id, cluster_id, server_addresses, ca_cert_data, \
     user_token_sealed, fingerprint, version, created_at, updated_at";

impl Store {
    pub fn new(backend: Box<dyn Backend>) -> Self {
        Store { backend }
    }

    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        bounded(self.backend.ping()).await
    }

    /// Runs `work` in one transaction: committed if it returns Ok, rolled back otherwise.
    async fn transaction<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        F: for<'t> FnOnce(&'t mut dyn Tx) -> futures_box::BoxFuture<'t, Result<T, StoreError>>,
    {
        bounded(async {
            let mut tx = self.backend.begin().await?;
            let out = work(tx.as_mut()).await?;
            tx.commit().await?;
            Ok(out)
        })
        .await
    }

    /// [`Store::transaction`] whose work may find it must not stand: None rolls it back.
    async fn transaction_unless<T, F>(&self, work: F) -> Result<Option<T>, StoreError>
    where
        F: for<'t> FnOnce(&'t mut dyn Tx) -> futures_box::BoxFuture<'t, Result<Option<T>, StoreError>>,
    {
        bounded(async {
            let mut tx = self.backend.begin().await?;
            let Some(out) = work(tx.as_mut()).await? else {
                // Dropped uncommitted: rolled back.
                return Ok(None);
            };
            tx.commit().await?;
            Ok(Some(out))
        })
        .await
    }

    /// What a `SELECT` that must lock the rows it reads ends with: MySQL reads a snapshot
    /// unless told to lock; SQLite's transactions are `BEGIN IMMEDIATE`, one at a time.
    fn lock_clause(&self) -> &'static str {
        match self.backend.dialect() {
            Dialect::Mysql => " FOR UPDATE",
            Dialect::Sqlite => "",
        }
    }

    // Users.

    /// Creates a user; `Conflict` if the name is taken.
    pub async fn create_user(&self, name: &str, is_super_user: bool, now: i64) -> Result<User, StoreError> {
        self.create_user_with_tokens(name, is_super_user, Vec::new(), now).await
    }

    /// A new user and its first tokens (`user_id` is ignored: the new user's is used), all
    /// stored or none: `Conflict` if the name or a digest is taken.
    pub async fn create_user_with_tokens(
        &self,
        name: &str,
        is_super_user: bool,
        tokens: Vec<NewUserToken>,
        now: i64,
    ) -> Result<User, StoreError> {
        let name = name.to_owned();
        self.transaction(move |tx| {
            Box::pin(async move {
                if find_user(tx, "name", name.clone().into()).await?.is_some() {
                    return Err(StoreError::Conflict(format!("user {name} already exists")));
                }
                let done = tx
                    .exec(
                        "INSERT INTO users (name, is_super_user, created_at) VALUES (?, ?, ?)",
                        vec![name.clone().into(), is_super_user.into(), now.into()],
                    )
                    .await?;
                let user = User { id: done.last_insert_id, name, is_super_user, created_at: now };
                for token in tokens {
                    insert_user_token(tx, NewUserToken { user_id: user.id, ..token }, now).await?;
                }
                Ok(user)
            })
        })
        .await
    }

    pub async fn user_by_name(&self, name: &str) -> Result<Option<User>, StoreError> {
        let name = name.to_owned();
        self.transaction(move |tx| Box::pin(find_user(tx, "name", name.into()))).await
    }

    pub async fn user_by_id(&self, id: i64) -> Result<Option<User>, StoreError> {
        self.transaction(move |tx| Box::pin(find_user(tx, "id", id.into()))).await
    }

    // User tokens.

    /// Stores a new token digest; `Conflict` if the digest is already stored.
    pub async fn create_user_token(&self, new: NewUserToken, now: i64) -> Result<UserToken, StoreError> {
        self.transaction(move |tx| Box::pin(insert_user_token(tx, new, now))).await
    }

    /// The token with this digest and its user, whatever its expiry or revocation.
    pub async fn token_by_digest(&self, digest: &str) -> Result<Option<(UserToken, User)>, StoreError> {
        let digest = digest.to_owned();
        self.transaction(move |tx| {
            Box::pin(async move {
                let sql = format!("SELECT {TOKEN_COLUMNS} FROM user_tokens WHERE digest = ?");
                let Some(token) = first(tx.query(&sql, vec![digest.into()]).await?, token_from)? else {
                    return Ok(None);
                };
                let user = find_user(tx, "id", token.user_id.into())
                    .await?
                    .ok_or_else(|| StoreError::Internal("token without user".into()))?;
                Ok(Some((token, user)))
            })
        })
        .await
    }

    /// Up to `limit` clusters' sealed tokens (cluster id, sealed value): enough to tell at start
    /// whether the key file is the one they were sealed with.
    pub async fn sealed_sample(&self, limit: i64) -> Result<Vec<(String, String)>, StoreError> {
        self.transaction(move |tx| {
            Box::pin(async move {
                let sql = "SELECT cluster_id, user_token_sealed FROM cluster_credentials ORDER BY cluster_id LIMIT ?";
                all(tx.query(sql, vec![limit.into()]).await?, |r| Ok((r.text(0)?, r.text(1)?)))
            })
        })
        .await
    }

    pub async fn user_tokens(&self, user_id: i64) -> Result<Vec<UserToken>, StoreError> {
        self.transaction(move |tx| {
            Box::pin(async move {
                let sql = format!("SELECT {TOKEN_COLUMNS} FROM user_tokens WHERE user_id = ? ORDER BY id");
                all(tx.query(&sql, vec![user_id.into()]).await?, token_from)
            })
        })
        .await
    }

    /// Marks a user's token revoked; false if the user has no such token. Revoking twice keeps
    /// the first time.
    pub async fn revoke_user_token(&self, user_id: i64, token_id: i64, now: i64) -> Result<bool, StoreError> {
        self.transaction(move |tx| {
            Box::pin(async move {
                let found = tx
                    .query(
                        "SELECT id FROM user_tokens WHERE id = ? AND user_id = ?",
                        vec![token_id.into(), user_id.into()],
                    )
                    .await?;
                if found.is_empty() {
                    return Ok(false);
                }
                tx.exec(
                    "UPDATE user_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                    vec![now.into(), token_id.into()],
                )
                .await?;
                Ok(true)
            })
        })
        .await
    }

    // Clusters.

    /// Creates a cluster, and for BCS clusters its (project, source id) mapping, in one
    /// transaction; `Conflict` if the id, identifier or mapping exists.
    pub async fn create_cluster(&self, cluster: Cluster, bcs: Option<BcsClusterInfo>) -> Result<Cluster, StoreError> {
        self.create_cluster_within(cluster, bcs, None).await
    }

    /// As [`Store::create_cluster`]; with `most`, `OverLimit` when the creator already created
    /// that many clusters. The count and the insert are one transaction, and on MySQL the
    /// creator's row is locked first, so one user's concurrent creates are counted in turn.
    pub async fn create_cluster_within(
        &self,
        cluster: Cluster,
        bcs: Option<BcsClusterInfo>,
        most: Option<u64>,
    ) -> Result<Cluster, StoreError> {
        let lock = self.lock_clause();
        self.transaction(move |tx| {
            Box::pin(async move {
                if let Some(most) = most {
                    let creator = vec![cluster.creator_id.into()];
                    tx.query(&format!("SELECT id FROM users WHERE id = ?{lock}"), creator.clone()).await?;
                    let rows = tx.query("SELECT COUNT(*) FROM clusters WHERE creator_id = ?", creator).await?;
                    let held = u64::try_from(first(rows, |r| r.int(0))?.unwrap_or(0)).unwrap_or(0);
                    if held >= most {
                        return Err(StoreError::OverLimit(held));
                    }
                }
                if find_cluster(tx, cluster.id.clone()).await?.is_some() {
                    return Err(StoreError::Conflict(format!("cluster {} already exists", cluster.id)));
                }
                if let Some(info) = &bcs {
                    let taken = tx
                        .query(
                            "SELECT cluster_id FROM bcs_cluster_infos \
                             WHERE source_project_id = ? AND source_cluster_id = ?",
                            vec![info.source_project_id.clone().into(), info.source_cluster_id.clone().into()],
                        )
                        .await?;
                    if !taken.is_empty() {
                        return Err(StoreError::Conflict(format!(
                            "cluster {} of project {} is already registered",
                            info.source_cluster_id, info.source_project_id
                        )));
                    }
                }
                tx.exec(
                    "INSERT INTO clusters (id, provider, cluster_type, creator_id, identifier, created_at) \
                     VALUES (?, ?, ?, ?, ?, ?)",
                    vec![
                        cluster.id.clone().into(),
                        cluster.provider.into(),
                        cluster.cluster_type.into(),
                        cluster.creator_id.into(),
                        cluster.identifier.clone().into(),
                        cluster.created_at.into(),
                    ],
                )
                .await?;
                // An id used again is no longer a deleted one (its new bindings are its own).
                // Deleted only when there: see delete_cluster on gap locks.
                if was_deleted(tx, cluster.id.clone()).await? {
                    tx.exec("DELETE FROM deleted_clusters WHERE id = ?", vec![cluster.id.clone().into()]).await?;
                }
                if let Some(info) = bcs {
                    tx.exec(
                        "INSERT INTO bcs_cluster_infos (cluster_id, source_project_id, source_cluster_id, created_at) \
                         VALUES (?, ?, ?, ?)",
                        vec![
                            cluster.id.clone().into(),
                            info.source_project_id.into(),
                            info.source_cluster_id.into(),
                            cluster.created_at.into(),
                        ],
                    )
                    .await?;
                }
                Ok(cluster)
            })
        })
        .await
    }

    /// Whether a cluster of this id was deleted here (and not created again since).
    pub async fn cluster_was_deleted(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.transaction(move |tx| Box::pin(was_deleted(tx, id))).await
    }

    pub async fn cluster(&self, id: &str) -> Result<Option<Cluster>, StoreError> {
        let id = id.to_owned();
        self.transaction(move |tx| Box::pin(find_cluster(tx, id))).await
    }

    pub async fn clusters(&self) -> Result<Vec<Cluster>, StoreError> {
        self.transaction(move |tx| {
            Box::pin(async move {
                let sql = format!("SELECT {CLUSTER_COLUMNS} FROM clusters ORDER BY created_at, id");
                all(tx.query(&sql, vec![]).await?, cluster_from)
            })
        })
        .await
    }

    /// The cluster registered for a BCS cluster id, within one project or in any. Any project:
    /// a BCS cluster id registered in two projects is a conflict, not the older one (any user
    /// may register a BCS cluster, so the first to take an id would otherwise receive what is
    /// meant for the real one: the permission service's grants, `query_by_cluster_id`).
    pub async fn bcs_cluster(
        &self,
        project_id: Option<&str>,
        source_cluster_id: &str,
    ) -> Result<Option<Cluster>, StoreError> {
        let project_id = project_id.map(str::to_owned);
        let source = source_cluster_id.to_owned();
        self.transaction(move |tx| {
            Box::pin(async move {
                let mut exact = bcs_mappings(tx, source.clone(), project_id).await?;
                if exact.len() > 1 {
                    let projects: Vec<&str> = exact.iter().map(|(_, p)| p.as_str()).collect();
                    return Err(StoreError::Conflict(format!(
                        "the BCS cluster id {source} is registered in more than one project ({}): name the project",
                        projects.join(", ")
                    )));
                }
                let Some((cluster_id, _)) = exact.pop() else {
                    return Ok(None);
                };
                find_cluster(tx, cluster_id).await
            })
        })
        .await
    }

    /// The bcs-api ids of every cluster registered for this BCS cluster id, in any project.
    pub async fn bcs_cluster_ids(&self, source_cluster_id: &str) -> Result<Vec<String>, StoreError> {
        let source = source_cluster_id.to_owned();
        self.transaction(move |tx| {
            Box::pin(async move {
                Ok(bcs_mappings(tx, source, None).await?.into_iter().map(|(cluster_id, _)| cluster_id).collect())
            })
        })
        .await
    }

    /// Deletes a cluster with its mapping, register token, credentials and the RBAC grants that
    /// name it (not those for every cluster, `*`); false if unknown, or no longer the cluster
    /// created as `identifier`. A cluster created again
    /// under the same id starts without the old one's grants (the config file's come back when
    /// it is next applied).
    pub async fn delete_cluster(&self, id: &str, identifier: &str) -> Result<bool, StoreError> {
        let (id, identifier) = (id.to_owned(), identifier.to_owned());
        let lock = self.lock_clause();
        let deleted = self
            .transaction_unless(move |tx| {
                Box::pin(async move {
                    // The register token first: a credentials report locks it before the
                    // credentials (and the cluster, for the foreign key).
                    for table in ["register_tokens", "cluster_credentials", "bcs_cluster_infos"] {
                        let sql = format!("DELETE FROM {table} WHERE cluster_id = ?");
                        tx.exec(&sql, vec![id.clone().into()]).await?;
                    }
                    // Only the cluster created as `identifier` (a plain cluster's id is reused),
                    // read as it is now, locked: otherwise all of the above is rolled back.
                    if !cluster_is(tx, &id, &identifier, lock).await? {
                        return Ok(None);
                    }
                    tx.exec("DELETE FROM clusters WHERE id = ?", vec![id.clone().into()]).await?;
                    // After the cluster, which a grant's insert locks first (add_cluster_grant):
                    // the other way round, the two could deadlock. No foreign key orders them.
                    tx.exec("DELETE FROM rbac_grants WHERE cluster_id = ?", vec![id.clone().into()]).await?;
                    // Never there already: a create of the id takes it out. (Only an insert: on
                    // MySQL a delete of an absent row would lock a gap, and two deletes of
                    // clusters at once would deadlock on it.)
                    tx.exec("INSERT INTO deleted_clusters (id) VALUES (?)", vec![id.into()]).await?;
                    Ok(Some(()))
                })
            })
            .await?;
        Ok(deleted.is_some())
    }

    // Register tokens.

    /// Stores a cluster's first register token; `Conflict` if it has one. `identifier` is the
    /// cluster the caller was allowed to act on (ids of plain clusters are reused after a
    /// delete): None, and nothing written, if the cluster of that id is no longer that one.
    pub async fn create_register_token(
        &self,
        cluster_id: &str,
        identifier: &str,
        token_sealed: String,
        now: i64,
    ) -> Result<Option<RegisterToken>, StoreError> {
        let (cluster_id, identifier) = (cluster_id.to_owned(), identifier.to_owned());
        let lock = self.lock_clause();
        self.transaction_unless(move |tx| {
            Box::pin(async move {
                // Gone already: None (404), not the foreign key's conflict (409).
                if !cluster_is(tx, &cluster_id, &identifier, "").await? {
                    return Ok(None);
                }
                if find_register_token(tx, cluster_id.clone()).await?.is_some() {
                    return Err(StoreError::Conflict(format!("cluster {cluster_id} already has a register token")));
                }
                let token = insert_register_token(tx, cluster_id.clone(), token_sealed, now).await?;
                Ok(cluster_is(tx, &cluster_id, &identifier, lock).await?.then_some(token))
            })
        })
        .await
    }

    /// Replaces a cluster's register token in its row (or creates the first one). In place,
    /// not deleted and inserted again: an insert's duplicate-key check would queue behind a
    /// credentials report waiting to lock the row, a deadlock on older MariaDB and MySQL.
    /// None, and nothing written, if the cluster `cluster_id` is no longer `identifier`.
    pub async fn rotate_register_token(
        &self,
        cluster_id: &str,
        identifier: &str,
        token_sealed: String,
        now: i64,
    ) -> Result<Option<RegisterToken>, StoreError> {
        let (cluster_id, identifier) = (cluster_id.to_owned(), identifier.to_owned());
        let lock = self.lock_clause();
        self.transaction_unless(move |tx| {
            Box::pin(async move {
                tx.exec(
                    "UPDATE register_tokens SET token_sealed = ?, token_digest = NULL, created_at = ? \
                     WHERE cluster_id = ?",
                    vec![token_sealed.clone().into(), now.into(), cluster_id.clone().into()],
                )
                .await?;
                // Found (not counted: MySQL counts changed rows only), or the first one.
                let token = match find_register_token(tx, cluster_id.clone()).await? {
                    Some(token) => token,
                    None => insert_register_token(tx, cluster_id.clone(), token_sealed, now).await?,
                };
                Ok(cluster_is(tx, &cluster_id, &identifier, lock).await?.then_some(token))
            })
        })
        .await
    }

    pub async fn register_token(&self, cluster_id: &str) -> Result<Option<RegisterToken>, StoreError> {
        let cluster_id = cluster_id.to_owned();
        self.transaction(move |tx| Box::pin(find_register_token(tx, cluster_id))).await
    }

    /// [`Store::register_token`] of the cluster `cluster_id` only while it is `identifier`
    /// (one statement, so never the token of a cluster that took the id after a delete).
    pub async fn register_token_of(
        &self,
        cluster_id: &str,
        identifier: &str,
    ) -> Result<Option<RegisterToken>, StoreError> {
        let (cluster_id, identifier) = (cluster_id.to_owned(), identifier.to_owned());
        self.transaction(move |tx| {
            Box::pin(async move {
                let rows = tx
                    .query(
                        "SELECT t.id, t.cluster_id, t.token_sealed, t.created_at, c.identifier \
                         FROM register_tokens t JOIN clusters c ON c.id = t.cluster_id \
                         WHERE t.cluster_id = ? AND c.identifier = ?",
                        vec![cluster_id.clone().into(), identifier.clone().into()],
                    )
                    .await?;
                // Exactly: MySQL's collation would also match other cases and trailing spaces.
                let found = first(rows, |r| Ok((register_token_from(r)?, r.text(4)?)))?;
                Ok(found.filter(|(t, i)| t.cluster_id == cluster_id && *i == identifier).map(|(t, _)| t))
            })
        })
        .await
    }

    /// Records the SHA-256 digest of a cluster's register token, if none is recorded (after
    /// create and rotate, which leave it empty, and for tokens older than migration 3), and
    /// only while the token is still the one sealed as `token_sealed`.
    pub async fn set_register_token_digest(
        &self,
        cluster_id: &str,
        token_sealed: &str,
        digest: &str,
    ) -> Result<(), StoreError> {
        let (cluster_id, sealed, digest) = (cluster_id.to_owned(), token_sealed.to_owned(), digest.to_owned());
        self.transaction(move |tx| {
            Box::pin(async move {
                // Only on the token it is the digest of: a rotation between the caller's read
                // and this write leaves the new token's row for its own digest.
                tx.exec(
                    "UPDATE register_tokens SET token_digest = ? \
                     WHERE cluster_id = ? AND token_sealed = ? AND token_digest IS NULL",
                    vec![digest.into(), cluster_id.into(), sealed.into()],
                )
                .await
                .map(|_| ())
            })
        })
        .await
    }

    /// The cluster whose register token has this digest, if any.
    pub async fn register_token_owner(&self, digest: &str) -> Result<Option<String>, StoreError> {
        let digest = digest.to_owned();
        self.transaction(move |tx| {
            Box::pin(async move {
                let rows = tx
                    .query("SELECT cluster_id FROM register_tokens WHERE token_digest = ?", vec![digest.into()])
                    .await?;
                first(rows, |r| r.text(0))
            })
        })
        .await
    }

    // Credentials.

    /// Inserts or updates a cluster's credentials; the version goes up when the fingerprint
    /// changes. Only while the cluster's register token is still the one sealed as
    /// `register_token_sealed`, the token the report was checked against: `None` (nothing
    /// written) when a rotation or a deletion came between the check and this write.
    pub async fn upsert_credentials(
        &self,
        new: NewCredentials,
        register_token_sealed: &str,
        now: i64,
    ) -> Result<Option<Credentials>, StoreError> {
        let checked = register_token_sealed.to_owned();
        // Locked until commit: a rotation waits for this write, or this write sees the rotation.
        let lock = self.lock_clause();
        self.transaction(move |tx| {
            Box::pin(async move {
                let current = tx
                    .query(
                        &format!("SELECT token_sealed FROM register_tokens WHERE cluster_id = ?{lock}"),
                        vec![new.cluster_id.clone().into()],
                    )
                    .await?;
                if first(current, |r| r.text(0))?.as_deref() != Some(checked.as_str()) {
                    return Ok(None);
                }
                // One statement decides the version, so concurrent reports cannot both read the
                // old version (MySQL evaluates SET left to right: `version` must come first).
                let updated = tx
                    .exec(
                        "UPDATE cluster_credentials SET \
                         version = CASE WHEN fingerprint = ? THEN version ELSE version + 1 END, \
                         server_addresses = ?, ca_cert_data = ?, user_token_sealed = ?, fingerprint = ?, \
                         updated_at = ? WHERE cluster_id = ?",
                        vec![
                            new.fingerprint.clone().into(),
                            new.server_addresses.clone().into(),
                            new.ca_cert_data.clone().into(),
                            new.user_token_sealed.clone().into(),
                            new.fingerprint.clone().into(),
                            now.into(),
                            new.cluster_id.clone().into(),
                        ],
                    )
                    .await?;
                if updated.affected == 0 && find_credentials(tx, new.cluster_id.clone()).await?.is_none() {
                    // Reports of one cluster come here one at a time (the register token's lock).
                    tx.exec(
                        "INSERT INTO cluster_credentials (server_addresses, ca_cert_data, user_token_sealed, \
                         fingerprint, version, updated_at, cluster_id, created_at) VALUES (?, ?, ?, ?, 1, ?, ?, ?)",
                        vec![
                            new.server_addresses.into(),
                            new.ca_cert_data.into(),
                            new.user_token_sealed.into(),
                            new.fingerprint.into(),
                            now.into(),
                            new.cluster_id.clone().into(),
                            now.into(),
                        ],
                    )
                    .await?;
                }
                find_credentials(tx, new.cluster_id)
                    .await?
                    .map(Some)
                    .ok_or_else(|| StoreError::Internal("credentials vanished inside their transaction".into()))
            })
        })
        .await
    }

    pub async fn credentials(&self, cluster_id: &str) -> Result<Option<Credentials>, StoreError> {
        let cluster_id = cluster_id.to_owned();
        self.transaction(move |tx| Box::pin(find_credentials(tx, cluster_id))).await
    }

    // Snapshots.

    /// Everything a proxy snapshot is built from, read in one transaction so the parts agree
    /// (no token of a user the snapshot lacks, no credentials of a deleted cluster): every
    /// user, every token not revoked, every cluster with its credentials if reported.
    pub async fn snapshot_rows(&self) -> Result<SnapshotRows, StoreError> {
        self.transaction(move |tx| {
            Box::pin(async move {
                let sql = format!("SELECT {USER_COLUMNS} FROM users ORDER BY id");
                let users = all(tx.query(&sql, vec![]).await?, user_from)?;
                let sql = format!("SELECT {TOKEN_COLUMNS} FROM user_tokens WHERE revoked_at IS NULL ORDER BY id");
                let tokens = all(tx.query(&sql, vec![]).await?, token_from)?;
                let sql = format!("SELECT {CLUSTER_COLUMNS} FROM clusters ORDER BY created_at, id");
                let clusters = all(tx.query(&sql, vec![]).await?, cluster_from)?;
                let sql = format!("SELECT {CREDENTIAL_COLUMNS} FROM cluster_credentials");
                let mut credentials: HashMap<String, Credentials> =
                    all(tx.query(&sql, vec![]).await?, credentials_from)?
                        .into_iter()
                        .map(|c| (c.cluster_id.clone(), c))
                        .collect();
                let clusters = clusters
                    .into_iter()
                    .map(|cluster| {
                        let credentials = credentials.remove(&cluster.id);
                        (cluster, credentials)
                    })
                    .collect();
                Ok(SnapshotRows { users, tokens, clusters })
            })
        })
        .await
    }
}

/// A boxed future borrowing the transaction (what [`Store::transaction`]'s closures return).
mod futures_box {
    pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
}

async fn bounded<T>(work: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    tokio::time::timeout(OPERATION_TIMEOUT, work)
        .await
        .map_err(|_| StoreError::Unavailable(format!("no answer within {OPERATION_TIMEOUT:?}")))?
}

fn first<T>(rows: Vec<Row>, convert: impl Fn(&Row) -> Result<T, StoreError>) -> Result<Option<T>, StoreError> {
    rows.first().map(convert).transpose()
}

fn all<T>(rows: Vec<Row>, convert: impl Fn(&Row) -> Result<T, StoreError>) -> Result<Vec<T>, StoreError> {
    rows.iter().map(convert).collect()
}

/// `column` is a fixed column name chosen by this module, never input.
/// A user by `id` or `name`. Names match exactly on both engines: MySQL's collation ignores
/// trailing spaces in `=` (PAD SPACE), so `alice ` would find `alice` there and not on SQLite.
async fn find_user(tx: &mut dyn Tx, column: &'static str, value: Value) -> Result<Option<User>, StoreError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE {column} = ?");
    let exact = match &value {
        Value::Text(name) => Some(name.clone()),
        _ => None,
    };
    let user = first(tx.query(&sql, vec![value]).await?, user_from)?;
    Ok(user.filter(|u| exact.as_ref().is_none_or(|name| u.name == *name)))
}

/// A cluster by id, matched exactly (as [`find_user`]'s names).
async fn find_cluster(tx: &mut dyn Tx, id: String) -> Result<Option<Cluster>, StoreError> {
    let sql = format!("SELECT {CLUSTER_COLUMNS} FROM clusters WHERE id = ?");
    let cluster = first(tx.query(&sql, vec![id.clone().into()]).await?, cluster_from)?;
    Ok(cluster.filter(|c| c.id == id))
}

async fn insert_user_token(tx: &mut dyn Tx, new: NewUserToken, now: i64) -> Result<UserToken, StoreError> {
    let done = tx
        .exec(
            "INSERT INTO user_tokens (user_id, type, digest, expires_at, revoked_at, created_at) \
             VALUES (?, ?, ?, ?, NULL, ?)",
            vec![new.user_id.into(), new.kind.into(), new.digest.clone().into(), new.expires_at.into(), now.into()],
        )
        .await?;
    Ok(UserToken {
        id: done.last_insert_id,
        user_id: new.user_id,
        kind: new.kind,
        digest: new.digest,
        expires_at: new.expires_at,
        revoked_at: None,
        created_at: now,
    })
}

/// (cluster id, project) of the clusters registered for a BCS source id, in `project` or any,
/// oldest first; matched exactly (MySQL's collation ignores trailing spaces in `=`).
async fn bcs_mappings(
    tx: &mut dyn Tx,
    source: String,
    project: Option<String>,
) -> Result<Vec<(String, String)>, StoreError> {
    let mut sql = "SELECT cluster_id, source_cluster_id, source_project_id FROM bcs_cluster_infos \
                   WHERE source_cluster_id = ?"
        .to_owned();
    let mut params: Vec<Value> = vec![source.clone().into()];
    if let Some(project) = &project {
        sql.push_str(" AND source_project_id = ?");
        params.push(project.clone().into());
    }
    sql.push_str(" ORDER BY id");
    let found = all(tx.query(&sql, params).await?, |r| Ok((r.text(0)?, r.text(1)?, r.text(2)?)))?;
    Ok(found
        .into_iter()
        .filter(|(_, s, p)| *s == source && project.as_ref().is_none_or(|wanted| wanted == p))
        .map(|(cluster_id, _, p)| (cluster_id, p))
        .collect())
}

async fn was_deleted(tx: &mut dyn Tx, cluster_id: String) -> Result<bool, StoreError> {
    Ok(!tx.query("SELECT id FROM deleted_clusters WHERE id = ?", vec![cluster_id.into()]).await?.is_empty())
}

async fn find_register_token(tx: &mut dyn Tx, cluster_id: String) -> Result<Option<RegisterToken>, StoreError> {
    let rows = tx
        .query(
            "SELECT id, cluster_id, token_sealed, created_at FROM register_tokens WHERE cluster_id = ?",
            vec![cluster_id.into()],
        )
        .await?;
    first(rows, register_token_from)
}

fn register_token_from(r: &Row) -> Result<RegisterToken, StoreError> {
    Ok(RegisterToken { id: r.int(0)?, cluster_id: r.text(1)?, token_sealed: r.text(2)?, created_at: r.int(3)? })
}

/// Whether the cluster `id` is there and is the one created as `identifier` (a plain cluster's
/// id is reused after a delete; its identifier is new each time). `lock` is the store's
/// [`Store::lock_clause`]: on MySQL a locking read sees the row as it is now, where a plain
/// one may see the transaction's older snapshot. Callers take it after their register-token
/// rows, the order a credentials report locks them in (the token, then the cluster for its
/// foreign key), so the two never wait on each other in a circle.
async fn cluster_is(tx: &mut dyn Tx, id: &str, identifier: &str, lock: &str) -> Result<bool, StoreError> {
    Ok(cluster_identifier(tx, id, lock).await?.as_deref() == Some(identifier))
}

/// The identifier of the cluster `id`, if it is there; `lock` as for [`cluster_is`]. The id
/// matches exactly: MySQL's collation would also match other cases and trailing spaces.
async fn cluster_identifier(tx: &mut dyn Tx, id: &str, lock: &str) -> Result<Option<String>, StoreError> {
    let sql = format!("SELECT id, identifier FROM clusters WHERE id = ?{lock}");
    let rows = tx.query(&sql, vec![id.to_owned().into()]).await?;
    let found = first(rows, |r| Ok((r.text(0)?, r.text(1)?)))?;
    Ok(found.filter(|(i, _)| i == id).map(|(_, identifier)| identifier))
}

async fn insert_register_token(
    tx: &mut dyn Tx,
    cluster_id: String,
    token_sealed: String,
    now: i64,
) -> Result<RegisterToken, StoreError> {
    let done = tx
        .exec(
            "INSERT INTO register_tokens (cluster_id, token_sealed, created_at) VALUES (?, ?, ?)",
            vec![cluster_id.clone().into(), token_sealed.clone().into(), now.into()],
        )
        .await?;
    Ok(RegisterToken { id: done.last_insert_id, cluster_id, token_sealed, created_at: now })
}

async fn find_credentials(tx: &mut dyn Tx, cluster_id: String) -> Result<Option<Credentials>, StoreError> {
    let sql = format!("SELECT {CREDENTIAL_COLUMNS} FROM cluster_credentials WHERE cluster_id = ?");
    first(tx.query(&sql, vec![cluster_id.into()]).await?, credentials_from)
}

fn user_from(r: &Row) -> Result<User, StoreError> {
    Ok(User { id: r.int(0)?, name: r.text(1)?, is_super_user: r.bool(2)?, created_at: r.int(3)? })
}

fn credentials_from(r: &Row) -> Result<Credentials, StoreError> {
    Ok(Credentials {
        id: r.int(0)?,
        cluster_id: r.text(1)?,
        server_addresses: r.text(2)?,
        ca_cert_data: r.text(3)?,
        user_token_sealed: r.text(4)?,
        fingerprint: r.text(5)?,
        version: r.int(6)?,
        created_at: r.int(7)?,
        updated_at: r.int(8)?,
    })
}

fn token_from(r: &Row) -> Result<UserToken, StoreError> {
    Ok(UserToken {
        id: r.int(0)?,
        user_id: r.int(1)?,
        kind: r.int(2)?,
        digest: r.text(3)?,
        expires_at: r.int(4)?,
        revoked_at: r.opt_int(5)?,
        created_at: r.int(6)?,
    })
}

fn cluster_from(r: &Row) -> Result<Cluster, StoreError> {
    Ok(Cluster {
        id: r.text(0)?,
        provider: r.int(1)?,
        cluster_type: r.int(2)?,
        creator_id: r.int(3)?,
        identifier: r.text(4)?,
        created_at: r.int(5)?,
    })
}

// RBAC grants (issue 7).

const GRANT_COLUMNS: &str = "id, user_name, cluster_id, namespace, role, source, created_at";
const GRANT_KEY: &str = "user_name = ? AND cluster_id = ? AND namespace = ? AND role = ? AND source = ?";

impl Store {
    /// Every grant, oldest first.
    pub async fn grants(&self) -> Result<Vec<Grant>, StoreError> {
        self.transaction(move |tx| {
            Box::pin(async move {
                let sql = format!("SELECT {GRANT_COLUMNS} FROM rbac_grants ORDER BY id");
                all(tx.query(&sql, vec![]).await?, grant_from)
            })
        })
        .await
    }

    /// The grants that apply to one cluster: its own and those for every cluster (`*`).
    pub async fn grants_for_cluster(&self, cluster_id: &str) -> Result<Vec<Grant>, StoreError> {
        let cluster_id = cluster_id.to_owned();
        self.transaction(move |tx| {
            Box::pin(async move {
                let sql = format!(
                    "SELECT {GRANT_COLUMNS} FROM rbac_grants WHERE cluster_id = ? OR cluster_id = '*' ORDER BY id"
                );
                all(tx.query(&sql, vec![cluster_id.into()]).await?, grant_from)
            })
        })
        .await
    }

    /// Adds a grant; `Conflict` if the same grant from the same source exists.
    pub async fn add_grant(&self, new: NewGrant, now: i64) -> Result<Grant, StoreError> {
        self.transaction(move |tx| Box::pin(add_grant_in(tx, new, now))).await
    }

    /// [`Store::add_grant`] for a grant in one cluster (not `*`), in the transaction that finds
    /// the cluster there, locked: None, and nothing written, if it is not. A grant checked apart
    /// from its insert could outlive a cluster deleted in between and be inherited by the next
    /// cluster of that id (a plain cluster's id is the name its creator chose). On MySQL the
    /// lock orders this against [`Store::delete_cluster`], which locks the cluster row before
    /// it deletes the grants: whichever comes second sees the other's outcome.
    pub async fn add_cluster_grant(&self, new: NewGrant, now: i64) -> Result<Option<Grant>, StoreError> {
        let lock = self.lock_clause();
        self.transaction(move |tx| {
            Box::pin(async move {
                if cluster_identifier(tx, &new.cluster_id, lock).await?.is_none() {
                    return Ok(None);
                }
                add_grant_in(tx, new, now).await.map(Some)
            })
        })
        .await
    }

    /// Removes the grant with this id; false if there is none.
    pub async fn remove_grant(&self, id: i64) -> Result<bool, StoreError> {
        self.transaction(move |tx| {
            Box::pin(async move {
                let done = tx.exec("DELETE FROM rbac_grants WHERE id = ?", vec![id.into()]).await?;
                Ok(done.affected > 0)
            })
        })
        .await
    }

    /// Removes the grant equal to `grant`; false if there is none.
    pub async fn remove_grant_matching(&self, grant: NewGrant) -> Result<bool, StoreError> {
        self.transaction(move |tx| {
            Box::pin(async move {
                let sql = format!("DELETE FROM rbac_grants WHERE {GRANT_KEY}");
                let done = tx.exec(&sql, grant_key(&grant)).await?;
                Ok(done.affected > 0)
            })
        })
        .await
    }

    /// Makes `source`'s grants exactly `wanted` in one transaction (other sources untouched);
    /// returns how many were added and removed.
    pub async fn replace_grants(
        &self,
        source: &str,
        wanted: Vec<NewGrant>,
        now: i64,
    ) -> Result<(usize, usize), StoreError> {
        let source = source.to_owned();
        self.transaction(move |tx| {
            Box::pin(async move {
                let sql = format!("SELECT {GRANT_COLUMNS} FROM rbac_grants WHERE source = ? ORDER BY id");
                let existing = all(tx.query(&sql, vec![source.clone().into()]).await?, grant_from)?;
                let wanted: std::collections::BTreeSet<NewGrant> =
                    wanted.into_iter().filter(|g| g.source == source).collect();
                let mut kept = std::collections::BTreeSet::new();
                let mut removed = 0;
                for grant in existing {
                    let key = NewGrant {
                        user_name: grant.user_name,
                        cluster_id: grant.cluster_id,
                        namespace: grant.namespace,
                        role: grant.role,
                        source: grant.source,
                    };
                    if wanted.contains(&key) {
                        kept.insert(key);
                    } else {
                        tx.exec("DELETE FROM rbac_grants WHERE id = ?", vec![grant.id.into()]).await?;
                        removed += 1;
                    }
                }
                let mut added = 0;
                for grant in wanted.into_iter().filter(|g| !kept.contains(g)) {
                    insert_grant(tx, grant, now).await?;
                    added += 1;
                }
                Ok((added, removed))
            })
        })
        .await
    }
}

fn grant_key(g: &NewGrant) -> Vec<Value> {
    vec![
        g.user_name.clone().into(),
        g.cluster_id.clone().into(),
        g.namespace.clone().into(),
        g.role.clone().into(),
        g.source.clone().into(),
    ]
}

async fn add_grant_in(tx: &mut dyn Tx, new: NewGrant, now: i64) -> Result<Grant, StoreError> {
    let sql = format!("SELECT {GRANT_COLUMNS} FROM rbac_grants WHERE {GRANT_KEY}");
    if first(tx.query(&sql, grant_key(&new)).await?, grant_from)?.is_some() {
        return Err(StoreError::Conflict(format!(
            "{} already has {} in {} from {}",
            new.user_name, new.role, new.cluster_id, new.source
        )));
    }
    insert_grant(tx, new, now).await
}

async fn insert_grant(tx: &mut dyn Tx, new: NewGrant, now: i64) -> Result<Grant, StoreError> {
    let mut params = grant_key(&new);
    params.push(now.into());
    let done = tx
        .exec(
            "INSERT INTO rbac_grants (user_name, cluster_id, namespace, role, source, created_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
            params,
        )
        .await?;
    Ok(Grant {
        id: done.last_insert_id,
        user_name: new.user_name,
        cluster_id: new.cluster_id,
        namespace: new.namespace,
        role: new.role,
        source: new.source,
        created_at: now,
    })
}

fn grant_from(r: &Row) -> Result<Grant, StoreError> {
    Ok(Grant {
        id: r.int(0)?,
        user_name: r.text(1)?,
        cluster_id: r.text(2)?,
        namespace: r.text(3)?,
        role: r.text(4)?,
        source: r.text(5)?,
        created_at: r.int(6)?,
    })
}
