//! Canary against stable with stated error rates. Pure.
//!
//! Each latency (TTFT, inter-token, end-to-end) is compared over the same window with a one-sided
//! Mann-Whitney test of "the canary is slower than the stable allows": the canary's latencies
//! against the stable's stretched by the tolerance, `P(canary > (1 + tolerance) × stable)`, which
//! is ½ when the canary is exactly at the tolerance. The error rate gets a one-sided
//! two-proportion test of "canary's rate > stable's + tolerance points". The routers' latency
//! histograms (fixed buckets, merged across replicas) are the data; inside a bucket values are
//! taken as spread evenly.
//!
//! What a verdict promises, per analysis, at confidence `c`:
//! - a canary within the tolerances fails with probability at most `1 − c` (the metrics share
//!   that budget: each is tested at `(1 − c) / metrics`);
//! - once each version has [`Test::needed`] requests, a canary whose every latency is twice the
//!   tolerance slower than the stable's (at the stable's own spread) is caught with probability
//!   at least `c`; an error rate twice the tolerance above the stable's likewise after its own
//!   `needed` (reported; the error rate does not wait for it).
//!
//! Below [`FLOOR`] requests (or `min_requests`) there is no call at all. A canary significantly
//! worse is failed from there on; "not worse" waits for `needed` requests, and until then the
//! verdict is "keep collecting". A regression only in the tail (the p95 slower, the median not) moves the
//! distribution less, and needs more requests to be caught than a uniform slowdown.

use ferry_contract::stats::{BUCKET_BOUNDS_MS, Histogram};

/// What a comparison concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// Worse than the tolerance allows, at the confidence.
    Worse,
    /// Not shown worse with enough requests to have caught twice the tolerance.
    NotWorse,
    /// Too few requests yet.
    KeepCollecting,
}

/// One metric's test.
#[derive(Clone, Debug, PartialEq)]
pub struct Test {
    pub metric: &'static str,
    pub call: Call,
    /// Requests of each version in the test.
    pub canary: u64,
    pub stable: u64,
    /// Latencies: `P(canary > (1 + tolerance) × stable)` (½ at the tolerance). Error rate: the
    /// canary's rate minus the stable's, in points.
    pub estimate: f64,
    /// The one-sided p-value of "no worse than the tolerance".
    pub p_value: f64,
    /// The estimate's interval at the confidence (two-sided; the normal approximation).
    pub interval: (f64, f64),
    /// Requests each version needs before a call is made.
    pub needed: u64,
}

impl Test {
    /// No call yet: too few requests.
    fn collecting(metric: &'static str, canary: u64, stable: u64, needed: u64) -> Self {
        Test {
            metric,
            call: Call::KeepCollecting,
            canary,
            stable,
            estimate: f64::NAN,
            p_value: f64::NAN,
            interval: (f64::NAN, f64::NAN),
            needed,
        }
    }
}

/// The settings of a verdict.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rule {
    /// Percent by which the canary's latencies may exceed the stable's.
    pub latency_tolerance_percent: f64,
    /// Points by which the canary's error rate may exceed the stable's.
    pub error_rate_points: f64,
    /// Confidence, e.g. 0.95.
    pub confidence: f64,
    /// Metrics sharing the false-failure budget.
    pub metrics: u32,
    /// Requests each version needs at least, whatever the derivation says.
    pub min_requests: u64,
    /// Requests each version needs before "not worse", set by the user instead of derived.
    pub required: Option<u64>,
}

/// Fewest requests per version for any call: below it the normal approximation is not trusted.
pub const FLOOR: u64 = 20;
/// The most requests a derivation asks for (a stable without spread would ask for nothing; one
/// with a huge spread for more than any window holds).
pub const CEILING: u64 = 100_000;

impl Rule {
    /// The one-sided level each metric is tested at.
    fn alpha(&self) -> f64 {
        (1.0 - self.confidence).clamp(1e-9, 0.5) / f64::from(self.metrics.max(1))
    }

    /// Fewest requests per version for any call.
    fn floor(&self) -> u64 {
        self.min_requests.max(FLOOR)
    }

