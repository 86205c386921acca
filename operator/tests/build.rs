//! `build` is pure: for each spec shape, the objects and status it produces.

use std::collections::BTreeMap;

use ferry_crds::{LLMDeployment, ModelVersion, Phase};
use ferry_operator::build::{APPLIED_HASH, Desired, Observed, Settings, child_name, dns_label};
use ferry_operator::plan::{Inputs, Signals, plan};
use ferry_operator::pod::ServerSettings;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Container;

fn settings() -> Settings {
    Settings {
        server: ServerSettings {
            image: "localhost/ferry/server:dev".into(),
            drain_seconds: 20,
            hf_endpoint: Some("http://10.88.0.1:9000".into()),
            startup_seconds: 600,
            image_volumes: false,
            gpu: Default::default(),
        },
        router_endpoint: "http://10.0.0.9:8080/v1".into(),
        pod_token: None,
        network_policy: None,
    }
}

/// The objects and status the operator's planner (the function the reconcile calls) decides for a
/// first reconcile: no status yet, no outside signals.
fn build(
    llmd: &LLMDeployment,
    versions: &BTreeMap<String, ModelVersion>,
    observed: &BTreeMap<String, Observed>,
    settings: &Settings,
) -> Desired {
    let inputs = Inputs {
        llmd,
        versions,
        observed,
        signals: &Signals::default(),
        settings,
        now: k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap(),
        mono_seconds: 0.0,
        autoscale_interval: std::time::Duration::from_secs(5),
    };
    plan(&inputs, &mut BTreeMap::new()).desired
}

/// YAML through JSON: serde_yaml wants tags for enums, the API's JSON does not.
fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
    let value: serde_json::Value = serde_yaml::from_str(text).unwrap();
    serde_json::from_value(value).unwrap()
}

fn llmd(spec: &str) -> LLMDeployment {
    let mut d = LLMDeployment::new("chat", yaml(spec));
    d.metadata.namespace = Some("team".into());
    d.metadata.uid = Some("uid-1".into());
    d.metadata.generation = Some(3);
    d
}

fn mv(name: &str, spec: &str) -> BTreeMap<String, ModelVersion> {
    let mut m = ModelVersion::new(name, yaml(spec));
    m.metadata.namespace = Some("team".into());
    BTreeMap::from([(name.to_string(), m)])
}

fn server(d: &Deployment) -> &Container {
    &d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
}

fn init(d: &Deployment) -> Option<&Container> {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .init_containers
        .as_ref()
        .map(|c| &c[0])
}

/// The value after `flag` in the server's args.
fn arg<'a>(c: &'a Container, flag: &str) -> Option<&'a str> {
    let args = c.args.as_ref().unwrap();
    args.iter()
        .position(|a| a == flag)
        .map(|i| args[i + 1].as_str())
}

fn json(v: impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(v).unwrap()
}

