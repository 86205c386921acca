//! Prometheus metrics of the operator, in an injected registry.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    writes: IntCounterVec,
    pub leader: IntGauge,
}

impl Metrics {
    pub fn new(registry: Registry) -> Self {
        let reconciles = IntCounterVec::new(
            Opts::new(
                "ferry_operator_reconciles_total",
                "Reconciles by controller and outcome",
            ),
            &["controller", "outcome"],
        )
        .unwrap();
        let errors = IntCounterVec::new(
            Opts::new(
                "ferry_operator_reconcile_errors_total",
                "Failed reconciles by controller and error category",
            ),
            &["controller", "category"],
        )
        .unwrap();
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "ferry_operator_reconcile_duration_seconds",
                "Time one reconcile takes",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["controller"],
        )
        .unwrap();
        let writes = IntCounterVec::new(
            Opts::new(
                "ferry_operator_api_writes_total",
                "Writes to the Kubernetes API by kind and verb",
            ),
            &["kind", "verb"],
        )
        .unwrap();
        let leader = IntGauge::new(
            "ferry_operator_leader",
            "1 while this replica holds the leader Lease",
        )
        .unwrap();
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(duration.clone()),
            Box::new(writes.clone()),
            Box::new(leader.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self {
            registry,
            reconciles,
            errors,
            duration,
            writes,
            leader,
        }
    }

    /// Runs one reconcile and records its outcome, duration and (on failure) error category.
    pub async fn measure(
        &self,
        controller: &str,
        reconcile: impl std::future::Future<Output = Result<&'static str, crate::error::Error>>,
    ) -> Result<&'static str, crate::error::Error> {
        let started = std::time::Instant::now();
        let result = reconcile.await;
        let outcome = match &result {
            Ok(outcome) => *outcome,
            Err(e) => {
                self.failed(controller, e.metric_label());
                "error"
            }
        };
        self.reconciled(controller, outcome, started.elapsed());
        result
    }

    fn reconciled(&self, controller: &str, outcome: &str, took: Duration) {
        self.reconciles
            .with_label_values(&[controller, outcome])
            .inc();
        self.duration
            .with_label_values(&[controller])
            .observe(took.as_secs_f64());
    }

    fn failed(&self, controller: &str, category: &str) {
        self.errors.with_label_values(&[controller, category]).inc();
    }

    pub fn write(&self, kind: &str, verb: &str) {
        self.writes.with_label_values(&[kind, verb]).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding does not fail");
        String::from_utf8(out).expect("metrics are UTF-8")
    }
}
