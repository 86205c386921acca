//! What the HTTP server costs: ferry-server over HTTP (SSE streaming, admission, metrics) against
//! the same mistral.rs engine driven in-process with no HTTP, same model (SmolLM2-135M Q4_1),
//! same prompts, at concurrency 1, 4 and 8. Prints output tokens/s, TTFT and the ratio.
//!
//! Both sides drive one and the same engine (the server is handed the engine the bare side
//! uses), in turns: for each level, ROUNDS rounds of bare then HTTP, so that machine noise and
//! drift hit both alike. The HTTP client reads the stream the way a light client does (first
//! content for TTFT, `usage` at the end) so that its own JSON work does not count against the
//! server on a machine whose cores the engine already fills.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use ferry_server::Args;
use ferry_server::engine::{Engine, Event, Generation, Input};
use futures::StreamExt;

const OUTPUT_TOKENS: usize = 64;
/// Rounds per level (each: bare, then HTTP) and requests per round (× concurrency).
const ROUNDS: usize = 3;
const REQUESTS_PER_SLOT: usize = 3;
const LEVELS: &[usize] = &[1, 4, 8];
const PROMPTS: &[&str] = &[
    "Explain in a few sentences why the sky looks blue during the day and red at sunset.",
    "Write a short note to a colleague asking to move our meeting from Tuesday to Thursday.",
    "List three practical tips for keeping a small vegetable garden healthy in summer.",
    "Describe what a Kubernetes pod is to someone who has only used virtual machines.",
];

struct Level {
    tokens: usize,
    seconds: f64,
    ttft: Vec<f64>,
}

impl Level {
    fn tok_s(&self) -> f64 {
        self.tokens as f64 / self.seconds
    }
    fn ttft_p50(&self) -> f64 {
        let mut t = self.ttft.clone();
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    }
}

fn args(port: &str) -> Args {
    let dir = std::env::var_os("FERRY_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/ferry/models")
        })
        .join("smollm2");
    Args::parse_from([
        "ferry-server",
        "--model-path",
        dir.to_str().unwrap(),
        "--gguf-file",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "--served-model-name",
        "smollm2",
        "--max-num-seqs",
        "8",
        "--host",
        "127.0.0.1",
        "--port",
        port,
        "--log-format",
        "text",
    ])
}

fn generation(i: usize) -> Generation {
    let input = Input::Chat(vec![("user".into(), PROMPTS[i % PROMPTS.len()].into())]);
    Generation {
        ignore_eos: true,
        ..Generation::greedy(input, OUTPUT_TOKENS)
    }
}

async fn bare(engine: &Engine, concurrency: usize) -> Level {
    let start = Instant::now();
    let runs = (0..concurrency * REQUESTS_PER_SLOT).map(|i| async move {
        let t0 = Instant::now();
        let g = generation(i);
        let prompt = engine.count_prompt_tokens(&g.input).await.unwrap();
        let mut events = engine.generate(g, prompt, ()).await.unwrap();
        let mut ttft = None;
        let mut tokens = 0;
        while let Some(e) = events.recv().await {
            match e {
                Event::Delta { .. } => {
                    ttft.get_or_insert(t0.elapsed().as_secs_f64());
                }
                Event::Finish { usage, .. } => {
                    tokens = usage.unwrap().completion_tokens;
                    break;
                }
                Event::Error(e) => panic!("{e}"),
            }
        }
        (tokens, ttft.unwrap())
    });
    finish(start, limited(runs, concurrency).await)
}

