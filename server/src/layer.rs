//! [`UserLockLayer`]: hold a user's lock for the life of that user's request.
//!
//! For requests whose path is `/point/{id}` or `/point/{id}/...` the middleware
//! parses `{id}` from the raw URI and takes that user's [`KeyedLock`] before calling
//! the inner service. Other paths pass through untouched.
//!
//! - **Starts**: the request's place in the user's queue is taken in
//!   [`Service::call`], so same-user requests are served in the order they reached
//!   this layer (FIFO). Driving the service to ready takes no lock.
//! - **Ends**: the lock is released when the inner response future resolves, after
//!   the handler committed its change. Requests of other users never wait for it.
//! - **Rejects**: an invalid id answers `400 INVALID_USER_ID` without locking; a
//!   wait longer than the configured timeout answers `503 LOCK_TIMEOUT` with
//!   `Retry-After` and never reaches the inner service, so it changes nothing.
//! - **Cancellation**: if the response future is dropped while the inner future is
//!   running (a client disconnects; an outer timeout fires), the inner future and the
//!   guard are moved into a spawned tokio task and run to completion there. A change
//!   that has started always finishes, and the lock is released only after it.
//!   A drop while still queued just leaves the queue.
//!
//! The inner service finds the guard in the request's extensions as [`HeldLock`],
//! the proof [`PointService`](pointlock_core::PointService)'s mutations require.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use pointlock_core::{KeyedLock, UserId};
//! use pointlock_server::layer::UserLockLayer;
//! use tower::ServiceBuilder;
//!
//! # #[derive(Clone)] struct Handler;
//! # impl<B> tower::Service<http::Request<B>> for Handler {
//! #     type Response = http::Response<http_body_util::Full<bytes::Bytes>>;
//! #     type Error = std::convert::Infallible;
//! #     type Future = std::future::Ready<Result<Self::Response, Self::Error>>;
//! #     fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> { std::task::Poll::Ready(Ok(())) }
//! #     fn call(&mut self, _: http::Request<B>) -> Self::Future { std::future::ready(Ok(http::Response::default())) }
//! # }
//! let lock: KeyedLock<UserId> = KeyedLock::new();
//! let service = ServiceBuilder::new()
//!     .layer(UserLockLayer::new(lock.clone(), Duration::from_secs(3)))
//!     .service(Handler);
//! # let _ = service;
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use pointlock_core::{Acquire, KeyGuard, KeyedLock, PointError, UserId};
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use crate::error::ApiError;
use crate::routes::user_segment;

/// The user's guard, shared with the handler through the request's extensions.
#[derive(Clone, Debug)]
pub struct HeldLock(pub Arc<KeyGuard<UserId>>);

/// Applies [`UserLock`] to a service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct UserLockLayer {
    lock: KeyedLock<UserId>,
    timeout: Duration,
}

impl UserLockLayer {
    /// Lock users in `lock`, giving up after `timeout` with a 503.
    pub fn new(lock: KeyedLock<UserId>, timeout: Duration) -> Self {
        Self { lock, timeout }
    }
}

impl<S> Layer<S> for UserLockLayer {
    type Service = UserLock<S>;

    fn layer(&self, inner: S) -> Self::Service {
        UserLock {
            inner,
            lock: self.lock.clone(),
            timeout: self.timeout,
        }
    }
}

/// The middleware built by [`UserLockLayer`]. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct UserLock<S> {
    inner: S,
    lock: KeyedLock<UserId>,
    timeout: Duration,
}

/// The response body: the inner body, or a JSON rejection made here.
pub type UserLockBody<B> = Either<B, Full<Bytes>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for UserLock<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<UserLockBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let Some(segment) = user_segment(req.uri().path()) else {
            return ResponseFuture::running(self.inner.call(req), None);
        };
        let id = match segment.parse::<UserId>() {
            Ok(id) => id,
            Err(error) => return ResponseFuture::rejected(error),
        };
        // The service driven to ready is the one to call later; leave a clone here.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            state: State::Waiting {
                acquire: self.lock.lock(id),
                deadline: Instant::now() + self.timeout,
                sleep: None,
                inner,
                req: Some(req),
            },
        }
    }
}

/// Response future of [`UserLock`].
pub struct ResponseFuture<S, B>
where
    S: Service<Request<B>>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
{
    state: State<S, B>,
}

