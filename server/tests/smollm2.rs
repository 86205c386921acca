//! A real conversation with the real default model, SmolLM2-135M-Instruct.

mod common;

use common::{smollm2, sse_events};
use serde_json::{Value, json};

fn ask(content: &str, extra: Value) -> Value {
    let mut body = json!({"model": "smollm2", "temperature": 0, "max_tokens": 48,
                          "messages": [{"role": "system", "content": "You are a concise assistant."},
                                       {"role": "user", "content": content}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[tokio::test]
async fn smollm2_answers_streaming_and_not_and_in_json() {
    let s = smollm2(&[]).await;

    let v: Value = s
        .post(
            "/v1/chat/completions",
            ask("What is the capital of France?", json!({})),
        )
        .await
        .json()
        .await
        .unwrap();
    let answer = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(answer.contains("Paris"), "{answer:?}");

    // Streaming the same greedy request gives the same text, token by token.
    let body = s
        .post(
            "/v1/chat/completions",
            ask("What is the capital of France?", json!({"stream": true})),
        )
        .await
        .text()
        .await
        .unwrap();
    let streamed: String = sse_events(&body)
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(streamed, answer);

    let schema = json!({"type": "object", "additionalProperties": false, "required": ["country", "capital"],
                        "properties": {"country": {"type": "string"}, "capital": {"type": "string"}}});
    let v: Value = s
        .post(
            "/v1/chat/completions",
            ask(
                "Give France and its capital city as JSON.",
                json!({"max_tokens": 64, "response_format": {"type": "json_schema", "json_schema": {"name": "capital", "schema": schema}}}),
            ),
        )
        .await
        .json()
        .await
        .unwrap();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    let parsed: Value =
        serde_json::from_str(content).unwrap_or_else(|e| panic!("not JSON ({e}): {content:?}"));
    let obj = parsed.as_object().unwrap();
    assert_eq!(obj.len(), 2, "{parsed}");
    assert!(
        parsed["country"].is_string() && parsed["capital"].is_string(),
        "{parsed}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    println!("SmolLM2 said: {answer:?}; JSON: {parsed}");
}