#[test]
fn pvc_gguf_on_cpu_builds_a_deployment_two_services_and_a_pending_status() {
    let d = llmd("{stable: v1, replicas: 2, servedModelName: smol}");
    let versions = mv(
        "v1",
        "{source: {pvc: {claimName: weights, path: /smol}}, format: gguf, files: [smol.gguf], resources: {gpus: 0, cpu: '2', memory: 1Gi}}",
    );
    let out = build(&d, &versions, &BTreeMap::new(), &settings());

    assert_eq!(out.deployments.len(), 1);
    let dep = &out.deployments[0];
    assert_eq!(dep.metadata.name.as_deref(), Some("chat-v1"));
    assert_eq!(dep.metadata.namespace.as_deref(), Some("team"));
    let owner = &dep.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("LLMDeployment", "uid-1", Some(true))
    );
    let spec = dep.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let labels = json(&spec.template.metadata.as_ref().unwrap().labels);
    assert_eq!(labels["serving.ferry.dev/llmdeployment"], "chat");
    assert_eq!(labels["serving.ferry.dev/version"], "v1");
    assert_eq!(labels["serving.ferry.dev/model"], "smol");
    let annotations = json(&spec.template.metadata.as_ref().unwrap().annotations);
    assert_eq!(annotations["prometheus.io/scrape"], "true");

    let c = server(dep);
    assert_eq!(c.image.as_deref(), Some("localhost/ferry/server:dev"));
    assert_eq!(arg(c, "--model-path"), Some("/models/smol"));
    assert_eq!(arg(c, "--gguf-file"), Some("smol.gguf"));
    assert_eq!(arg(c, "--served-model-name"), Some("smol"));
    assert_eq!(arg(c, "--model-version"), Some("v1"));
    assert_eq!(arg(c, "--max-num-seqs"), Some("16"));
    assert_eq!(arg(c, "--max-queue"), Some("64"));
    assert_eq!(arg(c, "--drain-seconds"), Some("20"));
    assert_eq!(arg(c, "--device"), None, "CPU pods get no --device");
    let resources = json(&c.resources);
    assert_eq!(
        resources["limits"],
        serde_json::json!({"cpu": "2", "memory": "1Gi"})
    );
    assert_eq!(json(&c.startup_probe)["httpGet"]["path"], "/ready");
    assert_eq!(
        json(&c.startup_probe)["failureThreshold"],
        120,
        "600 s of startup at 5 s periods"
    );
    assert_eq!(json(&c.liveness_probe)["httpGet"]["path"], "/health");
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.termination_grace_period_seconds, Some(35));
    assert!(pod.init_containers.is_none());
    assert_eq!(
        json(&pod.volumes)[1]["persistentVolumeClaim"],
        serde_json::json!({"claimName": "weights", "readOnly": true})
    );

    let names: Vec<_> = out
        .services
        .iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["chat", "chat-v1"]);
    assert_eq!(
        out.services[1].spec.as_ref().unwrap().cluster_ip.as_deref(),
        Some("None")
    );

    let status = json(&out.status);
    assert_eq!(
        status["traffic"],
        serde_json::json!([{"version": "v1", "weight": 100}])
    );
    assert_eq!(status["phase"], "Pending");
    assert_eq!(status["ready"], "0/2");
    assert_eq!(status["endpoint"], "http://10.0.0.9:8080/v1");
    assert_eq!(status["observedGeneration"], 3);
    assert_eq!(status["servedModelName"], "smol");
    assert_eq!(
        status["selector"],
        "serving.ferry.dev/llmdeployment=chat,serving.ferry.dev/version=v1"
    );
}

#[test]
fn with_image_volumes_the_model_image_is_mounted_read_only_and_nothing_is_copied() {
    let mut settings = settings();
    settings.server.image_volumes = true;
    let versions = mv(
        "v1",
        "{source: {image: {reference: 'localhost/models/tiny:1', path: /weights/}}, format: gguf, files: [m.gguf], resources: {gpus: 0}}",
    );
    let out = build(
        &llmd("{stable: v1}"),
        &versions,
        &BTreeMap::new(),
        &settings,
    );
    let dep = &out.deployments[0];
    assert!(init(dep).is_none(), "no copy step");
    let c = server(dep);
    assert_eq!(arg(c, "--model-path"), Some("/models"));
    assert_eq!(arg(c, "--gguf-file"), Some("m.gguf"));
    let pod = dep.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let volume = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "model")
        .unwrap();
    assert_eq!(
        json(&volume.image),
        serde_json::json!({"reference": "localhost/models/tiny:1", "pullPolicy": "IfNotPresent"})
    );
    let mount = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "model")
        .unwrap();
    assert_eq!(
        json(mount),
        serde_json::json!({"name": "model", "mountPath": "/models", "readOnly": true, "subPath": "weights"})
    );

    // An image whose weights sit at its root needs no sub-path.
    let versions = mv(
        "v1",
        "{source: {image: {reference: 'localhost/models/tiny:1', path: /}}, format: gguf, files: [m.gguf], resources: {gpus: 0}}",
    );
    let out = build(
        &llmd("{stable: v1}"),
        &versions,
        &BTreeMap::new(),
        &settings,
    );
    let c = server(&out.deployments[0]);
    let mount = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "model")
        .unwrap();
    assert_eq!(mount.sub_path, None);
}

