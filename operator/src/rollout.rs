//! The canary rollout as a pure state machine: from the spec, the persisted [`RolloutStatus`],
//! the manual controls, what the cluster shows and (when one was due) an analysis, the next
//! rollout status and the Events to publish. Nothing here calls the API or reads the clock:
//! the caller passes `now`, so a restarted operator continues from `status.rollout` exactly.
//!
//! ```text
//!            canary ready              analysis Pass ∧ pause over (per step)
//! Starting ───────────────▶ Analysing ─────────────────────────────────────▶ Promoting
//!    │ cold-start timeout      │ failureLimit failed analyses / abort          │ canary has the
//!    ▼                         ▼                                               ▼ stable's pods
//!  Failed                  RolledBack ◀──────── breach within the window ── Promoted
//! ```
//! A new rollout starts when `spec.canary.version` differs from the record's, or when a
//! rolled-back or failed one's spec changed (a new `metadata.generation`).

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_crds::labels::{ANNOTATION_ABORT, ANNOTATION_PAUSE, ANNOTATION_PROMOTE};
use ferry_crds::{AnalysisResult, Canary, LLMDeploymentSpec, RolloutState, RolloutStatus, Verdict};
use k8s_openapi::jiff::Timestamp;

/// Whether `pause` and `promote` act on a rollout in `state`: before it is promoting.
pub fn steerable(state: RolloutState) -> bool {
    matches!(state, RolloutState::Starting | RolloutState::Analysing)
}

/// Whether `abort` acts on rollout `r`: while it runs, or promoted within its rollback window.
pub fn abortable(spec: &LLMDeploymentSpec, r: &RolloutStatus, now: Timestamp) -> bool {
    matches!(
        r.state,
        RolloutState::Starting | RolloutState::Analysing | RolloutState::Promoting
    ) || in_rollback_window(spec, r, now)
}

/// Manual control of a rollout through annotations of the LLMDeployment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Controls {
    pub promote: bool,
    pub abort: bool,
    pub pause: bool,
}

impl Controls {
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Self {
        let on = |key: &str| annotations.get(key).is_some_and(|v| v == "true");
        Self {
            promote: on(ANNOTATION_PROMOTE),
            abort: on(ANNOTATION_ABORT),
            pause: on(ANNOTATION_PAUSE),
        }
    }
}

/// What the cluster shows this reconcile.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Observation {
    pub now: Timestamp,
    pub generation: i64,
    /// Ready pods of the canary version.
    pub canary_ready: i32,
    /// Pods the canary must have ready to leave `Starting` (its `replicas`).
    pub canary_start_pods: i32,
    /// Pods the canary must have ready before it takes all traffic (the stable's count).
    pub canary_promote_pods: i32,
    /// How long the canary may take to become ready (and to scale up for promotion).
    pub cold_start_timeout: Duration,
}

/// An Event to publish about the rollout's progress. Its end by rollback or failure is not one:
/// the `RolledBack` condition, with its own Event, reports it from the record's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// The outcome of one step of the machine.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The rollout record to persist (`None`: no rollout).
    pub record: Option<RolloutStatus>,
    pub notes: Vec<Note>,
    /// Reconcile again after this long at the latest (`None`: only on changes).
    pub requeue: Option<Duration>,
}

/// How often a starting or promoting canary's pods are looked at without a watch event.
const POLL: Duration = Duration::from_secs(5);

pub fn timestamp(t: Timestamp) -> String {
    // Milliseconds are plenty, and keep status strings short.
    Timestamp::from_millisecond(t.as_millisecond())
        .unwrap_or(t)
        .to_string()
}

pub(crate) fn parse(s: Option<&String>) -> Option<Timestamp> {
    s?.parse().ok()
}

fn seconds_since(now: Timestamp, then: Option<Timestamp>) -> f64 {
    then.map_or(f64::INFINITY, |t| {
        (now.as_millisecond() - t.as_millisecond()) as f64 / 1000.0
    })
}

/// Whether `record` is in its rollback window after a promotion: the window's seconds, and past
/// them until an analysis has passed since the promotion (at most `progressDeadlineSeconds`
/// more). A promotion is final only with evidence.
pub fn in_rollback_window(
    spec: &LLMDeploymentSpec,
    record: &RolloutStatus,
    now: Timestamp,
) -> bool {
    let Some(canary) = spec.canary.as_ref() else {
        return false;
    };
    let (window, deadline) = (
        f64::from(canary.rollback_window_seconds),
        f64::from(canary.progress_deadline_seconds),
    );
    let since = seconds_since(now, parse(record.finished_at.as_ref()));
    record.state == RolloutState::Promoted
        && (since < window
            || (window > 0.0 && !passed_since_promotion(record) && since < window + deadline))
}

