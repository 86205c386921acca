//! Prometheus metrics, in a registry the caller owns (tests make their own). Every series carries
//! the `model` and `version` labels, so one scrape config serves every ModelVersion.

use std::collections::HashMap;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry,
};

use crate::admission::QueueObserver;

/// Seconds; LLM requests take from milliseconds (a cached short answer) to a minute.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
];
/// Seconds between streamed tokens: ~1 ms on a GPU to ~1 s on a loaded CPU.
const INTER_TOKEN_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.5,
];

/// Name of the gauge the autoscaler reads: requests waiting + running in this pod.
pub const QUEUE_DEPTH: &str = ferry_contract::metrics::QUEUE_DEPTH;

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub ttft: Histogram,
    pub inter_token: Histogram,
    pub prompt_tokens: IntCounter,
    pub generation_tokens: IntCounter,
    pub running: IntGauge,
    pub waiting: IntGauge,
    pub queue_depth: IntGauge,
}

impl Metrics {
    pub fn new(model: &str, version: &str) -> Self {
        let labels = HashMap::from([
            ("model".to_string(), model.to_string()),
            ("version".to_string(), version.to_string()),
        ]);
        let opts = |name: &str, help: &str| Opts::new(name, help).const_labels(labels.clone());
        let hopts = |name: &str, help: &str, buckets: &[f64]| {
            HistogramOpts::new(name, help)
                .const_labels(labels.clone())
                .buckets(buckets.to_vec())
        };
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            opts(
                "ferry_requests_total",
                "Requests by endpoint and outcome code (ok, or the error code).",
            ),
            &["endpoint", "code"],
        )
        .unwrap();
        let latency = HistogramVec::new(
            hopts(
                "ferry_request_duration_seconds",
                "End-to-end request latency.",
                LATENCY_BUCKETS,
            ),
            &["endpoint"],
        )
        .unwrap();
        let ttft = Histogram::with_opts(hopts(
            "ferry_time_to_first_token_seconds",
            "Time from request to the first generated token.",
            LATENCY_BUCKETS,
        ))
        .unwrap();
        let inter_token = Histogram::with_opts(hopts(
            "ferry_inter_token_latency_seconds",
            "Time between consecutive generated tokens.",
            INTER_TOKEN_BUCKETS,
        ))
        .unwrap();
        let prompt_tokens = IntCounter::with_opts(opts(
            "ferry_prompt_tokens_total",
            "Prompt tokens processed.",
        ))
        .unwrap();
        let generation_tokens =
            IntCounter::with_opts(opts("ferry_generation_tokens_total", "Tokens generated."))
                .unwrap();
        let running = IntGauge::with_opts(opts(
            "ferry_requests_running",
            "Requests the engine is generating for now.",
        ))
        .unwrap();
        let waiting = IntGauge::with_opts(opts(
            "ferry_requests_waiting",
            "Admitted requests waiting for an engine slot.",
        ))
        .unwrap();
        let queue_depth = IntGauge::with_opts(opts(
            QUEUE_DEPTH,
            "Waiting + running requests: the autoscaler's signal.",
        ))
        .unwrap();
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(ttft.clone()),
            Box::new(inter_token.clone()),
            Box::new(prompt_tokens.clone()),
            Box::new(generation_tokens.clone()),
            Box::new(running.clone()),
            Box::new(waiting.clone()),
            Box::new(queue_depth.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self {
            registry,
            requests,
            latency,
            ttft,
            inter_token,
            prompt_tokens,
            generation_tokens,
            running,
            waiting,
            queue_depth,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

impl QueueObserver for Metrics {
    fn set(&self, waiting: usize, running: usize) {
        self.waiting.set(waiting as i64);
        self.running.set(running as i64);
        self.queue_depth.set((waiting + running) as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_carries_model_and_version_in_a_stable_order() {
        let m = Metrics::new("smollm2", "v2");
        m.requests
            .with_label_values(&["/v1/chat/completions", "ok"])
            .inc();
        m.set(3, 2);
        let text = m.render();
        assert!(text.contains("ferry_requests_total{code=\"ok\",endpoint=\"/v1/chat/completions\",model=\"smollm2\",version=\"v2\"} 1"), "{text}");
        assert!(
            text.contains("ferry_queue_depth{model=\"smollm2\",version=\"v2\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("ferry_requests_waiting{model=\"smollm2\",version=\"v2\"} 3"),
            "{text}"
        );
        assert!(text.contains("ferry_time_to_first_token_seconds_bucket{model=\"smollm2\",version=\"v2\",le=\"0.005\"} 0"), "{text}");
    }
}
