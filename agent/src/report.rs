//! The report loop (reference §4.3): a report at start, then one every period. A network error
//! (bcs-api, the apiserver, or no reachable address), a 5xx, 408 or 429 is retried with capped
//! exponential backoff; a refusal (another 4xx) is logged with bcs-api's message and retried at
//! the next period, and makes the pod not ready. Nothing
//! here ends the agent, and no token is ever logged.
use std::sync::Arc;
use std::time::Duration;

use bcs_shared::secret::Secret;

use crate::cli::Settings;
use crate::http;
use crate::kube;
use crate::metrics::{Failure, Metrics};
use crate::probe;
use crate::sticky::Sticky;

/// Every request (apiserver or bcs-api) must finish within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// First retry after a network error; doubles up to [`backoff_cap`].
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// What one report attempt came to.
#[derive(Debug)]
pub enum Outcome {
    Accepted {
        addresses: usize,
    },
    /// Retry at the next period.
    Refused,
    /// Retry after a backoff.
    Retry,
}

/// The longest wait between two retries: 30 s (the original's fixed retry delay), or the
/// period when that is shorter.
pub fn backoff_cap(period: Duration) -> Duration {
    period.min(Duration::from_secs(30)).max(FIRST_RETRY)
}

pub struct Reporter {
    settings: Settings,
    /// How bcs-api is trusted: the configuration made from the CA's PEM last read (None over
    /// http), kept while the PEM stays the same (its TLS sessions resume).
    gateway_tls: std::sync::Mutex<(String, Option<Arc<rustls::ClientConfig>>)>,
    metrics: Arc<Metrics>,
    sticky: std::sync::Mutex<Sticky>,
}

impl Reporter {
    pub fn new(settings: Settings, metrics: Arc<Metrics>) -> Result<Reporter, String> {
        let reporter = Reporter { settings, gateway_tls: Default::default(), metrics, sticky: Default::default() };
        reporter.gateway_tls()?;
        Ok(reporter)
    }

    /// The TLS configuration to reach bcs-api with now: with `--server-cert-file`, from the
    /// file as it is now (a rotated CA is trusted from the next report on, with no restart).
    fn gateway_tls(&self) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
        let mut held = self.gateway_tls.lock().expect("never poisoned");
        if self.settings.insecure_skip_verify {
            if held.1.is_none() {
                held.1 = Some(http::tls_insecure());
            }
            return Ok(held.1.clone());
        }
        let Some(ca) = &self.settings.server_ca else { return Ok(None) };
        let pem = ca.current()?;
        if held.1.is_none() || held.0 != pem {
            let config = http::tls_trusting(&pem)?;
            *held = (pem, Some(config));
        }
        Ok(held.1.clone())
    }

    /// Reports forever: at start, then every period; retries as described above.
    pub async fn run(&self) {
        let period = self.settings.period;
        let mut backoff = FIRST_RETRY;
        loop {
            let started = tokio::time::Instant::now();
            let wait = match self.report_once().await {
                Outcome::Accepted { .. } | Outcome::Refused => {
                    backoff = FIRST_RETRY;
                    period.saturating_sub(started.elapsed())
                }
                Outcome::Retry => {
                    let wait = backoff;
                    backoff = (backoff * 2).min(backoff_cap(period));
                    tracing::info!(retry_in = ?wait, "will retry");
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// One report: read the access, find the addresses, `PUT` them.
    pub async fn report_once(&self) -> Outcome {
        let register_token = match self.settings.register_token.current() {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the register token");
                self.metrics.failure(Failure::RegisterToken);
                return Outcome::Retry;
            }
        };
        let access = match kube::load(&self.settings.source) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the cluster's access");
                self.metrics.failure(Failure::KubeAccess);
                return Outcome::Retry;
            }
        };
        let addresses = if self.settings.external_addresses.is_empty() {
            let candidates = match kube::endpoint_candidates(&access, REQUEST_TIMEOUT).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(server = %access.server, error = %e, "cannot read Endpoints default/kubernetes");
                    self.metrics.failure(Failure::Endpoints);
                    return Outcome::Retry;
                }
            };
            let listed: Vec<String> = candidates.iter().map(|(ip, port)| probe::url(ip, *port)).collect();
            let reachable = probe::reachable(candidates).await;
            if reachable.is_empty() {
                tracing::error!(
                    listed = listed.len(),
                    "no apiserver address of Endpoints default/kubernetes is reachable; nothing reported"
                );
                self.metrics.failure(Failure::NoAddress);
                return Outcome::Retry;
            }
            self.sticky.lock().expect("never poisoned").choose(&listed, &reachable)
        } else {
            self.settings.external_addresses.clone()
        };
        self.put(&register_token, &access, addresses).await
    }

    async fn put(&self, register_token: &Secret, access: &kube::Access, addresses: Vec<String>) -> Outcome {
        let gateway_tls = match self.gateway_tls() {
            Ok(tls) => tls,
            Err(e) => {
                tracing::error!(error = %e, "cannot read bcs-api's CA");
                self.metrics.failure(Failure::ServerCert);
                return Outcome::Retry;
            }
        };
        let server_addresses = addresses.join(";");
        let body = serde_json::json!({
            "register_token": register_token.expose(),
            "server_addresses": server_addresses,
            "cacert_data": access.ca_pem,
            "user_token": access.token.expose(),
        });
        let url = &self.settings.report_url;
        let answer = http::request(
            ::http::Method::PUT,
            url,
            &[
                ("content-type", "application/json".into()),
                ("accept", "application/json".into()),
                ("user-agent", concat!("bcs-kube-agent/", env!("CARGO_PKG_VERSION")).into()),
            ],
            Some(body.to_string().into_bytes()),
            gateway_tls,
            REQUEST_TIMEOUT,
        )
        .await;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "cannot reach bcs-api");
                self.metrics.failure(Failure::Network);
                return Outcome::Retry;
            }
        };
        if (200..300).contains(&answer.status) {
            tracing::debug!(cluster = %self.settings.cluster_id, addresses = %server_addresses, "report accepted");
            if !self.metrics.ready() {
                tracing::info!(cluster = %self.settings.cluster_id, addresses = %server_addresses, "first report accepted");
            }
            self.metrics.success(addresses.len());
            return Outcome::Accepted { addresses: addresses.len() };
        }
        // bcs-api never echoes a token; redact anyway, in case something in between does, and
        // before anything is cut short (a token cut in two would not be found).
        let body = redact(&String::from_utf8_lossy(&answer.body), &[register_token.expose(), access.token.expose()]);
        let (code_name, message) = error_body(&body);
        // 408 and 429 (from bcs-api, or a load balancer in front of it) say "later", not "no".
        if answer.status >= 500 || matches!(answer.status, 408 | 429) {
            tracing::error!(status = answer.status, code_name = %code_name, message = %message, "bcs-api failed the report");
            self.metrics.failure(Failure::ServerError);
            return Outcome::Retry;
        }
        tracing::error!(
            status = answer.status,
            code_name = %code_name,
            message = %message,
            cluster = %self.settings.cluster_id,
            "bcs-api refused the report; retrying at the next period"
        );
        self.metrics.failure(Failure::Rejected);
        self.metrics.refused();
        Outcome::Refused
    }
}

