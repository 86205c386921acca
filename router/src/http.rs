//! The HTTP face of the router: the OpenAI endpoints clients call, and `/health`, `/ready`,
//! `/metrics`, `/internal/stats`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::uri::PathAndQuery;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::BodyExt;
use prometheus::{Encoder, IntCounterVec, Registry, TextEncoder};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::access::{Access, Reservation};
use crate::error::RouterError;
use crate::idempotency::{Begin, IdempotencyCache, MAX_KEY_LENGTH, Stored, fingerprint};
use crate::limits::{Caps, Guarded};
use crate::pod_token::PodToken;
use crate::proxy::{
    ObservedStream, UpstreamClient, add_route_headers, stream_response, strip_hop_by_hop, usage_of,
};
use crate::stats::{Outcome, SeriesKey, Stats, parse_window};
use crate::table::{Backend, Sticky, Table, choose_backend, choose_endpoint, sticky_point};

/// Knobs of the request path.
#[derive(Clone, Debug)]
pub struct Settings {
    pub max_body_bytes: usize,
    /// How long a request waits for a ready pod (cold start, scale from zero).
    pub hold: Duration,
    /// Further pods tried after a failed connection, within one version.
    pub retries: usize,
    /// How long a pod that refused a connection is skipped.
    pub eject: Duration,
    /// How long a client may take to send headers (and a keep-alive connection may idle).
    pub header_timeout: Duration,
    /// How long a client may take to send a whole body.
    pub body_timeout: Duration,
    /// Connections, requests in flight, held requests, body bytes in memory.
    pub caps: Caps,
    /// Threads serving requests.
    pub threads: usize,
}

/// Everything a request needs.
pub struct App {
    pub settings: Settings,
    pub table: watch::Receiver<Arc<Table>>,
    pub client: UpstreamClient,
    pub stats: Stats,
    pub access: Arc<Access>,
    pub idempotency: Arc<IdempotencyCache>,
    /// The token shown to pods (off unless `--pod-token-secret`).
    pub pod_token: Arc<PodToken>,
    pub registry: Registry,
    rejected: IntCounterVec,
    retried: IntCounterVec,
}

impl App {
    pub fn new(
        settings: Settings,
        table: watch::Receiver<Arc<Table>>,
        client: UpstreamClient,
        access: Arc<Access>,
        idempotency: Arc<IdempotencyCache>,
        registry: Registry,
    ) -> prometheus::Result<Self> {
        let rejected = IntCounterVec::new(
            prometheus::Opts::new(
                "ferry_router_rejected_total",
                "Requests the router answered itself without reaching a version, by error code.",
            ),
            &["code"],
        )?;
        let retried = IntCounterVec::new(
            prometheus::Opts::new(
                "ferry_router_retries_total",
                "Requests sent to another pod after one failed before answering.",
            ),
            &["model", "version"],
        )?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(retried.clone()))?;
        Ok(Self {
            settings,
            table,
            client,
            stats: Stats::new(&registry)?,
            access,
            idempotency,
            pod_token: Arc::default(),
            registry,
            rejected,
            retried,
        })
    }
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The OpenAI endpoints the router forwards to a version's pods.
const GENERATION_PATHS: [&str; 3] = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"];

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route(GENERATION_PATHS[0], post(generate))
        .route(GENERATION_PATHS[1], post(generate))
        .route(GENERATION_PATHS[2], post(generate))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/internal/stats", get(internal_stats))
        .fallback(|req: Request| async move {
            RouterError::NotFound(format!("{} {}", req.method(), shorten(req.uri().path())))
        })
        .method_not_allowed_fallback(|req: Request| async move {
            RouterError::MethodNotAllowed {
                method: req.method().to_string(),
                path: shorten(req.uri().path()),
            }
        })
        .with_state(app)
}

