//! The OpenAI API of a real ferry-server running the real mistral.rs engine on the tiny model.

mod common;

use std::time::Duration;

use common::{chat_body, sse_events, tiny};
use serde_json::{Value, json};

#[tokio::test]
async fn chat_completion_has_the_openai_shape() {
    let s = tiny(&[]).await;
    let r = s
        .client
        .post(s.url("/v1/chat/completions"))
        .header("x-request-id", "req-123")
        .json(&chat_body("hello", json!({"max_tokens": 8})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "req-123");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["id"], "chatcmpl-req-123");
    assert_eq!(v["model"], "tiny");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(v["choices"][0]["message"]["content"].is_string());
    let reason = v["choices"][0]["finish_reason"].as_str().unwrap();
    assert!(reason == "stop" || reason == "length", "{reason}");
    let u = &v["usage"];
    assert!(u["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(u["completion_tokens"].as_u64().unwrap() <= 8);
    assert_eq!(
        u["total_tokens"],
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn ignore_eos_forces_exactly_max_tokens() {
    let s = tiny(&[]).await;
    for (path, body) in [
        (
            "/v1/chat/completions",
            chat_body("the cat", json!({"max_tokens": 24, "ignore_eos": true})),
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "the cat", "max_tokens": 24, "ignore_eos": true}),
        ),
    ] {
        let v: Value = s.post(path, body).await.json().await.unwrap();
        assert_eq!(v["usage"]["completion_tokens"], 24, "{path}: {v}");
        assert_eq!(v["choices"][0]["finish_reason"], "length", "{path}");
    }
}

#[tokio::test]
async fn stream_sends_role_tokens_finish_usage_and_done() {
    let s = tiny(&[]).await;
    let r = s
        .post(
            "/v1/chat/completions",
            chat_body("hi", json!({"stream": true, "max_tokens": 10, "ignore_eos": true, "stream_options": {"include_usage": true}})),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let events = sse_events(&r.text().await.unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    let text_chunks = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
        .count();
    assert!(text_chunks >= 1);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 10);
}

/// TTFT is the first generated token (`ferry_contract::ttft`): a stream's role chunk comes before
/// prefill and is not it; a whole answer says its TTFT in a header, since its client cannot see it.
#[tokio::test]
async fn ttft_is_the_first_generated_token_in_streams_and_the_header_of_whole_answers() {
    use ferry_contract::ttft::{TTFT_HEADER, data_carries_output};
    use std::time::Instant;
    let s = tiny(&["--fault-first-token-delay-ms", "400"]).await;

    let r = s
        .post(
            "/v1/chat/completions",
            chat_body("hi", json!({"max_tokens": 4, "ignore_eos": true})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let header: f64 = r.headers()[TTFT_HEADER].to_str().unwrap().parse().unwrap();
    assert!((400.0..5000.0).contains(&header), "{TTFT_HEADER}: {header}");

    let started = Instant::now();
    let mut r = s
        .post(
            "/v1/chat/completions",
            chat_body(
                "hi",
                json!({"stream": true, "max_tokens": 4, "ignore_eos": true}),
            ),
        )
        .await;
    assert!(
        r.headers().get(TTFT_HEADER).is_none(),
        "a stream shows its tokens"
    );
    let (mut buffer, mut role_at, mut output_at) = (String::new(), None, None);
    while let Some(bytes) = r.chunk().await.unwrap() {
        buffer.push_str(std::str::from_utf8(&bytes).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let data = event
                .trim()
                .strip_prefix("data: ")
                .unwrap_or_default()
                .to_string();
            if role_at.is_none() && data.contains("\"role\":\"assistant\"") {
                role_at = Some(started.elapsed());
            }
            if output_at.is_none() && data_carries_output(data.as_bytes()) {
                output_at = Some(started.elapsed());
            }
        }
    }
    let (role_at, output_at) = (role_at.unwrap(), output_at.unwrap());
    assert!(
        role_at < Duration::from_millis(300),
        "role chunk after {role_at:?}"
    );
    assert!(
        output_at >= Duration::from_millis(400),
        "first token after {output_at:?}"
    );

    // The server's own histogram counts from the same first token: both answers took 400 ms+.
    let metrics = s.metrics().await;
    let sum: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ferry_time_to_first_token_seconds_sum"))
        .and_then(|rest| rest.rsplit(' ').next()?.parse().ok())
        .unwrap();
    assert!(
        sum >= 0.8,
        "TTFT sum {sum} s over two answers delayed 0.4 s each\n{metrics}"
    );
}

#[tokio::test]
async fn completions_stream_and_not() {
    let s = tiny(&[]).await;
    let v: Value = s
        .post(
            "/v1/completions",
            json!({"model": "tiny", "prompt": "red blue", "max_tokens": 5}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "text_completion");
    assert!(v["choices"][0]["text"].is_string());
    let body = s
        .post("/v1/completions", json!({"model": "tiny", "prompt": "red blue", "max_tokens": 5, "stream": true, "ignore_eos": true}))
        .await
        .text()
        .await
        .unwrap();
    let events = sse_events(&body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn seed_makes_sampling_reproducible() {
    // (The prefix cache, off by default, reuses KV computed in another batch, which can move the
    // logits enough to flip a sampled token; exact reproducibility is promised with it off.)
    let s = tiny(&[]).await;
    let ask = |seed: u64| {
        s.post(
            "/v1/chat/completions",
            chat_body(
                "one two",
                json!({"max_tokens": 16, "temperature": 1.0, "seed": seed, "ignore_eos": true}),
            ),
        )
    };
    let text = |v: Value| {
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let a = text(ask(7).await.json().await.unwrap());
    let b = text(ask(7).await.json().await.unwrap());
    assert_eq!(a, b, "same seed, same text");
    let others: Vec<String> = futures::future::join_all(
        (8..12).map(|seed| async move { text(ask(seed).await.json().await.unwrap()) }),
    )
    .await;
    assert!(
        others.iter().any(|o| *o != a),
        "different seeds should not all give {a:?}"
    );
}

#[tokio::test]
async fn stop_sequence_survives_greedy_sampling() {
    let s = tiny(&[]).await;
    let greedy = json!({"max_tokens": 30, "temperature": 0, "ignore_eos": true});
    let v: Value = s
        .post("/v1/chat/completions", chat_body("the dog", greedy.clone()))
        .await
        .json()
        .await
        .unwrap();
    let full = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        full.len() > 12,
        "greedy output too short to pick a stop sequence: {full:?}"
    );
    let stop: String = full.chars().skip(8).take(3).collect();
    let cut = full.find(&stop).unwrap();
    let mut body = chat_body("the dog", greedy);
    body["stop"] = json!([stop]);
    body["ignore_eos"] = json!(false);
    let v: Value = s
        .post("/v1/chat/completions", body)
        .await
        .json()
        .await
        .unwrap();
    let stopped = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    assert!(
        !stopped.contains(&stop),
        "{stopped:?} contains the stop sequence {stop:?}"
    );
    assert_eq!(
        stopped,
        &full[..cut],
        "greedy output up to the stop sequence"
    );
}

#[tokio::test]
async fn json_schema_output_is_valid_and_ends_by_itself() {
    let s = tiny(&[]).await;
    // Bounded values, so the random model must close the object and then end on its own.
    let schema = json!({"type": "object", "properties": {"c": {"enum": ["red", "blue"]}, "b": {"type": "boolean"}},
                        "required": ["c", "b"], "additionalProperties": false});
    let body = chat_body(
        "json",
        json!({"max_tokens": 200, "response_format": {"type": "json_schema", "json_schema": {"name": "t", "schema": schema}}}),
    );
    let v: Value = s
        .post("/v1/chat/completions", body)
        .await
        .json()
        .await
        .unwrap();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    let parsed: Value =
        serde_json::from_str(content).unwrap_or_else(|e| panic!("not JSON ({e}): {content:?}"));
    assert!(
        (parsed["c"] == "red" || parsed["c"] == "blue") && parsed["b"].is_boolean(),
        "{parsed}"
    );
    assert_eq!(
        v["choices"][0]["finish_reason"], "stop",
        "constrained output must end at the EOS, not at max_tokens: {v}"
    );
}

#[tokio::test]
async fn an_unread_stream_does_not_stall_other_requests() {
    let s = tiny(&["--max-num-seqs", "4"]).await;
    // Open a long stream and never read its body.
    let stalled = s.long_stream(400).await;
    assert_eq!(stalled.status(), 200);
    let other = tokio::time::timeout(
        Duration::from_secs(20),
        s.post(
            "/v1/chat/completions",
            chat_body("b", json!({"max_tokens": 20, "ignore_eos": true})),
        ),
    )
    .await
    .expect("a request behind an unread stream stalled");
    assert_eq!(other.status(), 200);
    drop(stalled);
}

#[tokio::test]
async fn client_disconnect_cancels_the_generation() {
    let s = tiny(&["--max-num-seqs", "1"]).await;
    let mut r = s.long_stream(450).await;
    assert!(r.chunk().await.unwrap().is_some());
    drop(r);
    for _ in 0..100 {
        if s.metric("ferry_requests_total", "code=\"cancelled\"").await == 1.0
            && s.metric("ferry_requests_running", "").await == 0.0
        {
            // The only slot is free again: the next request runs at once.
            let v = s
                .post(
                    "/v1/chat/completions",
                    chat_body("b", json!({"max_tokens": 3})),
                )
                .await;
            assert_eq!(v.status(), 200);
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cancellation was not recorded:\n{}", s.metrics().await);
}

#[tokio::test]
async fn models_health_ready_and_metrics() {
    let s = tiny(&[]).await;
    let v: Value = s
        .client
        .get(s.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"][0]["id"], "tiny");
    assert_eq!(
        s.client
            .get(s.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        s.client.get(s.url("/ready")).send().await.unwrap().status(),
        200
    );
    s.post(
        "/v1/chat/completions",
        chat_body("x", json!({"max_tokens": 4, "ignore_eos": true})),
    )
    .await;
    let m = s.metrics().await;
    for series in [
        "ferry_requests_total{code=\"ok\",endpoint=\"/v1/chat/completions\",model=\"tiny\",version=\"v-test\"} 1",
        "ferry_queue_depth{model=\"tiny\",version=\"v-test\"} 0",
        "ferry_requests_waiting{model=\"tiny\",version=\"v-test\"} 0",
        "ferry_generation_tokens_total{model=\"tiny\",version=\"v-test\"} 4",
    ] {
        assert!(m.contains(series), "missing {series} in\n{m}");
    }
    assert_eq!(
        s.metric("ferry_time_to_first_token_seconds_count", "")
            .await,
        1.0
    );
    assert_eq!(
        s.metric("ferry_inter_token_latency_seconds_count", "")
            .await,
        3.0
    );
}

async fn expect_error(r: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(r.status(), status);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    assert!(
        v["error"]["type"].is_string() && v["error"].get("param").is_some(),
        "{v}"
    );
    v
}

#[tokio::test]
async fn bad_input_gets_a_specific_openai_error_and_the_server_keeps_serving() {
    let s = tiny(&["--max-body-bytes", "2048"]).await;
    let raw = |path: &'static str, body: &'static str| {
        s.client
            .post(s.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    expect_error(
        raw("/v1/chat/completions", "{not json").await.unwrap(),
        400,
        "invalid_request",
    )
    .await;
    let v = expect_error(
        raw(
            "/v1/chat/completions",
            r#"{"model":"tiny","messages":"hi"}"#,
        )
        .await
        .unwrap(),
        400,
        "invalid_request",
    )
    .await;
    assert_eq!(v["error"]["param"], "messages");
    let v = expect_error(
        s.post(
            "/v1/chat/completions",
            json!({"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await,
        404,
        "model_not_found",
    )
    .await;
    assert_eq!(v["error"]["param"], "model");
    expect_error(
        s.post(
            "/v1/chat/completions",
            json!({"model": "tiny", "messages": []}),
        )
        .await,
        400,
        "invalid_request",
    )
    .await;
    let v = expect_error(
        s.post(
            "/v1/chat/completions",
            chat_body("x", json!({"max_tokens": 100000})),
        )
        .await,
        400,
        "invalid_request",
    )
    .await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum context length is 512 tokens"),
        "{v}"
    );
    expect_error(
        s.post(
            "/v1/chat/completions",
            chat_body(&"y".repeat(5000), json!({})),
        )
        .await,
        413,
        "body_too_large",
    )
    .await;
    expect_error(
        s.post("/v1/embeddings", json!({"model": "tiny", "input": "x"}))
            .await,
        400,
        "invalid_request",
    )
    .await;
    expect_error(
        s.client.get(s.url("/v2/nothing")).send().await.unwrap(),
        404,
        "not_found",
    )
    .await;
    let ok = s
        .post(
            "/v1/chat/completions",
            chat_body("still here", json!({"max_tokens": 3})),
        )
        .await;
    assert_eq!(ok.status(), 200);
    assert_eq!(s.metric("ferry_queue_depth", "").await, 0.0);
}

#[tokio::test]
async fn api_keys_are_required_when_configured() {
    let keys = std::env::temp_dir().join(format!("ferry-keys-{}", std::process::id()));
    std::fs::write(&keys, "# keys\nsecret-one\nsecret-two\n").unwrap();
    let s = tiny(&["--api-keys-file", keys.to_str().unwrap()]).await;
    let models = |key: Option<&'static str>| {
        let mut r = s.client.get(s.url("/v1/models"));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send()
    };
    expect_error(models(None).await.unwrap(), 401, "invalid_api_key").await;
    expect_error(
        models(Some("secret-three")).await.unwrap(),
        401,
        "invalid_api_key",
    )
    .await;
    assert_eq!(models(Some("secret-two")).await.unwrap().status(), 200);
    assert_eq!(
        s.client
            .get(s.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "probes need no key"
    );
    std::fs::remove_file(keys).ok();
}

#[tokio::test]
async fn a_key_given_as_its_digest_is_accepted_and_the_digest_itself_is_not() {
    let token = ferry_contract::pod_token::derive(b"master", "team-a", "chat");
    let digest = ferry_contract::pod_token::digest(&token);
    let s = tiny(&["--api-key-sha256", &digest]).await;
    let models = |key: String| s.client.get(s.url("/v1/models")).bearer_auth(key).send();
    assert_eq!(models(token.clone()).await.unwrap().status(), 200);
    expect_error(models(digest).await.unwrap(), 401, "invalid_api_key").await;
    let other = ferry_contract::pod_token::derive(b"master", "team-b", "chat");
    expect_error(models(other).await.unwrap(), 401, "invalid_api_key").await;
}

#[tokio::test]
async fn a_malformed_key_digest_is_refused_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry-server"))
        .args([
            "--model-path",
            "/nonexistent",
            "--served-model-name",
            "tiny",
            "--port",
            "0",
            "--api-key-sha256",
            "abc",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--api-key-sha256 \"abc\" is not 64 hexadecimal digits"),
        "{stderr}"
    );
}

#[tokio::test]
async fn overload_gets_429_with_retry_after_and_everything_else_completes() {
    let s = tiny(&["--max-num-seqs", "1", "--max-queue", "1"]).await;
    let requests = (0..12).map(|i| {
        s.post(
            "/v1/chat/completions",
            chat_body(
                &format!("n{i}"),
                json!({"max_tokens": 40, "ignore_eos": true}),
            ),
        )
    });
    let responses = futures::future::join_all(requests).await;
    let (mut ok, mut refused) = (0, 0);
    for r in responses {
        match r.status().as_u16() {
            200 => {
                let v: Value = r.json().await.unwrap();
                assert_eq!(v["usage"]["completion_tokens"], 40);
                ok += 1;
            }
            429 => {
                assert!(
                    r.headers()["retry-after"]
                        .to_str()
                        .unwrap()
                        .parse::<u64>()
                        .unwrap()
                        >= 1
                );
                expect_error(r, 429, "overloaded").await;
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(ok >= 2 && refused >= 1, "ok {ok}, refused {refused}");
    assert_eq!(s.metric("ferry_queue_depth", "").await, 0.0);
    assert_eq!(
        s.client
            .get(s.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        s.post(
            "/v1/chat/completions",
            chat_body("after", json!({"max_tokens": 3}))
        )
        .await
        .status(),
        200
    );
}

#[tokio::test]
async fn shutdown_stops_admitting_and_drains_in_flight_streams() {
    // The stream's first token waits 1 s, so it is surely in flight when the shutdown begins
    // (the tiny model would otherwise finish 300 tokens in well under 100 ms on a fast machine).
    let mut s = tiny(&[
        "--drain-seconds",
        "30",
        "--fault-first-token-delay-ms",
        "1000",
    ])
    .await;
    let stream = s.long_stream(300).await;
    assert_eq!(stream.status(), 200);
    s.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        s.client.get(s.url("/ready")).send().await.unwrap().status(),
        503
    );
    expect_error(
        s.post(
            "/v1/chat/completions",
            chat_body("b", json!({"max_tokens": 3})),
        )
        .await,
        503,
        "unavailable",
    )
    .await;
    let events = sse_events(&stream.text().await.unwrap());
    assert_eq!(
        events.last().unwrap(),
        "[DONE]",
        "the in-flight stream finished"
    );
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    tokio::time::timeout(Duration::from_secs(10), s.handle)
        .await
        .expect("server exits after the drain")
        .unwrap()
        .unwrap();
}

/// An idle server told to stop does not close its port at once: a router that has not yet seen
/// the pod go may still send it requests, and a 503 (taken to another pod) is what they get for
/// a moment, not a refused connection. Then it exits, long before `--drain-seconds`.
#[tokio::test]
async fn a_stopping_idle_server_answers_503_a_moment_before_closing_its_port() {
    let mut s = tiny(&["--drain-seconds", "30"]).await;
    s.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(700)).await;
    // A new connection, as a router opens to a pod it has no idle connection to.
    let fresh = reqwest::Client::new();
    let r = fresh
        .post(s.url("/v1/chat/completions"))
        .json(&chat_body("late", json!({"max_tokens": 3})))
        .send()
        .await
        .expect("the port is still open");
    expect_error(r, 503, "unavailable").await;
    tokio::time::timeout(Duration::from_secs(10), s.handle)
        .await
        .expect("an idle server exits within seconds, not after the whole drain")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn logprobs_and_min_tokens() {
    let s = tiny(&[]).await;
    let v: Value = s
        .post(
            "/v1/chat/completions",
            chat_body(
                "hi",
                json!({"max_tokens": 3, "ignore_eos": true, "logprobs": true, "top_logprobs": 2}),
            ),
        )
        .await
        .json()
        .await
        .unwrap();
    let content = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap_or_else(|| panic!("no logprobs: {v}"));
    assert_eq!(content.len(), 3, "{v}");
    for t in content {
        assert!(t["logprob"].as_f64().unwrap() <= 0.0, "{t}");
        assert!(t["token"].is_string());
        assert_eq!(t["top_logprobs"].as_array().unwrap().len(), 2, "{t}");
    }
}

#[tokio::test]
async fn min_tokens_holds_back_the_end_of_sequence() {
    let s = tiny(&[]).await;
    // Greedy, this prompt ends after 5 tokens on the tiny model.
    let v: Value = s
        .post(
            "/v1/chat/completions",
            chat_body("one two", json!({"max_tokens": 60, "temperature": 0})),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            v["usage"]["completion_tokens"].as_u64(),
            v["choices"][0]["finish_reason"].as_str()
        ),
        (Some(5), Some("stop")),
        "{v}"
    );
    let v: Value = s
        .post(
            "/v1/chat/completions",
            chat_body(
                "one two",
                json!({"max_tokens": 60, "temperature": 0, "min_tokens": 25}),
            ),
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(
        v["usage"]["completion_tokens"].as_u64().unwrap() >= 25,
        "{v}"
    );
}

#[tokio::test]
async fn concurrent_prompts_sharing_a_prefix_near_the_context_limit_all_complete() {
    // Regression: with mistral.rs' prefix cache on (the old default), the longer two of these
    // failed with 500 "kv-cache: requested capacity (1024) above max seq len (512)" although each
    // fits the tiny model's 512-token context.
    let s = tiny(&[]).await;
    let prompt = |words: usize| {
        (0..words)
            .map(|i| format!("word{}", i % 50))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for round in 0..2 {
        let requests = [10, 30, 50, 60].map(|words| {
            s.post(
                "/v1/completions",
                json!({"model": "tiny", "prompt": prompt(words), "max_tokens": 140,
                       "ignore_eos": true, "temperature": 0}),
            )
        });
        for (r, words) in futures::future::join_all(requests)
            .await
            .into_iter()
            .zip([10, 30, 50, 60])
        {
            let status = r.status();
            let body: Value = r.json().await.unwrap();
            assert_eq!(status, 200, "round {round}, {words} words: {body}");
            let usage = &body["usage"];
            assert_eq!(usage["completion_tokens"], 140, "{body}");
            assert!(usage["total_tokens"].as_u64().unwrap() <= 512, "{body}");
        }
    }
}

/// A model file the engine cannot read stops the process with exit 1 and one log line that says
/// why, without the engine's backtrace (candle appends one when RUST_BACKTRACE is set, as it
/// often is in pods).
#[tokio::test]
async fn a_model_that_fails_to_load_exits_1_with_the_reason_and_no_backtrace() {
    let dir = std::env::temp_dir().join(format!("ferry-bad-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = std::fs::read(common::models_dir().join("tiny-gguf/tiny-q8_0.gguf")).unwrap();
    std::fs::write(dir.join("cut.gguf"), &good[..4096]).unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry-server"))
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--served-model-name",
            "cut",
        ])
        .arg("--model-path")
        .arg(&dir)
        .args(["--gguf-file", "cut.gguf"])
        .env("RUST_BACKTRACE", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("ferry-server did not exit after a failed load")
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let logs =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let line: Value = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "model failed to load")
        .unwrap_or_else(|| panic!("no load error in the logs:\n{logs}"));
    let error = line["error"].as_str().unwrap();
    assert!(error.contains("failed to fill whole buffer"), "{error}");
    assert!(
        !error.contains("\n   0:") && !error.contains(".rs:"),
        "{error}"
    );
}
