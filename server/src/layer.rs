//! [`KeyedLockLayer`]: serialise requests per key, in arrival order, for the life
//! of each request.
//!
//! A tower middleware for any HTTP service whose requests for one key (a user, an
//! account, a document, a counter) must not interleave: a key extractor names the
//! request's key; the middleware takes that key's [`KeyedLock`] before calling the
//! inner service and releases it when the inner response future completes.
//! Requests of different keys never wait for each other.
//!
//! - **Starts**: the request's place in its key's queue is taken in
//!   [`Service::call`], so requests for one key are served in the order they
//!   reached this layer (**FIFO**). Driving the service to ready takes no lock.
//! - **Ends**: the key is released when the inner response future resolves (the
//!   response head is ready; the inner service has finished its work). A clone of
//!   the guard taken through [`HeldLock::guard`] keeps the key held until it is
//!   dropped too: that is how the wallet's store keeps a user locked until it has
//!   answered for a change. An inner service may instead **take the guard over**
//!   ([`HeldLock::take`]): the layer then holds nothing, and the key is released
//!   when the taker drops the guard, possibly before the response (the wallet's
//!   pipelined store releases a user once its change is sequenced, while the
//!   response waits for the fsync).
//! - **The extractor decides** per request ([`KeyDecision`]): lock a key, pass
//!   the request through unlocked, or reject it at once without taking any lock.
//! - **Timeout**: a wait longer than [`KeyedLockLayer::timeout`] (3 s by default)
//!   is answered by the layer (503 with `Retry-After` unless
//!   [`KeyedLockLayer::on_refusal`] says otherwise); the inner service is never
//!   called. **Queue bound**: with [`KeyedLockLayer::queue_max`], a request that
//!   finds that many already waiting for its key is refused at once the same way,
//!   queueing nothing.
//! - **Cancel safety**: dropped while queued, the request leaves the queue and
//!   never strands the next one. Dropped while the inner future runs (a client
//!   disconnects, an outer timeout fires), the inner future and the guard move
//!   into a spawned tokio task and run to completion there: work that started
//!   under the lock finishes under it. A panic in the inner future is not resumed:
//!   the future is dropped and the key released.
//! - **Metrics**: the lock's own ([`KeyedLock::metrics`]): keys held, waiters,
//!   acquisitions, contended acquisitions, timeouts, queue-full refusals, wait
//!   times.
//!
//! The inner service finds a [`HeldLock`] in the request's extensions: the key and
//! a weak handle on the guard. Keeping the request or the extension does not keep
//! the key locked past the response.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use pointlock_core::KeyedLock;
//! use pointlock_server::layer::{KeyDecision, KeyedLockLayer};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! /// `/counter/{name}/...` locks `name`; other paths pass; a bad name is a 400.
//! fn counter_name(req: &Request<Full<Bytes>>) -> KeyDecision<String> {
//!     let Some(rest) = req.uri().path().strip_prefix("/counter/") else {
//!         return KeyDecision::Pass;
//!     };
//!     let name = rest.split('/').next().unwrap_or_default();
//!     if name.is_empty() {
//!         let mut bad = Response::new(Full::from("bad name"));
//!         *bad.status_mut() = StatusCode::BAD_REQUEST;
//!         return KeyDecision::Reject(bad);
//!     }
//!     KeyDecision::Lock(name.to_owned())
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let service = ServiceBuilder::new()
//!     .layer(
//!         KeyedLockLayer::new(KeyedLock::new(), counter_name)
//!             .timeout(Duration::from_secs(3))
//!             .queue_max(1_000),
//!     )
//!     .service(service_fn(|_req: Request<Full<Bytes>>| async {
//!         // Runs alone for its counter: read, wait, write without a race.
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::from("ok")))
//!     }));
//! let req = Request::builder().uri("/counter/a/incr").body(Full::default()).unwrap();
//! let res = service.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! # });
//! ```

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;
use pointlock_core::{Acquire, KeyGuard, KeyedLock};
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

/// What the extractor decided for one request.
#[derive(Debug)]
pub enum KeyDecision<K> {
    /// Hold this key's lock for the life of the request.
    Lock(K),
    /// Call the inner service without any lock.
    Pass,
    /// Answer with this response at once: no lock taken, inner service not called.
    Reject(Response<Full<Bytes>>),
}

/// Names the key of a request. Implemented by every
/// `Fn(&Request<B>) -> KeyDecision<K>` (a closure or a function).
pub trait ExtractKey<B> {
    /// The key type.
    type Key;

    /// Decide what to do with `req` (it is read only; the body is not touched).
    fn extract_key(&self, req: &Request<B>) -> KeyDecision<Self::Key>;
}

impl<F, B, K> ExtractKey<B> for F
where
    F: Fn(&Request<B>) -> KeyDecision<K>,
{
    type Key = K;

    fn extract_key(&self, req: &Request<B>) -> KeyDecision<K> {
        self(req)
    }
}

