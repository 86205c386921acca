//! Per-`{model, version, variant}` request statistics: Prometheus series on `/metrics`, and
//! windowed summaries on `/internal/stats` that the operator judges canaries by.
//!
//! Both use the same fixed histogram buckets, so histograms from several router replicas merge by
//! adding bucket counts ([`Summary::merge`]) and percentiles are computed after the merge.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use ferry_contract::stats::{
    BUCKET_BOUNDS_MS, Counts, Histogram, MAX_WINDOW, Percentiles, SeriesKey, SeriesSummary, Summary,
};
use prometheus::{CounterVec, HistogramOpts, HistogramVec, IntGaugeVec, Opts, Registry};

/// What one finished request contributes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// HTTP status sent to the client.
    pub status: u16,
    /// 5xx, or an error after streaming began.
    pub failed: bool,
    pub latency: Duration,
    /// Time to the first generated output (`ferry_contract::ttft`): the first stream event that
    /// carries it, or for a whole answer the time to the pod plus the pod's own TTFT header.
    pub ttft: Option<Duration>,
    /// Gaps between consecutive stream events that carry generated output.
    pub inter_token: Vec<Duration>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Counts one finished request into `counts`.
fn add(counts: &mut Counts, o: &Outcome) {
    counts.requests += 1;
    counts.errors += u64::from(o.failed);
    counts.prompt_tokens += o.prompt_tokens;
    counts.completion_tokens += o.completion_tokens;
    counts.latency.observe(o.latency);
    if let Some(t) = o.ttft {
        counts.ttft.observe(t);
    }
    for gap in &o.inter_token {
        counts.inter_token.observe(*gap);
    }
}

/// One series: its Prometheus handles (looked up once) and its per-second slots, oldest first.
struct Series {
    requests: HashMap<u16, prometheus::core::GenericCounter<prometheus::core::AtomicF64>>,
    errors: prometheus::Counter,
    prompt_tokens: prometheus::Counter,
    completion_tokens: prometheus::Counter,
    ttft: prometheus::Histogram,
    latency: prometheus::Histogram,
    inter_token: prometheus::Histogram,
    slots: VecDeque<(u64, Counts)>,
}

impl Series {
    fn new(stats: &Stats, key: &SeriesKey) -> Self {
        let labels = [key.model.as_str(), &key.version, &key.variant];
        let tokens = |kind| {
            stats
                .tokens
                .with_label_values(&[labels[0], labels[1], labels[2], kind])
        };
        Self {
            requests: HashMap::new(),
            errors: stats.errors.with_label_values(&labels),
            prompt_tokens: tokens("prompt"),
            completion_tokens: tokens("completion"),
            ttft: stats.ttft.with_label_values(&labels),
            latency: stats.latency.with_label_values(&labels),
            inter_token: stats.inter_token.with_label_values(&labels),
            slots: VecDeque::new(),
        }
    }

    fn requests_with_code(
        &mut self,
        stats: &Stats,
        key: &SeriesKey,
        status: u16,
    ) -> &prometheus::Counter {
        self.requests.entry(status).or_insert_with(|| {
            stats.requests.with_label_values(&[
                key.model.as_str(),
                &key.version,
                &key.variant,
                &status.to_string(),
            ])
        })
    }
}

/// The router's statistics: Prometheus series plus the windowed store.
pub struct Stats {
    windows: Mutex<HashMap<SeriesKey, Series>>,
    held: Mutex<BTreeMap<String, u64>>,
    held_gauge: IntGaugeVec,
    requests: CounterVec,
    errors: CounterVec,
    tokens: CounterVec,
    ttft: HistogramVec,
    latency: HistogramVec,
    inter_token: HistogramVec,
}

const LABELS: &[&str] = &["model", "version", "variant"];

impl Stats {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let seconds: Vec<f64> = BUCKET_BOUNDS_MS.iter().map(|ms| ms / 1e3).collect();
        let histogram = |name: &str, help: &str| -> prometheus::Result<HistogramVec> {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(seconds.clone()),
                LABELS,
            )?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let counter = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<CounterVec> {
            let c = CounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let held_gauge = IntGaugeVec::new(
            Opts::new(
                "ferry_router_held_requests",
                "Requests waiting for a ready pod of their model (cold start, scale from zero).",
            ),
            &["model"],
        )?;
        registry.register(Box::new(held_gauge.clone()))?;
        Ok(Self {
            windows: Mutex::new(HashMap::new()),
            held: Mutex::new(BTreeMap::new()),
            held_gauge,
            requests: counter(
                "ferry_router_requests_total",
                "Requests routed to a version, by HTTP status sent to the client.",
                &["model", "version", "variant", "code"],
            )?,
            errors: counter(
                "ferry_router_errors_total",
                "Requests that failed: 5xx, or an error after streaming began.",
                LABELS,
            )?,
            tokens: counter(
                "ferry_router_tokens_total",
                "Tokens reported in responses' usage, by kind (prompt, completion).",
                &["model", "version", "variant", "kind"],
            )?,
            ttft: histogram(
                "ferry_router_time_to_first_token_seconds",
                "Time from the request to the first streamed data event.",
            )?,
            latency: histogram(
                "ferry_router_request_duration_seconds",
                "Time from the request to the end of the response.",
            )?,
            inter_token: histogram(
                "ferry_router_inter_token_latency_seconds",
                "Time between consecutive streamed data events.",
            )?,
        })
    }

