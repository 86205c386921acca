//! Sending a request to a pod and bringing its answer back: retries on another pod of the same
//! version while nothing has reached the client, SSE streams passed through as they arrive (and
//! observed on the way for TTFT, inter-token latency, usage and mid-stream errors), non-stream
//! bodies read whole (for usage and idempotent replay).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::uri::PathAndQuery;
use axum::http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, header,
};
use bytes::Bytes;
use futures::Stream;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use memchr::memmem;
use serde::Deserialize;

use crate::stats::Outcome;
use crate::table::{Endpoint, InFlight};

/// Pooled HTTP/1.1 connections to the pods: one pool per thread, so a connection is driven by
/// the thread whose requests use it (its task runs on that thread's event loop) and taking or
/// giving back a connection needs no lock.
#[derive(Clone)]
pub struct UpstreamClient {
    id: usize,
    connect_timeout: Duration,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A connection to a pod: hyper's handle, and the socket itself (a second descriptor of it), so
/// the kernel can be asked whether the pod has closed it. hyper's own task learns that only when
/// its thread next polls the socket, which on a busy machine can be after the next request was
/// already written to a pod that was dead.
struct Conn {
    sender: Sender,
    socket: socket2::Socket,
}

impl Conn {
    /// The pod closed or reset this connection, as the kernel knows now (not as hyper last saw
    /// it). An idle connection has nothing to read: a FIN reads as 0 bytes, a reset as an error,
    /// anything else as bytes the pod sent unasked; only "would block" means open. The socket is
    /// non-blocking (the descriptor shares tokio's file status), so this never waits.
    fn pod_closed(&self) -> bool {
        let mut byte = [std::mem::MaybeUninit::uninit(); 1];
        !matches!(self.socket.peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// A pool: which client, which pod.
type PoolKey = (usize, SocketAddr);

/// Idle connections kept per pod and thread.
const MAX_IDLE_PER_POD: usize = 256;
/// An idle connection older than this is closed rather than used.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Every this many give-backs, pods' pools are swept of closed and expired connections (and
/// pods that are gone).
const SWEEP_EVERY: u32 = 1024;

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

#[derive(Default)]
struct Idle {
    pools: HashMap<PoolKey, Vec<(Conn, Instant)>>,
    given_back: u32,
}

thread_local! {
    static IDLE: RefCell<Idle> = RefCell::new(Idle::default());
}

/// Why a request did not reach a pod or got no answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("could not connect: {0}")]
    Connect(std::io::Error),
    /// The connection failed before the request was written: the pod never saw it.
    #[error("the connection failed before the request was sent: {0}")]
    NotSent(hyper::Error),
    /// The pod reset the connection before any byte of an answer. A pod that read the whole
    /// request closes with a FIN when it dies (Linux resets a closed connection only when data
    /// sent to it was never read, or arrives after the close), so it never read this one.
    #[error("the pod reset the connection before reading the request: {0}")]
    Unread(hyper::Error),
    /// The pod may have received the request (and may have started it).
    #[error(transparent)]
    Http(hyper::Error),
}

impl UpstreamError {
    /// The pod could not be reached at all (nothing was sent).
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }

    /// The pod cannot have read the request: another pod may take it. A request the pod may
    /// have read is not sent again (one that crashes pods would crash every pod).
    pub fn is_unsent(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect(_) | UpstreamError::NotSent(_) | UpstreamError::Unread(_)
        )
    }
}

/// The error is the pod resetting the connection (or the write meeting a reset one).
fn is_reset(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            );
        }
        source = s.source();
    }
    false
}

