//! RBAC in the fake: ClusterRoles, ClusterRoleBindings and RoleBindings of
//! `rbac.authorization.k8s.io/v1` (create, get, list with label selectors, update, delete), and,
//! with [`super::FakeOptions::enforce_rbac`], their enforcement on every other request that
//! carries `Impersonate-User`.
//!
//! A request without `Impersonate-User` acts as the cluster admin (the cluster token is
//! cluster-admin). An impersonated user may do what a ClusterRoleBinding (anywhere) or a
//! RoleBinding (in the request's namespace) naming it grants through the referenced
//! ClusterRole's rules; discovery (`/api`, `/apis`, `/version`, `/openapi`, health) is open to
//! every authenticated user, as `system:discovery` makes it on a real cluster.
//! Exec, attach and port-forward are authorised by the request's method, as before Kubernetes
//! 1.35: `create` over SPDY (a POST), but only `get` over WebSocket (a GET upgrade;
//! kubernetes/kubernetes#78741, closed in 1.35 by also requiring `create`). The gateway must
//! not rely on either (rewrite's upgrade check asks for `create` itself).
use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::discovery::status;
use super::FakeApiserver;

pub const GROUP: &str = "rbac.authorization.k8s.io";
pub(crate) const PREFIX: &str = "/apis/rbac.authorization.k8s.io/v1/";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RbacKind {
    ClusterRole,
    ClusterRoleBinding,
    RoleBinding,
}

impl RbacKind {
    pub fn from_resource(resource: &str) -> Option<RbacKind> {
        match resource {
            "clusterroles" => Some(RbacKind::ClusterRole),
            "clusterrolebindings" => Some(RbacKind::ClusterRoleBinding),
            "rolebindings" => Some(RbacKind::RoleBinding),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            RbacKind::ClusterRole => "ClusterRole",
            RbacKind::ClusterRoleBinding => "ClusterRoleBinding",
            RbacKind::RoleBinding => "RoleBinding",
        }
    }
    pub fn resource(self) -> &'static str {
        match self {
            RbacKind::ClusterRole => "clusterroles",
            RbacKind::ClusterRoleBinding => "clusterrolebindings",
            RbacKind::RoleBinding => "rolebindings",
        }
    }
    pub fn namespaced(self) -> bool {
        self == RbacKind::RoleBinding
    }
}

type Key = (RbacKind, String, String);

/// The RBAC objects, apart from the other objects (their own resourceVersion counter).
#[derive(Default)]
pub struct RbacStore {
    resource_version: u64,
    uid: u64,
    objects: BTreeMap<Key, Value>,
}

