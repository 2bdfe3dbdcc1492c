//! `core_database.dsn`: which engine, and where.
//!
//! - empty: embedded SQLite at `<storage.data_dir>/bcs-api.db`
//! - `sqlite://path`: embedded SQLite at that path
//! - `user:pass@tcp(host:port)/db?params` (the Go driver's format the original used)
//! - `mysql://user:pass@host:port/db?params`
//!
//! Parameters after `?` are accepted and ignored: the connection always uses utf8mb4 and the
//! store keeps times as Unix seconds, so `charset`, `parseTime` and `loc` have nothing to do.
use std::path::PathBuf;

use bcs_shared::secret::Secret;

#[derive(Debug, Clone, PartialEq)]
pub enum Dsn {
    /// An empty path means the default file under the data directory.
    Sqlite(PathBuf),
    Mysql(MysqlDsn),
}

#[derive(Debug, Clone, PartialEq)]
pub struct MysqlDsn {
    pub user: String,
    pub password: Secret,
    pub host: String,
    pub port: u16,
    pub database: String,
}

impl Dsn {
    /// Parses a DSN. Errors never contain the password.
    pub fn parse(dsn: &str) -> Result<Dsn, String> {
        let dsn = dsn.trim();
        if dsn.is_empty() {
            return Ok(Dsn::Sqlite(PathBuf::new()));
        }
        if let Some(path) = dsn.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err("sqlite:// needs a file path".into());
            }
            return Ok(Dsn::Sqlite(PathBuf::from(path)));
        }
        if let Some(rest) = dsn.strip_prefix("mysql://") {
            return parse_url(rest).map(Dsn::Mysql);
        }
        if dsn.contains("://") {
            return Err("unsupported scheme: use mysql://, sqlite://, or a Go-style MySQL DSN".into());
        }
        parse_go(dsn).map(Dsn::Mysql)
    }
}

/// `[user[:password]@][tcp[(host[:port])]]/dbname[?params]`; like the Go driver, the password
/// may contain `@` and `:` (the last `@` before the last `/` ends it).
fn parse_go(dsn: &str) -> Result<MysqlDsn, String> {
    let slash = dsn.rfind('/').ok_or("a MySQL DSN needs /<database>, as in user:pass@tcp(host:3306)/bke_core")?;
    let (head, tail) = (&dsn[..slash], &dsn[slash + 1..]);
    let database = tail.split('?').next().unwrap_or_default();
    let (credentials, net) = match head.rfind('@') {
        Some(at) => (&head[..at], &head[at + 1..]),
        None => ("", head),
    };
    let (user, password) = match credentials.split_once(':') {
        Some((u, p)) => (u, p),
        None => (credentials, ""),
    };
    let address = match net {
        "" | "tcp" => "127.0.0.1:3306",
        _ => net
            .strip_prefix("tcp(")
            .and_then(|a| a.strip_suffix(')'))
            .ok_or("only the tcp(host:port) network is supported")?,
    };
    let (host, port) = split_host_port(address)?;
    finish(user, password, host, port, database)
}

/// `mysql://[user[:password]@]host[:port]/dbname[?params]`. The credentials end at the last `@`
/// that a `/` follows (one in the query does not count), so a password with an unencoded `/` or
/// `@` still never reaches an error message.
fn parse_url(rest: &str) -> Result<MysqlDsn, String> {
    let at = rest.rmatch_indices('@').map(|(at, _)| at).find(|&at| rest[at + 1..].contains('/'));
    let (credentials, located) = match at {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => ("", rest),
    };
    let (address, path) = located.split_once('/').ok_or("mysql:// URL needs /<database>")?;
    let database = path.split('?').next().unwrap_or_default();
    let (user, password) = match credentials.split_once(':') {
        Some((u, p)) => (u, p),
        None => (credentials, ""),
    };
    let (host, port) = split_host_port(address)?;
    let user = percent_decode(user)?;
    let password = percent_decode(password)?;
    finish(&user, &password, host, port, database)
}

