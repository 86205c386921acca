//! The status an LLMDeployment reconcile writes beyond the serving counts: the rollout's record,
//! columns, phase and conditions, and what a held traffic split says. Pure.

use ferry_crds::{
    AnalysisResult, AnalysisRule, LLMDeployment, LLMDeploymentStatus, Phase, RolloutState,
    RolloutStatus, condition::types,
};

use crate::conditions::Wanted;
use crate::handover::Hold;
use crate::plan::Decided;
use crate::rollout;

/// The rollout's part of the status: record, canary columns, phase, and the Progressing and
/// RolledBack conditions.
pub fn rollout_status(
    llmd: &LLMDeployment,
    decided: &Decided,
    status: &mut LLMDeploymentStatus,
    wanted: &mut Vec<Wanted>,
) {
    let previous = llmd.status.as_ref();
    status.rollout = decided.record.clone();
    status.last_analysis = decided.analysis.clone().or_else(|| {
        carried_analysis(
            previous.and_then(|s| s.last_analysis.as_ref()),
            decided.record.as_ref(),
        )
    });
    status.variants = decided.variants.clone();
    status.variant_split = llmd.spec.experiment.as_ref().map(|e| {
        e.variants
            .iter()
            .map(|v| format!("{} {}%", v.name, v.weight))
            .collect::<Vec<_>>()
            .join(", ")
    });
    if llmd.spec.experiment.is_some() && status.variants.is_empty() {
        // The routers did not answer: keep the last numbers rather than blanking them.
        status.variants = previous.map(|s| s.variants.clone()).unwrap_or_default();
    }
    let canary = decided.record.as_ref().filter(|r| {
        matches!(
            r.state,
            RolloutState::Starting | RolloutState::Analysing | RolloutState::Promoting
        )
    });
    if let Some(r) = canary {
        status.canary_version = Some(r.version.clone());
        status.canary_step = Some(r.step);
        status.canary_weight = Some(
            decided
                .plan
                .traffic
                .iter()
                .find(|t| t.version == r.version)
                .map_or(0, |t| t.weight),
        );
    }
    let set = |wanted: &mut Vec<Wanted>, w: Wanted| {
        wanted.retain(|c| c.type_ != w.type_);
        wanted.push(w);
    };
    let rolled_back = match decided.record.as_ref() {
        Some(r) if matches!(r.state, RolloutState::RolledBack | RolloutState::Failed) => {
            let message = r.message.as_deref().unwrap_or_default();
            let reason = if r.state == RolloutState::Failed {
                "CanaryFailed"
            } else if message.starts_with("aborted") {
                "Aborted"
            } else if message.starts_with("no data") {
                "NoData"
            } else {
                failed_analysis_reason(status.last_analysis.as_ref())
            };
            let message = r.message.clone().unwrap_or_else(|| "rolled back".into());
            Wanted::new(
                types::ROLLED_BACK,
                true,
                reason,
                format!("canary {}: {message}", r.version),
            )
        }
        Some(r) => Wanted::new(
            types::ROLLED_BACK,
            false,
            if r.state == RolloutState::Promoted {
                "Promoted"
            } else {
                "RollingOut"
            },
            format!("canary {} has not been rolled back", r.version),
        ),
        None => Wanted::new(
            types::ROLLED_BACK,
            false,
            "NoRollout",
            "no canary rollout".to_string(),
        ),
    };
    set(wanted, rolled_back);
    let now = decided.now;
    match decided.record.as_ref().map(|r| r.state) {
        Some(RolloutState::Starting | RolloutState::Analysing | RolloutState::Promoting) => {
            let r = decided.record.as_ref().expect("a record");
            status.phase = Some(Phase::Progressing);
            let (reason, message) = if decided.controls.pause {
                (
                    "Paused",
                    format!("canary {} paused by annotation", r.version),
                )
            } else {
                match r.state {
                    RolloutState::Starting => (
                        "CanaryStarting",
                        format!("waiting for canary {} pods to be ready", r.version),
                    ),
                    RolloutState::Promoting => (
                        "Promoting",
                        format!(
                            "scaling canary {} like the stable before it takes all traffic",
                            r.version
                        ),
                    ),
                    _ => (
                        "CanaryAnalysis",
                        format!(
                            "canary {} at {}% (step {}), {} failed analyses",
                            r.version,
                            status.canary_weight.unwrap_or(0),
                            r.step + 1,
                            r.failed_analyses
                        ),
                    ),
                }
            };
            set(
                wanted,
                Wanted::new(types::PROGRESSING, true, reason, message),
            );
        }
        Some(RolloutState::RolledBack) => status.phase = Some(Phase::RolledBack),
        Some(RolloutState::Failed) => status.phase = Some(Phase::Failed),
        Some(RolloutState::Promoted)
            if decided
                .record
                .as_ref()
                .is_some_and(|r| rollout::in_rollback_window(&llmd.spec, r, now)) =>
        {
            status.phase = Some(Phase::Promoted)
        }
        // Experimenting once it serves: `Pending` until a pod is ready, `Degraded` stays.
        _ if llmd.spec.experiment.is_some() && status.phase == Some(Phase::Available) => {
            status.phase = Some(Phase::Experimenting)
        }
        _ => {}
    }
}