/// An analysis passed after the promotion. A rollout that never analysed (promoted by
/// annotation from `Starting`: the user's decision) needs none.
fn passed_since_promotion(record: &RolloutStatus) -> bool {
    if record.last_conclusive_at.is_none() {
        return true;
    }
    match (
        parse(record.last_pass_at.as_ref()),
        parse(record.finished_at.as_ref()),
    ) {
        (Some(pass), Some(promoted)) => pass > promoted,
        _ => false,
    }
}

/// The window (seconds) of the analysis due now, if one is: a rollout under analysis (not
/// paused), or a promoted one inside its rollback window, whose last analysis is an interval old.
pub fn analysis_due(
    spec: &LLMDeploymentSpec,
    record: Option<&RolloutStatus>,
    controls: Controls,
    now: Timestamp,
) -> Option<u64> {
    let (canary, record) = (spec.canary.as_ref()?, record?);
    if record.version != canary.version {
        return None;
    }
    let analysed = match record.state {
        RolloutState::Analysing => !controls.pause,
        RolloutState::Promoted => in_rollback_window(spec, record, now),
        _ => false,
    };
    let interval = f64::from(canary.analysis.interval_seconds);
    let due = analysed && seconds_since(now, parse(record.last_analysis_at.as_ref())) >= interval;
    due.then(|| analysis_window(canary, record, now))
}

/// The window an analysis reads: the interval; with the statistical comparison, everything since
/// the step began (a step keeps collecting until enough requests are in), at least the interval
/// and at most the routers' longest window.
fn analysis_window(canary: &ferry_crds::Canary, record: &RolloutStatus, now: Timestamp) -> u64 {
    let interval = canary.analysis.interval_seconds.clamp(1, 600) as u64;
    let baseline = &canary.analysis.baseline;
    let statistical = baseline.method(canary.analysis.prometheus.is_some())
        == ferry_crds::ComparisonMethod::Statistical;
    if !(baseline.enabled && statistical) || record.state != RolloutState::Analysing {
        return interval;
    }
    let since = seconds_since(now, parse(record.step_started_at.as_ref()));
    let longest = ferry_contract::stats::MAX_WINDOW.as_secs();
    if since.is_finite() {
        (since.ceil() as u64).clamp(interval, longest)
    } else {
        interval
    }
}

