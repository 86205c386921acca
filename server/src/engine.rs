//! The mistral.rs engine behind one model: loading, warm-up, and generation as a stream of
//! [`Event`]s that the HTTP layer turns into chat or completion responses. Every request runs as
//! an engine stream, so TTFT and inter-token latency are measured for non-streaming requests too.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use mistralrs::core::RequestMessage;
use mistralrs::{
    Constraint, CustomLogitsProcessor, DType, Device, GgufModelBuilder, IsqType, Model, ModelDType,
    NormalRequest, Request, Response, SamplingParams, StopTokens, Tensor, TextModelBuilder,
};
use tokio::sync::mpsc;

use crate::config::{Args, Format};
use crate::error::ApiError;

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

pub enum Input {
    /// Chat messages as (role, text).
    Chat(Vec<(String, String)>),
    /// A raw prompt.
    Prompt(String),
}

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
        let model = match args.format {
            Format::Gguf => {
                anyhow::ensure!(
                    !args.gguf_file.is_empty(),
                    "--gguf-file is required with --format gguf"
                );
                let mut b = GgufModelBuilder::new(&path, args.gguf_file.clone())
                    .with_max_num_seqs(args.max_num_seqs)
                    .with_prefix_cache_n(prefix_cache(args));
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
        self.model
            .tokenize(text, None, !chat, chat, None)
            .await
            .map(|t| t.len())
            .map_err(|e| ApiError::invalid(format!("cannot tokenize the input: {e}")))
    }

    /// Starts a generation; events arrive on the returned channel until `Finish` or `Error`.
    /// The engine's own responses are drained at once into it, so a slow reader never blocks
    /// the engine loop (mistral.rs streams through a channel of capacity 1). Dropping the
    /// receiver cancels the sequence.
    pub async fn generate(
        &self,
        g: Generation,
        prompt_tokens: usize,
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
        let sender = self
            .model
            .inner()
            .get_sender(None)
            .map_err(|e| ApiError::Engine(e.to_string()))?;
        sender
            .send(request)
            .await
            .map_err(|e| ApiError::Engine(e.to_string()))?;
        let max_tokens = g.max_tokens;
        let stop = if constrained {
            Vec::new()
        } else {
            g.stop.clone()
        };

        Ok(forward(rx, is_chat, prompt_tokens, max_tokens, stop))
    }
}

/// Drains the engine's responses into events as fast as they come. Ends with exactly one
/// `Finish` or `Error`; when the engine closes the stream without its final chunk (it drops it
/// when the last bytes are an incomplete UTF-8 character), the `Finish` is synthesized.
pub(crate) fn forward(
    mut rx: mpsc::Receiver<Response>,
    is_chat: bool,
    prompt_tokens: usize,
    max_tokens: usize,
    stop: Vec<String>,
) -> mpsc::UnboundedReceiver<Event> {
    let (out, events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut generated = 0usize;
        let mut filter = StopFilter::new(stop);
        while let Some(response) = rx.recv().await {
            let (deltas, finish, error) = translate(response, is_chat);
            for event in deltas {
                generated += 1;
                let Event::Delta { text, logprob } = event else {
                    continue;
                };
                let (release, stopped) = filter.push(&text, logprob);
                if let Some(event) = release
                    && out.send(event).is_err()
                {
                    return; // client gone: dropping `rx` cancels the sequence
                }
                if stopped {
                    let usage = Usage {
                        prompt_tokens,
                        completion_tokens: generated,
                    };
                    let _ = out.send(Event::Finish {
                        reason: "stop".into(),
                        usage: Some(usage),
                    });
                    return;
                }
            }
            if (finish.is_some() || error.is_some())
                && let Some(event) = filter.flush()
            {
                let _ = out.send(event);
            }
            if let Some(message) = error {
                let _ = out.send(Event::Error(message));
                return;
            }
            if let Some((reason, usage)) = finish {
                let usage = usage.unwrap_or(Usage {
                    prompt_tokens,
                    completion_tokens: generated,
                });
                let _ = out.send(Event::Finish {
                    reason,
                    usage: Some(usage),
                });
                return;
            }
        }
        if let Some(event) = filter.flush() {
            let _ = out.send(event);
        }
        let reason = if generated >= max_tokens {
            "length"
        } else {
            "stop"
        };
        let usage = Usage {
            prompt_tokens,
            completion_tokens: generated,
        };
        let _ = out.send(Event::Finish {
            reason: reason.into(),
            usage: Some(usage),
        });
    });
    events
}

