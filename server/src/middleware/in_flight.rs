//! A bound on the requests the whole process works on at once.
//!
//! Every other bound is per piece: connections (`--max-connections`), HTTP/2
//! streams per connection, waiters per user (`--lock-queue-max`), the
//! PostgreSQL store's queue. Multiplied together they allow far more requests
//! in the stack than memory or any latency goal can take (10,000 connections
//! of 100 streams each, every one waiting up to the lock timeout).
//! [`InFlightLimitLayer`] caps them all together: a request that finds every
//! slot taken is answered at once with 503 `SERVER_OVERLOADED` and
//! `Retry-After: 1`, before authentication, the body or any lock; nothing was
//! queued or changed. A slot is held from the moment the request enters the
//! layer until its response head is ready (the responses are small and
//! buffered; a streamed history holds no lock and a bounded page).
//!
//! Paths given to [`InFlightLimitLayer::exempt`] bypass the bound: the wallet
//! exempts `GET /health` and `GET /metrics`, which wait for nothing (no lock,
//! no store) and must keep answering while the process is overloaded, or a
//! liveness probe would restart a process that is only busy and the
//! operator would lose sight of it.
//!
//! A refusal costs one failed atomic compare-and-swap: no allocation, no
//! queue. A granted slot costs a semaphore permit (an atomic add and an `Arc`
//! clone) and its release.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_layer::Layer;
use tower_service::Service;

use super::refused::RefusedOr;
use crate::body::AppBody;
use crate::error::ApiError;

/// The default bound on requests in the stack at once: far above what 2 cores
/// serve in a lock timeout's worth of queueing for a few hot users, and a
/// cap on the memory they pin (a few KiB each).
pub const MAX_IN_FLIGHT_DEFAULT: usize = 16_384;

/// The shared count of [`InFlightLimitLayer`]: its bound, the requests in the
/// stack now and the refusals so far. Cheap to clone; clones share it.
#[derive(Clone, Debug)]
pub struct InFlight {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    slots: Arc<Semaphore>,
    max: usize,
    refused: AtomicU64,
}

impl InFlight {
    /// At most `max` requests at once (at least one).
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            inner: Arc::new(Shared {
                slots: Arc::new(Semaphore::new(max)),
                max,
                refused: AtomicU64::new(0),
            }),
        }
    }

    /// The bound.
    pub fn max(&self) -> usize {
        self.inner.max
    }

    /// Requests in the stack now.
    pub fn current(&self) -> usize {
        self.inner.max - self.inner.slots.available_permits()
    }

    /// Requests refused so far because every slot was taken.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    fn try_enter(&self) -> Option<OwnedSemaphorePermit> {
        let permit = Arc::clone(&self.inner.slots).try_acquire_owned().ok();
        if permit.is_none() {
            self.inner.refused.fetch_add(1, Ordering::Relaxed);
        }
        permit
    }
}

/// Answers 503 `SERVER_OVERLOADED` at once when [`InFlight::max`] requests are
/// already in the stack below it; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct InFlightLimitLayer {
    in_flight: InFlight,
    exempt: &'static [&'static str],
}

impl InFlightLimitLayer {
    /// A layer counting against `in_flight` (share it with the metrics).
    pub fn new(in_flight: InFlight) -> Self {
        Self {
            in_flight,
            exempt: &[],
        }
    }

    /// Requests for exactly these paths are neither counted nor refused.
    pub fn exempt(mut self, paths: &'static [&'static str]) -> Self {
        self.exempt = paths;
        self
    }
}

impl<S> Layer<S> for InFlightLimitLayer {
    type Service = InFlightLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InFlightLimit {
            inner,
            in_flight: self.in_flight.clone(),
            exempt: self.exempt,
        }
    }
}

/// The service of [`InFlightLimitLayer`].
#[derive(Clone, Debug)]
pub struct InFlightLimit<S> {
    inner: S,
    in_flight: InFlight,
    exempt: &'static [&'static str],
}

impl<S, B> Service<Request<B>> for InFlightLimit<S>
where
    S: Service<Request<B>, Response = Response<AppBody>, Error = Infallible>,
{
    type Response = Response<AppBody>;
    type Error = Infallible;
    type Future = InFlightFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if self.exempt.contains(&req.uri().path()) {
            return RefusedOr::inner(InSlot {
                future: self.inner.call(req),
                permit: None,
            });
        }
        match self.in_flight.try_enter() {
            Some(permit) => RefusedOr::inner(InSlot {
                future: self.inner.call(req),
                permit: Some(permit),
            }),
            None => RefusedOr::refused(ApiError::Overloaded {
                in_flight_max: self.in_flight.max(),
            }),
        }
    }
}