/// The router as a hyper service. Generation requests (nearly all the traffic) go straight to
/// their handler; everything else, and any other method on those paths, through `router`
/// (which also serves the generation paths, for callers that use it as a tower service).
pub fn service(
    app: Arc<App>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = Response,
    Error = Infallible,
    Future = impl Future<Output = Result<Response, Infallible>> + Send,
> + Clone {
    let router = router(app.clone());
    hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let app = app.clone();
        let router = router.clone();
        async move {
            let request = request.map(Body::new);
            let generation = request.method() == Method::POST
                && GENERATION_PATHS.contains(&request.uri().path());
            if generation {
                Ok(generate(State(app), request).await)
            } else {
                router.oneshot(request).await
            }
        }
    })
}

/// Milliseconds on a monotonic clock, for ejection deadlines.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

async fn ready(State(app): State<Arc<App>>) -> Response {
    if !app.pod_token.is_ready() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "pod token Secret not read yet",
        )
            .into_response()
    } else if app.table.borrow().synced {
        "ready".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "routing table not synced yet",
        )
            .into_response()
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&app.registry.gather(), &mut out) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

#[derive(Deserialize)]
struct StatsQuery {
    window: Option<String>,
}

async fn internal_stats(State(app): State<Arc<App>>, Query(q): Query<StatsQuery>) -> Response {
    let window = match q.window.as_deref() {
        None => Duration::from_secs(30),
        Some(w) => match parse_window(w) {
            Some(d) => d,
            None => {
                return RouterError::invalid(
                    format!("window `{w}` is not a duration like 30s or 5m"),
                    Some("window"),
                )
                .into_response();
            }
        },
    };
    Json(app.stats.summary(window)).into_response()
}

async fn models(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(e) = app.access.authenticate(authorization(&headers)) {
        return app.reject(e);
    }
    let table = app.table.borrow().clone();
    let data: Vec<_> = table
        .models()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "ferry"}))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// The fields the router reads from a request body; the rest passes through untouched.
#[derive(Deserialize)]
struct Peek {
    model: Option<String>,
    user: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
}

impl App {
    fn reject(&self, e: RouterError) -> Response {
        self.rejected.with_label_values(&[e.code()]).inc();
        e.into_response()
    }

    /// A connection closed at once because the connection cap is reached.
    pub fn refuse_connection(&self) {
        self.rejected.with_label_values(&["connection_limit"]).inc();
    }
}

async fn generate(State(app): State<Arc<App>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let mut headers = parts.headers;
    // A client's own request id is kept if it is short; a long one is replaced, not echoed.
    let request_id = match headers
        .get(X_REQUEST_ID)
        .filter(|id| id.len() <= MAX_REQUEST_ID)
    {
        Some(id) => id.clone(),
        None => {
            let id = new_request_id();
            headers.insert(X_REQUEST_ID, id.clone());
            id
        }
    };
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    // A request counts as in flight until its response (a stream: its last event) is sent.
    let mut permits = Vec::with_capacity(2);
    let handled = match Caps::take(&app.settings.caps.in_flight) {
        Some(permit) => {
            permits.push(permit);
            handle(&app, &path, &headers, body, &mut permits).await
        }
        None => Err(RouterError::Overloaded {
            what: "requests in flight",
        }),
    };
    let mut response = match handled {
        Ok(response) => response,
        Err(e) => {
            warn!(code = e.code(), error = %e, request_id = ?request_id, "request refused");
            app.reject(e)
        }
    };
    response.headers_mut().insert(X_REQUEST_ID, request_id);
    response.map(|body| Guarded::body(body, permits))
}

/// The longest client request id echoed and logged.
const MAX_REQUEST_ID: usize = 128;

/// At most 64 characters of something a client sent, for error messages and logs.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

/// 16 random hex digits.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u64(..);
    let mut id = [0u8; 16];
    for digit in id.iter_mut().rev() {
        *digit = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&id).expect("hex digits are a valid header value")
}

