//! HTTP: the OpenAI routes, health, readiness and metrics, in one axum router over one
//! [`AppState`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{Instrument, info, info_span, warn};

use crate::admission::{Admission, Answering, SharedSlot};

/// Frees a shared slot when dropped (the engine drainer holds one).
struct ReleaseOnDrop(SharedSlot);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release();
    }
}
use crate::config::Args;
use crate::engine::{Engine, Event, Generation, Input};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::openai::{self, ChatRequest, CompletionRequest, RequestShape};
use crate::respond;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// Shared by every request; reached through [`AppState`].
pub struct Inner {
    engine: OnceLock<Arc<Engine>>,
    admission: Arc<Admission>,
    metrics: Metrics,
    served_model_name: String,
    max_body_bytes: usize,
    body_timeout: Duration,
    max_messages: usize,
    /// SHA-256 digests of the accepted keys (`None`: no key needed).
    api_keys: Option<Vec<[u8; 32]>>,
    fault_latency: Duration,
    fault_first_token_delay: Duration,
    fault_error_rate: f64,
    fault_counter: AtomicU64,
    created: u64,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(args: &Args) -> anyhow::Result<Self> {
        let metrics = Metrics::new(&args.served_model_name, &args.model_version);
        let admission =
            Admission::new(args.max_num_seqs, args.max_queue, Box::new(metrics.clone()));
        let mut digests = Vec::new();
        if let Some(path) = &args.api_keys_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("--api-keys-file {}: {e}", path.display()))?;
            let keys: HashSet<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .collect();
            anyhow::ensure!(
                !keys.is_empty(),
                "--api-keys-file {} holds no key",
                path.display()
            );
            digests.extend(keys.into_iter().map(digest));
        }
        for hex in &args.api_key_sha256 {
            digests.push(parse_digest(hex).ok_or_else(|| {
                anyhow::anyhow!("--api-key-sha256 {hex:?} is not 64 hexadecimal digits")
            })?);
        }
        let api_keys = (!digests.is_empty()).then_some(digests);
        anyhow::ensure!(
            (0.0..=1.0).contains(&args.fault_error_rate),
            "--fault-error-rate must be between 0 and 1"
        );
        Ok(Self(Arc::new(Inner {
            engine: OnceLock::new(),
            admission,
            metrics,
            served_model_name: args.served_model_name.clone(),
            max_body_bytes: args.max_body_bytes,
            body_timeout: Duration::from_secs(args.body_timeout_seconds.max(1)),
            max_messages: args.max_messages,
            api_keys,
            fault_latency: Duration::from_millis(args.fault_latency_ms),
            fault_first_token_delay: Duration::from_millis(args.fault_first_token_delay_ms),
            fault_error_rate: args.fault_error_rate,
            fault_counter: AtomicU64::new(0),
            created: unix_now(),
        })))
    }

    pub fn set_engine(&self, engine: Arc<Engine>) {
        let _ = self.engine.set(engine);
    }

    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn engine(&self) -> Result<&Arc<Engine>, ApiError> {
        self.engine.get().ok_or(ApiError::Unavailable(
            "The model is still loading; retry shortly.",
        ))
    }

    fn is_ready(&self) -> bool {
        self.engine.get().is_some() && !self.admission.is_closed()
    }

    /// True for the share of requests `--fault-error-rate` asks to fail, spread evenly.
    fn inject_error(&self) -> bool {
        if self.fault_error_rate <= 0.0 {
            return false;
        }
        let n = self.fault_counter.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * self.fault_error_rate).floor() > (n * self.fault_error_rate).floor()
    }
}

pub const REQUEST_ID: &str = "x-request-id";

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .merge(api)
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(|req: Request| async move {
            ApiError::NotFound(format!("{} {}", req.method(), req.uri().path()))
        })
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}

/// Accepts the caller's `x-request-id` (or makes one), logs under it, and returns it.
async fn request_id(mut req: Request, next: Next) -> Response {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(String::from)
        .unwrap_or_else(|| format!("{:x}-{}", unix_now(), NEXT.fetch_add(1, Ordering::Relaxed)));
    let value = HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    req.headers_mut().insert(REQUEST_ID, value.clone());
    let span =
        info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    let mut response = next.run(req).instrument(span).await;
    response.headers_mut().insert(REQUEST_ID, value);
    response
}

