//! The store's contract, once per engine: every case below runs on the embedded SQLite store
//! (a file in a temporary directory, through the default empty DSN) and on the real MariaDB
//! (a fresh database per test, through the original's Go-style DSN).
//!
//! A case is one `async fn(&Store, &Engine)`; [`store_suite!`] turns each into
//! `sqlite::<case>` and `mysql::<case>` tests. The [`Engine`] gives a case what the store's API
//! does not: reopening the same database, and counting rows with plain SQL.
use std::path::PathBuf;

use bcs_admin::store::model::{
    cluster_type, grant_source, provider, token_type, BcsClusterInfo, Cluster, Credentials, NewCredentials, NewGrant,
    NewUserToken, SnapshotRows, UserToken,
};
use bcs_admin::store::{self, Dsn, Store, StoreError};
use bcs_testkit::mysql::MysqlDatabase;

/// Where one test's database lives; dropping it removes the database.
pub struct Engine {
    dsn: Dsn,
    data_dir: tempfile::TempDir,
    kind: Kind,
}

enum Kind {
    Sqlite,
    Mysql(MysqlDatabase),
}

impl Engine {
    /// The embedded default: an empty DSN, so the file is `<data_dir>/bcs-api.db`.
    pub fn sqlite() -> Engine {
        Engine {
            dsn: Dsn::parse("").expect("the empty DSN"),
            data_dir: tempfile::tempdir().expect("tempdir"),
            kind: Kind::Sqlite,
        }
    }

    /// A fresh MariaDB database, named through the Go-style DSN; bcs-api creates it.
    pub fn mysql() -> Engine {
        let db = MysqlDatabase::fresh("bcs_store");
        Engine {
            dsn: Dsn::parse(&db.go_dsn()).expect("the testkit's Go DSN"),
            data_dir: tempfile::tempdir().expect("tempdir"),
            kind: Kind::Mysql(db),
        }
    }

    fn sqlite_file(&self) -> PathBuf {
        self.data_dir.path().join("bcs-api.db")
    }

    /// Opens (and migrates) the store on this engine's database.
    pub async fn open(&self) -> Store {
        store::open(&self.dsn, self.data_dir.path()).await.unwrap_or_else(|e| panic!("open {:?}: {e}", self.dsn))
    }

    /// What [`Store::describe`] must say for this database.
    fn description(&self) -> String {
        match &self.kind {
            Kind::Sqlite => format!("sqlite {}", self.sqlite_file().display()),
            Kind::Mysql(db) => format!("mysql {}@{}", db.name, db.server_address()),
        }
    }

    /// Runs `SELECT COUNT(*) ...` (or any one-integer query) beside the store.
    pub async fn count(&self, sql: &str) -> i64 {
        match &self.kind {
            Kind::Sqlite => {
                let conn = rusqlite::Connection::open(self.sqlite_file()).expect("open the file");
                conn.query_row(sql, [], |r| r.get(0)).unwrap_or_else(|e| panic!("{sql}: {e}"))
            }
            Kind::Mysql(db) => {
                let rows = db.query_strings(sql).await;
                assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
                rows[0].parse().unwrap_or_else(|_| panic!("{sql}: {rows:?}"))
            }
        }
    }
}

/// Generates one `#[tokio::test]` per case and engine: `sqlite::<case>`, `mysql::<case>`.
macro_rules! store_suite {
    (engines: [$($engine:ident),+ $(,)?], cases: $cases:tt) => {
        $(store_suite!(@engine $engine $cases);)+
    };
    (@engine $engine:ident [$($case:ident),+ $(,)?]) => {
        mod $engine {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $case() {
                    let engine = super::Engine::$engine();
                    let store = engine.open().await;
                    super::$case(&store, &engine).await;
                    // The store goes before its database does.
                    drop(store);
                    drop(engine);
                }
            )+
        }
    };
}

store_suite! {
    engines: [sqlite, mysql],
    cases: [
        users_are_created_once_and_found_by_name_and_id,
        user_tokens_are_found_listed_and_revoked,
        a_user_and_its_first_tokens_are_stored_together_or_not_at_all,
        clusters_and_their_bcs_mapping_are_unique,
        a_creator_past_its_cluster_limit_is_refused,
        register_tokens_are_created_once_and_rotated,
        credentials_versions_follow_the_fingerprint,
        credentials_are_stored_only_under_the_register_token_they_were_checked_against,
        delete_cluster_removes_everything_of_the_cluster,
        data_survives_reopening_and_migrations_run_once,
        ping_and_describe,
        snapshot_rows_hold_what_a_proxy_needs,
        rbac_grants_are_unique_per_source_and_replaced_by_source,
        a_grant_in_one_cluster_is_stored_only_while_the_cluster_is_there,
        writes_for_a_cluster_never_reach_the_cluster_that_took_its_id,
    ]
}

// Fixtures.

/// A SHA-256-sized hex digest (the columns are CHAR(64) on MySQL).
fn digest(n: u64) -> String {
    format!("{n:064x}")
}

fn cluster(id: &str, identifier: &str, creator_id: i64, created_at: i64) -> Cluster {
    Cluster {
        id: id.into(),
        provider: provider::BCS,
        cluster_type: cluster_type::K8S,
        creator_id,
        identifier: identifier.into(),
        created_at,
    }
}

fn bcs(project: &str, source: &str) -> Option<BcsClusterInfo> {
    Some(BcsClusterInfo { source_project_id: project.into(), source_cluster_id: source.into() })
}

fn credentials(cluster_id: &str, addresses: &str, token: &str, fingerprint: u64) -> NewCredentials {
    NewCredentials {
        cluster_id: cluster_id.into(),
        server_addresses: addresses.into(),
        ca_cert_data: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        user_token_sealed: token.into(),
        fingerprint: digest(fingerprint),
    }
}

/// The identifier of the cluster `id` (empty when there is none): what the REST handlers pass
/// to the writes that act on one cluster.
async fn ident(store: &Store, id: &str) -> String {
    store.cluster(id).await.unwrap().map(|c| c.identifier).unwrap_or_default()
}

#[track_caller]
fn assert_conflict<T: std::fmt::Debug>(result: Result<T, StoreError>) {
    match result {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("expected Conflict, got {other:?}"),
    }
}

// Cases.

