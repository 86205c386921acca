//! `LLMDeployment`: a served model and how traffic reaches its versions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Baseline, Numbers};

/// A model served under one OpenAI `model` name: its stable ModelVersion, an optional canary
/// rollout or A/B experiment, how many pods run, and the SLOs a canary must meet to be promoted.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "serving.ferry.dev",
    version = "v1alpha1",
    kind = "LLMDeployment",
    namespaced,
    shortname = "llmd",
    category = "ferry",
    status = "LLMDeploymentStatus",
    derive = "PartialEq",
    doc = "A served model: its stable ModelVersion, an optional canary or A/B experiment, scaling and SLOs.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Model",
        type_ = "string",
        json_path = ".status.servedModelName",
        description = "OpenAI model id clients send (spec.servedModelName, else the resource's name)"
    ),
    printcolumn(
        name = "Stable",
        type_ = "string",
        json_path = ".status.stableVersion",
        description = "ModelVersion serving the stable traffic"
    ),
    printcolumn(
        name = "Canary",
        type_ = "string",
        json_path = ".status.canaryVersion",
        description = "ModelVersion under canary analysis"
    ),
    printcolumn(
        name = "Weight",
        type_ = "integer",
        json_path = ".status.canaryWeight",
        description = "Percent of traffic sent to the canary"
    ),
    printcolumn(
        name = "Variants",
        type_ = "string",
        json_path = ".status.variantSplit",
        description = "An experiment's variants and their weights"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.ready",
        description = "Ready pods / desired pods, all versions"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
// Mutual exclusion is CEL only: a schema `not` clause printed `"spec" must not validate the
// schema (not)` before the message. Without CEL (before 1.25) the operator's InvalidSpec says it.
#[x_kube(validation = Rule::new("!(has(self.canary) && has(self.experiment))").message("canary and experiment are mutually exclusive: set one of them"))]
#[x_kube(validation = Rule::new("!(has(self.replicas) && has(self.autoscaling))").message("replicas and autoscaling are mutually exclusive: set one of them"))]
#[x_kube(validation = Rule::new("!has(self.canary) || self.canary.version != self.stable").message("canary.version must differ from stable"))]
#[x_kube(validation = Rule::new("!has(self.canary) || !has(self.canary.analysis) || !has(self.canary.analysis.baseline) || !has(self.canary.analysis.baseline.enabled) || self.canary.analysis.baseline.enabled || (has(self.slo) && (has(self.slo.ttftP95Ms) || has(self.slo.latencyP95Ms) || has(self.slo.interTokenP95Ms) || has(self.slo.errorRatePercent)))").message("a canary needs something to be judged by: set spec.slo objectives or keep canary.analysis.baseline enabled"))]
pub struct LLMDeploymentSpec {
    /// The OpenAI `model` id clients send; defaults to the LLMDeployment's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub served_model_name: Option<String>,
    /// Name of the ModelVersion (same namespace) that serves traffic when no canary or
    /// experiment says otherwise.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub stable: String,
    /// Fixed number of stable pods, when `autoscaling` is not set (default 1). `kubectl scale`
    /// writes this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// Scale each version on queue depth (queued + running requests per pod) instead of a fixed
    /// `replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// Roll out a new ModelVersion step by step, promoting it when every SLO holds and rolling
    /// it back automatically when one is breached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    /// Split traffic between 2-4 ModelVersions by weight, with sticky assignment of users, and
    /// report per-variant metrics. Mutually exclusive with `canary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<Experiment>,
    /// Service-level objectives a canary is judged by. An unset objective is not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<Slo>,
}

impl LLMDeploymentSpec {
    /// Replicas of the stable version when autoscaling is off.
    pub fn fixed_replicas(&self) -> i32 {
        self.replicas.unwrap_or(1)
    }
}

/// Queue-depth autoscaling of each version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must not exceed autoscaling.maxReplicas"))]
pub struct Autoscaling {
    /// Fewest pods per version; 0 allows scale to zero (requests wait for a cold start).
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: i32,
    /// Most pods per version.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Wanted queued + running requests per pod (the `ferry_queue_depth` gauge); more pods are
    /// added when the average is above it.
    #[serde(default = "default_target_queue_depth")]
    #[schemars(range(min = 1, max = 10000))]
    pub target_queue_depth: i32,
    /// Seconds the higher desired count must hold before scaling up (0: at once).
    #[serde(default)]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_up_stabilization_seconds: i32,
    /// Seconds over which the highest desired count is kept before scaling down.
    #[serde(default = "default_scale_down_stabilization_seconds")]
    #[schemars(range(min = 0, max = 86400))]
    pub scale_down_stabilization_seconds: i32,
}

fn default_min_replicas() -> i32 {
    1
}

fn default_target_queue_depth() -> i32 {
    4
}

fn default_scale_down_stabilization_seconds() -> i32 {
    300
}

/// A canary rollout of a new ModelVersion.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.steps.map(s, s.weight).isSorted() && self.steps.all(s, self.steps.exists_one(t, t.weight == s.weight))").message("canary.steps weights must be strictly increasing"))]
pub struct Canary {
    /// Name of the ModelVersion (same namespace) under test.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub version: String,
    /// Canary pods, independent of the traffic weight (GPUs are expensive: one pod can take a
    /// 5% step).
    #[serde(default = "default_canary_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: i32,
    /// Traffic steps; each must pass analysis before the next. After the last, the canary is
    /// promoted to stable.
    #[serde(default = "default_steps")]
    #[schemars(length(min = 1, max = 20))]
    pub steps: Vec<CanaryStep>,
    /// How each step is judged.
    #[serde(default)]
    pub analysis: Analysis,
    /// Seconds after a promotion during which the previous stable stays warm and a failed
    /// analysis rolls back to it. A promotion becomes final only after an analysis passed inside
    /// it (the window stays open until one does, within `progressDeadlineSeconds`).
    #[serde(default = "default_rollback_window_seconds")]
    #[schemars(range(min = 0, max = 604800))]
    pub rollback_window_seconds: i32,
    /// Seconds a rollout may go without a conclusive analysis (a pass or a failure: no traffic,
    /// no router answering, an objective without data) before it is rolled back with reason
    /// `NoData`; also how long past its rollback window a promotion waits for a passing analysis.
    #[serde(default = "default_progress_deadline_seconds")]
    #[schemars(range(min = 10, max = 604800))]
    pub progress_deadline_seconds: i32,
}

fn default_progress_deadline_seconds() -> i32 {
    600
}

fn default_canary_replicas() -> i32 {
    1
}

fn default_steps() -> Vec<CanaryStep> {
    [5, 25, 50]
        .into_iter()
        .map(|weight| CanaryStep {
            weight,
            pause_seconds: 60,
        })
        .collect()
}

fn default_rollback_window_seconds() -> i32 {
    600
}

/// One traffic step of a canary.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStep {
    /// Percent of requests sent to the canary during this step.
    #[schemars(range(min = 1, max = 99))]
    pub weight: i32,
    /// Seconds to stay at this weight, with passing analyses, before the next step.
    #[serde(default = "default_pause_seconds")]
    #[schemars(range(min = 0, max = 86400))]
    pub pause_seconds: i32,
}