type Failure = (u16, &'static str, String);

impl RbacStore {
    fn key(kind: RbacKind, namespace: &str, name: &str) -> Key {
        let ns = if kind.namespaced() { namespace } else { "" };
        (kind, ns.to_string(), name.to_string())
    }

    pub fn create(&mut self, kind: RbacKind, namespace: &str, mut object: Value) -> Result<Value, Failure> {
        if !object.is_object() || !object["metadata"].is_object() {
            return Err((400, "BadRequest", "the body has no metadata".into()));
        }
        let mut name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        if name.is_empty() {
            let Some(prefix) = object["metadata"]["generateName"].as_str().filter(|p| !p.is_empty()) else {
                return Err((422, "Invalid", "metadata.name: Required value".into()));
            };
            self.uid += 1;
            name = format!("{prefix}{:05x}", self.uid);
        }
        validate(kind, &object)?;
        let key = Self::key(kind, namespace, &name);
        if self.objects.contains_key(&key) {
            return Err((409, "AlreadyExists", format!("{}.{GROUP} \"{name}\" already exists", kind.resource())));
        }
        self.resource_version += 1;
        self.uid += 1;
        object["kind"] = json!(kind.name());
        object["apiVersion"] = json!(format!("{GROUP}/v1"));
        let meta = &mut object["metadata"];
        meta["name"] = json!(name);
        if kind.namespaced() {
            meta["namespace"] = json!(namespace);
        }
        meta["uid"] = json!(format!("00000000-0000-4000-9000-{:012x}", self.uid));
        meta["resourceVersion"] = json!(self.resource_version.to_string());
        meta["creationTimestamp"] = json!(super::store::now());
        self.objects.insert(key, object.clone());
        Ok(object)
    }

    /// PUT: replaces the object, keeping its identity. A stale `resourceVersion` is 409, a
    /// changed binding `roleRef` 422 (it is immutable, as on a real cluster).
    pub fn update(&mut self, kind: RbacKind, namespace: &str, name: &str, mut object: Value) -> Result<Value, Failure> {
        let key = Self::key(kind, namespace, name);
        let Some(old) = self.objects.get(&key) else {
            return Err((404, "NotFound", format!("{}.{GROUP} \"{name}\" not found", kind.resource())));
        };
        if object["metadata"]["name"].as_str().is_some_and(|n| n != name) {
            return Err((400, "BadRequest", "the name of the object does not match the name on the URL".into()));
        }
        if let Some(rv) = object["metadata"]["resourceVersion"].as_str().filter(|v| !v.is_empty()) {
            if old["metadata"]["resourceVersion"].as_str() != Some(rv) {
                return Err((
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {}.{GROUP} \"{name}\": the object has been modified",
                        kind.resource()
                    ),
                ));
            }
        }
        validate(kind, &object)?;
        if kind != RbacKind::ClusterRole && old["roleRef"] != object["roleRef"] {
            return Err((
                422,
                "Invalid",
                format!("{} \"{name}\" is invalid: roleRef: Invalid value: cannot change roleRef", kind.name()),
            ));
        }
        self.resource_version += 1;
        object["kind"] = json!(kind.name());
        object["apiVersion"] = json!(format!("{GROUP}/v1"));
        let mut meta = old["metadata"].clone();
        for field in ["labels", "annotations"] {
            meta[field] = object["metadata"][field].clone();
            if meta[field].is_null() {
                meta.as_object_mut().expect("metadata").remove(field);
            }
        }
        meta["resourceVersion"] = json!(self.resource_version.to_string());
        object["metadata"] = meta;
        self.objects.insert(key, object.clone());
        Ok(object)
    }

    pub fn delete(&mut self, kind: RbacKind, namespace: &str, name: &str) -> Option<Value> {
        let object = self.objects.remove(&Self::key(kind, namespace, name))?;
        self.resource_version += 1;
        Some(object)
    }

    pub fn get(&self, kind: RbacKind, namespace: &str, name: &str) -> Option<Value> {
        self.objects.get(&Self::key(kind, namespace, name)).cloned()
    }

    /// Objects of `kind` (in `namespace` when given) whose labels match `selector`.
    pub fn list(&self, kind: RbacKind, namespace: Option<&str>, selector: &Selector) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((k, ns, _), o)| {
                *k == kind && namespace.is_none_or(|want| want == ns) && selector.matches(&o["metadata"]["labels"])
            })
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Whether `user` (with `groups`) may do `attributes`.
    pub fn allows(&self, user: &str, groups: &[String], attributes: &Attributes) -> bool {
        let names_subject = |binding: &Value| {
            binding["subjects"].as_array().is_some_and(|subjects| {
                subjects.iter().any(|s| match s["kind"].as_str() {
                    Some("User") => s["name"] == user,
                    Some("Group") => s["name"].as_str().is_some_and(|g| groups.iter().any(|have| have == g)),
                    _ => false,
                })
            })
        };
        let role_rules = |binding: &Value| -> Vec<Value> {
            if binding["roleRef"]["kind"] != "ClusterRole" {
                return Vec::new();
            }
            let name = binding["roleRef"]["name"].as_str().unwrap_or_default();
            self.get(RbacKind::ClusterRole, "", name).and_then(|r| r["rules"].as_array().cloned()).unwrap_or_default()
        };
        let mut rules = Vec::new();
        for ((kind, ns, _), binding) in &self.objects {
            let applies = match kind {
                RbacKind::ClusterRoleBinding => true,
                RbacKind::RoleBinding => {
                    attributes.resource.is_some() && attributes.namespace.as_deref() == Some(ns.as_str())
                }
                RbacKind::ClusterRole => false,
            };
            if applies && names_subject(binding) {
                rules.extend(role_rules(binding));
            }
        }
        rules.iter().any(|rule| rule_allows(rule, attributes))
    }
}

