//! What the decisions read from outside the API server: the routers' per-version statistics and
//! the server pods' queue depth.

use std::net::SocketAddr;
use std::time::Duration;

use ferry_router::stats::Summary;

/// How long one router or pod may take to answer.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The merged `/internal/stats?window=…` of every router (several replicas count together). Routers
/// that do not answer are left out; an error only when none answered.
pub async fn router_summary(
    http: &reqwest::Client,
    routers: &[String],
    window_seconds: u64,
) -> Result<Summary, String> {
    if routers.is_empty() {
        return Err("no router stats URL configured (--router-stats-url)".into());
    }
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
        response
            .json::<Summary>()
            .await
            .map_err(|e| format!("{url}: {e}"))
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
    for e in errors.into_iter().filter_map(Result::err) {
        tracing::warn!(error = %e, "a router did not answer for stats");
    }
    Ok(Summary::merge(
        &ok.into_iter().filter_map(Result::ok).collect::<Vec<_>>(),
    ))
}

/// Sum of `ferry_queue_depth` over the pods at `addresses`, and whether every pod answered.
pub async fn queue_depth(http: &reqwest::Client, addresses: &[SocketAddr]) -> (u64, bool) {
    let reads = addresses.iter().map(|address| async move {
        let text = http
            .get(format!("http://{address}/metrics"))
            .timeout(TIMEOUT)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        ferry_router::discovery::queue_depth(&text)
    });
    let depths = futures::future::join_all(reads).await;
    let complete = depths.iter().all(Option::is_some);
    (depths.into_iter().flatten().sum(), complete)
}
