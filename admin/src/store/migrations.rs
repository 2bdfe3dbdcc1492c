//! Versioned schema migrations, applied in order at start. Each version is recorded in
//! `schema_migrations`; a version already recorded is never applied again. Times are Unix
//! seconds in both engines. Secrets are stored only as digests (`user_tokens.digest`) or sealed
//! with the key file (`*_sealed` columns).
use std::time::Duration;

use super::backend::{Backend, Dialect, StoreError};

struct Migration {
    version: i64,
    sqlite: &'static [&'static str],
    mysql: &'static [&'static str],
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sqlite: &[
            "CREATE TABLE users (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE,
            is_super_user INTEGER NOT NULL DEFAULT 0,
            created_at INTEGER NOT NULL)",
            "CREATE TABLE user_tokens (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id INTEGER NOT NULL REFERENCES users(id),
            type INTEGER NOT NULL,
            digest TEXT NOT NULL UNIQUE,
            expires_at INTEGER NOT NULL,
            revoked_at INTEGER,
            created_at INTEGER NOT NULL)",
            "CREATE INDEX user_tokens_user_id ON user_tokens(user_id)",
            "CREATE TABLE clusters (
            id TEXT PRIMARY KEY,
            provider INTEGER NOT NULL,
            cluster_type INTEGER NOT NULL,
            creator_id INTEGER NOT NULL,
            identifier TEXT NOT NULL UNIQUE,
            created_at INTEGER NOT NULL)",
            "CREATE TABLE bcs_cluster_infos (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            cluster_id TEXT NOT NULL UNIQUE REFERENCES clusters(id),
            source_project_id TEXT NOT NULL,
            source_cluster_id TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            UNIQUE (source_project_id, source_cluster_id))",
            "CREATE TABLE register_tokens (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            cluster_id TEXT NOT NULL UNIQUE REFERENCES clusters(id),
            token_sealed TEXT NOT NULL,
            created_at INTEGER NOT NULL)",
            "CREATE TABLE cluster_credentials (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            cluster_id TEXT NOT NULL UNIQUE REFERENCES clusters(id),
            server_addresses TEXT NOT NULL,
            ca_cert_data TEXT NOT NULL,
            user_token_sealed TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            version INTEGER NOT NULL,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL)",
        ],
        mysql: &[
            "CREATE TABLE users (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            name VARCHAR(255) NOT NULL UNIQUE,
            is_super_user TINYINT NOT NULL DEFAULT 0,
            created_at BIGINT NOT NULL
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            "CREATE TABLE user_tokens (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            user_id BIGINT NOT NULL,
            type INT NOT NULL,
            digest CHAR(64) NOT NULL UNIQUE,
            expires_at BIGINT NOT NULL,
            revoked_at BIGINT NULL,
            created_at BIGINT NOT NULL,
            KEY user_tokens_user_id (user_id),
            FOREIGN KEY (user_id) REFERENCES users(id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            "CREATE TABLE clusters (
            id VARCHAR(191) NOT NULL PRIMARY KEY,
            provider INT NOT NULL,
            cluster_type INT NOT NULL,
            creator_id BIGINT NOT NULL,
            identifier VARCHAR(191) NOT NULL UNIQUE,
            created_at BIGINT NOT NULL
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            "CREATE TABLE bcs_cluster_infos (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            cluster_id VARCHAR(191) NOT NULL UNIQUE,
            source_project_id VARCHAR(64) NOT NULL,
            source_cluster_id VARCHAR(100) NOT NULL,
            created_at BIGINT NOT NULL,
            UNIQUE KEY idx_source_cluster_project (source_project_id, source_cluster_id),
            FOREIGN KEY (cluster_id) REFERENCES clusters(id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            "CREATE TABLE register_tokens (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            cluster_id VARCHAR(191) NOT NULL UNIQUE,
            token_sealed TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            FOREIGN KEY (cluster_id) REFERENCES clusters(id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            "CREATE TABLE cluster_credentials (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            cluster_id VARCHAR(191) NOT NULL UNIQUE,
            server_addresses TEXT NOT NULL,
            ca_cert_data MEDIUMTEXT NOT NULL,
            user_token_sealed TEXT NOT NULL,
            fingerprint CHAR(64) NOT NULL,
            version BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            FOREIGN KEY (cluster_id) REFERENCES clusters(id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
        ],
    },
    Migration {
        // RBAC grants (issue 7): `user_name` has role `role` (a template name, without `bke-`) in
        // cluster `cluster_id` (`*`: every cluster), in `namespace` ('': the cluster scope). `source`
        // is `conf`, `rest` or `auth:<from>`; one grant per source, so removing one source's grant
        // leaves another source's.
        version: 2,
        sqlite: &[
            "CREATE TABLE rbac_grants (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_name TEXT NOT NULL,
            cluster_id TEXT NOT NULL,
            namespace TEXT NOT NULL DEFAULT '',
            role TEXT NOT NULL,
            source TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            UNIQUE (user_name, cluster_id, namespace, role, source))",
            "CREATE INDEX rbac_grants_cluster_id ON rbac_grants(cluster_id)",
        ],
        mysql: &["CREATE TABLE rbac_grants (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            user_name VARCHAR(255) NOT NULL,
            cluster_id VARCHAR(191) NOT NULL,
            namespace VARCHAR(63) NOT NULL DEFAULT '',
            role VARCHAR(32) NOT NULL,
            source VARCHAR(32) NOT NULL,
            created_at BIGINT NOT NULL,
            UNIQUE KEY rbac_grants_unique (user_name, cluster_id, namespace, role, source),
            KEY rbac_grants_cluster_id (cluster_id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"],
    },
    Migration {
        // The SHA-256 digest of each register token beside its sealed value (issue 4), so a
        // report that presents another cluster's token is recognised (403). NULL for tokens
        // created before this version until their next accepted report.
        version: 3,
        sqlite: &[
            "ALTER TABLE register_tokens ADD COLUMN token_digest TEXT",
            "CREATE UNIQUE INDEX register_tokens_token_digest ON register_tokens(token_digest)",
        ],
        mysql: &[
            "ALTER TABLE register_tokens ADD COLUMN token_digest CHAR(64) NULL",
            "CREATE UNIQUE INDEX register_tokens_token_digest ON register_tokens (token_digest)",
        ],
    },
    Migration {
        // The ids of deleted clusters (issue 7's RBAC sync): bindings a cluster id made in a
        // cluster later registered under another id are that id's to remove once the first is
        // deleted here, and only then (an id this store never knew may be another deployment's).
        version: 4,
        sqlite: &["CREATE TABLE deleted_clusters (id TEXT PRIMARY KEY)"],
        mysql: &["CREATE TABLE deleted_clusters (
            id VARCHAR(191) NOT NULL PRIMARY KEY
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"],
    },
];

/// Brings the schema up to the newest version.
pub async fn apply(backend: &dyn Backend) -> Result<(), StoreError> {
    let mut tx = backend.begin().await?;
    tx.exec(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version BIGINT NOT NULL PRIMARY KEY, applied_at BIGINT NOT NULL)",
        vec![],
    )
    .await?;
    tx.commit().await?;

    for migration in MIGRATIONS {
        if is_applied(backend, migration.version).await? {
            continue;
        }
        match run(backend, migration).await {
            Ok(()) => tracing::info!(version = migration.version, "applied schema migration"),
            Err(e) if backend.dialect() == Dialect::Sqlite => return Err(e),
            Err(e) => {
                // On MySQL each DDL statement commits by itself, so two instances starting on a
                // fresh database at once both run the first migration, and the second fails on
                // a table the first created. Wait for the other to record it.
                let deadline = tokio::time::Instant::now() + ANOTHER_INSTANCE;
                loop {
                    if is_applied(backend, migration.version).await? {
                        tracing::info!(version = migration.version, "schema migration applied by another instance");
                        break;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(StoreError::Internal(format!(
                            "schema migration {} failed ({e}) and no other instance applied it within \
                             {ANOTHER_INSTANCE:?}; on MySQL a migration cut off midway leaves its first \
                             statements applied: drop what it created, or record it in schema_migrations",
                            migration.version
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    Ok(())
}

/// How long an instance whose migration failed waits for another to have applied it.
const ANOTHER_INSTANCE: Duration = Duration::from_secs(30);

async fn is_applied(backend: &dyn Backend, version: i64) -> Result<bool, StoreError> {
    let mut tx = backend.begin().await?;
    let rows = tx.query("SELECT version FROM schema_migrations WHERE version = ?", vec![version.into()]).await?;
    tx.commit().await?;
    Ok(!rows.is_empty())
}

async fn run(backend: &dyn Backend, migration: &Migration) -> Result<(), StoreError> {
    let mut tx = backend.begin().await?;
    let statements = match backend.dialect() {
        Dialect::Sqlite => migration.sqlite,
        Dialect::Mysql => migration.mysql,
    };
    for statement in statements {
        match tx.exec(statement, vec![]).await {
            Ok(_) => {}
            // MySQL commits each DDL statement by itself: a run cut off midway (a crash, a
            // lost connection) left this one applied. What is there is what it makes.
            Err(StoreError::InSchema(what)) => {
                tracing::warn!(version = migration.version, %what, "a schema migration's statement was already applied; going on");
            }
            Err(e) => return Err(e),
        }
    }
    tx.exec(
        "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
        vec![migration.version.into(), chrono::Utc::now().timestamp().into()],
    )
    .await?;
    tx.commit().await
}
