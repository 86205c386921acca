//! Comparing a canary with its baseline, the stable, over the same window.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How much worse than the stable a canary may be. The canary is judged against the stable's
/// numbers over the same window (after a promotion, against the stable's numbers from the last
/// analysis before it), whether or not `spec.slo` is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Baseline {
    /// Judge the canary against the stable (default). Turned off, only `spec.slo` judges it.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Percentage points by which the canary's error rate may exceed the stable's.
    #[serde(default = "default_error_rate_points")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub error_rate_points: f64,
    /// Percent by which the canary's TTFT, end-to-end and inter-token p95 may exceed the
    /// stable's.
    #[serde(default = "default_latency_increase_percent")]
    #[schemars(range(min = 0, max = 10000))]
    pub latency_increase_percent: u32,
    /// Differences in TTFT, latency or inter-token p95 smaller than this many milliseconds never
    /// count (the noise of small numbers). `Threshold` only.
    #[serde(default = "default_min_increase_ms")]
    #[schemars(range(min = 0, max = 600000))]
    pub min_increase_ms: u32,
    /// How the canary is compared with the stable. `Statistical` (the default with the routers'
    /// statistics): a one-sided test per metric on the routers' histograms (Mann-Whitney for
    /// latencies, two proportions for errors), the window growing from the step's start (up to
    /// 10 minutes) until enough requests are in to catch twice the tolerance. `Threshold` (the
    /// default with `prometheus`, which gives numbers, not histograms): each p95 of the window
    /// against the stable's plus the tolerances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<ComparisonMethod>,
    /// `Statistical`: the confidence of a verdict, percent. A canary within the tolerances fails
    /// an analysis at most 100 − this percent of the time; one twice the tolerance worse is
    /// caught at least this often, once the requests it needs are in.
    #[serde(default = "default_confidence_percent")]
    #[schemars(range(min = 50.0, max = 99.9))]
    pub confidence_percent: f64,
    /// `Statistical`: requests each version needs before a canary counts as not worse. Unset:
    /// derived from the tolerance, the confidence and the stable's spread (what it takes to
    /// catch twice the tolerance); set lower, a verdict comes sooner and promises less.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub required_requests: Option<i32>,
}

/// How a canary is compared with its stable.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ComparisonMethod {
    /// The window's p95s and error rate against the stable's plus the tolerances.
    Threshold,
    /// One-sided tests with stated error rates (see `confidencePercent`).
    Statistical,
}

impl Baseline {
    /// The comparison in effect: the one set, else Statistical with the routers' statistics and
    /// Threshold with Prometheus.
    pub fn method(&self, prometheus: bool) -> ComparisonMethod {
        self.method.unwrap_or(if prometheus {
            ComparisonMethod::Threshold
        } else {
            ComparisonMethod::Statistical
        })
    }
}

fn default_confidence_percent() -> f64 {
    95.0
}

impl Default for Baseline {
    fn default() -> Self {
        Self {
            enabled: default_enabled(),
            error_rate_points: default_error_rate_points(),
            latency_increase_percent: default_latency_increase_percent(),
            min_increase_ms: default_min_increase_ms(),
            method: None,
            confidence_percent: default_confidence_percent(),
            required_requests: None,
        }
    }
}

fn default_enabled() -> bool {
    true
}

fn default_error_rate_points() -> f64 {
    1.0
}

fn default_latency_increase_percent() -> u32 {
    50
}

fn default_min_increase_ms() -> u32 {
    50
}

/// A version's numbers over an analysis window.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Numbers {
    /// ModelVersion measured.
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
}
