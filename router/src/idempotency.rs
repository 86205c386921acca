//! `Idempotency-Key`: a repeat of a (non-stream) request within the TTL gets the first response
//! again instead of a second generation. A repeat that arrives while the first is still running
//! waits for it. Only successful responses are kept, so a retry after a failure generates anew.
//! A key stands for one request: the same key with a different body is refused, never answered
//! with the first body's response. Keys live in each router replica's memory.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use tokio::sync::watch;

/// A response kept for replay.
#[derive(Debug, Clone)]
pub struct Stored {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

type Outcome = Option<Arc<Stored>>;

/// SHA-256 of the request body a key was first used with.
pub type Fingerprint = [u8; 32];

enum Slot {
    Running(watch::Receiver<Option<Outcome>>, Fingerprint),
    Done(Arc<Stored>, Instant, Fingerprint),
}

pub struct IdempotencyCache {
    ttl: Duration,
    capacity: usize,
    max_bytes: usize,
    /// How long a repeat waits for the first request with its key to finish.
    wait: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    slots: HashMap<String, Slot>,
    /// Insertion order, to evict the oldest when full and expire by age.
    order: VecDeque<(String, Instant)>,
    /// Bytes of the responses kept.
    bytes: usize,
}

/// The longest `Idempotency-Key` accepted (OpenAI's and Stripe's keys are far shorter).
pub const MAX_KEY_LENGTH: usize = 255;

/// What a request with an idempotency key does.
pub enum Begin {
    /// Nobody ran it yet: run it and hand the response to the guard.
    First(Guard),
    /// It ran already: send this.
    Replay(Arc<Stored>),
    /// The key belongs to a request with a different body.
    Reused,
    /// The first request with this key is still running after the wait.
    Busy,
}

/// Held by the request that runs; dropping it without [`Guard::finish`] (failure, cancel) lets
/// the next repeat run instead.
pub struct Guard {
    cache: Arc<IdempotencyCache>,
    key: String,
    fingerprint: Fingerprint,
    tx: watch::Sender<Option<Outcome>>,
    finished: bool,
}

impl IdempotencyCache {
    /// Responses are kept `ttl`, at most `capacity` of them and `max_bytes` of bodies (the
    /// oldest go first); a repeat waits at most `wait` for the first request to finish.
    pub fn new(ttl: Duration, capacity: usize, max_bytes: usize, wait: Duration) -> Arc<Self> {
        Arc::new(Self {
            ttl,
            capacity,
            max_bytes,
            wait,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// `fingerprint`: the body's SHA-256 ([`fingerprint`]).
    pub async fn begin(self: &Arc<Self>, key: String, fingerprint: Fingerprint) -> Begin {
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            let mut rx = {
                let mut inner = self.inner.lock().unwrap();
                self.expire(&mut inner, Instant::now());
                match inner.slots.get(&key) {
                    Some(Slot::Done(_, _, first) | Slot::Running(_, first))
                        if *first != fingerprint =>
                    {
                        return Begin::Reused;
                    }
                    Some(Slot::Done(stored, _, _)) => return Begin::Replay(stored.clone()),
                    Some(Slot::Running(rx, _)) => rx.clone(),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        inner
                            .slots
                            .insert(key.clone(), Slot::Running(rx, fingerprint));
                        return Begin::First(Guard {
                            cache: self.clone(),
                            key,
                            fingerprint,
                            tx,
                            finished: false,
                        });
                    }
                }
            };
            // The first request ends one way or another; then look again.
            let waited = tokio::time::timeout_at(deadline, async {
                rx.wait_for(Option::is_some).await.is_ok()
            })
            .await;
            if waited.is_err() {
                return Begin::Busy;
            }
        }
    }

    fn expire(&self, inner: &mut Inner, now: Instant) {
        while let Some((key, at)) = inner.order.front().cloned() {
            let expired = now.duration_since(at) > self.ttl;
            if !expired && inner.order.len() <= self.capacity && inner.bytes <= self.max_bytes {
                break;
            }
            inner.order.pop_front();
            if let Some(Slot::Done(stored, done_at, _)) = inner.slots.get(&key)
                && *done_at == at
            {
                inner.bytes -= stored.body.len();
                inner.slots.remove(&key);
            }
        }
    }
}

impl Guard {
    /// Keeps `stored` for repeats when it is a success; tells waiting repeats either way.
    pub fn finish(mut self, stored: Stored) {
        self.finished = true;
        let keep = stored.status.is_success();
        let stored = Arc::new(stored);
        let now = Instant::now();
        {
            let mut inner = self.cache.inner.lock().unwrap();
            if keep {
                inner.bytes += stored.body.len();
                inner.slots.insert(
                    self.key.clone(),
                    Slot::Done(stored.clone(), now, self.fingerprint),
                );
                inner.order.push_back((self.key.clone(), now));
                self.cache.expire(&mut inner, now);
            } else {
                inner.slots.remove(&self.key);
            }
        }
        self.tx.send_replace(Some(keep.then_some(stored)));
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.finished {
            self.cache.inner.lock().unwrap().slots.remove(&self.key);
            self.tx.send_replace(Some(None));
        }
    }
}

/// The fingerprint of a request body.
pub fn fingerprint(body: &[u8]) -> Fingerprint {
    use sha2::{Digest, Sha256};
    Sha256::digest(body).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: Fingerprint = [7; 32];

    #[tokio::test]
    async fn the_same_key_with_another_body_is_refused_running_or_done() {
        let cache = IdempotencyCache::new(
            Duration::from_secs(60),
            100,
            1 << 20,
            Duration::from_secs(60),
        );
        let Begin::First(guard) = cache.begin("k".into(), fingerprint(b"one")).await else {
            panic!()
        };
        assert!(matches!(
            cache.begin("k".into(), fingerprint(b"two")).await,
            Begin::Reused
        ));
        guard.finish(ok("one"));
        assert!(matches!(
            cache.begin("k".into(), fingerprint(b"two")).await,
            Begin::Reused
        ));
        assert!(matches!(
            cache.begin("k".into(), fingerprint(b"one")).await,
            Begin::Replay(_)
        ));
    }

    fn ok(body: &'static str) -> Stored {
        Stored {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    #[tokio::test]
    async fn a_repeat_gets_the_first_response() {
        let cache = IdempotencyCache::new(
            Duration::from_secs(60),
            100,
            1 << 20,
            Duration::from_secs(60),
        );
        let Begin::First(guard) = cache.begin("k".into(), BODY).await else {
            panic!("first call must run")
        };
        guard.finish(ok("one"));
        let Begin::Replay(stored) = cache.begin("k".into(), BODY).await else {
            panic!("repeat must replay")
        };
        assert_eq!(stored.body, "one");
        assert!(matches!(
            cache.begin("other".into(), BODY).await,
            Begin::First(_)
        ));
    }

    #[tokio::test]
    async fn a_repeat_while_the_first_runs_waits_for_its_response() {
        let cache = IdempotencyCache::new(
            Duration::from_secs(60),
            100,
            1 << 20,
            Duration::from_secs(60),
        );
        let Begin::First(guard) = cache.begin("k".into(), BODY).await else {
            panic!()
        };
        let waiter = tokio::spawn({
            let cache = cache.clone();
            async move {
                match cache.begin("k".into(), BODY).await {
                    Begin::Replay(s) => s.body.clone(),
                    Begin::First(_) | Begin::Reused | Begin::Busy => {
                        Bytes::from_static(b"ran twice")
                    }
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        guard.finish(ok("one"));
        assert_eq!(waiter.await.unwrap(), "one");
    }

    #[tokio::test]
    async fn failures_and_cancels_are_not_kept() {
        let cache = IdempotencyCache::new(
            Duration::from_secs(60),
            100,
            1 << 20,
            Duration::from_secs(60),
        );
        let Begin::First(guard) = cache.begin("k".into(), BODY).await else {
            panic!()
        };
        guard.finish(Stored {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            ..ok("boom")
        });
        let Begin::First(guard) = cache.begin("k".into(), BODY).await else {
            panic!("a failed first call must not be replayed")
        };
        drop(guard);
        assert!(matches!(
            cache.begin("k".into(), BODY).await,
            Begin::First(_)
        ));
    }

    #[tokio::test]
    async fn entries_expire_and_the_oldest_go_when_full() {
        let cache = IdempotencyCache::new(
            Duration::from_millis(30),
            2,
            1 << 20,
            Duration::from_secs(60),
        );
        for k in ["a", "b", "c"] {
            let Begin::First(g) = cache.begin(k.into(), BODY).await else {
                panic!()
            };
            g.finish(ok(k));
        }
        assert!(
            matches!(cache.begin("a".into(), BODY).await, Begin::First(_)),
            "evicted"
        );
        assert!(matches!(
            cache.begin("c".into(), BODY).await,
            Begin::Replay(_)
        ));
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(
            matches!(cache.begin("c".into(), BODY).await, Begin::First(_)),
            "expired"
        );
    }

    #[tokio::test]
    async fn the_cache_keeps_at_most_its_bytes_and_a_repeat_waits_at_most_its_wait() {
        let cache =
            IdempotencyCache::new(Duration::from_secs(60), 100, 10, Duration::from_millis(50));
        for k in ["a", "b", "c"] {
            let Begin::First(g) = cache.begin(k.into(), BODY).await else {
                panic!()
            };
            g.finish(ok("four"));
        }
        // 12 bytes kept is over 10: the oldest went.
        assert!(matches!(
            cache.begin("a".into(), BODY).await,
            Begin::First(_)
        ));
        assert!(matches!(
            cache.begin("c".into(), BODY).await,
            Begin::Replay(_)
        ));
        // "a" runs (its guard alive in the test): a repeat gives up after the wait.
        let Begin::First(_running) = cache.begin("x".into(), BODY).await else {
            panic!()
        };
        assert!(matches!(cache.begin("x".into(), BODY).await, Begin::Busy));
    }
}
