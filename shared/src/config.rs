//! The configuration file, `bcs-api.yaml`.
//!
//! The format is the original's documented sample (every section of it loads as written, empty
//! values included) plus the new sections `admin_config`, `proxy_config` and `storage`
//! (DESIGN §2). `deploy/bcs-api.yaml` documents every key.
//!
//! Loading is strict: an unknown key, a wrong type or an invalid value is an error that names
//! the key (and, for parse errors, the line), so a typo never silently falls back to a default.
//! An empty value (`key:` or `key: ""`) means "not set".
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {key}: {message}")]
    Invalid { path: PathBuf, key: &'static str, message: String },
}

/// The whole file. Section names are the original's, so its sample loads unchanged.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `ieod` or `ee`: which PaaS access_token check would be used; kept for compatibility.
    pub edition: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub service_config: ServiceConfig,
    #[serde(deserialize_with = "nullable")]
    pub metric_config: MetricConfig,
    #[serde(deserialize_with = "nullable")]
    pub zk_config: ZkConfig,
    #[serde(deserialize_with = "nullable")]
    pub cert_config: CertConfig,
    /// Accepted and ignored (the license server was removed from the original in 2020).
    #[serde(deserialize_with = "nullable")]
    pub license_server_config: LicenseServerConfig,
    #[serde(deserialize_with = "nullable")]
    pub log_config: LogConfig,
    #[serde(deserialize_with = "nullable")]
    pub process_config: ProcessConfig,
    #[serde(deserialize_with = "nullable")]
    pub local_config: LocalConfig,
    #[serde(deserialize_with = "nullable")]
    pub bkiam_auth: BkiamAuth,
    #[serde(deserialize_with = "nullable")]
    pub core_database: CoreDatabase,
    #[serde(deserialize_with = "nullable")]
    pub bootstrap_users: Vec<BootstrapUser>,
    #[serde(deserialize_with = "nullable")]
    pub rbac: Rbac,
    /// Port of the mesos console proxy on the hosts.
    pub consoleproxy_port: Option<u16>,
    #[serde(deserialize_with = "nullable")]
    pub admin_config: AdminConfig,
    #[serde(deserialize_with = "nullable")]
    pub proxy_config: ProxyConfig,
    #[serde(deserialize_with = "nullable")]
    pub storage: StorageConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    pub address: Option<String>,
    pub port: Option<u16>,
    pub insecure_address: Option<String>,
    pub insecure_port: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricConfig {
    pub metric_port: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ZkConfig {
    /// Comma-separated `host:port` list.
    pub bcs_zookeeper: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CertConfig {
    pub ca_file: Option<String>,
    pub server_cert_file: Option<String>,
    pub server_key_file: Option<String>,
    pub client_cert_file: Option<String>,
    pub client_key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LicenseServerConfig {
    pub ls_address: Option<String>,
    pub ls_ca_file: Option<String>,
    pub ls_client_cert_file: Option<String>,
    pub ls_client_key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub log_dir: Option<String>,
    /// Accepted for compatibility; rotation is left to logrotate (see deploy/bcs-api.yaml).
    pub log_max_size: Option<u64>,
    pub log_max_num: Option<u64>,
    /// Log to stderr only (no file).
    pub logtostderr: Option<bool>,
    /// Log to the file and to stderr.
    pub alsologtostderr: Option<bool>,
    /// Verbosity: 0 info, 1-2 debug, 3 and above trace.
    pub v: Option<u8>,
    pub stderrthreshold: Option<String>,
    pub vmodule: Option<String>,
    pub log_backtrace_at: Option<String>,
    /// New: `text` (default) or `json`.
    pub log_format: Option<String>,
    /// New: one access-log line per proxied request (default true); false is nginx's
    /// `access_log off` (about a tenth of the proxy's CPU at small requests, measured).
    pub access_log: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessConfig {
    pub pid_dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    pub local_ip: Option<String>,
}

/// The original's IAM settings. Accepted so its sample loads; the subscription client arrives
/// with RBAC (issue 7). Repeated keys (the sample repeats `bkiam_auth_sub_server`) keep the last.
#[derive(Debug, Default)]
pub struct BkiamAuth {
    pub auth: Option<bool>,
    pub apigw_rsa_file: Option<String>,
    pub auth_token_sync_time: Option<u64>,
    pub bkiam_auth_host: Option<String>,
    pub bkiam_auth_app_code: Option<String>,
    pub bkiam_auth_app_secret: Option<Secret>,
    pub bkiam_auth_system_id: Option<String>,
    pub bkiam_auth_scope_id: Option<String>,
    pub bkiam_auth_zookeeper: Option<String>,
    pub bkiam_auth_sub_server: Option<String>,
    pub bkiam_auth_token_whitelist: Vec<Option<Secret>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoreDatabase {
    /// Go-style MySQL DSN, `mysql://` URL, `sqlite://path`, or empty for the embedded store.
    pub dsn: Option<Secret>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapUser {
    pub name: String,
    #[serde(default)]
    pub is_super_user: Option<bool>,
    /// Plain-text tokens. `""` means: generate one on first start and print it once to stdout.
    #[serde(default, deserialize_with = "nullable")]
    pub tokens: Vec<Option<Secret>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rbac {
    pub turn_on_rbac: Option<bool>,
    pub turn_on_auth: Option<bool>,
    pub turn_on_conf: Option<bool>,
    /// Role bindings applied while `turn_on_conf` is true (the original's `bke.rbac_data`).
    #[serde(deserialize_with = "nullable")]
    pub data: Vec<RbacData>,
    /// New: how often every cluster is reconciled besides on change (default 300).
    pub sync_interval_seconds: Option<u64>,
}

/// The six role templates a binding may name (the ClusterRole is `bke-<role>`).
pub const RBAC_ROLES: [&str; 6] =
    ["cluster-manage", "cluster-readonly", "services-view", "services-manage", "workloads-view", "workloads-manage"];

/// One entry of `rbac.data`: `user_name` (the internal name, such as `plain:alice` or
/// `admin`) gets `roles` at the cluster scope of `cluster_id` (the exact bcs-api cluster id).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RbacData {
    pub user_name: String,
    pub cluster_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub roles: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub address: Option<String>,
    pub port: Option<u16>,
    /// Base URL clients use to reach the gateway; empty: derived from `service_config`.
    pub external_url: Option<String>,
    pub snapshot_socket: Option<String>,
    pub spawn_proxy: Option<bool>,
    /// New: clusters one user other than a super user may create (default 1000; 0: no limit).
    /// Each cluster's credentials travel in every proxy's snapshot.
    pub max_clusters_per_user: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub cores: Option<u16>,
    /// New: client connections the proxy holds at once (over it: 503 with Retry-After).
    pub max_connections: Option<u32>,
    /// New: `auto` (io_uring where the kernel allows it, else epoll) or `epoll`.
    pub io_driver: Option<String>,
    pub webconsole_allowed_hosts: Option<Vec<String>>,
    /// New: seconds a request body may go without a byte before the client gets 408 and the
    /// connection closes (nginx's `client_body_timeout`). Default 60.
    pub client_body_timeout_seconds: Option<u64>,
    /// New: seconds data written to a client may stay unacknowledged (a client that stopped
    /// reading, or vanished) before its connection is cut (`TCP_USER_TIMEOUT`; nginx's
    /// `send_timeout`), and a write of a request body to an upstream may wait (nginx's
    /// `proxy_send_timeout`). Default 60.
    pub send_timeout_seconds: Option<u64>,
    /// New: seconds an upstream may take to start answering a request before the client gets
    /// 504 (nginx's `proxy_read_timeout`, but for the response head only: a watch or a log
    /// stream may then stay quiet for any time). Default 120.
    pub response_head_timeout_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub data_dir: Option<String>,
    pub secret_key_file: Option<String>,
}

/// A section or list written as `key:` with nothing after it is the same as leaving it out.
fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// The value of an optional string setting, with "" meaning "not set".
pub fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

impl<'de> Deserialize<'de> for BkiamAuth {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(BkiamAuthVisitor)
    }
}

struct BkiamAuthVisitor;

impl<'de> serde::de::Visitor<'de> for BkiamAuthVisitor {
    type Value = BkiamAuth;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("the bkiam_auth section")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<BkiamAuth, A::Error> {
        const FIELDS: &[&str] = &[
            "auth",
            "apigw_rsa_file",
            "auth_token_sync_time",
            "bkiam_auth_host",
            "bkiam_auth_app_code",
            "bkiam_auth_app_secret",
            "bkiam_auth_system_id",
            "bkiam_auth_scope_id",
            "bkiam_auth_zookeeper",
            "bkiam_auth_sub_server",
            "bkiam_auth_token_whitelist",
        ];
        let mut out = BkiamAuth::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "auth" => out.auth = map.next_value()?,
                "apigw_rsa_file" => out.apigw_rsa_file = map.next_value()?,
                "auth_token_sync_time" => out.auth_token_sync_time = map.next_value()?,
                "bkiam_auth_host" => out.bkiam_auth_host = map.next_value()?,
                "bkiam_auth_app_code" => out.bkiam_auth_app_code = map.next_value()?,
                "bkiam_auth_app_secret" => out.bkiam_auth_app_secret = map.next_value()?,
                "bkiam_auth_system_id" => out.bkiam_auth_system_id = map.next_value()?,
                "bkiam_auth_scope_id" => out.bkiam_auth_scope_id = map.next_value()?,
                "bkiam_auth_zookeeper" => out.bkiam_auth_zookeeper = map.next_value()?,
                "bkiam_auth_sub_server" => out.bkiam_auth_sub_server = map.next_value()?,
                "bkiam_auth_token_whitelist" => {
                    out.bkiam_auth_token_whitelist = map.next_value::<Option<_>>()?.unwrap_or_default()
                }
                other => return Err(serde::de::Error::unknown_field(other, FIELDS)),
            }
        }
        Ok(out)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<BkiamAuth, E> {
        Ok(BkiamAuth::default())
    }
}

/// Defaults of the settings that have one (DESIGN §1 and §2).
pub mod defaults {
    pub const SERVICE_ADDRESS: &str = "0.0.0.0";
    pub const SERVICE_PORT: u16 = 8443;
    pub const INSECURE_ADDRESS: &str = "127.0.0.1";
    pub const INSECURE_PORT: u16 = 8080;
    pub const METRIC_PORT: u16 = 8087;
    pub const ADMIN_ADDRESS: &str = "127.0.0.1";
    pub const ADMIN_PORT: u16 = 8090;
    pub const SNAPSHOT_SOCKET: &str = "./run/bcs-api.sock";
    pub const DATA_DIR: &str = "./data";
    pub const LOG_DIR: &str = "./logs";
}

/// A parse error without the values it quotes (serde writes `string "<value>"`, and a number as
/// ``integer `<value>` ``, for a value of the wrong type): the value may be a token or a
/// password put where a list was expected.
fn without_values(message: &str) -> String {
    let message = without_strings(message);
    let mut out = String::with_capacity(message.len());
    let mut rest = message.as_str();
    loop {
        let found =
            ["integer `", "floating point `"].iter().filter_map(|kind| rest.find(kind).map(|at| (at, *kind))).min();
        let Some((at, kind)) = found else { break };
        out.push_str(&rest[..at]);
        out.push_str(if kind.starts_with('i') { "an integer" } else { "a number" });
        let value = &rest[at + kind.len()..];
        rest = value.find('`').map_or("", |end| &value[end + 1..]);
    }
    out.push_str(rest);
    out
}

fn without_strings(message: &str) -> String {
    const QUOTED: &str = "string \"";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(QUOTED) {
        out.push_str(&rest[..at]);
        out.push_str("a string");
        // The value is written escaped (`{:?}`): it ends at the first quote not escaped.
        let value = &rest[at + QUOTED.len()..];
        let mut escaped = false;
        let end = value.char_indices().find(|&(_, c)| {
            let closing = c == '"' && !escaped;
            escaped = c == '\\' && !escaped;
            closing
        });
        rest = match end {
            Some((i, _)) => &value[i + 1..],
            None => "",
        };
    }
    out.push_str(rest);
    out
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::parse(path, &text)
    }

    /// Parses and validates `text`; `path` is only used in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let config: Config = match serde::Deserialize::deserialize(de) {
            Ok(config) => config,
            // An empty file is an all-defaults configuration.
            Err(_) if text.trim().is_empty() => Config::default(),
            Err(e) => {
                return Err(ConfigError::Parse { path: path.to_owned(), message: without_values(&e.to_string()) })
            }
        };
        config.validate().map_err(|(key, message)| ConfigError::Invalid { path: path.to_owned(), key, message })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        let ports = [
            ("service_config.port", self.service_config.port),
            ("service_config.insecure_port", self.service_config.insecure_port),
            ("metric_config.metric_port", self.metric_config.metric_port),
            ("admin_config.port", self.admin_config.port),
            ("consoleproxy_port", self.consoleproxy_port),
        ];
        for (key, port) in ports {
            if port == Some(0) {
                return Err((key, "must be a port between 1 and 65535".into()));
            }
        }
        let addresses = [
            ("service_config.address", &self.service_config.address),
            ("service_config.insecure_address", &self.service_config.insecure_address),
            ("admin_config.address", &self.admin_config.address),
            ("local_config.local_ip", &self.local_config.local_ip),
        ];
        for (key, address) in addresses {
            if let Some(a) = non_empty(address) {
                a.parse::<IpAddr>().map_err(|_| (key, format!("{a:?} is not an IP address")))?;
            }
        }
        if let Some(edition) = non_empty(&self.edition) {
            if !matches!(edition, "ee" | "ieod") {
                return Err(("edition", format!("{edition:?} is not one of ee, ieod")));
            }
        }
        if let Some(format) = non_empty(&self.log_config.log_format) {
            if !matches!(format, "text" | "json") {
                return Err(("log_config.log_format", format!("{format:?} is not one of text, json")));
            }
        }
        if let Some(driver) = non_empty(&self.proxy_config.io_driver) {
            if !matches!(driver, "auto" | "epoll") {
                return Err(("proxy_config.io_driver", format!("{driver:?} is not one of auto, epoll")));
            }
        }
        if let Some(url) = non_empty(&self.admin_config.external_url) {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(("admin_config.external_url", format!("{url:?} must start with http:// or https://")));
            }
        }
        for entry in &self.rbac.data {
            if entry.user_name.trim().is_empty() {
                return Err(("rbac.data.user_name", "must not be empty".into()));
            }
            if entry.cluster_id.trim().is_empty() {
                return Err(("rbac.data.cluster_id", "must not be empty".into()));
            }
            if let Some(role) = entry.roles.iter().find(|r| !RBAC_ROLES.contains(&r.as_str())) {
                return Err(("rbac.data.roles", format!("{role:?} is not one of {}", RBAC_ROLES.join(", "))));
            }
        }
        if let Some(seconds) = self.rbac.sync_interval_seconds {
            if !(1..=86_400).contains(&seconds) {
                return Err(("rbac.sync_interval_seconds", "must be between 1 and 86400".into()));
            }
        }
        let mut names = std::collections::HashSet::new();
        for user in &self.bootstrap_users {
            if user.name.trim().is_empty() {
                return Err(("bootstrap_users.name", "must not be empty".into()));
            }
            if !names.insert(user.name.as_str()) {
                return Err(("bootstrap_users.name", format!("{:?} is listed twice", user.name)));
            }
        }
        Ok(())
    }

    pub fn admin_address(&self) -> String {
        let address = non_empty(&self.admin_config.address).unwrap_or(defaults::ADMIN_ADDRESS);
        let port = self.admin_config.port.unwrap_or(defaults::ADMIN_PORT);
        join_host_port(address, port)
    }

    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(non_empty(&self.storage.data_dir).unwrap_or(defaults::DATA_DIR))
    }

    pub fn secret_key_file(&self) -> PathBuf {
        match non_empty(&self.storage.secret_key_file) {
            Some(file) => PathBuf::from(file),
            None => self.data_dir().join("secret.key"),
        }
    }

    pub fn log_dir(&self) -> PathBuf {
        PathBuf::from(non_empty(&self.log_config.log_dir).unwrap_or(defaults::LOG_DIR))
    }

    pub fn turn_on_rbac(&self) -> bool {
        self.rbac.turn_on_rbac.unwrap_or(false)
    }

    /// True when the server certificate and key are configured, so the proxy serves TLS.
    pub fn tls_configured(&self) -> bool {
        non_empty(&self.cert_config.server_cert_file).is_some()
            && non_empty(&self.cert_config.server_key_file).is_some()
    }

    /// The base URL clients use to reach the gateway's routes, without a trailing slash:
    /// `admin_config.external_url` if set; otherwise the TLS listener when a certificate is
    /// configured, else the plain listener. A wildcard listen address becomes
    /// `local_config.local_ip`, or 127.0.0.1 when that is not set.
    pub fn external_url(&self) -> String {
        if let Some(url) = non_empty(&self.admin_config.external_url) {
            return url.trim_end_matches('/').to_owned();
        }
        let service = &self.service_config;
        let (scheme, address, port) = if self.tls_configured() {
            let address = non_empty(&service.address).unwrap_or(defaults::SERVICE_ADDRESS);
            ("https", address, service.port.unwrap_or(defaults::SERVICE_PORT))
        } else {
            let address = non_empty(&service.insecure_address).unwrap_or(defaults::INSECURE_ADDRESS);
            let port = service.insecure_port.unwrap_or(defaults::INSECURE_PORT);
            ("http", address, port)
        };
        let host = match address.parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() => non_empty(&self.local_config.local_ip).unwrap_or("127.0.0.1"),
            _ => address,
        };
        format!("{scheme}://{}", join_host_port(host, port))
    }
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests;