fn default_pause_seconds() -> i32 {
    60
}

/// How a canary step is judged against the SLOs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.prometheus) || !has(self.baseline) || !has(self.baseline.method) || self.baseline.method != 'Statistical' || (has(self.baseline.enabled) && !self.baseline.enabled)").message("baseline.method Statistical needs the routers' histograms: remove prometheus or use Threshold"))]
pub struct Analysis {
    /// Seconds between analyses; each reads the router's per-version stats over this window.
    #[serde(default = "default_interval_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub interval_seconds: i32,
    /// Canary requests a window needs before it can pass (fewer: the step waits).
    #[serde(default = "default_min_requests")]
    #[schemars(range(min = 1, max = 1000000))]
    pub min_requests: i32,
    /// Failed analyses that roll the canary back.
    #[serde(default = "default_failure_limit")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_limit: i32,
    /// Read the numbers from this Prometheus instead of the routers' stats endpoint (for users who
    /// already scrape the routers). Absent: the routers are asked directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSource>,
    /// Judge the canary against the stable over the same window (on by default; with or without
    /// `spec.slo`), with these tolerances. The stable needs `minRequests` in the window too.
    #[serde(default)]
    pub baseline: Baseline,
}

impl Default for Analysis {
    fn default() -> Self {
        Self {
            interval_seconds: default_interval_seconds(),
            min_requests: default_min_requests(),
            failure_limit: default_failure_limit(),
            prometheus: None,
            baseline: Baseline::default(),
        }
    }
}

