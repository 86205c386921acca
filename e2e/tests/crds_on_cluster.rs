//! The CRDs on a real Kubernetes 1.20 API server: examples round-trip unchanged, `kubectl get`
//! shows the printer columns, the scale subresource works, and every invalid manifest is rejected
//! by the schema or, where 1.20 cannot, by `ferry_crds::validate`.

use std::path::{Path, PathBuf};

use ferry_crds::{LLMDeployment, ModelVersion, Validate};
use ferry_e2e::{Cluster, TempNamespace, repo_root};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde::Deserialize;
use serde_json::{Value, json};

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

fn apply(ns: &TempNamespace, path: &Path) -> ferry_e2e::Kubectl {
    ns.kubectl(["apply", "--validate=false", "-f", path.to_str().unwrap()])
}

fn get_json(ns: &TempNamespace, kind: &str, name: &str) -> Value {
    let out = ns
        .kubectl(["get", kind, name, "-o", "json"])
        .ok("kubectl get");
    serde_json::from_str(&out).unwrap()
}

fn apply_examples(ns: &TempNamespace) {
    for file in yaml_files("manifests/examples") {
        apply(ns, &file).ok(&format!("kubectl apply -f {}", file.display()));
    }
}

#[test]
fn examples_apply_and_read_back_unchanged() {
    let ns = Cluster::get().temp_namespace("examples");
    let mut checked = Vec::new();
    for file in yaml_files("manifests/examples") {
        apply(&ns, &file).ok(&format!("kubectl apply -f {}", file.display()));
        for doc in documents(&file) {
            let kind = doc["kind"].as_str().unwrap();
            let name = doc["metadata"]["name"].as_str().unwrap();
            let stored = get_json(&ns, kind, name);
            // The server's defaults and pruning must agree with the Rust types: the stored spec
            // equals the file's spec with the types' defaults filled in.
            match kind {
                "ModelVersion" => {
                    let local: ModelVersion = serde_json::from_value(doc.clone()).unwrap();
                    let stored: ModelVersion = serde_json::from_value(stored).unwrap();
                    assert_eq!(stored.spec, local.spec, "{name} from {}", file.display());
                }
                "LLMDeployment" => {
                    let local: LLMDeployment = serde_json::from_value(doc.clone()).unwrap();
                    let stored: LLMDeployment = serde_json::from_value(stored).unwrap();
                    assert_eq!(stored.spec, local.spec, "{name} from {}", file.display());
                }
                other => panic!("unexpected kind {other}"),
            }
            checked.push(format!("{kind}/{name}"));
        }
    }
    for required in [
        "ModelVersion/smollm2-135m-q4",
        "LLMDeployment/smollm2-canary",
        "LLMDeployment/smollm2-ab",
        "LLMDeployment/smollm2-autoscaled",
    ] {
        assert!(
            checked.iter().any(|c| c == required),
            "examples lack {required}: {checked:?}"
        );
    }
}

#[test]
fn server_fills_in_documented_defaults() {
    let ns = Cluster::get().temp_namespace("defaults");
    let file = std::env::temp_dir().join(format!("{}-min.yaml", ns.name));
    std::fs::write(
        &file,
        "apiVersion: serving.ferry.dev/v1alpha1\nkind: LLMDeployment\nmetadata: {name: min}\n\
         spec: {stable: v1, canary: {version: v2}, autoscaling: {maxReplicas: 3}}\n",
    )
    .unwrap();
    apply(&ns, &file).ok("apply minimal LLMDeployment");
    let spec = &get_json(&ns, "llmd", "min")["spec"];
    assert_eq!(
        spec["canary"],
        json!({
            "version": "v2", "replicas": 1, "rollbackWindowSeconds": 600,
            "steps": [{"weight": 5, "pauseSeconds": 60}, {"weight": 25, "pauseSeconds": 60}, {"weight": 50, "pauseSeconds": 60}],
            "analysis": {"intervalSeconds": 30, "minRequests": 20, "failureLimit": 2},
        })
    );
    assert_eq!(
        spec["autoscaling"],
        json!({"minReplicas": 1, "maxReplicas": 3, "targetQueueDepth": 4,
               "scaleUpStabilizationSeconds": 0, "scaleDownStabilizationSeconds": 300})
    );
    std::fs::remove_file(file).ok();
}

/// Column headers and the row of `name`, split on runs of two or more spaces.
fn table(out: &str, name: &str) -> (Vec<String>, Vec<String>) {
    let split = |line: &str| {
        line.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect()
    };
    let mut lines = out.lines();
    let header = split(lines.next().expect("a header line"));
    let row = lines
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no row {name} in\n{out}"));
    (header, split(row))
}

