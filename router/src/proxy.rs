//! Sending a request to a pod and bringing its answer back: retries on another pod of the same
//! version while nothing has reached the client, SSE streams passed through as they arrive (and
//! observed on the way for TTFT, inter-token latency, usage and mid-stream errors), non-stream
//! bodies read whole (for usage and idempotent replay).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header,
};
use bytes::Bytes;
use futures::Stream;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use crate::stats::Outcome;
use crate::table::InFlight;

/// Pooled HTTP/1.1 connections to the pods: one pool per thread, so a connection is driven by
/// the thread whose requests use it.
#[derive(Clone)]
pub struct UpstreamClient {
    id: usize,
    connect_timeout: Duration,
}

type PodClient = Client<HttpConnector, Full<Bytes>>;

thread_local! {
    static POOLS: RefCell<HashMap<usize, PodClient>> = RefCell::new(HashMap::new());
}

impl UpstreamClient {
    pub fn new(connect_timeout: Duration) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        Self {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            connect_timeout,
        }
    }

    fn client(&self) -> PodClient {
        POOLS.with(|pools| {
            pools
                .borrow_mut()
                .entry(self.id)
                .or_insert_with(|| {
                    let mut connector = HttpConnector::new();
                    connector.set_nodelay(true);
                    connector.set_connect_timeout(Some(self.connect_timeout));
                    Client::builder(TokioExecutor::new())
                        .pool_idle_timeout(Duration::from_secs(60))
                        .pool_max_idle_per_host(256)
                        .build(connector)
                })
                .clone()
        })
    }

    pub async fn send(
        &self,
        addr: SocketAddr,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path_and_query}"))
            .body(Full::new(body))
            .expect("a socket address and a path make a valid URI");
        let forwarded = request.headers_mut();
        for (name, value) in headers {
            if !is_hop_by_hop(name) && name != header::HOST && name != header::CONTENT_LENGTH {
                forwarded.append(name, value.clone());
            }
        }
        self.client().request(request).await
    }

    /// GET `path` from the pod as text (its `/metrics`).
    pub async fn get_text(&self, addr: SocketAddr, path: &str) -> anyhow::Result<String> {
        let response = self
            .send(addr, Method::GET, path, &HeaderMap::new(), Bytes::new())
            .await?;
        anyhow::ensure!(response.status().is_success(), "{}", response.status());
        let body = response.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Copies a pod's response headers for the client.
pub fn response_headers(from: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(from.len() + 3);
    for (name, value) in from {
        if !is_hop_by_hop(name) {
            headers.append(name, value.clone());
        }
    }
    headers
}

#[derive(Deserialize)]
struct UsageOnly {
    usage: Option<Usage>,
}

#[derive(Deserialize, Default, Clone, Copy)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

/// Token counts from a JSON body with an OpenAI `usage` object.
pub fn usage_of(body: &[u8]) -> Usage {
    serde_json::from_slice::<UsageOnly>(body)
        .ok()
        .and_then(|u| u.usage)
        .unwrap_or_default()
}

/// Called once when a streamed response ends, however it ends.
pub type Finish = Box<dyn FnOnce(Outcome) + Send>;

/// The pod's SSE body on its way to the client: frames go out as they come; data events are
/// timed; a failure of the pod's connection after streaming began ends the stream with an
/// OpenAI error event and `[DONE]`, so clients raise instead of hanging.
pub struct ObservedStream {
    body: Incoming,
    started: Instant,
    last_event: Option<Instant>,
    pending: Vec<u8>,
    outcome: Outcome,
    tail: Option<Bytes>,
    done: bool,
    finish: Option<Finish>,
    _in_flight: InFlight,
}

impl ObservedStream {
    pub fn new(
        body: Incoming,
        status: StatusCode,
        started: Instant,
        in_flight: InFlight,
        finish: Finish,
    ) -> Self {
        Self {
            body,
            started,
            last_event: None,
            pending: Vec::new(),
            outcome: Outcome {
                status: status.as_u16(),
                failed: status.is_server_error(),
                ..Default::default()
            },
            tail: None,
            done: false,
            finish: Some(finish),
            _in_flight: in_flight,
        }
    }

    fn observe(&mut self, chunk: &[u8]) {
        self.pending.extend_from_slice(chunk);
        while let Some(end) = find(&self.pending, b"\n\n") {
            let event: Vec<u8> = self.pending.drain(..end + 2).collect();
            self.observe_event(&event);
        }
    }

    fn observe_event(&mut self, event: &[u8]) {
        let now = Instant::now();
        for line in event.split(|b| *b == b'\n') {
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            let data = data.trim_ascii();
            if data == b"[DONE]" {
                continue;
            }
            if data.starts_with(b"{\"error\"") {
                self.outcome.failed = true;
                continue;
            }
            match self.last_event {
                None => self.outcome.ttft = Some(now - self.started),
                Some(last) => self.outcome.inter_token.push(now - last),
            }
            self.last_event = Some(now);
            if find(data, b"\"usage\":{").is_some() {
                let usage = usage_of(data);
                self.outcome.prompt_tokens = usage.prompt_tokens;
                self.outcome.completion_tokens = usage.completion_tokens;
            }
        }
    }

    fn end(&mut self) {
        if let Some(finish) = self.finish.take() {
            let mut outcome = std::mem::take(&mut self.outcome);
            outcome.latency = self.started.elapsed();
            finish(outcome);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The event a stream ends with when its pod fails mid-way.
pub fn stream_error_event(message: &str) -> Bytes {
    let body = serde_json::json!({"error": {"message": message, "type": "server_error",
                                             "param": null, "code": "upstream_stream_failed"}});
    Bytes::from(format!("data: {body}\n\ndata: [DONE]\n\n"))
}

impl Stream for ObservedStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(tail) = this.tail.take() {
            return Poll::Ready(Some(Ok(tail)));
        }
        if this.done {
            this.end();
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.done = true;
                    this.end();
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.observe(&data);
                        return Poll::Ready(Some(Ok(data)));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    this.outcome.failed = true;
                    let message = format!("The pod's stream broke off: {e}.");
                    // Close any half-sent event before the error event.
                    let mut tail = if this.pending.is_empty() {
                        Vec::new()
                    } else {
                        b"\n\n".to_vec()
                    };
                    tail.extend_from_slice(&stream_error_event(&message));
                    return Poll::Ready(Some(Ok(Bytes::from(tail))));
                }
            }
        }
    }
}

impl Drop for ObservedStream {
    /// The client went away (or the stream ended): record what happened. Dropping the pod's body
    /// closes its connection, which cancels the generation there.
    fn drop(&mut self) {
        self.end();
    }
}

/// A streamed response for the client.
pub fn stream_response(
    status: StatusCode,
    headers: HeaderMap,
    stream: ObservedStream,
) -> Response<Body> {
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// `x-ferry-*` response headers naming where a request went.
pub fn add_route_headers(headers: &mut HeaderMap, version: &str, variant: Option<&str>, pod: &str) {
    let mut put = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    put("x-ferry-version", version);
    if let Some(variant) = variant {
        put("x-ferry-variant", variant);
    }
    put("x-ferry-pod", pod);
}
