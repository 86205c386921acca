//! Status conditions shared by both resources.

use schemars::{Schema, generate::SchemaGenerator, json_schema};

/// Condition types a Ferry resource reports; the operator sets them and `kubectl wait` reads them.
pub mod types {
    /// `ModelVersion`: the spec passed validation and its source can be served.
    pub const VALID: &str = "Valid";
    /// `LLMDeployment`: the stable version has ready pods and receives traffic.
    pub const AVAILABLE: &str = "Available";
    /// `LLMDeployment`: a canary rollout or a scale change is under way.
    pub const PROGRESSING: &str = "Progressing";
    /// `LLMDeployment`: fewer pods are ready than wanted, or an SLO is breached.
    pub const DEGRADED: &str = "Degraded";
    /// `LLMDeployment`: the last canary was rolled back; the message names the breached SLO.
    pub const ROLLED_BACK: &str = "RolledBack";
    /// Either resource: the spec is invalid; the message lists every violation.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Either resource, summing up the others as kstatus (Flux, Helm 4's `--wait`, `kubectl
    /// wait`) reads them: the spec is fully realised and nothing is under way. `Unknown` while
    /// reconciling, `False` when stalled.
    pub const READY: &str = "Ready";
    /// Either resource: a change is under way (pods starting, a canary or a handover, a paused
    /// rollout, a promoted canary's rollback window); the reason says which.
    pub const RECONCILING: &str = "Reconciling";
    /// Either resource: it cannot progress until its spec changes (invalid spec, canary rolled
    /// back or failed).
    pub const STALLED: &str = "Stalled";
}

/// `True`, `False` or `Unknown`, as in every Kubernetes condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// Schema of `status.conditions`: a list-map keyed by `type`, so server-side apply merges one
/// condition at a time and two writers never clobber each other's conditions.
pub fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let item =
        generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>();
    json_schema!({
        "description": "The latest observations of the resource's state, one per condition type.",
        "type": "array",
        "items": item,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    })
}
