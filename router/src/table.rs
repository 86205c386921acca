//! The routing table and the pure decisions made on it: which LLMDeployment a model id means,
//! which version (and experiment variant) a request goes to, which pod of that version.
//! Built from what the API server shows (see `discovery`); nothing here does I/O.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::HeaderValue;
use ferry_crds::StickinessKey;
use ferry_crds::labels::fnv1a;

/// One ready pod of one version.
#[derive(Debug)]
pub struct Endpoint {
    pub pod: String,
    pub addr: SocketAddr,
    /// `addr` as the `Host` header of the requests sent to the pod (made once here, not per
    /// request).
    pub host: HeaderValue,
    /// `pod` as the value of the `x-ferry-pod` response header.
    pub pod_header: Option<HeaderValue>,
    /// Requests this router has sent to the pod and not yet finished.
    in_flight: AtomicU64,
    /// `ferry_queue_depth` as last read from the pod (includes other routers' requests).
    reported_depth: AtomicU64,
    /// Until when (ms on the router's clock) the pod is skipped after a failed connection.
    ejected_until_ms: AtomicU64,
}

impl Endpoint {
    pub fn new(pod: impl Into<String>, addr: SocketAddr) -> Self {
        let pod = pod.into();
        Self {
            host: HeaderValue::from_str(&addr.to_string()).expect("an address is a header value"),
            pod_header: HeaderValue::from_str(&pod).ok(),
            pod,
            addr,
            in_flight: AtomicU64::new(0),
            reported_depth: AtomicU64::new(0),
            ejected_until_ms: AtomicU64::new(0),
        }
    }

    /// The load power-of-two-choices compares: this router's own count, or what the pod reports
    /// when that is higher (other routers send it work too).
    pub fn load(&self) -> u64 {
        self.in_flight
            .load(Ordering::Relaxed)
            .max(self.reported_depth.load(Ordering::Relaxed))
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn set_reported_depth(&self, depth: u64) {
        self.reported_depth.store(depth, Ordering::Relaxed);
    }

    /// Counts a request until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn eject(&self, now_ms: u64, for_ms: u64) {
        self.ejected_until_ms
            .store(now_ms + for_ms, Ordering::Relaxed);
    }

    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }
}

/// A request counted against an endpoint's load.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One version that receives traffic, with its ready pods.
#[derive(Debug, Clone)]
pub struct Backend {
    pub version: String,
    /// Percent of requests (or of sticky users).
    pub weight: u32,
    /// Experiment variant name, when an experiment runs.
    pub variant: Option<String>,
    pub endpoints: Vec<Arc<Endpoint>>,
}

/// Where requests for one served model go.
#[derive(Debug, Clone)]
pub struct Route {
    pub model: String,
    pub namespace: String,
    pub deployment: String,
    pub backends: Vec<Backend>,
    /// Set while an experiment runs: requests with a key keep their variant.
    pub stickiness: Option<Sticky>,
}

/// Where the stickiness key of an experiment comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    User,
    Header(String),
    ApiKey,
}

impl Sticky {
    pub fn from_spec(key: StickinessKey, header: Option<&str>) -> Self {
        match (key, header) {
            (StickinessKey::Header, Some(h)) => Sticky::Header(h.to_ascii_lowercase()),
            (StickinessKey::ApiKey, _) => Sticky::ApiKey,
            _ => Sticky::User,
        }
    }
}

/// Every served model, by OpenAI model id.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub routes: BTreeMap<String, Route>,
    /// Set once discovery has listed everything at least once.
    pub synced: bool,
}

impl Table {
    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }

    /// Every endpoint in the table, keyed by address (to carry load counts into the next table).
    pub fn endpoints(&self) -> HashMap<(String, SocketAddr), Arc<Endpoint>> {
        let mut all = HashMap::new();
        for route in self.routes.values() {
            for backend in &route.backends {
                for e in &backend.endpoints {
                    all.insert((e.pod.clone(), e.addr), e.clone());
                }
            }
        }
        all
    }
}

/// A point in [0, 1) for the weighted choice: the same key always gives the same point, and
/// different models give unrelated points for the same key (so assignments are independent
/// between experiments).
pub fn sticky_point(model: &str, key: &str) -> f64 {
    let mut bytes = Vec::with_capacity(model.len() + key.len() + 1);
    bytes.extend_from_slice(model.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(key.as_bytes());
    let h = mix64(fnv1a(&bytes));
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// splitmix64's finalizer: spreads FNV's weak low bits over the whole word.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

/// The backend a request goes to, given `point` in [0, 1) (random, or [`sticky_point`]).
/// Versions without a ready pod are left out and the others' weights stretched over the whole
/// range, so a canary or variant that has no pod yet does not fail its share of requests. `None`
/// when no version with weight has a ready pod.
pub fn choose_backend(backends: &[Backend], point: f64, now_ms: u64) -> Option<&Backend> {
    let usable = |b: &&Backend| b.weight > 0 && b.endpoints.iter().any(|e| !e.is_ejected(now_ms));
    let total: u32 = backends.iter().filter(usable).map(|b| b.weight).sum();
    if total == 0 {
        return None;
    }
    let target = point.clamp(0.0, 1.0) * f64::from(total);
    let mut cumulative = 0.0;
    let mut last = None;
    for b in backends.iter().filter(usable) {
        cumulative += f64::from(b.weight);
        last = Some(b);
        if target < cumulative {
            return Some(b);
        }
    }
    last
}

/// Power of two choices among the endpoints not in `exclude` and not ejected: of two distinct
/// candidates drawn with `r1`, `r2`, the less loaded (ties: the first). Ejected endpoints are a
/// last resort, used only when nothing else is left.
pub fn choose_endpoint<'a>(
    endpoints: &'a [Arc<Endpoint>],
    exclude: &[SocketAddr],
    now_ms: u64,
    r1: u64,
    r2: u64,
) -> Option<&'a Arc<Endpoint>> {
    let open = |e: &Arc<Endpoint>| !exclude.contains(&e.addr);
    two_choices(endpoints, |e| open(e) && !e.is_ejected(now_ms), r1, r2)
        .or_else(|| two_choices(endpoints, open, r1, r2))
}

