//! The control plane: reconciles ModelVersion and LLMDeployment into pods, services, traffic
//! splits and status.
//!
//! Each controller is a pipeline with a pure middle: dereference (caches) → validate
//! ([`validate`]) → build ([`build`], [`pod`]; no API calls) → apply ([`apply`]: server-side apply,
//! skipped when nothing changed) → status (conditions with Events on transitions).

pub mod analysis;
pub mod apply;
pub mod autoscale;
pub mod build;
pub mod conditions;
mod deployment;
pub mod error;
pub mod events;
pub mod handover;
mod http;
pub mod leader;
pub mod metrics;
pub mod model_version;
pub mod plan;
pub mod plugin;
pub mod pod;
pub mod pod_token;
pub mod promql;
pub mod rollout;
mod signals;
pub mod status;
pub mod validate;
pub mod verdict;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ferry_crds::{LLMDeployment, ModelVersion};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tracing::info;

use crate::build::{LABEL_MANAGED_BY, MANAGER, PodTokenMaster, PolicySettings, Settings};
use crate::metrics::Metrics;
use crate::pod::ServerSettings;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "ferry-operator",
    version,
    about = "Ferry's Kubernetes operator"
)]
pub struct Args {
    /// `ferry-server` image for ModelVersions that do not name one.
    #[arg(
        long,
        env = "FERRY_SERVER_IMAGE",
        default_value = "localhost/ferry/server:dev"
    )]
    pub server_image: String,
    /// In-cluster OpenAI base URL of the router, reported in `status.endpoint`.
    #[arg(
        long,
        env = "FERRY_ROUTER_ENDPOINT",
        default_value = "http://ferry-router.ferry-system.svc:8080/v1"
    )]
    pub router_endpoint: String,
    /// Hugging Face mirror for the `huggingFace` source (default: the public Hub).
    #[arg(long, env = "FERRY_HF_ENDPOINT")]
    pub hf_endpoint: Option<String>,
    /// Seconds server pods get to finish in-flight requests when stopped.
    #[arg(long, env = "FERRY_DRAIN_SECONDS", default_value_t = 30)]
    pub drain_seconds: u32,
    /// Seconds a server pod may take to become ready (pull, weights, load) before a restart.
    #[arg(long, env = "FERRY_STARTUP_SECONDS", default_value_t = 1800)]
    pub startup_seconds: u32,
    /// Watch one namespace only (default: all).
    #[arg(long, env = "FERRY_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "FERRY_METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    pub metrics_address: SocketAddr,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, env = "FERRY_LEASE_NAME", default_value = "ferry-operator")]
    pub lease_name: String,
    /// This replica's identity in the Lease (default: the pod name, else host and process id).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds a leader's Lease lasts without renewal.
    #[arg(long, env = "FERRY_LEASE_SECONDS", default_value_t = 15)]
    pub lease_seconds: u64,
    /// LLMDeployments reconciled at once.
    #[arg(long, env = "FERRY_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// Label selector of the router pods whose `/internal/stats` the canary analysis and the
    /// experiment status read (every ready pod's `http` port; their numbers are merged). Empty:
    /// find no router pods, use `--router-stats-url` only.
    #[arg(
        long,
        env = "FERRY_ROUTER_SELECTOR",
        default_value = "app.kubernetes.io/name=ferry-router"
    )]
    pub router_selector: String,
    /// Namespace of the router pods (default: the operator's own, `POD_NAMESPACE`).
    #[arg(long, env = "FERRY_ROUTER_NAMESPACE")]
    pub router_namespace: Option<String>,
    /// Base URL of a router whose `/internal/stats` is read as well (repeatable; comma-separated
    /// in the environment variable), e.g. a router outside the cluster.
    #[arg(
        long = "router-stats-url",
        env = "FERRY_ROUTER_STATS_URLS",
        value_delimiter = ','
    )]
    pub router_stats_urls: Vec<String>,
    /// How the `image` source reaches the pods: `auto` mounts the model image as an image volume
    /// where the API server is 1.35 or newer (the feature is on by default there, GA in 1.36) and
    /// copies the weights with an init container elsewhere; `always` and `never` decide outright.
    #[arg(long, env = "FERRY_IMAGE_VOLUMES", value_enum, default_value = "auto")]
    pub image_volumes: ImageVolumes,
    /// Seconds between two looks at the pods' queue depth for LLMDeployments with autoscaling.
    #[arg(long, env = "FERRY_AUTOSCALE_INTERVAL_SECONDS", default_value_t = 5)]
    pub autoscale_interval_seconds: u64,
    /// Secret in the operator's namespace holding the master of the tokens the router shows model
    /// pods (created with a random master when missing). With it, every server pod answers only
    /// requests carrying the router's token for its LLMDeployment; give the router the same
    /// `--pod-token-secret`. Empty: pods need no token.
    #[arg(long, env = "FERRY_POD_TOKEN_SECRET")]
    pub pod_token_secret: Option<String>,
    /// A NetworkPolicy per LLMDeployment: its server pods accept connections only from the
    /// operator's namespace (router, operator) and `--network-policy-allow-namespace`.
    #[arg(long, env = "FERRY_NETWORK_POLICY")]
    pub network_policy: bool,
    /// A namespace (Prometheus) whose pods may reach the server pods under `--network-policy`
    /// (repeatable; comma-separated in the environment variable).
    #[arg(
        long = "network-policy-allow-namespace",
        env = "FERRY_NETWORK_POLICY_ALLOW_NAMESPACES",
        value_delimiter = ','
    )]
    pub network_policy_allow_namespaces: Vec<String>,
    /// Logs as JSON lines (default) or text.
    #[arg(long, env = "FERRY_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
    /// `ferry-server` image built with CUDA, for ModelVersions with `resources.gpus` > 0 that name
    /// no image (default: `--server-image`).
    #[arg(long, env = "FERRY_GPU_SERVER_IMAGE")]
    pub gpu_server_image: Option<String>,
    /// RuntimeClass of GPU pods, e.g. `nvidia` where the NVIDIA container runtime is not the
    /// nodes' default.
    #[arg(long, env = "FERRY_GPU_RUNTIME_CLASS_NAME")]
    pub gpu_runtime_class_name: Option<String>,
    /// Node labels every GPU pod's node must have, `KEY=VALUE` (repeatable; comma-separated in the
    /// environment variable). A ModelVersion's own `nodeSelector` value for a key wins.
    #[arg(
        long = "gpu-node-selector",
        env = "FERRY_GPU_NODE_SELECTOR",
        value_delimiter = ','
    )]
    pub gpu_node_selector: Vec<String>,
    /// Tolerations of every GPU pod, as a JSON list of Kubernetes tolerations (added before a
    /// ModelVersion's own), e.g. `[{"key":"nvidia.com/gpu","operator":"Exists","effect":"NoSchedule"}]`.
    #[arg(long, env = "FERRY_GPU_TOLERATIONS")]
    pub gpu_tolerations: Option<String>,
}