#[test]
fn image_volumes_are_used_from_kubernetes_1_35_unless_told_otherwise() {
    use ferry_operator::ImageVolumes;
    for (major, minor, auto) in [
        ("1", "37", true),
        ("1", "35", true),
        ("1", "36+", true),
        ("1", "34", false),
        ("1", "20", false),
        ("1", "", false),
        ("2", "0", false),
    ] {
        assert_eq!(
            ImageVolumes::Auto.enabled(major, minor),
            auto,
            "{major}.{minor}"
        );
        assert!(ImageVolumes::Always.enabled(major, minor));
        assert!(!ImageVolumes::Never.enabled(major, minor));
    }
}

#[test]
fn each_source_delivers_the_weights_its_own_way() {
    struct Case {
        source: &'static str,
        init_image: Option<&'static str>,
        init_args: &'static [&'static str],
        gguf_file: &'static str,
        model_path: &'static str,
    }
    let sha = "a".repeat(64);
    let cases = [
        Case {
            source: "{image: {reference: 'localhost/models/tiny:1', path: /weights/}}",
            init_image: Some("localhost/models/tiny:1"),
            init_args: &["cp", "-R", "/weights/.", "/model-volume/"],
            gguf_file: "m.gguf",
            model_path: "/models",
        },
        Case {
            source: "{url: {uri: 'http://10.88.0.1:8000/x/tiny.gguf?sig=1', sha256: SHA}}",
            init_image: Some("localhost/ferry/server:dev"),
            init_args: &[
                "fetch",
                "--dest",
                "/model-volume",
                "--url",
                "http://10.88.0.1:8000/x/tiny.gguf?sig=1",
                "--sha256",
                "SHA",
                "--file-name",
                "m.gguf",
            ],
            gguf_file: "m.gguf",
            model_path: "/models",
        },
        Case {
            source: "{huggingFace: {repo: org/tiny, revision: abc123, files: [m.gguf], tokenSecretRef: {name: hf}}}",
            init_image: Some("localhost/ferry/server:dev"),
            init_args: &[
                "fetch",
                "--dest",
                "/model-volume",
                "--hf-repo",
                "org/tiny",
                "--revision",
                "abc123",
                "--file",
                "m.gguf",
            ],
            gguf_file: "m.gguf",
            model_path: "/models",
        },
        Case {
            source: "{pvc: {claimName: weights}}",
            init_image: None,
            init_args: &[],
            gguf_file: "m.gguf",
            model_path: "/models",
        },
    ];
    for case in cases {
        let source = case.source.replace("SHA", &sha);
        let versions = mv(
            "v1",
            &format!("{{source: {source}, format: gguf, files: [m.gguf], resources: {{gpus: 0}}}}"),
        );
        let out = build(
            &llmd("{stable: v1}"),
            &versions,
            &BTreeMap::new(),
            &settings(),
        );
        let dep = &out.deployments[0];
        let c = server(dep);
        assert_eq!(arg(c, "--model-path"), Some(case.model_path), "{source}");
        assert_eq!(arg(c, "--gguf-file"), Some(case.gguf_file), "{source}");
        let init = init(dep);
        assert_eq!(
            init.and_then(|i| i.image.as_deref()),
            case.init_image,
            "{source}"
        );
        if let Some(init) = init {
            let args: Vec<String> = init
                .command
                .clone()
                .unwrap_or_default()
                .into_iter()
                .chain(init.args.clone().unwrap_or_default())
                .collect();
            let want: Vec<String> = case
                .init_args
                .iter()
                .map(|a| a.replace("SHA", &sha))
                .collect();
            assert_eq!(args, want, "{source}");
        }
    }
}

