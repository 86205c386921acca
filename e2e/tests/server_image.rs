//! The ferry-server image, built here without docker, runs as a real pod on the local cluster:
//! it becomes Ready through its `/ready` probe, answers an OpenAI request on the pod IP, and
//! drains on deletion.

use std::time::{Duration, Instant};

use ferry_e2e::Cluster;
use serde_json::Value;

#[test]
fn ferry_server_image_serves_in_the_cluster() {
    let image =
        std::env::var("FERRY_SERVER_IMAGE").expect("FERRY_SERVER_IMAGE is set by e2e/test.sh");
    let models = std::env::var("FERRY_MODELS").expect("FERRY_MODELS is set by e2e/test.sh");
    let ns = Cluster::get().temp_namespace("server");
    let pod = format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "tiny"}},
  "spec": {{"terminationGracePeriodSeconds": 10, "containers": [{{"name": "server", "image": "{image}", "imagePullPolicy": "Never",
    "args": ["--model-path", "/models", "--gguf-file", "tiny-q8_0.gguf", "--served-model-name", "tiny",
             "--model-version", "tiny-q8", "--drain-seconds", "5"],
    "env": [{{"name": "HF_HOME", "value": "/tmp/hf"}}],
    "readinessProbe": {{"httpGet": {{"path": "/ready", "port": 8000}}, "periodSeconds": 1}},
    "livenessProbe": {{"httpGet": {{"path": "/health", "port": 8000}}}},
    "volumeMounts": [{{"name": "models", "mountPath": "/models", "readOnly": true}}]}}],
   "volumes": [{{"name": "models", "hostPath": {{"path": "{models}/tiny-gguf"}}}}]}}}}"#
    );
    let file = std::env::temp_dir().join(format!("{}-pod.json", ns.name));
    std::fs::write(&file, pod).unwrap();
    ns.kubectl(["apply", "-f", file.to_str().unwrap()])
        .ok("create the server pod");
    let started = Instant::now();
    ns.kubectl([
        "wait",
        "--for=condition=Ready",
        "pod/tiny",
        "--timeout=120s",
    ])
    .ok("pod Ready");
    println!(
        "ferry-server pod Ready {:.1} s after creation",
        started.elapsed().as_secs_f64()
    );

    let ip = ns
        .kubectl(["get", "pod", "tiny", "-o", "jsonpath={.status.podIP}"])
        .ok("pod IP");
    let body = r#"{"model":"tiny","messages":[{"role":"user","content":"hello"}],"max_tokens":4,"ignore_eos":true}"#;
    let out = std::process::Command::new("curl")
        .args([
            "-sf",
            "-m",
            "20",
            "-H",
            "content-type: application/json",
            "-d",
            body,
        ])
        .arg(format!("http://{ip}:8000/v1/chat/completions"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl to the pod failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 4, "{v}");

    let logs = ns.kubectl(["logs", "tiny"]).ok("kubectl logs");
    assert!(
        logs.lines()
            .any(|l| l.contains("\"model loaded and warmed up; ready\"")),
        "{logs}"
    );

    let deleting = Instant::now();
    ns.kubectl(["delete", "pod", "tiny", "--wait=true", "--timeout=60s"])
        .ok("delete the pod");
    assert!(deleting.elapsed() < Duration::from_secs(60));
    std::fs::remove_file(file).ok();
}