/// `text` with every non-empty secret replaced by `***`.
fn redact(text: &str, secrets: &[&str]) -> String {
    let mut text = text.to_owned();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(secret, "***");
    }
    text
}

/// `code_name` and `message` of bcs-api's error body (`{"code_name", "message"}`), or the first
/// 256 characters of anything else; a message is logged up to 1 024 characters.
fn error_body(body: &str) -> (String, String) {
    let first = |text: &str, n: usize| text.chars().take(n).collect::<String>();
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v) => (
            first(v["code_name"].as_str().unwrap_or_default(), 64),
            first(&v["message"].as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()), 1024),
        ),
        Err(_) => (String::new(), first(body, 256)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_is_capped_by_thirty_seconds_or_the_period() {
        assert_eq!(backoff_cap(Duration::from_secs(60)), Duration::from_secs(30));
        assert_eq!(backoff_cap(Duration::from_secs(5)), Duration::from_secs(5));
        assert_eq!(backoff_cap(Duration::from_millis(10)), FIRST_RETRY);
    }

    #[test]
    fn error_bodies_give_code_and_message() {
        assert_eq!(
            error_body(r#"{"code_name":"UNAUTHORIZED","message":"errcode: 1405059, bad"}"#),
            ("UNAUTHORIZED".to_owned(), "errcode: 1405059, bad".to_owned())
        );
        assert_eq!(error_body("<html>"), (String::new(), "<html>".to_owned()));
    }

    #[test]
    fn a_token_across_the_cut_is_redacted_whole_before_the_body_is_shortened() {
        let token = "sEcReTtOkEn0123456789";
        let page = format!("<html>{}{token}</html>", "x".repeat(245));
        let (_, message) = error_body(&redact(&page, &[token, ""]));
        // Cut first, the page would keep the token's first 5 characters.
        assert!(!message.contains("sEc"), "{message}");
        assert_eq!(message.chars().count(), 256);
        assert!(message.ends_with("x***</"), "{message}");
    }
}
