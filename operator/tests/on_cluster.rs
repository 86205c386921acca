//! The operator against the real local Kubernetes, with real `ferry-server` pods running the tiny
//! model. Each test has its own namespace and its own operator process (and Lease).

mod common;

use std::time::Duration;

use common::{Operator, apply, llm_deployment, tiny_model_claim, tiny_model_version, wait_for};
use ferry_crds::{LLMDeployment, ModelVersion, Phase};
use ferry_e2e::Cluster;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::ListParams;
use kube::{Api, Resource, ResourceExt};

const POD_START: Duration = Duration::from_secs(120);

fn condition(llmd: &LLMDeployment, type_: &str) -> Option<(String, String, String)> {
    let c = llmd
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn available(api: &Api<LLMDeployment>, name: &str) -> LLMDeployment {
    let started = std::time::Instant::now();
    loop {
        if let Ok(d) = api.get(name).await
            && let Some(s) = d.status.as_ref()
            && s.phase == Some(Phase::Available)
            && s.observed_generation == d.metadata.generation
        {
            return d;
        }
        if started.elapsed() > POD_START {
            dump_pods(api, name).await;
            panic!("{name} not Available after {POD_START:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What the pods of an LLMDeployment are doing, for a failed test's output.
async fn dump_pods(api: &Api<LLMDeployment>, name: &str) {
    let d = api.get(name).await.ok();
    let ns = d.as_ref().and_then(|d| d.namespace()).unwrap_or_default();
    eprintln!("status of {name}: {:?}", d.and_then(|d| d.status));
    let selector = format!("serving.ferry.dev/llmdeployment={name}");
    for args in [
        vec!["get", "llmd,deploy,rs,pods", "-o", "wide"],
        vec!["describe", "pods", "-l", &selector],
        vec!["logs", "-l", &selector, "--all-containers", "--tail", "30"],
        vec!["get", "events"],
    ] {
        let mut all = vec!["-n", ns.as_str()];
        all.extend(args);
        let out = Cluster::get().kubectl(&all);
        eprintln!("$ kubectl {}\n{}{}", all.join(" "), out.stdout, out.stderr);
    }
}

#[tokio::test]
async fn llmdeployment_becomes_available_with_real_pods_and_a_second_reconcile_writes_nothing() {
    let cluster = Cluster::get();
    let ns = cluster.temp_namespace("op-avail");
    let client = cluster.client().await;
    let operator = Operator::start(&ns, "op-a", &[]);
    let pv = tiny_model_claim(&ns, "weights");
    apply(
        &ns,
        &tiny_model_version("tiny-v1", "{pvc: {claimName: weights}}"),
    );
    apply(&ns, &llm_deployment("chat", "tiny-v1", 1));

    let llmds: Api<LLMDeployment> = Api::namespaced(client.clone(), &ns.name);
    let d = available(&llmds, "chat").await;
    let status = d.status.clone().unwrap();
    assert_eq!(status.ready.as_deref(), Some("1/1"));
    assert_eq!(status.versions[0].ready_replicas, 1);
    assert_eq!(status.traffic.len(), 1);
    assert_eq!(
        (status.traffic[0].version.as_str(), status.traffic[0].weight),
        ("tiny-v1", 100)
    );
    assert_eq!(status.endpoint.as_deref(), Some("http://10.0.0.2:8080/v1"));
    assert_eq!(condition(&d, "Available").unwrap().0, "True");
    assert_eq!(condition(&d, "InvalidSpec").unwrap().0, "False");
    // Done, as kubectl wait and Argo CD see it.
    ns.kubectl([
        "wait",
        "--for=condition=Ready",
        "llmd/chat",
        "--timeout=10s",
    ])
    .ok("kubectl wait --for=condition=Ready");
    let (argo, health) = ferry_e2e::argocd::health(&serde_json::to_value(&d).unwrap());
    assert_eq!(argo, "Healthy", "{health}");

    // Children, owned by the LLMDeployment.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let dep = deployments.get("chat-tiny-v1").await.unwrap();
    assert_eq!(dep.owner_references()[0].uid, d.uid().unwrap());
    let svc_names: Vec<String> = services
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|s| s.name_any())
        .collect();
    assert_eq!(svc_names, ["chat", "chat-tiny-v1"]);

    // The pod really serves the model.
    let pods = ns
        .kubectl([
            "get",
            "pods",
            "-l",
            "serving.ferry.dev/llmdeployment=chat",
            "-o",
            "jsonpath={.items[0].status.podIP}",
        ])
        .ok("pod IP");
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{pods}:8000/v1/chat/completions"))
        .json(&serde_json::json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "ignore_eos": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["usage"]["completion_tokens"], 3, "{answer}");

    // The ModelVersion is Valid and knows its cold start.
    let mvs: Api<ModelVersion> = Api::namespaced(client.clone(), &ns.name);
    let mv = wait_for("coldStartSeconds", Duration::from_secs(30), || async {
        let mv = mvs.get("tiny-v1").await.ok()?;
        mv.status.as_ref()?.cold_start_seconds?;
        Some(mv)
    })
    .await;
    // Argo CD's health check (the chart's script) and kstatus read it as done.
    let (argo, message) = ferry_e2e::argocd::health(&serde_json::to_value(&mv).unwrap());
    assert_eq!(argo, "Healthy", "{message}");
    let mv_status = mv.status.unwrap();
    for (type_, status) in [
        ("Valid", "True"),
        ("Ready", "True"),
        ("Reconciling", "False"),
        ("Stalled", "False"),
    ] {
        let c = mv_status.conditions.iter().find(|c| c.type_ == type_);
        assert_eq!(c.map(|c| c.status.as_str()), Some(status), "{type_}");
    }
    println!(
        "cold start of a tiny-model pod: {:?} s",
        mv_status.cold_start_seconds
    );

    // A reconcile with nothing changed writes nothing: touch the LLMDeployment's metadata only.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes_before = operator.metric("ferry_operator_api_writes_total", "").await;
    let reconciles_before = operator
        .metric("ferry_operator_reconciles_total", "llmdeployment")
        .await;
    let children_versions = || async {
        (
            deployments
                .get("chat-tiny-v1")
                .await
                .unwrap()
                .resource_version(),
            services.get("chat").await.unwrap().resource_version(),
            services
                .get("chat-tiny-v1")
                .await
                .unwrap()
                .resource_version(),
        )
    };
    let versions_before = children_versions().await;
    let status_before = llmds.get("chat").await.unwrap().status;
    ns.kubectl(["annotate", "llmd", "chat", "example.com/touched=yes"])
        .ok("annotate");
    wait_for(
        "a reconcile after the touch",
        Duration::from_secs(20),
        || async {
            (operator
                .metric("ferry_operator_reconciles_total", "llmdeployment")
                .await
                > reconciles_before)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        operator.metric("ferry_operator_api_writes_total", "").await,
        writes_before
    );
    let versions_after = children_versions().await;
    assert_eq!(versions_after, versions_before);
    assert_eq!(llmds.get("chat").await.unwrap().status, status_before);

    // Hand edits of what the operator owns are undone (the applied-hash annotation stays as it
    // was, so only the values themselves show the drift): replicas, image and args of the
    // Deployment, and the Service's port.
    let before = deployments.get("chat-tiny-v1").await.unwrap();
    let container = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .clone()
    };
    let edited_at = std::time::Instant::now();
    for patch in [
        r#"{"spec":{"replicas":3}}"#,
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"server","image":"localhost/ferry/server:edited","args":["--edited"]}]}}}}"#,
    ] {
        ns.kubectl([
            "patch",
            "deployment",
            "chat-tiny-v1",
            "--type=strategic",
            "-p",
            patch,
        ])
        .ok("hand edit of the Deployment");
    }
    ns.kubectl([
        "patch",
        "service",
        "chat",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/ports/0/port","value":9999}]"#,
    ])
    .ok("hand edit of the Service");
    let restored = wait_for("the hand edits undone", Duration::from_secs(30), || async {
        let d = deployments.get("chat-tiny-v1").await.ok()?;
        let port = services.get("chat").await.ok()?.spec?.ports?[0].port;
        let same = d.spec.as_ref()?.replicas == before.spec.as_ref()?.replicas
            && container(&d).image == container(&before).image
            && container(&d).args == container(&before).args
            && port != 9999;
        same.then_some(d)
    })
    .await;
    println!(
        "hand edits of the Deployment and Service undone after {:.1} s",
        edited_at.elapsed().as_secs_f64()
    );
    assert_eq!(
        restored.annotations().get("serving.ferry.dev/applied-hash"),
        before.annotations().get("serving.ferry.dev/applied-hash")
    );
    available(&llmds, "chat").await;

    // Delete: the garbage collector removes the children.
    ns.kubectl(["delete", "llmd", "chat", "--wait=true"])
        .ok("delete llmd");
    wait_for(
        "children garbage-collected",
        Duration::from_secs(90),
        || async {
            let deps = deployments.list(&Default::default()).await.ok()?.items;
            let svcs = services.list(&Default::default()).await.ok()?.items;
            (deps.is_empty() && svcs.is_empty()).then_some(())
        },
    )
    .await;
    cluster.kubectl(["delete", "pv", &pv, "--wait=false"]);
}

