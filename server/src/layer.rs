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
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;
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

pin_project! {
    /// The response body of [`UserLock`]: the inner service's body, or a JSON
    /// rejection made here (400 `INVALID_USER_ID`, 503 `LOCK_TIMEOUT`).
    ///
    /// Its [`Default`] is an empty body, so that middleware which answers by
    /// itself with a default body (the server's request deadline, with its 408)
    /// can sit outside this layer without boxing the body in between.
    #[project = UserLockBodyProj]
    pub enum UserLockBody<B> {
        /// The inner service's body.
        Inner {
            #[pin]
            body: B,
        },
        /// An answer made by the layer (or an empty default body).
        Local {
            body: Full<Bytes>,
        },
    }
}

impl<B> UserLockBody<B> {
    /// Wrap the inner service's body.
    pub fn inner(body: B) -> Self {
        Self::Inner { body }
    }
}

impl<B> Default for UserLockBody<B> {
    fn default() -> Self {
        Self::Local {
            body: Full::default(),
        }
    }
}

impl<B> Body for UserLockBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project() {
            UserLockBodyProj::Inner { body } => body.poll_frame(cx),
            UserLockBodyProj::Local { body } => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map_err(|never| match never {}))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Inner { body } => body.is_end_stream(),
            Self::Local { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Inner { body } => body.size_hint(),
            Self::Local { body } => body.size_hint(),
        }
    }
}

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
                    let poll = future.as_mut().poll(cx);
                    *polling = false;
                    let output = ready!(poll);
                    // Releases the guard (if the handler kept no clone): after the response.
                    this.state = State::Done;
                    return Poll::Ready(output.map(|res| res.map(UserLockBody::inner)));
                }
                State::Rejected(response) => {
                    let response = response.take().expect("polled after completion");
                    this.state = State::Done;
                    return Poll::Ready(Ok(response.map(|body| UserLockBody::Local { body })));
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::sync::Mutex;

    use http::StatusCode;
    use http_body_util::BodyExt;
    use tokio::sync::oneshot;

    use super::*;

    /// An inner service whose every response waits for the test to open its gate.
    /// It records each request it is called with and whether it carried the guard.
    #[derive(Clone, Default)]
    struct Gated {
        gates: Arc<Mutex<VecDeque<oneshot::Receiver<()>>>>,
        calls: Arc<Mutex<Vec<(String, bool)>>>,
        finished: Arc<Mutex<Vec<String>>>,
    }

    impl Gated {
        fn gate(&self) -> oneshot::Sender<()> {
            let (open, gate) = oneshot::channel();
            self.gates.lock().unwrap().push_back(gate);
            open
        }

        fn calls(&self) -> Vec<(String, bool)> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl Service<Request<()>> for Gated {
        type Response = Response<Full<Bytes>>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<()>) -> Self::Future {
            let path = req.uri().path().to_owned();
            let held = req.extensions().get::<HeldLock>().is_some();
            self.calls.lock().unwrap().push((path.clone(), held));
            let gate = self.gates.lock().unwrap().pop_front();
            let finished = Arc::clone(&self.finished);
            Box::pin(async move {
                assert!(!path.ends_with("/panic"), "inner service panicked");
                if let Some(gate) = gate {
                    let _ = gate.await;
                }
                finished.lock().unwrap().push(path);
                Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
            })
        }
    }

    type Fut = ResponseFuture<Gated, ()>;

    fn setup(timeout_ms: u64) -> (UserLock<Gated>, Gated, KeyedLock<UserId>) {
        let lock = KeyedLock::new();
        let inner = Gated::default();
        let svc = UserLockLayer::new(lock.clone(), Duration::from_millis(timeout_ms))
            .layer(inner.clone());
        (svc, inner, lock)
    }

    fn request(path: &str) -> Request<()> {
        Request::builder().uri(path).body(()).unwrap()
    }

    async fn poll_once(
        fut: &mut Fut,
    ) -> Poll<Result<Response<UserLockBody<Full<Bytes>>>, Infallible>> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx))).await
    }

    async fn body_json(res: Response<UserLockBody<Full<Bytes>>>) -> serde_json::Value {
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn user(raw: u64) -> UserId {
        UserId::new(raw).unwrap()
    }

    #[tokio::test]
    async fn driving_to_ready_does_not_take_the_lock() {
        let (mut svc, _, lock) = setup(1_000);
        std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
        assert!(lock.is_empty());
    }

    #[tokio::test]
    async fn the_lock_is_held_until_the_response_resolves_then_handed_on() {
        let (mut svc, inner, lock) = setup(1_000);
        let open_first = inner.gate();
        let open_second = inner.gate();

        let mut first = svc.call(request("/point/1/charge"));
        let mut second = svc.call(request("/point/1/use"));
        // Both took their places in `call`; nothing ran yet.
        assert_eq!(lock.len(), 1);
        assert_eq!(lock.waiters(), 1);
        assert!(inner.calls().is_empty());

        assert!(poll_once(&mut second).await.is_pending());
        assert!(poll_once(&mut first).await.is_pending());
        assert_eq!(inner.calls(), vec![("/point/1/charge".into(), true)]);

        // The second is still queued: its inner service has not been called.
        assert!(poll_once(&mut second).await.is_pending());
        assert_eq!(inner.calls().len(), 1);

        open_first.send(()).unwrap();
        assert!(poll_once(&mut first).await.is_ready());
        drop(first);
        // Handed off, not released: the key is still held.
        assert_eq!(lock.len(), 1);
        assert!(poll_once(&mut second).await.is_pending());
        assert_eq!(inner.calls()[1], ("/point/1/use".into(), true));
        open_second.send(()).unwrap();
        assert!(poll_once(&mut second).await.is_ready());
        drop(second);
        assert!(lock.is_empty());
    }

    #[tokio::test]
    async fn other_users_are_not_blocked() {
        let (mut svc, inner, lock) = setup(1_000);
        let _hold_user_1 = inner.gate();
        let mut one = svc.call(request("/point/1"));
        assert!(poll_once(&mut one).await.is_pending());
        let mut two = svc.call(request("/point/2"));
        assert!(poll_once(&mut two).await.is_ready());
        assert_eq!(lock.len(), 1);
    }

    #[tokio::test]
    async fn an_invalid_id_is_rejected_without_locking_or_calling_inner() {
        let (mut svc, inner, lock) = setup(1_000);
        for path in [
            "/point/abc",
            "/point/0/charge",
            "/point/-1",
            "/point/",
            "/point/9223372036854775808",
        ] {
            let mut fut = svc.call(request(path));
            assert!(lock.is_empty());
            let Poll::Ready(Ok(res)) = poll_once(&mut fut).await else {
                panic!("{path}: expected an immediate answer");
            };
            assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{path}");
            assert_eq!(body_json(res).await["code"], "INVALID_USER_ID");
        }
        assert!(inner.calls().is_empty());
    }

    #[tokio::test]
    async fn other_paths_pass_through_without_locking() {
        let (mut svc, inner, lock) = setup(1_000);
        let _gate = inner.gate();
        let mut fut = svc.call(request("/health"));
        assert!(poll_once(&mut fut).await.is_pending());
        assert!(lock.is_empty());
        assert_eq!(inner.calls(), vec![("/health".into(), false)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lock_timeout_answers_503_with_retry_after_and_never_calls_inner() {
        let (mut svc, inner, lock) = setup(100);
        let holder = lock.try_lock(user(1)).unwrap();
        let mut fut = svc.call(request("/point/1/charge"));
        assert!(poll_once(&mut fut).await.is_pending());
        tokio::time::advance(Duration::from_millis(101)).await;
        let Poll::Ready(Ok(res)) = poll_once(&mut fut).await else {
            panic!("expected the timeout answer");
        };
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()["retry-after"], "1");
        assert_eq!(body_json(res).await["code"], "LOCK_TIMEOUT");
        assert!(inner.calls().is_empty());
        assert_eq!(lock.waiters(), 0);
        assert_eq!(lock.metrics().timeouts, 1);
        drop(holder);
        assert!(lock.is_empty());
    }

    #[tokio::test]
    async fn a_response_dropped_mid_flight_finishes_its_work_before_releasing() {
        let (mut svc, inner, lock) = setup(1_000);
        let open = inner.gate();
        let mut fut = svc.call(request("/point/1/charge"));
        assert!(poll_once(&mut fut).await.is_pending());
        let mut queued = svc.call(request("/point/1/use"));
        drop(fut); // the client went away mid-request
        assert_eq!(lock.len(), 1, "still held by the detached work");
        assert!(poll_once(&mut queued).await.is_pending());
        assert_eq!(inner.calls().len(), 1, "the queued request waits");
        assert!(inner.finished.lock().unwrap().is_empty());
        open.send(()).unwrap();
        // The queued request gets the lock only after the detached work finished.
        let res = std::future::poll_fn(|cx| Pin::new(&mut queued).poll(cx)).await;
        assert!(res.is_ok());
        assert_eq!(
            *inner.finished.lock().unwrap(),
            vec!["/point/1/charge".to_owned(), "/point/1/use".to_owned()]
        );
        drop(queued);
        assert!(lock.is_empty());
    }

    #[tokio::test]
    async fn a_response_dropped_while_queued_leaves_the_queue() {
        let (mut svc, inner, lock) = setup(1_000);
        let open = inner.gate();
        let mut first = svc.call(request("/point/1/charge"));
        assert!(poll_once(&mut first).await.is_pending());
        let mut gone = svc.call(request("/point/1/use"));
        assert!(poll_once(&mut gone).await.is_pending());
        drop(gone);
        assert_eq!(lock.waiters(), 0);
        open.send(()).unwrap();
        assert!(poll_once(&mut first).await.is_ready());
        drop(first);
        assert!(lock.is_empty());
        assert_eq!(inner.calls().len(), 1);
    }

    #[tokio::test]
    async fn a_panicking_inner_future_is_dropped_not_resumed_and_releases() {
        let (mut svc, inner, lock) = setup(1_000);
        let mut fut = svc.call(request("/point/1/panic"));
        let waker = std::task::Waker::noop();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = Pin::new(&mut fut).poll(&mut Context::from_waker(waker));
        }));
        assert!(panicked.is_err());
        drop(fut);
        assert!(lock.is_empty(), "released, not detached");
        assert!(inner.finished.lock().unwrap().is_empty());
    }
}