    /// The z of the test's level plus the z of the power (the confidence): what the requests a
    /// call needs are sized by.
    fn z_power(&self) -> f64 {
        normal_quantile(1.0 - self.alpha()) + normal_quantile(self.confidence)
    }

    /// The half-width factor of a two-sided interval at the confidence.
    fn z_interval(&self) -> f64 {
        normal_quantile(0.5 + self.confidence.clamp(0.5, 0.999_999) / 2.0)
    }

    fn scale(&self) -> f64 {
        1.0 + self.latency_tolerance_percent.max(0.0) / 100.0
    }

    /// Compares one latency of the canary with the stable's.
    pub fn latency(&self, metric: &'static str, canary: &Histogram, stable: &Histogram) -> Test {
        let needed = self.needed_latency(stable);
        let (n_c, n_s) = (canary.count, stable.count);
        if n_c.min(n_s) < self.floor() {
            return Test::collecting(metric, n_c, n_s, needed);
        }
        let p = p_greater(canary, 1.0, stable, self.scale());
        let (a, b) = (n_c as f64, n_s as f64);
        let se = ((a + b + 1.0) / (12.0 * a * b)).sqrt();
        let z = (p - 0.5) / se;
        let p_value = 1.0 - normal_cdf(z);
        // Worse is said as soon as it is significant; not worse only with the requests that
        // would have caught twice the tolerance.
        let call = if p_value < self.alpha() {
            Call::Worse
        } else if n_c.min(n_s) < needed {
            Call::KeepCollecting
        } else {
            Call::NotWorse
        };
        Test {
            metric,
            call,
            canary: n_c,
            stable: n_s,
            estimate: p,
            p_value,
            interval: (
                (p - self.z_interval() * se).max(0.0),
                (p + self.z_interval() * se).min(1.0),
            ),
            needed,
        }
    }

    /// Requests per version that catch, with the confidence as power, a canary twice the
    /// tolerance slower than this stable (every latency stretched; the stable's own spread).
    pub fn needed_latency(&self, stable: &Histogram) -> u64 {
        let floor = self.floor();
        if let Some(required) = self.required {
            return required.max(floor);
        }
        if stable.count == 0 {
            return floor;
        }
        let twice = 1.0 + 2.0 * (self.scale() - 1.0);
        // The Mann-Whitney estimate a canary twice the tolerance slower would show.
        let effect = p_greater(stable, twice, stable, self.scale()) - 0.5;
        let z = self.z_power();
        // se of the estimate with n requests each: sqrt((2n + 1) / (12 n²)) ≈ 1 / sqrt(6 n).
        let n = if effect > 0.0 {
            (z / effect).powi(2) / 6.0
        } else {
            f64::INFINITY
        };
        (n.ceil().min(CEILING as f64) as u64).max(floor)
    }

    /// Compares the canary's error rate with the stable's. Unlike a latency, it waits only for
    /// [`FLOOR`] (or `min_requests`): an excess that is significant on few requests is evidence
    /// enough, and the requests that would catch twice the tolerance (`needed`, reported) run to
    /// thousands at a tolerance of a point.
    pub fn error_rate(&self, canary: (u64, u64), stable: (u64, u64)) -> Test {
        let ((e_c, n_c), (e_s, n_s)) = (canary, stable);
        let needed = self.needed_errors(n_s.max(1), e_s);
        if n_c.min(n_s) < self.floor() {
            return Test::collecting("error rate", n_c, n_s, needed);
        }
        let rate = |e: u64, n: u64| e as f64 / n as f64;
        // Smoothed rates for the variance, so that no errors at all still has some.
        let smooth = |e: u64, n: u64| (e as f64 + 0.5) / (n as f64 + 1.0);
        let var = |e: u64, n: u64| {
            let r = smooth(e, n);
            r * (1.0 - r) / n as f64
        };
        let difference = rate(e_c, n_c) - rate(e_s, n_s);
        let se = (var(e_c, n_c) + var(e_s, n_s)).sqrt();
        let z = (difference - self.error_rate_points / 100.0) / se;
        let p_value = 1.0 - normal_cdf(z);
        Test {
            metric: "error rate",
            call: if p_value < self.alpha() {
                Call::Worse
            } else {
                Call::NotWorse
            },
            canary: n_c,
            stable: n_s,
            estimate: difference * 100.0,
            p_value,
            interval: (
                (difference - self.z_interval() * se) * 100.0,
                (difference + self.z_interval() * se) * 100.0,
            ),
            needed,
        }
    }

