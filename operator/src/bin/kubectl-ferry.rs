//! `kubectl ferry`: a kubectl plugin for Ferry's rollouts. Install it on PATH (`cargo install
//! --path operator --bin kubectl-ferry`) and kubectl finds it: `kubectl ferry status chat -n
//! models`. It reads the LLMDeployment and its Events and writes only the rollout annotations the
//! operator documents; it never touches the spec.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use ferry_crds::LLMDeployment;
use ferry_operator::plugin::{self, Control, HistoryLine};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Event;
use kube::api::{ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Config, ResourceExt};

#[derive(Parser)]
#[command(
    name = "kubectl ferry",
    bin_name = "kubectl ferry",
    about = "Ferry's LLM rollouts from kubectl: status, promote, abort, pause, resume, history.",
    version
)]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
    #[command(flatten)]
    target: Target,
}

#[derive(Args)]
struct Target {
    /// Namespace of the LLMDeployment (default: the kubeconfig context's).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// Kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum Verb {
    /// Phase, health, versions with their traffic and pods, the canary's step, the last analysis.
    Status {
        /// The LLMDeployment.
        name: String,
        /// Print it again on every change until interrupted.
        #[arg(short, long)]
        watch: bool,
    },
    /// Promote the running canary now: skip its remaining steps and analyses.
    Promote(Steer),
    /// Roll the running canary back now.
    Abort(Steer),
    /// Freeze the running canary at its weight: no steps, no analyses, until `resume`.
    Pause(Steer),
    /// Let a paused canary go on.
    Resume(Steer),
    /// The LLMDeployment's Events, oldest first, and the last rollout and analysis.
    History {
        /// The LLMDeployment.
        name: String,
    },
}

#[derive(Args)]
struct Steer {
    /// The LLMDeployment.
    name: String,
    /// Seconds to wait for the operator to act on it (0: do not wait).
    #[arg(long, default_value_t = 60)]
    wait_seconds: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn client(target: &Target) -> Result<(Client, String), String> {
    let options = KubeConfigOptions {
        context: target.context.clone(),
        ..Default::default()
    };
    let config = match &target.kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read the kubeconfig {}: {e}", path.display()))?;
            Config::from_custom_kubeconfig(file, &options).await
        }
        None => Config::from_kubeconfig(&options).await,
    }
    .map_err(|e| format!("no usable kubeconfig ({e}); set KUBECONFIG or pass --kubeconfig"))?;
    let namespace = target
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|e| format!("cannot build a client: {e}"))?;
    Ok((client, namespace))
}

async fn get(
    api: &Api<LLMDeployment>,
    name: &str,
    namespace: &str,
) -> Result<LLMDeployment, String> {
    match api.get_opt(name).await {
        Ok(Some(d)) => Ok(d),
        Ok(None) => Err(format!(
            "no LLMDeployment \"{name}\" in namespace \"{namespace}\" (kubectl get llmd -n {namespace})"
        )),
        Err(kube::Error::Api(e)) if e.code == 403 => Err(format!(
            "not allowed to read LLMDeployment \"{name}\" in namespace \"{namespace}\": {}",
            e.message
        )),
        Err(kube::Error::Api(e)) if e.code == 404 => Err(format!(
            "the API server does not know LLMDeployments: are Ferry's CRDs installed? ({})",
            e.message
        )),
        Err(e) => Err(format!("cannot reach the API server: {e}")),
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let (client, namespace) = client(&cli.target).await?;
    let api: Api<LLMDeployment> = Api::namespaced(client.clone(), &namespace);
    match cli.verb {
        Verb::Status { name, watch } => {
            let llmd = get(&api, &name, &namespace).await?;
            let mut last = plugin::status(&llmd);
            print!("{last}");
            if !watch {
                return Ok(());
            }
            let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
            let mut stream = watcher(api, config)
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(event) = stream.next().await {
                let llmd = event.map_err(|e| format!("watch failed: {e}"))?;
                let text = plugin::status(&llmd);
                if text != last {
                    println!(
                        "\n--- {}",
                        k8s_openapi::jiff::Timestamp::now()
                            .round(k8s_openapi::jiff::Unit::Second)
                            .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now())
                    );
                    print!("{text}");
                    last = text;
                }
            }
            Ok(())
        }
        Verb::Promote(s) => steer(&api, &namespace, Control::Promote, s).await,
        Verb::Abort(s) => steer(&api, &namespace, Control::Abort, s).await,
        Verb::Pause(s) => steer(&api, &namespace, Control::Pause, s).await,
        Verb::Resume(s) => steer(&api, &namespace, Control::Resume, s).await,
        Verb::History { name } => {
            let llmd = get(&api, &name, &namespace).await?;
            let events: Api<Event> = Api::namespaced(client, &namespace);
            let selector = format!(
                "involvedObject.kind=LLMDeployment,involvedObject.name={name},involvedObject.uid={}",
                llmd.uid().unwrap_or_default()
            );
            let list = events
                .list(&ListParams::default().fields(&selector))
                .await
                .map_err(|e| format!("cannot list the Events of {name}: {e}"))?;
            let lines = list.items.into_iter().map(history_line).collect();
            print!("{}", plugin::history(&llmd, lines));
            Ok(())
        }
    }
}

fn history_line(e: Event) -> HistoryLine {
    let at = e
        .series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
        .or(e.event_time.as_ref().map(|t| t.0))
        .or(e.last_timestamp.as_ref().map(|t| t.0))
        .or(e.first_timestamp.as_ref().map(|t| t.0));
    HistoryLine {
        at: at.map_or(0, |t| t.as_nanosecond()),
        time: at.map(seconds).unwrap_or_default(),
        type_: e.type_.unwrap_or_default(),
        reason: e.reason.unwrap_or_default(),
        message: e.message.unwrap_or_default(),
    }
}

/// A time as RFC 3339 to the second.
fn seconds(t: k8s_openapi::jiff::Timestamp) -> String {
    t.round(k8s_openapi::jiff::Unit::Second)
        .unwrap_or(t)
        .to_string()
}

async fn steer(
    api: &Api<LLMDeployment>,
    namespace: &str,
    control: Control,
    s: Steer,
) -> Result<(), String> {
    let llmd = get(api, &s.name, namespace).await?;
    control.check(&llmd)?;
    api.patch(
        &s.name,
        &PatchParams::default(),
        &Patch::Merge(control.patch()),
    )
    .await
    .map_err(|e| format!("cannot annotate LLMDeployment {}: {e}", s.name))?;
    if s.wait_seconds == 0 {
        println!("{}: asked; not waiting for the operator", s.name);
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(s.wait_seconds);
    loop {
        let llmd = get(api, &s.name, namespace).await?;
        if control.done(&llmd) {
            if let Some(clear) = control.clear() {
                api.patch(&s.name, &PatchParams::default(), &Patch::Merge(clear))
                    .await
                    .map_err(|e| format!("cannot remove the annotation again: {e}"))?;
            }
            print!("{}", plugin::status(&llmd));
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the operator has not acted within {} s (is it running?); the annotation stays on {} \
                 and takes effect when it does",
                s.wait_seconds, s.name
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
