//! Harness for tests against a real local Kubernetes: the cluster that `e2e/test.sh` starts
//! (scripts in `e2e/cluster/`), `kubectl` as users run it, a kube-rs client, and a namespace per
//! test that is deleted afterwards.

pub mod argocd;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The repository root, for manifests and charts.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

/// A running cluster, found through `FERRY_KUBECONFIG` and `FERRY_KUBECTL`.
pub struct Cluster {
    kubeconfig: PathBuf,
    kubectl: PathBuf,
}

/// What a `kubectl` run printed and whether it succeeded.
pub struct Kubectl {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Kubectl {
    fn from(o: Output) -> Self {
        Self {
            success: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Kubectl {
    /// stdout, or a panic that shows the command's stderr.
    pub fn ok(self, what: &str) -> String {
        assert!(
            self.success,
            "{what} failed:\n{}{}",
            self.stdout, self.stderr
        );
        self.stdout
    }
}

impl Cluster {
    /// The cluster of this test run. Installs Ferry's CRDs once per test binary.
    pub fn get() -> &'static Cluster {
        static CLUSTER: OnceLock<Cluster> = OnceLock::new();
        CLUSTER.get_or_init(|| {
            let var = |name: &str| {
                std::env::var_os(name).map(PathBuf::from).unwrap_or_else(|| {
                    panic!(
                        "{name} is not set: these tests need the local Kubernetes. Run them with \
                         `bash e2e/test.sh`, which starts the cluster, sets {name} and stops it after."
                    )
                })
            };
            let cluster = Cluster { kubeconfig: var("FERRY_KUBECONFIG"), kubectl: var("FERRY_KUBECTL") };
            cluster.install_crds();
            cluster
        })
    }

    /// The admin kubeconfig, for processes (the operator) that run against the cluster.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Runs kubectl against the cluster.
    pub fn kubectl<I, S>(&self, args: I) -> Kubectl
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        // A discovery cache per cluster: one left by an earlier cluster on the same address would
        // hide resource types installed since.
        let cache = self.kubeconfig.with_file_name("kubectl-cache");
        Command::new(&self.kubectl)
            .env("KUBECONFIG", &self.kubeconfig)
            .arg(format!("--cache-dir={}", cache.display()))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.kubectl.display()))
            .into()
    }

    /// A kube-rs client with the admin credentials.
    pub async fn client(&self) -> kube::Client {
        let kubeconfig =
            kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig is readable");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("kubeconfig is valid");
        kube::Client::try_from(config).expect("client from kubeconfig")
    }

    /// Applies the CRDs under `charts/ferry/crds` with a plain `kubectl apply`, as the README
    /// says, and waits until they are served.
    fn install_crds(&self) {
        let dir = repo_root().join("charts/ferry/crds");
        self.kubectl([OsStr::new("apply"), OsStr::new("-f"), dir.as_os_str()])
            .ok("kubectl apply of the CRDs");
        self.kubectl([
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/modelversions.serving.ferry.dev",
            "crd/llmdeployments.serving.ferry.dev",
        ])
        .ok("waiting for the CRDs to be established");
    }

    /// A fresh namespace, deleted when the returned guard drops.
    pub fn temp_namespace(&'static self, prefix: &str) -> TempNamespace {
        let name = format!("{prefix}-{}", unique_suffix());
        self.kubectl(["create", "namespace", &name])
            .ok("create namespace");
        TempNamespace {
            name,
            cluster: self,
        }
    }
}

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{:x}{}", nanos & 0xfffff, N.fetch_add(1, Ordering::Relaxed))
}

/// A namespace that lives as long as one test.
pub struct TempNamespace {
    pub name: String,
    cluster: &'static Cluster,
}

impl TempNamespace {
    /// kubectl with `-n <namespace>` added.
    pub fn kubectl<'a>(&self, args: impl IntoIterator<Item = &'a str>) -> Kubectl {
        let mut all = vec!["-n".to_string(), self.name.clone()];
        all.extend(args.into_iter().map(String::from));
        self.cluster.kubectl(all)
    }
}

impl Drop for TempNamespace {
    fn drop(&mut self) {
        let _ = self
            .cluster
            .kubectl(["delete", "namespace", &self.name, "--wait=false"]);
    }
}

/// The sum of the samples of metric `name` (exactly that name, any labels) whose line contains
/// `filter`, in a Prometheus text exposition.
pub fn metric_sum(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
                && l.contains(filter)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

impl TempNamespace {
    /// `kubectl apply` of a YAML document (or several) into this namespace.
    pub fn apply(&self, yaml: &str) {
        let file = std::env::temp_dir().join(format!("{}-{}.yaml", self.name, unique_suffix()));
        std::fs::write(&file, yaml).expect("write a temporary manifest");
        let applied = self.kubectl(["apply", "-f", file.to_str().unwrap()]);
        std::fs::remove_file(&file).ok();
        applied.ok("kubectl apply");
    }
}