async fn users_are_created_once_and_found_by_name_and_id(store: &Store, engine: &Engine) {
    let alice = store.create_user("alice", true, 1_000).await.unwrap();
    assert!(alice.id > 0, "{alice:?}");
    assert_eq!((alice.name.as_str(), alice.is_super_user, alice.created_at), ("alice", true, 1_000));
    let bob = store.create_user("bob", false, 1_001).await.unwrap();
    assert_ne!(bob.id, alice.id);
    assert_eq!((bob.name.as_str(), bob.is_super_user, bob.created_at), ("bob", false, 1_001));

    assert_eq!(store.user_by_name("alice").await.unwrap(), Some(alice.clone()));
    assert_eq!(store.user_by_id(alice.id).await.unwrap(), Some(alice.clone()));
    assert_eq!(store.user_by_name("bob").await.unwrap(), Some(bob.clone()));
    assert_eq!(store.user_by_id(bob.id).await.unwrap(), Some(bob.clone()));
    assert_eq!(store.user_by_name("carol").await.unwrap(), None);
    assert_eq!(store.user_by_name("Alice").await.unwrap(), None, "names are case-sensitive");
    assert_eq!(store.user_by_name("alice ").await.unwrap(), None, "trailing spaces count (MySQL pads)");
    assert_eq!(store.user_by_id(bob.id + 1_000).await.unwrap(), None);

    // The same name again: refused, and nothing of it was written.
    assert_conflict(store.create_user("alice", false, 2_000).await);
    assert_eq!(engine.count("SELECT COUNT(*) FROM users WHERE name = 'alice'").await, 1);
    assert_eq!(engine.count("SELECT COUNT(*) FROM users").await, 2);
    assert_eq!(store.user_by_name("alice").await.unwrap(), Some(alice.clone()));
    assert_eq!(store.user_by_id(alice.id).await.unwrap(), Some(alice));
    assert_eq!(store.user_by_id(bob.id).await.unwrap(), Some(bob));
}

async fn a_user_and_its_first_tokens_are_stored_together_or_not_at_all(store: &Store, engine: &Engine) {
    let token = |n| NewUserToken { user_id: 0, kind: token_type::SESSION, digest: digest(n), expires_at: 9_000 };
    let alice = store.create_user_with_tokens("alice", true, vec![token(1), token(2)], 1_000).await.unwrap();
    let digests: Vec<String> = store.user_tokens(alice.id).await.unwrap().into_iter().map(|t| t.digest).collect();
    assert_eq!(digests, vec![digest(1), digest(2)]);
    // The second token's digest is taken: neither bob nor his first token is stored.
    assert_conflict(store.create_user_with_tokens("bob", false, vec![token(3), token(2)], 1_000).await);
    assert_eq!(store.user_by_name("bob").await.unwrap(), None);
    assert_eq!(engine.count("SELECT COUNT(*) FROM user_tokens").await, 2);
    assert_eq!(engine.count("SELECT COUNT(*) FROM users").await, 1);
}

async fn user_tokens_are_found_listed_and_revoked(store: &Store, engine: &Engine) {
    let alice = store.create_user("alice", false, 1_000).await.unwrap();
    let bob = store.create_user("bob", false, 1_000).await.unwrap();
    let new = |user_id, kind, n, expires_at| NewUserToken { user_id, kind, digest: digest(n), expires_at };

    let first = store.create_user_token(new(alice.id, token_type::SESSION, 1, 9_000), 1_100).await.unwrap();
    assert!(first.id > 0, "{first:?}");
    assert_eq!(
        (first.user_id, first.kind, first.digest.as_str(), first.expires_at, first.revoked_at, first.created_at),
        (alice.id, token_type::SESSION, digest(1).as_str(), 9_000, None, 1_100)
    );
    let bobs = store.create_user_token(new(bob.id, token_type::KUBECONFIG_PLAIN, 3, 9_300), 1_150).await.unwrap();
    let second = store.create_user_token(new(alice.id, token_type::KUBECONFIG_PLAIN, 2, 9_200), 1_200).await.unwrap();
    assert!(first.id < bobs.id && bobs.id < second.id, "{first:?} {bobs:?} {second:?}");

    assert_eq!(store.token_by_digest(&digest(1)).await.unwrap(), Some((first.clone(), alice.clone())));
    assert_eq!(store.token_by_digest(&digest(3)).await.unwrap(), Some((bobs.clone(), bob.clone())));
    assert_eq!(store.token_by_digest(&digest(4)).await.unwrap(), None);

    // A digest is stored once, whoever asks.
    assert_conflict(store.create_user_token(new(bob.id, token_type::SESSION, 1, 9_999), 1_300).await);
    assert_eq!(engine.count("SELECT COUNT(*) FROM user_tokens").await, 3);
    assert_eq!(store.token_by_digest(&digest(1)).await.unwrap(), Some((first.clone(), alice.clone())));

    assert_eq!(store.user_tokens(alice.id).await.unwrap(), vec![first.clone(), second.clone()]);
    assert_eq!(store.user_tokens(bob.id).await.unwrap(), vec![bobs.clone()]);
    assert_eq!(store.user_tokens(bob.id + 1_000).await.unwrap(), vec![]);

    // Revocation: the first time sticks.
    assert!(store.revoke_user_token(alice.id, first.id, 2_000).await.unwrap());
    let revoked = store.token_by_digest(&digest(1)).await.unwrap().unwrap().0;
    assert_eq!(revoked.revoked_at, Some(2_000));
    assert!(store.revoke_user_token(alice.id, first.id, 3_000).await.unwrap());
    let revoked_first = UserToken { revoked_at: Some(2_000), ..first.clone() };
    assert_eq!(store.token_by_digest(&digest(1)).await.unwrap(), Some((revoked_first.clone(), alice.clone())));

    // Unknown ids and other users' tokens are not revoked.
    assert!(!store.revoke_user_token(alice.id, second.id + 1_000, 3_000).await.unwrap());
    assert!(!store.revoke_user_token(alice.id, bobs.id, 3_000).await.unwrap());
    assert!(!store.revoke_user_token(bob.id, second.id, 3_000).await.unwrap());
    assert_eq!(store.user_tokens(alice.id).await.unwrap(), vec![revoked_first, second]);
    assert_eq!(store.user_tokens(bob.id).await.unwrap(), vec![bobs]);
}

