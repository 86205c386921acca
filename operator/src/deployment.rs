//! The LLMDeployment controller: dereference → validate → build → apply → status.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_crds::{
    AnalysisResult, LLMDeployment, LLMDeploymentStatus, ModelVersion, Phase, RolloutState,
    RolloutStatus, TrafficTarget, VariantStats, condition::types,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;

use crate::Context;
use crate::apply::{apply_child, apply_status, delete_child, publish};
use crate::build::{
    LABEL_DEPLOYMENT, LABEL_VERSION, Observed, Plan, build_plan, child_name, label_value,
    served_model_name,
};
use crate::conditions::{Transition, Wanted, merge};
use crate::error::Error;
use crate::rollout::{self, Controls, Note, Observation};
use crate::validate::{llmd_problems, referenced_versions};
use crate::{analysis, autoscale, handover, promql, signals};

const CONTROLLER: &str = "llmdeployment";
/// Periodic re-check even when nothing changed (drift of children made by hand is also watched).
const RESYNC: Duration = Duration::from_secs(300);

pub async fn reconcile(llmd: Arc<LLMDeployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    let mut requeue = RESYNC;
    ctx.metrics
        .measure(CONTROLLER, async {
            let (label, after) = reconcile_inner(&llmd, &ctx).await?;
            requeue = after;
            Ok(label)
        })
        .await
        .map(|_| Action::requeue(requeue))
}

async fn reconcile_inner(
    llmd: &LLMDeployment,
    ctx: &Context,
) -> Result<(&'static str, Duration), Error> {
    ctx.caches_ready().await;
    let namespace = llmd.namespace().unwrap_or_default();
    if llmd.metadata.deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove the children.
        ctx.metrics
            .llm_deployment(&namespace, &llmd.name_any(), None);
        return Ok(("deleting", RESYNC));
    }

    // Dereference: the ModelVersions it names and those serving now (they keep serving until
    // what replaces them is ready), from the cache.
    let mut names = referenced_versions(llmd);
    for t in llmd.status.iter().flat_map(|s| &s.traffic) {
        if !names.contains(&t.version) {
            names.push(t.version.clone());
        }
    }
    let versions: BTreeMap<String, ModelVersion> = names
        .iter()
        .filter_map(|v| {
            let mv = ctx
                .model_versions
                .get(&ObjectRef::new(v).within(&namespace))?;
            Some((v.clone(), (*mv).clone()))
        })
        .collect();
    let observed = observe(llmd, &names, ctx);
    let current = llmd.status.clone();
    let at = Timestamp::now();
    let now = Time(at);

    // Validate: an invalid spec leaves running workloads alone and says why.
    let problems = llmd_problems(llmd, &versions);
    if !problems.is_empty() {
        let mut status = current.clone().unwrap_or_default();
        status.phase = Some(Phase::Invalid);
        status.observed_generation = llmd.metadata.generation;
        let invalid = Wanted::new(
            types::INVALID_SPEC,
            true,
            "InvalidSpec",
            problems.join("; "),
        );
        let (conditions, transitions) = merge(
            &status.conditions,
            &[invalid],
            llmd.metadata.generation,
            &now,
        );
        status.conditions = conditions;
        apply_status(&ctx.client, llmd, current.as_ref(), &status, &ctx.metrics).await?;
        ctx.metrics
            .llm_deployment(&namespace, &llmd.name_any(), Some(&status));
        publish(&ctx.recorder, llmd, transitions, &ctx.metrics).await;
        return Ok(("invalid", RESYNC));
    }

    // Decide (rollout, experiment, scaling) from status and signals, then build (pure).
    let decided = decide(llmd, &observed, ctx, at).await;
    let desired = build_plan(llmd, &versions, &observed, &ctx.settings, &decided.plan);
    let mut status = desired.status.clone();
    let mut wanted = desired.conditions.clone();
    rollout_status(llmd, &decided, &mut status, &mut wanted);
    handover_status(&decided, &mut status, &mut wanted);

    // Children that grow (or are new) before the status, so a status that names them finds
    // them; a version losing pods shrinks only after the status (traffic) was written, so the
    // router never sends a request to a pod that is going away.
    let shrinks = |d: &Deployment| {
        let version = d.labels().get(LABEL_VERSION).cloned().unwrap_or_default();
        let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        observed
            .iter()
            .any(|(v, o)| label_value(v) == version && o.replicas > wanted)
    };
    let (later, now_too): (Vec<&Deployment>, Vec<&Deployment>) =
        desired.deployments.iter().partition(|d| shrinks(d));
    for deployment in now_too {
        apply_child(&ctx.client, &ctx.deployments, deployment, &ctx.metrics).await?;
    }
    for service in &desired.services {
        apply_child(&ctx.client, &ctx.services, service, &ctx.metrics).await?;
    }
    let previous = current
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let (conditions, mut transitions) = merge(previous, &wanted, llmd.metadata.generation, &now);
    status.conditions = conditions;
    apply_status(&ctx.client, llmd, current.as_ref(), &status, &ctx.metrics).await?;
    ctx.metrics
        .llm_deployment(&namespace, &llmd.name_any(), Some(&status));
    transitions.extend(decided.notes.iter().map(|n| Transition {
        type_: if n.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: n.reason.to_string(),
        message: n.message.clone(),
    }));
    publish(&ctx.recorder, llmd, transitions, &ctx.metrics).await;

    for deployment in later {
        apply_child(&ctx.client, &ctx.deployments, deployment, &ctx.metrics).await?;
    }
    prune(llmd, &desired, &decided.plan.stable, &observed, ctx).await?;
    Ok((phase_label(&status), decided.requeue))
}

