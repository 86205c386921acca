//! Judging a version by the router's statistics: the pure part of canary analysis, and the
//! per-variant numbers of an experiment.

use ferry_crds::{AnalysisResult, Slo, VariantStats, Verdict};
use ferry_router::stats::{Counts, SeriesKey, SeriesSummary, Summary};

/// Everything the routers counted for one version of one model over the window: all its
/// variants, or only `variant`.
pub fn version_counts(
    summary: &Summary,
    model: &str,
    version: &str,
    variant: Option<&str>,
) -> Counts {
    let mut counts = Counts::default();
    for s in summary.series.iter().filter(|s| {
        s.key.model == model
            && s.key.version == version
            && variant.is_none_or(|v| s.key.variant == v)
    }) {
        counts.merge(&s.counts);
    }
    counts
}

/// Percentiles and error rate of `counts` (the series key does not matter here).
fn summarize(counts: &Counts) -> SeriesSummary {
    let key = SeriesKey {
        model: String::new(),
        version: String::new(),
        variant: String::new(),
    };
    SeriesSummary::new(key, counts.clone())
}

/// The numbers a verdict is based on, whatever their source.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measured {
    pub requests: u64,
    pub ttft_p95_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub inter_token_p95_ms: Option<f64>,
    /// Failed requests, percent (`None` without requests).
    pub error_rate_percent: Option<f64>,
}

impl Measured {
    /// From the routers' bucket counts.
    pub fn from_counts(counts: &Counts) -> Self {
        let summary = summarize(counts);
        Self {
            requests: counts.requests,
            ttft_p95_ms: summary.ttft_ms.p95,
            latency_p95_ms: summary.latency_ms.p95,
            inter_token_p95_ms: summary.inter_token_ms.p95,
            error_rate_percent: (counts.requests > 0).then_some(summary.error_rate * 100.0),
        }
    }
}

/// One value measured against one objective.
struct Check {
    what: &'static str,
    value: Option<f64>,
    limit: Option<f64>,
    unit: &'static str,
}

/// The verdict on `version` from the routers' counts (see [`judge_measured`]).
pub fn judge(
    version: &str,
    counts: &Counts,
    slo: &Slo,
    min_requests: i32,
    time: String,
) -> AnalysisResult {
    let measured = Measured::from_counts(counts);
    judge_measured(version, &measured, slo, min_requests, time, "router")
}

/// The verdict on `version`: `Inconclusive` below `min_requests`, `Fail` when any set objective
/// is exceeded (the reason names each breach: metric, value, objective, requests), else `Pass`.
/// Latency objectives with no samples (e.g. TTFT without streams) are not judged.
pub fn judge_measured(
    version: &str,
    m: &Measured,
    slo: &Slo,
    min_requests: i32,
    time: String,
    source: &str,
) -> AnalysisResult {
    let requests = m.requests.min(i64::MAX as u64) as i64;
    let checks = [
        Check {
            what: "ttft p95",
            value: m.ttft_p95_ms,
            limit: slo.ttft_p95_ms.map(f64::from),
            unit: " ms",
        },
        Check {
            what: "latency p95",
            value: m.latency_p95_ms,
            limit: slo.latency_p95_ms.map(f64::from),
            unit: " ms",
        },
        Check {
            what: "inter-token p95",
            value: m.inter_token_p95_ms,
            limit: slo.inter_token_p95_ms.map(f64::from),
            unit: " ms",
        },
        Check {
            what: "error rate",
            value: m.error_rate_percent,
            limit: slo.error_rate_percent,
            unit: "%",
        },
    ];
    let (verdict, reason) = if requests < i64::from(min_requests) {
        (
            Verdict::Inconclusive,
            format!("{requests} requests in the window, fewer than minRequests {min_requests}"),
        )
    } else {
        let breaches: Vec<String> = checks
            .iter()
            .filter_map(|c| {
                let (value, limit) = (c.value?, c.limit?);
                (value > limit).then(|| {
                    format!(
                        "{} {}{} > {}{} over {requests} requests",
                        c.what,
                        round(value),
                        c.unit,
                        round(limit),
                        c.unit
                    )
                })
            })
            .collect();
        if breaches.is_empty() {
            (
                Verdict::Pass,
                format!("every objective held over {requests} requests"),
            )
        } else {
            (Verdict::Fail, breaches.join("; "))
        }
    };
    // Status fields carry finite numbers only (a p95 in the +Inf bucket is in the reason).
    let shown = |v: Option<f64>| v.filter(|v| v.is_finite()).map(round);
    AnalysisResult {
        time,
        version: version.to_string(),
        requests,
        ttft_p95_ms: shown(checks[0].value),
        latency_p95_ms: shown(checks[1].value),
        inter_token_p95_ms: shown(checks[2].value),
        error_rate_percent: shown(checks[3].value),
        source: Some(source.to_string()),
        verdict,
        reason: Some(reason),
    }
}

/// An analysis that could not read any metrics (no router answered): it neither passes nor fails.
pub fn unavailable(version: &str, why: &str, time: String) -> AnalysisResult {
    AnalysisResult {
        time,
        version: version.to_string(),
        requests: 0,
        ttft_p95_ms: None,
        latency_p95_ms: None,
        inter_token_p95_ms: None,
        error_rate_percent: None,
        source: None,
        verdict: Verdict::Inconclusive,
        reason: Some(format!("no metrics: {why}")),
    }
}