#[tokio::test]
async fn invalid_specs_are_reported_leave_workloads_running_and_recover_when_fixed() {
    let cluster = Cluster::get();
    let ns = cluster.temp_namespace("op-invalid");
    let client = cluster.client().await;
    // With exactly the chart's RBAC: status, children, Events and the Lease all work under it.
    let kubeconfig = common::restricted_kubeconfig(&ns);
    let _operator = Operator::start_as(&ns, "op-b", &[], &kubeconfig);
    let llmds: Api<LLMDeployment> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);

    // A missing ModelVersion: InvalidSpec, phase Invalid, a Warning Event, nothing created.
    apply(&ns, &llm_deployment("chat", "missing", 0));
    let d = wait_for("InvalidSpec", Duration::from_secs(30), || async {
        let d = llmds.get("chat").await.ok()?;
        (condition(&d, "InvalidSpec")?.0 == "True").then_some(d)
    })
    .await;
    assert_eq!(d.status.as_ref().unwrap().phase, Some(Phase::Invalid));
    // A missing ModelVersion may still come (a sync applies both, in any order): reconciling,
    // not stalled — Progressing for Argo CD, in progress for kstatus.
    assert_eq!(condition(&d, "Stalled").unwrap().0, "False");
    assert_eq!(
        condition(&d, "Reconciling").unwrap().1,
        "ModelVersionNotFound"
    );
    let (argo, health) = ferry_e2e::argocd::health(&serde_json::to_value(&d).unwrap());
    assert_eq!(argo, "Progressing", "{health}");
    assert!(
        health.starts_with("ModelVersionNotFound: ModelVersion"),
        "{health}"
    );
    let message = condition(&d, "InvalidSpec").unwrap().2;
    assert_eq!(
        message,
        format!(
            "ModelVersion \"missing\" not found in namespace {}",
            ns.name
        )
    );
    let events = wait_for("a Warning Event", Duration::from_secs(10), || async {
        let out = ns
            .kubectl([
                "get",
                "events",
                "--field-selector",
                "reason=InvalidSpec",
                "-o",
                "jsonpath={.items[*].type}",
            ])
            .ok("events");
        out.contains("Warning").then_some(out)
    })
    .await;
    assert!(events.contains("Warning"));
    assert!(
        deployments
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // Fixing it (creating the ModelVersion) recovers without a restart.
    apply(
        &ns,
        &tiny_model_version(
            "missing",
            "{pvc: {claimName: nothing-needed-at-zero-replicas}}",
        ),
    );
    available(&llmds, "chat").await;
    let dep = deployments.get("chat-missing").await.unwrap();
    assert_eq!(
        condition(&llmds.get("chat").await.unwrap(), "InvalidSpec")
            .unwrap()
            .0,
        "False"
    );

    // A spec that breaks a CEL rule never reaches the operator: the API server refuses it.
    let refused = ns.kubectl([
        "patch",
        "llmd",
        "chat",
        "--type=merge",
        "-p",
        r#"{"spec":{"canary":{"version":"missing"}}}"#,
    ]);
    assert!(
        !refused.success
            && refused
                .stderr
                .contains("canary.version must differ from stable"),
        "{}",
        refused.stderr
    );

    // Breaking it in a way only the operator can see (a canary whose ModelVersion does not
    // exist) leaves the existing Deployment alone.
    let patch = r#"{"spec":{"canary":{"version":"not-there"}}}"#;
    ns.kubectl(["patch", "llmd", "chat", "--type=merge", "-p", patch])
        .ok("patch canary to a missing ModelVersion");
    let d = wait_for(
        "InvalidSpec after the bad patch",
        Duration::from_secs(30),
        || async {
            let d = llmds.get("chat").await.ok()?;
            (condition(&d, "InvalidSpec")?.0 == "True").then_some(d)
        },
    )
    .await;
    assert!(
        condition(&d, "InvalidSpec")
            .unwrap()
            .2
            .contains("ModelVersion \"not-there\" not found"),
        "{:?}",
        condition(&d, "InvalidSpec")
    );
    assert_eq!(
        deployments
            .get("chat-missing")
            .await
            .unwrap()
            .resource_version(),
        dep.resource_version()
    );

    // A ModelVersion spec cannot change: the API server refuses it (CEL `self == oldSelf`), and
    // the ModelVersion stays as the operator accepted it. (On API servers without CEL the
    // operator reports such a change through its recorded spec hash; unit-tested in validate.rs.)
    let mvs: Api<ModelVersion> = Api::namespaced(client.clone(), &ns.name);
    let hash = wait_for("specHash recorded", Duration::from_secs(20), || async {
        mvs.get("missing").await.ok()?.status?.spec_hash
    })
    .await;
    let refused = ns.kubectl([
        "patch",
        "mv",
        "missing",
        "--type=merge",
        "-p",
        r#"{"spec":{"engine":{"maxNumSeqs":2}}}"#,
    ]);
    assert!(!refused.success, "the API server accepted a spec change");
    assert!(
        refused.stderr.contains("ModelVersion spec is immutable"),
        "{}",
        refused.stderr
    );
    let mv = mvs.get("missing").await.unwrap();
    let status = mv.status.unwrap();
    assert_eq!(status.spec_hash.as_deref(), Some(hash.as_str()));
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Valid" && c.status == "True"),
        "{:?}",
        status.conditions
    );
}