fn validate(kind: RbacKind, object: &Value) -> Result<(), Failure> {
    let invalid = |m: &str| Err((422, "Invalid", format!("{} is invalid: {m}", kind.name())));
    match kind {
        RbacKind::ClusterRole => {
            if !(object["rules"].is_array() || object["rules"].is_null()) {
                return invalid("rules: must be a list");
            }
        }
        _ => {
            if object["roleRef"]["name"].as_str().is_none_or(str::is_empty) {
                return invalid("roleRef.name: Required value");
            }
            if !matches!(object["roleRef"]["kind"].as_str(), Some("ClusterRole" | "Role")) {
                return invalid("roleRef.kind: Unsupported value");
            }
            for s in object["subjects"].as_array().map(Vec::as_slice).unwrap_or_default() {
                if s["name"].as_str().is_none_or(str::is_empty) {
                    return invalid("subjects.name: Required value");
                }
            }
        }
    }
    Ok(())
}

/// A label selector: `a=b`, `a==b`, `a!=b`, `a`, `!a`, joined by `,` (all must hold).
#[derive(Debug, Default, Clone)]
pub struct Selector(Vec<(String, Op)>);

#[derive(Debug, Clone)]
enum Op {
    Eq(String),
    Ne(String),
    Exists,
    Missing,
}

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, String> {
        let mut out = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let parsed = if let Some((k, v)) = term.split_once("!=") {
                (k.trim().to_string(), Op::Ne(v.trim().to_string()))
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (k.trim().to_string(), Op::Eq(v.trim().to_string()))
            } else if let Some(k) = term.strip_prefix('!') {
                (k.trim().to_string(), Op::Missing)
            } else if term.contains(' ') || term.contains('(') {
                return Err(format!("unsupported selector term {term:?}"));
            } else {
                (term.to_string(), Op::Exists)
            };
            out.push(parsed);
        }
        Ok(Selector(out))
    }

    pub fn matches(&self, labels: &Value) -> bool {
        self.0.iter().all(|(k, op)| {
            let have = labels.get(k).and_then(Value::as_str);
            match op {
                Op::Eq(v) => have == Some(v.as_str()),
                Op::Ne(v) => have != Some(v.as_str()),
                Op::Exists => have.is_some(),
                Op::Missing => have.is_none(),
            }
        })
    }
}

/// What a request asks to do, as the authorizer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    /// `None` for non-resource requests.
    pub resource: Option<String>,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub path: String,
}