/// A Prometheus that scrapes the routers' `/metrics`, and the PromQL that measures one version.
/// Queries are templates: `{{model}}` (served model name), `{{version}}` (ModelVersion),
/// `{{namespace}}`, `{{name}}` (the LLMDeployment) and `{{window}}` (the analysis interval, e.g.
/// `30s`) are replaced; each must return one number (an empty result means no data). Queries
/// left out use the defaults over the routers' metrics (see [`PrometheusQueries::DEFAULTS`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusSource {
    /// Base URL of the Prometheus HTTP API, e.g. `http://prometheus.monitoring:9090`.
    #[schemars(length(min = 8, max = 2048), regex(pattern = r"^https?://[^\s]+$"))]
    pub address: String,
    /// PromQL overriding the defaults, per measured value.
    #[serde(default)]
    pub queries: PrometheusQueries,
}

/// PromQL per measured value (each optional; see [`PrometheusSource`]).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusQueries {
    /// Requests in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub requests: Option<String>,
    /// Failed requests in the window, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub error_rate_percent: Option<String>,
    /// 95th percentile time to first token, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub ttft_p95_ms: Option<String>,
    /// 95th percentile end-to-end latency, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub latency_p95_ms: Option<String>,
    /// 95th percentile inter-token latency, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub inter_token_p95_ms: Option<String>,
}

/// `sum(increase(M{model,version}[window]))`.
macro_rules! increase {
    ($metric:literal) => {
        concat!(
            "sum(increase(",
            $metric,
            "{model=\"{{model}}\",version=\"{{version}}\"}[{{window}}]))"
        )
    };
}

/// 95th percentile of a router histogram in seconds, as milliseconds.
macro_rules! p95_ms {
    ($metric:literal) => {
        concat!(
            "1000 * histogram_quantile(0.95, sum by (le) (rate(",
            $metric,
            "_bucket{model=\"{{model}}\",version=\"{{version}}\"}[{{window}}])))"
        )
    };
}

impl PrometheusQueries {
    /// The default PromQL over `ferry-router`'s metrics, summed over router replicas and variants:
    /// requests, error rate %, TTFT / latency / inter-token p95 ms.
    pub const DEFAULTS: [&'static str; 5] = [
        increase!("ferry_router_requests_total"),
        concat!(
            "100 * ",
            increase!("ferry_router_errors_total"),
            " / ",
            increase!("ferry_router_requests_total")
        ),
        p95_ms!("ferry_router_time_to_first_token_seconds"),
        p95_ms!("ferry_router_request_duration_seconds"),
        p95_ms!("ferry_router_inter_token_latency_seconds"),
    ];

    /// The five queries in the order of [`Self::DEFAULTS`], each the user's or the default.
    pub fn effective(&self) -> [&str; 5] {
        let chosen = [
            &self.requests,
            &self.error_rate_percent,
            &self.ttft_p95_ms,
            &self.latency_p95_ms,
            &self.inter_token_p95_ms,
        ];
        std::array::from_fn(|i| chosen[i].as_deref().unwrap_or(Self::DEFAULTS[i]))
    }
}

/// The placeholders a query template may use: `{{model}} {{version}} {{namespace}} {{name}}
/// {{window}}` (spaces inside the braces allowed).
pub const PROMQL_PLACEHOLDERS: [&str; 5] = ["model", "version", "namespace", "name", "window"];

/// One piece of a query template, in order: what validation checks and the operator fills in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplatePiece<'a> {
    /// Text kept as it is.
    Text(&'a str),
    /// `{{ name }}`: `name` trimmed, `raw` the whole placeholder with its braces.
    Placeholder { name: &'a str, raw: &'a str },
    /// A `{{` without a `}}` after it, with the rest of the template.
    Unclosed(&'a str),
}

/// `template` cut into text and placeholders.
pub fn template_pieces(template: &str) -> Vec<TemplatePiece<'_>> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            pieces.push(TemplatePiece::Text(&rest[..start]));
        }
        let Some(end) = rest[start + 2..].find("}}") else {
            pieces.push(TemplatePiece::Unclosed(&rest[start..]));
            return pieces;
        };
        let raw = &rest[start..start + 2 + end + 2];
        pieces.push(TemplatePiece::Placeholder {
            name: raw[2..raw.len() - 2].trim(),
            raw,
        });
        rest = &rest[start + raw.len()..];
    }
    if !rest.is_empty() {
        pieces.push(TemplatePiece::Text(rest));
    }
    pieces
}

fn default_interval_seconds() -> i32 {
    30
}

fn default_min_requests() -> i32 {
    20
}

fn default_failure_limit() -> i32 {
    2
}