    pub fn record(&self, key: &SeriesKey, outcome: &Outcome) {
        self.record_at(key, outcome, unix_seconds());
    }

    fn record_at(&self, key: &SeriesKey, o: &Outcome, second: u64) {
        // One lookup per request: the series' metric handles live next to its window slots.
        let mut windows = self.windows.lock().unwrap();
        let series = match windows.get_mut(key) {
            Some(series) => series,
            None => windows.entry(key.clone()).or_insert(Series::new(self, key)),
        };
        series.requests_with_code(self, key, o.status).inc();
        if o.failed {
            series.errors.inc();
        }
        if o.prompt_tokens > 0 {
            series.prompt_tokens.inc_by(o.prompt_tokens as f64);
        }
        if o.completion_tokens > 0 {
            series.completion_tokens.inc_by(o.completion_tokens as f64);
        }
        series.latency.observe(o.latency.as_secs_f64());
        if let Some(t) = o.ttft {
            series.ttft.observe(t.as_secs_f64());
        }
        for gap in &o.inter_token {
            series.inter_token.observe(gap.as_secs_f64());
        }

        let slots = &mut series.slots;
        match slots.back_mut() {
            Some((s, counts)) if *s == second => add(counts, o),
            _ => {
                let mut counts = Counts::default();
                add(&mut counts, o);
                slots.push_back((second, counts));
            }
        }
        let oldest = second.saturating_sub(MAX_WINDOW.as_secs());
        while slots.front().is_some_and(|(s, _)| *s < oldest) {
            slots.pop_front();
        }
    }

    /// Every series with requests in the last `window` (at most [`MAX_WINDOW`]).
    pub fn summary(&self, window: Duration) -> Summary {
        self.summary_at(window, unix_seconds())
    }

    fn summary_at(&self, window: Duration, now: u64) -> Summary {
        let window = window.min(MAX_WINDOW).as_secs().max(1);
        let since = now.saturating_sub(window - 1);
        let windows = self.windows.lock().unwrap();
        let mut series: Vec<SeriesSummary> = windows
            .iter()
            .filter_map(|(key, Series { slots, .. })| {
                let mut counts = Counts::default();
                for (_, c) in slots.iter().filter(|(s, _)| *s >= since && *s <= now) {
                    counts.merge(c);
                }
                (counts.requests > 0).then(|| SeriesSummary::new(key.clone(), counts))
            })
            .collect();
        series.sort_by(|a, b| a.key.cmp(&b.key));
        Summary {
            window_seconds: window,
            bucket_bounds_ms: BUCKET_BOUNDS_MS.to_vec(),
            series,
            held: self.held.lock().unwrap().clone(),
        }
    }

    /// Counts a request as waiting for a ready pod of `model` until the guard is dropped.
    pub fn hold(&self, model: &str) -> Held<'_> {
        *self
            .held
            .lock()
            .unwrap()
            .entry(model.to_string())
            .or_default() += 1;
        self.held_gauge.with_label_values(&[model]).inc();
        Held {
            stats: self,
            model: model.to_string(),
        }
    }
}

