//! `GET /rest/clusters/{cluster_id}/agent.yaml`: the agent manifest of `deploy/` filled in for
//! one cluster (its id and register token, the gateway's address and CA), so that
//! `kubectl apply -f agent.yaml` onboards the cluster. For the cluster's creator and super users,
//! since it holds the register token.
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::clusters::{load, require_creator_or_super};
use super::error::ApiError;
use super::extract::Caller;
use super::AppState;
use crate::sealer::register_token_purpose;

/// The manifest with `"..."`-quoted placeholders (each replaced by a JSON string, which is a
/// valid YAML double-quoted scalar).
pub const TEMPLATE: &str = include_str!("../../../deploy/bcs-kube-agent.yaml");

/// The image used when the request names none.
pub const DEFAULT_IMAGE: &str = concat!("bcs-kube-agent:", env!("CARGO_PKG_VERSION"));

#[derive(Deserialize)]
pub struct Params {
    /// Container image of the agent (default [`DEFAULT_IMAGE`]).
    image: Option<String>,
}

/// The filled-in manifest, as `application/yaml`.
pub async fn agent_yaml(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(params): Query<Params>,
) -> Result<Response, ApiError> {
    let cluster = load(&app, &id).await?;
    require_creator_or_super(&caller, &cluster)?;
    let image = params.image.map(|i| i.trim().to_owned()).filter(|i| !i.is_empty());
    let image = image.as_deref().unwrap_or(DEFAULT_IMAGE);
    if image.len() > 255
        || !image.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@'))
    {
        return Err(ApiError::validation("image", "must be a container image reference"));
    }
    let stored = app.store.register_token_of(&cluster.id, &cluster.identifier).await?.ok_or_else(|| {
        ApiError::not_found(
            "RTOKEN_NOT_FOUND",
            format_args!("cluster {} has no register token; create one with POST .../register_tokens", cluster.id),
        )
    })?;
    let token = app.sealer.open(&register_token_purpose(&cluster.id), &stored.token_sealed)?;
    let ca = match (&app.gateway_ca, app.external_url.starts_with("https://")) {
        (Some(ca), _) => ca.as_str(),
        (None, false) => "",
        (None, true) => {
            return Err(ApiError::internal(
                "the gateway's CA is unknown: put the CA at the end of cert_config.server_cert_file",
            ))
        }
    };
    let manifest = render(&Fill {
        bke_address: &app.external_url,
        cluster_id: &cluster.id,
        register_token: token.expose(),
        server_cert: ca,
        image,
    });
    tracing::info!(cluster = %cluster.id, by = %caller.user.name, "rendered the agent manifest");
    // No cache keeps it (its register token): every /rest answer says so (rest::no_store).
    Ok(([(header::CONTENT_TYPE, "application/yaml; charset=utf-8")], manifest).into_response())
}

pub struct Fill<'a> {
    pub bke_address: &'a str,
    pub cluster_id: &'a str,
    pub register_token: &'a str,
    pub server_cert: &'a str,
    pub image: &'a str,
}

/// [`TEMPLATE`] with every placeholder replaced.
pub fn render(fill: &Fill) -> String {
    let quoted = |s: &str| serde_json::to_string(s).expect("a string serialises");
    let mut out = TEMPLATE.to_owned();
    for (placeholder, value) in [
        ("\"--bke-address=__BKE_ADDRESS__\"", format!("--bke-address={}", fill.bke_address)),
        ("\"--cluster-id=__CLUSTER_ID__\"", format!("--cluster-id={}", fill.cluster_id)),
        ("\"__REGISTER_TOKEN__\"", fill.register_token.to_owned()),
        ("\"__SERVER_CERT__\"", fill.server_cert.to_owned()),
        ("\"__IMAGE__\"", fill.image.to_owned()),
    ] {
        out = out.replace(placeholder, &quoted(&value));
    }
    out
}

/// The CA a cluster's agent must trust: the last certificate of `cert_config.server_cert_file`
/// (the chain's root, or the one self-signed certificate). `None` without TLS or when the file
/// cannot be read (logged).
pub fn gateway_ca(config: &bcs_shared::config::Config) -> Option<String> {
    let file = config.cert_config.server_cert_file.as_deref().map(str::trim).filter(|f| !f.is_empty())?;
    let pem = match std::fs::read_to_string(file) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(file, error = %e, "cannot read cert_config.server_cert_file for agent manifests");
            return None;
        }
    };
    let begin = pem.rfind("-----BEGIN CERTIFICATE-----")?;
    let end = pem[begin..].find("-----END CERTIFICATE-----")? + begin + "-----END CERTIFICATE-----".len();
    Some(format!("{}\n", &pem[begin..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_filled_with_a_quoted_value() {
        let out = render(&Fill {
            bke_address: "https://gw.example.com:8443",
            cluster_id: "bcs-k8s-001-AbCd1234",
            register_token: "tok\"en",
            server_cert: "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n",
            image: "registry.example.com/bcs-kube-agent:1",
        });
        for name in ["BKE_ADDRESS", "CLUSTER_ID", "REGISTER_TOKEN", "SERVER_CERT", "IMAGE"] {
            assert!(!out.contains(&format!("\"__{name}__")) && !out.contains(&format!("=__{name}__\"")), "{out}");
        }
        assert_eq!(out.matches("__BKE_ADDRESS__").count(), 1, "only the comment names it");
        assert!(out.contains(r#""--bke-address=https://gw.example.com:8443""#), "{out}");
        assert!(out.contains(r#"token: "tok\"en""#), "{out}");
        assert!(out.contains(r#"bke-cert: "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n""#), "{out}");
    }
}