async fn handle(
    app: &Arc<App>,
    path: &PathAndQuery,
    headers: &HeaderMap,
    body: Body,
    permits: &mut Vec<OwnedSemaphorePermit>,
) -> Result<Response, RouterError> {
    let started = Instant::now();
    let key_id = app.access.authenticate(authorization(headers))?;
    let body = read_body(body, &app.settings, permits).await?;
    let peek: Peek = match serde_json::from_slice(&body) {
        Ok(peek) => peek,
        Err(_) => return Err(explain_body_error(&body)),
    };
    // A key's limits: its request rate, and its tokens per minute with `max_tokens` reserved
    // now and the rest settled from the answer's usage.
    let mut charge = match &key_id {
        Some(key) => {
            let reserve = peek.max_completion_tokens.or(peek.max_tokens).unwrap_or(0);
            Some(app.access.reserve(key, reserve)?)
        }
        None => None,
    };
    let model = peek
        .model
        .filter(|m| !m.is_empty())
        .ok_or_else(|| RouterError::invalid("`model` is required.", Some("model")))?;
    let stream = peek.stream.unwrap_or(false);
    // Keys are scoped by API key, model and path; with API keys off every client shares one
    // space, where a repeat must also bring the same body (else 422).
    let idempotency_key = match headers.get(IDEMPOTENCY_KEY).filter(|_| !stream) {
        None => None,
        Some(k) if k.len() > MAX_KEY_LENGTH => {
            return Err(RouterError::invalid(
                format!("`Idempotency-Key` is longer than {MAX_KEY_LENGTH} bytes."),
                Some("Idempotency-Key"),
            ));
        }
        Some(k) => k
            .to_str()
            .ok()
            .map(|k| format!("{}\0{model}\0{path}\0{k}", key_id.as_deref().unwrap_or(""))),
    };
    let guard = match idempotency_key {
        None => None,
        Some(k) => match app.idempotency.begin(k, fingerprint(&body)).await {
            Begin::Replay(stored) => return Ok(replay(&stored)),
            Begin::First(guard) => Some(guard),
            Begin::Reused => return Err(RouterError::IdempotencyKeyReused),
            Begin::Busy => return Err(RouterError::IdempotencyKeyBusy),
        },
    };

    let sticky_key = |route_sticky: &Sticky| match route_sticky {
        Sticky::User => peek.user.clone(),
        Sticky::Header(name) => headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        Sticky::ApiKey => key_id.clone(),
    };
    // A spill (no pod of the chosen version took the request: all draining or gone, as for a
    // rolled-back canary or a scale-down the router has not seen yet) chooses once more: those
    // pods are now skipped, so the table gives another version.
    let mut spill = true;
    let mut chosen = None;
    let response = loop {
        let (backend, route_model, credential) = match chosen.take() {
            Some(chosen) => chosen,
            None => wait_for_backend(app, &model, started, &sticky_key, true).await?,
        };
        let series = SeriesKey {
            model: route_model,
            version: backend.version.clone(),
            variant: backend.variant.clone().unwrap_or_default(),
        };
        let forwarded = forward(
            app,
            &backend,
            &series,
            path,
            headers,
            credential.as_ref(),
            body.clone(),
            started,
            &mut charge,
            spill,
        )
        .await?;
        match forwarded {
            Forwarded::Spill(None) => spill = false,
            Forwarded::Spill(Some(unreached)) => {
                spill = false;
                // No pod reached has the request: it is held for a ready pod, as for a cold
                // start (within the hold), and answered 502 only if none comes.
                match wait_for_backend(app, &model, started, &sticky_key, true).await {
                    Ok(next) => chosen = Some(next),
                    Err(_) => {
                        return Err(upstream_failed(
                            app,
                            &series,
                            charge.take(),
                            started,
                            unreached.attempts,
                            unreached.last_error,
                        ));
                    }
                }
            }
            answer => break answer,
        }
    };
    Ok(match (guard, response) {
        (Some(guard), Forwarded::Whole(stored)) => {
            let response = replayable(&stored, false);
            guard.finish(stored);
            response
        }
        (None, Forwarded::Whole(stored)) => whole(stored),
        (_, Forwarded::Stream(response)) => response,
        (_, Forwarded::Spill(_)) => unreachable!("a spill is answered by choosing again"),
    })
}

