//! `ferry-server fetch`: puts model weights into a pod's volume before the server starts. The
//! operator runs it as the init container of the `url` source (one file, verified against its
//! SHA-256) and of the `huggingFace` source (files of a pinned revision, from the Hub or a mirror
//! named by `HF_ENDPOINT`). Files land under a temporary name and are renamed when complete, so a
//! restarted init container never mistakes a partial download for weights.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "ferry-server fetch",
    about = "Download model weights into a directory (init container of the url and huggingFace sources)"
)]
pub struct FetchArgs {
    /// Directory the files are written to.
    #[arg(long, env = "FERRY_FETCH_DEST")]
    pub dest: PathBuf,
    /// Download this one file (http:// or https://).
    #[arg(long, conflicts_with = "hf_repo", requires = "sha256")]
    pub url: Option<String>,
    /// Lower-case hex SHA-256 the `--url` download must have.
    #[arg(long)]
    pub sha256: Option<String>,
    /// File name under `--dest` for the `--url` download (default: the URL's last segment).
    #[arg(long)]
    pub file_name: Option<String>,
    /// Hugging Face repository id to download from, e.g. `HuggingFaceTB/SmolLM2-135M-Instruct`.
    #[arg(long)]
    pub hf_repo: Option<String>,
    /// Revision (commit, tag or branch) of `--hf-repo`.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Files of `--hf-repo` to download (repeated or comma-separated); none: the weights, configs
    /// and tokenizer files the repository lists.
    #[arg(long = "file", value_delimiter = ',')]
    pub files: Vec<String>,
    /// Base address of the Hub or of a mirror.
    #[arg(long, env = "HF_ENDPOINT", default_value = "https://huggingface.co")]
    pub hf_endpoint: String,
    /// Hub access token for gated or private repositories.
    #[arg(long, env = "HF_TOKEN", hide_env_values = true)]
    pub hf_token: Option<String>,
}

impl FetchArgs {
    pub async fn run(self) -> anyhow::Result<()> {
        tokio::fs::create_dir_all(&self.dest)
            .await
            .with_context(|| format!("cannot create {}", self.dest.display()))?;
        let client = reqwest::Client::builder()
            .user_agent(concat!("ferry-server/", env!("CARGO_PKG_VERSION")))
            // A lost SYN would otherwise wait for the kernel's ~2 minute connect timeout.
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .build()?;
        if let Some(url) = &self.url {
            let expected = self.sha256.as_deref().unwrap_or_default();
            ensure!(
                is_sha256_hex(expected),
                "--sha256 must be 64 lower-case hex digits, got {expected:?}"
            );
            let name = match &self.file_name {
                Some(n) => n.clone(),
                None => file_name_of(url)?,
            };
            let target = self.dest.join(&name);
            if target.exists() && sha256_of_file(&target).await? == expected {
                info!(file = %target.display(), "already present with the expected sha256");
                return Ok(());
            }
            let got = retrying(|| download(&client, url, None, &target, Some(expected))).await?;
            info!(file = %target.display(), bytes = got, sha256 = expected, "downloaded and verified");
            return Ok(());
        }
        let Some(repo) = &self.hf_repo else {
            bail!("give --url (with --sha256) or --hf-repo");
        };
        let base = self.hf_endpoint.trim_end_matches('/');
        let files = if self.files.is_empty() {
            list_repo_files(
                &client,
                base,
                repo,
                &self.revision,
                self.hf_token.as_deref(),
            )
            .await?
        } else {
            self.files.clone()
        };
        ensure!(
            !files.is_empty(),
            "{repo}@{} lists no weight, config or tokenizer files",
            self.revision
        );
        for file in files {
            ensure!(
                !file.split('/').any(|part| part == ".." || part.is_empty()),
                "refusing file name {file:?}"
            );
            let url = format!("{base}/{repo}/resolve/{}/{file}", self.revision);
            let target = self.dest.join(&file);
            if let Some(parent) = target.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            let token = self.hf_token.as_deref();
            let bytes = retrying(|| download(&client, &url, token, &target, None)).await?;
            info!(file = %target.display(), bytes, "downloaded");
        }
        Ok(())
    }
}

/// Runs `attempt` up to 5 times, 2, 4, 8, 16 s apart, while it fails for a reason that may pass
/// (connection, timeout, HTTP 5xx); a wrong checksum or a 4xx fails at once.
async fn retrying<F, Fut>(mut attempt: F) -> anyhow::Result<u64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u64>>,
{
    let mut delay = Duration::from_secs(2);
    for _ in 1..5 {
        match attempt().await {
            Ok(bytes) => return Ok(bytes),
            Err(e) if is_transient(&e) => {
                warn!(
                    error = format!("{e:#}"),
                    retry_in_seconds = delay.as_secs(),
                    "download failed"
                );
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return Err(e),
        }
    }
    attempt().await
}

fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<reqwest::Error>()
            .is_some_and(|r| r.is_connect() || r.is_timeout() || r.is_request() || r.is_body())
    }) || e.to_string().contains(": HTTP 5")
}