/// A request waiting for a pod (see [`Stats::hold`]).
pub struct Held<'a> {
    stats: &'a Stats,
    model: String,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut held = self.stats.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.model) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.model);
            }
        }
        self.stats
            .held_gauge
            .with_label_values(&[&self.model])
            .dec();
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// `30s`, `5m`, `90` (seconds) → a duration.
pub fn parse_window(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        _ => return None,
    };
    (seconds > 0).then(|| Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(version: &str) -> SeriesKey {
        SeriesKey {
            model: "m".into(),
            version: version.into(),
            variant: String::new(),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_of_a_known_distribution_land_in_the_right_bucket() {
        let mut h = Histogram::default();
        for v in 1..=1000 {
            h.observe(ms(v));
        }
        let p50 = h.quantile(0.5).unwrap();
        let p95 = h.quantile(0.95).unwrap();
        let p99 = h.quantile(0.99).unwrap();
        assert!((400.0..=500.0).contains(&p50), "p50 {p50}");
        assert!((800.0..=1000.0).contains(&p95), "p95 {p95}");
        assert!((800.0..=1000.0).contains(&p99) && p99 >= p95, "p99 {p99}");
        assert_eq!(Histogram::default().quantile(0.5), None);
        let mut slow = Histogram::default();
        slow.observe(Duration::from_secs(600));
        assert_eq!(slow.quantile(0.99), Some(120000.0));
    }

    #[test]
    fn merged_histograms_give_the_percentiles_of_all_observations() {
        let (mut fast, mut slow, mut both) = (
            Histogram::default(),
            Histogram::default(),
            Histogram::default(),
        );
        for _ in 0..90 {
            fast.observe(ms(10));
            both.observe(ms(10));
        }
        for _ in 0..10 {
            slow.observe(ms(2000));
            both.observe(ms(2000));
        }
        let mut merged = fast.clone();
        merged.merge(&slow);
        assert_eq!(merged, both);
        assert!(merged.quantile(0.95).unwrap() > 1500.0);
        assert!(fast.quantile(0.95).unwrap() <= 10.0);
    }

    #[test]
    fn the_window_counts_only_recent_requests() {
        let stats = Stats::new(&Registry::new()).unwrap();
        let ok = Outcome {
            status: 200,
            latency: ms(100),
            ..Default::default()
        };
        let failed = Outcome {
            status: 500,
            failed: true,
            latency: ms(5),
            ..Default::default()
        };
        stats.record_at(&key("v1"), &ok, 1_000);
        stats.record_at(&key("v1"), &failed, 1_050);
        stats.record_at(&key("v1"), &ok, 1_055);
        stats.record_at(&key("v2"), &ok, 1_000);

        let last_10s = stats.summary_at(Duration::from_secs(10), 1_059);
        assert_eq!(last_10s.series.len(), 1);
        assert_eq!(last_10s.series[0].counts.requests, 2);
        assert_eq!(last_10s.series[0].error_rate, 0.5);

        let last_min = stats.summary_at(Duration::from_secs(60), 1_059);
        let requests: Vec<(String, u64)> = last_min
            .series
            .iter()
            .map(|s| (s.key.version.clone(), s.counts.requests))
            .collect();
        assert_eq!(requests, [("v1".into(), 3), ("v2".into(), 1)]);
    }

    #[test]
    fn summaries_of_two_routers_merge_into_one() {
        let (a, b) = (
            Stats::new(&Registry::new()).unwrap(),
            Stats::new(&Registry::new()).unwrap(),
        );
        let outcome = |latency| Outcome {
            status: 200,
            latency: ms(latency),
            ttft: Some(ms(latency / 2)),
            completion_tokens: 3,
            ..Default::default()
        };
        for _ in 0..19 {
            a.record_at(&key("v1"), &outcome(20), 500);
        }
        b.record_at(&key("v1"), &outcome(5000), 500);
        let window = Duration::from_secs(30);
        let merged = Summary::merge(&[a.summary_at(window, 505), b.summary_at(window, 505)]);
        let s = &merged.series[0];
        assert_eq!(s.counts.requests, 20);
        assert_eq!(s.counts.completion_tokens, 60);
        // 1 of 20 is slow: p95 sits at the boundary, p99 in the slow bucket.
        assert!(s.latency_ms.p99.unwrap() > 4000.0, "{:?}", s.latency_ms);
        assert!(s.latency_ms.p50.unwrap() <= 20.0, "{:?}", s.latency_ms);
    }

    #[test]
    fn held_requests_are_counted_while_they_wait_and_exported() {
        let registry = Registry::new();
        let stats = Stats::new(&registry).unwrap();
        let window = Duration::from_secs(30);
        let (a, b) = (stats.hold("m"), stats.hold("m"));
        let c = stats.hold("other");
        assert_eq!(
            stats.summary(window).held,
            [("m".into(), 2), ("other".into(), 1)].into()
        );
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(
            text.contains("ferry_router_held_requests{model=\"m\"} 2"),
            "{text}"
        );
        drop((a, c));
        assert_eq!(stats.summary(window).held, [("m".into(), 1)].into());
        drop(b);
        assert!(stats.summary(window).held.is_empty());
        let json = serde_json::to_value(stats.summary(window)).unwrap();
        assert!(json.get("held").is_none(), "nothing held, nothing said");
    }

    #[test]
    fn windows_parse_like_durations() {
        assert_eq!(parse_window("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_window("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_window("45"), Some(Duration::from_secs(45)));
        for bad in ["", "0s", "1h", "x", "-3s", "3 s"] {
            assert_eq!(parse_window(bad), None, "{bad}");
        }
    }
}
