//! Ferry's custom resources, group `serving.ferry.dev`, version `v1alpha1`.
//!
//! - [`ModelVersion`]: one immutable, servable build of a model.
//! - [`LLMDeployment`]: a served model name, its stable version, an optional canary or A/B
//!   experiment, scaling and SLOs.
//!
//! The types are the single source of truth: `crdgen` writes the CRD YAML from them, and
//! [`validate`] implements the same rules as the CEL expressions in the schema, for API servers
//! that do not enforce CEL (before Kubernetes 1.25) and for the operator's status reporting.

// kube-derive's `printcolumn(...)` repeats `type_ = ...` once per column, which this lint reads as
// a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

pub mod condition;
pub mod labels;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray,
};
mod baseline;
mod llm_deployment;
mod model_version;
mod validate;

pub use baseline::{Baseline, ComparisonMethod, Numbers};
pub use condition::{ConditionStatus, conditions_schema};
pub use llm_deployment::*;
pub use model_version::*;
pub use validate::{Validate, Violation, validate, validate_model_version};

/// API group of every Ferry resource.
pub const GROUP: &str = "serving.ferry.dev";
/// API version of every Ferry resource.
pub const VERSION: &str = "v1alpha1";

/// Every CRD Ferry installs, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    use kube::CustomResourceExt;
    let mut crds = vec![ModelVersion::crd(), LLMDeployment::crd()];
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                visit(schema, &mut |s| {
                    drop_nullable(s);
                    unsigned_as_int64(s);
                });
                status_not_yet_observed(schema);
            }
        }
    }
    crds
}

/// A resource the operator has not reconciled yet reads back with `status: {observedGeneration:
/// -1}` (the API server applies the default whenever `status` is absent). kstatus — Helm 4's
/// `--wait`, Flux, kpt — counts an object without an observed generation as done at once, so a
/// `helm install --wait` would return before the operator saw the LLMDeployment; with -1 it
/// waits for the operator's first status, then for its `Reconciling` and `Stalled` conditions.
fn status_not_yet_observed(root: &mut JSONSchemaProps) {
    if let Some(status) = root.properties.as_mut().and_then(|p| p.get_mut("status")) {
        status.default = Some(
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSON(
                serde_json::json!({"observedGeneration": -1}),
            ),
        );
    }
}

/// kube-derive marks optional fields `nullable: true` and lists `null` among the values of
/// optional enums. Neither is needed (absent fields are never serialized as null), and both hurt:
/// API servers before 1.22 reject a CRD whose enum contains null, and they publish nullable
/// objects without their fields, so `kubectl explain` cannot descend into them. Without
/// `nullable`, a `field: null` (as Helm templates produce) is pruned like an absent field.
fn drop_nullable(schema: &mut JSONSchemaProps) {
    schema.nullable = None;
    if let Some(values) = schema.enum_.as_mut() {
        values.retain(|v| !v.0.is_null());
    }
}

/// schemars writes `format: uint32` (and `uint8`, `uint64`, ...) for unsigned integers. The API
/// server knows only `int32` and `int64` and warns on every CRD apply ("unrecognized format"), so
/// an unsigned field is published as `int64` with the type's bounds (schemars already sets
/// `minimum: 0` or the field's own minimum).
fn unsigned_as_int64(schema: &mut JSONSchemaProps) {
    let max = match schema.format.as_deref() {
        Some("uint8") => u8::MAX as f64,
        Some("uint16") => u16::MAX as f64,
        Some("uint32") => u32::MAX as f64,
        Some("uint64" | "uint") => i64::MAX as f64,
        _ => return,
    };
    schema.format = Some("int64".to_string());
    schema.maximum = Some(schema.maximum.map_or(max, |m| m.min(max)));
    schema.minimum = Some(schema.minimum.map_or(0.0, |m| m.max(0.0)));
}

/// Calls `f` on `schema` and on every schema nested in it.
fn visit(schema: &mut JSONSchemaProps, f: &mut impl FnMut(&mut JSONSchemaProps)) {
    f(schema);
    let children = schema
        .properties
        .iter_mut()
        .flat_map(|p| p.values_mut())
        .chain(schema.all_of.iter_mut().flatten())
        .chain(schema.any_of.iter_mut().flatten())
        .chain(schema.one_of.iter_mut().flatten())
        .chain(schema.not.as_deref_mut());
    for child in children {
        visit(child, f);
    }
    match schema.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(item)) => visit(item, f),
        Some(JSONSchemaPropsOrArray::Schemas(items)) => items.iter_mut().for_each(|i| visit(i, f)),
        None => {}
    }
}

/// The YAML `crdgen` writes for one CRD, with a header saying where it comes from. Keys are
/// sorted, so the output does not depend on which serde features other crates of a build enable.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> String {
    let value = sorted(serde_json::to_value(crd).expect("a CRD serializes to JSON"));
    let body = serde_yaml::to_string(&value).expect("a CRD serializes to YAML");
    format!(
        "# Generated by `cargo run -p ferry-crds --bin crdgen` from crds/src. Do not edit.\n{body}"
    )
}

fn sorted(value: serde_json::Value) -> serde_yaml::Value {
    use serde_json::Value as J;
    match value {
        J::Object(map) => {
            let mut entries: Vec<(String, J)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_yaml::Value::Mapping(
                entries
                    .into_iter()
                    .map(|(k, v)| (serde_yaml::Value::String(k), sorted(v)))
                    .collect(),
            )
        }
        J::Array(items) => serde_yaml::Value::Sequence(items.into_iter().map(sorted).collect()),
        other => serde_yaml::to_value(other).expect("JSON scalars are YAML scalars"),
    }
}
