//! Everything under `deploy/`: every YAML parses; Kubernetes objects use current API versions
//! and reference each other correctly (service account, role binding, secret keys, ports,
//! labels), and the Deployment's arguments are accepted by the agent's own parser; the sample
//! configs load; the Dockerfiles are multi-stage, build binaries that exist and run as non-root;
//! the systemd units start binaries that exist.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::Parser;
use serde_yaml_ng::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn deploy_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    files(&repo().join("deploy"), &mut out);
    out.sort();
    out
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for key in path {
        cur = &cur[*key];
    }
    cur.as_str().unwrap_or_default()
}

/// `(apiVersion, kind)` pairs in use today (none deprecated or removed).
const CURRENT: &[(&str, &str)] = &[
    ("v1", "ServiceAccount"),
    ("v1", "Secret"),
    ("v1", "ConfigMap"),
    ("v1", "Namespace"),
    ("v1", "Service"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "DaemonSet"),
    ("apps/v1", "StatefulSet"),
];

/// Every binary of the workspace (`[[bin]] name`).
fn workspace_binaries() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for krate in ["admin", "proxy", "agent"] {
        let manifest = std::fs::read_to_string(repo().join(krate).join("Cargo.toml")).unwrap();
        let mut in_bin = false;
        for line in manifest.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                in_bin = line == "[[bin]]";
            } else if in_bin {
                if let Some(name) = line.strip_prefix("name = ") {
                    out.insert(name.trim_matches('"').to_owned());
                }
            }
        }
    }
    out
}

