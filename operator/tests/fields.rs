//! Every field of a ModelVersion's spec does what it says: walking the CRD's own schema (so a field
//! added later is walked too), each leaf is changed to another valid value and the server pod the
//! operator builds must change with it. A field that is validated and documented but never reaches
//! the pod fails here.

use std::collections::BTreeMap;

use ferry_crds::{LLMDeployment, ModelVersion, Validate};
use ferry_operator::build::{Desired, Observed, Settings};
use ferry_operator::plan::{Inputs, Signals, plan};
use ferry_operator::pod::ServerSettings;
use serde_json::{Value, json};

fn settings() -> Settings {
    Settings {
        server: ServerSettings {
            image: "localhost/ferry/server:dev".into(),
            drain_seconds: 20,
            hf_endpoint: None,
            startup_seconds: 600,
            image_volumes: false,
            gpu: Default::default(),
        },
        router_endpoint: "http://10.0.0.9:8080/v1".into(),
        pod_token: None,
        network_policy: None,
    }
}

/// The objects and status the operator's planner (the function the reconcile calls) decides for a
/// first reconcile: no status yet, no outside signals.
fn build(
    llmd: &LLMDeployment,
    versions: &BTreeMap<String, ModelVersion>,
    observed: &BTreeMap<String, Observed>,
    settings: &Settings,
) -> Desired {
    let inputs = Inputs {
        llmd,
        versions,
        observed,
        signals: &Signals::default(),
        settings,
        now: k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap(),
        mono_seconds: 0.0,
        autoscale_interval: std::time::Duration::from_secs(5),
    };
    plan(&inputs, &mut BTreeMap::new()).desired
}

/// A leaf of the schema: its path under `spec` and its schema.
fn leaves(schema: &Value, path: Vec<String>, out: &mut Vec<(Vec<String>, Value)>) {
    match schema.get("properties").and_then(Value::as_object) {
        Some(props) => {
            for (name, child) in props {
                let mut p = path.clone();
                p.push(name.clone());
                leaves(child, p, out);
            }
        }
        None => out.push((path, schema.clone())),
    }
}

/// Other values a leaf of this schema can take than `current`.
fn candidates(schema: &Value, current: Option<&Value>) -> Vec<Value> {
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return values
            .iter()
            .filter(|v| Some(*v) != current)
            .cloned()
            .collect();
    }
    if schema.get("x-kubernetes-int-or-string") == Some(&json!(true)) {
        return vec![json!("3"), json!("5Gi")];
    }
    let number = |key: &str| schema.get(key).and_then(Value::as_f64);
    match schema.get("type").and_then(Value::as_str) {
        Some("boolean") => vec![json!(!current.and_then(Value::as_bool).unwrap_or(false))],
        Some("integer") => {
            let (min, max) = (
                number("minimum").unwrap_or(0.0),
                number("maximum").unwrap_or(1e6),
            );
            let now = current.and_then(Value::as_f64);
            [
                now.map(|n| n + 1.0),
                now.map(|n| n - 1.0),
                Some(min),
                Some(min + 1.0),
                Some(2048.0),
            ]
            .into_iter()
            .flatten()
            .filter(|n| *n >= min && *n <= max && Some(*n) != now)
            .map(|n| json!(n as i64))
            .collect()
        }
        Some("number") => [0.5, 0.75]
            .into_iter()
            .filter(|n| current.and_then(Value::as_f64) != Some(*n))
            .map(|n| json!(n))
            .collect(),
        Some("string") => match schema.get("pattern").and_then(Value::as_str) {
            Some("^[0-9a-f]{64}$") => vec![json!("c".repeat(64))],
            Some(p) if p.starts_with("^https?") => vec![json!("http://10.88.0.1:9/changed.gguf")],
            _ => vec![json!("changed")],
        },
        Some("array") => {
            let item = match schema.pointer("/items/properties") {
                Some(props) if props.get("operator").is_some() => {
                    json!({"key": "changed", "operator": "Exists"})
                }
                Some(_) => json!({"name": "CHANGED", "value": "1"}),
                None => json!("changed.gguf"),
            };
            let mut items = current
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            items.push(item);
            vec![json!(items)]
        }
        Some("object") => {
            let mut map = current
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            map.insert("changed".into(), json!("yes"));
            vec![json!(map)]
        }
        other => panic!("no values for a leaf of type {other:?}: {schema}"),
    }
}

