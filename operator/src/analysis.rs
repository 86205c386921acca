//! Judging a version by the router's statistics: the pure part of canary analysis, and the
//! per-variant numbers of an experiment.

use ferry_contract::stats::{Counts, SeriesKey, SeriesSummary, Summary};
use ferry_crds::{
    AnalysisResult, AnalysisRule, Baseline, ComparisonMethod, Numbers, Slo, VariantStats, Verdict,
};

use crate::verdict;

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
    /// The routers' counts behind the numbers (not from Prometheus): what the statistical
    /// comparison tests.
    pub counts: Option<Counts>,
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
            counts: Some(counts.clone()),
        }
    }
}

impl Measured {
    /// The numbers as status shows them (finite, two decimals).
    pub fn numbers(&self, version: &str) -> Numbers {
        Numbers {
            version: version.to_string(),
            requests: self.requests.min(i64::MAX as u64) as i64,
            ttft_p95_ms: shown(self.ttft_p95_ms),
            latency_p95_ms: shown(self.latency_p95_ms),
            inter_token_p95_ms: shown(self.inter_token_p95_ms),
            error_rate_percent: shown(self.error_rate_percent),
        }
    }
}

/// What a canary is judged against: the SLO, and (unless turned off) the stable's numbers with
/// the tolerances of `canary.analysis.baseline`.
pub struct Objectives<'a> {
    pub slo: &'a Slo,
    pub baseline: Option<(&'a Numbers, &'a Baseline)>,
    /// The stable's counts over the same window, for `ComparisonMethod::Statistical`.
    pub stable_counts: Option<&'a Counts>,
}

/// The verdict on `version` from the routers' counts (see [`judge_measured`]).
pub fn judge(
    version: &str,
    counts: &Counts,
    objectives: &Objectives,
    min_requests: i32,
    time: String,
) -> AnalysisResult {
    let measured = Measured::from_counts(counts);
    judge_measured(version, &measured, objectives, min_requests, time, "router")
}

