//! `kubectl ferry`: what the plugin prints and which annotation each verb writes. Pure; the binary
//! (`src/bin/kubectl-ferry.rs`) does the reading, writing and waiting.

use std::fmt::Write;

use ferry_crds::labels::{ANNOTATION_ABORT, ANNOTATION_PAUSE, ANNOTATION_PROMOTE};
use ferry_crds::{AnalysisResult, LLMDeployment, RolloutState};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;

use crate::rollout;

/// A verb that steers a rollout through the LLMDeployment's annotations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Promote,
    Abort,
    Pause,
    Resume,
}

impl Control {
    /// The merge patch the verb applies to the LLMDeployment (`null` removes an annotation).
    pub fn patch(self) -> serde_json::Value {
        let (key, value) = match self {
            Control::Promote => (ANNOTATION_PROMOTE, Some("true")),
            Control::Abort => (ANNOTATION_ABORT, Some("true")),
            Control::Pause => (ANNOTATION_PAUSE, Some("true")),
            Control::Resume => (ANNOTATION_PAUSE, None),
        };
        serde_json::json!({"metadata": {"annotations": {key: value}}})
    }

    /// The patch that takes a one-shot verb's annotation away again once the rollout acted on
    /// it, so that it cannot promote or abort the next canary too.
    pub fn clear(self) -> Option<serde_json::Value> {
        let key = match self {
            Control::Promote => ANNOTATION_PROMOTE,
            Control::Abort => ANNOTATION_ABORT,
            Control::Pause | Control::Resume => return None,
        };
        Some(serde_json::json!({"metadata": {"annotations": {key: null}}}))
    }

    /// Whether `llmd`'s status shows the verb took effect.
    pub fn done(self, llmd: &LLMDeployment) -> bool {
        let status = llmd.status.clone().unwrap_or_default();
        let state = status.rollout.as_ref().map(|r| r.state);
        let paused = condition(&status.conditions, "Reconciling")
            .is_some_and(|c| c.status == "True" && c.reason == "Paused");
        match self {
            Control::Promote => matches!(
                state,
                Some(RolloutState::Promoting | RolloutState::Promoted)
            ),
            Control::Abort => state == Some(RolloutState::RolledBack),
            Control::Pause => paused,
            Control::Resume => !paused,
        }
    }

    /// Before a verb: refuse it when the operator would not act on it (it would linger and hit
    /// the next canary) — the operator's own rule: pause and promote before `Promoting`, abort
    /// while the rollout runs or within its rollback window; resume only what is paused.
    pub fn check(self, llmd: &LLMDeployment) -> Result<(), String> {
        let record = llmd.status.as_ref().and_then(|s| s.rollout.as_ref());
        let acts = match (self, record) {
            (Control::Resume, _) if llmd.annotations().contains_key(ANNOTATION_PAUSE) => true,
            (Control::Resume, _) => {
                return Err(format!(
                    "LLMDeployment {} is not paused: nothing to resume",
                    llmd.name_any()
                ));
            }
            (_, None) => false,
            (Control::Pause | Control::Promote, Some(r)) => rollout::steerable(r.state),
            (Control::Abort, Some(r)) => {
                rollout::abortable(&llmd.spec, r, k8s_openapi::jiff::Timestamp::now())
            }
        };
        if acts { Ok(()) } else { Err(no_canary(llmd)) }
    }
}

fn no_canary(llmd: &LLMDeployment) -> String {
    let state = llmd
        .status
        .as_ref()
        .and_then(|s| s.rollout.as_ref())
        .map(|r| format!(" (the last one is {:?})", r.state))
        .unwrap_or_default();
    format!(
        "LLMDeployment {} has no canary under way{state}: nothing to steer",
        llmd.name_any()
    )
}

fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// `kubectl ferry status`: phase, health, versions and weights, the rollout, the last analysis.
pub fn status(llmd: &LLMDeployment) -> String {
    let mut out = String::new();
    let status = llmd.status.clone().unwrap_or_default();
    let phase = status
        .phase
        .as_ref()
        .map_or("Unknown".to_string(), |p| format!("{p:?}"));
    let _ = writeln!(
        out,
        "LLMDeployment {}/{}: {phase}  (model {}, generation {}, observed {})",
        llmd.namespace().unwrap_or_default(),
        llmd.name_any(),
        status
            .served_model_name
            .as_deref()
            .or(llmd.spec.served_model_name.as_deref())
            .unwrap_or(&llmd.name_any()),
        llmd.metadata.generation.unwrap_or_default(),
        status.observed_generation.unwrap_or(-1),
    );
    if status.observed_generation != llmd.metadata.generation {
        let _ = writeln!(
            out,
            "Health:  waiting for the operator to see the latest spec"
        );
    } else if let Some(c) = ["Stalled", "Reconciling", "Ready"]
        .into_iter()
        .filter_map(|t| condition(&status.conditions, t))
        .find(|c| c.status == "True")
    {
        let word = match c.type_.as_str() {
            "Stalled" => "stalled",
            "Reconciling" if c.reason == "Paused" => "paused",
            "Reconciling" => "in progress",
            _ => "ready",
        };
        let _ = writeln!(out, "Health:  {word} ({}): {}", c.reason, c.message);
    }
    let _ = writeln!(
        out,
        "Stable:  {}",
        status
            .stable_version
            .as_deref()
            .unwrap_or(&llmd.spec.stable)
    );
    if let Some(r) = &status.rollout {
        let steps = llmd.spec.canary.as_ref().map_or(0, |c| c.steps.len());
        let _ = write!(
            out,
            "Canary:  {} {:?}, step {}/{steps}",
            r.version,
            r.state,
            r.step + 1
        );
        if let Some(w) = status.canary_weight {
            let _ = write!(out, " at {w}%");
        }
        let _ = writeln!(out, ", {} failed analyses", r.failed_analyses);
        if let Some(m) = &r.message {
            let _ = writeln!(out, "         {m}");
        }
    }
    let paused = llmd
        .annotations()
        .get(ANNOTATION_PAUSE)
        .is_some_and(|v| v == "true");
    if paused {
        let _ = writeln!(
            out,
            "Paused:  {ANNOTATION_PAUSE}=true (kubectl ferry resume)"
        );
    }
    let _ = writeln!(
        out,
        "\n{:<24} {:>7} {:>7} {:>7} {:>6}",
        "VERSION", "TRAFFIC", "READY", "WANTED", "QUEUE"
    );
    let mut names: Vec<&str> = status.traffic.iter().map(|t| t.version.as_str()).collect();
    for v in &status.versions {
        if !names.contains(&v.name.as_str()) {
            names.push(&v.name);
        }
    }
    for name in names {
        let weight: i32 = status
            .traffic
            .iter()
            .filter(|t| t.version == name)
            .map(|t| t.weight)
            .sum();
        let pods = status.versions.iter().find(|v| v.name == name);
        let _ = writeln!(
            out,
            "{:<24} {:>6}% {:>7} {:>7} {:>6}",
            name,
            weight,
            pods.map_or(0, |p| p.ready_replicas),
            pods.map_or(0, |p| p.replicas),
            pods.and_then(|p| p.queue_depth)
                .map_or("-".to_string(), |q| q.to_string()),
        );
    }
    if let Some(a) = &status.last_analysis {
        let _ = writeln!(out, "\nLast analysis: {}", analysis(a));
    }
    out
}

/// One analysis on one line: when, what, the verdict, the numbers and the stable's.
pub fn analysis(a: &AnalysisResult) -> String {
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0} ms"));
    let mut line = format!(
        "{} {} {:?} over {} requests (source {}): ttft p95 {}, latency p95 {}, inter-token p95 {}, errors {}",
        a.time,
        a.version,
        a.verdict,
        a.requests,
        a.source.as_deref().unwrap_or("router"),
        ms(a.ttft_p95_ms),
        ms(a.latency_p95_ms),
        ms(a.inter_token_p95_ms),
        a.error_rate_percent
            .map_or("-".to_string(), |e| format!("{e:.1}%")),
    );
    if let Some(b) = &a.baseline {
        let _ = write!(
            line,
            "; stable {} over {} requests: latency p95 {}",
            b.version,
            b.requests,
            ms(b.latency_p95_ms)
        );
    }
    if let Some(r) = &a.reason {
        let _ = write!(line, "\n               {r}");
    }
    line
}

/// One line of `kubectl ferry history`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HistoryLine {
    /// When it happened, for ordering (nanoseconds since the epoch).
    pub at: i128,
    /// The same, as shown (to the second).
    pub time: String,
    pub type_: String,
    pub reason: String,
    pub message: String,
}