#[tokio::test]
async fn kubectl_get_shows_the_printer_columns() {
    let cluster = Cluster::get();
    let ns = cluster.temp_namespace("columns");
    apply_examples(&ns);

    // What the operator writes to status, through the status subresource.
    let client = cluster.client().await;
    let llmds: Api<LLMDeployment> = Api::namespaced(client.clone(), &ns.name);
    let status = json!({"status": {"phase": "Progressing", "stableVersion": "smollm2-135m-q4",
        "canaryVersion": "smollm2-135m-q4-b16", "canaryWeight": 10, "ready": "2/2"}});
    llmds
        .patch_status(
            "smollm2-canary",
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
        .unwrap();
    let mvs: Api<ModelVersion> = Api::namespaced(client, &ns.name);
    let status = json!({"status": {"source": "image localhost/ferry/model-smollm2:0.1.2", "conditions": [{
        "type": "Valid", "status": "True", "reason": "Accepted", "message": "spec accepted", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    mvs.patch_status(
        "smollm2-135m-q4",
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .unwrap();

    let out = ns.kubectl(["get", "llmd"]).ok("kubectl get llmd");
    let (header, row) = table(&out, "smollm2-canary");
    assert_eq!(
        header,
        [
            "NAME", "MODEL", "STABLE", "CANARY", "WEIGHT", "PHASE", "READY", "AGE"
        ],
        "{out}"
    );
    assert_eq!(
        row[..7],
        [
            "smollm2-canary",
            "smollm2-canary",
            "smollm2-135m-q4",
            "smollm2-135m-q4-b16",
            "10",
            "Progressing",
            "2/2"
        ],
        "{out}"
    );

    let out = ns.kubectl(["get", "mv"]).ok("kubectl get mv");
    let (header, row) = table(&out, "smollm2-135m-q4");
    assert_eq!(
        header,
        ["NAME", "FORMAT", "SOURCE", "GPUS", "VALID", "AGE"],
        "{out}"
    );
    assert_eq!(
        row[..5],
        [
            "smollm2-135m-q4",
            "gguf",
            "image localhost/ferry/model-smollm2:0.1.2",
            "0",
            "True"
        ],
        "{out}"
    );

    // The `ferry` category lists both kinds; `kubectl explain` shows the field docs.
    let out = ns
        .kubectl(["get", "ferry", "-o", "name"])
        .ok("kubectl get ferry");
    assert!(
        out.contains("modelversion.serving.ferry.dev/smollm2-135m-q4"),
        "{out}"
    );
    assert!(
        out.contains("llmdeployment.serving.ferry.dev/smollm2-ab"),
        "{out}"
    );
    let out = ns
        .kubectl(["explain", "llmd.spec.canary.steps"])
        .ok("kubectl explain");
    assert!(
        out.contains("Traffic steps; each must pass analysis before the next."),
        "{out}"
    );
}

#[test]
fn kubectl_scale_drives_the_scale_subresource() {
    let ns = Cluster::get().temp_namespace("scale");
    apply_examples(&ns);
    ns.kubectl(["scale", "llmd/smollm2", "--replicas=3"])
        .ok("kubectl scale");
    assert_eq!(get_json(&ns, "llmd", "smollm2")["spec"]["replicas"], 3);
    let scale = ns.kubectl([
        "get",
        "--raw",
        &format!(
            "/apis/serving.ferry.dev/v1alpha1/namespaces/{}/llmdeployments/smollm2/scale",
            ns.name
        ),
    ]);
    let scale: Value = serde_json::from_str(&scale.ok("GET scale")).unwrap();
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 3);

    // With autoscaling set, a fixed replica count is a contradiction, and the schema says so.
    let out = ns.kubectl(["scale", "llmd/smollm2-autoscaled", "--replicas=3"]);
    assert!(
        !out.success,
        "scaling an autoscaled LLMDeployment must fail:\n{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("must not validate the schema (not)"),
        "{}",
        out.stderr
    );
}

#[test]
fn invalid_manifests_are_rejected_by_the_schema_or_by_validate() {
    let ns = Cluster::get().temp_namespace("invalid");
    let mut operator_only = Vec::new();
    for file in yaml_files("manifests/invalid") {
        let text = std::fs::read_to_string(&file).unwrap();
        let header = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("# {key}: ")))
                .unwrap_or_else(|| panic!("{} lacks a `# {key}:` line", file.display()))
                .to_string()
        };
        let (by, error) = (header("rejected-by"), header("error"));
        let out = apply(&ns, &file);
        match by.as_str() {
            "schema" => {
                assert!(
                    !out.success,
                    "{} was accepted, but the schema should reject it",
                    file.display()
                );
                assert!(
                    out.stderr.contains(&error),
                    "{}: expected {error:?} in:\n{}",
                    file.display(),
                    out.stderr
                );
            }
            "operator" => {
                // Kubernetes 1.20 stores it (CEL is not enforced there); validate() must catch it.
                out.ok(&format!("kubectl apply -f {}", file.display()));
                let doc = &documents(&file)[0];
                let name = doc["metadata"]["name"].as_str().unwrap();
                let kind = doc["kind"].as_str().unwrap();
                let stored = get_json(&ns, kind, name);
                let violations = match kind {
                    "ModelVersion" => serde_json::from_value::<ModelVersion>(stored)
                        .unwrap()
                        .spec
                        .violations(),
                    _ => serde_json::from_value::<LLMDeployment>(stored)
                        .unwrap()
                        .spec
                        .violations(),
                };
                let messages: Vec<String> = violations.iter().map(|v| v.to_string()).collect();
                assert!(
                    messages.contains(&error),
                    "{}: expected {error:?} in {messages:?}",
                    file.display()
                );
                operator_only.push(error);
            }
            other => panic!(
                "{}: rejected-by must be schema or operator, not {other}",
                file.display()
            ),
        }
    }
    println!("Rules Kubernetes 1.20 does not enforce (CEL), caught by ferry_crds::validate:");
    for rule in &operator_only {
        println!("  - {rule}");
    }
    assert!(operator_only.len() >= 6, "{operator_only:?}");
}