/// The GPU pod defaults the `--gpu-*` flags ask for; a malformed one stops the operator with a
/// message naming it (empty values, as Helm renders unset ones, mean unset).
pub fn gpu_settings(args: &Args) -> anyhow::Result<pod::GpuPodSettings> {
    let set = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
    let mut node_selector = std::collections::BTreeMap::new();
    for pair in args
        .gpu_node_selector
        .iter()
        .filter(|p| !p.trim().is_empty())
    {
        let (key, value) = pair
            .split_once('=')
            .filter(|(k, _)| !k.trim().is_empty())
            .ok_or_else(|| anyhow::anyhow!("--gpu-node-selector {pair:?}: expected KEY=VALUE"))?;
        node_selector.insert(key.trim().to_string(), value.trim().to_string());
    }
    let tolerations = match set(&args.gpu_tolerations) {
        Some(text) => serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!("--gpu-tolerations: expected a JSON list of tolerations: {e}")
        })?,
        None => Vec::new(),
    };
    Ok(pod::GpuPodSettings {
        image: set(&args.gpu_server_image),
        runtime_class_name: set(&args.gpu_runtime_class_name),
        node_selector,
        tolerations,
    })
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageVolumes {
    Auto,
    Always,
    Never,
}

impl ImageVolumes {
    /// Whether to use image volumes on an API server of this version (`/version`'s `major` and
    /// `minor`; a minor such as `"35+"` counts as 35).
    pub fn enabled(self, major: &str, minor: &str) -> bool {
        let number = |s: &str| {
            s.trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse::<u32>()
                .ok()
        };
        match self {
            Self::Always => true,
            Self::Never => false,
            Self::Auto => matches!((number(major), number(minor)), (Some(1), Some(m)) if m >= 35),
        }
    }
}

