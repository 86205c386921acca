//! The pure middle of the LLMDeployment reconcile. From the spec, the status it last wrote, what
//! the cluster shows (the versions' Deployments), what was read from outside ([`Signals`]: the
//! canary's numbers, the pods' queue depth, the experiment's numbers) and the time, [`plan`]
//! decides everything: the rollout step, which versions run with how many pods, the traffic
//! split, the objects to apply and the status to write. No I/O and no clock: the reconcile
//! gathers the signals first, and tests call this very function with plain values.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_crds::{
    AnalysisResult, LLMDeployment, LLMDeploymentStatus, ModelVersion, Phase, RolloutState,
    RolloutStatus, TrafficTarget, VariantStats, condition::types,
};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::analysis::{self, Measured};
use crate::autoscale::{self, History};
use crate::build::{Desired, Observed, Plan, Settings, build_plan};
use crate::conditions::Wanted;
use crate::handover;
use crate::rollout::{self, Controls, Note, Observation};

/// What was read from outside the API server for this reconcile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Signals {
    /// The canary analysis's numbers, when one was due ([`rollout::analysis_due`]), or why they
    /// could not be read.
    pub measured: Option<Result<Measurement, String>>,
    /// Each version's ready pods and their summed queue depth (autoscaling only).
    pub load: BTreeMap<String, PodsLoad>,
    /// Requests the routers hold now for the model, for want of a ready pod.
    pub held: u64,
    /// An experiment's per-variant numbers (empty: none read).
    pub variants: Vec<VariantStats>,
}

/// One analysis window's numbers: the canary's, and the stable's over the same window (when the
/// comparison with the stable is on and the stable takes traffic).
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    pub canary: Measured,
    pub stable: Option<Measured>,
    /// `router` or `prometheus`.
    pub source: &'static str,
}

/// The ready pods of one version and what their `ferry_queue_depth` said.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodsLoad {
    pub pods: usize,
    pub queue: u64,
    /// Every pod answered.
    pub complete: bool,
}

/// Everything [`plan`] reads.
pub struct Inputs<'a> {
    pub llmd: &'a LLMDeployment,
    /// The referenced ModelVersions and those serving now.
    pub versions: &'a BTreeMap<String, ModelVersion>,
    /// The versions' Deployments.
    pub observed: &'a BTreeMap<String, Observed>,
    pub signals: &'a Signals,
    pub settings: &'a Settings,
    pub now: Timestamp,
    /// Seconds on a monotonic clock, for the autoscaler's stabilization windows.
    pub mono_seconds: f64,
    /// How often an autoscaled deployment is looked at.
    pub autoscale_interval: Duration,
}

/// What [`plan`] decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    pub plan: Plan,
    /// The objects to apply, and the status without the conditions merged in.
    pub desired: Desired,
    pub status: LLMDeploymentStatus,
    pub conditions: Vec<Wanted>,
    /// The current split kept because the new one is not ready yet.
    pub hold: Option<handover::Hold>,
    pub record: Option<RolloutStatus>,
    pub notes: Vec<Note>,
    /// Reconcile again after this long at the latest.
    pub requeue: Duration,
}

/// Periodic re-check even when nothing changed (drift of children made by hand is also watched).
pub const RESYNC: Duration = Duration::from_secs(300);
/// How often a held split looks again at the pods of the versions it waits for (their
/// Deployments' changes trigger a reconcile too).
const HOLD_POLL: Duration = Duration::from_secs(2);
/// How often a deployment scaled to zero asks the routers for held requests.
const ZERO_POLL: Duration = Duration::from_secs(1);
/// How often an experiment's per-variant numbers are refreshed.
const EXPERIMENT_STATS: Duration = Duration::from_secs(15);
/// `Progressing` reason (and Event) while the current split waits for the new one's pods.
const WAITING_FOR_READY_PODS: &str = "WaitingForReadyPods";

