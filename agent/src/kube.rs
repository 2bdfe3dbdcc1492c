//! The cluster side: the apiserver URL, its CA and the agent's bearer token (from the service
//! account in cluster, or a kubeconfig), re-read before every report so a rotated token is
//! what gets reported; and the addresses in Endpoints `default/kubernetes`.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bcs_shared::secret::Secret;
use serde::Deserialize;

use crate::cli::Source;
use crate::http;

/// How to reach the apiserver, and what gets reported.
#[derive(Debug, Clone)]
pub struct Access {
    /// `https://host:port` of the apiserver the agent talks to.
    pub server: url::Url,
    /// PEM of the cluster's CA: reported as `cacert_data`.
    pub ca_pem: String,
    /// The bearer token: reported as `user_token`.
    pub token: Secret,
    /// The kubeconfig asked not to verify the apiserver (`insecure-skip-tls-verify`).
    pub insecure: bool,
}

/// Reads the access of `source` now (files are read every time).
pub fn load(source: &Source) -> Result<Access, String> {
    match source {
        Source::InCluster { host, port, dir } => {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let server =
                if bare.contains(':') { format!("https://[{bare}]:{port}") } else { format!("https://{bare}:{port}") };
            let server = url::Url::parse(&server).map_err(|e| format!("KUBERNETES_SERVICE_HOST/PORT: {e}"))?;
            let token = read_token(&dir.join("token"))?;
            let ca_pem = read(&dir.join("ca.crt"))?;
            check_ca(&ca_pem, &dir.join("ca.crt").display().to_string())?;
            Ok(Access { server, ca_pem, token, insecure: false })
        }
        Source::Kubeconfig(path) => from_kubeconfig(path),
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn read_token(path: &Path) -> Result<Secret, String> {
    let token = read(path)?.trim().to_owned();
    if token.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(Secret::new(token))
}

fn check_ca(pem: &str, origin: &str) -> Result<(), String> {
    http::roots_from_pem(pem).map(|_| ()).map_err(|e| format!("the CA in {origin}: {e}"))
}

#[derive(Deserialize)]
struct Kubeconfig {
    #[serde(rename = "current-context", default)]
    current_context: String,
    #[serde(default)]
    clusters: Vec<Named<ClusterEntry>>,
    #[serde(default)]
    users: Vec<Named<UserEntry>>,
    #[serde(default)]
    contexts: Vec<Named<ContextEntry>>,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    value: T,
}

#[derive(Deserialize)]
struct ClusterEntry {
    server: String,
    #[serde(rename = "certificate-authority-data", default)]
    ca_data: Option<String>,
    #[serde(rename = "certificate-authority", default)]
    ca_file: Option<String>,
    #[serde(rename = "insecure-skip-tls-verify", default)]
    insecure: bool,
}

#[derive(Deserialize)]
struct UserEntry {
    #[serde(default)]
    token: Option<Secret>,
    #[serde(rename = "tokenFile", default)]
    token_file: Option<String>,
}

#[derive(Deserialize)]
struct ContextEntry {
    cluster: String,
    user: String,
}

fn resolve(base: &Path, file: &str) -> PathBuf {
    let p = Path::new(file);
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.parent().unwrap_or(Path::new(".")).join(p)
    }
}

/// Server, CA and bearer token of the kubeconfig's current context. `tokenFile` is read too (a
/// rotated token then shows up at the next report), as are CA files relative to the kubeconfig.
fn from_kubeconfig(path: &Path) -> Result<Access, String> {
    let shown = path.display();
    let config: Kubeconfig =
        serde_yaml_ng::from_str(&read(path)?).map_err(|e| format!("kubeconfig {shown} is not valid: {e}"))?;
    let context = config
        .contexts
        .iter()
        .find(|c| c.name == config.current_context)
        .or_else(|| (config.contexts.len() == 1).then(|| &config.contexts[0]))
        .ok_or_else(|| format!("kubeconfig {shown}: no current context {:?}", config.current_context))?;
    let cluster = config
        .clusters
        .iter()
        .find(|c| c.name == context.value.cluster)
        .ok_or_else(|| format!("kubeconfig {shown}: no cluster {:?}", context.value.cluster))?;
    let user = config
        .users
        .iter()
        .find(|u| u.name == context.value.user)
        .ok_or_else(|| format!("kubeconfig {shown}: no user {:?}", context.value.user))?;

    let server = url::Url::parse(cluster.value.server.trim())
        .map_err(|e| format!("kubeconfig {shown}: server {:?}: {e}", cluster.value.server))?;
    if server.scheme() != "https" {
        return Err(format!("kubeconfig {shown}: server {server} is not https"));
    }
    let ca_pem = match (&cluster.value.ca_data, &cluster.value.ca_file) {
        (Some(data), _) if !data.trim().is_empty() => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|e| format!("kubeconfig {shown}: certificate-authority-data is not base64: {e}"))?;
            String::from_utf8(bytes)
                .map_err(|_| format!("kubeconfig {shown}: certificate-authority-data is not PEM"))?
        }
        (_, Some(file)) if !file.trim().is_empty() => read(&resolve(path, file.trim()))?,
        _ => return Err(format!("kubeconfig {shown}: the cluster has no certificate-authority(-data) to report")),
    };
    check_ca(&ca_pem, &format!("kubeconfig {shown}"))?;
    let token = match (&user.value.token, &user.value.token_file) {
        (Some(t), _) if !t.is_empty() => Secret::new(t.expose().trim()),
        (_, Some(file)) if !file.trim().is_empty() => read_token(&resolve(path, file.trim()))?,
        _ => {
            return Err(format!("kubeconfig {shown}: the user has no token or tokenFile (a bearer token is reported)"))
        }
    };
    Ok(Access { server, ca_pem, token, insecure: cluster.value.insecure })
}

