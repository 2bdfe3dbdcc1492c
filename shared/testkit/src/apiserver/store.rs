//! The in-memory objects: namespaces, pods and configmaps, a resourceVersion counter, the event
//! history watches replay from, and a tiny file system per pod (for `kubectl cp`).
use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};
use tokio::sync::broadcast;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    ConfigMap,
}

impl Kind {
    pub fn from_resource(resource: &str) -> Option<Kind> {
        match resource {
            "namespaces" => Some(Kind::Namespace),
            "pods" => Some(Kind::Pod),
            "configmaps" => Some(Kind::ConfigMap),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::ConfigMap => "ConfigMap",
        }
    }
    pub fn namespaced(self) -> bool {
        self != Kind::Namespace
    }
}

/// A change, as watches see it.
#[derive(Clone, Debug)]
pub struct Event {
    pub kind: Kind,
    pub namespace: String,
    /// ADDED, MODIFIED or DELETED.
    pub event_type: String,
    pub object: Value,
    pub resource_version: u64,
}

type Key = (Kind, String, String);

pub struct Store {
    pub resource_version: u64,
    uid: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Event>,
    pub events: broadcast::Sender<Event>,
    files: HashMap<(String, String), BTreeMap<String, Vec<u8>>>,
}

pub fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl Store {
    pub fn new() -> Store {
        let (events, _) = broadcast::channel(1024);
        let mut s = Store {
            resource_version: 1,
            uid: 0,
            objects: BTreeMap::new(),
            history: Vec::new(),
            events,
            files: HashMap::new(),
        };
        for ns in ["default", "kube-system"] {
            s.create(Kind::Namespace, "", json!({"metadata": {"name": ns}})).expect("namespace");
        }
        s
    }

    fn publish(&mut self, kind: Kind, namespace: &str, event_type: &str, object: Value) {
        let e = Event {
            kind,
            namespace: namespace.to_string(),
            event_type: event_type.to_string(),
            object,
            resource_version: self.resource_version,
        };
        self.history.push(e.clone());
        let _ = self.events.send(e);
    }

    /// Fills in metadata and defaults, stores the object and emits ADDED. Errors with 409 text
    /// when it exists.
    pub fn create(&mut self, kind: Kind, namespace: &str, mut object: Value) -> Result<Value, (u16, String)> {
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        if name.is_empty() {
            return Err((422, "metadata.name: Required value".into()));
        }
        let ns = if kind.namespaced() { namespace.to_string() } else { String::new() };
        let key = (kind, ns.clone(), name.clone());
        if self.objects.contains_key(&key) {
            return Err((409, format!("{}s \"{name}\" already exists", kind.name().to_lowercase())));
        }
        self.resource_version += 1;
        self.uid += 1;
        object["kind"] = json!(kind.name());
        object["apiVersion"] = json!("v1");
        let meta = &mut object["metadata"];
        if kind.namespaced() {
            meta["namespace"] = json!(ns);
        }
        meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", self.uid));
        meta["resourceVersion"] = json!(self.resource_version.to_string());
        meta["creationTimestamp"] = json!(now());
        match kind {
            Kind::Pod => default_pod(&mut object),
            Kind::Namespace => object["status"] = json!({"phase": "Active"}),
            Kind::ConfigMap => {}
        }
        self.objects.insert(key, object.clone());
        self.publish(kind, &ns, "ADDED", object.clone());
        Ok(object)
    }

    /// Replaces an object's content (keeping identity) and emits MODIFIED.
    pub fn modify(&mut self, kind: Kind, namespace: &str, name: &str, f: impl FnOnce(&mut Value)) -> Option<Value> {
        let ns = if kind.namespaced() { namespace.to_string() } else { String::new() };
        self.resource_version += 1;
        let rv = self.resource_version;
        let object = self.objects.get_mut(&(kind, ns.clone(), name.to_string()))?;
        f(object);
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let object = object.clone();
        self.publish(kind, &ns, "MODIFIED", object.clone());
        Some(object)
    }

    pub fn delete(&mut self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let ns = if kind.namespaced() { namespace.to_string() } else { String::new() };
        let mut object = self.objects.remove(&(kind, ns.clone(), name.to_string()))?;
        self.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        self.publish(kind, &ns, "DELETED", object.clone());
        if kind == Kind::Pod {
            self.files.remove(&(ns, name.to_string()));
        }
        Some(object)
    }

    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let ns = if kind.namespaced() { namespace } else { "" };
        self.objects.get(&(kind, ns.to_string(), name.to_string())).cloned()
    }

    /// Objects of `kind` in `namespace` (all namespaces when `None`), filtered by name.
    pub fn list(&self, kind: Kind, namespace: Option<&str>, name: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((k, ns, n), _)| {
                *k == kind && namespace.is_none_or(|want| want == ns) && name.is_none_or(|want| want == n)
            })
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Events after `resource_version`, plus a receiver for later ones, taken atomically.
    pub fn subscribe(&self, after: u64) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let past = self.history.iter().filter(|e| e.resource_version > after).cloned().collect();
        (past, self.events.subscribe())
    }

    pub fn files(&mut self, namespace: &str, pod: &str) -> &mut BTreeMap<String, Vec<u8>> {
        self.files.entry((namespace.to_string(), pod.to_string())).or_default()
    }
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