/// Decides this reconcile. `histories` holds the autoscaler's past wishes per version (kept by the
/// caller between reconciles).
pub fn plan(inputs: &Inputs, histories: &mut BTreeMap<String, History>) -> Planned {
    let llmd = inputs.llmd;
    let spec = &llmd.spec;
    let now = inputs.now;
    let controls = Controls::from_annotations(llmd.annotations());
    let previous = llmd.status.as_ref().and_then(|s| s.rollout.clone());
    let mut requeue = RESYNC;

    let analysis = match (
        &inputs.signals.measured,
        previous.as_ref(),
        spec.canary.as_ref(),
    ) {
        (Some(measured), Some(record), Some(canary)) => {
            Some(judge(llmd, record, canary, measured, now))
        }
        _ => None,
    };

    // Pods: the stable's fixed or autoscaled count first, since a promoting canary matches it.
    let mut sizer = Sizer {
        inputs,
        histories,
        queue_depth: BTreeMap::new(),
    };
    let stable_now = rollout::roles(spec, previous.as_ref(), now).stable;
    let stable_pods = sizer.size(&stable_now, None);
    let canary_start = spec.canary.as_ref().map_or(1, |c| c.replicas);
    let obs = Observation {
        now,
        generation: llmd.metadata.generation.unwrap_or(0),
        canary_ready: spec
            .canary
            .as_ref()
            .and_then(|c| inputs.observed.get(&c.version))
            .map_or(0, |o| o.ready),
        canary_start_pods: canary_start,
        canary_promote_pods: stable_pods,
        cold_start_timeout: Duration::from_secs(u64::from(inputs.settings.server.startup_seconds)),
    };
    let decision = rollout::advance(spec, previous.as_ref(), controls, &obs, analysis.as_ref());
    if let Some(r) = decision.requeue {
        requeue = requeue.min(r);
    }
    let roles = rollout::roles(spec, decision.record.as_ref(), now);

    let mut replicas = BTreeMap::new();
    let stable_pods = if roles.stable == stable_now {
        stable_pods
    } else {
        sizer.size(&roles.stable, None)
    };
    replicas.insert(roles.stable.clone(), stable_pods);
    let mut traffic = Vec::new();
    if let Some((canary, weight)) = &roles.canary {
        let pods = if roles.promoting {
            stable_pods
        } else {
            sizer.size(canary, Some(canary_start))
        };
        replicas.insert(canary.clone(), pods);
        if *weight > 0 {
            traffic.push(target(&roles.stable, 100 - weight, None));
            traffic.push(target(canary, *weight, None));
        }
    }
    if let Some(warm) = &roles.warm {
        // Kept as it is, ready to take the traffic back.
        let pods = inputs
            .observed
            .get(warm)
            .map_or(stable_pods, |o| o.replicas.max(1));
        replicas.insert(warm.clone(), pods);
    }
    for cold in &roles.cold {
        replicas.insert(cold.clone(), 0);
    }
    if let Some(experiment) = &spec.experiment {
        for v in &experiment.variants {
            if !replicas.contains_key(&v.version) {
                let pods = sizer.size(&v.version, None);
                replicas.insert(v.version.clone(), pods);
            }
            if v.weight > 0 {
                traffic.push(target(&v.version, v.weight, Some(&v.name)));
            }
        }
        requeue = requeue.min(EXPERIMENT_STATS);
    }
    if traffic.is_empty() {
        traffic.push(target(&roles.stable, 100, None));
    }
    let mut plan = Plan {
        stable: roles.stable,
        replicas,
        traffic,
        queue_depth: sizer.queue_depth,
    };

    // Traffic moves only to versions that can take it; a rollback (moving off a version the
    // rollout condemned) needs one ready pod, any other change every wanted pod.
    let serving = llmd
        .status
        .as_ref()
        .map(|s| s.traffic.clone())
        .unwrap_or_default();
    let urgent = decision.record.as_ref().is_some_and(|r| {
        matches!(r.state, RolloutState::RolledBack | RolloutState::Failed)
            && serving
                .iter()
                .any(|t| t.version == r.version && t.weight > 0)
    });
    let hold = handover::hold(&mut plan, &serving, inputs.observed, urgent);
    let mut notes = decision.notes;
    let was_holding = llmd
        .status
        .iter()
        .flat_map(|s| &s.conditions)
        .any(|c| c.type_ == types::PROGRESSING && c.reason == WAITING_FOR_READY_PODS);
    match &hold {
        Some(h) => {
            requeue = requeue.min(HOLD_POLL);
            if !was_holding {
                notes.push(Note {
                    warning: false,
                    reason: WAITING_FOR_READY_PODS,
                    message: h.message(),
                });
            }
        }
        None if was_holding && plan.traffic != serving => notes.push(Note {
            warning: false,
            reason: "TrafficMoved",
            message: format!("traffic moved to {}", split_text(&plan.traffic)),
        }),
        None => {}
    }
    if spec.autoscaling.is_some() {
        requeue = requeue.min(inputs.autoscale_interval);
        if stable_pods == 0 {
            // Scaled to zero: look for held requests every second, the cold start is enough wait.
            requeue = requeue.min(ZERO_POLL);
        }
    }

    let desired = build_plan(
        llmd,
        inputs.versions,
        inputs.observed,
        inputs.settings,
        &plan,
    );
    let mut status = desired.status.clone();
    let mut conditions = desired.conditions.clone();
    let decided = Decided {
        record: decision.record.clone(),
        controls,
        analysis,
        variants: inputs.signals.variants.clone(),
        plan: &plan,
        now,
    };
    crate::status::rollout_status(llmd, &decided, &mut status, &mut conditions);
    if let Some(h) = &hold {
        crate::status::handover_status(h, WAITING_FOR_READY_PODS, &mut status, &mut conditions);
    }
    let summary = crate::conditions::summary(status.phase.as_ref(), &conditions);
    conditions.retain(|c| !summary.iter().any(|s| s.type_ == c.type_));
    conditions.extend(summary);
    Planned {
        plan,
        desired,
        status,
        conditions,
        hold,
        record: decision.record,
        notes,
        requeue,
    }
}