/// An A/B experiment between ModelVersions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.variants.map(v, v.weight).sum() == 100").message("experiment.variants weights must sum to 100"))]
#[x_kube(validation = Rule::new("self.variants.all(v, self.variants.exists_one(w, w.name == v.name))").message("experiment.variants names must be unique"))]
pub struct Experiment {
    /// The variants, 2 to 4, with weights summing to 100.
    #[schemars(length(min = 2, max = 4))]
    pub variants: Vec<Variant>,
    /// What keeps a user on the same variant.
    #[serde(default)]
    pub stickiness: Stickiness,
}

/// One arm of an experiment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Variant {
    /// Variant name, reported in metrics and the `x-ferry-variant` response header.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Name of the ModelVersion (same namespace) this variant serves.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub version: String,
    /// Percent of users assigned to this variant.
    #[schemars(range(min = 0, max = 100))]
    pub weight: i32,
}

/// Sticky assignment of users to variants: the same key always lands on the same variant while
/// the weights hold.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.key != 'header' || has(self.header)").message("stickiness.header must name the header when stickiness.key is header"))]
pub struct Stickiness {
    /// Where the key comes from: the OpenAI `user` field, a request header, or the API key.
    #[serde(default)]
    pub key: StickinessKey,
    /// Header name when `key` is `header`, e.g. `x-session-id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub header: Option<String>,
}

impl Default for Stickiness {
    fn default() -> Self {
        Self {
            key: StickinessKey::User,
            header: None,
        }
    }
}

/// Source of the stickiness key.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StickinessKey {
    /// The `user` field of the OpenAI request body.
    #[default]
    User,
    /// A request header, named by `stickiness.header`.
    Header,
    /// The caller's API key.
    ApiKey,
}

/// Service-level objectives; each set one must hold for a canary step to pass.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Slo {
    /// Highest allowed 95th percentile time to first token, in milliseconds (streams).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub ttft_p95_ms: Option<u32>,
    /// Highest allowed 95th percentile end-to-end request latency, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub latency_p95_ms: Option<u32>,
    /// Highest allowed 95th percentile time between streamed tokens, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub inter_token_p95_ms: Option<u32>,
    /// Highest allowed share of failed requests (5xx and mid-stream errors), in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub error_rate_percent: Option<f64>,
}

/// Lifecycle phase of an LLMDeployment.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Accepted; the stable version has no ready pod yet.
    Pending,
    /// The stable version serves all traffic.
    Available,
    /// A canary rollout is under way.
    Progressing,
    /// An A/B experiment is splitting traffic.
    Experimenting,
    /// The canary was promoted; the previous stable stays warm for the rollback window.
    Promoted,
    /// The canary breached an SLO (or was aborted) and was rolled back; change the spec to try
    /// again.
    RolledBack,
    /// The canary never became ready within the cold-start timeout; change the spec to try again.
    Failed,
    /// Fewer pods are ready than wanted.
    Degraded,
    /// The spec is invalid; see the InvalidSpec condition.
    Invalid,
}

/// Observed state of an LLMDeployment, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LLMDeploymentStatus {
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The OpenAI model id this deployment answers to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_model_name: Option<String>,
    /// ModelVersion serving stable traffic (after a promotion: the promoted canary, until the
    /// spec's `stable` is updated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_version: Option<String>,
    /// ModelVersion under canary analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_version: Option<String>,
    /// Index (from 0) of the canary step in effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_step: Option<i32>,
    /// Percent of traffic the canary receives now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_weight: Option<i32>,
    /// The split the router obeys: every version that receives traffic and its percent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficTarget>,
    /// Pods of each running version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<VersionStatus>,
    /// The most recent canary analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_analysis: Option<AnalysisResult>,
    /// State of the current (or last) canary rollout; the operator resumes from it after a
    /// restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// Per-variant metrics of a running experiment, over the router's last window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<VariantStats>,
    /// An experiment's split in a line, e.g. `control 70%, batch16 30%` (the Variants column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant_split: Option<String>,
    /// In-cluster OpenAI base URL for this model (the router).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Available, Progressing, Degraded, RolledBack, InvalidSpec; and Ready, Reconciling, Stalled
    /// (the summary kstatus and Argo CD read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Stable replicas, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Label selector of the stable pods, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Ready pods / desired pods over all versions, e.g. `3/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
}