impl Access {
    /// TLS for talking to this apiserver.
    pub fn tls(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        if self.insecure {
            return Ok(http::tls_insecure());
        }
        http::tls_trusting(&self.ca_pem)
    }
}

#[derive(Deserialize)]
struct Endpoints {
    #[serde(default)]
    subsets: Vec<Subset>,
}

#[derive(Deserialize)]
struct Subset {
    #[serde(default)]
    addresses: Vec<Address>,
    #[serde(default)]
    ports: Vec<Port>,
}

#[derive(Deserialize)]
struct Address {
    ip: String,
}

#[derive(Deserialize)]
struct Port {
    #[serde(default)]
    name: String,
    port: u16,
}

/// `ip:port` candidates of Endpoints `default/kubernetes`: for every subset with addresses, the
/// port named `https`.
pub async fn endpoint_candidates(access: &Access, timeout: Duration) -> Result<Vec<(String, u16)>, String> {
    let mut url = access.server.clone();
    url.set_path(&format!(
        "{}/api/v1/namespaces/default/endpoints/kubernetes",
        access.server.path().trim_end_matches('/')
    ));
    let answer = http::request(
        ::http::Method::GET,
        &url,
        &[
            ("authorization", format!("Bearer {}", access.token.expose())),
            ("accept", "application/json".into()),
            ("user-agent", concat!("bcs-kube-agent/", env!("CARGO_PKG_VERSION")).into()),
        ],
        None,
        Some(access.tls()?),
        timeout,
    )
    .await
    .map_err(|e| e.to_string())?;
    if answer.status != 200 {
        let reason = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or_default();
        return Err(format!("reading Endpoints default/kubernetes: HTTP {} {reason}", answer.status));
    }
    parse_endpoints(&answer.body)
}

pub fn parse_endpoints(body: &[u8]) -> Result<Vec<(String, u16)>, String> {
    let endpoints: Endpoints =
        serde_json::from_slice(body).map_err(|e| format!("Endpoints default/kubernetes is not valid: {e}"))?;
    let mut out = Vec::new();
    for subset in endpoints.subsets {
        let Some(port) = subset.ports.iter().find(|p| p.name == "https") else { continue };
        for address in subset.addresses {
            out.push((address.ip, port.port));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_give_the_https_port_of_every_address() {
        let body = br#"{"kind":"Endpoints","subsets":[
            {"addresses":[{"ip":"10.0.0.1"},{"ip":"10.0.0.2"}],"ports":[{"name":"https","port":6443}]},
            {"addresses":[{"ip":"10.0.0.3"}],"ports":[{"name":"other","port":1}]},
            {"ports":[{"name":"https","port":6443}]}]}"#;
        assert_eq!(parse_endpoints(body).unwrap(), vec![("10.0.0.1".to_owned(), 6443), ("10.0.0.2".to_owned(), 6443)]);
        assert!(parse_endpoints(b"{}").unwrap().is_empty());
        assert!(parse_endpoints(b"nope").is_err());
    }

    #[test]
    fn a_kubeconfig_gives_server_ca_and_token_and_reads_token_files() {
        let dir = tempfile::tempdir().unwrap();
        let ca = include_str!("../tests/fixtures/ca.pem");
        std::fs::write(dir.path().join("ca.pem"), ca).unwrap();
        std::fs::write(dir.path().join("token"), "tok-1\n").unwrap();
        let kubeconfig = dir.path().join("config");
        std::fs::write(
            &kubeconfig,
            "apiVersion: v1\nkind: Config\ncurrent-context: b\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority: ca.pem\n\
             users:\n- name: u\n  user:\n    tokenFile: token\ncontexts:\n- name: a\n  context: {cluster: x, user: y}\n- name: b\n  context: {cluster: c, user: u}\n",
        )
        .unwrap();
        let access = load(&Source::Kubeconfig(kubeconfig.clone())).unwrap();
        assert_eq!(access.server.as_str(), "https://127.0.0.1:6443/");
        assert_eq!(access.ca_pem, ca);
        assert_eq!(access.token.expose(), "tok-1");
        assert!(!format!("{access:?}").contains("tok-1"));
        std::fs::write(dir.path().join("token"), "tok-2").unwrap();
        assert_eq!(load(&Source::Kubeconfig(kubeconfig)).unwrap().token.expose(), "tok-2");
    }

    #[test]
    fn in_cluster_reads_the_service_account() {
        let dir = tempfile::tempdir().unwrap();
        let source = Source::InCluster { host: "fd00::1".into(), port: 443, dir: dir.path().to_owned() };
        assert!(load(&source).unwrap_err().contains("token"));
        std::fs::write(dir.path().join("token"), "sa").unwrap();
        std::fs::write(dir.path().join("ca.crt"), "not pem").unwrap();
        assert!(load(&source).unwrap_err().contains("CA"));
        std::fs::write(dir.path().join("ca.crt"), include_str!("../tests/fixtures/ca.pem")).unwrap();
        let access = load(&source).unwrap();
        assert_eq!(access.server.as_str(), "https://[fd00::1]/");
        assert_eq!(access.server.port_or_known_default(), Some(443));
        assert_eq!(access.token.expose(), "sa");
    }
}