impl Attributes {
    /// From a request line. `upgrade`: an exec/attach/port-forward connection.
    pub fn of(method: &str, path: &str, watch: bool) -> Attributes {
        let trimmed = path.trim_end_matches('/');
        let segs: Vec<&str> = trimmed.split('/').skip(1).collect();
        let (group, rest): (&str, &[&str]) = match segs.as_slice() {
            ["api", "v1", rest @ ..] if !rest.is_empty() => ("", rest),
            ["apis", group, _version, rest @ ..] if !rest.is_empty() => (group, rest),
            _ => {
                let verb = match method {
                    "GET" | "HEAD" => "get",
                    "POST" => "post",
                    "PUT" => "put",
                    "DELETE" => "delete",
                    m => return Attributes::non_resource(&m.to_lowercase(), path),
                };
                return Attributes::non_resource(verb, path);
            }
        };
        let (namespace, resource, name, subresource) = match rest {
            ["namespaces", ns, resource, tail @ ..] => {
                (Some(ns.to_string()), resource.to_string(), tail.first(), tail.get(1))
            }
            [resource, tail @ ..] => (None, resource.to_string(), tail.first(), tail.get(1)),
            [] => unreachable!("rest is not empty"),
        };
        let verb = match (method, name.is_some()) {
            ("GET" | "HEAD", _) if watch => "watch",
            ("GET" | "HEAD", true) => "get",
            ("GET" | "HEAD", false) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", true) => "delete",
            ("DELETE", false) => "deletecollection",
            (m, _) => return Attributes::non_resource(&m.to_lowercase(), path),
        };
        // `/api/v1/namespaces/<name>` is the namespace object itself.
        let (namespace, resource, name) = match (rest, namespace) {
            (["namespaces", ns], _) => (None, "namespaces".to_string(), Some(ns.to_string())),
            (_, ns) => (ns, resource, name.map(|n| n.to_string())),
        };
        Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: Some(resource),
            subresource: subresource.map(|s| s.to_string()),
            namespace,
            name,
            path: path.into(),
        }
    }

    fn non_resource(verb: &str, path: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            group: String::new(),
            resource: None,
            subresource: None,
            namespace: None,
            name: None,
            path: path.into(),
        }
    }

    /// Discovery and health: open to every authenticated user.
    fn is_discovery(&self) -> bool {
        if self.resource.is_some() {
            return false;
        }
        let p = self.path.trim_end_matches('/');
        let segs: Vec<&str> = p.split('/').skip(1).collect();
        matches!(segs.as_slice(), ["api"] | ["api", _] | ["apis"] | ["apis", _] | ["apis", _, _] | [""] | [])
            || matches!(segs.first(), Some(&("version" | "openapi" | "healthz" | "readyz" | "livez")))
    }

    /// The apiserver's Forbidden message.
    pub fn forbidden_message(&self, user: &str) -> String {
        match &self.resource {
            None => format!("forbidden: User \"{user}\" cannot {} path \"{}\"", self.verb, self.path),
            Some(resource) => {
                let full = match &self.subresource {
                    Some(sub) => format!("{resource}/{sub}"),
                    None => resource.clone(),
                };
                let qualified =
                    if self.group.is_empty() { resource.clone() } else { format!("{resource}.{}", self.group) };
                let what = match &self.name {
                    Some(name) => format!("{qualified} \"{name}\" is forbidden"),
                    None => format!("{qualified} is forbidden"),
                };
                let scope = match &self.namespace {
                    Some(ns) => format!("in the namespace \"{ns}\""),
                    None => "at the cluster scope".into(),
                };
                format!(
                    "{what}: User \"{user}\" cannot {} resource \"{full}\" in API group \"{}\" {scope}",
                    self.verb, self.group
                )
            }
        }
    }
}

fn list_has(list: &Value, want: &str) -> bool {
    list.as_array().is_some_and(|items| items.iter().any(|i| i == "*" || i == want))
}

fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    if !list_has(&rule["verbs"], &a.verb) {
        return false;
    }
    match &a.resource {
        None => rule["nonResourceURLs"].as_array().is_some_and(|urls| {
            urls.iter().filter_map(Value::as_str).any(|u| {
                u == a.path || u == "*" || u.strip_suffix('*').is_some_and(|prefix| a.path.starts_with(prefix))
            })
        }),
        Some(resource) => {
            let full = match &a.subresource {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource.clone(),
            };
            let resource_ok = rule["resources"].as_array().is_some_and(|rs| {
                rs.iter().filter_map(Value::as_str).any(|r| {
                    r == "*"
                        || r == full
                        || (a.subresource.is_some() && r == format!("*/{}", a.subresource.as_ref().unwrap()))
                })
            });
            let names_ok = match rule["resourceNames"].as_array() {
                Some(names) if !names.is_empty() => {
                    a.name.as_ref().is_some_and(|n| names.iter().any(|x| x == n.as_str()))
                }
                _ => true,
            };
            list_has(&rule["apiGroups"], &a.group) && resource_ok && names_ok
        }
    }
}

