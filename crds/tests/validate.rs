//! Table-driven tests of `ferry_crds::validate`: every rule, valid and invalid specs, exact
//! messages. Each invalid case is also run through the CEL rules of the generated CRD (evaluated
//! client-side by kube-cel) to prove both say the same thing.

use std::collections::BTreeSet;

use ferry_crds::{LLMDeployment, ModelVersion, Validate, validate, validate_model_version};
use kube::CustomResourceExt;
use serde::de::DeserializeOwned;

fn object<K: DeserializeOwned>(kind: &str, spec: &str) -> K {
    let yaml = format!(
        "apiVersion: serving.ferry.dev/v1alpha1\nkind: {kind}\nmetadata: {{name: t, namespace: default}}\nspec:\n{}",
        spec.lines().map(|l| format!("  {l}\n")).collect::<String>()
    );
    from_yaml(&yaml)
}

/// YAML through JSON, as the operator receives objects from the API server (serde_yaml 0.9 would
/// want `!tags` for the `source` enum).
fn from_yaml<K: DeserializeOwned>(yaml: &str) -> K {
    let json: serde_json::Value =
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("not YAML: {e}\n{yaml}"));
    serde_json::from_value(json)
        .unwrap_or_else(|e| panic!("test object does not parse: {e}\n{yaml}"))
}