/// Applies stop sequences to streamed text: the engine streams each token as it is sampled and
/// detects a stop sequence only once complete, so text that may begin a stop sequence is held
/// back, and the stop sequence itself is never sent.
struct StopFilter {
    stops: Vec<String>,
    pending: String,
    pending_logprobs: Vec<TokenLogprob>,
}

impl StopFilter {
    fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            pending: String::new(),
            pending_logprobs: Vec::new(),
        }
    }

    /// Adds a token's text; returns what can be released and whether a stop sequence was hit.
    fn push(&mut self, text: &str, logprob: Option<TokenLogprob>) -> (Option<Event>, bool) {
        if self.stops.is_empty() {
            return (
                Some(Event::Delta {
                    text: text.to_string(),
                    logprob,
                }),
                false,
            );
        }
        self.pending.push_str(text);
        self.pending_logprobs.extend(logprob);
        if let Some(cut) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            self.pending.truncate(cut);
            return (self.flush(), true);
        }
        // Hold the longest tail that is the beginning of some stop sequence.
        let hold = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .filter(move |&k| s.is_char_boundary(k))
                    .map(move |k| &s[..k])
            })
            .filter(|prefix| self.pending.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let release = self.pending.len() - hold;
        if release == 0 {
            return (None, false);
        }
        let rest = self.pending.split_off(release);
        let text = std::mem::replace(&mut self.pending, rest);
        (Some(self.delta(text)), false)
    }

    fn flush(&mut self) -> Option<Event> {
        if self.pending.is_empty() {
            return None;
        }
        let text = std::mem::take(&mut self.pending);
        Some(self.delta(text))
    }

    fn delta(&mut self, text: String) -> Event {
        // Logprobs of held tokens travel with the text that releases them (the last one shown).
        let logprob = self.pending_logprobs.pop();
        self.pending_logprobs.clear();
        Event::Delta { text, logprob }
    }
}

/// Engine response → (deltas, finish, error).
#[allow(clippy::type_complexity)]
fn translate(
    response: Response,
    is_chat: bool,
) -> (Vec<Event>, Option<(String, Option<Usage>)>, Option<String>) {
    let logprob = |l: Option<mistralrs::core::ResponseLogprob>| {
        l.map(|l| TokenLogprob {
            token: l.token,
            logprob: l.logprob,
            top: l
                .top_logprobs
                .into_iter()
                .map(|t| (t.bytes.unwrap_or_default(), t.logprob))
                .collect(),
        })
    };
    let usage = |u: &mistralrs::Usage| Usage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
    };
    match response {
        Response::Chunk(chunk) if is_chat => {
            let mut deltas = Vec::new();
            let mut finish = None;
            for c in chunk.choices {
                if let Some(text) = c.delta.content
                    && !text.is_empty()
                {
                    deltas.push(Event::Delta {
                        text,
                        logprob: logprob(c.logprobs),
                    });
                }
                if let Some(reason) = c.finish_reason {
                    finish = Some((reason, chunk.usage.as_ref().map(usage)));
                }
            }
            (deltas, finish, None)
        }
        Response::CompletionChunk(chunk) => {
            let mut deltas = Vec::new();
            let mut finish = None;
            for c in chunk.choices {
                if !c.text.is_empty() {
                    deltas.push(Event::Delta {
                        text: c.text,
                        logprob: logprob(c.logprobs),
                    });
                }
                if let Some(reason) = c.finish_reason {
                    finish = Some((reason, None));
                }
            }
            (deltas, finish, None)
        }
        Response::Done(done) => {
            let reason = done
                .choices
                .first()
                .map(|c| c.finish_reason.clone())
                .unwrap_or_else(|| "stop".into());
            (Vec::new(), Some((reason, Some(usage(&done.usage)))), None)
        }
        Response::CompletionDone(done) => {
            let reason = done
                .choices
                .first()
                .map(|c| c.finish_reason.clone())
                .unwrap_or_else(|| "stop".into());
            (Vec::new(), Some((reason, Some(usage(&done.usage)))), None)
        }
        Response::InternalError(e) | Response::ValidationError(e) => {
            (Vec::new(), None, Some(e.to_string()))
        }
        Response::ModelError(e, _) | Response::CompletionModelError(e, _) => {
            (Vec::new(), None, Some(e))
        }
        _ => (Vec::new(), None, Some("unexpected engine response".into())),
    }
}

