//! The pod that runs one ModelVersion: the `ferry-server` container with flags from the
//! ModelVersion's engine settings, the weights delivered per source, probes sized for cold starts.
//! Pure: no API calls.

use std::collections::BTreeMap;

use ferry_crds::{EngineSpec, ModelFormat, ModelSource, ModelVersionSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ImageVolumeSource, PersistentVolumeClaimVolumeSource, PodSecurityContext,
    PodSpec, Probe, ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext,
    Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

/// Port `ferry-server` listens on in every pod.
pub use ferry_crds::labels::SERVER_PORT;
/// Where the weights are mounted (or copied) in the server container.
const MODELS_DIR: &str = "/models";

/// Operator-wide settings that shape every server pod.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerSettings {
    /// `ferry-server` image used unless a ModelVersion names its own.
    pub image: String,
    /// Seconds in-flight requests get after SIGTERM (`--drain-seconds`).
    pub drain_seconds: u32,
    /// Hugging Face endpoint (a mirror) for the `huggingFace` source; `None`: the public Hub.
    pub hf_endpoint: Option<String>,
    /// Seconds a pod may take from start to its first successful `/ready` (pull, copy or download,
    /// load, warm-up) before the kubelet restarts it.
    pub startup_seconds: u32,
    /// The `image` source as an image volume (Kubernetes 1.35+: the kubelet mounts the model image
    /// read-only, nothing is copied); otherwise an init container copies the weights out of it.
    pub image_volumes: bool,
    /// What pods of ModelVersions with `resources.gpus` > 0 get besides their own settings.
    pub gpu: GpuPodSettings,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            image: "ferry/server:latest".into(),
            drain_seconds: 30,
            hf_endpoint: None,
            startup_seconds: 1800,
            image_volumes: false,
            gpu: GpuPodSettings::default(),
        }
    }
}

/// Operator-wide defaults for GPU pods (the chart's `gpu` values): the CUDA build of the server,
/// the container runtime that exposes the GPU, where GPU nodes are and the taints they carry.
/// A ModelVersion's own `resources.image`, `nodeSelector` keys and tolerations come first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuPodSettings {
    /// `ferry-server` image (built with CUDA) for GPU ModelVersions that name none.
    pub image: Option<String>,
    /// RuntimeClass of GPU pods (e.g. `nvidia` where the NVIDIA container runtime is not the
    /// node's default).
    pub runtime_class_name: Option<String>,
    /// Node labels every GPU pod's node must have; a ModelVersion's value for a key wins.
    pub node_selector: BTreeMap<String, String>,
    /// Taints every GPU pod tolerates, before the ModelVersion's own.
    pub tolerations: Vec<Toleration>,
}

