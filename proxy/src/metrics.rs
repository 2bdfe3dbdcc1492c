//! The proxy's Prometheus metrics (`bcs_api_*`), kept per core without contention and added up
//! when `/metrics` is read.
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex, OnceLock};

use crate::tables;

/// Latency buckets in seconds: exponential from 0.25 ms, the original's 16 (to 8.192 s) and four
/// more to 131 s, so the 10-s connect timeout and the default 120-s response-head timeout land in a
/// bucket of their own instead of +Inf.
const BUCKET_COUNT: usize = 20;
const BUCKETS: [f64; BUCKET_COUNT] = {
    let mut b = [0.00025; BUCKET_COUNT];
    let mut i = 1;
    while i < BUCKET_COUNT {
        b[i] = b[i - 1] * 2.0;
        i += 1;
    }
    b
};

#[derive(Default)]
struct Core {
    /// (route type, method, status) -> count
    requests: BTreeMap<(&'static str, &'static str, u16), u64>,
    /// route type -> (bucket counts, sum, count)
    latency: BTreeMap<&'static str, ([u64; BUCKET_COUNT], f64, u64)>,
    /// (cluster id, `admin` or `console`; reason) -> count
    upstream_connect_errors: BTreeMap<(String, &'static str), u64>,
    /// (route type, status, reason) -> requests the gateway answered itself with an error
    gateway_errors: BTreeMap<(&'static str, u16, &'static str), u64>,
    /// TLS handshakes with upstreams: [full, resumed from a ticket].
    upstream_handshakes: [u64; 2],
    active_connections: i64,
    active_streams: i64,
    pooled: usize,
    tls_configs: usize,
}

static CORES: OnceLock<Mutex<Vec<Arc<Mutex<Core>>>>> = OnceLock::new();

/// `proxy_config.max_connections` as the cores enforce it (per core, rounded up, times cores).
static CONNECTION_LIMIT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub fn set_connection_limit(n: usize) {
    CONNECTION_LIMIT.store(n, std::sync::atomic::Ordering::Relaxed);
}

thread_local! {
    static MINE: RefCell<Option<Arc<Mutex<Core>>>> = const { RefCell::new(None) };
}

fn with_core(f: impl FnOnce(&mut Core)) {
    MINE.with(|mine| {
        let mut mine = mine.borrow_mut();
        let core = mine.get_or_insert_with(|| {
            let core = Arc::new(Mutex::new(Core::default()));
            CORES.get_or_init(Default::default).lock().unwrap().push(core.clone());
            core
        });
        f(&mut core.lock().unwrap());
    })
}

/// The method as a label without allocating (anything unusual is `OTHER`).
fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    }
}

/// A request answered after `seconds` (None: a head that could not be read, which has no
/// start to time from: counted, not timed).
pub fn request_done(route: &'static str, method: &str, status: u16, seconds: Option<f64>) {
    let method = method_label(method);
    with_core(|c| {
        *c.requests.entry((route, method, status)).or_default() += 1;
        let Some(seconds) = seconds else { return };
        let (buckets, sum, count) = c.latency.entry(route).or_insert(([0; BUCKET_COUNT], 0.0, 0));
        for (i, le) in BUCKETS.iter().enumerate() {
            if seconds <= *le {
                buckets[i] += 1;
            }
        }
        *sum += seconds;
        *count += 1;
    });
}

/// A connection to an upstream of `whose` could not be made, for `reason`.
pub fn upstream_connect_error(whose: &str, reason: &'static str) {
    with_core(|c| *c.upstream_connect_errors.entry((whose.to_owned(), reason)).or_default() += 1);
}

/// Keeps the connect-error counts of the upstream owners `keep` says are still there.
pub fn forget_clusters(keep: impl Fn(&str) -> bool) {
    with_core(|c| c.upstream_connect_errors.retain(|(whose, _), _| keep(whose)));
}

/// A request the gateway answered itself with `error`, not one its upstream answered: counted
/// as every request ([`request_done`]) and by the error's reason, so that an operator tells an
/// apiserver's own 5xx from the gateway's.
pub fn gateway_error(route: &'static str, method: &str, error: &crate::error::ProxyError, seconds: Option<f64>) {
    let status = error.status();
    request_done(route, method, status, seconds);
    with_core(|c| *c.gateway_errors.entry((route, status, error.reason())).or_default() += 1);
}

/// A TLS handshake with an upstream finished; `resumed`: from a session ticket (no certificate
/// verification), else a full one.
pub fn upstream_handshake(resumed: bool) {
    with_core(|c| c.upstream_handshakes[usize::from(resumed)] += 1);
}

