//! Real `ferry-server`s (tiny model) on loopback addresses 127.0.0.N, a real API server holding
//! the LLMDeployments and the pods that point at them, and the router discovering both.
//!
//! The pods are real API objects that no kubelet runs (an unknown `schedulerName` keeps them
//! unscheduled); the test writes their status (ready, pod IP = the backend's loopback address),
//! as the kubelet would. A real ReplicaSet adopts them, so they carry the owner reference the
//! router requires. Everything the router does with them is what it does in a cluster.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use ferry_crds::LLMDeployment;
use ferry_crds::labels::child_name;
use ferry_e2e::{Cluster, TempNamespace};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub fn models_dir() -> PathBuf {
    let dir = std::env::var_os("FERRY_MODELS")
        .map(PathBuf::from)
        .expect("FERRY_MODELS is set by e2e/test.sh (run `bash e2e/models/fetch.sh`)");
    assert!(
        dir.join("tiny-gguf/tiny-q8_0.gguf").exists(),
        "no tiny model in {}",
        dir.display()
    );
    dir
}

/// Each test binary takes its loopback addresses from its own range, so parallel tests (and test
/// binaries) never collide: 127.0.<third>.<n>.
fn next_ip() -> Ipv4Addr {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    assert!(n < 250, "out of loopback addresses");
    let third = (std::process::id() % 200) as u8 + 20;
    Ipv4Addr::new(127, 0, third, n)
}

/// One real ferry-server, in a runtime of its own so that [`Backend::kill`] can end every
/// connection at once, as a crashed pod's would.
pub struct Backend {
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Backend {
    /// A backend with the tiny model serving `model` (the LLMDeployment's served model name) as
    /// version `version`.
    pub async fn start(model: &str, version: &str, extra: &[&str]) -> Backend {
        Self::start_with("tiny-gguf", "tiny-q8_0.gguf", model, version, extra).await
    }

    /// A backend with SmolLM2 (~20 tokens/s here: streams that last long enough to hang up on).
    pub async fn smollm2(model: &str, version: &str) -> Backend {
        Self::start_with(
            "smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            model,
            version,
            &[],
        )
        .await
    }

    async fn start_with(
        dir: &str,
        file: &str,
        model: &str,
        version: &str,
        extra: &[&str],
    ) -> Backend {
        let dir = models_dir().join(dir);
        let mut argv = vec![
            "ferry-server",
            "--model-path",
            dir.to_str().unwrap(),
            "--gguf-file",
            file,
            "--served-model-name",
            model,
            "--model-version",
            version,
            "--max-num-seqs",
            "8",
            "--log-format",
            "text",
        ];
        argv.extend_from_slice(extra);
        let args = ferry_server::Args::parse_from(argv);
        let listener = std::net::TcpListener::bind((next_ip(), 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            ferry_server::serve(args, listener, std::future::pending()).await
        });
        let backend = Backend {
            addr,
            runtime: Some(runtime),
        };
        let client = reqwest::Client::new();
        for _ in 0..600 {
            if let Ok(r) = client.get(format!("http://{addr}/ready")).send().await
                && r.status() == 200
            {
                return backend;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("backend at {addr} never became ready");
    }

    /// Gone at once, like a crashed pod: open connections close and the port refuses new ones.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    /// Silent from now on, while the returned guard lives: every packet to and from the backend
    /// is dropped (nft), so its connections get no FIN, no RST, no answer, as when a pod's
    /// network is torn down before its process closes its connections.
    pub fn vanish(&self) -> Vanished {
        let table = format!(
            "ferry_vanish_{}",
            self.addr.to_string().replace(['.', ':'], "_")
        );
        let (ip, port) = (self.addr.ip(), self.addr.port());
        nft(
            &["-f", "-"],
            &format!(
                "table ip {table} {{
  chain out {{
    type filter hook output priority 0; policy accept;
    ip daddr {ip} tcp dport {port} drop
    ip saddr {ip} tcp sport {port} drop
  }}
}}
"
            ),
        );
        Vanished { table }
    }

    /// The sum of the pod's `name` series whose labels contain `filter`.
    pub async fn metric(&self, name: &str, filter: &str) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        ferry_e2e::metric_sum(&text, name, filter)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The nft rules of [`Backend::vanish`]; removed when dropped.
pub struct Vanished {
    table: String,
}

impl Drop for Vanished {
    fn drop(&mut self) {
        nft(&["delete", "table", "ip", &self.table], "");
    }
}

fn nft(args: &[&str], stdin: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft (Debian package nftables, installed by e2e/cluster/ensure.sh; needs root)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "nft {args:?} failed: {status}");
}

/// A namespace with LLMDeployments and pods for the router to find.
pub struct Scene {
    pub ns: TempNamespace,
    pub client: Client,
}

impl Scene {
    pub async fn new(prefix: &str) -> Scene {
        let cluster = Cluster::get();
        Scene {
            ns: cluster.temp_namespace(prefix),
            client: cluster.client().await,
        }
    }