#[test]
fn every_yaml_parses_and_the_agent_manifest_is_consistent() {
    let mut objects: Vec<(PathBuf, Value)> = Vec::new();
    let mut configs = 0;
    for path in
        deploy_files().into_iter().filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
    {
        let text = std::fs::read_to_string(&path).unwrap();
        let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
            .filter(|v: &Value| !v.is_null())
            .collect();
        assert!(!docs.is_empty(), "{} is empty", path.display());
        if docs.iter().all(|d| d.get("kind").is_some() && d.get("apiVersion").is_some()) {
            objects.extend(docs.into_iter().map(|d| (path.clone(), d)));
        } else if path.parent().is_some_and(|dir| dir.ends_with("prometheus")) {
            // Alerting rules and their unit tests, the example Prometheus and Alertmanager
            // configurations: admin/tests/alert_rules.rs and alert_inhibition.rs check them.
            assert!(
                ["groups", "rule_files", "inhibit_rules"].iter().any(|key| docs[0].get(key).is_some()),
                "{}",
                path.display()
            );
        } else {
            // A bcs-api configuration: loads with the real loader.
            bcs_shared::config::Config::parse(&path, &text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            configs += 1;
        }
    }
    assert!(configs >= 2, "bcs-api.yaml and bcs-api.dev.yaml");

    for (path, o) in &objects {
        let pair = (s(o, &["apiVersion"]), s(o, &["kind"]));
        assert!(CURRENT.contains(&pair), "{}: {pair:?} is not a current API version", path.display());
        assert!(!s(o, &["metadata", "name"]).is_empty(), "{}: {pair:?} has no name", path.display());
    }
    let find = |kind: &str, namespace: &str, name: &str| {
        objects.iter().map(|(_, o)| o).find(|o| {
            s(o, &["kind"]) == kind
                && s(o, &["metadata", "name"]) == name
                && s(o, &["metadata", "namespace"]) == namespace
        })
    };

    let deployments: Vec<&Value> = objects.iter().map(|(_, o)| o).filter(|o| s(o, &["kind"]) == "Deployment").collect();
    assert!(!deployments.is_empty(), "the agent's Deployment");
    for d in deployments {
        let ns = s(d, &["metadata", "namespace"]);
        let spec = &d["spec"]["template"]["spec"];
        // Service account: exists, and is bound (the token it gets is what the agent reports).
        let sa = s(spec, &["serviceAccountName"]);
        assert!(find("ServiceAccount", ns, sa).is_some(), "ServiceAccount {ns}/{sa}");
        let bound = objects.iter().map(|(_, o)| o).any(|o| {
            s(o, &["kind"]) == "ClusterRoleBinding"
                && o["subjects"].as_sequence().is_some_and(|subjects| {
                    subjects.iter().any(|x| {
                        s(x, &["kind"]) == "ServiceAccount" && s(x, &["name"]) == sa && s(x, &["namespace"]) == ns
                    })
                })
                && s(o, &["roleRef", "apiGroup"]) == "rbac.authorization.k8s.io"
                && s(o, &["roleRef", "kind"]) == "ClusterRole"
        });
        assert!(bound, "a ClusterRoleBinding binds {ns}/{sa}");
        // Labels: the selector selects the template.
        let selector = d["spec"]["selector"]["matchLabels"].as_mapping().expect("matchLabels");
        for (k, v) in selector {
            assert_eq!(&d["spec"]["template"]["metadata"]["labels"][k.as_str().unwrap()], v, "selector label {k:?}");
        }
        // Pod security: non-root.
        assert_eq!(spec["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
        assert!(spec["securityContext"]["runAsUser"].as_u64().unwrap_or(0) > 0);
        for c in spec["containers"].as_sequence().expect("containers") {
            let name = s(c, &["name"]);
            assert_eq!(c["securityContext"]["allowPrivilegeEscalation"].as_bool(), Some(false), "{name}");
            assert_eq!(c["securityContext"]["readOnlyRootFilesystem"].as_bool(), Some(true), "{name}");
            for part in ["requests", "limits"] {
                for res in ["cpu", "memory"] {
                    assert!(!c["resources"][part][res].is_null(), "{name}: resources.{part}.{res}");
                }
            }
            // Secret references: the secret exists in the namespace and has the key.
            let mut env_names = BTreeSet::new();
            for e in c["env"].as_sequence().map(Vec::as_slice).unwrap_or_default() {
                env_names.insert(s(e, &["name"]).to_owned());
                let r = &e["valueFrom"]["secretKeyRef"];
                if r.is_null() {
                    continue;
                }
                let secret =
                    find("Secret", ns, s(r, &["name"])).unwrap_or_else(|| panic!("Secret {ns}/{}", s(r, &["name"])));
                let key = s(r, &["key"]);
                assert!(
                    !secret["stringData"][key].is_null() || !secret["data"][key].is_null(),
                    "Secret {ns}/{} has no key {key}",
                    s(r, &["name"])
                );
            }
            assert!(env_names.contains("SERVER_CERT") && env_names.contains("REGISTER_TOKEN"), "{env_names:?}");
            // Plain values of the environment, as the agent's flags read them.
            let plain_env = |name: &str| {
                c["env"].as_sequence().and_then(|env| {
                    env.iter().find(|e| s(e, &["name"]) == name).map(|e| PathBuf::from(s(e, &["value"])))
                })
            };
            // The arguments are the agent's own flags.
            let args: Vec<String> =
                c["args"].as_sequence().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect();
            let parsed = bcs_agent::cli::Args::try_parse_from(std::iter::once("bcs-kube-agent".to_owned()).chain(args))
                .unwrap_or_else(|e| panic!("the Deployment's args: {e}"));
            assert!(!parsed.bke_address.is_empty() && !parsed.cluster_id.is_empty());
            assert!(parsed.kubeconfig.is_empty(), "in cluster: no --kubeconfig");
            // Files come from mounted Secrets that exist: the register token (read before each
            // report) from bke-info's `token`, the service account's token from a long-lived
            // token Secret of the Deployment's service account (a pod's own dies with the pod).
            let mounted = |file: &Path| -> &Value {
                let mount = c["volumeMounts"]
                    .as_sequence()
                    .expect("volumeMounts")
                    .iter()
                    .find(|m| file.starts_with(s(m, &["mountPath"])))
                    .unwrap_or_else(|| panic!("{name}: nothing mounted at {}", file.display()));
                let volume = spec["volumes"]
                    .as_sequence()
                    .expect("volumes")
                    .iter()
                    .find(|v| s(v, &["name"]) == s(mount, &["name"]))
                    .unwrap_or_else(|| panic!("{name}: no volume {}", s(mount, &["name"])));
                let secret = s(volume, &["secret", "secretName"]);
                let relative = file.strip_prefix(s(mount, &["mountPath"])).unwrap().to_str().unwrap();
                let key = volume["secret"]["items"]
                    .as_sequence()
                    .and_then(|items| items.iter().find(|i| s(i, &["path"]) == relative).map(|i| s(i, &["key"])))
                    .unwrap_or(relative);
                let found = find("Secret", ns, secret).unwrap_or_else(|| panic!("Secret {ns}/{secret}"));
                assert!(
                    !found["stringData"][key].is_null() || s(found, &["type"]) == "kubernetes.io/service-account-token",
                    "Secret {ns}/{secret} has no key {key}"
                );
                found
            };
            let register = plain_env("REGISTER_TOKEN_FILE").expect("REGISTER_TOKEN_FILE");
            assert_eq!(s(mounted(&register), &["metadata", "name"]), "bke-info");
            // bcs-api's CA, likewise read before each report, from bke-info's `bke-cert`.
            let server_cert = plain_env("SERVER_CERT_FILE").expect("SERVER_CERT_FILE");
            assert_eq!(s(mounted(&server_cert), &["metadata", "name"]), "bke-info");
            assert_eq!(server_cert.file_name().unwrap(), "bke-cert");
            let sa_dir = plain_env("BCS_AGENT_SERVICE_ACCOUNT_DIR").unwrap_or(parsed.service_account_dir.clone());
            let token = mounted(&sa_dir.join("token"));
            assert_eq!(s(token, &["type"]), "kubernetes.io/service-account-token");
            assert_eq!(s(token, &["metadata", "annotations", "kubernetes.io/service-account.name"]), sa);
            // Probes hit the metrics port, which is --listen-addr's port.
            let listen_port: u64 = parsed.listen_addr.rsplit(':').next().unwrap().parse().unwrap();
            let ports: BTreeMap<String, u64> = c["ports"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|p| (s(p, &["name"]).to_owned(), p["containerPort"].as_u64().unwrap()))
                .collect();
            assert!(ports.values().any(|p| *p == listen_port), "{ports:?} vs --listen-addr {listen_port}");
            for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
                let get = &c[probe]["httpGet"];
                assert_eq!(s(get, &["path"]), path, "{probe}");
                let port = match &get["port"] {
                    Value::String(name) => *ports.get(name).unwrap_or_else(|| panic!("{probe}: no port {name}")),
                    p => p.as_u64().unwrap(),
                };
                assert_eq!(port, listen_port, "{probe}");
            }
        }
    }
}

#[test]
fn dockerfiles_are_multi_stage_build_real_binaries_and_run_as_non_root() {
    let binaries = workspace_binaries();
    assert!(binaries.contains("bcs-api") && binaries.contains("bcs-api-proxy") && binaries.contains("bcs-kube-agent"));
    let dockerfiles: Vec<PathBuf> = deploy_files()
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("Dockerfile"))
        .collect();
    let mut built = BTreeSet::new();
    for path in &dockerfiles {
        let text = std::fs::read_to_string(path).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
        let stages = lines.iter().filter(|l| l.starts_with("FROM ")).count();
        assert!(stages >= 2, "{}: multi-stage", path.display());
        let user = lines.iter().rev().find_map(|l| l.strip_prefix("USER ")).unwrap_or("root");
        assert!(!user.starts_with("root") && !user.starts_with('0'), "{}: USER {user}", path.display());
        for word in text.split_whitespace().collect::<Vec<_>>().windows(2) {
            if word[0] == "--bin" {
                assert!(binaries.contains(word[1]), "{}: --bin {}", path.display(), word[1]);
                built.insert(word[1].to_owned());
            }
        }
        assert!(text.contains("--locked"), "{}: builds with Cargo.lock", path.display());
    }
    assert_eq!(built, binaries, "every binary has an image");
}

#[test]
fn systemd_units_start_real_binaries_with_the_config() {
    let binaries = workspace_binaries();
    let units: Vec<PathBuf> =
        deploy_files().into_iter().filter(|p| p.extension().and_then(|e| e.to_str()) == Some("service")).collect();
    assert!(!units.is_empty());
    for path in units {
        let text = std::fs::read_to_string(&path).unwrap();
        for section in ["[Unit]", "[Service]", "[Install]"] {
            assert!(text.contains(section), "{}: {section}", path.display());
        }
        let exec = text.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
        let binary = Path::new(exec.split_whitespace().next().unwrap()).file_name().unwrap().to_str().unwrap();
        assert!(binaries.contains(binary), "{}: {binary}", path.display());
        assert!(exec.contains("--config="), "{}", path.display());
        assert!(text.lines().any(|l| l.starts_with("User=") && !l.ends_with("root")), "{}: non-root", path.display());
    }
}
