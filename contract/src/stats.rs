//! The router's per-version statistics as they cross to the operator: `GET /internal/stats`
//! answers with a [`Summary`]. Every router uses the same fixed histogram buckets, so summaries
//! of several replicas merge by adding bucket counts ([`Summary::merge`]) and percentiles are
//! computed after the merge.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upper bounds of the latency buckets, in milliseconds (about 25% apart, 1 ms to 2 min); one more
/// bucket counts everything above the last bound.
pub const BUCKET_BOUNDS_MS: &[f64] = &[
    1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 65.0, 80.0, 100.0, 125.0,
    150.0, 200.0, 250.0, 300.0, 400.0, 500.0, 650.0, 800.0, 1000.0, 1250.0, 1500.0, 2000.0, 2500.0,
    3000.0, 4000.0, 5000.0, 6500.0, 8000.0, 10000.0, 12500.0, 15000.0, 20000.0, 25000.0, 30000.0,
    45000.0, 60000.0, 90000.0, 120000.0,
];

/// Longest window `/internal/stats` answers for.
pub const MAX_WINDOW: Duration = Duration::from_secs(600);

/// Which series a request counts in.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SeriesKey {
    pub model: String,
    pub version: String,
    /// Experiment variant, empty outside experiments.
    pub variant: String,
}

/// Counts of one latency histogram: `buckets[i]` counts values ≤ `BUCKET_BOUNDS_MS[i]` and above
/// the previous bound; the last entry counts values above every bound.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Histogram {
    pub count: u64,
    pub sum_ms: f64,
    pub buckets: Vec<u64>,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            count: 0,
            sum_ms: 0.0,
            buckets: vec![0; BUCKET_BOUNDS_MS.len() + 1],
        }
    }
}

impl Histogram {
    pub fn observe(&mut self, value: Duration) {
        let ms = value.as_secs_f64() * 1e3;
        let i = BUCKET_BOUNDS_MS.partition_point(|b| *b < ms);
        self.buckets[i] += 1;
        self.count += 1;
        self.sum_ms += ms;
    }

    pub fn merge(&mut self, other: &Histogram) {
        self.count += other.count;
        self.sum_ms += other.sum_ms;
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
    }

    /// The `q` quantile in milliseconds, interpolated linearly inside its bucket (as Prometheus'
    /// `histogram_quantile` does); `None` without observations. Values above the last bound
    /// report the last bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.count as f64;
        let mut seen = 0.0;
        for (i, n) in self.buckets.iter().enumerate() {
            let n = *n as f64;
            if n > 0.0 && seen + n >= rank {
                let Some(upper) = BUCKET_BOUNDS_MS.get(i) else {
                    return BUCKET_BOUNDS_MS.last().copied();
                };
                let lower = if i == 0 { 0.0 } else { BUCKET_BOUNDS_MS[i - 1] };
                return Some(lower + (upper - lower) * ((rank - seen) / n).clamp(0.0, 1.0));
            }
            seen += n;
        }
        BUCKET_BOUNDS_MS.last().copied()
    }
}

/// Everything counted for one series over a window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub ttft: Histogram,
    pub latency: Histogram,
    pub inter_token: Histogram,
}

impl Counts {
    pub fn merge(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.ttft.merge(&other.ttft);
        self.latency.merge(&other.latency);
        self.inter_token.merge(&other.inter_token);
    }
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

impl From<&Histogram> for Percentiles {
    fn from(h: &Histogram) -> Self {
        Self {
            p50: h.quantile(0.50),
            p95: h.quantile(0.95),
            p99: h.quantile(0.99),
        }
    }
}

/// One series over the window: the raw counts (mergeable) and what they mean.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeriesSummary {
    #[serde(flatten)]
    pub key: SeriesKey,
    /// Failed requests / requests, 0–1.
    pub error_rate: f64,
    pub ttft_ms: Percentiles,
    pub latency_ms: Percentiles,
    pub inter_token_ms: Percentiles,
    pub counts: Counts,
}

impl SeriesSummary {
    pub fn new(key: SeriesKey, counts: Counts) -> Self {
        Self {
            key,
            error_rate: if counts.requests == 0 {
                0.0
            } else {
                counts.errors as f64 / counts.requests as f64
            },
            ttft_ms: (&counts.ttft).into(),
            latency_ms: (&counts.latency).into(),
            inter_token_ms: (&counts.inter_token).into(),
            counts,
        }
    }
}

/// The answer of `GET /internal/stats?window=30s`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub window_seconds: u64,
    pub bucket_bounds_ms: Vec<f64>,
    pub series: Vec<SeriesSummary>,
    /// Requests waiting now for a ready pod, by served model (scale from zero wakes on these).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub held: BTreeMap<String, u64>,
}

impl Summary {
    /// Adds the series of several routers' summaries (same window) into one, recomputing the
    /// percentiles from the summed buckets.
    pub fn merge(summaries: &[Summary]) -> Summary {
        let mut all: BTreeMap<SeriesKey, Counts> = Default::default();
        let mut held: BTreeMap<String, u64> = Default::default();
        for s in summaries {
            for series in &s.series {
                all.entry(series.key.clone())
                    .or_default()
                    .merge(&series.counts);
            }
            for (model, n) in &s.held {
                *held.entry(model.clone()).or_default() += n;
            }
        }
        Summary {
            window_seconds: summaries.first().map_or(0, |s| s.window_seconds),
            bucket_bounds_ms: BUCKET_BOUNDS_MS.to_vec(),
            series: all
                .into_iter()
                .map(|(k, c)| SeriesSummary::new(k, c))
                .collect(),
            held,
        }
    }
}
