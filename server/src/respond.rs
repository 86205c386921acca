//! Turning a running generation into the response the client asked for: one OpenAI JSON
//! object, or server-sent events.

use std::convert::Infallible;
use std::time::Instant;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::engine::{Event, TokenLogprob, Usage};
use crate::error::ApiError;
use crate::http::{AppState, Endpoint, Running, unix_now};
use crate::metrics::Metrics;

/// Collects the whole generation into one JSON response.
pub(crate) async fn whole_response(
    state: AppState,
    endpoint: Endpoint,
    mut run: Running,
) -> Response {
    let mut text = String::new();
    let mut logprobs = Vec::new();
    let mut last_token = None;
    let mut first_token = None;
    let (reason, usage) = loop {
        match run.events.recv().await {
            Some(Event::Delta { text: t, logprob }) => {
                if let Some(delay) = run.first_token_delay.take() {
                    tokio::time::sleep(delay).await;
                }
                observe_token(state.metrics(), run.start, &mut last_token);
                first_token = first_token.or(last_token);
                text.push_str(&t);
                logprobs.extend(logprob);
            }
            Some(Event::Finish { reason, usage }) => {
                // Free before the answer goes out: the client's next request finds the slot.
                run.slot.release();
                break (reason, usage.unwrap_or_default());
            }
            Some(Event::Error(message)) => {
                return finish_error(&state, endpoint, ApiError::Engine(message));
            }
            None => {
                let e = ApiError::Engine("the engine ended the stream without an answer".into());
                return finish_error(&state, endpoint, e);
            }
        }
    };
    record_done(&state, endpoint, run.start, usage);
    let created = unix_now();
    let body = match endpoint {
        Endpoint::Chat => json!({
            "id": format!("chatcmpl-{}", run.id), "object": "chat.completion", "created": created, "model": run.shape.model,
            "system_fingerprint": "ferry",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": chat_logprobs(&logprobs), "finish_reason": reason}],
            "usage": usage_json(usage),
        }),
        Endpoint::Completions => json!({
            "id": format!("cmpl-{}", run.id), "object": "text_completion", "created": created, "model": run.shape.model,
            "choices": [{"index": 0, "text": text, "logprobs": completion_logprobs(&logprobs), "finish_reason": reason}],
            "usage": usage_json(usage),
        }),
    };
    let mut response = Json(body).into_response();
    response.headers_mut().insert(
        ferry_contract::tokens::PROMPT_TOKENS_HEADER,
        HeaderValue::from(usage.prompt_tokens),
    );
    // The client (the router) cannot see when the first token came in a whole answer: say it.
    if let Some(first) = first_token {
        let ms = (first - run.start).as_secs_f64() * 1000.0;
        if let Ok(value) = HeaderValue::from_str(&format!("{ms:.1}")) {
            response
                .headers_mut()
                .insert(ferry_contract::ttft::TTFT_HEADER, value);
        }
    }
    response
}

fn finish_error(state: &AppState, endpoint: Endpoint, e: ApiError) -> Response {
    state
        .metrics()
        .requests
        .with_label_values(&[endpoint.path(), e.code()])
        .inc();
    warn!(code = e.code(), error = %e, "generation failed");
    e.into_response()
}

pub(crate) fn record_done(state: &AppState, endpoint: Endpoint, start: Instant, usage: Usage) {
    let m = state.metrics();
    m.requests.with_label_values(&[endpoint.path(), "ok"]).inc();
    m.latency
        .with_label_values(&[endpoint.path()])
        .observe(start.elapsed().as_secs_f64());
    m.generation_tokens.inc_by(usage.completion_tokens as u64);
    info!(
        completion_tokens = usage.completion_tokens,
        seconds = start.elapsed().as_secs_f64(),
        "done"
    );
}

/// Observes TTFT (first token) or inter-token latency (later tokens) for one generated token.
fn observe_token(metrics: &Metrics, start: Instant, last: &mut Option<Instant>) {
    let now = Instant::now();
    match *last {
        None => metrics.ttft.observe((now - start).as_secs_f64()),
        Some(previous) => metrics.inter_token.observe((now - previous).as_secs_f64()),
    }
    *last = Some(now);
}

fn usage_json(u: Usage) -> Value {
    json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
           "total_tokens": u.prompt_tokens + u.completion_tokens})
}

fn logprob_json(l: &TokenLogprob) -> Value {
    json!({"token": l.token, "logprob": l.logprob, "bytes": l.token.as_bytes(),
           "top_logprobs": l.top.iter().map(|(t, p)| json!({"token": t, "logprob": p, "bytes": t.as_bytes()})).collect::<Vec<_>>()})
}

fn chat_logprobs(l: &[TokenLogprob]) -> Value {
    if l.is_empty() {
        Value::Null
    } else {
        json!({"content": l.iter().map(logprob_json).collect::<Vec<_>>()})
    }
}

fn completion_logprobs(l: &[TokenLogprob]) -> Value {
    if l.is_empty() {
        return Value::Null;
    }
    json!({"tokens": l.iter().map(|t| &t.token).collect::<Vec<_>>(),
           "token_logprobs": l.iter().map(|t| t.logprob).collect::<Vec<_>>(),
           "top_logprobs": l.iter().map(|t| t.top.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>()})
}

/// Server-sent events: one `data:` line per chunk, `data: [DONE]` at the end. An engine error
/// mid-stream becomes an `error` event, so clients raise instead of hanging.
pub(crate) fn stream_response(state: AppState, endpoint: Endpoint, run: Running) -> Response {
    let prompt_tokens = HeaderValue::from(run.prompt_tokens);
    let stream = futures::stream::unfold(SseState::new(state, endpoint, run), |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), s))
    });
    let mut response = Response::new(Body::from_stream(stream));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(ferry_contract::tokens::PROMPT_TOKENS_HEADER, prompt_tokens);
    response
}