/// What the status of a reconcile is written from.
pub struct Decided<'a> {
    pub plan: &'a Plan,
    pub record: Option<RolloutStatus>,
    pub controls: Controls,
    pub analysis: Option<AnalysisResult>,
    pub variants: Vec<VariantStats>,
    pub now: Timestamp,
}

/// The verdict on the measured window: judged against the SLO and the stable's numbers over the
/// same window (after a promotion, when the previous stable takes no traffic, its numbers from the
/// last analysis before); unreadable metrics make it inconclusive.
fn judge(
    llmd: &LLMDeployment,
    record: &RolloutStatus,
    canary: &ferry_crds::Canary,
    measured: &Result<Measurement, String>,
    now: Timestamp,
) -> AnalysisResult {
    let time = rollout::timestamp(now);
    let slo = llmd.spec.slo.clone().unwrap_or_default();
    let tolerance = &canary.analysis.baseline;
    let promoted = record.state == RolloutState::Promoted;
    let m = match measured {
        Ok(m) => m,
        Err(e) => return analysis::unavailable(&record.version, e, time),
    };
    let baseline = match &m.stable {
        Some(stable) => Some(stable.numbers(&record.previous_stable)),
        None => record.baseline.clone().filter(|_| promoted),
    };
    if tolerance.enabled && baseline.is_none() && !slo_set(&slo) {
        return analysis::unavailable(
            &record.version,
            "no numbers of the stable to compare with and no SLO to judge by",
            time,
        );
    }
    let objectives = analysis::Objectives {
        slo: &slo,
        baseline: baseline.as_ref().map(|b| (b, tolerance)),
        stable_counts: m.stable.as_ref().and_then(|s| s.counts.as_ref()),
    };
    analysis::judge_measured(
        &record.version,
        &m.canary,
        &objectives,
        canary.analysis.min_requests,
        time,
        m.source,
    )
}

fn slo_set(slo: &ferry_crds::Slo) -> bool {
    slo.ttft_p95_ms.is_some()
        || slo.latency_p95_ms.is_some()
        || slo.inter_token_p95_ms.is_some()
        || slo.error_rate_percent.is_some()
}

/// Sizes versions: fixed counts, or the autoscaler's decision on their queue depth.
struct Sizer<'a, 'b> {
    inputs: &'a Inputs<'b>,
    histories: &'a mut BTreeMap<String, History>,
    queue_depth: BTreeMap<String, i64>,
}

impl Sizer<'_, '_> {
    /// Pods for `version`: fixed (a canary's `canary_min`, else `spec.replicas`), or autoscaled
    /// from the queue depth of its ready pods within the autoscaling bounds (a canary's lower
    /// bound is its `canary_min`); held requests wake a version with no pod.
    fn size(&mut self, version: &str, canary_min: Option<i32>) -> i32 {
        let llmd = self.inputs.llmd;
        let Some(a) = &llmd.spec.autoscaling else {
            return canary_min.unwrap_or_else(|| llmd.spec.fixed_replicas());
        };
        let min = canary_min.map_or(a.min_replicas, |min| min.min(a.max_replicas));
        let policy = autoscale::Policy {
            min,
            max: a.max_replicas.max(min),
            target_queue_depth: a.target_queue_depth,
            scale_up_seconds: f64::from(a.scale_up_stabilization_seconds),
            scale_down_seconds: f64::from(a.scale_down_stabilization_seconds),
        };
        let read = self
            .inputs
            .signals
            .load
            .get(version)
            .copied()
            .unwrap_or(PodsLoad {
                complete: true,
                ..Default::default()
            });
        self.queue_depth
            .insert(version.to_string(), read.queue as i64);
        let current = self
            .inputs
            .observed
            .get(version)
            .map_or(min, |o| o.replicas);
        let load = autoscale::Load {
            queue: read.queue,
            complete: read.complete,
            held: if min == 0 && read.pods == 0 {
                self.inputs.signals.held
            } else {
                0
            },
        };
        let history = self.histories.entry(version.to_string()).or_default();
        let pods = autoscale::decide(current, &load, &policy, history, self.inputs.mono_seconds);
        if pods != current {
            tracing::info!(llmd = %llmd.name_any(), version, queue = load.queue, held = load.held, from = current, to = pods, "scaling");
        }
        pods
    }
}

fn target(version: &str, weight: i32, variant: Option<&str>) -> TrafficTarget {
    TrafficTarget {
        version: version.to_string(),
        weight,
        variant: variant.map(String::from),
    }
}

/// `v1 90%, v2 10%`.
fn split_text(traffic: &[TrafficTarget]) -> String {
    let parts: Vec<String> = traffic
        .iter()
        .map(|t| format!("{} {}%", t.version, t.weight))
        .collect();
    parts.join(", ")
}

/// The phase label of the reconcile metric.
pub fn phase_label(status: &LLMDeploymentStatus) -> &'static str {
    match status.phase {
        Some(Phase::Available) => "available",
        Some(Phase::Pending) => "pending",
        Some(Phase::Degraded) => "degraded",
        _ => "other",
    }
}
