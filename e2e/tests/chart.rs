//! The whole system as a user installs it: `helm install` of `charts/ferry` (operator ×2 with
//! leader election, router, RBAC) with the images built from this workspace, real ferry-server
//! pods of the tiny model, clients on the host talking to the router's Service — the official
//! `openai` Python client among them — and the fault drills: a server pod killed under load,
//! overload at ~10× capacity, a canary promoted and a faulty one rolled back while the leading
//! operator is deleted, a pod drained by SIGTERM mid-request, the LLMDeployment deleted and
//! created again. One test: the steps share a release and run one after another.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_e2e::{Cluster, TempNamespace, repo_root};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by e2e/test.sh"))
}

/// `localhost/ferry/operator:dev-abc` → (`localhost/ferry/operator`, `dev-abc`).
fn split_ref(reference: &str) -> (&str, &str) {
    reference
        .rsplit_once(':')
        .expect("image reference has a tag")
}

/// A Helm release of the chart, uninstalled (cluster-scoped RBAC included) when dropped.
struct Release {
    name: String,
    namespace: String,
}

impl Release {
    fn helm(args: &[&str]) -> (bool, String) {
        let out = Command::new(env("FERRY_HELM"))
            .env("KUBECONFIG", Cluster::get().kubeconfig())
            .args(args)
            .output()
            .expect("run helm");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn install(system: &TempNamespace, watched: &TempNamespace) -> Self {
        let chart = repo_root().join("charts/ferry");
        let name = system.name.clone();
        // The key Secret the chart's router reads (by name: its Role allows no other).
        system
            .kubectl([
                "create",
                "secret",
                "generic",
                "ferry-api-keys",
                &format!("--from-literal=e2e={API_KEY}"),
            ])
            .ok("create the API key Secret");
        let mut sets = vec![
            format!("watchNamespace={}", watched.name),
            "operator.leaseSeconds=4".into(),
            "logFormat=text".into(),
            "logLevel=info".into(),
            "router.apiKeys.enabled=true".into(),
        ];
        for (component, var) in [
            ("operator", "FERRY_OPERATOR_IMAGE"),
            ("router", "FERRY_ROUTER_IMAGE"),
            ("server", "FERRY_SERVER_IMAGE"),
        ] {
            let image = env(var);
            let (repository, tag) = split_ref(&image);
            sets.push(format!("images.{component}.repository={repository}"));
            sets.push(format!("images.{component}.tag={tag}"));
        }
        let mut args = vec![
            "install",
            &name,
            chart.to_str().unwrap(),
            "-n",
            &system.name,
            "--wait",
            "--timeout",
            "120s",
        ];
        for set in &sets {
            args.extend(["--set", set]);
        }
        let (ok, text) = Self::helm(&args);
        assert!(ok, "helm install failed:\n{text}");
        Release {
            name,
            namespace: system.name.clone(),
        }
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = Self::helm(&["uninstall", &self.name, "-n", &self.namespace]);
    }
}

/// The API key the release's router accepts: the chart references a Secret made beforehand (keys
/// never pass through Helm values).
const API_KEY: &str = "sk-chart-e2e";

/// An HTTP client that shows [`API_KEY`], like an OpenAI SDK given it.
fn client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {API_KEY}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// Polls `check` every 250 ms until it returns `Some`, or panics naming `what` after `timeout`.
async fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn jsonpath(ns: &TempNamespace, object: &str, path: &str) -> String {
    let out = ns.kubectl(["get", object, "-o", &format!("jsonpath={path}")]);
    if out.success {
        out.stdout
    } else {
        String::new()
    }
}

async fn llmd_until(ns: &TempNamespace, name: &str, what: &str, ok: impl Fn(&str, &str) -> bool) {
    let object = format!("llmd/{name}");
    wait_for(what, Duration::from_secs(120), || {
        let phase = jsonpath(ns, &object, "{.status.phase}");
        let stable = jsonpath(ns, &object, "{.status.stableVersion}");
        ok(&phase, &stable).then_some(())
    })
    .await;
}

fn tiny_version(name: &str, env: &str) -> String {
    let image =
        std::env::var("FERRY_MODEL_IMAGE").expect("FERRY_MODEL_IMAGE is set by e2e/test.sh");
    format!(
        "apiVersion: serving.ferry.dev/v1alpha1
kind: ModelVersion
metadata: {{name: {name}}}
spec:
  source: {{image: {{reference: '{image}', path: /models}}}}
  format: gguf
  files: [tiny-q8_0.gguf]
  engine: {{maxSeqLen: 512, maxNumSeqs: 2, maxQueue: 4}}
  resources: {{gpus: 0}}
  env: [{env}]
"
    )
}

fn deployment(name: &str, stable: &str, replicas: u32, canary: &str) -> String {
    format!(
        "apiVersion: serving.ferry.dev/v1alpha1
kind: LLMDeployment
metadata: {{name: {name}}}
spec:
  servedModelName: {name}
  stable: {stable}
  replicas: {replicas}
  slo: {{latencyP95Ms: 1000, errorRatePercent: 5}}
{canary}"
    )
}

fn canary(version: &str) -> String {
    format!(
        "  canary:
    version: {version}
    replicas: 1
    steps: [{{weight: 50, pauseSeconds: 2}}]
    analysis: {{intervalSeconds: 3, minRequests: 3, failureLimit: 2}}
    rollbackWindowSeconds: 5
"
    )
}

/// When a request was sent and when its answer ended (or it failed), and whether it failed.
#[derive(Clone, Copy)]
struct Span {
    sent: Instant,
    done: Instant,
    failed: bool,
}

impl Span {
    /// Sent before `to` and not over before `from`: in flight at some moment of [from, to].
    fn in_flight(&self, from: Instant, to: Instant) -> bool {
        self.sent < to && self.done > from
    }
}

/// Clients sending short requests in a loop; counts answers per version and failures.
struct Load {
    stop: Arc<AtomicBool>,
    /// Every request's span, in the order they ended.
    spans: Arc<Mutex<Vec<Span>>>,
    ok: Arc<Mutex<BTreeMap<String, u64>>>,
    failures: Arc<Mutex<Vec<String>>>,
    /// 429s (a pod's queue full) waited out as the OpenAI SDKs do.
    throttled: Arc<Mutex<u64>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(base: &str, model: &str, clients: usize, max_tokens: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok: Arc<Mutex<BTreeMap<String, u64>>> = Default::default();
        let failures: Arc<Mutex<Vec<String>>> = Default::default();
        let throttled: Arc<Mutex<u64>> = Default::default();
        let spans: Arc<Mutex<Vec<Span>>> = Default::default();
        let http = client();
        let tasks = (0..clients)
            .map(|i| {
                let (stop, ok, failures, throttled, spans, http) = (
                    stop.clone(),
                    ok.clone(),
                    failures.clone(),
                    throttled.clone(),
                    spans.clone(),
                    http.clone(),
                );
                let url = format!("{base}/v1/chat/completions");
                let body = serde_json::json!({
                    "model": model, "max_tokens": max_tokens, "user": format!("client-{i}"),
                    "messages": [{"role": "user", "content": "hi"}],
                });
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let at = Instant::now();
                        let sent = http
                            .post(&url)
                            .json(&body)
                            .timeout(Duration::from_secs(60))
                            .send()
                            .await;
                        let mut wait = None;
                        let failure = match sent {
                            // Like the OpenAI SDKs: honour Retry-After on a full queue.
                            Ok(r) if r.status() == 429 => {
                                *throttled.lock().unwrap() += 1;
                                wait = Some(retry_after(&r));
                                None
                            }
                            Ok(r) if r.status().is_success() => {
                                let version = r
                                    .headers()
                                    .get("x-ferry-version")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("?")
                                    .to_string();
                                match r.bytes().await {
                                    Ok(_) => {
                                        *ok.lock().unwrap().entry(version).or_default() += 1;
                                        None
                                    }
                                    Err(e) => Some(format!("body: {e}")),
                                }
                            }
                            Ok(r) => {
                                let status = r.status();
                                let text = r.text().await.unwrap_or_default();
                                Some(format!("{status}: {text}"))
                            }
                            Err(e) => Some(format!("send: {e}")),
                        };
                        spans.lock().unwrap().push(Span {
                            sent: at,
                            done: Instant::now(),
                            failed: failure.is_some(),
                        });
                        if let Some(failure) = failure {
                            failures.lock().unwrap().push(failure);
                        }
                        if let Some(wait) = wait {
                            tokio::time::sleep(wait).await;
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            spans,
            ok,
            failures,
            throttled,
            tasks,
        }
    }

    /// Stops the clients; returns the answers per version and the failures.
    async fn finish(self) -> (BTreeMap<String, u64>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let ok = self.ok.lock().unwrap().clone();
        let failures = self.failures.lock().unwrap().clone();
        (ok, failures)
    }
}

/// How long a 429 asks to wait (capped, so a drill keeps its pace).
fn retry_after(r: &reqwest::Response) -> Duration {
    let seconds = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(1);
    Duration::from_secs(seconds.min(2))
}

/// One streamed chat completion: (the `data:` payloads in order, the `x-ferry-pod` header).
async fn stream(
    http: &reqwest::Client,
    base: &str,
    model: &str,
    tokens: u32,
) -> Result<(Vec<String>, String), String> {
    // Like the OpenAI SDKs: a 429 (the pod's queue full) is retried after its Retry-After.
    let mut tries = 0;
    let response = loop {
        let response = http
            .post(format!("{base}/v1/chat/completions"))
            .json(&serde_json::json!({
                "model": model, "stream": true, "max_tokens": tokens, "min_tokens": tokens,
                "messages": [{"role": "user", "content": "count"}],
            }))
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(|e| format!("send: {e}"))?;
        tries += 1;
        if response.status() != 429 || tries > 3 {
            break response;
        }
        tokio::time::sleep(retry_after(&response)).await;
    };
    if !response.status().is_success() {
        let status = response.status();
        return Err(format!(
            "{status}: {}",
            response.text().await.unwrap_or_default()
        ));
    }
    let pod = response
        .headers()
        .get("x-ferry-pod")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    // A cut stream must still end (with an error event), never hang: the timeout above fails it.
    let body = response.text().await.map_err(|e| format!("body: {e}"))?;
    let data = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect();
    Ok((data, pod))
}

fn ready_server_pods(ns: &TempNamespace, version: &str) -> Vec<(String, String)> {
    let out = ns
        .kubectl([
            "get",
            "pods",
            "-l",
            &format!("serving.ferry.dev/version={version}"),
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.status.containerStatuses[0].containerID} {.status.containerStatuses[0].ready}{\"\\n\"}{end}",
        ])
        .ok("list server pods");
    out.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (name, id, ready) = (f.next()?, f.next()?, f.next()?);
            (ready == "true").then(|| {
                let id = id.trim_start_matches("containerd://").to_string();
                (name.to_string(), id)
            })
        })
        .collect()
}

fn lease_holder(system: &TempNamespace, release: &Release) -> String {
    jsonpath(
        system,
        &format!("lease/{}-operator", release.name),
        "{.spec.holderIdentity}",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn helm_installed_ferry_serves_survives_faults_and_rolls_out() {
    let cluster = Cluster::get();
    let system = cluster.temp_namespace("chart-sys");
    let models = cluster.temp_namespace("chart-models");
    let started = Instant::now();
    let release = Release::install(&system, &models);
    println!(
        "helm install --wait: {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Two operator replicas, one of which holds the Lease; the router answers on its Service.
    let operators = jsonpath(
        &system,
        "pods",
        "{range .items[?(@.metadata.labels.app\\.kubernetes\\.io/name==\"ferry-operator\")]}{.metadata.name}{\"\\n\"}{end}",
    );
    let operators: Vec<String> = operators.lines().map(String::from).collect();
    assert_eq!(operators.len(), 2, "{operators:?}");
    let leader = wait_for("an operator to lead", Duration::from_secs(30), || {
        let h = lease_holder(&system, &release);
        operators.contains(&h).then_some(h)
    })
    .await;
    let ip = jsonpath(
        &system,
        &format!("svc/{}-router", release.name),
        "{.spec.clusterIP}",
    );
    let base = format!("http://{ip}:8080");
    let http = client();

    // A model: 2 pods of the tiny model, installed as users ship them — a Helm chart of their
    // own — with `helm install --wait`. Helm 4 waits by kstatus, which reads the operator's
    // Reconciling condition: it returns once the model is Available and Ready, not when the
    // objects exist.
    let app = std::env::temp_dir().join(format!("{}-app", models.name));
    std::fs::create_dir_all(app.join("templates")).unwrap();
    std::fs::write(
        app.join("Chart.yaml"),
        "apiVersion: v2\nname: tiny-app\nversion: 0.1.0\n",
    )
    .unwrap();
    std::fs::write(
        app.join("templates/model.yaml"),
        format!(
            "{}---\n{}",
            tiny_version("v1", ""),
            deployment("tiny", "v1", 2, "")
        ),
    )
    .unwrap();
    let started = Instant::now();
    let (ok, text) = Release::helm(&[
        "install",
        "tiny-app",
        app.to_str().unwrap(),
        "-n",
        &models.name,
        "--wait",
        "--timeout",
        "180s",
    ]);
    assert!(ok, "helm install --wait of the model failed:\n{text}");
    let waited = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&app);
    assert_eq!(
        jsonpath(&models, "llmd/tiny", "{.status.phase}"),
        "Available",
        "helm --wait returned before the model was Available"
    );
    assert_eq!(
        jsonpath(
            &models,
            "llmd/tiny",
            "{.status.conditions[?(@.type==\"Ready\")].status}"
        ),
        "True"
    );
    println!(
        "tiny model, 2 pods: helm install --wait returned after {waited:.1} s, Available and Ready"
    );
    let models_url = format!("{base}/v1/models");
    wait_for("the router to list tiny", Duration::from_secs(10), || {
        let out = Command::new("curl")
            .args([
                "-sf",
                "-H",
                &format!("authorization: Bearer {API_KEY}"),
                &models_url,
            ])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .contains("\"tiny\"")
            .then_some(())
    })
    .await;

    // Without the key the router says 401.
    let refused = reqwest::Client::new()
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401, "no key");

    // Only the router gets answers from the pods: the operator's NetworkPolicy admits the
    // release namespace on the server port (this cluster's bridge network does not enforce
    // policies, so the pod token is what holds here), and a pod asked directly, without the
    // router's token or with a client's key, says 401; probes need nothing.
    let policy = jsonpath(&models, "networkpolicy/tiny", "{.spec}");
    let policy: serde_json::Value = serde_json::from_str(&policy).unwrap();
    assert_eq!(
        policy["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        system.name.as_str(),
        "{policy}"
    );
    assert_eq!(policy["ingress"][0]["ports"][0]["port"], 8000, "{policy}");
    assert_eq!(
        policy["podSelector"]["matchLabels"]["serving.ferry.dev/llmdeployment"], "tiny",
        "{policy}"
    );
    let master = jsonpath(&system, "secret/ferry-pod-token", "{.data.master}");
    let master = Command::new("base64")
        .args(["-d"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(master.as_bytes())?;
            child.wait_with_output()
        })
        .expect("base64 -d")
        .stdout;
    assert_eq!(master.len(), 32, "a random 32-byte master");
    let token = ferry_contract::pod_token::derive(&master, &models.name, "tiny");
    let spec = jsonpath(&models, "deployment/tiny-v1", "{.spec.template.spec}");
    assert!(
        spec.contains(&ferry_contract::pod_token::digest(&token)) && !spec.contains(&token),
        "the pod gets the token's digest, not the token: {spec}"
    );
    let pod_ip = jsonpath(
        &models,
        "pods",
        "{.items[?(@.metadata.labels.serving\\.ferry\\.dev/version==\"v1\")].status.podIP}",
    );
    let pod_ip = pod_ip
        .split_whitespace()
        .next()
        .expect("a pod IP")
        .to_string();
    let direct = format!("http://{pod_ip}:8000");
    for key in [None, Some(API_KEY)] {
        let mut request = http.get(format!("{direct}/v1/models"));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "direct call with {key:?}");
    }
    let with_token = http
        .get(format!("{direct}/v1/models"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), 200, "the router's token opens the pod");
    let health = http.get(format!("{direct}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200, "probes need no token");
    // Nor does Prometheus: `/metrics` holds counts only (the README says so).
    let metrics = http.get(format!("{direct}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200, "/metrics needs no token");
    println!(
        "pods: direct calls 401, the router's token 200, NetworkPolicy from {}",
        system.name
    );

    // The official openai client, unchanged, against the router: a completion and a stream.
    let script = r#"
import sys, openai
c = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key=sys.argv[2])
r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
assert r.choices[0].finish_reason in ("length", "stop"), r
assert r.usage.completion_tokens >= 1, r.usage
chunks = list(c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
    max_tokens=5, stream=True, stream_options={"include_usage": True}))
assert chunks[-1].usage.completion_tokens >= 1, chunks[-1]
assert [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason], chunks
try:
    c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    raise SystemExit("unknown model accepted")
except openai.NotFoundError as e:
    assert "tiny" in str(e), e
print("openai client ok:", len(chunks), "chunks")
"#;
    let out = Command::new(env("FERRY_PYTHON"))
        .args(["-c", script, &base, API_KEY])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "openai client: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{}", String::from_utf8_lossy(&out.stdout));

    // Drill: SIGKILL one server container under load. Requests the killed pod had received fail
    // with 502 + Retry-After (never sent to another pod: it may have started them); the rest,
    // and everything after, is answered by the other pod; cut streams end with an error event
    // and [DONE], never hang.
    let pods = ready_server_pods(&models, "v1");
    assert_eq!(pods.len(), 2, "{pods:?}");
    // 3 clients and 2 streams: within what one pod alone admits (2 running + 4 waiting), since
    // one pod carries everything once the other is killed (overload is the next drill).
    let load = Load::start(&base, "tiny", 3, 64);
    let streams: Vec<_> = (0..2)
        .map(|_| {
            let (http, base) = (http.clone(), base.clone());
            tokio::spawn(async move {
                let mut results = Vec::new();
                for _ in 0..20 {
                    let sent = Instant::now();
                    let result = stream(&http, &base, "tiny", 200).await;
                    results.push((sent, Instant::now(), result));
                }
                results
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The kill happens somewhere between these two instants (ctr's own run).
    let kill_from = Instant::now();
    let killed = Command::new(env("FERRY_CTR"))
        .args([
            "-a",
            &env("FERRY_CONTAINERD_SOCK"),
            "-n",
            "k8s.io",
            "tasks",
            "kill",
            "-s",
            "SIGKILL",
            &pods[0].1,
        ])
        .output()
        .expect("run ctr");
    let kill_to = Instant::now();
    assert!(
        killed.status.success(),
        "{}",
        String::from_utf8_lossy(&killed.stderr)
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let throttled = *load.throttled.lock().unwrap();
    let load_spans = load.spans.clone();
    let (ok, mut failures) = load.finish().await;
    let mut spans = std::mem::take(&mut *load_spans.lock().unwrap());
    let (mut complete, mut cut) = (0, 0);
    for s in streams {
        for (sent, done, result) in s.await.unwrap() {
            let mut span = Span {
                sent,
                done,
                failed: true,
            };
            // A stream the killed pod had received but not begun answering fails like any
            // request it had received: 502, counted with the others below.
            let (data, _) = match result {
                Ok(started) => started,
                Err(e) => {
                    failures.push(e);
                    spans.push(span);
                    continue;
                }
            };
            assert_eq!(
                data.last().map(String::as_str),
                Some("[DONE]"),
                "a stream did not end"
            );
            if let Some(error) = data.iter().find(|d| d.contains("\"error\"")) {
                println!("cut stream: {error}");
                cut += 1;
            } else {
                complete += 1;
                span.failed = false;
            }
            spans.push(span);
        }
    }
    // In flight at the kill, on either pod (the clients cannot see which pod had a failed one).
    let in_flight = spans
        .iter()
        .filter(|s| s.in_flight(kill_from, kill_to))
        .count();
    let failed_at_kill = spans
        .iter()
        .filter(|s| s.failed && s.in_flight(kill_from, kill_to))
        .count();
    println!(
        "kill drill: {in_flight} requests in flight at the kill (both pods), {failed_at_kill} of \
         them failed or were cut; {} requests answered, {} failed, {throttled} waited out a 429 \
         (one pod carrying everything); streams: {complete} complete, {cut} cut with an error \
         event",
        ok.values().sum::<u64>(),
        failures.len()
    );
    // Only requests the killed pod may have started fail: each one was in flight at the kill.
    // One sent after it went to the live pod, whatever else ran on the machine.
    let late: Vec<_> = spans
        .iter()
        .filter(|s| s.failed && !s.in_flight(kill_from, kill_to))
        .collect();
    assert!(
        late.is_empty(),
        "{} requests not in flight at the kill failed (or were cut): {failures:?}",
        late.len()
    );
    assert!(
        failures.len() + cut <= in_flight,
        "more failures than requests in flight at the kill: {failures:?}"
    );
    for f in &failures {
        assert!(
            f.starts_with("502") && f.contains("upstream_unreachable"),
            "a failure that is not the killed pod's: {f}"
        );
    }
    let restarted = wait_for(
        "the killed pod ready again",
        Duration::from_secs(60),
        || (ready_server_pods(&models, "v1").len() == 2).then_some(()),
    );
    restarted.await;

    // Drill: overload at ~10x capacity (2 pods × (2 running + 4 waiting) = 12 requests; 120 at
    // once). The excess gets 429 + Retry-After, nothing fails otherwise, every admitted request
    // completes, and the pods keep serving.
    let started = Instant::now();
    let burst: Vec<_> = (0..120)
        .map(|_| {
            let (http, base) = (http.clone(), base.clone());
            tokio::spawn(async move {
                let t = Instant::now();
                let r = http
                    .post(format!("{base}/v1/chat/completions"))
                    .json(&serde_json::json!({
                        "model": "tiny", "max_tokens": 200, "min_tokens": 200,
                        "messages": [{"role": "user", "content": "hi"}],
                    }))
                    .timeout(Duration::from_secs(60))
                    .send()
                    .await
                    .expect("a burst request got no response");
                let status = r.status().as_u16();
                let retry_after = r.headers().contains_key("retry-after");
                let body = r.text().await.unwrap_or_default();
                (status, retry_after, body, t.elapsed())
            })
        })
        .collect();
    let mut admitted = Vec::new();
    let mut rejected = 0;
    for b in burst {
        let (status, retry_after, body, took) = b.await.unwrap();
        match status {
            200 => admitted.push(took),
            429 => {
                assert!(retry_after, "a 429 without Retry-After: {body}");
                assert!(
                    body.contains("\"error\""),
                    "a 429 that is not an OpenAI error: {body}"
                );
                rejected += 1;
            }
            other => panic!("overload answered {other}: {body}"),
        }
    }
    admitted.sort();
    let p99 = admitted[(admitted.len() * 99 / 100).min(admitted.len() - 1)];
    println!(
        "overload drill: 120 at once -> {} admitted (p99 {:.2} s), {rejected} rejected with 429 + Retry-After, in {:.1} s",
        admitted.len(),
        p99.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        rejected > 0 && admitted.len() >= 12,
        "admitted {}, rejected {rejected}",
        admitted.len()
    );
    assert_eq!(
        ready_server_pods(&models, "v1").len(),
        2,
        "pods stopped serving after the overload"
    );

    // Rollouts under load: a good canary is promoted; a faulty one (1.5 s injected latency
    // against a 1 s SLO) is rolled back, while the leading operator is deleted mid-rollout.
    let load = Load::start(&base, "tiny", 3, 4);
    models.apply(&tiny_version("v2", ""));
    models.apply(&deployment("tiny", "v1", 2, &canary("v2")));
    llmd_until(&models, "tiny", "v2 promoted", |p, s| {
        p == "Available" && s == "v2"
    })
    .await;
    models.apply(&tiny_version(
        "v3",
        "{name: FERRY_FAULT_LATENCY_MS, value: '1500'}",
    ));
    models.apply(&deployment("tiny", "v2", 2, &canary("v3")));
    llmd_until(&models, "tiny", "v3 canary receiving traffic", |p, _| {
        p == "Progressing"
    })
    .await;
    let started = Instant::now();
    system
        .kubectl(["delete", "pod", &leader, "--wait=false"])
        .ok("delete the leading operator");
    let new_leader = wait_for(
        "the standby operator to lead",
        Duration::from_secs(60),
        || {
            let h = lease_holder(&system, &release);
            (!h.is_empty() && h != leader).then_some(h)
        },
    )
    .await;
    println!(
        "leader {leader} deleted; {new_leader} leads after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    llmd_until(&models, "tiny", "v3 rolled back", |p, _| p == "RolledBack").await;
    let message = jsonpath(
        &models,
        "llmd/tiny",
        "{.status.conditions[?(@.type==\"RolledBack\")].message}",
    );
    assert!(message.contains("latency p95"), "{message}");
    let (ok, failures) = load.finish().await;
    println!(
        "rollouts: answers per version {ok:?}, {} failed; {message}",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "requests failed during the rollouts: {failures:?}"
    );
    assert!(
        ok.get("v3").copied().unwrap_or(0) > 0,
        "the faulty canary got no traffic: {ok:?}"
    );
    assert_eq!(
        jsonpath(&models, "llmd/tiny", "{.status.stableVersion}"),
        "v2"
    );

    // Drill: SIGTERM (pod deletion) while a request is in flight: the pod drains it first.
    models.apply(&tiny_version(
        "slow",
        "{name: FERRY_FAULT_LATENCY_MS, value: '4000'}",
    ));
    models.apply(&deployment("slow", "slow", 1, ""));
    llmd_until(&models, "slow", "slow Available", |p, _| p == "Available").await;
    let pod = ready_server_pods(&models, "slow").remove(0).0;
    let in_flight = {
        let (http, base) = (http.clone(), base.clone());
        tokio::spawn(async move { stream(&http, &base, "slow", 50).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    models
        .kubectl(["delete", "pod", &pod, "--wait=false"])
        .ok("delete the slow pod");
    let (data, served_by) = in_flight.await.unwrap().expect("the drained stream failed");
    assert_eq!(served_by, pod);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert!(
        data.iter()
            .any(|d| d.contains("\"finish_reason\":\"length\""))
            && !data.iter().any(|d| d.contains("\"error\"")),
        "the stream in flight at SIGTERM did not finish cleanly: {data:?}"
    );
    println!(
        "SIGTERM drill: the stream in flight on {pod} finished ({} events)",
        data.len()
    );

    // Delete the LLMDeployment and create it again: its children go, come back, and it serves.
    models
        .kubectl(["delete", "llmd", "tiny", "--wait=true"])
        .ok("delete llmd tiny");
    wait_for("tiny's pods to go", Duration::from_secs(60), || {
        let out = models.kubectl([
            "get",
            "deploy",
            "-l",
            "serving.ferry.dev/llmdeployment=tiny",
            "-o",
            "name",
        ]);
        (out.success && out.stdout.trim().is_empty()).then_some(())
    })
    .await;
    models.apply(&deployment("tiny", "v2", 1, ""));
    llmd_until(&models, "tiny", "tiny Available again", |p, s| {
        p == "Available" && s == "v2"
    })
    .await;
    let answer = wait_for(
        "an answer from the re-created tiny",
        Duration::from_secs(30),
        || {
            let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("{base}/v1/chat/completions"),
                "-H", "content-type: application/json",
                "-H", &format!("authorization: Bearer {API_KEY}"),
                "-d", r#"{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}"#])
            .output()
            .ok()?;
            (String::from_utf8_lossy(&out.stdout) == "200").then_some(())
        },
    );
    answer.await;
    drop(release);
}
