//! The objects an LLMDeployment should have and the serving part of its status, from the plan
//! [`crate::plan`] decided (which versions run with how many pods, the traffic split), the
//! referenced ModelVersions and what is observed in the cluster. Nothing here calls the API.

use std::collections::BTreeMap;

use ferry_crds::{
    LLMDeployment, LLMDeploymentStatus, ModelVersion, Phase, TrafficTarget, VersionStatus,
    condition::types,
};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{PodTemplateSpec, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::conditions::Wanted;
use crate::pod::{SERVER_PORT, ServerSettings, server_pod_spec};

pub use ferry_crds::labels::{
    LABEL_DEPLOYMENT, LABEL_MANAGED_BY, LABEL_MODEL, LABEL_VERSION, MANAGER, child_name, dns_label,
    fnv1a, label_value,
};
/// Annotation holding a hash of what the operator last applied to an object: equal hash, no write.
pub const APPLIED_HASH: &str = "serving.ferry.dev/applied-hash";

/// Operator settings the build depends on.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub server: ServerSettings,
    /// In-cluster OpenAI base URL of the router, reported as `status.endpoint`.
    pub router_endpoint: String,
    /// Pods answer only requests with the router's token (`--pod-token-secret`).
    pub pod_token: Option<PodTokenMaster>,
    /// A NetworkPolicy per LLMDeployment (`--network-policy`).
    pub network_policy: Option<PolicySettings>,
}

/// The master of the pod tokens ([`ferry_contract::pod_token`]); never printed.
#[derive(Clone, PartialEq)]
pub struct PodTokenMaster(pub Vec<u8>);

impl std::fmt::Debug for PodTokenMaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PodTokenMaster(..)")
    }
}

/// Who may open connections to the server pods when `--network-policy` is on.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicySettings {
    /// Ferry's own namespace: the router and the operator (which reads the pods' queue depth).
    pub ferry_namespace: String,
    /// Further namespaces whose pods may connect (Prometheus).
    pub allow_namespaces: Vec<String>,
}

/// What the cluster shows for one version's Deployment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// `spec.replicas` of the Deployment.
    pub replicas: i32,
    /// Pods passing `/ready`.
    pub ready: i32,
    /// Pods not ready that are failing rather than starting (see [`crate::pod::failing`]).
    pub failing: i32,
}

/// Everything that should exist for one LLMDeployment.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// Who may reach the pods (empty unless `--network-policy`).
    pub network_policies: Vec<NetworkPolicy>,
    pub deployments: Vec<Deployment>,
    pub services: Vec<Service>,
    pub status: LLMDeploymentStatus,
    pub conditions: Vec<Wanted>,
}

/// The served OpenAI model id.
pub fn served_model_name(llmd: &LLMDeployment) -> String {
    llmd.spec
        .served_model_name
        .clone()
        .unwrap_or_else(|| llmd.name_any())
}

/// Which versions run with how many pods, and how traffic is split between them: what the
/// rollout, the experiment and the autoscaler decided for this reconcile.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The version serving stable traffic (the scale subresource's replicas and selector).
    pub stable: String,
    /// Pods wanted for each version that runs (0: kept, scaled down).
    pub replicas: BTreeMap<String, i32>,
    /// The split the router obeys.
    pub traffic: Vec<TrafficTarget>,
    /// Queued + running requests per version, where read.
    pub queue_depth: BTreeMap<String, i64>,
}

/// Desired objects and status of a valid LLMDeployment. `versions` holds the referenced
/// ModelVersions (validation made sure they exist); `observed` the versions' Deployments by
/// version; `plan` the pods and traffic of each version.
pub fn build_plan(
    llmd: &LLMDeployment,
    versions: &BTreeMap<String, ModelVersion>,
    observed: &BTreeMap<String, Observed>,
    settings: &Settings,
    plan: &Plan,
) -> Desired {
    let name = llmd.name_any();
    let model = served_model_name(llmd);
    let stable = plan.stable.clone();
    let mut deployments = Vec::new();
    let mut services = vec![llmd_service(llmd)];
    let mut version_status = Vec::new();
    let (mut all_ready, mut all_wanted) = (0, 0);
    for (version, &wanted) in &plan.replicas {
        let Some(mv) = versions.get(version) else {
            continue;
        };
        deployments.push(version_deployment(llmd, mv, &model, wanted, settings));
        services.push(version_service(llmd, version));
        let ready = observed.get(version).map_or(0, |o| o.ready);
        all_ready += ready;
        all_wanted += wanted;
        version_status.push(VersionStatus {
            name: version.clone(),
            replicas: wanted,
            ready_replicas: ready,
            queue_depth: plan.queue_depth.get(version).copied(),
        });
    }
    let replicas = plan.replicas.get(&stable).copied().unwrap_or(0);
    let (ready, failing) = observed
        .get(&stable)
        .map_or((0, 0), |o| (o.ready, o.failing));
    let status = LLMDeploymentStatus {
        phase: Some(phase(replicas, ready, failing)),
        served_model_name: Some(model),
        stable_version: Some(stable.clone()),
        traffic: plan.traffic.clone(),
        versions: version_status,
        endpoint: Some(settings.router_endpoint.clone()),
        observed_generation: llmd.metadata.generation,
        replicas: Some(replicas),
        selector: Some(format!(
            "{LABEL_DEPLOYMENT}={},{LABEL_VERSION}={}",
            label_value(&name),
            label_value(&stable)
        )),
        ready: Some(format!("{all_ready}/{all_wanted}")),
        ..Default::default()
    };
    Desired {
        network_policies: settings
            .network_policy
            .as_ref()
            .map(|p| network_policy(llmd, p))
            .into_iter()
            .collect(),
        deployments,
        services,
        status,
        conditions: serving_conditions(&stable, replicas, ready),
    }
}