impl UpstreamClient {
    pub fn new(connect_timeout: Duration) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        Self {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            connect_timeout,
        }
    }

    /// An idle connection to `key`'s pod that can take a request now, if there is one.
    async fn take_idle(key: PoolKey) -> Option<Conn> {
        loop {
            let (mut conn, since) =
                IDLE.with(|idle| idle.borrow_mut().pools.get_mut(&key)?.pop())?;
            // `ready` fails for a connection hyper has seen closed; `pod_closed` asks the kernel.
            if since.elapsed() < IDLE_TIMEOUT
                && conn.sender.ready().await.is_ok()
                && !conn.pod_closed()
            {
                return Some(conn);
            }
        }
    }

    fn give_back(key: PoolKey, conn: Conn) {
        if conn.sender.is_closed() {
            return;
        }
        IDLE.with(|idle| {
            let idle = &mut *idle.borrow_mut();
            let pool = idle.pools.entry(key).or_default();
            if pool.len() < MAX_IDLE_PER_POD {
                pool.push((conn, Instant::now()));
            }
            idle.given_back = idle.given_back.wrapping_add(1);
            if idle.given_back % SWEEP_EVERY == 0 {
                idle.pools.retain(|_, pool| {
                    pool.retain(|(c, since)| {
                        !c.sender.is_closed() && since.elapsed() < IDLE_TIMEOUT
                    });
                    !pool.is_empty()
                });
            }
        });
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Conn, UpstreamError> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(addr))
                .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(UpstreamError::Connect(e)),
                Err(_) => {
                    return Err(UpstreamError::Connect(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no connection after {:?}", self.connect_timeout),
                    )));
                }
            };
        // No Nagle delay between a request's head and body.
        let _ = stream.set_nodelay(true);
        // A pod whose network is torn down before its process closes its connections sends no
        // FIN and no RST: without these, a request waiting on it would wait forever. Keepalive
        // probes find such a connection dead when it has been quiet; the user timeout when what
        // was sent is never acknowledged. Either way the request fails and goes to another pod.
        let socket = socket2::SockRef::from(&stream);
        socket
            .set_tcp_keepalive(
                &socket2::TcpKeepalive::new()
                    .with_time(POD_KEEPALIVE_IDLE)
                    .with_interval(POD_KEEPALIVE_INTERVAL)
                    .with_retries(POD_KEEPALIVE_PROBES),
            )
            .and_then(|()| socket.set_tcp_user_timeout(Some(POD_DEAD_AFTER)))
            .map_err(UpstreamError::Connect)?;
        let socket = socket.try_clone().map_err(UpstreamError::Connect)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection to a pod ended");
            }
        });
        Ok(Conn { sender, socket })
    }

    /// Sends a request to the pod, on an idle connection when there is one. A request that an
    /// idle connection could not take (the pod had just closed it) goes on a new one. A pod that
    /// resets the connection before answering never read the request ([`UpstreamError::Unread`]).
    pub async fn send(
        &self,
        pod: &Endpoint,
        method: Method,
        path_and_query: PathAndQuery,
        headers: &HeaderMap,
        credential: Option<&HeaderValue>,
        body: Bytes,
    ) -> Result<Response<PodBody>, UpstreamError> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = Uri::from(path_and_query);
        let forwarded = request.headers_mut();
        forwarded.reserve(headers.len() + 1);
        // Made once per pod, not formatted for every request.
        forwarded.insert(header::HOST, pod.host.clone());
        // The client's credentials stay at the router: pods never see API keys or cookies.
        for (name, value) in headers {
            if !is_hop_by_hop(name)
                && name != header::HOST
                && name != header::CONTENT_LENGTH
                && name != header::AUTHORIZATION
                && name != header::COOKIE
            {
                forwarded.append(name, value.clone());
            }
        }
        // The router's own token for this deployment's pods, when pods require one.
        if let Some(credential) = credential {
            forwarded.insert(header::AUTHORIZATION, credential.clone());
        }
        let key = (self.id, pod.addr);
        loop {
            let (mut conn, reused) = match Self::take_idle(key).await {
                Some(conn) => (conn, true),
                None => (self.connect(pod.addr).await?, false),
            };
            match conn.sender.try_send_request(request).await {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    let body = PodBody {
                        body,
                        back: Some((key, conn)),
                    };
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => request = unsent,
                    Some(_) => return Err(UpstreamError::NotSent(e.into_error())),
                    None => {
                        let e = e.into_error();
                        return Err(if is_reset(&e) {
                            UpstreamError::Unread(e)
                        } else {
                            UpstreamError::Http(e)
                        });
                    }
                },
            }
        }
    }

    /// GET `path` from the pod as text (its `/metrics`), at most [`MAX_SCRAPE_BYTES`].
    pub async fn get_text(&self, pod: &Endpoint, path: &'static str) -> anyhow::Result<String> {
        let response = self
            .send(
                pod,
                Method::GET,
                PathAndQuery::from_static(path),
                &HeaderMap::new(),
                None,
                Bytes::new(),
            )
            .await?;
        anyhow::ensure!(response.status().is_success(), "{}", response.status());
        let body = http_body_util::Limited::new(response.into_body(), MAX_SCRAPE_BYTES)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

/// The most of a pod's `/metrics` read (a pod's exposition is a few KiB).
pub const MAX_SCRAPE_BYTES: usize = 1024 * 1024;

/// A pod's response body. Its connection goes back to the pool once the body has been read to
/// the end; dropped before that, the connection is closed (which cancels the generation in the
/// pod).
pub struct PodBody {
    body: Incoming,
    back: Option<(PoolKey, Conn)>,
}

impl hyper::body::Body for PodBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = std::task::ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            None => this.give_back(),
            Some(Ok(_)) if this.body.is_end_stream() => this.give_back(),
            Some(Ok(_)) => {}
            Some(Err(_)) => this.back = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl PodBody {
    fn give_back(&mut self) {
        if let Some((key, conn)) = self.back.take() {
            UpstreamClient::give_back(key, conn);
        }
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
    body: PodBody,
    started: Instant,
    last_output: Option<Instant>,
    pending: Vec<u8>,
    outcome: Outcome,
    tail: Option<Bytes>,
    done: bool,
    finish: Option<Finish>,
    _in_flight: InFlight,
    /// Events that carried output (one token each from ferry-server), and whether the pod sent
    /// `usage`: a stream whose client did not ask for usage is charged by these.
    outputs: u64,
    usage_seen: bool,
}

impl ObservedStream {
    /// `prompt_tokens`: the pod's count from its response header, if it sent one.
    pub fn new(
        body: PodBody,
        status: StatusCode,
        started: Instant,
        in_flight: InFlight,
        finish: Finish,
        prompt_tokens: Option<u64>,
    ) -> Self {
        Self {
            body,
            started,
            last_output: None,
            pending: Vec::new(),
            outcome: Outcome {
                status: status.as_u16(),
                failed: status.is_server_error(),
                prompt_tokens: prompt_tokens.unwrap_or(0),
                ..Default::default()
            },
            outputs: 0,
            usage_seen: false,
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
            // TTFT and inter-token gaps are timed on events that carry generated output only
            // (not the role chunk sent before prefill, nor the closing finish/usage chunk).
            if ferry_contract::ttft::data_carries_output(data) {
                match self.last_output {
                    None => self.outcome.ttft = Some(now - self.started),
                    Some(last) => self.outcome.inter_token.push(now - last),
                }
                self.last_output = Some(now);
                self.outputs += 1;
            }
            if find(data, b"\"usage\":{").is_some() {
                let usage = usage_of(data);
                self.outcome.prompt_tokens = usage.prompt_tokens;
                self.outcome.completion_tokens = usage.completion_tokens;
                self.usage_seen = true;
            }
        }
    }

    fn end(&mut self) {
        if let Some(finish) = self.finish.take() {
            if !self.usage_seen {
                self.outcome.completion_tokens = self.outputs;
            }
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
    let body = ferry_contract::error::OpenAiError {
        message: message.to_string(),
        kind: "server_error",
        param: None,
        code: "upstream_stream_failed",
    }
    .body();
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

    #[tokio::test]
    async fn connections_to_a_pod_are_reused_and_one_the_pod_closed_is_replaced() {
        let client = UpstreamClient::new(Duration::from_secs(1));

        let (addr, connections) = raw_pod(None).await;
        let pod = Endpoint::new("keeps", addr);
        for _ in 0..3 {
            // The answer read to its end puts the connection back at once.
            assert_eq!(client.get_text(&pod, "/metrics").await.unwrap(), "ok");
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
    async fn client_credentials_never_reach_a_pod_the_routers_token_does() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buffer = Vec::new();
            while find(&buffer, b"\r\n\r\n").is_none() {
                let mut chunk = [0u8; 1024];
                let n = stream.read(&mut chunk).await.unwrap();
                buffer.extend_from_slice(&chunk[..n]);
            }
            let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            stream.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8(buffer).unwrap().to_ascii_lowercase()
        });
        let client = UpstreamClient::new(Duration::from_secs(1));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk-secret"),
        );
        headers.insert(header::COOKIE, HeaderValue::from_static("session=1"));
        headers.insert("x-request-id", HeaderValue::from_static("abc"));
        let response = client
            .send(
                &Endpoint::new("pod", addr),
                Method::POST,
                PathAndQuery::from_static("/v1/chat/completions"),
                &headers,
                Some(&HeaderValue::from_static("Bearer pod-token")),
                Bytes::from_static(b"{}"),
            )
            .await
            .unwrap();
        let _ = response.into_body().collect().await;
        let request = seen.await.unwrap();
        assert!(request.contains("x-request-id: abc"), "{request}");
        assert!(
            request.contains("authorization: bearer pod-token"),
            "only the router's own token reaches the pod: {request}"
        );
        assert_eq!(request.matches("authorization").count(), 1, "{request}");
        assert!(!request.contains("sk-secret"), "{request}");
        assert!(!request.contains("cookie"), "{request}");
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
        let e = e.downcast::<UpstreamError>().unwrap();
        assert!(e.is_connect(), "{e}");
    }

    /// Reads one request head from a blocking socket (the pod threads below).
    fn read_head(stream: &mut std::net::TcpStream) {
        use std::io::Read;
        let mut buffer = Vec::new();
        while find(&buffer, b"\r\n\r\n").is_none() {
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "the client closed before a whole request");
            buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// A pod killed between two requests on a kept-alive connection: its kernel has closed the
    /// connection, but hyper's task for it has not run since (the blocking sleep keeps this
    /// thread's event loop from polling it, as a busy machine would). The next request must not
    /// be written to the dead connection: it goes on a new one.
    #[tokio::test]
    async fn a_kept_alive_connection_the_pod_closed_is_not_used_before_hyper_sees_it() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (die, dead) = std::sync::mpsc::channel::<()>();
        let pod = std::thread::spawn(move || {
            let mut first = listener.accept().unwrap().0;
            read_head(&mut first);
            first
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .unwrap();
            dead.recv().unwrap();
            drop(first); // the pod dies with the connection idle: a FIN
            let mut second = listener.accept().unwrap().0;
            read_head(&mut second);
            second
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nnew")
                .unwrap();
        });
        let client = UpstreamClient::new(Duration::from_secs(1));
        let endpoint = Endpoint::new("pod", addr);
        assert_eq!(client.get_text(&endpoint, "/metrics").await.unwrap(), "ok");
        die.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let answer = client.get_text(&endpoint, "/metrics").await;
        assert_eq!(
            answer.unwrap(),
            "new",
            "the request went to the dead connection"
        );
        pod.join().unwrap();
    }

    /// A pod that dies holding a request it has read closes with a FIN: it may have started it,
    /// so the request is not unsent (not sent elsewhere). One that dies before reading it resets
    /// the connection: unsent, another pod may take it.
    #[tokio::test]
    async fn a_pod_that_died_after_reading_is_a_failure_and_one_that_never_read_is_unsent() {
        let read_then_die = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let never_read = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (read_addr, unread_addr) = (
            read_then_die.local_addr().unwrap(),
            never_read.local_addr().unwrap(),
        );
        let pods = std::thread::spawn(move || {
            let mut stream = read_then_die.accept().unwrap().0;
            read_head(&mut stream);
            drop(stream);
            let stream = never_read.accept().unwrap().0;
            std::thread::sleep(Duration::from_millis(300)); // the request arrives, unread
            drop(stream);
        });
        let client = UpstreamClient::new(Duration::from_secs(1));
        let headers = HeaderMap::new();
        let (read_pod, unread_pod) = (
            Endpoint::new("read", read_addr),
            Endpoint::new("unread", unread_addr),
        );
        let send = |pod| {
            client.send(
                pod,
                Method::POST,
                PathAndQuery::from_static("/v1/chat/completions"),
                &headers,
                None,
                Bytes::from_static(b"{}"),
            )
        };
        let e = send(&read_pod)
            .await
            .err()
            .expect("an answer from a pod that died");
        assert!(!e.is_unsent(), "a request the pod had read: {e:?}");
        let e = send(&unread_pod)
            .await
            .err()
            .expect("an answer from a pod that died");
        assert!(e.is_unsent(), "a request the pod never read: {e:?}");
        assert!(matches!(e, UpstreamError::Unread(_)), "{e:?}");
        pods.join().unwrap();
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