/// One step of the rollout machine. `analysis` is the analysis that [`analysis_due`] asked for,
/// if any.
pub fn advance(
    spec: &LLMDeploymentSpec,
    previous: Option<&RolloutStatus>,
    controls: Controls,
    obs: &Observation,
    analysis: Option<&AnalysisResult>,
) -> Decision {
    let Some(canary) = &spec.canary else {
        // No canary in the spec: nothing to roll out (a promoted canary the user made the stable,
        // or a removed one, is done).
        return Decision {
            record: None,
            notes: Vec::new(),
            requeue: None,
        };
    };
    let now = obs.now;
    let mut notes = Vec::new();
    let starts = match previous {
        None => true,
        Some(r) if r.version != canary.version => true,
        Some(r) => {
            matches!(r.state, RolloutState::RolledBack | RolloutState::Failed)
                && r.generation != obs.generation
        }
    };
    let mut r = if starts {
        notes.push(Note {
            warning: false,
            reason: "CanaryStarted",
            message: format!(
                "rolling out {} next to {}: starting {} canary pod(s)",
                canary.version, spec.stable, canary.replicas
            ),
        });
        RolloutStatus {
            version: canary.version.clone(),
            previous_stable: spec.stable.clone(),
            generation: obs.generation,
            state: RolloutState::Starting,
            step: 0,
            started_at: timestamp(now),
            step_started_at: None,
            last_analysis_at: None,
            failed_analyses: 0,
            finished_at: None,
            message: None,
            last_conclusive_at: None,
            last_pass_at: None,
            baseline: None,
        }
    } else {
        previous.cloned().expect("a record when not starting")
    };
    let active = matches!(
        r.state,
        RolloutState::Starting | RolloutState::Analysing | RolloutState::Promoting
    );
    if active {
        // Spec edits during a rollout (SLOs, steps) apply from now on; a failure is then retried
        // only after a later edit.
        r.generation = obs.generation;
    }
    let steps = canary.steps.len().max(1) as i32;
    let mut requeue = None;

    if controls.abort && abortable(spec, &r, now) {
        finish(
            &mut r,
            now,
            RolloutState::RolledBack,
            format!("aborted: annotation {ANNOTATION_ABORT} was set (kubectl ferry abort)"),
        );
        return Decision {
            record: Some(r),
            notes,
            requeue: None,
        };
    }
    if controls.pause && steerable(r.state) {
        // A paused rollout waits for no evidence: its progress deadline starts again on resume.
        if r.state == RolloutState::Analysing {
            r.last_conclusive_at = Some(timestamp(now));
        }
        return Decision {
            record: Some(r),
            notes,
            requeue: None,
        };
    }
    if controls.promote && steerable(r.state) {
        r.state = RolloutState::Promoting;
        r.step_started_at = Some(timestamp(now));
        notes.push(Note {
            warning: false,
            reason: "Promoting",
            message: format!(
                "canary {} promoted by annotation {ANNOTATION_PROMOTE}: scaling it like the stable",
                r.version
            ),
        });
    }

    let interval = Duration::from_secs(canary.analysis.interval_seconds.max(1) as u64);
    let limit = canary.analysis.failure_limit.max(1);
    match r.state {
        RolloutState::Starting => {
            if obs.canary_ready >= obs.canary_start_pods.max(1) {
                r.state = RolloutState::Analysing;
                r.step = 0;
                r.step_started_at = Some(timestamp(now));
                r.last_analysis_at = Some(timestamp(now));
                r.last_conclusive_at = Some(timestamp(now));
                notes.push(step_note(&r.version, 0, steps, step_weight(canary, 0)));
                requeue = Some(interval);
            } else if seconds_since(now, parse(Some(&r.started_at)))
                > obs.cold_start_timeout.as_secs_f64()
            {
                let message = format!(
                    "canary {} had {}/{} ready pods after the {} s cold-start timeout",
                    r.version,
                    obs.canary_ready,
                    obs.canary_start_pods,
                    obs.cold_start_timeout.as_secs()
                );
                finish(&mut r, now, RolloutState::Failed, message);
            } else {
                requeue = Some(POLL);
            }
        }
        RolloutState::Analysing => {
            if let Some(a) = analysis {
                r.last_analysis_at = Some(timestamp(now));
                if a.baseline.is_some() {
                    r.baseline = a.baseline.clone();
                }
                if a.verdict != Verdict::Inconclusive {
                    r.last_conclusive_at = Some(timestamp(now));
                }
                match a.verdict {
                    Verdict::Fail => {
                        r.failed_analyses += 1;
                        let reason = a.reason.clone().unwrap_or_default();
                        if r.failed_analyses >= limit {
                            finish(&mut r, now, RolloutState::RolledBack, reason);
                        } else {
                            notes.push(Note {
                                warning: true,
                                reason: "AnalysisFailed",
                                message: format!(
                                    "analysis {}/{limit} of canary {} failed: {reason}",
                                    r.failed_analyses, r.version
                                ),
                            });
                        }
                    }
                    Verdict::Pass => {
                        r.last_pass_at = Some(timestamp(now));
                        let pause = canary
                            .steps
                            .get(r.step.max(0) as usize)
                            .map_or(0, |s| s.pause_seconds);
                        if seconds_since(now, parse(r.step_started_at.as_ref())) >= f64::from(pause)
                        {
                            if r.step + 1 < steps {
                                r.step += 1;
                                r.step_started_at = Some(timestamp(now));
                                notes.push(step_note(
                                    &r.version,
                                    r.step,
                                    steps,
                                    step_weight(canary, r.step),
                                ));
                            } else {
                                r.state = RolloutState::Promoting;
                                r.step_started_at = Some(timestamp(now));
                                notes.push(Note {
                                    warning: false,
                                    reason: "Promoting",
                                    message: format!(
                                        "canary {} passed every step: scaling it like the stable",
                                        r.version
                                    ),
                                });
                            }
                        }
                    }
                    Verdict::Inconclusive => {
                        let deadline = f64::from(canary.progress_deadline_seconds);
                        let since = seconds_since(now, parse(r.last_conclusive_at.as_ref()));
                        if since > deadline {
                            let reason = a.reason.clone().unwrap_or_default();
                            finish(
                                &mut r,
                                now,
                                RolloutState::RolledBack,
                                format!(
                                    "no data: no conclusive analysis for {} s (progressDeadlineSeconds); last: {reason}",
                                    since.round()
                                ),
                            );
                        }
                    }
                }
            }
            if r.state == RolloutState::Analysing {
                requeue = Some(interval);
            }
        }
        _ => {}
    }
    if r.state == RolloutState::Promoting {
        let waited = seconds_since(now, parse(r.step_started_at.as_ref()));
        if obs.canary_ready < obs.canary_promote_pods
            && waited > obs.cold_start_timeout.as_secs_f64()
        {
            // A canary short of the stable's pods would not carry its traffic: not promoted.
            let message = format!(
                "canary {} had {}/{} ready pods after the {} s cold-start timeout; not promoted",
                r.version,
                obs.canary_ready,
                obs.canary_promote_pods,
                obs.cold_start_timeout.as_secs()
            );
            finish(&mut r, now, RolloutState::Failed, message);
        } else if obs.canary_ready >= obs.canary_promote_pods {
            finish(
                &mut r,
                now,
                RolloutState::Promoted,
                format!(
                    "promoted; {} kept warm for the rollback window",
                    spec.stable
                ),
            );
            r.failed_analyses = 0;
            r.last_analysis_at = Some(timestamp(now));
            notes.push(Note {
                warning: false,
                reason: "Promoted",
                message: format!(
                    "canary {} promoted: it serves all traffic; {} stays warm for {} s",
                    r.version, spec.stable, canary.rollback_window_seconds
                ),
            });
        } else {
            requeue = Some(POLL);
        }
    } else if r.state == RolloutState::Promoted && in_rollback_window(spec, &r, now) {
        if let Some(a) = analysis {
            r.last_analysis_at = Some(timestamp(now));
            if a.verdict != Verdict::Inconclusive {
                r.last_conclusive_at = Some(timestamp(now));
            }
            if a.verdict == Verdict::Pass {
                r.last_pass_at = Some(timestamp(now));
            }
            if a.verdict == Verdict::Fail {
                r.failed_analyses += 1;
                let reason = a.reason.clone().unwrap_or_default();
                if r.failed_analyses >= limit {
                    finish(
                        &mut r,
                        now,
                        RolloutState::RolledBack,
                        format!("after promotion: {reason}"),
                    );
                }
            }
        }
        if r.state == RolloutState::Promoted {
            let window_left = f64::from(canary.rollback_window_seconds)
                - seconds_since(now, parse(r.finished_at.as_ref()));
            requeue = Some(interval.min(Duration::from_secs_f64(window_left.max(0.0) + 0.5)));
        }
    } else if r.state == RolloutState::Promoted
        && canary.rollback_window_seconds > 0
        && !passed_since_promotion(&r)
    {
        // The window and the progress deadline after it ran out without one passing analysis.
        finish(
            &mut r,
            now,
            RolloutState::RolledBack,
            format!(
                "no data: no analysis passed within the {} s rollback window and the {} s progress deadline after it",
                canary.rollback_window_seconds, canary.progress_deadline_seconds
            ),
        );
    }
    Decision {
        record: Some(r),
        notes,
        requeue,
    }
}

