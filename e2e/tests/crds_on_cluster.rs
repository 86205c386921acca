//! The CRDs on a real, current API server: they install with `kubectl apply` and with Helm,
//! examples round-trip unchanged, `kubectl get` shows the printer columns, the scale subresource
//! works, every invalid manifest is refused by the API server (schema or CEL) with its documented
//! message, a ModelVersion's spec cannot change, and the chart's Argo CD health patch applies.

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
    ns.kubectl(["apply", "-f", path.to_str().unwrap()])
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
    let object = get_json(&ns, "llmd", "min");
    // No operator runs here: the status says the spec was not observed yet, so kstatus (Helm 4's
    // --wait, Flux) waits rather than count the object done.
    assert_eq!(object["status"], json!({"observedGeneration": -1}));
    let spec = &object["spec"];
    assert_eq!(
        spec["canary"],
        json!({
            "version": "v2", "replicas": 1, "rollbackWindowSeconds": 600, "progressDeadlineSeconds": 600,
            "steps": [{"weight": 5, "pauseSeconds": 60}, {"weight": 25, "pauseSeconds": 60}, {"weight": 50, "pauseSeconds": 60}],
            "analysis": {"intervalSeconds": 30, "minRequests": 20, "failureLimit": 2,
                         "baseline": {"enabled": true, "errorRatePoints": 1, "latencyIncreasePercent": 50, "minIncreaseMs": 50,
                                      "confidencePercent": 95}},
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
    let status = json!({"status": {"phase": "Progressing", "servedModelName": "smollm2-canary",
        "stableVersion": "smollm2-135m-q4",
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
            "NAME", "MODEL", "STABLE", "CANARY", "WEIGHT", "VARIANTS", "PHASE", "READY", "AGE"
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

    // An experiment's split, in its own column.
    let split =
        json!({"status": {"phase": "Experimenting", "variantSplit": "control 70%, batch16 30%"}});
    llmds
        .patch_status("smollm2-ab", &PatchParams::default(), &Patch::Merge(&split))
        .await
        .unwrap();
    let out = ns.kubectl(["get", "llmd"]).ok("kubectl get llmd");
    let (_, row) = table(&out, "smollm2-ab");
    assert!(row.iter().any(|c| c == "control 70%, batch16 30%"), "{out}");

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
    ns.kubectl(["scale", "llmd/smollm2-basic", "--replicas=3"])
        .ok("kubectl scale");
    assert_eq!(
        get_json(&ns, "llmd", "smollm2-basic")["spec"]["replicas"],
        3
    );
    let scale = ns.kubectl([
        "get",
        "--raw",
        &format!(
            "/apis/serving.ferry.dev/v1alpha1/namespaces/{}/llmdeployments/smollm2-basic/scale",
            ns.name
        ),
    ]);
    let scale: Value = serde_json::from_str(&scale.ok("GET scale")).unwrap();
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 3);

    // With autoscaling set, a fixed replica count is a contradiction, and the API server says
    // so in the rule's own words, with no schema noise before them.
    let out = ns.kubectl(["scale", "llmd/smollm2-autoscaled", "--replicas=3"]);
    assert!(
        !out.success,
        "scaling an autoscaled LLMDeployment must fail:\n{}",
        out.stdout
    );
    assert!(
        out.stderr
            .contains("replicas and autoscaling are mutually exclusive: set one of them"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("must not validate the schema"),
        "{}",
        out.stderr
    );
}

/// Every file under `manifests/invalid/` is refused by the API server itself, with the message its
/// `# error:` line documents. The CEL ones (`# rejected-by: cel`) are also caught by
/// `ferry_crds::validate`, with the message of their `# validate:` line: the operator's
/// `InvalidSpec` says what the API server says, on clusters without CEL too.
#[test]
fn invalid_manifests_are_refused_by_the_api_server_with_the_documented_message() {
    let ns = Cluster::get().temp_namespace("invalid");
    let mut cel_rules = Vec::new();
    for file in yaml_files("manifests/invalid") {
        let text = std::fs::read_to_string(&file).unwrap();
        let header = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("# {key}: ")))
                .map(String::from)
        };
        let required = |key: &str| {
            header(key).unwrap_or_else(|| panic!("{} lacks a `# {key}:` line", file.display()))
        };
        let (by, error) = (required("rejected-by"), required("error"));
        let out = apply(&ns, &file);
        assert!(
            !out.success,
            "{} was accepted; the API server should refuse it",
            file.display()
        );
        assert!(
            out.stderr.contains(&error),
            "{}: expected {error:?} in:\n{}",
            file.display(),
            out.stderr
        );
        match by.as_str() {
            "schema" => {}
            "cel" => {
                let expected = required("validate");
                let doc = &documents(&file)[0];
                let violations = match doc["kind"].as_str().unwrap() {
                    "ModelVersion" => serde_json::from_value::<ModelVersion>(doc.clone())
                        .unwrap()
                        .spec
                        .violations(),
                    _ => serde_json::from_value::<LLMDeployment>(doc.clone())
                        .unwrap()
                        .spec
                        .violations(),
                };
                let messages: Vec<String> = violations.iter().map(|v| v.to_string()).collect();
                assert!(
                    messages.contains(&expected),
                    "{}: ferry_crds::validate should report {expected:?}, got {messages:?}",
                    file.display()
                );
                let rule = expected.split_once(": ").unwrap().1;
                assert!(
                    error.ends_with(rule),
                    "{}: the API server's message and validate's differ",
                    file.display()
                );
                cel_rules.push(rule.to_string());
            }
            other => panic!(
                "{}: rejected-by must be schema or cel, not {other}",
                file.display()
            ),
        }
        // Nothing of it was stored.
        let name = documents(&file)[0]["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_string();
        let kind = documents(&file)[0]["kind"].as_str().unwrap().to_string();
        let got = ns.kubectl(["get", &kind, &name]);
        assert!(
            !got.success && got.stderr.contains("NotFound"),
            "{}",
            got.stderr
        );
    }
    println!("CEL rules the API server enforced (and ferry_crds::validate reports the same):");
    for rule in &cel_rules {
        println!("  - {rule}");
    }
    assert!(cel_rules.len() >= 11, "{cel_rules:?}");
}

/// `self == oldSelf`: the API server refuses any change to a ModelVersion's spec (what makes a
/// rollback return exactly what was served before); its metadata and status stay writable.
#[test]
fn the_api_server_refuses_a_change_to_a_model_version_spec() {
    let ns = Cluster::get().temp_namespace("immutable");
    apply_examples(&ns);
    let before = get_json(&ns, "mv", "smollm2-135m-q4");
    let out = ns.kubectl([
        "patch",
        "mv",
        "smollm2-135m-q4",
        "--type=merge",
        "-p",
        r#"{"spec":{"engine":{"maxNumSeqs":2}}}"#,
    ]);
    assert!(!out.success, "the spec change was accepted");
    assert!(
        out.stderr
            .contains("ModelVersion spec is immutable: create a new ModelVersion instead"),
        "{}",
        out.stderr
    );
    // `kubectl apply` of an edited file is refused the same way.
    let file = std::env::temp_dir().join(format!("{}-mv.yaml", ns.name));
    let mut doc = documents(&repo_root().join("manifests/examples/modelversion-smollm2.yaml"))
        .into_iter()
        .find(|d| d["metadata"]["name"] == "smollm2-135m-q4")
        .expect("the example ModelVersion");
    doc["spec"]["files"] = json!(["other.gguf"]);
    std::fs::write(&file, serde_yaml::to_string(&doc).unwrap()).unwrap();
    let out = apply(&ns, &file);
    std::fs::remove_file(&file).ok();
    assert!(!out.success, "the edited file was applied");
    assert!(
        out.stderr.contains("ModelVersion spec is immutable"),
        "{}",
        out.stderr
    );
    assert_eq!(
        get_json(&ns, "mv", "smollm2-135m-q4")["spec"],
        before["spec"]
    );

    ns.kubectl(["label", "mv", "smollm2-135m-q4", "team=search"])
        .ok("a label on a ModelVersion");
}

/// The CRDs install on a cluster that has never seen them, with a plain `kubectl apply` (client-side
/// apply, kubectl's default server-side field validation) and with Helm's default server-side apply,
/// without a warning. Each way installs a copy under a group of its own (the real group is in use
/// by the other tests), so this is a real first install, CEL cost checks included.
#[test]
fn crds_install_with_plain_kubectl_apply_and_with_helm_server_side_apply() {
    let cluster = Cluster::get();
    let ns = cluster.temp_namespace("crd-install");
    let helm = std::env::var("FERRY_HELM").expect("FERRY_HELM is set by e2e/test.sh");
    let dir = std::env::temp_dir().join(format!("{}-crds", ns.name));
    std::fs::create_dir_all(dir.join("chart/crds")).unwrap();
    let copies = |group: &str| -> Vec<(String, String)> {
        yaml_files("charts/ferry/crds")
            .iter()
            .map(|file| {
                let mut crd = documents(file).remove(0);
                // Names of their own too: kubectl resolves kinds, plurals, short names and
                // categories across groups, and the other tests use `mv`, `llmd` and `ferry`.
                let names = crd["spec"]["names"].as_object_mut().unwrap();
                names.remove("shortNames");
                names.remove("categories");
                names.remove("listKind");
                for (key, suffix) in [("kind", "Copy"), ("plural", "copies"), ("singular", "copy")]
                {
                    if let Some(name) = names.get(key).and_then(|n| n.as_str()) {
                        let name = format!("{name}{suffix}");
                        names.insert(key.to_string(), json!(name));
                    }
                }
                let plural = names["plural"].as_str().unwrap().to_string();
                crd["spec"]["group"] = json!(group);
                crd["metadata"]["name"] = json!(format!("{plural}.{group}"));
                (
                    format!("{plural}.{group}"),
                    serde_yaml::to_string(&crd).unwrap(),
                )
            })
            .collect()
    };
    let kubectl_group = format!("{}.kubectl.ferry.dev", ns.name);
    let helm_group = format!("{}.helm.ferry.dev", ns.name);
    let mut names = Vec::new();

    for (name, yaml) in copies(&kubectl_group) {
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let out = cluster.kubectl(["apply", "-f", file.to_str().unwrap()]);
        let stderr = out.stderr.clone();
        out.ok("kubectl apply of a CRD");
        assert!(
            !stderr.contains("Warning"),
            "kubectl apply warned:\n{stderr}"
        );
        names.push(name);
    }

    std::fs::write(
        dir.join("chart/Chart.yaml"),
        "apiVersion: v2\nname: crds\nversion: 0.1.0\n",
    )
    .unwrap();
    for (name, yaml) in copies(&helm_group) {
        std::fs::write(dir.join(format!("chart/crds/{name}.yaml")), yaml).unwrap();
        names.push(name);
    }
    let release = format!("crds-{}", ns.name);
    let out = std::process::Command::new(&helm)
        .env("KUBECONFIG", cluster.kubeconfig())
        .args([
            "install",
            &release,
            dir.join("chart").to_str().unwrap(),
            "-n",
            &ns.name,
        ])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "helm install failed:\n{text}");
    assert!(!text.contains("Warning"), "helm warned:\n{text}");

    let mut wait = vec![
        "wait".to_string(),
        "--for=condition=Established".to_string(),
        "--timeout=60s".to_string(),
    ];
    wait.extend(names.iter().map(|n| format!("crd/{n}")));
    let waited = cluster.kubectl(&wait);
    // Helm wrote them with server-side apply (its default), as field manager `helm`.
    let managers = cluster.kubectl([
        "get",
        "crd",
        names.last().unwrap(),
        "--show-managed-fields",
        "-o",
        "jsonpath={range .metadata.managedFields[*]}{.manager}/{.operation} {end}",
    ]);
    for name in &names {
        cluster.kubectl(["delete", "crd", name, "--wait=false"]);
    }
    std::process::Command::new(&helm)
        .env("KUBECONFIG", cluster.kubeconfig())
        .args(["uninstall", &release, "-n", &ns.name])
        .output()
        .ok();
    std::fs::remove_dir_all(&dir).ok();
    waited.ok("the copies are Established");
    let managers = managers.ok("managed fields");
    assert!(managers.contains("helm/Apply"), "{managers}");
}

/// The README's Argo CD step works as written: `kubectl patch --patch-file` of the chart's file
/// into an `argocd-cm` ConfigMap gives it the health check of both kinds (the YAML alias
/// resolved), the very script the operator tests run against real statuses.
#[test]
fn the_argo_cd_health_patch_applies_with_kubectl() {
    let ns = Cluster::get().temp_namespace("argocd");
    ns.kubectl([
        "create",
        "configmap",
        "argocd-cm",
        "--from-literal=url=https://argocd.example",
    ])
    .ok("create argocd-cm");
    let patch = repo_root().join(ferry_e2e::argocd::PATCH);
    ns.kubectl([
        "patch",
        "configmap",
        "argocd-cm",
        "--type",
        "merge",
        "--patch-file",
        patch.to_str().unwrap(),
    ])
    .ok("kubectl patch --patch-file");
    let data = &get_json(&ns, "configmap", "argocd-cm")["data"];
    let key = |kind: &str| format!("resource.customizations.health.serving.ferry.dev_{kind}");
    let llmd = data[key("LLMDeployment")]
        .as_str()
        .expect("LLMDeployment health");
    assert_eq!(data[key("ModelVersion")].as_str(), Some(llmd));
    assert!(llmd.contains("hs.status = \"Suspended\""), "{llmd}");
    assert_eq!(data["url"], "https://argocd.example", "other keys kept");
}
