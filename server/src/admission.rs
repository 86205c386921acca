//! Admission control: at most `max_running` sequences in the engine, at most `max_queue` requests
//! waiting for a slot, 429 beyond that. The engine exposes no queue depth, so these counts are
//! the truth the autoscaler reads (`ferry_queue_depth` = waiting + running).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// Observer of the counts, e.g. Prometheus gauges.
pub trait QueueObserver: Send + Sync {
    fn set(&self, waiting: usize, running: usize);
}

pub struct Admission {
    slots: Arc<Semaphore>,
    max_running: usize,
    max_queue: usize,
    waiting: AtomicUsize,
    running: AtomicUsize,
    /// Answers still being sent (a slot is freed when the engine is done; the answer may take
    /// longer to reach a slow client).
    answering: AtomicUsize,
    closed: AtomicBool,
    idle: Notify,
    observer: Box<dyn QueueObserver>,
}

/// A request admitted to the wait queue; [`Ticket::run`] waits for an engine slot.
pub struct Ticket {
    admission: Arc<Admission>,
    waiting: bool,
}

/// An engine slot, held while the sequence runs; dropping it frees the slot.
pub struct Slot {
    admission: Arc<Admission>,
    _permit: OwnedSemaphorePermit,
}

/// A slot that two owners can free, whichever is first: the task draining the engine (when the
/// generation ends, so a client that reads slowly does not keep it) and the response (before a
/// whole answer goes out, so the client's next request finds it free).
#[derive(Clone)]
pub struct SharedSlot(Arc<std::sync::Mutex<Option<Slot>>>);

impl SharedSlot {
    pub fn new(slot: Slot) -> Self {
        Self(Arc::new(std::sync::Mutex::new(Some(slot))))
    }

    /// Frees the slot (once; later calls do nothing).
    pub fn release(&self) {
        let slot = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(slot);
    }
}

impl Admission {
    pub fn new(
        max_running: usize,
        max_queue: usize,
        observer: Box<dyn QueueObserver>,
    ) -> Arc<Self> {
        let max_running = max_running.max(1);
        observer.set(0, 0);
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(max_running)),
            max_running,
            max_queue,
            waiting: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            answering: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            idle: Notify::new(),
            observer,
        })
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Admits a request or refuses it at once: draining → 503, queue full → 429. A request that
    /// finds a free slot never counts as waiting against the queue bound.
    pub fn enter(self: &Arc<Self>) -> Result<Ticket, ApiError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(ApiError::Unavailable(
                "The server is shutting down; retry on another replica.",
            ));
        }
        let mut waiting = self.waiting.load(Ordering::SeqCst);
        loop {
            let busy = waiting + self.running.load(Ordering::SeqCst) >= self.max_running;
            if busy && waiting >= self.max_queue {
                return Err(ApiError::Overloaded {
                    waiting,
                    retry_after: self.retry_after(waiting),
                });
            }
            match self.waiting.compare_exchange(
                waiting,
                waiting + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break,
                Err(now) => waiting = now,
            }
        }
        self.publish();
        Ok(Ticket {
            admission: self.clone(),
            waiting: true,
        })
    }

    /// Seconds a refused client should wait: about one batch turnover per full batch ahead.
    fn retry_after(&self, waiting: usize) -> u64 {
        (1 + waiting / self.max_running) as u64
    }

    /// Stops admitting (`/ready` turns 503, new requests get 503).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Waits until no request is waiting, running or being answered, or `limit` passes; true
    /// when idle.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.idle.notified();
            if self.busy() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.busy() == 0;
            }
        }
    }

    fn busy(&self) -> usize {
        self.waiting() + self.running() + self.answering.load(Ordering::SeqCst)
    }

    /// Counts an answer as being sent until the returned guard drops.
    pub fn answering(self: &Arc<Self>) -> Answering {
        self.answering.fetch_add(1, Ordering::SeqCst);
        Answering {
            admission: self.clone(),
        }
    }

    fn publish(&self) {
        let (waiting, running) = (self.waiting(), self.running());
        self.observer.set(waiting, running);
        if self.busy() == 0 {
            self.idle.notify_waiters();
        }
    }
}