/// Messages of every `x-kubernetes-validations` rule in a CRD: the rules CEL enforces.
fn cel_messages<K: CustomResourceExt>() -> BTreeSet<String> {
    fn walk(v: &serde_json::Value, out: &mut BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(rules) = m.get("x-kubernetes-validations").and_then(|r| r.as_array()) {
                    out.extend(
                        rules
                            .iter()
                            .filter_map(|r| r["message"].as_str().map(String::from)),
                    );
                }
                m.values().for_each(|c| walk(c, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|c| walk(c, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(&serde_json::to_value(K::crd()).unwrap(), &mut out);
    out
}

/// `field: message` of every CEL rule the object breaks, as the API server (>= 1.25) reports them.
fn cel_violations<K: CustomResourceExt + serde::Serialize>(
    obj: &K,
    old: Option<&K>,
) -> BTreeSet<String> {
    let result = match old {
        Some(old) => kube::core::cel::validate_cel_update(obj, old),
        None => kube::core::cel::validate_cel(obj),
    };
    match result {
        Ok(()) => BTreeSet::new(),
        Err(errors) => errors
            .iter()
            .map(|e| format!("{}: {}", e.field_path, e.message))
            .collect(),
    }
}

/// Asserts validate() reports exactly `expected`, and that the CEL rules report exactly the
/// subset of `expected` that CEL expresses.
fn check<K>(name: &str, obj: &K, spec_violations: Vec<ferry_crds::Violation>, expected: &[&str])
where
    K: CustomResourceExt + serde::Serialize,
{
    let got: Vec<String> = spec_violations.iter().map(|v| v.to_string()).collect();
    assert_eq!(got, expected, "case {name}: validate() violations");
    let cel_rules = cel_messages::<K>();
    let want_cel: BTreeSet<String> = expected
        .iter()
        .filter(|e| cel_rules.iter().any(|m| e.ends_with(&format!(": {m}"))))
        .map(|e| e.to_string())
        .collect();
    assert_eq!(
        cel_violations(obj, None),
        want_cel,
        "case {name}: CEL violations"
    );
}

#[test]
fn llm_deployment_rules() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("fixed replicas", "stable: v1\nreplicas: 2", &[]),
        ("defaults only", "stable: v1", &[]),
        (
            "canary with slo",
            "stable: v1\ncanary:\n  version: v2\n  steps: [{weight: 10}, {weight: 50}]\nslo: {ttftP95Ms: 500, errorRatePercent: 1}",
            &[],
        ),
        (
            "experiment",
            "stable: v1\nexperiment:\n  variants:\n  - {name: a, version: v1, weight: 70}\n  - {name: b, version: v2, weight: 30}",
            &[],
        ),
        (
            "autoscaling",
            "stable: v1\nautoscaling: {minReplicas: 0, maxReplicas: 3}",
            &[],
        ),
        (
            "canary and experiment",
            "stable: v1\ncanary: {version: v2}\nexperiment:\n  variants:\n  - {name: a, version: v1, weight: 50}\n  - {name: b, version: v2, weight: 50}",
            &["spec: canary and experiment are mutually exclusive: set one of them"],
        ),
        (
            "replicas and autoscaling",
            "stable: v1\nreplicas: 2\nautoscaling: {maxReplicas: 4}",
            &["spec: replicas and autoscaling are mutually exclusive: set one of them"],
        ),
        (
            "canary judged only against the stable",
            "stable: v1\ncanary: {version: v2}",
            &[],
        ),
        (
            "statistical comparison from prometheus",
            "stable: v1\ncanary: {version: v2, analysis: {prometheus: {address: 'http://p:9090'}, baseline: {method: Statistical}}}",
            &[
                "spec.canary.analysis: baseline.method Statistical needs the routers' histograms: remove prometheus or use Threshold",
            ],
        ),
        (
            "canary judged by nothing",
            "stable: v1\ncanary: {version: v2, analysis: {baseline: {enabled: false}}}\nslo: {}",
            &[
                "spec: a canary needs something to be judged by: set spec.slo objectives or keep canary.analysis.baseline enabled",
            ],
        ),
        (
            "canary judged by the slo alone",
            "stable: v1\ncanary: {version: v2, analysis: {baseline: {enabled: false}}}\nslo: {latencyP95Ms: 900}",
            &[],
        ),
        (
            "canary is stable",
            "stable: v1\ncanary: {version: v1}",
            &["spec: canary.version must differ from stable"],
        ),
        (
            "min above max",
            "stable: v1\nautoscaling: {minReplicas: 5, maxReplicas: 2}",
            &["spec.autoscaling: autoscaling.minReplicas must not exceed autoscaling.maxReplicas"],
        ),
        (
            "steps decreasing",
            "stable: v1\ncanary:\n  version: v2\n  steps: [{weight: 50}, {weight: 20}]",
            &["spec.canary: canary.steps weights must be strictly increasing"],
        ),
        (
            "steps repeated",
            "stable: v1\ncanary:\n  version: v2\n  steps: [{weight: 20}, {weight: 20}, {weight: 40}]",
            &["spec.canary: canary.steps weights must be strictly increasing"],
        ),
        (
            "step weight 100",
            "stable: v1\ncanary:\n  version: v2\n  steps: [{weight: 50}, {weight: 100}]",
            &["spec.canary.steps[1].weight: must be between 1 and 99, got 100"],
        ),
        (
            "step weight 0",
            "stable: v1\ncanary:\n  version: v2\n  steps: [{weight: 0}, {weight: 10}]",
            &["spec.canary.steps[0].weight: must be between 1 and 99, got 0"],
        ),
        (
            "no steps",
            "stable: v1\ncanary:\n  version: v2\n  steps: []",
            &["spec.canary.steps: must have at least one step"],
        ),
        (
            "weights sum to 90",
            "stable: v1\nexperiment:\n  variants:\n  - {name: a, version: v1, weight: 60}\n  - {name: b, version: v2, weight: 30}",
            &["spec.experiment: experiment.variants weights must sum to 100"],
        ),
        (
            "duplicate variant names",
            "stable: v1\nexperiment:\n  variants:\n  - {name: a, version: v1, weight: 50}\n  - {name: a, version: v2, weight: 50}",
            &["spec.experiment: experiment.variants names must be unique"],
        ),
        (
            "one variant",
            "stable: v1\nexperiment:\n  variants:\n  - {name: a, version: v1, weight: 100}",
            &["spec.experiment.variants: must have 2 to 4 variants, got 1"],
        ),
        (
            "five variants",
            "stable: v1\nexperiment:\n  variants:\n  - {name: a, version: v1, weight: 20}\n  - {name: b, version: v2, weight: 20}\n  - {name: c, version: v3, weight: 20}\n  - {name: d, version: v4, weight: 20}\n  - {name: e, version: v5, weight: 20}",
            &["spec.experiment.variants: must have 2 to 4 variants, got 5"],
        ),
        (
            "header stickiness without header",
            "stable: v1\nexperiment:\n  variants:\n  - {name: a, version: v1, weight: 50}\n  - {name: b, version: v2, weight: 50}\n  stickiness: {key: header}",
            &[
                "spec.experiment.stickiness: stickiness.header must name the header when stickiness.key is header",
            ],
        ),
        (
            "header stickiness with header",
            "stable: v1\nexperiment:\n  variants:\n  - {name: a, version: v1, weight: 50}\n  - {name: b, version: v2, weight: 50}\n  stickiness: {key: header, header: x-session}",
            &[],
        ),
        (
            "bad version name",
            "stable: SmolLM2_Q4",
            &[
                "spec.stable: \"SmolLM2_Q4\" is not a valid ModelVersion name (lower-case letters, digits, '-' and '.', starting and ending with a letter or digit)",
            ],
        ),
        (
            "empty model name",
            "stable: v1\nservedModelName: ' '",
            &["spec.servedModelName: must not be empty (leave it out to use the resource's name)"],
        ),
        (
            "error rate above 100",
            "stable: v1\nslo: {errorRatePercent: 150}",
            &["spec.slo.errorRatePercent: must be between 0 and 100, got 150"],
        ),
        (
            "prometheus source with a custom query",
            "stable: v1\ncanary:\n  version: v2\n  analysis:\n    prometheus:\n      address: http://prometheus.monitoring:9090\n      queries: {requests: 'sum(increase(my_requests{ns=\"{{namespace}}\",v=\"{{ version }}\"}[{{window}}]))'}",
            &[],
        ),
        (
            "prometheus source: bad address, unknown placeholder, unclosed, empty",
            "stable: v1\ncanary:\n  version: v2\n  analysis:\n    prometheus:\n      address: prometheus:9090\n      queries: {requests: 'sum(x{m=\"{{modle}}\"})', ttftP95Ms: 'x{{window', latencyP95Ms: ' '}",
            &[
                "spec.canary.analysis.prometheus.address: must be an http:// or https:// URL, got \"prometheus:9090\"",
                "spec.canary.analysis.prometheus.queries.requests: unknown placeholder {{modle}} (known: model, version, namespace, name, window)",
                "spec.canary.analysis.prometheus.queries.ttftP95Ms: has a `{{` without its `}}`",
                "spec.canary.analysis.prometheus.queries.latencyP95Ms: must not be empty (leave it out for the default)",
            ],
        ),
        (
            "every violation at once",
            "stable: v1\nreplicas: 1\nautoscaling: {minReplicas: 3, maxReplicas: 1}\ncanary:\n  version: v1\n  steps: [{weight: 30}, {weight: 10}]",
            &[
                "spec: replicas and autoscaling are mutually exclusive: set one of them",
                "spec.autoscaling: autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
                "spec: canary.version must differ from stable",
                "spec.canary: canary.steps weights must be strictly increasing",
            ],
        ),
    ];
    for (name, spec, expected) in cases {
        let obj: LLMDeployment = object("LLMDeployment", spec);
        check(name, &obj, obj.spec.violations(), expected);
        assert_eq!(
            validate(&obj.spec).is_ok(),
            expected.is_empty(),
            "case {name}: validate() result"
        );
    }
}

const GGUF_IMAGE: &str = "source: {image: {reference: localhost/ferry/model-smollm2:0.1.2}}\nformat: gguf\nfiles: [m.gguf]";

#[test]
fn model_version_rules() {
    let cases: &[(&str, String, &[&str])] = &[
        ("gguf from image", GGUF_IMAGE.into(), &[]),
        ("safetensors on gpu with isq", "source: {pvc: {claimName: w}}\nformat: safetensors\nengine: {isq: Q4K, pagedAttention: {enabled: true}}".into(), &[]),
        ("gguf from hub names no files", "source: {huggingFace: {repo: a/b, files: [m.gguf]}}\nformat: gguf".into(), &[]),
        (
            "gguf without files",
            "source: {image: {reference: r}}\nformat: gguf".into(),
            &["spec: files must name the GGUF file(s) to load when format is gguf"],
        ),
        (
            "isq on gguf",
            format!("{GGUF_IMAGE}\nengine: {{isq: Q8_0}}"),
            &["spec: engine.isq applies to safetensors weights: GGUF files are already quantized"],
        ),
        (
            "paged attention on cpu",
            "source: {pvc: {claimName: w}}\nformat: safetensors\nengine: {pagedAttention: {enabled: true}}\nresources: {gpus: 0}".into(),
            &["spec: engine.pagedAttention needs a GPU: set resources.gpus above 0"],
        ),
        (
            "two gpus",
            format!("{GGUF_IMAGE}\nresources: {{gpus: 2}}"),
            &["spec: resources.gpus above 1 is not supported yet: ferry-server runs a model on one GPU per pod"],
        ),
        (
            "file escapes the source",
            "source: {image: {reference: r}}\nformat: gguf\nfiles: [../etc/passwd, /abs.gguf]".into(),
            &[
                "spec.files[0]: \"../etc/passwd\" must be a relative path inside the source, without '..'",
                "spec.files[1]: \"/abs.gguf\" must be a relative path inside the source, without '..'",
            ],
        ),
        (
            "url without scheme and short sha",
            "source: {url: {uri: 'ftp://x/m.gguf', sha256: abc}}\nformat: gguf\nfiles: [m.gguf]".into(),
            &["spec.source.url.uri: \"ftp://x/m.gguf\" must start with http:// or https://", "spec.source.url.sha256: must be 64 lower-case hex digits"],
        ),
        (
            "gpu memory fraction 1.5",
            format!("{GGUF_IMAGE}\nengine: {{pagedAttention: {{gpuMemoryFraction: 1.5}}}}"),
            &["spec.engine.pagedAttention.gpuMemoryFraction: must be above 0 and at most 1, got 1.5"],
        ),
        ("zero batch", format!("{GGUF_IMAGE}\nengine: {{maxNumSeqs: 0}}"), &["spec.engine.maxNumSeqs: must be 1 or more"]),
    ];
    for (name, spec, expected) in cases {
        let obj: ModelVersion = object("ModelVersion", spec);
        check(name, &obj, obj.spec.violations(), expected);
    }
}

#[test]
fn model_version_spec_is_immutable() {
    let old: ModelVersion = object("ModelVersion", GGUF_IMAGE);
    let new: ModelVersion = object(
        "ModelVersion",
        &format!("{GGUF_IMAGE}\nengine: {{maxNumSeqs: 4}}"),
    );
    let immutable = "spec: ModelVersion spec is immutable: create a new ModelVersion instead";

    let err = validate_model_version(Some(&old.spec), &new.spec).unwrap_err();
    assert_eq!(
        err.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
        [immutable]
    );
    assert_eq!(
        cel_violations(&new, Some(&old)),
        BTreeSet::from([immutable.to_string()])
    );

    assert_eq!(validate_model_version(Some(&old.spec), &old.spec), Ok(()));
    assert_eq!(validate_model_version(None, &new.spec), Ok(()));
    assert!(cel_violations(&old, Some(&old)).is_empty());
}

#[test]
fn every_example_is_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_json::Value::deserialize(doc).unwrap();
            let violations = match value["kind"].as_str() {
                Some("ModelVersion") => serde_json::from_value::<ModelVersion>(value)
                    .unwrap()
                    .spec
                    .violations(),
                Some("LLMDeployment") => serde_json::from_value::<LLMDeployment>(value)
                    .unwrap()
                    .spec
                    .violations(),
                other => panic!("{}: unexpected kind {other:?}", path.display()),
            };
            assert_eq!(
                violations,
                [],
                "{} is an example, so it must be valid",
                path.display()
            );
            seen += 1;
        }
    }
    assert!(
        seen >= 6,
        "expected at least 6 example resources, found {seen}"
    );
}

