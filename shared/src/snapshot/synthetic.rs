//! Large made-up snapshots for the benchmarks (criterion's and benches/snapshot-apply): `clusters`
//! k8s clusters with credentials, 1 000 users and `tokens` tokens. Never used by the gateway.
use super::{Cluster, Credentials, Digest, Snapshot, Token, User};
use crate::secret::Secret;

/// The value of the made-up token `i` (its digest is in the snapshot).
pub fn token_value(i: usize) -> String {
    format!("token-{i}")
}

/// The identifier of the made-up cluster `i`, as a `/tunnels/clusters/{identifier}/` path holds it.
pub fn cluster_identifier(i: usize) -> String {
    format!("bcs-k8s-{i:05}-abcdefgh-0123456789abcdef")
}

pub fn snapshot(clusters: usize, tokens: usize) -> Snapshot {
    Snapshot {
        revision: 1,
        generated_at: 0,
        turn_on_rbac: true,
        tokens: (0..tokens)
            .map(|i| Token { digest: Digest::of(&token_value(i)), user_id: (i % 1000) as i64, expires_at: i64::MAX })
            .collect(),
        users: (0..1000).map(|i| User { id: i, name: format!("plain:user{i}"), is_super_user: false }).collect(),
        clusters: (0..clusters)
            .map(|i| Cluster {
                id: format!("bcs-k8s-{i:05}-AbCdEfGh"),
                identifier: cluster_identifier(i),
                cluster_type: "k8s".into(),
                credentials: Some(Credentials {
                    addresses: vec![format!("https://10.0.{}.{}:6443", i / 250, i % 250)],
                    ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".repeat(2),
                    token: Secret::new(format!("cluster-token-{i}")),
                    version: 1,
                }),
            })
            .collect(),
        mesos: vec![],
        mesos_pending: false,
    }
}
