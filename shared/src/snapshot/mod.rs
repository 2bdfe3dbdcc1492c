//! The snapshot: everything a proxy needs to authenticate callers and reach clusters, built by
//! admin from its store and pushed to every proxy over the snapshot socket ([`wire`]).
//!
//! User tokens travel only as SHA-256 digests: a proxy can check a bearer token but cannot
//! produce one. Cluster tokens travel in clear (the proxy must send them upstream), on a unix
//! socket of mode 0600; a proxy persists its snapshot sealed with the key file.
pub mod digest;
pub mod synthetic;
pub mod wire;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;
pub use digest::{Digest, DigestKeyed, NotADigest};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Strictly increasing across admin restarts (admin uses max(now in ms, last + 1)).
    pub revision: u64,
    /// Unix seconds when admin built it.
    pub generated_at: i64,
    /// `rbac.turn_on_rbac`: impersonate non-super users towards clusters.
    pub turn_on_rbac: bool,
    pub users: Vec<User>,
    /// Only tokens that are not revoked; expiry is checked by the proxy on every request.
    pub tokens: Vec<Token>,
    pub clusters: Vec<Cluster>,
    /// Live mesos-drivers per BCS cluster id, from ZooKeeper (empty without ZooKeeper).
    #[serde(default)]
    pub mesos: Vec<MesosDrivers>,
    /// Admin has not read ZooKeeper since it started (ZooKeeper down, or not answered yet):
    /// `mesos` says nothing, and a proxy keeps the mesos-driver sets it holds. Without this an
    /// admin restarted during a ZooKeeper outage would empty every proxy's drivers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mesos_pending: bool,
}

/// The live mesos-drivers of one Mesos cluster (`/bcs/services/endpoints/mesosdriver/<id>/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MesosDrivers {
    /// The BCS cluster id the drivers registered under (the `BCS-ClusterID` header's value).
    pub cluster_id: String,
    pub drivers: Vec<MesosDriver>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MesosDriver {
    /// `http` or `https`.
    pub scheme: String,
    pub ip: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: i64,
    /// Internal name (`plain:alice`); towards Kubernetes see [`crate::identity`].
    pub name: String,
    pub is_super_user: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Token {
    /// SHA-256 of the token (64 lower-case hex digits on the wire).
    pub digest: Digest,
    pub user_id: i64,
    /// Unix seconds.
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    pub id: String,
    /// The path component of `/tunnels/clusters/{identifier}/`.
    pub identifier: String,
    /// `k8s`, `mesos` or `tke`.
    pub cluster_type: String,
    /// None until an agent has reported.
    pub credentials: Option<Credentials>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credentials {
    /// `https://host:port` of each apiserver.
    pub addresses: Vec<String>,
    /// PEM: the only roots trusted for this cluster.
    pub ca_pem: String,
    /// The cluster's service-account token, sent upstream as `Authorization: Bearer`.
    #[serde(serialize_with = "expose")]
    pub token: Secret,
    /// Changes whenever addresses, CA or token change; pools are keyed on it.
    pub version: i64,
}

fn expose<S: serde::Serializer>(secret: &Secret, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(secret.expose())
}

/// Why a snapshot cannot be applied. A proxy keeps its last good snapshot instead.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Invalid {
    #[error("user id {0} appears twice")]
    DuplicateUser(i64),
    #[error("token {0}… appears twice")]
    DuplicateToken(String),
    /// Admin's store held a digest that is not 64 lower-case hex digits (the wire form
    /// cannot carry one: the decoder refuses it).
    #[error("{}", NotADigest)]
    BadDigest,
    #[error("a token belongs to unknown user {0}")]
    UnknownUser(i64),
    #[error(
        "user {0:?}: a name must be non-empty visible ASCII, and a normal user's name must not start with system:"
    )]
    BadUserName(String),
    #[error("cluster identifier {0:?} appears twice or is not [A-Za-z0-9._-]+")]
    BadIdentifier(String),
    #[error("cluster {0}: address {1:?} is not https://host[:port] or http://host[:port]")]
    BadAddress(String, String),
    #[error("cluster {0}: the token is not a visible-ASCII bearer token")]
    BadClusterToken(String),
    #[error("mesos cluster id {0:?} is empty, not visible ASCII, or listed twice")]
    BadMesosCluster(String),
}

