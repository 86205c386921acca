//! Keeps the routing table in step with the cluster: reflectors on LLMDeployments and on the pods
//! the operator labels; every change rebuilds the table (within milliseconds, no DNS involved).
//! Also reads each pod's `ferry_queue_depth` so the load of pods shared with other routers counts.
//!
//! Labels alone do not make a pod a backend: a pod is routed to only when a ReplicaSet of the
//! version's own Deployment (the one the operator names `<llmdeployment>-<version>`) controls it,
//! so a pod made by hand with the right labels gets no traffic.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ferry_crds::LLMDeployment;
use ferry_crds::labels::{LABEL_DEPLOYMENT, LABEL_VERSION, child_name, label_value};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{Notify, watch};
use tracing::{debug, warn};

pub use ferry_contract::pods::{queue_depth, ready_address};

use crate::table::{Backend, Endpoint, Route, Sticky, Table};

/// The table from the LLMDeployments and pods seen; endpoints already in `previous` are reused, so
/// in-flight counts survive a rebuild.
pub fn build_table(llmds: &[Arc<LLMDeployment>], pods: &[Arc<Pod>], previous: &Table) -> Table {
    let mut known = previous.endpoints();
    let mut ready: Ready = HashMap::new();
    for pod in pods {
        let Some(addr) = ready_address(pod) else {
            continue;
        };
        let labels = pod.labels();
        let (Some(deployment), Some(version)) =
            (labels.get(LABEL_DEPLOYMENT), labels.get(LABEL_VERSION))
        else {
            continue;
        };
        let Some(owner) = owning_deployment(pod) else {
            continue;
        };
        let name = pod.name_any();
        let endpoint = known
            .remove(&(name.clone(), addr))
            .unwrap_or_else(|| Arc::new(Endpoint::new(name, addr)));
        ready
            .entry((
                pod.namespace().unwrap_or_default(),
                deployment.clone(),
                version.clone(),
            ))
            .or_default()
            .push((endpoint, owner));
    }
    for endpoints in ready.values_mut() {
        endpoints.sort_by(|a, b| a.0.pod.cmp(&b.0.pod));
    }

    // Oldest first, so when two deployments claim one model id, the first one keeps it.
    let mut llmds: Vec<&Arc<LLMDeployment>> = llmds.iter().collect();
    llmds.sort_by_key(|l| {
        (
            l.metadata.creation_timestamp.clone(),
            l.namespace(),
            l.name_any(),
        )
    });
    let mut routes = BTreeMap::new();
    for llmd in llmds {
        let route = route_for(llmd, &ready);
        if let Some(owner) = routes.get(&route.model) {
            let owner: &Route = owner;
            warn!(model = %route.model, kept = %format!("{}/{}", owner.namespace, owner.deployment),
                  ignored = %format!("{}/{}", route.namespace, route.deployment),
                  "two LLMDeployments serve the same model id; the older one keeps it");
            continue;
        }
        routes.insert(route.model.clone(), route);
    }
    Table {
        routes,
        synced: previous.synced,
    }
}

/// Ready pods by (namespace, LLMDeployment label, version label), each with the name of the
/// Deployment that controls it.
type Ready = HashMap<(String, String, String), Vec<(Arc<Endpoint>, String)>>;

/// The Deployment controlling `pod` through its ReplicaSet: the pod's controller is a ReplicaSet
/// named `<deployment>-<pod-template-hash>`, as the Deployment controller names them.
fn owning_deployment(pod: &Pod) -> Option<String> {
    let hash = pod.labels().get("pod-template-hash")?;
    let owner = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))?;
    if owner.kind != "ReplicaSet" || owner.api_version != "apps/v1" {
        return None;
    }
    owner
        .name
        .strip_suffix(hash.as_str())?
        .strip_suffix('-')
        .map(str::to_string)
}

fn route_for(llmd: &LLMDeployment, ready: &Ready) -> Route {
    let namespace = llmd.namespace().unwrap_or_default();
    let deployment = llmd.name_any();
    let status = llmd.status.as_ref();
    let model = status
        .and_then(|s| s.served_model_name.clone())
        .or_else(|| llmd.spec.served_model_name.clone())
        .unwrap_or_else(|| deployment.clone());
    // Until the operator has written a split, the stable version takes everything.
    let mut split: Vec<(String, u32, Option<String>)> = status
        .map(|s| {
            s.traffic
                .iter()
                .map(|t| (t.version.clone(), t.weight.max(0) as u32, t.variant.clone()))
                .collect()
        })
        .unwrap_or_default();
    if split.is_empty() {
        let stable = status
            .and_then(|s| s.stable_version.clone())
            .unwrap_or_else(|| llmd.spec.stable.clone());
        split.push((stable, 100, None));
    }
    let has_variants = split.iter().any(|(_, _, v)| v.is_some());
    let stickiness = match (&llmd.spec.experiment, has_variants) {
        (Some(e), true) => Some(Sticky::from_spec(
            e.stickiness.key,
            e.stickiness.header.as_deref(),
        )),
        (None, true) => Some(Sticky::User),
        _ => None,
    };
    let deployment_label = label_value(&deployment);
    let backends = split
        .into_iter()
        .map(|(version, weight, variant)| {
            // Only the pods of the Deployment the operator made for this version.
            let owner = child_name(&deployment, &version);
            let endpoints = ready
                .get(&(
                    namespace.clone(),
                    deployment_label.clone(),
                    label_value(&version),
                ))
                .into_iter()
                .flatten()
                .filter(|(_, o)| *o == owner)
                .map(|(e, _)| e.clone())
                .collect();
            Backend {
                endpoints,
                version,
                weight,
                variant,
            }
        })
        .collect();
    Route {
        model,
        namespace,
        deployment,
        backends,
        stickiness,
    }
}

