//! The LLMDeployment controller: dereference → validate → build → apply → status.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_crds::{
    LLMDeployment, ModelVersion, Phase, RolloutState, RolloutStatus, VariantStats, condition::types,
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
    LABEL_DEPLOYMENT, LABEL_VERSION, Observed, child_name, label_value, served_model_name,
};
use crate::conditions::{Transition, Wanted, merge};
use crate::error::Error;
use crate::plan::{self, Measurement, PodsLoad, RESYNC, Signals};
use crate::rollout::{self, Controls};
use crate::validate::{llmd_problems, referenced_versions};
use crate::{analysis, promql, signals};

const CONTROLLER: &str = "llmdeployment";

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
        // Only ModelVersions missing (a GitOps sync applies them with the LLMDeployment, in any
        // order): it waits for them, reconciling, rather than stall — `helm install --wait` and
        // Argo CD keep waiting instead of failing. Anything else needs a spec change.
        let missing = referenced_versions(llmd)
            .into_iter()
            .filter(|v| !versions.contains_key(v))
            .count();
        let summary = if missing == problems.len() {
            crate::conditions::waiting("ModelVersionNotFound", invalid.message.clone())
        } else {
            crate::conditions::summary(status.phase.as_ref(), std::slice::from_ref(&invalid))
        };
        let mut wanted = vec![invalid];
        wanted.extend(summary);
        let (conditions, transitions) =
            merge(&status.conditions, &wanted, llmd.metadata.generation, &now);
        status.conditions = conditions;
        apply_status(&ctx.client, llmd, current.as_ref(), &status, &ctx.metrics).await?;
        ctx.metrics
            .llm_deployment(&namespace, &llmd.name_any(), Some(&status));
        publish(&ctx.recorder, llmd, transitions, &ctx.metrics).await;
        return Ok(("invalid", RESYNC));
    }

    // Gather every outside read, then plan (pure): rollout, scaling, traffic, objects, status.
    let signals = gather(llmd, &names, ctx, at).await;
    let key = format!("{namespace}/{}", llmd.name_any());
    let mut histories = ctx
        .scaling
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&key)
        .unwrap_or_default();
    let planned = plan::plan(
        &plan::Inputs {
            llmd,
            versions: &versions,
            observed: &observed,
            signals: &signals,
            settings: &ctx.settings,
            now: at,
            mono_seconds: ctx.started.elapsed().as_secs_f64(),
            autoscale_interval: ctx.autoscale_interval,
        },
        &mut histories,
    );
    ctx.scaling
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, histories);
    let desired = &planned.desired;
    let mut status = planned.status.clone();
    let wanted = planned.conditions.clone();

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
    // The policy first: no pod runs without it.
    if let Some(cache) = &ctx.network_policies {
        for policy in &desired.network_policies {
            apply_child(&ctx.client, cache, policy, &ctx.metrics).await?;
        }
    }
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
    transitions.extend(planned.notes.iter().map(|n| Transition {
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
    prune(llmd, desired, &planned.plan.stable, &observed, ctx).await?;
    Ok((plan::phase_label(&status), planned.requeue))
}

/// Every read from outside the API server this reconcile needs (with timeouts): the canary's
/// numbers when an analysis is due, the queue depth of each version's pods and the requests the
/// routers hold (autoscaling), an experiment's per-variant numbers.
async fn gather(
    llmd: &LLMDeployment,
    versions: &[String],
    ctx: &Context,
    now: Timestamp,
) -> Signals {
    let spec = &llmd.spec;
    let model = served_model_name(llmd);
    let controls = Controls::from_annotations(llmd.annotations());
    let previous = llmd.status.as_ref().and_then(|s| s.rollout.as_ref());
    let mut signals = Signals::default();
    if let (Some(window), Some(record), Some(canary)) = (
        rollout::analysis_due(spec, previous, controls, now),
        previous,
        spec.canary.as_ref(),
    ) {
        signals.measured = Some(measure(llmd, &model, record, canary, window, ctx).await);
    }
    if let Some(a) = &spec.autoscaling {
        for version in versions {
            let pods = version_pods(llmd, version, ctx);
            let (queue, complete) = signals::queue_depth(&ctx.http, &pods).await;
            signals.load.insert(
                version.clone(),
                PodsLoad {
                    pods: pods.len(),
                    queue,
                    complete,
                },
            );
        }
        // Scale from zero: requests the routers hold for want of a ready pod wake the version.
        if a.min_replicas == 0 && signals.load.values().any(|l| l.pods == 0) {
            signals.held = ctx.routers.held(&ctx.http, &model).await;
        }
    }
    if let Some(experiment) = &spec.experiment {
        signals.variants = experiment_stats(experiment, &model, ctx).await;
    }
    signals
}

/// One analysis window's numbers: the canary's, from Prometheus or the routers, and the stable's
/// over the same window when the comparison with it is on and it takes traffic (not after a
/// promotion). Routers that did not all answer are an error: nothing is decided on partial numbers.
async fn measure(
    llmd: &LLMDeployment,
    model: &str,
    record: &RolloutStatus,
    canary: &ferry_crds::Canary,
    window: u64,
    ctx: &Context,
) -> Result<Measurement, String> {
    let compare = canary.analysis.baseline.enabled && record.state != RolloutState::Promoted;
    let stable = record.previous_stable.as_str();
    match &canary.analysis.prometheus {
        Some(source) => {
            let (namespace, name) = (llmd.namespace().unwrap_or_default(), llmd.name_any());
            let vars = |version| promql::Vars {
                model,
                version,
                namespace: &namespace,
                name: &name,
                window_seconds: window,
            };
            let canary = promql::measure(&ctx.http, source, &vars(&record.version)).await?;
            let stable = match compare {
                true => Some(promql::measure(&ctx.http, source, &vars(stable)).await?),
                false => None,
            };
            Ok(Measurement {
                canary,
                stable,
                source: "prometheus",
            })
        }
        None => {
            let stats = ctx.routers.summary(&ctx.http, window).await?;
            let summary = stats.complete()?;
            let of = |version: &str| {
                analysis::Measured::from_counts(&analysis::version_counts(
                    summary, model, version, None,
                ))
            };
            Ok(Measurement {
                canary: of(&record.version),
                stable: compare.then(|| of(stable)),
                source: "router",
            })
        }
    }
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
        .filter_map(|p| ferry_contract::pods::ready_address(&p))
        .collect()
}

/// Per-variant numbers over the routers' longest window.
async fn experiment_stats(
    experiment: &ferry_crds::Experiment,
    model: &str,
    ctx: &Context,
) -> Vec<VariantStats> {
    let window = ferry_contract::stats::MAX_WINDOW.as_secs();
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

/// Replicas and ready pods of each named version's Deployment, from the cache.
fn observe(llmd: &LLMDeployment, versions: &[String], ctx: &Context) -> BTreeMap<String, Observed> {
    let namespace = llmd.namespace().unwrap_or_default();
    let name = llmd.name_any();
    let (now, startup) = (Timestamp::now(), ctx.settings.server.startup_seconds);
    versions
        .iter()
        .filter_map(|v| {
            let key = ObjectRef::new(&child_name(&name, v)).within(&namespace);
            let d = ctx.deployments.get(&key)?;
            let status = d.status.clone().unwrap_or_default();
            let selector = d
                .spec
                .as_ref()
                .and_then(|s| s.selector.match_labels.clone())
                .unwrap_or_default();
            let failing = ctx
                .pods
                .state()
                .iter()
                .filter(|p| {
                    p.namespace().as_deref() == Some(namespace.as_str())
                        && !selector.is_empty()
                        && selector.iter().all(|(k, v)| p.labels().get(k) == Some(v))
                        && crate::pod::failing(p, now, startup)
                })
                .count() as i32;
            Some((
                v.clone(),
                Observed {
                    replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
                    ready: status.ready_replicas.unwrap_or(0),
                    failing,
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
    prune_kind(llmd, &ctx.services, &keep, ctx).await?;
    if let Some(cache) = &ctx.network_policies {
        let keep: Vec<String> = desired
            .network_policies
            .iter()
            .map(|p| p.name_any())
            .collect();
        prune_kind(llmd, cache, &keep, ctx).await?;
    }
    Ok(())
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