/// What [`decide`] settled for this reconcile.
struct Decided {
    plan: Plan,
    /// The current split kept because the new one is not ready yet.
    hold: Option<handover::Hold>,
    record: Option<RolloutStatus>,
    controls: Controls,
    analysis: Option<AnalysisResult>,
    variants: Vec<VariantStats>,
    notes: Vec<Note>,
    requeue: Duration,
    /// The time the decisions were made at.
    now: Timestamp,
}

/// Runs the rollout machine (with an analysis from the routers when one is due), reads the
/// experiment's numbers, and sizes each version (autoscaling on the pods' queue depth).
async fn decide(
    llmd: &LLMDeployment,
    observed: &BTreeMap<String, Observed>,
    ctx: &Context,
    now: Timestamp,
) -> Decided {
    let spec = &llmd.spec;
    let model = served_model_name(llmd);
    let controls = Controls::from_annotations(llmd.annotations());
    let previous = llmd.status.as_ref().and_then(|s| s.rollout.clone());
    let mut requeue = RESYNC;

    let mut analysis = None;
    if let (Some(window), Some(record), Some(canary)) = (
        rollout::analysis_due(spec, previous.as_ref(), controls, now),
        previous.as_ref(),
        spec.canary.as_ref(),
    ) {
        analysis = Some(analyse(llmd, &model, record, canary, window, ctx, now).await);
    }

    // Pods: the stable's fixed or autoscaled count first, since a promoting canary matches it.
    let stable_now = rollout::roles(spec, previous.as_ref(), now).stable;
    let mut queue_depth = BTreeMap::new();
    let stable_pods = size(llmd, &stable_now, None, observed, ctx, &mut queue_depth).await;
    let canary_start = spec.canary.as_ref().map_or(1, |c| c.replicas);
    let obs = Observation {
        now,
        generation: llmd.metadata.generation.unwrap_or(0),
        canary_ready: spec
            .canary
            .as_ref()
            .and_then(|c| observed.get(&c.version))
            .map_or(0, |o| o.ready),
        canary_start_pods: canary_start,
        canary_promote_pods: stable_pods,
        cold_start_timeout: Duration::from_secs(u64::from(ctx.settings.server.startup_seconds)),
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
        size(llmd, &roles.stable, None, observed, ctx, &mut queue_depth).await
    };
    replicas.insert(roles.stable.clone(), stable_pods);
    let mut traffic = Vec::new();
    let mut variants = Vec::new();
    if let Some((canary, weight)) = &roles.canary {
        let pods = if roles.promoting {
            stable_pods
        } else {
            size(
                llmd,
                canary,
                Some(canary_start),
                observed,
                ctx,
                &mut queue_depth,
            )
            .await
        };
        replicas.insert(canary.clone(), pods);
        if *weight > 0 {
            traffic.push(target(&roles.stable, 100 - weight, None));
            traffic.push(target(canary, *weight, None));
        }
    }
    if let Some(warm) = &roles.warm {
        // Kept as it is, ready to take the traffic back.
        let pods = observed
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
                let pods = size(llmd, &v.version, None, observed, ctx, &mut queue_depth).await;
                replicas.insert(v.version.clone(), pods);
            }
            if v.weight > 0 {
                traffic.push(target(&v.version, v.weight, Some(&v.name)));
            }
        }
        variants = experiment_stats(experiment, &model, ctx).await;
        requeue = requeue.min(EXPERIMENT_STATS);
    }
    if traffic.is_empty() {
        traffic.push(target(&roles.stable, 100, None));
    }
    let mut plan = Plan {
        stable: roles.stable,
        replicas,
        traffic,
        queue_depth,
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
    let hold = handover::hold(&mut plan, &serving, observed, urgent);
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
        requeue = requeue.min(ctx.autoscale_interval);
        if stable_pods == 0 {
            // Scaled to zero: look for held requests every second, the cold start is enough wait.
            requeue = requeue.min(ZERO_POLL);
        }
    }
    Decided {
        plan,
        hold,
        record: decision.record,
        controls,
        analysis,
        variants,
        notes,
        requeue,
        now,
    }
}