#[test]
fn hugging_face_token_and_mirror_reach_the_fetch_container() {
    let versions = mv(
        "v1",
        "{source: {huggingFace: {repo: org/tiny, files: [m.gguf], tokenSecretRef: {name: hf, key: tok}}}, format: gguf, resources: {gpus: 0}}",
    );
    let out = build(
        &llmd("{stable: v1}"),
        &versions,
        &BTreeMap::new(),
        &settings(),
    );
    let env = json(&init(&out.deployments[0]).unwrap().env);
    assert_eq!(
        env[0],
        serde_json::json!({"name": "HF_ENDPOINT", "value": "http://10.88.0.1:9000"})
    );
    assert_eq!(env[1]["name"], "HF_TOKEN");
    assert_eq!(
        env[1]["valueFrom"]["secretKeyRef"],
        serde_json::json!({"name": "hf", "key": "tok", "optional": false})
    );
    assert_eq!(
        arg(server(&out.deployments[0]), "--gguf-file"),
        Some("m.gguf")
    );
}

#[test]
fn gpu_versions_get_limits_placement_and_the_cuda_device() {
    let versions = mv(
        "v1",
        "{source: {pvc: {claimName: w}}, format: safetensors, engine: {isq: Q4K, maxSeqLen: 4096, prefixCache: true, dtype: bf16, chatTemplate: '{{ messages }}', pagedAttention: {enabled: true, gpuMemoryFraction: 0.8}}, resources: {gpus: 1, gpuResourceName: amd.com/gpu, nodeSelector: {gpu: h100}, tolerations: [{key: gpu, operator: Exists}], image: 'ferry/server:cuda'}}",
    );
    let out = build(
        &llmd("{stable: v1}"),
        &versions,
        &BTreeMap::new(),
        &settings(),
    );
    let dep = &out.deployments[0];
    let c = server(dep);
    assert_eq!(c.image.as_deref(), Some("ferry/server:cuda"));
    assert_eq!(arg(c, "--device"), Some("cuda:0"));
    assert_eq!(arg(c, "--format"), Some("safetensors"));
    assert_eq!(arg(c, "--isq"), Some("Q4K"));
    assert_eq!(arg(c, "--dtype"), Some("bf16"));
    assert_eq!(arg(c, "--max-seq-len"), Some("4096"));
    assert_eq!(arg(c, "--paged-attention-gpu-memory"), Some("0.8"));
    assert_eq!(arg(c, "--gguf-file"), None);
    assert!(
        c.args
            .as_ref()
            .unwrap()
            .contains(&"--prefix-cache".to_string())
    );
    assert_eq!(
        json(&c.resources)["limits"],
        serde_json::json!({"amd.com/gpu": "1"})
    );
    let env = json(&c.env);
    assert_eq!(
        env[1],
        serde_json::json!({"name": "FERRY_CHAT_TEMPLATE", "value": "{{ messages }}"})
    );
    let pod = json(&dep.spec.as_ref().unwrap().template.spec);
    assert_eq!(pod["nodeSelector"], serde_json::json!({"gpu": "h100"}));
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"key": "gpu", "operator": "Exists"}])
    );
}

