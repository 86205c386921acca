//! Driving an endpoint: one streamed request, one concurrency level, a sweep over targets.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;

use crate::stats::{Distribution, StreamTally};

/// One OpenAI-compatible endpoint under test.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    /// Base URL ending before `/v1`, e.g. `http://127.0.0.1:8000`.
    pub url: String,
}

impl std::str::FromStr for Target {
    type Err = String;
    /// `NAME=URL` or a bare URL (named by its host and port).
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, url) = match s.split_once('=') {
            Some((name, url)) if !name.contains('/') => (name.to_string(), url),
            _ => (
                s.trim_start_matches("http://")
                    .trim_start_matches("https://")
                    .trim_end_matches('/')
                    .to_string(),
                s,
            ),
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("{s}: the URL must start with http:// or https://"));
        }
        let url = url
            .trim_end_matches('/')
            .trim_end_matches("/v1")
            .to_string();
        Ok(Target { name, url })
    }
}

/// What each request asks for.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    pub model: String,
    pub prompt_tokens: usize,
    pub output_tokens: u32,
    /// Send Ferry's `ignore_eos`/`min_tokens` so every answer has exactly `output_tokens`.
    pub fixed_length: bool,
    pub api_key: Option<String>,
    #[serde(skip)]
    pub timeout: Duration,
}

impl Workload {
    /// A prompt of about `prompt_tokens` tokens: " hello" is one token for BPE vocabularies
    /// (the actual count is reported from the server's usage).
    pub fn prompt(&self, request: usize) -> String {
        // A distinct first word per request keeps prefix caches from answering for free.
        format!(
            "{request}{}",
            " hello".repeat(self.prompt_tokens.saturating_sub(1))
        )
    }