/// Specs to change one field at a time: each source kind, as GGUF on a GPU with paged attention
/// and as safetensors on a CPU, so every field has a context where it applies.
fn baselines() -> Vec<(&'static str, Value)> {
    let sources = [
        (
            "image",
            json!({"image": {"reference": "localhost/models/m:1", "path": "/models"}}),
        ),
        (
            "pvc",
            json!({"pvc": {"claimName": "weights", "path": "/m"}}),
        ),
        (
            "url",
            json!({"url": {"uri": "http://10.88.0.1:9/m.gguf", "sha256": "a".repeat(64)}}),
        ),
        (
            "huggingFace",
            json!({"huggingFace": {"repo": "org/m", "revision": "abc", "files": ["m.gguf"],
                   "tokenSecretRef": {"name": "hf", "key": "token"}}}),
        ),
    ];
    let mut out = Vec::new();
    for (kind, source) in sources {
        out.push((
            kind,
            json!({"source": source, "format": "gguf", "files": ["m.gguf"],
                   "engine": {"pagedAttention": {"enabled": true}}, "resources": {"gpus": 1}}),
        ));
        out.push((
            kind,
            json!({"source": source, "format": "safetensors", "resources": {"gpus": 0}}),
        ));
    }
    out
}

/// The pod template the operator builds for a spec; `None` when the spec is not a valid one.
fn pod(spec: &Value) -> Option<Value> {
    let mv: ModelVersion = serde_json::from_value(json!({
        "apiVersion": "serving.ferry.dev/v1alpha1", "kind": "ModelVersion",
        "metadata": {"name": "v1", "namespace": "team"}, "spec": spec,
    }))
    .ok()?;
    if !mv.spec.violations().is_empty() {
        return None;
    }
    let mut llmd: LLMDeployment = serde_json::from_value(json!({
        "apiVersion": "serving.ferry.dev/v1alpha1", "kind": "LLMDeployment",
        "metadata": {"name": "chat", "namespace": "team", "uid": "u"}, "spec": {"stable": "v1"},
    }))
    .unwrap();
    llmd.metadata.generation = Some(1);
    let out = build(
        &llmd,
        &BTreeMap::from([("v1".to_string(), mv)]),
        &BTreeMap::new(),
        &settings(),
    );
    Some(serde_json::to_value(&out.deployments[0].spec.as_ref()?.template).unwrap())
}

fn set(spec: &mut Value, path: &[String], value: Value) {
    let mut at = spec;
    for key in &path[..path.len() - 1] {
        if at.get(key).is_none() {
            at[key] = json!({});
        }
        at = at.get_mut(key).unwrap();
    }
    at[path.last().unwrap()] = value;
}

fn get<'a>(spec: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(spec, |at, key| at.get(key))
}

#[test]
fn every_field_of_a_model_version_changes_the_pod() {
    // The CRD exactly as installed (what crdgen writes).
    let crd = ferry_crds::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == "ModelVersion")
        .map(|c| serde_json::to_value(c).unwrap())
        .unwrap();
    let spec_schema =
        &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let mut all = Vec::new();
    leaves(spec_schema, Vec::new(), &mut all);
    let mut unwired = Vec::new();
    let mut walked = Vec::new();
    for (path, schema) in &all {
        let kind = (path[0] == "source").then(|| path[1].as_str());
        let changes = baselines()
            .into_iter()
            .filter(|(k, _)| kind.is_none_or(|kind| kind == *k))
            .any(|(_, base)| {
                let before = pod(&base).unwrap_or_else(|| panic!("baseline is valid: {base}"));
                candidates(schema, get(&base, path))
                    .into_iter()
                    .any(|value| {
                        let mut changed = base.clone();
                        set(&mut changed, path, value);
                        pod(&changed).is_some_and(|after| after != before)
                    })
            });
        let name = format!("spec.{}", path.join("."));
        if changes {
            walked.push(name);
        } else {
            unwired.push(name);
        }
    }
    assert!(
        unwired.is_empty(),
        "fields that do not change the pod (wire them, or refuse them in validate() and CEL): {unwired:?}"
    );
    assert!(walked.len() >= 28, "{walked:?}");
    println!("{} fields walked: {}", walked.len(), walked.join(", "));
}