use serde::Deserialize;

#[test]
fn cel_rules_are_evaluated() {
    // Guards the parity checks above against passing vacuously.
    assert_eq!(cel_messages::<LLMDeployment>().len(), 10);
    assert_eq!(cel_messages::<ModelVersion>().len(), 5);
    let obj: LLMDeployment = object("LLMDeployment", "stable: v1\ncanary: {version: v1}");
    assert_eq!(
        cel_violations(&obj, None),
        BTreeSet::from(["spec: canary.version must differ from stable".to_string()])
    );
}

#[test]
fn query_templates_are_cut_into_text_and_placeholders() {
    use ferry_crds::{TemplatePiece::*, template_pieces};
    assert_eq!(
        template_pieces("rate(x{m=\"{{ model }}\"}[{{window}}]) > {{ "),
        vec![
            Text("rate(x{m=\""),
            Placeholder {
                name: "model",
                raw: "{{ model }}"
            },
            Text("\"}["),
            Placeholder {
                name: "window",
                raw: "{{window}}"
            },
            Text("]) > "),
            Unclosed("{{ "),
        ]
    );
    assert_eq!(template_pieces("up"), vec![Text("up")]);
    assert_eq!(template_pieces(""), vec![]);
    assert_eq!(
        template_pieces("{{a}}{{b}}"),
        vec![
            Placeholder {
                name: "a",
                raw: "{{a}}"
            },
            Placeholder {
                name: "b",
                raw: "{{b}}"
            },
        ]
    );
}