impl Ticket {
    /// Waits for an engine slot. Dropping the future (client gone) leaves the queue cleanly.
    pub async fn run(mut self) -> Slot {
        let permit = self
            .admission
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let admission = self.admission.clone();
        admission.running.fetch_add(1, Ordering::SeqCst);
        admission.waiting.fetch_sub(1, Ordering::SeqCst);
        self.waiting = false;
        admission.publish();
        Slot {
            admission,
            _permit: permit,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.waiting {
            self.admission.waiting.fetch_sub(1, Ordering::SeqCst);
            self.admission.publish();
        }
    }
}

/// An answer being sent (see [`Admission::answering`]).
pub struct Answering {
    admission: Arc<Admission>,
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.admission.answering.fetch_sub(1, Ordering::SeqCst);
        self.admission.publish();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.running.fetch_sub(1, Ordering::SeqCst);
        self.admission.publish();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default, Clone)]
    struct Recorder(Arc<Mutex<Vec<(usize, usize)>>>);

    impl QueueObserver for Recorder {
        fn set(&self, waiting: usize, running: usize) {
            self.0.lock().unwrap().push((waiting, running));
        }
    }

    impl Recorder {
        fn last(&self) -> (usize, usize) {
            *self.0.lock().unwrap().last().unwrap()
        }
    }

    #[tokio::test]
    async fn full_queue_is_refused_with_429_and_retry_after() {
        let rec = Recorder::default();
        let adm = Admission::new(1, 1, Box::new(rec.clone()));
        let running = adm.enter().unwrap().run().await;
        let queued = adm.enter().unwrap();
        assert_eq!(rec.last(), (1, 1));
        let err = adm.enter().err().expect("third request refused");
        assert_eq!(err.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert!(matches!(
            err,
            ApiError::Overloaded {
                waiting: 1,
                retry_after: 2
            }
        ));
        drop(running);
        let _slot = queued.run().await;
        assert_eq!(rec.last(), (0, 1));
    }

    #[tokio::test]
    async fn free_slot_admits_even_with_zero_queue() {
        let adm = Admission::new(2, 0, Box::new(Recorder::default()));
        let a = adm.enter().unwrap().run().await;
        let b = adm.enter().unwrap().run().await;
        assert!(adm.enter().is_err(), "both slots busy and no queue");
        drop((a, b));
        assert!(adm.enter().is_ok());
    }

    #[tokio::test]
    async fn abandoned_waiter_frees_its_queue_place() {
        let rec = Recorder::default();
        let adm = Admission::new(1, 1, Box::new(rec.clone()));
        let _running = adm.enter().unwrap().run().await;
        let waiter = adm.enter().unwrap();
        let run = tokio::spawn(waiter.run());
        tokio::time::sleep(Duration::from_millis(20)).await;
        run.abort();
        let _ = run.await;
        assert_eq!(rec.last(), (0, 1), "the cancelled waiter left the queue");
        assert!(adm.enter().is_ok(), "its place is free again");
    }

    #[tokio::test]
    async fn closing_refuses_new_work_and_waits_for_in_flight() {
        let adm = Admission::new(4, 4, Box::new(Recorder::default()));
        let slot = adm.enter().unwrap().run().await;
        adm.close();
        assert_eq!(
            adm.enter().err().unwrap().status(),
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        );
        assert!(
            !adm.wait_idle(Duration::from_millis(30)).await,
            "still one running"
        );
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            drop(slot);
        });
        assert!(adm.wait_idle(Duration::from_secs(5)).await);
        release.await.unwrap();
    }

    #[tokio::test]
    async fn counts_never_exceed_bounds_under_contention() {
        let adm = Admission::new(3, 5, Box::new(Recorder::default()));
        let mut tasks = Vec::new();
        let refused = Arc::new(AtomicUsize::new(0));
        for _ in 0..200 {
            let adm = adm.clone();
            let refused = refused.clone();
            tasks.push(tokio::spawn(async move {
                match adm.enter() {
                    Ok(t) => {
                        let _slot = t.run().await;
                        assert!(adm.running() <= 3 && adm.waiting() <= 5);
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err(_) => {
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!((adm.waiting(), adm.running()), (0, 0));
        assert!(refused.load(Ordering::SeqCst) > 0);
    }
}
