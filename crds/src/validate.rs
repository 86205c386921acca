//! The rules of both resources as plain Rust, for API servers that store CEL rules without
//! enforcing them (Kubernetes < 1.25) and for the operator's `InvalidSpec` condition. Where a rule
//! also exists as CEL in the schema, the message is the same word for word.

use std::collections::BTreeSet;
use std::fmt;

use crate::{
    LLMDeploymentSpec, ModelFormat, ModelSource, ModelVersionSpec, PROMQL_PLACEHOLDERS,
    StickinessKey, TemplatePiece,
};

/// One broken rule: the field path (as `kubectl explain` spells it) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Path of the offending field, e.g. `spec.canary.steps[1].weight`.
    pub field: String,
    /// What is wrong, for a human.
    pub message: String,
}

impl Violation {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// A spec whose rules can be checked without an API server.
pub trait Validate {
    /// Every violation, in field order; empty when the spec is valid.
    fn violations(&self) -> Vec<Violation>;
}

/// Checks a spec against every rule of its resource: `Err` carries all violations, not just the
/// first, so one round trip tells the user everything to fix.
pub fn validate<T: Validate + ?Sized>(spec: &T) -> Result<(), Vec<Violation>> {
    let violations = spec.violations();
    if violations.is_empty() {
        Ok(())
    } else {
        Err(violations)
    }
}

/// Checks a new ModelVersion spec against the one it replaces: a ModelVersion never changes.
pub fn validate_model_version(
    old: Option<&ModelVersionSpec>,
    new: &ModelVersionSpec,
) -> Result<(), Vec<Violation>> {
    let mut violations = new.violations();
    if old.is_some_and(|old| old != new) {
        violations.insert(0, Violation::new("spec", IMMUTABLE));
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(violations)
    }
}

pub(crate) const IMMUTABLE: &str =
    "ModelVersion spec is immutable: create a new ModelVersion instead";

fn check_prometheus(out: &mut Vec<Violation>, p: &crate::PrometheusSource) {
    let field = "spec.canary.analysis.prometheus";
    let scheme = p
        .address
        .strip_prefix("http://")
        .or_else(|| p.address.strip_prefix("https://"));
    if !scheme.is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace)) {
        out.push(Violation::new(
            format!("{field}.address"),
            format!("must be an http:// or https:// URL, got {:?}", p.address),
        ));
    }
    let q = &p.queries;
    for (name, query) in [
        ("requests", &q.requests),
        ("errorRatePercent", &q.error_rate_percent),
        ("ttftP95Ms", &q.ttft_p95_ms),
        ("latencyP95Ms", &q.latency_p95_ms),
        ("interTokenP95Ms", &q.inter_token_p95_ms),
    ] {
        let Some(query) = query else { continue };
        if query.trim().is_empty() {
            out.push(Violation::new(
                format!("{field}.queries.{name}"),
                "must not be empty (leave it out for the default)",
            ));
        }
        for piece in crate::template_pieces(query) {
            let problem = match piece {
                TemplatePiece::Text(_) => continue,
                TemplatePiece::Unclosed(_) => "has a `{{` without its `}}`".to_string(),
                TemplatePiece::Placeholder { name: known, .. }
                    if PROMQL_PLACEHOLDERS.contains(&known) =>
                {
                    continue;
                }
                TemplatePiece::Placeholder { name: unknown, .. } => format!(
                    "unknown placeholder {{{{{unknown}}}}} (known: {})",
                    PROMQL_PLACEHOLDERS.join(", ")
                ),
            };
            out.push(Violation::new(format!("{field}.queries.{name}"), problem));
        }
    }
}

/// Kubernetes object names (RFC 1123 subdomain): what `stable`, `canary.version` and
/// `variants[].version` must be to name a ModelVersion.
fn is_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn check_version_name(out: &mut Vec<Violation>, field: &str, name: &str) {
    if !is_object_name(name) {
        out.push(Violation::new(
            field,
            format!("{name:?} is not a valid ModelVersion name (lower-case letters, digits, '-' and '.', starting and ending with a letter or digit)"),
        ));
    }
}

