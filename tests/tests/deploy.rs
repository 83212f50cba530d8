//! The deployment files, checked without a cluster or the internet. `deploy/k8s` is a kustomize
//! base with overlays (`small`, `production`) and the production dependencies (values for the
//! NATS Helm chart, a CloudNativePG Cluster). Each overlay is put together here as kustomize
//! does (its resources, then its patches) and checked: every document parses and names what it
//! must, what one document refers to (labels, ports, ConfigMaps, Secrets) exists in another,
//! every Deployment has requests, limits, its three probes and the metrics port, only the gateway
//! autoscales, production runs two of every service with a disruption budget each that never
//! blocks a drain, only the gateway's HTTP port is reachable from outside the namespace and the
//! metrics port from the monitoring namespace alone, while NATS and PostgreSQL are reachable from
//! whatsnap, NATS requires a login, nothing carries a default password, and compose runs two of
//! every target and publishes no gRPC port. `deploy/k8s/check` validates the same files against
//! the Kubernetes schemas, with kustomize itself. The alerts and the dashboard of
//! `deploy/monitoring` watch only metrics the code exports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize as _;
use serde_yaml::Value;

const TARGETS: [&str; 5] = ["gateway", "session", "contacts", "assignment", "ghl-sync"];

/// The PostgreSQL connections one whatsnap process opens at most when
/// WHATSNAP_DATABASE_CONNECTIONS is not set (`--database-connections`' default).
const DEFAULT_CONNECTIONS_PER_PROCESS: u64 = 28;

/// The connections per process that an environment sets, or the default.
fn connections_per_process(configured: Option<&Value>) -> u64 {
    configured.map_or(DEFAULT_CONNECTIONS_PER_PROCESS, |value| {
        let value = value
            .as_str()
            .expect("WHATSNAP_DATABASE_CONNECTIONS as a string");
        value
            .parse()
            .expect("WHATSNAP_DATABASE_CONNECTIONS a number")
    })
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn k8s() -> PathBuf {
    root().join("deploy/k8s")
}

/// A path under `deploy/k8s`, as the assertions name it.
fn relative(path: &Path) -> String {
    path.strip_prefix(k8s())
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// The documents of one YAML file, empty ones left out.
fn documents_of(path: &Path) -> Vec<Value> {
    let name = relative(path);
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| {
            Value::deserialize(document).unwrap_or_else(|e| panic!("{name} is not valid YAML: {e}"))
        })
        .filter(|value| !value.is_null())
        .collect()
}

fn one_document(path: &Path) -> Value {
    let mut documents = documents_of(path);
    assert_eq!(documents.len(), 1, "{}", relative(path));
    documents.remove(0)
}

fn kustomization(dir: &Path) -> Value {
    one_document(&dir.join("kustomization.yaml"))
}

/// The paths a kustomization names: its resources, then its patches.
fn resources_and_patches(kustomization: &Value) -> (Vec<String>, Vec<String>) {
    let resources = list(kustomization.get("resources"))
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let patches = list(kustomization.get("patches"))
        .iter()
        .map(|p| {
            assert!(
                p.get("target").is_none(),
                "a patch with a target: this test applies patches by kind and name only"
            );
            text(p, &["path"]).unwrap().to_owned()
        })
        .collect();
    (resources, patches)
}

/// What `kubectl kustomize dir` renders, each document with the file it came from: the
/// resources (files, or directories with their own kustomization), then the strategic-merge
/// patches, each applied to the document of its kind and name.
fn render(dir: &Path) -> Vec<(String, Value)> {
    let (resources, patches) = resources_and_patches(&kustomization(dir));
    let mut documents = Vec::new();
    for resource in resources {
        let path = dir.join(&resource);
        if path.is_dir() {
            documents.extend(render(&path));
        } else {
            let file = relative(&path);
            documents.extend(documents_of(&path).into_iter().map(|d| (file.clone(), d)));
        }
    }
    for patch_file in patches {
        let path = dir.join(&patch_file);
        for patch in documents_of(&path) {
            let (kind, name) = (text(&patch, &["kind"]), text(&patch, &["metadata", "name"]));
            let (_, target) = documents
                .iter_mut()
                .find(|(_, d)| text(d, &["kind"]) == kind && text(d, &["metadata", "name"]) == name)
                .unwrap_or_else(|| {
                    panic!(
                        "{}: patches {kind:?} {name:?}, which nothing defines",
                        relative(&path)
                    )
                });
            merge(target, &patch);
        }
    }
    documents
}

/// A strategic merge as kustomize does it for the patches here: maps merge key by key, lists of
/// named items (containers, env) merge item by item, anything else is replaced.
fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Mapping(base), Value::Mapping(patch)) => {
            for (key, value) in patch {
                match base.get_mut(key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (Value::Sequence(base), Value::Sequence(patch))
            if patch.iter().all(|item| text(item, &["name"]).is_some()) =>
        {
            for item in patch {
                let name = text(item, &["name"]);
                match base.iter_mut().find(|b| text(b, &["name"]) == name) {
                    Some(existing) => merge(existing, item),
                    None => base.push(item.clone()),
                }
            }
        }
        (base, patch) => *base = patch.clone(),
    }
}

/// The overlay directories by name.
fn overlay_dirs() -> Vec<(String, PathBuf)> {
    let mut dirs: Vec<(String, PathBuf)> = std::fs::read_dir(k8s().join("overlays"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    dirs.sort();
    let names: BTreeSet<&str> = dirs.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.is_superset(&BTreeSet::from(["production", "small"])),
        "{names:?}"
    );
    dirs
}

/// Each overlay as kustomize renders it, with the Secrets of `secret.example.yaml`, which are
/// applied by hand before it.
fn overlays() -> Vec<(String, Vec<(String, Value)>)> {
    let secrets = k8s().join("base/secret.example.yaml");
    overlay_dirs()
        .into_iter()
        .map(|(name, dir)| {
            let mut documents = render(&dir);
            documents.extend(
                documents_of(&secrets)
                    .into_iter()
                    .map(|d| (relative(&secrets), d)),
            );
            (name, documents)
        })
        .collect()
}

fn production() -> Vec<(String, Value)> {
    overlays()
        .into_iter()
        .find(|(name, _)| name == "production")
        .unwrap()
        .1
}

fn nats_values() -> Value {
    one_document(&k8s().join("dependencies/nats-values.yaml"))
}

fn postgres_cluster() -> Value {
    one_document(&k8s().join("dependencies/postgres-cluster.yaml"))
}

fn text<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(value, |v, key| v.get(*key))
        .and_then(Value::as_str)
}

fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

fn labels(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => serde_yaml::to_string(other).unwrap().trim().to_owned(),
                    };
                    (k.as_str().unwrap().to_owned(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn selects(selector: &BTreeMap<String, String>, pod: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| pod.get(k) == Some(v))
}

/// The labels a label selector requires. Only `matchLabels` is read, so no selector here may
/// use `matchExpressions`.
fn selector(value: Option<&Value>) -> BTreeMap<String, String> {
    assert!(
        value.and_then(|v| v.get("matchExpressions")).is_none(),
        "a selector with matchExpressions: {value:?}"
    );
    labels(value.and_then(|v| v.get("matchLabels")))
}

fn list(value: Option<&Value>) -> Vec<Value> {
    value
        .and_then(Value::as_sequence)
        .cloned()
        .unwrap_or_default()
}

fn of_kind<'a>(documents: &'a [(String, Value)], kind: &str) -> Vec<&'a Value> {
    documents
        .iter()
        .filter(|(_, d)| text(d, &["kind"]) == Some(kind))
        .map(|(_, d)| d)
        .collect()
}