async fn clusters_and_their_bcs_mapping_are_unique(store: &Store, engine: &Engine) {
    let creator = store.create_user("creator", false, 1_000).await.unwrap();
    let first = cluster("BCS-K8S-00001", "ident-00001", creator.id, 1_000);
    assert_eq!(store.create_cluster(first.clone(), bcs("project-a", "K8S-001")).await.unwrap(), first);
    assert_eq!(store.cluster("BCS-K8S-00001").await.unwrap(), Some(first.clone()));
    assert_eq!(store.cluster("BCS-K8S-00001 ").await.unwrap(), None, "trailing spaces count (MySQL pads)");
    assert_eq!(store.bcs_cluster(None, "K8S-001").await.unwrap(), Some(first.clone()));
    assert_eq!(store.bcs_cluster(None, "K8S-001 ").await.unwrap(), None);
    assert_eq!(store.bcs_cluster(Some("project-a"), "K8S-001  ").await.unwrap(), None);
    assert_eq!(store.bcs_cluster(Some("project-a "), "K8S-001").await.unwrap(), None);
    assert_eq!(store.bcs_cluster(Some("project-a"), "K8S-001").await.unwrap(), Some(first.clone()));

    // The same id: refused, the stored row unchanged, no second mapping.
    assert_conflict(
        store
            .create_cluster(cluster("BCS-K8S-00001", "ident-other", creator.id, 1_100), bcs("project-z", "K8S-999"))
            .await,
    );
    assert_eq!(store.cluster("BCS-K8S-00001").await.unwrap(), Some(first.clone()));
    assert_eq!(store.bcs_cluster(None, "K8S-999").await.unwrap(), None);

    // The same (project, source id) under a new id: refused, and the new cluster row is not
    // there (the whole transaction is gone).
    assert_conflict(
        store
            .create_cluster(cluster("BCS-K8S-00002", "ident-00002", creator.id, 1_200), bcs("project-a", "K8S-001"))
            .await,
    );
    assert_eq!(store.cluster("BCS-K8S-00002").await.unwrap(), None);

    assert_eq!(engine.count("SELECT COUNT(*) FROM clusters WHERE id = 'BCS-K8S-00002'").await, 0);

    // The same identifier under a new id: refused by the unique key, and its mapping is not
    // there either.
    assert_conflict(
        store
            .create_cluster(cluster("BCS-K8S-00003", "ident-00001", creator.id, 1_300), bcs("project-c", "K8S-003"))
            .await,
    );
    assert_eq!(store.cluster("BCS-K8S-00003").await.unwrap(), None);
    assert_eq!(store.bcs_cluster(None, "K8S-003").await.unwrap(), None);
    assert_eq!(engine.count("SELECT COUNT(*) FROM clusters").await, 1);
    assert_eq!(engine.count("SELECT COUNT(*) FROM bcs_cluster_infos").await, 1);

    // The same source id in another project is another cluster; a plain cluster has no mapping.
    let other_project = cluster("BCS-K8S-00004", "ident-00004", creator.id, 2_000);
    store.create_cluster(other_project.clone(), bcs("project-b", "K8S-001")).await.unwrap();
    // Every cluster of that source id, in any project (exactly: no trailing-space match).
    assert_eq!(store.bcs_cluster_ids("K8S-001").await.unwrap(), vec![first.id.clone(), other_project.id.clone()]);
    assert_eq!(store.bcs_cluster_ids("K8S-001 ").await.unwrap(), Vec::<String>::new());
    let plain = Cluster {
        provider: provider::PLAIN,
        cluster_type: cluster_type::TKE,
        ..cluster("plain-00005", "ident-00005", creator.id, 1_500)
    };
    store.create_cluster(plain.clone(), None).await.unwrap();

    assert_eq!(store.bcs_cluster(Some("project-a"), "K8S-001").await.unwrap(), Some(first.clone()));
    assert_eq!(store.bcs_cluster(Some("project-b"), "K8S-001").await.unwrap(), Some(other_project.clone()));
    // Without a project, two registrations are a conflict, never the older one: anyone may
    // register a BCS cluster, and the first to take an id would get the real one's grants.
    assert_conflict(store.bcs_cluster(None, "K8S-001").await);
    assert_eq!(store.bcs_cluster(Some("project-c"), "K8S-001").await.unwrap(), None);
    assert_eq!(store.bcs_cluster(Some("project-a"), "K8S-002").await.unwrap(), None);
    assert_eq!(store.bcs_cluster(None, "plain-00005").await.unwrap(), None);

    // Listed by creation time, then id.
    assert_eq!(store.clusters().await.unwrap(), vec![first, plain, other_project]);
}

async fn a_creator_past_its_cluster_limit_is_refused(store: &Store, engine: &Engine) {
    let alice = store.create_user("alice", false, 1_000).await.unwrap();
    let bob = store.create_user("bob", false, 1_000).await.unwrap();
    for n in 1..=2 {
        let c = cluster(&format!("BCS-A{n}"), &format!("ident-a{n}"), alice.id, 1_000 + n);
        store.create_cluster_within(c, None, Some(2)).await.unwrap();
    }
    let third = cluster("BCS-A3", "ident-a3", alice.id, 1_003);
    match store.create_cluster_within(third.clone(), bcs("project-a", "K8S-003"), Some(2)).await {
        Err(StoreError::OverLimit(2)) => {}
        other => panic!("expected OverLimit(2), got {other:?}"),
    }
    assert_eq!(engine.count("SELECT COUNT(*) FROM clusters").await, 2);
    assert_eq!(engine.count("SELECT COUNT(*) FROM bcs_cluster_infos").await, 0, "no half-written cluster");
    // Another creator counts its own; without a limit, or after a deletion, alice may create again.
    store.create_cluster_within(cluster("BCS-B1", "ident-b1", bob.id, 1_004), None, Some(1)).await.unwrap();
    store.create_cluster_within(third.clone(), None, None).await.unwrap();
    assert!(store.delete_cluster("BCS-A1", &ident(store, "BCS-A1").await).await.unwrap());
    assert!(store.delete_cluster("BCS-A2", &ident(store, "BCS-A2").await).await.unwrap());
    store.create_cluster_within(cluster("BCS-A4", "ident-a4", alice.id, 1_005), None, Some(2)).await.unwrap();

    // One user's creates at once are counted in turn: exactly up to the limit succeed.
    let carol = store.create_user("carol", false, 2_000).await.unwrap();
    let creates = (0..12).map(|n| {
        store.create_cluster_within(
            cluster(&format!("BCS-C{n}"), &format!("ident-c{n}"), carol.id, 2_000),
            None,
            Some(3),
        )
    });
    let results = futures_util::future::join_all(creates).await;
    let created = results.iter().filter(|r| r.is_ok()).count();
    assert!(results.iter().all(|r| matches!(r, Ok(_) | Err(StoreError::OverLimit(_)))), "{results:?}");
    assert_eq!(created, 3, "{results:?}");
    assert_eq!(engine.count(&format!("SELECT COUNT(*) FROM clusters WHERE creator_id = {}", carol.id)).await, 3);
}

