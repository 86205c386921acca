//! The writing end of the pipeline: server-side apply of children (skipped when the object
//! already carries the hash of what would be applied and still holds every value the operator
//! sets), status through the status subresource (skipped when equal), deletions, and Events.
//! Every write is counted in the metrics.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::build::{APPLIED_HASH, MANAGER};
use crate::conditions::Transition;
use crate::error::Error;
use crate::events::Recorder;
use crate::metrics::Metrics;

/// Applies `desired` unless the cached object already carries its hash and every value `desired`
/// sets (a hand edit of replicas, image or args is undone). Returns whether it wrote.
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
        match difference(
            &serde_json::to_value(desired)?,
            &serde_json::to_value(&*current)?,
        ) {
            None => return Ok(false),
            Some(path) => tracing::info!(
                kind = %K::kind(&()),
                %name,
                field = %path,
                "undoing a change made outside the operator"
            ),
        }
    }
    let api: Api<K> = Api::namespaced(client.clone(), &namespace);
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(desired),
        )
        .await;
    match applied {
        // A list item whose key was edited by hand (a Service port's number) is a second item to
        // server-side apply, and two items may clash ("Duplicate value"). A merge patch replaces
        // the lists whole, which is what undoing the edit means.
        Err(kube::Error::Api(e)) if e.code == 422 => {
            let value = serde_json::to_value(desired)?;
            let patch = serde_json::json!({
                "metadata": {"labels": value["metadata"]["labels"], "annotations": value["metadata"]["annotations"]},
                "spec": value["spec"],
            });
            api.patch(
                &name,
                &PatchParams {
                    field_manager: Some(MANAGER.to_string()),
                    ..Default::default()
                },
                &Patch::Merge(&patch),
            )
            .await?;
        }
        other => {
            other?;
        }
    }
    metrics.write(K::kind(&()).as_ref(), "apply");
    Ok(true)
}

/// Whether `live` holds every value `desired` sets: objects field by field (fields only `live`
/// has are the API server's defaults or other managers' and do not count), lists item by item
/// (an added or removed item counts), scalars equal (numbers by value). A zero value (empty list,
/// object or string, `false`, 0) the server left out counts as held.
pub fn holds(desired: &serde_json::Value, live: &serde_json::Value) -> bool {
    difference(desired, live).is_none()
}

/// The path of the first value `live` does not hold (see [`holds`]).
pub fn difference(desired: &serde_json::Value, live: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match (desired, live) {
        (Value::Object(want), Value::Object(have)) => want.iter().find_map(|(k, v)| {
            let inner = match have.get(k) {
                Some(h) => difference(v, h),
                // The API server leaves out zero values (Go's `omitempty`).
                None => match v {
                    Value::Null | Value::Bool(false) => None,
                    Value::Array(a) if a.is_empty() => None,
                    Value::Object(o) if o.is_empty() => None,
                    Value::String(s) if s.is_empty() => None,
                    Value::Number(n) if n.as_f64() == Some(0.0) => None,
                    _ => Some(String::new()),
                },
            };
            inner.map(|rest| format!(".{k}{rest}"))
        }),
        (Value::Array(want), Value::Array(have)) if want.len() == have.len() => want
            .iter()
            .zip(have)
            .enumerate()
            .find_map(|(i, (w, h))| difference(w, h).map(|rest| format!("[{i}]{rest}"))),
        (Value::Number(w), Value::Number(h)) if w.as_f64() == h.as_f64() => None,
        (w, h) if w == h => None,
        _ => Some(String::new()),
    }
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
        match recorder
            .publish(&reference, t.type_, &t.reason, &t.message)
            .await
        {
            Ok(()) => metrics.write("Event", "create"),
            Err(e) => tracing::warn!(error = %e, "could not publish an Event"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::holds;
    use serde_json::json;

    #[test]
    fn an_object_holds_what_was_applied_despite_server_defaults_but_not_hand_edits() {
        let desired = json!({"metadata": {"labels": {"a": "1"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [
                {"name": "server", "image": "s:1", "args": ["--x", "1"], "env": []}]}}}});
        let live = json!({"metadata": {"labels": {"a": "1", "added-by": "someone"}, "uid": "u"},
            "spec": {"replicas": 2, "revisionHistoryLimit": 10, "template": {"spec": {
                "containers": [{"name": "server", "image": "s:1", "args": ["--x", "1"],
                                "terminationMessagePath": "/dev/termination-log"}],
                "dnsPolicy": "ClusterFirst"}}},
            "status": {"replicas": 2}});
        assert!(holds(&desired, &live));
        for (path, edited) in [
            ("/spec/replicas", json!(5)),
            ("/spec/template/spec/containers/0/image", json!("s:2")),
            ("/spec/template/spec/containers/0/args", json!(["--x", "2"])),
            ("/metadata/labels/a", json!("2")),
        ] {
            let mut changed = live.clone();
            *changed.pointer_mut(path).unwrap() = edited;
            assert!(!holds(&desired, &changed), "{path}");
        }
        let mut extra = live.clone();
        extra["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "sidecar"}));
        assert!(!holds(&desired, &extra), "an added container");
        let mut removed = live.clone();
        removed["spec"].as_object_mut().unwrap().remove("replicas");
        assert!(!holds(&desired, &removed));
        assert!(holds(&json!({"n": 1}), &json!({"n": 1.0})));
        assert!(holds(
            &json!({"publishNotReadyAddresses": false}),
            &json!({})
        ));
        assert!(!holds(
            &json!({"publishNotReadyAddresses": true}),
            &json!({})
        ));
    }
}