impl Snapshot {
    /// Checks everything the proxy relies on, so a bad snapshot is refused whole. (The sets hash
    /// with foldhash, not SipHash: admin wrote every key, and a million tokens look their user up.)
    pub fn validate(&self) -> Result<(), Invalid> {
        use foldhash::{HashSet, HashSetExt};
        let mut users = HashSet::with_capacity(self.users.len());
        for user in &self.users {
            if !users.insert(user.id) {
                return Err(Invalid::DuplicateUser(user.id));
            }
            let visible = !user.name.is_empty() && user.name.bytes().all(|b| b.is_ascii_graphic());
            if !visible || (!user.is_super_user && user.name.starts_with("system:")) {
                return Err(Invalid::BadUserName(user.name.clone()));
            }
        }
        let mut digests = std::collections::HashSet::with_capacity_and_hasher(self.tokens.len(), DigestKeyed);
        for token in &self.tokens {
            if !digests.insert(&token.digest) {
                return Err(Invalid::DuplicateToken(token.digest.to_string()[..8].to_owned()));
            }
            if !users.contains(&token.user_id) {
                return Err(Invalid::UnknownUser(token.user_id));
            }
        }
        let mut identifiers = HashSet::with_capacity(self.clusters.len());
        for cluster in &self.clusters {
            let id = &cluster.identifier;
            let charset =
                !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !charset || id == "." || id == ".." || !identifiers.insert(id.as_str()) {
                return Err(Invalid::BadIdentifier(id.clone()));
            }
            if let Some(credentials) = &cluster.credentials {
                for address in &credentials.addresses {
                    if parse_address(address).is_none() {
                        return Err(Invalid::BadAddress(cluster.id.clone(), address.clone()));
                    }
                }
                let token = credentials.token.expose();
                if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(Invalid::BadClusterToken(cluster.id.clone()));
                }
            }
        }
        let mut mesos = HashSet::new();
        for set in &self.mesos {
            if set.cluster_id.is_empty()
                || !set.cluster_id.bytes().all(|b| b.is_ascii_graphic())
                || !mesos.insert(set.cluster_id.as_str())
            {
                return Err(Invalid::BadMesosCluster(set.cluster_id.clone()));
            }
            for d in &set.drivers {
                let address = format!("{}://{}", d.scheme, crate::snapshot::join_ip_port(&d.ip, d.port));
                if d.ip.parse::<std::net::IpAddr>().is_err() || parse_address(&address).is_none() {
                    return Err(Invalid::BadAddress(set.cluster_id.clone(), address));
                }
            }
        }
        Ok(())
    }
}

/// How far ahead of this host's clock a revision may be and still order snapshots. Revisions
/// are milliseconds since the epoch (or one above the last), so one further ahead comes from a
/// clock that was wrong, or a snapshot file copied from another host: neither side lets it
/// hold back newer data (admin does not number after it, a proxy holding it takes admin's).
pub const MAX_REVISION_LEAD_MS: u64 = 24 * 3600 * 1000;

/// Whether `revision` is at most [`MAX_REVISION_LEAD_MS`] ahead of this host's clock.
pub fn revision_trusted(revision: u64) -> bool {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    revision <= now_ms.saturating_add(MAX_REVISION_LEAD_MS)
}

/// `ip:port`, with brackets for IPv6.
pub fn join_ip_port(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

impl MesosDriver {
    /// The driver as an upstream address.
    pub fn address(&self) -> Option<Address> {
        parse_address(&format!("{}://{}", self.scheme, join_ip_port(&self.ip, self.port)))
    }
}

/// An upstream address: `https://host[:port]` or `http://host[:port]`, with an optional
/// trailing `/` and nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Address {
    /// `host:port` for connecting (`[v6]:port` for IPv6). Written by hand, not with `format!`:
    /// the proxy builds it for every request it sends upstream.
    pub fn authority(&self) -> String {
        let v6 = self.host.contains(':');
        let mut out = Vec::with_capacity(self.host.len() + 8);
        if v6 {
            out.push(b'[');
        }
        out.extend_from_slice(self.host.as_bytes());
        out.extend_from_slice(if v6 { b"]:" } else { b":" });
        crate::text::decimal(&mut out, self.port.into());
        String::from_utf8(out).expect("a String, brackets, a colon and digits are UTF-8")
    }
}

pub fn parse_address(address: &str) -> Option<Address> {
    let (tls, rest) = if let Some(r) = address.strip_prefix("https://") {
        (true, r)
    } else {
        (false, address.strip_prefix("http://")?)
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) || !rest.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        (host, port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (rest, default_port),
        }
    };
    if host.is_empty() || port == 0 {
        return None;
    }
    Some(Address { tls, host: host.to_owned(), port })
}

#[cfg(test)]
mod tests;
