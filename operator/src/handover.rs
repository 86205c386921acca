//! Traffic moves only to versions that can take it. Whatever changes which versions serve (a
//! direct edit of `spec.stable`, a promotion, an experiment edit, a rollback), the routers keep
//! the split they obey now until every version of the new split has its pods ready; the versions
//! serving now keep their pods meanwhile. Pure: the caller passes the plan it decided, the split
//! in the current status and what the cluster shows.

use std::collections::BTreeMap;

use ferry_crds::TrafficTarget;

use crate::build::{Observed, Plan};

/// A version of the new split that cannot take traffic yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub version: String,
    pub ready: i32,
    /// Ready pods it needs before it takes traffic.
    pub needs: i32,
}

/// The routers keep the current split because the new one is not ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    /// The versions that keep serving (the current split).
    pub serving: Vec<String>,
    pub waiting: Vec<Waiting>,
}

impl Hold {
    /// For the `Progressing` condition and the Event.
    pub fn message(&self) -> String {
        let waiting: Vec<String> = self
            .waiting
            .iter()
            .map(|w| format!("{} ({}/{} pods ready)", w.version, w.ready, w.needs))
            .collect();
        format!(
            "traffic stays on {} until {} can take it",
            self.serving.join(", "),
            waiting.join(", ")
        )
    }
}