struct SseState {
    state: AppState,
    endpoint: Endpoint,
    run: Option<Running>,
    created: u64,
    sent_role: bool,
    pending: std::collections::VecDeque<Bytes>,
    last_token: Option<Instant>,
}

impl SseState {
    fn new(state: AppState, endpoint: Endpoint, run: Running) -> Self {
        Self {
            state,
            endpoint,
            run: Some(run),
            created: unix_now(),
            sent_role: false,
            pending: Default::default(),
            last_token: None,
        }
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(b) = self.pending.pop_front() {
                return Some(b);
            }
            let run = self.run.as_mut()?;
            if self.endpoint == Endpoint::Chat && !self.sent_role {
                self.sent_role = true;
                let c = self.chunk(json!({"role": "assistant", "content": ""}), None, None);
                return Some(c);
            }
            match run.events.recv().await {
                Some(Event::Delta { text, logprob }) => {
                    if let Some(delay) = run.first_token_delay.take() {
                        tokio::time::sleep(delay).await;
                    }
                    let now = Instant::now();
                    match self.last_token {
                        None => self
                            .state
                            .metrics()
                            .ttft
                            .observe((now - run.start).as_secs_f64()),
                        Some(last) => self
                            .state
                            .metrics()
                            .inter_token
                            .observe((now - last).as_secs_f64()),
                    }
                    self.last_token = Some(now);
                    let lp = logprob.as_ref();
                    let c = match self.endpoint {
                        Endpoint::Chat => self.chunk(
                            json!({"content": text}),
                            None,
                            lp.map(|l| json!({"content": [logprob_json(l)]})),
                        ),
                        Endpoint::Completions => self.chunk(
                            json!(text),
                            None,
                            lp.map(|l| completion_logprobs(std::slice::from_ref(l))),
                        ),
                    };
                    return Some(c);
                }
                Some(Event::Finish { reason, usage }) => {
                    let usage = usage.unwrap_or_default();
                    let run = self.run.take().expect("running");
                    run.slot.release();
                    let include_usage = run.shape.include_usage;
                    record_done(&self.state, self.endpoint, run.start, usage);
                    let empty = if self.endpoint == Endpoint::Chat {
                        json!({})
                    } else {
                        json!("")
                    };
                    let last = self.chunk_for(&run, empty, Some(&reason), None);
                    self.pending.push_back(last);
                    if include_usage {
                        let mut u = self.envelope(&run);
                        u["choices"] = json!([]);
                        u["usage"] = usage_json(usage);
                        self.pending.push_back(sse(&u));
                    }
                    self.pending
                        .push_back(Bytes::from_static(b"data: [DONE]\n\n"));
                }
                Some(Event::Error(message)) => self.fail(ApiError::Engine(message)),
                None => self.fail(ApiError::Engine(
                    "the engine ended the stream without a final chunk".into(),
                )),
            }
        }
    }

    fn fail(&mut self, e: ApiError) {
        let _ = self.run.take();
        self.state
            .metrics()
            .requests
            .with_label_values(&[self.endpoint.path(), e.code()])
            .inc();
        warn!(code = e.code(), error = %e, "stream failed");
        self.pending.push_back(sse(&e.body()));
        self.pending
            .push_back(Bytes::from_static(b"data: [DONE]\n\n"));
    }

    fn envelope(&self, run: &Running) -> Value {
        match self.endpoint {
            Endpoint::Chat => {
                json!({"id": format!("chatcmpl-{}", run.id), "object": "chat.completion.chunk",
                                     "created": self.created, "model": run.shape.model, "system_fingerprint": "ferry"})
            }
            Endpoint::Completions => {
                json!({"id": format!("cmpl-{}", run.id), "object": "text_completion",
                                            "created": self.created, "model": run.shape.model})
            }
        }
    }

    fn chunk(&self, delta: Value, reason: Option<&str>, logprobs: Option<Value>) -> Bytes {
        self.chunk_for(self.run.as_ref().expect("running"), delta, reason, logprobs)
    }

    fn chunk_for(
        &self,
        run: &Running,
        delta: Value,
        reason: Option<&str>,
        logprobs: Option<Value>,
    ) -> Bytes {
        let mut c = self.envelope(run);
        let choice = match self.endpoint {
            Endpoint::Chat => {
                json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": reason})
            }
            Endpoint::Completions => {
                json!({"index": 0, "text": delta, "logprobs": logprobs, "finish_reason": reason})
            }
        };
        c["choices"] = json!([choice]);
        sse(&c)
    }
}

impl Drop for SseState {
    fn drop(&mut self) {
        // Dropped with a generation still running: the client went away. Dropping `run` drops
        // the event receiver: the engine cancels the sequence, and admission frees its slot.
        if self.run.take().is_some() {
            self.state
                .metrics()
                .requests
                .with_label_values(&[self.endpoint.path(), "cancelled"])
                .inc();
            info!("client disconnected; generation cancelled");
        }
    }
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}
