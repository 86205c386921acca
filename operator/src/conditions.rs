//! Status conditions: merging what a reconcile wants into what the object has, keeping each
//! condition's `lastTransitionTime` unless its status changes, and naming the transitions that
//! deserve an Event.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::events::EventType;

/// A condition as a reconcile wants it.
#[derive(Clone, Debug, PartialEq)]
pub struct Wanted {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    /// Never empty: this API server stores an empty string in a custom resource as null and then
    /// rejects the status.
    pub message: String,
}

impl Wanted {
    pub fn new(type_: &'static str, status: bool, reason: &'static str, message: String) -> Self {
        debug_assert!(!message.is_empty() && !reason.is_empty());
        Self {
            type_,
            status,
            reason,
            message,
        }
    }

    fn status_str(&self) -> &'static str {
        if self.status { "True" } else { "False" }
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
    let bad = matches!(
        (w.type_, w.status),
        (INVALID_SPEC | DEGRADED | ROLLED_BACK, true) | (AVAILABLE | VALID, false)
    );
    let news = if first {
        bad && w.type_ != AVAILABLE || (w.type_ == AVAILABLE && w.status)
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
}