/// The verdict on `version`. No verdict without evidence: `Inconclusive` below `min_requests`, when
/// a set objective has no data (e.g. an inter-token objective with no streams), or when the
/// baseline (the stable) has fewer than `min_requests`; `Fail` when any objective is breached —
/// an SLO limit, or the baseline's number plus its tolerance (the reason names each breach:
/// metric, value, limit, requests); else `Pass`.
pub fn judge_measured(
    version: &str,
    m: &Measured,
    objectives: &Objectives,
    min_requests: i32,
    time: String,
    source: &str,
) -> AnalysisResult {
    let requests = m.requests.min(i64::MAX as u64) as i64;
    let slo = objectives.slo;
    let metrics = [
        (
            "ttft p95",
            m.ttft_p95_ms,
            slo.ttft_p95_ms.map(f64::from),
            " ms",
        ),
        (
            "latency p95",
            m.latency_p95_ms,
            slo.latency_p95_ms.map(f64::from),
            " ms",
        ),
        (
            "inter-token p95",
            m.inter_token_p95_ms,
            slo.inter_token_p95_ms.map(f64::from),
            " ms",
        ),
        (
            "error rate",
            m.error_rate_percent,
            slo.error_rate_percent,
            "%",
        ),
    ];
    let (mut breaches, mut missing, mut rules) = (Vec::new(), Vec::new(), Vec::new());
    for (what, value, limit, unit) in metrics {
        match (value, limit) {
            (Some(value), Some(limit)) if value > limit => {
                breaches.push(format!(
                    "{what} {}{unit} > {}{unit} over {requests} requests",
                    round(value),
                    round(limit)
                ));
                push_rule(&mut rules, AnalysisRule::Slo);
            }
            (None, Some(limit)) => missing.push(format!(
                "no {what} data for the objective {}{unit}",
                round(limit)
            )),
            _ => {}
        }
    }
    let prometheus = source == "prometheus";
    let method = |t: &Baseline| t.method(prometheus);
    let statistical = objectives
        .baseline
        .filter(|(_, t)| t.enabled && method(t) == ComparisonMethod::Statistical);
    let mut tested = Vec::new();
    if let Some((base, tolerance)) = statistical {
        match (m.counts.as_ref(), objectives.stable_counts) {
            (Some(canary), Some(stable)) => {
                for t in statistical_tests(canary, stable, tolerance, min_requests) {
                    match t.call {
                        verdict::Call::Worse => {
                            breaches.push(format!("{} vs stable {}", describe(&t), base.version));
                            push_rule(&mut rules, AnalysisRule::Stable);
                        }
                        verdict::Call::KeepCollecting => missing.push(format!(
                            "{}: keep collecting ({} and {} requests of the {} needed)",
                            t.metric, t.canary, t.stable, t.needed
                        )),
                        verdict::Call::NotWorse => tested.push(describe(&t)),
                    }
                }
            }
            // After a promotion the stable takes no traffic: nothing to test against.
            (Some(_), None) => {}
            (None, _) => missing.push(
                "no histograms to compare with the stable (baseline.method Statistical reads the routers)"
                    .to_string(),
            ),
        }
    }
    if let Some((base, tolerance)) = objectives
        .baseline
        .filter(|(_, t)| t.enabled && method(t) == ComparisonMethod::Threshold)
    {
        if base.requests < i64::from(min_requests) {
            missing.push(format!(
                "stable {} had {} requests in the window, fewer than minRequests {min_requests}",
                base.version, base.requests
            ));
        } else {
            let grow = 1.0 + f64::from(tolerance.latency_increase_percent) / 100.0;
            let slack = f64::from(tolerance.min_increase_ms);
            for (what, value, of_base) in [
                ("ttft p95", m.ttft_p95_ms, base.ttft_p95_ms),
                ("latency p95", m.latency_p95_ms, base.latency_p95_ms),
                (
                    "inter-token p95",
                    m.inter_token_p95_ms,
                    base.inter_token_p95_ms,
                ),
            ] {
                if let (Some(value), Some(of_base)) = (value, of_base)
                    && value > of_base * grow
                    && value - of_base >= slack
                {
                    breaches.push(format!(
                        "{what} {} ms > stable {} {} ms + {}% over {requests} requests",
                        round(value),
                        base.version,
                        round(of_base),
                        tolerance.latency_increase_percent
                    ));
                    push_rule(&mut rules, AnalysisRule::Stable);
                }
            }
            if let (Some(value), Some(of_base)) = (m.error_rate_percent, base.error_rate_percent)
                && value > of_base + tolerance.error_rate_points
            {
                breaches.push(format!(
                    "error rate {}% > stable {} {}% + {} points over {requests} requests",
                    round(value),
                    base.version,
                    round(of_base),
                    round(tolerance.error_rate_points)
                ));
                push_rule(&mut rules, AnalysisRule::Stable);
            }
        }
    }
    let (verdict, reason) = if requests < i64::from(min_requests) {
        (
            Verdict::Inconclusive,
            format!("{requests} requests in the window, fewer than minRequests {min_requests}"),
        )
    } else if !breaches.is_empty() {
        (Verdict::Fail, breaches.join("; "))
    } else if !missing.is_empty() {
        (Verdict::Inconclusive, missing.join("; "))
    } else {
        let compared = match objectives.baseline.filter(|(_, t)| t.enabled) {
            Some((b, t)) if method(t) == ComparisonMethod::Statistical && !tested.is_empty() => {
                format!(
                    ", not worse than stable {} beyond the tolerances at {}% confidence ({})",
                    b.version,
                    round(t.confidence_percent),
                    tested.join("; ")
                )
            }
            Some((_, t)) if method(t) == ComparisonMethod::Statistical => {
                ", no comparison with the stable (it takes no traffic since the promotion)"
                    .to_string()
            }
            Some((b, _)) => format!(", no worse than stable {} beyond the tolerances", b.version),
            None => String::new(),
        };
        (
            Verdict::Pass,
            format!("every objective held over {requests} requests{compared}"),
        )
    };
    let numbers = m.numbers(version);
    AnalysisResult {
        time,
        version: version.to_string(),
        requests,
        ttft_p95_ms: numbers.ttft_p95_ms,
        latency_p95_ms: numbers.latency_p95_ms,
        inter_token_p95_ms: numbers.inter_token_p95_ms,
        error_rate_percent: numbers.error_rate_percent,
        source: Some(source.to_string()),
        baseline: objectives
            .baseline
            .filter(|(_, t)| t.enabled)
            .map(|(b, _)| b.clone()),
        failed_rules: if verdict == Verdict::Fail {
            rules
        } else {
            Vec::new()
        },
        verdict,
        reason: Some(reason),
    }
}

/// The statistical comparison of the canary's counts with the stable's: the latencies with data
/// in either version, and the error rate, sharing the confidence's false-failure budget.
fn statistical_tests(
    canary: &Counts,
    stable: &Counts,
    tolerance: &Baseline,
    min_requests: i32,
) -> Vec<verdict::Test> {
    let latencies: Vec<_> = [
        ("ttft", &canary.ttft, &stable.ttft),
        ("inter-token", &canary.inter_token, &stable.inter_token),
        ("latency", &canary.latency, &stable.latency),
    ]
    .into_iter()
    // Inter-token latency exists only for streams: a window without any tests nothing there.
    .filter(|(_, c, s)| c.count + s.count > 0)
    .collect();
    let rule = verdict::Rule {
        latency_tolerance_percent: f64::from(tolerance.latency_increase_percent),
        error_rate_points: tolerance.error_rate_points,
        confidence: tolerance.confidence_percent / 100.0,
        metrics: latencies.len() as u32 + 1,
        min_requests: min_requests.max(0) as u64,
        required: tolerance.required_requests.map(|n| n.max(0) as u64),
    };
    let mut tests: Vec<_> = latencies
        .into_iter()
        .map(|(metric, c, s)| rule.latency(metric, c, s))
        .collect();
    tests.push(rule.error_rate(
        (canary.errors, canary.requests),
        (stable.errors, stable.requests),
    ));
    tests
}