#[test]
fn the_operators_gpu_defaults_reach_gpu_pods_only_and_the_version_wins() {
    let mut settings = settings();
    settings.server.gpu = ferry_operator::pod::GpuPodSettings {
        image: Some("localhost/ferry/server-cuda:dev".into()),
        runtime_class_name: Some("nvidia".into()),
        node_selector: BTreeMap::from([
            ("nvidia.com/gpu.present".into(), "true".into()),
            ("gpu".into(), "any".into()),
        ]),
        tolerations: vec![yaml(
            "{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}",
        )],
    };
    let mut versions = mv(
        "gpu",
        "{source: {pvc: {claimName: w}}, format: gguf, files: [m.gguf], resources: {gpus: 1, nodeSelector: {gpu: h200}, tolerations: [{key: team, operator: Exists}]}}",
    );
    versions.extend(mv(
        "own-image",
        "{source: {pvc: {claimName: w}}, format: gguf, files: [m.gguf], resources: {gpus: 1, image: 'ferry/server:mine'}}",
    ));
    versions.extend(mv(
        "cpu",
        "{source: {pvc: {claimName: w}}, format: gguf, files: [m.gguf], resources: {gpus: 0}}",
    ));
    let pod = |version: &str| {
        let out = build(
            &llmd(&format!("{{stable: {version}}}")),
            &versions,
            &BTreeMap::new(),
            &settings,
        );
        out.deployments[0]
            .spec
            .clone()
            .unwrap()
            .template
            .spec
            .unwrap()
    };

    let gpu = pod("gpu");
    assert_eq!(
        gpu.containers[0].image.as_deref(),
        Some("localhost/ferry/server-cuda:dev")
    );
    assert_eq!(gpu.runtime_class_name.as_deref(), Some("nvidia"));
    assert_eq!(
        json(&gpu.node_selector),
        serde_json::json!({"gpu": "h200", "nvidia.com/gpu.present": "true"})
    );
    assert_eq!(
        json(&gpu.tolerations),
        serde_json::json!([
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
            {"key": "team", "operator": "Exists"}
        ])
    );
    assert_eq!(
        pod("own-image").containers[0].image.as_deref(),
        Some("ferry/server:mine")
    );

    let cpu = pod("cpu");
    assert_eq!(
        cpu.containers[0].image.as_deref(),
        Some("localhost/ferry/server:dev")
    );
    assert_eq!(cpu.runtime_class_name, None);
    assert_eq!(cpu.node_selector, None);
    assert_eq!(cpu.tolerations, None);
}

#[test]
fn status_follows_observed_readiness_and_replicas_follow_the_spec() {
    let versions = mv(
        "v1",
        "{source: {pvc: {claimName: w}}, format: gguf, files: [m.gguf], resources: {gpus: 0}}",
    );
    struct Case {
        spec: &'static str,
        observed: Observed,
        replicas: i32,
        phase: Phase,
        ready: &'static str,
        available: &'static str,
    }
    let cases = [
        Case {
            spec: "{stable: v1, replicas: 2}",
            observed: Observed {
                replicas: 2,
                ready: 2,
                ..Default::default()
            },
            replicas: 2,
            phase: Phase::Available,
            ready: "2/2",
            available: "True",
        },
        Case {
            spec: "{stable: v1, replicas: 2}",
            // A scale-up (or a replacement) whose new pod is starting: serving as before.
            observed: Observed {
                replicas: 2,
                ready: 1,
                ..Default::default()
            },
            replicas: 2,
            phase: Phase::Available,
            ready: "1/2",
            available: "True",
        },
        Case {
            spec: "{stable: v1, replicas: 2}",
            observed: Observed {
                replicas: 2,
                ready: 1,
                failing: 1,
            },
            replicas: 2,
            phase: Phase::Degraded,
            ready: "1/2",
            available: "True",
        },
        Case {
            spec: "{stable: v1}",
            observed: Observed {
                replicas: 1,
                ready: 0,
                ..Default::default()
            },
            replicas: 1,
            phase: Phase::Pending,
            ready: "0/1",
            available: "False",
        },
        Case {
            spec: "{stable: v1, replicas: 0}",
            observed: Observed::default(),
            replicas: 0,
            phase: Phase::Available,
            ready: "0/0",
            available: "True",
        },
        // Autoscaling keeps what the autoscaler set, within the bounds.
        Case {
            spec: "{stable: v1, autoscaling: {minReplicas: 1, maxReplicas: 5}}",
            observed: Observed {
                replicas: 7,
                ready: 7,
                ..Default::default()
            },
            replicas: 5,
            phase: Phase::Available,
            ready: "7/5",
            available: "True",
        },
        Case {
            spec: "{stable: v1, autoscaling: {minReplicas: 2, maxReplicas: 5}}",
            observed: Observed::default(),
            replicas: 2,
            phase: Phase::Pending,
            ready: "0/2",
            available: "False",
        },
    ];
    for case in cases {
        let observed = BTreeMap::from([("v1".to_string(), case.observed)]);
        let out = build(&llmd(case.spec), &versions, &observed, &settings());
        assert_eq!(
            out.deployments[0].spec.as_ref().unwrap().replicas,
            Some(case.replicas),
            "{}",
            case.spec
        );
        assert_eq!(out.status.phase, Some(case.phase), "{}", case.spec);
        assert_eq!(
            out.status.ready.as_deref(),
            Some(case.ready),
            "{}",
            case.spec
        );
        let available = out
            .conditions
            .iter()
            .find(|c| c.type_ == "Available")
            .unwrap();
        assert_eq!(available.status.as_str(), case.available, "{}", case.spec);
        assert_eq!(out.status.replicas, Some(case.replicas));
    }
}

