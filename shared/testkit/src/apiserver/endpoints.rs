//! Endpoints `default/kubernetes`: where the apiserver says it can be reached. By default the
//! fake's own address (as a one-apiserver cluster); tests may list others, for example an
//! address nothing listens on, to check that an agent probes before it reports.
use std::net::SocketAddr;

use serde_json::{json, Value};

/// The Endpoints object for `addresses`: one subset per address, each with the port named
/// `https` (as kube-apiserver writes it).
pub fn kubernetes(addresses: &[SocketAddr], resource_version: u64) -> Value {
    let subsets: Vec<Value> = addresses
        .iter()
        .map(|a| {
            json!({
                "addresses": [{"ip": a.ip().to_string()}],
                "ports": [{"name": "https", "port": a.port(), "protocol": "TCP"}],
            })
        })
        .collect();
    json!({
        "kind": "Endpoints",
        "apiVersion": "v1",
        "metadata": {
            "name": "kubernetes",
            "namespace": "default",
            "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"},
            "resourceVersion": resource_version.to_string(),
        },
        "subsets": subsets,
    })
}
