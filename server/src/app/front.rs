//! [`FrontLayer`]: everything the stack does to every request before the
//! wallet sees it, in one layer and one future.
//!
//! In order, in [`Service::call`]:
//!
//! 1. the request metrics start (with [`FrontLayer::metrics`]): the route and
//!    the clock ([`RequestCounter`]);
//! 2. the request's id is chosen and put in its extensions
//!    ([`request_id`]);
//! 3. the in-flight bound admits it or answers 503 `SERVER_OVERLOADED`
//!    ([`in_flight`](crate::middleware::in_flight); exempt paths take no slot);
//! 4. the header limits admit it or answer 431 / 411
//!    ([`limits`](crate::middleware::limits));
//! 5. the inner service is called, under the request's deadline (a 408 when it
//!    passes; the timer is made only if the first poll is pending,
//!    [`deadline`](crate::middleware::deadline)).
//!
//! And when the answer is ready: the in-flight slot is freed, the bare 408 of
//! the deadline and 413 of the body limit become JSON errors, a server error
//! is logged with the request's id, the id is set on the response, and the
//! request is counted.
//!
//! As one layer, a request is moved, and its future wrapped, once instead of
//! once per step (measured in docs/performance.md).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tokio::sync::OwnedSemaphorePermit;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Span;

use super::answers::{normalize_error, within_request_timeout, TimeoutAnswer};
use crate::body::AppBody;
use crate::metrics::{RequestCounter, Started};
use crate::middleware::deadline::Within;
use crate::middleware::in_flight::InFlight;
use crate::middleware::limits::head_refusal;
use crate::middleware::refused::RefusedOr;
use crate::middleware::request_id;

/// The per-request work above the wallet; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct FrontLayer {
    config: Config,
}

#[derive(Clone, Debug)]
struct Config {
    metrics: Option<RequestCounter>,
    next_id: Arc<AtomicU64>,
    in_flight: InFlight,
    exempt: &'static [&'static str],
    header_limit_bytes: usize,
    request_timeout: Duration,
    body_limit_bytes: usize,
}

impl FrontLayer {
    /// Requests counted against `in_flight`, heads limited to
    /// `header_limit_bytes`, each request within `request_timeout`; a 413
    /// from below names `body_limit_bytes`. No metrics, no exempt path.
    pub fn new(
        in_flight: InFlight,
        header_limit_bytes: usize,
        request_timeout: Duration,
        body_limit_bytes: usize,
    ) -> Self {
        Self {
            config: Config {
                metrics: None,
                next_id: Arc::default(),
                in_flight,
                exempt: &[],
                header_limit_bytes,
                request_timeout,
                body_limit_bytes,
            },
        }
    }

    /// Count and time every request with `counter`.
    pub fn metrics(mut self, counter: Option<RequestCounter>) -> Self {
        self.config.metrics = counter;
        self
    }

    /// Requests for exactly these paths are neither counted in flight nor
    /// refused by the bound.
    pub fn exempt(mut self, paths: &'static [&'static str]) -> Self {
        self.config.exempt = paths;
        self
    }
}

impl<S> Layer<S> for FrontLayer {
    type Service = Front<S>;

    fn layer(&self, inner: S) -> Front<S> {
        Front {
            inner,
            config: Arc::new(self.config.clone()),
        }
    }
}

/// The service of [`FrontLayer`]. One `Arc` to clone: hyper clones the
/// service for every request.
#[derive(Clone, Debug)]
pub struct Front<S> {
    inner: S,
    config: Arc<Config>,
}

/// The inner future under the request's deadline, or a refusal.
type Guarded<F> = RefusedOr<Within<F, TimeoutAnswer<AppBody>>>;

impl<S, B> Service<Request<B>> for Front<S>
where
    S: Service<Request<B>, Response = Response<AppBody>, Error = Infallible>,
{
    type Response = Response<AppBody>;
    type Error = Infallible;
    type Future = FrontFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let config = &*self.config;
        let started = config.metrics.as_ref().map(|counter| counter.start(&req));
        let (id, span) = request_id::assign(&mut req, &config.next_id);
        let admitted = config.in_flight.admit(req.uri().path(), config.exempt);
        let (future, permit) = match admitted {
            Err(refusal) => (RefusedOr::refused(refusal), None),
            Ok(permit) => match head_refusal(&req, config.header_limit_bytes) {
                Some(refusal) => (RefusedOr::refused(refusal), None),
                None => {
                    let future = span.in_scope(|| self.inner.call(req));
                    let future = within_request_timeout(future, config.request_timeout);
                    (RefusedOr::inner(future), permit)
                }
            },
        };
        FrontFuture {
            future,
            id: Some(id),
            span,
            permit,
            started,
            config: Arc::clone(&self.config),
        }
    }
}

pin_project! {
    /// The future of [`Front`].
    pub struct FrontFuture<F> {
        #[pin]
        future: Guarded<F>,
        id: Option<HeaderValue>,
        span: Span,
        // The in-flight slot, freed as soon as the answer is ready (not when
        // the connection gets round to dropping the future).
        permit: Option<OwnedSemaphorePermit>,
        started: Option<Started>,
        config: Arc<Config>,
    }
}

impl<F> Future for FrontFuture<F>
where
    F: Future<Output = Result<Response<AppBody>, Infallible>>,
{
    type Output = Result<Response<AppBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = {
            let _in_request = this.span.enter();
            ready!(this.future.poll(cx))?
        };
        drop(this.permit.take());
        let mut res = normalize_error(res, this.config.body_limit_bytes);
        if let Some(id) = this.id.take() {
            request_id::finish(&mut res, id);
        }
        if let (Some(counter), Some(started)) = (&this.config.metrics, this.started.take()) {
            counter.finish(started, &res);
        }
        Poll::Ready(Ok(res))
    }
}

#[cfg(test)]
#[path = "front_tests.rs"]
mod tests;
