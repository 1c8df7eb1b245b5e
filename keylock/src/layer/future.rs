//! [`ResponseFuture`]: waits for the request's key (or its timeout), then runs the
//! inner service's future under it; finishes that work in a task if dropped.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::held::GuardSlot;
use super::{HeldLock, KeyedLockBody, Refusal, RefusalResponse};
use crate::{Acquire, KeyGuard};

/// Response future of [`KeyedLockService`](super::KeyedLockService).
///
/// Not structurally pinned (so no pin projection): the inner future is boxed,
/// because a response dropped mid-request moves it into a spawned task.
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
    /// Queued for the key's lock. Boxed: only a request that found its key
    /// held waits, and the future of every other request stays small (it is
    /// moved through every layer outside this one).
    Waiting(Box<Waiting<S, B, K>>),
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
    /// Answered here without calling the inner service (boxed, as `Waiting`:
    /// the rare path).
    Answered(Option<Box<Response<Full<Bytes>>>>),
    Done,
}

/// A request queued for its key.
struct Waiting<S, B, K: Hash + Eq + Clone> {
    acquire: Acquire<K>,
    /// `None`: no deadline (the timeout does not fit an `Instant`).
    deadline: Option<Instant>,
    timeout: Duration,
    refuse: RefusalResponse,
    /// Created only if the lock is not free at once.
    sleep: Option<Pin<Box<Sleep>>>,
    inner: S,
    req: Option<Request<B>>,
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

impl<S, B, K> fmt::Debug for ResponseFuture<S, B, K>
where
    S: Service<Request<B>>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Waiting { .. } => "waiting",
            State::Running { .. } => "running",
            State::Answered(_) => "answered",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, B, K> ResponseFuture<S, B, K>
where
    S: Service<Request<B>>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    /// Wait for `acquire` (at most `timeout`), then call `inner` with `req`.
    pub(super) fn waiting(
        acquire: Acquire<K>,
        timeout: Duration,
        refuse: RefusalResponse,
        inner: S,
        req: Request<B>,
    ) -> Self {
        Self {
            state: State::Waiting(Box::new(Waiting {
                acquire,
                // A timeout too long to represent (`Duration::MAX`) never fires.
                deadline: Instant::now().checked_add(timeout),
                timeout,
                refuse,
                sleep: None,
                inner,
                req: Some(req),
            })),
        }
    }

    /// Call `inner` with `req` under `guard`, held by this request now: the
    /// request finds its [`HeldLock`] in its extensions.
    pub(super) fn locked(guard: KeyGuard<K>, inner: &mut S, mut req: Request<B>) -> Self {
        let key = guard.key().clone();
        let slot: Arc<GuardSlot<K>> = Arc::new(std::sync::Mutex::new(Some(Arc::new(guard))));
        req.extensions_mut().insert(HeldLock::new(key, &slot));
        let future = inner.call(req);
        Self::running(future, Some(slot))
    }

    /// Run the inner service's `future`, holding `guard` (if any) until it ends.
    pub(super) fn running(future: S::Future, guard: Option<Arc<GuardSlot<K>>>) -> Self {
        // Spans are usually made at DEBUG only; skip the lookup below otherwise.
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

    /// Answer with `response`, calling nothing.
    pub(super) fn answered(response: Response<Full<Bytes>>) -> Self {
        Self {
            state: State::Answered(Some(Box::new(response))),
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
                State::Waiting(waiting) => {
                    let Waiting {
                        acquire,
                        deadline,
                        timeout,
                        refuse,
                        sleep,
                        inner,
                        req,
                    } = &mut **waiting;
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
                            let State::Waiting(waiting) =
                                std::mem::replace(&mut this.state, State::Done)
                            else {
                                unreachable!("matched Waiting above");
                            };
                            let acquire = waiting.acquire;
                            tracing::debug!(key = ?acquire.key(), ?timeout, "lock wait timed out");
                            acquire.abandon_timed_out();
                            this.state = State::Answered(Some(Box::new(response)));
                            continue;
                        }
                    };
                    let Some(req) = req.take() else {
                        unreachable!("the request is taken once, on acquisition");
                    };
                    *this = ResponseFuture::locked(guard, inner, req);
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
                    return Poll::Ready(Ok((*response).map(|body| KeyedLockBody::Local { body })));
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
/// this guard (a holder of a clone of the guard still holds the key).
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
