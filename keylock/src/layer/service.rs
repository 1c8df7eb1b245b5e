//! [`KeyedLockService`]: names the request's key and queues for it in `call`.

use std::fmt;
use std::hash::Hash;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::{ExtractKey, KeyDecision, KeyedLockBody, KeyedLockLayer, Refusal, ResponseFuture};

/// The middleware built by [`KeyedLockLayer`]. See the [module docs](super).
pub struct KeyedLockService<S, K, X> {
    inner: S,
    layer: KeyedLockLayer<K, X>,
}

impl<S, K, X> KeyedLockService<S, K, X> {
    /// Wrap `inner` with the configuration `layer`.
    pub fn new(inner: S, layer: KeyedLockLayer<K, X>) -> Self {
        Self { inner, layer }
    }
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
        // Free at once (the common case): call the service driven to ready now.
        let acquire = match acquire.granted() {
            Ok(guard) => return ResponseFuture::locked(guard, &mut self.inner, req),
            Err(queued) => queued,
        };
        // The service driven to ready is the one to call later; leave a clone here.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::waiting(acquire, self.layer.timeout, self.layer.refuse, inner, req)
    }
}