/// How often a held split looks again at the pods of the versions it waits for (their
/// Deployments' changes trigger a reconcile too).
const HOLD_POLL: Duration = Duration::from_secs(2);

/// `Progressing` reason (and Event) while the current split waits for the new one's pods.
const WAITING_FOR_READY_PODS: &str = "WaitingForReadyPods";

/// `v1 90%, v2 10%`.
fn split_text(traffic: &[TrafficTarget]) -> String {
    let parts: Vec<String> = traffic
        .iter()
        .map(|t| format!("{} {}%", t.version, t.weight))
        .collect();
    parts.join(", ")
}

/// While the current split is kept: the phase says a change is under way, `Available` says who
/// serves, `Progressing` what it waits for (the stable's own pod counts would say "no ready pods"
/// of a version that takes no traffic yet).
fn handover_status(decided: &Decided, status: &mut LLMDeploymentStatus, wanted: &mut Vec<Wanted>) {
    let Some(hold) = &decided.hold else {
        return;
    };
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
        Wanted::new(
            types::PROGRESSING,
            true,
            WAITING_FOR_READY_PODS,
            hold.message(),
        ),
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

/// One canary analysis over the last `window` seconds: the canary's numbers, from Prometheus or
/// the routers, judged against the SLO and the stable's numbers over the same window (after a
/// promotion, when the previous stable takes no traffic, against its numbers from the last
/// analysis before). Metrics that cannot be read, or routers that did not all answer, make it
/// inconclusive: nothing is decided on partial numbers.
async fn analyse(
    llmd: &LLMDeployment,
    model: &str,
    record: &RolloutStatus,
    canary: &ferry_crds::Canary,
    window: u64,
    ctx: &Context,
    now: Timestamp,
) -> AnalysisResult {
    let time = rollout::timestamp(now);
    let slo = llmd.spec.slo.clone().unwrap_or_default();
    let min_requests = canary.analysis.min_requests;
    let tolerance = &canary.analysis.baseline;
    let promoted = record.state == RolloutState::Promoted;
    let stable = record.previous_stable.as_str();
    let measured = match &canary.analysis.prometheus {
        Some(source) => {
            let (namespace, name) = (llmd.namespace().unwrap_or_default(), llmd.name_any());
            let vars = |version| promql::Vars {
                model,
                version,
                namespace: &namespace,
                name: &name,
                window_seconds: window,
            };
            let canary_numbers = promql::measure(&ctx.http, source, &vars(&record.version)).await;
            let stable_numbers = if tolerance.enabled && !promoted {
                promql::measure(&ctx.http, source, &vars(stable))
                    .await
                    .map(Some)
            } else {
                Ok(None)
            };
            canary_numbers
                .and_then(|c| Ok((c, stable_numbers?)))
                .map(|(c, b)| (c, b, "prometheus"))
        }
        None => ctx
            .routers
            .summary(&ctx.http, window)
            .await
            .and_then(|stats| {
                let summary = stats.complete()?;
                let of = |version: &str| {
                    analysis::Measured::from_counts(&analysis::version_counts(
                        summary, model, version, None,
                    ))
                };
                let baseline = (tolerance.enabled && !promoted).then(|| of(stable));
                Ok((of(&record.version), baseline, "router"))
            }),
    };
    match measured {
        Ok((m, baseline, source)) => {
            let baseline = match baseline {
                Some(b) => Some(b.numbers(stable)),
                None => record.baseline.clone().filter(|_| promoted),
            };
            let objectives = analysis::Objectives {
                slo: &slo,
                baseline: baseline.as_ref().map(|b| (b, tolerance)),
            };
            if promoted && tolerance.enabled && baseline.is_none() && !slo_set(&slo) {
                return analysis::unavailable(
                    &record.version,
                    "no baseline numbers from before the promotion and no SLO to judge by",
                    time,
                );
            }
            analysis::judge_measured(&record.version, &m, &objectives, min_requests, time, source)
        }
        Err(e) => analysis::unavailable(&record.version, &e, time),
    }
}

fn slo_set(slo: &ferry_crds::Slo) -> bool {
    slo.ttft_p95_ms.is_some()
        || slo.latency_p95_ms.is_some()
        || slo.inter_token_p95_ms.is_some()
        || slo.error_rate_percent.is_some()
}

/// How often a deployment scaled to zero asks the routers for held requests.
const ZERO_POLL: Duration = Duration::from_secs(1);

/// How often an experiment's per-variant numbers are refreshed.
const EXPERIMENT_STATS: Duration = Duration::from_secs(15);

fn target(version: &str, weight: i32, variant: Option<&str>) -> TrafficTarget {
    TrafficTarget {
        version: version.to_string(),
        weight,
        variant: variant.map(String::from),
    }
}

/// Pods for `version`: fixed (a canary's `canary_min`, else `spec.replicas`), or autoscaled from
/// the queue depth of its ready pods within the autoscaling bounds (a canary's lower bound is its
/// `canary_min`).
async fn size(
    llmd: &LLMDeployment,
    version: &str,
    canary_min: Option<i32>,
    observed: &BTreeMap<String, Observed>,
    ctx: &Context,
    queue_depth: &mut BTreeMap<String, i64>,
) -> i32 {
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
    let pods = version_pods(llmd, version, ctx);
    let (queue, complete) = signals::queue_depth(&ctx.http, &pods).await;
    queue_depth.insert(version.to_string(), queue as i64);
    let current = observed.get(version).map_or(min, |o| o.replicas);
    // Scale from zero: requests the routers hold for want of a ready pod wake the version.
    let held = if min == 0 && pods.is_empty() {
        ctx.routers.held(&ctx.http, &served_model_name(llmd)).await
    } else {
        0
    };
    let load = autoscale::Load {
        queue,
        complete,
        held,
    };
    let key = format!(
        "{}/{}/{version}",
        llmd.namespace().unwrap_or_default(),
        llmd.name_any()
    );
    let now = ctx.started.elapsed().as_secs_f64();
    let mut histories = ctx.scaling.lock().unwrap_or_else(|e| e.into_inner());
    let history = histories.entry(key).or_default();
    let pods = autoscale::decide(current, &load, &policy, history, now);
    if pods != current {
        tracing::info!(llmd = %llmd.name_any(), version, queue, held, from = current, to = pods, "scaling");
    }
    pods
}

/// Addresses of the ready server pods of one version of `llmd`, from the cache (the router's
/// rule: Ready, an address, not terminating; the container port named `http`).
fn version_pods(llmd: &LLMDeployment, version: &str, ctx: &Context) -> Vec<SocketAddr> {
    let namespace = llmd.namespace();
    let (owner, version) = (label_value(&llmd.name_any()), label_value(version));
    ctx.pods
        .state()
        .into_iter()
        .filter(|p| {
            p.namespace() == namespace
                && p.labels().get(LABEL_DEPLOYMENT) == Some(&owner)
                && p.labels().get(LABEL_VERSION) == Some(&version)
        })
        .filter_map(|p| ferry_router::discovery::ready_address(&p))
        .collect()
}

/// Per-variant numbers over the routers' longest window.
async fn experiment_stats(
    experiment: &ferry_crds::Experiment,
    model: &str,
    ctx: &Context,
) -> Vec<VariantStats> {
    let window = ferry_router::stats::MAX_WINDOW.as_secs();
    let Ok(stats) = ctx.routers.summary(&ctx.http, window).await else {
        return Vec::new();
    };
    let summary = &stats.summary;
    experiment
        .variants
        .iter()
        .map(|v| {
            let counts = analysis::version_counts(summary, model, &v.version, Some(&v.name));
            analysis::variant_stats(&v.name, &v.version, v.weight, window, &counts)
        })
        .collect()
}

/// The rollout's part of the status: record, canary columns, phase, and the Progressing and
/// RolledBack conditions.
fn rollout_status(
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

fn phase_label(status: &LLMDeploymentStatus) -> &'static str {
    match status.phase {
        Some(Phase::Available) => "available",
        Some(Phase::Pending) => "pending",
        Some(Phase::Degraded) => "degraded",
        _ => "other",
    }
}

/// Replicas and ready pods of each named version's Deployment, from the cache.
fn observe(llmd: &LLMDeployment, versions: &[String], ctx: &Context) -> BTreeMap<String, Observed> {
    let namespace = llmd.namespace().unwrap_or_default();
    let name = llmd.name_any();
    versions
        .iter()
        .filter_map(|v| {
            let key = ObjectRef::new(&child_name(&name, v)).within(&namespace);
            let d = ctx.deployments.get(&key)?;
            let status = d.status.clone().unwrap_or_default();
            Some((
                v.clone(),
                Observed {
                    replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
                    ready: status.ready_replicas.unwrap_or(0),
                },
            ))
        })
        .collect()
}

/// Removes this LLMDeployment's Deployments and Services that the build no longer wants, once
/// the stable version has all its pods ready (so a change of `stable` never leaves no pod).
async fn prune(
    llmd: &LLMDeployment,
    desired: &crate::build::Desired,
    stable: &str,
    observed: &BTreeMap<String, Observed>,
    ctx: &Context,
) -> Result<(), Error> {
    let stable = observed.get(stable).copied().unwrap_or_default();
    let wanted = desired.status.replicas.unwrap_or(0);
    if stable.ready < wanted {
        return Ok(());
    }
    let keep: Vec<String> = desired.deployments.iter().map(|d| d.name_any()).collect();
    prune_kind(llmd, &ctx.deployments, &keep, ctx).await?;
    let keep: Vec<String> = desired.services.iter().map(|s| s.name_any()).collect();
    prune_kind(llmd, &ctx.services, &keep, ctx).await
}

/// Deletes the cached objects of one kind that belong to `llmd` and are not in `keep`.
async fn prune_kind<K>(
    llmd: &LLMDeployment,
    cache: &kube::runtime::reflector::Store<K>,
    keep: &[String],
    ctx: &Context,
) -> Result<(), Error>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let namespace = llmd.namespace().unwrap_or_default();
    let owner = label_value(&llmd.name_any());
    let uid = llmd.uid();
    for object in cache.state() {
        let ours = object.labels().get(LABEL_DEPLOYMENT) == Some(&owner)
            && object
                .owner_references()
                .iter()
                .any(|o| Some(&o.uid) == uid.as_ref());
        if object.namespace().as_deref() == Some(namespace.as_str())
            && ours
            && !keep.contains(&object.name_any())
            && object.meta().deletion_timestamp.is_none()
        {
            delete_child::<K>(&ctx.client, &namespace, &object.name_any(), &ctx.metrics).await?;
        }
    }
    Ok(())
}
