//! `ModelVersion`: one immutable, servable build of a model.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One servable build of a model: where its weights come from, their format, how the engine runs
/// them and what hardware a pod needs. A ModelVersion never changes once created: a new model
/// (new weights, new quantization, new engine settings) is a new ModelVersion, which is what lets
/// an LLMDeployment roll back to exactly what it served before.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "serving.ferry.dev",
    version = "v1alpha1",
    kind = "ModelVersion",
    namespaced,
    shortname = "mv",
    category = "ferry",
    status = "ModelVersionStatus",
    derive = "PartialEq",
    doc = "One immutable, servable build of a model: weights source, format, engine settings and resources.",
    printcolumn(name = "Format", type_ = "string", json_path = ".spec.format"),
    printcolumn(
        name = "Source",
        type_ = "string",
        json_path = ".status.source",
        description = "Kind of weights source and its location"
    ),
    printcolumn(name = "GPUs", type_ = "integer", json_path = ".spec.resources.gpus"),
    printcolumn(
        name = "Valid",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Valid\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("ModelVersion spec is immutable: create a new ModelVersion instead"))]
#[x_kube(validation = Rule::new("self.format != 'gguf' || size(self.files) > 0 || has(self.source.huggingFace)").message("files must name the GGUF file(s) to load when format is gguf"))]
#[x_kube(validation = Rule::new("self.format != 'gguf' || !has(self.engine.isq)").message("engine.isq applies to safetensors weights: GGUF files are already quantized"))]
#[x_kube(validation = Rule::new("!self.engine.pagedAttention.enabled || self.resources.gpus > 0").message("engine.pagedAttention needs a GPU: set resources.gpus above 0"))]
#[x_kube(validation = Rule::new("self.resources.gpus <= 1").message("resources.gpus above 1 is not supported yet: ferry-server runs a model on one GPU per pod"))]
pub struct ModelVersionSpec {
    /// Where the weights come from: exactly one of `image`, `pvc`, `url`, `huggingFace`.
    pub source: ModelSource,
    /// File format of the weights: `gguf` (one or more .gguf files, tokenizer and chat template
    /// embedded) or `safetensors` (a Hugging Face model directory).
    pub format: ModelFormat,
    /// The GGUF file name(s) to load, relative to the source's path. Required for `gguf` unless
    /// `source.huggingFace.files` names them.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub files: Vec<String>,
    /// How the inference engine (mistral.rs) runs the model.
    #[serde(default)]
    pub engine: EngineSpec,
    /// What each pod of this version needs: GPUs, CPU, memory, placement, server image.
    #[serde(default)]
    pub resources: ResourceSpec,
    /// Extra environment variables of the server container, e.g. `RUST_LOG`, or
    /// `FERRY_FAULT_LATENCY_MS` / `FERRY_FAULT_ERROR_RATE` to drill a canary rollback.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub env: Vec<EnvVar>,
}

/// One environment variable of the server container.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    /// Variable name.
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$")
    )]
    pub name: String,
    /// Value.
    pub value: String,
}

/// Where the weights of a ModelVersion come from. Exactly one field is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ModelSource {
    /// Weights packaged in an OCI image ("modelcar"): an init container copies them from the
    /// image into the pod, so the model is versioned, cached and pulled like any image.
    Image(ImageSource),
    /// Weights on an existing PersistentVolumeClaim in the same namespace, mounted read-only.
    Pvc(PvcSource),
    /// Weights downloaded over HTTP(S) by an init container into a cache volume and verified
    /// against their SHA-256 before the server starts.
    Url(UrlSource),
    /// Weights loaded from a Hugging Face Hub repository at a pinned revision.
    HuggingFace(HuggingFaceSource),
}

impl ModelSource {
    /// The field name of the variant that is set, as it appears in YAML.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Image(_) => "image",
            Self::Pvc(_) => "pvc",
            Self::Url(_) => "url",
            Self::HuggingFace(_) => "huggingFace",
        }
    }

    /// A one-line description for `kubectl get mv`, e.g. `image localhost/models/smollm2:1`.
    pub fn summary(&self) -> String {
        let location = match self {
            Self::Image(s) => s.reference.clone(),
            Self::Pvc(s) => format!("{}:{}", s.claim_name, s.path.as_deref().unwrap_or("/")),
            Self::Url(s) => s.uri.clone(),
            Self::HuggingFace(s) => format!("{}@{}", s.repo, s.revision),
        };
        format!("{} {location}", self.kind())
    }
}

/// Weights inside an OCI image.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSource {
    /// Image reference holding the weights, e.g. `registry.example.com/models/smollm2:q4_1`.
    #[schemars(length(min = 1, max = 512))]
    pub reference: String,
    /// Directory inside the image that holds the weights.
    #[serde(default = "default_image_path")]
    #[schemars(length(min = 1, max = 1024))]
    pub path: String,
}

fn default_image_path() -> String {
    "/models".into()
}

/// Weights on a PersistentVolumeClaim.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcSource {
    /// Name of the PersistentVolumeClaim, in the ModelVersion's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
    /// Directory on the volume that holds the weights; unset: the volume's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub path: Option<String>,
}

/// Weights downloaded from a URL.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UrlSource {
    /// `http://` or `https://` address of the single weights file.
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://"))]
    pub uri: String,
    /// Lower-case hex SHA-256 of the file; the pod does not start if the download differs.
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: String,
}

