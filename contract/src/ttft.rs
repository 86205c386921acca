//! Time to first token (TTFT): from the request to the first stream event that carries generated
//! output — text, reasoning text, a tool call or a token's logprobs. A chunk that only names the
//! role (`{"role": "assistant", "content": ""}`, sent before prefill), only a finish reason or
//! only usage carries none. ferry-server's histogram, the router's histogram and the canary's
//! `ttftP95Ms`, and ferry-bench all measure this; inter-token latency is the time between two
//! such events.

use serde_json::Value;

/// Response header of a non-stream answer: the server's TTFT for it, in milliseconds (the router
/// cannot see the first token of an answer it receives whole).
pub const TTFT_HEADER: &str = "x-ferry-ttft-ms";

/// Whether one parsed stream event (a chat or text completion chunk) carries generated output.
pub fn carries_output(event: &Value) -> bool {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).is_some_and(|s| !s.is_empty());
    let items = |v: Option<&Value>| v.and_then(Value::as_array).is_some_and(|a| !a.is_empty());
    event
        .get("choices")
        .and_then(Value::as_array)
        .is_some_and(|choices| {
            choices.iter().any(|c| {
                text(c.pointer("/delta/content"))
                    || text(c.pointer("/delta/reasoning_content"))
                    || text(c.get("text"))
                    || items(c.pointer("/delta/tool_calls"))
                    || items(c.pointer("/logprobs/content"))
                    || items(c.pointer("/logprobs/tokens"))
            })
        })
}

/// [`carries_output`] on the payload of an SSE `data:` line; `false` for `[DONE]` or anything
/// that is not JSON.
pub fn data_carries_output(data: &[u8]) -> bool {
    serde_json::from_slice::<Value>(data).is_ok_and(|v| carries_output(&v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_text_reasoning_tool_calls_or_logprobs_and_nothing_else() {
        for (event, output) in [
            (
                r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#,
                false,
            ),
            (r#"{"choices":[{"delta":{"role":"assistant"}}]}"#, false),
            (
                r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#,
                false,
            ),
            (r#"{"choices":[],"usage":{"completion_tokens":3}}"#, false),
            (
                r#"{"choices":[{"text":"","finish_reason":"length"}]}"#,
                false,
            ),
            (r#"{"choices":[{"delta":{"content":"Hi"}}]}"#, true),
            (r#"{"choices":[{"delta":{"content":" "}}]}"#, true),
            (
                r#"{"choices":[{"delta":{"reasoning_content":"so"}}]}"#,
                true,
            ),
            (
                r#"{"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}"#,
                true,
            ),
            (
                r#"{"choices":[{"delta":{"content":""},"logprobs":{"content":[{"token":"\u00e9"}]}}]}"#,
                true,
            ),
            (r#"{"choices":[{"text":"Paris"}]}"#, true),
            (
                r#"{"choices":[{"text":"","logprobs":{"tokens":["\u00e9"]}}]}"#,
                true,
            ),
            (
                r#"{"choices":[{"index":1,"delta":{}},{"index":0,"delta":{"content":"a"}}]}"#,
                true,
            ),
        ] {
            assert_eq!(data_carries_output(event.as_bytes()), output, "{event}");
        }
        assert!(!data_carries_output(b"[DONE]"));
        assert!(!data_carries_output(b"{not json"));
    }
}