fn named<'a>(documents: &'a [(String, Value)], kind: &str, name: &str) -> Option<&'a Value> {
    of_kind(documents, kind)
        .into_iter()
        .find(|d| text(d, &["metadata", "name"]) == Some(name))
}

/// A workload's pods: their labels, and the container ports by name and number.
struct Pods {
    name: String,
    kind: String,
    labels: BTreeMap<String, String>,
    ports: Vec<(String, u64)>,
    spec: Value,
}

fn pods(documents: &[(String, Value)]) -> Vec<Pods> {
    documents
        .iter()
        .filter(|(_, d)| matches!(text(d, &["kind"]), Some("Deployment" | "StatefulSet")))
        .map(|(file, d)| {
            let name = text(d, &["metadata", "name"]).unwrap().to_owned();
            let template = at(d, &["spec", "template"])
                .unwrap_or_else(|| panic!("{file}: {name} has no pod template"));
            let labels = labels(at(template, &["metadata", "labels"]));
            let own = selector(at(d, &["spec", "selector"]));
            assert!(
                !own.is_empty() && selects(&own, &labels),
                "{file}: {name}'s selector does not select its own pods"
            );
            let mut ports = Vec::new();
            for container in list(at(template, &["spec", "containers"])) {
                assert!(
                    text(&container, &["image"]).is_some(),
                    "{file}: a container of {name} has no image"
                );
                for port in list(container.get("ports")) {
                    ports.push((
                        text(&port, &["name"]).unwrap_or_default().to_owned(),
                        port.get("containerPort").and_then(Value::as_u64).unwrap(),
                    ));
                }
            }
            Pods {
                name,
                kind: text(d, &["kind"]).unwrap().to_owned(),
                labels,
                ports,
                spec: template.get("spec").cloned().unwrap(),
            }
        })
        .collect()
}

fn whatsnap_deployments(documents: &[(String, Value)]) -> Vec<Pods> {
    pods(documents)
        .into_iter()
        .filter(|p| {
            p.kind == "Deployment" && p.labels.get("app").map(String::as_str) == Some("whatsnap")
        })
        .collect()
}

/// The pods the production dependencies run in the namespace, which no document here defines:
/// the NATS chart's servers (with the labels it gives them and those the values add) and the
/// CloudNativePG instances.
fn dependency_pods() -> Vec<Pods> {
    let values = nats_values();
    let mut nats_labels: BTreeMap<String, String> = [
        ("app.kubernetes.io/name", "nats"),
        ("app.kubernetes.io/instance", "nats"),
        ("app.kubernetes.io/component", "nats"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .into();
    nats_labels.extend(labels(at(
        &values,
        &["podTemplate", "merge", "metadata", "labels"],
    )));
    let cluster = postgres_cluster();
    let cluster_name = text(&cluster, &["metadata", "name"]).unwrap();
    let port = |name: &str, number: u64| (name.to_owned(), number);
    vec![
        Pods {
            name: "nats (the NATS chart's servers)".into(),
            kind: "StatefulSet".into(),
            labels: nats_labels,
            ports: vec![
                port("nats", 4222),
                port("cluster", 6222),
                port("monitor", 8222),
            ],
            spec: Value::Null,
        },
        Pods {
            name: format!("{cluster_name} (the CloudNativePG instances)"),
            kind: "Pod".into(),
            labels: [("cnpg.io/cluster".to_owned(), cluster_name.to_owned())].into(),
            ports: vec![
                port("postgresql", 5432),
                port("status", 8000),
                port("metrics", 9187),
            ],
            spec: Value::Null,
        },
    ]
}

#[test]
fn every_document_names_what_it_must_and_each_kustomization_lists_its_files() {
    let mut dirs = vec![k8s().join("base")];
    dirs.extend(overlay_dirs().into_iter().map(|(_, dir)| dir));
    for dir in &dirs {
        let (resources, patches) = resources_and_patches(&kustomization(dir));
        let listed: BTreeSet<&String> = resources.iter().chain(&patches).collect();
        for entry in &listed {
            let path = dir.join(entry);
            assert!(
                path.is_file() || path.join("kustomization.yaml").is_file(),
                "{}/kustomization.yaml lists {entry}, which does not exist",
                relative(dir)
            );
        }
        // deploy/k8s/check validates every file but a patch on its own, and tells them by name.
        for patch in &patches {
            assert!(patch.ends_with("-patch.yaml"), "{patch} is a patch");
        }
        for resource in &resources {
            assert!(!resource.ends_with("-patch.yaml"), "{resource} is no patch");
        }
        for entry in std::fs::read_dir(dir).unwrap() {
            let file = entry.unwrap().file_name().to_string_lossy().into_owned();
            if !file.ends_with(".yaml") || file == "kustomization.yaml" {
                continue;
            }
            // The Secrets are filled in by hand, never applied as they are.
            if file == "secret.example.yaml" {
                assert!(!listed.contains(&file));
            } else {
                assert!(
                    listed.contains(&file),
                    "{}/{file} is not in its kustomization",
                    relative(dir)
                );
            }
        }
    }
    assert!(k8s().join("base/secret.example.yaml").is_file());

    let mut files = Vec::new();
    let dependencies = k8s().join("dependencies");
    for dir in dirs.iter().chain([&dependencies]) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            // The Helm values are no Kubernetes object.
            if path.extension().is_some_and(|e| e == "yaml") && !path.ends_with("nats-values.yaml")
            {
                files.push(path);
            }
        }
    }
    for path in files {
        let file = relative(&path);
        for document in documents_of(&path) {
            let kind = text(&document, &["kind"])
                .unwrap_or_else(|| panic!("{file}: a document has no kind"));
            assert!(
                text(&document, &["apiVersion"]).is_some(),
                "{file}: {kind} has no apiVersion"
            );
            if kind != "Kustomization" {
                assert!(
                    text(&document, &["metadata", "name"]).is_some(),
                    "{file}: a {kind} has no metadata.name"
                );
            }
        }
    }
    for (overlay, documents) in overlays() {
        assert!(
            documents.len() > 10,
            "{overlay}: {} documents",
            documents.len()
        );
    }
}