#[tokio::test]
async fn image_url_and_hugging_face_sources_deliver_the_weights() {
    let cluster = Cluster::get();
    let ns = cluster.temp_namespace("op-sources");
    let client = cluster.client().await;
    let files = common::WeightsServer::start();
    let _operator = Operator::start(&ns, "op-c", &["--hf-endpoint", &files.url]);
    let model_image =
        std::env::var("FERRY_MODEL_IMAGE").expect("FERRY_MODEL_IMAGE is set by e2e/test.sh");
    let sha = files.sha256.clone();
    apply(
        &ns,
        &tiny_model_version(
            "from-image",
            &format!("{{image: {{reference: '{model_image}', path: /models}}}}"),
        ),
    );
    apply(
        &ns,
        &tiny_model_version(
            "from-url",
            &format!(
                "{{url: {{uri: '{}/tiny-q8_0.gguf', sha256: {sha}}}}}",
                files.url
            ),
        ),
    );
    apply(
        &ns,
        &tiny_model_version(
            "from-hub",
            "{huggingFace: {repo: ferry/tiny, revision: v1, files: [tiny-q8_0.gguf]}}",
        ),
    );
    apply(
        &ns,
        &tiny_model_version(
            "bad-sha",
            &format!(
                "{{url: {{uri: '{}/tiny-q8_0.gguf', sha256: '{}'}}}}",
                files.url,
                "0".repeat(64)
            ),
        ),
    );
    for (name, version) in [
        ("img", "from-image"),
        ("url", "from-url"),
        ("hub", "from-hub"),
        ("bad", "bad-sha"),
    ] {
        apply(&ns, &llm_deployment(name, version, 1));
    }
    let llmds: Api<LLMDeployment> = Api::namespaced(client.clone(), &ns.name);
    for name in ["img", "url", "hub"] {
        let d = available(&llmds, name).await;
        assert_eq!(d.status.unwrap().ready.as_deref(), Some("1/1"), "{name}");
    }
    // On this API server (1.35 or newer) the model image is mounted as an image volume: the pod
    // that serves it has no copy step.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pod = &pods
        .list(&ListParams::default().labels("serving.ferry.dev/llmdeployment=img"))
        .await
        .unwrap()
        .items[0];
    let spec = pod.spec.as_ref().unwrap();
    assert!(spec.init_containers.is_none(), "{:?}", spec.init_containers);
    let image = spec
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.image.as_ref())
        .expect("an image volume");
    assert_eq!(image.reference.as_deref(), Some(model_image.as_str()));
    // A download with the wrong checksum never starts the server.
    let log = wait_for(
        "the fetch container's checksum error",
        Duration::from_secs(60),
        || async {
            let out = ns.kubectl([
                "logs",
                "-l",
                "serving.ferry.dev/llmdeployment=bad",
                "-c",
                "fetch",
            ]);
            out.stdout.contains("sha256 mismatch").then_some(out.stdout)
        },
    )
    .await;
    assert!(log.contains(&format!("got {sha}")), "{log}");
    let bad = llmds.get("bad").await.unwrap();
    assert_eq!(bad.status.unwrap().phase, Some(Phase::Pending));
}

