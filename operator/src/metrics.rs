//! Prometheus metrics of the operator, in an injected registry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_crds::LLMDeploymentStatus;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Label values of the per-LLMDeployment gauges one LLMDeployment currently has, so the series of
/// a version that left (or of a deleted LLMDeployment) are removed instead of going stale.
#[derive(Default)]
struct Series {
    versions: Vec<[String; 4]>,
    phase: Option<[String; 3]>,
}

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    writes: IntCounterVec,
    pub leader: IntGauge,
    traffic: IntGaugeVec,
    replicas: IntGaugeVec,
    ready: IntGaugeVec,
    phase: IntGaugeVec,
    series: Arc<Mutex<HashMap<(String, String), Series>>>,
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
        let per_version = ["namespace", "llmdeployment", "model", "version"];
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels).unwrap()
        };
        let traffic = gauge(
            "ferry_llmdeployment_traffic_percent",
            "Share of the served model's requests each version gets (status.traffic)",
            &per_version,
        );
        let replicas = gauge(
            "ferry_llmdeployment_replicas",
            "Pods each version of an LLMDeployment has (status.versions)",
            &per_version,
        );
        let ready = gauge(
            "ferry_llmdeployment_ready_replicas",
            "Ready pods each version of an LLMDeployment has (status.versions)",
            &per_version,
        );
        let phase = gauge(
            "ferry_llmdeployment_phase",
            "1 for the LLMDeployment's current phase (status.phase)",
            &["namespace", "llmdeployment", "phase"],
        );
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(duration.clone()),
            Box::new(writes.clone()),
            Box::new(leader.clone()),
            Box::new(traffic.clone()),
            Box::new(replicas.clone()),
            Box::new(ready.clone()),
            Box::new(phase.clone()),
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
            traffic,
            replicas,
            ready,
            phase,
            series: Arc::default(),
        }
    }

    /// Removes the series of every LLMDeployment not in `live` (namespace, name).
    pub fn keep_llm_deployments(&self, live: &std::collections::HashSet<(String, String)>) {
        let gone: Vec<_> = (self.series.lock().expect("metrics lock").keys())
            .filter(|k| !live.contains(*k))
            .cloned()
            .collect();
        for (namespace, name) in gone {
            self.llm_deployment(&namespace, &name, None);
        }
    }

    /// Publishes an LLMDeployment's status as gauges (phase, and per version: traffic share,
    /// pods, ready pods); `None` (deleted) removes its series.
    pub fn llm_deployment(
        &self,
        namespace: &str,
        name: &str,
        status: Option<&LLMDeploymentStatus>,
    ) {
        let key = (namespace.to_string(), name.to_string());
        let mut all = self.series.lock().expect("metrics lock");
        let old = all.remove(&key).unwrap_or_default();
        for labels in &old.versions {
            let labels = labels.each_ref().map(String::as_str);
            for gauge in [&self.traffic, &self.replicas, &self.ready] {
                let _ = gauge.remove_label_values(&labels);
            }
        }
        if let Some(labels) = &old.phase {
            let _ = self
                .phase
                .remove_label_values(&labels.each_ref().map(String::as_str));
        }
        let Some(status) = status else { return };
        let model = status.served_model_name.clone().unwrap_or_default();
        let mut new = Series::default();
        for version in &status.versions {
            let labels = [
                key.0.clone(),
                key.1.clone(),
                model.clone(),
                version.name.clone(),
            ];
            let values = labels.each_ref().map(String::as_str);
            let share: i32 = status
                .traffic
                .iter()
                .filter(|t| t.version == version.name)
                .map(|t| t.weight)
                .sum();
            self.traffic.with_label_values(&values).set(share.into());
            self.replicas
                .with_label_values(&values)
                .set(version.replicas.into());
            self.ready
                .with_label_values(&values)
                .set(version.ready_replicas.into());
            new.versions.push(labels);
        }
        if let Some(phase) = &status.phase {
            let labels = [key.0.clone(), key.1.clone(), format!("{phase:?}")];
            self.phase
                .with_label_values(&labels.each_ref().map(String::as_str))
                .set(1);
            new.phase = Some(labels);
        }
        all.insert(key, new);
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

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_crds::{Phase, TrafficTarget, VersionStatus};

    fn status(versions: &[(&str, i32, i32)], phase: Phase) -> LLMDeploymentStatus {
        LLMDeploymentStatus {
            phase: Some(phase),
            served_model_name: Some("m".into()),
            traffic: versions
                .iter()
                .map(|(v, w, _)| TrafficTarget {
                    version: v.to_string(),
                    weight: *w,
                    variant: None,
                })
                .collect(),
            versions: versions
                .iter()
                .map(|(v, _, pods)| VersionStatus {
                    name: v.to_string(),
                    replicas: *pods,
                    ready_replicas: *pods,
                    queue_depth: None,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn llm_deployment_gauges_follow_the_status_and_leave_with_it() {
        let metrics = Metrics::new(Registry::new());
        metrics.llm_deployment(
            "ns",
            "d",
            Some(&status(&[("v1", 80, 2), ("v2", 20, 1)], Phase::Progressing)),
        );
        let text = metrics.render();
        for line in [
            r#"ferry_llmdeployment_traffic_percent{llmdeployment="d",model="m",namespace="ns",version="v2"} 20"#,
            r#"ferry_llmdeployment_ready_replicas{llmdeployment="d",model="m",namespace="ns",version="v1"} 2"#,
            r#"ferry_llmdeployment_phase{llmdeployment="d",namespace="ns",phase="Progressing"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }

        // Promoted: v1 is gone, the phase changed; neither leaves a stale series.
        metrics.llm_deployment(
            "ns",
            "d",
            Some(&status(&[("v2", 100, 2)], Phase::Available)),
        );
        let text = metrics.render();
        assert!(!text.contains(r#"version="v1""#), "{text}");
        assert!(!text.contains("Progressing"), "{text}");
        assert!(text.contains(r#"phase="Available"} 1"#), "{text}");

        metrics.keep_llm_deployments(&Default::default());
        assert!(!metrics.render().contains("ferry_llmdeployment_"));
    }
}
