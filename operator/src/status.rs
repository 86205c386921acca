//! The status an LLMDeployment reconcile writes beyond the serving counts: the rollout's record,
//! columns, phase and conditions, and what a held traffic split says. Pure.

use ferry_crds::{LLMDeployment, LLMDeploymentStatus, Phase, RolloutState, condition::types};

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
    status.last_analysis = decided
        .analysis
        .clone()
        .or_else(|| previous.and_then(|s| s.last_analysis.clone()));
    status.variants = decided.variants.clone();
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
                "SloBreached"
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
        _ if llmd.spec.experiment.is_some() => status.phase = Some(Phase::Experimenting),
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