pub fn connection_opened() {
    with_core(|c| c.active_connections += 1);
}

pub fn connection_closed() {
    with_core(|c| c.active_connections -= 1);
}

pub fn stream_opened() {
    with_core(|c| c.active_streams += 1);
}

pub fn stream_closed() {
    with_core(|c| c.active_streams -= 1);
}

pub fn set_pooled(n: usize) {
    with_core(|c| c.pooled = n);
}

pub fn set_tls_configs(n: usize) {
    with_core(|c| c.tls_configs = n);
}

/// Prometheus text format of every core's counters added up.
pub fn render() -> String {
    let mut requests: BTreeMap<(&'static str, &'static str, u16), u64> = BTreeMap::new();
    let mut latency: BTreeMap<&'static str, ([u64; BUCKET_COUNT], f64, u64)> = BTreeMap::new();
    let mut connect_errors: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
    let mut gateway_errors: BTreeMap<(&'static str, u16, &'static str), u64> = BTreeMap::new();
    let (mut connections, mut streams, mut pooled) = (0i64, 0i64, 0usize);
    let mut tls_configs = 0usize;
    let mut handshakes = [0u64; 2];
    if let Some(cores) = CORES.get() {
        for core in cores.lock().unwrap().iter() {
            let core = core.lock().unwrap();
            for (k, v) in &core.requests {
                *requests.entry(*k).or_default() += v;
            }
            for (k, (b, s, n)) in &core.latency {
                let e = latency.entry(k).or_insert(([0; BUCKET_COUNT], 0.0, 0));
                for (total, count) in e.0.iter_mut().zip(b) {
                    *total += count;
                }
                e.1 += s;
                e.2 += n;
            }
            for (k, v) in &core.upstream_connect_errors {
                *connect_errors.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &core.gateway_errors {
                *gateway_errors.entry(*k).or_default() += v;
            }
            handshakes[0] += core.upstream_handshakes[0];
            handshakes[1] += core.upstream_handshakes[1];
            connections += core.active_connections;
            streams += core.active_streams;
            pooled += core.pooled;
            tls_configs += core.tls_configs;
        }
    }
    let mut out = String::new();
    out.push_str("# HELP bcs_api_request_count_total Requests answered by the proxy\n# TYPE bcs_api_request_count_total counter\n");
    for ((route, method, status), v) in &requests {
        let _ =
            writeln!(out, "bcs_api_request_count_total{{type=\"{route}\",method=\"{method}\",code=\"{status}\"}} {v}");
    }
    out.push_str("# HELP bcs_api_request_err_count_total Requests answered with 4xx or 5xx\n# TYPE bcs_api_request_err_count_total counter\n");
    for ((route, method, status), v) in requests.iter().filter(|((_, _, s), _)| *s >= 400) {
        let _ = writeln!(
            out,
            "bcs_api_request_err_count_total{{type=\"{route}\",method=\"{method}\",code=\"{status}\"}} {v}"
        );
    }
    out.push_str("# HELP bcs_api_request_latency_seconds Time to the end of the response\n# TYPE bcs_api_request_latency_seconds histogram\n");
    for (route, (buckets, sum, count)) in &latency {
        for (i, le) in BUCKETS.iter().enumerate() {
            let _ =
                writeln!(out, "bcs_api_request_latency_seconds_bucket{{type=\"{route}\",le=\"{le}\"}} {}", buckets[i]);
        }
        let _ = writeln!(out, "bcs_api_request_latency_seconds_bucket{{type=\"{route}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "bcs_api_request_latency_seconds_sum{{type=\"{route}\"}} {sum}");
        let _ = writeln!(out, "bcs_api_request_latency_seconds_count{{type=\"{route}\"}} {count}");
    }
    out.push_str("# HELP bcs_api_gateway_errors_total Requests the gateway answered itself with an error (not its upstream), by reason\n# TYPE bcs_api_gateway_errors_total counter\n");
    for ((route, status, reason), v) in &gateway_errors {
        let _ =
            writeln!(out, "bcs_api_gateway_errors_total{{type=\"{route}\",code=\"{status}\",reason=\"{reason}\"}} {v}");
    }
    out.push_str("# HELP bcs_api_upstream_connect_errors_total Failed connections to upstreams, by cluster (its id; admin; console) and reason\n# TYPE bcs_api_upstream_connect_errors_total counter\n");
    for ((whose, reason), v) in &connect_errors {
        let _ = writeln!(
            out,
            "bcs_api_upstream_connect_errors_total{{cluster=\"{}\",reason=\"{reason}\"}} {v}",
            label(whose)
        );
    }
    out.push_str("# HELP bcs_api_upstream_tls_handshakes_total TLS handshakes with upstreams, full or resumed from a session ticket\n# TYPE bcs_api_upstream_tls_handshakes_total counter\n");
    for (kind, n) in ["full", "resumed"].iter().zip(handshakes) {
        let _ = writeln!(out, "bcs_api_upstream_tls_handshakes_total{{kind=\"{kind}\"}} {n}");
    }
    let tables = tables::current();
    let gauges = [
        ("bcs_api_active_connections", "gauge", "Open client connections", connections as f64),
        (
            "bcs_api_connection_limit",
            "gauge",
            "Client connections the proxy holds at most (proxy_config.max_connections; more are answered 503)",
            CONNECTION_LIMIT.load(std::sync::atomic::Ordering::Relaxed) as f64,
        ),
        ("bcs_api_active_streams", "gauge", "Open watch, log, exec and port-forward streams", streams as f64),
        ("bcs_api_upstream_pool_idle", "gauge", "Idle pooled upstream connections", pooled as f64),
        (
            "bcs_api_upstream_tls_configs",
            "gauge",
            "Clusters' TLS configurations (CA roots, session tickets) held, over all cores",
            tls_configs as f64,
        ),
        (
            "bcs_api_snapshot_revision",
            "gauge",
            "Revision of the snapshot in use",
            tables.as_ref().map_or(0.0, |t| t.revision as f64),
        ),
        (
            "bcs_api_snapshot_age_seconds",
            "gauge",
            "Seconds since the snapshot in use was built by admin",
            tables.as_ref().map_or(-1.0, |t| (tables::now() - t.generated_at) as f64),
        ),
        (
            "bcs_api_admin_connected",
            "gauge",
            "1 while the snapshot socket to bcs-api (admin) is connected",
            if crate::control::admin_connected() { 1.0 } else { 0.0 },
        ),
        (
            "bcs_api_admin_disconnected_seconds",
            "gauge",
            "Seconds since the snapshot socket to bcs-api was lost (0 while connected)",
            crate::control::admin_gone_for().unwrap_or(0) as f64,
        ),
        (
            "bcs_api_clusters",
            "gauge",
            "Clusters in the snapshot",
            tables.as_ref().map_or(0.0, |t| t.cluster_count() as f64),
        ),
    ];
    for (name, kind, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    }
    out
}

/// A label value as the text format wants it: `\\`, `"` and a line feed escaped (a mesos
/// cluster id is a ZooKeeper node's name, which may hold any of them).
fn label(value: &str) -> Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(value);
    }
    Cow::Owned(value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_that_ends_on_a_timeout_lands_in_a_bucket_of_its_own() {
        // The original's 16 buckets stop at 8.192 s: the 10-s connect timeout and the 120-s
        // answer timeout were +Inf.
        assert_eq!(BUCKETS[15], 8.192);
        assert_eq!(BUCKETS[BUCKET_COUNT - 1], 131.072);
        request_done("k8s", "GET", 504, Some(120.0));
        let text = render();
        assert!(text.contains("bcs_api_request_latency_seconds_bucket{type=\"k8s\",le=\"65.536\"} 0"), "{text}");
        assert!(text.contains("bcs_api_request_latency_seconds_bucket{type=\"k8s\",le=\"131.072\"} 1"), "{text}");
    }

    #[test]
    fn connect_errors_are_counted_by_cluster_and_reason_with_labels_escaped() {
        upstream_connect_error("BCS-K8S-1", "connect");
        upstream_connect_error("BCS-K8S-1", "connect");
        upstream_connect_error("a\"b\\c\nd", "tls");
        // Another route than the test above, whose buckets it reads.
        gateway_error("mesos", "GET", &crate::error::ProxyError::UpstreamConnect("x".into()), Some(0.1));
        let text = render();
        for line in [
            "bcs_api_upstream_connect_errors_total{cluster=\"BCS-K8S-1\",reason=\"connect\"} 2",
            "bcs_api_upstream_connect_errors_total{cluster=\"a\\\"b\\\\c\\nd\",reason=\"tls\"} 1",
            "bcs_api_gateway_errors_total{type=\"mesos\",code=\"502\",reason=\"upstream_connect\"} 1",
            "bcs_api_request_count_total{type=\"mesos\",method=\"GET\",code=\"502\"} 1",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