/// The error for a body that does not parse: names the field when it is one the router reads.
fn explain_body_error(body: &[u8]) -> RouterError {
    let mut json = serde_json::Deserializer::from_slice(body);
    let Err(e) = serde_path_to_error::deserialize::<_, Peek>(&mut json) else {
        return RouterError::invalid("The request body is not valid JSON.", None);
    };
    let path = e.path().to_string();
    let param = match path.as_str() {
        "model" => Some("model"),
        "user" => Some("user"),
        "stream" => Some("stream"),
        "max_tokens" => Some("max_tokens"),
        "max_completion_tokens" => Some("max_completion_tokens"),
        _ => None,
    };
    match param {
        Some(_) => RouterError::invalid(format!("`{path}`: {}", e.inner()), param),
        None => RouterError::invalid(
            format!("The request body is not valid JSON: {}", e.inner()),
            None,
        ),
    }
}

/// The whole request body, within `--max-body-bytes`, `--body-timeout-seconds` and the bytes the
/// router may hold in memory at once (the permits for them go into `permits`, released when the
/// response is sent).
async fn read_body(
    mut body: Body,
    settings: &Settings,
    permits: &mut Vec<OwnedSemaphorePermit>,
) -> Result<Bytes, RouterError> {
    let limit = settings.max_body_bytes;
    let overloaded = || RouterError::Overloaded {
        what: "request-body memory",
    };
    // A body of known length is refused or given its room before a byte of it is read.
    let announced = hyper::body::Body::size_hint(&body)
        .exact()
        .map(|n| n as usize);
    let mut out = match announced {
        Some(n) if n > limit => return Err(RouterError::BodyTooLarge(limit)),
        Some(n) => {
            permits.push(settings.caps.take_body(n).ok_or_else(overloaded)?);
            bytes::BytesMut::with_capacity(n)
        }
        None => bytes::BytesMut::new(),
    };
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| RouterError::BodyUnreadable(e.to_string()))?;
            let Ok(chunk) = frame.into_data() else {
                continue;
            };
            if out.len() + chunk.len() > limit {
                return Err(RouterError::BodyTooLarge(limit));
            }
            if announced.is_none() {
                // Chunked: room taken as the body grows (twice the chunk: the buffer doubles).
                permits.push(
                    settings
                        .caps
                        .take_body(2 * chunk.len())
                        .ok_or_else(overloaded)?,
                );
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    };
    tokio::time::timeout(settings.body_timeout, read)
        .await
        .unwrap_or(Err(RouterError::RequestTimeout(
            settings.body_timeout.as_secs(),
        )))
}

/// The backend for `model`, waiting up to the hold time for one with a ready pod (with `hold`;
/// without, a 503 at once when there is none).
async fn wait_for_backend(
    app: &App,
    model: &str,
    started: Instant,
    sticky_key: &(dyn Fn(&Sticky) -> Option<String> + Sync),
    hold: bool,
) -> Result<(Backend, String, Option<HeaderValue>), RouterError> {
    let mut table = app.table.clone();
    let deadline = started + app.settings.hold;
    // Counted as held (the operator wakes a version scaled to zero) from the first miss on.
    let mut held = None;
    loop {
        let snapshot = table.borrow_and_update().clone();
        match snapshot.routes.get(model) {
            Some(route) => {
                let point = match route.stickiness.as_ref().and_then(sticky_key) {
                    Some(key) => sticky_point(&route.model, &key),
                    None => fastrand::f64(),
                };
                if let Some(b) = choose_backend(&route.backends, point, now_ms()) {
                    let credential = app
                        .pod_token
                        .credential(&route.namespace, &route.deployment)?;
                    return Ok((b.clone(), route.model.clone(), credential));
                }
            }
            None if snapshot.synced => {
                return Err(RouterError::ModelNotFound {
                    model: shorten(model),
                    known: snapshot.models().map(str::to_string).collect(),
                });
            }
            None => {}
        }
        if !hold {
            return Err(RouterError::NoReadyPod {
                model: model.to_string(),
                waited_s: 0,
                retry_after: 5,
            });
        }
        if held.is_none() && snapshot.routes.contains_key(model) {
            // Only so many requests wait at once; past that, the answer comes at once.
            let Some(slot) = Caps::take(&app.settings.caps.held) else {
                return Err(RouterError::NoReadyPod {
                    model: model.to_string(),
                    waited_s: 0,
                    retry_after: 5,
                });
            };
            held = Some((app.stats.hold(model), slot));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(RouterError::NoReadyPod {
                model: model.to_string(),
                waited_s: app.settings.hold.as_secs(),
                retry_after: 5,
            });
        }
        // A table change, or a short tick (an ejected pod's time may be up).
        let wait = (deadline - now).min(Duration::from_millis(250));
        let _ = tokio::time::timeout(wait, table.changed()).await;
    }
}