async fn http(client: &reqwest::Client, base: &str, concurrency: usize) -> Level {
    let start = Instant::now();
    let runs = (0..concurrency * REQUESTS_PER_SLOT).map(|i| async move {
        let t0 = Instant::now();
        let body = serde_json::json!({"model": "smollm2", "stream": true, "stream_options": {"include_usage": true},
            "max_tokens": OUTPUT_TOKENS, "temperature": 0, "ignore_eos": true,
            "messages": [{"role": "user", "content": PROMPTS[i % PROMPTS.len()]}]});
        let r = client.post(format!("{base}/v1/chat/completions")).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let mut stream = r.bytes_stream();
        let mut buf = Vec::new();
        let mut ttft = None;
        let mut tokens = 0;
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk.unwrap());
            while let Some(end) = find(&buf, b"\n\n") {
                let event: Vec<u8> = buf.drain(..end + 2).collect();
                if ttft.is_none() && find(&event, b"\"content\":\"").is_some_and(|at| {
                    event.get(at + 11).is_some_and(|b| *b != b'"')
                }) {
                    ttft = Some(t0.elapsed().as_secs_f64());
                }
                if find(&event, b"\"completion_tokens\"").is_some() {
                    let data = event.strip_prefix(b"data: ").unwrap().trim_ascii();
                    let v: serde_json::Value = serde_json::from_slice(data).unwrap();
                    tokens = v["usage"]["completion_tokens"].as_u64().unwrap() as usize;
                }
            }
        }
        (tokens, ttft.unwrap())
    });
    finish(start, limited(runs, concurrency).await)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn limited<F: std::future::Future<Output = (usize, f64)>>(
    runs: impl Iterator<Item = F>,
    n: usize,
) -> Vec<(usize, f64)> {
    futures::stream::iter(runs)
        .buffer_unordered(n)
        .collect()
        .await
}

fn finish(start: Instant, results: Vec<(usize, f64)>) -> Level {
    Level {
        tokens: results.iter().map(|r| r.0).sum(),
        seconds: start.elapsed().as_secs_f64(),
        ttft: results.iter().map(|r| r.1).collect(),
    }
}

fn memory_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Sums of several rounds.
fn total(levels: &[Level]) -> Level {
    Level {
        tokens: levels.iter().map(|l| l.tokens).sum(),
        seconds: levels.iter().map(|l| l.seconds).sum(),
        ttft: levels.iter().flat_map(|l| l.ttft.iter().copied()).collect(),
    }
}

#[tokio::main]
async fn main() {
    let engine = std::sync::Arc::new(
        Engine::load(&args("0"))
            .await
            .expect("SmolLM2 loads (run e2e/models/fetch.sh)"),
    );
    let engine_rss = memory_mib("VmRSS:");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let served = engine.clone();
    tokio::spawn(ferry_server::serve_engine(
        args("0"),
        listener,
        std::future::pending(),
        async move { Ok(served) },
    ));
    let client = reqwest::Client::new();
    for _ in 0..600 {
        if client
            .get(format!("{base}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Warm-up of both paths.
    bare(&engine, 1).await;
    http(&client, &base, 1).await;

    println!(
        "\nSmolLM2-135M Q4_1, {OUTPUT_TOKENS} output tokens, greedy, {} CPUs, {ROUNDS} rounds of \
         {REQUESTS_PER_SLOT} x concurrency requests per side and level, taken in turns",
        std::thread::available_parallelism().unwrap()
    );
    println!(
        "| concurrency | bare engine tok/s | ferry-server tok/s | ratio | rounds' ratios | bare TTFT p50 ms | server TTFT p50 ms |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &c in LEVELS {
        let (mut b, mut h) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            b.push(bare(&engine, c).await);
            h.push(http(&client, &base, c).await);
        }
        let rounds: Vec<String> = b
            .iter()
            .zip(&h)
            .map(|(b, h)| format!("{:.3}", h.tok_s() / b.tok_s()))
            .collect();
        let (b, h) = (total(&b), total(&h));
        println!(
            "| {c} | {:.1} | {:.1} | {:.3} | {} | {:.0} | {:.0} |",
            b.tok_s(),
            h.tok_s(),
            h.tok_s() / b.tok_s(),
            rounds.join(" "),
            b.ttft_p50() * 1e3,
            h.ttft_p50() * 1e3
        );
    }
    println!(
        "RSS with the engine loaded: {engine_rss:.0} MiB; peak RSS of the process (engine, server \
         and client): {:.0} MiB",
        memory_mib("VmHWM:")
    );
}