/// `kubectl ferry history`: the object's Events, oldest first, and the rollout's record.
pub fn history(llmd: &LLMDeployment, mut events: Vec<HistoryLine>) -> String {
    events.sort();
    let mut out = String::new();
    let _ = writeln!(out, "{:<21} {:<8} {:<22} MESSAGE", "TIME", "TYPE", "REASON");
    for e in &events {
        let _ = writeln!(
            out,
            "{:<21} {:<8} {:<22} {}",
            e.time, e.type_, e.reason, e.message
        );
    }
    if events.is_empty() {
        let _ = writeln!(
            out,
            "(no Events: the API server keeps them for an hour by default)"
        );
    }
    let status = llmd.status.clone().unwrap_or_default();
    if let Some(r) = &status.rollout {
        let _ = writeln!(
            out,
            "\nRollout of {} (from {}, started {}): {:?}{}",
            r.version,
            r.previous_stable,
            r.started_at,
            r.state,
            r.finished_at
                .as_ref()
                .map(|t| format!(" at {t}"))
                .unwrap_or_default()
        );
        if let Some(m) = &r.message {
            let _ = writeln!(out, "  {m}");
        }
    }
    if let Some(a) = &status.last_analysis {
        let _ = writeln!(out, "Last analysis: {}", analysis(a));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llmd(status: serde_json::Value, annotations: serde_json::Value) -> LLMDeployment {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "serving.ferry.dev/v1alpha1", "kind": "LLMDeployment",
            "metadata": {"name": "chat", "namespace": "models", "generation": 2,
                         "annotations": annotations},
            "spec": {"stable": "v1", "canary": {"version": "v2",
                     "steps": [{"weight": 20, "pauseSeconds": 0}, {"weight": 50, "pauseSeconds": 4}]}},
            "status": status,
        }))
        .unwrap()
    }

    fn analysing() -> serde_json::Value {
        serde_json::json!({
            "phase": "Progressing", "observedGeneration": 2, "stableVersion": "v1",
            "canaryWeight": 20,
            "traffic": [{"version": "v1", "weight": 80}, {"version": "v2", "weight": 20}],
            "versions": [{"name": "v1", "replicas": 2, "readyReplicas": 2, "queueDepth": 1},
                         {"name": "v2", "replicas": 1, "readyReplicas": 1}],
            "rollout": {"version": "v2", "previousStable": "v1", "generation": 2,
                        "state": "Analysing", "step": 0, "startedAt": "2026-12-01T05:00:00Z",
                        "failedAnalyses": 0},
            "conditions": [{"type": "Reconciling", "status": "True", "reason": "CanaryAnalysis",
                            "message": "canary v2 at 20% (step 1), 0 failed analyses",
                            "lastTransitionTime": "2026-12-01T05:00:00Z"}],
        })
    }

    #[test]
    fn status_shows_health_the_split_and_the_rollout() {
        let text = status(&llmd(analysing(), serde_json::json!({})));
        assert!(
            text.starts_with("LLMDeployment models/chat: Progressing"),
            "{text}"
        );
        assert!(
            text.contains("Health:  in progress (CanaryAnalysis): canary v2 at 20%"),
            "{text}"
        );
        assert!(
            text.contains("Canary:  v2 Analysing, step 1/2 at 20%, 0 failed analyses"),
            "{text}"
        );
        let v1 = text.lines().find(|l| l.starts_with("v1 ")).unwrap();
        assert_eq!(
            v1.split_whitespace().collect::<Vec<_>>(),
            ["v1", "80%", "2", "2", "1"]
        );
    }

    #[test]
    fn one_shot_verbs_need_a_running_canary_and_are_cleared_after() {
        let running = llmd(analysing(), serde_json::json!({}));
        assert_eq!(Control::Abort.check(&running), Ok(()));
        assert!(!Control::Abort.done(&running));
        let mut rolled_back = analysing();
        rolled_back["rollout"]["state"] = "RolledBack".into();
        let finished = llmd(rolled_back, serde_json::json!({}));
        assert!(Control::Abort.done(&finished));
        let refused = Control::Promote.check(&finished).unwrap_err();
        assert!(
            refused.contains("no canary under way (the last one is RolledBack)"),
            "{refused}"
        );
        assert_eq!(
            Control::Abort.clear(),
            Some(serde_json::json!({"metadata": {"annotations": {ANNOTATION_ABORT: null}}}))
        );
        assert_eq!(Control::Pause.clear(), None);
        // The operator's rule: abort also within a promotion's rollback window; pause and
        // promote no longer once the canary is promoting.
        let mut promoted = analysing();
        promoted["rollout"]["state"] = "Promoted".into();
        promoted["rollout"]["finishedAt"] = k8s_openapi::jiff::Timestamp::now().to_string().into();
        let mut in_window = llmd(promoted, serde_json::json!({}));
        in_window
            .spec
            .canary
            .as_mut()
            .unwrap()
            .rollback_window_seconds = 600;
        assert_eq!(Control::Abort.check(&in_window), Ok(()));
        assert!(Control::Pause.check(&in_window).is_err());
        let mut promoting = analysing();
        promoting["rollout"]["state"] = "Promoting".into();
        let promoting = llmd(promoting, serde_json::json!({}));
        assert!(Control::Pause.check(&promoting).is_err());
        assert!(Control::Promote.check(&promoting).is_err());
        assert_eq!(Control::Abort.check(&promoting), Ok(()));
        assert_eq!(
            Control::Resume.patch(),
            serde_json::json!({"metadata": {"annotations": {ANNOTATION_PAUSE: null}}})
        );
    }

    /// `resume` on an LLMDeployment that is not paused exited 0 as if it had done something.
    #[test]
    fn resume_needs_a_paused_llmdeployment() {
        let mut rolled_back = analysing();
        rolled_back["rollout"]["state"] = "RolledBack".into();
        let refused = Control::Resume
            .check(&llmd(rolled_back.clone(), serde_json::json!({})))
            .unwrap_err();
        assert!(refused.contains("is not paused"), "{refused}");
        let paused = llmd(rolled_back, serde_json::json!({ANNOTATION_PAUSE: "true"}));
        assert_eq!(Control::Resume.check(&paused), Ok(()));
    }
}
