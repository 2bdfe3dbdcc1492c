//! Turning the store's rows into a [`Snapshot`]: cluster types as names, apiserver addresses
//! split on `;`, cluster tokens opened with the sealer.
//!
//! A row the proxy could not use (a cluster token that does not open, an address it cannot
//! dial, a name it must refuse) is left out and reported, instead of failing the whole
//! snapshot: one bad row must not freeze every later change, revocations included. What is
//! left out fails closed: a dropped user's tokens stop working, a cluster without usable
//! credentials cannot be reached. [`Snapshot::validate`] still checks the result whole.
use bcs_shared::snapshot::{Cluster, Credentials, Invalid, Snapshot, Token, User};

use crate::sealer::{cluster_token_purpose, Sealer};
use crate::store::model::{self, cluster_type, SnapshotRows};

/// What [`build`] stamps on the snapshot besides the rows.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    pub revision: u64,
    /// Unix seconds.
    pub generated_at: i64,
    pub turn_on_rbac: bool,
}

/// A snapshot that passed [`Snapshot::validate`], and what was left out of it and why.
#[derive(Debug)]
pub struct Built {
    pub snapshot: Snapshot,
    /// One line per row left out, naming it (never a secret).
    pub left_out: Vec<String>,
}

pub fn build(rows: SnapshotRows, sealer: &Sealer, stamp: Stamp) -> Result<Built, Invalid> {
    build_with_mesos(rows, sealer, stamp, Some(Vec::new()))
}

/// [`build`] with the live mesos-driver sets from ZooKeeper (`crate::zk::discovery`); an
/// unusable driver or cluster id is left out and reported like a bad row. None: discovery has
/// not read ZooKeeper yet, and the snapshot says so (`mesos_pending`) rather than list none.
pub fn build_with_mesos(
    rows: SnapshotRows,
    sealer: &Sealer,
    stamp: Stamp,
    mesos: Option<Vec<bcs_shared::snapshot::MesosDrivers>>,
) -> Result<Built, Invalid> {
    let mut left_out = Vec::new();
    let users =
        rows.users.into_iter().map(|u| User { id: u.id, name: u.name, is_super_user: u.is_super_user }).collect();
    // A stored digest is admin's own SHA-256 hex; one that is not names no row to leave out, so
    // it fails the build as `validate` did before the wire type parsed digests.
    // A token already expired is left out: the proxy would refuse it anyway (it checks expiry
    // on each request, for tokens that expire between snapshots), and short-lived tokens would
    // otherwise swell every snapshot for ever.
    let tokens = rows
        .tokens
        .into_iter()
        .filter(|t| t.expires_at > stamp.generated_at)
        .map(|t| {
            let digest = t.digest.parse().map_err(|_| Invalid::BadDigest)?;
            Ok(Token { digest, user_id: t.user_id, expires_at: t.expires_at })
        })
        .collect::<Result<_, Invalid>>()?;
    let mut clusters = Vec::with_capacity(rows.clusters.len());
    for (cluster, credentials) in rows.clusters {
        let Some(kind) = type_name(cluster.cluster_type) else {
            left_out.push(format!("cluster {}: unknown cluster_type {}", cluster.id, cluster.cluster_type));
            continue;
        };
        let credentials = credentials.and_then(|c| match open(sealer, c) {
            Ok(credentials) => Some(credentials),
            Err(why) => {
                left_out.push(format!("credentials of cluster {}: {why}", cluster.id));
                None
            }
        });
        clusters.push(Cluster {
            id: cluster.id,
            identifier: cluster.identifier,
            cluster_type: kind.into(),
            credentials,
        });
    }
    let mut snapshot = Snapshot {
        revision: stamp.revision,
        generated_at: stamp.generated_at,
        turn_on_rbac: stamp.turn_on_rbac,
        users,
        tokens,
        clusters,
        mesos_pending: mesos.is_none(),
        mesos: mesos.unwrap_or_default(),
    };
    leave_out_invalid(&mut snapshot, &mut left_out)?;
    Ok(Built { snapshot, left_out })
}

/// `k8s`, `mesos` or `tke`.
pub fn type_name(kind: i64) -> Option<&'static str> {
    match kind {
        cluster_type::K8S => Some("k8s"),
        cluster_type::MESOS => Some("mesos"),
        cluster_type::TKE => Some("tke"),
        _ => None,
    }
}

