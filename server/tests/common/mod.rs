//! Starts real `ferry-server`s in-process on port 0, with real models from the cache that
//! `e2e/models/fetch.sh` fills.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ferry_server::Args;
use tokio::sync::oneshot;

pub fn models_dir() -> PathBuf {
    let dir = std::env::var_os("FERRY_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("FERRY_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/ferry")
                });
            cache.join("models")
        });
    assert!(
        dir.join("tiny-gguf/tiny-q8_0.gguf").exists(),
        "no test models in {}: run `bash e2e/models/fetch.sh` (e2e/test.sh does)",
        dir.display()
    );
    dir
}

pub struct Server {
    pub base: String,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    pub handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// The tiny 2-layer Llama (GGUF Q8_0), ~5k tokens/s on a CPU.
pub async fn tiny(extra: &[&str]) -> Server {
    let dir = models_dir().join("tiny-gguf");
    let mut args = vec![
        "--model-path",
        dir.to_str().unwrap(),
        "--gguf-file",
        "tiny-q8_0.gguf",
        "--served-model-name",
        "tiny",
    ];
    args.extend_from_slice(extra);
    start(&args).await
}

/// SmolLM2-135M-Instruct Q4_1, the real default model.
pub async fn smollm2(extra: &[&str]) -> Server {
    let dir = models_dir().join("smollm2");
    let mut args = vec![
        "--model-path",
        dir.to_str().unwrap(),
        "--gguf-file",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "--served-model-name",
        "smollm2",
    ];
    args.extend_from_slice(extra);
    start(&args).await
}

pub async fn start(flags: &[&str]) -> Server {
    let mut argv = vec![
        "ferry-server",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--model-version",
        "v-test",
    ];
    argv.extend_from_slice(flags);
    let args = Args::parse_from(argv);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(ferry_server::serve(args, listener, async move {
        let _ = rx.await;
    }));
    let client = reqwest::Client::new();
    let server = Server {
        base,
        client,
        shutdown: Some(tx),
        handle,
    };
    server.wait_ready().await;
    server
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn wait_ready(&self) {
        for _ in 0..600 {
            if let Ok(r) = self.client.get(self.url("/ready")).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("server at {} never became ready", self.base);
    }

    /// Like SIGTERM.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Opens a chat stream of exactly `tokens` tokens (`ignore_eos`); the body is left unread.
    pub async fn long_stream(&self, tokens: u32) -> reqwest::Response {
        let extra = serde_json::json!({"stream": true, "max_tokens": tokens, "ignore_eos": true});
        self.post("/v1/chat/completions", chat_body("a", extra))
            .await
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one sample line of /metrics, e.g. `ferry_queue_depth{...}`.
    pub async fn metric(&self, name: &str, label_filter: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .filter(|l| {
                l.starts_with(name)
                    && l[name.len()..].starts_with(['{', ' '])
                    && l.contains(label_filter)
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    }
}

/// `data:` payloads of an SSE body.
pub fn sse_events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(String::from)
        .collect()
}

pub fn chat_body(content: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut body =
        serde_json::json!({"model": "tiny", "messages": [{"role": "user", "content": content}]});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}
