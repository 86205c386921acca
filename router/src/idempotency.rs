//! `Idempotency-Key`: a repeat of a (non-stream) request within the TTL gets the first response
//! again instead of a second generation. A repeat that arrives while the first is still running
//! waits for it. Only successful responses are kept, so a retry after a failure generates anew.

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

enum Slot {
    Running(watch::Receiver<Option<Outcome>>),
    Done(Arc<Stored>, Instant),
}

pub struct IdempotencyCache {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    slots: HashMap<String, Slot>,
    /// Insertion order, to evict the oldest when full and expire by age.
    order: VecDeque<(String, Instant)>,
}

/// What a request with an idempotency key does.
pub enum Begin {
    /// Nobody ran it yet: run it and hand the response to the guard.
    First(Guard),
    /// It ran already: send this.
    Replay(Arc<Stored>),
}

/// Held by the request that runs; dropping it without [`Guard::finish`] (failure, cancel) lets
/// the next repeat run instead.
pub struct Guard {
    cache: Arc<IdempotencyCache>,
    key: String,
    tx: watch::Sender<Option<Outcome>>,
    finished: bool,
}

impl IdempotencyCache {
    pub fn new(ttl: Duration, capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            ttl,
            capacity,
            inner: Mutex::new(Inner::default()),
        })
    }

    pub async fn begin(self: &Arc<Self>, key: String) -> Begin {
        loop {
            let mut rx = {
                let mut inner = self.inner.lock().unwrap();
                self.expire(&mut inner, Instant::now());
                match inner.slots.get(&key) {
                    Some(Slot::Done(stored, _)) => return Begin::Replay(stored.clone()),
                    Some(Slot::Running(rx)) => rx.clone(),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        inner.slots.insert(key.clone(), Slot::Running(rx));
                        return Begin::First(Guard {
                            cache: self.clone(),
                            key,
                            tx,
                            finished: false,
                        });
                    }
                }
            };
            // The first request ends one way or another; then look again.
            let _ = rx.wait_for(Option::is_some).await;
        }
    }

    fn expire(&self, inner: &mut Inner, now: Instant) {
        while let Some((key, at)) = inner.order.front().cloned() {
            let expired = now.duration_since(at) > self.ttl;
            if !expired && inner.order.len() <= self.capacity {
                break;
            }
            inner.order.pop_front();
            if let Some(Slot::Done(_, done_at)) = inner.slots.get(&key)
                && *done_at == at
            {
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
                inner
                    .slots
                    .insert(self.key.clone(), Slot::Done(stored.clone(), now));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &'static str) -> Stored {
        Stored {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    #[tokio::test]
    async fn a_repeat_gets_the_first_response() {
        let cache = IdempotencyCache::new(Duration::from_secs(60), 100);
        let Begin::First(guard) = cache.begin("k".into()).await else {
            panic!("first call must run")
        };
        guard.finish(ok("one"));
        let Begin::Replay(stored) = cache.begin("k".into()).await else {
            panic!("repeat must replay")
        };
        assert_eq!(stored.body, "one");
        assert!(matches!(cache.begin("other".into()).await, Begin::First(_)));
    }

    #[tokio::test]
    async fn a_repeat_while_the_first_runs_waits_for_its_response() {
        let cache = IdempotencyCache::new(Duration::from_secs(60), 100);
        let Begin::First(guard) = cache.begin("k".into()).await else {
            panic!()
        };
        let waiter = tokio::spawn({
            let cache = cache.clone();
            async move {
                match cache.begin("k".into()).await {
                    Begin::Replay(s) => s.body.clone(),
                    Begin::First(_) => Bytes::from_static(b"ran twice"),
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        guard.finish(ok("one"));
        assert_eq!(waiter.await.unwrap(), "one");
    }

    #[tokio::test]
    async fn failures_and_cancels_are_not_kept() {
        let cache = IdempotencyCache::new(Duration::from_secs(60), 100);
        let Begin::First(guard) = cache.begin("k".into()).await else {
            panic!()
        };
        guard.finish(Stored {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            ..ok("boom")
        });
        let Begin::First(guard) = cache.begin("k".into()).await else {
            panic!("a failed first call must not be replayed")
        };
        drop(guard);
        assert!(matches!(cache.begin("k".into()).await, Begin::First(_)));
    }

    #[tokio::test]
    async fn entries_expire_and_the_oldest_go_when_full() {
        let cache = IdempotencyCache::new(Duration::from_millis(30), 2);
        for k in ["a", "b", "c"] {
            let Begin::First(g) = cache.begin(k.into()).await else {
                panic!()
            };
            g.finish(ok(k));
        }
        assert!(
            matches!(cache.begin("a".into()).await, Begin::First(_)),
            "evicted"
        );
        assert!(matches!(cache.begin("c".into()).await, Begin::Replay(_)));
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(
            matches!(cache.begin("c".into()).await, Begin::First(_)),
            "expired"
        );
    }
}
