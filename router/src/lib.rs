//! The in-cluster OpenAI endpoint: routes by model, splits traffic between versions (weighted for
//! canaries, sticky for A/B experiments), picks the least-loaded pod, and records per-version
//! latency, errors and tokens for the operator's canary analysis.

pub mod access;
pub mod discovery;
pub mod error;
pub mod http;
pub mod idempotency;
pub mod limits;
pub mod pod_token;
pub mod proxy;
pub mod stats;
pub mod table;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use hyper_util::rt::TokioIo;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

use crate::access::{Access, Limits};
use crate::http::{App, Settings};
use crate::idempotency::IdempotencyCache;
use crate::proxy::UpstreamClient;
use crate::table::Table;

#[derive(Parser, Debug, Clone)]
#[command(name = "ferry-router", version, about)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = "FERRY_HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Port to listen on.
    #[arg(long, env = "FERRY_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Only route to LLMDeployments in this namespace (default: all namespaces).
    #[arg(long, env = "FERRY_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "FERRY_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Seconds a request waits for a ready pod (cold start, scale from zero) before 503.
    #[arg(long, env = "FERRY_HOLD_SECONDS", default_value_t = 30)]
    pub hold_seconds: u64,
    /// Other pods of the same version tried when a pod fails before answering.
    #[arg(long, env = "FERRY_RETRIES", default_value_t = 2)]
    pub retries: usize,
    /// Seconds a pod that refused a connection is skipped.
    #[arg(long, env = "FERRY_EJECT_SECONDS", default_value_t = 5)]
    pub eject_seconds: u64,
    /// Milliseconds allowed to open a connection to a pod.
    #[arg(long, env = "FERRY_CONNECT_TIMEOUT_MS", default_value_t = 2000)]
    pub connect_timeout_ms: u64,
    /// How often each pod's `ferry_queue_depth` is read, in milliseconds (0: never).
    #[arg(long, env = "FERRY_SCRAPE_INTERVAL_MS", default_value_t = 1000)]
    pub scrape_interval_ms: u64,
    /// Secret whose data entries are the accepted API keys (entry name = key id). Without it the
    /// router accepts every request.
    #[arg(long, env = "FERRY_API_KEYS_SECRET")]
    pub api_keys_secret: Option<String>,
    /// Namespace of the API key Secret and of the pod token Secret (Ferry's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub api_keys_namespace: String,
    /// Secret (in that namespace, created by the operator's `--pod-token-secret`) holding the
    /// master of the tokens the router shows model pods. Set it whenever the operator's is set:
    /// its pods answer only requests with the token. Until it is read, `/ready` is 503 and so
    /// are requests.
    #[arg(long, env = "FERRY_POD_TOKEN_SECRET")]
    pub pod_token_secret: Option<String>,
    /// Requests per second allowed per API key (0: no limit).
    #[arg(long, env = "FERRY_KEY_REQUESTS_PER_SECOND", default_value_t = 0.0)]
    pub key_requests_per_second: f64,
    /// Prompt + completion tokens per minute allowed per API key (0: no limit).
    #[arg(long, env = "FERRY_KEY_TOKENS_PER_MINUTE", default_value_t = 0.0)]
    pub key_tokens_per_minute: f64,
    /// Seconds a response is kept for repeats with the same `Idempotency-Key`.
    #[arg(long, env = "FERRY_IDEMPOTENCY_TTL_SECONDS", default_value_t = 600)]
    pub idempotency_ttl_seconds: u64,
    /// Most responses kept for `Idempotency-Key` repeats (oldest dropped first).
    #[arg(long, env = "FERRY_IDEMPOTENCY_CAPACITY", default_value_t = 10_000)]
    pub idempotency_capacity: usize,
    /// Most bytes of responses kept for `Idempotency-Key` repeats (oldest dropped first).
    #[arg(long, env = "FERRY_IDEMPOTENCY_MAX_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub idempotency_max_bytes: usize,
    /// Seconds a repeat waits for the first request with its key to finish (409 after).
    #[arg(long, env = "FERRY_IDEMPOTENCY_WAIT_SECONDS", default_value_t = 120)]
    pub idempotency_wait_seconds: u64,
    /// Seconds a client has to send a request's headers, and that an idle keep-alive connection
    /// stays open waiting for the next request.
    #[arg(long, env = "FERRY_HEADER_TIMEOUT_SECONDS", default_value_t = 10)]
    pub header_timeout_seconds: u64,
    /// Seconds a client has to send a request's whole body (408 after).
    #[arg(long, env = "FERRY_BODY_TIMEOUT_SECONDS", default_value_t = 30)]
    pub body_timeout_seconds: u64,
    /// Open client connections per router process; beyond it new ones are closed at once.
    #[arg(long, env = "FERRY_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Requests handled at once (streams count until they end); beyond it, 503 + Retry-After.
    #[arg(long, env = "FERRY_MAX_IN_FLIGHT", default_value_t = 2048)]
    pub max_in_flight: usize,
    /// Requests waiting for a ready pod at once; beyond it, 503 + Retry-After at once.
    #[arg(long, env = "FERRY_MAX_HELD", default_value_t = 512)]
    pub max_held: usize,
    /// Request-body bytes the router holds in memory at once; beyond it, 503 + Retry-After.
    #[arg(long, env = "FERRY_MAX_BUFFERED_BODY_BYTES", default_value_t = 128 * 1024 * 1024)]
    pub max_buffered_body_bytes: usize,
    /// Threads serving requests, each with its own event loop (default: one per CPU).
    #[arg(long, env = "FERRY_THREADS")]
    pub threads: Option<usize>,
    /// Log format.
    #[arg(long, env = "FERRY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

