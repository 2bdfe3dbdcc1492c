//! The six `bke-*` ClusterRoles (reference §6.2) in `rbac.authorization.k8s.io/v1`, and the
//! shape of the bindings the gateway owns.
//!
//! A "view" role grants only get, list and watch, and `workloads-view` names none of
//! `pods/exec`, `pods/attach`, `pods/portforward` and `pods/proxy`: before Kubernetes 1.35 an
//! apiserver authorised a WebSocket exec (a GET) as `get` on `pods/exec`, so `get` there was
//! a shell in the pod (kubernetes/kubernetes#78741). `cluster-readonly` grants reading `*`, as
//! the original's did, which includes those subresources and Secrets: the proxy asks the
//! cluster for `create` before any upgrade to exec, attach, port-forward or a node's proxy
//! (`bcs_proxy::guard`), and the README says what reading Secrets gives.
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub use bcs_shared::config::RBAC_ROLES as ROLES;

/// Label on every object the gateway owns; bindings without it are never touched.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "bcs-api";
/// `app.kubernetes.io/managed-by=bcs-api`, URL-encoded for `labelSelector`.
pub const OWNED_SELECTOR: &str = "app.kubernetes.io%2Fmanaged-by%3Dbcs-api";
/// Annotations for humans: who and what a binding is for.
pub const SUBJECT_ANNOTATION: &str = "bcs-api.bk-bcs/subject";
pub const ROLE_ANNOTATION: &str = "bcs-api.bk-bcs/role";
/// The bcs-api cluster a binding was made for: two cluster ids registered for one physical
/// cluster (a re-registration, a BCS cluster in two projects) each keep to their own bindings
/// instead of deleting each other's. (An annotation: a cluster id may exceed a label's 63
/// characters.)
pub const CLUSTER_ANNOTATION: &str = "bcs-api.bk-bcs/cluster-id";

const READ: [&str; 3] = ["get", "list", "watch"];

/// `cluster-readonly` -> `bke-cluster-readonly`.
pub fn cluster_role_name(role: &str) -> String {
    format!("bke-{role}")
}

/// A role template name as a user may write it: `cluster-readonly` or `bke-cluster-readonly`.
pub fn parse_role(text: &str) -> Option<&'static str> {
    let bare = text.trim().strip_prefix("bke-").unwrap_or(text.trim());
    ROLES.iter().copied().find(|r| *r == bare)
}

/// The rules of a template; `None` for an unknown name.
pub fn rules(role: &str) -> Option<Value> {
    // A shell, a port and a pod's HTTP: what managing workloads adds to viewing them.
    let into_pods = ["pods/attach", "pods/exec", "pods/portforward", "pods/proxy"];
    let workloads = [
        "pods",
        "replicationcontrollers",
        "replicationcontrollers/scale",
        "daemonsets",
        "deployments",
        "deployments/rollback",
        "deployments/scale",
        "replicasets",
        "replicasets/scale",
        "statefulsets",
        "cronjobs",
        "jobs",
        "horizontalpodautoscalers",
    ];
    let workloads_read_only = [
        "limitranges",
        "pods/log",
        "pods/status",
        "replicationcontrollers/status",
        "resourcequotas",
        "resourcequotas/status",
        "bindings",
    ];
    let services = ["services", "endpoints"];
    Some(match role {
        "cluster-manage" => json!([
            {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
            {"nonResourceURLs": ["*"], "verbs": ["*"]},
        ]),
        "cluster-readonly" => json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": READ}]),
        "services-view" => json!([{"apiGroups": ["*"], "resources": services, "verbs": READ}]),
        "services-manage" => json!([{"apiGroups": ["*"], "resources": services, "verbs": ["*"]}]),
        "workloads-view" => json!([
            {"apiGroups": ["*"], "resources": workloads, "verbs": READ},
            {"apiGroups": ["*"], "resources": workloads_read_only, "verbs": READ},
        ]),
        "workloads-manage" => json!([
            {"apiGroups": ["*"], "resources": workloads, "verbs": ["*"]},
            {"apiGroups": ["*"], "resources": into_pods, "verbs": ["*"]},
            {"apiGroups": ["*"], "resources": workloads_read_only, "verbs": READ},
        ]),
        _ => return None,
    })
}

/// The ClusterRole object of a template.
pub fn cluster_role(role: &str) -> Option<Value> {
    Some(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": cluster_role_name(role), "labels": {MANAGED_BY_LABEL: MANAGED_BY}},
        "rules": rules(role)?,
    }))
}