async fn register_tokens_are_created_once_and_rotated(store: &Store, engine: &Engine) {
    let creator = store.create_user("creator", false, 1_000).await.unwrap();
    for (id, ident) in [("BCS-K8S-00001", "ident-1"), ("BCS-K8S-00002", "ident-2")] {
        store.create_cluster(cluster(id, ident, creator.id, 1_000), None).await.unwrap();
    }
    assert_eq!(store.register_token("BCS-K8S-00001").await.unwrap(), None);

    let created = store
        .create_register_token("BCS-K8S-00001", &ident(store, "BCS-K8S-00001").await, "sealed-1".into(), 1_100)
        .await
        .unwrap()
        .expect("the cluster is there");
    assert!(created.id > 0, "{created:?}");
    assert_eq!(
        (created.cluster_id.as_str(), created.token_sealed.as_str(), created.created_at),
        ("BCS-K8S-00001", "sealed-1", 1_100)
    );
    assert_eq!(store.register_token("BCS-K8S-00001").await.unwrap(), Some(created.clone()));

    // A second one is refused and changes nothing.
    assert_conflict(
        store
            .create_register_token("BCS-K8S-00001", &ident(store, "BCS-K8S-00001").await, "sealed-x".into(), 1_200)
            .await,
    );
    assert_eq!(store.register_token("BCS-K8S-00001").await.unwrap(), Some(created.clone()));

    // Rotation replaces it with the new sealed value.
    let rotated = store
        .rotate_register_token("BCS-K8S-00001", &ident(store, "BCS-K8S-00001").await, "sealed-2".into(), 1_300)
        .await
        .unwrap()
        .expect("the cluster is there");
    assert_eq!(rotated.id, created.id, "replaced in its row");
    assert_eq!(
        (rotated.cluster_id.as_str(), rotated.token_sealed.as_str(), rotated.created_at),
        ("BCS-K8S-00001", "sealed-2", 1_300)
    );
    assert_eq!(store.register_token("BCS-K8S-00001").await.unwrap(), Some(rotated.clone()));
    assert_eq!(engine.count("SELECT COUNT(*) FROM register_tokens WHERE cluster_id = 'BCS-K8S-00001'").await, 1);

    // A report checked against the old token records its digest only after the rotation: the
    // new token's row is left for its own digest.
    store.set_register_token_digest("BCS-K8S-00001", "sealed-1", &digest(1)).await.unwrap();
    assert_eq!(store.register_token_owner(&digest(1)).await.unwrap(), None);
    store.set_register_token_digest("BCS-K8S-00001", "sealed-2", &digest(2)).await.unwrap();
    assert_eq!(store.register_token_owner(&digest(2)).await.unwrap().as_deref(), Some("BCS-K8S-00001"));

    // Rotating a cluster without a token creates its first; the other cluster is untouched.
    let first_of_second = store
        .rotate_register_token("BCS-K8S-00002", &ident(store, "BCS-K8S-00002").await, "sealed-3".into(), 1_400)
        .await
        .unwrap()
        .expect("the cluster is there");
    assert_eq!(
        (first_of_second.cluster_id.as_str(), first_of_second.token_sealed.as_str(), first_of_second.created_at),
        ("BCS-K8S-00002", "sealed-3", 1_400)
    );
    assert_eq!(store.register_token("BCS-K8S-00002").await.unwrap(), Some(first_of_second));
    assert_eq!(store.register_token("BCS-K8S-00001").await.unwrap(), Some(rotated));
    assert_eq!(store.register_token("BCS-K8S-00009").await.unwrap(), None);
}

async fn credentials_versions_follow_the_fingerprint(store: &Store, _engine: &Engine) {
    let creator = store.create_user("creator", false, 1_000).await.unwrap();
    store.create_cluster(cluster("BCS-K8S-00001", "ident-1", creator.id, 1_000), None).await.unwrap();
    assert_eq!(store.credentials("BCS-K8S-00001").await.unwrap(), None);
    store
        .create_register_token("BCS-K8S-00001", &ident(store, "BCS-K8S-00001").await, "rt-1".into(), 1_050)
        .await
        .unwrap()
        .expect("the cluster is there");

    let inserted = store
        .upsert_credentials(credentials("BCS-K8S-00001", "https://10.0.0.1:6443", "sealed-a", 1), "rt-1", 1_100)
        .await
        .unwrap()
        .expect("stored");
    assert!(inserted.id > 0, "{inserted:?}");
    assert_eq!(
        (
            inserted.cluster_id.as_str(),
            inserted.server_addresses.as_str(),
            inserted.user_token_sealed.as_str(),
            inserted.fingerprint.as_str(),
            inserted.version,
            inserted.created_at,
            inserted.updated_at
        ),
        ("BCS-K8S-00001", "https://10.0.0.1:6443", "sealed-a", digest(1).as_str(), 1, 1_100, 1_100)
    );
    assert_eq!(store.credentials("BCS-K8S-00001").await.unwrap(), Some(inserted.clone()));

    // The same fingerprint: same version, newer updated_at, created_at kept.
    let same = store
        .upsert_credentials(credentials("BCS-K8S-00001", "https://10.0.0.1:6443", "sealed-a", 1), "rt-1", 1_200)
        .await
        .unwrap()
        .expect("stored");
    let expected_same = Credentials { updated_at: 1_200, ..inserted.clone() };
    assert_eq!(same, expected_same);
    assert_eq!(store.credentials("BCS-K8S-00001").await.unwrap(), Some(expected_same));

    // Another fingerprint: version 2, every field replaced, id and created_at kept.
    let changed = store
        .upsert_credentials(
            credentials("BCS-K8S-00001", "https://10.0.0.1:6443;https://10.0.0.2:6443", "sealed-b", 2),
            "rt-1",
            1_300,
        )
        .await
        .unwrap()
        .expect("stored");
    let expected_changed = Credentials {
        id: inserted.id,
        cluster_id: "BCS-K8S-00001".into(),
        server_addresses: "https://10.0.0.1:6443;https://10.0.0.2:6443".into(),
        ca_cert_data: inserted.ca_cert_data.clone(),
        user_token_sealed: "sealed-b".into(),
        fingerprint: digest(2),
        version: 2,
        created_at: 1_100,
        updated_at: 1_300,
    };
    assert_eq!(changed, expected_changed);
    assert_eq!(store.credentials("BCS-K8S-00001").await.unwrap(), Some(expected_changed));

    // Back to the first fingerprint is still a change.
    let back = store
        .upsert_credentials(credentials("BCS-K8S-00001", "https://10.0.0.1:6443", "sealed-a", 1), "rt-1", 1_400)
        .await
        .unwrap()
        .expect("stored");
    assert_eq!((back.version, back.created_at, back.updated_at), (3, 1_100, 1_400));
    assert_eq!(store.credentials("BCS-K8S-00001").await.unwrap(), Some(back));
    assert_eq!(store.credentials("BCS-K8S-00009").await.unwrap(), None);
}