impl Args {
    pub fn settings(&self) -> Settings {
        Settings {
            max_body_bytes: self.max_body_bytes,
            hold: Duration::from_secs(self.hold_seconds),
            retries: self.retries,
            eject: Duration::from_secs(self.eject_seconds),
            header_timeout: Duration::from_secs(self.header_timeout_seconds.max(1)),
            body_timeout: Duration::from_secs(self.body_timeout_seconds.max(1)),
            caps: limits::Caps::new(
                self.max_connections,
                self.max_in_flight,
                self.max_held,
                self.max_buffered_body_bytes,
            ),
            threads: self
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            requests_per_second: self.key_requests_per_second,
            tokens_per_minute: self.key_tokens_per_minute,
        }
    }

    /// The request path's shared state, reading routes from `table`.
    pub fn app(&self, table: watch::Receiver<Arc<Table>>) -> anyhow::Result<Arc<App>> {
        let access = Arc::new(Access::new(None, self.limits()));
        Ok(Arc::new(App::new(
            self.settings(),
            table,
            UpstreamClient::new(Duration::from_millis(self.connect_timeout_ms)),
            access,
            IdempotencyCache::new(
                Duration::from_secs(self.idempotency_ttl_seconds),
                self.idempotency_capacity,
                self.idempotency_max_bytes,
                Duration::from_secs(self.idempotency_wait_seconds),
            ),
            Registry::new(),
        )?))
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Connects to the cluster, starts discovery (and the API key watch), and serves until SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let client = kube::Client::try_default().await?;
    let listener = TcpListener::bind((args.host.as_str(), args.port)).await?;
    info!(address = %listener.local_addr()?, "ferry-router listening");
    serve_cluster(args, client, listener, shutdown_signal()).await
}

/// Serves on `listener` with routes discovered through `client`, until `shutdown` resolves.
pub async fn serve_cluster(
    args: Args,
    client: kube::Client,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (table_tx, table_rx) = watch::channel(Arc::new(Table::default()));
    let app = args.app(table_rx.clone())?;
    if let Some(secret) = &args.api_keys_secret {
        // Fail closed until the Secret is read.
        app.access.set_keys(Default::default());
        tokio::spawn(access::watch_secret(
            client.clone(),
            args.api_keys_namespace.clone(),
            secret.clone(),
            app.access.clone(),
        ));
    }
    if let Some(secret) = &args.pod_token_secret {
        app.pod_token.expect();
        tokio::spawn(pod_token::watch(
            client.clone(),
            args.api_keys_namespace.clone(),
            secret.clone(),
            app.pod_token.clone(),
        ));
    }
    let discovery = tokio::spawn(discovery::run(
        client,
        args.watch_namespace.clone(),
        table_tx,
    ));
    if args.scrape_interval_ms > 0 {
        tokio::spawn(discovery::scrape_queue_depths(
            table_rx,
            app.client.clone(),
            Duration::from_millis(args.scrape_interval_ms),
        ));
    }
    let served = serve(app, listener, shutdown).await;
    discovery.abort();
    served
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets open requests finish.
///
/// Thread per core: `threads` OS threads, each with a single-threaded runtime accepting from the
/// same socket, so a request, its connection to the pod and the pod's answer are handled on one
/// thread without cross-thread wake-ups (the way nginx's workers run).
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = listener.into_std()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = Vec::new();
    for i in 0..app.settings.threads.max(1) {
        let listener = listener.try_clone()?;
        let app = app.clone();
        let stop = stop_rx.clone();
        let worker = std::thread::Builder::new()
            .name(format!("ferry-router-{i}"))
            .spawn(move || -> anyhow::Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener)?;
                    serve_thread(listener, app, stop).await
                })
            })?;
        workers.push(worker);
    }
    shutdown.await;
    stop_tx.send_replace(true);
    tokio::task::spawn_blocking(move || {
        for worker in workers {
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("a router thread panicked"))??;
        }
        Ok(())
    })
    .await?
}

/// One thread's accept loop: HTTP/1.1 connections (what OpenAI clients speak), each served until
/// `stop`, then allowed to finish the request in progress.
async fn serve_thread(
    listener: TcpListener,
    app: Arc<App>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let service = http::service(app.clone());
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Past the connection cap, a new connection is closed at once.
                let Some(permit) = limits::Caps::take(&app.settings.caps.connections) else {
                    app.refuse_connection();
                    drop(stream);
                    continue;
                };
                // No Nagle delay between the small writes of an SSE stream.
                let _ = stream.set_nodelay(true);
                let service = service.clone();
                let mut stop = stop.clone();
                let header_timeout = app.settings.header_timeout;
                connections.spawn(async move {
                    let _permit = permit;
                    // The header timeout also ends keep-alive connections idle that long.
                    let connection = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(header_timeout)
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(connection);
                    tokio::select! {
                        _ = connection.as_mut() => {}
                        () = stopped(&mut stop) => {
                            connection.as_mut().graceful_shutdown();
                            let _ = connection.await;
                        }
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            // Stop when told, or when the caller is gone.
            () = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Resolves once `stop` says so or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
