//! The deployment files, checked without a cluster or the internet: every Kubernetes document
//! parses and names what it must, what one document refers to (labels, ports, ConfigMaps,
//! Secrets) exists in another, only the gateway's HTTP port is reachable from outside the
//! namespace, NATS requires a login, nothing carries a default password, and compose publishes
//! no gRPC port.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize as _;
use serde_yaml::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Every document of every file in `deploy/k8s`, with the file it came from.
fn k8s_documents() -> Vec<(String, Value)> {
    let dir = root().join("deploy/k8s");
    let mut documents = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{name} is not valid YAML: {e}"));
            if !value.is_null() {
                documents.push((name.clone(), value));
            }
        }
    }
    documents
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

fn list(value: Option<&Value>) -> Vec<Value> {
    value
        .and_then(Value::as_sequence)
        .cloned()
        .unwrap_or_default()
}

/// A workload's pods: their labels, and the container ports by name and number.
struct Pods {
    name: String,
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
            let selector = labels_of_selector(d);
            assert!(
                !selector.is_empty() && selects(&selector, &labels),
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
                labels,
                ports,
                spec: template.get("spec").cloned().unwrap(),
            }
        })
        .collect()
}

fn labels_of_selector(workload: &Value) -> BTreeMap<String, String> {
    labels(at(workload, &["spec", "selector", "matchLabels"]))
}

#[test]
fn every_kubernetes_document_names_what_it_must_and_the_kustomization_lists_every_file() {
    let documents = k8s_documents();
    assert!(documents.len() > 10, "{} documents", documents.len());
    for (file, document) in &documents {
        let kind =
            text(document, &["kind"]).unwrap_or_else(|| panic!("{file}: a document has no kind"));
        assert!(
            text(document, &["apiVersion"]).is_some(),
            "{file}: {kind} has no apiVersion"
        );
        if kind != "Kustomization" {
            assert!(
                text(document, &["metadata", "name"]).is_some(),
                "{file}: a {kind} has no metadata.name"
            );
        }
    }
    let kustomization = &documents
        .iter()
        .find(|(f, _)| f == "kustomization.yaml")
        .unwrap()
        .1;
    let listed: BTreeSet<String> = list(kustomization.get("resources"))
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let files: BTreeSet<String> = documents.iter().map(|(f, _)| f.clone()).collect();
    for resource in &listed {
        assert!(
            files.contains(resource),
            "the kustomization lists {resource}, which does not exist"
        );
    }
    for file in &files {
        // The Secret is filled in by hand, never applied as it is.
        if file != "kustomization.yaml" && file != "secret.example.yaml" {
            assert!(listed.contains(file), "{file} is not in the kustomization");
        }
    }
    assert!(!listed.contains("secret.example.yaml"));
}

#[test]
fn services_select_pods_and_ports_that_exist_and_every_reference_is_defined() {
    let documents = k8s_documents();
    let pods = pods(&documents);
    let defined = |kind: &str| -> BTreeSet<String> {
        documents
            .iter()
            .filter(|(_, d)| text(d, &["kind"]) == Some(kind))
            .map(|(_, d)| text(d, &["metadata", "name"]).unwrap().to_owned())
            .collect()
    };
    let (config_maps, secrets) = (defined("ConfigMap"), defined("Secret"));
    for (file, service) in documents
        .iter()
        .filter(|(_, d)| text(d, &["kind"]) == Some("Service"))
    {
        let name = text(service, &["metadata", "name"]).unwrap();
        let selector = labels(at(service, &["spec", "selector"]));
        let targets: Vec<&Pods> = pods
            .iter()
            .filter(|p| selects(&selector, &p.labels))
            .collect();
        assert!(
            !targets.is_empty(),
            "{file}: Service {name} selects no pods"
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
                    "{file}: Service {name} sends {wanted:?} to {}, which has no such port",
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
                "{} refers to {kind} {name}, which no document defines",
                pod.name
            );
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

/// The ports of `pod` that a client outside the namespace can reach under the policies.
fn reachable_from_outside(policies: &[&Value], pod: &Pods) -> BTreeSet<u64> {
    let applying: Vec<&&Value> = policies
        .iter()
        .filter(|p| {
            selects(
                &labels(at(p, &["spec", "podSelector", "matchLabels"])),
                &pod.labels,
            )
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
            // A rule with no `from`, or one with an ipBlock, admits the outside.
            let outside = from.is_empty() || from.iter().any(|f| f.get("ipBlock").is_some());
            if !outside {
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

#[test]
fn only_the_gateways_http_port_is_reachable_from_outside_the_namespace() {
    let documents = k8s_documents();
    let policies: Vec<&Value> = documents
        .iter()
        .filter(|(_, d)| text(d, &["kind"]) == Some("NetworkPolicy"))
        .map(|(_, d)| d)
        .collect();
    let default_deny = policies.iter().any(|p| {
        labels(at(p, &["spec", "podSelector", "matchLabels"])).is_empty()
            && list(at(p, &["spec", "policyTypes"]))
                .iter()
                .any(|t| t.as_str() == Some("Ingress"))
            && list(at(p, &["spec", "ingress"])).is_empty()
    });
    assert!(default_deny, "no policy closes every pod by default");
    let pods = pods(&documents);
    for pod in &pods {
        let open = reachable_from_outside(&policies, pod);
        let expected: BTreeSet<u64> = match pod.name.as_str() {
            "gateway" => [8080].into(),
            _ => BTreeSet::new(),
        };
        assert_eq!(
            open, expected,
            "ports of {} reachable from outside",
            pod.name
        );
    }
    assert!(pods.iter().any(|p| p.name == "gateway"));
}

#[test]
fn nats_requires_a_login_that_every_service_presents_and_no_secret_has_a_default() {
    let documents = k8s_documents();
    let nats_config = documents
        .iter()
        .find(|(_, d)| text(d, &["metadata", "name"]) == Some("nats-config"))
        .map(|(_, d)| text(d, &["data", "nats.conf"]).unwrap().to_owned())
        .unwrap();
    assert!(nats_config.contains("authorization"), "{nats_config}");
    assert!(
        nats_config.contains("$NATS_PASSWORD"),
        "the password comes from the Secret"
    );
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
                        && text(e, &["valueFrom", "secretKeyRef", "name"]) == Some("whatsnap-nats")
                })
            });
            assert!(
                from_secret,
                "{} does not take {name} from the whatsnap-nats Secret: {env}",
                pod.name
            );
        }
    }
    let mut secret_keys = Vec::new();
    for (_, secret) in documents
        .iter()
        .filter(|(_, d)| text(d, &["kind"]) == Some("Secret"))
    {
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
                    ("gateway", "8080:8080"),
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
    let documents = k8s_documents();
    let secret_holding: BTreeSet<String> = documents
        .iter()
        .filter(|(_, d)| text(d, &["kind"]) == Some("Secret"))
        .filter(|(_, d)| labels(d.get("stringData")).contains_key("WHATSNAP_SECRET_KEY"))
        .map(|(_, d)| text(d, &["metadata", "name"]).unwrap().to_owned())
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
        BTreeSet::from(["ghl-sync".to_owned(), "session".to_owned()])
    );

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
