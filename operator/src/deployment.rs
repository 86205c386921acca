//! The LLMDeployment controller: dereference → validate → build → apply → status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_crds::{LLMDeployment, LLMDeploymentStatus, ModelVersion, Phase, condition::types};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;

use crate::Context;
use crate::apply::{apply_child, apply_status, delete_child, publish};
use crate::build::{LABEL_DEPLOYMENT, Observed, build, child_name, label_value};
use crate::conditions::{Wanted, merge};
use crate::error::Error;
use crate::validate::{llmd_problems, referenced_versions};

const CONTROLLER: &str = "llmdeployment";
/// Periodic re-check even when nothing changed (drift of children made by hand is also watched).
const RESYNC: Duration = Duration::from_secs(300);

pub async fn reconcile(llmd: Arc<LLMDeployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics
        .measure(CONTROLLER, reconcile_inner(&llmd, &ctx))
        .await
        .map(|_| Action::requeue(RESYNC))
}

async fn reconcile_inner(llmd: &LLMDeployment, ctx: &Context) -> Result<&'static str, Error> {
    ctx.caches_ready().await;
    if llmd.metadata.deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove the children.
        return Ok("deleting");
    }
    let namespace = llmd.namespace().unwrap_or_default();

    // Dereference: the ModelVersions it names, from the cache.
    let versions: BTreeMap<String, ModelVersion> = referenced_versions(llmd)
        .into_iter()
        .filter_map(|v| {
            let mv = ctx
                .model_versions
                .get(&ObjectRef::new(&v).within(&namespace))?;
            Some((v, (*mv).clone()))
        })
        .collect();
    let observed = observe(llmd, &versions, ctx);
    let current = llmd.status.clone();
    let now = Time(Timestamp::now());

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
        publish(&ctx.recorder, llmd, transitions, &ctx.metrics).await;
        return Ok("invalid");
    }

    // Build (pure), then apply what differs.
    let desired = build(llmd, &versions, &observed, &ctx.settings);
    for deployment in &desired.deployments {
        apply_child(&ctx.client, &ctx.deployments, deployment, &ctx.metrics).await?;
    }
    for service in &desired.services {
        apply_child(&ctx.client, &ctx.services, service, &ctx.metrics).await?;
    }
    prune(llmd, &desired, &observed, ctx).await?;

    let mut status = desired.status;
    let previous = current
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let (conditions, transitions) = merge(
        previous,
        &desired.conditions,
        llmd.metadata.generation,
        &now,
    );
    status.conditions = conditions;
    apply_status(&ctx.client, llmd, current.as_ref(), &status, &ctx.metrics).await?;
    publish(&ctx.recorder, llmd, transitions, &ctx.metrics).await;
    Ok(phase_label(&status))
}

fn phase_label(status: &LLMDeploymentStatus) -> &'static str {
    match status.phase {
        Some(Phase::Available) => "available",
        Some(Phase::Pending) => "pending",
        Some(Phase::Degraded) => "degraded",
        _ => "other",
    }
}

/// Replicas and ready pods of each referenced version's Deployment, from the cache.
fn observe(
    llmd: &LLMDeployment,
    versions: &BTreeMap<String, ModelVersion>,
    ctx: &Context,
) -> BTreeMap<String, Observed> {
    let namespace = llmd.namespace().unwrap_or_default();
    let name = llmd.name_any();
    versions
        .keys()
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
    observed: &BTreeMap<String, Observed>,
    ctx: &Context,
) -> Result<(), Error> {
    let stable = observed.get(&llmd.spec.stable).copied().unwrap_or_default();
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