#[test]
fn the_applied_hash_changes_with_the_pod_and_only_with_it() {
    let hash = |engine: &str, observed_ready: i32| {
        let versions = mv(
            "v1",
            &format!(
                "{{source: {{pvc: {{claimName: w}}}}, format: gguf, files: [m.gguf], resources: {{gpus: 0}}, engine: {engine}}}"
            ),
        );
        let observed = BTreeMap::from([(
            "v1".to_string(),
            Observed {
                replicas: 1,
                ready: observed_ready,
                ..Default::default()
            },
        )]);
        let out = build(&llmd("{stable: v1}"), &versions, &observed, &settings());
        out.deployments[0].metadata.annotations.as_ref().unwrap()[APPLIED_HASH].clone()
    };
    assert_eq!(
        hash("{maxNumSeqs: 4}", 0),
        hash("{maxNumSeqs: 4}", 1),
        "readiness is status, not a change to apply"
    );
    assert_ne!(hash("{maxNumSeqs: 4}", 0), hash("{maxNumSeqs: 8}", 0));
}

#[test]
fn child_names_are_dns_labels_that_stay_unique_when_cut() {
    assert_eq!(child_name("chat", "smol.q4-1"), "chat-smol-q4-1");
    assert_eq!(dns_label("7b.chat"), "x7b-chat");
    let long = "v".repeat(70);
    let a = child_name("chat", &format!("{long}a"));
    let b = child_name("chat", &format!("{long}b"));
    assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
    assert_ne!(a, b);
}

