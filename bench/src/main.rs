use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ferry_bench::report::Sweep;
use ferry_bench::run::{self, Target, Workload};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "ferry-bench",
    version,
    about = "Concurrency sweeps against OpenAI-compatible endpoints"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sends `--requests-per-level` streamed chat completions at each concurrency level.
    Sweep(SweepArgs),
}

#[derive(clap::Args)]
struct SweepArgs {
    /// Endpoint base URL (`http://HOST:PORT`, with or without `/v1`), optionally named
    /// `NAME=URL`. Repeat it (or use --compare) to compare endpoints in one run.
    #[arg(long, required = true)]
    url: Vec<Target>,
    /// More endpoints to compare with the first `--url` (same as repeating `--url`).
    #[arg(long)]
    compare: Vec<Target>,
    /// The `model` of each request.
    #[arg(long)]
    model: String,
    /// Concurrency levels, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,16,32,64")]
    concurrency: Vec<usize>,
    /// Approximate prompt length in tokens (the actual count comes from the server's usage).
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Output tokens per request (`max_tokens`).
    #[arg(long, default_value_t = 128)]
    output_tokens: u32,
    /// Requests at each level, per endpoint.
    #[arg(long, default_value_t = 64)]
    requests_per_level: usize,
    /// At least this many requests per client at each level (a level sends the larger of
    /// `--requests-per-level` and rounds x concurrency), so high levels are measured as long as
    /// low ones without making concurrency 1 take minutes.
    #[arg(long, default_value_t = 0)]
    rounds: usize,
    /// Do not send `ignore_eos`/`min_tokens` (for servers without Ferry's fixed-length
    /// extension; the table then reports the lengths the server chose).
    #[arg(long)]
    no_fixed_length: bool,
    /// Requests sent to each endpoint before measuring (model warm-up).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// `Authorization: Bearer` key.
    #[arg(long, env = "FERRY_BENCH_API_KEY")]
    api_key: Option<String>,
    /// Per-request timeout.
    #[arg(long, default_value_t = 600)]
    timeout_seconds: u64,
    /// Directory for results.csv, results.json, results.md and the PNG plots.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Command::Sweep(args) = Cli::parse().command;
    let mut targets = args.url;
    targets.extend(args.compare);
    for (i, t) in targets.iter().enumerate() {
        anyhow::ensure!(
            !targets[..i].iter().any(|o| o.name == t.name),
            "two endpoints are named {}: name them with NAME=URL",
            t.name
        );
    }
    let work = Workload {
        model: args.model,
        prompt_tokens: args.prompt_tokens,
        output_tokens: args.output_tokens,
        fixed_length: !args.no_fixed_length,
        api_key: args.api_key,
        timeout: Duration::from_secs(args.timeout_seconds),
    };
    // A fresh connection per request: reusing a kept-alive connection the server is closing
    // fails the request on the client's side, which would count against that server.
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(0)
        .build()?;

    for target in &targets {
        for n in 0..args.warmup {
            if let run::Outcome::Failed(e) = run::request(&http, target, &work, n).await {
                anyhow::bail!(
                    "{} ({}) fails its warm-up request: {e}",
                    target.name,
                    target.url
                );
            }
        }
    }

    let requests = |c: usize| run::requests_at(args.requests_per_level, args.rounds, c);
    let total =
        (args.concurrency.iter().map(|&c| requests(c)).sum::<usize>() * targets.len()) as u64;
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} requests  {msg}")?
            .progress_chars("=> "),
    );
    let mut levels = Vec::new();
    for &c in &args.concurrency {
        for target in &targets {
            bar.set_message(format!("{} at concurrency {c}", target.name));
            let done = || bar.inc(1);
            levels.push(run::level(&http, target, &work, c, requests(c), &done).await);
        }
    }
    bar.finish_and_clear();

    let sweep = Sweep {
        targets,
        workload: work,
        levels,
    };
    println!("{}", sweep.table());
    if let Some(ratios) = sweep.ratios() {
        println!("{ratios}");
    }
    for level in sweep.levels.iter().filter(|l| !l.error_samples.is_empty()) {
        eprintln!(
            "{} at {}: {:?}",
            level.target, level.concurrency, level.error_samples
        );
    }
    for file in sweep.write(&args.out)? {
        println!("wrote {file}");
    }
    Ok(())
}