async fn credentials_are_stored_only_under_the_register_token_they_were_checked_against(
    store: &Store,
    _engine: &Engine,
) {
    let creator = store.create_user("creator", false, 1_000).await.unwrap();
    store.create_cluster(cluster("BCS-K8S-00001", "ident-1", creator.id, 1_000), None).await.unwrap();
    let report = |fingerprint| credentials("BCS-K8S-00001", "https://10.0.0.1:6443", "sealed-a", fingerprint);

    // No register token at all: nothing is written.
    assert_eq!(store.upsert_credentials(report(1), "rt-1", 1_050).await.unwrap(), None);
    assert_eq!(store.credentials("BCS-K8S-00001").await.unwrap(), None);

    store
        .create_register_token("BCS-K8S-00001", &ident(store, "BCS-K8S-00001").await, "rt-1".into(), 1_100)
        .await
        .unwrap()
        .expect("the cluster is there");
    let stored = store.upsert_credentials(report(1), "rt-1", 1_200).await.unwrap().expect("stored");

    // A report checked against the token a rotation has since replaced changes nothing.
    store
        .rotate_register_token("BCS-K8S-00001", &ident(store, "BCS-K8S-00001").await, "rt-2".into(), 1_300)
        .await
        .unwrap()
        .expect("the cluster is there");
    assert_eq!(store.upsert_credentials(report(2), "rt-1", 1_400).await.unwrap(), None);
    assert_eq!(store.credentials("BCS-K8S-00001").await.unwrap(), Some(stored));
    let under_new = store.upsert_credentials(report(2), "rt-2", 1_500).await.unwrap().expect("stored");
    assert_eq!((under_new.version, under_new.fingerprint), (2, digest(2)));
}

async fn delete_cluster_removes_everything_of_the_cluster(store: &Store, engine: &Engine) {
    let creator = store.create_user("creator", false, 1_000).await.unwrap();
    let doomed = cluster("BCS-K8S-00001", "ident-1", creator.id, 1_000);
    let kept = cluster("BCS-K8S-00002", "ident-2", creator.id, 1_001);
    store.create_cluster(doomed.clone(), bcs("project-a", "K8S-001")).await.unwrap();
    store.create_cluster(kept.clone(), bcs("project-a", "K8S-002")).await.unwrap();
    for id in [&doomed.id, &kept.id] {
        let register = format!("sealed-{id}");
        store
            .create_register_token(id, &ident(store, id).await, register.clone(), 1_100)
            .await
            .unwrap()
            .expect("the cluster is there");
        store
            .upsert_credentials(credentials(id, "https://10.0.0.1:6443", "sealed-sa", 1), &register, 1_200)
            .await
            .unwrap();
    }
    let kept_token = store.register_token(&kept.id).await.unwrap();
    let kept_credentials = store.credentials(&kept.id).await.unwrap();
    assert!(kept_token.is_some() && kept_credentials.is_some());
    for (cluster_id, source) in
        [(&doomed.id, grant_source::REST), (&kept.id, grant_source::REST), (&"*".to_owned(), grant_source::CONF)]
    {
        store.add_grant(grant("plain:alice", cluster_id, "", "cluster-readonly", source), 1_300).await.unwrap();
    }

    assert!(store.delete_cluster(&doomed.id, &ident(store, &doomed.id).await).await.unwrap());

    assert_eq!(store.cluster(&doomed.id).await.unwrap(), None);
    assert_eq!(store.bcs_cluster(Some("project-a"), "K8S-001").await.unwrap(), None);
    assert_eq!(store.bcs_cluster(None, "K8S-001").await.unwrap(), None);
    assert_eq!(store.register_token(&doomed.id).await.unwrap(), None);
    assert_eq!(store.credentials(&doomed.id).await.unwrap(), None);
    for table in ["bcs_cluster_infos", "register_tokens", "cluster_credentials", "rbac_grants"] {
        let sql = format!("SELECT COUNT(*) FROM {table} WHERE cluster_id = 'BCS-K8S-00001'");
        assert_eq!(engine.count(&sql).await, 0, "{table}");
    }
    // A cluster created again under the id inherits no grant but those for every cluster.
    let left: Vec<String> = store.grants().await.unwrap().into_iter().map(|g| g.cluster_id).collect();
    assert_eq!(left, vec![kept.id.clone(), "*".to_owned()], "the other cluster's and every cluster's grants stay");

    // The other cluster keeps everything.
    assert_eq!(store.clusters().await.unwrap(), vec![kept.clone()]);
    assert_eq!(store.bcs_cluster(Some("project-a"), "K8S-002").await.unwrap(), Some(kept.clone()));
    assert_eq!(store.register_token(&kept.id).await.unwrap(), kept_token);
    assert_eq!(store.credentials(&kept.id).await.unwrap(), kept_credentials);

    // Its id is remembered as deleted (RBAC sync adopts its bindings); a kept one's is not.
    assert!(store.cluster_was_deleted(&doomed.id).await.unwrap());
    assert!(!store.cluster_was_deleted(&kept.id).await.unwrap());
    assert!(!store.cluster_was_deleted("BCS-K8S-00009").await.unwrap());

    // Unknown now, and never known.
    assert!(!store.delete_cluster(&doomed.id, &ident(store, &doomed.id).await).await.unwrap());
    assert!(!store.delete_cluster("BCS-K8S-00009", &ident(store, "BCS-K8S-00009").await).await.unwrap());
    assert_eq!(store.clusters().await.unwrap(), vec![kept.clone()]);

    // The (project, source id), the id and the identifier are free again.
    let again = cluster("BCS-K8S-00001", "ident-1", creator.id, 3_000);
    assert_eq!(store.create_cluster(again.clone(), bcs("project-a", "K8S-001")).await.unwrap(), again);
    assert!(!store.cluster_was_deleted(&again.id).await.unwrap(), "created again: no longer a deleted id");

    // Clusters deleted at once (MySQL: no two deletes wait on each other's locks).
    for n in 0..12 {
        store
            .create_cluster(cluster(&format!("BCS-M{n}"), &format!("ident-m{n}"), creator.id, 3_300), None)
            .await
            .unwrap();
    }
    let deletes = (0..12).map(|n| async move {
        store.delete_cluster(&format!("BCS-M{n}"), &ident(store, &format!("BCS-M{n}")).await).await
    });
    let results = futures_util::future::join_all(deletes).await;
    assert!(results.iter().all(|r| matches!(r, Ok(true))), "{results:?}");
    assert_eq!(store.bcs_cluster(Some("project-a"), "K8S-001").await.unwrap(), Some(again.clone()));
    let token = store
        .create_register_token(&again.id, &ident(store, &again.id).await, "sealed-new".into(), 3_100)
        .await
        .unwrap()
        .expect("the cluster is there");
    assert_eq!(store.register_token(&again.id).await.unwrap(), Some(token));
    let fresh =
        store.upsert_credentials(credentials(&again.id, "https://10.0.0.9:6443", "sealed-sa", 7), "sealed-new", 3_200);
    let fresh = fresh.await.unwrap().expect("stored");
    assert_eq!((fresh.version, fresh.created_at), (1, 3_200), "no old version carried over");
    assert_eq!(store.clusters().await.unwrap(), vec![kept, again]);
}