enum Forwarded {
    Whole(Stored),
    Stream(Response),
    /// No pod of the version took the request (only when `forward` was allowed to spill): choose
    /// again. Every pod draining (503): `None`, the request may wait for a pod. Pods that could
    /// not be reached: what to answer when no other pod can take the request at once.
    Spill(Option<Unreached>),
}

/// Pods tried that never received the request.
struct Unreached {
    attempts: usize,
    last_error: String,
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    app: &Arc<App>,
    backend: &Backend,
    series: &SeriesKey,
    path: &PathAndQuery,
    headers: &HeaderMap,
    credential: Option<&HeaderValue>,
    body: Bytes,
    started: Instant,
    charge: &mut Option<Reservation>,
    spill: bool,
) -> Result<Forwarded, RouterError> {
    let mut tried = Vec::new();
    let mut last_error = String::from("no ready pod");
    for attempt in 0..=app.settings.retries {
        let Some(endpoint) = choose_endpoint(
            &backend.endpoints,
            &tried,
            now_ms(),
            fastrand::u64(..),
            fastrand::u64(..),
        ) else {
            break;
        };
        tried.push(endpoint.addr);
        if attempt > 0 {
            app.retried
                .with_label_values(&[&series.model, &series.version])
                .inc();
        }
        let in_flight = endpoint.begin();
        let sent = Instant::now();
        let upstream = app
            .client
            .send(
                endpoint,
                axum::http::Method::POST,
                path.clone(),
                headers,
                credential,
                body.clone(),
            )
            .await;
        let response = match upstream {
            Ok(r) => r,
            Err(e) => {
                if e.is_connect() {
                    endpoint.eject(now_ms(), app.settings.eject.as_millis() as u64);
                }
                last_error = format!("{}: {}", endpoint.pod, error_chain(&e));
                if e.is_unsent() {
                    // Refused, timed out, a kept-alive connection the pod had closed, or reset
                    // before the pod read the request: the pod cannot have started it.
                    warn!(pod = %endpoint.pod, error = %last_error, "pod did not read the request; trying another");
                    continue;
                }
                // The pod may have received it: not sent again (a request that crashes pods
                // would crash every pod). The client gets a 502 and may retry.
                warn!(pod = %endpoint.pod, error = %last_error, "pod failed after receiving the request");
                return Err(upstream_failed(
                    app,
                    series,
                    charge.take(),
                    started,
                    attempt + 1,
                    last_error,
                ));
            }
        };
        let status = response.status();
        let more_pods = backend.endpoints.iter().any(|e| !tried.contains(&e.addr));
        if status == StatusCode::SERVICE_UNAVAILABLE && more_pods && attempt < app.settings.retries
        {
            // Loading or draining: nothing was generated, another pod can take it.
            last_error = format!("{}: 503", endpoint.pod);
            continue;
        }
        if status == StatusCode::SERVICE_UNAVAILABLE && spill && !more_pods {
            endpoint.eject(now_ms(), app.settings.eject.as_millis() as u64);
            if backend.endpoints.iter().all(|e| e.is_ejected(now_ms())) {
                return Ok(Forwarded::Spill(None));
            }
        }
        let (parts, response_body) = response.into_parts();
        let mut out_headers = parts.headers;
        strip_hop_by_hop(&mut out_headers);
        add_route_headers(
            &mut out_headers,
            &backend.version,
            backend.variant.as_deref(),
            endpoint,
        );
        let is_stream = out_headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        if is_stream {
            let finish = finisher(app.clone(), series.clone(), charge.take());
            let prompt_tokens = out_headers
                .get(ferry_contract::tokens::PROMPT_TOKENS_HEADER)
                .and_then(|v| v.to_str().ok()?.parse().ok());
            let stream = ObservedStream::new(
                response_body,
                status,
                started,
                in_flight,
                finish,
                prompt_tokens,
            );
            return Ok(Forwarded::Stream(stream_response(
                status,
                out_headers,
                stream,
            )));
        }
        let collected = response_body.collect().await;
        drop(in_flight);
        let (body, failed) = match collected {
            Ok(c) => (c.to_bytes(), status.is_server_error()),
            Err(e) => {
                let last = format!("the response broke off: {e}");
                return Err(upstream_failed(
                    app,
                    series,
                    charge.take(),
                    started,
                    attempt + 1,
                    last,
                ));
            }
        };
        let usage = usage_of(&body);
        // The pod's TTFT for the whole answer, plus the time it took to reach the pod.
        let ttft = out_headers
            .get(ferry_contract::ttft::TTFT_HEADER)
            .and_then(|v| v.to_str().ok()?.parse::<f64>().ok())
            .filter(|ms| ms.is_finite() && *ms >= 0.0)
            .map(|ms| (sent - started) + Duration::from_secs_f64(ms / 1000.0));
        record(
            app,
            series,
            charge.take(),
            Outcome {
                status: status.as_u16(),
                failed,
                latency: started.elapsed(),
                ttft,
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
                ..Default::default()
            },
        );
        return Ok(Forwarded::Whole(Stored {
            status,
            headers: out_headers,
            body,
        }));
    }
    // Every pod tried refused the connection or answered 503: none has the request, so it may
    // go to another version (a canary whose pods stopped before the router saw them go).
    if spill {
        for endpoint in backend.endpoints.iter().filter(|e| tried.contains(&e.addr)) {
            endpoint.eject(now_ms(), app.settings.eject.as_millis() as u64);
        }
        app.retried
            .with_label_values(&[&series.model, &series.version])
            .inc();
        return Ok(Forwarded::Spill(Some(Unreached {
            attempts: tried.len(),
            last_error,
        })));
    }
    Err(upstream_failed(
        app,
        series,
        charge.take(),
        started,
        tried.len(),
        last_error,
    ))
}