/// Watches LLMDeployments and ferry pods (in `namespace`, or everywhere) and publishes a new table
/// on every change. Runs until the process ends.
pub async fn run(client: Client, namespace: Option<String>, table: watch::Sender<Arc<Table>>) {
    let (llmd_api, pod_api): (Api<LLMDeployment>, Api<Pod>) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let changed = Arc::new(Notify::new());
    let (llmds, llmd_writer) = reflector::store();
    let (pods, pod_writer) = reflector::store();
    let llmd_stream = watcher(llmd_api, watcher::Config::default())
        .default_backoff()
        .reflect(llmd_writer)
        .boxed();
    let pod_stream = watcher(pod_api, watcher::Config::default().labels(LABEL_DEPLOYMENT))
        .default_backoff()
        .reflect(pod_writer)
        .boxed();
    tokio::spawn(drive(llmd_stream, changed.clone(), "llmdeployments"));
    tokio::spawn(drive(pod_stream, changed.clone(), "pods"));
    rebuild_on_change(llmds, pods, changed, table).await;
}

async fn drive<S, K>(mut stream: S, changed: Arc<Notify>, what: &'static str)
where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Unpin,
{
    while let Some(event) = stream.next().await {
        match event {
            Ok(_) => changed.notify_one(),
            Err(e) => warn!(error = %e, what, "watch failed; retrying"),
        }
    }
}

async fn rebuild_on_change(
    llmds: Store<LLMDeployment>,
    pods: Store<Pod>,
    changed: Arc<Notify>,
    table: watch::Sender<Arc<Table>>,
) {
    loop {
        changed.notified().await;
        // Let a burst of events (a rollout touches many pods) land in one rebuild.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let synced =
            llmds.wait_until_ready().await.is_ok() && pods.wait_until_ready().await.is_ok();
        let previous = table.borrow().clone();
        let mut next = build_table(&llmds.state(), &pods.state(), &previous);
        next.synced = synced;
        debug!(models = next.routes.len(), "routing table rebuilt");
        table.send_replace(Arc::new(next));
    }
}

/// Every `interval`, reads `ferry_queue_depth` from each pod in the table; a pod that does not
/// answer keeps its last value.
pub async fn scrape_queue_depths(
    table: watch::Receiver<Arc<Table>>,
    client: crate::proxy::UpstreamClient,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let endpoints: Vec<Arc<Endpoint>> = table.borrow().endpoints().into_values().collect();
        let reads = endpoints.into_iter().map(|e| {
            let client = client.clone();
            async move {
                let read = tokio::time::timeout(interval, client.get_text(&e, "/metrics"));
                if let Ok(Ok(text)) = read.await
                    && let Some(depth) = queue_depth(&text)
                {
                    e.set_reported_depth(depth);
                }
            }
        });
        futures::future::join_all(reads).await;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn llmd(name: &str, stable: &str) -> Arc<LLMDeployment> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "serving.ferry.dev/v1alpha1",
                "kind": "LLMDeployment",
                "metadata": {"name": name, "namespace": "team"},
                "spec": {"stable": stable},
            }))
            .unwrap(),
        )
    }

    /// A ready pod of `llmd`/`version` at `ip`, controlled by `owner` (kind, name).
    fn pod(name: &str, ip: &str, owner: Option<(&str, &str)>) -> Arc<Pod> {
        let owners: Vec<_> = owner
            .into_iter()
            .map(|(kind, name)| {
                json!({"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "u1",
                       "controller": true})
            })
            .collect();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {
                    "name": name,
                    "namespace": "team",
                    "labels": {LABEL_DEPLOYMENT: "chat", LABEL_VERSION: "v1",
                               "pod-template-hash": "7d9f8c"},
                    "ownerReferences": owners,
                },
                "spec": {"containers": [{"name": "server"}]},
                "status": {"podIP": ip,
                           "conditions": [{"type": "Ready", "status": "True"}]},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn only_pods_of_the_versions_own_deployment_get_traffic() {
        let pods = [
            pod("real", "10.0.0.1", Some(("ReplicaSet", "chat-v1-7d9f8c"))),
            // Right labels, made by hand.
            pod("bare", "10.0.0.2", None),
            // Right labels, another Deployment's ReplicaSet.
            pod("other", "10.0.0.3", Some(("ReplicaSet", "impostor-7d9f8c"))),
            // Right labels, the right name but not a ReplicaSet.
            pod("job", "10.0.0.4", Some(("Job", "chat-v1-7d9f8c"))),
        ];
        let table = build_table(&[llmd("chat", "v1")], &pods, &Table::default());
        let route = &table.routes["chat"];
        let pods: Vec<&str> = route.backends[0]
            .endpoints
            .iter()
            .map(|e| e.pod.as_str())
            .collect();
        assert_eq!(pods, ["real"]);
    }
}