/// The files a model directory needs, from the Hub's listing of a revision.
async fn list_repo_files(
    client: &reqwest::Client,
    base: &str,
    repo: &str,
    revision: &str,
    token: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let url = format!("{base}/api/models/{repo}/revision/{revision}");
    let response = authorized(client.get(&url), token)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    ensure!(status.is_success(), "GET {url}: HTTP {status}");
    let listing: serde_json::Value = response.json().await.context("repository listing")?;
    let names = listing["siblings"]
        .as_array()
        .context("repository listing has no `siblings`")?
        .iter()
        .filter_map(|s| s["rfilename"].as_str())
        .filter(|name| is_model_file(name))
        .map(String::from)
        .collect();
    Ok(names)
}

fn is_model_file(name: &str) -> bool {
    !name.contains('/')
        && (name.ends_with(".safetensors")
            || name.ends_with(".json")
            || name.ends_with(".jinja")
            || name == "tokenizer.model")
}

fn authorized(request: reqwest::RequestBuilder, token: Option<&str>) -> reqwest::RequestBuilder {
    match token {
        Some(t) if !t.is_empty() => request.bearer_auth(t),
        _ => request,
    }
}

/// Streams `url` to `target` (through `target.partial`), returns the byte count. With `expected`,
/// the SHA-256 must match or nothing is left behind.
async fn download(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    target: &Path,
    expected: Option<&str>,
) -> anyhow::Result<u64> {
    let started = Instant::now();
    let mut response = authorized(client.get(url), token)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    if !status.is_success() {
        let hint = match status.as_u16() {
            401 | 403 => " (gated or private: give a token through tokenSecretRef)",
            404 => " (check the name and revision)",
            _ => "",
        };
        bail!("GET {url}: HTTP {status}{hint}");
    }
    let mut partial = target.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let mut file = tokio::fs::File::create(&partial)
        .await
        .with_context(|| format!("cannot write {}", partial.display()))?;
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let mut last_report = Instant::now();
    while let Some(chunk) = response
        .chunk()
        .await
        .with_context(|| format!("reading {url}"))?
    {
        hasher.update(&chunk);
        file.write_all(&chunk).await?;
        bytes += chunk.len() as u64;
        if last_report.elapsed().as_secs() >= 10 {
            info!(url, bytes, "downloading");
            last_report = Instant::now();
        }
    }
    file.flush().await?;
    drop(file);
    let got = hex(&hasher.finalize());
    if let Some(expected) = expected
        && got != expected
    {
        tokio::fs::remove_file(&partial).await.ok();
        bail!("sha256 mismatch for {url}: expected {expected}, got {got} ({bytes} bytes)");
    }
    tokio::fs::rename(&partial, target).await?;
    info!(
        url,
        bytes,
        seconds = started.elapsed().as_secs_f64(),
        "fetched"
    );
    Ok(bytes)
}

async fn sha256_of_file(path: &Path) -> anyhow::Result<String> {
    let data = tokio::fs::read(path).await?;
    Ok(hex(&Sha256::digest(&data)))
}

fn file_name_of(url: &str) -> anyhow::Result<String> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    match path.rsplit('/').next() {
        Some(name)
            if !name.is_empty() && !path.ends_with("//") && path.matches('/').count() > 2 =>
        {
            Ok(name.to_string())
        }
        _ => bail!("cannot tell a file name from {url}: give --file-name"),
    }
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_come_from_the_last_url_segment() {
        assert_eq!(
            file_name_of("http://10.88.0.1:8080/m/smol.gguf?x=1").unwrap(),
            "smol.gguf"
        );
        assert!(file_name_of("http://host/").is_err());
        assert!(file_name_of("http://host").is_err());
    }

    #[test]
    fn repository_listings_keep_model_files_only() {
        let kept: Vec<_> = [
            "model.safetensors",
            "config.json",
            "tokenizer.json",
            "README.md",
            "onnx/model.onnx",
            "tokenizer.model",
            ".gitattributes",
        ]
        .into_iter()
        .filter(|n| is_model_file(n))
        .collect();
        assert_eq!(
            kept,
            [
                "model.safetensors",
                "config.json",
                "tokenizer.json",
                "tokenizer.model"
            ]
        );
    }

    #[test]
    fn sha256_must_be_lower_case_hex() {
        assert!(is_sha256_hex(&"a".repeat(64)));
        assert!(!is_sha256_hex(&"A".repeat(64)));
        assert!(!is_sha256_hex("abc"));
    }
}