fn open(sealer: &Sealer, c: model::Credentials) -> Result<Credentials, String> {
    let token = sealer.open(&cluster_token_purpose(&c.cluster_id), &c.user_token_sealed).map_err(|e| e.to_string())?;
    let addresses = c.server_addresses.split(';').map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned).collect();
    Ok(Credentials { addresses, ca_pem: c.ca_cert_data, token, version: c.version })
}

/// Validates `snapshot`, removing the row each failure names, until it passes; a failure
/// that names no row is returned.
fn leave_out_invalid(snapshot: &mut Snapshot, left_out: &mut Vec<String>) -> Result<(), Invalid> {
    // Each round removes at least one row, so this ends.
    loop {
        let invalid = match snapshot.validate() {
            Ok(()) => return Ok(()),
            Err(invalid) => invalid,
        };
        let drivers = |s: &Snapshot| s.mesos.iter().map(|m| m.drivers.len() + 1).sum::<usize>();
        let before = (snapshot.users.len(), snapshot.tokens.len(), snapshot.clusters.len(), drivers(snapshot));
        let mut credentials_dropped = false;
        match &invalid {
            Invalid::BadUserName(name) => snapshot.users.retain(|u| &u.name != name),
            Invalid::UnknownUser(id) => snapshot.tokens.retain(|t| t.user_id != *id),
            Invalid::BadIdentifier(identifier) => snapshot.clusters.retain(|c| &c.identifier != identifier),
            Invalid::BadAddress(id, address) => {
                for cluster in snapshot.clusters.iter_mut().filter(|c| &c.id == id) {
                    credentials_dropped |= cluster.credentials.take().is_some();
                }
                for set in snapshot.mesos.iter_mut().filter(|m| &m.cluster_id == id) {
                    set.drivers.retain(|d| {
                        &format!("{}://{}", d.scheme, bcs_shared::snapshot::join_ip_port(&d.ip, d.port)) != address
                    });
                }
            }
            Invalid::BadClusterToken(id) => {
                for cluster in snapshot.clusters.iter_mut().filter(|c| &c.id == id) {
                    credentials_dropped |= cluster.credentials.take().is_some();
                }
            }
            Invalid::BadMesosCluster(id) => snapshot.mesos.retain(|m| &m.cluster_id != id),
            // BadDigest comes only from the parse in `build_with_mesos`, never from `validate`.
            Invalid::DuplicateUser(_) | Invalid::DuplicateToken(_) | Invalid::BadDigest => return Err(invalid),
        }
        let after = (snapshot.users.len(), snapshot.tokens.len(), snapshot.clusters.len(), drivers(snapshot));
        if before == after && !credentials_dropped {
            return Err(invalid);
        }
        left_out.push(match &invalid {
            Invalid::BadAddress(..) | Invalid::BadClusterToken(_) => format!("credentials: {invalid}"),
            _ => invalid.to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use bcs_shared::secret::Secret;

    use super::*;
    use crate::store::model;

    const STAMP: Stamp = Stamp { revision: 7, generated_at: 1_700_000_000, turn_on_rbac: true };

    fn sealer() -> Sealer {
        Sealer::from_key(&[7u8; 32])
    }

    fn user(id: i64, name: &str, is_super_user: bool) -> model::User {
        model::User { id, name: name.into(), is_super_user, created_at: 1 }
    }

    fn token(id: i64, user_id: i64) -> model::UserToken {
        model::UserToken {
            id,
            user_id,
            kind: model::token_type::KUBECONFIG_PLAIN,
            digest: format!("{id:064x}"),
            expires_at: 2_000_000_000,
            revoked_at: None,
            created_at: 1,
        }
    }

    fn cluster(id: &str, kind: i64) -> model::Cluster {
        model::Cluster {
            id: id.into(),
            provider: model::provider::BCS,
            cluster_type: kind,
            creator_id: 1,
            identifier: format!("{id}-abc"),
            created_at: 1,
        }
    }

    fn credentials(sealer: &Sealer, cluster_id: &str, addresses: &str, token: &str) -> model::Credentials {
        model::Credentials {
            id: 1,
            cluster_id: cluster_id.into(),
            server_addresses: addresses.into(),
            ca_cert_data: "PEM".into(),
            user_token_sealed: sealer.seal(&cluster_token_purpose(cluster_id), &Secret::new(token)),
            fingerprint: "f".repeat(64),
            version: 3,
            created_at: 1,
            updated_at: 1,
        }
    }

    #[test]
    fn expired_tokens_are_left_out() {
        let sealer = sealer();
        let expired = model::UserToken { expires_at: STAMP.generated_at, ..token(12, 2) };
        let rows = SnapshotRows {
            users: vec![user(2, "plain:alice", false)],
            tokens: vec![token(11, 2), expired],
            clusters: vec![],
        };
        let built = build(rows, &sealer, STAMP).unwrap();
        let digests: Vec<String> = built.snapshot.tokens.iter().map(|t| t.digest.to_string()).collect();
        assert_eq!(digests, vec![format!("{:064x}", 11)]);
    }

    #[test]
    fn rows_become_a_valid_snapshot() {
        let sealer = sealer();
        let rows = SnapshotRows {
            users: vec![user(1, "admin", true), user(2, "plain:alice", false)],
            tokens: vec![token(10, 1), token(11, 2)],
            clusters: vec![
                (
                    cluster("bcs-a", cluster_type::MESOS),
                    Some(credentials(&sealer, "bcs-a", "https://10.0.0.1:6443; https://10.0.0.2:6443", "sa-token")),
                ),
                (cluster("bcs-b", cluster_type::TKE), None),
            ],
        };
        let built = build(rows, &sealer, STAMP).unwrap();
        assert!(built.left_out.is_empty(), "{:?}", built.left_out);
        let s = &built.snapshot;
        s.validate().unwrap();
        assert_eq!((s.revision, s.generated_at, s.turn_on_rbac), (7, 1_700_000_000, true));
        assert_eq!(s.users[1], User { id: 2, name: "plain:alice".into(), is_super_user: false });
        assert_eq!(
            s.tokens[1],
            Token { digest: format!("{:064x}", 11).parse().unwrap(), user_id: 2, expires_at: 2_000_000_000 }
        );
        assert_eq!(s.clusters[0].cluster_type, "mesos");
        assert_eq!(s.clusters[1].cluster_type, "tke");
        assert_eq!(s.clusters[1].credentials, None);
        let c = s.clusters[0].credentials.as_ref().unwrap();
        assert_eq!(c.addresses, vec!["https://10.0.0.1:6443", "https://10.0.0.2:6443"]);
        assert_eq!(c.token.expose(), "sa-token");
        assert_eq!((c.ca_pem.as_str(), c.version), ("PEM", 3));
    }

    #[test]
    fn unusable_rows_are_left_out_and_named() {
        let sealer = sealer();
        let other = Sealer::from_key(&[9u8; 32]);
        let rows = SnapshotRows {
            users: vec![user(1, "admin", true), user(2, "system:sneaky", false)],
            tokens: vec![token(10, 1), token(11, 2)],
            clusters: vec![
                (cluster("bad-path", cluster_type::K8S), Some(credentials(&sealer, "bad-path", "https://h/x", "t"))),
                (cluster("other-key", cluster_type::K8S), Some(credentials(&other, "other-key", "https://h", "t"))),
                (cluster("odd-type", 9), None),
                (cluster("fine", cluster_type::K8S), Some(credentials(&sealer, "fine", "https://h", "t"))),
            ],
        };
        let built = build(rows, &sealer, STAMP).unwrap();
        let s = &built.snapshot;
        s.validate().unwrap();
        assert_eq!(s.users.len(), 1, "the system: user is left out");
        assert_eq!(s.tokens.len(), 1, "and so is its token");
        let ids: Vec<_> = s.clusters.iter().map(|c| (c.id.as_str(), c.credentials.is_some())).collect();
        assert_eq!(ids, vec![("bad-path", false), ("other-key", false), ("fine", true)]);
        let report = built.left_out.join("\n");
        for needle in ["system:sneaky", "unknown user 2", "bad-path", "other-key", "odd-type"] {
            assert!(report.contains(needle), "{needle} in {report}");
        }
        assert!(!report.contains("sa-token"));
    }

    #[test]
    fn a_failure_naming_no_row_fails_the_build() {
        let sealer = sealer();
        let mut bad = token(10, 1);
        bad.digest = "NOT-HEX".into();
        let rows = SnapshotRows { users: vec![user(1, "admin", true)], tokens: vec![bad], clusters: vec![] };
        assert_eq!(build(rows, &sealer, STAMP).unwrap_err(), Invalid::BadDigest);
    }
}