/// What every reconcile shares: the client, caches of the watched kinds, settings, metrics.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub model_versions: Store<ModelVersion>,
    pub deployments: Store<Deployment>,
    pub services: Store<Service>,
    /// Present with `--network-policy`.
    pub network_policies: Option<Store<NetworkPolicy>>,
    pub pods: Store<Pod>,
    pub recorder: events::Recorder,
    pub metrics: Metrics,
    /// Client for the routers' stats and the pods' metrics.
    pub http: reqwest::Client,
    /// Where the routers' `/internal/stats` are.
    pub routers: signals::Routers,
    /// Autoscaling history per `namespace/llmdeployment`, then per version.
    pub scaling: std::sync::Mutex<
        std::collections::HashMap<String, std::collections::BTreeMap<String, autoscale::History>>,
    >,
    /// The monotonic clock the autoscaling history counts from.
    pub started: std::time::Instant,
    pub autoscale_interval: Duration,
}

impl Args {
    pub fn parse_and_run() -> anyhow::Result<()> {
        let args = Args::parse();
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr);
        match args.log_format {
            LogFormat::Json => builder.json().flatten_event(true).init(),
            LogFormat::Text => builder.init(),
        }
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(run(args))
    }
}

/// Serves health and metrics, waits for leadership, then runs both controllers until SIGTERM
/// (or until leadership is lost, which ends the process so it restarts as a standby).
pub async fn run(args: Args) -> anyhow::Result<()> {
    // Read before anything starts: the controllers use it only after leader election.
    let gpu = gpu_settings(&args)?;
    let client = Client::try_default().await?;
    let metrics = Metrics::new(prometheus::Registry::new());
    let health = http::Health::default();
    let listener = tokio::net::TcpListener::bind(args.metrics_address).await?;
    info!(address = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    tokio::spawn(http::serve(listener, metrics.clone(), health.clone()));

    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let election = leader::LeaderElection::new(
        client.clone(),
        &args.lease_namespace,
        &args.lease_name,
        &identity,
        Duration::from_secs(args.lease_seconds),
    );
    health.set_ready(true);
    tokio::select! {
        _ = election.acquire() => {}
        _ = shutdown_signal() => return Ok(()),
    }
    metrics.leader.set(1);

    let controllers = run_controllers(client.clone(), &args, gpu, metrics.clone(), identity);
    tokio::select! {
        r = controllers => r?,
        _ = election.hold() => {
            metrics.leader.set(0);
            anyhow::bail!("lost the leader Lease; exiting so that only one replica reconciles");
        }
    }
    election.release().await;
    Ok(())
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A cache of one kind and the watch stream that fills it. The stream updates the cache before it
/// yields an object, so a reconcile it triggers always reads at least that object's state (two
/// separate watches, one to trigger and one to cache, would race). The controller that polls the
/// stream keeps the cache current; reconciles wait for [`Context::caches_ready`].
fn reflected<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let stream = watcher(api, config)
        .backoff(WatchBackoff::default())
        .reflect(writer)
        .touched_objects();
    (store, stream)
}

/// How often a failing watch retries: from 0.5 s, doubling, at most every 5 s (kube's default
/// grows to 30 s), so permissions that arrive after the operator (a Role applied later, RBAC
/// propagation) take effect within seconds; back to 0.5 s after each success.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(5);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (now * 2).min(Self::MAX);
        Some(now)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Context {
    /// Waits until every cache holds its initial listing.
    pub async fn caches_ready(&self) {
        if tokio::time::timeout(Duration::from_secs(10), self.caches_filled())
            .await
            .is_err()
        {
            // Usually missing list/watch permissions; the watch errors are logged too.
            tracing::warn!("caches not filled after 10 s; waiting (check the operator's RBAC)");
            self.caches_filled().await;
        }
    }

    async fn caches_filled(&self) {
        let _ = futures::join!(
            self.model_versions.wait_until_ready(),
            self.deployments.wait_until_ready(),
            self.services.wait_until_ready(),
            self.pods.wait_until_ready(),
        );
        if let Some(policies) = &self.network_policies {
            let _ = policies.wait_until_ready().await;
        }
    }
}

async fn run_controllers(
    client: Client,
    args: &Args,
    gpu: pod::GpuPodSettings,
    metrics: Metrics,
    identity: String,
) -> anyhow::Result<()> {
    let ns = args.watch_namespace.as_deref();
    match ns {
        Some(ns) => info!(
            namespace = ns,
            "watching namespace {ns} only: ModelVersions and LLMDeployments in any other \
             namespace are not reconciled (they keep observedGeneration unset and get no Events)"
        ),
        None => info!("watching every namespace"),
    }
    let ours = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"));
    let all = watcher::Config::default();
    let (model_versions, mv_stream) = reflected(api::<ModelVersion>(&client, ns), all.clone());
    let (deployments, deployment_stream) = reflected(api::<Deployment>(&client, ns), ours.clone());
    let (services, service_stream) = reflected(api::<Service>(&client, ns), ours.clone());
    let (pods, pod_stream) = reflected(api::<Pod>(&client, ns), ours.clone());
    let (network_policies, policy_stream) = if args.network_policy {
        let (store, stream) = reflected(api::<NetworkPolicy>(&client, ns), ours);
        (Some(store), Some(stream))
    } else {
        (None, None)
    };
    let pod_token = match &args.pod_token_secret {
        Some(name) if !name.is_empty() => Some(PodTokenMaster(
            pod_token::ensure_master(&client, &args.lease_namespace, name).await?,
        )),
        _ => None,
    };

    let image_volumes = match args.image_volumes {
        ImageVolumes::Auto => {
            let version = client.apiserver_version().await?;
            let on = args.image_volumes.enabled(&version.major, &version.minor);
            info!(
                version = %version.git_version,
                image_volumes = on,
                "image source: {}",
                if on { "image volumes" } else { "init container copies" }
            );
            on
        }
        other => other.enabled("", ""),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        settings: Settings {
            server: ServerSettings {
                image: args.server_image.clone(),
                drain_seconds: args.drain_seconds,
                hf_endpoint: args.hf_endpoint.clone(),
                startup_seconds: args.startup_seconds,
                image_volumes,
                gpu,
            },
            router_endpoint: args.router_endpoint.clone(),
            pod_token,
            network_policy: args.network_policy.then(|| PolicySettings {
                ferry_namespace: args
                    .router_namespace
                    .clone()
                    .unwrap_or_else(|| args.lease_namespace.clone()),
                allow_namespaces: args.network_policy_allow_namespaces.clone(),
            }),
        },
        model_versions,
        deployments,
        services,
        network_policies,
        pods,
        recorder: events::Recorder::new(client.clone(), MANAGER, &identity),
        metrics,
        http: reqwest::Client::new(),
        routers: signals::Routers {
            pods: (!args.router_selector.trim().is_empty()).then(|| {
                (
                    Api::namespaced(
                        client.clone(),
                        args.router_namespace
                            .as_deref()
                            .unwrap_or(&args.lease_namespace),
                    ),
                    args.router_selector.clone(),
                )
            }),
            urls: args.router_stats_urls.clone(),
        },
        scaling: Default::default(),
        started: std::time::Instant::now(),
        autoscale_interval: Duration::from_secs(args.autoscale_interval_seconds.max(1)),
    });
    let config = kube::runtime::controller::Config::default().concurrency(args.concurrency);

    let mut llmds = Controller::new(api::<LLMDeployment>(&client, ns), all.clone())
        .with_config(config.clone())
        .owns_stream(deployment_stream)
        .owns_stream(service_stream);
    if let Some(stream) = policy_stream {
        llmds = llmds.owns_stream(stream);
    }
    let llmd_store = llmds.store();
    // A deleted LLMDeployment is not reconciled again: drop its gauges from here.
    let (live, metrics) = (llmd_store.clone(), ctx.metrics.clone());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(15)).await;
            let names = live
                .state()
                .iter()
                .map(|d| (d.namespace().unwrap_or_default(), d.name_any()))
                .collect();
            metrics.keep_llm_deployments(&names);
        }
    });
    let by_version = move |mv: ModelVersion| {
        let name = mv.name_any();
        let namespace = mv.namespace();
        llmd_store
            .state()
            .into_iter()
            .filter(|d| {
                d.namespace() == namespace && validate::referenced_versions(d).contains(&name)
            })
            .map(|d| ObjectRef::from_obj(&*d))
            .collect::<Vec<_>>()
    };
    let llmds = llmds
        .watches_stream(mv_stream, by_version)
        .graceful_shutdown_on(shutdown_signal())
        .run(deployment::reconcile, retry_after_error, ctx.clone())
        .for_each(log_controller_error);

    let mvs = Controller::new(api::<ModelVersion>(&client, ns), all)
        .with_config(config)
        .watches_stream(pod_stream, model_version::pod_to_version)
        .graceful_shutdown_on(shutdown_signal())
        .run(model_version::reconcile, retry_after_error, ctx)
        .for_each(log_controller_error);

    info!("reconciling");
    futures::join!(llmds, mvs);
    info!("controllers stopped");
    Ok(())
}