/// A test as the reason says it: the estimate, the p-value, the requests.
fn describe(t: &verdict::Test) -> String {
    if t.metric == "error rate" {
        format!(
            "error rate {:+.2} points ({:+.2} to {:+.2}; p = {:.3}) over {}/{} requests",
            t.estimate, t.interval.0, t.interval.1, t.p_value, t.canary, t.stable
        )
    } else {
        format!(
            "{} P(canary slower than stable + tolerance) = {:.2} ({:.2} to {:.2}; p = {:.3}) \
             over {}/{} requests",
            t.metric, t.estimate, t.interval.0, t.interval.1, t.p_value, t.canary, t.stable
        )
    }
}

fn push_rule(rules: &mut Vec<AnalysisRule>, rule: AnalysisRule) {
    if !rules.contains(&rule) {
        rules.push(rule);
    }
}

/// Status fields carry finite numbers only (a p95 in the +Inf bucket is in the reason).
fn shown(v: Option<f64>) -> Option<f64> {
    v.filter(|v| v.is_finite()).map(round)
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
        baseline: None,
        verdict: Verdict::Inconclusive,
        reason: Some(format!("no metrics: {why}")),
        failed_rules: Vec::new(),
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
    use ferry_contract::stats::SeriesKey;
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

    fn only(slo: &Slo) -> Objectives<'_> {
        Objectives {
            slo,
            baseline: None,
            stable_counts: None,
        }
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
        let r = judge("v2", &counts(5, 5, &[], 10), &only(&slo()), 20, "t".into());
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
            &only(&slo()),
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
            &only(&slo()),
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
    fn within_objectives_passes_and_an_objective_without_data_is_inconclusive() {
        let r = judge(
            "v2",
            &counts(50, 0, &[100; 50], 200),
            &only(&slo()),
            20,
            "t".into(),
        );
        assert_eq!(r.verdict, Verdict::Pass);
        // A TTFT objective with no TTFT samples is no evidence either way: inconclusive.
        let r = judge(
            "v2",
            &counts(50, 0, &[], 200),
            &only(&slo()),
            20,
            "t".into(),
        );
        assert_eq!(r.verdict, Verdict::Inconclusive);
        assert_eq!(r.ttft_p95_ms, None);
        assert_eq!(
            r.reason.as_deref(),
            Some("no ttft p95 data for the objective 500 ms")
        );
        let r = judge(
            "v2",
            &counts(50, 50, &[], 99_000),
            &only(&Slo::default()),
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

    fn stable(requests: i64, latency_ms: f64, error_rate: f64) -> Numbers {
        Numbers {
            version: "v1".into(),
            requests,
            ttft_p95_ms: Some(latency_ms / 2.0),
            latency_p95_ms: Some(latency_ms),
            inter_token_p95_ms: None,
            error_rate_percent: Some(error_rate),
        }
    }

    /// Latencies spread like a service's: `n` requests from `base_ms` to about 3 × `base_ms`.
    fn spread(n: u64, errors: u64, base_ms: f64) -> Counts {
        let mut c = Counts {
            requests: n,
            errors,
            ..Default::default()
        };
        for i in 0..n {
            let ms = base_ms * (1.0 + 2.0 * ((i * 7919) % n) as f64 / n as f64);
            c.latency.observe(Duration::from_secs_f64(ms / 1e3));
            c.ttft.observe(Duration::from_secs_f64(ms / 4e3));
        }
        c
    }

    #[test]
    fn the_statistical_comparison_keeps_collecting_then_passes_the_same_and_fails_the_slower() {
        let tolerance = Baseline {
            method: Some(ComparisonMethod::Statistical),
            latency_increase_percent: 10,
            ..Baseline::default()
        };
        let none = Slo::default();
        let judged = |canary: &Counts, stable_counts: &Counts| {
            let base = Measured::from_counts(stable_counts).numbers("v1");
            judge(
                "v2",
                canary,
                &Objectives {
                    slo: &none,
                    baseline: Some((&base, &tolerance)),
                    stable_counts: Some(stable_counts),
                },
                3,
                "t".into(),
            )
        };
        // 30 requests each of the same latencies: not enough to tell 20% apart — keep collecting.
        let r = judged(&spread(30, 0, 400.0), &spread(30, 0, 400.0));
        assert_eq!(r.verdict, Verdict::Inconclusive, "{:?}", r.reason);
        assert!(
            r.reason.as_ref().unwrap().contains("keep collecting"),
            "{:?}",
            r.reason
        );
        // Enough of them: the same latencies pass, and the reason says the numbers.
        let r = judged(&spread(3000, 0, 400.0), &spread(3000, 0, 400.0));
        assert_eq!(r.verdict, Verdict::Pass, "{:?}", r.reason);
        let reason = r.reason.unwrap();
        assert!(
            reason.contains("not worse than stable v1 beyond the tolerances at 95% confidence")
                && reason.contains("p = "),
            "{reason}"
        );
        // 40% slower in every request: failed as soon as it is significant, by the comparison.
        let r = judged(&spread(60, 0, 560.0), &spread(60, 0, 400.0));
        assert_eq!(r.verdict, Verdict::Fail, "{:?}", r.reason);
        assert_eq!(r.failed_rules, [AnalysisRule::Stable]);
        assert!(r.reason.unwrap().contains("vs stable v1"));
    }

    /// `confidencePercent` and `requiredRequests` reach the rule: the same 300 requests each
    /// keep collecting at the defaults, and pass with a lower confidence or a set requirement.
    #[test]
    fn confidence_and_required_requests_change_what_a_pass_needs() {
        let none = Slo::default();
        let same = spread(300, 0, 400.0);
        let base = Measured::from_counts(&same).numbers("v1");
        let judged = |tolerance: Baseline| {
            judge(
                "v2",
                &same,
                &Objectives {
                    slo: &none,
                    baseline: Some((&base, &tolerance)),
                    stable_counts: Some(&same),
                },
                3,
                "t".into(),
            )
            .verdict
        };
        let strict = Baseline {
            latency_increase_percent: 10,
            ..Baseline::default()
        };
        assert_eq!(judged(strict.clone()), Verdict::Inconclusive);
        let loose = Baseline {
            confidence_percent: 60.0,
            ..strict.clone()
        };
        assert_eq!(judged(loose), Verdict::Pass);
        let required = Baseline {
            required_requests: Some(200),
            ..strict
        };
        assert_eq!(judged(required), Verdict::Pass);
    }

    #[test]
    fn without_an_slo_the_canary_is_judged_against_the_stable_with_tolerances() {
        let tolerance = Baseline {
            method: Some(ComparisonMethod::Threshold),
            ..Baseline::default()
        };
        let none = Slo::default();
        let judged = |canary: &Counts, base: &Numbers| {
            judge(
                "v2",
                canary,
                &Objectives {
                    slo: &none,
                    baseline: Some((base, &tolerance)),
                    stable_counts: None,
                },
                20,
                "t".into(),
            )
        };
        // As fast as the stable: pass, and the status shows what it was compared with.
        let r = judged(&counts(40, 0, &[], 400), &stable(200, 400.0, 0.0));
        assert_eq!(r.verdict, Verdict::Pass, "{:?}", r.reason);
        assert_eq!(r.baseline.as_ref().unwrap().version, "v1");
        assert!(
            r.reason
                .unwrap()
                .ends_with("no worse than stable v1 beyond the tolerances")
        );
        // 2.5 s against the stable's 0.4 s: more than 50% and 50 ms slower.
        let r = judged(&counts(40, 0, &[], 2500), &stable(200, 400.0, 0.0));
        assert_eq!(r.verdict, Verdict::Fail);
        let reason = r.reason.unwrap();
        assert!(
            reason.starts_with("latency p95 ")
                && reason.contains(" ms > stable v1 400 ms + 50% over 40 requests"),
            "{reason}"
        );
        // Small numbers: 30 ms against 10 ms is +200% but under the 50 ms noise floor.
        let r = judged(&counts(40, 0, &[], 30), &stable(200, 10.0, 0.0));
        assert_eq!(r.verdict, Verdict::Pass, "{:?}", r.reason);
        // Errors: 10% against the stable's 0.5% is more than 1 point worse.
        let r = judged(&counts(40, 4, &[], 400), &stable(200, 400.0, 0.5));
        assert_eq!(r.verdict, Verdict::Fail);
        assert!(
            r.reason
                .unwrap()
                .contains("error rate 10% > stable v1 0.5% + 1 points over 40 requests")
        );
        // A stable with too few requests is no baseline: inconclusive, not a pass.
        let r = judged(&counts(40, 0, &[], 400), &stable(3, 400.0, 0.0));
        assert_eq!(r.verdict, Verdict::Inconclusive);
        assert_eq!(
            r.reason.as_deref(),
            Some("stable v1 had 3 requests in the window, fewer than minRequests 20")
        );
    }
}