#[test]
fn services_select_pods_and_ports_that_exist_and_every_reference_is_defined() {
    for (overlay, documents) in overlays() {
        let pods = pods(&documents);
        let defined = |kind: &str| -> BTreeSet<String> {
            of_kind(&documents, kind)
                .iter()
                .map(|d| text(d, &["metadata", "name"]).unwrap().to_owned())
                .collect()
        };
        let (config_maps, secrets) = (defined("ConfigMap"), defined("Secret"));
        for service in of_kind(&documents, "Service") {
            let name = text(service, &["metadata", "name"]).unwrap();
            let selector = labels(at(service, &["spec", "selector"]));
            let targets: Vec<&Pods> = pods
                .iter()
                .filter(|p| selects(&selector, &p.labels))
                .collect();
            assert!(
                !targets.is_empty(),
                "{overlay}: Service {name} selects no pods"
            );
            for port in list(at(service, &["spec", "ports"])) {
                let wanted = port.get("targetPort").or(port.get("port")).unwrap();
                for pod in &targets {
                    let found = pod.ports.iter().any(|(n, p)| match wanted {
                        Value::Number(number) => number.as_u64() == Some(*p),
                        Value::String(named) => n == named,
                        _ => false,
                    });
                    assert!(
                        found,
                        "{overlay}: Service {name} sends {wanted:?} to {}, which has no such port",
                        pod.name
                    );
                }
            }
        }
        for pod in &pods {
            let mut refs = Vec::new();
            collect_refs(&pod.spec, &mut refs);
            for (kind, name) in refs {
                let known = match kind {
                    "configMapRef" | "configMapKeyRef" | "configMap" => &config_maps,
                    _ => &secrets,
                };
                assert!(
                    known.contains(&name),
                    "{overlay}: {} refers to {kind} {name}, which no document defines",
                    pod.name
                );
            }
        }
    }
}

/// Every ConfigMap and Secret a pod spec names.
fn collect_refs(value: &Value, refs: &mut Vec<(&'static str, String)>) {
    match value {
        Value::Mapping(map) => {
            for (key, inner) in map {
                let key = key.as_str().unwrap_or_default();
                for kind in [
                    "configMapRef",
                    "configMapKeyRef",
                    "configMap",
                    "secretRef",
                    "secretKeyRef",
                ] {
                    if key == kind
                        && let Some(name) = text(inner, &["name"])
                    {
                        refs.push((kind, name.to_owned()));
                    }
                }
                collect_refs(inner, refs);
            }
        }
        Value::Sequence(items) => items.iter().for_each(|i| collect_refs(i, refs)),
        _ => {}
    }
}

/// Who opens a connection to a pod in the `whatsnap` namespace.
enum Client<'a> {
    /// An address outside the cluster.
    Outside,
    /// A pod, in a namespace, with labels.
    Pod {
        namespace: &'a str,
        labels: &'a BTreeMap<String, String>,
    },
}

const NAMESPACE: &str = "whatsnap";

/// Where every whatsnap pod serves `/metrics` (`WHATSNAP_METRICS_ADDR`), and the namespace that
/// may scrape it.
const METRICS_PORT: u64 = 9090;
const MONITORING: &str = "monitoring";

/// Whether one `from` entry of an ingress rule admits `client`.
fn admits(peer: &Value, client: &Client) -> bool {
    let (namespace, pod_labels) = match client {
        Client::Outside => return peer.get("ipBlock").is_some(),
        Client::Pod { namespace, labels } => (*namespace, *labels),
    };
    if peer.get("ipBlock").is_some() {
        return false;
    }
    let namespace_labels = BTreeMap::from([(
        "kubernetes.io/metadata.name".to_owned(),
        namespace.to_owned(),
    )]);
    let namespace_matches = match peer.get("namespaceSelector") {
        Some(s) => selects(&selector(Some(s)), &namespace_labels),
        // A podSelector alone picks pods of the policy's own namespace.
        None => namespace == NAMESPACE,
    };
    let pod_matches = match peer.get("podSelector") {
        Some(s) => selects(&selector(Some(s)), pod_labels),
        None => true,
    };
    namespace_matches && pod_matches
}

/// The ports of `pod` that `client` can reach under the policies.
fn reachable(policies: &[&Value], pod: &Pods, client: &Client) -> BTreeSet<u64> {
    let applying: Vec<&&Value> = policies
        .iter()
        .filter(|p| selects(&selector(at(p, &["spec", "podSelector"])), &pod.labels))
        .filter(|p| {
            let types = list(at(p, &["spec", "policyTypes"]));
            types.is_empty() || types.iter().any(|t| t.as_str() == Some("Ingress"))
        })
        .collect();
    if applying.is_empty() {
        // No policy selects it: everything is open.
        return pod.ports.iter().map(|(_, p)| *p).collect();
    }
    let mut open = BTreeSet::new();
    for policy in applying {
        for rule in list(at(policy, &["spec", "ingress"])) {
            let from = list(rule.get("from"));
            // A rule with no `from` admits everyone.
            if !from.is_empty() && !from.iter().any(|peer| admits(peer, client)) {
                continue;
            }
            let ports = list(rule.get("ports"));
            if ports.is_empty() {
                open.extend(pod.ports.iter().map(|(_, p)| *p));
            }
            for port in ports {
                match port.get("port") {
                    Some(Value::Number(n)) => open.extend(n.as_u64()),
                    Some(Value::String(name)) => {
                        open.extend(pod.ports.iter().filter(|(n, _)| n == name).map(|(_, p)| *p))
                    }
                    _ => open.extend(pod.ports.iter().map(|(_, p)| *p)),
                }
            }
        }
    }
    open
}

/// Every pod of the overlay, with the production dependencies' pods in production.
fn every_pod(overlay: &str, documents: &[(String, Value)]) -> Vec<Pods> {
    let mut pods = pods(documents);
    if overlay == "production" {
        pods.extend(dependency_pods());
    }
    pods
}

fn policies(documents: &[(String, Value)]) -> Vec<&Value> {
    of_kind(documents, "NetworkPolicy")
}