/// The future of [`InFlightLimit`]: the inner service's, holding its slot
/// until the response is ready, or the 503 at once.
pub type InFlightFuture<F> = RefusedOr<InSlot<F>>;

pin_project! {
    /// An admitted request's future and its slot, freed as soon as the
    /// answer is ready (not when the connection gets round to dropping the
    /// future).
    pub struct InSlot<F> {
        #[pin]
        future: F,
        permit: Option<OwnedSemaphorePermit>,
    }
}

impl<F: Future> Future for InSlot<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = std::task::ready!(this.future.poll(cx));
        drop(this.permit.take());
        Poll::Ready(output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use tokio::sync::oneshot;

    /// A service that answers each request when its sender fires.
    #[derive(Clone)]
    struct Held {
        calls: Arc<std::sync::Mutex<Vec<oneshot::Sender<()>>>>,
    }

    impl Service<Request<()>> for Held {
        type Response = Response<AppBody>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Response<AppBody>, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<()>) -> Self::Future {
            let (tx, rx) = oneshot::channel();
            self.calls.lock().expect("calls").push(tx);
            Box::pin(async move {
                let _ = rx.await;
                let body = Full::new(Bytes::from_static(b"ok")).map_err(|never| match never {});
                Ok(Response::new(AppBody::new(body)))
            })
        }
    }

    fn held() -> Held {
        Held {
            calls: Arc::default(),
        }
    }

    #[tokio::test]
    async fn beyond_the_bound_answers_503_at_once_without_calling_inner_and_frees_on_answer() {
        let inner = held();
        let in_flight = InFlight::new(2);
        let mut service = InFlightLimitLayer::new(in_flight.clone()).layer(inner.clone());
        let first = tokio::spawn(service.call(Request::new(())));
        let second = tokio::spawn(service.call(Request::new(())));
        assert_eq!(in_flight.current(), 2);

        let refused = service.call(Request::new(())).await.expect("infallible");
        assert_eq!(refused.status(), 503);
        assert_eq!(refused.headers()["retry-after"], "1");
        let body = refused
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(json["code"], "SERVER_OVERLOADED");
        assert_eq!(
            inner.calls.lock().expect("calls").len(),
            2,
            "inner not called"
        );
        assert_eq!(in_flight.refused(), 1);

        // One answer frees one slot: the next request is admitted.
        let sender = inner.calls.lock().expect("calls").remove(0);
        sender.send(()).expect("waiting");
        assert_eq!(first.await.expect("task").expect("ok").status(), 200);
        assert_eq!(in_flight.current(), 1);
        let third = tokio::spawn(service.call(Request::new(())));
        assert_eq!(
            inner.calls.lock().expect("calls").len(),
            2,
            "second and third"
        );
        assert_eq!(in_flight.current(), 2);
        for sender in inner.calls.lock().expect("calls").drain(..) {
            sender.send(()).expect("waiting");
        }
        assert_eq!(second.await.expect("task").expect("ok").status(), 200);
        assert_eq!(third.await.expect("task").expect("ok").status(), 200);
        assert_eq!(in_flight.current(), 0);
    }

    #[tokio::test]
    async fn an_exempt_path_passes_a_full_stack_and_takes_no_slot() {
        let inner = held();
        let in_flight = InFlight::new(1);
        let mut service = InFlightLimitLayer::new(in_flight.clone())
            .exempt(&["/health"])
            .layer(inner.clone());
        let _holder = service.call(Request::new(()));
        let health = service.call(Request::get("/health").body(()).expect("request"));
        let other = service.call(Request::get("/healthz").body(()).expect("request"));
        assert_eq!(other.await.expect("infallible").status(), 503);
        assert_eq!(in_flight.current(), 1, "the exempt request took no slot");
        inner
            .calls
            .lock()
            .expect("calls")
            .pop()
            .expect("called")
            .send(())
            .expect("waiting");
        assert_eq!(health.await.expect("infallible").status(), 200);
    }

    #[tokio::test]
    async fn a_dropped_request_frees_its_slot() {
        let inner = held();
        let in_flight = InFlight::new(1);
        let mut service = InFlightLimitLayer::new(in_flight.clone()).layer(inner.clone());
        let abandoned = service.call(Request::new(()));
        assert_eq!(in_flight.current(), 1);
        drop(abandoned);
        assert_eq!(in_flight.current(), 0);
        let next = tokio::spawn(service.call(Request::new(())));
        inner
            .calls
            .lock()
            .expect("calls")
            .pop()
            .expect("admitted")
            .send(())
            .expect("waiting");
        assert_eq!(next.await.expect("task").expect("ok").status(), 200);
    }
}
