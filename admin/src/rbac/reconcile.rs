//! One reconcile of one cluster: make its `bke-*` ClusterRoles equal to the templates and its
//! owned bindings (label `app.kubernetes.io/managed-by=bcs-api`) equal to the grants.
//!
//! Missing bindings are created, drifted ones updated (a changed `roleRef`, which Kubernetes
//! does not let change, by delete and create), owned ones no grant wants deleted. Bindings
//! without the label are never read for change, updated or deleted. An object that fails does
//! not stop the others; the reconcile then reports the first errors.
use std::collections::BTreeMap;

use bcs_shared::identity::kubernetes_user_name;
use serde_json::Value;

use super::kube::{describe, Kube};
use super::templates::{self, OWNED_SELECTOR, ROLES};
use crate::store::model::Grant;
use crate::store::Store;

const API: &str = "/apis/rbac.authorization.k8s.io/v1";

/// What one reconcile changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
    /// RoleBindings the cluster refused (403 or 422: a namespace being deleted, an admission
    /// policy), logged and left for the next pass.
    pub refused: u64,
}

/// The bindings the grants want in the bcs-api cluster `cluster_id`, keyed by (namespace, name);
/// `namespace` is empty for ClusterRoleBindings. Grants naming an unknown role are left out
/// (the sources refuse them).
pub fn desired(grants: &[Grant], cluster_id: &str) -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    for grant in grants {
        let Some(role) = templates::parse_role(&grant.role) else {
            tracing::warn!(grant = grant.id, role = %grant.role, "grant names an unknown role; skipped");
            continue;
        };
        let subject = kubernetes_user_name(&grant.user_name);
        let binding = templates::binding(&subject, role, &grant.namespace, cluster_id);
        let name = binding["metadata"]["name"].as_str().expect("name").to_owned();
        out.insert((grant.namespace.clone(), name), binding);
    }
    out
}

fn collection(namespace: &str) -> String {
    if namespace.is_empty() {
        format!("{API}/clusterrolebindings")
    } else {
        format!("{API}/namespaces/{namespace}/rolebindings")
    }
}

fn item(namespace: &str, name: &str) -> String {
    format!("{}/{name}", collection(namespace))
}