/// One entry of the traffic split.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficTarget {
    /// ModelVersion name.
    pub version: String,
    /// Percent of requests, 0-100; the weights of one split sum to 100.
    pub weight: i32,
    /// Experiment variant name, when an experiment is running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// Pods of one running version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionStatus {
    /// ModelVersion name.
    pub name: String,
    /// Desired pods.
    pub replicas: i32,
    /// Ready pods.
    pub ready_replicas: i32,
    /// Queued + running requests over the version's ready pods, as last read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<i64>,
}

/// Outcome of one canary analysis.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisResult {
    /// When the analysis ran (RFC 3339).
    pub time: String,
    /// ModelVersion analysed.
    pub version: String,
    /// Requests in the window.
    pub requests: i64,
    /// 95th percentile time to first token, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_p95_ms: Option<f64>,
    /// 95th percentile end-to-end latency, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p95_ms: Option<f64>,
    /// 95th percentile inter-token latency, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inter_token_p95_ms: Option<f64>,
    /// Failed requests, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate_percent: Option<f64>,
    /// Where the numbers came from: `router` or `prometheus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The stable's numbers the canary was compared with (`canary.analysis.baseline`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Numbers>,
    /// `Pass`, `Fail` or `Inconclusive` (too few requests, an objective without data, metrics
    /// unavailable).
    pub verdict: Verdict,
    /// Why, e.g. `ttft p95 812 ms > 500 ms over 143 requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The rules a `Fail` broke: `Slo` (an objective of `spec.slo`), `Stable` (worse than the
    /// stable beyond `canary.analysis.baseline`'s tolerances). Empty unless `Fail`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_rules: Vec<AnalysisRule>,
}

/// A rule a canary analysis judges by.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AnalysisRule {
    /// An objective of `spec.slo`.
    Slo,
    /// The comparison with the stable (`canary.analysis.baseline`).
    Stable,
}

/// Where a canary rollout stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RolloutState {
    /// Canary pods are starting; no traffic yet.
    Starting,
    /// The canary receives `step`'s weight and is analysed every interval.
    Analysing,
    /// Every step passed: the canary is scaled like the stable before it takes all traffic.
    Promoting,
    /// The canary is the stable; during the rollback window a breach still rolls back.
    Promoted,
    /// An SLO was breached (or the rollout was aborted); traffic is back on the stable.
    RolledBack,
    /// The canary did not become ready within the cold-start timeout.
    Failed,
}

/// The state of a canary rollout, persisted so that a restarted operator resumes it without
/// repeating or skipping a step. Times are RFC 3339.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// ModelVersion rolled out.
    pub version: String,
    /// The ModelVersion that was stable when the rollout started (rolled back to on failure).
    pub previous_stable: String,
    /// `metadata.generation` that started the rollout: a rolled-back or failed canary is retried
    /// only when the spec changes.
    pub generation: i64,
    /// Where the rollout stands.
    pub state: RolloutState,
    /// Index (from 0) of the step in effect.
    pub step: i32,
    /// When the rollout started.
    pub started_at: String,
    /// When the current step's weight took effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<String>,
    /// When the last analysis ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_analysis_at: Option<String>,
    /// Failed analyses so far (of this rollout, or of the rollback window after promotion).
    pub failed_analyses: i32,
    /// When the rollout was promoted, rolled back or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Why it ended the way it did, e.g. `ttft p95 812 ms > 500 ms over 143 requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When an analysis last passed or failed (an inconclusive one does not count): the
    /// progress deadline runs from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_conclusive_at: Option<String>,
    /// When an analysis last passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_pass_at: Option<String>,
    /// The stable's numbers at the last analysis before the promotion: what the promoted version
    /// is compared with in the rollback window, when the previous stable takes no traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Numbers>,
}

/// One experiment variant's metrics over the router's window.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VariantStats {
    /// Variant name.
    pub name: String,
    /// ModelVersion it serves.
    pub version: String,
    /// Percent of users assigned to it.
    pub weight: i32,
    /// Seconds of traffic the numbers cover.
    pub window_seconds: i64,
    /// Requests in the window.
    pub requests: i64,
    /// Failed requests (5xx and mid-stream errors), percent.
    pub error_rate_percent: f64,
    /// 95th percentile time to first token, ms (streams).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_p95_ms: Option<f64>,
    /// 95th percentile end-to-end latency, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p95_ms: Option<f64>,
    /// 95th percentile inter-token latency, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inter_token_p95_ms: Option<f64>,
    /// Prompt tokens in the window.
    pub prompt_tokens: i64,
    /// Completion tokens in the window.
    pub completion_tokens: i64,
}

/// Verdict of a canary analysis.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Verdict {
    Pass,
    Fail,
    Inconclusive,
}