#[test]
fn the_planner_keeps_the_old_split_until_a_directly_changed_stable_is_ready() {
    let mut versions = mv(
        "v1",
        "{source: {pvc: {claimName: w}}, format: gguf, files: [m.gguf], resources: {gpus: 0}}",
    );
    versions.extend(mv(
        "v2",
        "{source: {pvc: {claimName: w}}, format: gguf, files: [m.gguf], resources: {gpus: 0}}",
    ));
    // `stable` was v1 (the status says so) and is now v2.
    let mut d = llmd("{stable: v2, replicas: 1}");
    d.status = Some(serde_json::from_value(serde_json::json!({
        "traffic": [{"version": "v1", "weight": 100}], "stableVersion": "v1", "phase": "Available",
    })).unwrap());
    let decide = |v2_ready: i32| {
        let observed = BTreeMap::from([
            (
                "v1".to_string(),
                Observed {
                    replicas: 1,
                    ready: 1,
                    ..Default::default()
                },
            ),
            (
                "v2".to_string(),
                Observed {
                    replicas: 1,
                    ready: v2_ready,
                    ..Default::default()
                },
            ),
        ]);
        let inputs = Inputs {
            llmd: &d,
            versions: &versions,
            observed: &observed,
            signals: &Signals::default(),
            settings: &settings(),
            now: k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap(),
            mono_seconds: 0.0,
            autoscale_interval: std::time::Duration::from_secs(5),
        };
        plan(&inputs, &mut BTreeMap::new())
    };

    let starting = decide(0);
    assert_eq!(
        json(&starting.status.traffic),
        serde_json::json!([{"version": "v1", "weight": 100}])
    );
    assert_eq!(starting.status.phase, Some(Phase::Progressing));
    let names: Vec<_> = starting
        .desired
        .deployments
        .iter()
        .map(|d| d.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["chat-v1", "chat-v2"], "v1 keeps its pod, v2 starts");
    let progressing = starting
        .conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .unwrap();
    assert_eq!(progressing.reason, "WaitingForReadyPods");
    assert_eq!(
        progressing.message,
        "traffic stays on v1 until v2 (0/1 pods ready) can take it"
    );
    assert_eq!(starting.notes[0].reason, "WaitingForReadyPods");
    assert!(starting.requeue <= std::time::Duration::from_secs(2));

    let ready = decide(1);
    assert_eq!(
        json(&ready.status.traffic),
        serde_json::json!([{"version": "v2", "weight": 100}])
    );
    assert_eq!(ready.status.phase, Some(Phase::Available));
    let names: Vec<_> = ready
        .desired
        .deployments
        .iter()
        .map(|d| d.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        ["chat-v2"],
        "v1 is no longer wanted (pruned once v2 is ready)"
    );
}

#[test]
fn server_pods_run_as_nobody_without_privileges_capabilities_or_a_token() {
    for source in [
        "{pvc: {claimName: w}}",
        "{image: {reference: 'localhost/models/tiny:1', path: /models}}",
        "{url: {uri: 'http://10.88.0.1:9/m.gguf', sha256: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa}}",
    ] {
        let versions = mv(
            "v1",
            &format!("{{source: {source}, format: gguf, files: [m.gguf], resources: {{gpus: 0}}}}"),
        );
        let out = build(
            &llmd("{stable: v1}"),
            &versions,
            &BTreeMap::new(),
            &settings(),
        );
        let pod = json(&out.deployments[0].spec.as_ref().unwrap().template.spec);
        assert_eq!(pod["automountServiceAccountToken"], false, "{source}");
        assert_eq!(
            pod["securityContext"],
            serde_json::json!({"runAsNonRoot": true, "runAsUser": 65534, "runAsGroup": 65534,
                               "seccompProfile": {"type": "RuntimeDefault"}}),
            "{source}"
        );
        let containers = pod["containers"]
            .as_array()
            .unwrap()
            .iter()
            .chain(pod["initContainers"].as_array().into_iter().flatten());
        for c in containers {
            assert_eq!(
                c["securityContext"],
                serde_json::json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                   "capabilities": {"drop": ["ALL"]}}),
                "{source}: {}",
                c["name"]
            );
        }
    }
}

#[test]
fn with_a_pod_token_master_each_pod_gets_the_digest_of_its_deployments_token_only() {
    use ferry_contract::pod_token::{derive, digest};
    use ferry_operator::build::PodTokenMaster;
    let versions = mv(
        "v1",
        "{source: {pvc: {claimName: w}}, format: gguf, files: [m.gguf], resources: {gpus: 0}}",
    );
    let plain = build(
        &llmd("{stable: v1}"),
        &versions,
        &BTreeMap::new(),
        &settings(),
    );
    assert_eq!(arg(server(&plain.deployments[0]), "--api-key-sha256"), None);

    let settings = Settings {
        pod_token: Some(PodTokenMaster(b"master".to_vec())),
        ..settings()
    };
    let out = build(
        &llmd("{stable: v1}"),
        &versions,
        &BTreeMap::new(),
        &settings,
    );
    let token = derive(b"master", "team", "chat");
    let pod = server(&out.deployments[0]);
    assert_eq!(arg(pod, "--api-key-sha256"), Some(digest(&token).as_str()));
    // The token itself is nowhere in what the operator writes.
    let written = serde_json::to_string(&out.deployments).unwrap();
    assert!(!written.contains(&token));
    assert!(format!("{settings:?}").contains("PodTokenMaster(..)"));
}