#[test]
fn only_the_gateways_http_port_is_reachable_from_outside_and_the_metrics_port_from_monitoring() {
    let nobody = BTreeMap::new();
    let lookalike = BTreeMap::from([
        ("app".to_owned(), "whatsnap".to_owned()),
        ("target".to_owned(), "gateway".to_owned()),
    ]);
    let operator = BTreeMap::from([(
        "app.kubernetes.io/name".to_owned(),
        "cloudnative-pg".to_owned(),
    )]);
    for (overlay, documents) in overlays() {
        let policies = policies(&documents);
        let default_deny = policies.iter().any(|p| {
            selector(at(p, &["spec", "podSelector"])).is_empty()
                && list(at(p, &["spec", "policyTypes"]))
                    .iter()
                    .any(|t| t.as_str() == Some("Ingress"))
                && list(at(p, &["spec", "ingress"])).is_empty()
        });
        assert!(
            default_deny,
            "{overlay}: no policy closes every pod by default"
        );
        let pods = every_pod(&overlay, &documents);
        assert!(pods.iter().any(|p| p.name == "gateway"));
        for pod in &pods {
            let from_anywhere: BTreeSet<u64> = match pod.name.as_str() {
                "gateway" => [8080].into(),
                _ => BTreeSet::new(),
            };
            // Addresses outside the cluster, and pods of another namespace, even ones labelled
            // as whatsnap's or as the operator.
            for client in [
                Client::Outside,
                Client::Pod {
                    namespace: "elsewhere",
                    labels: &nobody,
                },
                Client::Pod {
                    namespace: "elsewhere",
                    labels: &lookalike,
                },
                Client::Pod {
                    namespace: "elsewhere",
                    labels: &operator,
                },
            ] {
                assert_eq!(
                    reachable(&policies, pod, &client),
                    from_anywhere,
                    "{overlay}: ports of {} reachable from outside the namespace",
                    pod.name
                );
            }
            // The CloudNativePG operator must reach its instances, and nothing else.
            let mut from_operator = from_anywhere.clone();
            if pod.labels.contains_key("cnpg.io/cluster") {
                from_operator.extend([5432, 8000]);
            }
            let client = Client::Pod {
                namespace: "cnpg-system",
                labels: &operator,
            };
            assert_eq!(
                reachable(&policies, pod, &client),
                from_operator,
                "{overlay}: ports of {} reachable from the CloudNativePG operator",
                pod.name
            );
            // Prometheus, in the monitoring namespace, scrapes every whatsnap pod's metrics.
            let mut from_monitoring = from_anywhere.clone();
            if pod.labels.get("app").map(String::as_str) == Some("whatsnap") {
                from_monitoring.insert(METRICS_PORT);
            }
            let client = Client::Pod {
                namespace: MONITORING,
                labels: &nobody,
            };
            assert_eq!(
                reachable(&policies, pod, &client),
                from_monitoring,
                "{overlay}: ports of {} reachable from the monitoring namespace",
                pod.name
            );
            // No pod of the namespace, whatsnap's own included, reads the metrics.
            for labels in [&nobody, &lookalike] {
                let client = Client::Pod {
                    namespace: NAMESPACE,
                    labels,
                };
                assert!(
                    !reachable(&policies, pod, &client).contains(&METRICS_PORT),
                    "{overlay}: the metrics of {} reachable from the namespace",
                    pod.name
                );
            }
        }
    }
}

#[test]
fn nats_postgres_and_the_services_grpc_are_reachable_from_every_whatsnap_pod() {
    for (overlay, documents) in overlays() {
        let policies = policies(&documents);
        let pods = every_pod(&overlay, &documents);
        let with = |label: &str, value: &str| -> Vec<&Pods> {
            pods.iter()
                .filter(|p| p.labels.get(label).map(String::as_str) == Some(value))
                .collect()
        };
        let (whatsnap, nats) = (with("app", "whatsnap"), with("app", "nats"));
        assert_eq!(whatsnap.len(), TARGETS.len(), "{overlay}");
        assert!(
            !nats.is_empty(),
            "{overlay}: no NATS pods labelled app: nats"
        );
        let postgres: Vec<&Pods> = pods
            .iter()
            .filter(|p| p.labels.contains_key("cnpg.io/cluster"))
            .collect();
        if overlay == "production" {
            assert!(!postgres.is_empty());
        }
        let can_reach = |from: &Pods, to: &Pods, port: u64| {
            let client = Client::Pod {
                namespace: NAMESPACE,
                labels: &from.labels,
            };
            assert!(
                reachable(&policies, to, &client).contains(&port),
                "{overlay}: {} cannot reach port {port} of {}",
                from.name,
                to.name
            );
        };
        for client in &whatsnap {
            for server in &nats {
                can_reach(client, server, 4222);
            }
            for server in &postgres {
                can_reach(client, server, 5432);
            }
            for service in &whatsnap {
                can_reach(client, service, 50051);
            }
        }
        for (a, b) in nats.iter().flat_map(|a| nats.iter().map(move |b| (a, b))) {
            can_reach(a, b, 6222);
        }
        // Replication and the instance manager between the PostgreSQL instances.
        for (a, b) in postgres
            .iter()
            .flat_map(|a| postgres.iter().map(move |b| (a, b)))
        {
            can_reach(a, b, 5432);
            can_reach(a, b, 8000);
        }
    }
}

#[test]
fn every_deployment_has_requests_limits_its_three_probes_and_the_metrics_port() {
    for (overlay, documents) in overlays() {
        let settings = named(&documents, "ConfigMap", "whatsnap").unwrap();
        let metrics_addr = text(settings, &["data", "WHATSNAP_METRICS_ADDR"])
            .unwrap_or_else(|| panic!("{overlay}: the settings have no WHATSNAP_METRICS_ADDR"));
        assert_eq!(
            metrics_addr,
            format!("0.0.0.0:{METRICS_PORT}"),
            "{overlay}: metrics must listen on every interface of the pod, on the metrics port"
        );
        for pod in pods(&documents) {
            for container in list(at(&pod.spec, &["containers"])) {
                let name = format!(
                    "{overlay}: {} ({})",
                    pod.name,
                    text(&container, &["name"]).unwrap()
                );
                let resources = container
                    .get("resources")
                    .unwrap_or_else(|| panic!("{name} has no resources"));
                for resource in ["cpu", "memory"] {
                    let amount = |of: &str| {
                        let value = at(resources, &[of, resource])
                            .unwrap_or_else(|| panic!("{name} has no {of}.{resource}"));
                        quantity(value)
                            .unwrap_or_else(|| panic!("{name}: {of}.{resource} {value:?}"))
                    };
                    assert!(
                        amount("requests") <= amount("limits"),
                        "{name}: its {resource} request is above its limit"
                    );
                }
            }
        }
        let deployments = whatsnap_deployments(&documents);
        let targets: BTreeSet<&str> = deployments.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(targets, BTreeSet::from(TARGETS), "{overlay}");
        for deployment in &deployments {
            let target = deployment.name.as_str();
            let name = format!("{overlay}: {target}");
            let document = named(&documents, "Deployment", target).unwrap();
            let expected = BTreeMap::from([
                ("app".to_owned(), "whatsnap".to_owned()),
                ("target".to_owned(), target.to_owned()),
            ]);
            assert_eq!(
                labels(at(document, &["metadata", "labels"])),
                expected,
                "{name}"
            );
            assert_eq!(deployment.labels, expected, "{name}: its pods' labels");
            let containers = list(at(&deployment.spec, &["containers"]));
            assert_eq!(containers.len(), 1, "{name}");
            let container = &containers[0];
            let args: Vec<String> = list(container.get("args"))
                .iter()
                .map(|a| a.as_str().unwrap().to_owned())
                .collect();
            let args = args.join(" ");
            assert!(
                args.ends_with(&format!("--target {target}")),
                "{name}: {args}"
            );
            assert!(
                deployment
                    .ports
                    .contains(&("metrics".to_owned(), METRICS_PORT)),
                "{name} has no container port metrics: {METRICS_PORT}: {:?}",
                deployment.ports
            );
            let settings_read = list(container.get("envFrom"))
                .iter()
                .any(|e| text(e, &["configMapRef", "name"]) == Some("whatsnap"));
            assert!(settings_read, "{name} does not read the whatsnap settings");
            let grpc_health = |probe: &str| {
                assert_eq!(
                    at(container, &[probe, "grpc", "port"]).and_then(Value::as_u64),
                    Some(50051),
                    "{name}: its {probe} is not the gRPC health check on 50051"
                );
            };
            grpc_health("startupProbe");
            grpc_health("livenessProbe");
            if target == "gateway" {
                assert_eq!(
                    text(container, &["readinessProbe", "httpGet", "path"]),
                    Some("/readyz"),
                    "{name}"
                );
                assert_eq!(
                    at(container, &["readinessProbe", "httpGet", "port"]).and_then(Value::as_u64),
                    Some(8080),
                    "{name}"
                );
            } else {
                grpc_health("readinessProbe");
            }
        }
    }
}