/// Keeps end-of-sequence tokens from being sampled until `min_tokens` tokens are generated.
struct HoldEos {
    eos: Vec<u32>,
    min_tokens: usize,
    prompt_len: AtomicUsize,
}

impl HoldEos {
    fn new(eos: Vec<u32>, min_tokens: usize) -> Self {
        Self {
            eos,
            min_tokens,
            prompt_len: AtomicUsize::new(usize::MAX),
        }
    }
}

impl CustomLogitsProcessor for HoldEos {
    fn apply(&self, logits: &Tensor, context: &[u32]) -> mistralrs::Result<Tensor> {
        // The first call sees the prompt alone; later calls the prompt plus what was generated.
        let _ = self.prompt_len.compare_exchange(
            usize::MAX,
            context.len(),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        let generated = context
            .len()
            .saturating_sub(self.prompt_len.load(Ordering::SeqCst));
        if generated >= self.min_tokens {
            return Ok(logits.clone());
        }
        let mut values = to_f32(logits)?;
        for &id in &self.eos {
            if let Some(v) = values.get_mut(id as usize) {
                *v = f32::NEG_INFINITY;
            }
        }
        from_f32(values, logits)
    }
}

/// Reproducible sampling for requests with a `seed` (the engine has no per-request seed): picks
/// the token from the temperature/top-p distribution with a generator seeded by the request's
/// seed and position, then leaves the engine only that token to choose.
struct SeededSampler {
    seed: u64,
    temperature: f64,
    top_p: f64,
}

impl CustomLogitsProcessor for SeededSampler {
    fn apply(&self, logits: &Tensor, context: &[u32]) -> mistralrs::Result<Tensor> {
        let values = to_f32(logits)?;
        let chosen = seeded_choice(
            &values,
            self.temperature,
            self.top_p,
            splitmix(self.seed ^ context.len() as u64),
        );
        let forced = values
            .iter()
            .enumerate()
            .map(|(i, _)| if i == chosen { 0.0 } else { f32::NEG_INFINITY })
            .collect();
        from_f32(forced, logits)
    }
}

/// Samples an index from softmax(logits / temperature) restricted to the top-p mass, using a
/// uniform number derived from `random` (deterministic for a given input).
pub(crate) fn seeded_choice(logits: &[f32], temperature: f64, top_p: f64, random: u64) -> usize {
    let t = temperature.max(1e-4);
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i, ((l as f64 - max) / t).exp()))
        .filter(|(_, p)| *p > 0.0)
        .collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut kept = 0.0;
    let mut cut = probs.len();
    for (i, p) in probs.iter().enumerate() {
        kept += p.1 / total;
        if kept >= top_p {
            cut = i + 1;
            break;
        }
    }
    probs.truncate(cut.max(1));
    let mass: f64 = probs.iter().map(|p| p.1).sum();
    let mut target = (random >> 11) as f64 / (1u64 << 53) as f64 * mass;
    for (i, p) in &probs {
        target -= p;
        if target <= 0.0 {
            return *i;
        }
    }
    probs.last().map(|p| p.0).unwrap_or(0)
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn to_f32(t: &Tensor) -> mistralrs::Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