/// Why the layer answered a request itself after its key was named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The key was not acquired within the timeout. Nothing ran.
    TimedOut {
        /// The configured timeout.
        timeout: Duration,
    },
    /// The key already had `waiters_max` waiters. Nothing was queued.
    QueueFull {
        /// The configured bound.
        waiters_max: usize,
    },
}

/// Makes the response of a [`Refusal`].
pub type RefusalResponse = fn(Refusal) -> Response<Full<Bytes>>;

/// The default refusal: `503` with `Retry-After: 1` and a JSON body
/// `{"code":"LOCK_TIMEOUT"|"LOCK_QUEUE_FULL","message":…}`.
pub fn default_refusal(refusal: Refusal) -> Response<Full<Bytes>> {
    let body: &'static str = match refusal {
        Refusal::TimedOut { .. } => {
            r#"{"code":"LOCK_TIMEOUT","message":"timed out waiting for earlier requests for the same key; retry later"}"#
        }
        Refusal::QueueFull { .. } => {
            r#"{"code":"LOCK_QUEUE_FULL","message":"too many requests are already waiting for the same key; retry later"}"#
        }
    };
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    res
}

/// The key's guard as the inner service sees it, in the request's extensions.
///
/// It holds the key and only a *weak* handle on the layer's hold of the guard:
/// an inner service that keeps the request, or this extension, past its
/// response does not keep the key locked. [`guard`](Self::guard) lends a strong
/// handle for work that must finish under the lock even if the response is
/// dropped; a strong handle kept longer keeps the key locked longer.
/// [`take`](Self::take) takes the layer's own hold over: from then on the key
/// is held exactly as long as the taken guard (and its clones) live.
#[derive(Clone)]
pub struct HeldLock<K: Hash + Eq + Clone> {
    key: K,
    slot: Weak<GuardSlot<K>>,
}

/// The layer's hold of a key's guard, which the inner service may take over.
type GuardSlot<K> = std::sync::Mutex<Option<Arc<KeyGuard<K>>>>;

impl<K: Hash + Eq + Clone> HeldLock<K> {
    /// The locked key.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// A strong handle on the guard while the layer still holds it for this
    /// request (always, while the inner service works on it, unless it was
    /// [taken](Self::take)); `None` once released or taken.
    pub fn guard(&self) -> Option<Arc<KeyGuard<K>>> {
        let slot = self.slot.upgrade()?;
        let held = slot.lock().unwrap_or_else(PoisonError::into_inner);
        held.clone()
    }

    /// Take the layer's hold of the guard: the layer will not release the key
    /// when the response is ready; the caller's guard (and any clone of it)
    /// does, when dropped. `None` if the key is no longer held by this request
    /// or was taken already.
    pub fn take(&self) -> Option<Arc<KeyGuard<K>>> {
        let slot = self.slot.upgrade()?;
        let mut held = slot.lock().unwrap_or_else(PoisonError::into_inner);
        held.take()
    }
}

impl<K: Hash + Eq + Clone + fmt::Debug> fmt::Debug for HeldLock<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeldLock").field("key", &self.key).finish()
    }
}

/// Applies [`KeyedLockService`] to a service. Cheap to clone.
pub struct KeyedLockLayer<K, X> {
    lock: KeyedLock<K>,
    extract: X,
    timeout: Duration,
    queue_max: Option<usize>,
    refuse: RefusalResponse,
}

impl<K, X: Clone> Clone for KeyedLockLayer<K, X> {
    fn clone(&self) -> Self {
        Self {
            lock: self.lock.clone(),
            extract: self.extract.clone(),
            timeout: self.timeout,
            queue_max: self.queue_max,
            refuse: self.refuse,
        }
    }
}

impl<K, X> fmt::Debug for KeyedLockLayer<K, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLockLayer")
            .field("timeout", &self.timeout)
            .field("queue_max", &self.queue_max)
            .finish_non_exhaustive()
    }
}

impl<K, X> KeyedLockLayer<K, X> {
    /// The default lock wait before a [`Refusal::TimedOut`].
    pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(3);

    /// Lock the keys `extract` names in `lock` (share `lock` with whatever else
    /// must see the same keys). Timeout 3 s, no queue bound, [`default_refusal`].
    pub fn new(lock: KeyedLock<K>, extract: X) -> Self {
        Self {
            lock,
            extract,
            timeout: Self::TIMEOUT_DEFAULT,
            queue_max: None,
            refuse: default_refusal,
        }
    }