/// Degraded only when a pod is failing: a planned scale-up (its new pods starting) serves as
/// before, and `ready` says how far it got.
fn phase(replicas: i32, ready: i32, failing: i32) -> Phase {
    if ready >= replicas {
        Phase::Available
    } else if ready == 0 {
        Phase::Pending
    } else if failing > 0 {
        Phase::Degraded
    } else {
        Phase::Available
    }
}

fn serving_conditions(stable: &str, replicas: i32, ready: i32) -> Vec<Wanted> {
    let available = if replicas == 0 {
        Wanted::new(
            types::AVAILABLE,
            true,
            "ScaledToZero",
            format!("version {stable} is scaled to zero pods"),
        )
    } else if ready > 0 {
        Wanted::new(
            types::AVAILABLE,
            true,
            "PodsReady",
            format!("{ready}/{replicas} pods of version {stable} are ready"),
        )
    } else {
        Wanted::new(
            types::AVAILABLE,
            false,
            "NoReadyPods",
            format!(
                "0/{replicas} pods of version {stable} are ready (cold start: pull, weights, load, warm-up)"
            ),
        )
    };
    let progressing = if ready < replicas {
        Wanted::new(
            types::PROGRESSING,
            true,
            "PodsStarting",
            format!(
                "waiting for {} of {replicas} pods of version {stable}",
                replicas - ready
            ),
        )
    } else {
        Wanted::new(
            types::PROGRESSING,
            false,
            "Complete",
            format!("every wanted pod of version {stable} is ready"),
        )
    };
    let degraded = if ready > 0 && ready < replicas {
        Wanted::new(
            types::DEGRADED,
            true,
            "PodsNotReady",
            format!("{ready}/{replicas} pods of version {stable} are ready"),
        )
    } else {
        Wanted::new(
            types::DEGRADED,
            false,
            "AsDesired",
            "no fewer ready pods than wanted".to_string(),
        )
    };
    vec![
        available,
        progressing,
        degraded,
        Wanted::new(
            types::INVALID_SPEC,
            false,
            "Valid",
            "the spec is valid".to_string(),
        ),
    ]
}

/// The Deployment of one version.
fn version_deployment(
    llmd: &LLMDeployment,
    mv: &ModelVersion,
    model: &str,
    replicas: i32,
    settings: &Settings,
) -> Deployment {
    let name = llmd.name_any();
    let version = mv.metadata.name.clone().unwrap_or_default();
    let selector = version_selector(&name, &version);
    let mut labels = selector.clone();
    labels.insert(LABEL_MODEL.into(), label_value(model));
    labels.insert(LABEL_MANAGED_BY.into(), MANAGER.into());
    let pod_annotations = BTreeMap::from([
        ("prometheus.io/scrape".to_string(), "true".to_string()),
        ("prometheus.io/port".to_string(), SERVER_PORT.to_string()),
        ("prometheus.io/path".to_string(), "/metrics".to_string()),
        (
            crate::model_version::VERSION_ANNOTATION.to_string(),
            version.clone(),
        ),
    ]);
    let deployment = Deployment {
        metadata: child_meta(llmd, child_name(&name, &version), labels.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            // A new pod must be Ready before an old one goes: cold starts take minutes.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            // Rollouts of a model take minutes; do not flag them as stuck before an hour.
            progress_deadline_seconds: Some(3600),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(pod_annotations),
                    ..Default::default()
                }),
                spec: Some(with_token(
                    server_pod_spec(&version, model, &mv.spec, &settings.server),
                    llmd,
                    settings.pod_token.as_ref(),
                )),
            },
            ..Default::default()
        }),
        status: None,
    };
    with_hash(deployment)
}

