//! Response bodies, with the original's field names: Go field names (`ID`, `Name`, ...) for
//! users, tokens and stored credentials; snake_case for clusters and register tokens.
use serde::Serialize;

use crate::store::model::{Cluster, Credentials, RegisterToken, User, UserToken};

/// RFC 3339 in UTC, as the original's JSON times.
pub fn time(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0).unwrap_or_default().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[derive(Serialize)]
pub struct UserView {
    #[serde(rename = "ID")]
    pub id: i64,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "IsSuperUser")]
    pub is_super_user: bool,
    #[serde(rename = "CreatedAt")]
    pub created_at: String,
    #[serde(rename = "BackendType")]
    pub backend_type: &'static str,
    #[serde(rename = "BackendCredentials")]
    pub backend_credentials: Option<()>,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        UserView {
            id: u.id,
            name: u.name,
            is_super_user: u.is_super_user,
            created_at: time(u.created_at),
            backend_type: "",
            backend_credentials: None,
        }
    }
}

/// A user token. `Value` is present only in the answer that created the token: only its
/// digest is stored.
#[derive(Serialize)]
pub struct UserTokenView {
    #[serde(rename = "ID")]
    pub id: i64,
    #[serde(rename = "UserId")]
    pub user_id: i64,
    #[serde(rename = "Type")]
    pub kind: i64,
    #[serde(rename = "Value", skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(rename = "ExpiresAt")]
    pub expires_at: String,
    #[serde(rename = "CreatedAt")]
    pub created_at: String,
    #[serde(rename = "RevokedAt")]
    pub revoked_at: Option<String>,
}

impl UserTokenView {
    pub fn new(t: UserToken, value: Option<String>) -> Self {
        UserTokenView {
            id: t.id,
            user_id: t.user_id,
            kind: t.kind,
            value,
            expires_at: time(t.expires_at),
            created_at: time(t.created_at),
            revoked_at: t.revoked_at.map(time),
        }
    }
}

#[derive(Serialize)]
pub struct ClusterView {
    pub id: String,
    pub provider: i64,
    pub creator_id: i64,
    pub identifier: String,
    pub created_at: String,
}

impl From<Cluster> for ClusterView {
    fn from(c: Cluster) -> Self {
        ClusterView {
            id: c.id,
            provider: c.provider,
            creator_id: c.creator_id,
            identifier: c.identifier,
            created_at: time(c.created_at),
        }
    }
}

#[derive(Serialize)]
pub struct RegisterTokenView {
    pub id: i64,
    pub cluster_id: String,
    pub token: String,
    pub created_at: String,
}

impl RegisterTokenView {
    pub fn new(t: RegisterToken, token: String) -> Self {
        RegisterTokenView { id: t.id, cluster_id: t.cluster_id, token, created_at: time(t.created_at) }
    }
}

/// `GET /rest/clusters/{id}/credentials` (super users only).
#[derive(Serialize)]
pub struct CredentialsView {
    #[serde(rename = "ID")]
    pub id: i64,
    #[serde(rename = "ClusterId")]
    pub cluster_id: String,
    #[serde(rename = "ServerAddresses")]
    pub server_addresses: String,
    #[serde(rename = "CaCertData")]
    pub ca_cert_data: String,
    #[serde(rename = "UserToken")]
    pub user_token: String,
    #[serde(rename = "Version")]
    pub version: i64,
    #[serde(rename = "CreatedAt")]
    pub created_at: String,
    #[serde(rename = "UpdatedAt")]
    pub updated_at: String,
}

impl CredentialsView {
    pub fn new(c: Credentials, user_token: String) -> Self {
        CredentialsView {
            id: c.id,
            cluster_id: c.cluster_id,
            server_addresses: c.server_addresses,
            ca_cert_data: c.ca_cert_data,
            user_token,
            version: c.version,
            created_at: time(c.created_at),
            updated_at: time(c.updated_at),
        }
    }
}

/// `GET /rest/clusters/{id}/client_credentials`: what a client needs to reach the cluster
/// through the gateway.
#[derive(Serialize)]
pub struct ClientCredentialsView {
    pub cluster_id: String,
    /// As the original: the proxy path, with its trailing slash.
    pub server_address_path: String,
    /// New: the full URL, without a trailing slash, so `{server_address}/version` works.
    pub server_address: String,
    pub user_token: String,
    /// The cluster's CA, as the original returned.
    pub cacert_data: String,
    /// New: the CA of the gateway's own certificate, which a client of `server_address` must
    /// trust (the last certificate of `cert_config.server_cert_file`, as in agent manifests);
    /// empty when `server_address` is plain HTTP or that CA is unknown.
    pub server_cacert_data: String,
}