    /// The longest a request waits for its key before it is refused
    /// (`Duration::MAX`: no limit).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Refuse at once a request that finds `waiters_max` requests already waiting
    /// for its key (`None`: no bound; the wait is bounded in time only). `0`
    /// admits only requests whose key is free. (The server's `--lock-queue-max 0`
    /// means no bound: it passes `None`.)
    pub fn queue_max(mut self, waiters_max: impl Into<Option<usize>>) -> Self {
        self.queue_max = waiters_max.into();
        self
    }

    /// How to answer a request the layer refuses (timeout, full queue).
    pub fn on_refusal(mut self, refuse: RefusalResponse) -> Self {
        self.refuse = refuse;
        self
    }
}

impl<S, K, X: Clone> Layer<S> for KeyedLockLayer<K, X> {
    type Service = KeyedLockService<S, K, X>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedLockService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The middleware built by [`KeyedLockLayer`]. See the [module docs](self).
pub struct KeyedLockService<S, K, X> {
    inner: S,
    layer: KeyedLockLayer<K, X>,
}

impl<S: Clone, K, X: Clone> Clone for KeyedLockService<S, K, X> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, K, X> fmt::Debug for KeyedLockService<S, K, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLockService")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

pin_project! {
    /// The response body of [`KeyedLockService`]: the inner service's body, or an
    /// answer made here (a rejection or a refusal).
    ///
    /// Its [`Default`] is an empty body, so that middleware which answers by
    /// itself with a default body (a request deadline's 408) can sit outside this
    /// layer without boxing the body in between.
    #[project = KeyedLockBodyProj]
    pub enum KeyedLockBody<B> {
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

impl<B> KeyedLockBody<B> {
    /// Wrap the inner service's body.
    pub fn inner(body: B) -> Self {
        Self::Inner { body }
    }
}

impl<B> Default for KeyedLockBody<B> {
    fn default() -> Self {
        Self::Local {
            body: Full::default(),
        }
    }
}

impl<B> Body for KeyedLockBody<B>
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
            KeyedLockBodyProj::Inner { body } => body.poll_frame(cx),
            KeyedLockBodyProj::Local { body } => Pin::new(body)
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

impl<S, K, X, ReqBody, ResBody> Service<Request<ReqBody>> for KeyedLockService<S, K, X>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    K: Hash + Eq + Clone + fmt::Debug + Send + Sync + 'static,
    X: ExtractKey<ReqBody, Key = K> + Clone,
    ResBody: Send + 'static,
{
    type Response = Response<KeyedLockBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, K>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let key = match self.layer.extract.extract_key(&req) {
            KeyDecision::Lock(key) => key,
            KeyDecision::Pass => return ResponseFuture::running(self.inner.call(req), None),
            KeyDecision::Reject(response) => return ResponseFuture::answered(response),
        };
        let acquire = match self.layer.queue_max {
            None => self.layer.lock.lock(key),
            Some(waiters_max) => match self.layer.lock.lock_bounded(key, waiters_max) {
                Ok(acquire) => acquire,
                Err(full) => {
                    tracing::debug!(waiters_max = full.waiters_max, "lock queue full; refused");
                    return ResponseFuture::answered((self.layer.refuse)(Refusal::QueueFull {
                        waiters_max: full.waiters_max,
                    }));
                }
            },
        };
        // The service driven to ready is the one to call later; leave a clone here.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            state: State::Waiting {
                acquire,
                // A timeout too long to represent (`Duration::MAX`) never fires.
                deadline: Instant::now().checked_add(self.layer.timeout),
                timeout: self.layer.timeout,
                refuse: self.layer.refuse,
                sleep: None,
                inner,
                req: Some(req),
            },
        }
    }
}

/// Response future of [`KeyedLockService`].
pub struct ResponseFuture<S, B, K>
where
    S: Service<Request<B>>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    state: State<S, B, K>,
}

enum State<S: Service<Request<B>>, B, K: Hash + Eq + Clone> {
    /// Queued for the key's lock.
    Waiting {
        acquire: Acquire<K>,
        /// `None`: no deadline (the timeout does not fit an `Instant`).
        deadline: Option<Instant>,
        timeout: Duration,
        refuse: RefusalResponse,
        /// Created only if the lock is not free at once.
        sleep: Option<Pin<Box<Sleep>>>,
        inner: S,
        req: Option<Request<B>>,
    },
    /// The inner service is working (holding the guard, for a locked request).
    Running {
        future: Pin<Box<S::Future>>,
        /// The layer's hold of the guard (emptied if the inner service takes it).
        guard: Option<Arc<GuardSlot<K>>>,
        /// The request's span (when DEBUG is on), for work detached on drop: a
        /// drop usually happens outside it (hyper drops a disconnected client's
        /// future from its connection task).
        span: tracing::Span,
        /// Set while the inner future is being polled: if that poll panics, the
        /// future must be dropped, never resumed in a spawned task.
        polling: bool,
    },
    /// Answered here without calling the inner service.
    Answered(Option<Response<Full<Bytes>>>),
    Done,
}