/// Serves `/apis/rbac.authorization.k8s.io/v1/...`; `None` when `path` is not under it.
/// Returns the status and the JSON body.
pub(crate) fn serve(
    store: &mut RbacStore,
    method: &str,
    path: &str,
    label_selector: Option<&str>,
    body: &[u8],
) -> Option<(u16, Value)> {
    let rest = path.strip_prefix(PREFIX)?.trim_end_matches('/');
    let segs: Vec<&str> = rest.split('/').collect();
    let (kind, namespace, name) = match segs.as_slice() {
        [res] => (RbacKind::from_resource(res)?, None, None),
        [res, name] => (RbacKind::from_resource(res)?, None, Some(*name)),
        ["namespaces", ns, res] => (RbacKind::from_resource(res)?, Some(*ns), None),
        ["namespaces", ns, res, name] => (RbacKind::from_resource(res)?, Some(*ns), Some(*name)),
        _ => return None,
    };
    if kind.namespaced() != namespace.is_some() && (name.is_some() || method != "GET") {
        return Some((404, status(404, "NotFound", "the server could not find the requested resource")));
    }
    let failure = |(code, reason, message): Failure| (code, status(code, reason, &message));
    let not_found = || {
        let m = format!("{}.{GROUP} \"{}\" not found", kind.resource(), name.unwrap_or_default());
        (404, status(404, "NotFound", &m))
    };
    let parse =
        || serde_json::from_slice::<Value>(body).map_err(|_| (400, "BadRequest", "the body is not JSON".to_string()));
    let ns = namespace.unwrap_or("");
    Some(match (method, name) {
        ("GET", None) => match Selector::parse(label_selector.unwrap_or("")) {
            Ok(selector) => {
                let items = store.list(kind, namespace, &selector);
                (
                    200,
                    json!({
                        "kind": format!("{}List", kind.name()), "apiVersion": format!("{GROUP}/v1"),
                        "metadata": {"resourceVersion": store.resource_version.to_string()}, "items": items,
                    }),
                )
            }
            Err(m) => (400, status(400, "BadRequest", &m)),
        },
        ("GET", Some(name)) => match store.get(kind, ns, name) {
            Some(o) => (200, o),
            None => not_found(),
        },
        ("POST", None) => match parse().and_then(|o| store.create(kind, ns, o)) {
            Ok(o) => (201, o),
            Err(f) => failure(f),
        },
        ("PUT", Some(name)) => match parse().and_then(|o| store.update(kind, ns, name, o)) {
            Ok(o) => (200, o),
            Err(f) => failure(f),
        },
        ("DELETE", Some(name)) => match store.delete(kind, ns, name) {
            Some(_) => (200, json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})),
            None => not_found(),
        },
        _ => (405, status(405, "MethodNotAllowed", "method not allowed")),
    })
}

/// The authorizer's answer for a request: `None` to go on, or the 403 Status to send.
pub(crate) fn check(
    store: &RbacStore,
    impersonate_user: &[String],
    impersonate_groups: &[String],
    method: &str,
    path: &str,
    watch: bool,
) -> Option<Value> {
    let user = impersonate_user.first()?;
    let attributes = Attributes::of(method, path, watch);
    if attributes.is_discovery() {
        return None;
    }
    let mut groups = impersonate_groups.to_vec();
    groups.push("system:authenticated".into());
    if store.allows(user, &groups, &attributes) {
        return None;
    }
    let mut forbidden = status(403, "Forbidden", &attributes.forbidden_message(user));
    if let Some(resource) = &attributes.resource {
        forbidden["details"] = json!({"kind": resource, "group": attributes.group});
        if let Some(name) = &attributes.name {
            forbidden["details"]["name"] = json!(name);
        }
    }
    Some(forbidden)
}

