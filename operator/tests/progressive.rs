//! Progressive delivery on the real local Kubernetes: real `ferry-server` pods (tiny model), a
//! real `ferry-router` (in this process) taking client traffic and feeding the analysis, and the
//! operator binary deciding. Numbers are printed for the note.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use common::{Operator, apply, llm_deployment, tiny_model_claim, wait_for};
use ferry_crds::{LLMDeployment, Phase, RolloutState};
use ferry_e2e::{Cluster, TempNamespace, argocd};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A tiny-model ModelVersion on the shared claim, with extra server environment (fault flags).
fn model_version(name: &str, env: &str) -> String {
    format!(
        "apiVersion: serving.ferry.dev/v1alpha1
kind: ModelVersion
metadata: {{name: {name}}}
spec:
  source: {{pvc: {{claimName: weights}}}}
  format: gguf
  files: [tiny-q8_0.gguf]
  engine: {{maxNumSeqs: 4, maxQueue: 64}}
  resources: {{gpus: 0}}
  env: {env}
"
    )
}

/// `ferry-router` serving in this process, watching the test's namespace.
struct Router {
    base: String,
    stop: Option<oneshot::Sender<()>>,
}

impl Router {
    async fn start(ns: &TempNamespace, extra: &[&str]) -> Self {
        let mut argv = vec![
            "ferry-router",
            "--watch-namespace",
            &ns.name,
            "--log-format",
            "text",
            "--threads",
            "2",
        ];
        argv.extend_from_slice(extra);
        let args = ferry_router::Args::parse_from(argv);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let client = Cluster::get().client().await;
        tokio::spawn(ferry_router::serve_cluster(
            args,
            client,
            listener,
            async move {
                let _ = stopped.await;
            },
        ));
        let http = reqwest::Client::new();
        wait_for("the router to be ready", Duration::from_secs(30), || {
            let (http, url) = (http.clone(), format!("{base}/ready"));
            async move {
                let ok = http.get(url).send().await.ok()?.status().is_success();
                ok.then_some(())
            }
        })
        .await;
        Self {
            base,
            stop: Some(stop),
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Clients sending chat completions through the router until stopped, counting answers by the
/// version that gave them and every failure.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<std::sync::Mutex<BTreeMap<String, u64>>>,
    failed: Arc<AtomicU64>,
    last_failure: Arc<std::sync::Mutex<String>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(router: &Router, model: &str, clients: usize) -> Self {
        Self::start_mixed(router, model, clients, 0)
    }

    /// `clients` clients, the first `streaming` of them asking for streams.
    fn start_mixed(router: &Router, model: &str, clients: usize, streaming: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok: Arc<std::sync::Mutex<BTreeMap<String, u64>>> = Default::default();
        let failed = Arc::new(AtomicU64::new(0));
        let last_failure: Arc<std::sync::Mutex<String>> = Default::default();
        let http = reqwest::Client::new();
        let tasks = (0..clients)
            .map(|i| {
                let (stop, ok, failed, last_failure, http) = (
                    stop.clone(),
                    ok.clone(),
                    failed.clone(),
                    last_failure.clone(),
                    http.clone(),
                );
                let url = format!("{}/v1/chat/completions", router.base);
                let body = serde_json::json!({
                    "model": model,
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 4,
                    "user": format!("client-{i}"),
                    "stream": i < streaming,
                });
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match http.post(&url).json(&body).send().await {
                            Ok(r) if r.status().is_success() => {
                                let version = r
                                    .headers()
                                    .get("x-ferry-version")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("?")
                                    .to_string();
                                let _ = r.bytes().await;
                                *ok.lock().unwrap().entry(version).or_default() += 1;
                            }
                            Ok(r) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                let status = r.status();
                                let header = |name: &str| {
                                    r.headers()
                                        .get(name)
                                        .and_then(|v| v.to_str().ok())
                                        .unwrap_or("-")
                                        .to_string()
                                };
                                let from = format!(
                                    "version {} pod {}",
                                    header("x-ferry-version"),
                                    header("x-ferry-pod")
                                );
                                *last_failure.lock().unwrap() = format!(
                                    "{status} from {from}: {}",
                                    r.text().await.unwrap_or_default()
                                );
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                *last_failure.lock().unwrap() = e.to_string();
                            }
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            ok,
            failed,
            last_failure,
            tasks,
        }
    }

    fn answered_by(&self) -> BTreeMap<String, u64> {
        self.ok.lock().unwrap().clone()
    }

    /// Stops the clients (each finishes its request) and returns (answers by version, failures).
    async fn finish(self) -> (BTreeMap<String, u64>, u64, String) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let ok = self.ok.lock().unwrap().clone();
        let last = self.last_failure.lock().unwrap().clone();
        (ok, self.failed.load(Ordering::Relaxed), last)
    }
}

struct Setup {
    ns: TempNamespace,
    pv: String,
    llmds: Api<LLMDeployment>,
    deployments: Api<Deployment>,
    router: Router,
}

async fn setup(prefix: &str) -> Setup {
    setup_with_router(prefix, &[]).await
}

async fn setup_with_router(prefix: &str, router_args: &[&str]) -> Setup {
    let cluster = Cluster::get();
    let ns = cluster.temp_namespace(prefix);
    let client = cluster.client().await;
    let pv = tiny_model_claim(&ns, "weights");
    let router = Router::start(&ns, router_args).await;
    Setup {
        llmds: Api::namespaced(client.clone(), &ns.name),
        deployments: Api::namespaced(client, &ns.name),
        ns,
        pv,
        router,
    }
}

impl Setup {
    fn operator(&self, name: &str, extra: &[&str]) -> Operator {
        let mut args = vec!["--router-stats-url", &self.router.base];
        args.extend_from_slice(extra);
        Operator::start(&self.ns, name, &args)
    }

    async fn status(&self, name: &str) -> ferry_crds::LLMDeploymentStatus {
        self.llmds
            .get(name)
            .await
            .ok()
            .and_then(|d| d.status)
            .unwrap_or_default()
    }

    /// The LLMDeployment as the API server returns it (what Argo CD and kstatus read).
    async fn object(&self, name: &str) -> serde_json::Value {
        serde_json::to_value(self.llmds.get(name).await.expect("get the LLMDeployment")).unwrap()
    }

    async fn replicas(&self, deployment: &str) -> i32 {
        self.deployments
            .get(deployment)
            .await
            .ok()
            .and_then(|d| d.spec?.replicas)
            .unwrap_or(-1)
    }

    async fn wait_phase(&self, name: &str, phase: Phase, timeout: Duration) {
        wait_for(&format!("{name} to be {phase:?}"), timeout, || async {
            (self.status(name).await.phase == Some(phase)).then_some(())
        })
        .await;
    }

    /// LLMDeployment `chat` serving `stable` on one pod, once it is Available.
    async fn serve_stable(&self, stable: &str) {
        apply(&self.ns, &llm_deployment("chat", stable, 1));
        self.wait_phase("chat", Phase::Available, Duration::from_secs(120))
            .await;
    }

    fn cleanup(&self) {
        Cluster::get().kubectl(["delete", "pv", &self.pv, "--wait=false"]);
    }
}

/// `chat` on `v1` (one pod) rolling out `canary` (the flow-style `spec.canary`), judged by `slo`.
fn with_canary(canary: &str, slo: &str) -> String {
    format!(
        "apiVersion: serving.ferry.dev/v1alpha1
kind: LLMDeployment
metadata: {{name: chat}}
spec: {{stable: v1, replicas: 1, servedModelName: chat, canary: {canary}, slo: {slo}}}
"
    )
}

/// `chat` serving `stable`, scaled on queue depth by `autoscaling` (a flow-style mapping).
fn autoscaled(stable: &str, autoscaling: &str) -> String {
    format!(
        "apiVersion: serving.ferry.dev/v1alpha1
kind: LLMDeployment
metadata: {{name: chat}}
spec: {{stable: {stable}, autoscaling: {autoscaling}}}
"
    )
}

/// Runs `kubectl ferry ARGS` (the plugin binary) against this test's cluster and namespace;
/// returns (success, stdout + stderr).
fn plugin(ns: &TempNamespace, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-ferry"))
        .args(args)
        .args(["-n", &ns.name, "--kubeconfig"])
        .arg(Cluster::get().kubeconfig())
        .output()
        .expect("run kubectl-ferry");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `STATUS/REASON` of the condition `type_` in `object`'s status (empty when absent).
fn condition(object: &serde_json::Value, type_: &str) -> String {
    object["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .map(|c| {
            format!(
                "{}/{}",
                c["status"].as_str().unwrap_or_default(),
                c["reason"].as_str().unwrap_or_default()
            )
        })
        .unwrap_or_default()
}

fn rollout_state(status: &ferry_crds::LLMDeploymentStatus) -> Option<(RolloutState, i32)> {
    status.rollout.as_ref().map(|r| (r.state, r.step))
}

/// The most common GitOps change: `stable` edited to a new version, no canary. The new version's
/// cold start (8 s of injected load delay) is longer than the router would hold a request (2 s),
/// so moving the traffic before its pod is ready would fail requests.
#[tokio::test]
async fn a_direct_stable_change_moves_traffic_only_once_the_new_version_is_ready_and_no_request_fails()
 {
    let s = setup_with_router("pd-switch", &["--hold-seconds", "2"]).await;
    let _operator = s.operator("op-switch", &[]);
    apply(&s.ns, &model_version("v1", "[]"));
    apply(
        &s.ns,
        &model_version("v2", "[{name: FERRY_FAULT_LOAD_DELAY_MS, value: '8000'}]"),
    );
    s.serve_stable("v1").await;
    let load = Load::start(&s.router, "chat", 3);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let changed = Instant::now();
    apply(&s.ns, &llm_deployment("chat", "v2", 1));

    // While v2 starts: the routers keep v1, and status and Events say why.
    let waiting = wait_for("the split held on v1", Duration::from_secs(20), || async {
        let st = s.status("chat").await;
        let held = st.observed_generation == Some(2)
            && st.traffic.len() == 1
            && st.traffic[0].version == "v1"
            && st.phase == Some(Phase::Progressing);
        let progressing = st.conditions.iter().find(|c| c.type_ == "Progressing")?;
        (held && progressing.reason == "WaitingForReadyPods").then(|| progressing.message.clone())
    })
    .await;
    assert_eq!(
        waiting,
        "traffic stays on v1 until v2 (0/1 pods ready) can take it"
    );
    let st = s.status("chat").await;
    let available = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Available")
        .unwrap();
    assert_eq!(
        (available.status.as_str(), available.reason.as_str()),
        ("True", "PreviousVersionServing")
    );

    // Once v2 is ready the traffic moves, and v1 goes.
    wait_for("the split on v2", Duration::from_secs(90), || async {
        let st = s.status("chat").await;
        (st.traffic.len() == 1
            && st.traffic[0].version == "v2"
            && st.phase == Some(Phase::Available))
        .then_some(())
    })
    .await;
    let moved_after = changed.elapsed();
    wait_for("v1's Deployment gone", Duration::from_secs(30), || async {
        (s.replicas("chat-v1").await == -1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (answered, failed, last) = load.finish().await;
    let total: u64 = answered.values().sum();
    println!(
        "direct stable change v1 -> v2 (v2 cold start ~8 s, router hold 2 s): traffic moved after \
         {:.1} s; answered {answered:?}, failed {failed}",
        moved_after.as_secs_f64()
    );
    assert_eq!(failed, 0, "requests failed during the change; last: {last}");
    assert!(answered.get("v1").copied().unwrap_or(0) > 0, "{answered:?}");
    assert!(answered.get("v2").copied().unwrap_or(0) > 0, "{answered:?}");
    assert!(total > 10, "{answered:?}");
    assert!(
        moved_after > Duration::from_secs(8),
        "moved before v2 could be ready"
    );

    let events =
        s.ns.kubectl([
            "get",
            "events",
            "--field-selector",
            "involvedObject.kind=LLMDeployment",
            "-o",
            "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
        ])
        .ok("events");
    assert!(
        events.contains(
            "WaitingForReadyPods: traffic stays on v1 until v2 (0/1 pods ready) can take it"
        ),
        "{events}"
    );
    assert!(
        events.contains("TrafficMoved: traffic moved to v2 100%"),
        "{events}"
    );
    s.cleanup();
}

#[tokio::test]
async fn a_good_canary_is_promoted_step_by_step_even_across_an_operator_restart() {
    let s = setup("pd-good").await;
    let mut operator = s.operator("op-1", &[]);
    apply(&s.ns, &model_version("v1", "[]"));
    apply(&s.ns, &model_version("v2", "[]"));
    s.serve_stable("v1").await;
    let load = Load::start(&s.router, "chat", 4);
    apply(
        &s.ns,
        &with_canary(
            "{version: v2, replicas: 1, steps: [{weight: 20, pauseSeconds: 0}, {weight: 50, pauseSeconds: 4}], \
             analysis: {intervalSeconds: 3, minRequests: 3, failureLimit: 2}, rollbackWindowSeconds: 8}",
            "{latencyP95Ms: 5000, errorRatePercent: 5}",
        ),
    );

    // Every (state, step) the status shows, in order, across a restart of the operator, with
    // what Argo CD's health check (the chart's Lua script) and kstatus's Reconciling say then.
    let mut seen: Vec<(RolloutState, i32)> = Vec::new();
    let mut health: Vec<(RolloutState, String, String)> = Vec::new();
    let mut restarted = false;
    let mut paused = false;
    let started = Instant::now();
    loop {
        let object = s.object("chat").await;
        let status: ferry_crds::LLMDeploymentStatus =
            serde_json::from_value(object["status"].clone()).unwrap_or_default();
        if let Some(now) = rollout_state(&status)
            && seen.last() != Some(&now)
        {
            let (argo, message) = argocd::health(&object);
            println!(
                "{:>6.1} s: {now:?}; Argo CD {argo} ({message}); Reconciling {}",
                started.elapsed().as_secs_f64(),
                condition(&object, "Reconciling")
            );
            health.push((now.0, argo, condition(&object, "Reconciling")));
            seen.push(now);
        }
        if !paused && seen.last() == Some(&(RolloutState::Analysing, 1)) {
            // The second step, paused with `kubectl ferry pause` (it waits for the operator):
            // Argo CD says Suspended, the plugin's status says paused; `resume` and it goes on.
            let (ok, out) = plugin(&s.ns, &["pause", "chat"]);
            assert!(ok, "kubectl ferry pause: {out}");
            let object = s.object("chat").await;
            let (argo, message) = argocd::health(&object);
            assert_eq!(argo, "Suspended", "{message}");
            let (ok, shown) = plugin(&s.ns, &["status", "chat"]);
            assert!(ok, "{shown}");
            assert!(shown.contains("Health:  paused (Paused)"), "{shown}");
            assert!(
                shown.contains("Canary:  v2 Analysing, step 2/2 at 50%"),
                "{shown}"
            );
            println!(
                "paused: Argo CD {argo} ({message}); Reconciling {}; kubectl ferry status:\n{shown}",
                condition(&object, "Reconciling")
            );
            let (ok, out) = plugin(&s.ns, &["resume", "chat"]);
            assert!(ok, "kubectl ferry resume: {out}");
            paused = true;
        }
        if !restarted && seen.last() == Some(&(RolloutState::Analysing, 0)) {
            // Mid-rollout: kill the operator (no clean shutdown) and start another one.
            operator.kill();
            tokio::time::sleep(Duration::from_secs(4)).await;
            operator = s.operator("op-2", &[]);
            restarted = true;
        }
        if seen.last().is_some_and(|s| s.0 == RolloutState::Promoted) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "no promotion after 180 s; seen {seen:?}; status {:?}\n{}",
            s.status("chat").await,
            operator.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // No step repeated or skipped, none went back (Promoting may pass between two polls).
    let mut steps = seen.clone();
    steps.retain(|x| x.0 != RolloutState::Promoting);
    assert_eq!(
        steps,
        [
            (RolloutState::Starting, 0),
            (RolloutState::Analysing, 0),
            (RolloutState::Analysing, 1),
            (RolloutState::Promoted, 1)
        ],
        "{seen:?}"
    );
    let status = s.status("chat").await;
    assert_eq!(status.stable_version.as_deref(), Some("v2"));
    assert_eq!(status.phase, Some(Phase::Promoted));
    assert_eq!(status.traffic.len(), 1);
    assert_eq!(status.traffic[0].version, "v2");
    let analysis = status.last_analysis.expect("an analysis in status");
    assert_eq!(analysis.verdict, ferry_crds::Verdict::Pass, "{analysis:?}");
    // The canary really took traffic during the steps, and takes all of it now (requests sent
    // before the switch have had time to finish).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = load.answered_by();
    assert!(before.get("v2").copied().unwrap_or(0) > 0, "{before:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = load.answered_by();
    assert_eq!(
        after.get("v1"),
        before.get("v1"),
        "v1 still answered after the promotion: {before:?} -> {after:?}"
    );
    // Under way until the rollback window ends, whatever the step: Progressing for Argo CD,
    // Reconciling=True for kstatus (Flux, Helm 4's --wait).
    for (state, argo, reconciling) in &health {
        assert_eq!(argo, "Progressing", "{state:?}: {health:?}");
        assert!(reconciling.starts_with("True/"), "{state:?}: {health:?}");
    }
    // After the rollback window the previous stable is scaled to zero; the phase settles.
    s.wait_phase("chat", Phase::Available, Duration::from_secs(60))
        .await;
    let object = s.object("chat").await;
    let (argo, message) = argocd::health(&object);
    assert_eq!(argo, "Healthy", "{message}");
    assert_eq!(condition(&object, "Ready"), "True/Ready");
    assert!(condition(&object, "Reconciling").starts_with("False/"));
    assert!(condition(&object, "Stalled").starts_with("False/"));
    assert_eq!(
        object["status"]["observedGeneration"], object["metadata"]["generation"],
        "kstatus needs the generation observed"
    );
    println!("after the rollback window: Argo CD {argo} ({message}); Ready True");
    // The plugin's history: the rollout's Events in order, and the last analysis.
    let (ok, history) = plugin(&s.ns, &["history", "chat"]);
    assert!(ok, "{history}");
    assert!(history.contains("Rollout of v2 (from v1"), "{history}");
    assert!(history.contains("Last analysis: "), "{history}");
    // Oldest first, to the event: each step, then Promoting, then Promoted.
    let at = |needle: &str| {
        history
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in the history:\n{history}"))
    };
    assert!(
        at("at 20% of traffic") < at("at 50% of traffic"),
        "{history}"
    );
    assert!(at("at 50% of traffic") < at(" Promoting "), "{history}");
    assert!(at(" Promoting ") < at(" Promoted "), "{history}");
    println!("kubectl ferry history:\n{history}");
    wait_for("v1 scaled to 0", Duration::from_secs(30), || async {
        (s.replicas("chat-v1").await == 0).then_some(())
    })
    .await;
    let (answered, failed, last) = load.finish().await;
    println!("answers by version: {answered:?}; failed: {failed}");
    assert_eq!(
        failed, 0,
        "client requests failed during the rollout: {last}"
    );
    s.cleanup();
}

/// `kubectl ferry abort` rolls a canary back at once, with reason `Aborted`, and takes its
/// annotation away again so that the next canary is not aborted too; a verb with no canary under
/// way is refused in plain words; Argo CD shows Degraded until the spec changes.
#[tokio::test]
async fn kubectl_ferry_aborts_a_canary_and_refuses_when_there_is_none() {
    let s = setup("pd-abort").await;
    let _operator = s.operator("op", &[]);
    apply(&s.ns, &model_version("v1", "[]"));
    apply(&s.ns, &model_version("v2", "[]"));
    s.serve_stable("v1").await;
    let (ok, refused) = plugin(&s.ns, &["abort", "chat"]);
    assert!(!ok);
    assert!(refused.contains("has no canary under way"), "{refused}");
    let (ok, missing) = plugin(&s.ns, &["status", "nope"]);
    assert!(!ok);
    assert!(
        missing.contains("no LLMDeployment \"nope\" in namespace"),
        "{missing}"
    );
    apply(
        &s.ns,
        &with_canary(
            "{version: v2, steps: [{weight: 50, pauseSeconds: 600}], \
             analysis: {intervalSeconds: 3, minRequests: 3, failureLimit: 2}}",
            "{latencyP95Ms: 5000}",
        ),
    );
    wait_for(
        "the canary to take traffic",
        Duration::from_secs(120),
        || async {
            let state = rollout_state(&s.status("chat").await)?;
            (state.0 == RolloutState::Analysing).then_some(())
        },
    )
    .await;
    let started = Instant::now();
    let (ok, out) = plugin(&s.ns, &["abort", "chat"]);
    assert!(ok, "kubectl ferry abort: {out}");
    println!(
        "kubectl ferry abort returned after {:.1} s:\n{out}",
        started.elapsed().as_secs_f64()
    );
    let object = s.object("chat").await;
    assert_eq!(
        object["metadata"]["annotations"]["serving.ferry.dev/abort"],
        serde_json::Value::Null,
        "the abort annotation was left behind"
    );
    let status = s.status("chat").await;
    assert_eq!(status.phase, Some(Phase::RolledBack));
    assert_eq!(status.traffic.len(), 1);
    assert_eq!(status.traffic[0].version, "v1");
    let (argo, message) = argocd::health(&object);
    assert_eq!(argo, "Degraded", "{message}");
    assert!(message.starts_with("Aborted: "), "{message}");
    let (ok, history) = plugin(&s.ns, &["history", "chat"]);
    assert!(ok, "{history}");
    println!("after abort: Argo CD {argo} ({message})\nkubectl ferry history:\n{history}");
    s.cleanup();
}

/// `v1` serving with 6 clients on it through the router, then the canary `v2-slow` (1.5 s of
/// injected latency) at 50% with `analysis` and `slo`; waits up to `within` for the rollback.
/// Returns how long after the canary took traffic the rollback came, the status then, and the
/// load (still running).
async fn roll_back_a_slow_canary(
    s: &Setup,
    analysis: &str,
    slo: &str,
    within: Duration,
) -> (Duration, ferry_crds::LLMDeploymentStatus, Load) {
    apply(&s.ns, &model_version("v1", "[]"));
    apply(
        &s.ns,
        &model_version("v2-slow", "[{name: FERRY_FAULT_LATENCY_MS, value: '1500'}]"),
    );
    s.serve_stable("v1").await;
    let load = Load::start(&s.router, "chat", 6);
    apply(
        &s.ns,
        &with_canary(
            &format!(
                "{{version: v2-slow, steps: [{{weight: 50, pauseSeconds: 60}}], \
                 analysis: {analysis}}}"
            ),
            slo,
        ),
    );
    let analysing = wait_for(
        "the canary to take traffic",
        Duration::from_secs(120),
        || async {
            let state = rollout_state(&s.status("chat").await)?;
            (state.0 == RolloutState::Analysing).then(Instant::now)
        },
    )
    .await;
    let rolled_back = wait_for("the rollback", within, || async {
        let status = s.status("chat").await;
        (status.phase == Some(Phase::RolledBack)).then_some(status)
    })
    .await;
    (analysing.elapsed(), rolled_back, load)
}

#[tokio::test]
async fn a_slow_canary_is_rolled_back_within_the_failure_limit_and_no_request_fails() {
    let s = setup("pd-bad").await;
    let operator = s.operator("op", &[]);
    let (to_rollback, rolled_back, load) = roll_back_a_slow_canary(
        &s,
        "{intervalSeconds: 3, minRequests: 3, failureLimit: 2}",
        "{latencyP95Ms: 1000}",
        Duration::from_secs(60),
    )
    .await;
    // Traffic is back on the stable (the router follows status within milliseconds).
    let at_rollback = load.answered_by();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = load.answered_by();
    let (answered, failed, last) = load.finish().await;
    println!(
        "canary at 50% -> rolled back: {:.1} s (failureLimit 2 x interval 3 s); answers {answered:?}; failed {failed}",
        to_rollback.as_secs_f64()
    );
    assert!(
        to_rollback < Duration::from_secs(2 * 3 + 5),
        "rolled back after {to_rollback:?}"
    );
    assert_eq!(rolled_back.traffic.len(), 1);
    assert_eq!(rolled_back.traffic[0].version, "v1");
    assert_eq!(rolled_back.stable_version.as_deref(), Some("v1"));
    // Stalled until the spec changes: Degraded for Argo CD, a failure for kstatus.
    let object = s.object("chat").await;
    let (argo, message) = argocd::health(&object);
    assert_eq!(argo, "Degraded", "{message}");
    assert!(
        message.starts_with("SloBreached: canary v2-slow"),
        "{message}"
    );
    assert_eq!(condition(&object, "Stalled"), "True/SloBreached");
    assert_eq!(condition(&object, "Ready"), "False/SloBreached");
    println!("rolled back: Argo CD {argo} ({message})");
    let record = rolled_back.rollout.clone().unwrap();
    assert_eq!(record.state, RolloutState::RolledBack);
    let message = record.message.unwrap();
    assert!(
        message.starts_with("latency p95 ") && message.contains(" ms > 1000 ms over "),
        "{message}"
    );
    let llmd = s.llmds.get("chat").await.unwrap();
    let condition = llmd
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "RolledBack")
        .unwrap();
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("True", "SloBreached")
    );
    assert!(condition.message.contains("latency p95"), "{condition:?}");
    // The spec is untouched (GitOps), the canary is at zero pods, and the stable kept serving.
    assert_eq!(
        llmd.spec.canary.as_ref().map(|c| c.version.as_str()),
        Some("v2-slow")
    );
    wait_for("the canary at 0 pods", Duration::from_secs(10), || async {
        (s.replicas("chat-v2-slow").await == 0).then_some(())
    })
    .await;
    assert!(
        at_rollback.get("v2-slow").copied().unwrap_or(0) > 0,
        "{at_rollback:?}"
    );
    assert!(
        later.get("v1") > at_rollback.get("v1"),
        "{at_rollback:?} -> {later:?}"
    );
    assert_eq!(failed, 0, "client requests failed: {last}");
    // Not retried while the spec stays: still rolled back a while later.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(s.status("chat").await.phase, Some(Phase::RolledBack));
    let events =
        s.ns.kubectl(["get", "events", "-o", "jsonpath={.items[*].reason}"])
            .ok("events");
    assert!(events.contains("SloBreached"), "{events}");
    drop(operator);
    s.cleanup();
}

/// TTFT is the first generated token: a canary slow only to its first token (1.5 s of injected
/// delay before it, nothing after) breaches `ttftP95Ms` and is rolled back, while its end-to-end
/// latency stays within `latencyP95Ms`. Half the clients stream (TTFT from the first event with
/// text, not the role chunk), half do not (TTFT from the server's header).
#[tokio::test]
async fn a_canary_slow_to_its_first_token_is_rolled_back_by_ttft_while_its_latency_is_within_slo() {
    let s = setup("pd-ttft").await;
    let _operator = s.operator("op", &[]);
    apply(&s.ns, &model_version("v1", "[]"));
    apply(
        &s.ns,
        &model_version(
            "v2-prefill",
            "[{name: FERRY_FAULT_FIRST_TOKEN_DELAY_MS, value: '1500'}]",
        ),
    );
    s.serve_stable("v1").await;
    let load = Load::start_mixed(&s.router, "chat", 6, 3);
    apply(
        &s.ns,
        &with_canary(
            "{version: v2-prefill, steps: [{weight: 50, pauseSeconds: 60}], \
             analysis: {intervalSeconds: 3, minRequests: 3, failureLimit: 2, baseline: {enabled: false}}}",
            "{ttftP95Ms: 1000, latencyP95Ms: 6000}",
        ),
    );
    let rolled_back = wait_for("the rollback", Duration::from_secs(120), || async {
        let status = s.status("chat").await;
        (status.phase == Some(Phase::RolledBack)).then_some(status)
    })
    .await;
    let (answered, failed, last) = load.finish().await;
    let message = rolled_back.rollout.clone().unwrap().message.unwrap();
    let analysis = rolled_back.last_analysis.clone().unwrap();
    println!(
        "first-token-slow canary rolled back: {message}; last analysis TTFT p95 {:?} ms, latency \
         p95 {:?} ms over {} requests; answers {answered:?}, failed {failed}",
        analysis.ttft_p95_ms, analysis.latency_p95_ms, analysis.requests
    );
    assert!(message.starts_with("ttft p95 "), "{message}");
    assert!(message.contains(" ms > 1000 ms"), "{message}");
    assert!(!message.contains("latency p95"), "{message}");
    let ttft = analysis.ttft_p95_ms.unwrap();
    let latency = analysis.latency_p95_ms.unwrap();
    assert!(ttft >= 1500.0, "TTFT p95 {ttft}");
    assert!(latency < 6000.0, "latency p95 {latency}");
    assert_eq!(failed, 0, "client requests failed: {last}");
    s.cleanup();
}

/// No SLO at all: the canary is judged against the stable over the same window (the default), and
/// one 1.5 s slower than the stable is rolled back, the reason naming the stable's number.
#[tokio::test]
async fn a_canary_without_an_slo_slower_than_the_stable_is_rolled_back_by_the_comparison() {
    let s = setup("pd-baseline").await;
    let _operator = s.operator("op", &[]);
    apply(&s.ns, &model_version("v1", "[]"));
    apply(
        &s.ns,
        &model_version("v2-slow", "[{name: FERRY_FAULT_LATENCY_MS, value: '1500'}]"),
    );
    s.serve_stable("v1").await;
    let load = Load::start(&s.router, "chat", 6);
    apply(
        &s.ns,
        "apiVersion: serving.ferry.dev/v1alpha1
kind: LLMDeployment
metadata: {name: chat}
spec:
  stable: v1
  replicas: 1
  servedModelName: chat
  canary:
    version: v2-slow
    steps: [{weight: 50, pauseSeconds: 60}]
    analysis: {intervalSeconds: 3, minRequests: 3, failureLimit: 2}
",
    );
    let rolled_back = wait_for("the rollback", Duration::from_secs(120), || async {
        let status = s.status("chat").await;
        (status.phase == Some(Phase::RolledBack)).then_some(status)
    })
    .await;
    let (answered, failed, last) = load.finish().await;
    let message = rolled_back.rollout.clone().unwrap().message.unwrap();
    let analysis = rolled_back.last_analysis.clone().unwrap();
    let baseline = analysis.baseline.clone().unwrap();
    println!(
        "canary without an SLO rolled back against the stable: {message}; canary latency p95 \
         {:?} ms vs stable {:?} ms; answers {answered:?}, failed {failed}",
        analysis.latency_p95_ms, baseline.latency_p95_ms
    );
    // The default comparison is the statistical one: the reason names the stable and the test.
    assert!(message.contains("vs stable v1"), "{message}");
    // The rule it broke is the comparison, not an SLO (it has none).
    assert_eq!(analysis.failed_rules, [ferry_crds::AnalysisRule::Stable]);
    let object = s.object("chat").await;
    assert_eq!(condition(&object, "Stalled"), "True/WorseThanStable");
    assert_eq!(baseline.version, "v1");
    assert!(baseline.requests >= 3, "{baseline:?}");
    assert_eq!(failed, 0, "client requests failed: {last}");
    s.cleanup();
}

/// No verdict without evidence: a canary that gets no traffic is never promoted, and at its
/// progress deadline it is rolled back with reason NoData.
#[tokio::test]
async fn a_canary_without_traffic_is_rolled_back_for_no_data_at_its_progress_deadline() {
    let s = setup("pd-nodata").await;
    let _operator = s.operator("op", &[]);
    apply(&s.ns, &model_version("v1", "[]"));
    apply(&s.ns, &model_version("v2", "[]"));
    s.serve_stable("v1").await;
    apply(
        &s.ns,
        &with_canary(
            "{version: v2, steps: [{weight: 50, pauseSeconds: 0}], \
             analysis: {intervalSeconds: 2, minRequests: 3}, progressDeadlineSeconds: 10}",
            "{latencyP95Ms: 5000}",
        ),
    );
    let analysing = wait_for("the canary analysed", Duration::from_secs(60), || async {
        let state = rollout_state(&s.status("chat").await)?;
        (state.0 == RolloutState::Analysing).then(Instant::now)
    })
    .await;
    let rolled_back = wait_for("the NoData rollback", Duration::from_secs(40), || async {
        let status = s.status("chat").await;
        (status.phase == Some(Phase::RolledBack)).then_some(status)
    })
    .await;
    let after = analysing.elapsed();
    let message = rolled_back.rollout.clone().unwrap().message.unwrap();
    println!(
        "canary without traffic rolled back after {:.1} s: {message}",
        after.as_secs_f64()
    );
    assert!(
        message.starts_with("no data: no conclusive analysis for "),
        "{message}"
    );
    assert!(message.contains("fewer than minRequests 3"), "{message}");
    assert!(after >= Duration::from_secs(10), "{after:?}");
    let condition = rolled_back
        .conditions
        .iter()
        .find(|c| c.type_ == "RolledBack")
        .unwrap();
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("True", "NoData")
    );
    assert_eq!(rolled_back.traffic[0].version, "v1");
    s.cleanup();
}

/// A real Prometheus (Debian's, from `e2e/cluster/prometheus.sh`) scraping the test's router
/// every second.
struct Prometheus {
    base: String,
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Prometheus {
    async fn start(ns: &TempNamespace, router: &Router) -> Self {
        let bin =
            std::env::var("FERRY_PROMETHEUS").expect("FERRY_PROMETHEUS is set by e2e/test.sh");
        let dir = std::env::temp_dir().join(format!("{}-prometheus", ns.name));
        std::fs::create_dir_all(&dir).unwrap();
        let target = router.base.trim_start_matches("http://");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n\
                 - job_name: ferry-router\n  \
                 static_configs: [{{targets: ['{target}']}}]\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = std::process::Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        wait_for("prometheus to be ready", Duration::from_secs(30), || {
            let (http, url) = (http.clone(), format!("{base}/-/ready"));
            async move {
                let ok = http.get(url).send().await.ok()?.status().is_success();
                ok.then_some(())
            }
        })
        .await;
        Self { base, child, dir }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn a_slow_canary_judged_by_prometheus_promql_is_rolled_back() {
    let s = setup("pd-prom").await;
    let prometheus = Prometheus::start(&s.ns, &s.router).await;
    // The routers' stats endpoint is out of reach: every number must come from Prometheus.
    let operator = Operator::start(
        &s.ns,
        "op",
        &[
            "--router-stats-url",
            "http://127.0.0.1:9",
            "--router-selector",
            "none=none",
        ],
    );
    let (to_rollback, rolled_back, load) = roll_back_a_slow_canary(
        &s,
        &format!(
            "{{intervalSeconds: 4, minRequests: 3, failureLimit: 2, \
             prometheus: {{address: '{}'}}}}",
            prometheus.base
        ),
        "{latencyP95Ms: 1000, errorRatePercent: 5}",
        Duration::from_secs(90),
    )
    .await;
    let (answered, failed, last) = load.finish().await;
    let analysis = rolled_back
        .last_analysis
        .clone()
        .expect("the last analysis");
    println!(
        "prometheus-judged canary at 50% -> rolled back: {:.1} s (failureLimit 2 x interval 4 s, 1 s scrapes); last analysis {analysis:?}; answers {answered:?}; failed {failed}",
        to_rollback.as_secs_f64()
    );
    assert_eq!(analysis.source.as_deref(), Some("prometheus"));
    assert_eq!(analysis.verdict, ferry_crds::Verdict::Fail);
    assert!(analysis.requests >= 3, "{analysis:?}");
    assert!(
        analysis.latency_p95_ms.is_some_and(|ms| ms > 1000.0),
        "{analysis:?}"
    );
    assert_eq!(analysis.error_rate_percent, Some(0.0), "{analysis:?}");
    let message = rolled_back.rollout.clone().unwrap().message.unwrap();
    assert!(
        message.starts_with("latency p95 ") && message.contains(" ms > 1000 ms over "),
        "{message}"
    );
    assert_eq!(rolled_back.traffic.len(), 1);
    assert_eq!(rolled_back.traffic[0].version, "v1");
    assert_eq!(failed, 0, "client requests failed: {last}");
    drop(operator);
    s.cleanup();
}

#[tokio::test]
async fn a_queue_burst_scales_the_stable_up_and_it_scales_back_down_after_the_window() {
    let s = setup("pd-scale").await;
    let _operator = s.operator("op", &["--autoscale-interval-seconds", "1"]);
    // Each request holds its engine slot for 2 s, so a burst builds a real queue.
    apply(
        &s.ns,
        &model_version("slow", "[{name: FERRY_FAULT_LATENCY_MS, value: '2000'}]"),
    );
    apply(
        &s.ns,
        &autoscaled(
            "slow",
            "{minReplicas: 1, maxReplicas: 3, targetQueueDepth: 2, scaleDownStabilizationSeconds: 6}",
        ),
    );
    s.wait_phase("chat", Phase::Available, Duration::from_secs(120))
        .await;
    assert_eq!(s.replicas("chat-slow").await, 1);
    let burst = Instant::now();
    let load = Load::start(&s.router, "chat", 12);
    let decided = wait_for("a scale-up", Duration::from_secs(10), || async {
        (s.replicas("chat-slow").await > 1).then(|| burst.elapsed())
    })
    .await;
    wait_for("3 ready pods", Duration::from_secs(60), || async {
        let status = s.status("chat").await;
        (status.versions.first()?.ready_replicas == 3).then_some(())
    })
    .await;
    // The cold start of the new pods does not add more than the bound.
    assert_eq!(s.replicas("chat-slow").await, 3);
    let queue = s.status("chat").await.versions[0].queue_depth;
    // The load stops now; the clients' last requests (2 s each) still finish.
    let stopped = Instant::now();
    let (answered, failed, last) = load.finish().await;
    let down = wait_for("the scale-down", Duration::from_secs(60), || async {
        (s.replicas("chat-slow").await == 1).then(|| stopped.elapsed())
    })
    .await;
    println!(
        "burst of 12 clients -> scale-up decided after {:.1} s; load stopped -> back to 1 pod after {:.1} s (window 6 s); queue depth seen {queue:?}; answers {answered:?}; failed {failed}",
        decided.as_secs_f64(),
        down.as_secs_f64()
    );
    // The last busy wish is at most one interval (1 s) before the stop.
    assert!(
        down >= Duration::from_secs(5),
        "scaled down before the window: {down:?}"
    );
    assert_eq!(failed, 0, "client requests failed: {last}");
    let status = s.status("chat").await;
    assert_eq!(status.replicas, Some(1), "the scale subresource follows");
    s.cleanup();
}

#[tokio::test]
async fn a_version_scaled_to_zero_is_woken_by_a_held_request_and_goes_back_to_zero() {
    let s = setup("pd-zero").await;
    let _operator = s.operator("op", &["--autoscale-interval-seconds", "1"]);
    apply(&s.ns, &model_version("v1", "[]"));
    apply(
        &s.ns,
        &autoscaled(
            "v1",
            "{minReplicas: 0, maxReplicas: 2, targetQueueDepth: 4, scaleDownStabilizationSeconds: 5}",
        ),
    );
    // Without load it starts at zero pods: available, with the reason saying so.
    s.wait_phase("chat", Phase::Available, Duration::from_secs(60))
        .await;
    wait_for("traffic routed to v1", Duration::from_secs(10), || async {
        (!s.status("chat").await.traffic.is_empty()).then_some(())
    })
    .await;
    assert_eq!(s.replicas("chat-v1").await, 0);
    let llmd = s.llmds.get("chat").await.unwrap();
    let available = llmd
        .status
        .as_ref()
        .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Available"))
        .cloned()
        .expect("Available condition");
    assert_eq!(
        (available.status.as_str(), available.reason.as_str()),
        ("True", "ScaledToZero")
    );

    // One request: the router holds it, the operator sees it held and starts a pod, the pod
    // answers it.
    let http = reqwest::Client::new();
    let asked = Instant::now();
    let request = http
        .post(format!("{}/v1/chat/completions", s.router.base))
        .json(&serde_json::json!({
            "model": "chat",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4,
        }))
        .send();
    let woken = async {
        wait_for("the wake-up", Duration::from_secs(20), || async {
            (s.replicas("chat-v1").await == 1).then(|| asked.elapsed())
        })
        .await
    };
    let (response, woken) = tokio::join!(request, woken);
    let response = response.expect("the held request");
    let answered = asked.elapsed();
    let status = response.status();
    let version = response
        .headers()
        .get("x-ferry-version")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(version.as_deref(), Some("v1"));

    // Idle again: back to zero once the window has passed.
    let idle = Instant::now();
    let down = wait_for("the scale to zero", Duration::from_secs(60), || async {
        (s.replicas("chat-v1").await == 0).then(|| idle.elapsed())
    })
    .await;
    println!(
        "scale from zero: request held -> pod wanted after {:.1} s, answered after {:.1} s (cold start included); idle -> 0 pods after {:.1} s (window 5 s)",
        woken.as_secs_f64(),
        answered.as_secs_f64(),
        down.as_secs_f64()
    );
    assert!(
        down >= Duration::from_secs(4),
        "scaled to zero before the window: {down:?}"
    );
    s.cleanup();
}

#[tokio::test]
async fn an_experiment_splits_traffic_by_variant_and_reports_each_variant_in_status() {
    let s = setup("pd-ab").await;
    let _operator = s.operator("op", &[]);
    apply(&s.ns, &model_version("v1", "[]"));
    apply(&s.ns, &model_version("v2", "[]"));
    apply(
        &s.ns,
        "apiVersion: serving.ferry.dev/v1alpha1
kind: LLMDeployment
metadata: {name: chat}
spec:
  stable: v1
  experiment:
    variants: [{name: control, version: v1, weight: 50}, {name: treatment, version: v2, weight: 50}]
",
    );
    s.wait_phase("chat", Phase::Experimenting, Duration::from_secs(120))
        .await;
    wait_for("both variants ready", Duration::from_secs(120), || async {
        let status = s.status("chat").await;
        (status
            .versions
            .iter()
            .filter(|v| v.ready_replicas == 1)
            .count()
            == 2)
            .then_some(())
    })
    .await;
    // Eight users (`client-0` … `client-7`); each always lands on one variant.
    let load = Load::start(&s.router, "chat", 8);
    let status = wait_for(
        "per-variant numbers in status",
        Duration::from_secs(60),
        || async {
            let status = s.status("chat").await;
            let both = status.variants.len() == 2 && status.variants.iter().all(|v| v.requests > 0);
            both.then_some(status)
        },
    )
    .await;
    let (answered, failed, last) = load.finish().await;
    assert_eq!(failed, 0, "{last}");
    let traffic: Vec<_> = status
        .traffic
        .iter()
        .map(|t| (t.version.as_str(), t.weight, t.variant.as_deref()))
        .collect();
    assert_eq!(
        traffic,
        [("v1", 50, Some("control")), ("v2", 50, Some("treatment"))]
    );
    for v in &status.variants {
        assert_eq!(v.error_rate_percent, 0.0, "{v:?}");
        assert!(
            v.latency_p95_ms.is_some() && v.completion_tokens > 0,
            "{v:?}"
        );
    }
    println!(
        "experiment variants: {:?}; answers {answered:?}",
        status.variants
    );
    s.cleanup();
}

/// `baseline.method: Statistical` on the real loop: an A/A canary (the stable's own build under
/// another name) under load is promoted, with the numbers in the reason; then a canary 1.5 s
/// slower per request is rolled back by the comparison (WorseThanStable), no client failing.
#[tokio::test]
async fn with_the_statistical_comparison_an_a_a_canary_is_promoted_and_a_slow_one_rolled_back() {
    let s = setup("pd-stat").await;
    let _operator = s.operator("op", &[]);
    apply(&s.ns, &model_version("v1", "[]"));
    apply(&s.ns, &model_version("v1-again", "[]"));
    apply(
        &s.ns,
        &model_version("v2-slow", "[{name: FERRY_FAULT_LATENCY_MS, value: '1500'}]"),
    );
    s.serve_stable("v1").await;
    let load = Load::start(&s.router, "chat", 6);
    let canary = |version: &str| {
        format!(
            "{{version: {version}, steps: [{{weight: 50, pauseSeconds: 2}}], \
             rollbackWindowSeconds: 2, analysis: {{intervalSeconds: 3, minRequests: 3, \
             failureLimit: 2, baseline: {{method: Statistical}}}}}}"
        )
    };
    apply(&s.ns, &with_canary(&canary("v1-again"), "{}"));
    let since = Instant::now();
    let promoted = wait_for(
        "the A/A canary promoted",
        Duration::from_secs(240),
        || async {
            let status = s.status("chat").await;
            if status.phase == Some(Phase::RolledBack) {
                panic!("the A/A canary was rolled back: {:?}", status.rollout);
            }
            (status.stable_version.as_deref() == Some("v1-again")).then_some(status)
        },
    )
    .await;
    let analysis = promoted.last_analysis.clone().unwrap();
    println!(
        "A/A canary promoted after {:?}: {}",
        since.elapsed(),
        analysis.reason.clone().unwrap_or_default()
    );
    s.wait_phase("chat", Phase::Available, Duration::from_secs(60))
        .await;

    apply(
        &s.ns,
        &with_canary(&canary("v2-slow"), "{}").replace("stable: v1,", "stable: v1-again,"),
    );
    let rolled_back = wait_for(
        "the slow canary rolled back",
        Duration::from_secs(240),
        || async {
            let status = s.status("chat").await;
            (status.phase == Some(Phase::RolledBack)).then_some(status)
        },
    )
    .await;
    let message = rolled_back.rollout.clone().unwrap().message.unwrap();
    println!("slow canary rolled back: {message}");
    let analysis = rolled_back.last_analysis.clone().unwrap();
    assert_eq!(analysis.failed_rules, [ferry_crds::AnalysisRule::Stable]);
    assert!(message.contains("vs stable v1-again"), "{message}");
    let object = s.object("chat").await;
    assert_eq!(condition(&object, "Stalled"), "True/WorseThanStable");
    let (answered, failed, last) = load.finish().await;
    println!("answers by version: {answered:?}; failed: {failed}");
    assert_eq!(failed, 0, "client requests failed: {last}");
    s.cleanup();
}
