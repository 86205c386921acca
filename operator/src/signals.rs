//! What the decisions read from outside the API server: the routers' per-version statistics and
//! the server pods' queue depth.

use std::net::SocketAddr;
use std::time::Duration;

use ferry_contract::stats::Summary;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

/// How long one router or pod may take to answer.
const TIMEOUT: Duration = Duration::from_secs(2);
/// The most read of a pod's `/metrics` (a few KiB normally).
const MAX_METRICS_BYTES: usize = 1024 * 1024;
/// The most read of a router's `/internal/stats` (a few KiB per served version).
const MAX_STATS_BYTES: usize = 16 * 1024 * 1024;

/// A response's body, at most `limit` bytes: whatever a peer sends, the operator's memory stays
/// bounded.
pub async fn read_capped(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > limit {
            return Err(format!("the answer is larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Where the routers are: the ready pods matching a label selector in one namespace (found anew
/// at each read, so replicas that come and go are counted), and fixed base URLs.
pub struct Routers {
    pub pods: Option<(Api<Pod>, String)>,
    pub urls: Vec<String>,
}

/// The routers' merged statistics, and the routers that did not answer (their requests are
/// missing from it).
pub struct RouterStats {
    pub summary: Summary,
    pub missing: Vec<String>,
}

impl RouterStats {
    /// Every router answered: the numbers cover every request.
    pub fn complete(&self) -> Result<&Summary, String> {
        if self.missing.is_empty() {
            Ok(&self.summary)
        } else {
            Err(format!(
                "{} router(s) did not answer, so their requests are missing: {}",
                self.missing.len(),
                self.missing.join("; ")
            ))
        }
    }
}

impl Routers {
    /// The merged `/internal/stats?window=…` of every router (several replicas count together),
    /// and which did not answer; an error only when none answered.
    pub async fn summary(
        &self,
        http: &reqwest::Client,
        window_seconds: u64,
    ) -> Result<RouterStats, String> {
        let mut bases = self.urls.clone();
        if let Some((api, selector)) = &self.pods {
            match api.list(&ListParams::default().labels(selector)).await {
                Ok(pods) => bases.extend(
                    pods.items
                        .iter()
                        .filter_map(ferry_contract::pods::ready_address)
                        .map(|address| format!("http://{address}")),
                ),
                Err(e) => tracing::warn!(error = %e, %selector, "cannot list the router pods"),
            }
        }
        if bases.is_empty() {
            let selector = self.pods.as_ref().map_or("", |(_, s)| s.as_str());
            return Err(format!(
                "no ready router found (pods matching {selector:?}, --router-stats-url)"
            ));
        }
        summary_of(http, &bases, window_seconds).await
    }

    /// Requests every router holds now for `model` (no ready pod): what wakes a version scaled
    /// to zero. 0 when no router answers.
    pub async fn held(&self, http: &reqwest::Client, model: &str) -> u64 {
        match self.summary(http, 1).await {
            Ok(s) => s.summary.held.get(model).copied().unwrap_or(0),
            Err(e) => {
                tracing::warn!(error = %e, model, "cannot read held requests from the routers");
                0
            }
        }
    }
}

async fn summary_of(
    http: &reqwest::Client,
    routers: &[String],
    window_seconds: u64,
) -> Result<RouterStats, String> {
    let fetches = routers.iter().map(|base| async move {
        let url = format!(
            "{}/internal/stats?window={window_seconds}s",
            base.trim_end_matches('/')
        );
        let response = http
            .get(&url)
            .timeout(TIMEOUT)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("{url}: {e}"))?;
        let body = read_capped(response, MAX_STATS_BYTES)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        serde_json::from_slice::<Summary>(&body).map_err(|e| format!("{url}: {e}"))
    });
    let results = futures::future::join_all(fetches).await;
    let (ok, errors): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    if ok.is_empty() {
        return Err(errors
            .into_iter()
            .filter_map(Result::err)
            .collect::<Vec<_>>()
            .join("; "));
    }
    let missing: Vec<String> = errors.into_iter().filter_map(Result::err).collect();
    for e in &missing {
        tracing::warn!(error = %e, "a router did not answer for stats");
    }
    Ok(RouterStats {
        summary: Summary::merge(&ok.into_iter().filter_map(Result::ok).collect::<Vec<_>>()),
        missing,
    })
}

/// Sum of `ferry_queue_depth` over the pods at `addresses`, and whether every pod answered.
pub async fn queue_depth(http: &reqwest::Client, addresses: &[SocketAddr]) -> (u64, bool) {
    let reads = addresses.iter().map(|address| async move {
        let response = http
            .get(format!("http://{address}/metrics"))
            .timeout(TIMEOUT)
            .send()
            .await
            .ok()?;
        let body = read_capped(response, MAX_METRICS_BYTES).await.ok()?;
        ferry_contract::pods::queue_depth(&String::from_utf8_lossy(&body))
    });
    let depths = futures::future::join_all(reads).await;
    let complete = depths.iter().all(Option::is_some);
    (depths.into_iter().flatten().sum(), complete)
}