enum State<S: Service<Request<B>>, B> {
    /// Queued for the user's lock.
    Waiting {
        acquire: Acquire<UserId>,
        deadline: Instant,
        /// Created only if the lock is not free at once.
        sleep: Option<Pin<Box<Sleep>>>,
        inner: S,
        req: Option<Request<B>>,
    },
    /// The inner service is working (holding the guard, for a user path).
    Running {
        future: Pin<Box<S::Future>>,
        guard: Option<Arc<KeyGuard<UserId>>>,
        /// Set while the inner future is being polled: if that poll panics, the
        /// future must be dropped, never resumed in a spawned task.
        polling: bool,
    },
    /// Answered here without calling the inner service.
    Rejected(Option<Response<Full<Bytes>>>),
    Done,
}

// Nothing in `ResponseFuture` is structurally pinned: the inner future is boxed.
impl<S, B> Unpin for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
{
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
{
    fn running(future: S::Future, guard: Option<Arc<KeyGuard<UserId>>>) -> Self {
        Self {
            state: State::Running {
                future: Box::pin(future),
                guard,
                polling: false,
            },
        }
    }

    fn rejected(error: impl Into<ApiError>) -> Self {
        Self {
            state: State::Rejected(Some(error.into().into_response())),
        }
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Output = Result<Response<UserLockBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Waiting {
                    acquire,
                    deadline,
                    sleep,
                    inner,
                    req,
                } => {
                    let guard = match Pin::new(&mut *acquire).poll(cx) {
                        Poll::Ready(guard) => guard,
                        Poll::Pending => {
                            let sleep = sleep.get_or_insert_with(|| {
                                Box::pin(tokio::time::sleep_until(*deadline))
                            });
                            ready!(sleep.as_mut().poll(cx));
                            let State::Waiting { acquire, .. } =
                                std::mem::replace(&mut this.state, State::Done)
                            else {
                                unreachable!("matched Waiting above");
                            };
                            tracing::warn!(user = %acquire.key(), "lock wait timed out");
                            acquire.abandon_timed_out();
                            this.state = State::Rejected(Some(
                                ApiError::from(PointError::LockTimeout).into_response(),
                            ));
                            continue;
                        }
                    };
                    let guard = Arc::new(guard);
                    let Some(mut req) = req.take() else {
                        unreachable!("the request is taken once, on acquisition");
                    };
                    req.extensions_mut().insert(HeldLock(Arc::clone(&guard)));
                    let future = inner.call(req);
                    *this = ResponseFuture::running(future, Some(guard));
                }
                State::Running {
                    future, polling, ..
                } => {
                    *polling = true;
                    let output = ready!(future.as_mut().poll(cx));
                    // Releases the guard (if the handler kept no clone): after the response.
                    this.state = State::Done;
                    return Poll::Ready(output.map(|res| res.map(Either::Left)));
                }
                State::Rejected(response) => {
                    let response = response.take().expect("polled after completion");
                    this.state = State::Done;
                    return Poll::Ready(Ok(response.map(Either::Right)));
                }
                State::Done => panic!("UserLock ResponseFuture polled after completion"),
            }
        }
    }
}

impl<S, B> Drop for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
{
    fn drop(&mut self) {
        let State::Running {
            guard: Some(_),
            polling: false,
            ..
        } = &self.state
        else {
            // Not in a user's locked section, or the inner future panicked: plain drop.
            return;
        };
        let State::Running { future, guard, .. } = std::mem::replace(&mut self.state, State::Done)
        else {
            unreachable!("matched Running above");
        };
        finish_detached(future, guard);
    }
}

/// Run a dropped, in-flight locked section to completion, then release its guard.
///
/// Without a tokio runtime (dropped during runtime shutdown) there is nowhere to
/// finish it: it is dropped, which releases the guard; stores commit atomically, so
/// a change is then either wholly applied or not at all.
fn finish_detached<F>(future: Pin<Box<F>>, guard: Option<Arc<KeyGuard<UserId>>>)
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            tracing::debug!("response dropped mid-request; finishing the locked section");
            runtime.spawn(async move {
                let _ = future.await;
                drop(guard);
            });
        }
        Err(_) => tracing::warn!("response dropped without a runtime; in-flight work abandoned"),
    }
}