#[tokio::test]
async fn without_image_volumes_an_init_container_copies_the_weights_out_of_the_model_image() {
    let cluster = Cluster::get();
    let ns = cluster.temp_namespace("op-copy");
    let client = cluster.client().await;
    let _operator = Operator::start(&ns, "op-copy", &["--image-volumes", "never"]);
    let model_image =
        std::env::var("FERRY_MODEL_IMAGE").expect("FERRY_MODEL_IMAGE is set by e2e/test.sh");
    apply(
        &ns,
        &tiny_model_version(
            "from-image",
            &format!("{{image: {{reference: '{model_image}', path: /models}}}}"),
        ),
    );
    apply(&ns, &llm_deployment("img", "from-image", 1));
    let llmds: Api<LLMDeployment> = Api::namespaced(client.clone(), &ns.name);
    available(&llmds, "img").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pod = &pods
        .list(&ListParams::default().labels("serving.ferry.dev/llmdeployment=img"))
        .await
        .unwrap()
        .items[0];
    let spec = pod.spec.as_ref().unwrap();
    let init = &spec.init_containers.as_ref().expect("a copy step")[0];
    assert_eq!(init.image.as_deref(), Some(model_image.as_str()));
    assert!(spec.volumes.iter().flatten().all(|v| v.image.is_none()));
}

