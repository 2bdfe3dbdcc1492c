//! The store: users, tokens, clusters, register tokens and cluster credentials.
//!
//! One set of queries ([`queries`]) runs on two engines behind [`backend::Backend`]: embedded
//! SQLite (the default) and MySQL/MariaDB through mysql_async. Every operation is one
//! transaction, so a write that touches several rows lands whole or not at all. Secrets reach
//! the store already digested (user tokens) or sealed (register tokens, cluster tokens): the
//! store never sees a usable token.
pub mod backend;
pub mod dsn;
mod migrations;
pub mod model;
mod mysql;
mod queries;
mod sqlite;

use std::path::Path;
use std::time::Duration;

pub use backend::StoreError;
pub use dsn::Dsn;
pub use queries::Store;

/// How long one store operation may take before it counts as "store unavailable".
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens the store the DSN names and brings its schema up to date.
pub async fn open(dsn: &Dsn, data_dir: &Path) -> Result<Store, StoreError> {
    let backend: Box<dyn backend::Backend> = match dsn {
        Dsn::Sqlite(path) => {
            let path = if path.is_absolute() {
                path.clone()
            } else if path.as_os_str().is_empty() {
                data_dir.join("bcs-api.db")
            } else {
                path.clone()
            };
            Box::new(sqlite::SqliteBackend::open(&path)?)
        }
        Dsn::Mysql(mysql) => Box::new(mysql::MysqlBackend::connect(mysql).await?),
    };
    migrations::apply(backend.as_ref()).await?;
    Ok(Store::new(backend))
}
