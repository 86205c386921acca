//! The mistral.rs engine behind one model: loading, warm-up, and generation as a stream of
//! [`Event`]s that the HTTP layer turns into chat or completion responses. Every request runs as
//! an engine stream, so TTFT and inter-token latency are measured for non-streaming requests too.

use std::path::Path;
use std::sync::Arc;

use mistralrs::core::RequestMessage;
use mistralrs::{
    Constraint, CustomLogitsProcessor, Device, GgufModelBuilder, IsqType, Model, ModelDType,
    NormalRequest, Request, Response, SamplingParams, StopTokens, TextModelBuilder,
};
use tokio::sync::mpsc;

use crate::config::{Args, Format};
use crate::error::ApiError;
use crate::sampling::{HoldEos, SeededSampler};

/// What the engine produced, in order: deltas, then exactly one `Finish` (synthesized when the
/// engine drops its final chunk) or one `Error`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Delta {
        text: String,
        logprob: Option<TokenLogprob>,
    },
    Finish {
        reason: String,
        usage: Option<Usage>,
    },
    Error(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub top: Vec<(String, f32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// One generation, engine-agnostic: what the HTTP layer asks for.
pub struct Generation {
    pub input: Input,
    pub max_tokens: usize,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
    pub json_schema: Option<serde_json::Value>,
    pub logprobs: Option<usize>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    /// Never stop at an end-of-sequence token (benchmarks force a fixed output length).
    pub ignore_eos: bool,
    /// Do not stop at an end-of-sequence token before this many tokens.
    pub min_tokens: usize,
}

impl Generation {
    /// Greedy decoding of up to `max_tokens` tokens, no other option set.
    pub fn greedy(input: Input, max_tokens: usize) -> Self {
        Self {
            input,
            max_tokens,
            temperature: Some(0.0),
            top_p: None,
            stop: Vec::new(),
            seed: None,
            json_schema: None,
            logprobs: None,
            frequency_penalty: None,
            presence_penalty: None,
            ignore_eos: false,
            min_tokens: 0,
        }
    }
}

pub enum Input {
    /// Chat messages as (role, text).
    Chat(Vec<(String, String)>),
    /// A raw prompt.
    Prompt(String),
}

/// How long to give mistral.rs to notice a dead engine loop before trying it again.
const ENGINE_REBOOT_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

pub struct Engine {
    model: Model,
    eos: Vec<u32>,
    max_seq_len: Option<usize>,
}

impl Engine {
    /// Loads the model the flags describe.
    pub async fn load(args: &Args) -> anyhow::Result<Self> {
        // mistral.rs writes to HF_HOME even for local models; fail early and clearly.
        let home = hf_home();
        std::fs::create_dir_all(&home).map_err(|e| {
            anyhow::anyhow!(
                "HF_HOME ({}) must be a writable directory: {e}; set HF_HOME",
                home.display()
            )
        })?;
        let path = args.model_path.to_string_lossy().to_string();
        let paged = paged_attention(args)?;
        let model = match args.format {
            Format::Gguf => {
                anyhow::ensure!(
                    !args.gguf_file.is_empty(),
                    "--gguf-file is required with --format gguf"
                );
                let mut b = GgufModelBuilder::new(&path, args.gguf_file.clone())
                    .with_max_num_seqs(args.max_num_seqs)
                    .with_prefix_cache_n(prefix_cache(args));
                if let Some(paged) = paged {
                    b = b.with_paged_attn(paged);
                }
                if let Some(template) = &args.chat_template {
                    b = b.with_chat_template(template);
                }
                b = match device(&args.device)? {
                    None => b.with_force_cpu(),
                    Some(d) => b.with_device(d),
                };
                b.build().await?
            }
            Format::Safetensors => {
                let mut b = TextModelBuilder::new(&path)
                    .with_max_num_seqs(args.max_num_seqs)
                    .with_prefix_cache_n(prefix_cache(args))
                    .with_dtype(dtype(&args.dtype)?);
                if let Some(isq) = &args.isq {
                    b = b.with_isq(isq_type(isq)?);
                }
                if let Some(paged) = paged {
                    b = b.with_paged_attn(paged);
                }
                if let Some(template) = &args.chat_template {
                    b = b.with_chat_template(template);
                }
                b = match device(&args.device)? {
                    None => b.with_force_cpu(),
                    Some(d) => b.with_device(d),
                };
                b.build().await?
            }
        };
        let eos = match args.format {
            Format::Gguf => gguf_eos_ids(&args.model_path.join(&args.gguf_file[0]))?,
            Format::Safetensors => safetensors_eos_ids(&args.model_path)?,
        };
        let engine_max = model.max_sequence_length().ok().flatten();
        let max_seq_len = match (args.max_seq_len, engine_max) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(Self {
            model,
            eos,
            max_seq_len,
        })
    }

    pub fn max_seq_len(&self) -> Option<usize> {
        self.max_seq_len
    }

    /// Prompt tokens of an input, as the model's chat template renders it.
    pub async fn count_prompt_tokens(&self, input: &Input) -> Result<usize, ApiError> {
        use mistralrs::{TextMessageRole, TextMessages};
        let text = match input {
            Input::Chat(messages) => {
                let mut m = TextMessages::new();
                for (role, content) in messages {
                    let role = match role.as_str() {
                        "system" | "developer" => TextMessageRole::System,
                        "assistant" => TextMessageRole::Assistant,
                        "tool" => TextMessageRole::Tool,
                        _ => TextMessageRole::User,
                    };
                    m = m.add_message(role, content);
                }
                either::Either::Left(m)
            }
            Input::Prompt(p) => either::Either::Right(p.clone()),
        };
        let chat = matches!(input, Input::Chat(_));
        let mut tokenized = self
            .model
            .tokenize(text.clone(), None, !chat, chat, None)
            .await;
        if tokenized.is_err() {
            // The engine loop may have just died (mistral.rs starts a new one on the next use).
            tokio::time::sleep(ENGINE_REBOOT_WAIT).await;
            tokenized = self.model.tokenize(text, None, !chat, chat, None).await;
        }
        tokenized
            .map(|t| t.len())
            .map_err(|e| ApiError::invalid(format!("cannot tokenize the input: {e}")))
    }

    /// Hands a request to the engine loop. If the loop has died (its channel is closed),
    /// mistral.rs starts a new one when the sender is next asked for: the request, which has not
    /// started, is submitted once more rather than failed.
    async fn submit(&self, request: mistralrs::Request) -> Result<(), ApiError> {
        let sender = || {
            self.model
                .inner()
                .get_sender(None)
                .map_err(|e| ApiError::Engine(e.to_string()))
        };
        let Err(tokio::sync::mpsc::error::SendError(request)) = sender()?.send(request).await
        else {
            return Ok(());
        };
        tracing::warn!("the engine loop had stopped; submitting to the restarted one");
        tokio::time::sleep(ENGINE_REBOOT_WAIT).await;
        sender()?
            .send(request)
            .await
            .map_err(|e| ApiError::Engine(e.to_string()))
    }

    /// Starts a generation; events arrive on the returned channel until `Finish` or `Error`.
    /// The engine's own responses are drained at once into it, so a slow reader never blocks
    /// the engine loop (mistral.rs streams through a channel of capacity 1). Dropping the
    /// receiver cancels the sequence.
    /// Starts a generation. `hold` (the engine slot) is kept until the generation ends — the
    /// engine's last response, or the client gone — not until the client has read it all.
    pub async fn generate(
        &self,
        g: Generation,
        prompt_tokens: usize,
        hold: impl Send + 'static,
    ) -> Result<mpsc::UnboundedReceiver<Event>, ApiError> {
        let (tx, rx) = mpsc::channel::<Response>(1);
        let constrained = g.json_schema.is_some();
        let mut sampling = SamplingParams::neutral();
        sampling.max_len = Some(g.max_tokens);
        sampling.temperature = g.temperature;
        sampling.top_p = g.top_p;
        sampling.frequency_penalty = g.frequency_penalty;
        sampling.presence_penalty = g.presence_penalty;
        sampling.top_n_logprobs = g.logprobs.unwrap_or(0);
        sampling.stop_toks = if constrained {
            // llguidance ends a finished JSON value on a token the model never emits by itself;
            // stopping on the model's own end-of-sequence ids ends constrained output.
            Some(StopTokens::Ids(self.eos.clone()))
        } else if !g.stop.is_empty() {
            Some(StopTokens::Seqs(g.stop.clone()))
        } else {
            None
        };
        if g.temperature == Some(0.0) {
            sampling.temperature = None;
            sampling.top_k = Some(1);
        }
        let constraint = match g.json_schema {
            Some(mut schema) => {
                // Without this llguidance lets the model loop on whitespace forever.
                if let Some(obj) = schema.as_object_mut() {
                    obj.insert(
                        "x-guidance".into(),
                        serde_json::json!({"whitespace_flexible": false}),
                    );
                }
                Constraint::JsonSchema(schema)
            }
            None => Constraint::None,
        };
        let mut processors: Vec<Arc<dyn CustomLogitsProcessor>> = Vec::new();
        if g.ignore_eos || g.min_tokens > 0 {
            let min = if g.ignore_eos {
                usize::MAX
            } else {
                g.min_tokens
            };
            processors.push(Arc::new(HoldEos::new(self.eos.clone(), min)));
        }
        if let Some(seed) = g.seed
            && g.temperature != Some(0.0)
        {
            processors.push(Arc::new(SeededSampler {
                seed,
                temperature: g.temperature.unwrap_or(1.0),
                top_p: g.top_p.unwrap_or(1.0),
            }));
        }
        let (messages, is_chat) = match g.input {
            Input::Chat(m) => (
                RequestMessage::Chat {
                    messages: m
                        .into_iter()
                        .map(|(role, content)| {
                            indexmap::IndexMap::from([
                                ("role".to_string(), either::Either::Left(role)),
                                ("content".to_string(), either::Either::Left(content)),
                            ])
                        })
                        .collect(),
                    enable_thinking: None,
                    reasoning_effort: None,
                },
                true,
            ),
            Input::Prompt(text) => (
                RequestMessage::Completion {
                    text,
                    echo_prompt: false,
                    best_of: None,
                },
                false,
            ),
        };
        let request = Request::Normal(Box::new(NormalRequest {
            messages,
            sampling_params: sampling,
            response: tx,
            return_logprobs: g.logprobs.is_some(),
            is_streaming: true,
            id: self.model.inner().next_request_id(),
            constraint,
            suffix: None,
            tools: None,
            tool_choice: None,
            logits_processors: if processors.is_empty() {
                None
            } else {
                Some(processors)
            },
            return_raw_logits: false,
            web_search_options: None,
            model_id: None,
            truncate_sequence: false,
        }));
        self.submit(request).await?;
        let max_tokens = g.max_tokens;
        let stop = if constrained {
            Vec::new()
        } else {
            g.stop.clone()
        };

        Ok(crate::events::forward(
            rx,
            is_chat,
            prompt_tokens,
            max_tokens,
            stop,
            hold,
        ))
    }
}

fn hf_home() -> std::path::PathBuf {
    match std::env::var_os("HF_HOME") {
        Some(home) => home.into(),
        None => std::env::var_os("HOME")
            .map(std::path::PathBuf::from)
            .unwrap_or_default()
            .join(".cache/huggingface"),
    }
}

/// The paged-attention settings the flags ask for. mistral.rs ignores paged attention where it
/// cannot run it (CPU, a build without CUDA); a server asked for it refuses to start there
/// instead, so a ModelVersion never silently runs without what it asked for.
fn paged_attention(args: &Args) -> anyhow::Result<Option<mistralrs::PagedAttentionConfig>> {
    let Some(fraction) = args.paged_attention_gpu_memory else {
        return Ok(None);
    };
    anyhow::ensure!(
        fraction > 0.0 && fraction <= 1.0,
        "--paged-attention-gpu-memory {fraction}: expected a share of GPU memory in (0, 1]"
    );
    anyhow::ensure!(
        args.device.starts_with("cuda:"),
        "--paged-attention-gpu-memory needs a GPU (--device cuda:N), not {}",
        args.device
    );
    anyhow::ensure!(
        mistralrs::paged_attn_supported(),
        "--paged-attention-gpu-memory needs ferry-server built with CUDA (--features cuda)"
    );
    let config = mistralrs::PagedAttentionMetaBuilder::default()
        .with_gpu_memory(mistralrs::MemoryGpuConfig::Utilization(fraction))
        .build()?;
    Ok(Some(config))
}

/// Sequences kept in the prefix cache (mistral.rs' default), or none.
fn prefix_cache(args: &Args) -> Option<usize> {
    args.prefix_cache.then_some(16)
}

fn device(spec: &str) -> anyhow::Result<Option<Device>> {
    match spec {
        "cpu" => Ok(None),
        s if s.starts_with("cuda:") => {
            let ordinal: usize = s[5..]
                .parse()
                .map_err(|_| anyhow::anyhow!("--device {s}: expected cuda:N"))?;
            Ok(Some(Device::new_cuda(ordinal)?))
        }
        s => anyhow::bail!("--device {s}: expected cpu or cuda:N"),
    }
}

fn dtype(spec: &str) -> anyhow::Result<ModelDType> {
    Ok(match spec {
        "auto" => ModelDType::Auto,
        "bf16" => ModelDType::BF16,
        "f16" => ModelDType::F16,
        "f32" => ModelDType::F32,
        s => anyhow::bail!("--dtype {s}: expected auto, bf16, f16 or f32"),
    })
}

fn isq_type(spec: &str) -> anyhow::Result<IsqType> {
    mistralrs::parse_isq_value(spec, None).map_err(|e| anyhow::anyhow!("--isq {spec}: {e}"))
}

/// End-of-sequence ids from GGUF metadata: the declared EOS and the usual chat end tokens.
fn gguf_eos_ids(path: &Path) -> anyhow::Result<Vec<u32>> {
    use candle_core::quantized::gguf_file;
    let mut file = std::fs::File::open(path)?;
    let content = gguf_file::Content::read(&mut file)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut ids = Vec::new();
    if let Some(v) = content.metadata.get("tokenizer.ggml.eos_token_id") {
        ids.push(v.to_u32()?);
    }
    if let Some(gguf_file::Value::Array(tokens)) = content.metadata.get("tokenizer.ggml.tokens") {
        for (i, t) in tokens.iter().enumerate() {
            if let Ok(s) = t.to_string()
                && END_TOKENS.contains(&s.as_str())
            {
                ids.push(i as u32);
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

const END_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "</s>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<end_of_turn>",
];

/// End-of-sequence ids of a Hugging Face model directory.
fn safetensors_eos_ids(dir: &Path) -> anyhow::Result<Vec<u32>> {
    let mut ids = Vec::new();
    for name in ["generation_config.json", "config.json"] {
        let Ok(text) = std::fs::read_to_string(dir.join(name)) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&text)?;
        match &v["eos_token_id"] {
            serde_json::Value::Number(n) => ids.extend(n.as_u64().map(|n| n as u32)),
            serde_json::Value::Array(a) => {
                ids.extend(a.iter().filter_map(|n| n.as_u64()).map(|n| n as u32))
            }
            _ => {}
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec![
            "ferry-server",
            "--model-path",
            "/m",
            "--gguf-file",
            "m.gguf",
            "--served-model-name",
            "m",
        ];
        argv.extend_from_slice(extra);
        Args::parse_from(argv)
    }

    #[test]
    fn paged_attention_is_refused_where_it_cannot_run_rather_than_ignored() {
        assert!(paged_attention(&args(&[])).unwrap().is_none());
        let on_cpu = paged_attention(&args(&["--paged-attention-gpu-memory", "0.9"]));
        assert_eq!(
            on_cpu.err().unwrap().to_string(),
            "--paged-attention-gpu-memory needs a GPU (--device cuda:N), not cpu"
        );
        let out_of_range = paged_attention(&args(&[
            "--paged-attention-gpu-memory",
            "1.5",
            "--device",
            "cuda:0",
        ]));
        assert!(
            out_of_range
                .err()
                .unwrap()
                .to_string()
                .contains("in (0, 1]"),
            "a share above 1"
        );
        if !mistralrs::paged_attn_supported() {
            let cpu_build = paged_attention(&args(&[
                "--paged-attention-gpu-memory",
                "0.9",
                "--device",
                "cuda:0",
            ]));
            assert!(
                cpu_build
                    .err()
                    .unwrap()
                    .to_string()
                    .contains("built with CUDA")
            );
        }
    }
}