fn default_pod(pod: &mut Value) {
    if !pod["spec"]["containers"].is_array() {
        pod["spec"]["containers"] = json!([{"name": "main", "image": "busybox"}]);
    }
    let containers: Vec<Value> = pod["spec"]["containers"].as_array().cloned().unwrap_or_default();
    if pod["status"]["phase"].is_null() {
        let started = now();
        let statuses: Vec<Value> = containers
            .iter()
            .map(|c| {
                json!({
                    "name": c["name"], "image": c["image"], "imageID": "", "ready": true, "started": true,
                    "restartCount": 0, "state": {"running": {"startedAt": started}}
                })
            })
            .collect();
        pod["status"] = json!({
            "phase": "Running", "podIP": "10.0.0.10", "hostIP": "10.0.0.1", "startTime": started,
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": statuses,
        });
    }
    if pod["spec"]["nodeName"].is_null() {
        pod["spec"]["nodeName"] = json!("fake-node");
    }
}

/// "5s", "3m", "2h", "4d" like kubectl's age column.
pub fn age(created: &str) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(created) else { return "<unknown>".into() };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Table columns and cells for an object, as the apiserver's printers give them.
pub fn table_columns(kind: Kind) -> Value {
    let col = |name: &str, format: &str| json!({"name": name, "type": "string", "format": format, "description": name, "priority": 0});
    match kind {
        Kind::Pod => {
            json!([col("Name", "name"), col("Ready", ""), col("Status", ""), col("Restarts", ""), col("Age", "")])
        }
        Kind::ConfigMap => json!([col("Name", "name"), col("Data", ""), col("Age", "")]),
        Kind::Namespace => json!([col("Name", "name"), col("Status", ""), col("Age", "")]),
    }
}

pub fn table_cells(kind: Kind, o: &Value) -> Value {
    let name = o["metadata"]["name"].clone();
    let age = age(o["metadata"]["creationTimestamp"].as_str().unwrap_or_default());
    match kind {
        Kind::Pod => {
            let statuses = o["status"]["containerStatuses"].as_array().cloned().unwrap_or_default();
            let total = o["spec"]["containers"].as_array().map_or(0, |c| c.len());
            let ready = statuses.iter().filter(|s| s["ready"] == json!(true)).count();
            let restarts: i64 = statuses.iter().map(|s| s["restartCount"].as_i64().unwrap_or(0)).sum();
            let status = o["status"]["phase"].as_str().unwrap_or("Pending").to_string();
            json!([name, format!("{ready}/{total}"), status, restarts.to_string(), age])
        }
        Kind::ConfigMap => {
            let n = o["data"].as_object().map_or(0, |d| d.len()) + o["binaryData"].as_object().map_or(0, |d| d.len());
            json!([name, n, age])
        }
        Kind::Namespace => json!([name, o["status"]["phase"].as_str().unwrap_or("Active"), age]),
    }
}

/// A meta.k8s.io/v1 Table of `objects`; `include` is the request's includeObject.
pub fn table(kind: Kind, objects: &[Value], resource_version: u64, include: &str) -> Value {
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let object = match include {
                "None" => Value::Null,
                "Object" => o.clone(),
                _ => {
                    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]})
                }
            };
            json!({"cells": table_cells(kind, o), "object": object})
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version.to_string()},
        "columnDefinitions": table_columns(kind),
        "rows": rows,
    })
}