async fn authorize(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(keys) = &state.api_keys {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(ferry_contract::auth::bearer_token)
            .unwrap_or("");
        // Digests are compared, all of them, in constant time: timing reveals neither a key's
        // content nor its length.
        let given = digest(given);
        let ok = keys
            .iter()
            .fold(false, |ok, k| ok | constant_time_eq(k, &given));
        if !ok {
            state
                .metrics
                .requests
                .with_label_values(&[req.uri().path(), ApiError::Unauthorized.code()])
                .inc();
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(req).await
}

fn digest(key: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(key.as_bytes()).into()
}

/// A SHA-256 digest written as 64 hexadecimal digits.
fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn ready(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        let status = if state.admission.is_closed() {
            "draining"
        } else {
            "loading"
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": status})),
        )
            .into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn models(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"object": "list", "data": [
        {"id": state.served_model_name, "object": "model", "created": state.created, "owned_by": "ferry"}
    ]}))
}

async fn embeddings(State(state): State<AppState>, body: Body) -> Response {
    let err = embeddings_error(&state, body).await;
    state
        .metrics
        .requests
        .with_label_values(&["/v1/embeddings", err.code()])
        .inc();
    err.into_response()
}

/// The served models generate text: every embeddings request gets a specific error.
async fn embeddings_error(state: &AppState, body: Body) -> ApiError {
    let bytes = match read_body(state, body).await {
        Ok(bytes) => bytes,
        Err(e) => return e,
    };
    let v: Value = match openai::parse(&bytes) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let model = v["model"].as_str().unwrap_or_default();
    if model != state.served_model_name {
        return ApiError::ModelNotFound(model.to_string());
    }
    ApiError::invalid_param(
        "model",
        format!("The model `{model}` generates text and does not support embeddings."),
    )
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Endpoint {
    Chat,
    Completions,
}

impl Endpoint {
    pub(crate) fn path(self) -> &'static str {
        match self {
            Self::Chat => "/v1/chat/completions",
            Self::Completions => "/v1/completions",
        }
    }
}

async fn chat(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    generate(state, Endpoint::Chat, headers, body).await
}

async fn completions(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    generate(state, Endpoint::Completions, headers, body).await
}