/// An experiment variant's numbers from its counts.
pub fn variant_stats(
    name: &str,
    version: &str,
    weight: i32,
    window_seconds: u64,
    counts: &Counts,
) -> VariantStats {
    let summary = summarize(counts);
    VariantStats {
        name: name.to_string(),
        version: version.to_string(),
        weight,
        window_seconds: window_seconds as i64,
        requests: counts.requests as i64,
        error_rate_percent: round(summary.error_rate * 100.0),
        ttft_p95_ms: summary.ttft_ms.p95.map(round),
        latency_p95_ms: summary.latency_ms.p95.map(round),
        inter_token_p95_ms: summary.inter_token_ms.p95.map(round),
        prompt_tokens: counts.prompt_tokens as i64,
        completion_tokens: counts.completion_tokens as i64,
    }
}

/// Two decimals: enough for milliseconds and percents, and stable in status (no write churn from
/// float noise).
fn round(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_router::stats::SeriesKey;
    use std::time::Duration;

    fn counts(requests: u64, errors: u64, ttft_ms: &[u64], latency_ms: u64) -> Counts {
        let mut c = Counts {
            requests,
            errors,
            ..Default::default()
        };
        for _ in 0..requests {
            c.latency.observe(Duration::from_millis(latency_ms));
        }
        for t in ttft_ms {
            c.ttft.observe(Duration::from_millis(*t));
        }
        c
    }

    fn slo() -> Slo {
        Slo {
            ttft_p95_ms: Some(500),
            latency_p95_ms: Some(10_000),
            inter_token_p95_ms: None,
            error_rate_percent: Some(1.0),
        }
    }

    #[test]
    fn too_few_requests_is_inconclusive_not_a_failure() {
        let r = judge("v2", &counts(5, 5, &[], 10), &slo(), 20, "t".into());
        assert_eq!(r.verdict, Verdict::Inconclusive);
        assert_eq!(
            r.reason.as_deref(),
            Some("5 requests in the window, fewer than minRequests 20")
        );
    }

    #[test]
    fn a_slow_first_token_fails_and_the_reason_names_metric_value_objective_and_requests() {
        let r = judge(
            "v2",
            &counts(143, 0, &[800; 143], 900),
            &slo(),
            20,
            "t".into(),
        );
        assert_eq!(r.verdict, Verdict::Fail);
        let reason = r.reason.unwrap();
        assert!(
            reason.starts_with("ttft p95 ") && reason.ends_with(" ms > 500 ms over 143 requests"),
            "{reason}"
        );
        // The bucketed p95 of 800 ms samples lies within their bucket.
        let p95 = r.ttft_p95_ms.unwrap();
        assert!((600.0..=1000.0).contains(&p95), "{p95}");
        assert_eq!(r.error_rate_percent, Some(0.0));
    }

    #[test]
    fn errors_over_the_objective_fail_and_every_breach_is_listed() {
        let r = judge(
            "v2",
            &counts(100, 5, &[900; 100], 50),
            &slo(),
            20,
            "t".into(),
        );
        assert_eq!(r.verdict, Verdict::Fail);
        let reason = r.reason.unwrap();
        assert!(reason.contains("ttft p95"), "{reason}");
        assert!(
            reason.contains("error rate 5% > 1% over 100 requests"),
            "{reason}"
        );
    }

    #[test]
    fn within_objectives_passes_and_unset_objectives_are_not_judged() {
        let r = judge(
            "v2",
            &counts(50, 0, &[100; 50], 200),
            &slo(),
            20,
            "t".into(),
        );
        assert_eq!(r.verdict, Verdict::Pass);
        // No TTFT samples (no streams) and no TTFT objective is judged on them.
        let r = judge("v2", &counts(50, 0, &[], 200), &slo(), 20, "t".into());
        assert_eq!(r.verdict, Verdict::Pass);
        assert_eq!(r.ttft_p95_ms, None);
        let r = judge(
            "v2",
            &counts(50, 50, &[], 99_000),
            &Slo::default(),
            1,
            "t".into(),
        );
        assert_eq!(
            r.verdict,
            Verdict::Pass,
            "no objective set: nothing to breach"
        );
    }

    #[test]
    fn counts_of_one_version_are_summed_over_variants_and_routers() {
        let series = |version: &str, variant: &str, requests| {
            SeriesSummary::new(
                SeriesKey {
                    model: "m".into(),
                    version: version.into(),
                    variant: variant.into(),
                },
                counts(requests, 1, &[], 10),
            )
        };
        let a = Summary {
            window_seconds: 30,
            bucket_bounds_ms: vec![],
            series: vec![series("v1", "", 10), series("v2", "", 3)],
            held: [("m".to_string(), 2)].into(),
        };
        let b = Summary {
            window_seconds: 30,
            bucket_bounds_ms: vec![],
            series: vec![series("v2", "x", 4)],
            held: [("m".to_string(), 1), ("n".to_string(), 5)].into(),
        };
        let merged = Summary::merge(&[a, b]);
        let c = version_counts(&merged, "m", "v2", None);
        assert_eq!((c.requests, c.errors), (7, 2));
        assert_eq!(c.latency.count, 7);
        assert_eq!(version_counts(&merged, "m", "v2", Some("x")).requests, 4);
        assert_eq!(version_counts(&merged, "other", "v2", None).requests, 0);
        assert_eq!(merged.held, [("m".into(), 3), ("n".into(), 5)].into());
    }
}