// Nothing in `ResponseFuture` is structurally pinned: the inner future is boxed.
impl<S, B, K> Unpin for ResponseFuture<S, B, K>
where
    S: Service<Request<B>>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
}

impl<S, B, K> ResponseFuture<S, B, K>
where
    S: Service<Request<B>>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    fn running(future: S::Future, guard: Option<Arc<GuardSlot<K>>>) -> Self {
        // Spans are only made at DEBUG (see `request_id.rs`); skip the lookup below.
        let span = if tracing::level_enabled!(tracing::Level::DEBUG) {
            tracing::Span::current()
        } else {
            tracing::Span::none()
        };
        Self {
            state: State::Running {
                future: Box::pin(future),
                guard,
                span,
                polling: false,
            },
        }
    }

    fn answered(response: Response<Full<Bytes>>) -> Self {
        Self {
            state: State::Answered(Some(response)),
        }
    }
}

impl<S, B, K, ResBody> Future for ResponseFuture<S, B, K>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    K: Hash + Eq + Clone + fmt::Debug + Send + Sync + 'static,
    ResBody: Send + 'static,
{
    type Output = Result<Response<KeyedLockBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Waiting {
                    acquire,
                    deadline,
                    timeout,
                    refuse,
                    sleep,
                    inner,
                    req,
                } => {
                    let guard = match Pin::new(&mut *acquire).poll(cx) {
                        Poll::Ready(guard) => guard,
                        Poll::Pending => {
                            let Some(deadline) = *deadline else {
                                return Poll::Pending;
                            };
                            let sleep = sleep.get_or_insert_with(|| {
                                Box::pin(tokio::time::sleep_until(deadline))
                            });
                            ready!(sleep.as_mut().poll(cx));
                            let timeout = *timeout;
                            let response = refuse(Refusal::TimedOut { timeout });
                            let State::Waiting { acquire, .. } =
                                std::mem::replace(&mut this.state, State::Done)
                            else {
                                unreachable!("matched Waiting above");
                            };
                            tracing::debug!(key = ?acquire.key(), ?timeout, "lock wait timed out");
                            acquire.abandon_timed_out();
                            this.state = State::Answered(Some(response));
                            continue;
                        }
                    };
                    let key = guard.key().clone();
                    let slot: Arc<GuardSlot<K>> =
                        Arc::new(std::sync::Mutex::new(Some(Arc::new(guard))));
                    let Some(mut req) = req.take() else {
                        unreachable!("the request is taken once, on acquisition");
                    };
                    req.extensions_mut().insert(HeldLock {
                        key,
                        slot: Arc::downgrade(&slot),
                    });
                    let future = inner.call(req);
                    *this = ResponseFuture::running(future, Some(slot));
                }
                State::Running {
                    future, polling, ..
                } => {
                    *polling = true;
                    let poll = future.as_mut().poll(cx);
                    *polling = false;
                    let output = ready!(poll);
                    // Releases the guard (unless a clone still works under it).
                    this.state = State::Done;
                    return Poll::Ready(output.map(|res| res.map(KeyedLockBody::inner)));
                }
                State::Answered(response) => {
                    let response = response.take().expect("polled after completion");
                    this.state = State::Done;
                    return Poll::Ready(Ok(response.map(|body| KeyedLockBody::Local { body })));
                }
                State::Done => panic!("KeyedLockService ResponseFuture polled after completion"),
            }
        }
    }
}

impl<S, B, K> Drop for ResponseFuture<S, B, K>
where
    S: Service<Request<B>>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    fn drop(&mut self) {
        let State::Running {
            guard: Some(_),
            polling: false,
            ..
        } = &self.state
        else {
            // Not in a locked section, or the inner future panicked: plain drop.
            return;
        };
        let State::Running {
            future,
            guard,
            span,
            ..
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            unreachable!("matched Running above");
        };
        finish_detached(future, guard, span);
    }
}

/// Run a dropped, in-flight locked section to completion, then release its guard.
///
/// The task runs in `span` (the request's, captured when the work started), so
/// its log lines still name the request. Without a tokio runtime (dropped during
/// runtime shutdown) there is nowhere to finish it: it is dropped, which releases
/// this guard (a store that holds a clone for a queued change still holds that).
fn finish_detached<F, K>(future: Pin<Box<F>>, guard: Option<Arc<GuardSlot<K>>>, span: tracing::Span)
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    use tracing::Instrument;
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            span.in_scope(|| {
                tracing::debug!("response dropped mid-request; finishing the locked section");
            });
            let finish = async move {
                let _ = future.await;
                drop(guard);
            };
            runtime.spawn(finish.instrument(span));
        }
        Err(_) => tracing::warn!("response dropped without a runtime; in-flight work abandoned"),
    }
}

#[cfg(test)]
mod tests;