/// A Kubernetes quantity (`250m`, `"2"`, `512Mi`, `1Gi`) in thousandths of a unit, or None for
/// anything else.
fn quantity(value: &Value) -> Option<u128> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(digits);
    let number: u128 = number.parse().ok()?;
    let thousandths = match suffix {
        "m" => 1,
        "" => 1000,
        "k" => 1000 * 1000,
        "M" => 1000 * 1000u128.pow(2),
        "G" => 1000 * 1000u128.pow(3),
        "Ki" => 1000 * 1024,
        "Mi" => 1000 * 1024u128.pow(2),
        "Gi" => 1000 * 1024u128.pow(3),
        "Ti" => 1000 * 1024u128.pow(4),
        _ => return None,
    };
    Some(number * thousandths)
}

/// Replicas of a service share its work through leases in PostgreSQL (each projection and each
/// service's workers on one replica at a time), so production runs two of every service: the
/// gateway, the HTTP edge and the only one with an autoscaler, two to ten. The small overlay runs
/// one of each.
#[test]
fn production_runs_two_of_every_service_and_only_the_gateway_autoscales() {
    for (overlay, documents) in overlays() {
        let (replicas, autoscaled) = match overlay.as_str() {
            "production" => (2, Some((2, 10))),
            "small" => (1, None),
            _ => continue,
        };
        for deployment in whatsnap_deployments(&documents) {
            let name = format!("{overlay}: {}", deployment.name);
            assert_eq!(
                fewest_replicas(&documents, &deployment.name),
                replicas,
                "{name}"
            );
            if deployment.name != "gateway" {
                let document = named(&documents, "Deployment", &deployment.name).unwrap();
                let count = at(document, &["spec", "replicas"]).and_then(Value::as_u64);
                assert_eq!(count, Some(replicas), "{name}");
            }
        }
        let autoscalers = of_kind(&documents, "HorizontalPodAutoscaler");
        assert_eq!(
            autoscalers.len(),
            usize::from(autoscaled.is_some()),
            "{overlay}"
        );
        for autoscaler in autoscalers {
            assert_eq!(text(autoscaler, &["apiVersion"]), Some("autoscaling/v2"));
            let target = at(autoscaler, &["spec", "scaleTargetRef"]).unwrap();
            assert_eq!(
                (text(target, &["kind"]), text(target, &["name"])),
                (Some("Deployment"), Some("gateway")),
                "{overlay}: an autoscaler scales something other than the gateway"
            );
            // An applied count would reset the autoscaler's at every apply.
            let gateway = named(&documents, "Deployment", "gateway").unwrap();
            assert!(at(gateway, &["spec", "replicas"]).is_none(), "{overlay}");
            let (min, max) = (
                at(autoscaler, &["spec", "minReplicas"])
                    .and_then(Value::as_u64)
                    .unwrap(),
                at(autoscaler, &["spec", "maxReplicas"])
                    .and_then(Value::as_u64)
                    .unwrap(),
            );
            assert_eq!(Some((min, max)), autoscaled, "{overlay}: {min}..{max}");
            let on_cpu = list(at(autoscaler, &["spec", "metrics"])).iter().any(|m| {
                text(m, &["type"]) == Some("Resource")
                    && text(m, &["resource", "name"]) == Some("cpu")
            });
            assert!(
                on_cpu,
                "{overlay}: the gateway's autoscaler does not follow CPU"
            );
        }
    }
}

/// The fewest replicas a Deployment of `documents` runs: its autoscaler's minimum, else its own
/// count (1 when unset).
fn fewest_replicas(documents: &[(String, Value)], deployment: &str) -> u64 {
    let autoscaled = of_kind(documents, "HorizontalPodAutoscaler")
        .into_iter()
        .find(|a| text(a, &["spec", "scaleTargetRef", "name"]) == Some(deployment));
    match autoscaled {
        Some(a) => at(a, &["spec", "minReplicas"])
            .and_then(Value::as_u64)
            .unwrap_or(1),
        None => named(documents, "Deployment", deployment)
            .and_then(|d| at(d, &["spec", "replicas"]))
            .and_then(Value::as_u64)
            .unwrap_or(1),
    }
}

/// The most replicas a Deployment of `documents` runs: its autoscaler's maximum, else its own
/// count (1 when unset).
fn most_replicas(documents: &[(String, Value)], deployment: &str) -> u64 {
    let autoscaled = of_kind(documents, "HorizontalPodAutoscaler")
        .into_iter()
        .find(|a| text(a, &["spec", "scaleTargetRef", "name"]) == Some(deployment));
    match autoscaled {
        Some(a) => at(a, &["spec", "maxReplicas"])
            .and_then(Value::as_u64)
            .unwrap(),
        None => named(documents, "Deployment", deployment)
            .and_then(|d| at(d, &["spec", "replicas"]))
            .and_then(Value::as_u64)
            .unwrap_or(1),
    }
}

