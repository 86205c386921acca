//! Command-line flags; every flag can also be set by an environment variable, so the same binary
//! runs from a Helm values file, a pod spec or a shell.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "ferry-server",
    version,
    about = "OpenAI-compatible model server on mistral.rs"
)]
pub struct Args {
    /// Directory holding the weights (GGUF files, or a Hugging Face model directory).
    #[arg(long, env = "FERRY_MODEL_PATH")]
    pub model_path: PathBuf,
    /// Weights format.
    #[arg(long, env = "FERRY_FORMAT", value_enum, default_value = "gguf")]
    pub format: Format,
    /// GGUF file name(s) inside --model-path (comma-separated or repeated).
    #[arg(long, env = "FERRY_GGUF_FILE", value_delimiter = ',')]
    pub gguf_file: Vec<String>,
    /// The OpenAI `model` id clients send.
    #[arg(long, env = "FERRY_SERVED_MODEL_NAME")]
    pub served_model_name: String,
    /// The ModelVersion this server runs: the `version` label of every metric.
    #[arg(long, env = "FERRY_MODEL_VERSION", default_value = "unversioned")]
    pub model_version: String,
    /// Weight data type for safetensors models: auto, bf16, f16, f32.
    #[arg(long, env = "FERRY_DTYPE", default_value = "auto")]
    pub dtype: String,
    /// In-situ quantization for safetensors models (e.g. Q4K, Q8_0).
    #[arg(long, env = "FERRY_ISQ")]
    pub isq: Option<String>,
    /// Sequences decoded at once (the engine's batch size).
    #[arg(long, env = "FERRY_MAX_NUM_SEQS", default_value_t = 16)]
    pub max_num_seqs: usize,
    /// Longest prompt + completion in tokens (default: the model's context length).
    #[arg(long, env = "FERRY_MAX_SEQ_LEN")]
    pub max_seq_len: Option<usize>,
    /// Reuse the KV cache of shared prompt prefixes. Off by default: in mistral.rs 0.8.1 a
    /// restored prefix can make concurrent sequences near the context limit fail ("kv-cache:
    /// requested capacity … above max seq len"), and it moves logits between batches.
    #[arg(long, env = "FERRY_PREFIX_CACHE")]
    pub prefix_cache: bool,
    /// Paged attention (GPU only): the KV cache in blocks, with this share (0-1] of the GPU's
    /// memory. The server refuses to start with it on a CPU or a build without CUDA.
    #[arg(long, env = "FERRY_PAGED_ATTENTION_GPU_MEMORY")]
    pub paged_attention_gpu_memory: Option<f32>,
    /// Requests that may wait for an engine slot; beyond it, 429 with Retry-After.
    #[arg(long, env = "FERRY_MAX_QUEUE", default_value_t = 64)]
    pub max_queue: usize,
    /// Jinja chat template that overrides the one the model ships with (the template's text).
    #[arg(long, env = "FERRY_CHAT_TEMPLATE", hide_env_values = true)]
    pub chat_template: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "FERRY_HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, env = "FERRY_PORT", default_value_t = 8000)]
    pub port: u16,
    /// File with one accepted API key per line; without it, no key is needed.
    #[arg(long, env = "FERRY_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// SHA-256 (hex) of an accepted key (repeatable; comma-separated in the environment
    /// variable): the operator hands each pod the digest of the router's token, never the token.
    #[arg(
        long = "api-key-sha256",
        env = "FERRY_API_KEY_SHA256",
        value_delimiter = ','
    )]
    pub api_key_sha256: Vec<String>,
    /// Seconds in-flight requests get to finish after SIGTERM. New requests get 503 meanwhile,
    /// and the port stays open at least 2 s (within this) so routers can take them elsewhere.
    #[arg(long, env = "FERRY_DRAIN_SECONDS", default_value_t = 30)]
    pub drain_seconds: u64,
    /// Where the model runs: cpu or cuda:N (CUDA needs the `cuda` build).
    #[arg(long, env = "FERRY_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Seconds a client has to send a request's headers, and that an idle keep-alive connection
    /// stays open waiting for the next request.
    #[arg(long, env = "FERRY_HEADER_TIMEOUT_SECONDS", default_value_t = 10)]
    pub header_timeout_seconds: u64,
    /// Seconds a client has to send a request's whole body (408 after).
    #[arg(long, env = "FERRY_BODY_TIMEOUT_SECONDS", default_value_t = 30)]
    pub body_timeout_seconds: u64,
    /// Seconds a client may leave answer bytes unread (a stream it stopped reading) before the
    /// connection is cut (TCP user timeout). The engine slot is free as soon as the generation
    /// ends, whoever reads it.
    #[arg(
        long,
        env = "FERRY_STALLED_CLIENT_TIMEOUT_SECONDS",
        default_value_t = 60
    )]
    pub stalled_client_timeout_seconds: u64,
    /// Open client connections; beyond it new ones are closed at once.
    #[arg(long, env = "FERRY_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Chat messages one request may have (400 beyond), checked before the request is admitted.
    #[arg(long, env = "FERRY_MAX_MESSAGES", default_value_t = 1024)]
    pub max_messages: usize,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "FERRY_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Logs as JSON lines (default) or as text.
    #[arg(long, env = "FERRY_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
    /// DRILLS ONLY: extra latency added before every generation, in milliseconds.
    #[arg(long, env = "FERRY_FAULT_LATENCY_MS", default_value_t = 0)]
    pub fault_latency_ms: u64,
    /// DRILLS ONLY: share of generation requests (0-1) answered with a 500 error.
    #[arg(long, env = "FERRY_FAULT_ERROR_RATE", default_value_t = 0.0)]
    pub fault_error_rate: f64,
    /// DRILLS ONLY: time spent before the model starts loading, in milliseconds (a slow cold
    /// start: the pod stays unready that much longer).
    #[arg(long, env = "FERRY_FAULT_LOAD_DELAY_MS", default_value_t = 0)]
    pub fault_load_delay_ms: u64,
    /// DRILLS ONLY: delay before the first generated token of every answer is released, in
    /// milliseconds (a slow prefill: TTFT grows, the rest of the answer does not slow down).
    #[arg(long, env = "FERRY_FAULT_FIRST_TOKEN_DELAY_MS", default_value_t = 0)]
    pub fault_first_token_delay_ms: u64,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Gguf,
    Safetensors,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}