/// Headless Service of one version: the pods' own addresses, for discovery and metrics scraping.
fn version_service(llmd: &LLMDeployment, version: &str) -> Service {
    let name = llmd.name_any();
    let selector = version_selector(&name, version);
    let mut labels = selector.clone();
    labels.insert(LABEL_MANAGED_BY.into(), MANAGER.into());
    with_hash(Service {
        metadata: child_meta(llmd, child_name(&name, version), labels),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector),
            ports: Some(vec![http_port()]),
            publish_not_ready_addresses: Some(false),
            ..Default::default()
        }),
        status: None,
    })
}

/// The LLMDeployment's Service: every ready pod of every version, for clients that do not go
/// through the router.
fn llmd_service(llmd: &LLMDeployment) -> Service {
    let name = llmd.name_any();
    let selector = BTreeMap::from([(LABEL_DEPLOYMENT.to_string(), label_value(&name))]);
    let mut labels = selector.clone();
    labels.insert(LABEL_MANAGED_BY.into(), MANAGER.into());
    with_hash(Service {
        metadata: child_meta(llmd, dns_label(&name), labels),
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![http_port()]),
            ..Default::default()
        }),
        status: None,
    })
}

fn http_port() -> ServicePort {
    ServicePort {
        name: Some("http".into()),
        port: SERVER_PORT,
        target_port: Some(IntOrString::String("http".into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn version_selector(llmd: &str, version: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_DEPLOYMENT.to_string(), label_value(llmd)),
        (LABEL_VERSION.to_string(), label_value(version)),
    ])
}

fn child_meta(llmd: &LLMDeployment, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: llmd.metadata.namespace.clone(),
        labels: Some(labels),
        owner_references: owner_reference(llmd).map(|o| vec![o]),
        ..Default::default()
    }
}

/// With a pod token master: the server accepts only the router's token for this LLMDeployment.
/// The pod gets the token's SHA-256, never the token.
fn with_token(
    mut spec: k8s_openapi::api::core::v1::PodSpec,
    llmd: &LLMDeployment,
    master: Option<&PodTokenMaster>,
) -> k8s_openapi::api::core::v1::PodSpec {
    use ferry_contract::pod_token::{derive, digest};
    if let Some(PodTokenMaster(master)) = master {
        let token = derive(
            master,
            &llmd.namespace().unwrap_or_default(),
            &llmd.name_any(),
        );
        for container in spec.containers.iter_mut().filter(|c| c.name == "server") {
            let args = container.args.get_or_insert_with(Vec::new);
            args.push("--api-key-sha256".into());
            args.push(digest(&token));
        }
    }
    spec
}

/// The NetworkPolicy of an LLMDeployment's server pods: connections to the server port only
/// from Ferry's namespace (router, operator) and the namespaces named for Prometheus; nothing
/// else (kubelet probes come from the node, which policies do not cover).
fn network_policy(llmd: &LLMDeployment, settings: &PolicySettings) -> NetworkPolicy {
    let name = llmd.name_any();
    let selector = BTreeMap::from([
        (LABEL_DEPLOYMENT.to_string(), label_value(&name)),
        (LABEL_MANAGED_BY.to_string(), MANAGER.to_string()),
    ]);
    let mut namespaces = vec![settings.ferry_namespace.clone()];
    for ns in &settings.allow_namespaces {
        if !namespaces.contains(ns) {
            namespaces.push(ns.clone());
        }
    }
    let from = namespaces
        .into_iter()
        .map(|ns| NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "kubernetes.io/metadata.name".to_string(),
                    ns,
                )])),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    with_hash(NetworkPolicy {
        metadata: child_meta(llmd, dns_label(&name), selector.clone()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(from),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(SERVER_PORT)),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
            }]),
            egress: None,
        }),
    })
}

fn owner_reference(llmd: &LLMDeployment) -> Option<OwnerReference> {
    let mut owner = llmd.controller_owner_ref(&())?;
    owner.block_owner_deletion = Some(true);
    Some(owner)
}

/// Adds the [`APPLIED_HASH`] annotation: a hash of the object as built.
fn with_hash<K: Resource + serde::Serialize>(mut object: K) -> K {
    let hash = format!(
        "{:016x}",
        fnv1a(&serde_json::to_vec(&object).expect("objects serialize"))
    );
    object
        .meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(APPLIED_HASH.into(), hash);
    object
}
