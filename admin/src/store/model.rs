//! Rows as the rest of the admin sees them. Times are Unix seconds.

/// Token types of the original (`user_tokens.type`).
pub mod token_type {
    /// Session token: bootstrap users' tokens.
    pub const SESSION: i64 = 1;
    /// Plain kubeconfig token: tokens created through `POST /rest/users/{id}/tokens`.
    pub const KUBECONFIG_PLAIN: i64 = 3;
}

/// `clusters.provider` of the original.
pub mod provider {
    pub const PLAIN: i64 = 1;
    pub const BCS: i64 = 2;
}

/// `cluster_type` of `POST /rest/clusters/bcs`.
pub mod cluster_type {
    pub const K8S: i64 = 1;
    pub const MESOS: i64 = 2;
    pub const TKE: i64 = 3;
}

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub is_super_user: bool,
    pub created_at: i64,
}

/// A user token as stored: its SHA-256 digest, never its value.
#[derive(Debug, Clone, PartialEq)]
pub struct UserToken {
    pub id: i64,
    pub user_id: i64,
    pub kind: i64,
    pub digest: String,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewUserToken {
    pub user_id: i64,
    pub kind: i64,
    pub digest: String,
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub id: String,
    pub provider: i64,
    pub cluster_type: i64,
    pub creator_id: i64,
    pub identifier: String,
    pub created_at: i64,
}

/// The mapping of a BCS (project, cluster id) pair to a bcs-api cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct BcsClusterInfo {
    pub source_project_id: String,
    pub source_cluster_id: String,
}

/// A cluster's register token, sealed with the key file.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisterToken {
    pub id: i64,
    pub cluster_id: String,
    pub token_sealed: String,
    pub created_at: i64,
}

/// What an agent reported for a cluster; the cluster's token is sealed.
#[derive(Debug, Clone, PartialEq)]
pub struct Credentials {
    pub id: i64,
    pub cluster_id: String,
    pub server_addresses: String,
    pub ca_cert_data: String,
    pub user_token_sealed: String,
    /// Digest of the reported addresses, CA and token: a report that changes it bumps `version`.
    pub fingerprint: String,
    /// Starts at 1; the proxy keys its upstream pools on it.
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewCredentials {
    pub cluster_id: String,
    pub server_addresses: String,
    pub ca_cert_data: String,
    pub user_token_sealed: String,
    pub fingerprint: String,
}

/// What a proxy snapshot is built from ([`super::Store::snapshot_rows`]), ordered by id
/// (clusters by creation), so two reads of unchanged data are equal.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRows {
    pub users: Vec<User>,
    /// Tokens not revoked, expired ones included (the proxy checks expiry on each request).
    pub tokens: Vec<UserToken>,
    pub clusters: Vec<(Cluster, Option<Credentials>)>,
}

/// Where an RBAC grant came from (`rbac_grants.source`).
pub mod grant_source {
    /// `rbac.data` of the config file.
    pub const CONF: &str = "conf";
    /// `POST /rest/rbac/grants`.
    pub const REST: &str = "rest";
    /// The permission subscription: `auth:common`, `auth:any-cluster`, `auth:any-namespaces`.
    pub const AUTH_PREFIX: &str = "auth:";
}

/// An RBAC grant: `user_name` (internal name) has the role template `role` (without `bke-`)
/// in `cluster_id` (`*`: every cluster), in `namespace` (empty: the cluster scope).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub id: i64,
    pub user_name: String,
    pub cluster_id: String,
    pub namespace: String,
    pub role: String,
    pub source: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NewGrant {
    pub user_name: String,
    pub cluster_id: String,
    pub namespace: String,
    pub role: String,
    pub source: String,
}
