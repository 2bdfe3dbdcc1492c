//! `/version` and legacy discovery (`/api`, `/apis`, `/api/v1`). Aggregated discovery requests
//! (`as=APIGroupDiscoveryList` in Accept) get the legacy documents with `application/json`,
//! which client-go takes as "server has no aggregated discovery" and falls back to.
use serde_json::{json, Value};

pub fn version() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24.0",
        "compiler": "gc", "platform": "linux/amd64"
    })
}

pub fn api_versions(server: &str) -> Value {
    json!({
        "kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}]
    })
}

pub fn api_groups() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
}

fn resource(name: &str, kind: &str, namespaced: bool, verbs: &[&str], short: &[&str]) -> Value {
    let mut r = json!({
        "name": name, "singularName": if name.contains('/') { "" } else { name.trim_end_matches('s') },
        "namespaced": namespaced, "kind": kind, "verbs": verbs,
    });
    if !short.is_empty() {
        r["shortNames"] = json!(short);
    }
    r
}

pub fn core_v1() -> Value {
    let crud = ["create", "delete", "get", "list", "watch"];
    json!({
        "kind": "APIResourceList", "groupVersion": "v1",
        "resources": [
            resource("namespaces", "Namespace", false, &crud, &["ns"]),
            resource("pods", "Pod", true, &crud, &["po"]),
            resource("pods/log", "Pod", true, &["get"], &[]),
            resource("pods/exec", "PodExecOptions", true, &["create", "get"], &[]),
            resource("pods/attach", "PodAttachOptions", true, &["create", "get"], &[]),
            resource("pods/portforward", "PodPortForwardOptions", true, &["create", "get"], &[]),
            resource("configmaps", "ConfigMap", true, &crud, &["cm"]),
        ]
    })
}

/// A metav1 Status for errors.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code
    })
}

/// `/openapi/v3`: one group-version, `api/v1`.
pub fn openapi_v3_root() -> Value {
    json!({"paths": {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=FAKE0001"}}})
}

/// `/openapi/v3/api/v1`: no schemas, only what kubectl's query-parameter check reads (a PATCH
/// operation per kind that lists `fieldValidation`), so that it sends `fieldValidation=Strict`
/// instead of downloading schemas for client-side validation.
pub fn openapi_v3_core() -> Value {
    let mut paths = serde_json::Map::new();
    for (plural, kind, namespaced) in
        [("pods", "Pod", true), ("configmaps", "ConfigMap", true), ("namespaces", "Namespace", false)]
    {
        let path = if namespaced {
            format!("/api/v1/namespaces/{{namespace}}/{plural}/{{name}}")
        } else {
            format!("/api/v1/{plural}/{{name}}")
        };
        let op = json!({
            "operationId": format!("patchCoreV1{kind}"),
            "parameters": [
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}}
            ],
            "responses": {"200": {"description": "OK"}},
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": {"group": "", "version": "v1", "kind": kind}
        });
        paths.insert(path, json!({"patch": op}));
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0-fake"},
        "paths": paths,
        "components": {"schemas": {}}
    })
}