#[tokio::test]
async fn only_the_leader_writes_and_a_standby_takes_over_and_converges() {
    let cluster = Cluster::get();
    let ns = cluster.temp_namespace("op-leader");
    let client = cluster.client().await;
    let lease = ["--lease-seconds", "4"];
    let kubeconfig = common::restricted_kubeconfig(&ns);
    let mut first = Operator::start_as(&ns, "op-first", &lease, &kubeconfig);
    wait_for("op-first leads", Duration::from_secs(20), || async {
        (first.metric("ferry_operator_leader", "").await == 1.0).then_some(())
    })
    .await;
    let second = Operator::start_as(&ns, "op-second", &lease, &kubeconfig);
    second.metrics_url().await;

    apply(&ns, &tiny_model_version("v1", "{pvc: {claimName: unused}}"));
    apply(&ns, &llm_deployment("chat", "v1", 0));
    let llmds: Api<LLMDeployment> = Api::namespaced(client.clone(), &ns.name);
    available(&llmds, "chat").await;
    assert_eq!(second.metric("ferry_operator_leader", "").await, 0.0);
    assert_eq!(
        second.metric("ferry_operator_reconciles_total", "").await,
        0.0,
        "the standby reconciled"
    );
    assert_eq!(
        second.metric("ferry_operator_api_writes_total", "").await,
        0.0,
        "the standby wrote"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let dep_version = deployments.get("chat-v1").await.unwrap().resource_version();

    // The leader crashes mid-way: a change made while nobody leads is picked up by the standby.
    first.kill();
    ns.kubectl([
        "patch",
        "llmd",
        "chat",
        "--type=merge",
        "-p",
        r#"{"spec":{"servedModelName":"renamed"}}"#,
    ])
    .ok("patch");
    wait_for("op-second leads", Duration::from_secs(30), || async {
        (second.metric("ferry_operator_leader", "").await == 1.0).then_some(())
    })
    .await;
    let d = wait_for(
        "the change reconciled by the new leader",
        Duration::from_secs(30),
        || async {
            let d = llmds.get("chat").await.ok()?;
            (d.status.as_ref()?.served_model_name.as_deref() == Some("renamed")).then_some(d)
        },
    )
    .await;
    assert_eq!(d.status.unwrap().observed_generation, d.metadata.generation);
    // Converged to the same objects: the Deployment changed only for the new model label.
    let dep = deployments.get("chat-v1").await.unwrap();
    assert_ne!(dep.resource_version(), dep_version);
    assert_eq!(dep.labels()["serving.ferry.dev/model"], "renamed");
    let lease_holder = ns
        .kubectl([
            "get",
            "lease",
            "ferry-operator",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .ok("lease");
    assert_eq!(lease_holder, "op-second");
    common::delete_cluster_rbac(&ns);
}

/// Each Event says what happened when it happened: two canary steps are two Events with their
/// own notes (kube-runtime's recorder folded them into one that kept the first note), while a
/// Warning that recurs is one Event whose series counts the repeats.
#[tokio::test]
async fn events_keep_their_own_notes_and_only_a_recurring_warning_folds() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::api::events::v1::Event;
    use kube::runtime::events::EventType;
    let cluster = Cluster::get();
    let ns = cluster.temp_namespace("op-events");
    let client = cluster.client().await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let object: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "chat"}}))
    .unwrap();
    let object = maps
        .create(&kube::api::PostParams::default(), &object)
        .await
        .unwrap();
    let reference = object.object_ref(&());
    let recorder = ferry_operator::events::Recorder::new(client.clone(), "test", "test-0");
    for note in [
        "canary v2 at 20% of traffic",
        "canary v2 at 50% of traffic",
        "canary v3 at 20% of traffic",
    ] {
        recorder
            .publish(&reference, EventType::Normal, "CanaryStep", note)
            .await
            .unwrap();
    }
    for _ in 0..3 {
        recorder
            .publish(
                &reference,
                EventType::Warning,
                "InvalidSpec",
                "v9 not found",
            )
            .await
            .unwrap();
    }
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let mut listed = events.list(&ListParams::default()).await.unwrap().items;
    listed.sort_by_key(|e| e.event_time.clone().map(|t| t.0));
    let said: Vec<(String, String, i32)> = listed
        .iter()
        .map(|e| {
            (
                e.reason.clone().unwrap_or_default(),
                e.note.clone().unwrap_or_default(),
                e.series.as_ref().map_or(1, |s| s.count),
            )
        })
        .collect();
    let want = |reason: &str, note: &str, count| (reason.to_string(), note.to_string(), count);
    assert_eq!(
        said,
        [
            want("CanaryStep", "canary v2 at 20% of traffic", 1),
            want("CanaryStep", "canary v2 at 50% of traffic", 1),
            want("CanaryStep", "canary v3 at 20% of traffic", 1),
            want("InvalidSpec", "v9 not found", 3),
        ]
    );
    assert!(
        listed
            .iter()
            .all(|e| e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == object.uid().as_deref())
    );
}

