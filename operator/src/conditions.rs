//! Status conditions: merging what a reconcile wants into what the object has, keeping each
//! condition's `lastTransitionTime` unless its status changes, and naming the transitions that
//! deserve an Event.

use ferry_crds::{ConditionStatus, Phase};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::events::EventType;

/// A condition as a reconcile wants it.
#[derive(Clone, Debug, PartialEq)]
pub struct Wanted {
    pub type_: &'static str,
    pub status: ConditionStatus,
    pub reason: &'static str,
    /// Never empty: this API server stores an empty string in a custom resource as null and then
    /// rejects the status.
    pub message: String,
}

impl Wanted {
    pub fn new(type_: &'static str, status: bool, reason: &'static str, message: String) -> Self {
        let status = if status {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        };
        Self::with_status(type_, status, reason, message)
    }

    pub fn with_status(
        type_: &'static str,
        status: ConditionStatus,
        reason: &'static str,
        message: String,
    ) -> Self {
        debug_assert!(!message.is_empty() && !reason.is_empty());
        Self {
            type_,
            status,
            reason,
            message,
        }
    }

    fn is_true(&self) -> bool {
        self.status == ConditionStatus::True
    }

    fn status_str(&self) -> &'static str {
        self.status.as_str()
    }
}

/// A condition whose status changed: what the Event says.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub type_: EventType,
    pub reason: String,
    pub message: String,
}

/// `current` with `wanted` merged in (conditions of other types are kept), and the transitions.
/// Conditions are sorted by type, so equal states serialize equally.
pub fn merge(
    current: &[Condition],
    wanted: &[Wanted],
    generation: Option<i64>,
    now: &Time,
) -> (Vec<Condition>, Vec<Transition>) {
    let mut merged: Vec<Condition> = current
        .iter()
        .filter(|c| !wanted.iter().any(|w| w.type_ == c.type_))
        .cloned()
        .collect();
    let mut transitions = Vec::new();
    for w in wanted {
        let old = current.iter().find(|c| c.type_ == w.type_);
        let changed = old.is_none_or(|c| c.status != w.status_str());
        if changed && let Some(t) = transition(w, old.is_none()) {
            transitions.push(t);
        }
        merged.push(Condition {
            type_: w.type_.to_string(),
            status: w.status_str().to_string(),
            reason: w.reason.to_string(),
            message: w.message.clone(),
            observed_generation: generation,
            last_transition_time: match old {
                Some(c) if !changed => c.last_transition_time.clone(),
                _ => now.clone(),
            },
        });
    }
    merged.sort_by(|a, b| a.type_.cmp(&b.type_));
    (merged, transitions)
}

