//! Keeps the routing table in step with the cluster: reflectors on LLMDeployments and on the pods
//! the operator labels; every change rebuilds the table (within milliseconds, no DNS involved).
//! Also reads each pod's `ferry_queue_depth` so the load of pods shared with other routers counts.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ferry_crds::LLMDeployment;
use ferry_crds::labels::{LABEL_DEPLOYMENT, LABEL_VERSION, label_value};
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
    let mut ready: HashMap<(String, String, String), Vec<Arc<Endpoint>>> = HashMap::new();
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
            .push(endpoint);
    }
    for endpoints in ready.values_mut() {
        endpoints.sort_by(|a, b| a.pod.cmp(&b.pod));
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

fn route_for(
    llmd: &LLMDeployment,
    ready: &HashMap<(String, String, String), Vec<Arc<Endpoint>>>,
) -> Route {
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
        .map(|(version, weight, variant)| Backend {
            endpoints: ready
                .get(&(
                    namespace.clone(),
                    deployment_label.clone(),
                    label_value(&version),
                ))
                .cloned()
                .unwrap_or_default(),
            version,
            weight,
            variant,
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