/// The weight of step `step` (from 0; past the last: the last).
fn step_weight(canary: &Canary, step: i32) -> i32 {
    let last = canary.steps.len().saturating_sub(1);
    canary
        .steps
        .get((step.max(0) as usize).min(last))
        .map_or(0, |s| s.weight)
}

fn finish(r: &mut RolloutStatus, now: Timestamp, state: RolloutState, message: String) {
    r.state = state;
    r.finished_at = Some(timestamp(now));
    r.message = Some(message);
}

fn step_note(version: &str, step: i32, steps: i32, weight: i32) -> Note {
    Note {
        warning: false,
        reason: "CanaryStep",
        message: format!(
            "canary {version} at {weight}% of traffic (step {} of {steps})",
            step + 1
        ),
    }
}

/// Which version does what, given the rollout record (after [`advance`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Roles {
    /// The version serving stable traffic (the promoted canary after a promotion).
    pub stable: String,
    /// The canary and its weight, while one runs.
    pub canary: Option<(String, i32)>,
    /// The canary is promoting: scale it like the stable.
    pub promoting: bool,
    /// The previous stable during the rollback window: kept at its pods.
    pub warm: Option<String>,
    /// Versions kept at zero pods (a rolled-back canary, a previous stable after the window).
    pub cold: Vec<String>,
}