fn finish(user: &str, password: &str, host: &str, port: u16, db: &str) -> Result<MysqlDsn, String> {
    if user.is_empty() {
        return Err("the DSN names no user".into());
    }
    if db.is_empty() || !db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
        return Err(format!("database name {db:?} must be letters, digits, _ or $"));
    }
    Ok(MysqlDsn {
        user: user.to_owned(),
        password: Secret::new(password),
        host: host.to_owned(),
        port,
        database: db.to_owned(),
    })
}

fn split_host_port(address: &str) -> Result<(&str, u16), String> {
    let (host, port) = if let Some(v6) = address.strip_prefix('[') {
        let (host, rest) = v6.split_once(']').ok_or("unclosed [ in the address")?;
        (host, rest.strip_prefix(':'))
    } else {
        match address.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (address, None),
        }
    };
    if host.is_empty() {
        return Err("the DSN names no host".into());
    }
    let port = match port {
        None | Some("") => 3306,
        Some(p) => p.parse().ok().filter(|p| *p != 0).ok_or_else(|| format!("port {p:?} is not a port number"))?,
    };
    Ok((host, port))
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or("bad %-escape in the URL")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "bad %-escape in the URL")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the URL's credentials are not UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mysql(dsn: &str) -> MysqlDsn {
        match Dsn::parse(dsn).unwrap() {
            Dsn::Mysql(m) => m,
            other => panic!("expected mysql, got {other:?}"),
        }
    }

    #[test]
    fn the_seed_dsn_parses() {
        let m = mysql("root:xx@tcp(x.x.x.x:3306)/bke_core?charset=utf8mb4&parseTime=True&loc=Local");
        assert_eq!(m.user, "root");
        assert_eq!(m.password.expose(), "xx");
        assert_eq!(m.host, "x.x.x.x");
        assert_eq!(m.port, 3306);
        assert_eq!(m.database, "bke_core");
    }

    #[test]
    fn go_style_variants() {
        let m = mysql("bcs:p@ss:w0rd@tcp(127.0.0.1:3307)/db1");
        assert_eq!(m.password.expose(), "p@ss:w0rd");
        assert_eq!(m.port, 3307);
        let m = mysql("root@tcp(localhost)/db");
        assert_eq!((m.host.as_str(), m.port), ("localhost", 3306));
        assert_eq!(m.password.expose(), "");
        let m = mysql("root:@/db");
        assert_eq!(m.host, "127.0.0.1");
        let m = mysql("u:p@tcp([::1]:3306)/db");
        assert_eq!(m.host, "::1");
    }

    #[test]
    fn urls_and_sqlite() {
        let m = mysql("mysql://u:p@db/bke?x=a@b");
        assert_eq!((m.user.as_str(), m.password.expose(), m.host.as_str()), ("u", "p", "db"));
        let m = mysql("mysql://root:top/sec@ret@db:3306/bke");
        assert_eq!((m.password.expose(), m.host.as_str(), m.database.as_str()), ("top/sec@ret", "db", "bke"));
        let m = mysql("mysql://bcs:p%40ss@db.example:3310/bke_core?charset=utf8mb4");
        assert_eq!(m.password.expose(), "p@ss");
        assert_eq!((m.host.as_str(), m.port), ("db.example", 3310));
        assert_eq!(Dsn::parse("").unwrap(), Dsn::Sqlite(PathBuf::new()));
        assert_eq!(
            Dsn::parse("sqlite:///var/lib/bcs/api.db").unwrap(),
            Dsn::Sqlite(PathBuf::from("/var/lib/bcs/api.db"))
        );
    }

    #[test]
    fn bad_dsns_are_refused_without_showing_the_password() {
        for bad in [
            "root:topsecret@tcp(h:3306)",
            "root:topsecret@unix(/tmp/s)/db",
            "root:topsecret@tcp(h:99999)/db",
            "root:topsecret@tcp(h:3306)/bad-name",
            ":topsecret@tcp(h:3306)/db",
            "postgres://u:topsecret@h/db",
            "mysql://root:top/secret@db:99999/bke",
            "mysql://root:top@secret@db/bad-name",
            "sqlite://",
        ] {
            let e = Dsn::parse(bad).expect_err(bad);
            assert!(!e.contains("topsecret") && !e.contains("top") && !e.contains("secret"), "{bad}: {e}");
        }
        assert!(!format!("{:?}", mysql("u:topsecret@tcp(h:1)/d")).contains("topsecret"));
    }
}
