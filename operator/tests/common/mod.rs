//! Running the operator binary against the local cluster, and waiting for what it does.

#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_e2e::{Cluster, TempNamespace};

/// A `ferry-operator` process watching one namespace, with its own Lease there.
pub struct Operator {
    child: Child,
    log: PathBuf,
    pub name: String,
}

impl Operator {
    pub fn start(ns: &TempNamespace, name: &str, extra: &[&str]) -> Self {
        Self::start_as(ns, name, extra, Cluster::get().kubeconfig())
    }

    /// Like [`Operator::start`], with the credentials of `kubeconfig`.
    pub fn start_as(
        ns: &TempNamespace,
        name: &str,
        extra: &[&str],
        kubeconfig: &std::path::Path,
    ) -> Self {
        let log = std::env::temp_dir().join(format!("{}-{name}.log", ns.name));
        let image =
            std::env::var("FERRY_SERVER_IMAGE").expect("FERRY_SERVER_IMAGE is set by e2e/test.sh");
        let child = Command::new(env!("CARGO_BIN_EXE_ferry-operator"))
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .args(["--watch-namespace", &ns.name, "--lease-namespace", &ns.name])
            .args(["--identity", name, "--metrics-address", "127.0.0.1:0"])
            .args([
                "--server-image",
                &image,
                "--drain-seconds",
                "2",
                "--log-format",
                "text",
            ])
            .args(["--router-endpoint", "http://10.0.0.2:8080/v1"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start ferry-operator");
        Self {
            child,
            log,
            name: name.into(),
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Base URL of the operator's metrics server, from its log.
    pub async fn metrics_url(&self) -> String {
        wait_for(
            &format!("{} to serve /metrics", self.name),
            Duration::from_secs(30),
            || async {
                let logs = self.logs();
                let line = logs.lines().find(|l| l.contains("serving /metrics"))?;
                let address = match line.split("address=").nth(1) {
                    Some(rest) => rest.split_whitespace().next()?,
                    None => line.split("\"address\":\"").nth(1)?.split('"').next()?,
                };
                Some(format!("http://{address}"))
            },
        )
        .await
    }

    /// Sum of a metric's samples whose line contains `filter`.
    pub async fn metric(&self, name: &str, filter: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.metrics_url().await))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        ferry_e2e::metric_sum(&text, name, filter)
    }

    /// Peak resident memory of the process so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// SIGKILL: no Lease release, no cleanup, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.name, self.logs());
        }
    }
}

/// Polls `probe` every 250 ms until it gives a value; panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `kubectl apply` of a YAML document in the namespace.
pub fn apply(ns: &TempNamespace, yaml: &str) {
    let file = std::env::temp_dir().join(format!(
        "{}-{:x}.yaml",
        ns.name,
        ferry_operator::build::fnv1a(yaml.as_bytes())
    ));
    std::fs::write(&file, yaml).unwrap();
    ns.kubectl(["apply", "-f", file.to_str().unwrap()])
        .ok("kubectl apply");
    std::fs::remove_file(file).ok();
}

/// A ModelVersion of the tiny GGUF model on CPU with the given source.
pub fn tiny_model_version(name: &str, source: &str) -> String {
    format!(
        "apiVersion: serving.ferry.dev/v1alpha1
kind: ModelVersion
metadata: {{name: {name}}}
spec:
  source: {source}
  format: gguf
  files: [tiny-q8_0.gguf]
  engine: {{maxNumSeqs: 4}}
  resources: {{gpus: 0}}
"
    )
}

pub fn llm_deployment(name: &str, stable: &str, replicas: i32) -> String {
    format!(
        "apiVersion: serving.ferry.dev/v1alpha1
kind: LLMDeployment
metadata: {{name: {name}}}
spec: {{stable: {stable}, replicas: {replicas}, servedModelName: {name}}}
"
    )
}

/// A statically bound PersistentVolume (hostPath) + claim `claim` holding the tiny GGUF model.
/// Returns the PersistentVolume's name, for deletion.
pub fn tiny_model_claim(ns: &TempNamespace, claim: &str) -> String {
    let models = std::env::var("FERRY_MODELS").expect("FERRY_MODELS is set by e2e/test.sh");
    let pv = format!("{}-{claim}", ns.name);
    apply(
        ns,
        &format!(
            "apiVersion: v1
kind: PersistentVolume
metadata: {{name: {pv}}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadOnlyMany]
  storageClassName: ''
  hostPath: {{path: {models}/tiny-gguf}}
  claimRef: {{namespace: {ns}, name: {claim}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {claim}}}
spec:
  accessModes: [ReadOnlyMany]
  storageClassName: ''
  volumeName: {pv}
  resources: {{requests: {{storage: 1Gi}}}}
",
            ns = ns.name
        ),
    );
    pv
}