#[test]
fn with_network_policy_the_pods_accept_only_ferrys_and_the_named_namespaces_on_the_server_port() {
    use ferry_operator::build::PolicySettings;
    let versions = mv(
        "v1",
        "{source: {pvc: {claimName: w}}, format: gguf, files: [m.gguf], resources: {gpus: 0}}",
    );
    let plain = build(
        &llmd("{stable: v1}"),
        &versions,
        &BTreeMap::new(),
        &settings(),
    );
    assert!(plain.network_policies.is_empty());

    let settings = Settings {
        network_policy: Some(PolicySettings {
            ferry_namespace: "ferry-system".into(),
            allow_namespaces: vec!["monitoring".into(), "ferry-system".into()],
        }),
        ..settings()
    };
    let out = build(
        &llmd("{stable: v1}"),
        &versions,
        &BTreeMap::new(),
        &settings,
    );
    assert_eq!(out.network_policies.len(), 1);
    let policy = json(&out.network_policies[0]);
    assert_eq!(policy["metadata"]["name"], "chat");
    assert_eq!(policy["metadata"]["namespace"], "team");
    assert_eq!(policy["metadata"]["ownerReferences"][0]["uid"], "uid-1");
    let selector = &policy["spec"]["podSelector"]["matchLabels"];
    // The policy selects exactly the pods of this LLMDeployment's versions.
    let pod_labels = json(
        &out.deployments[0]
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels,
    );
    for (k, v) in selector.as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "{k}");
    }
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress"])
    );
    assert_eq!(
        policy["spec"]["ingress"],
        serde_json::json!([{
            "from": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ferry-system"}}},
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
            ],
            "ports": [{"port": 8000, "protocol": "TCP"}],
        }])
    );
}

/// A new experiment said `Experimenting 0/2` before any pod was ready; the README says Pending.
#[test]
fn an_experiment_is_pending_until_a_pod_is_ready() {
    let spec =
        "{source: {pvc: {claimName: w}}, format: gguf, files: [m.gguf], resources: {gpus: 0}}";
    let mut versions = mv("v1", spec);
    versions.extend(mv("v2", spec));
    let llmd = llmd(
        "{stable: v1, experiment: {variants: [{name: a, version: v1, weight: 50}, \
         {name: b, version: v2, weight: 50}]}}",
    );
    let settings = settings();
    let phase = |ready| {
        let observed: BTreeMap<String, Observed> = ["v1", "v2"]
            .iter()
            .map(|v| {
                let o = Observed {
                    replicas: 1,
                    ready,
                    ..Default::default()
                };
                (v.to_string(), o)
            })
            .collect();
        let inputs = Inputs {
            llmd: &llmd,
            versions: &versions,
            observed: &observed,
            signals: &Signals::default(),
            settings: &settings,
            now: k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap(),
            mono_seconds: 0.0,
            autoscale_interval: std::time::Duration::from_secs(5),
        };
        plan(&inputs, &mut BTreeMap::new()).status
    };
    assert_eq!(phase(0).phase, Some(Phase::Pending));
    let serving = phase(1);
    assert_eq!(serving.phase, Some(Phase::Experimenting));
    // `kubectl get llmd` shows the split (the Variants column).
    assert_eq!(serving.variant_split.as_deref(), Some("a 50%, b 50%"));
}