/// Checks `plan` against the split the routers obey now (`serving`, the current
/// `status.traffic`). A version already in that split may keep or change its share. A version new
/// to it must have every wanted pod ready (at least one), or, when `urgent` (a rollback, which
/// must leave a failing version fast), one. Until all of them can, `plan` keeps the current split
/// and every version in it keeps at least the pods it has. Where no version of the current split
/// has a ready pod there is nothing to protect, and the plan stands (the routers hold requests
/// until a pod is ready).
pub fn hold(
    plan: &mut Plan,
    serving: &[TrafficTarget],
    observed: &BTreeMap<String, Observed>,
    urgent: bool,
) -> Option<Hold> {
    let seen = |v: &str| observed.get(v).copied().unwrap_or_default();
    let is_serving = |v: &str| serving.iter().any(|t| t.version == v && t.weight > 0);
    let mut waiting: Vec<Waiting> = Vec::new();
    for target in plan.traffic.iter().filter(|t| t.weight > 0) {
        let v = target.version.as_str();
        if is_serving(v) || waiting.iter().any(|w| w.version == v) {
            continue;
        }
        let wanted = plan.replicas.get(v).copied().unwrap_or(0);
        let needs = if urgent { 1 } else { wanted.max(1) };
        let ready = seen(v).ready;
        if ready < needs {
            waiting.push(Waiting {
                version: v.to_string(),
                ready,
                needs,
            });
        }
    }
    if waiting.is_empty()
        || !serving
            .iter()
            .any(|t| t.weight > 0 && seen(&t.version).ready > 0)
    {
        return None;
    }
    plan.traffic = serving.to_vec();
    let mut kept = Vec::new();
    for t in serving.iter().filter(|t| t.weight > 0) {
        let pods = plan.replicas.entry(t.version.clone()).or_insert(0);
        *pods = (*pods).max(seen(&t.version).replicas).max(1);
        if !kept.contains(&t.version) {
            kept.push(t.version.clone());
        }
    }
    Some(Hold {
        serving: kept,
        waiting,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(targets: &[(&str, i32)]) -> Vec<TrafficTarget> {
        targets
            .iter()
            .map(|(v, w)| TrafficTarget {
                version: v.to_string(),
                weight: *w,
                variant: None,
            })
            .collect()
    }

    fn plan(stable: &str, replicas: &[(&str, i32)], traffic: &[(&str, i32)]) -> Plan {
        Plan {
            stable: stable.into(),
            replicas: replicas.iter().map(|(v, n)| (v.to_string(), *n)).collect(),
            traffic: split(traffic),
            queue_depth: BTreeMap::new(),
        }
    }

    fn seen(versions: &[(&str, i32, i32)]) -> BTreeMap<String, Observed> {
        versions
            .iter()
            .map(|(v, replicas, ready)| {
                (
                    v.to_string(),
                    Observed {
                        replicas: *replicas,
                        ready: *ready,
                        ..Default::default()
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_direct_stable_change_keeps_the_old_version_serving_until_the_new_one_is_ready() {
        let serving = split(&[("v1", 100)]);
        // v2 starting (0/2 ready): v1 keeps all traffic and its two pods.
        let mut p = plan("v2", &[("v2", 2)], &[("v2", 100)]);
        let hold = hold(
            &mut p,
            &serving,
            &seen(&[("v1", 2, 2), ("v2", 2, 0)]),
            false,
        );
        assert_eq!(p.traffic, split(&[("v1", 100)]));
        assert_eq!(
            p.replicas,
            BTreeMap::from([("v1".into(), 2), ("v2".into(), 2)])
        );
        let hold = hold.unwrap();
        assert_eq!(
            hold.message(),
            "traffic stays on v1 until v2 (0/2 pods ready) can take it"
        );
        // One of two ready is not enough for a plain change.
        let mut p = plan("v2", &[("v2", 2)], &[("v2", 100)]);
        assert!(
            super::hold(
                &mut p,
                &serving,
                &seen(&[("v1", 2, 2), ("v2", 2, 1)]),
                false
            )
            .is_some()
        );
        // Both ready: the plan stands, v1 is no longer planned (it drains and goes).
        let mut p = plan("v2", &[("v2", 2)], &[("v2", 100)]);
        let before = p.clone();
        assert!(
            super::hold(
                &mut p,
                &serving,
                &seen(&[("v1", 2, 2), ("v2", 2, 2)]),
                false
            )
            .is_none()
        );
        assert_eq!(p, before);
    }

    #[test]
    fn a_rollback_moves_as_soon_as_one_pod_of_the_version_it_returns_to_is_ready() {
        let serving = split(&[("v2", 100)]);
        let mut p = plan("v1", &[("v1", 3), ("v2", 0)], &[("v1", 100)]);
        assert!(hold(&mut p, &serving, &seen(&[("v1", 1, 1), ("v2", 3, 3)]), true).is_none());
        assert_eq!(p.traffic, split(&[("v1", 100)]));
        // Not even one: the failing version keeps serving rather than nobody.
        let mut p = plan("v1", &[("v1", 3), ("v2", 0)], &[("v1", 100)]);
        assert!(hold(&mut p, &serving, &seen(&[("v1", 1, 0), ("v2", 3, 3)]), true).is_some());
        assert_eq!(p.traffic, split(&[("v2", 100)]));
        assert_eq!(p.replicas["v2"], 3, "kept at the pods it has");
    }

    #[test]
    fn versions_already_serving_may_change_their_share_without_waiting() {
        // A canary step (v2 already at 10 %) and a promotion to 100 % need no wait.
        let serving = split(&[("v1", 90), ("v2", 10)]);
        for traffic in [&[("v1", 50), ("v2", 50)][..], &[("v2", 100)][..]] {
            let mut p = plan("v1", &[("v1", 1), ("v2", 1)], traffic);
            assert!(
                hold(
                    &mut p,
                    &serving,
                    &seen(&[("v1", 1, 1), ("v2", 1, 0)]),
                    false
                )
                .is_none()
            );
            assert_eq!(p.traffic, split(traffic));
        }
    }

    #[test]
    fn an_experiment_variant_gets_its_share_once_its_pods_are_ready() {
        let serving = split(&[("v1", 100)]);
        let mut p = plan("v1", &[("v1", 1), ("v3", 1)], &[("v1", 70), ("v3", 30)]);
        let h = hold(
            &mut p,
            &serving,
            &seen(&[("v1", 1, 1), ("v3", 1, 0)]),
            false,
        )
        .unwrap();
        assert_eq!(p.traffic, serving);
        assert_eq!(p.replicas["v3"], 1, "the new variant still starts");
        assert_eq!(h.waiting[0].version, "v3");
        let mut p = plan("v1", &[("v1", 1), ("v3", 1)], &[("v1", 70), ("v3", 30)]);
        assert!(
            hold(
                &mut p,
                &serving,
                &seen(&[("v1", 1, 1), ("v3", 1, 1)]),
                false
            )
            .is_none()
        );
    }

    #[test]
    fn with_nothing_serving_there_is_nothing_to_protect() {
        // First deploy (no split yet), or the serving version has no ready pod either.
        for (serving, observed) in [
            (vec![], seen(&[("v2", 1, 0)])),
            (split(&[("v1", 100)]), seen(&[("v1", 1, 0), ("v2", 1, 0)])),
            (split(&[("v1", 100)]), seen(&[("v2", 1, 0)])),
        ] {
            let mut p = plan("v2", &[("v2", 1)], &[("v2", 100)]);
            assert!(hold(&mut p, &serving, &observed, false).is_none());
            assert_eq!(p.traffic, split(&[("v2", 100)]));
        }
    }

    #[test]
    fn a_version_scaled_to_zero_that_is_serving_is_not_held_for() {
        // Scale from zero: v1 is the split, its pod is starting; no other version is involved.
        let serving = split(&[("v1", 100)]);
        let mut p = plan("v1", &[("v1", 1)], &[("v1", 100)]);
        assert!(hold(&mut p, &serving, &seen(&[("v1", 1, 0)]), false).is_none());
    }
}