#[test]
fn production_has_a_disruption_budget_per_service_that_keeps_one_pod_and_never_blocks_a_drain() {
    for (overlay, documents) in overlays() {
        let deployments = whatsnap_deployments(&documents);
        let budgets = of_kind(&documents, "PodDisruptionBudget");
        if overlay == "production" {
            assert_eq!(budgets.len(), TARGETS.len(), "{overlay}");
        }
        let mut covered = BTreeSet::new();
        for budget in budgets {
            let name = text(budget, &["metadata", "name"]).unwrap();
            assert_eq!(text(budget, &["apiVersion"]), Some("policy/v1"), "{name}");
            let selector = selector(at(budget, &["spec", "selector"]));
            let chosen: Vec<&Pods> = deployments
                .iter()
                .filter(|d| selects(&selector, &d.labels))
                .collect();
            assert_eq!(
                chosen.len(),
                1,
                "{overlay}: budget {name} covers {} services",
                chosen.len()
            );
            let target = chosen[0].name.as_str();
            assert!(
                covered.insert(target),
                "{overlay}: two budgets for {target}"
            );
            let spec = budget.get("spec").unwrap();
            match (spec.get("minAvailable"), spec.get("maxUnavailable")) {
                (Some(min), None) => {
                    let min = min.as_u64().expect("minAvailable as a number of pods");
                    assert!(
                        fewest_replicas(&documents, target) > min,
                        "{overlay}: budget {name} keeps {min} of {target}'s pods, which may run no more: it would block every drain"
                    );
                }
                (None, Some(max)) => {
                    let max = max.as_u64().expect("maxUnavailable as a number of pods");
                    assert!(max >= 1, "{overlay}: budget {name} blocks every drain");
                }
                _ => {
                    panic!("{overlay}: budget {name} needs one of minAvailable and maxUnavailable")
                }
            }
            // A drain never takes the last pod of a service.
            if overlay == "production" {
                assert_eq!(
                    spec.get("minAvailable").and_then(Value::as_u64),
                    Some(1),
                    "{overlay}: budget {name}"
                );
            }
        }
        if overlay == "production" {
            assert_eq!(covered, BTreeSet::from(TARGETS), "{overlay}");
        }
    }
}

#[test]
fn nats_requires_a_login_that_every_service_presents_and_no_secret_has_a_default() {
    for (overlay, documents) in overlays() {
        match named(&documents, "ConfigMap", "nats-config") {
            Some(config) => {
                let nats_config = text(config, &["data", "nats.conf"]).unwrap();
                assert!(nats_config.contains("authorization"), "{nats_config}");
                assert!(
                    nats_config.contains("$NATS_PASSWORD"),
                    "the password comes from the Secret"
                );
            }
            // The NATS chart's servers, with the values that require the login.
            None => assert_eq!(overlay, "production"),
        }
        for pod in pods(&documents) {
            let env = serde_yaml::to_string(&pod.spec).unwrap();
            let wanted: &[&str] = match pod.labels.get("app").map(String::as_str) {
                Some("whatsnap") => &["WHATSNAP_NATS_USER", "WHATSNAP_NATS_PASSWORD"],
                Some("nats") => &["NATS_USER", "NATS_PASSWORD"],
                _ => &[],
            };
            let spec = &pod.spec;
            for name in wanted {
                let from_secret = list(at(spec, &["containers"])).iter().any(|c| {
                    list(c.get("env")).iter().any(|e| {
                        text(e, &["name"]) == Some(name)
                            && text(e, &["valueFrom", "secretKeyRef", "name"])
                                == Some("whatsnap-nats")
                    })
                });
                assert!(
                    from_secret,
                    "{overlay}: {} does not take {name} from the whatsnap-nats Secret: {env}",
                    pod.name
                );
            }
        }
        let mut secret_keys = Vec::new();
        for secret in of_kind(&documents, "Secret") {
            let name = text(secret, &["metadata", "name"]).unwrap();
            for (key, value) in labels(secret.get("stringData")) {
                secret_keys.push(format!("{name}.{key}"));
                let secretish = ["PASSWORD", "SECRET", "URL", "TOKEN", "password"]
                    .iter()
                    .any(|w| key.contains(w));
                if secretish {
                    assert!(
                        value.contains("CHANGE-ME"),
                        "{name}.{key} has a default: {value}"
                    );
                }
            }
        }
        // A distributed deployment's first admin token comes from the Secret.
        assert!(
            secret_keys
                .iter()
                .any(|k| k == "whatsnap-secrets.WHATSNAP_ADMIN_TOKEN"),
            "{secret_keys:?}"
        );
    }

    // The NATS chart's servers require the same login, read from the same Secret.
    let values = nats_values();
    assert_eq!(
        text(&values, &["config", "merge", "authorization", "user"]),
        Some("<< $NATS_USER >>")
    );
    assert_eq!(
        text(&values, &["config", "merge", "authorization", "password"]),
        Some("<< $NATS_PASSWORD >>")
    );
    for (variable, key) in [("NATS_USER", "user"), ("NATS_PASSWORD", "password")] {
        let from = at(
            &values,
            &["container", "env", variable, "valueFrom", "secretKeyRef"],
        )
        .unwrap_or_else(|| panic!("the NATS chart's {variable} is not from a Secret"));
        assert_eq!(
            (text(from, &["name"]), text(from, &["key"])),
            (Some("whatsnap-nats"), Some(key))
        );
    }
}

#[test]
fn the_production_dependencies_are_what_the_overlay_and_the_secrets_expect() {
    let production = production();
    // The bundled NATS is for trying whatsnap out: production runs the chart's.
    assert!(named(&production, "StatefulSet", "nats").is_none());
    assert!(named(&production, "ConfigMap", "nats-config").is_none());
    let small = overlays()
        .into_iter()
        .find(|(n, _)| n == "small")
        .unwrap()
        .1;
    assert!(named(&small, "StatefulSet", "nats").is_some());

    let settings = named(&production, "ConfigMap", "whatsnap").unwrap();
    let stream_replicas: u64 = text(settings, &["data", "WHATSNAP_NATS_REPLICAS"])
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        text(settings, &["data", "WHATSNAP_NATS_URL"]),
        Some("nats://nats:4222")
    );

    let values = nats_values();
    let config = values.get("config").unwrap();
    assert_eq!(
        at(config, &["cluster", "enabled"]),
        Some(&Value::Bool(true))
    );
    let servers = at(config, &["cluster", "replicas"])
        .and_then(Value::as_u64)
        .unwrap();
    assert!(
        servers >= 3 && servers >= stream_replicas,
        "{servers} NATS servers for a stream of {stream_replicas} replicas"
    );
    assert_eq!(
        at(config, &["jetstream", "enabled"]),
        Some(&Value::Bool(true))
    );
    assert_ne!(
        at(config, &["jetstream", "fileStore", "enabled"]),
        Some(&Value::Bool(false)),
        "JetStream keeps the event log on disk"
    );
    assert!(text(config, &["jetstream", "fileStore", "pvc", "size"]).is_some());

    let cluster = postgres_cluster();
    assert_eq!(
        text(&cluster, &["apiVersion"]),
        Some("postgresql.cnpg.io/v1")
    );
    assert_eq!(text(&cluster, &["kind"]), Some("Cluster"));
    assert_eq!(text(&cluster, &["metadata", "namespace"]), Some(NAMESPACE));
    let name = text(&cluster, &["metadata", "name"]).unwrap();
    let spec = cluster.get("spec").unwrap();
    assert!(spec.get("instances").and_then(Value::as_u64).unwrap() >= 3);
    assert!(text(spec, &["storage", "size"]).is_some());
    let database = text(spec, &["bootstrap", "initdb", "database"]).unwrap();
    // PostgreSQL takes the connections of the most pods a rolling update runs: each
    // Deployment's most replicas and the 25 % it surges by.
    let most_pods: u64 = whatsnap_deployments(&production)
        .iter()
        .map(|d| {
            let most = most_replicas(&production, &d.name);
            most + most.div_ceil(4)
        })
        .sum();
    let max_connections: u64 = text(spec, &["postgresql", "parameters", "max_connections"])
        .expect("max_connections: PostgreSQL's default of 100 is too few")
        .parse()
        .unwrap();
    let config = one_document(&k8s().join("base/config.yaml"));
    let per_process =
        connections_per_process(at(&config, &["data", "WHATSNAP_DATABASE_CONNECTIONS"]));
    assert!(
        max_connections >= most_pods * per_process,
        "max_connections {max_connections} for {most_pods} pods of {per_process}"
    );
    let owner = text(spec, &["bootstrap", "initdb", "owner"]).unwrap();
    // The database URL names the cluster's primary (the operator's `<name>-rw` Service).
    let secrets = documents_of(&k8s().join("base/secret.example.yaml"));
    let url = secrets
        .iter()
        .find_map(|s| text(s, &["stringData", "WHATSNAP_DATABASE_URL"]))
        .unwrap();
    assert!(url.starts_with(&format!("postgres://{owner}:")), "{url}");
    assert!(
        url.ends_with(&format!("@{name}-rw:5432/{database}")),
        "{url}"
    );
}