    /// An LLMDeployment serving `model`, with the split the operator would write.
    pub async fn deployment(&self, name: &str, model: &str, spec: Value, traffic: Value) {
        let api: Api<LLMDeployment> = Api::namespaced(self.client.clone(), &self.ns.name);
        let mut spec = spec;
        spec["servedModelName"] = json!(model);
        let object: LLMDeployment = serde_json::from_value(json!({
            "apiVersion": "serving.ferry.dev/v1alpha1", "kind": "LLMDeployment",
            "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap();
        api.create(&PostParams::default(), &object).await.unwrap();
        self.set_traffic(name, model, traffic).await;
    }

    pub async fn set_traffic(&self, name: &str, model: &str, traffic: Value) {
        let api: Api<LLMDeployment> = Api::namespaced(self.client.clone(), &self.ns.name);
        let status = json!({"status": {"servedModelName": model, "traffic": traffic}});
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }

    /// An LLMDeployment named after `model` that sends all its traffic to version `v1`, and one
    /// ready pod `{model}-{i}` per backend (the backends' order).
    pub async fn serve_v1(&self, model: &str, backends: &[&Backend]) {
        self.deployment(
            model,
            model,
            json!({"stable": "v1"}),
            json!([{"version": "v1", "weight": 100}]),
        )
        .await;
        let pods: Vec<(String, SocketAddr, bool)> = backends
            .iter()
            .enumerate()
            .map(|(i, b)| (format!("{model}-{i}"), b.addr, true))
            .collect();
        self.pods(model, "v1", &pods).await;
    }

    /// A pod of `deployment`/`version` whose address is `backend`'s, ready or not.
    pub async fn pod(
        &self,
        pod: &str,
        deployment: &str,
        version: &str,
        addr: SocketAddr,
        ready: bool,
    ) {
        self.pods(deployment, version, &[(pod.to_string(), addr, ready)])
            .await;
    }

    /// The pods of `deployment`/`version` (name, backend address, ready), owned as the operator's
    /// are: the router routes only to pods whose controller is the ReplicaSet of the version's
    /// Deployment (`{child}-{pod-template-hash}`). The pods are made first, then a real
    /// ReplicaSet with as many replicas adopts them (the ReplicaSet controller writes the owner
    /// references, as for any orphan that matches its selector); this waits for the adoption.
    pub async fn pods(&self, deployment: &str, version: &str, pods: &[(String, SocketAddr, bool)]) {
        const HASH: &str = "e2e";
        let labels = json!({
            "serving.ferry.dev/llmdeployment": deployment,
            "serving.ferry.dev/version": version,
            "pod-template-hash": HASH,
        });
        for (pod, addr, ready) in pods {
            self.unowned_pod(pod, (deployment, version, HASH), *addr, *ready)
                .await;
        }
        let spec = pod_spec(8000);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns.name);
        let replica_sets: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &self.ns.name);
        let name = format!("{}-{HASH}", child_name(deployment, version));
        let object: ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": pods.len(), "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": spec}},
        }))
        .unwrap();
        replica_sets
            .create(&PostParams::default(), &object)
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        for (pod, _, _) in pods {
            loop {
                let owned = api.get(pod).await.unwrap().metadata.owner_references;
                if owned.unwrap_or_default().iter().any(|o| o.name == name) {
                    break;
                }
                assert!(Instant::now() < deadline, "{pod} not adopted by {name}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// A pod with a version's labels and `pod-template-hash` = `hash`, that no ReplicaSet owns
    /// (unless one whose selector it matches adopts it): what anyone allowed to create pods could
    /// make by hand. The router must ignore it.
    pub async fn unowned_pod(
        &self,
        pod: &str,
        (deployment, version, hash): (&str, &str, &str),
        addr: SocketAddr,
        ready: bool,
    ) {
        let labels = json!({
            "serving.ferry.dev/llmdeployment": deployment,
            "serving.ferry.dev/version": version,
            "pod-template-hash": hash,
        });
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns.name);
        let object: Pod = serde_json::from_value(json!({
            "metadata": {"name": pod, "labels": labels}, "spec": pod_spec(addr.port()),
        }))
        .unwrap();
        api.create(&PostParams::default(), &object).await.unwrap();
        self.set_pod_ready(pod, addr, ready).await;
    }

    pub async fn set_pod_ready(&self, pod: &str, addr: SocketAddr, ready: bool) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns.name);
        let status = json!({"status": {"phase": "Running", "podIP": addr.ip().to_string(),
            "podIPs": [{"ip": addr.ip().to_string()}],
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
        api.patch_status(pod, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }
}

/// A pod spec no kubelet runs (no scheduler has this name), listening on `port`.
fn pod_spec(port: u16) -> Value {
    json!({"schedulerName": "ferry-loopback-no-kubelet", "containers": [{
        "name": "server", "image": "ferry-server",
        "ports": [{"name": "http", "containerPort": port}]}]})
}

/// The router under test, discovering through the API server.
pub struct Router {
    pub base: String,
    pub http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Router {
    pub async fn start(scene: &Scene, extra: &[&str]) -> Router {
        let mut argv = vec![
            "ferry-router",
            "--watch-namespace",
            &scene.ns.name,
            "--log-format",
            "text",
        ];
        argv.extend_from_slice(extra);
        let args = ferry_router::Args::parse_from(argv);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(ferry_router::serve_cluster(
            args,
            scene.client.clone(),
            listener,
            async move {
                let _ = rx.await;
            },
        ));
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .unwrap();
        let router = Router {
            base,
            http,
            shutdown: Some(tx),
            handle,
        };
        let started = Instant::now();
        while router.get("/ready").await.status() != 200 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "router never synced"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        router
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Waits until the router routes `model` to a ready pod (the table follows the API server).
    pub async fn wait_routable(&self, model: &str) {
        let started = Instant::now();
        loop {
            let r = self
                .post("/v1/chat/completions", chat(model, json!({})))
                .await;
            if r.status() == 200 {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{model} never became routable: {}",
                r.text().await.unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stats(&self, window: &str) -> ferry_router::stats::Summary {
        self.get(&format!("/internal/stats?window={window}"))
            .await
            .json()
            .await
            .unwrap()
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.abort();
    }
}

/// A one-token chat request for `model` with `extra` fields merged in.
pub fn chat(model: &str, extra: Value) -> Value {
    let mut body = json!({"model": model, "max_tokens": 1,
                          "messages": [{"role": "user", "content": "hi"}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

pub fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}