/// Weights from the Hugging Face Hub.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HuggingFaceSource {
    /// Repository id, e.g. `HuggingFaceTB/SmolLM2-135M-Instruct`.
    #[schemars(length(min = 1, max = 256))]
    pub repo: String,
    /// Git revision (commit, tag or branch). Pin a commit for reproducible rollbacks.
    #[serde(default = "default_revision")]
    #[schemars(length(min = 1, max = 256))]
    pub revision: String,
    /// Files to fetch (e.g. the GGUF file); empty fetches what the format needs.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub files: Vec<String>,
    /// Secret key holding a Hub access token, for gated or private repositories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
}

fn default_revision() -> String {
    "main".into()
}

/// A key in a Secret of the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret.
    #[serde(default = "default_token_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_token_key() -> String {
    "token".into()
}

/// File format of the weights.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    /// GGUF (llama.cpp's format): quantized weights with tokenizer and chat template embedded.
    Gguf,
    /// A Hugging Face model directory with `*.safetensors`, `config.json` and `tokenizer.json`.
    Safetensors,
}

/// Engine settings, passed to every `ferry-server` pod of the version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EngineSpec {
    /// Data type of unquantized weights and activations.
    #[serde(default)]
    pub dtype: Dtype,
    /// In-situ quantization applied at load time (safetensors models), e.g. `Q4K` or `Q8_0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isq: Option<IsqType>,
    /// Longest sequence (prompt + completion, in tokens) a request may use; empty: the model's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_seq_len: Option<u32>,
    /// Sequences the engine decodes at once (its batch size).
    #[serde(default = "default_max_num_seqs")]
    #[schemars(range(min = 1, max = 4096))]
    pub max_num_seqs: u32,
    /// Requests that may wait for a batch slot; beyond it the server answers 429 with Retry-After.
    #[serde(default = "default_max_queue")]
    #[schemars(range(min = 0, max = 100000))]
    pub max_queue: u32,
    /// Paged attention (GPU only): KV cache in blocks, for higher concurrency.
    #[serde(default)]
    pub paged_attention: PagedAttention,
    /// Reuse the KV cache of shared prompt prefixes (system prompts, few-shot examples). Off by
    /// default: with mistral.rs 0.8.1, concurrent requests near the context limit can fail when
    /// a cached prefix is restored.
    #[serde(default)]
    pub prefix_cache: bool,
    /// Jinja chat template that overrides the one embedded in the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub chat_template: Option<String>,
}

impl Default for EngineSpec {
    fn default() -> Self {
        Self {
            dtype: Dtype::default(),
            isq: None,
            max_seq_len: None,
            max_num_seqs: default_max_num_seqs(),
            max_queue: default_max_queue(),
            paged_attention: PagedAttention::default(),
            prefix_cache: false,
            chat_template: None,
        }
    }
}

fn default_max_num_seqs() -> u32 {
    16
}

fn default_max_queue() -> u32 {
    64
}

/// Weight and activation data type.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// bf16 where the device supports it, else f16 or f32.
    #[default]
    Auto,
    Bf16,
    F16,
    F32,
}

/// In-situ quantization types mistral.rs applies at load time.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[allow(non_camel_case_types)]
pub enum IsqType {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    HQQ4,
    HQQ8,
    FP8,
}

/// Paged attention settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PagedAttention {
    /// Turn paged attention on (needs a GPU: `resources.gpus` > 0).
    #[serde(default)]
    pub enabled: bool,
    /// Share of the GPU's free memory given to the KV cache, in (0, 1].
    #[serde(default = "default_gpu_memory_fraction")]
    #[schemars(range(min = 0.01, max = 1.0))]
    pub gpu_memory_fraction: f64,
}

impl Default for PagedAttention {
    fn default() -> Self {
        Self {
            enabled: false,
            gpu_memory_fraction: default_gpu_memory_fraction(),
        }
    }
}

fn default_gpu_memory_fraction() -> f64 {
    0.9
}

/// What each pod of the version needs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceSpec {
    /// GPUs per pod: 0 runs on CPU, 1 on one GPU. More is refused until ferry-server can split
    /// a model across GPUs.
    #[serde(default = "default_gpus")]
    #[schemars(range(max = 16))]
    pub gpus: u32,
    /// Extended resource name of the GPU, as the device plugin advertises it.
    #[serde(default = "default_gpu_resource_name")]
    #[schemars(length(min = 1, max = 253))]
    pub gpu_resource_name: String,
    /// CPU request and limit of the server container, e.g. `4` or `500m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory request and limit of the server container, e.g. `16Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// Node labels a pod's node must have (e.g. a GPU model).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate (GPU nodes are often tainted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// `ferry-server` image to run instead of the operator's default (e.g. a CUDA build).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
}

impl Default for ResourceSpec {
    fn default() -> Self {
        Self {
            gpus: default_gpus(),
            gpu_resource_name: default_gpu_resource_name(),
            cpu: None,
            memory: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            image: None,
        }
    }
}

fn default_gpus() -> u32 {
    1
}

fn default_gpu_resource_name() -> String {
    "nvidia.com/gpu".into()
}

/// Observed state of a ModelVersion, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelVersionStatus {
    /// `Valid` (spec accepted; with every violation in the message when not); and Ready,
    /// Reconciling, Stalled (the summary kstatus and Argo CD read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Kind and location of the weights source, e.g. `image localhost/models/smollm2:1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Seconds from pod creation to Ready of the most recent pod of this version: the cold start
    /// (pull, weight copy or download, model load, warm-up) a scale-up has to wait for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_start_seconds: Option<f64>,
    /// Hash of the spec the operator first accepted. The spec is immutable: where the API server
    /// cannot enforce it (no CEL), a different spec is reported as InvalidSpec against this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_hash: Option<String>,
}
