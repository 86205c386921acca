//! The writing end of the pipeline: server-side apply of children (skipped when the object
//! already carries the hash of what would be applied), status through the status subresource
//! (skipped when equal), deletions, and Events. Every write is counted in the metrics.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::events::{Event, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::build::{APPLIED_HASH, MANAGER};
use crate::conditions::Transition;
use crate::error::Error;
use crate::metrics::Metrics;

/// Applies `desired` unless the cached object already carries its hash. Returns whether it wrote.
pub async fn apply_child<K>(
    client: &Client,
    cache: &Store<K>,
    desired: &K,
    metrics: &Metrics,
) -> Result<bool, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let namespace = desired.namespace().unwrap_or_default();
    let name = desired.name_any();
    let wanted = desired.annotations().get(APPLIED_HASH);
    let key = ObjectRef::new(&name).within(&namespace);
    if let Some(current) = cache.get(&key)
        && current.annotations().get(APPLIED_HASH) == wanted
        && current.meta().deletion_timestamp.is_none()
    {
        return Ok(false);
    }
    let api: Api<K> = Api::namespaced(client.clone(), &namespace);
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(desired),
    )
    .await?;
    metrics.write(K::kind(&()).as_ref(), "apply");
    Ok(true)
}

/// Deletes a child (foreground: its pods go first); an object already gone is not an error.
pub async fn delete_child<K>(
    client: &Client,
    namespace: &str,
    name: &str,
    metrics: &Metrics,
) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.delete(name, &DeleteParams::foreground()).await {
        Ok(_) => {
            metrics.write(K::kind(&()).as_ref(), "delete");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Writes `status` with server-side apply on the status subresource, unless it equals `current`.
pub async fn apply_status<K, S>(
    client: &Client,
    object: &K,
    current: Option<&S>,
    status: &S,
    metrics: &Metrics,
) -> Result<bool, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
    S: Serialize + PartialEq,
{
    if current == Some(status) {
        return Ok(false);
    }
    let api: Api<K> = Api::namespaced(client.clone(), &object.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &object.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    metrics.write(K::kind(&()).as_ref(), "status");
    Ok(true)
}

/// Publishes one Event per condition transition. A failed Event is logged, not retried: the
/// status already says what happened.
pub async fn publish<K>(
    recorder: &Recorder,
    object: &K,
    transitions: Vec<Transition>,
    metrics: &Metrics,
) where
    K: Resource<DynamicType = ()>,
{
    let reference = object.object_ref(&());
    for t in transitions {
        let event = Event {
            type_: t.type_,
            reason: t.reason,
            note: Some(t.message),
            action: "Reconcile".into(),
            secondary: None,
        };
        match recorder.publish(&event, &reference).await {
            Ok(()) => metrics.write("Event", "create"),
            Err(e) => tracing::warn!(error = %e, "could not publish an Event"),
        }
    }
}