async fn data_survives_reopening_and_migrations_run_once(store: &Store, engine: &Engine) {
    // Written through the suite's store.
    let alice = store.create_user("alice", true, 1_000).await.unwrap();
    let token = store
        .create_user_token(
            NewUserToken { user_id: alice.id, kind: token_type::SESSION, digest: digest(1), expires_at: 9_000 },
            1_000,
        )
        .await
        .unwrap();
    let first = cluster("BCS-K8S-00001", "ident-1", alice.id, 1_000);
    store.create_cluster(first.clone(), bcs("project-a", "K8S-001")).await.unwrap();
    let register = store
        .create_register_token(&first.id, &ident(store, &first.id).await, "sealed-1".into(), 1_100)
        .await
        .unwrap()
        .expect("the cluster is there");
    let creds =
        store.upsert_credentials(credentials(&first.id, "https://10.0.0.1:6443", "sealed-sa", 1), "sealed-1", 1_200);
    let creds = creds.await.unwrap().expect("stored");

    // A second store on the same database (migrations again: a no-op) sees it all, and writes.
    let second = engine.open().await;
    assert_eq!(second.user_by_name("alice").await.unwrap(), Some(alice.clone()));
    let bob = second.create_user("bob", false, 2_000).await.unwrap();
    assert!(second.revoke_user_token(alice.id, token.id, 2_100).await.unwrap());
    let rotated = second
        .rotate_register_token(&first.id, &ident(&second, &first.id).await, "sealed-2".into(), 2_200)
        .await
        .unwrap()
        .expect("the cluster is there");
    drop(second);

    // Closed and opened again: everything both stores wrote is there.
    let third = engine.open().await;
    third.ping().await.unwrap();
    assert_eq!(third.user_by_id(alice.id).await.unwrap(), Some(alice.clone()));
    assert_eq!(third.user_by_name("bob").await.unwrap(), Some(bob.clone()));
    let revoked = UserToken { revoked_at: Some(2_100), ..token };
    assert_eq!(third.token_by_digest(&digest(1)).await.unwrap(), Some((revoked.clone(), alice.clone())));
    assert_eq!(third.user_tokens(alice.id).await.unwrap(), vec![revoked]);
    assert_eq!(third.clusters().await.unwrap(), vec![first.clone()]);
    assert_eq!(third.bcs_cluster(Some("project-a"), "K8S-001").await.unwrap(), Some(first.clone()));
    assert_eq!(rotated.id, register.id, "rotated in its row");
    assert_eq!(third.register_token(&first.id).await.unwrap(), Some(rotated));
    assert_eq!(third.credentials(&first.id).await.unwrap(), Some(creds));
    drop(third);

    // Three opens, each migration applied once (versions 1..=n, none twice).
    let newest = engine.count("SELECT MAX(version) FROM schema_migrations").await;
    assert!(newest >= 2, "the grants migration is there: {newest}");
    assert_eq!(engine.count("SELECT COUNT(*) FROM schema_migrations").await, newest);
    assert_eq!(engine.count("SELECT COUNT(DISTINCT version) FROM schema_migrations").await, newest);
    // Still usable through the first store.
    assert_eq!(store.user_by_name("bob").await.unwrap(), Some(bob));
}

async fn ping_and_describe(store: &Store, engine: &Engine) {
    store.ping().await.unwrap();
    assert_eq!(store.describe(), engine.description());
    if let Kind::Sqlite = engine.kind {
        assert!(engine.sqlite_file().is_file(), "the empty DSN puts the file in the data dir");
    }
    // A second open of the same, migrated database pings too.
    let again = engine.open().await;
    again.ping().await.unwrap();
    assert_eq!(again.describe(), engine.description());
}

async fn snapshot_rows_hold_what_a_proxy_needs(store: &Store, _engine: &Engine) {
    assert_eq!(store.snapshot_rows().await.unwrap(), SnapshotRows { users: vec![], tokens: vec![], clusters: vec![] });
    let alice = store.create_user("alice", true, 1_000).await.unwrap();
    let bob = store.create_user("plain:bob", false, 1_001).await.unwrap();
    let new =
        |user_id, n| NewUserToken { user_id, kind: token_type::KUBECONFIG_PLAIN, digest: digest(n), expires_at: 500 };
    let kept = store.create_user_token(new(alice.id, 1), 1_100).await.unwrap();
    let revoked = store.create_user_token(new(bob.id, 2), 1_100).await.unwrap();
    let expired_but_kept = store.create_user_token(new(bob.id, 3), 1_100).await.unwrap();
    assert!(store.revoke_user_token(bob.id, revoked.id, 1_200).await.unwrap());

    let later = cluster("BCS-B", "ident-b", bob.id, 2_000);
    let earlier = cluster("BCS-A", "ident-a", bob.id, 1_500);
    let gone = cluster("BCS-C", "ident-c", bob.id, 1_600);
    for c in [&later, &earlier, &gone] {
        store.create_cluster(c.clone(), None).await.unwrap();
        store
            .create_register_token(&c.id, &ident(store, &c.id).await, format!("rt-{}", c.id), 2_000)
            .await
            .unwrap()
            .expect("the cluster is there");
    }
    let reported =
        store.upsert_credentials(credentials("BCS-B", "https://10.0.0.1:6443", "sealed-b", 1), "rt-BCS-B", 2_100);
    let reported = reported.await.unwrap().expect("stored");
    store
        .upsert_credentials(credentials("BCS-C", "https://10.0.0.3:6443", "sealed-c", 3), "rt-BCS-C", 2_100)
        .await
        .unwrap();
    assert!(store.delete_cluster("BCS-C", &ident(store, "BCS-C").await).await.unwrap());

    let rows = store.snapshot_rows().await.unwrap();
    assert_eq!(rows.users, vec![alice, bob]);
    assert_eq!(rows.tokens, vec![kept, expired_but_kept], "revoked tokens are left out, expired ones kept");
    assert_eq!(rows.clusters, vec![(earlier, None), (later, Some(reported))], "by creation time");
    assert_eq!(store.snapshot_rows().await.unwrap(), rows, "the same data reads the same");
}

