//! What bounds the router's resources whatever clients do: open connections, requests in flight,
//! requests held for want of a ready pod, and request-body bytes in memory. Each is a counter
//! taken without waiting; beyond it the router refuses at once (connections: closed on accept;
//! requests: 503 with `Retry-After`) instead of queueing or growing.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The caps of one router process.
#[derive(Clone, Debug)]
pub struct Caps {
    pub connections: Arc<Semaphore>,
    pub in_flight: Arc<Semaphore>,
    pub held: Arc<Semaphore>,
    /// Request-body bytes held in memory, in KiB.
    pub body_kib: Arc<Semaphore>,
}

impl Caps {
    pub fn new(connections: usize, in_flight: usize, held: usize, body_bytes: usize) -> Self {
        let sem = |n: usize| Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS)));
        Self {
            connections: sem(connections),
            in_flight: sem(in_flight),
            held: sem(held),
            body_kib: sem(body_bytes.div_ceil(1024)),
        }
    }

    /// A slot of `sem`, or `None` when all are taken.
    pub fn take(sem: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
        sem.clone().try_acquire_owned().ok()
    }

    /// Room for `bytes` more bytes of request bodies in memory, or `None`.
    pub fn take_body(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let kib = u32::try_from(bytes.div_ceil(1024)).ok()?;
        self.body_kib.clone().try_acquire_many_owned(kib).ok()
    }
}

/// A response body that holds permits (the request's in-flight slot, its body bytes) until it
/// has been sent or dropped: a stream counts as in flight until it ends.
pub struct Guarded {
    inner: Body,
    _permits: Vec<OwnedSemaphorePermit>,
}

impl Guarded {
    pub fn body(inner: Body, permits: Vec<OwnedSemaphorePermit>) -> Body {
        if permits.is_empty() {
            return inner;
        }
        Body::new(Self {
            inner,
            _permits: permits,
        })
    }
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_refuse_beyond_their_size_and_free_on_drop() {
        let caps = Caps::new(2, 1, 1, 4096);
        let a = Caps::take(&caps.connections).unwrap();
        let _b = Caps::take(&caps.connections).unwrap();
        assert!(Caps::take(&caps.connections).is_none());
        drop(a);
        assert!(Caps::take(&caps.connections).is_some());
        let body = caps.take_body(3000).unwrap();
        assert!(caps.take_body(2000).is_none(), "3 KiB + 2 KiB > 4 KiB");
        drop(body);
        assert!(caps.take_body(4096).is_some());
    }
}
