//! The command line and environment of the original `bcs-kube-agent` (reference §4.1), checked
//! once at start: a bad value stops the agent with exit code 2 before anything is sent.
use std::path::PathBuf;
use std::time::Duration;

use bcs_shared::secret::Secret;
use clap::Parser;

/// Where a pod finds its service-account token and CA.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "bcs-kube-agent",
    version,
    about = "Reports this cluster's apiserver addresses, CA and service-account token to bcs-api",
    after_help = "Environment: REGISTER_TOKEN (the cluster's register token, required unless \
                  --register-token-file), SERVER_CERT (PEM CA of bcs-api, unless --server-cert-file; the only root \
                  trusted unless --insecureSkipVerify), BCS_LOG (log filter, e.g. debug)."
)]
pub struct Args {
    /// bcs-api base URL, e.g. https://bcs-api.example.com:8443
    #[arg(long = "bke-address", value_name = "URL")]
    pub bke_address: String,

    /// bcs-api cluster id (e.g. bcs-k8s-001-3NZMRX6S), not the identifier
    #[arg(long = "cluster-id", value_name = "ID")]
    pub cluster_id: String,

    /// Seconds between two reports
    #[arg(long = "periodsync", value_name = "SECONDS", default_value_t = 60)]
    pub periodsync: u64,

    /// Address of the HTTP server with /metrics, /healthz and /readyz
    #[arg(long = "listen-addr", value_name = "HOST:PORT", default_value = "0.0.0.0:10254")]
    pub listen_addr: String,

    /// Kubeconfig to use out of cluster; empty: the pod's service account (in cluster)
    #[arg(long = "kubeconfig", value_name = "FILE", default_value = "")]
    pub kubeconfig: String,

    /// Do not verify bcs-api's certificate (SERVER_CERT is then not needed)
    #[arg(
        long = "insecureSkipVerify",
        value_name = "BOOL",
        num_args = 0..=1,
        default_value_t = false,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub insecure_skip_verify: bool,

    /// ';'-separated https:// addresses to report instead of the Endpoints default/kubernetes
    #[arg(long = "external-proxy-addresses", value_name = "URLS", default_value = "")]
    pub external_proxy_addresses: String,

    /// Directory of the service account's `token` and `ca.crt` (in cluster)
    #[arg(long = "service-account-dir", env = "BCS_AGENT_SERVICE_ACCOUNT_DIR", default_value = SERVICE_ACCOUNT_DIR)]
    pub service_account_dir: PathBuf,

    /// File holding the cluster's register token, read again before every report (a mounted
    /// Secret follows a rotation with no restart); instead of REGISTER_TOKEN
    #[arg(long = "register-token-file", env = "REGISTER_TOKEN_FILE", value_name = "FILE")]
    pub register_token_file: Option<PathBuf>,

    /// File holding bcs-api's CA (PEM), read again before every report (a mounted Secret follows
    /// a rotation of that CA with no restart); instead of SERVER_CERT
    #[arg(long = "server-cert-file", env = "SERVER_CERT_FILE", value_name = "FILE")]
    pub server_cert_file: Option<PathBuf>,

    /// Log format: text or json (logs go to stderr)
    #[arg(long = "log-format", value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// Everything the agent needs, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `<bke-address>/rest/clusters/<cluster-id>/credentials`.
    pub report_url: url::Url,
    pub cluster_id: String,
    pub period: Duration,
    pub listen_addr: std::net::SocketAddr,
    pub source: Source,
    pub register_token: RegisterToken,
    /// The gateway's CA; `None` with `--insecureSkipVerify` or http.
    pub server_ca: Option<ServerCa>,
    pub insecure_skip_verify: bool,
    /// `--external-proxy-addresses`, split and checked; empty: read the Endpoints.
    pub external_addresses: Vec<String>,
}

/// Where bcs-api's CA comes from.
#[derive(Debug, Clone)]
pub enum ServerCa {
    /// `SERVER_CERT`, read at start.
    Fixed(String),
    /// `--server-cert-file`, read before every report.
    File(PathBuf),
}