/// Where a SubjectAccessReview is created.
pub const REVIEWS: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";

/// A SubjectAccessReview (`authorization.k8s.io/v1`, resource attributes): whether `spec.user`,
/// with `spec.groups`, may do what `spec.resourceAttributes` names, by the rules enforcement
/// uses (`enforcing` false: everything is allowed, as every request is). Answers the review with
/// its `status.allowed`, as an apiserver does (201).
pub(crate) fn review(store: &RbacStore, body: &[u8], enforcing: bool) -> (u16, Value) {
    let bad = |m: &str| (400, status(400, "BadRequest", m));
    let Ok(mut review) = serde_json::from_slice::<Value>(body) else { return bad("the review is not JSON") };
    let spec = &review["spec"];
    let (Some(user), Some(asked)) = (spec["user"].as_str(), spec["resourceAttributes"].as_object()) else {
        return bad("spec.user and spec.resourceAttributes are required");
    };
    let text = |field: &str| asked.get(field).and_then(Value::as_str).filter(|v| !v.is_empty()).map(str::to_owned);
    let groups: Vec<String> =
        spec["groups"].as_array().into_iter().flatten().filter_map(|g| g.as_str().map(str::to_owned)).collect();
    let attributes = Attributes {
        verb: text("verb").unwrap_or_default(),
        group: text("group").unwrap_or_default(),
        resource: text("resource"),
        subresource: text("subresource"),
        namespace: text("namespace"),
        name: text("name"),
        path: String::new(),
    };
    let allowed = !enforcing || store.allows(user, &groups, &attributes);
    review["status"] = json!({"allowed": allowed});
    (201, review)
}

impl FakeApiserver {
    /// Stores an RBAC object as if created through the API; panics if it exists or is invalid.
    pub fn rbac_create(&self, kind: RbacKind, namespace: &str, object: Value) -> Value {
        self.state.rbac.lock().unwrap().create(kind, namespace, object).expect("create RBAC object")
    }

    pub fn rbac_get(&self, kind: RbacKind, namespace: &str, name: &str) -> Option<Value> {
        self.state.rbac.lock().unwrap().get(kind, namespace, name)
    }

    /// Every object of `kind` (all namespaces).
    pub fn rbac_list(&self, kind: RbacKind) -> Vec<Value> {
        self.state.rbac.lock().unwrap().list(kind, None, &Selector::default())
    }

    pub fn rbac_delete(&self, kind: RbacKind, namespace: &str, name: &str) -> Option<Value> {
        self.state.rbac.lock().unwrap().delete(kind, namespace, name)
    }

    /// Changes an RBAC object in place (no checks), as another controller would.
    pub fn rbac_modify(&self, kind: RbacKind, namespace: &str, name: &str, f: impl FnOnce(&mut Value)) -> bool {
        let mut store = self.state.rbac.lock().unwrap();
        let key = RbacStore::key(kind, namespace, name);
        store.resource_version += 1;
        let rv = store.resource_version;
        match store.objects.get_mut(&key) {
            Some(o) => {
                f(o);
                o["metadata"]["resourceVersion"] = json!(rv.to_string());
                true
            }
            None => false,
        }
    }

