//! Which apiserver addresses answer: a TLS handshake to each (certificate not checked; nothing
//! is sent), as the original did. A refused connection is tried up to three times, one second
//! apart; any other error drops the address at once.
use std::time::Duration;

use crate::http;

const ATTEMPTS: usize = 3;
const RETRY_AFTER: Duration = Duration::from_secs(1);
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);

/// `https://ip:port` of every candidate that completes a TLS handshake, sorted, deduplicated.
pub async fn reachable(candidates: Vec<(String, u16)>) -> Vec<String> {
    let mut probes = tokio::task::JoinSet::new();
    for (ip, port) in candidates {
        probes.spawn(async move {
            let url = if ip.contains(':') { format!("https://[{ip}]:{port}") } else { format!("https://{ip}:{port}") };
            for attempt in 1..=ATTEMPTS {
                match http::connect(&ip, port, Some(http::tls_insecure()), DIAL_TIMEOUT).await {
                    Ok(_) => return Some(url),
                    Err(e) if e.refused() && attempt < ATTEMPTS => {
                        tracing::debug!(address = %url, attempt, "connection refused; retrying");
                        tokio::time::sleep(RETRY_AFTER).await;
                    }
                    Err(e) => {
                        tracing::warn!(address = %url, error = %e, "apiserver address not reachable; not reported");
                        return None;
                    }
                }
            }
            None
        });
    }
    let mut out = Vec::new();
    while let Some(done) = probes.join_next().await {
        if let Ok(Some(url)) = done {
            out.push(url);
        }
    }
    out.sort();
    out.dedup();
    out
}
