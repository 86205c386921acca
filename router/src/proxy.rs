//! Sending a request to a pod and bringing its answer back: retries on another pod of the same
//! version while nothing has reached the client, SSE streams passed through as they arrive (and
//! observed on the way for TTFT, inter-token latency, usage and mid-stream errors), non-stream
//! bodies read whole (for usage and idempotent replay).

use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::uri::{PathAndQuery, Scheme};
use axum::http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, header,
};
use bytes::Bytes;
use futures::Stream;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use memchr::memmem;
use serde::Deserialize;

use crate::stats::Outcome;
use crate::table::{Endpoint, InFlight};

/// Pooled HTTP/1.1 connections to the pods: one pool per thread, so a connection is driven by
/// the thread whose requests use it.
#[derive(Clone)]
pub struct UpstreamClient {
    id: usize,
    connect_timeout: Duration,
}

type PodClient = Client<HttpConnector, Full<Bytes>>;

/// A connection to a pod quiet for this long is probed (TCP keepalive) ...
pub const POD_KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
/// ... every this often ...
const POD_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// ... this many times;
const POD_KEEPALIVE_PROBES: u32 = 3;
/// and it is given up when nothing came back from the pod for this long while probes or data
/// were waiting for its acknowledgement. A live pod's kernel acknowledges at once, however busy
/// the pod is, so a slow generation is never cut.
pub const POD_DEAD_AFTER: Duration = Duration::from_secs(10);

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
                    // A pod whose network is torn down before its process closes its
                    // connections sends no FIN and no RST: without these, a request waiting on
                    // it would wait forever. Keepalive probes find such a connection dead when
                    // it has been quiet; the user timeout when what was sent is never
                    // acknowledged. Either way the request fails and goes to another pod.
                    connector.set_keepalive(Some(POD_KEEPALIVE_IDLE));
                    connector.set_keepalive_interval(Some(POD_KEEPALIVE_INTERVAL));
                    connector.set_keepalive_retries(Some(POD_KEEPALIVE_PROBES));
                    connector.set_tcp_user_timeout(Some(POD_DEAD_AFTER));
                    Client::builder(TokioExecutor::new())
                        .pool_idle_timeout(Duration::from_secs(60))
                        .pool_max_idle_per_host(256)
                        .build(connector)
                })
                .clone()
        })
    }

    /// Sends a request to the pod (on a pooled connection when there is one).
    pub async fn send(
        &self,
        pod: &Endpoint,
        method: Method,
        path_and_query: PathAndQuery,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        let mut uri = axum::http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(pod.authority.clone());
        uri.path_and_query = Some(path_and_query);
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = Uri::from_parts(uri).expect("scheme, authority and path make a URI");
        let forwarded = request.headers_mut();
        forwarded.reserve(headers.len() + 1);
        // Made once per pod; the client would otherwise format it for every request.
        forwarded.insert(header::HOST, pod.host.clone());
        for (name, value) in headers {
            if !is_hop_by_hop(name) && name != header::HOST && name != header::CONTENT_LENGTH {
                forwarded.append(name, value.clone());
            }
        }
        self.client().request(request).await
    }

    /// GET `path` from the pod as text (its `/metrics`).
    pub async fn get_text(&self, pod: &Endpoint, path: &'static str) -> anyhow::Result<String> {
        let response = self
            .send(
                pod,
                Method::GET,
                PathAndQuery::from_static(path),
                &HeaderMap::new(),
                Bytes::new(),
            )
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

/// A pod's response headers made fit for the client: the hop-by-hop ones removed (in place;
/// pods rarely send any, so usually nothing is touched).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let hop: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    for name in hop {
        headers.remove(name);
    }
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
///
/// Only the `usage` object is parsed, not the whole answer: the text `"usage"` followed by `:`
/// can only be a key (inside a JSON string its quotes are escaped), and OpenAI-shaped answers
/// end with it, so the last such key is read first. A body without the key has no usage; a key
/// whose value is not token counts falls back to parsing the whole body.
pub fn usage_of(body: &[u8]) -> Usage {
    const KEY: &[u8] = b"\"usage\"";
    static FINDER: LazyLock<memmem::FinderRev<'static>> =
        LazyLock::new(|| memmem::FinderRev::new(KEY));
    let mut end = body.len();
    let mut seen = false;
    while let Some(at) = FINDER.rfind(&body[..end]) {
        end = at;
        seen = true;
        let Some(value) = body[at + KEY.len()..].trim_ascii_start().strip_prefix(b":") else {
            continue; // `"usage"` as a value, not a key
        };
        let mut json = serde_json::Deserializer::from_slice(value);
        if let Ok(usage) = Option::<Usage>::deserialize(&mut json) {
            return usage.unwrap_or_default();
        }
        break;
    }
    if !seen {
        return Usage::default();
    }
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
    memmem::find(haystack, needle)
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

pub const X_FERRY_VERSION: HeaderName = HeaderName::from_static("x-ferry-version");
pub const X_FERRY_VARIANT: HeaderName = HeaderName::from_static("x-ferry-variant");
pub const X_FERRY_POD: HeaderName = HeaderName::from_static("x-ferry-pod");

/// `x-ferry-*` response headers naming where a request went.
pub fn add_route_headers(
    headers: &mut HeaderMap,
    version: &str,
    variant: Option<&str>,
    pod: &Endpoint,
) {
    let mut put = |name: HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    put(X_FERRY_VERSION, version);
    if let Some(variant) = variant {
        put(X_FERRY_VARIANT, variant);
    }
    if let Some(pod) = &pod.pod_header {
        headers.insert(X_FERRY_POD, pod.clone());
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use super::*;

    fn tokens(body: &str) -> (u64, u64) {
        let u = usage_of(body.as_bytes());
        (u.prompt_tokens, u.completion_tokens)
    }

    #[test]
    fn usage_is_read_from_the_answer_however_it_is_written() {
        let plain = r#"{"id":"x","choices":[{"message":{"content":"Paris."}}],"usage":{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14}}"#;
        assert_eq!(tokens(plain), (12, 2));
        // Pretty-printed, and usage not last.
        let pretty = "{\n  \"usage\" : {\"prompt_tokens\": 7, \"completion_tokens\": 3},\n  \"id\": \"x\"\n}";
        assert_eq!(tokens(pretty), (7, 3));
        // The word as a value, and quoted inside generated text, before the real key.
        let decoys = r#"{"choices":[{"message":{"content":"say \"usage\": {\"prompt_tokens\": 99}"}}],"kind":"usage","usage":{"prompt_tokens":5,"completion_tokens":1}}"#;
        assert_eq!(tokens(decoys), (5, 1));
        // The word as the last value, after the key.
        let value_last = r#"{"usage":{"prompt_tokens":4,"completion_tokens":2},"kind":"usage"}"#;
        assert_eq!(tokens(value_last), (4, 2));
        // No usage, null usage, a body that is not JSON.
        assert_eq!(tokens(r#"{"id":"x"}"#), (0, 0));
        assert_eq!(tokens(r#"{"id":"x","usage":null}"#), (0, 0));
        assert_eq!(tokens("upstream connect error"), (0, 0));
        // A `usage` key whose value is not token counts: the whole body decides.
        assert_eq!(
            tokens(r#"{"usage":{"prompt_tokens":8,"completion_tokens":1},"meta":{"usage":"n/a"}}"#),
            (8, 1)
        );
    }

    /// A raw HTTP/1.1 server on loopback: answers every GET on a connection with `ok`, and
    /// closes each connection `close_after` answers (or never). Counts connections.
    async fn raw_pod(close_after: Option<usize>) -> (SocketAddr, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut answered = 0;
                    loop {
                        let mut chunk = [0u8; 1024];
                        let n = stream.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                        while let Some(end) = find(&buffer, b"\r\n\r\n") {
                            buffer.drain(..end + 4);
                            let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            stream.write_all(answer.as_bytes()).await.unwrap();
                            answered += 1;
                            if close_after == Some(answered) {
                                return; // drops the socket: the pod closed the connection
                            }
                        }
                    }
                });
            }
        });
        (addr, connections)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn connections_to_a_pod_are_reused_and_one_the_pod_closed_is_replaced() {
        let client = UpstreamClient::new(Duration::from_secs(1));

        let (addr, connections) = raw_pod(None).await;
        let pod = Endpoint::new("keeps", addr);
        for _ in 0..3 {
            assert_eq!(client.get_text(&pod, "/metrics").await.unwrap(), "ok");
            // The client puts a connection back in its pool from a task of its own, once the
            // connection is ready again: leave it the moment it needs.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "one connection, reused"
        );

        // The pod closes every connection after one answer, as a pod with a short keep-alive
        // would: the idle connection is found closed and the request goes on a new one.
        let (addr, connections) = raw_pod(Some(1)).await;
        let pod = Endpoint::new("closes", addr);
        for _ in 0..3 {
            assert_eq!(client.get_text(&pod, "/metrics").await.unwrap(), "ok");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_pod_that_refuses_connections_is_a_connect_error() {
        let addr = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let client = UpstreamClient::new(Duration::from_secs(1));
        let e = client
            .get_text(&Endpoint::new("gone", addr), "/metrics")
            .await
            .unwrap_err();
        let e = e.downcast::<hyper_util::client::legacy::Error>().unwrap();
        assert!(e.is_connect(), "{e}");
    }

    #[test]
    fn hop_by_hop_headers_are_removed_and_the_rest_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        headers.append("x-request-id", HeaderValue::from_static("a"));
        headers.append("x-request-id", HeaderValue::from_static("b"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 3);
        assert!(headers.get(header::TRANSFER_ENCODING).is_none());
        assert!(headers.get(header::CONNECTION).is_none());
        assert_eq!(headers.get_all("x-request-id").iter().count(), 2);
    }
}
