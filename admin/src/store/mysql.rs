//! The production engine: MySQL or MariaDB through a mysql_async connection pool.
use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{Opts, OptsBuilder, Params, Pool, PoolConstraints, PoolOpts, TxOpts};

use super::backend::{Backend, Dialect, Executed, Row, StoreError, Tx, Value};
use super::dsn::MysqlDsn;

/// MySQL's "duplicate entry" error.
const ER_DUP_ENTRY: u16 = 1062;
const ER_TABLE_EXISTS: u16 = 1050;
const ER_DUP_FIELDNAME: u16 = 1060;
const ER_DUP_KEYNAME: u16 = 1061;
/// A row still referenced, or a reference to a missing row (foreign keys): a conflict, as on
/// SQLite.
const ER_ROW_IS_REFERENCED_2: u16 = 1451;
const ER_NO_REFERENCED_ROW_2: u16 = 1452;
/// InnoDB chose this transaction as a deadlock's victim, or a lock wait ran out: the write did
/// not happen and may be tried again (503, not 500). Two concurrent rotations of a cluster
/// without a register token can meet this way (gap locks).
const ER_LOCK_DEADLOCK: u16 = 1213;
const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;

pub struct MysqlBackend {
    pool: Pool,
    description: String,
}

impl MysqlBackend {
    /// Creates the database if it is missing (and the user may), then opens the pool.
    pub async fn connect(dsn: &MysqlDsn) -> Result<Self, StoreError> {
        let server = builder(dsn);
        let mut conn = mysql_async::Conn::new(server).await.map_err(map_err)?;
        let create =
            format!("CREATE DATABASE IF NOT EXISTS `{}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin", dsn.database);
        if let Err(e) = conn.query_drop(create).await {
            // Without the CREATE privilege the database must already exist; opening it tells.
            tracing::info!(error = %e, "could not create the database; assuming it exists");
        }
        conn.disconnect().await.map_err(map_err)?;

        let constraints = PoolConstraints::new(0, 20).expect("0 <= 20");
        let pool_opts = PoolOpts::default()
            .with_constraints(constraints)
            .with_abs_conn_ttl(Some(std::time::Duration::from_secs(60)));
        let opts = builder(dsn).db_name(Some(dsn.database.clone())).pool_opts(pool_opts);
        let pool = Pool::new(Opts::from(opts));
        Ok(MysqlBackend { pool, description: format!("mysql {}@{}:{}", dsn.database, dsn.host, dsn.port) })
    }
}

fn builder(dsn: &MysqlDsn) -> OptsBuilder {
    OptsBuilder::default()
        .ip_or_hostname(dsn.host.clone())
        .tcp_port(dsn.port)
        .user(Some(dsn.user.clone()))
        .pass(Some(dsn.password.expose().to_owned()))
        // Always the address the DSN names: never switch to a local socket behind its back.
        .prefer_socket(false)
}

#[async_trait]
impl Backend for MysqlBackend {
    async fn begin(&self) -> Result<Box<dyn Tx>, StoreError> {
        let tx = self.pool.start_transaction(TxOpts::default()).await.map_err(map_err)?;
        Ok(Box::new(MysqlTx { tx }))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.get_conn().await.map_err(map_err)?;
        conn.query_drop("SELECT 1").await.map_err(map_err)
    }

    fn dialect(&self) -> Dialect {
        Dialect::Mysql
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}

/// Dropped without `commit`, mysql_async rolls the transaction back.
struct MysqlTx {
    tx: mysql_async::Transaction<'static>,
}

#[async_trait]
impl Tx for MysqlTx {
    async fn exec(&mut self, sql: &str, params: Vec<Value>) -> Result<Executed, StoreError> {
        tracing::trace!(sql, params = params.len(), "exec");
        self.tx.exec_drop(sql, to_params(params)).await.map_err(map_err)?;
        Ok(Executed { affected: self.tx.affected_rows(), last_insert_id: self.tx.last_insert_id().unwrap_or(0) as i64 })
    }

    async fn query(&mut self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>, StoreError> {
        tracing::trace!(sql, params = params.len(), "query");
        let rows: Vec<mysql_async::Row> = self.tx.exec(sql, to_params(params)).await.map_err(map_err)?;
        rows.into_iter()
            .map(|row| row.unwrap().into_iter().map(from_mysql).collect())
            .map(|values: Result<Vec<Value>, StoreError>| values.map(Row))
            .collect()
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.commit().await.map_err(map_err)
    }
}

fn to_params(params: Vec<Value>) -> Params {
    if params.is_empty() {
        return Params::Empty;
    }
    Params::Positional(
        params
            .into_iter()
            .map(|v| match v {
                Value::Null => mysql_async::Value::NULL,
                Value::Int(i) => mysql_async::Value::Int(i),
                Value::Text(t) => mysql_async::Value::Bytes(t.into_bytes()),
            })
            .collect(),
    )
}

fn from_mysql(value: mysql_async::Value) -> Result<Value, StoreError> {
    Ok(match value {
        mysql_async::Value::NULL => Value::Null,
        mysql_async::Value::Int(i) => Value::Int(i),
        mysql_async::Value::UInt(u) => {
            Value::Int(i64::try_from(u).map_err(|_| StoreError::Internal("integer out of range".into()))?)
        }
        mysql_async::Value::Bytes(b) => {
            Value::Text(String::from_utf8(b).map_err(|_| StoreError::Internal("column is not UTF-8".into()))?)
        }
        other => Value::Text(other.as_sql(true)),
    })
}

fn map_err(e: mysql_async::Error) -> StoreError {
    match &e {
        mysql_async::Error::Server(s)
            if matches!(s.code, ER_DUP_ENTRY | ER_ROW_IS_REFERENCED_2 | ER_NO_REFERENCED_ROW_2) =>
        {
            StoreError::Conflict(s.message.clone())
        }
        mysql_async::Error::Server(s) if matches!(s.code, ER_LOCK_DEADLOCK | ER_LOCK_WAIT_TIMEOUT) => {
            StoreError::Unavailable(format!("{} ({}): the write did not happen; try again", s.message, s.code))
        }
        mysql_async::Error::Server(s) if matches!(s.code, ER_TABLE_EXISTS | ER_DUP_FIELDNAME | ER_DUP_KEYNAME) => {
            StoreError::InSchema(format!("{} ({})", s.message, s.code))
        }
        mysql_async::Error::Server(s) => StoreError::Internal(format!("{} ({})", s.message, s.code)),
        mysql_async::Error::Io(_) | mysql_async::Error::Driver(_) => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Internal(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: u16) -> mysql_async::Error {
        mysql_async::Error::Server(mysql_async::ServerError { code, message: "m".into(), state: "40001".into() })
    }

    #[test]
    fn a_deadlock_or_lock_timeout_may_be_retried_and_a_duplicate_is_a_conflict() {
        assert!(matches!(map_err(server(ER_LOCK_DEADLOCK)), StoreError::Unavailable(_)));
        assert!(matches!(map_err(server(ER_LOCK_WAIT_TIMEOUT)), StoreError::Unavailable(_)));
        assert!(matches!(map_err(server(ER_DUP_ENTRY)), StoreError::Conflict(_)));
        for code in [ER_TABLE_EXISTS, ER_DUP_FIELDNAME, ER_DUP_KEYNAME] {
            assert!(matches!(map_err(server(code)), StoreError::InSchema(_)), "{code}");
        }
        assert!(matches!(map_err(server(1064)), StoreError::Internal(_)));
    }
}