/// Power of two choices among the endpoints `keep` accepts (no allocation: this runs for every
/// request).
fn two_choices(
    endpoints: &[Arc<Endpoint>],
    keep: impl Fn(&Arc<Endpoint>) -> bool,
    r1: u64,
    r2: u64,
) -> Option<&Arc<Endpoint>> {
    let nth = |i: usize| endpoints.iter().filter(|e| keep(e)).nth(i);
    match endpoints.iter().filter(|e| keep(e)).count() {
        0 => None,
        1 => nth(0),
        n => {
            let first = (r1 % n as u64) as usize;
            let mut second = (r2 % (n as u64 - 1)) as usize;
            if second >= first {
                second += 1;
            }
            let (a, b) = (nth(first)?, nth(second)?);
            Some(if b.load() < a.load() { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(version: &str, weight: u32, pods: usize) -> Backend {
        Backend {
            version: version.into(),
            weight,
            variant: None,
            endpoints: (0..pods)
                .map(|i| {
                    Arc::new(Endpoint::new(
                        format!("{version}-{i}"),
                        SocketAddr::from(([10, 0, 0, i as u8 + 1], 8000)),
                    ))
                })
                .collect(),
        }
    }

    #[test]
    fn weighted_choice_follows_the_weights() {
        let backends = [backend("v1", 90, 1), backend("v2", 10, 1)];
        let picks: Vec<&str> = [0.0, 0.5, 0.899, 0.9, 0.95, 0.9999]
            .iter()
            .map(|p| choose_backend(&backends, *p, 0).unwrap().version.as_str())
            .collect();
        assert_eq!(picks, ["v1", "v1", "v1", "v2", "v2", "v2"]);
    }

    #[test]
    fn a_version_without_ready_pods_gets_no_traffic() {
        let backends = [backend("v1", 80, 1), backend("v2", 20, 0)];
        for p in [0.0, 0.5, 0.85, 0.99] {
            assert_eq!(choose_backend(&backends, p, 0).unwrap().version, "v1");
        }
        let none = [backend("v1", 100, 0), backend("v2", 0, 3)];
        assert!(choose_backend(&none, 0.5, 0).is_none());
    }

    #[test]
    fn a_version_whose_only_pod_is_ejected_is_skipped_until_the_ejection_ends() {
        let backends = [backend("v1", 50, 1), backend("v2", 50, 1)];
        backends[1].endpoints[0].eject(1_000, 5_000);
        assert_eq!(choose_backend(&backends, 0.9, 2_000).unwrap().version, "v1");
        assert_eq!(choose_backend(&backends, 0.9, 6_001).unwrap().version, "v2");
    }

    #[test]
    fn sticky_points_are_stable_per_key_and_spread_evenly() {
        assert_eq!(sticky_point("m", "alice"), sticky_point("m", "alice"));
        assert_ne!(sticky_point("m", "alice"), sticky_point("other", "alice"));
        let below_30 = (0..10_000)
            .filter(|i| sticky_point("m", &format!("user-{i}")) < 0.3)
            .count();
        assert!((2_800..3_200).contains(&below_30), "{below_30} of 10000");
    }

    #[test]
    fn two_choices_take_the_less_loaded_pod() {
        let b = backend("v1", 100, 3);
        let _busy: Vec<InFlight> = (0..5).map(|_| b.endpoints[0].begin()).collect();
        let _one = b.endpoints[1].begin();
        // Draws 0 and 1 → pods 0 (5 in flight) and 1 (1): pod 1.
        assert_eq!(
            choose_endpoint(&b.endpoints, &[], 0, 0, 0).unwrap().pod,
            "v1-1"
        );
        // Pods 0 and 2 (idle): pod 2.
        assert_eq!(
            choose_endpoint(&b.endpoints, &[], 0, 0, 1).unwrap().pod,
            "v1-2"
        );
        // A reported depth counts when it is higher than our own count.
        b.endpoints[2].set_reported_depth(9);
        assert_eq!(
            choose_endpoint(&b.endpoints, &[], 0, 0, 1).unwrap().pod,
            "v1-0"
        );
    }

    #[test]
    fn finished_requests_stop_counting() {
        let b = backend("v1", 100, 1);
        let guard = b.endpoints[0].begin();
        assert_eq!(b.endpoints[0].in_flight(), 1);
        drop(guard);
        assert_eq!(b.endpoints[0].in_flight(), 0);
    }

    #[test]
    fn retries_skip_pods_already_tried_and_ejected_pods() {
        let b = backend("v1", 100, 3);
        let tried = [b.endpoints[0].addr];
        b.endpoints[1].eject(0, 10_000);
        for r in 0..10 {
            let e = choose_endpoint(&b.endpoints, &tried, 1, r, r + 3).unwrap();
            assert_eq!(e.pod, "v1-2");
        }
        // Only an ejected pod left: still tried rather than failing the request.
        let tried = [b.endpoints[0].addr, b.endpoints[2].addr];
        assert_eq!(
            choose_endpoint(&b.endpoints, &tried, 1, 0, 0).unwrap().pod,
            "v1-1"
        );
        let all: Vec<SocketAddr> = b.endpoints.iter().map(|e| e.addr).collect();
        assert!(choose_endpoint(&b.endpoints, &all, 1, 0, 0).is_none());
    }
}