impl ServerCa {
    /// The CA's PEM now, checked: it holds at least one certificate.
    pub fn current(&self) -> Result<String, String> {
        let (pem, what) = match self {
            ServerCa::Fixed(pem) => (pem.clone(), "SERVER_CERT".to_owned()),
            ServerCa::File(path) => (
                std::fs::read_to_string(path).map_err(|e| format!("--server-cert-file {}: {e}", path.display()))?,
                format!("--server-cert-file {}", path.display()),
            ),
        };
        crate::http::roots_from_pem(&pem).map_err(|e| format!("{what}: {e}"))?;
        Ok(pem)
    }
}

/// Where the cluster's register token comes from.
#[derive(Debug, Clone)]
pub enum RegisterToken {
    /// `REGISTER_TOKEN`, read at start.
    Fixed(Secret),
    /// `--register-token-file`, read before every report.
    File(PathBuf),
}

impl RegisterToken {
    /// The token to report with now.
    pub fn current(&self) -> Result<Secret, String> {
        match self {
            RegisterToken::Fixed(token) => Ok(token.clone()),
            RegisterToken::File(path) => std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|text| checked_register_token(&text))
                .map(Secret::new)
                .map_err(|e| format!("--register-token-file {}: {e}", path.display())),
        }
    }
}

/// A register token as written (surrounding whitespace, such as a file's last newline, dropped).
fn checked_register_token(value: &str) -> Result<String, String> {
    let token = value.trim();
    if token.is_empty() {
        return Err("the register token is empty".into());
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the register token must be visible ASCII characters".into());
    }
    Ok(token.to_owned())
}

/// Where the agent finds the apiserver and its own credentials.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// `KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT`, token and CA from the service account.
    InCluster { host: String, port: u16, dir: PathBuf },
    /// `--kubeconfig`: server, CA and bearer token of its current context.
    Kubeconfig(PathBuf),
}

impl Args {
    /// Checks the flags against the environment given by `env` (the process environment in
    /// `main`, a map in tests).
    pub fn settings(&self, env: impl Fn(&str) -> Option<String>) -> Result<Settings, String> {
        let base = url::Url::parse(self.bke_address.trim())
            .map_err(|e| format!("--bke-address {:?} is not a URL: {e}", self.bke_address))?;
        if !matches!(base.scheme(), "https" | "http") || base.host_str().is_none() {
            return Err(format!("--bke-address {:?} must be an http(s)://host[:port] URL", self.bke_address));
        }
        if !base.username().is_empty()
            || base.password().is_some()
            || base.query().is_some()
            || base.fragment().is_some()
        {
            return Err("--bke-address must not carry credentials, a query or a fragment".into());
        }
        let id = self.cluster_id.trim();
        if id.is_empty()
            || id.len() > 100
            || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(format!(
                "--cluster-id {:?} must be 1 to 100 letters, digits, '.', '_' or '-'",
                self.cluster_id
            ));
        }
        let report_url =
            url::Url::parse(&format!("{}/rest/clusters/{id}/credentials", base.as_str().trim_end_matches('/')))
                .map_err(|e| format!("--bke-address: {e}"))?;
        if self.periodsync == 0 || self.periodsync > 86_400 {
            return Err(format!("--periodsync {} must be 1 to 86400 seconds", self.periodsync));
        }
        let listen_addr = self
            .listen_addr
            .parse()
            .map_err(|e| format!("--listen-addr {:?} is not an IP:port: {e}", self.listen_addr))?;

        let register_token = match &self.register_token_file {
            Some(path) => {
                let from_file = RegisterToken::File(path.clone());
                from_file.current()?;
                from_file
            }
            None => {
                let value = env("REGISTER_TOKEN").unwrap_or_default();
                if value.trim().is_empty() {
                    return Err("the environment variable REGISTER_TOKEN (the cluster's register token) is not set, \
                         and no --register-token-file"
                        .into());
                }
                RegisterToken::Fixed(Secret::new(
                    checked_register_token(&value).map_err(|e| format!("REGISTER_TOKEN: {e}"))?,
                ))
            }
        };
        let server_ca = match (&self.server_cert_file, env("SERVER_CERT").filter(|c| !c.trim().is_empty())) {
            (Some(path), _) => Some(ServerCa::File(path.clone())),
            (None, Some(pem)) => Some(ServerCa::Fixed(pem)),
            (None, None) if base.scheme() == "https" && !self.insecure_skip_verify => {
                return Err("the environment variable SERVER_CERT (bcs-api's CA, PEM) is not set, and no \
                     --server-cert-file; set one or pass --insecureSkipVerify"
                    .into())
            }
            (None, None) => None,
        };
        if let Some(ca) = &server_ca {
            ca.current()?;
        }