impl Validate for LLMDeploymentSpec {
    fn violations(&self) -> Vec<Violation> {
        let mut out = Vec::new();
        if self.canary.is_some() && self.experiment.is_some() {
            out.push(Violation::new(
                "spec",
                "canary and experiment are mutually exclusive: set one of them",
            ));
        }
        if self.replicas.is_some() && self.autoscaling.is_some() {
            out.push(Violation::new(
                "spec",
                "replicas and autoscaling are mutually exclusive: set one of them",
            ));
        }
        if let Some(canary) = &self.canary {
            let objectives = self.slo.as_ref().is_some_and(|s| {
                s.ttft_p95_ms.is_some()
                    || s.latency_p95_ms.is_some()
                    || s.inter_token_p95_ms.is_some()
                    || s.error_rate_percent.is_some()
            });
            if canary.analysis.baseline.enabled
                && canary.analysis.baseline.method == Some(crate::ComparisonMethod::Statistical)
                && canary.analysis.prometheus.is_some()
            {
                out.push(Violation::new(
                    "spec.canary.analysis",
                    "baseline.method Statistical needs the routers' histograms: remove prometheus or use Threshold",
                ));
            }
            if !canary.analysis.baseline.enabled && !objectives {
                out.push(Violation::new(
                    "spec",
                    "a canary needs something to be judged by: set spec.slo objectives or keep canary.analysis.baseline enabled",
                ));
            }
        }
        if self
            .served_model_name
            .as_deref()
            .is_some_and(|n| n.trim().is_empty())
        {
            out.push(Violation::new(
                "spec.servedModelName",
                "must not be empty (leave it out to use the resource's name)",
            ));
        }
        check_version_name(&mut out, "spec.stable", &self.stable);
        if let Some(r) = self.replicas
            && r < 0
        {
            out.push(Violation::new(
                "spec.replicas",
                format!("must be 0 or more, got {r}"),
            ));
        }
        if let Some(a) = &self.autoscaling {
            if a.min_replicas < 0 {
                out.push(Violation::new(
                    "spec.autoscaling.minReplicas",
                    format!("must be 0 or more, got {}", a.min_replicas),
                ));
            }
            if a.max_replicas < 1 {
                out.push(Violation::new(
                    "spec.autoscaling.maxReplicas",
                    format!("must be 1 or more, got {}", a.max_replicas),
                ));
            }
            if a.min_replicas > a.max_replicas {
                out.push(Violation::new(
                    "spec.autoscaling",
                    "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
                ));
            }
            if a.target_queue_depth < 1 {
                out.push(Violation::new(
                    "spec.autoscaling.targetQueueDepth",
                    format!("must be 1 or more, got {}", a.target_queue_depth),
                ));
            }
        }
        if let Some(c) = &self.canary {
            check_version_name(&mut out, "spec.canary.version", &c.version);
            if c.version == self.stable {
                out.push(Violation::new(
                    "spec",
                    "canary.version must differ from stable",
                ));
            }
            if c.replicas < 1 {
                out.push(Violation::new(
                    "spec.canary.replicas",
                    format!("must be 1 or more, got {}", c.replicas),
                ));
            }
            if c.steps.is_empty() {
                out.push(Violation::new(
                    "spec.canary.steps",
                    "must have at least one step",
                ));
            }
            for (i, s) in c.steps.iter().enumerate() {
                if !(1..=99).contains(&s.weight) {
                    out.push(Violation::new(
                        format!("spec.canary.steps[{i}].weight"),
                        format!("must be between 1 and 99, got {}", s.weight),
                    ));
                }
            }
            if c.steps.windows(2).any(|w| w[0].weight >= w[1].weight) {
                out.push(Violation::new(
                    "spec.canary",
                    "canary.steps weights must be strictly increasing",
                ));
            }
            if c.analysis.min_requests < 1 {
                out.push(Violation::new(
                    "spec.canary.analysis.minRequests",
                    "must be 1 or more",
                ));
            }
            if c.analysis.failure_limit < 1 {
                out.push(Violation::new(
                    "spec.canary.analysis.failureLimit",
                    "must be 1 or more",
                ));
            }
            if c.analysis.interval_seconds < 1 {
                out.push(Violation::new(
                    "spec.canary.analysis.intervalSeconds",
                    "must be 1 or more",
                ));
            }
            if let Some(p) = &c.analysis.prometheus {
                check_prometheus(&mut out, p);
            }
        }
        if let Some(e) = &self.experiment {
            if !(2..=4).contains(&e.variants.len()) {
                out.push(Violation::new(
                    "spec.experiment.variants",
                    format!("must have 2 to 4 variants, got {}", e.variants.len()),
                ));
            }
            let sum: i32 = e.variants.iter().map(|v| v.weight).sum();
            if sum != 100 {
                out.push(Violation::new(
                    "spec.experiment",
                    "experiment.variants weights must sum to 100",
                ));
            }
            let mut names = BTreeSet::new();
            if !e.variants.iter().all(|v| names.insert(v.name.as_str())) {
                out.push(Violation::new(
                    "spec.experiment",
                    "experiment.variants names must be unique",
                ));
            }
            for (i, v) in e.variants.iter().enumerate() {
                check_version_name(
                    &mut out,
                    &format!("spec.experiment.variants[{i}].version"),
                    &v.version,
                );
                if !(0..=100).contains(&v.weight) {
                    out.push(Violation::new(
                        format!("spec.experiment.variants[{i}].weight"),
                        format!("must be between 0 and 100, got {}", v.weight),
                    ));
                }
            }
            if e.stickiness.key == StickinessKey::Header && e.stickiness.header.is_none() {
                out.push(Violation::new(
                    "spec.experiment.stickiness",
                    "stickiness.header must name the header when stickiness.key is header",
                ));
            }
        }
        if let Some(rate) = self.slo.as_ref().and_then(|s| s.error_rate_percent)
            && !(0.0..=100.0).contains(&rate)
        {
            out.push(Violation::new(
                "spec.slo.errorRatePercent",
                format!("must be between 0 and 100, got {rate}"),
            ));
        }
        out
    }
}

