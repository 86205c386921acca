//! The ModelVersion controller: validates, records the accepted spec's hash (immutability on API
//! servers without CEL), and measures cold starts from the version's pods.

use std::sync::Arc;
use std::time::Duration;

use ferry_crds::{ModelVersion, condition::types};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;

use crate::Context;
use crate::apply::{apply_status, publish};
use crate::conditions::{Wanted, merge};
use crate::error::Error;
use crate::validate::{model_version_problems, spec_hash};

const CONTROLLER: &str = "modelversion";
/// How long a reconcile waits for the pod cache's first listing before it writes the status
/// without a cold start (see `reconcile_inner`).
const PODS_WAIT: Duration = Duration::from_secs(10);
/// Pod annotation naming the ModelVersion a pod runs (labels are cut at 63 characters; names are not).
pub const VERSION_ANNOTATION: &str = "serving.ferry.dev/model-version";

pub async fn reconcile(mv: Arc<ModelVersion>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics
        .measure(CONTROLLER, reconcile_inner(&mv, &ctx))
        .await
        .map(|_| Action::requeue(Duration::from_secs(300)))
}

async fn reconcile_inner(mv: &ModelVersion, ctx: &Context) -> Result<&'static str, Error> {
    // Validity needs no cache; only the cold start reads the pods. A pod cache that does not
    // fill (a watch the operator may not make) delays the cold start, never the status.
    let pods_listed = tokio::time::timeout(PODS_WAIT, ctx.pods.wait_until_ready())
        .await
        .is_ok_and(|r| r.is_ok());
    if mv.metadata.deletion_timestamp.is_some() {
        return Ok("deleting");
    }
    let current = mv.status.clone();
    let mut status = current.clone().unwrap_or_default();
    let problems = model_version_problems(mv);
    let valid = if problems.is_empty() {
        status.spec_hash.get_or_insert_with(|| spec_hash(&mv.spec));
        Wanted::new(
            types::VALID,
            true,
            "Valid",
            "the spec is valid and can be served".into(),
        )
    } else {
        Wanted::new(types::VALID, false, "InvalidSpec", problems.join("; "))
    };
    status.observed_generation = mv.metadata.generation;
    status.source = Some(mv.spec.source.summary());
    if pods_listed && let Some(seconds) = cold_start_seconds(mv, ctx) {
        status.cold_start_seconds = Some(seconds);
    }
    // Ready/Stalled as kstatus reads them: a ModelVersion is done once validated (it is only a
    // description; the pods belong to the LLMDeployments that use it).
    let summary = if valid.status == ferry_crds::ConditionStatus::True {
        [
            Wanted::new(types::READY, true, "Valid", valid.message.clone()),
            Wanted::new(
                types::RECONCILING,
                false,
                "Valid",
                "nothing under way".into(),
            ),
            Wanted::new(types::STALLED, false, "Valid", "nothing blocks it".into()),
        ]
    } else {
        [
            Wanted::new(types::READY, false, "InvalidSpec", valid.message.clone()),
            Wanted::new(
                types::RECONCILING,
                false,
                "InvalidSpec",
                "nothing under way: it waits for a spec change".into(),
            ),
            Wanted::new(types::STALLED, true, "InvalidSpec", valid.message.clone()),
        ]
    };
    let (conditions, transitions) = merge(
        &status.conditions,
        &[&[valid][..], &summary[..]].concat(),
        mv.metadata.generation,
        &Time(Timestamp::now()),
    );
    status.conditions = conditions;
    apply_status(&ctx.client, mv, current.as_ref(), &status, &ctx.metrics).await?;
    publish(&ctx.recorder, mv, transitions, &ctx.metrics).await;
    Ok(if problems.is_empty() {
        "valid"
    } else {
        "invalid"
    })
}

/// Creation → Ready of the most recently created ready pod of this version, in whole seconds
/// (timestamps have second precision).
fn cold_start_seconds(mv: &ModelVersion, ctx: &Context) -> Option<f64> {
    let namespace = mv.namespace();
    let name = mv.name_any();
    ctx.pods
        .state()
        .iter()
        .filter(|p| {
            p.namespace() == namespace && p.annotations().get(VERSION_ANNOTATION) == Some(&name)
        })
        .filter_map(|p| Some((p.creation_timestamp()?, ready_since(p)?)))
        .max_by_key(|(created, _)| created.0)
        .map(|(created, ready)| (ready.0.as_second() - created.0.as_second()) as f64)
}

fn ready_since(pod: &Pod) -> Option<Time> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?
        .last_transition_time
        .clone()
}

/// The ModelVersion a pod runs, for the pod watch.
pub fn pod_to_version(pod: Pod) -> Option<ObjectRef<ModelVersion>> {
    let name = pod.annotations().get(VERSION_ANNOTATION)?;
    Some(ObjectRef::new(name).within(&pod.namespace()?))
}