/// Watch and queue errors of a controller (reconcile errors are handled by the error policy).
fn log_controller_error<K: kube::Resource, E: std::error::Error>(
    result: Result<
        (ObjectRef<K>, kube::runtime::controller::Action),
        kube::runtime::controller::Error<E, watcher::Error>,
    >,
) -> futures::future::Ready<()> {
    match result {
        Err(kube::runtime::controller::Error::ReconcilerFailed(..)) | Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "controller watch error"),
    }
    futures::future::ready(())
}

/// Error policy of both controllers: invalid specs are not errors (they are reported in status),
/// so what fails here is transient (API, connection) and is retried.
fn retry_after_error<K: kube::Resource<DynamicType = ()>>(
    object: Arc<K>,
    error: &error::Error,
    _ctx: Arc<Context>,
) -> kube::runtime::controller::Action {
    tracing::warn!(kind = %K::kind(&()), name = %object.name_any(), error = %error, "reconcile failed; retrying");
    kube::runtime::controller::Action::requeue(Duration::from_secs(5))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        Args::try_parse_from([&["ferry-operator"], extra].concat()).unwrap()
    }

    #[test]
    fn a_failing_watch_retries_within_5_s_and_starts_over_after_a_success() {
        use kube::runtime::utils::Backoff;
        let mut b = WatchBackoff::default();
        let waits: Vec<u64> = b.by_ref().take(6).map(|d| d.as_millis() as u64).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(500)));
    }

    #[test]
    fn gpu_flags_become_gpu_pod_settings_and_bad_ones_are_named() {
        assert_eq!(
            gpu_settings(&args(&[])).unwrap(),
            pod::GpuPodSettings::default()
        );
        let s = gpu_settings(&args(&[
            "--gpu-server-image",
            "ferry/server:cuda",
            "--gpu-runtime-class-name",
            "nvidia",
            "--gpu-node-selector",
            "nvidia.com/gpu.present=true,pool=h200",
            "--gpu-tolerations",
            r#"[{"key":"nvidia.com/gpu","operator":"Exists","effect":"NoSchedule"}]"#,
        ]))
        .unwrap();
        assert_eq!(s.image.as_deref(), Some("ferry/server:cuda"));
        assert_eq!(s.runtime_class_name.as_deref(), Some("nvidia"));
        assert_eq!(s.node_selector.len(), 2);
        assert_eq!(s.node_selector["pool"], "h200");
        assert_eq!(s.tolerations[0].key.as_deref(), Some("nvidia.com/gpu"));
        // What Helm renders for unset values.
        let empty = gpu_settings(&args(&[
            "--gpu-server-image=",
            "--gpu-runtime-class-name=",
            "--gpu-tolerations=",
        ]))
        .unwrap();
        assert_eq!(empty, pod::GpuPodSettings::default());

        let bad = gpu_settings(&args(&["--gpu-node-selector", "pool"])).unwrap_err();
        assert_eq!(
            bad.to_string(),
            r#"--gpu-node-selector "pool": expected KEY=VALUE"#
        );
        let bad = gpu_settings(&args(&["--gpu-tolerations", "{}"])).unwrap_err();
        assert!(
            bad.to_string()
                .starts_with("--gpu-tolerations: expected a JSON list of tolerations"),
            "{bad}"
        );
    }
}