        let source = if self.kubeconfig.trim().is_empty() {
            let host = env("KUBERNETES_SERVICE_HOST").unwrap_or_default();
            let port = env("KUBERNETES_SERVICE_PORT").unwrap_or_default();
            if host.is_empty() || port.is_empty() {
                return Err("not in a cluster (KUBERNETES_SERVICE_HOST/PORT are not set) and no --kubeconfig".into());
            }
            let port =
                port.trim().parse().map_err(|_| format!("KUBERNETES_SERVICE_PORT {port:?} is not a port number"))?;
            Source::InCluster { host: host.trim().to_owned(), port, dir: self.service_account_dir.clone() }
        } else {
            Source::Kubeconfig(PathBuf::from(self.kubeconfig.trim()))
        };

        let external_addresses = external_addresses(&self.external_proxy_addresses)?;
        Ok(Settings {
            report_url,
            cluster_id: id.to_owned(),
            period: Duration::from_secs(self.periodsync),
            listen_addr,
            source,
            register_token,
            server_ca: if self.insecure_skip_verify { None } else { server_ca },
            insecure_skip_verify: self.insecure_skip_verify,
            external_addresses,
        })
    }
}

/// `--external-proxy-addresses`: each must start with `https://` (as the original required).
fn external_addresses(value: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for address in value.split(';').map(str::trim).filter(|a| !a.is_empty()) {
        let url = url::Url::parse(address)
            .map_err(|e| format!("--external-proxy-addresses: {address:?} is not a URL: {e}"))?;
        if url.scheme() != "https" || url.host_str().is_none() {
            return Err(format!("--external-proxy-addresses: {address:?} must start with https://"));
        }
        out.push(address.trim_end_matches('/').to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["bcs-kube-agent", "--bke-address=https://gw:8443/", "--cluster-id", "bcs-k8s-001-AbCd1234"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap()
    }

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    const CA: &str = include_str!("../tests/fixtures/ca.pem");

    #[test]
    fn the_original_flags_parse() {
        let a = args(&["--periodsync", "5", "--insecureSkipVerify", "--listen-addr=127.0.0.1:1"]);
        assert_eq!(a.periodsync, 5);
        assert!(a.insecure_skip_verify);
        let a = args(&["--insecureSkipVerify=false"]);
        assert!(!a.insecure_skip_verify);
        assert_eq!(args(&[]).periodsync, 60);
        assert_eq!(args(&[]).listen_addr, "0.0.0.0:10254");
    }

    #[test]
    fn settings_need_the_register_token_and_the_gateway_ca() {
        let a = args(&["--kubeconfig=/k"]);
        let err = a.settings(env(&[])).unwrap_err();
        assert!(err.contains("REGISTER_TOKEN"), "{err}");
        let err = a.settings(env(&[("REGISTER_TOKEN", "t")])).unwrap_err();
        assert!(err.contains("SERVER_CERT"), "{err}");
        let err = a.settings(env(&[("REGISTER_TOKEN", "t"), ("SERVER_CERT", "junk")])).unwrap_err();
        assert!(err.contains("SERVER_CERT"), "{err}");
        let s = args(&["--kubeconfig=/k", "--insecureSkipVerify"]).settings(env(&[("REGISTER_TOKEN", "t")])).unwrap();
        assert!(s.server_ca.is_none());
        let s = a.settings(|k| match k {
            "REGISTER_TOKEN" => Some("t".into()),
            "SERVER_CERT" => Some(CA.into()),
            _ => None,
        });
        let s = s.unwrap();
        assert_eq!(s.report_url.as_str(), "https://gw:8443/rest/clusters/bcs-k8s-001-AbCd1234/credentials");
        assert_eq!(s.source, Source::Kubeconfig("/k".into()));
        assert_eq!(format!("{:?}", s.register_token), "Fixed(Secret(***))");
    }

    #[test]
    fn in_cluster_needs_the_service_variables() {
        let a = args(&["--insecureSkipVerify"]);
        let err = a.settings(env(&[("REGISTER_TOKEN", "t")])).unwrap_err();
        assert!(err.contains("KUBERNETES_SERVICE_HOST"), "{err}");
        let s = a
            .settings(env(&[
                ("REGISTER_TOKEN", "t"),
                ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
                ("KUBERNETES_SERVICE_PORT", "443"),
            ]))
            .unwrap();
        assert_eq!(
            s.source,
            Source::InCluster { host: "10.96.0.1".into(), port: 443, dir: SERVICE_ACCOUNT_DIR.into() }
        );
    }

    #[test]
    fn bad_values_are_refused() {
        let e = env(&[("REGISTER_TOKEN", "t")]);
        for extra in [
            &["--kubeconfig=/k", "--insecureSkipVerify", "--periodsync=0"][..],
            &["--kubeconfig=/k", "--insecureSkipVerify", "--listen-addr=nowhere"],
            &["--kubeconfig=/k", "--insecureSkipVerify", "--external-proxy-addresses=http://a:1"],
        ] {
            assert!(args(extra).settings(&e).is_err(), "{extra:?}");
        }
        let bad_id = Args::try_parse_from(["a", "--bke-address=https://gw", "--cluster-id=a/b", "--kubeconfig=/k"]);
        assert!(bad_id.unwrap().settings(&e).is_err());
        let bad_url = Args::try_parse_from(["a", "--bke-address=ftp://gw", "--cluster-id=a", "--kubeconfig=/k"]);
        assert!(bad_url.unwrap().settings(&e).is_err());
        for address in ["https://gw:8443/#x", "https://gw:8443/?a=1", "https://u:p@gw:8443"] {
            let parsed =
                Args::try_parse_from(["a", &format!("--bke-address={address}"), "--cluster-id=a", "--kubeconfig=/k"]);
            let refused = parsed.unwrap().settings(&e).expect_err(address);
            assert!(refused.contains("--bke-address"), "{refused}");
        }
        let s =
            args(&["--kubeconfig=/k", "--insecureSkipVerify", "--external-proxy-addresses= https://a:1/ ;https://b:2"])
                .settings(&e)
                .unwrap();
        assert_eq!(s.external_addresses, vec!["https://a:1", "https://b:2"]);
    }

    #[test]
    fn a_server_cert_file_is_checked_at_start_and_read_again_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        let flag = format!("--server-cert-file={}", path.display());
        let a = args(&["--kubeconfig=/k", &flag]);
        let err = a.settings(env(&[("REGISTER_TOKEN", "t")])).unwrap_err();
        assert!(err.contains("--server-cert-file"), "{err}");
        std::fs::write(&path, "not a certificate").unwrap();
        let err = a.settings(env(&[("REGISTER_TOKEN", "t")])).unwrap_err();
        assert!(err.contains("--server-cert-file"), "{err}");

        std::fs::write(&path, CA).unwrap();
        // The file wins over the environment.
        let s = a.settings(env(&[("REGISTER_TOKEN", "t"), ("SERVER_CERT", "junk")])).unwrap();
        let ca = s.server_ca.expect("a CA");
        assert_eq!(ca.current().unwrap(), CA);
        std::fs::write(&path, "gone bad").unwrap();
        assert!(ca.current().unwrap_err().contains("--server-cert-file"), "read again");
    }

    #[test]
    fn a_register_token_file_is_checked_at_start_and_read_again_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let flag = format!("--register-token-file={}", path.display());
        let a = args(&["--kubeconfig=/k", "--insecureSkipVerify", &flag]);
        let err = a.settings(env(&[])).unwrap_err();
        assert!(err.contains("--register-token-file") && err.contains("token"), "{err}");
        std::fs::write(&path, "\n").unwrap();
        let err = a.settings(env(&[])).unwrap_err();
        assert!(err.contains("empty"), "{err}");

        std::fs::write(&path, "first-token\n").unwrap();
        // The file wins over the environment.
        let s = a.settings(env(&[("REGISTER_TOKEN", "t")])).unwrap();
        assert_eq!(s.register_token.current().unwrap().expose(), "first-token");
        std::fs::write(&path, "second-token").unwrap();
        assert_eq!(s.register_token.current().unwrap().expose(), "second-token");
        std::fs::write(&path, "bad token").unwrap();
        let err = s.register_token.current().unwrap_err();
        assert!(err.contains("visible ASCII") && !err.contains("bad token"), "{err}");
    }
}