/// While the current split is kept: the phase says a change is under way, `Available` says who
/// serves, `Progressing` what it waits for (the stable's own pod counts would say "no ready pods"
/// of a version that takes no traffic yet).
pub fn handover_status(
    hold: &Hold,
    reason: &'static str,
    status: &mut LLMDeploymentStatus,
    wanted: &mut Vec<Wanted>,
) {
    status.phase = Some(Phase::Progressing);
    for w in [
        Wanted::new(
            types::AVAILABLE,
            true,
            "PreviousVersionServing",
            format!(
                "{} serves while the new split starts",
                hold.serving.join(", ")
            ),
        ),
        Wanted::new(types::PROGRESSING, true, reason, hold.message()),
        Wanted::new(
            types::DEGRADED,
            false,
            "AsDesired",
            "the serving versions have their pods".to_string(),
        ),
    ] {
        wanted.retain(|c| c.type_ != w.type_);
        wanted.push(w);
    }
}

/// The last analysis shown while none ran this reconcile: only one of the current (or last)
/// rollout, of its canary and since it started. An aborted rollout never shows the previous
/// rollout's Pass.
pub fn carried_analysis(
    previous: Option<&AnalysisResult>,
    record: Option<&RolloutStatus>,
) -> Option<AnalysisResult> {
    let (a, r) = (previous?, record?);
    let at = |s: &String| rollout::parse(Some(s));
    let since_start =
        matches!((at(&a.time), at(&r.started_at)), (Some(t), Some(start)) if t >= start);
    (a.version == r.version && since_start).then(|| a.clone())
}

/// The reason of a rollback for failed analyses: the rule the last analysis broke. An SLO
/// breach wins when both broke (it is the user's own limit).
pub fn failed_analysis_reason(last: Option<&AnalysisResult>) -> &'static str {
    let rules = last.map_or(&[][..], |a| &a.failed_rules[..]);
    if rules.contains(&AnalysisRule::Slo) {
        "SloBreached"
    } else if rules.contains(&AnalysisRule::Stable) {
        "WorseThanStable"
    } else {
        "AnalysisFailed"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analysis(version: &str, time: &str) -> AnalysisResult {
        serde_json::from_value(serde_json::json!({
            "time": time, "version": version, "requests": 40, "verdict": "Pass"}))
        .unwrap()
    }

    fn rollout(version: &str, started_at: &str) -> RolloutStatus {
        serde_json::from_value(serde_json::json!({
            "version": version, "previousStable": "v1", "generation": 3, "state": "RolledBack",
            "step": 0, "startedAt": started_at, "failedAnalyses": 0}))
        .unwrap()
    }

    #[test]
    fn an_analysis_belongs_to_its_rollout() {
        let v2_pass = analysis("v2", "2026-12-04T10:05:00Z");
        // Its own rollout's: kept while no new analysis ran.
        let own = rollout("v2", "2026-12-04T10:00:00Z");
        assert_eq!(
            carried_analysis(Some(&v2_pass), Some(&own)),
            Some(v2_pass.clone())
        );
        // v3 aborted before its first analysis: not v2's Pass.
        let next = rollout("v3", "2026-12-04T10:10:00Z");
        assert_eq!(carried_analysis(Some(&v2_pass), Some(&next)), None);
        // v2 again, a later rollout: the earlier rollout's analysis is not this one's.
        let again = rollout("v2", "2026-12-04T10:20:00Z");
        assert_eq!(carried_analysis(Some(&v2_pass), Some(&again)), None);
        assert_eq!(carried_analysis(Some(&v2_pass), None), None);
    }

    /// A canary within its SLO but slower than the stable was rolled back as `SloBreached`.
    #[test]
    fn a_rollback_names_the_rule_the_canary_broke() {
        let failed = |rules: serde_json::Value| -> AnalysisResult {
            serde_json::from_value(serde_json::json!({
                "time": "2026-12-04T10:05:00Z", "version": "v2", "requests": 40,
                "verdict": "Fail", "failedRules": rules}))
            .unwrap()
        };
        let stable_only = failed(serde_json::json!(["Stable"]));
        assert_eq!(
            failed_analysis_reason(Some(&stable_only)),
            "WorseThanStable"
        );
        let both = failed(serde_json::json!(["Stable", "Slo"]));
        assert_eq!(failed_analysis_reason(Some(&both)), "SloBreached");
        assert_eq!(failed_analysis_reason(None), "AnalysisFailed");
    }
}