/// A plain HTTP file server on the pod bridge (pods reach the host at 10.88.0.1), holding the tiny
/// GGUF at `/tiny-q8_0.gguf` and in the Hub's layout at `/ferry/tiny/resolve/v1/tiny-q8_0.gguf`.
pub struct WeightsServer {
    child: Child,
    pub url: String,
    pub sha256: String,
    dir: PathBuf,
}

impl WeightsServer {
    pub fn start() -> Self {
        let models = std::env::var("FERRY_MODELS").expect("FERRY_MODELS is set by e2e/test.sh");
        let source = PathBuf::from(models).join("tiny-gguf/tiny-q8_0.gguf");
        let dir = std::env::temp_dir().join(format!("ferry-weights-{}", std::process::id()));
        let hub = dir.join("ferry/tiny/resolve/v1");
        std::fs::create_dir_all(&hub).unwrap();
        std::fs::copy(&source, dir.join("tiny-q8_0.gguf")).unwrap();
        std::fs::copy(&source, hub.join("tiny-q8_0.gguf")).unwrap();
        let sum = Command::new("sha256sum").arg(&source).output().unwrap();
        let sha256 = String::from_utf8(sum.stdout)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        let port = std::net::TcpListener::bind("10.88.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "10.88.0.1",
                "--directory",
            ])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(("10.88.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "python http.server did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            child,
            url: format!("http://10.88.0.1:{port}"),
            sha256,
            dir,
        }
    }
}

impl Drop for WeightsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Installs `manifests/rbac/operator.yaml` for a ServiceAccount in `ns` (the ClusterRole and its
/// binding get per-namespace names) and returns a kubeconfig that authenticates as it: tests run
/// the operator with exactly the permissions the chart grants.
pub fn restricted_kubeconfig(ns: &TempNamespace) -> PathBuf {
    restricted_kubeconfig_edited(ns, |rbac| rbac)
}

/// As [`restricted_kubeconfig`], with the chart's RBAC edited by `edit` first (a permission
/// taken away).
pub fn restricted_kubeconfig_edited(
    ns: &TempNamespace,
    edit: impl Fn(String) -> String,
) -> PathBuf {
    let cluster = Cluster::get();
    let rbac = std::fs::read_to_string(ferry_e2e::repo_root().join("manifests/rbac/operator.yaml"))
        .unwrap();
    let rbac = edit(rbac)
        .replace(
            "namespace: ferry-system",
            &format!("namespace: {}", ns.name),
        )
        .replace(
            "name: ferry-operator\nrules",
            &format!("name: ferry-operator-{}\nrules", ns.name),
        )
        .replace(
            "  name: ferry-operator\nroleRef",
            &format!("  name: ferry-operator-{}\nroleRef", ns.name),
        )
        .replace(
            "kind: ClusterRole\n  name: ferry-operator\n",
            &format!("kind: ClusterRole\n  name: ferry-operator-{}\n", ns.name),
        );
    apply(ns, &rbac);
    // A bound token from the TokenRequest API (ServiceAccounts have no token Secrets since 1.24).
    let token = cluster
        .kubectl([
            "-n",
            &ns.name,
            "create",
            "token",
            "ferry-operator",
            "--duration=2h",
        ])
        .ok("kubectl create token");
    let token = token.trim();
    let admin = std::fs::read_to_string(cluster.kubeconfig()).unwrap();
    let ca = admin
        .split("certificate-authority-data: ")
        .nth(1)
        .unwrap()
        .split([',', '}', ' '])
        .next()
        .unwrap();
    let server = admin
        .split("server: \"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let path = std::env::temp_dir().join(format!("{}-operator.kubeconfig", ns.name));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{server}\", certificate-authority-data: {ca}}}}}]\nusers: [{{name: operator, user: {{token: {token}}}}}]\ncontexts: [{{name: c, context: {{cluster: c, user: operator}}}}]\ncurrent-context: c\n"
        ),
    )
    .unwrap();
    path
}

/// Deletes the cluster-scoped RBAC objects [`restricted_kubeconfig`] made.
pub fn delete_cluster_rbac(ns: &TempNamespace) {
    let name = format!("ferry-operator-{}", ns.name);
    Cluster::get().kubectl([
        "delete",
        "clusterrole,clusterrolebinding",
        &name,
        "--wait=false",
    ]);
}