/// Runs one reconcile of the bcs-api cluster `cluster_id`; `Err` carries what was done anyway
/// and the errors. `store`: whether another cluster id a binding names was deleted.
pub async fn run(
    kube: &mut Kube,
    store: &Store,
    cluster_id: &str,
    desired: &BTreeMap<(String, String), Value>,
) -> Result<Counts, (Counts, String)> {
    let mut counts = Counts::default();
    let mut errors = Vec::new();
    for role in ROLES {
        if let Err(e) = ensure_role(kube, role, &mut counts).await {
            errors.push(e);
        }
    }
    let mut owned: BTreeMap<(String, String), Value> = BTreeMap::new();
    // Other cluster ids named by bindings, and whether each was deleted here.
    let mut deleted: BTreeMap<String, bool> = BTreeMap::new();
    for path in [format!("{API}/clusterrolebindings"), format!("{API}/rolebindings")] {
        let (status, body) = kube
            .request("GET", &format!("{path}?labelSelector={OWNED_SELECTOR}"), None)
            .await
            .map_err(|e| (counts, e))?;
        if status != 200 {
            return Err((counts, format!("listing {path}: {}", describe(status, &body))));
        }
        for binding in body["items"].as_array().cloned().unwrap_or_default() {
            let namespace = binding["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
            let name = binding["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            // Only what carries the ownership label (a server that ignored the selector must
            // not make the gateway delete bindings it does not own).
            if binding["metadata"]["labels"][templates::MANAGED_BY_LABEL] != templates::MANAGED_BY {
                continue;
            }
            // And what was made for this cluster id, or for none (made before bindings said:
            // adopted, and annotated by the update that follows), or for an id deleted here (a
            // cluster registered again under a new id: otherwise no one would ever remove what
            // its grants gave). An id this store does not know may be another deployment's.
            let other = match binding["metadata"]["annotations"][templates::CLUSTER_ANNOTATION].as_str() {
                Some(id) if id != cluster_id => Some(id.to_owned()),
                _ => None,
            };
            if let Some(id) = other {
                if !deleted.contains_key(&id) {
                    // A store that fails counts the id as not deleted: its bindings are left.
                    let gone = matches!(store.cluster_was_deleted(&id).await, Ok(true));
                    deleted.insert(id.clone(), gone);
                }
                if !deleted[&id] {
                    continue;
                }
            }
            owned.insert((namespace, name), binding);
        }
    }
    for ((namespace, name), _) in owned.iter().filter(|(key, _)| !desired.contains_key(*key)) {
        match delete(kube, namespace, name).await {
            Ok(()) => {
                counts.deleted += 1;
                tracing::info!(namespace, name, "deleted a binding no grant wants");
            }
            Err(e) => errors.push(e),
        }
    }
    for ((namespace, name), want) in desired {
        let result = match owned.get(&(namespace.clone(), name.clone())) {
            None => create(kube, namespace, want).await.map(|made| counts.add(made, |c| &mut c.created)),
            Some(have) if have["roleRef"] != want["roleRef"] => {
                let replaced = async {
                    delete(kube, namespace, name).await?;
                    create(kube, namespace, want).await
                };
                replaced.await.map(|made| counts.add(made, |c| &mut c.updated))
            }
            Some(have) if drifted(have, want) => {
                let mut update = want.clone();
                update["metadata"]["resourceVersion"] = have["metadata"]["resourceVersion"].clone();
                let (status, body) = match kube.request("PUT", &item(namespace, name), Some(&update)).await {
                    Ok(answer) => answer,
                    // This binding failed; the others are still tried.
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                };
                if status == 200 {
                    counts.updated += 1;
                    tracing::info!(namespace, name, "updated a drifted binding");
                    Ok(())
                } else {
                    Err(format!("updating {name}: {}", describe(status, &body)))
                }
            }
            Some(_) => Ok(()),
        };
        if let Err(e) = result {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        Ok(counts)
    } else {
        let more = if errors.len() > 3 { format!(" (and {} more)", errors.len() - 3) } else { String::new() };
        errors.truncate(3);
        Err((counts, format!("{}{more}", errors.join("; "))))
    }
}

impl Counts {
    /// Counts a create in `made_as` (created, or updated for a replacement) if it was made.
    fn add(&mut self, made: Made, made_as: impl FnOnce(&mut Counts) -> &mut u64) {
        match made {
            Made::Yes => *made_as(self) += 1,
            Made::Refused => self.refused += 1,
            Made::Skipped => {}
        }
    }
}

/// What became of a binding to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Made {
    Yes,
    /// Its namespace does not exist yet, or a binding of that name without the ownership label
    /// is there.
    Skipped,
    /// Its namespace refused it ([`refused_by_namespace`]).
    Refused,
}

fn drifted(have: &Value, want: &Value) -> bool {
    if have["subjects"] != want["subjects"] {
        return true;
    }
    let annotations = want["metadata"]["annotations"].as_object().cloned().unwrap_or_default();
    annotations.iter().any(|(k, v)| &have["metadata"]["annotations"][k] != v)
}

/// Creates a binding. Three refusals are not failures of the pass, so that one grant the cluster
/// cannot take does not hold back every other (nor every acknowledgement of the permission
/// subscription): a namespace that does not exist (404; a later pass creates the binding once it
/// does), a binding of that name that is not the gateway's (409: it is left alone), and a
/// RoleBinding its namespace refuses ([`refused_by_namespace`], any 4xx: counted as refused, tried again
/// at the next pass). Other refusals, and any of a ClusterRoleBinding, fail the pass.
async fn create(kube: &mut Kube, namespace: &str, binding: &Value) -> Result<Made, String> {
    let name = binding["metadata"]["name"].as_str().unwrap_or_default();
    let (status, body) = kube.request("POST", &collection(namespace), Some(binding)).await?;
    match status {
        200 | 201 => {
            tracing::info!(namespace, name, "created a binding");
            Ok(Made::Yes)
        }
        404 if !namespace.is_empty() => {
            tracing::warn!(namespace, name, "the namespace does not exist; the binding is created once it does");
            Ok(Made::Skipped)
        }
        409 => {
            tracing::warn!(namespace, name, "a binding of this name exists and is not bcs-api's; left alone");
            Ok(Made::Skipped)
        }
        400..=499 if !namespace.is_empty() && refused_by_namespace(status, &body) => {
            let why = describe(status, &body);
            tracing::warn!(namespace, name, %why, "the cluster refused the binding in its namespace; tried again at the next pass");
            Ok(Made::Refused)
        }
        _ => Err(format!("creating {name}: {}", describe(status, &body))),
    }
}

/// Whether a refused RoleBinding was refused by its namespace (being deleted, or its
/// ResourceQuota on bindings exceeded) or an admission policy (a webhook, whatever its code; a
/// ValidatingAdmissionPolicy; a 422 from validation), not by the apiserver's own RBAC, which
/// concerns every binding the cluster's token writes.
fn refused_by_namespace(status: u16, body: &Value) -> bool {
    let message = body["message"].as_str().unwrap_or_default();
    status == 422
        || ["because it is being terminated", "exceeded quota", "admission webhook", "denied request"]
            .iter()
            .any(|said| message.contains(said))
}

async fn delete(kube: &mut Kube, namespace: &str, name: &str) -> Result<(), String> {
    let (status, body) = kube.request("DELETE", &item(namespace, name), None).await?;
    match status {
        200 | 202 | 404 => Ok(()),
        _ => Err(format!("deleting {name}: {}", describe(status, &body))),
    }
}

/// Get the role; create it if missing; update its rules if they differ.
async fn ensure_role(kube: &mut Kube, role: &str, counts: &mut Counts) -> Result<(), String> {
    let want = templates::cluster_role(role).expect("a template");
    let name = templates::cluster_role_name(role);
    let path = format!("{API}/clusterroles/{name}");
    let (status, have) = kube.request("GET", &path, None).await?;
    match status {
        404 => {
            let (status, body) = kube.request("POST", &format!("{API}/clusterroles"), Some(&want)).await?;
            if status != 201 && status != 200 {
                return Err(format!("creating {name}: {}", describe(status, &body)));
            }
            counts.created += 1;
            tracing::info!(name, "created a ClusterRole");
        }
        200 => {
            if templates::normalize_rules(&have["rules"]) != templates::normalize_rules(&want["rules"]) {
                let mut update = have.clone();
                update["rules"] = want["rules"].clone();
                let (status, body) = kube.request("PUT", &path, Some(&update)).await?;
                if status != 200 {
                    return Err(format!("updating {name}: {}", describe(status, &body)));
                }
                counts.updated += 1;
                tracing::info!(name, "updated a ClusterRole's rules to the template");
            }
        }
        _ => return Err(format!("reading {name}: {}", describe(status, &have))),
    }
    Ok(())
}