fn grant(user: &str, cluster: &str, namespace: &str, role: &str, source: &str) -> NewGrant {
    NewGrant {
        user_name: user.into(),
        cluster_id: cluster.into(),
        namespace: namespace.into(),
        role: role.into(),
        source: source.into(),
    }
}

async fn writes_for_a_cluster_never_reach_the_cluster_that_took_its_id(store: &Store, _engine: &Engine) {
    let alice = store.create_user("alice", false, 1_000).await.unwrap();
    let bob = store.create_user("bob", false, 1_000).await.unwrap();
    store.create_cluster(cluster("plain-x", "ident-old", alice.id, 1_000), None).await.unwrap();
    store.create_register_token("plain-x", "ident-old", "rt-alice".into(), 1_100).await.unwrap().unwrap();
    assert!(store.delete_cluster("plain-x", "ident-old").await.unwrap());
    store.create_cluster(cluster("plain-x", "ident-new", bob.id, 2_000), None).await.unwrap();
    store.create_register_token("plain-x", "ident-new", "rt-bob".into(), 2_100).await.unwrap().unwrap();

    // What alice's requests, which loaded her cluster before it was deleted, go on to do.
    assert_eq!(store.register_token_of("plain-x", "ident-old").await.unwrap(), None, "bob's token is not read");
    assert_eq!(store.rotate_register_token("plain-x", "ident-old", "rt-2".into(), 3_000).await.unwrap(), None);
    assert_eq!(store.create_register_token("plain-x", "ident-old", "rt-3".into(), 3_000).await.unwrap(), None);
    assert!(!store.delete_cluster("plain-x", "ident-old").await.unwrap(), "bob's cluster is not deleted");
    // Exactly the identifier (MySQL's collation would match other cases and trailing spaces).
    assert_eq!(store.register_token_of("plain-x", "IDENT-NEW").await.unwrap(), None);
    assert!(!store.delete_cluster("plain-x", "ident-new ").await.unwrap());

    let kept = store.register_token_of("plain-x", "ident-new").await.unwrap().expect("bob's token");
    assert_eq!(kept.token_sealed, "rt-bob");
    assert_eq!(store.cluster("plain-x").await.unwrap().map(|c| c.identifier).as_deref(), Some("ident-new"));
}

async fn a_grant_in_one_cluster_is_stored_only_while_the_cluster_is_there(store: &Store, engine: &Engine) {
    let creator = store.create_user("creator", false, 1_000).await.unwrap();
    let there = cluster("plain-team-a", "ident-a", creator.id, 1_000);
    store.create_cluster(there.clone(), None).await.unwrap();
    let added = store.add_cluster_grant(grant("plain:alice", &there.id, "", "cluster-readonly", "rest"), 1_100).await;
    assert_eq!(added.unwrap().map(|g| g.cluster_id), Some(there.id.clone()));
    assert_conflict(
        store.add_cluster_grant(grant("plain:alice", &there.id, "", "cluster-readonly", "rest"), 1_101).await,
    );

    // Deleted (with its grants) before the grant's transaction: nothing is written, so a later
    // cluster of the same id starts without it.
    assert!(store.delete_cluster(&there.id, &ident(store, &there.id).await).await.unwrap());
    let late = store.add_cluster_grant(grant("plain:bob", &there.id, "", "cluster-manage", "rest"), 1_200).await;
    assert_eq!(late.unwrap(), None);
    // Nor for an id that differs only in case or trailing spaces (MySQL's collation matches those).
    let kept = cluster("plain-team-b", "ident-b", creator.id, 1_300);
    store.create_cluster(kept.clone(), None).await.unwrap();
    for near in ["PLAIN-TEAM-B", "plain-team-b "] {
        assert_eq!(
            store.add_cluster_grant(grant("plain:bob", near, "", "cluster-manage", "rest"), 1_301).await.unwrap(),
            None
        );
    }
    assert_eq!(engine.count("SELECT COUNT(*) FROM rbac_grants").await, 0);
    store.create_cluster(cluster("plain-team-a", "ident-a2", creator.id, 1_400), None).await.unwrap();
    assert!(store.grants_for_cluster("plain-team-a").await.unwrap().is_empty(), "the new cluster inherits nothing");
}