impl Validate for ModelVersionSpec {
    fn violations(&self) -> Vec<Violation> {
        let mut out = Vec::new();
        if self.format == ModelFormat::Gguf
            && self.files.is_empty()
            && !matches!(self.source, ModelSource::HuggingFace(_))
        {
            out.push(Violation::new(
                "spec",
                "files must name the GGUF file(s) to load when format is gguf",
            ));
        }
        if self.format == ModelFormat::Gguf && self.engine.isq.is_some() {
            out.push(Violation::new(
                "spec",
                "engine.isq applies to safetensors weights: GGUF files are already quantized",
            ));
        }
        if self.engine.paged_attention.enabled && self.resources.gpus == 0 {
            out.push(Violation::new(
                "spec",
                "engine.pagedAttention needs a GPU: set resources.gpus above 0",
            ));
        }
        if self.resources.gpus > 1 {
            out.push(Violation::new(
                "spec",
                "resources.gpus above 1 is not supported yet: ferry-server runs a model on one GPU per pod",
            ));
        }
        for (i, f) in self.files.iter().enumerate() {
            if f.is_empty() || f.starts_with('/') || f.split('/').any(|part| part == "..") {
                out.push(Violation::new(
                    format!("spec.files[{i}]"),
                    format!("{f:?} must be a relative path inside the source, without '..'"),
                ));
            }
        }
        match &self.source {
            ModelSource::Url(u) => {
                if !(u.uri.starts_with("http://") || u.uri.starts_with("https://")) {
                    out.push(Violation::new(
                        "spec.source.url.uri",
                        format!("{:?} must start with http:// or https://", u.uri),
                    ));
                }
                if u.sha256.len() != 64
                    || !u
                        .sha256
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    out.push(Violation::new(
                        "spec.source.url.sha256",
                        "must be 64 lower-case hex digits",
                    ));
                }
            }
            ModelSource::Image(s) if s.reference.trim().is_empty() => {
                out.push(Violation::new(
                    "spec.source.image.reference",
                    "must not be empty",
                ));
            }
            ModelSource::Pvc(s) if s.claim_name.trim().is_empty() => {
                out.push(Violation::new(
                    "spec.source.pvc.claimName",
                    "must not be empty",
                ));
            }
            ModelSource::HuggingFace(s) if s.repo.trim().is_empty() => {
                out.push(Violation::new(
                    "spec.source.huggingFace.repo",
                    "must not be empty",
                ));
            }
            _ => {}
        }
        let fraction = self.engine.paged_attention.gpu_memory_fraction;
        if !(fraction > 0.0 && fraction <= 1.0) {
            out.push(Violation::new(
                "spec.engine.pagedAttention.gpuMemoryFraction",
                format!("must be above 0 and at most 1, got {fraction}"),
            ));
        }
        if self.engine.max_num_seqs == 0 {
            out.push(Violation::new(
                "spec.engine.maxNumSeqs",
                "must be 1 or more",
            ));
        }
        out
    }
}
