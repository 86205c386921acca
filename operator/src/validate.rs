//! The validate step: the spec's own rules (the same function the CRD's CEL rules mirror), the
//! referenced ModelVersions exist and are valid, and no ModelVersion spec changed after creation.

use std::collections::BTreeMap;

use ferry_crds::{LLMDeployment, ModelFormat, ModelSource, ModelVersion, ModelVersionSpec};
use kube::ResourceExt;

use crate::build::fnv1a;

/// Every ModelVersion name an LLMDeployment refers to, stable first, without repeats.
pub fn referenced_versions(llmd: &LLMDeployment) -> Vec<String> {
    let spec = &llmd.spec;
    let mut names = vec![spec.stable.clone()];
    names.extend(spec.canary.iter().map(|c| c.version.clone()));
    names.extend(
        spec.experiment
            .iter()
            .flat_map(|e| e.variants.iter().map(|v| v.version.clone())),
    );
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// What is wrong with an LLMDeployment and the ModelVersions it refers to; empty when nothing.
pub fn llmd_problems(
    llmd: &LLMDeployment,
    versions: &BTreeMap<String, ModelVersion>,
) -> Vec<String> {
    let mut problems: Vec<String> = match ferry_crds::validate(&llmd.spec) {
        Ok(()) => Vec::new(),
        Err(violations) => violations.iter().map(ToString::to_string).collect(),
    };
    for name in referenced_versions(llmd) {
        match versions.get(&name) {
            None => problems.push(format!(
                "ModelVersion {name:?} not found in namespace {}",
                llmd.namespace().unwrap_or_default()
            )),
            Some(mv) => problems.extend(
                model_version_problems(mv)
                    .into_iter()
                    .map(|p| format!("ModelVersion {name}: {p}")),
            ),
        }
    }
    problems
}

/// What is wrong with a ModelVersion: its spec rules, what the operator can serve, and a spec
/// changed since the operator first accepted it.
pub fn model_version_problems(mv: &ModelVersion) -> Vec<String> {
    let mut problems: Vec<String> = match ferry_crds::validate(&mv.spec) {
        Ok(()) => Vec::new(),
        Err(violations) => violations.iter().map(ToString::to_string).collect(),
    };
    problems.extend(servable_problems(&mv.spec));
    let accepted = mv.status.as_ref().and_then(|s| s.spec_hash.as_deref());
    if accepted.is_some_and(|h| h != spec_hash(&mv.spec)) {
        problems.push(
            "spec: ModelVersion spec is immutable: create a new ModelVersion instead".to_string(),
        );
    }
    problems
}

/// The hash recorded in `status.specHash`.
pub fn spec_hash(spec: &ModelVersionSpec) -> String {
    format!(
        "{:016x}",
        fnv1a(&serde_json::to_vec(spec).expect("specs serialize"))
    )
}

/// Source and format combinations a pod cannot be built for.
fn servable_problems(spec: &ModelVersionSpec) -> Vec<String> {
    let mut problems = Vec::new();
    match (&spec.source, spec.format) {
        (ModelSource::Url(_), ModelFormat::Safetensors) => problems.push(
            "spec.source.url: a URL holds one file, so format must be gguf; serve safetensors \
             from an image, pvc or huggingFace source"
                .to_string(),
        ),
        (ModelSource::HuggingFace(hf), ModelFormat::Gguf)
            if spec.files.is_empty() && !hf.files.iter().any(|f| f.ends_with(".gguf")) =>
        {
            problems.push(
                "spec.files: name the .gguf file(s) to load, here or in source.huggingFace.files"
                    .to_string(),
            )
        }
        _ => {}
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mv(name: &str, yaml: &str) -> ModelVersion {
        let spec: ModelVersionSpec = serde_yaml_ng(yaml);
        let mut mv = ModelVersion::new(name, spec);
        mv.metadata.namespace = Some("ns".into());
        mv
    }

    fn serde_yaml_ng<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
        let value: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
        serde_json::from_value(value).unwrap()
    }

    fn llmd(yaml: &str) -> LLMDeployment {
        let mut d = LLMDeployment::new("chat", serde_yaml_ng(yaml));
        d.metadata.namespace = Some("ns".into());
        d
    }

    const GGUF: &str =
        "{source: {pvc: {claimName: models}}, format: gguf, files: [m.gguf], resources: {gpus: 0}}";

    #[test]
    fn problems_name_the_missing_or_invalid_model_version() {
        let d = llmd("{stable: v1, canary: {version: v2}}");
        let versions = BTreeMap::from([(
            "v1".to_string(),
            mv(
                "v1",
                "{source: {url: {uri: 'http://h/m', sha256: '0000000000000000000000000000000000000000000000000000000000000000'}}, format: safetensors, resources: {gpus: 0}}",
            ),
        )]);
        assert_eq!(
            llmd_problems(&d, &versions),
            [
                "ModelVersion v1: spec.source.url: a URL holds one file, so format must be gguf; serve safetensors from an image, pvc or huggingFace source",
                "ModelVersion \"v2\" not found in namespace ns",
            ]
        );
    }

    #[test]
    fn a_changed_spec_is_reported_against_the_accepted_hash() {
        let mut v = mv("v1", GGUF);
        assert!(model_version_problems(&v).is_empty());
        v.status = Some(ferry_crds::ModelVersionStatus {
            spec_hash: Some(spec_hash(&v.spec)),
            ..Default::default()
        });
        assert!(model_version_problems(&v).is_empty());
        v.spec.engine.max_num_seqs = 3;
        assert_eq!(
            model_version_problems(&v),
            ["spec: ModelVersion spec is immutable: create a new ModelVersion instead"]
        );
    }

    #[test]
    fn spec_rules_are_the_crds_rules() {
        let d = llmd("{stable: v1, replicas: 1, autoscaling: {maxReplicas: 2}}");
        let versions = BTreeMap::from([("v1".to_string(), mv("v1", GGUF))]);
        let problems = llmd_problems(&d, &versions);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("replicas and autoscaling are mutually exclusive"));
    }
}