fn from_f32(values: Vec<f32>, like: &Tensor) -> mistralrs::Result<Tensor> {
    Tensor::from_vec(values, like.shape(), like.device())?.to_dtype(like.dtype())
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

/// Sequences kept in the prefix cache (mistral.rs' default), or none.
fn prefix_cache(args: &Args) -> Option<usize> {
    (!args.no_prefix_cache).then_some(16)
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

    #[test]
    fn seeded_choice_is_deterministic_and_respects_top_p() {
        let logits = [2.0, 1.0, 0.5, -1.0, -3.0];
        for r in [0u64, 1, u64::MAX / 3, u64::MAX] {
            assert_eq!(
                seeded_choice(&logits, 0.8, 1.0, r),
                seeded_choice(&logits, 0.8, 1.0, r)
            );
        }
        // top_p this small keeps only the most likely token.
        for r in [0u64, 12345, u64::MAX] {
            assert_eq!(seeded_choice(&logits, 1.0, 0.01, r), 0);
        }
        // different random inputs reach different tokens at high temperature
        let picks: std::collections::BTreeSet<usize> = (0..64)
            .map(|i| seeded_choice(&logits, 5.0, 1.0, splitmix(i)))
            .collect();
        assert!(picks.len() >= 3, "{picks:?}");
    }

    fn chunk(text: &str, finish: Option<&str>) -> Response {
        Response::Chunk(mistralrs::ChatCompletionChunkResponse {
            id: "1".into(),
            choices: vec![mistralrs::ChunkChoice {
                finish_reason: finish.map(String::from),
                index: 0,
                delta: mistralrs::Delta {
                    content: Some(text.into()),
                    role: "assistant".into(),
                    tool_calls: None,
                    reasoning_content: None,
                },
                logprobs: None,
            }],
            created: 0,
            model: "m".into(),
            system_fingerprint: "local".into(),
            object: "chat.completion.chunk".into(),
            usage: None,
        })
    }

    async fn collect(mut rx: mpsc::UnboundedReceiver<Event>) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(e) = rx.recv().await {
            out.push(e);
        }
        out
    }

    #[tokio::test]
    async fn missing_final_chunk_is_synthesized() {
        let (tx, rx) = mpsc::channel(1);
        let events = forward(rx, true, 7, 3, vec![]);
        for t in ["a", "b"] {
            tx.send(chunk(t, None)).await.unwrap();
        }
        drop(tx); // the engine gives up without a finish_reason chunk
        let got = collect(events).await;
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[2],
            Event::Finish {
                reason: "stop".into(),
                usage: Some(Usage {
                    prompt_tokens: 7,
                    completion_tokens: 2
                })
            }
        );
    }

    #[tokio::test]
    async fn synthesized_finish_at_max_tokens_says_length() {
        let (tx, rx) = mpsc::channel(1);
        let events = forward(rx, true, 1, 2, vec![]);
        tx.send(chunk("a", None)).await.unwrap();
        tx.send(chunk("b", None)).await.unwrap();
        drop(tx);
        let got = collect(events).await;
        assert!(matches!(&got[2], Event::Finish { reason, .. } if reason == "length"));
    }

    #[tokio::test]
    async fn engine_finish_passes_through_once() {
        let (tx, rx) = mpsc::channel(1);
        let events = forward(rx, true, 1, 10, vec![]);
        tx.send(chunk("a", Some("stop"))).await.unwrap();
        let got = collect(events).await;
        assert_eq!(got.len(), 2);
        assert!(matches!(&got[1], Event::Finish { reason, .. } if reason == "stop"));
    }

    #[tokio::test]
    async fn engine_is_drained_even_when_nobody_reads() {
        // The engine's channel holds one response; a reader that never reads must not block it.
        let (tx, rx) = mpsc::channel(1);
        let _events = forward(rx, true, 1, 100, vec![]);
        for i in 0..50 {
            tokio::time::timeout(
                std::time::Duration::from_secs(2),
                tx.send(chunk(&i.to_string(), None)),
            )
            .await
            .expect("engine send blocked")
            .unwrap();
        }
    }

    #[tokio::test]
    async fn stop_sequences_spanning_tokens_are_cut_and_never_sent() {
        let (tx, rx) = mpsc::channel(1);
        let events = forward(rx, true, 1, 100, vec!["END".into(), "xyz".into()]);
        for t in ["Hel", "lo E", "N", "D and more"] {
            tx.send(chunk(t, None)).await.unwrap();
        }
        drop(tx);
        let got = collect(events).await;
        let text: String = got
            .iter()
            .filter_map(|e| {
                if let Event::Delta { text, .. } = e {
                    Some(text.as_str())
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(text, "Hello ");
        assert!(matches!(got.last(), Some(Event::Finish { reason, .. }) if reason == "stop"));
    }

    #[tokio::test]
    async fn held_text_that_is_no_stop_sequence_is_released() {
        let (tx, rx) = mpsc::channel(1);
        let events = forward(rx, true, 1, 100, vec!["END".into()]);
        for t in ["a E", "N", "b"] {
            tx.send(chunk(t, None)).await.unwrap();
        }
        tx.send(chunk("!", Some("length"))).await.unwrap();
        let got = collect(events).await;
        let text: String = got
            .iter()
            .filter_map(|e| {
                if let Event::Delta { text, .. } = e {
                    Some(text.as_str())
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(text, "a ENb!");
        assert!(matches!(got.last(), Some(Event::Finish { reason, .. }) if reason == "length"));
    }

    #[test]
    fn seeded_choice_never_picks_masked_tokens() {
        let logits = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, 0.0];
        for i in 0..100 {
            let c = seeded_choice(&logits, 1.0, 1.0, splitmix(i));
            assert!(c == 1 || c == 3, "{c}");
        }
    }
}
