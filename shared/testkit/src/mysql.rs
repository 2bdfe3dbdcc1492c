//! A fresh database on the real MariaDB/MySQL for one test, dropped when the guard goes.
//!
//! The server is `BCS_TEST_MYSQL` (a `mysql://user:pass@host:port` URL), by default
//! `mysql://root@127.0.0.1:3306`, the MariaDB that `.ci/run` starts.
use mysql_async::prelude::Queryable;

pub struct MysqlDatabase {
    pub user: String,
    pub password: String,
    pub host: String,
    pub port: u16,
    pub name: String,
}

impl MysqlDatabase {
    /// A database name that no other test uses: `<prefix>_<pid>_<random>`. It is not created:
    /// bcs-api creates it, as it would in production.
    pub fn fresh(prefix: &str) -> MysqlDatabase {
        let server = std::env::var("BCS_TEST_MYSQL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
        let rest = server.strip_prefix("mysql://").expect("BCS_TEST_MYSQL is a mysql:// URL");
        let (credentials, address) = rest.rsplit_once('@').unwrap_or(("root", rest));
        let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
        let (host, port) = address.trim_end_matches('/').rsplit_once(':').unwrap_or((address, "3306"));
        MysqlDatabase {
            user: user.into(),
            password: password.into(),
            host: host.into(),
            port: port.parse().expect("port"),
            name: format!("{prefix}_{}_{}", std::process::id(), rand::random::<u32>()),
        }
    }

    /// The Go-style DSN of the original's config, pointing at this database.
    pub fn go_dsn(&self) -> String {
        self.go_dsn_via(&self.host, self.port)
    }

    /// The same DSN through another address (a [`crate::forward::Forwarder`]).
    pub fn go_dsn_via(&self, host: &str, port: u16) -> String {
        format!(
            "{}:{}@tcp({host}:{port})/{}?charset=utf8mb4&parseTime=True&loc=Local",
            self.user, self.password, self.name
        )
    }

    pub fn server_address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn opts(&self) -> mysql_async::OptsBuilder {
        mysql_async::OptsBuilder::default()
            .ip_or_hostname(self.host.clone())
            .tcp_port(self.port)
            .user(Some(self.user.clone()))
            .pass(Some(self.password.clone()))
            .prefer_socket(false)
    }

    /// A connection of its own to this database (to hold a transaction open beside the store).
    pub async fn connect(&self) -> mysql_async::Conn {
        let opts = self.opts().db_name(Some(self.name.clone()));
        mysql_async::Conn::new(opts).await.expect("connect to MariaDB")
    }

    /// Runs one query in this database and returns the first column of every row as text.
    pub async fn query_strings(&self, sql: &str) -> Vec<String> {
        let mut conn = self.connect().await;
        let rows: Vec<mysql_async::Row> = conn.query(sql).await.expect("query");
        let out = rows
            .into_iter()
            .map(|mut r| match r.take::<mysql_async::Value, _>(0).unwrap_or(mysql_async::Value::NULL) {
                mysql_async::Value::Bytes(b) => String::from_utf8_lossy(&b).into_owned(),
                mysql_async::Value::NULL => String::new(),
                other => other.as_sql(true),
            })
            .collect();
        let _ = conn.disconnect().await;
        out
    }

    async fn drop_database(opts: mysql_async::OptsBuilder, name: String) {
        if let Ok(mut conn) = mysql_async::Conn::new(opts).await {
            let _ = conn.query_drop(format!("DROP DATABASE IF EXISTS `{name}`")).await;
            let _ = conn.disconnect().await;
        }
    }
}

impl Drop for MysqlDatabase {
    fn drop(&mut self) {
        let opts = self.opts();
        let name = self.name.clone();
        // Drop may run inside a runtime: do the work on a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(MysqlDatabase::drop_database(opts, name));
        })
        .join();
    }
}