    /// Requests per version that catch a canary erring twice the tolerance more than the stable.
    pub fn needed_errors(&self, n_s: u64, e_s: u64) -> u64 {
        let floor = self.floor();
        let tolerance = self.error_rate_points.max(0.0) / 100.0;
        if tolerance <= 0.0 {
            return floor;
        }
        let base = (e_s as f64 + 0.5) / (n_s as f64 + 1.0);
        let worse = (base + 2.0 * tolerance).min(1.0);
        let z = self.z_power();
        let var = base * (1.0 - base) + worse * (1.0 - worse);
        let n = var * (z / tolerance).powi(2);
        (n.ceil().min(CEILING as f64) as u64).max(floor)
    }
}

/// The verdict over every test: worse if any is, keep collecting if any needs more, else not worse.
pub fn overall(tests: &[Test]) -> Call {
    if tests.iter().any(|t| t.call == Call::Worse) {
        Call::Worse
    } else if tests.iter().any(|t| t.call == Call::KeepCollecting) {
        Call::KeepCollecting
    } else {
        Call::NotWorse
    }
}

/// The bucket `i` of a histogram as a range of milliseconds; the last bucket (above every bound)
/// as the last bound itself.
fn bucket(i: usize) -> (f64, f64) {
    match BUCKET_BOUNDS_MS.get(i) {
        Some(&upper) => (if i == 0 { 0.0 } else { BUCKET_BOUNDS_MS[i - 1] }, upper),
        None => {
            let last = *BUCKET_BOUNDS_MS.last().expect("bounds");
            (last, last)
        }
    }
}

/// `P(scale_a · A > scale_b · B)` for A and B drawn from the histograms (independently), values
/// spread evenly inside a bucket, ties counted half.
pub fn p_greater(a: &Histogram, scale_a: f64, b: &Histogram, scale_b: f64) -> f64 {
    if a.count == 0 || b.count == 0 {
        return 0.5;
    }
    let mut total = 0.0;
    for (i, &n_a) in a.buckets.iter().enumerate() {
        if n_a == 0 {
            continue;
        }
        let (a1, a2) = bucket(i);
        let (a1, a2) = (a1 * scale_a, a2 * scale_a);
        for (j, &n_b) in b.buckets.iter().enumerate() {
            if n_b == 0 {
                continue;
            }
            let (b1, b2) = bucket(j);
            total += (n_a * n_b) as f64 * uniform_greater((a1, a2), (b1 * scale_b, b2 * scale_b));
        }
    }
    total / (a.count as f64 * b.count as f64)
}

/// `P(U > V)` for U even on `u` and V even on `v` (either may be a single point).
fn uniform_greater(u: (f64, f64), v: (f64, f64)) -> f64 {
    let (u1, u2) = u;
    let (v1, v2) = v;
    // The integral of V's distribution function up to x.
    let g = |x: f64| {
        if v2 <= v1 {
            (x - v1).max(0.0)
        } else if x <= v1 {
            0.0
        } else if x < v2 {
            (x - v1).powi(2) / (2.0 * (v2 - v1))
        } else {
            (v2 - v1) / 2.0 + (x - v2)
        }
    };
    if u2 > u1 {
        return ((g(u2) - g(u1)) / (u2 - u1)).clamp(0.0, 1.0);
    }
    // U a single point: V's distribution function there (a tie with a point counts half).
    if v2 <= v1 {
        return if u1 > v1 {
            1.0
        } else if u1 < v1 {
            0.0
        } else {
            0.5
        };
    }
    ((u1 - v1) / (v2 - v1)).clamp(0.0, 1.0)
}

