//! Who may call the router and how much: API keys from a Kubernetes Secret (kept in memory only as
//! SHA-256 digests, compared in constant time) and per-key token buckets for requests per second
//! and tokens per minute.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use crate::error::RouterError;

/// The keys of one Secret: each data entry is one key, its name the key's id (used in logs, limits
/// and API-key stickiness; the key itself is never kept).
#[derive(Debug, Default, Clone)]
pub struct Keys {
    entries: Vec<(String, [u8; 32])>,
}

impl Keys {
    pub fn from_secret(data: &BTreeMap<String, Vec<u8>>) -> Self {
        let entries = data
            .iter()
            .filter_map(|(id, value)| {
                let key = std::str::from_utf8(value).ok()?.trim();
                (!key.is_empty()).then(|| (id.clone(), digest(key)))
            })
            .collect();
        Self { entries }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The id of the key, comparing against every stored digest in constant time (no early exit).
    pub fn identify(&self, presented: &str) -> Option<&str> {
        let wanted = digest(presented);
        let mut found = None;
        for (id, stored) in &self.entries {
            if bool::from(stored.ct_eq(&wanted)) {
                found = Some(id.as_str());
            }
        }
        found
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A token bucket that may go negative: tokens are charged after a response (its usage is known
/// only then), and a key in debt waits until the bucket refills above zero.
#[derive(Debug, Clone)]
pub struct Bucket {
    capacity: f64,
    per_second: f64,
    level: f64,
    updated: Instant,
}

impl Bucket {
    pub fn new(capacity: f64, per_second: f64, now: Instant) -> Self {
        Self {
            capacity,
            per_second,
            level: capacity,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + elapsed * self.per_second).min(self.capacity);
        self.updated = now;
    }

    /// Takes `n` if the bucket holds at least that many; otherwise the seconds until it will.
    pub fn take(&mut self, n: f64, now: Instant) -> Result<(), u64> {
        self.refill(now);
        if self.level >= n {
            self.level -= n;
            Ok(())
        } else {
            Err(((n - self.level) / self.per_second).ceil().max(1.0) as u64)
        }
    }

    /// Whether anything is left (for charges made later); otherwise the seconds until there is.
    pub fn positive(&mut self, now: Instant) -> Result<(), u64> {
        self.refill(now);
        if self.level > 0.0 {
            Ok(())
        } else {
            Err(((-self.level) / self.per_second).ceil().max(1.0) as u64)
        }
    }

    /// Takes `n` (gives back when negative), whatever the level.
    pub fn charge(&mut self, n: f64, now: Instant) {
        self.refill(now);
        self.level = (self.level - n).min(self.capacity);
    }
}

/// Per-key limits; 0 turns a limit off.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub requests_per_second: f64,
    pub tokens_per_minute: f64,
}

struct KeyBuckets {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

/// The keys in force and each key's buckets.
pub struct Access {
    /// `None`: no Secret configured, the router is open.
    keys: RwLock<Option<Arc<Keys>>>,
    limits: Limits,
    buckets: Mutex<HashMap<String, KeyBuckets>>,
}

impl Access {
    pub fn new(keys: Option<Keys>, limits: Limits) -> Self {
        Self {
            keys: RwLock::new(keys.map(Arc::new)),
            limits,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn set_keys(&self, keys: Keys) {
        *self.keys.write().unwrap() = Some(Arc::new(keys));
    }

    pub fn enabled(&self) -> bool {
        self.keys.read().unwrap().is_some()
    }

    /// The caller's key id from `Authorization: Bearer <key>`; `Ok(None)` when keys are off.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Option<String>, RouterError> {
        let Some(keys) = self.keys.read().unwrap().clone() else {
            return Ok(None);
        };
        let presented = authorization
            .and_then(ferry_contract::auth::bearer_token)
            .ok_or(RouterError::Unauthorized)?;
        keys.identify(presented)
            .map(|id| Some(id.to_string()))
            .ok_or(RouterError::Unauthorized)
    }

    /// Admits one request of `key` that may generate up to `reserve` tokens (its `max_tokens`;
    /// 0 when unknown), or says how long to wait. The reservation is taken now, so requests in
    /// parallel cannot together overshoot the tokens-per-minute limit; [`Access::settle`]
    /// charges what the answer really used against it.
    pub fn admit(&self, key: &str, reserve: u64) -> Result<(), RouterError> {
        let now = Instant::now();
        let mut all = self.buckets.lock().unwrap();
        let b = all
            .entry(key.to_string())
            .or_insert_with(|| self.new_buckets(now));
        if let Some(tokens) = &mut b.tokens {
            let wanted = (reserve as f64).min(tokens.capacity);
            let checked = if wanted > 0.0 {
                tokens.take(wanted, now)
            } else {
                tokens.positive(now)
            };
            if let Err(retry_after) = checked {
                return Err(RouterError::RateLimited {
                    limit: format!("{} tokens per minute", self.limits.tokens_per_minute),
                    retry_after,
                });
            }
        }
        if let Some(requests) = &mut b.requests
            && let Err(retry_after) = requests.take(1.0, now)
        {
            return Err(RouterError::RateLimited {
                limit: format!("{} requests per second", self.limits.requests_per_second),
                retry_after,
            });
        }
        Ok(())
    }

    /// Charges the tokens a response used, less what [`Access::admit`] reserved for it (a
    /// reservation larger than the use is given back).
    pub fn settle(&self, key: &str, used: u64, reserved: u64) {
        if self.limits.tokens_per_minute <= 0.0 || used == reserved {
            return;
        }
        let now = Instant::now();
        let mut all = self.buckets.lock().unwrap();
        let b = all
            .entry(key.to_string())
            .or_insert_with(|| self.new_buckets(now));
        if let Some(bucket) = &mut b.tokens {
            let reserved = (reserved as f64).min(bucket.capacity);
            bucket.charge(used as f64 - reserved, now);
        }
    }

    fn new_buckets(&self, now: Instant) -> KeyBuckets {
        let Limits {
            requests_per_second: rps,
            tokens_per_minute: tpm,
        } = self.limits;
        KeyBuckets {
            requests: (rps > 0.0).then(|| Bucket::new(rps.max(1.0), rps, now)),
            tokens: (tpm > 0.0).then(|| Bucket::new(tpm, tpm / 60.0, now)),
        }
    }
}

/// Tokens reserved for one request of one key: settled with what the answer used, or given back
/// whole if the request ends without an answer.
pub struct Reservation {
    access: Arc<Access>,
    key: String,
    reserved: u64,
    settled: bool,
}

impl Reservation {
    /// Charges `used` tokens (prompt + completion) against the reservation.
    pub fn settle(mut self, used: u64) {
        self.access.settle(&self.key, used, self.reserved);
        self.settled = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.access.settle(&self.key, 0, self.reserved);
        }
    }
}

impl Access {
    /// [`Access::admit`], returning the reservation to settle.
    pub fn reserve(self: &Arc<Self>, key: &str, tokens: u64) -> Result<Reservation, RouterError> {
        self.admit(key, tokens)?;
        Ok(Reservation {
            access: self.clone(),
            key: key.to_string(),
            reserved: if self.limits.tokens_per_minute > 0.0 {
                tokens
            } else {
                0
            },
            settled: false,
        })
    }
}

/// Keeps `access` in step with the Secret `name` in `namespace`: a changed key works within a
/// second; a deleted Secret locks everyone out (fail closed) until it is back.
pub async fn watch_secret(client: Client, namespace: String, name: String, access: Arc<Access>) {
    let secret = name.clone();
    watch_secret_data(client, namespace, name, move |data| {
        let keys = Keys::from_secret(data);
        if keys.is_empty() {
            warn!(%secret, "the API key Secret is missing or empty: every request gets 401");
        } else {
            info!(%secret, keys = keys.len(), "API keys loaded");
        }
        access.set_keys(keys);
    })
    .await
}

/// Calls `changed` with the data of the Secret `name` in `namespace` whenever it changes (empty
/// when the Secret is missing or deleted). The watch asks for this one Secret by name, so a Role
/// with `resourceNames: [name]` is all it needs.
pub async fn watch_secret_data(
    client: Client,
    namespace: String,
    name: String,
    mut changed: impl FnMut(&BTreeMap<String, Vec<u8>>),
) {
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut current: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    while let Some(event) = stream.next().await {
        let update = match event {
            Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => {
                current = secret_data(&s);
                true
            }
            Ok(watcher::Event::Delete(_)) => {
                current.clear();
                true
            }
            Ok(watcher::Event::Init) => {
                current.clear();
                false
            }
            Ok(watcher::Event::InitDone) => true,
            Err(e) => {
                warn!(error = %e, secret = %name, "watching a Secret failed; retrying");
                false
            }
        };
        if update {
            changed(&current);
        }
    }
}

fn secret_data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in secret.string_data.iter().flatten() {
        data.insert(k.clone(), v.clone().into_bytes());
    }
    data
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn keys() -> Keys {
        Keys::from_secret(&BTreeMap::from([
            ("team-a".to_string(), b"sk-aaa\n".to_vec()),
            ("team-b".to_string(), b"sk-bbb".to_vec()),
            ("blank".to_string(), b"  ".to_vec()),
        ]))
    }

    #[test]
    fn keys_are_identified_by_their_id() {
        let k = keys();
        assert_eq!(k.len(), 2);
        assert_eq!(k.identify("sk-aaa"), Some("team-a"));
        assert_eq!(k.identify("sk-bbb"), Some("team-b"));
        assert_eq!(k.identify("sk-aa"), None);
        assert_eq!(k.identify(""), None);
    }

    #[test]
    fn requests_need_a_known_bearer_key_once_keys_are_set() {
        let open = Access::new(None, Limits::default());
        assert_eq!(open.authenticate(None).unwrap(), None);
        let closed = Access::new(Some(keys()), Limits::default());
        assert!(closed.authenticate(None).is_err());
        assert!(closed.authenticate(Some("sk-aaa")).is_err());
        assert!(closed.authenticate(Some("Bearer sk-zzz")).is_err());
        assert_eq!(
            closed
                .authenticate(Some("Bearer sk-bbb"))
                .unwrap()
                .as_deref(),
            Some("team-b")
        );
    }

    #[test]
    fn a_bucket_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(2.0, 2.0, t0);
        assert!(b.take(1.0, t0).is_ok());
        assert!(b.take(1.0, t0).is_ok());
        assert_eq!(b.take(1.0, t0), Err(1));
        assert!(b.take(1.0, t0 + Duration::from_millis(500)).is_ok());
    }

    #[test]
    fn tokens_charged_after_the_fact_block_until_repaid() {
        let t0 = Instant::now();
        let mut b = Bucket::new(600.0, 10.0, t0);
        b.charge(900.0, t0);
        // 300 in debt at 10/s: 30 s.
        assert_eq!(b.positive(t0), Err(30));
        assert!(b.positive(t0 + Duration::from_secs(31)).is_ok());
    }

    #[test]
    fn each_key_has_its_own_request_rate() {
        let access = Access::new(
            Some(keys()),
            Limits {
                requests_per_second: 2.0,
                tokens_per_minute: 0.0,
            },
        );
        assert!(access.admit("team-a", 0).is_ok());
        assert!(access.admit("team-a", 0).is_ok());
        let err = access.admit("team-a", 0).unwrap_err();
        assert!(
            matches!(err, RouterError::RateLimited { retry_after: 1, .. }),
            "{err:?}"
        );
        assert!(access.admit("team-b", 0).is_ok());
    }

    #[test]
    fn max_tokens_are_reserved_up_front_and_the_rest_given_back_after() {
        let access = Arc::new(Access::new(
            Some(keys()),
            Limits {
                requests_per_second: 0.0,
                tokens_per_minute: 100.0,
            },
        ));
        let first = access.reserve("team-a", 60).unwrap();
        // Another 60 in parallel would overshoot: refused until the first settles.
        assert!(matches!(
            access.reserve("team-a", 60),
            Err(RouterError::RateLimited { .. })
        ));
        first.settle(10);
        let second = access.reserve("team-a", 60).unwrap();
        // A request that ends without an answer gives its reservation back.
        drop(second);
        assert!(access.reserve("team-a", 80).is_ok());
    }
}