/// The whole body, within `--max-body-bytes` and `--body-timeout-seconds`.
async fn read_body(state: &AppState, body: Body) -> Result<Bytes, ApiError> {
    let limit = state.max_body_bytes;
    match tokio::time::timeout(state.body_timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(ApiError::RequestTimeout(state.body_timeout.as_secs())),
        Ok(Err(e)) if is_too_large(&e) => Err(ApiError::BodyTooLarge(limit)),
        Ok(Err(e)) => Err(ApiError::invalid(format!(
            "Could not read the request body: {e}"
        ))),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

fn is_too_large(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// A generation under way: its events and what the response needs. (The engine slot it took is
/// held by the task that drains the engine, and freed when the generation ends, whether or not
/// the client has read it all.)
pub(crate) struct Running {
    pub(crate) shape: RequestShape,
    pub(crate) events: UnboundedReceiver<Event>,
    pub(crate) id: String,
    pub(crate) start: Instant,
    pub(crate) prompt_tokens: usize,
    /// The engine slot, also freed by the engine's drainer when the generation ends.
    pub(crate) slot: SharedSlot,
    /// Counts the answer as being sent (the drain at shutdown waits for it).
    pub(crate) _answering: Answering,
    /// Drills: held before the first token is released (`--fault-first-token-delay-ms`).
    pub(crate) first_token_delay: Option<Duration>,
}

async fn generate(state: AppState, endpoint: Endpoint, headers: HeaderMap, body: Body) -> Response {
    let start = Instant::now();
    let id = headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("0")
        .to_string();
    match admit(&state, endpoint, body, start, id).await {
        Err(e) => {
            state
                .metrics
                .requests
                .with_label_values(&[endpoint.path(), e.code()])
                .inc();
            if e.status().is_server_error() {
                warn!(code = e.code(), error = %e, "request failed");
            }
            e.into_response()
        }
        Ok(running) if running.shape.stream => respond::stream_response(state, endpoint, running),
        Ok(running) => respond::whole_response(state, endpoint, running).await,
    }
}

async fn admit(
    state: &AppState,
    endpoint: Endpoint,
    body: Body,
    start: Instant,
    id: String,
) -> Result<Running, ApiError> {
    // Cheap checks first (size, time, shape, counts), then admission, then the expensive work
    // (chat template, tokenization) inside the slot, so what a request costs is bounded by it.
    let bytes = read_body(state, body).await?;
    let (mut generation, mut shape) = match endpoint {
        Endpoint::Chat => {
            let request = openai::parse_request::<ChatRequest>(&bytes)?;
            if request.messages.len() > state.max_messages {
                return Err(ApiError::invalid_param(
                    "messages",
                    format!(
                        "A request may have at most {} messages; this one has {}.",
                        state.max_messages,
                        request.messages.len()
                    ),
                ));
            }
            request.into_generation()?
        }
        Endpoint::Completions => {
            openai::parse_request::<CompletionRequest>(&bytes)?.into_generation()?
        }
    };
    if shape.model != state.served_model_name {
        return Err(ApiError::ModelNotFound(shape.model));
    }
    if state.admission.is_closed() {
        // Draining: refuse before touching the engine, which may already be stopping.
        return Err(ApiError::Unavailable(
            "The server is shutting down; retry on another replica.",
        ));
    }
    let engine = state.engine()?.clone();
    let ticket = state.admission.enter()?;
    let slot = ticket.run().await;
    let prompt_tokens = engine.count_prompt_tokens(&generation.input).await?;
    fit_context(
        &mut generation,
        &mut shape,
        prompt_tokens,
        engine.max_seq_len(),
    )?;
    if !state.fault_latency.is_zero() {
        tokio::time::sleep(state.fault_latency).await;
    }
    if state.inject_error() {
        return Err(ApiError::InjectedFault);
    }
    info!(model = %shape.model, user = shape.user.as_deref().unwrap_or(""), prompt_tokens, max_tokens = generation.max_tokens, stream = shape.stream, "generating");
    state.metrics.prompt_tokens.inc_by(prompt_tokens as u64);
    let slot = SharedSlot::new(slot);
    let events = engine
        .generate(generation, prompt_tokens, ReleaseOnDrop(slot.clone()))
        .await?;
    Ok(Running {
        shape,
        events,
        id,
        start,
        prompt_tokens,
        slot,
        _answering: state.admission.answering(),
        first_token_delay: Some(state.fault_first_token_delay).filter(|d| !d.is_zero()),
    })
}

/// Resolves `max_tokens` against the context: the default is whatever room is left, and a
/// request that cannot fit is refused as OpenAI does.
fn fit_context(
    g: &mut Generation,
    shape: &mut RequestShape,
    prompt: usize,
    context: Option<usize>,
) -> Result<(), ApiError> {
    let asked = (g.max_tokens > 0).then_some(g.max_tokens);
    shape.max_tokens = asked;
    let Some(context) = context else {
        g.max_tokens = asked.unwrap_or(4096);
        return Ok(());
    };
    let total = prompt + asked.unwrap_or(1);
    if total > context {
        return Err(ApiError::invalid_param(
            if asked.is_some() {
                "max_tokens"
            } else {
                "messages"
            },
            format!(
                "This model's maximum context length is {context} tokens. However, you requested {total} tokens ({prompt} in the prompt, {} for the completion).",
                asked.unwrap_or(1)
            ),
        ));
    }
    g.max_tokens = asked.unwrap_or(context - prompt);
    Ok(())
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One real generation before `/ready` turns 200, so the first user request does not pay for
/// lazy initialisation.
pub async fn warm_up(engine: &Engine) -> Result<(), ApiError> {
    let input = Input::Chat(vec![("user".into(), "Hello".into())]);
    let prompt = engine.count_prompt_tokens(&input).await?;
    let g = Generation::greedy(input, 2);
    let mut events = engine.generate(g, prompt, ()).await?;
    loop {
        match events.recv().await {
            Some(Event::Finish { .. }) => return Ok(()),
            Some(Event::Error(e)) => return Err(ApiError::Engine(e)),
            None => return Err(ApiError::Engine("warm-up stream closed".into())),
            Some(Event::Delta { .. }) => {}
        }
    }
}