/// Every pod tried failed: counted against the version, and the client's error.
fn upstream_failed(
    app: &App,
    series: &SeriesKey,
    charge: Option<Reservation>,
    started: Instant,
    attempts: usize,
    last: String,
) -> RouterError {
    let outcome = Outcome {
        status: 502,
        failed: true,
        latency: started.elapsed(),
        ..Default::default()
    };
    record(app, series, charge, outcome);
    // What went wrong with which pod is for the logs, not for clients.
    warn!(model = %series.model, version = %series.version, attempts, last = %last, "no pod answered");
    RouterError::Upstream {
        model: series.model.clone(),
        version: series.version.clone(),
        attempts,
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn record(app: &App, series: &SeriesKey, charge: Option<Reservation>, outcome: Outcome) {
    if let Some(charge) = charge {
        charge.settle(outcome.prompt_tokens + outcome.completion_tokens);
    }
    debug!(model = %series.model, version = %series.version, variant = %series.variant,
          status = outcome.status, latency_ms = outcome.latency.as_millis() as u64, "routed");
    app.stats.record(series, &outcome);
}

fn finisher(app: Arc<App>, series: SeriesKey, charge: Option<Reservation>) -> crate::proxy::Finish {
    Box::new(move |outcome| record(&app, &series, charge, outcome))
}

fn replayable(stored: &Stored, replayed: bool) -> Response {
    let mut response = Response::new(Body::from(stored.body.clone()));
    *response.status_mut() = stored.status;
    *response.headers_mut() = stored.headers.clone();
    if replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

/// A pod's whole answer for the client (nothing kept, nothing copied).
fn whole(stored: Stored) -> Response {
    let mut response = Response::new(Body::from(stored.body));
    *response.status_mut() = stored.status;
    *response.headers_mut() = stored.headers;
    response
}

fn replay(stored: &Stored) -> Response {
    replayable(stored, true)
}