    fn body(&self, request: usize) -> serde_json::Value {
        let mut body = serde_json::json!({
            "model": self.model,
            "messages": [{"role": "user", "content": self.prompt(request)}],
            "max_tokens": self.output_tokens,
            "temperature": 0.0,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if self.fixed_length {
            body["ignore_eos"] = true.into();
            body["min_tokens"] = self.output_tokens.into();
        }
        body
    }
}

/// The outcome of one request.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The stream ended (complete or not); `seconds` from send to the last byte.
    Streamed { tally: StreamTally, seconds: f64 },
    /// Refused (status) or failed before a stream began.
    Failed(String),
}

/// Sends one streamed chat completion and reads it to the end.
pub async fn request(
    http: &reqwest::Client,
    target: &Target,
    work: &Workload,
    n: usize,
) -> Outcome {
    let started = Instant::now();
    let mut builder = http
        .post(format!("{}/v1/chat/completions", target.url))
        .timeout(work.timeout)
        .json(&work.body(n));
    if let Some(key) = &work.api_key {
        builder = builder.bearer_auth(key);
    }
    let response = match builder.send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(format!("send: {e}")),
    };
    if !response.status().is_success() {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        return Outcome::Failed(format!(
            "{status}: {}",
            text.chars().take(200).collect::<String>()
        ));
    }
    let mut tally = StreamTally::default();
    let mut pending = Vec::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let at = started.elapsed().as_secs_f64();
        match chunk {
            Ok(bytes) => {
                pending.extend_from_slice(&bytes);
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    tally.line(String::from_utf8_lossy(&line).trim_end(), at);
                }
            }
            Err(e) => {
                tally.error.get_or_insert_with(|| format!("stream: {e}"));
                break;
            }
        }
    }
    Outcome::Streamed {
        tally,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// One target at one concurrency level.
#[derive(Debug, Clone, Serialize)]
pub struct Level {
    pub target: String,
    pub concurrency: usize,
    pub requests: usize,
    pub successes: usize,
    pub errors: usize,
    pub incomplete: usize,
    pub seconds: f64,
    pub output_tokens_per_second: f64,
    pub requests_per_second: f64,
    pub mean_prompt_tokens: f64,
    pub mean_output_tokens: f64,
    /// Milliseconds.
    pub ttft_ms: Option<Distribution>,
    pub inter_token_ms: Option<Distribution>,
    pub e2e_ms: Option<Distribution>,
    /// A few of the errors, for the reader.
    pub error_samples: Vec<String>,
}

impl Level {
    /// Summarizes the outcomes of a level that took `seconds` of wall time.
    pub fn summarize(target: &str, concurrency: usize, outcomes: &[Outcome], seconds: f64) -> Self {
        let (mut ttft, mut itl, mut e2e) = (Vec::new(), Vec::new(), Vec::new());
        let (mut successes, mut errors, mut incomplete) = (0, 0, 0);
        let (mut tokens, mut prompt, mut prompts) = (0u64, 0u64, 0u64);
        let mut error_samples = Vec::new();
        for outcome in outcomes {
            match outcome {
                Outcome::Failed(e) => {
                    errors += 1;
                    if error_samples.len() < 3 {
                        error_samples.push(e.clone());
                    }
                }
                Outcome::Streamed { tally, seconds } if tally.complete() => {
                    successes += 1;
                    tokens += tally.output_tokens();
                    if let Some(p) = tally.prompt_tokens {
                        prompt += p;
                        prompts += 1;
                    }
                    ttft.extend(tally.ttft().map(|s| s * 1e3));
                    itl.extend(tally.inter_token().map(|s| s * 1e3));
                    e2e.push(seconds * 1e3);
                }
                Outcome::Streamed { tally, .. } => {
                    incomplete += 1;
                    if error_samples.len() < 3 {
                        error_samples.push(tally.error.clone().unwrap_or_else(|| {
                            "stream ended without [DONE] or finish_reason".into()
                        }));
                    }
                }
            }
        }
        let per_second = |n: f64| if seconds > 0.0 { n / seconds } else { 0.0 };
        Level {
            target: target.to_string(),
            concurrency,
            requests: outcomes.len(),
            successes,
            errors,
            incomplete,
            seconds,
            output_tokens_per_second: per_second(tokens as f64),
            requests_per_second: per_second(successes as f64),
            mean_prompt_tokens: if prompts > 0 {
                prompt as f64 / prompts as f64
            } else {
                0.0
            },
            mean_output_tokens: if successes > 0 {
                tokens as f64 / successes as f64
            } else {
                0.0
            },
            ttft_ms: Distribution::of(&ttft),
            inter_token_ms: Distribution::of(&itl),
            e2e_ms: Distribution::of(&e2e),
            error_samples,
        }
    }
}

/// Requests sent at one level: at least `per_level`, and at least `rounds` per client.
pub fn requests_at(per_level: usize, rounds: usize, concurrency: usize) -> usize {
    per_level.max(rounds * concurrency)
}

/// Runs `requests` requests against `target`, `concurrency` at a time; `done` is called after
/// each (for the progress bar).
pub async fn level(
    http: &reqwest::Client,
    target: &Target,
    work: &Workload,
    concurrency: usize,
    requests: usize,
    done: &(dyn Fn() + Sync),
) -> Level {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers = (0..concurrency.max(1)).map(|_| {
        let next = next.clone();
        async move {
            let mut outcomes = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= requests {
                    break outcomes;
                }
                outcomes.push(request(http, target, work, n).await);
                done();
            }
        }
    });
    let outcomes: Vec<Outcome> = futures::future::join_all(workers)
        .await
        .into_iter()
        .flatten()
        .collect();
    Level::summarize(
        &target.name,
        concurrency,
        &outcomes,
        started.elapsed().as_secs_f64(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_level_sends_the_larger_of_its_floor_and_its_rounds_per_client() {
        assert_eq!(requests_at(16, 2, 1), 16);
        assert_eq!(requests_at(16, 2, 8), 16);
        assert_eq!(requests_at(16, 2, 32), 64);
        assert_eq!(requests_at(16, 0, 64), 16);
    }

    #[test]
    fn targets_parse_with_and_without_names() {
        let t: Target = "ferry=http://127.0.0.1:8000/v1/".parse().unwrap();
        assert_eq!(
            (t.name.as_str(), t.url.as_str()),
            ("ferry", "http://127.0.0.1:8000")
        );
        let t: Target = "http://10.0.0.80:8080".parse().unwrap();
        assert_eq!(
            (t.name.as_str(), t.url.as_str()),
            ("10.0.0.80:8080", "http://10.0.0.80:8080")
        );
        assert!("ferry=localhost:8000".parse::<Target>().is_err());
    }

    #[test]
    fn a_level_counts_successes_errors_and_incomplete_streams() {
        let mut good = StreamTally::default();
        good.line(r#"data: {"choices":[{"delta":{"content":"a"}}]}"#, 0.1);
        good.line(
            r#"data: {"choices":[{"delta":{"content":"b"},"finish_reason":"length"}]}"#,
            0.3,
        );
        good.line(
            r#"data: {"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":2}}"#,
            0.3,
        );
        good.line("data: [DONE]", 0.3);
        let mut cut = StreamTally::default();
        cut.line(r#"data: {"choices":[{"delta":{"content":"a"}}]}"#, 0.1);
        let outcomes = vec![
            Outcome::Streamed {
                tally: good.clone(),
                seconds: 0.4,
            },
            Outcome::Streamed {
                tally: good,
                seconds: 0.6,
            },
            Outcome::Streamed {
                tally: cut,
                seconds: 0.2,
            },
            Outcome::Failed("429 Too Many Requests".into()),
        ];
        let l = Level::summarize("t", 2, &outcomes, 2.0);
        assert_eq!(
            (l.successes, l.errors, l.incomplete, l.requests),
            (2, 1, 1, 4)
        );
        assert_eq!(
            l.output_tokens_per_second, 2.0,
            "4 tokens of the complete streams in 2 s"
        );
        assert_eq!(l.requests_per_second, 1.0);
        assert_eq!(l.mean_prompt_tokens, 10.0);
        let ttft = l.ttft_ms.unwrap();
        assert!((ttft.p50 - 100.0).abs() < 1e-9);
        assert!((l.e2e_ms.unwrap().mean - 500.0).abs() < 1e-9);
        assert!((l.inter_token_ms.unwrap().p50 - 200.0).abs() < 1e-9);
        assert_eq!(l.error_samples.len(), 2);
    }

    #[test]
    fn fixed_length_requests_carry_the_extension() {
        let mut w = Workload {
            model: "m".into(),
            prompt_tokens: 4,
            output_tokens: 16,
            fixed_length: true,
            api_key: None,
            timeout: Duration::from_secs(1),
        };
        let body = w.body(7);
        assert_eq!(body["min_tokens"], 16);
        assert_eq!(body["ignore_eos"], true);
        assert_eq!(body["messages"][0]["content"], "7 hello hello hello");
        w.fixed_length = false;
        assert!(w.body(0).get("min_tokens").is_none());
    }
}