/// The standard normal distribution function.
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// `erfc` (Numerical Recipes' Chebyshev fit, relative error below 1.2e-7).
fn erfc(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let y = t
        * (-x * x - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { y } else { 2.0 - y }
}

/// The standard normal quantile (Acklam's rational approximation, relative error below 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let p = p.clamp(1e-15, 1.0 - 1e-15);
    let low = 0.024_25;
    if p < low {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - low {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -normal_quantile(1.0 - p)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// SplitMix64: seeded, so every run draws the same traffic.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn uniform(&mut self) -> f64 {
            ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }

        fn normal(&mut self) -> f64 {
            let (u, v) = (self.uniform(), self.uniform());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        }
    }

    /// Latencies of one version: log-normal around `median_ms` with log-spread `sigma`.
    #[derive(Clone, Copy)]
    struct Shape {
        median_ms: f64,
        sigma: f64,
    }

    /// A version's traffic: TTFT, inter-token and end-to-end latency, error probability.
    #[derive(Clone, Copy)]
    struct Traffic {
        ttft: Shape,
        inter_token: Shape,
        latency: Shape,
        errors: f64,
    }

    const STABLE: Traffic = Traffic {
        ttft: Shape {
            median_ms: 300.0,
            sigma: 0.5,
        },
        inter_token: Shape {
            median_ms: 40.0,
            sigma: 0.3,
        },
        latency: Shape {
            median_ms: 2500.0,
            sigma: 0.4,
        },
        errors: 0.005,
    };

    struct Window {
        ttft: Histogram,
        inter_token: Histogram,
        latency: Histogram,
        errors: u64,
        requests: u64,
    }

    fn draw(rng: &mut Rng, t: Traffic, n: u64) -> Window {
        let mut w = Window {
            ttft: Histogram::default(),
            inter_token: Histogram::default(),
            latency: Histogram::default(),
            errors: 0,
            requests: n,
        };
        let sample = |rng: &mut Rng, s: Shape| {
            Duration::from_secs_f64(s.median_ms * (s.sigma * rng.normal()).exp() / 1e3)
        };
        for _ in 0..n {
            w.ttft.observe(sample(rng, t.ttft));
            w.inter_token.observe(sample(rng, t.inter_token));
            w.latency.observe(sample(rng, t.latency));
            if rng.uniform() < t.errors {
                w.errors += 1;
            }
        }
        w
    }

    fn rule(tolerance: f64) -> Rule {
        Rule {
            latency_tolerance_percent: tolerance,
            error_rate_points: 1.0,
            confidence: 0.95,
            metrics: 4,
            min_requests: 0,
            required: None,
        }
    }

    fn judge(rule: &Rule, canary: &Window, stable: &Window) -> Call {
        overall(&[
            rule.latency("ttft", &canary.ttft, &stable.ttft),
            rule.latency("inter-token", &canary.inter_token, &stable.inter_token),
            rule.latency("latency", &canary.latency, &stable.latency),
            rule.error_rate(
                (canary.errors, canary.requests),
                (stable.errors, stable.requests),
            ),
        ])
    }

    /// The requests per version the rule asks for before a latency verdict, with the stable's
    /// spread (a large window), and a quarter more: a window's own spread varies.
    fn needed(rule: &Rule, rng: &mut Rng) -> u64 {
        let big = draw(rng, STABLE, 20_000);
        let most = [
            rule.needed_latency(&big.ttft),
            rule.needed_latency(&big.inter_token),
            rule.needed_latency(&big.latency),
        ]
        .into_iter()
        .max()
        .unwrap();
        most + most / 4
    }

    /// Fraction of `runs` analyses, each over fresh windows of `n` requests per version, that
    /// fail the canary.
    fn failure_rate(rule: &Rule, canary: Traffic, n: u64, runs: u32, seed: u64) -> f64 {
        let mut rng = Rng(seed);
        let mut failed = 0;
        for _ in 0..runs {
            let (c, s) = (draw(&mut rng, canary, n), draw(&mut rng, STABLE, n));
            match judge(rule, &c, &s) {
                Call::Worse => failed += 1,
                Call::NotWorse => {}
                Call::KeepCollecting => panic!("{n} requests are fewer than the rule needs"),
            }
        }
        f64::from(failed) / f64::from(runs)
    }

    fn slower_ttft(factor: f64) -> Traffic {
        Traffic {
            ttft: Shape {
                median_ms: STABLE.ttft.median_ms * factor,
                ..STABLE.ttft
            },
            ..STABLE
        }
    }

    #[test]
    fn normal_functions_match_known_values() {
        assert!((normal_cdf(1.959_964) - 0.975).abs() < 1e-6);
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_quantile(0.95) - 1.644_853_6).abs() < 1e-6);
        assert!((normal_quantile(0.0125) + 2.241_402_7).abs() < 1e-6);
    }

    #[test]
    fn the_mann_whitney_estimate_is_a_half_for_equal_histograms_and_moves_with_a_stretch() {
        let mut rng = Rng(7);
        let w = draw(&mut rng, STABLE, 5000);
        assert!((p_greater(&w.ttft, 1.0, &w.ttft, 1.0) - 0.5).abs() < 1e-9);
        let slower = p_greater(&w.ttft, 1.25, &w.ttft, 1.0);
        let faster = p_greater(&w.ttft, 1.0, &w.ttft, 1.25);
        assert!(
            slower > 0.6 && (slower + faster - 1.0).abs() < 1e-9,
            "{slower} {faster}"
        );
    }

    #[test]
    fn the_requests_a_call_needs_can_be_set_and_the_interval_holds_the_estimate() {
        let mut rng = Rng(3);
        let (c, s) = (draw(&mut rng, STABLE, 300), draw(&mut rng, STABLE, 300));
        let derived = rule(10.0).latency("ttft", &c.ttft, &s.ttft);
        assert_eq!(derived.call, Call::KeepCollecting, "{derived:?}");
        let set = Rule {
            required: Some(200),
            ..rule(10.0)
        };
        let t = set.latency("ttft", &c.ttft, &s.ttft);
        assert_eq!((t.call, t.needed), (Call::NotWorse, 200), "{t:?}");
        assert!(
            t.interval.0 < t.estimate && t.estimate < t.interval.1,
            "{t:?}"
        );
    }

    #[test]
    fn too_few_requests_are_no_verdict() {
        let mut rng = Rng(1);
        let (c, s) = (
            draw(&mut rng, slower_ttft(3.0), 10),
            draw(&mut rng, STABLE, 10),
        );
        assert_eq!(judge(&rule(10.0), &c, &s), Call::KeepCollecting);
    }

    /// The table in the note: false failures of identical versions, and how often (and after
    /// how many requests) real regressions are caught, 1,000 seeded analyses each.
    #[test]
    fn a_a_canaries_pass_and_regressions_are_caught_at_the_stated_rates() {
        let default = rule(10.0);
        let mut rng = Rng(42);
        let n = needed(&default, &mut rng);
        let a_a = failure_rate(&default, STABLE, n, 1000, 1);
        let slower_25 = failure_rate(&default, slower_ttft(1.25), n, 1000, 2);
        // A 10% regression is at a 10% tolerance; with a 5% tolerance it is twice that.
        let strict = rule(5.0);
        let n_strict = needed(&strict, &mut rng);
        let slower_10 = failure_rate(&strict, slower_ttft(1.10), n_strict, 1000, 3);
        let a_a_strict = failure_rate(&strict, STABLE, n_strict, 1000, 4);
        println!("verdicts over 1,000 seeded analyses each (confidence 95%, 4 metrics):");
        println!(
            "  tolerance 10%: {n} requests per version; A/A failed {a_a:.3}; TTFT +25% caught {slower_25:.3}"
        );
        println!(
            "  tolerance 5%: {n_strict} requests per version; A/A failed {a_a_strict:.3}; TTFT +10% caught {slower_10:.3}"
        );
        assert!(a_a < 0.05, "A/A canaries failed {a_a}");
        assert!(a_a_strict < 0.05, "A/A canaries failed {a_a_strict}");
        assert!(
            slower_25 >= 0.95,
            "a 25% slower TTFT caught only {slower_25}"
        );
        assert!(
            slower_10 >= 0.95,
            "a 10% slower TTFT caught only {slower_10}"
        );
    }

    /// How a simulated rollout ended.
    #[derive(Debug, PartialEq)]
    enum End {
        Promoted,
        RolledBack,
        NoData,
    }

    /// One rollout step as the operator runs it with the statistical comparison: every analysis
    /// reads everything since the step began (`per_look` more requests per version each time),
    /// the first "not worse" promotes, `failure_limit` failed analyses roll back, and after
    /// `looks` analyses without a call the progress deadline ends it.
    fn rollout(rule: &Rule, canary: Traffic, per_look: u64, looks: u32, rng: &mut Rng) -> End {
        let failure_limit = 2;
        let (mut c, mut s) = (draw(rng, canary, 0), draw(rng, STABLE, 0));
        let mut failed = 0;
        for _ in 0..looks {
            for (window, traffic) in [(&mut c, canary), (&mut s, STABLE)] {
                let more = draw(rng, traffic, per_look);
                window.ttft.merge(&more.ttft);
                window.inter_token.merge(&more.inter_token);
                window.latency.merge(&more.latency);
                window.errors += more.errors;
                window.requests += more.requests;
            }
            match judge(rule, &c, &s) {
                Call::NotWorse => return End::Promoted,
                Call::Worse => {
                    failed += 1;
                    if failed >= failure_limit {
                        return End::RolledBack;
                    }
                }
                Call::KeepCollecting => {}
            }
        }
        End::NoData
    }

    fn rollouts(rule: &Rule, canary: Traffic, per_look: u64, looks: u32, seed: u64) -> [u32; 3] {
        let mut rng = Rng(seed);
        let mut ends = [0; 3];
        for _ in 0..1000 {
            ends[match rollout(rule, canary, per_look, looks, &mut rng) {
                End::Promoted => 0,
                End::RolledBack => 1,
                End::NoData => 2,
            }] += 1;
        }
        ends
    }

    /// 1,000 simulated rollouts each: A/A canaries at the default tolerance (50%) and at 10%,
    /// and a canary 25% slower in TTFT at a 10% tolerance; windows grow by 100 requests per
    /// version per analysis, up to 30 analyses.
    #[test]
    fn simulated_rollouts_promote_a_a_canaries_and_roll_back_regressions() {
        let default = rule(50.0);
        let strict = rule(10.0);
        let a_a = rollouts(&default, STABLE, 100, 30, 11);
        let a_a_strict = rollouts(&strict, STABLE, 100, 30, 12);
        let slower = rollouts(&strict, slower_ttft(1.25), 100, 30, 13);
        // Exactly at the tolerance, with repeated looks at a growing window (not asserted: what
        // the per-analysis budget becomes over a rollout).
        let at = rollouts(&strict, slower_ttft(1.10), 100, 30, 14);
        println!("1,000 rollouts each [promoted, rolled back, no data]:");
        println!("  A/A at the default 50% tolerance: {a_a:?}");
        println!("  A/A at a 10% tolerance: {a_a_strict:?}");
        println!("  TTFT +25% at a 10% tolerance: {slower:?}");
        println!("  TTFT +10% at a 10% tolerance: {at:?}");
        assert!(a_a[1] < 50 && a_a_strict[1] < 50, "{a_a:?} {a_a_strict:?}");
        assert!(
            a_a[0] >= 950 && a_a_strict[0] >= 950,
            "{a_a:?} {a_a_strict:?}"
        );
        assert!(slower[1] >= 950, "{slower:?}");
    }

    /// At exactly the tolerance the canary is within it: it fails at most 1 − confidence of the
    /// time (the budget all four metrics share), whatever the spread.
    #[test]
    fn a_canary_at_the_tolerance_fails_at_most_the_stated_rate() {
        let default = rule(10.0);
        let mut rng = Rng(9);
        let n = needed(&default, &mut rng);
        let at = failure_rate(&default, slower_ttft(1.10), n, 1000, 5);
        println!("TTFT exactly 10% slower at a 10% tolerance: failed {at:.3} of 1,000");
        assert!(at <= 0.05 + 0.02, "{at}");
    }

    #[test]
    fn error_rates_are_compared_with_their_tolerance() {
        let r = rule(10.0);
        let needed = r.error_rate((0, 0), (5, 1000)).needed;
        assert!(needed >= FLOOR);
        let n = needed.max(2000);
        let worse = r.error_rate((n * 4 / 100, n), (n / 200, n));
        assert_eq!(worse.call, Call::Worse, "{worse:?}");
        let same = r.error_rate((n / 200, n), (n / 200, n));
        assert_eq!(same.call, Call::NotWorse, "{same:?}");
    }
}