#[test]
fn compose_publishes_only_the_gateways_http_port_and_reads_its_passwords_from_env() {
    let text_of = std::fs::read_to_string(root().join("compose.yaml")).unwrap();
    let compose: Value = serde_yaml::from_str(&text_of).unwrap();
    let services = compose.get("services").and_then(Value::as_mapping).unwrap();
    for (name, service) in services {
        let name = name.as_str().unwrap();
        for port in list(service.get("ports")) {
            let port = port.as_str().unwrap().to_owned();
            assert!(!port.contains("50051"), "{name} publishes gRPC: {port}");
            let everywhere = port.split(':').count() < 3;
            if everywhere {
                assert_eq!(
                    (name, port.as_str()),
                    ("gateway", "8080-8081:8080"),
                    "published on every interface"
                );
            } else {
                assert!(port.starts_with("127.0.0.1:"), "{name} publishes {port}");
            }
        }
    }
    assert!(
        !text_of.contains("postgres:postgres@"),
        "a default PostgreSQL password"
    );
    let postgres_password = text(
        &compose["services"]["postgres"],
        &["environment", "POSTGRES_PASSWORD"],
    )
    .unwrap();
    assert!(
        postgres_password.starts_with("${POSTGRES_PASSWORD:?"),
        "{postgres_password}"
    );
    let nats_config = text(&compose, &["configs", "nats", "content"]).unwrap();
    assert!(nats_config.contains("authorization"), "{nats_config}");
    let env = compose
        .get("x-whatsnap")
        .and_then(|x| x.get("environment"))
        .unwrap();
    assert!(
        text(env, &["WHATSNAP_NATS_PASSWORD"])
            .unwrap()
            .starts_with("${NATS_PASSWORD:?")
    );
    // The first admin token comes from .env, never a default.
    assert!(
        text(env, &["WHATSNAP_ADMIN_TOKEN"])
            .unwrap()
            .starts_with("${WHATSNAP_ADMIN_TOKEN:?")
    );
    let example = std::fs::read_to_string(root().join(".env.example")).unwrap();
    for variable in [
        "POSTGRES_PASSWORD=",
        "NATS_PASSWORD=",
        "WHATSNAP_SECRET_KEY=",
        "WHATSNAP_PERSONAL_DATA_KEY=",
        "WHATSNAP_ADMIN_TOKEN=",
    ] {
        let line = example
            .lines()
            .find(|l| l.starts_with(variable))
            .unwrap_or_else(|| panic!("{variable} is not in .env.example"));
        assert_eq!(line, variable, "the example gives {variable} a value");
    }
}

/// The secret key opens every tenant's Twilio and GHL credentials: only the two services that
/// use them get it. The internet-facing gateway, and contacts and assignment, get the personal
/// data key alone.
#[test]
fn only_session_and_ghl_sync_are_given_the_secret_key_that_opens_credentials() {
    for (overlay, documents) in overlays() {
        let secret_holding: BTreeSet<String> = of_kind(&documents, "Secret")
            .into_iter()
            .filter(|d| labels(d.get("stringData")).contains_key("WHATSNAP_SECRET_KEY"))
            .map(|d| text(d, &["metadata", "name"]).unwrap().to_owned())
            .collect();
        assert_eq!(
            secret_holding,
            BTreeSet::from(["whatsnap-credentials".to_owned()])
        );
        let mut given = BTreeSet::new();
        for pod in pods(&documents) {
            if pod.labels.get("app").map(String::as_str) != Some("whatsnap") {
                continue;
            }
            let mut refs = Vec::new();
            collect_refs(&pod.spec, &mut refs);
            let spec = serde_yaml::to_string(&pod.spec).unwrap();
            if refs.iter().any(|(_, name)| secret_holding.contains(name))
                || spec.contains("WHATSNAP_SECRET_KEY")
            {
                given.insert(pod.name.clone());
            }
        }
        assert_eq!(
            given,
            BTreeSet::from(["ghl-sync".to_owned(), "session".to_owned()]),
            "{overlay}"
        );
    }

    let mut compose: Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("compose.yaml")).unwrap())
            .unwrap();
    compose.apply_merge().unwrap();
    let services = compose.get("services").and_then(Value::as_mapping).unwrap();
    let mut given = BTreeSet::new();
    for (name, service) in services {
        if text(service, &["image"]) != Some("whatsnap:dev") {
            continue;
        }
        let environment = service.get("environment").unwrap();
        if environment.get("WHATSNAP_SECRET_KEY").is_some() {
            given.insert(name.as_str().unwrap().to_owned());
        }
        assert!(
            environment.get("WHATSNAP_PERSONAL_DATA_KEY").is_some(),
            "{name:?} has no personal data key"
        );
    }
    assert_eq!(
        given,
        BTreeSet::from(["ghl-sync".to_owned(), "session".to_owned()])
    );
}

