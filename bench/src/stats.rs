//! Statistics of one level: percentiles of latencies and what one streamed response told us.

use serde::Serialize;

/// Mean and percentiles of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Distribution {
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

impl Distribution {
    /// `None` when there is nothing to describe.
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Self {
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            p50: percentile(&sorted, 50.0),
            p95: percentile(&sorted, 95.0),
            p99: percentile(&sorted, 99.0),
        })
    }
}

/// The `p`-th percentile of ascending `sorted` values, interpolated linearly between the two
/// nearest ranks (the definition numpy and most benchmark tools use by default).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of nothing");
    let rank = (p / 100.0).clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
}

/// What one SSE response of a chat completion said, fed line by line.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StreamTally {
    /// Seconds (since the request was sent) at which each data event carrying generated output
    /// (`ferry_contract::ttft`) arrived.
    pub content_at: Vec<f64>,
    /// `usage.completion_tokens` / `prompt_tokens`, when the server sent usage.
    pub completion_tokens: Option<u64>,
    pub prompt_tokens: Option<u64>,
    pub finish_reason: Option<String>,
    pub done: bool,
    pub error: Option<String>,
}

impl StreamTally {
    /// Reads one line of the event stream received `at` seconds after the request was sent.
    pub fn line(&mut self, line: &str, at: f64) {
        let Some(data) = line.strip_prefix("data:").map(str::trim) else {
            return;
        };
        if data == "[DONE]" {
            self.done = true;
            return;
        }
        let Ok(event) = serde_json::from_str::<serde_json::Value>(data) else {
            self.error
                .get_or_insert_with(|| format!("not JSON: {data}"));
            return;
        };
        if let Some(error) = event.get("error") {
            let message = error.get("message").and_then(|m| m.as_str());
            self.error = Some(message.unwrap_or("error event").to_string());
            return;
        }
        if let Some(usage) = event.get("usage").filter(|u| !u.is_null()) {
            self.completion_tokens = usage.get("completion_tokens").and_then(|v| v.as_u64());
            self.prompt_tokens = usage.get("prompt_tokens").and_then(|v| v.as_u64());
        }
        // The one TTFT definition: events that carry generated output (not the role chunk).
        if ferry_contract::ttft::carries_output(&event) {
            self.content_at.push(at);
        }
        for choice in event
            .get("choices")
            .and_then(|c| c.as_array())
            .into_iter()
            .flatten()
        {
            if let Some(reason) = choice.get("finish_reason").and_then(|r| r.as_str()) {
                self.finish_reason = Some(reason.to_string());
            }
        }
    }

    /// Output tokens: the server's usage, else one per text event.
    pub fn output_tokens(&self) -> u64 {
        self.completion_tokens
            .unwrap_or(self.content_at.len() as u64)
    }

    /// Time to the first text, in seconds.
    pub fn ttft(&self) -> Option<f64> {
        self.content_at.first().copied()
    }

    /// Mean time between output tokens after the first, in seconds (servers may send several
    /// tokens per event, so this spreads the stream's span over the tokens).
    pub fn inter_token(&self) -> Option<f64> {
        let (first, last) = (self.content_at.first()?, self.content_at.last()?);
        let tokens = self.output_tokens();
        (tokens > 1).then(|| (last - first) / (tokens - 1) as f64)
    }

    /// Whether the stream ended as a whole answer: `[DONE]`, a finish reason, no error event.
    pub fn complete(&self) -> bool {
        self.done && self.finish_reason.is_some() && self.error.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.5);
        assert!((percentile(&v, 95.0) - 95.05).abs() < 1e-9);
        assert!((percentile(&v, 99.0) - 99.01).abs() < 1e-9);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[1.0, 3.0], 50.0), 2.0);
    }

    #[test]
    fn distribution_sorts_and_averages() {
        let d = Distribution::of(&[30.0, 10.0, 20.0]).unwrap();
        assert_eq!((d.mean, d.p50), (20.0, 20.0));
        assert!((d.p99 - 29.8).abs() < 1e-9);
        assert_eq!(Distribution::of(&[]), None);
    }

    #[test]
    fn a_stream_with_usage_counts_the_servers_tokens() {
        let mut t = StreamTally::default();
        t.line(
            r#"data: {"choices":[{"delta":{"role":"assistant"}}]}"#,
            0.05,
        );
        t.line(r#"data: {"choices":[{"delta":{"content":"Hel"}}]}"#, 0.10);
        t.line("", 0.11);
        t.line(
            r#"data: {"choices":[{"delta":{"content":"lo wor"}}]}"#,
            0.20,
        );
        t.line(
            r#"data: {"choices":[{"delta":{"content":"ld"},"finish_reason":"length"}]}"#,
            0.30,
        );
        t.line(
            r#"data: {"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}"#,
            0.31,
        );
        t.line("data: [DONE]", 0.31);
        assert_eq!(t.ttft(), Some(0.10));
        assert_eq!(t.output_tokens(), 5);
        assert_eq!(t.prompt_tokens, Some(12));
        // 0.2 s from the first text to the last, over 4 gaps between 5 tokens.
        assert!((t.inter_token().unwrap() - 0.05).abs() < 1e-9);
        assert!(t.complete());
    }

    #[test]
    fn without_usage_each_text_event_is_a_token_and_legacy_completions_count() {
        let mut t = StreamTally::default();
        t.line(r#"data: {"choices":[{"text":"a"}]}"#, 1.0);
        t.line(
            r#"data: {"choices":[{"text":"b","finish_reason":"stop"}]}"#,
            2.0,
        );
        t.line(r#"data: {"choices":[],"usage":null}"#, 2.0);
        t.line("data: [DONE]", 2.0);
        assert_eq!(t.output_tokens(), 2);
        assert_eq!(t.inter_token(), Some(1.0));
        assert!(t.complete());
    }

    #[test]
    fn error_events_and_cut_streams_are_incomplete() {
        let mut cut = StreamTally::default();
        cut.line(r#"data: {"choices":[{"delta":{"content":"x"}}]}"#, 0.1);
        assert!(!cut.complete(), "no [DONE]");
        let mut failed = cut.clone();
        failed.line(r#"data: {"error":{"message":"pod went away"}}"#, 0.2);
        failed.line("data: [DONE]", 0.2);
        assert_eq!(failed.error.as_deref(), Some("pod went away"));
        assert!(!failed.complete());
        assert_eq!(failed.inter_token(), None, "one token has no gap");
    }
}