/// The Event for a condition that changed; `None` for a first value nobody needs to hear about
/// (all is well, or pods are starting).
fn transition(w: &Wanted, first: bool) -> Option<Transition> {
    use ferry_crds::condition::types::*;
    if matches!(w.type_, READY | RECONCILING | STALLED) {
        // A summary of the others, whose changes already make Events.
        return None;
    }
    let bad = matches!(
        (w.type_, w.is_true()),
        (INVALID_SPEC | DEGRADED | ROLLED_BACK, true) | (AVAILABLE | VALID, false)
    );
    let news = if first {
        bad && w.type_ != AVAILABLE || (w.type_ == AVAILABLE && w.is_true())
    } else {
        true
    };
    news.then(|| Transition {
        type_: if bad {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: w.reason.to_string(),
        message: w.message.clone(),
    })
}

/// `Ready`, `Reconciling` and `Stalled` of an LLMDeployment, the way kstatus (Flux, Helm 4's
/// `--wait`) and the Argo CD health check read a resource, from its phase and its other
/// conditions: stalled when only a spec change can move it on (invalid, canary rolled back or
/// failed); reconciling while anything is under way (pods starting, a canary, a handover, a
/// paused rollout, the rollback window after a promotion); ready otherwise.
pub fn summary(phase: Option<&Phase>, wanted: &[Wanted]) -> [Wanted; 3] {
    use ferry_crds::condition::types::*;
    let find = |t: &str| wanted.iter().find(|w| w.type_ == t);
    let stalled = match phase {
        Some(Phase::Invalid) => {
            Some(("InvalidSpec", find(INVALID_SPEC).map(|w| w.message.clone())))
        }
        Some(Phase::RolledBack | Phase::Failed) => find(ROLLED_BACK)
            .filter(|w| w.is_true())
            .map(|w| (w.reason, Some(w.message.clone())))
            .or(Some(("RolledBack", None))),
        _ => None,
    };
    if let Some((reason, message)) = stalled {
        let message = message.unwrap_or_else(|| "change the spec to go on".into());
        return [
            Wanted::new(READY, false, reason, message.clone()),
            Wanted::new(
                RECONCILING,
                false,
                reason,
                "nothing under way: it waits for a spec change".into(),
            ),
            Wanted::new(STALLED, true, reason, message),
        ];
    }
    let progressing = find(PROGRESSING).filter(|w| w.is_true());
    let reconciling = match (progressing, phase) {
        (Some(p), _) => Some((p.reason, p.message.clone())),
        (None, Some(Phase::Promoted)) => Some((
            "RollbackWindow",
            "promoted; the previous version stays warm until the rollback window ends".into(),
        )),
        (None, Some(Phase::Pending | Phase::Degraded | Phase::Progressing)) => {
            Some(("PodsStarting", "waiting for pods to be ready".into()))
        }
        _ => None,
    };
    let not_stalled = Wanted::new(
        STALLED,
        false,
        "NotStalled",
        "nothing blocks progress".into(),
    );
    match reconciling {
        Some((reason, message)) => waiting(reason, message),
        None => {
            let message = find(AVAILABLE)
                .map(|w| w.message.clone())
                .unwrap_or_else(|| "serving as specified".into());
            [
                Wanted::new(READY, true, "Ready", message),
                Wanted::new(RECONCILING, false, "Reconciled", "nothing under way".into()),
                not_stalled,
            ]
        }
    }
}

/// The summary of a resource that waits for something that will come on its own (pods, a step,
/// a ModelVersion applied in the same sync but not seen yet): `Reconciling`, not `Stalled`.
pub fn waiting(reason: &'static str, message: String) -> [Wanted; 3] {
    use ferry_crds::condition::types::*;
    [
        Wanted::with_status(READY, ConditionStatus::Unknown, reason, message.clone()),
        Wanted::new(RECONCILING, true, reason, message),
        Wanted::new(
            STALLED,
            false,
            "NotStalled",
            "nothing blocks progress".into(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_crds::condition::types::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn unchanged_status_keeps_its_transition_time_and_makes_no_event() {
        let first = [Wanted::new(AVAILABLE, true, "PodsReady", "1/1".into())];
        let (c1, _) = merge(&[], &first, Some(1), &at(100));
        let again = [Wanted::new(AVAILABLE, true, "PodsReady", "2/2".into())];
        let (c2, t2) = merge(&c1, &again, Some(2), &at(200));
        assert_eq!(c2[0].last_transition_time, at(100));
        assert_eq!(c2[0].message, "2/2");
        assert_eq!(c2[0].observed_generation, Some(2));
        assert!(t2.is_empty());
    }

    #[test]
    fn a_status_change_moves_the_transition_time_and_emits_an_event() {
        let (c1, _) = merge(
            &[],
            &[Wanted::new(INVALID_SPEC, false, "Valid", "ok".into())],
            Some(1),
            &at(100),
        );
        let bad = [Wanted::new(
            INVALID_SPEC,
            true,
            "InvalidSpec",
            "stable: ModelVersion nope not found".into(),
        )];
        let (c2, t2) = merge(&c1, &bad, Some(2), &at(200));
        assert_eq!(c2[0].last_transition_time, at(200));
        assert_eq!(
            t2,
            [Transition {
                type_: EventType::Warning,
                reason: "InvalidSpec".into(),
                message: "stable: ModelVersion nope not found".into()
            }]
        );
    }

    #[test]
    fn other_condition_types_survive_and_order_is_stable() {
        let (c1, _) = merge(
            &[],
            &[
                Wanted::new(ROLLED_BACK, true, "SloBreached", "ttft".into()),
                Wanted::new(AVAILABLE, true, "PodsReady", "1/1".into()),
            ],
            Some(1),
            &at(1),
        );
        let (c2, _) = merge(
            &c1,
            &[Wanted::new(AVAILABLE, false, "NoReadyPods", "0/1".into())],
            Some(1),
            &at(2),
        );
        let types: Vec<_> = c2.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [AVAILABLE, ROLLED_BACK]);
    }

    #[test]
    fn first_healthy_conditions_are_quiet_but_first_availability_is_announced() {
        let (_, t) = merge(
            &[],
            &[
                Wanted::new(INVALID_SPEC, false, "Valid", "ok".into()),
                Wanted::new(DEGRADED, false, "AsDesired", "ok".into()),
                Wanted::new(AVAILABLE, true, "PodsReady", "1/1".into()),
            ],
            Some(1),
            &at(1),
        );
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].reason, "PodsReady");
    }

    fn summed(phase: Phase, wanted: &[Wanted]) -> Vec<(String, &'static str, &'static str)> {
        summary(Some(&phase), wanted)
            .iter()
            .map(|w| (w.type_.to_string(), w.status.as_str(), w.reason))
            .collect()
    }

    #[test]
    fn summary_is_ready_only_when_nothing_is_under_way() {
        let available = Wanted::new(AVAILABLE, true, "PodsReady", "2/2 pods".into());
        let done = Wanted::new(PROGRESSING, false, "Complete", "all ready".into());
        assert_eq!(
            summed(Phase::Available, &[available.clone(), done.clone()]),
            [
                (READY.into(), "True", "Ready"),
                (RECONCILING.into(), "False", "Reconciled"),
                (STALLED.into(), "False", "NotStalled")
            ]
        );
        // An experiment splitting traffic as asked is done, too.
        assert_eq!(
            summed(Phase::Experimenting, &[available.clone(), done.clone()])[0].1,
            "True"
        );
        // Pods starting, a canary (paused or not), a promotion's rollback window: under way.
        for (phase, progressing, reason) in [
            (
                Phase::Pending,
                Wanted::new(PROGRESSING, true, "PodsStarting", "0/1".into()),
                "PodsStarting",
            ),
            (
                Phase::Progressing,
                Wanted::new(PROGRESSING, true, "Paused", "paused".into()),
                "Paused",
            ),
            (
                Phase::Progressing,
                Wanted::new(PROGRESSING, true, "CanaryAnalysis", "at 50%".into()),
                "CanaryAnalysis",
            ),
            (Phase::Promoted, done.clone(), "RollbackWindow"),
        ] {
            assert_eq!(
                summed(phase, &[available.clone(), progressing]),
                [
                    (READY.into(), "Unknown", reason),
                    (RECONCILING.into(), "True", reason),
                    (STALLED.into(), "False", "NotStalled")
                ]
            );
        }
    }

    #[test]
    fn summary_is_stalled_when_only_a_spec_change_helps() {
        let invalid = Wanted::new(INVALID_SPEC, true, "InvalidSpec", "stable: missing".into());
        let s = summary(Some(&Phase::Invalid), &[invalid]);
        assert_eq!((s[2].type_, s[2].status.as_str()), (STALLED, "True"));
        assert_eq!(s[2].message, "stable: missing");
        assert_eq!(
            (s[0].status.as_str(), s[1].status.as_str()),
            ("False", "False")
        );
        let rolled_back = Wanted::new(ROLLED_BACK, true, "SloBreached", "canary v2: ttft".into());
        let s = summary(Some(&Phase::RolledBack), &[rolled_back]);
        assert_eq!((s[2].status.as_str(), s[2].reason), ("True", "SloBreached"));
        assert_eq!(s[0].message, "canary v2: ttft");
        // The summary makes no Events of its own.
        let (_, transitions) = merge(&[], &s, Some(1), &at(1));
        assert!(transitions.is_empty(), "{transitions:?}");
    }
}