/// compose runs two replicas of every target, as production does; each serves its metrics
/// inside the compose network only, and each gateway replica gets a host port of its own.
#[test]
fn compose_runs_two_of_every_target_with_its_metrics_unpublished() {
    let mut compose: Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("compose.yaml")).unwrap())
            .unwrap();
    compose.apply_merge().unwrap();
    let services = compose.get("services").and_then(Value::as_mapping).unwrap();
    let mut targets = BTreeSet::new();
    let mut processes = 0;
    for (name, service) in services {
        if text(service, &["image"]) != Some("whatsnap:dev") {
            continue;
        }
        let name = name.as_str().unwrap();
        targets.insert(name);
        processes += at(service, &["deploy", "replicas"])
            .and_then(Value::as_u64)
            .unwrap_or(1);
        let command: Vec<String> = list(service.get("command"))
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(command, ["serve", "--target", name]);
        let replicas = at(service, &["deploy", "replicas"]).and_then(Value::as_u64);
        assert_eq!(replicas, Some(2), "{name}");
        assert_eq!(
            text(service, &["environment", "WHATSNAP_METRICS_ADDR"]),
            Some(format!("0.0.0.0:{METRICS_PORT}").as_str()),
            "{name}"
        );
        for port in list(service.get("ports")) {
            let port = port.as_str().unwrap();
            let (host, container) = port.rsplit_once(':').unwrap();
            assert_ne!(
                container,
                METRICS_PORT.to_string(),
                "{name} publishes {port}"
            );
            let host = host.rsplit(':').next().unwrap();
            let (first, last) = host.split_once('-').unwrap_or((host, host));
            let host_ports = last.parse::<u64>().unwrap() - first.parse::<u64>().unwrap() + 1;
            assert!(
                host_ports >= 2,
                "{name}: {port} has a host port for one of its two replicas only"
            );
        }
    }
    assert_eq!(targets, BTreeSet::from(TARGETS));
    // PostgreSQL takes every process's connections.
    let postgres = list(at(&compose, &["services", "postgres", "command"]));
    let max_connections: u64 = postgres
        .iter()
        .find_map(|a| a.as_str()?.strip_prefix("max_connections="))
        .expect("PostgreSQL's default max_connections of 100")
        .parse()
        .unwrap();
    let per_process = connections_per_process(at(
        &compose,
        &["x-whatsnap", "environment", "WHATSNAP_DATABASE_CONNECTIONS"],
    ));
    assert!(
        max_connections >= processes * per_process,
        "max_connections {max_connections} for {processes} processes of {per_process}"
    );
}

fn monitoring() -> PathBuf {
    root().join("deploy/monitoring")
}

/// The rules of `deploy/monitoring/alerts.yaml` that are alerts.
fn alerts() -> Vec<Value> {
    let rules = one_document(&monitoring().join("alerts.yaml"));
    let groups = list(rules.get("groups"));
    assert!(!groups.is_empty(), "alerts.yaml has no groups");
    groups
        .iter()
        .flat_map(|g| list(g.get("rules")))
        .filter(|r| r.get("alert").is_some())
        .collect()
}

fn dashboard() -> serde_json::Value {
    let path = monitoring().join("grafana-dashboard.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("grafana-dashboard.json is not valid JSON: {e}"))
}

/// Every `whatsnap_…` metric name in `text`, a histogram's `_bucket`, `_sum` and `_count` series
/// named as the histogram.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("whatsnap_") {
        let (before, from) = rest.split_at(start);
        let end = from
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(from.len());
        let glued = before
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !glued {
            let name = &from[..end];
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            names.insert(name.to_owned());
        }
        rest = &from[end..];
    }
    names
}

/// The text of every `.rs` file under `dir`.
fn rust_sources(dir: &Path, into: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if !path.ends_with("target") {
                rust_sources(&path, into);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

/// An alert on a metric nothing exports never fires: every metric the alerts and the dashboard
/// use is named, as a string literal, in the code of `libs/` or `services/`.
#[test]
fn the_alerts_and_the_dashboard_watch_only_metrics_the_code_exports() {
    let mut sources = String::new();
    rust_sources(&root().join("libs"), &mut sources);
    rust_sources(&root().join("services"), &mut sources);
    for file in ["alerts.yaml", "grafana-dashboard.json"] {
        let used = metric_names(&std::fs::read_to_string(monitoring().join(file)).unwrap());
        assert!(used.len() >= 5, "{file} uses only {used:?}");
        for name in used {
            assert!(
                sources.contains(&format!("\"{name}\"")),
                "{file} uses {name}, which no code under libs/ or services/ exports"
            );
        }
    }
}

#[test]
fn every_alert_says_what_when_and_how_bad_and_every_panel_asks_the_prometheus_input() {
    let alerts = alerts();
    assert!(alerts.len() >= 8, "{} alerts", alerts.len());
    let mut names = BTreeSet::new();
    for alert in &alerts {
        let name = text(alert, &["alert"]).unwrap();
        assert!(names.insert(name), "two alerts named {name}");
        assert!(
            text(alert, &["expr"]).is_some_and(|e| !e.trim().is_empty()),
            "{name} has no expr"
        );
        assert!(
            text(alert, &["for"]).is_some(),
            "{name} has no for: it would fire on one scrape"
        );
        assert!(
            matches!(
                text(alert, &["labels", "severity"]),
                Some("critical" | "warning")
            ),
            "{name}: severity is critical or warning"
        );
        let description = text(alert, &["annotations", "description"]).unwrap_or_default();
        assert!(
            !description.is_empty() && !description.contains('\n'),
            "{name} needs a one-line description"
        );
    }

    let dashboard = dashboard();
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    let inputs = dashboard["__inputs"].as_array().unwrap();
    assert!(inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS"));
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 8, "{} panels", panels.len());
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            assert!(target["expr"].as_str().is_some(), "{title}");
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        }
    }
}

/// Prometheus finds the whatsnap pods and scrapes the port the Deployments name metrics, with a
/// token (`/metrics` answers 401 without one).
#[test]
fn prometheus_scrapes_the_metrics_port_of_every_whatsnap_pod_with_a_token() {
    let config = one_document(&monitoring().join("prometheus-scrape.yaml"));
    let jobs = list(config.get("scrape_configs"));
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    let discovery = list(job.get("kubernetes_sd_configs"));
    assert_eq!(discovery.len(), 1);
    assert_eq!(text(&discovery[0], &["role"]), Some("pod"));
    let namespaces = list(at(&discovery[0], &["namespaces", "names"]));
    assert_eq!(namespaces, [Value::from(NAMESPACE)]);
    assert!(text(job, &["authorization", "credentials_file"]).is_some());
    let relabel = list(job.get("relabel_configs"));
    let keeps = |label: &str| {
        relabel
            .iter()
            .find(|r| {
                text(r, &["action"]) == Some("keep")
                    && list(r.get("source_labels")) == [Value::from(label)]
            })
            .and_then(|r| text(r, &["regex"]))
            .map(str::to_owned)
    };
    assert_eq!(
        keeps("__meta_kubernetes_pod_label_app").as_deref(),
        Some("whatsnap")
    );
    let port_name = keeps("__meta_kubernetes_pod_container_port_name").unwrap();
    let relabels_target = relabel.iter().any(|r| {
        list(r.get("source_labels")) == [Value::from("__meta_kubernetes_pod_label_target")]
            && text(r, &["target_label"]) == Some("target")
    });
    assert!(
        relabels_target,
        "the series are not labelled with the target"
    );
    for deployment in whatsnap_deployments(&production()) {
        assert!(
            deployment
                .ports
                .contains(&(port_name.clone(), METRICS_PORT)),
            "{} has no port {port_name}: {METRICS_PORT}",
            deployment.name
        );
    }
}