/// The pod spec of one version's server pods.
pub fn server_pod_spec(
    version: &str,
    served_model_name: &str,
    spec: &ModelVersionSpec,
    settings: &ServerSettings,
) -> PodSpec {
    let on_gpu = spec.resources.gpus > 0;
    let gpu = on_gpu.then_some(&settings.gpu);
    let image = spec
        .resources
        .image
        .clone()
        .or_else(|| gpu.and_then(|g| g.image.clone()))
        .unwrap_or_else(|| settings.image.clone());
    let mut node_selector = gpu.map(|g| g.node_selector.clone()).unwrap_or_default();
    node_selector.extend(spec.resources.node_selector.clone());
    let mut tolerations = gpu.map(|g| g.tolerations.clone()).unwrap_or_default();
    tolerations.extend(spec.resources.tolerations.iter().cloned());
    let delivery = delivery(spec, &image, settings);
    let mut args: Vec<String> = [
        ["--model-path", delivery.model_path.as_str()],
        ["--served-model-name", served_model_name],
        ["--model-version", version],
        ["--port", &SERVER_PORT.to_string()],
        ["--drain-seconds", &settings.drain_seconds.to_string()],
    ]
    .into_iter()
    .flatten()
    .map(String::from)
    .collect();
    format_flags(&mut args, spec, &delivery);
    engine_flags(&mut args, &spec.engine);
    if on_gpu {
        push(&mut args, "--device", "cuda:0");
    }
    let mut env = vec![env_var("HF_HOME", "/tmp/hf")];
    if let Some(template) = &spec.engine.chat_template {
        env.push(env_var("FERRY_CHAT_TEMPLATE", template));
    }
    env.extend(spec.env.iter().map(|e| env_var(&e.name, &e.value)));
    let mut mounts = vec![mount("tmp", "/tmp", false)];
    mounts.extend(delivery.server_mount);
    let http = |path: &str| HTTPGetAction {
        path: Some(path.into()),
        port: IntOrString::Int(SERVER_PORT),
        ..Default::default()
    };
    const STARTUP_PERIOD: i32 = 5;
    let server = Container {
        name: "server".into(),
        image: Some(image),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(args),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(ferry_crds::labels::SERVER_PORT_NAME.into()),
            container_port: SERVER_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        resources: Some(resources(spec)),
        startup_probe: Some(Probe {
            http_get: Some(http("/ready")),
            period_seconds: Some(STARTUP_PERIOD),
            failure_threshold: Some((settings.startup_seconds as i32 / STARTUP_PERIOD).max(1)),
            ..Default::default()
        }),
        readiness_probe: Some(Probe {
            http_get: Some(http("/ready")),
            period_seconds: Some(2),
            failure_threshold: Some(1),
            ..Default::default()
        }),
        liveness_probe: Some(Probe {
            http_get: Some(http("/health")),
            period_seconds: Some(10),
            timeout_seconds: Some(5),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        security_context: Some(locked_down()),
        ..Default::default()
    };
    let mut volumes = vec![empty_dir("tmp")];
    volumes.extend(delivery.volume);
    PodSpec {
        containers: vec![server],
        init_containers: delivery.init.map(|c| {
            vec![Container {
                security_context: Some(locked_down()),
                ..c
            }]
        }),
        volumes: Some(volumes),
        node_selector: Some(node_selector).filter(|m| !m.is_empty()),
        tolerations: Some(tolerations).filter(|t| !t.is_empty()),
        runtime_class_name: gpu.and_then(|g| g.runtime_class_name.clone()),
        // Room for the drain plus the kubelet's own stop time.
        termination_grace_period_seconds: Some(i64::from(settings.drain_seconds) + 15),
        enable_service_links: Some(false),
        // The server needs nothing from the API server; no token to steal.
        automount_service_account_token: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(NOBODY),
            run_as_group: Some(NOBODY),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The user the server runs as (`nobody`; the images carry it in /etc/passwd).
const NOBODY: i64 = 65534;

/// Every container of a server pod: no privilege escalation, no capabilities, a read-only root
/// filesystem (the server writes only to its `/tmp` volume, and the weights volumes).
fn locked_down() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        ..Default::default()
    }
}

/// How the weights reach the server container.
struct Delivery {
    model_path: String,
    volume: Option<Volume>,
    server_mount: Option<VolumeMount>,
    init: Option<Container>,
    /// File names under `model_path` (GGUF), when the source decides them.
    files: Vec<String>,
}

fn delivery(spec: &ModelVersionSpec, server_image: &str, settings: &ServerSettings) -> Delivery {
    match &spec.source {
        ModelSource::Pvc(pvc) => Delivery {
            model_path: join(MODELS_DIR, pvc.path.as_deref().unwrap_or("")),
            volume: Some(Volume {
                name: "model".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: pvc.claim_name.clone(),
                    read_only: Some(true),
                }),
                ..Default::default()
            }),
            server_mount: Some(mount("model", MODELS_DIR, true)),
            init: None,
            files: spec.files.clone(),
        },
        ModelSource::Image(image) if settings.image_volumes => Delivery {
            model_path: MODELS_DIR.into(),
            volume: Some(Volume {
                name: "model".into(),
                image: Some(ImageVolumeSource {
                    reference: Some(image.reference.clone()),
                    pull_policy: Some("IfNotPresent".into()),
                }),
                ..Default::default()
            }),
            // The image's `path` is the volume's sub-path, so the server sees only the weights.
            server_mount: Some(VolumeMount {
                sub_path: Some(image.path.trim_matches('/').to_string()).filter(|p| !p.is_empty()),
                ..mount("model", MODELS_DIR, true)
            }),
            init: None,
            files: spec.files.clone(),
        },
        ModelSource::Image(image) => Delivery {
            model_path: MODELS_DIR.into(),
            volume: Some(empty_dir("model")),
            server_mount: Some(mount("model", MODELS_DIR, true)),
            // The model image provides `cp` (e.g. built FROM busybox), as modelcar images do.
            init: Some(Container {
                name: "model".into(),
                image: Some(image.reference.clone()),
                image_pull_policy: Some("IfNotPresent".into()),
                command: Some(vec![
                    "cp".into(),
                    "-R".into(),
                    format!("{}/.", image.path.trim_end_matches('/')),
                    "/model-volume/".into(),
                ]),
                volume_mounts: Some(vec![mount("model", "/model-volume", false)]),
                ..Default::default()
            }),
            files: spec.files.clone(),
        },
        ModelSource::Url(url) => {
            let name = spec
                .files
                .first()
                .cloned()
                .unwrap_or_else(|| url_file_name(&url.uri));
            let args = vec![
                "fetch".into(),
                "--dest".into(),
                "/model-volume".into(),
                "--url".into(),
                url.uri.clone(),
                "--sha256".into(),
                url.sha256.clone(),
                "--file-name".into(),
                name.clone(),
            ];
            Delivery {
                model_path: MODELS_DIR.into(),
                volume: Some(empty_dir("model")),
                server_mount: Some(mount("model", MODELS_DIR, true)),
                init: Some(fetch_container(server_image, args, Vec::new())),
                files: vec![name],
            }
        }
        ModelSource::HuggingFace(hf) => {
            let files = if hf.files.is_empty() {
                spec.files.clone()
            } else {
                hf.files.clone()
            };
            let mut args = vec![
                "fetch".into(),
                "--dest".into(),
                "/model-volume".into(),
                "--hf-repo".into(),
                hf.repo.clone(),
                "--revision".into(),
                hf.revision.clone(),
            ];
            for f in &files {
                args.push("--file".into());
                args.push(f.clone());
            }
            let mut env = Vec::new();
            if let Some(endpoint) = &settings.hf_endpoint {
                env.push(env_var("HF_ENDPOINT", endpoint));
            }
            if let Some(secret) = &hf.token_secret_ref {
                env.push(EnvVar {
                    name: "HF_TOKEN".into(),
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: secret.name.clone(),
                            key: secret.key.clone(),
                            optional: Some(false),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
            let gguf: Vec<String> = files
                .iter()
                .filter(|f| f.ends_with(".gguf"))
                .cloned()
                .collect();
            Delivery {
                model_path: MODELS_DIR.into(),
                volume: Some(empty_dir("model")),
                server_mount: Some(mount("model", MODELS_DIR, true)),
                init: Some(fetch_container(server_image, args, env)),
                files: if spec.files.is_empty() {
                    gguf
                } else {
                    spec.files.clone()
                },
            }
        }
    }
}

fn fetch_container(image: &str, args: Vec<String>, env: Vec<EnvVar>) -> Container {
    Container {
        name: "fetch".into(),
        image: Some(image.into()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(args),
        env: Some(env).filter(|e| !e.is_empty()),
        volume_mounts: Some(vec![mount("model", "/model-volume", false)]),
        ..Default::default()
    }
}

/// The last path segment of a URL, without query or fragment.
pub fn url_file_name(uri: &str) -> String {
    let path = uri.split(['?', '#']).next().unwrap_or(uri);
    path.rsplit('/').next().unwrap_or_default().to_string()
}

fn format_flags(args: &mut Vec<String>, spec: &ModelVersionSpec, delivery: &Delivery) {
    match spec.format {
        ModelFormat::Gguf => {
            push(args, "--format", "gguf");
            push(args, "--gguf-file", &delivery.files.join(","));
        }
        ModelFormat::Safetensors => push(args, "--format", "safetensors"),
    }
}

fn engine_flags(args: &mut Vec<String>, engine: &EngineSpec) {
    let name = |v: serde_json::Value| v.as_str().unwrap_or_default().to_string();
    push(args, "--dtype", &name(serde_json::json!(engine.dtype)));
    push(args, "--max-num-seqs", &engine.max_num_seqs.to_string());
    push(args, "--max-queue", &engine.max_queue.to_string());
    if let Some(n) = engine.max_seq_len {
        push(args, "--max-seq-len", &n.to_string());
    }
    if let Some(isq) = engine.isq {
        push(args, "--isq", &name(serde_json::json!(isq)));
    }
    if engine.prefix_cache {
        args.push("--prefix-cache".into());
    }
    if engine.paged_attention.enabled {
        let fraction = engine.paged_attention.gpu_memory_fraction;
        push(args, "--paged-attention-gpu-memory", &fraction.to_string());
    }
}

fn push(args: &mut Vec<String>, name: &str, value: &str) {
    args.push(name.into());
    args.push(value.into());
}

fn resources(spec: &ModelVersionSpec) -> ResourceRequirements {
    let mut amounts = BTreeMap::new();
    if let Some(cpu) = &spec.resources.cpu {
        amounts.insert("cpu".to_string(), cpu.clone());
    }
    if let Some(memory) = &spec.resources.memory {
        amounts.insert("memory".to_string(), memory.clone());
    }
    let mut limits = amounts.clone();
    if spec.resources.gpus > 0 {
        limits.insert(
            spec.resources.gpu_resource_name.clone(),
            Quantity(spec.resources.gpus.to_string()),
        );
    }
    ResourceRequirements {
        requests: Some(amounts).filter(|m| !m.is_empty()),
        limits: Some(limits).filter(|m| !m.is_empty()),
        ..Default::default()
    }
}

fn join(dir: &str, sub: &str) -> String {
    let sub = sub.trim_matches('/');
    if sub.is_empty() {
        dir.into()
    } else {
        format!("{dir}/{sub}")
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only).filter(|r| *r),
        ..Default::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }
}

fn env_var(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// A pod that is not ready and will not get there by waiting: a container waiting on an error
/// (crash loop, image pull, bad configuration), one that restarted or ended (an init container
/// that ended with an error), a pod the scheduler cannot place, or one still not ready after
/// `startup_seconds` (the startup probe's whole budget). A pod starting (a scale-up, a
/// replacement) or being deleted is not failing.
pub fn failing(
    pod: &k8s_openapi::api::core::v1::Pod,
    now: Timestamp,
    startup_seconds: u32,
) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    let conditions = status.conditions.as_deref().unwrap_or_default();
    let is = |type_: &str, value: &str| {
        conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == value)
    };
    if is("Ready", "True") || pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    if is("PodScheduled", "False") {
        return true;
    }
    let waiting_on_error = |c: &k8s_openapi::api::core::v1::ContainerStatus| {
        c.state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.as_deref())
            .is_some_and(|r| !matches!(r, "ContainerCreating" | "PodInitializing"))
    };
    let init = status
        .init_container_statuses
        .as_deref()
        .unwrap_or_default();
    let main = status.container_statuses.as_deref().unwrap_or_default();
    let init_failed = init.iter().any(|c| {
        c.restart_count > 0
            || waiting_on_error(c)
            || c.state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .is_some_and(|t| t.exit_code != 0)
    });
    let main_failed = main.iter().any(|c| {
        c.restart_count > 0
            || waiting_on_error(c)
            || c.state.as_ref().is_some_and(|s| s.terminated.is_some())
    });
    let started = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(now, |t| t.0);
    let too_long = now.duration_since(started).as_secs() > i64::from(startup_seconds);
    init_failed || main_failed || too_long
}

#[cfg(test)]
mod failing_tests {
    use super::*;

    fn pod(age_s: i64, status: serde_json::Value) -> k8s_openapi::api::core::v1::Pod {
        let created = Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(age_s);
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "creationTimestamp": created.to_string()},
            "status": status}))
        .unwrap()
    }

    fn container(state: serde_json::Value, restarts: i32) -> serde_json::Value {
        serde_json::json!({"name": "server", "image": "s", "imageID": "", "ready": false,
            "restartCount": restarts, "state": state})
    }

    #[test]
    fn a_starting_pod_is_not_failing_and_a_broken_one_is() {
        let now = Timestamp::now();
        let not_ready = serde_json::json!([{"type": "Ready", "status": "False"}]);
        let starting = pod(
            30,
            serde_json::json!({"conditions": not_ready,
                "containerStatuses": [container(serde_json::json!({"running": {}}), 0)]}),
        );
        assert!(!failing(&starting, now, 600), "a scale-up's new pod");
        let creating = pod(
            5,
            serde_json::json!({"conditions": not_ready, "containerStatuses": [container(
                serde_json::json!({"waiting": {"reason": "ContainerCreating"}}), 0)]}),
        );
        assert!(!failing(&creating, now, 600));
        let crash = pod(
            30,
            serde_json::json!({"conditions": not_ready, "containerStatuses": [container(
                serde_json::json!({"waiting": {"reason": "CrashLoopBackOff"}}), 3)]}),
        );
        assert!(failing(&crash, now, 600));
        let pull = pod(
            30,
            serde_json::json!({"conditions": not_ready, "containerStatuses": [container(
                serde_json::json!({"waiting": {"reason": "ImagePullBackOff"}}), 0)]}),
        );
        assert!(failing(&pull, now, 600));
        let unschedulable = pod(
            30,
            serde_json::json!({"conditions": [{"type": "PodScheduled", "status": "False"}]}),
        );
        assert!(failing(&unschedulable, now, 600));
        let stuck = pod(
            700,
            serde_json::json!({"conditions": not_ready,
                "containerStatuses": [container(serde_json::json!({"running": {}}), 0)]}),
        );
        assert!(failing(&stuck, now, 600), "past the startup budget");
        let ready = pod(
            700,
            serde_json::json!({"conditions": [{"type": "Ready", "status": "True"}]}),
        );
        assert!(!failing(&ready, now, 600));
    }
}