async fn rbac_grants_are_unique_per_source_and_replaced_by_source(store: &Store, engine: &Engine) {
    let rest = grant("plain:alice", "c-1", "", "cluster-readonly", grant_source::REST);
    let added = store.add_grant(rest.clone(), 1_000).await.unwrap();
    assert!(added.id > 0);
    assert_eq!(
        (added.user_name.as_str(), added.cluster_id.as_str(), added.namespace.as_str(), added.role.as_str()),
        ("plain:alice", "c-1", "", "cluster-readonly")
    );
    assert_eq!((added.source.as_str(), added.created_at), (grant_source::REST, 1_000));
    // The same grant from the same source: refused, nothing written.
    assert_conflict(store.add_grant(rest.clone(), 1_001).await);
    assert_eq!(engine.count("SELECT COUNT(*) FROM rbac_grants").await, 1);
    // The same grant from another source, a namespaced one, one for every cluster, another cluster.
    let auth =
        store.add_grant(grant("plain:alice", "c-1", "", "cluster-readonly", "auth:common"), 1_002).await.unwrap();
    let ns =
        store.add_grant(grant("plain:alice", "c-1", "team-a", "workloads-view", "auth:common"), 1_003).await.unwrap();
    let any = store.add_grant(grant("plain:bob", "*", "", "services-view", grant_source::REST), 1_004).await.unwrap();
    let other =
        store.add_grant(grant("plain:bob", "c-2", "", "cluster-manage", grant_source::REST), 1_005).await.unwrap();
    assert_eq!(
        store.grants().await.unwrap(),
        vec![added.clone(), auth.clone(), ns.clone(), any.clone(), other.clone()]
    );
    assert_eq!(
        store.grants_for_cluster("c-1").await.unwrap(),
        vec![added.clone(), auth.clone(), ns.clone(), any.clone()],
        "its own grants and those for every cluster"
    );
    assert_eq!(store.grants_for_cluster("c-2").await.unwrap(), vec![any.clone(), other.clone()]);
    assert_eq!(store.grants_for_cluster("c-3").await.unwrap(), vec![any.clone()]);

    // Removing by id and by value.
    assert!(store.remove_grant(added.id).await.unwrap());
    assert!(!store.remove_grant(added.id).await.unwrap(), "already gone");
    assert!(store
        .remove_grant_matching(grant("plain:alice", "c-1", "team-a", "workloads-view", "auth:common"))
        .await
        .unwrap());
    assert!(!store
        .remove_grant_matching(grant("plain:alice", "c-1", "team-b", "workloads-view", "auth:common"))
        .await
        .unwrap());
    assert_eq!(store.grants().await.unwrap(), vec![auth.clone(), any.clone(), other.clone()]);

    // Replacing one source's grants leaves the others alone, and keeps what stays.
    let conf_a = grant("plain:carol", "c-1", "", "cluster-readonly", grant_source::CONF);
    let conf_b = grant("admin", "c-2", "", "cluster-manage", grant_source::CONF);
    assert_eq!(
        store.replace_grants(grant_source::CONF, vec![conf_a.clone(), conf_b.clone()], 2_000).await.unwrap(),
        (2, 0)
    );
    let before: Vec<_> = store.grants().await.unwrap().into_iter().filter(|g| g.source == grant_source::CONF).collect();
    assert_eq!(before.len(), 2);
    let conf_c = grant("plain:dave", "c-1", "", "services-view", grant_source::CONF);
    assert_eq!(store.replace_grants(grant_source::CONF, vec![conf_a.clone(), conf_c], 3_000).await.unwrap(), (1, 1));
    let after: Vec<_> = store.grants().await.unwrap().into_iter().filter(|g| g.source == grant_source::CONF).collect();
    let carol =
        |grants: &[bcs_admin::store::model::Grant]| grants.iter().find(|g| g.user_name == "plain:carol").cloned();
    assert_eq!(carol(&after), carol(&before), "an unchanged grant keeps its id and time");
    let dave = after.iter().find(|g| g.user_name == "plain:dave").expect("added");
    assert_eq!(dave.created_at, 3_000);
    assert!(!after.iter().any(|g| g.user_name == "admin"), "removed");
    assert_eq!(store.replace_grants(grant_source::CONF, vec![], 4_000).await.unwrap(), (0, 2));
    assert_eq!(store.grants().await.unwrap(), vec![auth, any, other]);
    assert_eq!(engine.count("SELECT COUNT(*) FROM rbac_grants").await, 3);
}

/// On MySQL each DDL statement commits by itself: a start cut off between a migration's
/// statements leaves the first applied and the migration unrecorded. The next start finishes it.
#[tokio::test(flavor = "multi_thread")]
async fn mysql_a_migration_cut_off_midway_is_finished_at_the_next_start() {
    let engine = Engine::mysql();
    let Kind::Mysql(db) = &engine.kind else { unreachable!("a MySQL engine") };
    drop(engine.open().await);
    // Migration 3 as a crash after its ALTER would leave it: the column there, no index, not recorded.
    db.query_strings("DELETE FROM schema_migrations WHERE version = 3").await;
    db.query_strings("DROP INDEX register_tokens_token_digest ON register_tokens").await;
    let store = engine.open().await;
    assert_eq!(engine.count("SELECT COUNT(*) FROM schema_migrations WHERE version = 3").await, 1);
    let index = "SELECT COUNT(*) FROM information_schema.statistics WHERE table_schema = DATABASE() \
                 AND index_name = 'register_tokens_token_digest'";
    assert_eq!(engine.count(index).await, 1, "the migration's index was made");
    store.ping().await.unwrap();
}

/// A rotation in flight while a report checked against the old token is written (MySQL reads
/// a snapshot unless the read locks): the write waits for the rotation and then stores nothing.
#[tokio::test(flavor = "multi_thread")]
async fn mysql_a_report_written_during_a_rotation_waits_for_it_and_stores_nothing() {
    use mysql_async::prelude::Queryable;
    let engine = Engine::mysql();
    let Kind::Mysql(db) = &engine.kind else { unreachable!("a MySQL engine") };
    let store = std::sync::Arc::new(engine.open().await);
    let creator = store.create_user("creator", false, 1_000).await.unwrap();
    store.create_cluster(cluster("BCS-K8S-00001", "ident-1", creator.id, 1_000), None).await.unwrap();
    store
        .create_register_token("BCS-K8S-00001", &ident(&store, "BCS-K8S-00001").await, "rt-1".into(), 1_100)
        .await
        .unwrap()
        .expect("the cluster is there");

    // A rotation's write, not yet committed (what rotate_register_token runs).
    let mut rotation = db.connect().await;
    rotation.query_drop("BEGIN").await.unwrap();
    rotation
        .query_drop(
            "UPDATE register_tokens SET token_sealed = 'rt-2', token_digest = NULL, created_at = 1300 \
             WHERE cluster_id = 'BCS-K8S-00001'",
        )
        .await
        .unwrap();

    let writer = std::sync::Arc::clone(&store);
    let write = tokio::spawn(async move {
        writer
            .upsert_credentials(credentials("BCS-K8S-00001", "https://10.0.0.1:6443", "sealed-a", 1), "rt-1", 1_200)
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!write.is_finished(), "the write waits for the rotation's lock");

    rotation.query_drop("COMMIT").await.unwrap();
    assert_eq!(write.await.unwrap().unwrap(), None, "checked against a token replaced meanwhile");
    assert_eq!(store.credentials("BCS-K8S-00001").await.unwrap(), None);
    drop(rotation);
}
