//! The embedded engine: one SQLite file in WAL mode, one connection behind an async mutex.
//!
//! The control plane's write rate is low (a few writes per user action), so a single
//! connection is enough and makes every transaction serial. Statements run on the calling
//! task; on a multi-threaded runtime they run inside `block_in_place` so a slow disk never
//! stalls other tasks.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::types::{ToSqlOutput, ValueRef};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::backend::{Backend, Dialect, Executed, Row, StoreError, Tx, Value};

pub struct SqliteBackend {
    path: PathBuf,
    conn: Arc<Mutex<rusqlite::Connection>>,
}

impl SqliteBackend {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
        }
        let conn = rusqlite::Connection::open(path)
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
        )
        .map_err(map_err)?;
        Ok(SqliteBackend { path: path.to_owned(), conn: Arc::new(Mutex::new(conn)) })
    }
}

#[async_trait]
impl Backend for SqliteBackend {
    async fn begin(&self) -> Result<Box<dyn Tx>, StoreError> {
        let conn = self.conn.clone().lock_owned().await;
        blocking(|| conn.execute_batch("BEGIN IMMEDIATE")).map_err(map_err)?;
        Ok(Box::new(SqliteTx { conn, done: false }))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let conn = self.conn.lock().await;
        blocking(|| conn.query_row("SELECT count(*) FROM schema_migrations", [], |_| Ok(()))).map_err(map_err)
    }

    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn describe(&self) -> String {
        format!("sqlite {}", self.path.display())
    }
}

struct SqliteTx {
    conn: OwnedMutexGuard<rusqlite::Connection>,
    done: bool,
}

#[async_trait]
impl Tx for SqliteTx {
    async fn exec(&mut self, sql: &str, params: Vec<Value>) -> Result<Executed, StoreError> {
        tracing::trace!(sql, params = params.len(), "exec");
        let conn = &*self.conn;
        blocking(|| {
            let mut stmt = conn.prepare_cached(sql)?;
            let affected = stmt.execute(rusqlite::params_from_iter(params.iter()))?;
            Ok(Executed { affected: affected as u64, last_insert_id: conn.last_insert_rowid() })
        })
        .map_err(map_err)
    }

    async fn query(&mut self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>, StoreError> {
        tracing::trace!(sql, params = params.len(), "query");
        let conn = &*self.conn;
        blocking(|| {
            let mut stmt = conn.prepare_cached(sql)?;
            let width = stmt.column_count();
            let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let mut values = Vec::with_capacity(width);
                for i in 0..width {
                    values.push(match row.get_ref(i)? {
                        ValueRef::Null => Value::Null,
                        ValueRef::Integer(v) => Value::Int(v),
                        ValueRef::Real(v) => Value::Text(v.to_string()),
                        ValueRef::Text(t) | ValueRef::Blob(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                    });
                }
                out.push(Row(values));
            }
            Ok(out)
        })
        .map_err(map_err)
    }

    async fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        let conn = &*self.conn;
        blocking(|| conn.execute_batch("COMMIT")).map_err(map_err)?;
        self.done = true;
        Ok(())
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if !self.done {
            // Nothing of an unfinished transaction may remain.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Owned(rusqlite::types::Value::Null),
            Value::Int(v) => ToSqlOutput::Owned(rusqlite::types::Value::Integer(*v)),
            Value::Text(t) => ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes())),
        })
    }
}

/// Runs blocking SQLite work without stalling a multi-threaded runtime's other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn map_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation) => StoreError::Conflict(e.to_string()),
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::CannotOpen
            | ErrorCode::ReadOnly
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::PermissionDenied,
        ) => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Internal(e.to_string()),
    }
}