    /// Whether `user` may do `verb` on `resource` (`pods`, `pods/exec`, ...) of the core group,
    /// in `namespace` (`None`: at the cluster scope).
    pub fn rbac_allows(&self, user: &str, verb: &str, resource: &str, namespace: Option<&str>) -> bool {
        let (resource, subresource) = match resource.split_once('/') {
            Some((r, s)) => (r.to_string(), Some(s.to_string())),
            None => (resource.to_string(), None),
        };
        let attributes = Attributes {
            verb: verb.into(),
            group: String::new(),
            resource: Some(resource),
            subresource,
            namespace: namespace.map(str::to_string),
            name: None,
            path: String::new(),
        };
        self.state.rbac.lock().unwrap().allows(user, &["system:authenticated".to_string()], &attributes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readonly(store: &mut RbacStore) {
        store
            .create(
                RbacKind::ClusterRole,
                "",
                json!({"metadata": {"name": "ro"}, "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list", "watch"]}]}),
            )
            .unwrap();
    }

    #[test]
    fn attributes_of_requests() {
        let a = Attributes::of("GET", "/api/v1/namespaces/default/pods", false);
        assert_eq!(
            (a.verb.as_str(), a.resource.as_deref(), a.namespace.as_deref()),
            ("list", Some("pods"), Some("default"))
        );
        let a = Attributes::of("POST", "/api/v1/namespaces/default/pods/web-0/exec", false);
        assert_eq!((a.verb.as_str(), a.subresource.as_deref()), ("create", Some("exec")));
        // A WebSocket exec is a GET, authorised as `get` before Kubernetes 1.35.
        let a = Attributes::of("GET", "/api/v1/namespaces/default/pods/web-0/exec", false);
        assert_eq!((a.verb.as_str(), a.subresource.as_deref()), ("get", Some("exec")));
        let a = Attributes::of("GET", "/api/v1/namespaces/default", false);
        assert_eq!(
            (a.resource.as_deref(), a.name.as_deref(), a.namespace),
            (Some("namespaces"), Some("default"), None)
        );
        let a = Attributes::of("GET", "/api/v1/pods", true);
        assert_eq!((a.verb.as_str(), a.namespace), ("watch", None));
        assert!(Attributes::of("GET", "/apis/rbac.authorization.k8s.io/v1", false).is_discovery());
        assert!(!Attributes::of("GET", "/logs", false).is_discovery());
    }

    #[test]
    fn bindings_grant_what_their_role_says() {
        let mut store = RbacStore::default();
        readonly(&mut store);
        let list = Attributes::of("GET", "/api/v1/namespaces/default/pods", false);
        let create = Attributes::of("POST", "/api/v1/namespaces/default/configmaps", false);
        let groups = vec![];
        assert!(!store.allows("plain.dev", &groups, &list));
        store
            .create(
                RbacKind::RoleBinding,
                "other",
                json!({"metadata": {"name": "b"}, "roleRef": {"kind": "ClusterRole", "name": "ro"}, "subjects": [{"kind": "User", "name": "plain.dev"}]}),
            )
            .unwrap();
        assert!(!store.allows("plain.dev", &groups, &list), "a RoleBinding elsewhere does not count");
        store
            .create(
                RbacKind::ClusterRoleBinding,
                "",
                json!({"metadata": {"name": "c", "labels": {"a": "b"}}, "roleRef": {"kind": "ClusterRole", "name": "ro"}, "subjects": [{"kind": "User", "name": "plain.dev"}]}),
            )
            .unwrap();
        assert!(store.allows("plain.dev", &groups, &list));
        assert!(!store.allows("plain.dev", &groups, &create));
        assert!(!store.allows("plain.other", &groups, &list));
        assert_eq!(store.list(RbacKind::ClusterRoleBinding, None, &Selector::parse("a=b").unwrap()).len(), 1);
        assert_eq!(store.list(RbacKind::ClusterRoleBinding, None, &Selector::parse("a!=b").unwrap()).len(), 0);
        assert_eq!(store.list(RbacKind::ClusterRoleBinding, None, &Selector::parse("!a").unwrap()).len(), 0);
        let changed =
            json!({"metadata": {"name": "c"}, "roleRef": {"kind": "ClusterRole", "name": "other"}, "subjects": []});
        assert_eq!(store.update(RbacKind::ClusterRoleBinding, "", "c", changed).unwrap_err().0, 422);
    }

    #[test]
    fn forbidden_messages_read_like_the_apiserver() {
        let a = Attributes::of("GET", "/api/v1/namespaces/default/pods", false);
        assert_eq!(
            a.forbidden_message("plain.dev"),
            "pods is forbidden: User \"plain.dev\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        );
    }
}
