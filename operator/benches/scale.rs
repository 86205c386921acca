//! 1,000 LLMDeployments (CPU, `replicas: 0`) created at once against the real local cluster: time
//! until every one has a current `observedGeneration` and its Deployment exists, the operator's
//! peak RSS, and API writes per object. Needs a running local cluster (e.g. left by `e2e/demo.sh`;
//! the server image is named but never started, since no pod is wanted):
//!   FERRY_KUBECONFIG=/tmp/ferry-kube/kubeconfig FERRY_KUBECTL=$HOME/.cache/ferry/kube/tools/kubectl \
//!   FERRY_SERVER_IMAGE=localhost/ferry/server:dev cargo bench -p ferry-operator --bench scale [-- COUNT]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use ferry_crds::LLMDeployment;
use ferry_e2e::Cluster;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{ListParams, PostParams};

#[tokio::main]
async fn main() {
    let count: usize = std::env::args()
        .filter_map(|a| a.parse().ok())
        .next()
        .unwrap_or(1000);
    let cluster = Cluster::get();
    let ns = cluster.temp_namespace("bench-scale");
    let client = cluster.client().await;
    let operator = common::Operator::start(&ns, "bench", &[]);
    operator.metrics_url().await;
    common::apply(
        &ns,
        &common::tiny_model_version("v1", "{pvc: {claimName: unused}}"),
    );

    let llmds: Api<LLMDeployment> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let started = Instant::now();
    futures::stream::iter(0..count)
        .map(|i| {
            let api = llmds.clone();
            async move {
                let spec =
                    serde_json::from_value(serde_json::json!({"stable": "v1", "replicas": 0}))
                        .unwrap();
                api.create(
                    &PostParams::default(),
                    &LLMDeployment::new(&format!("m{i:04}"), spec),
                )
                .await
                .expect("create LLMDeployment");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let created = started.elapsed();
    let mut last = (0, 0);
    loop {
        let list = llmds.list(&ListParams::default()).await.unwrap().items;
        let current = list
            .iter()
            .filter(|d| {
                d.status.as_ref().and_then(|s| s.observed_generation) == d.metadata.generation
            })
            .count();
        let deps = deployments
            .list_metadata(&ListParams::default())
            .await
            .unwrap()
            .items
            .len();
        if (current, deps) != last {
            eprintln!(
                "{:6.1} s: {current} current, {deps} Deployments",
                started.elapsed().as_secs_f64()
            );
            last = (current, deps);
        }
        if current == count && deps == count {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "not converged in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let converged = started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes = operator.metric("ferry_operator_api_writes_total", "").await;
    let peak_kib = operator.peak_rss_kib();
    println!(
        "| LLMDeployments | created in | all reconciled in | operator peak RSS | API writes per object |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {count} | {:.1} s | {:.1} s | {:.1} MiB | {:.2} |",
        created.as_secs_f64(),
        converged.as_secs_f64(),
        peak_kib as f64 / 1024.0,
        writes / count as f64
    );
    for verb in ["apply", "status", "create", "delete"] {
        println!(
            "  writes with verb {verb}: {}",
            operator
                .metric(
                    "ferry_operator_api_writes_total",
                    &format!("verb=\"{verb}\"")
                )
                .await
                + 0.0
        );
    }
}