pub fn roles(spec: &LLMDeploymentSpec, record: Option<&RolloutStatus>, now: Timestamp) -> Roles {
    let mut roles = Roles {
        stable: spec.stable.clone(),
        canary: None,
        promoting: false,
        warm: None,
        cold: Vec::new(),
    };
    let (Some(canary), Some(r)) = (spec.canary.as_ref(), record) else {
        return roles;
    };
    if r.version != canary.version {
        return roles;
    }
    match r.state {
        RolloutState::Starting => roles.canary = Some((r.version.clone(), 0)),
        RolloutState::Analysing => {
            roles.canary = Some((r.version.clone(), step_weight(canary, r.step)))
        }
        RolloutState::Promoting => {
            roles.canary = Some((r.version.clone(), step_weight(canary, i32::MAX)));
            roles.promoting = true;
        }
        RolloutState::Promoted => {
            roles.stable = r.version.clone();
            if in_rollback_window(spec, r, now) {
                roles.warm = Some(spec.stable.clone());
            } else {
                roles.cold.push(spec.stable.clone());
            }
        }
        RolloutState::RolledBack | RolloutState::Failed => roles.cold.push(r.version.clone()),
    }
    roles
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::SignedDuration;

    /// The statistical comparison reads everything since the step began (it keeps collecting);
    /// the threshold comparison one interval.
    #[test]
    fn a_statistical_analysis_reads_the_whole_step_so_far() {
        let canary = |method: &str| -> ferry_crds::Canary {
            serde_json::from_value(serde_json::json!({"version": "v2",
                "analysis": {"intervalSeconds": 15, "baseline": {"method": method}}}))
            .unwrap()
        };
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let record: RolloutStatus = serde_json::from_value(serde_json::json!({
            "version": "v2", "previousStable": "v1", "generation": 1, "state": "Analysing",
            "step": 0, "startedAt": timestamp(now), "failedAnalyses": 0,
            "stepStartedAt": timestamp(now - SignedDuration::from_secs(100))}))
        .unwrap();
        assert_eq!(analysis_window(&canary("Statistical"), &record, now), 100);
        assert_eq!(analysis_window(&canary("Threshold"), &record, now), 15);
        let long_ago = RolloutStatus {
            step_started_at: Some(timestamp(now - SignedDuration::from_secs(5000))),
            ..record.clone()
        };
        assert_eq!(analysis_window(&canary("Statistical"), &long_ago, now), 600);
        let just_now = RolloutStatus {
            step_started_at: Some(timestamp(now)),
            ..record
        };
        assert_eq!(analysis_window(&canary("Statistical"), &just_now, now), 15);
    }
    use ferry_crds::{Analysis, CanaryStep};

    fn spec() -> LLMDeploymentSpec {
        LLMDeploymentSpec {
            served_model_name: None,
            stable: "v1".into(),
            replicas: Some(2),
            autoscaling: None,
            canary: Some(Canary {
                version: "v2".into(),
                replicas: 1,
                steps: vec![
                    CanaryStep {
                        weight: 10,
                        pause_seconds: 0,
                    },
                    CanaryStep {
                        weight: 50,
                        pause_seconds: 20,
                    },
                ],
                analysis: Analysis {
                    interval_seconds: 10,
                    min_requests: 5,
                    failure_limit: 2,
                    prometheus: None,
                    baseline: Default::default(),
                },
                rollback_window_seconds: 100,
                progress_deadline_seconds: 30,
            }),
            experiment: None,
            slo: None,
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn obs(s: i64, ready: i32) -> Observation {
        Observation {
            now: at(s),
            generation: 1,
            canary_ready: ready,
            canary_start_pods: 1,
            canary_promote_pods: 2,
            cold_start_timeout: Duration::from_secs(60),
        }
    }

    fn verdict(v: Verdict) -> AnalysisResult {
        AnalysisResult {
            time: "t".into(),
            version: "v2".into(),
            requests: 10,
            ttft_p95_ms: None,
            latency_p95_ms: None,
            inter_token_p95_ms: None,
            error_rate_percent: None,
            source: None,
            baseline: None,
            verdict: v,
            reason: Some(format!("{v:?} reason")),
            failed_rules: Vec::new(),
        }
    }

    /// Runs the machine like the controller: an analysis whenever one is due.
    struct Run {
        spec: LLMDeploymentSpec,
        record: Option<RolloutStatus>,
        controls: Controls,
        reasons: Vec<&'static str>,
    }

    impl Run {
        fn new() -> Self {
            Self {
                spec: spec(),
                record: None,
                controls: Controls::default(),
                reasons: Vec::new(),
            }
        }

        fn tick(&mut self, o: Observation, v: Verdict) -> Decision {
            let due = analysis_due(&self.spec, self.record.as_ref(), self.controls, o.now);
            let a = due.map(|_| verdict(v));
            let d = advance(
                &self.spec,
                self.record.as_ref(),
                self.controls,
                &o,
                a.as_ref(),
            );
            self.record = d.record.clone();
            self.reasons.extend(d.notes.iter().map(|n| n.reason));
            d
        }

        fn state(&self) -> (RolloutState, i32) {
            let r = self.record.as_ref().unwrap();
            (r.state, r.step)
        }

        fn roles(&self, s: i64) -> Roles {
            roles(&self.spec, self.record.as_ref(), at(s))
        }
    }

    #[test]
    fn a_good_canary_goes_through_every_step_then_promotes_once_scaled_like_the_stable() {
        let mut run = Run::new();
        run.tick(obs(0, 0), Verdict::Pass);
        assert_eq!(run.state(), (RolloutState::Starting, 0));
        assert_eq!(run.roles(0).canary, Some(("v2".into(), 0)));
        let d = run.tick(obs(3, 1), Verdict::Pass);
        assert_eq!(run.state(), (RolloutState::Analysing, 0));
        assert_eq!(d.requeue, Some(Duration::from_secs(10)));
        assert_eq!(run.roles(3).canary, Some(("v2".into(), 10)));
        // Not due before an interval has passed: no analysis, no change.
        run.tick(obs(8, 1), Verdict::Fail);
        assert_eq!(run.record.as_ref().unwrap().failed_analyses, 0);
        // Step 1 has no pause: the first passing analysis moves on.
        run.tick(obs(13, 1), Verdict::Pass);
        assert_eq!(run.state(), (RolloutState::Analysing, 1));
        assert_eq!(run.roles(13).canary, Some(("v2".into(), 50)));
        // Step 2 pauses 20 s: a pass after 10 s stays, after 20 s moves on.
        run.tick(obs(23, 1), Verdict::Pass);
        assert_eq!(run.state(), (RolloutState::Analysing, 1));
        run.tick(obs(33, 1), Verdict::Pass);
        assert_eq!(run.state(), (RolloutState::Promoting, 1));
        let r = run.roles(33);
        assert!(r.promoting);
        assert_eq!(r.canary, Some(("v2".into(), 50)));
        // It takes all traffic once it has the stable's pods (2).
        run.tick(obs(35, 1), Verdict::Pass);
        assert_eq!(run.state(), (RolloutState::Promoting, 1));
        run.tick(obs(40, 2), Verdict::Pass);
        assert_eq!(run.state(), (RolloutState::Promoted, 1));
        let r = run.roles(40);
        assert_eq!(
            (r.stable.as_str(), r.canary, r.warm),
            ("v2", None, Some("v1".into()))
        );
        // A pass inside the window makes the promotion final: after the window the previous
        // stable goes cold, and nothing is analysed any more.
        run.tick(obs(50, 2), Verdict::Pass);
        let r = run.roles(141);
        assert_eq!(r.cold, ["v1"]);
        assert_eq!(
            analysis_due(&run.spec, run.record.as_ref(), run.controls, at(141)),
            None
        );
        assert_eq!(
            run.reasons,
            [
                "CanaryStarted",
                "CanaryStep",
                "CanaryStep",
                "Promoting",
                "Promoted"
            ]
        );
    }

    #[test]
    fn failure_limit_failed_analyses_roll_back_and_the_message_is_the_breach() {
        let mut run = Run::new();
        run.tick(obs(0, 1), Verdict::Pass);
        assert_eq!(run.state(), (RolloutState::Analysing, 0));
        run.tick(obs(10, 1), Verdict::Fail);
        assert_eq!(run.state(), (RolloutState::Analysing, 0));
        // Inconclusive windows neither pass nor fail.
        run.tick(obs(20, 1), Verdict::Inconclusive);
        run.tick(obs(30, 1), Verdict::Fail);
        let r = run.record.clone().unwrap();
        assert_eq!(r.state, RolloutState::RolledBack);
        assert_eq!(r.failed_analyses, 2);
        assert_eq!(r.message.as_deref(), Some("Fail reason"));
        let roles = run.roles(30);
        assert_eq!((roles.stable.as_str(), roles.canary), ("v1", None));
        assert_eq!(roles.cold, ["v2"]);
        // Not retried while the spec stays the same...
        run.tick(obs(500, 1), Verdict::Pass);
        assert_eq!(run.state(), (RolloutState::RolledBack, 0));
        // ...and retried from the start when it changes.
        let mut o = obs(600, 0);
        o.generation = 2;
        run.tick(o, Verdict::Pass);
        assert_eq!(run.state(), (RolloutState::Starting, 0));
        assert_eq!(run.record.as_ref().unwrap().failed_analyses, 0);
    }

    #[test]
    fn a_canary_that_never_gets_ready_fails_after_the_cold_start_timeout() {
        let mut run = Run::new();
        run.tick(obs(0, 0), Verdict::Pass);
        run.tick(obs(59, 0), Verdict::Pass);
        assert_eq!(run.state(), (RolloutState::Starting, 0));
        run.tick(obs(61, 0), Verdict::Pass);
        let r = run.record.clone().unwrap();
        assert_eq!(r.state, RolloutState::Failed);
        assert_eq!(
            r.message.as_deref(),
            Some("canary v2 had 0/1 ready pods after the 60 s cold-start timeout")
        );
        assert_eq!(run.roles(61).cold, ["v2"]);
    }

    #[test]
    fn a_breach_inside_the_rollback_window_rolls_back_to_the_previous_stable() {
        let mut run = Run::new();
        run.controls.promote = true;
        run.tick(obs(0, 2), Verdict::Pass);
        assert_eq!(run.state(), (RolloutState::Promoted, 0));
        run.controls.promote = false;
        run.tick(obs(10, 2), Verdict::Fail);
        assert_eq!(run.state(), (RolloutState::Promoted, 0));
        run.tick(obs(20, 2), Verdict::Fail);
        let r = run.record.clone().unwrap();
        assert_eq!(r.state, RolloutState::RolledBack);
        assert_eq!(r.message.as_deref(), Some("after promotion: Fail reason"));
        assert_eq!(run.roles(20).stable, "v1");
        // Breaches after the window change nothing.
        let mut late = Run::new();
        late.controls.promote = true;
        late.tick(obs(0, 2), Verdict::Pass);
        late.controls.promote = false;
        late.tick(obs(150, 2), Verdict::Fail);
        late.tick(obs(160, 2), Verdict::Fail);
        assert_eq!(late.state(), (RolloutState::Promoted, 0));
    }

    #[test]
    fn pause_freezes_abort_rolls_back_and_promote_skips_the_steps() {
        let mut run = Run::new();
        run.tick(obs(0, 1), Verdict::Pass);
        run.controls.pause = true;
        for s in [10, 20, 30, 40] {
            run.tick(obs(s, 1), Verdict::Fail);
        }
        assert_eq!(run.state(), (RolloutState::Analysing, 0));
        assert_eq!(run.record.as_ref().unwrap().failed_analyses, 0);
        run.controls.pause = false;
        run.controls.abort = true;
        run.tick(obs(50, 1), Verdict::Pass);
        let r = run.record.clone().unwrap();
        assert_eq!(r.state, RolloutState::RolledBack);
        assert_eq!(
            r.message.as_deref(),
            Some("aborted: annotation serving.ferry.dev/abort was set (kubectl ferry abort)")
        );

        let mut run = Run::new();
        run.tick(obs(0, 1), Verdict::Pass);
        run.controls.promote = true;
        run.tick(obs(1, 1), Verdict::Pass);
        assert_eq!(run.state(), (RolloutState::Promoting, 0));
        run.tick(obs(2, 2), Verdict::Pass);
        assert_eq!(run.state(), (RolloutState::Promoted, 0));
    }

    #[test]
    fn a_restart_resumes_from_the_record_without_repeating_or_skipping_a_step() {
        let mut run = Run::new();
        run.tick(obs(0, 1), Verdict::Pass);
        run.tick(obs(10, 1), Verdict::Pass);
        assert_eq!(run.state(), (RolloutState::Analysing, 1));
        // A "new process": only the persisted record survives (serialized as in status).
        let json = serde_json::to_string(run.record.as_ref().unwrap()).unwrap();
        let mut resumed = Run::new();
        resumed.record = Some(serde_json::from_str(&json).unwrap());
        // 5 s after the last analysis: not due yet (no repeated analysis).
        resumed.tick(obs(15, 1), Verdict::Pass);
        assert_eq!(resumed.state(), (RolloutState::Analysing, 1));
        assert!(resumed.reasons.is_empty());
        // The pause of step 2 counts from when it began, not from the restart.
        resumed.tick(obs(30, 1), Verdict::Pass);
        assert_eq!(resumed.state(), (RolloutState::Promoting, 1));
    }

    #[test]
    fn a_different_canary_version_starts_over_and_removing_the_canary_ends_the_rollout() {
        let mut run = Run::new();
        run.tick(obs(0, 1), Verdict::Pass);
        run.tick(obs(10, 1), Verdict::Pass);
        run.spec.canary.as_mut().unwrap().version = "v3".into();
        run.tick(obs(11, 0), Verdict::Pass);
        let r = run.record.clone().unwrap();
        assert_eq!(
            (r.version.as_str(), r.state),
            ("v3", RolloutState::Starting)
        );
        run.spec.canary = None;
        let d = run.tick(obs(12, 0), Verdict::Pass);
        assert_eq!(d.record, None);
        assert_eq!(run.roles(12).stable, "v1");
    }

    #[test]
    fn annotations_are_read_only_when_true() {
        let a = BTreeMap::from([
            (ANNOTATION_PAUSE.to_string(), "true".to_string()),
            (ANNOTATION_ABORT.to_string(), "false".to_string()),
        ]);
        assert_eq!(
            Controls::from_annotations(&a),
            Controls {
                pause: true,
                ..Default::default()
            }
        );
    }

    #[test]
    fn a_rollout_without_a_conclusive_analysis_past_the_progress_deadline_is_rolled_back() {
        let mut run = Run::new();
        run.tick(obs(0, 1), Verdict::Pass);
        assert_eq!(run.state(), (RolloutState::Analysing, 0));
        // Inconclusive for 30 s (the deadline) is waited out; one more is not.
        for s in [10, 20, 30] {
            run.tick(obs(s, 1), Verdict::Inconclusive);
            assert_eq!(run.state(), (RolloutState::Analysing, 0), "at {s}");
        }
        run.tick(obs(40, 1), Verdict::Inconclusive);
        let r = run.record.clone().unwrap();
        assert_eq!(r.state, RolloutState::RolledBack);
        assert_eq!(
            r.message.as_deref(),
            Some(
                "no data: no conclusive analysis for 40 s (progressDeadlineSeconds); last: Inconclusive reason"
            )
        );
        // A pass in between restarts the clock.
        let mut run = Run::new();
        run.tick(obs(0, 1), Verdict::Pass);
        run.tick(obs(20, 1), Verdict::Inconclusive);
        run.tick(obs(30, 1), Verdict::Pass);
        run.tick(obs(40, 1), Verdict::Inconclusive);
        run.tick(obs(50, 1), Verdict::Inconclusive);
        assert_eq!(run.state().0, RolloutState::Analysing);
    }

    #[test]
    fn a_promotion_is_final_only_after_a_pass_and_rolls_back_without_one() {
        let to_promoted = |run: &mut Run| {
            run.tick(obs(0, 1), Verdict::Pass);
            run.tick(obs(10, 1), Verdict::Pass);
            run.tick(obs(30, 1), Verdict::Pass);
            run.tick(obs(31, 2), Verdict::Pass);
            assert_eq!(run.state().0, RolloutState::Promoted);
        };
        // Only inconclusive windows after the promotion: the previous stable stays warm past the
        // window (100 s), and the promotion is rolled back at window + deadline (130 s).
        let mut run = Run::new();
        to_promoted(&mut run);
        for s in [41, 81, 121, 141] {
            run.tick(obs(s, 2), Verdict::Inconclusive);
        }
        assert_eq!(run.state().0, RolloutState::Promoted);
        assert_eq!(run.roles(141).warm, Some("v1".into()));
        run.tick(obs(162, 2), Verdict::Inconclusive);
        let r = run.record.clone().unwrap();
        assert_eq!(r.state, RolloutState::RolledBack);
        assert_eq!(
            r.message.as_deref(),
            Some(
                "no data: no analysis passed within the 100 s rollback window and the 30 s progress deadline after it"
            )
        );
        assert_eq!(run.roles(162).stable, "v1");
        // A late pass (after the window, within the deadline) makes it final.
        let mut run = Run::new();
        to_promoted(&mut run);
        run.tick(obs(141, 2), Verdict::Pass);
        assert_eq!(run.state().0, RolloutState::Promoted);
        run.tick(obs(300, 2), Verdict::Inconclusive);
        assert_eq!(run.state().0, RolloutState::Promoted);
        assert_eq!(run.roles(300).cold, ["v1"]);
    }

    #[test]
    fn a_canary_short_of_the_stables_pods_is_not_promoted_when_the_timer_runs_out() {
        let mut run = Run::new();
        run.tick(obs(0, 1), Verdict::Pass);
        run.tick(obs(10, 1), Verdict::Pass);
        run.tick(obs(30, 1), Verdict::Pass);
        assert_eq!(run.state().0, RolloutState::Promoting);
        run.tick(obs(89, 1), Verdict::Pass);
        assert_eq!(run.state().0, RolloutState::Promoting);
        run.tick(obs(91, 1), Verdict::Pass);
        let r = run.record.clone().unwrap();
        assert_eq!(r.state, RolloutState::Failed);
        assert_eq!(
            r.message.as_deref(),
            Some("canary v2 had 1/2 ready pods after the 60 s cold-start timeout; not promoted")
        );
        assert_eq!(run.roles(91).stable, "v1");
    }
}