/// A ModelVersion reconciled while the operator may not list pods (its pod cache never fills)
/// once waited for that cache for ever, and never got a status. It gets one now: validity needs
/// no pods; only the cold start does.
#[tokio::test]
async fn a_model_version_gets_a_status_even_when_the_pod_cache_never_fills() {
    let cluster = Cluster::get();
    let ns = cluster.temp_namespace("op-nopods");
    let client = cluster.client().await;
    let kubeconfig = common::restricted_kubeconfig_edited(&ns, |rbac| {
        assert!(
            rbac.contains("resources: [pods]"),
            "the chart's RBAC lists pods"
        );
        rbac.replace("resources: [pods]", "resources: [no-such-resource]")
    });
    let _operator = Operator::start_as(&ns, "op-np", &[], &kubeconfig);
    apply(
        &ns,
        &tiny_model_version("v1", "{pvc: {claimName: weights}}"),
    );
    let mvs: Api<ModelVersion> = Api::namespaced(client, &ns.name);
    let status = wait_for("a ModelVersion status", Duration::from_secs(60), || async {
        let mv = mvs.get("v1").await.ok()?;
        let status = mv.status?;
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Valid" && c.status == "True")
            .then_some(status)
    })
    .await;
    assert!(status.source.is_some(), "{status:?}");
    common::delete_cluster_rbac(&ns);
}