/// Rules as the apiserver may return them (empty lists left out, absent fields as absent),
/// for comparing what a cluster has with the template.
pub fn normalize_rules(rules: &Value) -> Value {
    let Some(rules) = rules.as_array() else { return json!([]) };
    Value::Array(
        rules
            .iter()
            .map(|rule| {
                let mut out = serde_json::Map::new();
                if let Some(fields) = rule.as_object() {
                    for (k, v) in fields {
                        if v.as_array().is_some_and(|a| !a.is_empty()) {
                            out.insert(k.clone(), v.clone());
                        }
                    }
                }
                Value::Object(out)
            })
            .collect(),
    )
}

/// The name of the binding of `subject` to `role`: readable, a valid object name whatever the
/// subject, and unique (a hash of the exact subject and role).
pub fn binding_name(subject: &str, role: &str) -> String {
    let mut readable: String = subject
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' })
        .collect();
    readable.truncate(150);
    let hash = Sha256::digest(format!("{subject}\n{role}").as_bytes());
    format!("bcs-api-{role}-{}-{}", readable.trim_matches(|c| c == '.' || c == '-'), &hex::encode(hash)[..8])
}

/// A binding the gateway owns for the bcs-api cluster `cluster_id`: a ClusterRoleBinding
/// (`namespace` empty) or a RoleBinding, one subject `User <subject>`, roleRef the ClusterRole
/// `bke-<role>`.
pub fn binding(subject: &str, role: &str, namespace: &str, cluster_id: &str) -> Value {
    let kind = if namespace.is_empty() { "ClusterRoleBinding" } else { "RoleBinding" };
    let mut metadata = json!({
        "name": binding_name(subject, role),
        "labels": {MANAGED_BY_LABEL: MANAGED_BY},
        "annotations": {SUBJECT_ANNOTATION: subject, ROLE_ANNOTATION: role, CLUSTER_ANNOTATION: cluster_id},
    });
    if !namespace.is_empty() {
        metadata["namespace"] = json!(namespace);
    }
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": metadata,
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": subject}],
        "roleRef": {"kind": "ClusterRole", "apiGroup": "rbac.authorization.k8s.io", "name": cluster_role_name(role)},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn six_templates_and_no_view_role_can_exec() {
        for role in ROLES {
            let rules = rules(role).unwrap();
            if role.ends_with("-view") || role.ends_with("-readonly") {
                for rule in rules.as_array().unwrap() {
                    assert_eq!(rule["verbs"], json!(READ), "{role}");
                }
            }
        }
        assert!(rules("cluster-admin").is_none());
        assert_eq!(parse_role("bke-workloads-view"), Some("workloads-view"));
        assert_eq!(parse_role("admin"), None);
    }

    #[test]
    fn binding_names_are_valid_and_distinct() {
        let a = binding_name("plain.alice", "cluster-readonly");
        assert!(a.starts_with("bcs-api-cluster-readonly-plain.alice-"), "{a}");
        assert_ne!(a, binding_name("plain.Alice", "cluster-readonly"));
        assert_ne!(a, binding_name("plain.alice", "cluster-manage"));
        let odd = binding_name("user.a/b:c", "services-view");
        assert!(!odd.contains('/') && !odd.contains(':'), "{odd}");
    }

    #[test]
    fn normalized_rules_ignore_empty_lists() {
        let from_cluster =
            json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list", "watch"], "resourceNames": []}]);
        assert_eq!(normalize_rules(&from_cluster), normalize_rules(&rules("cluster-readonly").unwrap()));
    }
}
