//! The model server: an OpenAI-compatible HTTP API on mistral.rs, with admission control and metrics.
//!
//! Every generation passes through [`admission`] (bounded queue, 429 beyond it) and is measured
//! in [`metrics`]; `ferry_queue_depth` (waiting + running requests) is what the operator's
//! autoscaler reads.

pub mod admission;
pub mod config;
pub mod engine;
pub mod error;
mod events;
pub mod fetch;
pub mod http;
mod listen;
pub mod metrics;
pub mod openai;
mod respond;
mod sampling;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::net::TcpListener;
use tracing::{error, info};

pub use config::Args;

impl Args {
    /// Parses flags and environment, serves until SIGTERM/SIGINT and a drain. `ferry-server
    /// fetch ...` downloads weights instead (see [`fetch`]).
    pub fn parse_and_run() -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        if std::env::args().nth(1).as_deref() == Some("fetch") {
            let fetch = fetch::FetchArgs::parse_from(std::env::args().skip(1));
            init_logging(config::LogFormat::Json);
            return runtime.block_on(fetch.run());
        }
        let args = Args::parse();
        init_logging(args.log_format);
        runtime.block_on(run(args))
    }
}

fn init_logging(format: config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,mistralrs_core=warn,mistralrs=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        config::LogFormat::Json => builder.json().flatten_event(true).init(),
        config::LogFormat::Text => builder.init(),
    }
}

/// How long a stopping server keeps its port open at least (within `--drain-seconds`).
const UNROUTE_GRACE: Duration = Duration::from_secs(2);

/// Binds the configured address and serves until SIGTERM/SIGINT, then drains.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind((args.host.as_str(), args.port)).await?;
    serve(args, listener, shutdown_signal()).await
}

/// Loads the model in the background (`/ready` says when) and serves on `listener` until
/// `shutdown` resolves; then `/ready` turns 503, new requests get 503, and in-flight requests
/// have `--drain-seconds` to finish.
pub async fn serve(
    args: Args,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let load_args = args.clone();
    let load = async move {
        tokio::time::sleep(Duration::from_millis(load_args.fault_load_delay_ms)).await;
        engine::Engine::load(&load_args).await.map(Arc::new)
    };
    serve_engine(args, listener, shutdown, load).await
}

/// [`serve`] with the engine `load` gives instead of one loaded from `args` (the overhead
/// benchmark drives the very engine it serves, directly and over HTTP, in turns).
pub async fn serve_engine(
    args: Args,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    load: impl std::future::Future<Output = anyhow::Result<Arc<engine::Engine>>> + Send + 'static,
) -> anyhow::Result<()> {
    let state = http::AppState::new(&args)?;
    info!(address = %listener.local_addr()?, model = %args.served_model_name, version = %args.model_version, "listening");

    let loader = state.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        match load.await {
            Ok(engine) => {
                if let Err(e) = http::warm_up(&engine).await {
                    error!(error = %e, "warm-up generation failed");
                    std::process::exit(1);
                }
                loader.set_engine(engine);
                info!(
                    seconds = started.elapsed().as_secs_f64(),
                    "model loaded and warmed up; ready"
                );
            }
            Err(e) => {
                let message = format!("{e:#}");
                error!(
                    error = error::without_backtrace(&message),
                    "model failed to load"
                );
                std::process::exit(1);
            }
        }
    });

    let drain = Duration::from_secs(args.drain_seconds);
    let admission = state.admission().clone();
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let graceful = async move {
        shutdown.await;
        info!(
            drain_seconds = drain.as_secs(),
            "shutting down: not ready, draining in-flight requests"
        );
        admission.close();
        // Even when idle, the pod keeps answering (503) a moment: routers learn of its deletion
        // over a watch, and a request sent before then is better refused with a 503 they can take
        // elsewhere than by a closed port.
        let (idle, ()) = tokio::join!(
            admission.wait_idle(drain),
            tokio::time::sleep(UNROUTE_GRACE.min(drain))
        );
        info!(idle, "drain finished");
        let _ = drained_tx.send(());
    };
    // After the drain, connections still open (a stream to a slow reader) get one more second.
    let hard_stop = async {
        if drained_rx.await.is_ok() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let limits = listen::Limits {
        max_connections: args.max_connections,
        header_timeout: Duration::from_secs(args.header_timeout_seconds.max(1)),
        stalled_client_timeout: Duration::from_secs(args.stalled_client_timeout_seconds.max(1)),
    };
    listen::serve(listener, http::router(state), limits, graceful, hard_stop).await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
