//! The router with real ferry-server backends (tiny model) on loopback, discovering them through
//! the real API server. See `loopback` for how the pods point at the backends.

mod loopback;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use loopback::{Backend, Router, Scene, chat, header};
use serde_json::json;

/// Sends `n` requests, `concurrency` at a time; returns the responses' `header` values counted.
async fn count_by(
    router: &Router,
    n: usize,
    concurrency: usize,
    header_name: &str,
    body: impl Fn(usize) -> serde_json::Value,
) -> BTreeMap<String, usize> {
    let bodies: Vec<_> = (0..n).map(body).collect();
    let results: Vec<(u16, String)> = futures::stream::iter(bodies)
        .map(|b| async move {
            let r = router.post("/v1/chat/completions", b).await;
            let status = r.status().as_u16();
            let value = header(&r, header_name);
            let _ = r.bytes().await;
            (status, value)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut counts = BTreeMap::new();
    for (status, value) in results {
        assert_eq!(status, 200, "every request succeeds");
        *counts.entry(value).or_default() += 1;
    }
    counts
}

/// LLMDeployment `name` (serving model `name`) with v1 (stable) and v2 at `weights`, one ready
/// pod each; the backends serve while they live.
async fn two_versions(scene: &Scene, name: &str, weights: (u32, u32)) -> (Backend, Backend) {
    let (v1, v2) = (
        Backend::start(name, "v1", &[]).await,
        Backend::start(name, "v2", &[]).await,
    );
    scene
        .deployment(
            name,
            name,
            json!({"stable": "v1"}),
            json!([{"version": "v1", "weight": weights.0}, {"version": "v2", "weight": weights.1}]),
        )
        .await;
    scene
        .pod(&format!("{name}-v1"), name, "v1", v1.addr, true)
        .await;
    scene
        .pod(&format!("{name}-v2"), name, "v2", v2.addr, true)
        .await;
    (v1, v2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weighted_split_holds_within_two_percent_over_10k_requests() {
    let scene = Scene::new("router-split").await;
    let (_v1, _v2) = two_versions(&scene, "split", (70, 30)).await;
    let router = Router::start(&scene, &[]).await;
    router.wait_routable("split").await;
    let before = router.stats("5m").await;

    let counts = count_by(&router, 10_000, 32, "x-ferry-version", |_| {
        chat("split", json!({}))
    })
    .await;
    let v2_share = counts["v2"] as f64 / 10_000.0;
    println!("10,000 requests: {counts:?} (v2 {:.2}%)", v2_share * 100.0);
    assert!(
        (v2_share - 0.30).abs() <= 0.02,
        "v2 got {v2_share}, wanted 0.30 ± 0.02"
    );

    // The per-version statistics the operator reads agree with what clients saw.
    let after = router.stats("5m").await;
    let requests = |s: &ferry_router::stats::Summary, v: &str| {
        s.series
            .iter()
            .find(|x| x.key.version == v)
            .map_or(0, |x| x.counts.requests)
    };
    for v in ["v1", "v2"] {
        assert_eq!(
            requests(&after, v) - requests(&before, v),
            counts[v] as u64,
            "stats of {v}"
        );
    }
    let v1_series = after.series.iter().find(|s| s.key.version == "v1").unwrap();
    assert_eq!(v1_series.error_rate, 0.0);
    assert!(v1_series.latency_ms.p95.unwrap() > 0.0);
    assert!(
        v1_series.counts.completion_tokens >= counts["v1"] as u64,
        "tokens from usage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_users_keep_their_variant() {
    let scene = Scene::new("router-ab").await;
    let (a, b) = (
        Backend::start("ab", "va", &[]).await,
        Backend::start("ab", "vb", &[]).await,
    );
    let experiment = json!({"stable": "va", "experiment": {"variants": [
        {"name": "control", "version": "va", "weight": 50},
        {"name": "treatment", "version": "vb", "weight": 50}]}});
    scene
        .deployment(
            "ab",
            "ab",
            experiment,
            json!([{"version": "va", "weight": 50, "variant": "control"},
                           {"version": "vb", "weight": 50, "variant": "treatment"}]),
        )
        .await;
    scene.pod("ab-a", "ab", "va", a.addr, true).await;
    scene.pod("ab-b", "ab", "vb", b.addr, true).await;
    let router = Router::start(&scene, &[]).await;
    router.wait_routable("ab").await;

    // Every user twice, the second pass in another order: the same variant both times.
    let users = 10_000;
    let assign = |order: Vec<usize>| {
        let router = &router;
        async move {
            futures::stream::iter(order)
                .map(|u| async move {
                    let r = router
                        .post(
                            "/v1/chat/completions",
                            chat("ab", json!({"user": format!("user-{u}")})),
                        )
                        .await;
                    assert_eq!(r.status(), 200);
                    let variant = header(&r, "x-ferry-variant");
                    let _ = r.bytes().await;
                    (u, variant)
                })
                .buffer_unordered(32)
                .collect::<HashMap<usize, String>>()
                .await
        }
    };
    let first = assign((0..users).collect()).await;
    let second = assign((0..users).rev().collect()).await;
    let moved = (0..users).filter(|u| first[u] != second[u]).count();
    assert_eq!(moved, 0, "users that changed variant");
    let treatment = first.values().filter(|v| *v == "treatment").count();
    println!("{users} users: {treatment} in treatment");
    assert!(
        (4_500..=5_500).contains(&treatment),
        "{treatment} of {users} in treatment"
    );

    // The stats are split by variant.
    let stats = router.stats("5m").await;
    let variants: Vec<&str> = stats
        .series
        .iter()
        .map(|s| s.key.variant.as_str())
        .collect();
    assert_eq!(variants, ["control", "treatment"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sticky_by_header_and_routing_follows_a_traffic_change_within_a_second() {
    let scene = Scene::new("router-follow").await;
    let (a, b) = (
        Backend::start("follow", "va", &[]).await,
        Backend::start("follow", "vb", &[]).await,
    );
    let experiment = json!({"stable": "va", "experiment": {
        "variants": [{"name": "a", "version": "va", "weight": 50}, {"name": "b", "version": "vb", "weight": 50}],
        "stickiness": {"key": "header", "header": "x-session-id"}}});
    scene
        .deployment("follow", "follow", experiment,
                    json!([{"version": "va", "weight": 50, "variant": "a"}, {"version": "vb", "weight": 50, "variant": "b"}]))
        .await;
    scene.pod("follow-a", "follow", "va", a.addr, true).await;
    scene.pod("follow-b", "follow", "vb", b.addr, true).await;
    let router = Router::start(&scene, &[]).await;
    router.wait_routable("follow").await;

    let session = |id: usize| {
        let router = &router;
        async move {
            let r = router
                .http
                .post(format!("{}/v1/chat/completions", router.base))
                .header("x-session-id", format!("s-{id}"))
                .json(&chat("follow", json!({})))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            header(&r, "x-ferry-variant")
        }
    };
    for id in 0..50 {
        let first = session(id).await;
        assert_eq!(session(id).await, first, "session {id} moved");
    }

    // The operator moves all traffic to b: the router follows within a second.
    scene
        .set_traffic(
            "follow",
            "follow",
            json!([{"version": "va", "weight": 0, "variant": "a"},
                                                 {"version": "vb", "weight": 100, "variant": "b"}]),
        )
        .await;
    let changed = Instant::now();
    loop {
        let all_b = futures::future::join_all((0..20).map(session))
            .await
            .iter()
            .all(|v| v == "b");
        if all_b {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(1),
            "the router still routes to a after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("traffic change followed in {:?}", changed.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_pass_through_unbuffered_and_are_measured() {
    let scene = Scene::new("router-stream").await;
    let backend = Backend::start("s", "v1", &[]).await;
    scene.serve_v1("s", &[&backend]).await;
    let router = Router::start(&scene, &[]).await;
    router.wait_routable("s").await;

    // 64 tokens arrive as 64+ separate data events, the first long before the last, then usage.
    let r = router
        .post(
            "/v1/chat/completions",
            chat(
                "s",
                json!({"stream": true, "max_tokens": 64, "ignore_eos": true,
                                                      "stream_options": {"include_usage": true}}),
            ),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "text/event-stream");
    assert_eq!(header(&r, "x-ferry-version"), "v1");
    let mut body = r.bytes_stream();
    let (mut arrivals, mut text) = (Vec::new(), String::new());
    while let Some(chunk) = body.next().await {
        arrivals.push(Instant::now());
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| e.starts_with("data: "))
        .collect();
    assert_eq!(*events.last().unwrap(), "data: [DONE]");
    let usage: serde_json::Value = serde_json::from_str(&events[events.len() - 2][6..]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 64);
    assert!(
        arrivals.len() > 10,
        "the stream came in {} pieces: buffered",
        arrivals.len()
    );

    let stats = router.stats("1m").await;
    let s = &stats.series[0];
    assert!(s.ttft_ms.p50.is_some(), "TTFT measured");
    assert!(
        s.counts.inter_token.count >= 60,
        "inter-token gaps measured: {}",
        s.counts.inter_token.count
    );
    assert!(s.counts.completion_tokens >= 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_hangs_up_mid_stream_cancels_the_generation_in_the_pod() {
    let scene = Scene::new("router-hangup").await;
    let backend = Backend::smollm2("hangup", "v1").await;
    scene.serve_v1("hangup", &[&backend]).await;
    let router = Router::start(&scene, &[]).await;

    let r = router
        .post(
            "/v1/chat/completions",
            chat(
                "hangup",
                json!({"stream": true, "max_tokens": 400, "ignore_eos": true}),
            ),
        )
        .await;
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    body.next().await.unwrap().unwrap();
    assert_eq!(backend.metric("ferry_requests_running", "").await, 1.0);
    drop(body);
    let hung_up = Instant::now();
    while backend
        .metric("ferry_requests_total", "code=\"cancelled\"")
        .await
        < 1.0
        || backend.metric("ferry_requests_running", "").await > 0.0
    {
        assert!(
            hung_up.elapsed() < Duration::from_secs(5),
            "the pod still generates for a gone client"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Labels are not enough: a ready pod with the version's labels that the version's Deployment
/// does not own (made by hand by anyone who may create pods) gets no request, and so never sees
/// the pod token either.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pod_the_operator_does_not_own_gets_no_traffic() {
    let scene = Scene::new("router-owner").await;
    let (owned, rogue) = (
        Backend::start("own", "v1", &[]).await,
        Backend::start("own", "v1", &[]).await,
    );
    scene.serve_v1("own", &[&owned]).await;
    // Its own pod-template-hash, or the version's ReplicaSet would adopt it (and delete one pod).
    scene
        .unowned_pod("own-rogue", ("own", "v1", "rogue"), rogue.addr, true)
        .await;
    let router = Router::start(&scene, &["--scrape-interval-ms", "0"]).await;
    router.wait_routable("own").await;
    let counts = count_by(&router, 40, 4, "x-ferry-pod", |_| chat("own", json!({}))).await;
    assert_eq!(counts.get("own-0"), Some(&40), "{counts:?}");
    let seen = rogue.metric("ferry_requests_total", "").await;
    assert_eq!(seen, 0.0, "the unowned pod's server was sent requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_backend_is_retried_on_another_pod() {
    let scene = Scene::new("router-retry").await;
    let mut backends = Vec::new();
    for _ in 0..3 {
        backends.push(Backend::start("r", "v1", &[]).await);
    }
    scene
        .serve_v1("r", &backends.iter().collect::<Vec<_>>())
        .await;
    let router = Router::start(&scene, &["--scrape-interval-ms", "0"]).await;
    router.wait_routable("r").await;

    // Pod r-0 dies; the API server still lists it as ready. No request fails.
    backends[0].kill();
    let counts = count_by(&router, 200, 8, "x-ferry-pod", |_| chat("r", json!({}))).await;
    assert!(!counts.contains_key("r-0"), "{counts:?}");
    let metrics = router.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("ferry_router_retries_total{model=\"r\",version=\"v1\"}"),
        "retries counted:\n{metrics}"
    );

    // All pods dead: a clear 502 after the retries.
    backends[1].kill();
    backends[2].kill();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = router
        .post("/v1/chat/completions", chat("r", json!({})))
        .await;
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_unreachable");
}

/// A pod killed under load (its server's runtime dropped: every connection closes at once, as a
/// SIGKILLed pod's do, and the port refuses new ones), still listed ready by the API server.
/// Exactly the requests it had read fail, with 502 (it may have started them; they are not sent
/// again). Requests sent after the kill, some of them on the router's kept-alive connections to
/// the dead pod, all go to the other pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_pod_fails_only_the_requests_it_had_read() {
    let scene = Scene::new("router-kill").await;
    let mut backends = [
        Backend::start("kill", "v1", &[]).await,
        Backend::start("kill", "v1", &[]).await,
    ];
    scene
        .serve_v1("kill", &backends.iter().collect::<Vec<_>>())
        .await;
    let router = Arc::new(Router::start(&scene, &["--scrape-interval-ms", "0"]).await);
    router.wait_routable("kill").await;
    let short = |_| chat("kill", json!({"max_tokens": 1}));

    // Kept-alive connections to both pods.
    let warm = count_by(&router, 24, 6, "x-ferry-pod", short).await;
    assert_eq!(warm.len(), 2, "both pods served: {warm:?}");

    // Long generations on both pods (the router sends each to the less loaded pod).
    let long: Vec<_> = (0..4)
        .map(|_| {
            let router = router.clone();
            tokio::spawn(async move {
                let body = chat("kill", json!({"max_tokens": 400, "ignore_eos": true}));
                let r = router.post("/v1/chat/completions", body).await;
                let status = r.status().as_u16();
                (status, r.text().await.unwrap_or_default())
            })
        })
        .collect();
    let since = Instant::now();
    let in_flight = loop {
        let running = [
            backends[0].metric("ferry_requests_running", "").await,
            backends[1].metric("ferry_requests_running", "").await,
        ];
        if running[0] + running[1] == 4.0 {
            break running[0] as usize;
        }
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "the long requests never all ran: {running:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(in_flight >= 1, "the pod to kill had no request in flight");
    backends[0].kill();

    // At once, with no pause: every request goes to the live pod.
    let after = count_by(&router, 24, 6, "x-ferry-pod", short).await;
    assert_eq!(after.keys().collect::<Vec<_>>(), ["kill-1"], "{after:?}");
    let mut failed = Vec::new();
    for task in long {
        let (status, body) = task.await.unwrap();
        if status != 200 {
            assert_eq!(status, 502, "{body}");
            assert!(body.contains("upstream_unreachable"), "{body}");
            failed.push(body);
        }
    }
    println!(
        "killed a pod with {in_flight} requests in flight: {} failed, 24 sent after all answered",
        failed.len()
    );
    assert_eq!(failed.len(), in_flight, "{failed:?}");
}

/// A version whose pods all refuse connections while the API server still lists them ready (a
/// rolled-back canary whose pods stopped before the router saw them go): its share goes to the
/// other version and no request fails, since none of them reached a pod. The spill is counted as
/// a retry of the version that lost it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_for_a_version_whose_pods_are_gone_go_to_the_other_version() {
    let scene = Scene::new("router-gone").await;
    let (_v1, mut v2) = two_versions(&scene, "gone", (50, 50)).await;
    let router = Router::start(&scene, &["--scrape-interval-ms", "0"]).await;
    router.wait_routable("gone").await;
    let before = count_by(&router, 40, 4, "x-ferry-version", |_| {
        chat("gone", json!({}))
    })
    .await;
    assert!(before.contains_key("v2"), "{before:?}");

    v2.kill();
    // The router's idle connections to v2 close with it; a request on one that raced its close
    // (written, then the connection dropped) is the ambiguous case that is never sent again.
    // What is tested here is what comes after: connections refused.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = count_by(&router, 100, 4, "x-ferry-version", |_| {
        chat("gone", json!({}))
    })
    .await;
    assert_eq!(after.get("v1"), Some(&100), "{after:?}");
    let metrics = router.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("ferry_router_retries_total{model=\"gone\",version=\"v2\"}"),
        "spills counted:\n{metrics}"
    );
}

/// A pod whose network disappears while requests wait on it (no FIN, no RST, no answer: what a
/// pod whose network is torn down before its process exits looks like): the router finds those
/// connections dead (TCP keepalive) within seconds, and answers them 502 with Retry-After rather
/// than sending them to another pod (the pod may have started them; a request that crashes pods
/// must not visit every pod). New requests go to the other pod. Nothing hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_waiting_on_a_pod_that_goes_silent_fail_fast_and_new_ones_go_to_another() {
    let scene = Scene::new("router-silent").await;
    // Both pods hold each request a while, so the least-loaded choice spreads the burst over
    // both and requests are still waiting on the first when it goes silent.
    let doomed = Backend::start("q", "v1", &["--fault-latency-ms", "3000"]).await;
    let other = Backend::start("q", "v1", &["--fault-latency-ms", "300"]).await;
    scene.serve_v1("q", &[&doomed, &other]).await;
    let router = Router::start(&scene, &["--scrape-interval-ms", "0"]).await;
    router.wait_routable("q").await;

    let started = Instant::now();
    let burst = futures::future::join_all(
        (0..8).map(|_| router.post("/v1/chat/completions", chat("q", json!({})))),
    );
    let silence = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        doomed.vanish()
    };
    // Without the router giving up on dead connections this would wait for the kernel's
    // retransmission limit (about 15 minutes); a minute is far more than it needs.
    let (responses, _vanished) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(burst, silence)
    })
    .await
    .expect("requests on the silent pod hung");
    let took = started.elapsed();
    let (mut answered, mut failed) = (0, 0);
    for r in responses {
        match r.status().as_u16() {
            200 => {
                assert_eq!(header(&r, "x-ferry-pod"), "q-1");
                answered += 1;
            }
            502 => {
                assert_eq!(header(&r, "retry-after"), "1");
                let body: serde_json::Value = r.json().await.unwrap();
                assert_eq!(body["error"]["code"], "upstream_unreachable");
                let message = body["error"]["message"].as_str().unwrap();
                assert!(
                    !message.contains("127.") && !message.contains("q-0"),
                    "pod internals in {message}"
                );
                failed += 1;
            }
            other => panic!("unexpected {other}: {:?}", r.text().await),
        }
    }
    assert!(
        failed >= 1 && answered >= 1,
        "{answered} answered, {failed} failed"
    );
    // New requests: the silent pod's new connections time out, it is skipped, the other answers.
    for _ in 0..4 {
        let r = router
            .post("/v1/chat/completions", chat("q", json!({})))
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ferry-pod"), "q-1");
    }
    println!(
        "silent pod: {failed} requests waiting on it answered 502 after {took:?} (not sent \
         again), {answered} answered by the other pod, and new ones go there"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_ready_pod_holds_the_request_then_answers_503() {
    let scene = Scene::new("router-hold").await;
    let backend = Backend::start("h", "v1", &[]).await;
    scene
        .deployment(
            "h",
            "h",
            json!({"stable": "v1"}),
            json!([{"version": "v1", "weight": 100}]),
        )
        .await;
    scene.pod("h-1", "h", "v1", backend.addr, false).await;
    let router = Arc::new(Router::start(&scene, &["--hold-seconds", "2"]).await);

    let started = Instant::now();
    let r = router
        .post("/v1/chat/completions", chat("h", json!({})))
        .await;
    assert_eq!(r.status(), 503);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "held for the hold time"
    );
    assert_eq!(header(&r, "retry-after"), "5");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_ready_pod");

    // A request held while the pod becomes ready is answered.
    let held = tokio::spawn({
        let router = router.clone();
        async move {
            router
                .post("/v1/chat/completions", chat("h", json!({})))
                .await
                .status()
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    scene.set_pod_ready("h-1", backend.addr, true).await;
    assert_eq!(held.await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_openai_shaped_errors_and_idempotent_repeats_replay() {
    let scene = Scene::new("router-errors").await;
    let backend = Backend::start("tiny-chat", "v1", &[]).await;
    scene
        .deployment(
            "e",
            "tiny-chat",
            json!({"stable": "v1"}),
            json!([{"version": "v1", "weight": 100}]),
        )
        .await;
    scene.pod("e-1", "e", "v1", backend.addr, true).await;
    scene
        .ns
        .kubectl([
            "create",
            "secret",
            "generic",
            "keys",
            "--from-literal=team-a=sk-test-a",
            "--from-literal=team-b=sk-test-b",
        ])
        .ok("create secret");
    let router = Router::start(
        &scene,
        &[
            "--api-keys-secret",
            "keys",
            "--api-keys-namespace",
            &scene.ns.name,
            "--key-requests-per-second",
            "20",
            "--max-body-bytes",
            "10000",
        ],
    )
    .await;
    let send = |key: Option<&str>, body: reqwest::Body| {
        let mut rq = router
            .http
            .post(format!("{}/v1/chat/completions", router.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = key {
            rq = rq.bearer_auth(k);
        }
        rq.send()
    };
    let error = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let retry = header(&r, "retry-after");
        let body: serde_json::Value = r.json().await.unwrap();
        for field in ["message", "type", "param", "code"] {
            assert!(
                body["error"].get(field).is_some(),
                "{field} missing in {body}"
            );
        }
        (
            status,
            body["error"]["code"].as_str().unwrap().to_string(),
            body["error"]["message"].as_str().unwrap().to_string(),
            retry,
        )
    };
    let good = chat("tiny-chat", json!({})).to_string();

    // Keys are read from the Secret (the router fails closed until then).
    let started = Instant::now();
    while send(Some("sk-test-a"), good.clone().into())
        .await
        .unwrap()
        .status()
        != 200
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "key never accepted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, code, _, _) = error(send(None, good.clone().into()).await.unwrap()).await;
    assert_eq!((status, code.as_str()), (401, "invalid_api_key"));
    let (status, code, _, _) =
        error(send(Some("sk-wrong"), good.clone().into()).await.unwrap()).await;
    assert_eq!((status, code.as_str()), (401, "invalid_api_key"));

    let key = Some("sk-test-b");
    let (status, code, message, _) = error(
        send(key, chat("gpt-4", json!({})).to_string().into())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (404, "model_not_found"));
    assert!(
        message.contains("tiny-chat"),
        "lists the served models: {message}"
    );
    let (status, code, _, _) = error(send(key, "{not json".into()).await.unwrap()).await;
    assert_eq!((status, code.as_str()), (400, "invalid_request"));
    let (status, _, message, _) = error(send(key, r#"{"model": 7}"#.into()).await.unwrap()).await;
    assert_eq!(status, 400);
    assert!(message.contains("model"), "{message}");
    let (status, code, _, _) = error(send(key, "{}".into()).await.unwrap()).await;
    assert_eq!((status, code.as_str()), (400, "invalid_request"));
    let big = chat("tiny-chat", json!({"user": "x".repeat(20_000)})).to_string();
    let (status, code, _, _) = error(send(key, big.into()).await.unwrap()).await;
    assert_eq!((status, code.as_str()), (413, "body_too_large"));
    // Errors of the pod pass through unchanged.
    let (status, code, _, _) = error(
        send(
            key,
            chat("tiny-chat", json!({"temperature": "hot"}))
                .to_string()
                .into(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (400, "invalid_request"));

    let models: serde_json::Value = router
        .http
        .get(format!("{}/v1/models", router.base))
        .bearer_auth("sk-test-a")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "tiny-chat");

    // Idempotency-Key: the repeat gets the first answer, sampled at temperature 1, not a second one.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sampled = chat("tiny-chat", json!({"temperature": 1.0, "max_tokens": 20})).to_string();
    let idem = |k: &str| {
        router
            .http
            .post(format!("{}/v1/chat/completions", router.base))
            .bearer_auth("sk-test-a")
            .header("idempotency-key", k.to_string())
            .header("content-type", "application/json")
            .body(sampled.clone())
            .send()
    };
    let first = idem("order-1").await.unwrap();
    assert_eq!(first.status(), 200);
    let first: serde_json::Value = first.json().await.unwrap();
    let repeat = idem("order-1").await.unwrap();
    assert_eq!(header(&repeat, "idempotent-replayed"), "true");
    let repeat: serde_json::Value = repeat.json().await.unwrap();
    assert_eq!(first["id"], repeat["id"]);
    assert_eq!(first["choices"], repeat["choices"]);
    let other: serde_json::Value = idem("order-2").await.unwrap().json().await.unwrap();
    assert_ne!(first["id"], other["id"]);
    // A key stands for one request: the same key with another body is refused, not answered
    // with the first body's response.
    let reused = router
        .http
        .post(format!("{}/v1/chat/completions", router.base))
        .bearer_auth("sk-test-a")
        .header("idempotency-key", "order-1")
        .json(&chat("tiny-chat", json!({"max_tokens": 3})))
        .send()
        .await
        .unwrap();
    let (status, code, message, _) = error(reused).await;
    assert_eq!(
        (status, code.as_str()),
        (422, "idempotency_key_reused"),
        "{message}"
    );

    // Twenty requests per second per key: a burst of forty gets 429s with Retry-After; the other
    // key is unaffected.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut limited = 0;
    for _ in 0..40 {
        let r = send(Some("sk-test-b"), "{}".into()).await.unwrap();
        if r.status() == 429 {
            let (_, code, _, retry) = error(r).await;
            assert_eq!(
                (code.as_str(), retry.as_str()),
                ("rate_limit_exceeded", "1")
            );
            limited += 1;
        }
    }
    assert!(limited >= 10, "{limited} of 40 limited");
    assert_eq!(
        send(Some("sk-test-a"), good.clone().into())
            .await
            .unwrap()
            .status(),
        200
    );

    let r = router.get("/v2/nothing").await;
    assert_eq!(r.status(), 404);
    let r = router.get("/internal/stats?window=forever").await;
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_go_to_the_less_loaded_pod() {
    // SmolLM2 (~20 tokens/s here): a 300-token stream keeps its pod busy for many seconds.
    let scene = Scene::new("router-p2c").await;
    let (a, b) = (
        Backend::smollm2("p2c", "v1").await,
        Backend::smollm2("p2c", "v1").await,
    );
    scene.serve_v1("p2c", &[&a, &b]).await;
    let router = Router::start(&scene, &["--scrape-interval-ms", "0"]).await;

    let long = router
        .post(
            "/v1/chat/completions",
            chat(
                "p2c",
                json!({"stream": true, "max_tokens": 300, "ignore_eos": true}),
            ),
        )
        .await;
    assert_eq!(long.status(), 200);
    let busy = header(&long, "x-ferry-pod");
    let counts = count_by(&router, 10, 1, "x-ferry-pod", |_| chat("p2c", json!({}))).await;
    assert!(
        !counts.contains_key(&busy),
        "a request went to the busy pod {busy}: {counts:?}"
    );
}

/// Tokens per minute are charged for every answer: a stream whose client did not ask for usage
/// is counted from its output events and the pod's prompt-token header, and `max_tokens` is
/// reserved before the request goes out, so requests in parallel cannot overshoot the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_limits_charge_plain_streams_and_reserve_max_tokens_up_front() {
    let scene = Scene::new("router-tpm").await;
    let backend = Backend::start("tpm", "v1", &[]).await;
    scene.serve_v1("tpm", &[&backend]).await;
    scene
        .ns
        .kubectl([
            "create",
            "secret",
            "generic",
            "keys",
            "--from-literal=team-a=sk-tpm-a",
        ])
        .ok("create secret");
    let router = Router::start(
        &scene,
        &[
            "--api-keys-secret",
            "keys",
            "--api-keys-namespace",
            &scene.ns.name,
            "--key-tokens-per-minute",
            "600",
        ],
    )
    .await;
    let send = |extra: serde_json::Value| {
        router
            .http
            .post(format!("{}/v1/chat/completions", router.base))
            .bearer_auth("sk-tpm-a")
            .json(&chat("tpm", extra))
            .send()
    };
    let started = Instant::now();
    while send(json!({"max_tokens": 1})).await.unwrap().status() == 401 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "keys never loaded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Plain streams (no usage asked for), 40 tokens each: the budget of 600 a minute runs out
    // after a dozen or so, which it never would if they were charged nothing.
    let plain = json!({"stream": true, "max_tokens": 40, "ignore_eos": true});
    let mut answered = 0;
    let limited = loop {
        let r = send(plain.clone()).await.unwrap();
        if r.status() == 429 {
            break r;
        }
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert!(
            !text.contains("\"usage\""),
            "usage the client did not ask for"
        );
        answered += 1;
        assert!(answered < 30, "plain streams were not charged");
    };
    let retry_after: u64 = header(&limited, "retry-after").parse().unwrap();
    let body: serde_json::Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    println!(
        "600 tokens/minute: {answered} plain 40-token streams answered, then 429 (retry after {retry_after} s)"
    );
    assert!((8..=15).contains(&answered), "{answered}");

    // A request asking for more than is left is refused before it goes out.
    let r = send(json!({"max_tokens": 500})).await.unwrap();
    assert_eq!(r.status(), 429);
}
