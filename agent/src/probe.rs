//! Which apiserver addresses answer: a TLS handshake to each (certificate not checked; nothing
//! is sent), as the original did. A failed one is tried up to three times, one second apart
//! (the original retried only a refused connection: a handshake that timed out once, or a
//! reset, dropped the address, and changed the cluster's credentials).
use std::time::Duration;

use crate::http;

const ATTEMPTS: usize = 3;
const RETRY_AFTER: Duration = Duration::from_secs(1);
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);

/// How an address is reported: `https://ip:port` (an IPv6 address in brackets).
pub fn url(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("https://[{ip}]:{port}")
    } else {
        format!("https://{ip}:{port}")
    }
}

/// `https://ip:port` of every candidate that completes a TLS handshake, sorted, deduplicated.
pub async fn reachable(candidates: Vec<(String, u16)>) -> Vec<String> {
    let mut probes = tokio::task::JoinSet::new();
    for (ip, port) in candidates {
        probes.spawn(async move {
            let url = url(&ip, port);
            for attempt in 1..=ATTEMPTS {
                match http::connect(&ip, port, Some(http::tls_insecure()), DIAL_TIMEOUT).await {
                    Ok(_) => return Some(url),
                    Err(e) if attempt < ATTEMPTS => {
                        tracing::debug!(address = %url, attempt, error = %e, "no TLS handshake; retrying");
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
